"""A pool's schedules, once per round: the due tasks submitted, the status and Events written.

Each schedule's cursor is the ``nextScheduleTime`` of the status the operator wrote last, kept
with the ``cron`` and ``timeZone`` it was found with (see `schedules`); a schedule seen for the
first time, or whose cron or time zone changed, starts from now. A task is submitted with an
idempotency key made of the pool, the schedule and the scheduled time, so an operator that
restarts before it wrote the status, or a second operator, submits nothing twice. A Redis
error leaves the cursor where it was: the time is tried again next round, until its deadline.

Whether a late time was missed depends on the operator's previous round of the pool (see
`schedules`): its time is kept in memory, by the pool's loop state, so that an operator that
restarts has none and finds the times it was away for missed, and counts only when it is
recent (`recent_round`), so that a process frozen for hours does not submit them however late.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import kopf

from agentpool.models import AgentPoolSpec, ScheduleSpec, parse_rfc3339
from agentpool.protocol import CancelOutcome, ProtocolError, TaskQueue
from agentpool.redis_errors import REDIS_FAILURES

from . import metrics
from .context import PoolState
from .observation import ActionResult, PoolObservation
from .schedules import (
    Cursor,
    ScheduleTurn,
    idempotency_key,
    previous_unfinished,
    recent_round,
    round_start,
    schedule_turn,
    settle_overlap,
)
from .status import Problem, rfc3339, sanitize

INVALID_REASON = "ScheduleInvalid"
FAILED_REASON = "ScheduleFailed"

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Previous:
    cursor: Cursor | None = None
    last_time: str | None = None
    last_task_id: str | None = None


async def run_schedules(observation: PoolObservation) -> ActionResult:
    previous_round = recent_round(_previous_round(observation.state, observation.now),
                                  observation.now, observation.spec.scaling.poll_seconds)
    schedules = observation.spec.schedules or []
    if not schedules:
        return ActionResult(status_fields={"schedules": None})  # the removed ones' entries go
    previous = _previous_entries(observation.previous_status)
    entries: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for schedule in schedules:
        entry, problem = await _run_one(observation, schedule,
                                        previous.get(schedule.name, _Previous()),
                                        previous_round)
        entries.append(entry)
        if problem is not None:
            problems.append(problem)
    return ActionResult(status_fields={"schedules": entries}, problems=tuple(problems))


def upcoming_times(spec: AgentPoolSpec, status_fields: Mapping[str, Any]) -> list[datetime]:
    """The next times of the pool's schedules that submit (none while the pool is paused or
    the schedule suspended), as a round's status entries left them."""
    if spec.paused:
        return []
    submitting = {schedule.name for schedule in spec.schedules or [] if not schedule.suspend}
    times: list[datetime] = []
    for entry in status_fields.get("schedules") or []:
        if isinstance(entry, Mapping) and entry.get("name") in submitting:
            moment = parse_rfc3339(entry.get("nextScheduleTime"))
            if moment is not None:
                times.append(moment)
    return times


def _previous_round(state: PoolState | None, now: datetime) -> datetime | None:
    """The time of this operator's previous round of the pool (None: this is its first, or
    the round has no loop state), `now` kept for the next one. Kept as long as the pool's
    loop state lives: a loop started again (the operator restarted, the pool re-created)
    has none."""
    if state is None:
        return None
    previous, state.schedules_round = state.schedules_round, now
    return previous


async def _run_one(observation: PoolObservation, schedule: ScheduleSpec, before: _Previous,
                   previous_round: datetime | None) -> tuple[dict[str, Any], Problem | None]:
    """One schedule's round: its status entry, and what keeps it from running.
    `previous_round` is the time of this operator's previous round of the pool, if any and
    recent."""
    entry: dict[str, Any] = {"name": schedule.name}
    if before.last_time is not None:
        entry["lastScheduleTime"] = before.last_time
    if before.last_task_id is not None:
        entry["lastTaskId"] = before.last_task_id
    start = round_start(schedule, before.cursor, observation.now)
    failing = observation.state is not None and observation.state.failing_since is not None
    turn = schedule_turn(schedule, start, observation.now, active=not observation.spec.paused,
                         previous_round=None if failing else previous_round)
    if turn.problem is not None:
        return entry, Problem(INVALID_REASON, f"schedule {schedule.name!r}: {turn.problem}")
    turn, problem = await _settle_overlap(observation, schedule, turn, before.last_task_id)
    submitted, created = None, False
    if problem is None:
        submitted, created, problem = await _submit(observation, schedule, turn)
    if (problem is None and submitted is not None and turn.replace_previous
            and before.last_task_id not in (None, submitted)):
        problem = await _cancel_previous(observation, schedule, turn, before.last_task_id)
    if problem is not None:
        entry.update(_cursor_fields(schedule, start))  # try again next round
        return entry, problem
    if turn.skipped is not None:
        _event(observation, "Normal", "ScheduleSkipped",
               f"schedule {schedule.name!r}: {rfc3339(turn.skipped)} skipped: task "
               f"{before.last_task_id} is still queued or running (concurrencyPolicy Forbid)")
    if turn.missed:
        _event(observation, "Warning", "ScheduleMissed",
               missed_message(schedule, turn, previous_round, observation.now))
    metrics.record_scheduled(observation.namespace, observation.name, schedule.name,
                             submitted=int(created), missed=turn.missed)
    if submitted is not None and turn.submit is not None:
        entry["lastScheduleTime"] = rfc3339(turn.submit)
        entry["lastTaskId"] = submitted
    if turn.next_time is not None:
        entry.update(_cursor_fields(schedule, turn.next_time))
    return entry, None


def _cursor_fields(schedule: ScheduleSpec, cursor: datetime) -> dict[str, str]:
    """The status fields of a cursor: the time, and the expression it belongs to."""
    return {"nextScheduleTime": rfc3339(cursor), "cron": schedule.cron,
            "timeZone": schedule.time_zone}


async def _settle_overlap(observation: PoolObservation, schedule: ScheduleSpec,
                          turn: ScheduleTurn,
                          last_task_id: str | None) -> tuple[ScheduleTurn, Problem | None]:
    """`turn` as the previous task's state settles it (`settle_overlap`); that state is read
    only when a time is due under Forbid or Replace."""
    if (turn.submit is None or schedule.concurrency_policy == "Allow"
            or last_task_id is None):
        return turn, None
    queue: TaskQueue | None = observation.queue
    if queue is None:
        return turn, _unreachable(schedule)
    try:
        previous = await queue.get(last_task_id)
    except REDIS_FAILURES:
        return turn, _unreachable(schedule)
    return settle_overlap(schedule, turn, previous_unfinished(previous, observation.now)), None


async def _cancel_previous(observation: PoolObservation, schedule: ScheduleSpec,
                           turn: ScheduleTurn, task_id: str) -> Problem | None:
    """Replace: cancel the previous task once its successor is in the queue, so a successor
    that cannot be submitted leaves the previous task be. If the cancel fails, the cursor
    stays and the next round submits nothing new (the idempotency key) and cancels again; so
    does an operator that restarts before its status write, which changes nothing."""
    queue = cast(TaskQueue, observation.queue)
    try:
        outcome = await queue.cancel(task_id)
    except REDIS_FAILURES:
        return _unreachable(schedule)
    if outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED):
        how = "cancelled" if outcome is CancelOutcome.CANCELLED else "asked to stop"
        _event(observation, "Normal", "ScheduleReplaced",
               f"schedule {schedule.name!r}: task {task_id} {how}, replaced by the task of "
               f"{rfc3339(cast(datetime, turn.submit))} (concurrencyPolicy Replace)")
    return None


def _unreachable(schedule: ScheduleSpec) -> Problem:
    return Problem(FAILED_REASON, f"schedule {schedule.name!r}: the queue cannot be reached; "
                                  "the task is submitted when it can")


async def _submit(observation: PoolObservation, schedule: ScheduleSpec,
                  turn: ScheduleTurn) -> tuple[str | None, bool, Problem | None]:
    """The task of `turn`, if it has one: its id and whether this round created it (an
    operator restarted before its status write finds the task of the time it submitted), or
    why it could not be submitted. Scheduled is posted for a task created."""
    if turn.submit is None:
        return None, False, None
    queue: TaskQueue | None = observation.queue
    if queue is None:
        return None, False, _unreachable(schedule)
    metadata = observation.pool.get("metadata") or {}
    pool_id = str(metadata.get("uid") or f"{observation.namespace}/{observation.name}")
    try:
        task_id, created = await queue.submit_once(
            schedule.payload, priority=schedule.priority, expires=schedule.expires_seconds,
            task_timeout=schedule.task_timeout_seconds, tenant=schedule.tenant,
            idempotency_key=idempotency_key(pool_id, schedule.name, turn.submit))
    except ProtocolError as error:
        return None, False, Problem(FAILED_REASON, f"schedule {schedule.name!r}: {error}")
    except REDIS_FAILURES as error:
        log.warning(f"{observation.namespace}/{observation.name}: schedule {schedule.name!r}: "
                    f"cannot submit: {sanitize(str(error))}")
        return None, False, Problem(FAILED_REASON, f"schedule {schedule.name!r}: cannot "
                                                   "submit to the queue; tried again next round")
    if created:
        _event(observation, "Normal", "Scheduled", f"schedule {schedule.name!r}: task "
               f"{task_id} submitted for {rfc3339(turn.submit)}")
    return task_id, created, None


def missed_message(schedule: ScheduleSpec, turn: ScheduleTurn, previous_round: datetime | None,
                   now: datetime) -> str:
    """The ScheduleMissed Event: how many times passed without a task, which, and why: no
    task could be submitted (no operator ran, or the queue was unreachable), or, for the
    times that came between two rounds of this operator (`previous_round` and `now`), its
    rounds came late."""
    count = (f"{'at least ' if turn.missed_capped else ''}{turn.missed} scheduled "
             f"time{'s' if turn.missed != 1 else ''}")
    first, last = turn.first_missed, turn.last_missed
    if first is not None and last is not None:
        count += f" ({rfc3339(first)})" if first == last else \
            f" ({rfc3339(first)} to {rfc3339(last)})"
    outage = ("while no task could be submitted (no operator running, or the queue "
              "unreachable)" if previous_round is None else
              "while this operator could not submit (the queue unreachable, or its rounds "
              "failing)")
    if turn.missed_late and previous_round is not None:
        late = (f"between two rounds of this operator {(now - previous_round).total_seconds():.0f}"
                " s apart (its own delay, not an outage)")
        why = (late if turn.missed_late >= turn.missed else
               f"without a task: {turn.missed - turn.missed_late} {outage}, "
               f"{turn.missed_late} {late}")
    else:
        why = outage
    then = "submitted only the latest" if turn.submit is not None else "none submitted"
    return f"schedule {schedule.name!r}: {count} passed {why}; {then}"


def _previous_entries(status: Mapping[str, Any]) -> dict[str, _Previous]:
    found: dict[str, _Previous] = {}
    for entry in status.get("schedules") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        time = parse_rfc3339(entry.get("nextScheduleTime"))
        found[entry["name"]] = _Previous(
            cursor=None if time is None else Cursor(
                time, cron=_text(entry.get("cron")), time_zone=_text(entry.get("timeZone"))),
            last_time=_text(entry.get("lastScheduleTime")),
            last_task_id=_text(entry.get("lastTaskId")),
        )
    return found


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _event(observation: PoolObservation, kind: str, reason: str, message: str) -> None:
    pool = cast(kopf.Body, observation.pool)
    if kind == "Warning":
        kopf.warn(pool, reason=reason, message=message)
    else:
        kopf.info(pool, reason=reason, message=message)
