"""Tasks and handlers that misbehave: each run ends with an outcome on record (failed,
retried or dead-lettered with its error) and the worker goes on serving; none is left
running on a live worker's lease."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from sample_handlers import LONE_SURROGATE
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.protocol import TaskQueue

TOO_DEEP = 100_000
"""Nesting no Python JSON parser or encoder recurses through."""


async def served_after(queue: TaskQueue) -> None:
    """The worker still claims and finishes new tasks."""
    later = await queue.submit({"ok": "after"})
    await eventually(lambda: task_in(queue, later, "succeeded"), 10, "a task after it")


async def test_a_payload_nested_too_deeply_is_dead_lettered_as_malformed(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"ok": 1})
    await redis.hset(queue.task_key(task_id), "payload",  # type: ignore[misc]
                     "[" * TOO_DEEP + "]" * TOO_DEEP)
    async with running(settings(redis_url, queue_name, "agentpool_worker.builtin:echo")) as w:
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the DLQ")
        assert dead.error is not None and dead.error.startswith("malformed payload (not JSON)")
        assert dead.attempts == 1
        await served_after(queue)
        assert w.state == "running"
    info = await queue.get(task_id)
    assert info is not None and isinstance(info.payload, str)  # shown raw, not an error


async def test_a_result_nested_too_deeply_fails_the_task_not_the_worker(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"depth": TOO_DEEP}, max_attempts=3)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:deep_result")) as w:
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the DLQ")
        assert dead.error == "result not stored: the result is nested too deeply to store as JSON"
        assert dead.attempts == 1  # the same code would make the same result
        await served_after(queue)
        assert w.state == "running"


async def test_a_result_over_the_size_limit_is_dead_lettered_with_the_sizes_and_the_setting(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Bytes count, not characters: 1,100 two-byte characters are 2,202 bytes as JSON."""
    queue = TaskQueue(redis, queue_name)
    fits = await queue.submit("é" * 1000, max_attempts=3)
    too_large = await queue.submit("é" * 1100, max_attempts=3)
    worker_settings = settings(redis_url, queue_name, "agentpool_worker.builtin:echo",
                               max_result_bytes=2048)
    async with running(worker_settings) as w:
        done = await eventually(lambda: task_in(queue, fits, "succeeded"), 10, "the result")
        assert done.result == "é" * 1000
        dead = await eventually(lambda: task_in(queue, too_large, "dead"), 10, "the DLQ")
        assert dead.error == (
            "result not stored: the result is 2202 bytes encoded as JSON; the limit is 2048 "
            "bytes (2 KiB). Store large output elsewhere and return where it is, or raise "
            "AGENTPOOL_MAX_RESULT_BYTES")
        assert dead.attempts == 1  # the same run would make the same result
        assert dead.result is None
        await served_after(queue)
        assert w.state == "running"
    [letter] = await queue.dead_letters()
    assert (letter.id, letter.payload) == (too_large, "é" * 1100)  # kept, to run again


async def test_text_utf8_cannot_encode_is_stored_escaped_and_the_worker_goes_on(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A lone surrogate in a result, an event or a checkpoint reads back as it was written
    (JSON's \\ud83d escape); in an error it becomes '?'. None stops the worker."""
    queue = TaskQueue(redis, queue_name)
    succeeds = await queue.submit({}, max_attempts=1)
    fails = await queue.submit({"fail": True}, max_attempts=1)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:lone_surrogates")) as w:
        done = await eventually(lambda: task_in(queue, succeeds, "succeeded"), 10, "a result")
        assert done.result == LONE_SURROGATE
        dead = await eventually(lambda: task_in(queue, fails, "dead"), 10, "the DLQ")
        assert dead.error is not None
        assert dead.error.startswith("ValueError: half a pair: ?")
        await served_after(queue)
        assert w.state == "running"
    notes = [e.data for e in [e async for e in queue.events(succeeds, follow=False)]
             if e.kind == "note"]
    assert notes == [{"text": LONE_SURROGATE}]
    assert await queue.checkpoint_state(fails) == {"text": LONE_SURROGATE}  # kept by a dead task


async def test_a_cancelled_error_of_the_handlers_own_is_a_failed_run(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({}, max_attempts=2)
    async with running(settings(redis_url, queue_name,
                                f"{HANDLERS}:awaits_a_cancelled_call")) as w:
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "two attempts")
        assert dead.attempts == 2
        assert dead.error is not None and dead.error.startswith("CancelledError")
        assert w.state == "running"


async def test_sys_exit_in_a_handler_fails_the_run_and_the_worker_goes_on(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"code": 0}, max_attempts=1)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:calls_sys_exit")) as w:
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the DLQ")
        assert dead.error == "the handler called sys.exit(0); return or raise instead"
        assert w.state == "running"


async def test_a_task_whose_attempt_limit_is_not_a_number_runs_with_the_queues(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    odd, plain = await queue.submit_many([{"n": 1}, {"n": 2}], max_attempts=2)
    await redis.hset(queue.task_key(odd), mapping={"max": "three", "created": "x"})  # type: ignore[misc]
    async with running(settings(redis_url, queue_name, "agentpool_worker.builtin:echo")) as w:
        for task_id, payload in ((odd, {"n": 1}), (plain, {"n": 2})):
            done = await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 10, "it")
            assert done.result == payload
        assert w.state == "running"


async def test_events_whose_reply_was_lost_are_sent_again_and_appended_once(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Redis recorded the events, then the connection dropped with the reply (and redis-py's
    own retry failed too): the worker sends the same call again, which appends nothing."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:streamer")) as w:
        record = w.queue.record
        lost: list[int] = []

        async def reply_lost_once(events: Any, done: Any, **kwargs: Any) -> list[bool]:
            recorded = await record(events, done, **kwargs)
            if events and not lost:
                lost.append(len(events))
                raise RedisConnectionError("Connection closed by server.")
            return recorded

        w.queue.record = reply_lost_once  # type: ignore[method-assign]
        task_id = await queue.submit({"tokens": 3})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the run")
    assert lost
    events = [(e.kind, e.data) async for e in queue.events(task_id, follow=False)]
    emitted = [pair for i in range(3) for pair in (
        ("token", {"i": i}),
        ("progress", {"fraction": round((i + 1) / 3, 4), "message": f"token {i + 1} of 3"}))]
    assert events == [*emitted, ("final", {"state": "succeeded"})]


@pytest.mark.parametrize(("handler", "payload", "error"), [
    ("misbehaves", {"kind": "datetime"},
     "Object of type datetime is not JSON serializable at ['when']"),
    # JSON has no NaN or infinity: Python writes them, browsers and most parsers refuse them
    ("not_a_number", {}, "NaN or infinity is not JSON at ['score']"),
])
async def test_a_result_that_is_not_json_is_dead_lettered_not_stored_as_its_text(
    redis_url: str, queue_name: str, redis: aioredis.Redis, handler: str, payload: Any,
    error: str,
) -> None:
    """Stored as its repr, it would pass for a success. The same code would make the same
    result: no retry; the payload is kept, to run again once the handler is fixed."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit(payload, max_attempts=3)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:{handler}")) as w:
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the DLQ")
        assert dead.error == f"result not stored: the result is not JSON: {error}"
        assert (dead.attempts, dead.result, dead.payload) == (1, None, payload)
        if handler == "misbehaves":
            await served_after(queue)
        assert w.state == "running"
    assert await redis.hget(queue.task_key(task_id), "result") is None  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "error"), [
    ("unreadable", "UnreadableError: <its message could not be read: "
                   "UnreadableError.__str__ failed>"),
    ("unrepresentable", "result not stored: "),
    ("base", "Interrupted: "),
    ("keyboard", "KeyboardInterrupt: "),
])
async def test_a_run_that_ends_in_any_exception_ends_on_record(
    redis_url: str, queue_name: str, redis: aioredis.Redis, kind: str, error: str,
) -> None:
    """An error whose message cannot be read, a result whose repr raises, a BaseException of
    the handler's own (KeyboardInterrupt too): each run fails on record, none is left running
    on the worker's lease, and the worker serves on."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"kind": kind}, max_attempts=1)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:misbehaves")) as w:
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the DLQ")
        assert dead.error is not None and dead.error.startswith(error), dead.error
        await served_after(queue)
        assert w.state == "running"


async def test_a_sync_wrapper_of_an_async_handler_is_awaited_and_a_generator_refused(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    wrapped = await queue.submit("x")
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:wrapped_coroutine")):
        done = await eventually(lambda: task_in(queue, wrapped, "succeeded"), 10, "the result")
        assert done.result == {"awaited": "x"}
    streamed = await queue.submit("y", max_attempts=3)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:async_generator")):
        dead = await eventually(lambda: task_in(queue, streamed, "dead"), 10, "the DLQ")
        assert dead.error == ("result not stored: TypeError: the handler returned an async "
                              "generator, not a result: return the value itself")
        assert dead.attempts == 1
