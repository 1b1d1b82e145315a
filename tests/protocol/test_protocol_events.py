"""Task event streams: append tagged with the attempt, follow live to the final event, resume
across a lost connection without a miss or a repeat, kept as long as the task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
import redis.asyncio as aioredis
from protocol_helpers import ONE_SERVER, RoundTrips, claim_one, eventually
from redis.asyncio.client import Pipeline
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.lua_source import script_source
from agentpool.protocol import (
    ProtocolError,
    RunEvents,
    TaskEvent,
    TaskNotFound,
    TaskQueue,
    encode_event,
    encode_progress,
    encode_result,
    task_queue,
)
from agentpool.redis_server import RedisServer


async def collect(queue: TaskQueue, task_id: str, **kwargs: object) -> list[TaskEvent]:
    return [event async for event in queue.events(task_id, **kwargs)]  # type: ignore[arg-type]


async def test_events_of_every_attempt_are_kept_in_order_with_their_attempt(
    queue: TaskQueue,
) -> None:
    task_id = await queue.submit({})
    first = await claim_one(queue, "pod-a:i1")
    await queue.record([RunEvents(task_id, 1, [("token", '"a"'), ("token", '"b"')], first.token)],
                       [])
    assert await queue.fail(first, "flaky", delay=0) == "retry"
    second = await claim_one(queue, "pod-a:i1")
    await queue.record([RunEvents(task_id, 2, [("progress", encode_event(
        "progress", encode_progress(0.5, "half")))], second.token)],
        [(second, encode_result({"ok": True}))])

    events = await collect(queue, task_id, follow=False)
    assert [(e.kind, e.data, e.attempt) for e in events] == [
        ("token", "a", 1), ("token", "b", 1),
        ("progress", {"fraction": 0.5, "message": "half"}, 2),
        ("final", {"state": "succeeded"}, 2),
    ]
    assert [e.id for e in events] == sorted({e.id for e in events}, key=events_order)
    info = await queue.get(task_id)
    assert info is not None and info.progress is not None
    assert (info.progress.fraction, info.progress.message) == (0.5, "half")


async def test_a_run_whose_lease_moved_on_appends_no_events(queue: TaskQueue) -> None:
    """Between a lost lease and the heartbeat that tells its worker, a run goes on emitting:
    its token no longer matches the task's, so nothing of it lands in the next run's stream."""
    task_id = await queue.submit({})
    zombie = await claim_one(queue, "pod-a:i1", lease=0.05)

    async def reaped() -> bool:
        return (await queue.reap_expired()).requeued == 1

    await eventually(reaped, within=5)
    holder = await claim_one(queue, "pod-b:i1")
    await queue.record([RunEvents(task_id, zombie.attempts, [("token", '"late"')],
                                  zombie.token)], [])
    await queue.record([RunEvents(task_id, holder.attempts, [("token", '"mine"')],
                                  holder.token)], [])
    events = await collect(queue, task_id, follow=False)
    assert [(e.data, e.attempt) for e in events] == [("mine", 2)]


async def test_a_requeued_dead_task_is_followed_past_its_first_final_event(
    queue: TaskQueue,
) -> None:
    task_id = await queue.submit({}, max_attempts=1)
    first = await claim_one(queue, "pod-a:i1")
    await queue.emit(task_id, "token", "once", attempt=first.attempts)
    assert await queue.fail(first, "broke", delay=0) == "dead"
    assert await queue.requeue_dead([task_id]) == 1
    seen: list[TaskEvent] = []

    async def follow() -> None:
        async for event in queue.events(task_id, block_seconds=0.2):
            seen.append(event)

    follower = asyncio.create_task(follow())
    second = await claim_one(queue, "pod-a:i1")
    await queue.emit(task_id, "token", "again", attempt=second.attempts)
    assert await queue.complete(second, "fixed")
    await asyncio.wait_for(follower, 5)
    assert [(e.kind, e.data) for e in seen] == [
        ("token", "once"), ("final", {"state": "dead", "error": "broke"}),
        ("token", "again"), ("final", {"state": "succeeded"})]
    assert [e.kind for e in await collect(queue, task_id, follow=False)] == [
        "token", "final", "token", "final"]


@pytest.mark.parametrize("emitted_before", [False, True])
async def test_events_run_after_their_completion_still_come_before_the_final_event(
    redis: aioredis.Redis, queue_name: str, emitted_before: bool,
) -> None:
    """A Redis that knows the completion script but not the events script (restarted or
    failed over, with another worker already reloading some scripts) runs the trip's
    completion first, then the events once loaded: they still land before 'final'."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({})
    task = await claim_one(queue, "pod-a:i1")
    if emitted_before:
        await queue.record([RunEvents(task_id, 1, [("token", '"early"')], task.token)], [])
    await redis.script_flush()
    await redis.script_load(script_source("complete"))
    recorded = await queue.record(
        [RunEvents(task_id, 1, [("token", '"a"'), ("token", '"b"')], task.token)],
        [(task, encode_result("done"))])
    assert recorded == [True]
    events = await collect(queue, task_id, follow=False)
    assert [(e.kind, e.data) for e in events] == [
        *([("token", "early")] if emitted_before else []),
        ("token", "a"), ("token", "b"), ("final", {"state": "succeeded"})]
    info = await queue.get(task_id)
    assert info is not None and info.state == "succeeded"
    assert await redis.ttl(queue.events_key(task_id)) > 0


def events_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def test_events_and_the_completion_go_in_one_round_trip(
    queue: TaskQueue, round_trips: RoundTrips, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await queue.submit_many(range(4))
    warm, *tasks = (await queue.claim("pod-a:i1", 4, 30)).tasks
    ids = [t.id for t in tasks]
    await queue.record([RunEvents(warm.id, 1, [("token", '"x"')])], [(warm, "null")])  # scripts
    pipelines: list[int] = []
    pipeline_class = type(queue.redis.pipeline(transaction=False))  # a cluster's has its own
    real_execute = pipeline_class.execute

    async def counted(self: Pipeline, raise_on_error: bool = True) -> list[object]:
        pipelines.append(len(self))
        return await real_execute(self, raise_on_error)

    monkeypatch.setattr(pipeline_class, "execute", counted)
    round_trips.reset()
    recorded = await queue.record(
        [RunEvents(t.id, 1, [("token", '"x"')] * 5, t.token) for t in tasks],
        [(t, "null") for t in tasks])
    assert recorded == [True, True, True]
    # the three runs' events, then one call for all three completions
    assert (round_trips.count, pipelines) == (0, [4])
    for task_id in ids:
        assert [e.kind for e in await collect(queue, task_id, follow=False)] == \
            ["token"] * 5 + ["final"]


async def test_a_follower_sees_every_event_live_and_stops_at_the_final_one(
    queue: TaskQueue,
) -> None:
    task_id = await queue.submit({})
    seen: list[TaskEvent] = []
    got_three = asyncio.Event()

    async def follow() -> None:
        async for event in queue.events(task_id, block_seconds=0.2):
            seen.append(event)
            if len(seen) == 3:
                got_three.set()

    follower = asyncio.create_task(follow())
    task = await claim_one(queue, "pod-a:i1")
    for i in range(3):
        await queue.emit(task_id, "token", i, attempt=1)
    await asyncio.wait_for(got_three.wait(), 5)
    assert not follower.done()
    await queue.emit(task_id, "token", 3, attempt=1)
    await queue.complete(task, "done")
    await asyncio.wait_for(follower, 5)
    assert [e.data for e in seen] == [0, 1, 2, 3, {"state": "succeeded"}]
    assert await queue.emit(task_id, "token", "late, from a zombie", attempt=1) == 0

    later = await collect(queue, task_id, after=seen[1].id, block_seconds=30)
    assert [e.data for e in later] == [2, 3, {"state": "succeeded"}]


async def test_following_a_task_without_events_ends_when_it_is_final(queue: TaskQueue) -> None:
    task_id = await queue.submit({})
    follower = asyncio.create_task(collect(queue, task_id, block_seconds=0.1))
    task = await claim_one(queue, "pod-a:i1")
    await queue.fail(task, "bad", retryable=False)
    assert await asyncio.wait_for(follower, 5) == []
    assert await asyncio.wait_for(collect(queue, task_id, block_seconds=30), 5) == []
    with pytest.raises(TaskNotFound):
        await collect(queue, "no-such-task")


async def test_the_stream_lives_as_long_as_the_task(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    await queue.configure(result_ttl=600)
    done, dead = await queue.submit_many([1, 2])
    for task_id in (done, dead):
        await queue.emit(task_id, "note", task_id)
    assert await redis.ttl(queue.events_key(done)) == -1
    task = await claim_one(queue, "pod-a:i1")
    await queue.complete(task)
    assert 590 <= await redis.ttl(queue.events_key(done)) <= 600
    task = await claim_one(queue, "pod-a:i1")
    await queue.fail(task, "bad", retryable=False)
    assert await redis.ttl(queue.events_key(dead)) == -1
    final = (await collect(queue, dead))[-1]
    assert final.data == {"state": "dead", "error": "bad"}
    await queue.purge_dead([dead])
    assert not await redis.exists(queue.events_key(dead))
    assert await queue.emit("purged-or-unknown", "note") == 0
    assert not await redis.exists(queue.events_key("purged-or-unknown"))


async def test_bad_events_are_refused_with_a_reason() -> None:
    with pytest.raises(ProtocolError, match="invalid event kind"):
        encode_event("final", None)
    with pytest.raises(ProtocolError, match="invalid event kind"):
        encode_event("has space", None)
    for kind in ("_private", "log\n"):
        with pytest.raises(ProtocolError, match="starting with a letter or digit"):
            encode_event(kind, None)
    with pytest.raises(ProtocolError, match="not JSON-serialisable"):
        encode_event("x", {1, 2})
    with pytest.raises(ProtocolError, match="65536-byte limit"):
        encode_event("x", "é" * 40_000)
    with pytest.raises(ProtocolError, match="between 0 and 1"):
        encode_progress(1.5)


@pytest.mark.parametrize("after", ["abc", "1-", "-1", "1-2-3", "1.5", " 1-0", "1-0\n", "$", " ",
                                   "18446744073709551616-0", "0-18446744073709551616",
                                   "18446744073709551615-18446744073709551615", 5])
@pytest.mark.parametrize("follow", [True, False])
@ONE_SERVER
async def test_an_after_that_is_no_event_id_is_refused_before_redis_sees_it(
    queue: TaskQueue, after: object, follow: bool,
) -> None:
    """Redis would answer it with its own error (a ResponseError about stream ids)."""
    task_id = await queue.submit({})
    await queue.emit(task_id, "note", 1)
    task = await claim_one(queue, "pod-a:i1")
    await queue.complete(task)
    with pytest.raises(ProtocolError, match="after must be an event id"):
        await collect(queue, task_id, after=after, follow=follow)


async def test_after_takes_an_event_id_with_or_without_its_sequence(queue: TaskQueue) -> None:
    task_id = await queue.submit({})
    await queue.emit(task_id, "note", 1)
    task = await claim_one(queue, "pod-a:i1")
    await queue.complete(task)
    first, final = await collect(queue, task_id)
    assert await collect(queue, task_id, after="0") == [first, final]
    assert await collect(queue, task_id, after="") == [first, final], "as no Last-Event-ID"
    assert await collect(queue, task_id, after=first.id, follow=False) == [final]
    milliseconds = first.id.partition("-")[0]
    assert (await collect(queue, task_id, after=milliseconds)
            == await collect(queue, task_id, after=f"{milliseconds}-0"))
    assert await collect(queue, task_id, after=final.id) == []


async def test_a_follower_resumes_after_a_redis_restart_without_a_miss_or_a_repeat(
    queue_name: str,
) -> None:
    with RedisServer(appendonly=True) as server:
        client = aioredis.Redis.from_url(server.url)
        follower_client = aioredis.Redis.from_url(server.url)
        queue = TaskQueue(client, queue_name)
        task_id = await queue.submit({})
        seen: list[TaskEvent] = []
        first_half = asyncio.Event()

        async def follow() -> None:
            async for event in TaskQueue(follower_client, queue_name).events(
                    task_id, block_seconds=0.2):
                seen.append(event)
                if len(seen) == 5:
                    first_half.set()

        follower = asyncio.create_task(follow())
        task = await claim_one(queue, "pod-a:i1")
        for i in range(5):
            await queue.emit(task_id, "token", i, attempt=1)
        await asyncio.wait_for(first_half.wait(), 5)
        await asyncio.to_thread(server.restart)
        await client.aclose()
        client = aioredis.Redis.from_url(server.url)
        queue = TaskQueue(client, queue_name)
        for i in range(5, 10):
            await queue.emit(task_id, "token", i, attempt=1)
        await queue.complete(task)
        await asyncio.wait_for(follower, 20)
        await client.aclose()
        await follower_client.aclose()
    assert [e.data for e in seen] == [*range(10), {"state": "succeeded"}]
    assert len({e.id for e in seen}) == len(seen)


async def following_a_running_task(queue: TaskQueue) -> AsyncGenerator[TaskEvent, None]:
    """A follower of a running task's events, past its first one."""
    task_id = await queue.submit({})
    await claim_one(queue, "pod-a:i1")
    await queue.emit(task_id, "token", 0, attempt=1)
    stream = queue.events(task_id, block_seconds=0.2)
    assert (await anext(stream)).data == 0
    return stream


async def test_following_stops_when_the_server_refuses_the_credentials(queue_name: str) -> None:
    """A lost connection is resumed; a reconnect refused for its credentials ends the stream
    with the error instead of being retried for ever."""
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url)
        admin = aioredis.Redis.from_url(server.url)
        try:
            stream = await following_a_running_task(TaskQueue(client, queue_name))
            await admin.config_set("requirepass", "changed")
            await admin.client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(AuthenticationError):
                await asyncio.wait_for(anext(stream), 10)
        finally:
            await client.aclose()
            await admin.aclose()


async def test_following_gives_up_once_redis_stays_gone_past_the_wait_patience(
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis that went away for good ends a follower with the error (as a wait ends) after
    WAIT_RECONNECT_SECONDS in a row, instead of a silent retry for ever."""
    monkeypatch.setattr(task_queue, "WAIT_RECONNECT_SECONDS", 1.0)
    server = RedisServer()
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        stream = await following_a_running_task(TaskQueue(client, queue_name))
        server.stop()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(anext(stream), 15)
    finally:
        await client.aclose()
        server.stop()
