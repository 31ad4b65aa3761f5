"""Fixtures for the deploy tests: promtool and the chart rendered per values file."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml

from tests.unit.deploy.deploy_support import CHART, VALUES_FILES, render_chart


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
