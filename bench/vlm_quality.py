"""Held-out evaluation of vlm-shapes beside lit-shapes, on the same queries, into vlm-shapes/metrics.json.

The held-out split is shapes.py's 324 attribute combinations never trained on, one render each (the
candidates of text -> image and composed retrieval, the queries of image -> text and attribute QA), one
8-frame clip each moving left or right (text -> video). Composed retrieval: the target's reference
differs from it in colour, position or shape and comes with the edit text ("make it blue"); in `cir`
the reference is itself a held-out combination, so the gallery (the 324 held-out images) holds another
render of it, the distractor that image similarity alone picks (every target that has such a
neighbour: 250 queries); `cir_any` draws the reference from all combinations, so mostly the gallery has
no image of it. R@1 is "the query's own target ranks first among all 324 candidates of its task".

lit-shapes runs the way the gateway serves it: the image tower through ONNX Runtime from its asset
folder, the frozen all-MiniLM-L6-v2 text tower from its PyPI package, video as the mean of the frame
vectors, and a text + image query as the registry's weighted fusion of the two tower vectors. Its
templates are plain text ("{text}"), the dual-tower preset's; vlm-shapes gets its trained instructions.

    nice -n 19 python bench/vlm_quality.py trt_build/assets/vlm-shapes
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from trt_build.synthetic import shapes
from trt_build.synthetic import train_vlm as tv
from trt_build.synthetic.train_vlm import HeldOut, held_out, load

LIT_DIR = Path(__file__).resolve().parents[1] / "trt_build" / "assets" / "lit-shapes"
TASK_NAMES = {
    "t2i": "text -> image",
    "i2t": "image -> text",
    "t2v": "text -> video",
    "cir": "composed, reference also held out (its render is in the gallery)",
    "cir_any": "composed, reference from any combination",
    "qa": "attribute QA (image + question -> answer), mean of 6",
}


def recall_at_1(
    q: np.ndarray | torch.Tensor, t: np.ndarray | torch.Tensor, truth: Sequence[int] | None = None
) -> float:
    """Query i's target is target truth[i] (default: target i)."""
    sim = np.asarray(q) @ np.asarray(t).T
    want = np.arange(len(sim)) if truth is None else np.asarray(truth)
    return round(float((sim.argmax(1) == want).mean()), 4)


@torch.no_grad()
def vlm_scores(model: Any, prep: tv.Preprocessor, h: HeldOut, tasks: Sequence[str]) -> dict[str, Any]:
    """R@1 per task of the trained backbone (`tasks`: a subset keeps experiments short)."""
    model.eval()

    def enc(items: list[tv.Item]) -> torch.Tensor:
        return tv.encode(model, prep, items)

    out: dict[str, Any] = {}
    images = enc([tv.Item(tv.IMAGE_TARGET, images=(r,)) for r in h.renders])
    if "t2i" in tasks:
        out["t2i"] = recall_at_1(enc([tv.Item(tv.T2I_QUERY, a.caption) for a in h.combos]), images)
    if "i2t" in tasks:
        captions = enc([tv.Item("{text}", a.caption) for a in h.combos])
        out["i2t"] = recall_at_1(enc([tv.Item(tv.I2T_QUERY, images=(r,)) for r in h.renders]), captions)
    if "t2v" in tasks:
        queries = enc([tv.Item(tv.T2V_QUERY, tv.video_caption(c.attrs, c.direction)) for c in h.clips])
        out["t2v"] = recall_at_1(queries, enc([tv.Item(tv.VIDEO_TARGET, clip=c) for c in h.clips]))
    if "cir" in tasks:
        for name, composed in (("cir", h.cir), ("cir_any", h.cir_any)):
            q = enc([tv.Item(tv.CIR_QUERY, text, images=(r,)) for r, text, _ in composed])
            out[name] = recall_at_1(q, images, [i for *_, i in composed])
    if "qa" in tasks:
        qa = {}
        for attribute, question in tv.QUESTIONS.items():
            cands = tv.answers(attribute)
            q = enc([tv.Item(tv.QA_QUERY, question, images=(r,)) for r in h.renders])
            truth = [cands.index(tv.answer(a, attribute)) for a in h.combos]
            qa[attribute] = recall_at_1(q, enc([tv.Item("{text}", c) for c in cands]), truth)
        out["qa"] = {"mean": round(sum(qa.values()) / len(qa), 4), **qa}
    return out


class Lit:
    """lit-shapes as served: ONNX image tower, frozen MiniLM text tower, the registry's fusion weights."""

    def __init__(self, folder: Path = LIT_DIR) -> None:
        import onnxruntime as ort

        from services.registry import load_registry
        from trt_build.synthetic.train_lit import load_text_model

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, ["CPUExecutionProvider"])
        self.text_model = load_text_model()
        fusion = load_registry().get("lit-shapes").fusion
        assert fusion is not None
        self.weights = [fusion.text_weight, fusion.image_weight]

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        from trt_build.synthetic.train_lit import normalize_uint8

        x = normalize_uint8(np.stack([np.asarray(i, dtype=np.uint8) for i in images])).numpy()
        return np.concatenate(
            [
                self.session.run(["embeddings"], {"pixel_values": x[i : i + 256]})[0]
                for i in range(0, len(x), 256)
            ]
        )

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        from trt_build.synthetic.train_lit import embed_texts

        return embed_texts(self.text_model, list(texts)).numpy()

    def fuse(self, text: np.ndarray, image: np.ndarray) -> np.ndarray:
        from services.vectors import fuse

        return np.stack([fuse([t, i], self.weights) for t, i in zip(text, image, strict=True)])


def lit_scores(h: HeldOut, lit: Lit | None = None) -> dict[str, Any]:
    """lit-shapes on the same queries (text -> video: mean of the same 8 frames, as the gateway pools)."""
    from services.vectors import l2_normalize

    lit = lit or Lit()
    images = lit.images([shapes.render(*r) for r in h.renders])
    captions = lit.texts([a.caption for a in h.combos])
    frames = lit.images([f for c in h.clips for f in c.images()]).reshape(len(h.clips), tv.EVAL_FRAMES, -1)
    videos = l2_normalize(l2_normalize(frames).mean(axis=1))
    video_q = lit.texts([tv.video_caption(c.attrs, c.direction) for c in h.clips])
    out = {}
    for name, queries in (("cir", h.cir), ("cir_any", h.cir_any)):
        q = lit.fuse(
            lit.texts([t for _, t, _ in queries]), lit.images([shapes.render(*r) for r, _, _ in queries])
        )
        out[name] = recall_at_1(q, images, [i for *_, i in queries])
    return {
        "t2i": recall_at_1(captions, images),
        "i2t": recall_at_1(images, captions),
        "t2v": recall_at_1(video_q, videos),
        **out,
    }


def table(vlm: dict[str, Any], lit: dict[str, Any]) -> list[str]:
    """Markdown rows: every task, both models (lit-shapes has no QA)."""
    rows = ["| task | vlm-shapes R@1 | lit-shapes R@1 |", "|---|---|---|"]
    for task, name in TASK_NAMES.items():
        mine = vlm[task]["mean"] if task == "qa" else vlm[task]
        theirs = lit.get(task)
        rows.append(f"| {name} | {mine:.3f} | {'-' if theirs is None else f'{theirs:.3f}'} |")
    rows += [f"| QA: {a} | {vlm['qa'][a]:.3f} | - |" for a in tv.QUESTIONS]
    return rows


def report(
    model: Any, prep: tv.Preprocessor, record: dict[str, Any], out: Path, tasks: str = "all", seed: int = 0
) -> dict[str, Any]:
    """Score both models and write metrics.json next to the model (with the training record)."""
    t0 = time.perf_counter()
    h = held_out(seed)
    chosen = list(TASK_NAMES) if tasks == "all" else tasks.split(",")
    vlm = vlm_scores(model, prep, h, chosen)
    print(json.dumps(vlm), flush=True)
    if tasks != "all":  # an experiment: no lit comparison, no metrics file
        return vlm
    lit = lit_scores(h)
    metrics = {
        "model": "vlm-shapes",
        "architecture": "Qwen2VLForConditionalGeneration",
        "held_out": {
            "what": __doc__.split("\n\n")[1].replace("\n", " "),
            "size": len(h.combos),
            "chance_r@1": round(1 / len(h.combos), 4),
            "vlm-shapes": vlm,
            "lit-shapes": lit,
            "lit-shapes how": __doc__.split("\n\n")[2].replace("\n", " "),
            "cir margin (points)": round(100 * (vlm["cir"] - lit["cir"]), 1),
            "table": table(vlm, lit),
            "eval_s": round(time.perf_counter() - t0, 1),
        },
        **record,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("\n".join(metrics["held_out"]["table"]), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(LIT_DIR.parent / "vlm-shapes"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    model, prep = load(folder)
    # the training record: train.json from a fresh run, else the one kept in metrics.json
    kept = [folder / "train.json", folder / "metrics.json"]
    old: dict[str, Any] = next((json.loads(f.read_text()) for f in kept if f.exists()), {})
    record: dict[str, Any] = {k: old[k] for k in ("recipe", "train", "machine") if k in old}
    record.setdefault("recipe", {})["decided by"] = tv.EXPERIMENTS
    report(model, prep, record, folder, "all", int(old.get("train", {}).get("seed", 0)))


if __name__ == "__main__":
    main()
