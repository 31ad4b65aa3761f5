"""Tiny random Qwen2-VL-family backbones saved as HF folders, and LoRA merging for real ones.

A folder here has the layout users deploy real weights with: `config.json` + `model.safetensors`, the
tokenizer from `trt_build.qwen_tokenizer`, and `preprocessor_config.json` (what the gateway's numpy
preprocessing reads). The weights are re-drawn at std 1/sqrt(fan_in): with HF's default init (std 0.02)
every layer of a tiny model is nearly the identity, so a test passes even when an image is silently
dropped; at 1/sqrt(fan_in) swapping the image moves the vector.

VLM2Vec-V2 is Qwen2-VL-2B-Instruct plus a PEFT LoRA adapter. `merge_lora` folds a standard PEFT adapter
(`adapter_config.json` + `adapter_model.safetensors`) into the base weights, W += (alpha / r) B A, and
refuses to finish if any adapter tensor found no base weight: PEFT itself would warn and leave that
module unmerged (its names follow transformers 4's module tree, `model.layers...`, while transformers 5
nests the text model at `model.language_model.layers...`), which silently gives base-model vectors.

    python -m trt_build.vlm_random OUT_DIR --family qwen2-vl
    python -m trt_build.vlm_random --merge-lora ADAPTER_DIR --base BASE_DIR OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trt_build.qwen_tokenizer import write_tokenizer

FAMILIES: dict[str, tuple[str, str]] = {  # family -> (config class, model class) in transformers
    "qwen2-vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
    "qwen2.5-vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3-vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
}
VOCAB_SIZE = 151_936  # Qwen2-VL-2B's embedding rows: the real token ids, special ones included
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny backbone: small enough for CPU tests, every code path of the real one."""

    hidden: int = 32
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 64
    vision_depth: int = 2
    vision_width: int = 32
    vision_heads: int = 2
    vocab_size: int = VOCAB_SIZE

    @property
    def mrope_section(self) -> list[int]:
        """Temporal/height/width split of the rotary frequencies: half of head_dim, about 2:1:1."""
        half = self.hidden // self.heads // 2
        h = half // 4
        return [half - 2 * h, h, h]


SIZES = {
    "tiny": TinySize(),
    # a quarter of Qwen2-VL-2B's width and depth (head sizes kept): ~25 M parameters besides the embedding
    # table, a backbone whose forward, not the serving around it, is most of an item's cost on a CPU
    "small": TinySize(
        hidden=384,
        layers=7,
        heads=3,
        kv_heads=1,
        intermediate=2240,
        vision_depth=8,
        vision_width=320,
        vision_heads=4,
    ),
    # Qwen2-VL-2B (VLM2Vec-V2's base): 28 layers of 1536, GQA 12/2, a 32-block 1280-wide vision tower
    "2b": TinySize(
        hidden=1536,
        layers=28,
        heads=12,
        kv_heads=2,
        intermediate=8960,
        vision_depth=32,
        vision_width=1280,
        vision_heads=16,
    ),
}


def tiny_config(family: str, size: TinySize | None = None) -> Any:
    """A transformers config for a tiny backbone of `family` with Qwen's real special-token ids."""
    import transformers

    size = size or TinySize()
    config_cls = getattr(transformers, FAMILIES[family][0])
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": size.mrope_section}
    text: dict[str, Any] = {
        "vocab_size": size.vocab_size,
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        "tie_word_embeddings": True,
    }
    vision: dict[str, Any] = {"depth": size.vision_depth, "num_heads": size.vision_heads}
    if family == "qwen2-vl":
        vision |= {"embed_dim": size.vision_width, "hidden_size": size.hidden, "mlp_ratio": 2}
    else:
        vision |= {
            "hidden_size": size.vision_width,
            "out_hidden_size": size.hidden,
            "intermediate_size": 2 * size.vision_width,
        }
    if family == "qwen2.5-vl":
        # window attention on the first block, full attention on the last, as the real tower interleaves
        vision |= {"fullatt_block_indexes": [size.vision_depth - 1], "window_size": 112}
        vision["tokens_per_second"] = 2  # Qwen2.5-VL's released configs (transformers defaults to 4)
    if family == "qwen3-vl":
        text |= {"head_dim": size.hidden // size.heads}
        rope["mrope_interleaved"] = True
        vision |= {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    return config_cls(text_config=text, vision_config=vision, tie_word_embeddings=True)


@torch.no_grad()
def redraw(model: nn.Module, seed: int = 0) -> None:
    """Weights ~ N(0, 1/fan_in), biases 0, norms 1: activations keep unit scale through a tiny stack."""
    gen = torch.Generator().manual_seed(seed)
    for _, module in sorted(model.named_modules(), key=lambda kv: kv[0]):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        if isinstance(module, nn.Embedding):
            weight.copy_(torch.randn(weight.shape, generator=gen))
        elif weight.dim() >= 2:
            fan_in = math.prod(weight.shape[1:])
            weight.copy_(torch.randn(weight.shape, generator=gen) / math.sqrt(fan_in))
        else:
            weight.fill_(1.0)
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.zero_()


def preprocessor_config(family: str, config: Any) -> dict[str, Any]:
    """`preprocessor_config.json` in HF's keys (the gateway maps them onto `QwenVLConfig`)."""
    vision = config.vision_config
    qwen3 = family == "qwen3-vl"
    out: dict[str, Any] = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": 28 * 28 * 4,
        "max_pixels": 28 * 28 * 1280,
        "size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 1280},
        "patch_size": vision.patch_size,
        "merge_size": vision.spatial_merge_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "image_mean": [0.5, 0.5, 0.5] if qwen3 else CLIP_MEAN,
        "image_std": [0.5, 0.5, 0.5] if qwen3 else CLIP_STD,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_resize": True,
        "resample": 3,  # bicubic
    }
    if family == "qwen2.5-vl":
        out["tokens_per_second"] = vision.tokens_per_second
    return out


def build_random(
    dest: Path, family: str = "qwen2-vl", *, seed: int = 0, size: TinySize | None = None
) -> Path:
    """Write a tiny random backbone folder (config, safetensors, tokenizer, preprocessor config)."""
    import transformers

    config = tiny_config(family, size)
    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[family][1])(config)
    redraw(model, seed)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    write_tokenizer(dest, family)
    (dest / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(family, config), indent=2) + "\n"
    )
    return dest


# --- LoRA ---------------------------------------------------------------------------------------------

PEFT_PREFIX = "base_model.model."
# transformers 4 module paths (what PEFT adapters for Qwen2-VL were saved with) -> transformers 5 paths
LEGACY_PATHS = (
    ("model.layers.", "model.language_model.layers."),
    ("model.embed_tokens", "model.language_model.embed_tokens"),
    ("model.norm", "model.language_model.norm"),
    ("visual.", "model.visual."),
)


@dataclass(frozen=True)
class LoraAdapter:
    r: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A [r, in], B [out, r])

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


def load_lora(adapter_dir: Path) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder; refuses what a plain merge cannot express (DoRA, per-layer ranks)."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA").upper() != "LORA":
        raise ValueError(f"{adapter_dir}: not a LoRA adapter ({cfg.get('peft_type')})")
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: DoRA / per-module rank or alpha patterns are not supported")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        path = key.removeprefix(PEFT_PREFIX)
        for marker, bucket in ((".lora_A.", a_parts), (".lora_B.", b_parts)):
            if marker in path:
                bucket[path.split(marker)[0]] = value
                break
        else:
            raise ValueError(f"{adapter_dir}: unexpected tensor {key} (modules_to_save is not supported)")
    if a_parts.keys() != b_parts.keys():
        raise ValueError(f"{adapter_dir}: unpaired lora_A/lora_B tensors")
    return LoraAdapter(
        r=int(cfg["r"]),
        alpha=float(cfg.get("lora_alpha", cfg["r"])),
        rslora=bool(cfg.get("use_rslora", False)),
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
        pairs={k: (a_parts[k], b_parts[k]) for k in sorted(a_parts)},
    )


def _resolve(modules: dict[str, nn.Module], path: str) -> str:
    """The model's module name for an adapter path, trying the transformers-4 -> 5 renames."""
    candidates = [path]
    for old, new in LEGACY_PATHS:
        if path.startswith(old):
            candidates.append(new + path[len(old) :])
    for name in candidates:
        if name in modules:
            return name
    raise KeyError(f"adapter module {path!r} matches no module of the base model (tried {candidates})")


@torch.no_grad()
def merge_lora_into(model: nn.Module, adapter: LoraAdapter) -> list[str]:
    """W += scale * B @ A for every adapter pair, in fp32; every pair must find its module.

    Returns the merged module names."""
    modules = dict(model.named_modules())
    merged = []
    for path, (a, b) in adapter.pairs.items():
        name = _resolve(modules, path)
        weight = modules[name].weight
        delta = adapter.scale * (b.float() @ a.float())
        if adapter.fan_in_fan_out:
            delta = delta.T
        if delta.shape != weight.shape:
            raise ValueError(f"{name}: LoRA delta {tuple(delta.shape)} does not fit {tuple(weight.shape)}")
        weight.copy_((weight.float() + delta).to(weight.dtype))
        merged.append(name)
    return merged


def merge_lora(base_dir: Path, adapter_dir: Path, dest: Path) -> list[str]:
    """Load the base folder with transformers, merge the adapter, save a plain folder at `dest`.

    Tokenizer and preprocessor files are copied from the adapter folder when it has them (VLM2Vec ships
    its own), else from the base."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(base_dir)
    names = [a for a in (config.architectures or []) if hasattr(transformers, a)]
    if not names:
        raise ValueError(f"{base_dir}: config.json names no known architecture")
    model = getattr(transformers, names[0]).from_pretrained(base_dir, dtype=torch.float32)
    merged = merge_lora_into(model, load_lora(adapter_dir))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.json"):
        src = adapter_dir / name if (adapter_dir / name).exists() else base_dir / name
        if src.exists():
            shutil.copyfile(src, dest / name)
    return merged


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--family", default="qwen2-vl", choices=sorted(FAMILIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge-lora", type=Path, help="PEFT adapter folder to merge into --base")
    p.add_argument("--base", type=Path)
    args = p.parse_args(argv)
    if args.merge_lora:
        if args.base is None:
            p.error("--merge-lora needs --base")
        print(f"merged {len(merge_lora(args.base, args.merge_lora, args.out))} modules into {args.out}")
    else:
        print(build_random(args.out, args.family, seed=args.seed))


if __name__ == "__main__":
    main()
