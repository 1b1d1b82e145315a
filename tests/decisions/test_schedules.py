"""When schedules are due (agentpool_operator.schedules): the latest time submitted once,
older ones missed (unless they came while the operator ran), nothing while suspended or
paused, time zones and daylight saving, a schedule whose cron or time zone changed starting
again from the change, and how long the pool's loop may sleep before a schedule's next time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentpool.models import ScheduleSpec
from agentpool.protocol import TaskInfo
from agentpool_operator.schedules import (
    MISSED_COUNT_CAP,
    ROUND_GAP_SLACK_SECONDS,
    WAKE_AFTER_SECONDS,
    Cursor,
    ScheduleTurn,
    idempotency_key,
    previous_unfinished,
    recent_round,
    round_start,
    schedule_turn,
    seconds_until_next,
    settle_overlap,
)


def schedule(cron: str = "0 * * * *", **fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "report", "cron": cron, **fields})


def at(hour: int, minute: int = 0, second: int = 0, day: int = 3) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


def test_nothing_is_due_before_the_first_time() -> None:
    turn = schedule_turn(schedule(), cursor=at(10, 5), now=at(10, 59, 59))
    assert turn == ScheduleTurn(next_time=at(11))


def test_a_time_that_came_is_submitted_once_and_the_cursor_moves_past_it() -> None:
    first = schedule_turn(schedule(), cursor=at(11), now=at(11, 0, 1))
    assert first == ScheduleTurn(submit=at(11), next_time=at(12))
    assert first.next_time is not None
    again = schedule_turn(schedule(), cursor=first.next_time, now=at(11, 0, 3))
    assert again.submit is None


def test_a_time_exactly_now_is_due() -> None:
    assert schedule_turn(schedule(), cursor=at(10, 30), now=at(11)).submit == at(11)


def test_after_an_outage_only_the_latest_time_is_submitted_and_the_rest_missed() -> None:
    turn = schedule_turn(schedule(), cursor=at(8), now=at(11, 2))
    assert turn.submit == at(11)
    assert turn.missed == 3  # 8:00, 9:00, 10:00
    assert turn.next_time == at(12)


def test_a_time_older_than_the_starting_deadline_is_missed_not_submitted() -> None:
    turn = schedule_turn(schedule(startingDeadlineSeconds=300), cursor=at(11), now=at(11, 6))
    assert turn == ScheduleTurn(missed=1, first_missed=at(11), last_missed=at(11),
                                next_time=at(12))
    late = schedule_turn(schedule(startingDeadlineSeconds=300), cursor=at(11), now=at(11, 5))
    assert late.submit == at(11)


def test_times_within_the_deadline_collapse_into_the_latest() -> None:
    every_minute = schedule("* * * * *", startingDeadlineSeconds=600)
    turn = schedule_turn(every_minute, cursor=at(11), now=at(11, 3, 30))
    assert turn == ScheduleTurn(submit=at(11, 3), missed=3, first_missed=at(11),
                                last_missed=at(11, 2), next_time=at(11, 4))


def test_missed_times_are_counted_up_to_a_cap() -> None:
    every_minute = schedule("* * * * *")
    turn = schedule_turn(every_minute, cursor=at(0, day=1), now=at(0, day=3))
    assert turn.missed == MISSED_COUNT_CAP
    assert turn.missed_capped
    assert (turn.first_missed, turn.last_missed) == (at(0, day=1), at(23, 59, day=2))
    assert turn.submit == at(0, day=3)
    assert turn.next_time == at(0, 1, day=3)
    # with a deadline of a second, every time missed is past it: the last is found after the
    # count stopped
    strict = schedule("* * * * *", startingDeadlineSeconds=1)
    turn = schedule_turn(strict, cursor=at(0, day=1), now=at(0, day=3))
    assert (turn.missed, turn.missed_capped) == (MISSED_COUNT_CAP, True)
    assert (turn.first_missed, turn.last_missed) == (at(0, day=1), at(23, 59, day=2))
    assert turn.submit == at(0, day=3)


@pytest.mark.parametrize("minutes, capped", [(1000, False), (1001, True), (1010, True)])
def test_a_count_at_the_cap_is_exact_and_one_past_it_is_not(minutes: int, capped: bool) -> None:
    """Every minute, a deadline of 5 minutes: the cursor `minutes` before now leaves
    `minutes` times missed, the latest submitted; past 1000 the count says 'at least'."""
    every_minute = schedule("* * * * *")
    now = at(0, day=3)
    turn = schedule_turn(every_minute, cursor=now - timedelta(minutes=minutes), now=now)
    assert (turn.missed, turn.missed_capped) == (min(minutes, MISSED_COUNT_CAP), capped)
    assert turn.first_missed == now - timedelta(minutes=minutes)
    assert turn.last_missed == now - timedelta(minutes=1)
    assert turn.submit == now


def test_a_running_operator_frozen_past_the_cap_submits_only_within_the_deadline() -> None:
    """More than MISSED_COUNT_CAP times between two rounds (the operator's process stopped
    and went on): counted as capped; the latest, within the deadline, is submitted."""
    every_minute = schedule("* * * * *")
    turn = schedule_turn(every_minute, cursor=at(0, 1, day=1), now=at(0, day=3),
                         previous_round=at(0, day=1))
    assert (turn.missed, turn.missed_late, turn.missed_capped) == (
        MISSED_COUNT_CAP, MISSED_COUNT_CAP, True)
    assert turn.submit == at(0, day=3)
    assert turn.last_missed == at(23, 59, day=2)


def paced(spec: ScheduleSpec, every: timedelta, start: datetime,
          until: datetime) -> tuple[list[datetime], int]:
    """The times submitted and the count missed by rounds of a running operator every `every`
    from `start` until `until`, each round passing the time of the one before."""
    submitted: list[datetime] = []
    missed = 0
    cursor: Cursor | None = None
    previous: datetime | None = None
    now = start
    while now <= until:
        turn = schedule_turn(spec, round_start(spec, cursor, now), now, previous_round=previous)
        if turn.submit is not None:
            submitted.append(turn.submit)
        missed += turn.missed
        assert turn.next_time is not None
        cursor, previous = Cursor(turn.next_time, spec.cron, spec.time_zone), now
        now += every
    return submitted, missed


@pytest.mark.parametrize("poll, deadline, phase", [
    (timedelta(seconds=600), 300, timedelta(seconds=400)),
    (timedelta(seconds=900), 300, timedelta(seconds=7)),
    (timedelta(seconds=2), 1, timedelta(seconds=1.5)),
    (timedelta(seconds=30), 10, timedelta(seconds=20)),
], ids=["poll-600-deadline-300", "poll-900-deadline-300", "poll-2-deadline-1",
        "poll-30-deadline-10"])
def test_rounds_further_apart_than_the_deadline_submit_every_time(
    poll: timedelta, deadline: int, phase: timedelta,
) -> None:
    """Hourly, rounds of a running operator further apart than the schedule's deadline (its
    pollSeconds, or a slow round): each hour is submitted when a round finds it, none missed."""
    hourly = schedule("0 * * * *", startingDeadlineSeconds=deadline)
    submitted, missed = paced(hourly, poll, at(0) + phase, at(6) + phase)
    assert submitted == [at(hour) for hour in range(1, 7)]
    assert missed == 0


def test_a_time_a_round_saw_and_could_not_submit_is_missed_past_its_deadline() -> None:
    """11:00 came before the previous round (which could not submit it: the queue was
    unreachable): past its deadline it is missed, as after an outage."""
    deadline_300 = schedule(startingDeadlineSeconds=300)
    turn = schedule_turn(deadline_300, cursor=at(11), now=at(11, 6),
                         previous_round=at(11, 0, 5))
    assert turn == ScheduleTurn(missed=1, first_missed=at(11), last_missed=at(11),
                                next_time=at(12))
    within = schedule_turn(deadline_300, cursor=at(11), now=at(11, 4),
                           previous_round=at(11, 0, 5))
    assert within.submit == at(11)


def test_only_a_round_a_running_loop_could_have_come_after_counts_as_previous() -> None:
    poll = 600
    longest = timedelta(seconds=poll + ROUND_GAP_SLACK_SECONDS)
    assert recent_round(None, at(3), poll) is None
    assert recent_round(at(3) - longest, at(3), poll) == at(3) - longest
    assert recent_round(at(3) - longest - timedelta(seconds=1), at(3), poll) is None


@pytest.mark.parametrize("cron, previous, now, missed", [
    ("0 3 * * *", at(2, 59), at(22), 1),
    ("0 * * * *", at(2, 59), at(9, 30), 7),
    ("@yearly", datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
     datetime(2027, 7, 20, tzinfo=UTC), 1),
], ids=["daily-frozen-19h", "hourly-frozen-6.5h", "yearly-frozen-200d"])
def test_a_loop_frozen_for_hours_misses_the_times_past_their_deadline(
    cron: str, previous: datetime, now: datetime, missed: int,
) -> None:
    """The process frozen after a round: the times of the gap are an outage's, missed past
    their deadline, none submitted hours late as the operator's own delay."""
    spec = schedule(cron, startingDeadlineSeconds=60)
    turn = schedule_turn(spec, cursor=previous + timedelta(seconds=1), now=now,
                         previous_round=recent_round(previous, now, 2))
    assert (turn.submit, turn.missed, turn.missed_late) == (None, missed, 0)


def test_times_between_two_rounds_collapse_into_the_latest_as_late() -> None:
    every_minute = schedule("* * * * *", startingDeadlineSeconds=60)
    turn = schedule_turn(every_minute, cursor=at(11, 1), now=at(11, 3, 10),
                         previous_round=at(11, 0, 30))
    assert turn == ScheduleTurn(submit=at(11, 3), missed=2, missed_late=2,
                                first_missed=at(11, 1), last_missed=at(11, 2),
                                next_time=at(11, 4))


def test_times_a_round_could_not_submit_and_later_ones_are_missed_each_for_its_cause() -> None:
    """11:00 and 11:01 came before the previous round, which could not submit them: missed
    for their age; 11:02 came after it, collapsed into 11:03: missed as late."""
    every_minute = schedule("* * * * *", startingDeadlineSeconds=60)
    turn = schedule_turn(every_minute, cursor=at(11), now=at(11, 3, 10),
                         previous_round=at(11, 1, 30))
    assert turn == ScheduleTurn(submit=at(11, 3), missed=3, missed_late=1,
                                first_missed=at(11), last_missed=at(11, 2),
                                next_time=at(11, 4))


@settings(max_examples=60, deadline=None)
@given(
    cron=st.sampled_from(["* * * * *", "*/7 * * * *", "0 * * * *", "15,45 */2 * * *",
                          "@daily", "0 9 * * mon-fri"]),
    deadline=st.integers(1, 600),
    start=st.integers(0, 7 * 24 * 60 * 60),
    steps=st.lists(st.integers(1, 3 * 60 * 60), min_size=1, max_size=10),
)
def test_a_running_operator_misses_no_time_for_its_age(
    cron: str, deadline: int, start: int, steps: list[int],
) -> None:
    """Rounds of a running operator, however far apart past the deadline: every time is
    submitted, or collapsed into a later one as late; none is missed for its age."""
    spec = schedule(cron, startingDeadlineSeconds=deadline)
    now = cursor = at(0, day=1) + timedelta(seconds=start)
    previous: datetime | None = None
    submitted = missed = 0
    for step in [0, *steps]:
        now += timedelta(seconds=step)
        turn = schedule_turn(spec, cursor=cursor, now=now, previous_round=previous)
        assert turn.missed == turn.missed_late
        submitted += turn.submit is not None
        missed += turn.missed
        assert turn.next_time is not None
        cursor, previous = turn.next_time, now
    every = schedule_turn(spec, cursor=at(0, day=1) + timedelta(seconds=start), now=now)
    assert submitted + missed == every.missed + (every.submit is not None)


@pytest.mark.parametrize("fields, active", [({"suspend": True}, True), ({}, False)])
def test_suspended_or_paused_the_times_pass_without_a_task_or_a_miss(
    fields: dict[str, Any], active: bool,
) -> None:
    turn = schedule_turn(schedule(**fields), cursor=at(8), now=at(11, 2), active=active)
    assert turn == ScheduleTurn(next_time=at(12))


def test_times_are_read_in_the_schedules_time_zone() -> None:
    paris = schedule("30 9 * * mon-fri", timeZone="Europe/Paris")
    thursday = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    turn = schedule_turn(paris, cursor=thursday, now=thursday + timedelta(minutes=30))
    assert turn.submit == datetime(2026, 12, 3, 8, 30, tzinfo=UTC)  # 9:30 in Paris (UTC+1)
    assert turn.next_time == datetime(2026, 12, 4, 8, 30, tzinfo=UTC)
    friday = schedule_turn(paris, cursor=datetime(2026, 12, 4, 9, tzinfo=UTC),
                           now=datetime(2026, 12, 4, 9, tzinfo=UTC))
    assert friday.next_time == datetime(2026, 12, 7, 8, 30, tzinfo=UTC)  # Monday


def test_a_time_skipped_by_daylight_saving_fires_at_the_jump_and_a_repeated_hour_twice() -> None:
    nightly = schedule("30 2 * * *", timeZone="Europe/Paris")
    spring = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 2:00 -> 3:00 in Paris
    assert schedule_turn(nightly, cursor=spring, now=spring).next_time == \
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    hourly = schedule("0 * * * *", timeZone="Europe/Paris")
    autumn = datetime(2026, 10, 24, 23, 30, tzinfo=UTC)  # 3:00 -> 2:00 in Paris
    turn = schedule_turn(hourly, cursor=autumn, now=datetime(2026, 10, 25, 1, 1, tzinfo=UTC))
    assert turn.submit == datetime(2026, 10, 25, 1, 0, tzinfo=UTC)  # the second 2:00
    assert turn.missed == 1  # the first 2:00 (0:00 UTC), collapsed


def test_an_unknown_time_zone_or_a_date_that_never_comes_is_a_problem() -> None:
    unknown = schedule_turn(schedule(timeZone="Mars/Olympus_Mons"), cursor=at(8), now=at(9))
    assert unknown == ScheduleTurn(problem="unknown time zone 'Mars/Olympus_Mons'")
    never = schedule_turn(schedule("0 0 31 2 *"), cursor=at(8), now=at(9))
    assert never.submit is None and never.problem is not None
    assert never.problem.startswith("cron '0 0 31 2 *': ")


@pytest.mark.parametrize("policy, unfinished, submitted, replaces", [
    ("Forbid", True, False, False), ("Forbid", False, True, False),
    ("Allow", True, True, False), ("Allow", False, True, False),
    ("Replace", True, True, True), ("Replace", False, True, False),
])
def test_a_time_due_while_the_previous_task_is_unfinished_follows_the_policy(
    policy: str, unfinished: bool, submitted: bool, replaces: bool,
) -> None:
    """Forbid skips the time, Replace cancels the previous task first, Allow runs both."""
    spec = schedule(concurrencyPolicy=policy)
    turn = schedule_turn(spec, cursor=at(11), now=at(11, 0, 1))
    settled = settle_overlap(spec, turn, previous_unfinished=unfinished)
    assert settled.submit == (at(11) if submitted else None)
    assert settled.skipped == (None if submitted else at(11))
    assert settled.replace_previous is replaces
    assert settled.next_time == at(12)


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_nothing_is_skipped_or_replaced_when_no_time_came(policy: str) -> None:
    spec = schedule(concurrencyPolicy=policy)
    turn = schedule_turn(spec, cursor=at(10, 5), now=at(10, 30))
    assert settle_overlap(spec, turn, previous_unfinished=True) == turn


def task(state: str, expires: datetime | None = None) -> TaskInfo:
    return TaskInfo(id="t" * 32, state=state, payload=None, attempts=0, priority=0,
                    created_ms=0, started_ms=None, finished_ms=None, result=None, error=None,
                    owner=None, max_attempts=None,
                    expires_ms=None if expires is None else int(expires.timestamp() * 1000))


@pytest.mark.parametrize(("previous", "unfinished"), [
    (None, False),
    (task("succeeded"), False),
    (task("cancelled", expires=at(10)), False),
    (task("queued"), True),
    (task("delayed"), True),
    (task("queued", expires=at(11, 1)), True),  # not yet expired
    (task("queued", expires=at(11)), False),  # expired: the claim that reaches it cancels it
    (task("delayed", expires=at(10)), False),
    (task("running", expires=at(10)), True),  # it started in time: it runs to its end
], ids=["none", "succeeded", "cancelled", "queued", "delayed", "queued-expires-later",
        "queued-expired", "delayed-expired", "running-past-expiry"])
def test_the_previous_task_counts_while_it_may_still_run(
    previous: TaskInfo | None, unfinished: bool,
) -> None:
    assert previous_unfinished(previous, now=at(11)) is unfinished


def test_the_loop_sleeps_until_the_earliest_next_time_after_its_round() -> None:
    found_at = at(11, 0, 5)
    assert seconds_until_next([at(12), at(11, 30)], found_at, at(11, 0, 6)) == \
        29 * 60 + 54 + WAKE_AFTER_SECONDS
    # a time that came while the round ran: at once
    assert seconds_until_next([at(11, 0, 6)], found_at, at(11, 0, 7)) == WAKE_AFTER_SECONDS
    # a cursor left at a time the round could not submit: the poll tries it again
    assert seconds_until_next([at(11), at(12)], found_at, at(11, 0, 6)) == \
        59 * 60 + 54 + WAKE_AFTER_SECONDS
    assert seconds_until_next([at(11)], found_at, at(11, 0, 6)) is None
    assert seconds_until_next([], found_at, at(11, 0, 6)) is None


def test_the_idempotency_key_names_pool_schedule_and_time() -> None:
    assert idempotency_key("uid-1", "report", at(11)) == \
        f"schedule:uid-1:report:{int(at(11).timestamp())}"


@settings(max_examples=60, deadline=None)
@given(
    cron=st.sampled_from(["* * * * *", "*/7 * * * *", "0 * * * *", "15,45 */2 * * *",
                          "@daily", "0 9 * * mon-fri"]),
    start=st.integers(0, 7 * 24 * 60),
    steps=st.lists(st.integers(1, 90), min_size=1, max_size=10),
)
def test_rounds_at_any_pace_submit_each_time_at_most_once_and_only_times_that_came(
    cron: str, start: int, steps: list[int],
) -> None:
    """However the rounds fall, each scheduled time is submitted at most once, never before
    it comes, and with a deadline longer than any gap between rounds, every time is either
    submitted or counted missed (collapsed) exactly once (under 900 minutes: no cap)."""
    spec = schedule(cron, startingDeadlineSeconds=86400)
    now = at(0, day=1) + timedelta(minutes=start)
    cursor = now
    submitted: list[datetime] = []
    missed = 0
    for step in steps:
        now += timedelta(minutes=step, seconds=step % 7)
        turn = schedule_turn(spec, cursor=cursor, now=now)
        assert turn.next_time is not None and turn.next_time > now
        if turn.submit is not None:
            assert cursor <= turn.submit <= now
            submitted.append(turn.submit)
        missed += turn.missed
        cursor = turn.next_time
    assert len(submitted) == len(set(submitted))
    every = schedule_turn(spec, cursor=at(0, day=1) + timedelta(minutes=start), now=now)
    assert len(submitted) + missed == every.missed + (every.submit is not None)


def rounds(spec: ScheduleSpec, cursor: Cursor, now: datetime, step: timedelta,
           until: datetime) -> list[datetime]:
    """The times submitted by rounds every `step` from `now` until `until` included, the
    status's cursor starting at `cursor`."""
    submitted: list[datetime] = []
    while now <= until:
        turn = schedule_turn(spec, round_start(spec, cursor, now), now)
        if turn.submit is not None:
            submitted.append(turn.submit)
        assert turn.next_time is not None
        cursor = Cursor(turn.next_time, spec.cron, spec.time_zone)
        now += step
    return submitted


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "unrecorded"])
def test_a_schedule_edited_from_yearly_to_every_five_minutes_runs_at_once(
    recorded: bool,
) -> None:
    """The cursor of an @yearly round is next January 1st; edited to */5, the schedule
    submits every five minutes from the edit on, whether the status recorded the expression
    its cursor was found with or not (a status of an earlier operator)."""
    now = datetime(2026, 6, 10, 12, 0, 5, tzinfo=UTC)
    yearly = schedule("@yearly")
    turn = schedule_turn(yearly, round_start(yearly, None, now), now)
    assert turn.next_time == datetime(2027, 1, 1, tzinfo=UTC)
    kept = Cursor(turn.next_time, "@yearly", "UTC") if recorded else Cursor(turn.next_time)
    every_five = schedule("*/5 * * * *")
    assert round_start(every_five, kept, now) == now
    submitted = rounds(every_five, kept, now, timedelta(minutes=1), now + timedelta(days=1))
    assert len(submitted) == 24 * 12
    assert submitted[0] == datetime(2026, 6, 10, 12, 5, tzinfo=UTC)
    assert submitted[-1] == datetime(2026, 6, 11, 12, 0, tzinfo=UTC)


def test_a_schedule_edited_during_an_outage_has_no_task_for_the_times_before_the_edit() -> None:
    """The cursor an hourly schedule left before an outage; edited to every minute, it does
    not submit the latest minute that passed, as it would have with its own cursor."""
    every_minute = schedule("* * * * *", startingDeadlineSeconds=3600)
    kept = Cursor(at(11), "0 * * * *", "UTC")
    assert round_start(every_minute, kept, at(11, 30, 5)) == at(11, 30, 5)
    turn = schedule_turn(every_minute, round_start(every_minute, kept, at(11, 30, 5)),
                         at(11, 30, 5))
    assert turn == ScheduleTurn(next_time=at(11, 31))
    unchanged = Cursor(at(11), "* * * * *", "UTC")
    assert round_start(every_minute, unchanged, at(11, 30, 5)) == at(11)


def test_a_time_zone_edit_finds_the_next_time_in_the_new_zone() -> None:
    """9:00 UTC's cursor is tomorrow 9:00 UTC; in Paris 9:00 is 8:00 UTC, which comes first."""
    utc = Cursor(at(9, day=4), "0 9 * * *", "UTC")
    paris = schedule("0 9 * * *", timeZone="Europe/Paris")
    start = round_start(paris, utc, at(9, 30))
    assert start == at(9, 30)
    assert schedule_turn(paris, start, at(9, 30)).next_time == at(8, day=4)


@pytest.mark.parametrize("kept", [
    Cursor(at(11), "0 * * * *", "UTC"),
    Cursor(at(11), "* * * * *", "Europe/Paris"),
], ids=["cron", "timeZone"])
def test_a_schedule_removed_and_added_again_under_its_name_with_another_expression_restarts(
    kept: Cursor,
) -> None:
    """Removed and added again between two rounds, the schedule finds its old status entry:
    the expression it records is not the schedule's, so the schedule starts from now."""
    assert round_start(schedule("* * * * *", startingDeadlineSeconds=3600), kept,
                       at(11, 30, 5)) == at(11, 30, 5)


def test_a_new_schedule_starts_from_now_and_an_unchanged_one_from_its_cursor() -> None:
    assert round_start(schedule(), None, at(11, 30)) == at(11, 30)
    assert round_start(schedule(), Cursor(at(9), "0 * * * *", "UTC"), at(11, 30)) == at(9)
    assert round_start(schedule(), Cursor(at(9)), at(11, 30)) == at(9)  # the outage's times
    assert round_start(schedule(), Cursor(at(12)), at(11, 30)) == at(12)


def test_an_unrecorded_cursor_of_a_schedule_that_cannot_run_is_kept() -> None:
    """The problem is schedule_turn's to report."""
    kept = Cursor(at(12, day=20))
    assert round_start(schedule(timeZone="Mars/Olympus_Mons"), kept, at(11)) == at(12, day=20)
    assert round_start(schedule("0 0 31 2 *"), kept, at(11)) == at(12, day=20)


@settings(max_examples=60, deadline=None)
@given(
    cron=st.sampled_from(["* * * * *", "*/7 * * * *", "0 * * * *", "30 2 * * *",
                          "15,45 */2 * * *", "@daily", "0 9 * * mon-fri"]),
    zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
    start=st.integers(0, 3 * 24 * 60),
    steps=st.lists(st.integers(1, 600), min_size=1, max_size=10),
    recorded=st.booleans(),
)
def test_an_unchanged_schedule_always_keeps_its_cursor(
    cron: str, zone: str, start: int, steps: list[int], recorded: bool,
) -> None:
    """Round after round, across daylight-saving changes, a schedule's own cursor is kept,
    whether the status records its expression or not."""
    spec = schedule(cron, timeZone=zone)
    for spring_or_autumn in (datetime(2026, 3, 7, tzinfo=UTC), datetime(2026, 10, 23, tzinfo=UTC)):
        now = spring_or_autumn + timedelta(minutes=start)
        cursor: Cursor | None = None
        for step in steps:
            if cursor is not None:
                assert round_start(spec, cursor, now) == cursor.time
            turn = schedule_turn(spec, round_start(spec, cursor, now), now)
            assert turn.next_time is not None
            cursor = Cursor(turn.next_time, *((cron, zone) if recorded else (None, None)))
            now += timedelta(minutes=step, seconds=step % 7)
