"""Helpers shared by the deploy tests: the chart, its values files, and rendering it offline.

Imported as `tests.unit.deploy.deploy_support` from the repository root, like every shared test helper;
the monitoring generators are the package `helm.monitoring` and the query checks `tests.unit.deploy.promql`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config import Settings

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "embedfleet"
# Every values file the chart ships; each must render and validate on its own over values.yaml.
VALUES_FILES = sorted(p.name for p in CHART.glob("values*.yaml"))


def render_chart(
    values: dict[str, Any], name: str = "prod", namespace: str = "embedfleet"
) -> list[dict[str, Any]]:
    """Render the chart offline with Helm's own library; returns every object (NOTES.txt excluded)."""
    helm = pytest.importorskip("helm_python")
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=name, namespace=namespace)
    objects: list[dict[str, Any]] = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render_notes(values: dict[str, Any]) -> str:
    helm = pytest.importorskip("helm_python")
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="prod", namespace="embedfleet")
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers and init containers of a workload object (empty for anything else)."""
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def settings_fields() -> set[str]:
    """Names of `Settings` fields: what an EMBEDFLEET_* variable may set."""
    return set(Settings.model_fields)


def undeclared_settings(env_names: set[str]) -> set[str]:
    """EMBEDFLEET_* names that are not fields of services.config.Settings."""
    fields = settings_fields()
    return {
        n
        for n in env_names
        if n.startswith("EMBEDFLEET_") and n.removeprefix("EMBEDFLEET_").lower() not in fields
    }
