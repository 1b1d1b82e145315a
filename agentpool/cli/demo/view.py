"""What the demo shows: a live view (or plain lines) while it runs, and the final summary.

Rendering functions take plain snapshots and return rich renderables or strings; the two
reporters only decide where and how often those go.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Protocol

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agentpool.cli.demo.summary import Summary
from agentpool.urls import redact_url

STATE_STYLES = {
    "running": "green",
    "starting": "yellow",
    "draining": "yellow",
    "killed": "bold red",
    "stopped": "dim",
}


@dataclass(frozen=True)
class WorkerRow:
    pod: str
    state: str
    in_flight: int | None
    done: int


@dataclass(frozen=True)
class RunningRow:
    task: str
    attempt: int
    fraction: float
    message: str


@dataclass(frozen=True)
class Snapshot:
    total: int
    finished: int
    elapsed: float
    queued: int = 0
    in_flight: int = 0
    retrying: int = 0
    dead: int = 0
    workers: list[WorkerRow] = field(default_factory=list)
    running: list[RunningRow] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.finished / self.total if self.total else 1.0


class Reporter(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...
    def event(self, elapsed: float, message: str) -> None: ...
    def stop(self) -> None: ...


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def render_live(snapshot: Snapshot, title: str) -> RenderableType:
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(snapshot.total, 1), completed=snapshot.finished, width=40),
        Text(f"{snapshot.finished}/{snapshot.total}", style="bold"),
        Text(f"{snapshot.fraction:4.0%}"),
        Text(_clock(snapshot.elapsed), style="dim"),
    )
    figures = Text(
        f"queued {snapshot.queued} · in flight {snapshot.in_flight} · "
        f"retrying {snapshot.retrying} · dead {snapshot.dead}",
        style="dim",
    )
    parts: list[RenderableType] = [Text(title, style="bold"), bar, figures,
                                   workers_table(snapshot.workers)]
    if snapshot.running:
        parts.append(running_table(snapshot.running))
    return Group(*parts)


def running_table(rows: list[RunningRow]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    table.add_column("running task")
    table.add_column("attempt", justify="right")
    table.add_column("progress")
    table.add_column("")
    for row in rows:
        table.add_row(row.task, str(row.attempt),
                      ProgressBar(total=1.0, completed=row.fraction, width=20), row.message)
    return table


def workers_table(rows: list[WorkerRow]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    table.add_column("worker pod")
    table.add_column("state")
    table.add_column("in flight", justify="right")
    table.add_column("done", justify="right")
    for row in rows:
        table.add_row(
            row.pod,
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            "-" if row.in_flight is None else str(row.in_flight),
            str(row.done),
        )
    return table


def progress_line(snapshot: Snapshot) -> str:
    working = sum(1 for w in snapshot.workers if w.state in ("running", "draining"))
    return (
        f"[{snapshot.elapsed:6.1f}s] {snapshot.finished}/{snapshot.total} finished "
        f"({snapshot.fraction:.0%}) · queued {snapshot.queued} · in flight {snapshot.in_flight}"
        f" · retrying {snapshot.retrying} · workers {working}"
    )


def event_line(elapsed: float, message: str) -> str:
    return f"[{elapsed:6.1f}s] {message}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def summary_table(summary: Summary) -> Table:
    table = Table(title="agentpool demo: summary", box=box.SIMPLE_HEAD, show_header=False,
                  title_justify="left", title_style="bold", padding=(0, 1))
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("note", style="dim")
    lost_style = "bold green" if summary.lost == 0 else "bold red"
    killed = (f"what {summary.killed_worker} was running" if summary.killed_worker
              else "no worker was killed")
    if summary.dead_lettered_after_kill:
        killed += (f"; {summary.dead_lettered_after_kill} more dead-lettered (attempts "
                   "used up)")
    rows: list[tuple[str, str | Text, str]] = [
        ("submitted", str(summary.submitted), ""),
        ("succeeded", str(summary.succeeded), ""),
        ("retried", str(summary.retried), "failed runs tried again"),
        ("dead-lettered", str(summary.dead_lettered), ""),
        ("requeued after the kill", str(summary.requeued_after_kill), killed),
        ("  then succeeded", str(summary.requeued_then_succeeded), "on the other workers"),
        ("resumed from a checkpoint", str(summary.resumed_from_checkpoint),
         "after the kill or a failure, not from scratch"),
        ("lost", Text(str(summary.lost), style=lost_style),
         "must be 0"),
        ("throughput", f"{summary.throughput_per_second:.1f}", "tasks/s"),
        ("wait p50", _seconds(summary.wait_p50_seconds), "submit to start"),
        ("wait p95", _seconds(summary.wait_p95_seconds), ""),
        ("wait max", _seconds(summary.wait_max_seconds), ""),
        ("duration", f"{summary.duration_seconds:.1f} s", "first submit to last finish"),
    ]
    if summary.cancelled:
        rows.insert(4, ("cancelled", str(summary.cancelled), ""))
    if summary.pending:
        rows.insert(-6, ("still pending", Text(str(summary.pending), style="bold red"),
                         "not finished when the demo stopped"))
    for row in rows:
        table.add_row(*row)
    return table


def summary_json(summary: Summary, **extra: object) -> str:
    return json.dumps({**summary.as_dict(), **extra}, indent=2)


SUBMIT_ONE_MORE = '{"mean_seconds": 2, "steps": 4}'


def try_commands(url: str, queue: str, *, task: str | None = None, task_note: str = "",
                 console_url: str | None = None) -> list[str]:
    """What to run against a kept demo, as shell lines (a command, then what it shows).

    A URL with a password is left out of them, so that the password is not printed: they
    then read it from AGENTPOOL_REDIS_URL, as every command does without --redis-url.
    """
    where = ([] if redact_url(url) != url else ["--redis-url", url]) + ["--queue", queue]
    commands = [
        (["status", *where], "the queue at a glance"),
        (["workers", *where], "the workers serving it (the killed one is gone)"),
        (["tasks", *where], "the tasks not finished yet (queued, running, dead): after the "
         "run only dead ones, if any; a task the submit below sends shows here until it ends"),
        (["dead", "list", *where], "the dead letters, each with its last error"),
    ]
    if task is not None:
        commands.append((["get", *where, task], task_note or "one task"))
    commands.append((["submit", *where, "--json", SUBMIT_ONE_MORE, "--wait"],
                     "one more task for the demo's workers; prints its outcome"))
    if console_url is None:
        commands.append((["console", "--redis-only", *where], "the web console on it"))
    return [f"{shlex.join(['agentpool', *argv])}  # {note}" for argv, note in commands]


class LiveReporter:
    """A view that redraws in place; events print above it and stay in the scrollback."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.live = Live(console=console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> LiveReporter:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.live.stop()

    def update(self, snapshot: Snapshot) -> None:
        self.live.update(render_live(snapshot, self.title), refresh=True)

    def event(self, elapsed: float, message: str) -> None:
        self.live.console.print(Text(event_line(elapsed, message), style="bold"))


class PlainReporter:
    """One line per event and a progress line at most every `interval` seconds."""

    def __init__(self, console: Console, title: str, interval: float = 1.0) -> None:
        self.console = console
        self.interval = interval
        self._last_line = -interval
        self._last_finished = -1
        console.print(title, highlight=False, soft_wrap=True)

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def stop(self) -> None:
        return None

    def update(self, snapshot: Snapshot) -> None:
        done = snapshot.finished >= snapshot.total
        due = snapshot.elapsed - self._last_line >= self.interval
        if snapshot.finished != self._last_finished and (due or done):
            self._last_line = snapshot.elapsed
            self._last_finished = snapshot.finished
            self.console.print(progress_line(snapshot), highlight=False, soft_wrap=True)

    def event(self, elapsed: float, message: str) -> None:
        self.console.print(event_line(elapsed, message), highlight=False, soft_wrap=True)
