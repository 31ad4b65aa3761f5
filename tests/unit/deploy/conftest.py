"""Fixtures for the deploy tests: the monitoring module, promtool, the chart rendered per values file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

# The project runs pytest with --import-mode=importlib, which puts no test directory on sys.path;
# the deploy tests share deploy_support.py by name, so this directory goes on it (conftest loads first).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_support import CHART, VALUES_FILES, load_monitoring, render_chart


@pytest.fixture(scope="session")
def monitoring() -> ModuleType:
    return load_monitoring()


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus` ships it)")
    return path


@pytest.fixture(scope="session", params=VALUES_FILES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(values file, rendered objects) for each shipped values file, given as user values."""
    return request.param, render_chart(yaml.safe_load((CHART / request.param).read_text()) or {})
