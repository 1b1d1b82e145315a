"""Pure rendering for the CLI: plain data in, table rows or JSON-ready dicts out.

Each view has a ``*_json`` function (the ``-o json`` document) and a ``*_grid`` function (the
human table as headers and string cells); :func:`to_table` turns a grid into a rich renderable.
Times are passed in (``now`` in seconds since the epoch) so output is deterministic in tests.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from agentpool.cli.fleet import PoolSummary, Rates
from agentpool.cli.terminal import printable
from agentpool.protocol import (
    CancelOutcome,
    Progress,
    QueueFigures,
    TaskEvent,
    TaskInfo,
    WorkerState,
)
from agentpool.seconds import seconds_text

PREVIEW_CHARS = 60
DETAIL_CHARS = 500
COUNTER_LABELS = {
    "submitted": "Submitted",
    "succeeded": "Succeeded",
    "failed": "Failed runs",
    "retried": "Retried",
    "requeued": "Requeued",
    "dead": "Dead-lettered",
    "cancelled": "Cancelled",
    "expired": "Expired (not started in time)",
}


@dataclass(frozen=True)
class Grid:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    notes: list[str] = field(default_factory=list)
    """Lines printed under the table (e.g. why a figure is missing)."""


ONE_LINE_COLUMNS = frozenset({"PAYLOAD", "ERROR", "RESULT / ERROR", "PROGRESS", "OWNER",
                              "TENANT", "POD", "NAME", "NAMESPACE", "QUEUE", "LIMIT",
                              "DECLARED BY"})
"""Free text and names: on a narrow terminal these give up their width first (the widest
first), each cell kept on one line and cut with an ellipsis (`-o json` has them whole)."""
DROPPED_FIRST = frozenset({"TENANT", "NAMESPACE", "DECLARED BY"})
"""One-line columns a narrow terminal leaves out before the others (a task's payload and error
say more about it than its tenant)."""
WORDS_COLUMNS = frozenset({"DECLARED", "EFFECTIVE"})
"""A few figures each (a rate limit's): on a narrow terminal these wrap between them."""
NARROWEST = 8
"""A one-line column is left out, rightmost first, rather than cut below this width."""
GAP = 2
"""Blanks between two columns."""


def to_table(grid: Grid) -> RenderableType:
    """A borderless, kubectl-like table (without the title: titles are printed as their own
    line, so a narrow table does not wrap them); no headers renders as key/value pairs."""
    if not grid.headers:
        return _key_values(grid)
    return FittedTable(grid)


class FittedTable:
    """A table with headers, laid out for the width it is given (a terminal's, each refresh
    of a watch).

    Task ids, states, numbers and ages keep each cell on one line, whole: a narrow terminal
    takes width from the free-text and name columns (ONE_LINE_COLUMNS), and leaves some of
    them out (saying so under the table, unless they had nothing to show) before any would
    be cut below NARROWEST, never folding "running" into "runni" and "ng". Only a terminal
    too narrow for the ids, states and figures alone wraps them (cut, an id names no task)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        headers = self.grid.headers
        kept, fits = self._kept(options.max_width)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False,
                      padding=(0, GAP - 1, 0, 0))  # and the rule's blank between columns
        for i in kept:
            whole = headers[i] not in ONE_LINE_COLUMNS | WORDS_COLUMNS
            # Too narrow even for the ids, states and figures alone: they wrap, never cut.
            table.add_column(headers[i], overflow="ellipsis" if fits or not whole else "fold",
                             no_wrap=whole and fits)
        for row in self.grid.rows:
            table.add_row(*(_cell(row[i], one_line=headers[i] in ONE_LINE_COLUMNS)
                            for i in kept))
        yield table
        left_out = [header for i, header in enumerate(headers) if i not in kept
                    and not _empty(self.grid.rows, i)]
        if left_out:
            yield Text(f"too narrow to show {', '.join(left_out)} (widen the terminal, or "
                       "use -o json)", style="dim")

    def _kept(self, width: int) -> tuple[list[int], bool]:
        """The columns that fit in `width`, each one-line column at least NARROWEST wide (or
        as wide as its widest cell, if less), and whether they do. The first column is always
        kept; the others go, those with nothing to show ("-" in every row) first, then those
        of DROPPED_FIRST, then from the right."""
        headers, rows = self.grid.headers, self.grid.rows
        widths = [max(cell_len(printable(text)) for text in [header, *(row[i] for row in rows)])
                  for i, header in enumerate(headers)]
        least = [min(w, NARROWEST) if h in ONE_LINE_COLUMNS else w
                 for h, w in zip(headers, widths, strict=True)]
        kept = list(range(len(headers)))

        def fits() -> bool:
            return sum(least[i] for i in kept) + GAP * (len(kept) - 1) <= width

        while not fits():
            droppable = [i for i in kept[1:] if headers[i] in ONE_LINE_COLUMNS]
            if not droppable:
                break
            empty = [i for i in droppable if _empty(rows, i)]
            first = [i for i in droppable if headers[i] in DROPPED_FIRST]
            kept.remove((empty or first or droppable)[-1])
        return kept, fits()


def _empty(rows: Sequence[Sequence[str]], column: int) -> bool:
    """Whether a column has nothing to show: "-" in every row."""
    return all(row[column] == "-" for row in rows)


def _key_values(grid: Grid) -> Table:
    """Keys on one line, values wrapped (a traceback keeps its lines)."""
    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False,
                  highlight=False)
    if not grid.rows:
        return table
    table.add_column("", no_wrap=True, style="bold")
    for _ in range(1, max(len(row) for row in grid.rows)):
        table.add_column("", overflow="fold")
    for key, *values in grid.rows:
        table.add_row(Text(printable(key)),
                      *(Text(printable(value, keep="\n\t")) for value in values))
    return table


def _cell(text: str, *, one_line: bool) -> Text:
    """A cell's text as it is (data, never markup), control characters shown as escapes."""
    if one_line:
        return Text(printable(text), no_wrap=True, overflow="ellipsis")
    return Text(printable(text))


# -- small formatters ----------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """kubectl-style age: 42s, 5m10s, 3h4m, 2d5h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m" if s % 3600 // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{s % 86400 // 3600}h" if s % 86400 // 3600 else f"{s // 86400}d"


def format_span(seconds: float) -> str:
    """A measuring window: 2.5s below ten seconds, else like an age."""
    return f"{seconds:.1f}s" if seconds < 10 else format_age(seconds)


def iso_time(moment: datetime) -> str:
    """A time as every time the CLI prints it: UTC, marked Z (2026-12-07T13:58:37.368Z; a
    Kubernetes timestamp keeps its whole seconds, 2026-12-07T13:58:37Z)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(
        timespec="milliseconds" if moment.microsecond else "seconds")
    return text.removesuffix("+00:00") + "Z"


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def iso_s(seconds: float | None) -> str | None:
    return None if seconds is None else iso_ms(int(seconds * 1000))


def compact(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A one-line JSON preview, cut at `limit` characters."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, default=str
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ago(now: float, ms: int | None) -> str:
    return "-" if ms is None else format_age(now - ms / 1000)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


# -- tasks ---------------------------------------------------------------------------------


def task_json(queue: str, info: TaskInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "queue": queue,
        "state": info.state,
        "priority": info.priority,
        "attempts": info.attempts,
        "max_attempts": info.max_attempts,
        "created": iso_ms(info.created_ms),
        "started": iso_ms(info.started_ms),
        "finished": iso_ms(info.finished_ms),
        "expires": iso_ms(info.expires_ms),
        "timeout_seconds": None if info.timeout_ms is None else info.timeout_ms / 1000,
        "after": list(info.after),
        "tenant": info.tenant,
        "capped": info.capped,
        "owner": info.owner,
        "error": info.error,
        "payload": info.payload,
        "result": info.result,
        "progress": None if info.progress is None else {
            "fraction": info.progress.fraction, "message": info.progress.message},
    }


def format_progress(progress: Progress | None) -> str:
    if progress is None:
        return "-"
    text = f"{progress.fraction:.0%}"
    return f"{text} {compact(progress.message, 40)}" if progress.message else text


def event_json(event: TaskEvent) -> dict[str, Any]:
    return {"id": event.id, "time": iso_s(event.time), "attempt": event.attempt,
            "kind": event.kind, "data": event.data}


def event_line(event: TaskEvent) -> str:
    """One event for people: time (UTC, marked Z, as every time the CLI prints is UTC),
    attempt, kind, data (progress as a percentage)."""
    clock = time.strftime("%H:%M:%S", time.gmtime(event.time))
    millis = int(event.id.partition("-")[0]) % 1000
    if event.kind == "progress" and isinstance(event.data, dict):
        fraction = event.data.get("fraction")
        message = event.data.get("message")
        detail = (f"{fraction:.0%}" if isinstance(fraction, int | float) else "?") + (
            f" {message}" if message else "")
    else:
        detail = compact(event.data, DETAIL_CHARS)
    return f"{clock}.{millis:03d}Z attempt {event.attempt} {event.kind} {detail}"


NEXT_SHOWN = 5
"""Tasks submitted to run after a task that `get` names (it gives how many in all)."""


def task_detail_grid(queue: str, info: TaskInfo, now: float,
                     next_ids: Sequence[str] = ()) -> Grid:
    attempts = str(info.attempts)
    if info.max_attempts is not None:
        attempts += f" of {info.max_attempts}"

    def when(ms: int | None) -> str:
        return "-" if ms is None else f"{iso_ms(ms)} ({format_age(now - ms / 1000)} ago)"

    rows = [
        ["ID", info.id],
        ["Queue", queue],
        ["State", f"{info.state} (waits for its tenant's cap on runs at once)"
                  if info.capped else info.state],
        ["Priority", str(info.priority)],
        *([["Tenant", shown_tenant(info.tenant, "-")]] if info.tenant is not None else []),
        ["Attempts", attempts],
        ["Created", when(info.created_ms)],
        ["Started", when(info.started_ms)],
        ["Finished", when(info.finished_ms)],
        *([["Expires", f"{iso_ms(info.expires_ms)} (a run may not start later)"]]
          if info.expires_ms is not None else []),
        *([["Timeout", f"{seconds_text(info.timeout_ms / 1000)} s per run (or the pool's task "
                       "timeout, if shorter)"]]
          if info.timeout_ms is not None else []),
        *([["After", f"{', '.join(info.after)} (runs once they have all succeeded)"]]
          if info.after else []),
        *([["Next", ", ".join(next_ids[:NEXT_SHOWN])
            + (f" and {len(next_ids) - NEXT_SHOWN} more" if len(next_ids) > NEXT_SHOWN else "")
            + " (submitted to run after it)"]] if next_ids else []),
        ["Owner", info.owner or "-"],
        ["Error", info.error or "-"],
        ["Progress", format_progress(info.progress)],
        ["Payload", compact(info.payload, DETAIL_CHARS)],
        ["Result", compact(info.result, DETAIL_CHARS)],
    ]
    return Grid(headers=[], rows=rows)


def shown_tenant(tenant: str | None, none: str) -> str:
    """A tenant's name as a table shows it, `none` for no tenant. A name that could pass for
    something else (`none` itself, one in quotes, one with a blank at an end or a format
    character such as U+202E: names are compared exactly, so "acme " is not "acme") shows in
    quotes, JSON-escaped, its format characters as escapes: no two tenants look alike."""
    if tenant is None:
        return none
    if tenant != none and not tenant.startswith('"') and tenant == tenant.strip() \
            and not any(unicodedata.category(c) == "Cf" for c in tenant):
        return tenant
    quoted = json.dumps(tenant, ensure_ascii=False)
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c
                   for c in quoted)


def shown_state(info: TaskInfo, *, due: bool = False) -> str:
    """A task's state, and for a queued one parked for its tenant's cap, that it waits;
    `due`: a delayed task listed with the queued ones is due (the next claim queues it)."""
    if info.capped:
        return f"{info.state} (capped)"
    return f"{info.state} (due)" if due and info.state == "delayed" else info.state


def task_list_grid(tasks: Sequence[TaskInfo], now: float, title: str | None = None,
                   *, progress: bool = False, due: bool = False) -> Grid:
    """Tasks one per row; `progress` adds each task's latest progress (for running ones), and
    a TENANT column shows when a task of the page has one; `due`: the tasks are the queued
    ones, a delayed task among them due."""
    tenants = any(t.tenant is not None for t in tasks)
    rows = [
        [
            t.id, shown_state(t, due=due), str(t.priority),
            *([shown_tenant(t.tenant, "-")] if tenants else []),
            str(t.attempts),
            *([format_progress(t.progress)] if progress else []), _ago(now, t.created_ms),
            t.owner or "-", compact(t.error, 40) if t.error else "-", compact(t.payload),
        ]
        for t in tasks
    ]
    headers = ["ID", "STATE", "PRIO", *(["TENANT"] if tenants else []), "ATTEMPTS",
               *(["PROGRESS"] if progress else []), "AGE", "OWNER", "ERROR", "PAYLOAD"]
    return Grid(headers=headers, rows=rows, title=title)


def submitted_json(queue: str, ids: Sequence[str]) -> dict[str, Any]:
    return {"queue": queue, "ids": list(ids)}


def submitted_grid(queue: str, ids: Sequence[str], *, keyed: bool = False) -> Grid:
    """With an idempotency key the ids include those of tasks an earlier run queued under it
    (not queued again): the title says so rather than count them as new."""
    noun = "task" if len(ids) == 1 else "tasks"
    title = f"Submitted {len(ids)} {noun} to queue {queue}"
    if keyed:
        title += " (under an idempotency key: tasks queued before under it keep their ids)"
    return Grid(headers=["ID"], rows=[[i] for i in ids], title=title)


def waited_json(queue: str, tasks: Sequence[TaskInfo],
                pending: Sequence[str]) -> dict[str, Any]:
    return {"queue": queue, "tasks": [task_json(queue, t) for t in tasks],
            "pending": list(pending)}


def waited_grid(queue: str, tasks: Sequence[TaskInfo], pending: Sequence[str]) -> Grid:
    rows = [
        [t.id, t.state, str(t.attempts),
         compact(t.result) if t.state == "succeeded" else compact(t.error)]
        for t in tasks
    ]
    rows += [[task_id, "pending", "-", "-"] for task_id in pending]
    return Grid(headers=["ID", "STATE", "ATTEMPTS", "RESULT / ERROR"], rows=rows,
                title=f"Queue {queue}")


def ended_line(info: TaskInfo) -> str:
    """How a finished task ended, with its error unless that only repeats the state: the
    error's first line (the exception), not a traceback after it (`get` shows it whole)."""
    error = exception_line(info.error or "")
    detail = f": {error}" if error and error != info.state else ""
    return f"task {info.id} ended {info.state}{detail}"


TRACEBACK_START = "Traceback (most recent call last):"


def exception_line(error: str) -> str:
    """The exception line of a stored error: its first line that is not blank, or the last
    one of an error that starts with Python's traceback (which ends with the exception)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0] == TRACEBACK_START else lines[0]


CANCEL_TEXT = {
    CancelOutcome.CANCELLED: "cancelled",
    CancelOutcome.REQUESTED: "cancel requested: the task is running and its worker will stop it",
    CancelOutcome.FINISHED: "not cancelled: the task already finished",
    CancelOutcome.UNKNOWN: "not cancelled: no such task",
}


def cancel_json(queue: str, task_id: str, outcome: CancelOutcome) -> dict[str, Any]:
    return {"id": task_id, "queue": queue, "outcome": outcome.value}


def cancel_line(task_id: str, outcome: CancelOutcome) -> str:
    return f"{task_id}: {CANCEL_TEXT[outcome]}"


# -- queue figures -------------------------------------------------------------------------


def figures_json(queue: str, figures: QueueFigures,
                 rates: Rates | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "queue": queue,
        "queued": figures.queued,
        "queued_by_priority": {str(p): n for p, n in _queued_priorities(figures)},
        "capped": figures.capped,
        "delayed": figures.delayed,
        "deferred": figures.deferred,
        "in_flight": figures.in_flight,
        "dead": figures.dead,
        "workers": figures.workers,
        "counters": {name: figures.stats.get(name, 0) for name in _counter_names(figures.stats)},
    }
    if rates is not None:
        doc["rates"] = rates_json(rates)
    return doc


def rates_json(rates: Rates) -> dict[str, Any]:
    return {
        "window_seconds": round(rates.window_seconds),
        "submitted_per_second": round(rates.submitted_per_second, 3),
        "succeeded_per_second": round(rates.succeeded_per_second, 3),
        "failed_per_second": round(rates.failed_per_second, 3),
        "failure_rate": None if rates.failure_rate is None else round(rates.failure_rate, 4),
    }


def _queued_priorities(figures: QueueFigures) -> list[tuple[int, int]]:
    """(priority, queued) for the priorities holding tasks, highest first."""
    return [(p, n) for p, n in sorted(figures.queued_by_priority.items(), reverse=True) if n]


def _counter_names(stats: Mapping[str, int]) -> list[str]:
    return [*COUNTER_LABELS, *sorted(set(stats) - set(COUNTER_LABELS))]


def figures_grid(queue: str, figures: QueueFigures, rates: Rates | None = None) -> Grid:
    parts = [f"p{p}: {n}" for p, n in _queued_priorities(figures)]
    if figures.capped:
        parts.append(f"{figures.capped} waiting for their tenant's cap")
    queued = f"{figures.queued} ({', '.join(parts)})" if parts else str(figures.queued)
    rows = [
        ["Queued", queued],
        ["Delayed", str(figures.delayed)],
        ["Deferred", str(figures.deferred)],
        ["In flight", str(figures.in_flight)],
        ["Dead", str(figures.dead)],
        ["Workers", str(figures.workers)],
    ]
    rows += [[f"{COUNTER_LABELS.get(name, name.replace('_', ' ').capitalize())} (total)",
              str(figures.stats.get(name, 0))]
             for name in _counter_names(figures.stats)]
    if rates is not None:
        window = format_span(rates.window_seconds)
        rows += [
            [f"Submitted (last {window})", _rate(rates.submitted_per_second)],
            [f"Succeeded (last {window})", _rate(rates.succeeded_per_second)],
            [f"Failure rate (last {window})", _percent(rates.failure_rate)],
        ]
    return Grid(headers=[], rows=rows, title=f"Queue {queue}")


# -- dead letters --------------------------------------------------------------------------


def dead_grid(tasks: Sequence[TaskInfo], after_each: Sequence[int], now: float,
              queue: str, total: int | None = None) -> Grid:
    """`after_each`: how many tasks were submitted to run after each (its requeue brings
    back those its death cancelled); `total`: how many dead tasks the queue holds."""
    rows = [
        [t.id, str(t.attempts), _ago(now, t.finished_ms), str(after), compact(t.error, 50),
         compact(t.payload, 40)]
        for t, after in zip(tasks, after_each, strict=True)
    ]
    return Grid(headers=["ID", "ATTEMPTS", "DIED", "AFTER IT", "ERROR", "PAYLOAD"], rows=rows,
                title=f"Dead-letter queue of {queue}: {_shown(len(tasks), total)}")


def _shown(shown: int, total: int | None) -> str:
    """"3 shown", or "3 of 120 shown" when there are more."""
    if total is not None and total > shown:
        return f"{shown} of {total} shown"
    return f"{shown} shown"


# -- workers -------------------------------------------------------------------------------


def worker_state(worker: WorkerState) -> str:
    if worker.state == "running" and worker.drain_requested:
        return "drain-requested"
    return worker.state


def worker_state_shown(worker: WorkerState) -> str:
    """The table's STATE: ``running (not ready)`` for a running worker that claims nothing
    (why, under the table: see not_ready_notes)."""
    state = worker_state(worker)
    if state == "running" and worker.not_ready:
        return "running (not ready)"
    return state


NOT_READY_NAMED = 3
"""Workers named in a not-ready note; the others sharing its reason are counted."""


def not_ready_notes(workers: Sequence[WorkerState]) -> list[str]:
    """Why the workers shown ``running (not ready)`` claim nothing, one line per reason (as
    their ``/readyz`` says it), naming the workers: a table cell would be too narrow."""
    by_reason: dict[str, list[str]] = {}
    for w in sorted(workers, key=lambda w: (w.pod, w.instance)):
        if worker_state_shown(w) == "running (not ready)":
            by_reason.setdefault(w.not_ready, []).append(w.worker_id)
    notes = []
    for reason, ids in by_reason.items():
        named = ", ".join(ids[:NOT_READY_NAMED])
        if len(ids) > NOT_READY_NAMED:
            named += f" and {len(ids) - NOT_READY_NAMED} more"
        notes.append(f"not ready ({named}): {reason}")
    return notes


def workers_json(workers: Sequence[WorkerState], now: float) -> list[dict[str, Any]]:
    return [
        {
            "worker_id": w.worker_id,
            "pod": w.pod,
            "instance": w.instance,
            "state": worker_state(w),
            "not_ready": w.not_ready or None,
            "in_flight": w.in_flight,
            "concurrency": w.concurrency,
            "done": w.done,
            "failed": w.failed,
            "last_heartbeat": iso_s(w.last_heartbeat),
            "heartbeat_age_seconds": round(max(0.0, now - w.last_heartbeat), 3),
            "started": iso_s(w.started) if w.started else None,
        }
        for w in workers
    ]


def workers_grid(workers: Sequence[WorkerState], now: float, queue: str) -> Grid:
    rows = [
        [
            w.pod, w.instance, worker_state_shown(w), f"{w.in_flight}/{w.concurrency}",
            str(w.done), str(w.failed), format_age(now - w.last_heartbeat),
            format_age(now - w.started) if w.started else "-",
        ]
        for w in sorted(workers, key=lambda w: (w.pod, w.instance))
    ]
    return Grid(
        headers=["POD", "INSTANCE", "STATE", "IN-FLIGHT", "DONE", "FAILED", "HEARTBEAT", "UP"],
        rows=rows, title=f"Workers of queue {queue}: {len(workers)}",
        notes=not_ready_notes(workers),
    )


# -- fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetRow:
    pool: PoolSummary
    rates: Rates | None = None
    rates_error: str | None = None


def fleet_json(rows: Sequence[FleetRow], now: float) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        p = row.pool
        out.append({
            "namespace": p.namespace,
            "name": p.name,
            "queue": p.queue,
            "health": p.health,
            "problem": p.problem,
            "replicas": p.replicas,
            "ready_replicas": p.ready_replicas,
            "desired_replicas": p.desired_replicas,
            "draining_replicas": p.draining_replicas,
            "queued": p.queued,
            "delayed": p.delayed,
            "deferred": p.deferred,
            "in_flight": p.in_flight,
            "dead": p.dead,
            "workers": p.workers,
            "last_scale_reason": p.last_scale_reason,
            "schedules": p.schedules,
            "next_schedule_time": iso_time(p.next_schedule_time)
            if p.next_schedule_time else None,
            "created": iso_time(p.created) if p.created else None,
            "age_seconds": round(now - p.created.timestamp(), 3) if p.created else None,
            "rates": rates_json(row.rates) if row.rates else None,
            "rates_error": row.rates_error,
        })
    return out


def fleet_grid(rows: Sequence[FleetRow], now: float, *, all_namespaces: bool) -> Grid:
    headers = ["NAME", "QUEUE", "READY", "QUEUED", "IN-FLIGHT", "DEAD", "WORKERS",
               "DONE/S", "FAILED", "HEALTH", "AGE"]
    scheduled = any(row.pool.schedules for row in rows)
    if scheduled:
        headers.insert(-2, "NEXT RUN")
    draining = any(row.pool.draining_replicas for row in rows)
    after_ready = headers.index("READY") + 1
    if draining:
        headers.insert(after_ready, "DRAINING")
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    out: list[list[str]] = []
    notes: list[str] = []
    windows = set()
    for row in rows:
        p = row.pool
        ready = ("-" if p.desired_replicas is None
                 else f"{_num(p.ready_replicas)}/{p.desired_replicas}")
        cells = [
            p.name, p.queue, ready, str(p.queued), str(p.in_flight), str(p.dead), str(p.workers),
            _rate(row.rates.succeeded_per_second) if row.rates else "-",
            _percent(row.rates.failure_rate) if row.rates else "-",
            p.health, format_age(now - p.created.timestamp()) if p.created else "-",
        ]
        if scheduled:
            cells.insert(-2, _next_run(p, now))
        if draining:
            cells.insert(after_ready, str(p.draining_replicas))
        if all_namespaces:
            cells.insert(0, p.namespace or "-")
        out.append(cells)
        if row.rates:
            windows.add(format_span(row.rates.window_seconds))
        where = f"{p.namespace}/{p.name}" if p.namespace else p.name
        if p.problem:
            notes.append(f"{where}: {p.health}: {p.problem}")
        if row.rates_error:
            notes.append(f"{where}: no rates: {row.rates_error}")
    if windows:
        notes.insert(0, f"DONE/S and FAILED over the last {', '.join(sorted(windows))}; "
                        "FAILED = failed runs / finished runs")
    return Grid(headers=headers, rows=out, notes=notes)


def _next_run(pool: PoolSummary, now: float) -> str:
    """When the pool's next scheduled task is due: "in 4m", "due", or "-" (no schedule that
    runs: none, all suspended, or the pool paused)."""
    if pool.next_schedule_time is None:
        return "-"
    seconds = pool.next_schedule_time.timestamp() - now
    return f"in {format_age(seconds)}" if seconds >= 1 else "due"


# -- tasks by state ------------------------------------------------------------------------


def state_totals(figures: QueueFigures) -> dict[str, int]:
    """How many tasks each listable state holds, as `stats` counts them: a delayed task
    already due is queued (the next claim takes it)."""
    return {
        "queued": figures.queued,
        "delayed": figures.delayed,
        "deferred": figures.deferred,
        "running": figures.in_flight,
        "dead": figures.dead,
    }


def tasks_json(queue: str, groups: Mapping[str, Sequence[TaskInfo]],
               totals: Mapping[str, int]) -> dict[str, Any]:
    """Each task once, with its group (`listed_as`): a delayed task already due is listed,
    and counted, as queued, as `stats` counts it (its `state` stays delayed)."""
    return {
        "queue": queue,
        "totals": {state: totals.get(state, 0) for state in groups},
        "tasks": [{**task_json(queue, t), "listed_as": group}
                  for group, tasks in groups.items() for t in tasks],
    }


def tasks_grids(queue: str, groups: Mapping[str, Sequence[TaskInfo]],
                totals: Mapping[str, int], now: float, *, whose: str = "") -> list[Grid]:
    """One table per state; `whose`: a filter's words after the queue's name."""
    grids = []
    for state, tasks in groups.items():
        total = totals.get(state, len(tasks))
        shown = f"{len(tasks)} of {total}" if total > len(tasks) else str(len(tasks))
        grids.append(task_list_grid(
            tasks, now, title=f"{state.capitalize()} in {queue}{whose}: {shown}",
            progress=state == "running", due=state == "queued"))
    return grids
