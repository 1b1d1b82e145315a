"""The pure parts of the CLI: rates, pool summaries, and the views built from plain data."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from agentpool.cli.fleet import (
    CounterSample,
    PoolSummary,
    RateTracker,
    SecretRef,
    pool_summary,
    rates_between,
)
from agentpool.cli.views import (
    FleetRow,
    compact,
    ended_line,
    figures_grid,
    figures_json,
    fleet_grid,
    fleet_json,
    format_age,
    task_detail_grid,
    task_json,
    workers_grid,
)
from agentpool.health import pool_health
from agentpool.models import Condition
from agentpool.protocol import QueueFigures, TaskInfo, WorkerState
from agentpool.urls import redact_url

NOW = 1_700_000_000.0


def sample(at: float, **counters: int) -> CounterSample:
    return CounterSample(at, counters)


def test_rates_between_two_samples() -> None:
    rates = rates_between(sample(10, submitted=100, succeeded=50, failed=5),
                          sample(15, submitted=150, succeeded=90, failed=15))
    assert rates is not None
    assert rates.window_seconds == 5
    assert (rates.submitted_per_second, rates.succeeded_per_second) == (10, 8)
    assert rates.failed_per_second == 2
    assert rates.failure_rate == pytest.approx(10 / 50)


def test_rates_without_finished_runs_have_no_failure_rate() -> None:
    rates = rates_between(sample(0, submitted=1), sample(2, submitted=5))
    assert rates is not None
    assert rates.failure_rate is None
    assert rates.succeeded_per_second == 0


def test_rates_of_an_empty_span_or_a_reset_counter() -> None:
    assert rates_between(sample(3), sample(3)) is None
    reset = rates_between(sample(0, succeeded=500), sample(1, succeeded=2))
    assert reset is not None and reset.succeeded_per_second == 0


def test_rate_tracker_slides_its_window() -> None:
    tracker = RateTracker(window_seconds=10)
    tracker.add(sample(0, succeeded=0))
    assert tracker.rates() is None
    for t in range(1, 31):
        tracker.add(sample(t, succeeded=t * (1 if t <= 20 else 3)))
    rates = tracker.rates()
    assert rates is not None
    assert rates.window_seconds == 10
    assert rates.succeeded_per_second == pytest.approx((90 - 20) / 10)


def test_rate_tracker_starts_over_when_the_counters_were_reset() -> None:
    """Redis came back empty: the samples from before would make a span with no progress,
    and the rates would read low for a whole window."""
    tracker = RateTracker(window_seconds=300)
    for t in range(0, 101, 10):
        tracker.add(sample(t, submitted=t * 5, succeeded=t * 5))
    tracker.add(sample(101, submitted=0, succeeded=0))
    assert tracker.rates() is None
    tracker.add(sample(103, submitted=20, succeeded=10))
    rates = tracker.rates()
    assert rates is not None
    assert (rates.window_seconds, rates.submitted_per_second) == (2, 10)
    assert rates.succeeded_per_second == 5


def test_pool_summary_from_an_object() -> None:
    obj = {
        "metadata": {"name": "agents", "namespace": "ml", "creationTimestamp":
                     "2024-01-01T00:00:00Z"},
        "spec": {"redis": {"urlSecretRef": {"name": "redis"}}},
        "status": {"readyReplicas": 1, "desiredReplicas": 4, "inFlight": 7, "queued": 30,
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "Degraded", "status": "True"}],
                   "kopf": {"progress": {}}},
    }
    pool = pool_summary(obj)
    assert (pool.name, pool.namespace, pool.queue) == ("agents", "ml", "agents")
    assert (pool.ready_replicas, pool.desired_replicas, pool.in_flight) == (1, 4, 7)
    assert pool.health == "Degraded"
    assert pool.redis_secret == SecretRef("redis", "url")
    assert pool.created == datetime(2024, 1, 1, tzinfo=UTC)


def test_pool_summary_has_the_soonest_time_of_the_schedules_that_run() -> None:
    def pool(paused: bool = False) -> dict[str, Any]:
        return {
            "metadata": {"name": "p"},
            "spec": {"paused": paused, "schedules": [
                {"name": "hourly", "cron": "0 * * * *"},
                {"name": "often", "cron": "*/5 * * * *", "suspend": True},
                {"name": "nightly", "cron": "0 2 * * *"},
                {"name": "new", "cron": "@daily"},  # the operator has not written it yet
            ]},
            "status": {"schedules": [
                {"name": "hourly", "nextScheduleTime": "2026-12-04T10:00:00Z"},
                {"name": "often", "nextScheduleTime": "2026-12-04T09:05:00Z"},
                {"name": "nightly", "nextScheduleTime": "2026-12-05T02:00:00Z"},
            ]},
        }

    summary = pool_summary(pool())
    assert summary.schedules == 4
    assert summary.next_schedule_time == datetime(2026, 12, 4, 10, tzinfo=UTC)
    assert pool_summary(pool(paused=True)).next_schedule_time is None
    unscheduled = pool_summary({"metadata": {"name": "p"}, "spec": {}})
    assert (unscheduled.schedules, unscheduled.next_schedule_time) == (0, None)


def test_pool_summary_before_the_operator_wrote_status() -> None:
    pool = pool_summary({"metadata": {"name": "p"}, "spec": {"queue": "jobs",
                                                             "redis": {"url": "redis://r"}}})
    assert (pool.queue, pool.queued, pool.health, pool.redis_url) == (
        "jobs", 0, "Pending", "redis://r")
    broken = pool_summary({"metadata": {"name": "p"}, "spec": {}, "status": {"queued": "many"}})
    assert broken.queued == 0


@pytest.mark.parametrize(
    ("conditions", "paused", "health"),
    [
        ([], True, "Paused"),
        ([("Ready", "True")], False, "Ready"),
        ([("Ready", "False")], False, "NotReady"),
        ([("Ready", "True"), ("QueueReachable", "False")], False, "QueueUnreachable"),
        ([("Ready", "True"), ("Degraded", "True")], False, "Degraded"),
    ],
)
def test_pool_health(conditions: list[tuple[str, str]], paused: bool, health: str) -> None:
    assert pool_health([Condition(type=t, status=s) for t, s in conditions], paused) == health


def fleet_rows() -> list[FleetRow]:
    created = datetime.fromtimestamp(NOW - 3 * 86400 - 7200, UTC)
    alpha = PoolSummary(name="alpha", queue="a", namespace="ml", replicas=3, ready_replicas=2,
                        desired_replicas=3, queued=12, in_flight=8, dead=1, workers=2,
                        health="Ready", created=created)
    beta = PoolSummary(name="beta", queue="b", namespace="web", desired_replicas=1,
                       ready_replicas=1, health="Ready")
    rates = rates_between(sample(0, succeeded=0, failed=0), sample(60, succeeded=570, failed=30))
    return [FleetRow(alpha, rates), FleetRow(beta, None, "cannot reach Redis at redis://r: x")]


def test_fleet_grid() -> None:
    grid = fleet_grid(fleet_rows(), NOW, all_namespaces=True)
    assert grid.headers[:3] == ["NAMESPACE", "NAME", "QUEUE"]
    assert grid.rows == [
        ["ml", "alpha", "a", "2/3", "12", "8", "1", "2", "9.5/s", "5.0%", "Ready", "3d2h"],
        ["web", "beta", "b", "1/1", "0", "0", "0", "0", "-", "-", "Ready", "-"],
    ]
    assert grid.notes == [
        "DONE/S and FAILED over the last 1m; FAILED = failed runs / finished runs",
        "web/beta: no rates: cannot reach Redis at redis://r: x",
    ]
    assert fleet_grid(fleet_rows(), NOW, all_namespaces=False).headers[0] == "NAME"


def test_fleet_grid_shows_the_next_run_once_a_pool_has_schedules() -> None:
    alpha, beta = fleet_rows()
    soon = datetime.fromtimestamp(NOW + 250, UTC)
    rows = [FleetRow(replace(alpha.pool, schedules=2, next_schedule_time=soon), alpha.rates),
            FleetRow(replace(beta.pool, schedules=1), None),  # suspended, or the pool paused
            FleetRow(replace(beta.pool, name="gamma", schedules=1,
                             next_schedule_time=datetime.fromtimestamp(NOW - 1, UTC)), None)]
    grid = fleet_grid(rows, NOW, all_namespaces=False)
    assert grid.headers[-3:] == ["NEXT RUN", "HEALTH", "AGE"]
    assert [row[-3] for row in grid.rows] == ["in 4m10s", "-", "due"]
    doc = fleet_json(rows, NOW)
    assert (doc[0]["schedules"], doc[0]["next_schedule_time"]) == (2, "2023-11-14T22:17:30Z")
    assert doc[1]["next_schedule_time"] is None


def test_fleet_grid_shows_draining_pods_once_a_pool_has_some() -> None:
    """Pods that finish their runs before they go (a scale-down, a node drain, a rollout)."""
    alpha, beta = fleet_rows()
    rows = [FleetRow(replace(alpha.pool, draining_replicas=2), alpha.rates), beta]
    grid = fleet_grid(rows, NOW, all_namespaces=True)
    assert grid.headers[:6] == ["NAMESPACE", "NAME", "QUEUE", "READY", "DRAINING", "QUEUED"]
    assert [row[3:5] for row in grid.rows] == [["2/3", "2"], ["1/1", "0"]]
    assert [d["draining_replicas"] for d in fleet_json(rows, NOW)] == [2, 0]
    assert pool_summary({"metadata": {"name": "p"}, "spec": {},
                         "status": {"drainingReplicas": 3}}).draining_replicas == 3


def test_fleet_json() -> None:
    alpha, beta = fleet_json(fleet_rows(), NOW)
    assert alpha["rates"] == {"window_seconds": 60, "submitted_per_second": 0.0,
                              "succeeded_per_second": 9.5, "failed_per_second": 0.5,
                              "failure_rate": 0.05}
    assert alpha["age_seconds"] == 3 * 86400 + 7200
    assert (beta["rates"], beta["rates_error"]) == (None, "cannot reach Redis at redis://r: x")


def test_figures_views() -> None:
    figures = QueueFigures(queued_by_priority={0: 3, 9: 1}, due_delayed=1, delayed=2,
                           in_flight=4, dead=0, workers=2, stats={"succeeded": 7, "custom": 1})
    doc = figures_json("q", figures)
    assert doc["queued"] == 5
    assert doc["queued_by_priority"] == {"9": 1, "0": 3}
    assert doc["counters"]["succeeded"] == 7 and doc["counters"]["custom"] == 1
    rows = dict(figures_grid("q", figures).rows)
    assert rows["Queued"] == "5 (p9: 1, p0: 3)"
    assert rows["Custom (total)"] == "1"


def test_task_views() -> None:
    info = TaskInfo(id="t1", state="dead", payload={"p": "x" * 1000}, attempts=3, priority=0,
                    created_ms=int((NOW - 90) * 1000), started_ms=None,
                    finished_ms=int((NOW - 5) * 1000), result=None, error="boom", owner=None,
                    max_attempts=3)
    fields = dict(task_detail_grid("q", info, NOW).rows)
    assert fields["Attempts"] == "3 of 3"
    assert fields["Created"].endswith("(1m30s ago)")
    assert len(fields["Payload"]) == 500 and fields["Payload"].endswith("…")
    assert task_json("q", info)["finished"] == "2023-11-14T22:13:15.000Z"


@pytest.mark.parametrize(("error", "said"), [
    ("PermanentError: bad input\nTraceback (most recent call last):\n  File \"h.py\", line 3\n",
     ": PermanentError: bad input"),
    ("Traceback (most recent call last):\n  File \"h.py\", line 3\nValueError: no\n",
     ": ValueError: no"),
    ("\n  model refused  \n", ": model refused"),
    ("dead", ""),
    (None, ""),
])
def test_the_ended_line_has_the_exception_line_not_the_traceback(error: str | None,
                                                                  said: str) -> None:
    info = TaskInfo(id="t1", state="dead", payload=None, attempts=1, priority=0,
                    created_ms=0, started_ms=None, finished_ms=None, result=None, error=error,
                    owner=None, max_attempts=1)
    assert ended_line(info) == f"task t1 ended dead{said}"


def test_workers_grid_sorts_and_ages() -> None:
    workers = [
        WorkerState("b:2", "b", "2", "draining", 1, 5, 0, 4, NOW - 3, NOW - 4000),
        WorkerState("a:1", "a", "1", "running", 0, 9, 1, 4, NOW - 12, 0, drain_requested=True),
    ]
    grid = workers_grid(workers, NOW, "q")
    assert grid.rows == [
        ["a", "1", "drain-requested", "0/4", "9", "1", "12s", "-"],
        ["b", "2", "draining", "1/4", "5", "0", "3s", "1h6m"],
    ]


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (59.9, "59s"), (60, "1m"), (125, "2m5s"), (3600, "1h"),
    (7380, "2h3m"), (86400, "1d"), (90000, "1d1h"), (-5, "0s"),
])
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_compact() -> None:
    assert compact(None) == "-"
    assert compact("multi\n  line") == "multi line"
    assert compact({"a": [1, 2]}) == '{"a":[1,2]}'
    assert compact("x" * 100, 10) == "x" * 9 + "…"


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://user:p%40ss@h/1", "rediss://user:***@h/1"),
    ("redis://lonesecret@h", "redis://***@h"),
    ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
    ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=***"),
    ("redis://u:pw@h:notaport", "***"),
    ("", "***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
