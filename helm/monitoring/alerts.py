"""Prometheus alert rules as code: every alert the fleet ships, with thresholds taken from the code.

Each alert keeps its `signal` apart from its firing condition so that tests can show the signal has
data against a live Prometheus, which a firing-only expression cannot. docs/operations.md has a
runbook entry per alert name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.config import Settings


@dataclass(frozen=True)
class Alert:
    """One alert: `signal` is a PromQL expression that returns data whenever its metrics exist;
    the rule fires on `(signal) condition`."""

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


def ratio(numerator: str, denominator: str, by: str) -> str:
    """`numerator / denominator` per `by`, but 0 rather than no data when the numerator has no series
    (no 5xx yet is a healthy 0 %, not a gap in the graph). Dashboards use it too."""
    den = f"sum by ({by}) ({denominator})"
    return f"(sum by ({by}) ({numerator}) or {den} * 0) / {den}"


# A `Settings` default, so that the threshold follows the code rather than a copy of it.
MAX_QUEUE_INPUTS: int = Settings.model_fields["max_queue_inputs"].default
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
            ratio(f'rate({req}{{status=~"5.."}}[5m])', f"rate({req}[5m])", "namespace, model"),
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
            ratio(
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
            ratio(
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
