"""TensorRT optimisation profiles derived from the registry's batching block.

The same fields size the gateway batcher and Triton's max_batch_size, so the engine can never be built
for shapes the gateway will not send (or refuse shapes it will).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.registry import ModelSpec


@dataclass(frozen=True)
class Profile:
    """min/opt/max (batch, sequence) for every dynamic input."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def text_profile(spec: ModelSpec) -> Profile:
    b = spec.batching
    max_seq = spec.max_seq_length
    opt_seq = min(b.opt_seq_len, max_seq)
    opt_batch = min(b.opt_batch_size, b.max_batch_size)
    return Profile(
        min=(1, min(b.min_seq_len, max_seq)), opt=(opt_batch, opt_seq), max=(b.max_batch_size, max_seq)
    )


def trtexec_shapes(profile: Profile, inputs: tuple[str, ...]) -> list[str]:
    """The same profile as trtexec flags, for building outside Python."""
    flags = []
    for key, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        dims = ",".join(f"{name}:{shape[0]}x{shape[1]}" for name in inputs)
        flags.append(f"--{key}Shapes={dims}")
    return flags
