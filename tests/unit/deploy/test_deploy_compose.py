"""docker-compose.yml: valid per the Compose specification, pinned images, real settings, shared files."""

from __future__ import annotations

import copy
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.deploy.deploy_support import REPO, undeclared_settings

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_validates_against_spec(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_spec_validation_catches_a_bad_service(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    """Negative control: the schema check above is not vacuous."""
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["restart_policy"] = "sometimes"
    assert list(validator.iter_errors(broken))


def test_every_embedfleet_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    names = {n for svc in compose["services"].values() for n in (svc.get("environment") or {})}
    assert any(n.startswith("EMBEDFLEET_") for n in names)
    assert not undeclared_settings(names), (
        f"not fields of services.config.Settings: {undeclared_settings(names)}"
    )


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image, f"{name} has no image (a built service still needs a pinned tag to push)"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {image} is not pinned"


def test_triton_gpu_reservation_health_and_metrics(compose: dict[str, Any]) -> None:
    triton = compose["services"]["tritonserver"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert "--metrics-port=8002" in triton["command"]
    assert any(v.endswith(":/models:ro") for v in triton["volumes"])


def test_cpu_profile_runs_without_gpu(compose: dict[str, Any]) -> None:
    cpu = [s for s in compose["services"].values() if "cpu" in s.get("profiles", [])]
    assert cpu, "no service in the cpu profile"
    assert all("deploy" not in s for s in cpu)
    aliases = {a for s in cpu for a in s.get("networks", {}).get("default", {}).get("aliases", [])}
    assert "tritonserver" in aliases, "gateway's EMBEDFLEET_TRITON_URL names tritonserver in both profiles"
    # Services outside any profile must not need the GPU either.
    assert all("deploy" not in s for s in compose["services"].values() if not s.get("profiles"))


def test_bind_mounts_exist_and_monitoring_files_are_shared_with_the_chart(compose: dict[str, Any]) -> None:
    """Prometheus and Grafana read the chart's generated files: one copy for compose and Helm."""
    mounted: list[Path] = []
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                mounted.append((REPO / src).resolve())
    missing = [p for p in mounted if not p.exists() and p.name != "model_repository"]
    assert not missing, f"bind-mount sources missing: {missing}"
    assert (REPO / "helm/embedfleet/files/alerts").resolve() in mounted
    assert (REPO / "helm/embedfleet/files/dashboards").resolve() in mounted


def test_prometheus_scrapes_gateway_triton_and_worker() -> None:
    config = yaml.safe_load((REPO / "helm/monitoring/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"gateway:8000", "tritonserver:8002"} <= targets
    assert any(t.startswith("worker:") for t in targets)
    labels = [sc.get("labels", {}) for job in config["scrape_configs"] for sc in job["static_configs"]]
    assert all("namespace" in lab for lab in labels), "dashboards filter on $namespace"
