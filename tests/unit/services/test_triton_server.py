"""The local tritonserver's command line: what `embedfleet serve` runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.config import Settings
from services.triton_server import LocalTriton, TritonLayout


@pytest.fixture
def layout() -> TritonLayout:
    try:
        return TritonLayout.find()
    except Exception as exc:  # the wheel is a dependency; say so rather than fail obscurely
        pytest.skip(f"nvidia-pytriton's tritonserver not found: {exc}")


def test_niceness_is_set_at_exec_so_every_stub_inherits_it(layout: TritonLayout, tmp_path: Path) -> None:
    ports = {"triton_http_port": 18000, "triton_grpc_port": 18001, "triton_metrics_port": 18002}
    plain = LocalTriton(Settings(data_dir=tmp_path, **ports)).command(tmp_path)
    assert plain[0] == str(layout.binary)
    niced = LocalTriton(Settings(data_dir=tmp_path, triton_nice=7, **ports)).command(tmp_path)
    assert niced[:3] == [shutil.which("nice"), "-n", "7"]
    assert niced[3:] == plain
    with pytest.raises(ValueError):
        Settings(triton_nice=20)
