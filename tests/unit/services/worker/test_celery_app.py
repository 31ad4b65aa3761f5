"""Redelivery of a lost chunk is bounded by the visibility timeout, not by kombu's default sweep period."""

from __future__ import annotations

import pytest

from services.config import Settings
from services.worker.celery_app import make_celery, transport_options


@pytest.mark.parametrize("timeout", [10, 60, 300, 3600])
def test_the_unacked_sweep_runs_at_least_every_tenth_of_the_timeout_and_at_most_every_10_s(
    timeout: int,
) -> None:
    opts = transport_options(timeout)
    period = opts["unacked_restore_interval"] * opts["unacked_restore_throttle"]
    assert opts["visibility_timeout"] == timeout
    assert 1 <= period <= max(1, timeout // 10) and period <= 10  # kombu's default: 10 x 10 = 100 s


def test_the_app_uses_them() -> None:
    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0", job_visibility_timeout_s=20))
    assert app.conf.broker_transport_options == transport_options(20)
