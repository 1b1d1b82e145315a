from __future__ import annotations

import io

from rich.console import Console

from agentpool.cli.demo.summary import TaskRecord, summarize
from agentpool.cli.demo.view import (
    PlainReporter,
    RunningRow,
    Snapshot,
    WorkerRow,
    progress_line,
    render_live,
    summary_table,
)

ROWS = [
    WorkerRow("demo-worker-1", "running", 8, 61),
    WorkerRow("demo-worker-2", "killed", None, 48),
    WorkerRow("demo-worker-3", "starting", 0, 0),
]


def render(renderable: object, width: int = 80) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(renderable)
    return buffer.getvalue()


def test_live_view_fits_a_small_terminal() -> None:
    snapshot = Snapshot(total=300, finished=150, elapsed=14.2, queued=120, in_flight=24,
                        retrying=2, workers=ROWS)
    text = render(render_live(snapshot, "agentpool demo: 300 tasks"))
    lines = text.splitlines()
    assert len(lines) <= 12
    assert all(len(line) <= 80 for line in lines)
    assert "150/300" in text and "50%" in text
    assert "demo-worker-2" in text and "killed" in text
    assert "queued 120 · in flight 24" in text


def test_live_view_shows_the_progress_of_running_tasks() -> None:
    running = [RunningRow("3d8eea95", 2, 0.8, "step 4 of 5"), RunningRow("a1b2c3d4", 1, 0.2,
                                                                          "step 1 of 5")]
    snapshot = Snapshot(total=300, finished=150, elapsed=14.2, workers=ROWS, running=running)
    text = render(render_live(snapshot, "agentpool demo: 300 tasks"))
    assert all(len(line) <= 80 for line in text.splitlines())
    [row] = [line for line in text.splitlines() if "3d8eea95" in line]
    assert "step 4 of 5" in row and " 2 " in row


def test_progress_line() -> None:
    snapshot = Snapshot(total=60, finished=30, elapsed=2.5, queued=10, in_flight=16,
                        workers=ROWS)
    line = progress_line(snapshot)
    assert "30/60 finished (50%)" in line
    assert "workers 1" in line


def test_plain_reporter_prints_at_most_once_per_interval() -> None:
    out = io.StringIO()
    reporter = PlainReporter(Console(file=out, width=200), "title", interval=1.0)
    for step in range(10):
        reporter.update(Snapshot(total=10, finished=step, elapsed=step * 0.25))
    reporter.update(Snapshot(total=10, finished=10, elapsed=2.6))
    reporter.event(2.7, "killed demo-worker-1")
    lines = out.getvalue().splitlines()
    assert lines[0] == "title"
    assert sum("finished" in line for line in lines) == 4
    assert lines[-2].endswith("10/10 finished (100%) · queued 0 · in flight 0 · retrying 0 · "
                              "workers 0")
    assert lines[-1] == "[   2.7s] killed demo-worker-1"


def test_summary_table_shows_every_figure() -> None:
    records = [TaskRecord(id=str(n), state="succeeded", created_ms=0, started_ms=n * 10,
                          finished_ms=1000 + n) for n in range(20)]
    summary = summarize(records, retried=3, requeued_after_kill=5,
                        requeued_ids={"1", "2", "3", "4", "5"}, killed_worker="demo-worker-2")
    text = render(summary_table(summary))
    for label in ("submitted", "succeeded", "retried", "dead-lettered",
                  "requeued after the kill", "then succeeded", "lost", "throughput",
                  "wait p50", "wait p95", "wait max"):
        assert label in text
    assert "demo-worker-2" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "still pending" not in text


def test_pending_tasks_are_shown_next_to_the_lost_ones() -> None:
    records = [TaskRecord(id="a", state="succeeded", created_ms=0, started_ms=5,
                          finished_ms=10),
               TaskRecord(id="b", state="queued", created_ms=0, started_ms=None,
                          finished_ms=None)]
    lines = render(summary_table(summarize(records, retried=0, requeued_after_kill=0))).splitlines()
    pending = next(i for i, line in enumerate(lines) if "still pending" in line)
    assert "lost" in lines[pending + 1]


def test_summary_table_says_what_the_kill_dead_lettered_instead_of_requeuing() -> None:
    records = [TaskRecord(id="t1", state="dead", attempts=1, created_ms=0, started_ms=10,
                          finished_ms=20)]
    summary = summarize(records, retried=0, requeued_after_kill=0, killed_worker="demo-worker-1",
                        dead_lettered_after_kill=1)
    text = " ".join(render(summary_table(summary), width=160).split())
    assert ("requeued after the kill 0 what demo-worker-1 was running; 1 more dead-lettered "
            "(attempts used up)") in text
    plain = summarize(records, retried=0, requeued_after_kill=0, killed_worker="demo-worker-1")
    assert "dead-lettered (attempts" not in render(summary_table(plain), width=160)
