"""bench/vlm_throughput.py's random backbone: registered as vlm-shapes is, only the backbone differs, and
the gateway's preprocessing and the engine run it in-process as the bench's raw reference does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import vlm_throughput as vt
from services.config import Settings
from services.registry import load_registry
from services.vlm import VlmItem


def test_a_random_backbone_takes_vlm_shapes_entry_and_grid(tmp_path: Path) -> None:
    name, settings = vt.random_backbone("tiny", tmp_path)
    registry = load_registry(settings.registry_path)
    spec, shapes = registry.get(name), registry.get(vt.MODEL)
    assert settings.model_repository == tmp_path / "repository"
    assert spec.source_dir() == tmp_path / "backbone" and spec.dimension == 32
    differs = {"name", "source", "dimension"}
    assert spec.model_dump(exclude=differs) == shapes.model_dump(exclude=differs)
    same = "preprocessor_config.json"
    assert (spec.source_dir() / same).read_text() == (shapes.source_dir() / same).read_text()

    raw = vt.Raw(settings, name)
    pngs, _ = vt.inputs(4, 0)
    rate = raw.run([VlmItem(images=(x,)) for x in pngs], batch=2, seconds=0.0)
    assert rate["per_s"] > 0 and 0 < rate["preprocess_share"] < 1
    item = VlmItem(images=(pngs[0],))
    ours, theirs = raw.prepare(item), vt.Raw(Settings(), vt.MODEL).prepare(item)
    np.testing.assert_array_equal(ours.grid_thw, theirs.grid_thw)
    np.testing.assert_array_equal(ours.pixel_values, theirs.pixel_values)
