"""The Helm chart: lints, renders offline with Helm's library for every shipped values file, and every
object validates against the Kubernetes schemas; plus the properties that matter on a GPU cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.deploy_support import (
    CHART,
    containers,
    render_chart,
    render_notes,
    settings_fields,
    undeclared_settings,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate")
helm = pytest.importorskip("helm_python")

# The chart's minimum (Chart.yaml kubeVersion) and a current release: both must accept every object.
KUBERNETES_VERSIONS = ("1.29", "1.33")
# Custom resources of add-ons (prometheus-operator, KEDA): no schema ships with kubernetes-validate,
# so they get targeted assertions below instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
# Lint findings we accept, by message: the Redis/Qdrant charts are fetched by
# `helm dependency build`, which needs their repositories (unreachable here).
ACCEPTED_LINT = ("chart directory is missing these dependencies", "icon is recommended")

Objects = list[dict[str, Any]]


def by_kind(objects: Objects, kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def component(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = [
        o for o in by_kind(objects, kind) if o["metadata"]["labels"]["app.kubernetes.io/component"] == name
    ]
    assert len(found) == 1, f"expected one {kind} for {name}, got {len(found)}"
    return found[0]


def test_chart_lints_clean() -> None:
    result = helm.lint(str(CHART))
    assert not result["errors"], result["errors"]
    unexpected = [
        m for m in result["messages"] if m["severity"] > 1 and not m["error"].startswith(ACCEPTED_LINT)
    ]
    assert not unexpected, unexpected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates(rendered: tuple[str, Objects], version: str) -> None:
    values_file, objects = rendered
    failures = []
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(
                f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))} {exc.message}"
            )
    assert not failures, f"{values_file} against Kubernetes {version}:\n" + "\n".join(failures)


def test_workloads_are_non_root_with_probes_and_pinned_images(rendered: tuple[str, Objects]) -> None:
    _, objects = rendered
    deployments = by_kind(objects, "Deployment")
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments} >= {
        "gateway",
        "triton",
    }
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        for c in containers(dep):
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), f"{c['name']}: {image} not pinned"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"], f"{c['name']} has no limits"
    for name in ("gateway", "triton"):
        main = component(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert {"startupProbe", "livenessProbe", "readinessProbe"} <= main.keys(), name


def test_triton_probes_use_tritons_health_routes(rendered: tuple[str, Objects]) -> None:
    _, objects = rendered
    triton = component(objects, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_triton_shm_is_sized_memory(rendered: tuple[str, Objects]) -> None:
    _, objects = rendered
    pod = component(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm"


@pytest.mark.parametrize("values_file", ["values.yaml", "values-gpu.yaml"])
def test_triton_gets_gpus_and_gpu_nodes(values_file: str) -> None:
    objects = render_chart(yaml.safe_load((CHART / values_file).read_text()))
    pod = component(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"], "Triton must be pinned to GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_cpu_values_request_no_gpu() -> None:
    objects = render_chart(yaml.safe_load((CHART / "values-cpu.yaml").read_text()))
    pod = component(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    for c in pod["containers"]:
        assert not any("nvidia.com" in k for k in c["resources"].get("limits", {}))
    assert "nodeSelector" not in pod


def test_embedfleet_env_names_are_settings_fields(rendered: tuple[str, Objects]) -> None:
    _, objects = rendered
    names = {e["name"] for o in objects for c in containers(o) for e in c.get("env", [])}
    assert "EMBEDFLEET_TRITON_URL" in names or "EMBEDFLEET_TRITON_GRPC_PORT" in names
    assert not undeclared_settings(names), undeclared_settings(names)


def test_api_keys_come_from_a_secret_never_a_configmap(rendered: tuple[str, Objects]) -> None:
    values_file, objects = rendered
    for cm in by_kind(objects, "ConfigMap"):
        assert "api-keys" not in " ".join(cm.get("data", {})), f"{values_file}: keys in ConfigMap"
    gateway = component(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    keys_volume = next(v for v in gateway["volumes"] if v["name"] == "api-keys")
    assert "secret" in keys_volume
    env = {e["name"]: e for e in gateway["containers"][0]["env"]}
    assert "EMBEDFLEET_API_KEYS" not in env, "keys must not be plain env"
    assert env["EMBEDFLEET_API_KEYS_FILE"]["value"].startswith("/etc/embedfleet/keys/")


def test_inline_keys_render_into_a_secret() -> None:
    objects = render_chart({"apiKeys": {"existingSecret": "", "keys": {"k-123": "tenant-a"}}})
    secrets = by_kind(objects, "Secret")
    assert len(secrets) == 1
    assert yaml.safe_load(next(iter(secrets[0]["stringData"].values()))) == {"k-123": "tenant-a"}
    assert not any("k-123" in yaml.safe_dump(cm) for cm in by_kind(objects, "ConfigMap"))


def test_registry_comes_from_a_configmap_with_the_projects_registry() -> None:
    objects = render_chart({})
    cm = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-registry"))
    shipped = (Path(CHART).parents[1] / "services" / "registry" / "models.yaml").read_text()
    assert yaml.safe_load(cm["data"]["models.yaml"]) == yaml.safe_load(shipped)


def test_network_policies_only_gateway_takes_outside_ingress(rendered: tuple[str, Objects]) -> None:
    _, objects = rendered
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in by_kind(objects, "NetworkPolicy")
    }
    assert set(policies) >= {"gateway", "triton", "worker"}
    assert policies["worker"]["spec"]["ingress"] == []
    triton_from = [peer for rule in policies["triton"]["spec"]["ingress"] for peer in rule["from"]]
    pod_peers = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in triton_from
        if "podSelector" in p
    }
    assert pod_peers == {"gateway", "worker"}
    for rule in policies["triton"]["spec"]["ingress"]:
        if any("namespaceSelector" in p for p in rule["from"]):
            assert [p["port"] for p in rule["ports"]] == ["metrics"], "other namespaces reach metrics only"


def test_pdbs_and_autoscaling(rendered: tuple[str, Objects]) -> None:
    values_file, objects = rendered
    pdbs = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]
        for p in by_kind(objects, "PodDisruptionBudget")
    }
    assert pdbs >= {"gateway", "triton"}
    gateway = component(objects, "Deployment", "gateway")
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    # With an HPA the Deployment must not pin replicas, or every upgrade resets the scale.
    assert ("replicas" in gateway["spec"]) == (not hpas), values_file


def test_autoscaling_and_monitoring_values_enable_addons() -> None:
    values = yaml.safe_load((CHART / "values-autoscaling-monitoring.yaml").read_text())
    objects = render_chart(values)
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[0]
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert pods_metric["pods"]["metric"]["name"] == "embedfleet_queue_depth"
    scaled = by_kind(objects, "ScaledObject")[0]
    worker = component(objects, "Deployment", "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "celery"
    assert trigger["metadata"]["address"] == "redis:6379"
    monitors = by_kind(objects, "ServiceMonitor")
    services = {
        s["metadata"]["labels"]["app.kubernetes.io/component"]: s for s in by_kind(objects, "Service")
    }
    for mon in monitors:
        comp = mon["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        port_names = {p["name"] for p in services[comp]["spec"]["ports"]}
        assert mon["spec"]["endpoints"][0]["port"] in port_names, (
            f"{comp}: ServiceMonitor port not on Service"
        )
        assert mon["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors} == {
        "gateway",
        "triton",
    }
    dashboards = next(
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboards")
    )
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {p.name for p in (CHART / "files" / "dashboards").glob("*.json")}


def test_prometheus_rule_is_the_shared_rule_file(promtool: str, tmp_path: Path) -> None:
    """The PrometheusRule carries the same groups compose's Prometheus loads, and promtool accepts them."""
    objects = render_chart({"monitoring": {"enabled": True}})
    rule = by_kind(objects, "PrometheusRule")[0]
    shared = yaml.safe_load((CHART / "files" / "alerts" / "embedfleet-rules.yml").read_text())
    assert rule["spec"] == shared
    out = tmp_path / "rule.yml"
    out.write_text(yaml.safe_dump(rule["spec"]))
    subprocess.run([promtool, "check", "rules", str(out)], check=True, capture_output=True, timeout=60)


def test_dependencies_values_point_the_fleet_at_in_release_services() -> None:
    objects = render_chart(yaml.safe_load((CHART / "values-dependencies.yaml").read_text()), name="prod")
    env = {
        e["name"]: e.get("value")
        for e in component(objects, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["EMBEDFLEET_REDIS_URL"] == "redis://prod-redis-master:6379/0"
    assert env["EMBEDFLEET_QDRANT_URL"] == "http://prod-qdrant:6333"
    deps = {d["name"]: d for d in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]}
    assert deps["qdrant"]["repository"] == "https://qdrant.github.io/qdrant-helm"
    assert deps["qdrant"]["condition"] == "qdrant.enabled" and deps["redis"]["condition"] == "redis.enabled"


def test_external_values_use_external_urls_and_secrets() -> None:
    values = yaml.safe_load((CHART / "values-external.yaml").read_text())
    objects = render_chart(values)
    env = {
        e["name"]: e
        for e in component(objects, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["EMBEDFLEET_REDIS_URL"]["value"] == values["externalRedis"]["url"]
    assert env["EMBEDFLEET_QDRANT_URL"]["value"] == values["externalQdrant"]["url"]
    assert env["EMBEDFLEET_QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "embedfleet-qdrant"
    assert not by_kind(objects, "Secret"), "existing Secrets are referenced, not created"


def test_object_storage_sync_init_container() -> None:
    objects = render_chart(
        {
            "triton": {
                "modelRepository": {"source": "objectStorage", "objectStorage": {"uri": "s3://bucket/models"}}
            }
        }
    )
    pod = component(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert "s3://bucket/models" in init["args"]
    assert {m["name"] for m in init["volumeMounts"]} >= {"models"}
    assert not by_kind(objects, "PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"triton": {"image": {"tag": "latest"}}}, "'latest' does not match pattern"),
        ({"triton": {"gpu": {"count": "one"}}}, "/triton/gpu/count"),
        ({"settings": {"api_keys": "{}"}}, "invalid propertyName 'api_keys'"),
        ({"settings": {"no_such_setting": 1}}, "invalid propertyName 'no_such_setting'"),
        ({"apiKeys": {"existingSecret": ""}}, "/apiKeys"),
        ({"triton": {"modelRepository": {"source": "image"}}}, "/triton/server"),
        ({"gateway": {"replicas": 0}}, "/gateway/replicas"),
        ({"gatway": {}}, "gatway"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name="prod", namespace="embedfleet")
    assert message in str(err.value)


def test_schema_settings_allowlist_matches_settings_class() -> None:
    """`settings` may carry every Settings field the chart does not set itself; secrets never."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["settings"]["propertyNames"]["enum"])
    cpu = yaml.safe_load((CHART / "values-cpu.yaml").read_text())
    objects = render_chart({}) + render_chart(cpu | {"settings": {}})
    chart_set = {
        e["name"].removeprefix("EMBEDFLEET_").lower()
        for o in objects
        for c in containers(o)
        for e in c.get("env", [])
        if e["name"].startswith("EMBEDFLEET_")
    }
    # secrets, and what `embedfleet serve` sets for its own worker processes (the store host's socket and key)
    secrets = {"api_keys", "qdrant_api_key", "store_socket", "store_key"}
    assert not allowed & (chart_set | secrets), allowed & (chart_set | secrets)
    assert allowed | chart_set | secrets == settings_fields(), (
        allowed | chart_set | secrets
    ) ^ settings_fields()


def test_notes_tell_how_to_call_the_api() -> None:
    notes = render_notes({})
    assert "/v1/embeddings" in notes and "port-forward" in notes and "Authorization: Bearer" in notes
