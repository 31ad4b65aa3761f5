"""The vlm engine's own vector for a prompt written out by hand: prepared with services/media/qwen2vl.py
directly (not through services/vlm.py) and run by trt_build.vlm_model in-process, fp32 on CPU. Unit and
integration tests compare the gateway's vectors with it."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from services.config import Settings
from services.media import qwen2vl as q
from services.media.video import decode_frames
from services.registry import ModelSpec
from trt_build.vlm_model import VlmEngine, VlmRequest

IMG, VID = "<|image_pad|>", "<|video_pad|>"


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Reference:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        pre, config = (
            json.loads(spec.model_file(n).read_text()) for n in ("preprocessor_config.json", "config.json")
        )
        self.cfg = q.config_from_hf(pre, config, frames=spec.video_frames, **spec.vlm_options.overrides())
        self.tok = Tokenizer.from_file(str(spec.model_file("tokenizer.json")))

    @cached_property
    def engine(self) -> VlmEngine:
        torch.set_num_threads(1)
        folder = str(self.spec.source_dir())
        return VlmEngine.load(folder, device="cpu", dtype="float32", padding_side=self.spec.padding_side)

    def vector(
        self, prompt: str, images: Sequence[Image.Image] = (), video: bytes | None = None
    ) -> np.ndarray:
        """Images first, then the video: the order of the placeholders in `prompt`."""
        visuals = [q.prepare_image(i, self.cfg) for i in images]
        if video is not None:
            frames = decode_frames(video, Settings(), self.cfg.frames)
            visuals.append(q.prepare_video(frames.images, self.cfg, duration_s=frames.duration_s))
        item = q.prepare_item(self.tok.encode(prompt).ids, visuals, self.cfg)
        lengths = np.array([item.lm_tokens])
        req = VlmRequest(item.input_ids, lengths, item.position_ids, item.pixel_values, item.grid_thw)
        out = self.engine.embed([req])[0]
        assert not isinstance(out, Exception), out
        return out[0]
