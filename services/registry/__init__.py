"""The model registry: one YAML file describing every model the fleet serves.

Validated with pydantic at load; a bad file fails fast with the file, model and field named, so a typo
can never surface as a wrong vector at request time. Triton's `max_batch_size`, the TensorRT profiles and
the gateway batcher's limits all derive from the same `batching` block here.
"""

from __future__ import annotations

import importlib.util
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.errors import ConfigError, NotFound

DEFAULT_REGISTRY = Path(__file__).with_name("models.yaml")
PRESETS_FILE = Path(__file__).with_name("templates.yaml")
SLOT = re.compile(r"\{(text|image|video)\}")  # a template's slots (services.templates renders them)
REPO_ROOT = Path(__file__).resolve().parents[2]


class Modality(StrEnum):
    text = "text"
    image = "image"
    video = "video"
    multimodal = "multimodal"


class Kind(StrEnum):
    text_encoder = "text-encoder"
    image_encoder = "image-encoder"
    dual_tower = "dual-tower"
    vlm = "vlm"
    cross_encoder = "cross-encoder"  # reranker: a (query, document) pair in, one relevance score out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where the weights come from. No type ever downloads from a hub at run time."""

    type: Literal["python-package", "split-zip", "path", "random-init"]
    package: str | None = None  # python-package: importable package holding the model folder
    subdir: str = ""  # folder inside the package / unzipped archive
    packages: list[str] = Field(default_factory=list)  # split-zip: pieces in order
    member_glob: str = ""  # split-zip: file name pattern of the piece inside each package
    sha256: str | None = None  # split-zip: checksum of the assembled archive
    path: str | None = None  # path: relative to the repository root (or absolute)
    # path (vlm): when the folder holds a PEFT LoRA adapter (adapter_config.json), the base model folder it
    # is merged into at build time (VLM2Vec-V2 ships as a LoRA on Qwen2-VL-2B-Instruct)
    base: str | None = None
    # random-init: transformers config class (CLIPVisionConfig) or, for a cross-encoder, model class
    # (BertForSequenceClassification); `package`/`subdir` or `path` may name a folder holding its tokenizer
    architecture: str | None = None
    config: dict[str, object] = Field(default_factory=dict)  # random-init: config overrides

    @model_validator(mode="after")
    def _needs(self) -> Source:
        need = {
            "python-package": "package",
            "split-zip": "packages",
            "path": "path",
            "random-init": "architecture",
        }
        if not getattr(self, need[self.type]):
            raise ValueError(f"source type {self.type!r} needs {need[self.type]!r}")
        return self


class Batching(_Strict):
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(8192, ge=1)  # vlm: language-model tokens, text + visual, padding counted
    max_batch_patches: int = Field(16384, ge=1)  # vlm: vision-tower patches per batch (images + video frames)
    # batches in flight to Triton (None: the `inflight_batches` setting). An engine that merges the requests
    # Triton queued while it ran into one forward (the vlm python model) keeps its batches full this way
    # while the gateway sends each batch as soon as it forms.
    inflight: int | None = Field(None, ge=1)
    opt_batch_size: int = Field(16, ge=1)
    min_seq_len: int = Field(1, ge=1)
    opt_seq_len: int = Field(64, ge=1)


class Side(StrEnum):
    query = "query"
    document = "document"


class TaskTemplates(_Strict):
    """Query and document templates of one task family, verbatim; an empty document template is legal."""

    query: str = "{text}"
    document: str = "{text}"

    def for_side(self, side: Side) -> str:
        return self.query if side is Side.query else self.document


class Image(_Strict):
    size: int = Field(224, ge=8)
    patch: int | None = None
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resize: Literal["shortest-edge-center-crop", "squash"] = "shortest-edge-center-crop"


class Vlm(_Strict):
    """Qwen2-VL-family preprocessing of a `vlm` model. Unset sizes and pixel limits come from the model
    folder's preprocessor_config.json (so a deployed folder carries its own contract); set, they win
    (e.g. VLM2Vec's 28*28*4 .. 28*28*1280 image pixels, 360*420 per video frame)."""

    family: Literal["qwen2-vl", "qwen2.5-vl", "qwen3-vl"] = "qwen2-vl"
    patch_size: int | None = Field(None, ge=1)
    merge_size: int | None = Field(None, ge=1)
    temporal_patch_size: int | None = Field(None, ge=1)
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    video_min_pixels: int | None = Field(None, ge=1)
    video_max_pixels: int | None = Field(None, ge=1)
    max_images: int = Field(4, ge=1)  # images per item
    # how an item becomes the backbone's text: VLM2Vec's prompt (services.vlm.render_prompt), or the chat
    # turns Qwen3-VL-Embedding was published with, each template being the system instruction (chat_prompt)
    prompt: Literal["vlm2vec", "chat"] = "vlm2vec"
    # video frames at this rate, between min_frames and the model's video_frames (qwen-vl-utils' rule, what
    # Qwen3-VL-Embedding samples with: fps 1, at most 64); unset: video_frames spread evenly over the clip
    fps: float | None = Field(None, gt=0)
    min_frames: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> Vlm:
        for low, high in (("min_pixels", "max_pixels"), ("video_min_pixels", "video_max_pixels")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) exceeds {high} ({hi})")
        return self

    def overrides(self) -> dict[str, int]:
        """The preprocessing fields set here (they override the folder's)."""
        sizes = ("patch_size", "merge_size", "temporal_patch_size")
        pixels = ("min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels")
        return {n: getattr(self, n) for n in (*sizes, *pixels) if getattr(self, n) is not None}


class Fusion(_Strict):
    """Dual-tower interleaved items: weighted mean of normalized tower vectors (UniIR score-level fusion)."""

    text_weight: float = Field(0.5, ge=0)
    image_weight: float = Field(0.5, ge=0)


class ModelSpec(_Strict):
    name: str
    version: str = "1"
    modality: Modality
    kind: Kind
    source: Source
    tokenizer: str | None = "tokenizer.json"  # relative to the source folder
    max_seq_length: int = Field(256, ge=1)
    pooling: Literal["mean", "cls", "last-token", "none"] = "mean"
    padding_side: Literal["right", "left"] = "right"
    normalize: bool = True
    dimension: int = Field(ge=1)
    matryoshka_dims: list[int] = Field(default_factory=list)
    engines: dict[Literal["onnx", "tensorrt", "torch"], str] = Field(default_factory=dict)
    batching: Batching = Batching()
    templates: dict[str, TaskTemplates] = Field(default_factory=dict)
    preset: str | None = None  # name in templates.yaml whose families are merged under `templates`
    image: Image | None = None
    video_frames: int = Field(8, ge=1)  # frames sampled per video (dual-tower: averaged; vlm: one clip)
    image_placeholder: str | None = None  # vlm: the backbone's image token, rendered for {image}
    video_placeholder: str | None = None
    vlm: Vlm | None = None  # vlm: preprocessing (default: the folder's) and images per item
    fusion: Fusion | None = None
    towers: dict[Literal["text", "image"], str] = Field(default_factory=dict)  # dual-tower: model names
    triton_model: str | None = None  # serve through another entry's engine (e.g. a new template version)
    # cross-encoder: the engine returns the raw logit; the core applies `activation` (sentence-transformers'
    # CrossEncoder default for one label is sigmoid, but ms-marco-MiniLM-L-6-v2's config says identity)
    activation: Literal["none", "sigmoid"] = "none"
    pair_truncation: Literal["longest_first", "only_second"] = "longest_first"  # cross-encoder pairs

    @model_validator(mode="before")
    @classmethod
    def _cross_encoder_defaults(cls, data: object) -> object:
        """A cross-encoder has one score per pair, no pooling, no normalization: its entry need not say so."""
        if isinstance(data, dict) and data.get("kind") == Kind.cross_encoder.value:
            return {"dimension": 1, "pooling": "none", "normalize": False, **data}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("-", "").replace("_", "").replace(".", "").isalnum() or v != v.lower():
            raise ValueError(
                "model names are lowercase letters, digits, '-', '_' and '.' (Triton model names)"
            )
        return v

    @model_validator(mode="after")
    def _coherent(self) -> ModelSpec:
        for d in self.matryoshka_dims:
            if not 1 <= d <= self.dimension:
                raise ValueError(f"matryoshka dimension {d} outside 1..{self.dimension}")
        if self.kind is Kind.dual_tower and not ({"text", "image"} <= set(self.towers)):
            raise ValueError("a dual-tower model names its 'text' and 'image' towers")
        if self.kind is Kind.vlm:
            self._check_vlm()
        elif self.vlm is not None or self.source.base is not None:
            raise ValueError("the vlm block and source.base apply to vlm models only")
        if self.kind is Kind.image_encoder and self.image is None:
            raise ValueError("an image encoder needs an 'image' preprocessing block")
        if self.kind is Kind.cross_encoder:
            if self.modality is not Modality.text or self.dimension != 1 or self.matryoshka_dims:
                raise ValueError("a cross-encoder is a text model with one score per pair (dimension 1)")
            if self.pooling != "none" or self.normalize:
                raise ValueError("a cross-encoder scores pairs: no pooling, no normalize")
            if not self.tokenizer:
                raise ValueError("a cross-encoder needs its tokenizer (pairs are encoded by the gateway)")
        elif {"activation", "pair_truncation"} & self.model_fields_set:
            raise ValueError("activation and pair_truncation apply to cross-encoders only")
        if self.batching.max_batch_tokens < self.max_seq_length:
            raise ValueError("batching.max_batch_tokens must hold at least one max-length sequence")
        return self

    def _check_vlm(self) -> None:
        """VLM2Vec's contract: last-token pooling, a tokenizer for the prompt, the backbone's placeholders."""
        if not self.image_placeholder:
            raise ValueError("a vlm model needs image_placeholder")
        if self.pooling != "last-token":
            raise ValueError("a vlm model pools the last token (pooling: last-token)")
        if not self.tokenizer:
            raise ValueError("a vlm model needs its tokenizer (prompts are tokenized by the gateway)")
        if self.source.type != "path" or self.source.path is None:
            raise ValueError("a vlm model is served from a local Hugging Face folder (source type: path)")
        if self.vlm_options.prompt == "chat":
            for task, pair in self.templates.items():
                if SLOT.search(pair.query) or SLOT.search(pair.document):
                    raise ValueError(
                        f"templates.{task}: a chat-prompt vlm model's templates are system instructions "
                        "(the item's video, images and text fill the user turn): no {text}/{image}/{video}"
                    )

    @property
    def vlm_options(self) -> Vlm:
        return self.vlm or Vlm()

    @property
    def ref(self) -> str:
        """`name:version`, the cache and collection identity of this model."""
        return f"{self.name}:{self.version}"

    @property
    def triton_name(self) -> str:
        return self.triton_model or self.name

    def allows_dimensions(self, dims: int) -> bool:
        return dims == self.dimension or dims in self.matryoshka_dims

    def source_dir(self, repo_root: Path | None = None) -> Path:
        """Local folder of the model's files (tokenizer, weights). Never touches the network."""
        root = repo_root or REPO_ROOT
        src = self.source
        if src.type == "split-zip":
            from services.config import PACKAGE_ROOT

            return PACKAGE_ROOT / "var" / "models" / self.name / src.subdir
        if src.package:  # python-package, or the folder a random-init model takes its tokenizer from
            spec = importlib.util.find_spec(src.package)
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError(f"model {self.name}: package {src.package!r} is not installed")
            return Path(next(iter(spec.submodule_search_locations))) / src.subdir
        if src.path:
            return root / src.path  # an absolute path stays as it is
        raise ConfigError(f"model {self.name}: a random-init model without package or path has no folder")

    def model_file(self, name: str) -> Path:
        """`name` in the source folder or, for a LoRA adapter folder, in its base folder (config.json,
        tokenizer and preprocessor files usually stay with the base)."""
        first = self.source_dir() / name
        if first.exists() or self.source.base is None:
            return first
        return self.base_dir() / name

    def base_dir(self) -> Path:
        """The LoRA base folder: relative to the repository root (or absolute), like `path`."""
        if self.source.base is None:
            raise ConfigError(f"model {self.name}: source has no base folder")
        return REPO_ROOT / self.source.base

    @property
    def has_source_dir(self) -> bool:
        """False only for random-init models built from a config alone (no tokenizer folder either)."""
        return self.source.type != "random-init" or bool(self.source.package or self.source.path)


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]
    path: Path | None = None

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model {m.name!r} is listed twice")
            seen.add(m.name)
        names = {m.name for m in self.models}
        for m in self.models:
            for tower in m.towers.values():
                if tower not in names:
                    raise ValueError(f"model {m.name!r} names unknown tower {tower!r}")
            if m.triton_model is not None and m.triton_model not in names:
                raise ValueError(f"model {m.name!r} names unknown triton_model {m.triton_model!r}")
        return self

    @cached_property
    def by_name(self) -> dict[str, ModelSpec]:
        return {m.name: m for m in self.models}

    def served(self, names: list[str]) -> set[str]:
        """`names` plus the towers they need (a dual-tower model is served by its towers)."""
        out: set[str] = set()
        for name in names:
            out.add(name)
            out.update(self.get(name, field="models").towers.values())
        return out

    def triton_models(self, names: list[str]) -> list[str]:
        """What Triton must load (and the build must produce) for `names`: the engines behind them."""
        specs = (self.by_name[n] for n in self.served(names))
        return sorted({s.triton_name for s in specs if s.kind is not Kind.dual_tower})

    def get(self, name: str, *, field: str = "model") -> ModelSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise NotFound(f"model {name!r} is not in the registry", field=field) from None


def _merge_presets(raw: dict, presets: dict[str, dict]) -> dict:
    for m in raw.get("models") or []:
        preset = m.get("preset") if isinstance(m, dict) else None
        if preset is None:
            continue
        if preset not in presets:
            raise ConfigError(
                f"{m.get('name')}: unknown template preset {preset!r} (known: {sorted(presets)})"
            )
        m["templates"] = {**presets[preset]["templates"], **(m.get("templates") or {})}
    return raw


def load_presets(path: Path = PRESETS_FILE) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["presets"]


def load_registry(path: Path | str = DEFAULT_REGISTRY) -> Registry:
    """Load and validate; errors name the file, the model and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read registry: {exc}") from exc
    if not isinstance(raw, dict) or "models" not in raw:
        raise ConfigError(f"{path}: a registry is a mapping with a 'models' list")
    raw = _merge_presets(raw, load_presets())
    try:
        return Registry(models=raw["models"], path=path)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = list(err["loc"])
            where = ""
            if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
                models = raw["models"]
                name = (
                    models[loc[1]].get("name", f"#{loc[1]}") if isinstance(models[loc[1]], dict) else loc[1]
                )
                where = f"model {name!r}"
                loc = loc[2:]
            field = ".".join(str(p) for p in loc) or "(model)"
            lines.append(f"{path}: {where} field {field}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
