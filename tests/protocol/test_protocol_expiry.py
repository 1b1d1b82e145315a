"""Tasks that expire: a task not started within `expires` seconds of its submit is not run.

Time is Redis's: each test that needs a task expired waits until Redis's clock has passed the
task's expiry (`past_expiry`), then claims."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, claim_within, fail_until_dead, queued_ids

from agentpool.client import SyncClient
from agentpool.protocol import FailOutcome, ProtocolError, RunEvents, TaskQueue


async def redis_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def past_expiry(redis: aioredis.Redis, queue: TaskQueue, task_id: str) -> None:
    info = await queue.get(task_id)
    assert info is not None and info.expires_ms is not None
    deadline = time.monotonic() + 5
    while await redis_ms(redis) <= info.expires_ms:
        assert time.monotonic() < deadline, "Redis's clock did not reach the expiry"
        await asyncio.sleep(0.005)


async def test_a_task_started_in_time_runs_and_keeps_its_expiry_on_record(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    before = await redis_ms(redis)
    task_id = await queue.submit({"n": 1}, expires=60)
    task = await claim_one(queue, "w1")
    assert task.id == task_id
    info = await queue.get(task_id)
    assert info is not None and info.expires_ms is not None
    assert before + 60_000 <= info.expires_ms <= await redis_ms(redis) + 60_000
    assert await queue.complete(task, "ok")


async def test_a_task_not_started_in_time_ends_cancelled_and_takes_no_place_in_the_claim(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A claim of one (an idle worker's) that pops an expired task pops again."""
    stale = await queue.submit({"n": 1}, expires=0.05)
    fresh = await queue.submit({"n": 2})
    await past_expiry(redis, queue, stale)
    batch = await queue.claim("w1", 1, 30)
    assert [t.id for t in batch.tasks] == [fresh] and batch.queued_left == 0
    info = await queue.wait(stale, timeout=1)
    assert info.state == "cancelled" and info.attempts == 0
    assert info.error == "expired: not started within 0.05 s of its submit"
    stats = (await queue.figures()).stats
    assert (stats.get("cancelled"), stats.get("expired")) == (1, 1)
    assert await queued_ids(redis, queue) == []


async def test_a_claim_passes_over_at_most_200_expired_tasks_and_the_next_finds_the_rest(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    stale = await queue.submit_many([{}] * 250, expires=0.05)
    fresh = await queue.submit({"n": 2})
    await past_expiry(redis, queue, stale[-1])
    first = await queue.claim("w1", 1, 30)
    assert first.tasks == [] and first.queued_left == 51
    second = await queue.claim("w1", 1, 30)
    assert [t.id for t in second.tasks] == [fresh]
    assert (await queue.figures()).stats.get("cancelled") == 250


async def test_a_run_handed_back_after_the_expiry_is_not_started_again(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({}, expires=0.2)
    task = await claim_one(queue, "w1")
    await past_expiry(redis, queue, task_id)
    assert await queue.release(task, "worker stopping") == FailOutcome.REQUEUED
    assert (await queue.claim("w2", 1, 30)).tasks == []
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"
    assert info.attempts == 0  # a hand-back spends no attempt
    assert info.error == "expired: not started again within 0.2 s of its submit"


async def test_an_expired_task_with_events_gets_its_final_event(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A retry that comes too late: the first run's events stay, closed by a final event."""
    task_id = await queue.submit({}, expires=0.3)
    task = await claim_one(queue, "w1")
    await queue.record([RunEvents(task_id, 1, [("token", '"a"')], task.token)], [])
    assert await queue.fail(task, "boom", delay=0) == FailOutcome.RETRY
    await past_expiry(redis, queue, task_id)
    assert (await queue.claim("w1", 1, 30)).tasks == []
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled" and info.attempts == 1
    assert info.error == "expired: not started again within 0.3 s of its submit"
    events = [(e.kind, e.data) async for e in queue.events(task_id, follow=False)]
    assert events == [("token", "a"), ("final", {"state": "cancelled", "error": info.error})]


async def test_a_delayed_task_runs_when_due_if_its_expiry_has_not_come(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({}, delay=0.05, expires=60)
    task = await claim_within(queue, "w1")
    assert task.id == task_id


@pytest.mark.parametrize(("delay", "expires", "message"), [
    (0, 0, "expires must be from 0.001 to 31536000 seconds (a year), got 0"),
    (0, -1, "expires must be from 0.001 to"),
    (5, 5, "expires must be after the delay (5 s): from 5.001 to 31536000 seconds"),
    (0, 366 * 86400, "to 31536000 seconds (a year)"),
    (0, float("nan"), "expires must be a number of seconds, got nan"),
    (0, True, "expires must be a number of seconds, got True"),
    (0, 10**400, "expires must be a number of seconds, got 1000"),
    pytest.param(0, 10**5000, "expires must be a number of seconds, got a number too large to "
                 "show", id="an-int-of-5001-digits"),
    (0, 0.0004, "expires must be from 0.001 to 31536000 seconds (a year), got 0.0004"),
    (2_000_000, 1_000_000, r"after the delay \(2000000 s\): .* got 1000000\Z"),
])
async def test_an_expiry_that_cannot_be_met_is_refused_and_nothing_stored(
    queue: TaskQueue, redis: aioredis.Redis, delay: float, expires: float, message: str,
) -> None:
    pattern = message if "\\" in message else re.escape(message)
    with pytest.raises(ProtocolError, match=pattern):
        await queue.submit({}, delay=delay, expires=expires)
    with pytest.raises(ProtocolError, match="expires must be"):
        await queue.submit_many([{}, {}], delay=delay, expires=expires)
    assert (await queue.figures()).used is False


async def test_submit_many_gives_every_task_the_expiry(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    ids = await queue.submit_many([{"n": n} for n in range(3)], expires=0.05)
    await past_expiry(redis, queue, ids[-1])
    assert (await queue.claim("w1", 10, 30)).tasks == []
    states = [info.state for info in [await queue.get(i) for i in ids] if info is not None]
    assert states == ["cancelled"] * 3


async def test_the_blocking_client_submits_with_an_expiry(
    queue: TaskQueue, redis: aioredis.Redis, redis_url: str,
) -> None:
    with SyncClient.from_url(redis_url) as client:
        task_id = client.queue(queue.name).submit({}, expires=0.05)
    await past_expiry(redis, queue, task_id)
    assert (await queue.claim("w1", 1, 30)).tasks == []
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"


async def test_a_dead_letter_requeued_by_hand_runs_whatever_its_expiry(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({}, max_attempts=1, expires=0.3)
    await fail_until_dead(queue, "w1", task_id)
    await past_expiry(redis, queue, task_id)
    assert await queue.requeue_dead([task_id]) == 1
    task = await claim_one(queue, "w1")
    assert task.id == task_id
    info = await queue.get(task_id)
    assert info is not None and info.expires_ms is None


async def test_a_retry_due_past_the_expiry_ends_the_task_at_once(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """No claim could start it: it ends cancelled as expired when its run fails, rather than
    wait in the delayed set (and keep a producer waiting) until then."""
    task_id = await queue.submit({}, expires=60)
    task = await claim_one(queue, "w1")
    assert await queue.fail(task, "the index is not built", delay=120) == FailOutcome.EXPIRED
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled" and info.attempts == 1
    assert info.error == ("expired: no retry could start within 60 s of its submit; the last "
                          "run failed: the index is not built")
    stats = (await queue.figures()).stats
    assert (stats.get("cancelled"), stats.get("expired"), stats.get("retried")) == (1, 1, None)


async def test_a_retry_due_before_the_expiry_waits_as_any_other(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({}, expires=60)
    task = await claim_one(queue, "w1")
    assert await queue.fail(task, "boom", delay=1) == FailOutcome.RETRY
    info = await queue.get(task_id)
    assert info is not None and info.state == "delayed"


async def test_the_reaper_ends_expired_tasks_at_the_head_so_the_depth_counts_none(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A pool at zero replicas, or paused, would start a pod only to cancel them."""
    stale = await queue.submit_many([{}] * 3, expires=0.05)
    fresh = await queue.submit({"n": 4})
    await past_expiry(redis, queue, stale[-1])
    assert (await queue.figures()).queued == 4
    reaped = await queue.reap_expired()
    assert (reaped.expired_waiting, reaped.total) == (3, 0)
    assert (await queue.figures()).queued == 1
    for task_id in stale:
        info = await queue.get(task_id)
        assert info is not None and info.state == "cancelled"
        assert info.error == "expired: not started within 0.05 s of its submit"
    assert (await queue.figures()).stats.get("expired") == 3
    assert [t.id for t in (await queue.claim("w1", 5, 30)).tasks] == [fresh]


async def test_the_reaper_stops_at_the_first_task_that_may_still_run(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """It looks at the head only (one read when nothing expired); what waits behind a task
    that may run is for the claims to end."""
    await queue.submit({"n": 0}, priority=9)
    stale = await queue.submit({}, expires=0.05)
    await past_expiry(redis, queue, stale)
    assert (await queue.reap_expired()).expired_waiting == 0
    assert (await queue.figures()).queued == 2


async def test_the_reaper_ends_due_delayed_tasks_past_their_expiry_too(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A delayed task already due counts in the depth until a claim moves it to the queue."""
    task_id = await queue.submit({}, delay=0.05, expires=0.1)
    await past_expiry(redis, queue, task_id)
    assert (await queue.figures()).queued == 1
    assert (await queue.reap_expired()).expired_waiting == 1
    assert (await queue.figures()).queued == 0
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"


async def test_the_reaper_passes_over_what_was_written_behind_the_protocols_back(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """An entry without its record is dropped, as a claim drops it; an expiry that is not a
    number stops the sweep there, and the reap goes on."""
    stale = await queue.submit({}, expires=0.05)
    await past_expiry(redis, queue, stale)
    await redis.zadd(queue.prefix + "queued", {"ghost": 0})
    assert (await queue.reap_expired()).expired_waiting == 1
    assert (await queue.figures()).queued == 0
    odd = await queue.submit({})
    await redis.hset(queue.task_key(odd), "expires", "soon")
    assert (await queue.reap_expired()).expired_waiting == 0
    assert (await queue.figures()).queued == 1
    assert (await claim_one(queue, "w1")).id == odd  # the claim runs it, as one without


async def deferred_expiry(redis: aioredis.Redis, queue: TaskQueue) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i
            for i in await redis.zrange(queue.prefix + "deferred_expiry", 0, -1)]


async def test_the_reaper_ends_a_deferred_task_past_its_expiry_and_those_after_it(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Not when the task it runs after ends, which may be hours later: that one runs on."""
    long_run = await queue.submit({"n": 1})
    summary = await queue.submit({"n": 2}, after=[long_run], expires=0.05)
    report = await queue.submit({"n": 3}, after=[summary])
    running = await claim_one(queue, "w1")
    assert await deferred_expiry(redis, queue) == [summary]
    await past_expiry(redis, queue, summary)

    assert (await queue.reap_expired()).expired_waiting == 1
    info = await queue.get(summary)
    assert info is not None and info.state == "cancelled"
    assert info.error == "expired: not started within 0.05 s of its submit"
    info = await queue.get(report)
    assert info is not None and info.error == (
        f"cancelled: the task {summary} it runs after ended expired")
    figures = await queue.figures()
    assert (figures.deferred, figures.stats.get("expired")) == (0, 1)
    assert await deferred_expiry(redis, queue) == []
    assert await queue.complete(running, "done"), "the task it ran after runs on"


async def test_a_deferred_task_leaves_the_reapers_list_however_it_stops_waiting(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Released, cancelled by a producer, by `cancel --waiting` or with the task it runs
    after: the list holds only tasks still deferred."""
    first = await queue.submit({"n": 1})
    released = await queue.submit({"n": 2}, after=[first], expires=3600)
    cancelled = await queue.submit({"n": 3}, after=[first], expires=3600)
    assert set(await deferred_expiry(redis, queue)) == {released, cancelled}
    await queue.cancel(cancelled)
    assert await deferred_expiry(redis, queue) == [released]
    task = await claim_one(queue, "w1")
    assert await queue.complete(task, "ok")
    assert await deferred_expiry(redis, queue) == []
    assert (await claim_one(queue, "w1")).id == released

    doomed = await queue.submit({"n": 4}, max_attempts=1)
    await queue.submit({"n": 5}, after=[doomed], expires=3600)
    await fail_until_dead(queue, "w1", doomed)
    assert await deferred_expiry(redis, queue) == []

    blocker = await queue.submit({"n": 6})
    running = await claim_one(queue, "w1")
    assert running.id == blocker
    await queue.submit({"n": 7}, after=[blocker], expires=3600)
    await queue.cancel_waiting()
    assert await deferred_expiry(redis, queue) == [], "cancelled though its blocker runs on"


async def test_the_reaper_drops_an_entry_whose_task_no_longer_waits(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """As one an earlier version left (it knew no such list): the running task is left be."""
    task_id = await queue.submit({"n": 1}, expires=0.05)
    running = await claim_one(queue, "w1")
    await past_expiry(redis, queue, task_id)
    await redis.zadd(queue.prefix + "deferred_expiry", {task_id: 0})
    assert (await queue.reap_expired()).expired_waiting == 0
    assert await deferred_expiry(redis, queue) == []
    assert await queue.complete(running, "ok"), "the run it started still counts"


async def test_a_task_a_requeue_brings_back_keeps_its_expiry(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """The dead task requeued by hand loses its expiry; the one after it keeps its own, and
    past it ends at the reaper's next call."""
    first = await queue.submit({"n": 1}, max_attempts=1, expires=3600)
    second = await queue.submit({"n": 2}, after=[first], expires=0.05)
    await fail_until_dead(queue, "w1", first)
    await past_expiry(redis, queue, second)
    await queue.requeue_dead([first])
    assert await deferred_expiry(redis, queue) == [second]
    assert (await queue.reap_expired()).expired_waiting == 1
    info = await queue.get(second)
    assert info is not None and info.error == "expired: not started within 0.05 s of its submit"
    assert (await claim_one(queue, "w1")).id == first, "the requeued task runs"
