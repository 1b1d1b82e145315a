from __future__ import annotations

import itertools

import pytest

from agentpool.cli.demo.summary import TaskRecord, percentile, summarize, wait_seconds

_ids = (f"t{n}" for n in itertools.count())


def record(state: str | None, created: int = 0, started: int | None = None,
           finished: int | None = None, *, attempts: int = 1, task_id: str = "") -> TaskRecord:
    return TaskRecord(id=task_id or next(_ids), state=state, attempts=attempts,
                      created_ms=created, started_ms=started, finished_ms=finished)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([3.0, 1.0, 2.0], 50) == 2
    assert percentile([7.0], 95) == 7


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_all_succeeded() -> None:
    records = [record("succeeded", 1000, 1000 + 100 * i, 2000 + 100 * i) for i in range(10)]
    summary = summarize(records, retried=2, requeued_after_kill=3, killed_worker="w-2")
    assert summary.submitted == 10
    assert summary.succeeded == 10
    assert summary.lost == 0
    assert summary.pending == 0
    assert summary.ok
    assert summary.retried == 2
    assert summary.requeued_after_kill == 3
    assert summary.killed_worker == "w-2"
    assert summary.duration_seconds == pytest.approx(1.9)
    assert summary.throughput_per_second == pytest.approx(10 / 1.9)
    assert summary.wait_p50_seconds == pytest.approx(0.4)
    assert summary.wait_p95_seconds == pytest.approx(0.9)
    assert summary.wait_max_seconds == pytest.approx(0.9)


def test_final_states_and_pending_are_not_lost() -> None:
    records = [
        record("succeeded", 0, 10, 20),
        record("dead", 0, 10, 30, attempts=5),
        record("cancelled", 0, None, 5, attempts=0),
        record("queued", 0, attempts=0),
        record("delayed", 0, 15, attempts=1),
        record("running", 0, 40, attempts=2),
    ]
    summary = summarize(records, retried=1, requeued_after_kill=0)
    assert (summary.succeeded, summary.dead_lettered, summary.cancelled) == (1, 1, 1)
    assert summary.pending == 3
    assert summary.lost == 0
    assert not summary.ok


def test_missing_or_unknown_tasks_are_lost() -> None:
    records = [record("succeeded", 0, 1, 2), record(None), record("mystery")]
    summary = summarize(records, retried=0, requeued_after_kill=0)
    assert summary.lost == 2
    assert not summary.ok
    assert summary.as_dict()["ok"] is False


def test_requeued_tasks_that_succeeded_later() -> None:
    records = [
        record("succeeded", 0, 5, 9, task_id="a", attempts=2),
        record("dead", 0, 5, 9, task_id="b", attempts=5),
        record("succeeded", 0, 1, 2, task_id="c"),
    ]
    summary = summarize(records, retried=0, requeued_after_kill=2, requeued_ids={"a", "b"})
    assert summary.requeued_after_kill == 2
    assert summary.requeued_then_succeeded == 1


def test_wait_counts_started_tasks_only() -> None:
    records = [record("succeeded", 1000, 1250, 2000), record("queued", 1000),
               record(None, started=5)]
    assert wait_seconds(records) == [0.25]


def test_throughput_counts_finished_tasks_over_first_submit_to_last_finish() -> None:
    records = [record("succeeded", 0, 0, 500), record("dead", 500, 600, 2000),
               record("running", 0, 100)]
    summary = summarize(records, retried=0, requeued_after_kill=0)
    assert summary.duration_seconds == 2.0
    assert summary.throughput_per_second == 1.0


def test_nothing_finished_has_zero_throughput() -> None:
    summary = summarize([record("queued")], retried=0, requeued_after_kill=0)
    assert summary.throughput_per_second == 0
    assert summary.duration_seconds == 0
    assert summary.wait_p50_seconds is None


def test_as_dict_is_plain_data() -> None:
    summary = summarize([record("succeeded", 0, 0, 1000, task_id="x")], retried=0,
                        requeued_after_kill=1, requeued_ids=["x"],
                        killed_worker="demo-worker-1")
    data = summary.as_dict()
    assert data["submitted"] == 1
    assert data["requeued_after_kill"] == 1
    assert data["requeued_then_succeeded"] == 1
    assert data["killed_worker"] == "demo-worker-1"
    assert data["ok"] is True
