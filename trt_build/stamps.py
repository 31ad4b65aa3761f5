"""Build reports and stamps: what makes every `embedfleet build` idempotent.

A stamp (`<model>/.build.json`) records a digest of every input (registry entry, weights, build code,
target options); a build whose digest matches, with its outputs present, does nothing and says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

BUILD_CODE = [
    Path(__file__).with_name(n)
    for n in (
        "build.py",
        "stamps.py",
        "export.py",
        "cross_encoder.py",
        "parity.py",
        "pooling.py",
        "model_files.py",
        "python_model.py",
        "run_plan.py",
        "triton_config.py",
        "torch_cuda_model.py",
        "buckets.py",
        "torch_target.py",
        "towers.py",
        "vlm_build.py",
        "vlm_model.py",
        "vlm_random.py",
        "vlm_target.py",
    )
]
STAMP = ".build.json"


@dataclass
class BuildReport:
    model: str
    target: str
    actions: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    up_to_date: bool = False

    def say(self, line: str) -> None:
        self.actions.append(line)
        print(f"[build {self.model}] {line}", flush=True)


def inputs_digest(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def up_to_date(stamp_path: Path, digest: str, outputs_exist: bool, report: BuildReport) -> bool:
    """True (and said) when the stamp records this digest and the outputs are there."""
    if outputs_exist and stamp_path.exists() and json.loads(stamp_path.read_text()).get("digest") == digest:
        report.up_to_date = True
        report.say(f"up to date ({stamp_path}); nothing to do")
        return True
    return False


def write_stamp(stamp_path: Path, digest: str, report: BuildReport) -> None:
    stamp_path.write_text(json.dumps({"digest": digest, "figures": report.figures}, indent=2, sort_keys=True))
