"""When a pool's schedules are due: pure functions of a schedule, a cursor and the clock.

A schedule's **cursor** is the earliest scheduled time not yet dealt with. The operator keeps it
in the pool's status as ``nextScheduleTime`` (the first time after the last round), so that
the times that pass while no operator runs are found on its return, with the ``cron`` and
``timeZone`` it was found with: a schedule whose cron or time zone changed since (or that was
removed and added again under its name with others) starts again from now, as a new one does
(`round_start`), and has no task for the times its new expression would have had before.
Each round, the times from the cursor up to now are dealt with at once:

- the latest of them is submitted, unless it is missed (below);
- the others are missed: an operator back after an outage submits one task, not one per time it
  was away (as a CronJob starts only its latest missed Job);
- a time older than ``startingDeadlineSeconds`` is missed, not submitted late, when no round
  could act on it since it came: this round is the operator's first (none ran before it), or
  its loop was failing (a failed round, the queue unreachable), or a round since saw the time
  and could not submit it, or the previous round is further back than a running loop's
  longest gap (`recent_round`: the process stopped or frozen, its rounds raising before
  the schedules). A time that came after the operator's previous round, its loop not
  failing and that round recent, is this round's to submit however late: that lateness is
  the operator's own (a slow round), not an outage, and the loop wakes at the next
  scheduled time (`seconds_until_next`) rather than a poll later. Several such times
  collapse into the latest, the others missed as the operator's delay
  (`ScheduleTurn.missed_late`);
- while the schedule is suspended or the pool paused, the times pass and nothing is submitted
  or missed;
- a time that comes while the previous task is still queued or running is skipped with
  concurrencyPolicy Forbid, and replaces that task with Replace (`settle_overlap`).

Times are read in the schedule's time zone (croniter): a time that a daylight-saving jump
skips fires at the jump, and a time that happens twice fires twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from agentpool.models import ScheduleSpec
from agentpool.protocol import TaskInfo

MISSED_COUNT_CAP = 1000
"""Counting missed times stops here: after a long outage, a schedule of every minute would
otherwise be walked through minute by minute."""
WAKE_AFTER_SECONDS = 0.05
"""How long after a scheduled time the loop wakes: woken a moment early (its timer and the
wall clock differ), a round would find nothing due and run again at once."""
ROUND_GAP_SLACK_SECONDS = 180.0
"""How much longer than its pollSeconds two rounds of a running pool loop may be apart: its
longest failure backoff (`handlers.MAX_RETRY_SECONDS`, 60 s) and a slow round's own time
(Kubernetes calls of up to 30 s, Redis commands of up to 5 s)."""
_JUST_BEFORE = timedelta(microseconds=1)


@dataclass(frozen=True)
class ScheduleTurn:
    """What one schedule does in one round."""

    submit: datetime | None = None
    """The scheduled time to submit a task for now."""
    missed: int = 0
    """Scheduled times that passed without a task (at most MISSED_COUNT_CAP)."""
    missed_late: int = 0
    """Of `missed`, the times that came between the operator's previous round and this one
    (its loop not failing), collapsed into a later one: its rounds came late."""
    first_missed: datetime | None = None
    last_missed: datetime | None = None
    missed_capped: bool = False
    """More times were missed than `missed` counts (MISSED_COUNT_CAP)."""
    skipped: datetime | None = None
    """The time that came while the previous task still ran (concurrencyPolicy Forbid)."""
    replace_previous: bool = False
    """Cancel the previous task, still queued or running, before submitting (Replace)."""
    next_time: datetime | None = None
    """The first scheduled time after now: the cursor of the next round."""
    problem: str | None = None
    """Why the schedule cannot run (a time zone this system does not know, a date that never
    comes); nothing is submitted."""


@dataclass(frozen=True)
class Cursor:
    """A schedule's cursor as the status keeps it."""

    time: datetime
    cron: str | None = None
    """The cron expression `time` was found with; None in a status that does not say (one
    written before it was recorded, or by an API server whose CRD prunes it)."""
    time_zone: str | None = None
    """The time zone `time` was found in; None likewise."""


def round_start(schedule: ScheduleSpec, kept: Cursor | None, now: datetime) -> datetime:
    """Where this round of `schedule` starts: the cursor the status kept, or `now` for a
    schedule seen for the first time and for one whose cron or time zone differs from the
    ones its cursor was found with. A cursor that does not say which ones it was found with
    is kept unless it lies past the schedule's first time from now, where the schedule's own
    cursor never is: it was found with another expression, which would silence this one
    until then (an @yearly cursor for a schedule now every five minutes)."""
    if kept is None:
        return now
    if kept.cron is not None and kept.cron != schedule.cron:
        return now
    if kept.time_zone is not None and kept.time_zone != schedule.time_zone:
        return now
    if kept.cron is None or kept.time_zone is None:
        first = _first_from(schedule, now)
        if first is not None and kept.time > first:
            return now
    return kept.time


def _first_from(schedule: ScheduleSpec, moment: datetime) -> datetime | None:
    """The schedule's first time at or after `moment`; None when it has none (a problem that
    `schedule_turn` reports)."""
    try:
        zone = ZoneInfo(schedule.time_zone)
        return _next(croniter(schedule.cron, (moment - _JUST_BEFORE).astimezone(zone)))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def schedule_turn(schedule: ScheduleSpec, cursor: datetime, now: datetime, *,
                  active: bool = True, previous_round: datetime | None = None) -> ScheduleTurn:
    """The turn of `schedule` for the times in [cursor, now]; `active` is False while the
    pool is paused. `previous_round` is the time of the operator's previous round, if its
    loop has not been failing since and that round is recent (`recent_round`; None: this
    round is its first, it was failing, or an outage came between): a time after it is this
    round's to submit, however late. Aware datetimes."""
    try:
        zone = ZoneInfo(schedule.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ScheduleTurn(problem=f"unknown time zone {schedule.time_zone!r}")
    deadline = now - timedelta(seconds=schedule.starting_deadline_seconds)
    stale_until = deadline - _JUST_BEFORE
    if previous_round is not None:
        stale_until = min(stale_until, previous_round)
    try:
        turn = _walk(schedule.cron, zone, cursor, now, deadline, stale_until, previous_round)
    except (ValueError, TypeError) as error:  # croniter's errors, and dates that never come
        return ScheduleTurn(problem=f"cron {schedule.cron!r}: {error}")
    if not active or schedule.suspend:
        return ScheduleTurn(next_time=turn.next_time)
    return turn


def _walk(cron: str, zone: tzinfo, cursor: datetime, now: datetime, deadline: datetime,
          stale_until: datetime, previous_round: datetime | None) -> ScheduleTurn:
    """The times from `cursor` to `now`: those up to `stale_until` missed, the latest of the
    others submitted. Past MISSED_COUNT_CAP times, the walk jumps (to `stale_until`, or, as
    after an outage, to the starting deadline) rather than visit them all."""
    times = _after(cron, zone, cursor - _JUST_BEFORE)
    first = scheduled = _next(times)
    stale, capped = 0, False
    last_missed: datetime | None = None
    while scheduled <= stale_until:
        stale, last_missed = stale + 1, scheduled
        scheduled = _next(times)
        if stale >= MISSED_COUNT_CAP and scheduled <= stale_until:
            times, capped = _after(cron, zone, stale_until), True
            scheduled = _next(times)
            last_missed = _before(cron, zone, scheduled)
    latest: datetime | None = None
    seen = late = 0
    while scheduled <= now:
        if latest is not None:
            last_missed = latest
        latest = scheduled
        if previous_round is not None and scheduled > previous_round:
            late += 1
        else:
            seen += 1
        scheduled = _next(times)
        if seen + late >= MISSED_COUNT_CAP and scheduled < deadline:
            times, capped, latest = _after(cron, zone, deadline - _JUST_BEFORE), True, None
            scheduled = _next(times)
            last_missed = _before(cron, zone, scheduled)
    missed = stale + seen + late - (latest is not None)
    latest_late = (latest is not None and previous_round is not None
                   and latest > previous_round)
    return ScheduleTurn(
        submit=latest, missed=min(MISSED_COUNT_CAP, missed),
        missed_late=min(MISSED_COUNT_CAP, late - latest_late),
        first_missed=first if missed else None, last_missed=last_missed if missed else None,
        missed_capped=capped or missed > MISSED_COUNT_CAP, next_time=scheduled)


def settle_overlap(schedule: ScheduleSpec, turn: ScheduleTurn,
                   previous_unfinished: bool) -> ScheduleTurn:
    """A time due while the schedule's previous task is still queued or running: skipped
    with concurrencyPolicy Forbid, submitted after cancelling that task with Replace,
    submitted beside it with Allow."""
    if turn.submit is None or not previous_unfinished:
        return turn
    if schedule.concurrency_policy == "Forbid":
        return replace(turn, submit=None, skipped=turn.submit)
    if schedule.concurrency_policy == "Replace":
        return replace(turn, replace_previous=True)
    return turn


def previous_unfinished(previous: TaskInfo | None, now: datetime) -> bool:
    """Whether the schedule's previous task still counts for `settle_overlap`: it is there,
    not finished, and not waiting past its expiry (the claim that reaches such a task cancels
    it: it never runs, so it holds back no time)."""
    return (previous is not None and not previous.done
            and not previous.expired_waiting(now.timestamp() * 1000))


def recent_round(previous_round: datetime | None, now: datetime,
                 poll_seconds: float) -> datetime | None:
    """`previous_round`, when a running loop could have taken the time since it (pollSeconds
    and ROUND_GAP_SLACK_SECONDS); None otherwise: the gap was an outage (the process stopped
    or frozen, or its rounds failing before they reached the schedules), and a time that
    came in it is missed past its deadline, not submitted however late."""
    if previous_round is None:
        return None
    gap = (now - previous_round).total_seconds()
    return previous_round if gap <= poll_seconds + ROUND_GAP_SLACK_SECONDS else None


def seconds_until_next(next_times: Iterable[datetime], found_at: datetime,
                       now: datetime) -> float | None:
    """How long the pool's loop may sleep before the earliest of its schedules' `next_times`
    comes (None: no schedule waits for a time), `found_at` being the time of the round that
    found them: a cursor not after it is a time that round could not submit (the queue
    unreachable), which the loop's poll, with its backoff, tries again."""
    upcoming = [moment for moment in next_times if moment > found_at]
    if not upcoming:
        return None
    return max(0.0, (min(upcoming) - now).total_seconds()) + WAKE_AFTER_SECONDS


def _after(cron: str, zone: tzinfo, moment: datetime) -> croniter:
    """The schedule's times after `moment`."""
    return croniter(cron, moment.astimezone(zone))


def _next(times: croniter) -> datetime:
    scheduled: datetime = times.get_next(datetime)
    return scheduled.astimezone(UTC)


def _before(cron: str, zone: tzinfo, moment: datetime) -> datetime:
    """The schedule's last time before `moment`, for a report only: croniter may be an hour
    off across a daylight-saving change."""
    scheduled: datetime = croniter(cron, moment.astimezone(zone)).get_prev(datetime)
    return scheduled.astimezone(UTC)


def idempotency_key(pool_uid: str, name: str, scheduled: datetime) -> str:
    """One task per schedule and time, however many rounds or operators try to submit it."""
    return f"schedule:{pool_uid}:{name}:{int(scheduled.timestamp())}"
