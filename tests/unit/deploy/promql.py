"""PromQL checks shared by the deploy and integration tests: read back the committed dashboards and
rules, turn a Grafana query into one Prometheus can run, and know which metric names may appear.

Test-only (it needs promql-parser and the gateway's collectors, which the generator does not); it
reads what was committed, not what the generator would write, so a stale file is what gets tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import yaml
from prometheus_client.metrics import MetricWrapperBase

from helm.monitoring.alerts import alerts as alerts  # re-exported: the live test queries each signal
from helm.monitoring.dashboards import ALL_VALUE, VARIABLES
from helm.monitoring.embedfleet_monitoring import DASHBOARDS_DIR, RULES_FILE
from services import metrics

# Metrics that Triton's own /metrics endpoint exports (GPU ones only on a GPU host).
TRITON_METRICS: frozenset[str] = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_pending_request_count",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
    }
)
TRITON_GPU_METRICS: frozenset[str] = frozenset(m for m in TRITON_METRICS if m.startswith("nv_gpu_"))

# Declared but not yet exported: the worker, Celery backlog and migration code will add these with
# exactly these names. Panels and rules may use them; tests treat them as "parse only, no data".
FUTURE_METRICS: frozenset[str] = frozenset(
    {
        "embedfleet_jobs_queue_length",
        "embedfleet_jobs_oldest_age_seconds",
    }
)

# Series Prometheus itself synthesises for every scrape target.
PROMETHEUS_SYNTHETIC: frozenset[str] = frozenset({"up"})


def dashboard_queries(dashboards_dir: Path = DASHBOARDS_DIR) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target of every committed dashboard."""
    for path in sorted(dashboards_dir.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']} [{target.get('refId')}]", target["expr"]


def rule_exprs(rules_file: Path = RULES_FILE) -> Iterator[tuple[str, str]]:
    """(alert name, expr) for every rule of the committed rule file."""
    for group in yaml.safe_load(rules_file.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def shipped_queries() -> list[tuple[str, str]]:
    """(where, expr) for every committed panel query and alert expression."""
    return [*dashboard_queries(), *rule_exprs()]


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """What Grafana would send with every variable set to All: runnable by Prometheus as is."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in VARIABLES:
        expr = expr.replace(f"${name}", ALL_VALUE)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names of every vector selector in a PromQL expression (parsed, not regex-scraped)."""
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(concrete(expr)), visit)
    return names


def gateway_families() -> dict[str, set[str]]:
    """Metric family -> the sample names it exports, for every collector `services.metrics` defines."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("_count", "_sum", "_created"),
    }
    return {
        desc.name: {desc.name + s for s in suffixes[desc.type]}
        for obj in vars(metrics).values()
        if isinstance(obj, MetricWrapperBase)
        for desc in obj.describe()
    }


def gateway_sample_names() -> set[str]:
    """Sample names the gateway can export."""
    return set().union(*gateway_families().values())


def known_sample_names() -> set[str]:
    """Everything a panel or rule may name: gateway, Triton, Prometheus's own, and declared-future."""
    return gateway_sample_names() | TRITON_METRICS | PROMETHEUS_SYNTHETIC | FUTURE_METRICS
