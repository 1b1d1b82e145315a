"""Recovery: requeue by owner and by pod, the lease reaper and heartbeats."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from protocol_helpers import RoundTrips, claim_one, queued_ids

from agentpool.protocol import ReapResult, RequeueResult, TaskQueue, WorkerInfo, task_queue


async def test_requeue_owner_returns_all_its_tasks_in_one_step_and_spares_others(
    redis: aioredis.Redis, queue: TaskQueue, round_trips: RoundTrips
) -> None:
    await queue.submit_many(range(5))
    lost = {t.id for t in (await queue.claim("pod-a:i1", 3, 30)).tasks}
    kept = {t.id for t in (await queue.claim("pod-b:i1", 2, 30)).tasks}
    await queue.requeue_owner("pod-x:warm-up")

    round_trips.reset()
    result = await queue.requeue_owner("pod-a:i1")
    assert round_trips.commands == ["EVALSHA"]
    assert result == RequeueResult(requeued=3, instances=1)

    assert set(await queued_ids(redis, queue)) == lost
    for task_id in lost:
        info = await queue.get(task_id)
        assert info is not None and (info.state, info.owner) == ("queued", None)
    for task_id in kept:
        info = await queue.get(task_id)
        assert info is not None and (info.state, info.owner) == ("running", "pod-b:i1")
    assert await queue.held_by("pod-a:i1") == set()
    assert await queue.held_by("pod-b:i1") == kept
    assert set(await redis.zrange(queue.prefix + "leases", 0, -1)) == {k.encode() for k in kept}


async def test_an_interrupted_task_goes_back_ahead_of_the_tasks_submitted_after_it(
    queue: TaskQueue,
) -> None:
    """Requeued by owner or by pod, or handed back by a draining worker, a task regains its
    place: it is claimed before every task that arrived after it."""
    first = await queue.submit_many(range(4))
    claims = [await claim_one(queue, f"pod-{index}:i1") for index in range(4)]
    assert [task.id for task in claims] == first
    later = await queue.submit_many(range(3))
    await queue.requeue_owner("pod-2:i1")
    await queue.requeue_pod("pod-0")
    assert await queue.release(claims[3], "worker shutting down") == "requeued"
    claimed = [(await claim_one(queue, "pod-z:i1")).id for _ in range(6)]
    assert claimed == [first[0], first[2], first[3], *later]


async def test_requeue_pod_keeps_the_current_instance_and_other_pods(queue: TaskQueue) -> None:
    workers = ["pod-a:old1", "pod-a:old2", "pod-a:cur", "pod-ab:x", "pod-b:x"]
    await queue.submit_many(range(len(workers)))
    held = {}
    for wid in workers:
        pod, _, instance = wid.partition(":")
        await queue.heartbeat(WorkerInfo(pod, instance, 1), {}, 30)
        held[wid] = (await claim_one(queue, wid)).id

    result = await queue.requeue_pod("pod-a", keep_instance="cur")
    assert (result.requeued, result.instances) == (2, 2)
    for wid, task_id in held.items():
        info = await queue.get(task_id)
        assert info is not None
        expected = "queued" if wid in ("pod-a:old1", "pod-a:old2") else "running"
        assert info.state == expected, wid


async def test_requeue_pod_finds_an_instance_that_never_heart_beat(queue: TaskQueue) -> None:
    task_id = await queue.submit("job")
    await claim_one(queue, "pod-a:i1")
    result = await queue.requeue_pod("pod-a")
    assert result.requeued == 1
    info = await queue.get(task_id)
    assert info is not None and info.state == "queued"


async def test_requeueing_twice_is_harmless(redis: aioredis.Redis, queue: TaskQueue) -> None:
    submitted = set(await queue.submit_many(range(4)))
    await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
    await queue.claim("pod-a:i1", 4, 0.05)

    first = await queue.requeue_owner("pod-a:i1")
    second = await queue.requeue_owner("pod-a:i1")
    by_pod = await queue.requeue_pod("pod-a")
    await asyncio.sleep(0.06)
    reaped = await queue.reap_expired()
    assert first.requeued == 4
    assert (second.total, by_pod.total, reaped.total) == (0, 0, 0)

    ids = await queued_ids(redis, queue)
    assert await redis.zcard(queue.prefix + "queued") == 4
    assert len(ids) == len(set(ids)) and set(ids) == submitted
    claimed = (await queue.claim("pod-b:i1", 10, 30)).tasks
    assert {t.id for t in claimed} == submitted and len(claimed) == 4
    assert all(t.attempts == 2 for t in claimed)


async def test_reaper_requeues_only_expired_leases(queue: TaskQueue) -> None:
    short_id = await queue.submit("short")
    long_id = await queue.submit("long")
    await claim_one(queue, "pod-a:i1", lease=0.2)
    await claim_one(queue, "pod-b:i1", lease=30)
    assert (await queue.reap_expired()).total == 0

    await asyncio.sleep(0.2)
    result = RequeueResult()
    for _ in range(100):
        result = await queue.reap_expired()
        if result.total:
            break
        await asyncio.sleep(0.01)
    assert result == ReapResult(requeued=1, by_worker={"pod-a:i1": RequeueResult(requeued=1)})
    short = await queue.get(short_id)
    long = await queue.get(long_id)
    assert short is not None
    assert (short.state, short.error) == ("queued", "lease expired, held by pod-a:i1")
    assert long is not None and (long.state, long.owner) == ("running", "pod-b:i1")
    assert await queue.held_by("pod-a:i1") == set()


async def test_reaper_names_the_holder_of_every_task_it_moves(queue: TaskQueue) -> None:
    await queue.submit_many(range(2))
    await queue.claim("pod-a:i1", 2, 0.05)
    await queue.submit("last try", max_attempts=1)
    await queue.claim("pod-b:i1", 1, 0.05)
    await queue.submit("spared")
    await queue.claim("pod-c:i1", 1, 30)

    result = ReapResult()
    for _ in range(100):
        await asyncio.sleep(0.06)
        result = await queue.reap_expired()
        if result.total:
            break
    assert (result.requeued, result.dead_lettered, result.total) == (2, 1, 3)
    assert result.by_worker == {"pod-a:i1": RequeueResult(requeued=2),
                                "pod-b:i1": RequeueResult(dead_lettered=1)}


async def test_heartbeat_extends_leases(queue: TaskQueue) -> None:
    task_id = await queue.submit("long job")
    task = await claim_one(queue, "pod-a:i1", lease=0.2)
    beat = await queue.heartbeat(WorkerInfo("pod-a", "i1", 1),
                                 {task.id: task.token}, 30)
    assert (beat.lost, beat.cancel, beat.drain_requested) == ([], [], False)
    await asyncio.sleep(0.3)
    assert (await queue.reap_expired()).total == 0
    info = await queue.get(task_id)
    assert info is not None and info.state == "running"
    assert await queue.complete(task, "done")


async def test_heartbeat_reports_lost_tasks_without_renewing_them(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    await queue.submit("job")
    task = await claim_one(queue, "pod-a:i1")
    await queue.requeue_owner("pod-a:i1")
    beat = await queue.heartbeat(WorkerInfo("pod-a", "i1", 1),
                                 {task.id: task.token, "no-such-task": "1"}, 30)
    assert sorted(beat.lost) == sorted([task.id, "no-such-task"])
    assert await redis.zcard(queue.prefix + "leases") == 0
    info = await queue.get(task.id)
    assert info is not None and info.state == "queued"


async def test_heartbeat_registers_the_worker(queue: TaskQueue) -> None:
    await queue.heartbeat(WorkerInfo("pod-a", "i1", 4, done=7, failed=1), {}, 30)
    [state] = await queue.workers()
    assert (state.worker_id, state.pod, state.instance) == ("pod-a:i1", "pod-a", "i1")
    assert (state.in_flight, state.done, state.failed, state.concurrency) == (0, 7, 1, 4)
    assert not state.drain_requested


async def test_a_heartbeat_writes_the_queues_settings_again_when_redis_lost_them(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """The settings a worker writes at start (max attempts, result TTL) vanish with Redis's
    data; the tasks submitted since must not run under the defaults. A heartbeat writes them
    again and says so; settings that are there are left as they are."""
    worker = WorkerInfo("pod-a", "i1", 4)
    await queue.configure(max_attempts=1, result_ttl=600)
    beat = await queue.heartbeat(worker, {}, 30, settings=(5, 60))
    assert not beat.settings_restored
    assert await redis.hgetall(queue.prefix + "config") == {
        b"max_attempts": b"1", b"result_ttl": b"600"}
    await redis.delete(queue.prefix + "config")  # as a FLUSHALL or an empty restart does
    assert not (await queue.heartbeat(worker, {}, 30)).settings_restored, "none given"
    beat = await queue.heartbeat(worker, {}, 30, settings=(1, 600))
    assert beat.settings_restored
    await queue.submit({"n": 1})
    task = await claim_one(queue, "pod-a:i1")
    assert task.max_attempts == 1


async def test_heartbeat_records_when_the_runs_began(queue: TaskQueue) -> None:
    worker = WorkerInfo("pod-a", "i1", 4, runs_since=(1_700_000_000_000, 1_700_000_005_500))
    await queue.heartbeat(worker, {}, 30)
    [state] = await queue.instances("pod-a")
    assert state.runs_since == pytest.approx((1_700_000_000.0, 1_700_000_005.5), abs=5)
    await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
    [state] = await queue.instances("pod-a")
    assert state.runs_since == ()


async def test_instances_read_on_a_clock_ahead_of_redis_are_not_judged_silent(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator whose clock runs two minutes ahead of Redis's sees a worker that just
    heart-beat as just seen, and its runs as young as they are."""
    await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
    seconds, micros = await queue.redis.time()
    redis_now = seconds + micros / 1_000_000
    await queue.heartbeat(WorkerInfo("pod-a", "i1", 4, runs_since=(int(redis_now * 1000),)),
                          {}, 30)
    ahead = 120.0
    monkeypatch.setattr(task_queue, "time", SimpleNamespace(time=lambda: time.time() + ahead))
    [state] = await queue.instances("pod-a")
    reader_now = time.time() + ahead
    assert reader_now - state.last_seen == pytest.approx(0, abs=5)
    assert reader_now - state.runs_since[0] == pytest.approx(0, abs=5)


async def test_a_heartbeat_says_how_long_ago_the_earliest_lease_ran_out(
    queue: TaskQueue,
) -> None:
    """What lets workers reap when no operator does: 0 while every lease holds, then the
    age of the earliest one that ran out (the heartbeat's own leases are extended first)."""
    await queue.submit({"n": 1})
    await queue.submit({"n": 2})
    mine = await claim_one(queue, "pod-a:i1", lease=0.2)
    await claim_one(queue, "pod-gone:i1", lease=1.0)
    beat = await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {mine.id: mine.token}, 30)
    assert beat.leases_overdue == 0.0
    deadline = time.monotonic() + 5
    while beat.leases_overdue < 0.3 and time.monotonic() < deadline:
        beat = await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {mine.id: mine.token}, 30)
    assert 0.3 <= beat.leases_overdue < 5
    await queue.reap_expired()
    beat = await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {mine.id: mine.token}, 30)
    assert beat.leases_overdue == 0.0


async def running_by_owner(queue: TaskQueue) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in await queue.list_tasks("running"):
        assert info.owner is not None
        counts[info.owner] = counts.get(info.owner, 0) + 1
    return counts


async def test_workers_in_flight_is_the_leases_held_not_the_last_heartbeat(
    queue: TaskQueue, round_trips: RoundTrips
) -> None:
    busy, idle = WorkerInfo("pod-a", "i1", 4), WorkerInfo("pod-b", "i1", 4)
    for worker in (busy, idle):
        await queue.heartbeat(worker, {}, 30)
    await queue.submit_many(range(5))
    tasks = (await queue.claim(busy.worker_id, 3, 30)).tasks
    await queue.claim(idle.worker_id, 1, 30)
    await queue.request_drain("pod-b")

    await queue.workers()  # the script loads on first use
    round_trips.reset()
    states = {w.worker_id: w for w in await queue.workers()}
    assert round_trips.commands == ["EVALSHA"]
    assert {wid: w.in_flight for wid, w in states.items()} == await running_by_owner(queue)
    assert (states[busy.worker_id].in_flight, states[idle.worker_id].in_flight) == (3, 1)
    assert (states[busy.worker_id].drain_requested, states[idle.worker_id].drain_requested) == (
        False, True)

    assert await queue.complete(tasks[0], "ok")
    await queue.requeue_owner(idle.worker_id)
    states = {w.worker_id: w for w in await queue.workers()}
    assert {wid: w.in_flight for wid, w in states.items()} == (
        await running_by_owner(queue)) == {busy.worker_id: 2}
