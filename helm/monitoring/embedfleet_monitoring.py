"""Dashboards and alert rules as code, plus the PromQL helpers the tests use to check them.

One module so that the metric names, the alert thresholds and the panels cannot drift apart:
`python helm/monitoring/embedfleet_monitoring.py` writes the Grafana dashboards and the Prometheus
rule file into `helm/embedfleet/files/`, where both docker-compose (bind mounts) and the Helm chart
(`.Files.Get`) read them; `--check` fails when the committed files are stale.

Needs the project importable (thresholds come from `services.config.Settings` defaults), plus
`grafana-foundation-sdk`, `pyyaml` and, for the query helpers, `promql-parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
FILES_DIR = REPO_ROOT / "helm" / "embedfleet" / "files"
DASHBOARDS_DIR = FILES_DIR / "dashboards"
RULES_FILE = FILES_DIR / "alerts" / "embedfleet-rules.yml"

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

# Grafana template variables and what to substitute for them when a query is run outside Grafana.
VARIABLES = ("namespace", "model", "instance")
ALL_VALUE = ".*"


def _settings_default(field: str) -> Any:
    """A `Settings` default, so that alert thresholds follow the code rather than a copy of it."""
    sys.path.insert(0, str(REPO_ROOT))
    from services.config import Settings

    return Settings.model_fields[field].default


# --------------------------------------------------------------------------------------------------
# Alert rules
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One alert: `signal` is a PromQL expression that returns data whenever its metrics exist;
    the rule fires on `(signal) condition`. Keeping them apart lets a test check that the signal
    really returns data against a live Prometheus, which a firing-only expression cannot show."""

    name: str
    signal: str
    condition: str
    for_: str
    severity: str
    summary: str
    description: str

    @property
    def expr(self) -> str:
        return f"({self.signal}) {self.condition}"

    @property
    def runbook_anchor(self) -> str:
        return self.name.lower()


def _ratio(numerator: str, denominator: str, by: str) -> str:
    """`numerator / denominator` per `by`, but 0 rather than no data when the numerator has no series
    (no 5xx yet is a healthy 0 %, not a gap in the graph)."""
    den = f"sum by ({by}) ({denominator})"
    return f"(sum by ({by}) ({numerator}) or {den} * 0) / {den}"


MAX_QUEUE_INPUTS: int = _settings_default("max_queue_inputs")
QUEUE_SATURATION = 0.8
P99_TARGET_S = 0.5
BACKLOG_AGE_S = 600
COMPENSATED_SHARE = 0.2


def alerts() -> list[Alert]:
    """Every alert the fleet ships; docs/operations.md has a runbook entry per name."""
    req = "embedfleet_requests_total"
    return [
        Alert(
            "EmbedfleetHigh5xxRatio",
            _ratio(f'rate({req}{{status=~"5.."}}[5m])', f"rate({req}[5m])", "namespace, model"),
            "> 0.05",
            "5m",
            "critical",
            "More than 5% of requests for {{ $labels.model }} fail with 5xx",
            "5xx ratio is {{ $value | humanizePercentage }} in {{ $labels.namespace }}.",
        ),
        Alert(
            "EmbedfleetP99LatencyHigh",
            "histogram_quantile(0.99, sum by (namespace, route, model, le) "
            "(rate(embedfleet_request_duration_seconds_bucket[5m])))",
            f"> {P99_TARGET_S}",
            "10m",
            "warning",
            f"p99 latency of {{{{ $labels.route }}}} ({{{{ $labels.model }}}}) is over {P99_TARGET_S}s",
            "p99 is {{ $value | humanizeDuration }}.",
        ),
        Alert(
            "EmbedfleetOverloaded",
            _ratio(
                'rate(embedfleet_rejected_requests_total{reason=~"queue_full|rate_limited"}[5m])',
                f"rate({req}[5m])",
                "namespace",
            ),
            "> 0.05",
            "5m",
            "warning",
            "More than 5% of requests are refused with 429",
            "429 share is {{ $value | humanizePercentage }} in {{ $labels.namespace }}.",
        ),
        Alert(
            "EmbedfleetQueueSaturated",
            f"max by (namespace, model, instance) (embedfleet_queue_depth) / {MAX_QUEUE_INPUTS}",
            f"> {QUEUE_SATURATION}",
            "2m",
            "warning",
            "Batcher queue of {{ $labels.model }} on {{ $labels.instance }} is nearly full",
            f"Queue is {{{{ $value | humanizePercentage }}}} of EMBEDFLEET_MAX_QUEUE_INPUTS "
            f"(default {MAX_QUEUE_INPUTS}); beyond it requests get 429.",
        ),
        Alert(
            "EmbedfleetTritonNotReady",
            "min by (namespace, model) (embedfleet_encoder_up)",
            "< 1",
            "2m",
            "critical",
            "Triton model {{ $labels.model }} is not ready",
            "The gateway's readiness check of {{ $labels.model }} fails; requests for it get 503.",
        ),
        Alert(
            "EmbedfleetTritonScrapeDown",
            'up{job=~".*triton.*"}',
            "== 0",
            "2m",
            "critical",
            "Triton metrics endpoint {{ $labels.instance }} is down",
            "Prometheus cannot scrape Triton on {{ $labels.instance }}: the server is down or restarting.",
        ),
        Alert(
            "EmbedfleetJobBacklogOld",
            "max by (namespace, queue) (embedfleet_jobs_oldest_age_seconds)",
            f"> {BACKLOG_AGE_S}",
            "5m",
            "warning",
            "Oldest job in queue {{ $labels.queue }} waits for over 10 minutes",
            "Oldest job age is {{ $value | humanizeDuration }}: workers are too few or stuck.",
        ),
        Alert(
            "EmbedfleetMigrationStalled",
            # the signal has data whenever a migration ran; "unfinished" belongs to the condition
            "sum by (namespace, collection) (rate(embedfleet_migration_documents_total[15m]))",
            "== 0 and on (namespace, collection) "
            "(max by (namespace, collection) (embedfleet_migration_progress_ratio) < 1)",
            "15m",
            "warning",
            "Migration of {{ $labels.collection }} has made no progress for 15 minutes",
            "The collection is still being re-embedded but no document was migrated recently.",
        ),
        Alert(
            "EmbedfleetCompensatedReadsHigh",
            _ratio(
                'rate(embedfleet_search_requests_total{path=~"compensated|merged|v1_fallback"}[10m])',
                "rate(embedfleet_search_requests_total[10m])",
                "namespace, collection",
            ),
            f"> {COMPENSATED_SHARE}",
            "30m",
            "warning",
            "Over 20% of searches on {{ $labels.collection }} take a compensated path",
            "Share is {{ $value | humanizePercentage }}: a migration is lingering or falling back to v1.",
        ),
        Alert(
            "EmbedfleetCacheErrors",
            "sum by (namespace, backend) (rate(embedfleet_cache_errors_total[5m]))",
            "> 0",
            "10m",
            "warning",
            "Embedding cache backend {{ $labels.backend }} is failing",
            "Requests are served without cache (more load on Triton); check Redis.",
        ),
    ]


def rules_document() -> dict[str, Any]:
    """The Prometheus rule file (also the `spec` of the chart's PrometheusRule)."""
    return {
        "groups": [
            {
                "name": "embedfleet",
                "rules": [
                    {
                        "alert": a.name,
                        "expr": a.expr,
                        "for": a.for_,
                        "labels": {"severity": a.severity},
                        "annotations": {
                            "summary": a.summary,
                            "description": a.description,
                            "runbook_url": f"docs/operations.md#{a.runbook_anchor}",
                        },
                    }
                    for a in alerts()
                ],
            }
        ]
    }


# --------------------------------------------------------------------------------------------------
# Dashboards
# --------------------------------------------------------------------------------------------------


def sel(metric: str, *, model: bool = True, extra: str = "") -> str:
    """A selector filtered by the dashboard's template variables."""
    labels = ['namespace=~"$namespace"', 'instance=~"$instance"']
    if model:
        labels.insert(1, 'model=~"$model"')
    if extra:
        labels.append(extra)
    return f"{metric}{{{', '.join(labels)}}}"


def rate(metric: str, **kw: Any) -> str:
    return f"rate({sel(metric, **kw)}[$__rate_interval])"


def quantiles(metric: str, by: str, legend: str) -> list[tuple[str, str]]:
    """p50/p95/p99 of a histogram, one query each."""
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) ({rate(metric + '_bucket')}))",
            f"p{round(q * 100)} {legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def per_triton_request(duration_us: str) -> str:
    """Average seconds per successful request from one of Triton's cumulative microsecond counters."""
    return (
        f"sum by (model) ({rate(duration_us)}) / "
        f"sum by (model) ({rate('nv_inference_request_success')}) / 1e6"
    )


@dataclass(frozen=True)
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""


def _dashboards() -> dict[str, tuple[str, list[Panel]]]:
    """uid -> (title, panels). Row layout is left to Grafana's auto-placement (two panels a row)."""
    per_model = "model"
    search = rate("embedfleet_search_requests_total", model=False)
    progress = sel("embedfleet_migration_progress_ratio", model=False)
    return {
        "embedfleet-overview": (
            "Embedfleet / Overview",
            [
                Panel(
                    "Requests/s by route and model",
                    [(f"sum by (route, model) ({rate('embedfleet_requests_total')})", "{{route}} {{model}}")],
                    "reqps",
                ),
                Panel(
                    "Latency by route and model",
                    quantiles("embedfleet_request_duration_seconds", "route, model", "{{route}} {{model}}"),
                    "s",
                ),
                Panel(
                    "Responses by status",
                    [(f"sum by (status) ({rate('embedfleet_requests_total')})", "{{status}}")],
                    "reqps",
                ),
                Panel(
                    "5xx ratio",
                    [
                        (
                            _ratio(
                                rate("embedfleet_requests_total", extra='status=~"5.."'),
                                rate("embedfleet_requests_total"),
                                per_model,
                            ),
                            "{{model}}",
                        )
                    ],
                    "percentunit",
                ),
                Panel(
                    "Refused requests (429 and others) by reason",
                    [
                        (
                            f"sum by (reason) ({rate('embedfleet_rejected_requests_total', model=False)})",
                            "{{reason}}",
                        )
                    ],
                    "reqps",
                ),
                Panel(
                    "Inputs/s by modality",
                    [
                        (
                            f"sum by (model, modality) ({rate('embedfleet_inputs_total')})",
                            "{{model}} {{modality}}",
                        )
                    ],
                    "short",
                ),
                Panel("Tokens/s", [(f"sum by (model) ({rate('embedfleet_tokens_total')})", "{{model}}")]),
                Panel(
                    "Encoder ready",
                    [(f"min by (model) ({sel('embedfleet_encoder_up')})", "{{model}}")],
                    kind="stat",
                    description="1 when the gateway's last readiness check passed",
                ),
            ],
        ),
        "embedfleet-batching": (
            "Embedfleet / Batching",
            [
                Panel("Batch size", quantiles("embedfleet_batch_size", per_model, "{{model}}")),
                Panel(
                    "Padded tokens per batch", quantiles("embedfleet_batch_tokens", per_model, "{{model}}")
                ),
                Panel(
                    "Queue depth by lane",
                    [(f"sum by (model, lane) ({sel('embedfleet_queue_depth')})", "{{model}} {{lane}}")],
                ),
                Panel(
                    "Queue fill vs EMBEDFLEET_MAX_QUEUE_INPUTS default",
                    [(f"max by (model) ({sel('embedfleet_queue_depth')}) / {MAX_QUEUE_INPUTS}", "{{model}}")],
                    "percentunit",
                ),
                Panel(
                    "Time in queue vs in Triton (p95)",
                    [
                        (
                            f"histogram_quantile(0.95, sum by (model, le) "
                            f"({rate('embedfleet_queue_wait_seconds_bucket')}))",
                            "queue {{model}}",
                        ),
                        (
                            f"histogram_quantile(0.95, sum by (model, le) "
                            f"({rate('embedfleet_triton_request_duration_seconds_bucket')}))",
                            "triton {{model}}",
                        ),
                    ],
                    "s",
                ),
                Panel(
                    "Triton calls/s by outcome",
                    [
                        (
                            f"sum by (model, outcome) "
                            f"({rate('embedfleet_triton_request_duration_seconds_count')})",
                            "{{model}} {{outcome}}",
                        )
                    ],
                    "reqps",
                ),
            ],
        ),
        "embedfleet-triton": (
            "Embedfleet / Triton",
            [
                Panel(
                    "Inferences/s and executions/s",
                    [
                        (f"sum by (model) ({rate('nv_inference_count')})", "inferences {{model}}"),
                        (f"sum by (model) ({rate('nv_inference_exec_count')})", "executions {{model}}"),
                        (f"sum by (model) ({rate('nv_inference_request_success')})", "requests {{model}}"),
                    ],
                    "ops",
                ),
                Panel(
                    "Average batch executed by Triton",
                    [
                        (
                            f"sum by (model) ({rate('nv_inference_count')}) / "
                            f"sum by (model) ({rate('nv_inference_exec_count')})",
                            "{{model}}",
                        )
                    ],
                ),
                Panel(
                    "Average queue and compute time per request",
                    [
                        (per_triton_request("nv_inference_queue_duration_us"), "queue {{model}}"),
                        (per_triton_request("nv_inference_compute_infer_duration_us"), "compute {{model}}"),
                        (per_triton_request("nv_inference_request_duration_us"), "total {{model}}"),
                    ],
                    "s",
                ),
                Panel(
                    "Pending requests",
                    [(f"sum by (model) ({sel('nv_inference_pending_request_count')})", "{{model}}")],
                ),
                Panel(
                    "GPU utilisation",
                    [(f"avg by (gpu_uuid) ({sel('nv_gpu_utilization', model=False)})", "{{gpu_uuid}}")],
                    "percentunit",
                    description="Empty on the CPU profile: Triton exports it on GPU only",
                ),
                Panel(
                    "GPU memory used",
                    [
                        (
                            f"sum by (gpu_uuid) ({sel('nv_gpu_memory_used_bytes', model=False)})",
                            "used {{gpu_uuid}}",
                        ),
                        (
                            f"sum by (gpu_uuid) ({sel('nv_gpu_memory_total_bytes', model=False)})",
                            "total {{gpu_uuid}}",
                        ),
                    ],
                    "bytes",
                ),
            ],
        ),
        "embedfleet-cache": (
            "Embedfleet / Cache",
            [
                Panel(
                    "Cache hit ratio",
                    [
                        (
                            _ratio(
                                rate("embedfleet_cache_requests_total", model=False, extra='result="hit"'),
                                rate("embedfleet_cache_requests_total", model=False),
                                "backend",
                            ),
                            "{{backend}}",
                        )
                    ],
                    "percentunit",
                ),
                Panel(
                    "Cache lookups/s by result",
                    [
                        (
                            f"sum by (backend, result) "
                            f"({rate('embedfleet_cache_requests_total', model=False)})",
                            "{{backend}} {{result}}",
                        )
                    ],
                    "ops",
                ),
                Panel(
                    "Cache errors/s",
                    [
                        (
                            f"sum by (backend) ({rate('embedfleet_cache_errors_total', model=False)})",
                            "{{backend}}",
                        )
                    ],
                    "ops",
                ),
            ],
        ),
        "embedfleet-indexing": (
            "Embedfleet / Indexing and migrations",
            [
                Panel(
                    "Job queue length",
                    [(f"sum by (queue) ({sel('embedfleet_jobs_queue_length', model=False)})", "{{queue}}")],
                ),
                Panel(
                    "Oldest job age",
                    [
                        (
                            f"max by (queue) ({sel('embedfleet_jobs_oldest_age_seconds', model=False)})",
                            "{{queue}}",
                        )
                    ],
                    "s",
                ),
                Panel(
                    "Documents indexed/s by outcome",
                    [
                        (
                            f"sum by (collection, outcome) "
                            f"({rate('embedfleet_job_documents_total', model=False)})",
                            "{{collection}} {{outcome}}",
                        )
                    ],
                    "ops",
                ),
                Panel(
                    "Migration progress",
                    [
                        (
                            f"max by (collection) ({progress})",
                            "{{collection}}",
                        )
                    ],
                    "percentunit",
                ),
                Panel(
                    "Migration rate (documents/s)",
                    [
                        (
                            f"sum by (collection) "
                            f"({rate('embedfleet_migration_documents_total', model=False)})",
                            "{{collection}}",
                        )
                    ],
                    "ops",
                ),
                Panel(
                    "Migration ETA",
                    [
                        (
                            # 0 once done; very large while stalled (rate clamped, not filtered out)
                            f"(1 - max by (collection) "
                            f"({progress})) / "
                            f"clamp_min(max by (collection) (deriv("
                            f"{progress}[15m])), 1e-9)",
                            "{{collection}}",
                        )
                    ],
                    "s",
                    description="Remaining share divided by the recent progress rate",
                ),
                Panel(
                    "Search path share (compensated reads)",
                    [
                        (
                            f"sum by (collection, path) ({search}) / ignoring (path) group_left "
                            f"sum by (collection) ({search})",
                            "{{collection}} {{path}}",
                        )
                    ],
                    "percentunit",
                    description="raw is the normal path; compensated, merged and v1_fallback are "
                    "migration-time reads",
                ),
            ],
        ),
    }


def _variables() -> list[Any]:
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.models import dashboard as model

    ds = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
    out: list[Any] = [db.DatasourceVariable("datasource").label("Data source").type("prometheus")]
    sources = {
        "namespace": "label_values(up, namespace)",
        "model": 'label_values(embedfleet_requests_total{namespace=~"$namespace"}, model)',
        "instance": 'label_values(up{namespace=~"$namespace"}, instance)',
    }
    for name in VARIABLES:
        out.append(
            db.QueryVariable(name)
            .label(name)
            .datasource(ds)
            .query(sources[name])
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(ALL_VALUE)
        )
    return out


def build_dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    """One Grafana dashboard model (JSON-ready dict) built with grafana-foundation-sdk."""
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as model

    ds = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (
        db.Dashboard(title)
        .uid(uid)
        .tags(["embedfleet"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
    )
    for var in _variables():
        board = board.with_variable(var)
    for p in panels:
        builder: Any = stat.Panel() if p.kind == "stat" else timeseries.Panel()
        builder = builder.title(p.title).unit(p.unit).datasource(ds).height(8).span(12)
        if p.description:
            builder = builder.description(p.description)
        for i, (expr, legend) in enumerate(p.queries):
            builder = builder.with_target(
                prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
            )
        board = board.with_panel(builder)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))


def generated_files() -> dict[Path, str]:
    """Every generated file and its content; what `main` writes and `--check` compares."""
    out: dict[Path, str] = {}
    for uid, (title, panels) in _dashboards().items():
        out[DASHBOARDS_DIR / f"{uid}.json"] = json.dumps(build_dashboard(uid, title, panels), indent=2) + "\n"
    header = "# GENERATED by helm/monitoring/embedfleet_monitoring.py: edit that, then re-run it.\n"
    out[RULES_FILE] = header + yaml.safe_dump(rules_document(), sort_keys=False, width=1000)
    return out


# --------------------------------------------------------------------------------------------------
# Query helpers for the tests: read what was committed, not what the generator would write.
# --------------------------------------------------------------------------------------------------


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


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """What Grafana would send with every variable set to All: runnable by Prometheus as is."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in VARIABLES:
        expr = expr.replace(f"${name}", ALL_VALUE)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names of every vector selector in a PromQL expression (parsed, not regex-scraped)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(concrete(expr)), visit)
    return names


def gateway_families() -> dict[str, set[str]]:
    """Metric family -> the sample names it exports, for every collector `services.metrics` defines."""
    sys.path.insert(0, str(REPO_ROOT))
    from prometheus_client.metrics import MetricWrapperBase

    from services import metrics

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if committed files are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, content in generated_files().items():
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    for path in stale:
        print(f"stale: {path.relative_to(REPO_ROOT)} (run {Path(__file__).name})", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
