"""bench/vlm_gpu.py dry-run on CPU (a tiny backbone): the script the GPU run will use works end to end,
and its bucketed path gives the eager vectors (no graph is captured off CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import vlm_gpu


def test_the_gpu_bench_runs_on_cpu_with_a_tiny_backbone(tmp_path: Path) -> None:
    out = tmp_path / "vlm_gpu.json"
    vlm_gpu.main(
        ["--size", "tiny", "--device", "cpu", "--repeats", "1", "--max-seq", "512", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["graphs"] == 0 and report["gpu"] is None
    assert sorted(report["rows"]) == sorted(f"{k}_b{b}" for k in ("text", "image") for b in vlm_gpu.BATCHES)
    for name, row in report["rows"].items():
        assert row["min_cosine"] > 0.99999, name
        assert row["eager_ms"] > 0 and row["graph_ms"] > 0
    assert report["rows"]["image_b1"]["tokens"] > report["rows"]["text_b1"]["tokens"] // 2
