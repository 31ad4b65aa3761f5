"""Shared builders for the VLM tests: the real Qwen2 tokenizer, tiny random backbones, HF references.

Everything is built once per test process into one temporary folder (the tokenizer conversion takes a
few seconds; each tiny backbone about one).
"""

from __future__ import annotations

import ast
import atexit
import json
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.media.qwen2vl import PreparedItem, QwenVLConfig
from trt_build.qwen_tokenizer import write_tokenizer
from trt_build.vlm_model import VlmRequest, column_stats, normalize_pixels
from trt_build.vlm_random import TinySize, build_random, tiny_config


@cache
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="embedfleet-vlm-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def tokenizer_dir(family: str = "qwen2-vl") -> Path:
    dest = workdir() / f"tokenizer-{family}"
    write_tokenizer(dest, family)
    return dest


@cache
def backbone_dir(family: str) -> Path:
    return build_random(workdir() / family, family, seed=0)


@cache
def rope_model(family: str) -> Any:
    """A tiny `...VLModel` (small vocabulary) whose `get_rope_index` is the reference for positions."""
    import transformers

    cls = {"qwen2-vl": "Qwen2VLModel", "qwen2.5-vl": "Qwen2_5_VLModel", "qwen3-vl": "Qwen3VLModel"}[family]
    return getattr(transformers, cls)(tiny_config(family, TinySize(vocab_size=1024))).eval()


@cache
def hf_tokenizer() -> Any:
    """transformers' tokenizer over the built folder (loading 151k tokens takes seconds: shared)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir())


def hf_processor(min_pixels: int, max_pixels: int) -> Any:
    """transformers' Qwen2VLProcessor with the PIL-backend image processor (the pinned reference).

    Its constructor type-checks a video processor whose class needs torchvision (absent here); images
    never touch it, so the check is skipped and no video processor is attached."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImagesOnlyProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
            return type(argument)

    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    return ImagesOnlyProcessor(
        image_processor=image_processor, tokenizer=hf_tokenizer(), video_processor=None
    )


def hf_method(module: str, class_name: str, method: str) -> Callable[..., Any]:
    """One method of a transformers class, compiled from the installed source without importing the
    module: the Qwen2-VL video processor imports torchvision at module level, yet its `patchify` and
    `sample_frames` need only torch."""
    import transformers

    path = Path(transformers.__file__).parent / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method)
    fn.decorator_list = []
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[method]


def normalized(pixels: np.ndarray, cfg: QwenVLConfig) -> np.ndarray:
    """The gateway's uint8 patches as the engine normalises them (what HF's processor returns)."""
    dim = pixels.shape[1]
    cpu = torch.device("cpu")
    mean, std = column_stats(cfg.mean, dim, cpu), column_stats(cfg.std, dim, cpu)
    return normalize_pixels(torch.from_numpy(pixels), mean, std).numpy()


def engine_request(items: list[PreparedItem]) -> VlmRequest:
    """Prepared items -> one engine request (a group), as the gateway will send them to Triton."""
    return VlmRequest(
        input_ids=np.concatenate([i.input_ids for i in items]),
        lengths=np.array([i.lm_tokens for i in items], dtype=np.int64),
        position_ids=np.concatenate([i.position_ids for i in items], axis=1),
        pixel_values=np.concatenate([i.pixel_values for i in items]),
        grid_thw=np.concatenate([i.grid_thw for i in items]),
    )


def write_adapter(path: Path, pairs: dict[str, tuple[torch.Tensor, ...]], r: int, alpha: int) -> None:
    """A PEFT LoRA adapter folder (module paths as transformers 4 named them, as PEFT saves them)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    tensors = {}
    for module, (a, b) in pairs.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "qkv"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
