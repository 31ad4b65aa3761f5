"""Grafana dashboards as code, built with grafana-foundation-sdk.

Panels are declared as plain `Panel`s (title, PromQL, unit) and turned into dashboard models by
`build_dashboard`; every query is filtered by the template variables `VARIABLES`, whose "All" value
is `ALL_VALUE`. Thresholds and ratios come from `alerts` so that panels and alerts cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_model

from .alerts import MAX_QUEUE_INPUTS, ratio

# Grafana template variables and what to substitute for them when a query is run outside Grafana.
VARIABLES = ("namespace", "model", "instance")
ALL_VALUE = ".*"
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid="${datasource}")


def sel(metric: str, *, model: bool = True, extra: str = "") -> str:
    """A selector filtered by the dashboard's template variables."""
    labels = ['namespace=~"$namespace"', 'instance=~"$instance"']
    if model:
        labels.insert(1, 'model=~"$model"')
    if extra:
        labels.append(extra)
    return f"{metric}{{{', '.join(labels)}}}"


def rate(metric: str, **kw: Any) -> str:
    """A per-second rate over Grafana's `$__rate_interval`, which adapts to the scrape interval."""
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
    """What a panel shows, apart from how the SDK lays it out (see `build_dashboard`)."""

    title: str
    queries: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""


def dashboards() -> dict[str, tuple[str, list[Panel]]]:
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
                            ratio(
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
                            ratio(
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
                    [(f"max by (collection) ({progress})", "{{collection}}")],
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
                            f"(1 - max by (collection) ({progress})) / "
                            f"clamp_min(max by (collection) (deriv({progress}[15m])), 1e-9)",
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
    """The data source picker plus one multi-select per `VARIABLES` name, "All" meaning `ALL_VALUE`."""
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
            .datasource(DATASOURCE)
            .query(sources[name])
            .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(ALL_VALUE)
        )
    return out


def build_dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    """One Grafana dashboard model (JSON-ready dict) built with grafana-foundation-sdk."""
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
        builder = builder.title(p.title).unit(p.unit).datasource(DATASOURCE).height(8).span(12)
        if p.description:
            builder = builder.description(p.description)
        for i, (expr, legend) in enumerate(p.queries):
            builder = builder.with_target(
                prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
            )
        board = board.with_panel(builder)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))
