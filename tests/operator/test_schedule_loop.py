"""Schedules through the operator, against kmock and a real redis-server: a due time submits
its task once (an operator restarted before its status write submits nothing twice), a time
missed while no operator ran is reported instead of submitted late, a paused pool lets times
pass, Forbid and Replace settle an overlap (Replace cancels only once its successor is queued),
a schedule whose cron changed starts again from the change, and a schedule that cannot run
makes the pool Degraded. The pool's loop wakes at a schedule's next time, not a poll later;
a time that came between two rounds of a running operator is submitted however late (its
delay is not an outage), and the ScheduleMissed Event says which times and why.

A pool is created with a status whose schedule cursor (`nextScheduleTime`) is already due, as
an operator that ran before would have left it: only the test of the loop's wake-up waits for
a clock minute to turn."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from operator_harness import Cluster, OperatorThread, eventually, pool_manifest
from prometheus_client import REGISTRY

from agentpool.models import AgentPoolSpec
from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool.scaling.policy import MIN_POLL_SECONDS
from agentpool_operator import schedule_actions
from agentpool_operator.context import PoolState
from agentpool_operator.handlers import MAX_RETRY_SECONDS, next_round_in
from agentpool_operator.observation import PoolObservation
from agentpool_operator.schedule_actions import missed_message, run_schedules, upcoming_times
from agentpool_operator.schedules import ROUND_GAP_SLACK_SECONDS, schedule_turn
from agentpool_operator.status import rfc3339

POOL = "sched"


def counted(series: str) -> float:
    labels = {"namespace": "default", "pool": POOL, "schedule": "report"}
    return REGISTRY.get_sample_value(f"agentpool_operator_{series}_total", labels) or 0.0


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def clear_of_a_minutes_turn(seconds: float = 5.0) -> None:
    """Wait, when a clock minute turns within `seconds`, until it turned: a schedule every
    minute then has no new time while a test reads what its first round did (the clock, not
    a condition)."""
    now = datetime.now(UTC)
    left = (minute_floor(now) + timedelta(minutes=1) - now).total_seconds()
    if left < seconds:
        await asyncio.sleep(left + 0.1)


def schedule_entry(cluster: Cluster) -> dict[str, Any]:
    (entry,) = cluster.pool(POOL)["status"]["schedules"]
    return dict(entry)


async def create_pool(cluster: Cluster, redis_url: str, queue: str, cursor: datetime,
                      schedule: dict[str, Any], last_task_id: str | None = None,
                      found_with: dict[str, str] | None = None, **extra: Any) -> None:
    """A pool whose status left the schedule 'report' at `cursor`, found with the cron and
    timeZone of `found_with` (unsaid when None)."""
    manifest = pool_manifest(POOL, redis_url=redis_url, queue=queue, poll_seconds=0.5,
                             schedules=[{"name": "report", **schedule}], **extra)
    entry = {"name": "report", "nextScheduleTime": rfc3339(cursor), **(found_with or {})}
    if last_task_id is not None:
        entry["lastTaskId"] = last_task_id
    manifest["status"] = {"schedules": [entry]}
    await cluster.create_pool(manifest)


@contextlib.asynccontextmanager
async def restarted(operator: OperatorThread, cluster: Cluster,
                    entry: dict[str, Any]) -> AsyncIterator[OperatorThread]:
    """The operator stopped, the schedule's status entry set to `entry` (as an operator that
    stopped before its status write left it), and a new operator started."""
    await operator.stop()
    await cluster.patch_pool_status(POOL, {"schedules": [{"name": "report", **entry}]})
    thread = OperatorThread(operator.settings.model_copy(update={"port": free_port()}))
    await thread.start()
    try:
        yield thread
    finally:
        await thread.stop()
    assert thread.error is None, thread.error


def one_round(manifest: dict[str, Any], queue: TaskQueue | None, cursor: datetime,
              last_task_id: str) -> PoolObservation:
    """What a round of the operator observes of the pool, whose status left the schedule
    'report' at `cursor` after the task `last_task_id`."""
    return PoolObservation(
        namespace="default", name=POOL, pool=manifest,
        spec=AgentPoolSpec.model_validate(manifest["spec"]), deployment=None, figures=None,
        queue=queue, now=datetime.now(UTC),
        previous_status={"schedules": [{"name": "report", "nextScheduleTime": rfc3339(cursor),
                                        "lastTaskId": last_task_id}]},
    )


async def queued_ids(queue: TaskQueue) -> list[str]:
    return [task.id for task in await queue.list_tasks("queued")]


async def test_a_due_time_submits_its_task_once_even_across_a_restart(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    before = counted("scheduled_tasks")
    cursor = minute_floor(datetime.now(UTC))
    # hourly at the cursor's minute: no second time falls due while the test runs
    await create_pool(cluster, redis_url, queue_name, cursor, {
        "cron": f"{cursor.minute} * * * *", "payload": {"prompt": "daily summary"},
        "priority": 7, "startingDeadlineSeconds": 600, "expiresSeconds": 900,
        "taskTimeoutSeconds": 120, "tenant": "acme"})
    entry = await eventually(lambda: "lastTaskId" in (e := schedule_entry(cluster)) and e)
    (task_id,) = await queued_ids(queue)
    assert entry["lastTaskId"] == task_id
    info = await queue.get(task_id)
    assert info is not None and info.expires_ms is not None
    assert (info.payload, info.priority) == ({"prompt": "daily summary"}, 7)
    assert info.expires_ms - info.created_ms == 900_000
    assert info.timeout_ms == 120_000
    assert info.tenant == "acme"
    assert entry["lastScheduleTime"] >= rfc3339(cursor)
    assert entry["nextScheduleTime"] > entry["lastScheduleTime"]
    (event,) = await eventually(lambda: [  # kopf posts Events from a queue of its own
        e for e in cluster.events("Scheduled")
        if e["message"].endswith(f"for {entry['lastScheduleTime']}")])
    assert event["message"].startswith(f"schedule 'report': task {task_id} submitted")
    assert counted("scheduled_tasks") == before + 1

    # An operator that stopped before writing that status finds the same time due again.
    async with restarted(operator, cluster, {"nextScheduleTime": entry["lastScheduleTime"]}):
        again = await eventually(lambda: "lastTaskId" in (e := schedule_entry(cluster)) and e)
        assert again["lastTaskId"] == task_id
        assert await queued_ids(queue) == [task_id]
        # the stopped operator's series are gone: the new one counts only what it submitted
        assert counted("scheduled_tasks") == 0, "found the task, submitted nothing"


async def test_forbid_skips_a_time_while_the_previous_task_is_still_queued(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    previous = await queue.submit({"prompt": "the 9:00 report"})  # no worker: it stays queued
    cursor = minute_floor(datetime.now(UTC))
    await create_pool(cluster, redis_url, queue_name, cursor, {
        "cron": "* * * * *", "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 600},
        last_task_id=previous)
    event = await eventually(lambda: (found := cluster.events("ScheduleSkipped")) and found[0])
    assert event["message"].endswith(
        f"skipped: task {previous} is still queued or running (concurrencyPolicy Forbid)")
    entry = await eventually(
        lambda: (e := schedule_entry(cluster))["nextScheduleTime"] > rfc3339(cursor) and e)
    assert entry["lastTaskId"] == previous
    assert await queued_ids(queue) == [previous]

    # Once the previous task is over, the next time gets its task.
    await queue.cancel(previous)
    cursor = rfc3339(minute_floor(datetime.now(UTC)))
    async with restarted(operator, cluster, {"nextScheduleTime": cursor, "lastTaskId": previous}):
        entry = await eventually(lambda: (e := schedule_entry(cluster))["lastTaskId"] != previous
                                 and e)
        assert await queued_ids(queue) == [entry["lastTaskId"]]


async def test_forbid_lets_a_time_pass_a_previous_task_that_expired_unstarted(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    """It will never run: whether the schedule's round finds it still queued (no worker
    claimed it) or the reaper's has ended it already, the next time gets its task."""
    queue = TaskQueue(redis, queue_name)
    previous = await queue.submit({"prompt": "the 9:00 report"}, expires=0.05)
    info = await queue.get(previous)
    assert info is not None and info.expires_ms is not None
    expiry = info.expires_ms
    await eventually(lambda: time.time() * 1000 > expiry + 5)
    await clear_of_a_minutes_turn()  # its next minute would be skipped, its task queued
    cursor = minute_floor(datetime.now(UTC))
    await create_pool(cluster, redis_url, queue_name, cursor, {
        "cron": "* * * * *", "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 600},
        last_task_id=previous)
    entry = await eventually(lambda: (e := schedule_entry(cluster))["lastTaskId"] != previous
                             and e)
    assert entry["lastTaskId"] in await queued_ids(queue)
    ended = await queue.get(previous)
    assert ended is not None and ended.state in ("queued", "cancelled")
    assert cluster.events("ScheduleSkipped") == []


@pytest.mark.parametrize("running", [False, True], ids=["queued", "running"])
async def test_replace_cancels_the_previous_task_and_submits_the_new_one(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str, running: bool,
) -> None:
    """A queued previous task is cancelled at once; a running one gets its cancel request
    (its worker stops it at its next heartbeat). Either way the new task is submitted."""
    queue = TaskQueue(redis, queue_name)
    previous = await queue.submit({"prompt": "the 9:00 report"})  # no worker: it stays queued
    if running:
        (claimed,) = (await queue.claim("pod-x:i1", 1, 30)).tasks
        assert claimed.id == previous
    cursor = minute_floor(datetime.now(UTC))
    await create_pool(cluster, redis_url, queue_name, cursor, {
        "cron": f"{cursor.minute} * * * *", "concurrencyPolicy": "Replace",
        "startingDeadlineSeconds": 600}, last_task_id=previous)
    entry = await eventually(
        lambda: (e := schedule_entry(cluster)).get("lastTaskId") not in (None, previous) and e)
    info = await queue.get(previous)
    assert info is not None
    if running:
        assert info.state == "running"
        assert await redis.hget(queue.task_key(previous), "cancel") == b"1"
    else:
        assert info.state == "cancelled"
    assert await queued_ids(queue) == [entry["lastTaskId"]]
    (event,) = await eventually(lambda: cluster.events("ScheduleReplaced"))
    how = "asked to stop" if running else "cancelled"
    assert event["message"] == (
        f"schedule 'report': task {previous} {how}, replaced by the task of "
        f"{rfc3339(cursor)} (concurrencyPolicy Replace)")


async def test_a_time_missed_while_no_operator_ran_is_reported_not_submitted(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    before = counted("schedule_times_missed")
    now = datetime.now(UTC)
    missed, cursor = now - timedelta(minutes=30), now - timedelta(hours=2)
    await create_pool(cluster, redis_url, queue_name, cursor, {
        "cron": f"{missed.minute} {missed.hour} * * *"})
    event = await eventually(lambda: (found := cluster.events("ScheduleMissed")) and found[0])
    assert event["type"] == "Warning"
    assert event["message"] == (
        f"schedule 'report': 1 scheduled time ({rfc3339(minute_floor(missed))}) passed while "
        "no task could be submitted (no operator running, or the queue unreachable); none "
        "submitted")
    # the Event goes out before the status is written
    entry = await eventually(
        lambda: (e := schedule_entry(cluster))["nextScheduleTime"] > rfc3339(cursor) and e)
    assert entry["nextScheduleTime"] == rfc3339(minute_floor(missed) + timedelta(days=1))
    assert "lastTaskId" not in entry
    assert await queued_ids(TaskQueue(redis, queue_name)) == []
    assert counted("schedule_times_missed") == before + 1


@pytest.mark.parametrize("edit", ["edited", "removed-and-added-again"])
async def test_a_yearly_schedule_edited_to_every_five_minutes_runs_within_five_minutes(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str, edit: str,
) -> None:
    """An @yearly schedule's next time is next January 1st; edited to */5 (or removed and
    added again under its name while no operator runs), its next time is within five minutes,
    not found from January 1st on."""
    await create_pool(cluster, redis_url, queue_name, datetime.now(UTC), {"cron": "@yearly"})
    yearly = await eventually(lambda: (e := schedule_entry(cluster)).get("cron") and e)
    assert yearly["nextScheduleTime"] == f"{datetime.now(UTC).year + 1}-01-01T00:00:00Z"
    assert yearly["timeZone"] == "UTC"
    every_five = [{"name": "report", "cron": "*/5 * * * *"}]
    edited_at = datetime.now(UTC)
    if edit == "edited":
        await cluster.patch_pool(POOL, {"spec": {"schedules": every_five}})
        entry = await eventually(
            lambda: (e := schedule_entry(cluster))["cron"] == "*/5 * * * *" and e)
        seen_at = datetime.now(UTC)
    else:
        await operator.stop()
        await cluster.patch_pool(POOL, {"spec": {"schedules": None}})
        await cluster.patch_pool(POOL, {"spec": {"schedules": every_five}})
        thread = OperatorThread(operator.settings.model_copy(update={"port": free_port()}))
        await thread.start()
        try:
            entry = await eventually(
                lambda: (e := schedule_entry(cluster))["cron"] == "*/5 * * * *" and e)
            seen_at = datetime.now(UTC)
        finally:
            await thread.stop()
        assert thread.error is None, thread.error
    # found from the round that took the edit: after `edited_at` (a restart later, say, with
    # a five-minute time between) and before the entry was seen
    assert rfc3339(edited_at) < entry["nextScheduleTime"] <= rfc3339(
        seen_at + timedelta(minutes=5))


@pytest.mark.parametrize("found_with, submits", [
    ({"cron": "* * * * *", "timeZone": "UTC"}, True),
    ({"cron": "0 * * * *", "timeZone": "UTC"}, False),
    ({"cron": "* * * * *", "timeZone": "Europe/Paris"}, False),
], ids=["unchanged", "cron-edited", "timeZone-edited"])
async def test_a_schedule_edited_while_no_operator_ran_has_no_task_for_the_times_before(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str, found_with: dict[str, str], submits: bool,
) -> None:
    """The status's cursor is ten minutes old: unchanged, the schedule submits the latest
    minute that passed (within its deadline) and reports the others missed; edited since its
    cursor was found, it starts from now and submits nothing for the minutes before."""
    queue = TaskQueue(redis, queue_name)
    await clear_of_a_minutes_turn()  # the next minute would have its task
    cursor = minute_floor(datetime.now(UTC)) - timedelta(minutes=10)
    await create_pool(cluster, redis_url, queue_name, cursor, {
        "cron": "* * * * *", "startingDeadlineSeconds": 3600}, found_with=found_with)
    entry = await eventually(
        lambda: (e := schedule_entry(cluster))["nextScheduleTime"] > rfc3339(cursor) and e)
    assert (entry["cron"], entry["timeZone"]) == ("* * * * *", "UTC")
    assert entry["nextScheduleTime"] > rfc3339(cursor + timedelta(minutes=10))
    if submits:
        assert await queued_ids(queue) == [entry["lastTaskId"]]
        assert await eventually(lambda: cluster.events("ScheduleMissed"))
    else:
        assert "lastTaskId" not in entry
        assert await queued_ids(queue) == []
        assert cluster.events("ScheduleMissed") == []
        assert cluster.events("Scheduled") == []


async def test_a_paused_pool_lets_its_times_pass(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    cursor = minute_floor(datetime.now(UTC)) - timedelta(minutes=2)
    await create_pool(cluster, redis_url, queue_name, cursor,
                      {"cron": "* * * * *", "startingDeadlineSeconds": 3600}, paused=True)
    entry = await eventually(
        lambda: (e := schedule_entry(cluster))["nextScheduleTime"] > rfc3339(cursor) and e)
    assert "lastTaskId" not in entry
    assert await queued_ids(TaskQueue(redis, queue_name)) == []
    assert cluster.events("ScheduleMissed") == []
    assert cluster.events("Scheduled") == []


async def test_a_schedule_that_cannot_run_makes_the_pool_degraded(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str,
) -> None:
    await create_pool(cluster, redis_url, queue_name, datetime.now(UTC),
                      {"cron": "@daily", "timeZone": "Mars/Olympus_Mons"})
    condition = await eventually(
        lambda: (c := cluster.condition(POOL, "Degraded"))["status"] == "True" and c)
    assert condition["reason"] == "ScheduleInvalid"
    assert condition["message"] == "schedule 'report': unknown time zone 'Mars/Olympus_Mons'"
    assert cluster.condition(POOL, "QueueReachable")["status"] == "True"


async def test_a_time_that_cannot_be_submitted_keeps_the_cursor_for_the_next_round() -> None:
    """The queue unreachable: the pool is Degraded (ScheduleFailed) and the status keeps the
    cursor, so the same time is submitted once the queue is back (within its deadline)."""
    cursor = minute_floor(datetime.now(UTC))
    manifest = pool_manifest(POOL, schedules=[{"name": "report", "cron": "* * * * *",
                                               "startingDeadlineSeconds": 600}])
    result = await run_schedules(one_round(manifest, None, cursor, "earlier"))
    assert result.status_fields["schedules"] == [
        {"name": "report", "lastTaskId": "earlier", "nextScheduleTime": rfc3339(cursor),
         "cron": "* * * * *", "timeZone": "UTC"}]
    (problem,) = result.problems
    assert problem.reason == "ScheduleFailed"
    assert problem.message == ("schedule 'report': the queue cannot be reached; the task is "
                               "submitted when it can")


async def test_replace_leaves_the_previous_task_when_the_queue_refuses_its_successor(
    redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    previous = await queue.submit({"prompt": "the 9:00 report"})
    cursor = minute_floor(datetime.now(UTC))
    manifest = pool_manifest(POOL, queue=queue_name, schedules=[{
        "name": "report", "cron": "* * * * *", "concurrencyPolicy": "Replace",
        "startingDeadlineSeconds": 600, "payload": "x" * (1 << 20)}])  # over the 1 MiB limit
    result = await run_schedules(one_round(manifest, queue, cursor, previous))
    (problem,) = result.problems
    assert problem.reason == "ScheduleFailed"
    assert problem.message.startswith("schedule 'report': payload is ")
    assert result.status_fields["schedules"] == [
        {"name": "report", "lastTaskId": previous, "nextScheduleTime": rfc3339(cursor),
         "cron": "* * * * *", "timeZone": "UTC"}]
    assert await queued_ids(queue) == [previous]


async def test_a_time_due_before_the_next_poll_is_submitted_when_it_comes(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    """pollSeconds 30, startingDeadlineSeconds 10: the loop wakes at the schedule's time
    rather than at its next poll (8 to 25 seconds after it, past the deadline)."""
    now = datetime.now(UTC)
    due = minute_floor(now) + timedelta(minutes=1)
    if (due - now).total_seconds() < 8:
        due += timedelta(minutes=1)
    ahead = (due - now).total_seconds()
    if ahead > 25:
        await asyncio.sleep(ahead - 20)  # the clock, not a condition: no poll falls near `due`
    await cluster.create_pool(pool_manifest(
        POOL, redis_url=redis_url, queue=queue_name, poll_seconds=30,
        schedules=[{"name": "report", "cron": f"{due.minute} * * * *",
                    "startingDeadlineSeconds": 10}]))
    await eventually(lambda: schedule_entry(cluster)["nextScheduleTime"] == rfc3339(due))
    assert datetime.now(UTC) < due, "the pool's first round came after the time"
    within = (due - datetime.now(UTC)).total_seconds() + 4
    entry = await eventually(lambda: "lastTaskId" in (e := schedule_entry(cluster)) and e,
                             within=within)
    assert entry["lastScheduleTime"] == rfc3339(due)
    assert await queued_ids(TaskQueue(redis, queue_name)) == [entry["lastTaskId"]]
    assert cluster.events("ScheduleMissed") == []


def test_the_loop_sleeps_no_longer_than_until_a_schedules_next_time() -> None:
    assert next_round_in(30, None) == 30
    assert next_round_in(30, None, schedule_due_in=2.5) == 2.5
    assert next_round_in(30, None, schedule_due_in=100) == 30
    assert next_round_in(30, 45, schedule_due_in=2.5) == 45  # a failing loop keeps its backoff
    assert next_round_in(0.5, 0.2, schedule_due_in=0.05) == 1.0
    assert next_round_in(30, 45) == 45
    assert next_round_in(30, 600) == MAX_RETRY_SECONDS


def test_the_loop_wakes_for_the_schedules_that_submit() -> None:
    every_minute = {"cron": "* * * * *"}
    spec = AgentPoolSpec.model_validate(pool_manifest(POOL, schedules=[
        {"name": "report", **every_minute}, {"name": "digest", **every_minute},
        {"name": "held", "suspend": True, **every_minute}])["spec"])
    fields = {"schedules": [
        {"name": "report", "nextScheduleTime": "2026-12-03T11:00:00Z"},
        {"name": "digest", "nextScheduleTime": "2026-12-03T11:05:00Z"},
        {"name": "held", "nextScheduleTime": "2026-12-03T10:59:00Z"},
        {"name": "gone", "nextScheduleTime": "2026-12-03T10:58:00Z"}]}
    assert upcoming_times(spec, fields) == [datetime(2026, 12, 3, 11, tzinfo=UTC),
                                            datetime(2026, 12, 3, 11, 5, tzinfo=UTC)]
    assert upcoming_times(spec.model_copy(update={"paused": True}), fields) == []
    assert upcoming_times(spec, {"schedules": None}) == []


Posted = list[tuple[str, str, str]]


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> Posted:
    """The Events the schedules post (kind, reason, message), outside a running operator."""
    events: Posted = []
    monkeypatch.setattr(schedule_actions, "_event",
                        lambda _, kind, reason, message: events.append((kind, reason, message)))
    return events


def at_round(manifest: dict[str, Any], queue: TaskQueue, now: datetime, state: PoolState,
             previous_status: dict[str, Any]) -> PoolObservation:
    return PoolObservation(
        namespace="default", name=POOL, pool=manifest,
        spec=AgentPoolSpec.model_validate(manifest["spec"]), deployment=None, figures=None,
        queue=queue, now=now, state=state, previous_status=previous_status)


REPORT_DUE = datetime(2026, 12, 3, 11, 0, tzinfo=UTC)


def every_minute(queue_name: str) -> dict[str, Any]:
    """A pool whose schedule `report` runs every minute, with a deadline of 10 s."""
    return pool_manifest(POOL, queue=queue_name, schedules=[
        {"name": "report", "cron": "* * * * *", "startingDeadlineSeconds": 10}])


@pytest.mark.parametrize("loop", ["running", "restarted", "failing"])
async def test_a_time_between_two_rounds_of_a_running_operator_is_submitted_however_late(
    redis: aioredis.Redis, queue_name: str, posted: Posted, loop: str,
) -> None:
    """Rounds 50 s apart, a deadline of 10 s: the time that came between them, found 30 s
    late, is the operator's to submit. An operator restarted since (a new loop state) or a
    loop failing since has the CronJob's rule: the time is missed."""
    queue, due, manifest = TaskQueue(redis, queue_name), REPORT_DUE, every_minute(queue_name)
    state = PoolState()
    first = await run_schedules(at_round(manifest, queue, due - timedelta(seconds=20), state, {}))
    (entry,) = first.status_fields["schedules"]
    assert entry["nextScheduleTime"] == rfc3339(due)
    if loop == "restarted":
        state = PoolState()
    elif loop == "failing":
        state.failing_since = time.monotonic()
    second = await run_schedules(at_round(manifest, queue, due + timedelta(seconds=30), state,
                                          {"schedules": [entry]}))
    (entry,) = second.status_fields["schedules"]
    assert entry["nextScheduleTime"] == rfc3339(due + timedelta(minutes=1))
    if loop == "running":
        assert entry["lastScheduleTime"] == rfc3339(due)
        assert await queued_ids(queue) == [entry["lastTaskId"]]
        assert [reason for _, reason, _ in posted] == ["Scheduled"]
        return
    assert "lastTaskId" not in entry
    assert await queued_ids(queue) == []
    why = ("while no task could be submitted (no operator running, or the queue unreachable)"
           if loop == "restarted" else
           "while this operator could not submit (the queue unreachable, or its rounds failing)")
    assert posted == [("Warning", "ScheduleMissed", f"schedule 'report': 1 scheduled time "
                                                    f"({rfc3339(due)}) passed {why}; none "
                                                    "submitted")]


async def test_times_between_two_late_rounds_are_reported_as_the_operators_delay(
    redis: aioredis.Redis, queue_name: str, posted: Posted,
) -> None:
    """Three minutes came between two rounds 170 s apart (a slow round): the latest is
    submitted, and the Event blames the operator's delay, not an outage."""
    queue, due, manifest = TaskQueue(redis, queue_name), REPORT_DUE, every_minute(queue_name)
    state = PoolState()
    first = await run_schedules(at_round(manifest, queue, due - timedelta(seconds=20), state, {}))
    second = await run_schedules(at_round(manifest, queue, due + timedelta(seconds=150), state,
                                          dict(first.status_fields)))
    (entry,) = second.status_fields["schedules"]
    assert entry["lastScheduleTime"] == rfc3339(due + timedelta(minutes=2))
    assert await queued_ids(queue) == [entry["lastTaskId"]]
    missed = [message for _, reason, message in posted if reason == "ScheduleMissed"]
    assert missed == [
        f"schedule 'report': 2 scheduled times ({rfc3339(due)} to "
        f"{rfc3339(due + timedelta(minutes=1))}) passed between two rounds of this operator "
        "170 s apart (its own delay, not an outage); submitted only the latest"]


@pytest.mark.parametrize("cron, poll, previous, now, submitted", [
    ("0 3 * * *", 1, datetime(2026, 12, 3, 2, 59, tzinfo=UTC),
     datetime(2026, 12, 3, 22, 0, tzinfo=UTC), []),
    ("0 * * * *", 1, datetime(2026, 12, 3, 2, 59, tzinfo=UTC),
     datetime(2026, 12, 3, 9, 30, tzinfo=UTC), []),
    ("0 * * * *", 600, datetime(2026, 12, 3, 2, 55, tzinfo=UTC),
     datetime(2026, 12, 3, 3, 5, tzinfo=UTC), [datetime(2026, 12, 3, 3, tzinfo=UTC)]),
    ("0 * * * *", 600, datetime(2026, 12, 3, 2, 55, tzinfo=UTC),
     datetime(2026, 12, 3, 3, 8, 1, tzinfo=UTC), []),
], ids=["daily-frozen-19h", "hourly-frozen-6.5h", "poll-600", "poll-600-plus-181s"])
async def test_a_gap_longer_than_a_running_loop_takes_is_an_outage(
    redis: aioredis.Redis, queue_name: str, posted: Posted, cron: str, poll: float,
    previous: datetime, now: datetime, submitted: list[datetime],
) -> None:
    """A deadline of 60 s: rounds of a running loop (at most its pollSeconds and
    ROUND_GAP_SLACK_SECONDS apart) submit the time that came between them however late;
    rounds further apart (the process frozen for hours) had an outage between them: its
    times are missed, as after a restart, not submitted hours late as the operator's delay."""
    queue = TaskQueue(redis, queue_name)
    manifest = pool_manifest(POOL, queue=queue_name, poll_seconds=poll, schedules=[
        {"name": "report", "cron": cron, "startingDeadlineSeconds": 60}])
    state = PoolState()
    first = await run_schedules(at_round(manifest, queue, previous, state, {}))
    assert state.schedules_round == previous
    second = await run_schedules(at_round(manifest, queue, now, state,
                                          dict(first.status_fields)))
    (entry,) = second.status_fields["schedules"]
    assert state.schedules_round == now
    if submitted:
        assert entry["lastScheduleTime"] == rfc3339(submitted[-1])
        assert await queued_ids(queue) == [entry["lastTaskId"]]
        assert [reason for _, reason, _ in posted] == ["Scheduled"]
        return
    assert "lastTaskId" not in entry
    assert await queued_ids(queue) == []
    (message,) = [message for _, reason, message in posted if reason == "ScheduleMissed"]
    assert "passed while no task could be submitted (no operator running, or the queue " \
        "unreachable); none submitted" in message
    assert "its own delay" not in message


def test_a_loop_never_sleeps_longer_than_a_schedules_round_gap_allows() -> None:
    """`recent_round`'s bound covers the longest sleep of the pool's loop, failing or not."""
    for poll in (0.5, 2, 600, 3600):
        longest = max(next_round_in(poll, None), next_round_in(poll, 1e9),
                      next_round_in(MIN_POLL_SECONDS, 1e9))
        assert longest + 120 <= poll + ROUND_GAP_SLACK_SECONDS


def test_the_missed_event_says_at_least_when_the_count_was_capped() -> None:
    every_minute = AgentPoolSpec.model_validate(pool_manifest(POOL, schedules=[
        {"name": "report", "cron": "* * * * *"}])["spec"]).schedules
    assert every_minute is not None
    now = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    turn = schedule_turn(every_minute[0], cursor=now - timedelta(days=2), now=now)
    assert missed_message(every_minute[0], turn, None, now) == (
        "schedule 'report': at least 1000 scheduled times (2026-12-01T00:00:00Z to "
        "2026-12-02T23:59:00Z) passed while no task could be submitted (no operator running, "
        "or the queue unreachable); submitted only the latest")
    mixed = schedule_turn(every_minute[0], cursor=now - timedelta(minutes=10), now=now,
                          previous_round=now - timedelta(minutes=2, seconds=30))
    assert missed_message(every_minute[0], mixed, now - timedelta(minutes=2, seconds=30),
                          now) == (
        "schedule 'report': 10 scheduled times (2026-12-02T23:50:00Z to 2026-12-02T23:59:00Z) "
        "passed without a task: 8 while this operator could not submit (the queue "
        "unreachable, or its rounds failing), 2 between two rounds of this operator 150 s "
        "apart (its own delay, not an outage); submitted only the latest")
