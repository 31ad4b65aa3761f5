"""Every dashboard panel and alert rule, run through a real Prometheus scraping a real gateway and Triton.

A Prometheus (the Debian package's binary) listens on 127.0.0.1 only, with its TSDB in a temp dir,
and scrapes the `fleet` fixture's targets every second. After some embedding traffic, each query is
sent to its HTTP API: every one must parse, and every one whose metrics the fleet now exports must
return data. Metrics that cannot have data here (GPU-only, not-yet-exported, error paths) are listed
explicitly rather than ignored.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.unit.deploy import promql as monitoring

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS = shutil.which("prometheus")
SCRAPE_INTERVAL_S = 1
READY_TIMEOUT_S = 30.0
DATA_TIMEOUT_S = 60.0
REQUESTS = 20
MODEL = "all-minilm-l6-v2"

# What plain embedding traffic must make the fleet export; if one is missing the test fails, so that
# "no data, skipped" can never hide a renamed or dropped metric.
MUST_EXPORT = {
    "embedfleet_requests_total",
    "embedfleet_request_duration_seconds_bucket",
    "embedfleet_batch_size_bucket",
    "embedfleet_batch_tokens_bucket",
    "embedfleet_queue_wait_seconds_bucket",
    "embedfleet_triton_request_duration_seconds_bucket",
    "embedfleet_tokens_total",
    "embedfleet_inputs_total",
    "embedfleet_queue_depth",
    "embedfleet_encoder_up",
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_of(target: str) -> str:
    """Name the scrape job as compose and the chart do (alerts match `job=~".*triton.*"`)."""
    body = httpx.get(f"http://{target}/metrics", timeout=5.0).text
    return "triton" if "nv_inference_" in body else "gateway"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10.0)

    def query(self, expr: str) -> dict[str, Any]:
        """The API's JSON answer; a parse error comes back as status "error", errorType "bad_data"."""
        return self.client.get("/api/v1/query", params={"query": expr}).json()

    def names(self) -> set[str]:
        return set(self.client.get("/api/v1/label/__name__/values").json()["data"])

    def scalar(self, expr: str) -> float:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus(fleet: Any, tmp_path: Path) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus binary not installed (Debian package `prometheus`)")
    jobs: dict[str, list[str]] = {}
    for target in fleet.metrics_targets:
        assert target.startswith("127.0.0.1:"), f"scrape loopback targets only, got {target}"
        jobs.setdefault(job_of(target), []).append(target)
    assert set(jobs) == {"gateway", "triton"}, f"need a gateway and a Triton target, got {jobs}"
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets, "labels": {"namespace": "test"}}]}
            for job, targets in jobs.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                if prom.client.get("/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in time"
            time.sleep(0.2)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def drive_traffic(fleet: Any) -> None:
    headers = {"Authorization": f"Bearer {fleet.api_key}"} if fleet.api_key else {}
    body = {"model": MODEL, "input": ["hello", "world"]}
    with httpx.Client(base_url=fleet.base_url, headers=headers, timeout=60.0) as client:
        # What a readiness probe does in every deployment; it sets embedfleet_encoder_up.
        assert client.get("/readyz").status_code == 200
        for i in range(REQUESTS):
            r = client.post("/v1/embeddings", json={**body, "input": [f"hello {i}", "world"]})
            assert r.status_code == 200, r.text
            # A repeat: a cache hit where a cache is on.
            assert client.post("/v1/embeddings", json=body).status_code == 200
        # An unknown model: a 4xx in the status breakdown of embedfleet_requests_total.
        assert (
            400
            <= client.post("/v1/embeddings", json={"model": "no-such-model", "input": ["x"]}).status_code
            < 500
        )
        # An indexing job, searches and a small model upgrade: the series of the indexing dashboard and
        # the migration alerts, so this test does not depend on other tests having run in its session.
        assert client.post("/v1/collections", json={"name": "monitored", "model": MODEL}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"document {i} about scraping metrics"} for i in range(40)]
        job = client.post("/v1/collections/monitored/jobs", json={"documents": docs}).json()["job_id"]
        until(lambda: client.get(f"/v1/jobs/{job}").json()["state"] not in ("queued", "running"))
        search = {"query": {"text": "metrics"}}
        assert client.post("/v1/collections/monitored/search", json=search).status_code == 200
        mig = client.post("/v1/collections/monitored/migrations", json={"to_model": "minilm-e5"})
        assert mig.status_code == 202, mig.text
        until(lambda: client.get("/v1/collections/monitored/migrations").json()["state"] == "done")
        assert client.post("/v1/collections/monitored/search", json=search).status_code == 200


def until(ready: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def wait_for_scrapes(prom: Prometheus) -> None:
    """Until Prometheus holds the traffic and enough samples after it for rate() over 1m."""
    deadline = time.monotonic() + DATA_TIMEOUT_S
    first = None
    while time.monotonic() < deadline:
        done = (
            prom.scalar("sum(embedfleet_requests_total)") >= REQUESTS
            and prom.scalar("sum(nv_inference_count)") > 0
        )
        if done:
            first = first or time.monotonic()
            if time.monotonic() - first >= 4 * SCRAPE_INTERVAL_S:
                return
        time.sleep(SCRAPE_INTERVAL_S)
    pytest.fail("traffic never showed up in Prometheus")


def test_every_panel_and_alert_query_against_live_metrics(fleet: Any, prometheus: Prometheus) -> None:
    drive_traffic(fleet)
    wait_for_scrapes(prometheus)

    present = prometheus.names()
    missing = MUST_EXPORT - present
    assert not missing, f"the fleet did not export {sorted(missing)} under traffic"

    # Only these may lack data here: GPU metrics on a CPU Triton, declared-future metrics, error paths
    # this traffic does not take, and the cache when the fleet runs with cache_backend=none.
    may_be_absent = (
        monitoring.TRITON_GPU_METRICS
        | monitoring.FUTURE_METRICS
        | {
            "embedfleet_cache_errors_total",
            "embedfleet_rejected_requests_total",
            "embedfleet_cache_requests_total",
        }
    )
    known = monitoring.known_sample_names()
    queries = [*monitoring.dashboard_queries(), *monitoring.rule_exprs()]
    # An alert fires only on trouble: its signal (the expression before the threshold) must have data.
    queries += [(f"{a.name} (signal)", a.signal) for a in monitoring.alerts()]

    alert_names = {a.name for a in monitoring.alerts()}
    failures: list[str] = []
    unexercised: list[str] = []
    for where, expr in queries:
        try:
            names = monitoring.metric_names(expr)
        except ValueError as exc:  # promql-parser's verdict; Prometheus's own follows below
            failures.append(f"{where}: does not parse: {exc}")
            names = set()
        if names - known:
            failures.append(f"{where}: names unknown metrics {sorted(names - known)}")
        answer = prometheus.query(monitoring.concrete(expr))
        if answer.get("status") != "success":
            failures.append(f"{where}: {answer.get('errorType')}: {answer.get('error')}")
            continue
        absent = names - present
        if absent:
            if not absent <= may_be_absent:
                failures.append(f"{where}: metrics never exported {sorted(absent - may_be_absent)}")
            unexercised.append(where)
            continue
        firing_only = where in alert_names  # a full alert expression has data only while it fires
        if not firing_only and not answer["data"]["result"]:
            failures.append(f"{where}: no data for {monitoring.concrete(expr)}")
    assert not failures, "\n".join(failures)
    # Guard against a vacuous pass: most queries must have been checked for data.
    assert len(unexercised) < len(queries) / 2, unexercised
