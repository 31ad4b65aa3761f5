"""Alert rules and dashboards without a running fleet: generated files are current, every query
parses (promtool), names only metrics the fleet exports or has declared, and promtool's rule unit
tests pass. The live half is tests/integration/test_monitoring.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from helm.monitoring import embedfleet_monitoring
from helm.monitoring.alerts import alerts
from tests.unit.deploy import promql
from tests.unit.deploy.deploy_support import REPO

RULES_TEST = REPO / "helm" / "monitoring" / "tests" / "rules_test.yml"


def test_generated_files_are_current() -> None:
    stale = embedfleet_monitoring.stale_files()
    assert not stale, f"run {embedfleet_monitoring.COMMAND}: {stale}"


def test_required_dashboards_and_variables() -> None:
    titles = set()
    for path in embedfleet_monitoring.DASHBOARDS_DIR.glob("*.json"):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"namespace", "model", "instance"} <= variables, path.name
        assert board["panels"], path.name
    expected = {"Overview", "Batching", "Triton", "Cache", "Indexing and migrations"}
    assert {t.removeprefix("Embedfleet / ") for t in titles} == expected


def test_every_query_parses(promtool: str, tmp_path: Path) -> None:
    """promtool parses each panel query (as a recording rule) and each alert; errors name the culprit."""
    queries = promql.shipped_queries()
    assert len(queries) > 30
    rules = [
        {"record": f"embedfleet:query_check:{i}", "expr": promql.concrete(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_query(promtool: str, tmp_path: Path) -> None:
    """Negative control for the parse check above."""
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "bad",
                        "rules": [
                            {"record": "x:y", "expr": "sum by (model (rate(embedfleet_requests_total[1m]))"}
                        ],
                    }
                ]
            }
        )
    )
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60).returncode


def test_queries_name_only_exported_or_declared_metrics() -> None:
    known = promql.known_sample_names()
    unknown = {}
    for where, expr in promql.shipped_queries():
        missing = promql.metric_names(expr) - known
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, json.dumps(unknown, indent=1)


def test_metric_name_extraction_is_a_parser_not_a_regex() -> None:
    expr = (
        'sum by (model, le) (rate(embedfleet_batch_size_bucket{model=~"$model"}[$__rate_interval])) '
        "/ on (model) group_left max by (model) (nv_inference_count) or vector(0)"
    )
    assert promql.metric_names(expr) == {"embedfleet_batch_size_bucket", "nv_inference_count"}


def test_every_gateway_metric_is_on_a_dashboard() -> None:
    """The reverse direction: a metric added to services/metrics.py without a panel is flagged."""
    used = {n for _, expr in promql.dashboard_queries() for n in promql.metric_names(expr)}
    unshown = sorted(f for f, samples in promql.gateway_families().items() if not samples & used)
    assert not unshown, f"gateway metrics on no dashboard: {unshown}"


def test_future_metrics_are_declared_once_and_used() -> None:
    """Declared-but-not-yet-exported names must not collide with real ones, and must be used."""
    assert not promql.FUTURE_METRICS & promql.gateway_sample_names()
    used = {n for _, expr in promql.shipped_queries() for n in promql.metric_names(expr)}
    assert used >= promql.FUTURE_METRICS


def test_alerts_cover_the_issue_and_have_runbooks() -> None:
    names = [a.name for a in alerts()]
    signals = " ".join(a.signal for a in alerts())
    for needle in (
        'status=~"5.."',
        "embedfleet_request_duration_seconds_bucket",
        "queue_full",
        "embedfleet_queue_depth",
        "embedfleet_encoder_up",
        "embedfleet_jobs_oldest_age_seconds",
        "embedfleet_migration_documents_total",
        "compensated",
    ):
        assert needle in signals, needle
    runbook = (REPO / "docs" / "operations.md").read_text()
    missing = [n for n in names if f"### {n}" not in runbook]
    assert not missing, f"no runbook entry in docs/operations.md: {missing}"


def test_rule_file_checks_and_unit_tests_pass(promtool: str) -> None:
    rules_file = str(embedfleet_monitoring.RULES_FILE)
    check = subprocess.run(
        [promtool, "check", "rules", rules_file], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120
    )
    assert test.returncode == 0, test.stdout + test.stderr
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert tested == {a.name for a in alerts()}, "every alert needs a promtool unit test"
