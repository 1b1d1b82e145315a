"""Submitting tasks: round trip, ordering, delays, idempotency and what submit refuses."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, claim_within, queue_keys, queued_ids, task_keys

from agentpool.protocol import MAX_SUBMIT_CHUNK, PayloadTooLarge, ProtocolError, TaskQueue


async def test_submitted_task_is_claimed_and_completed_with_its_result(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    payload = {"prompt": "summarise", "n": [1, 2, 3], "text": "héllo"}
    task_id = await queue.submit(payload)
    info = await queue.get(task_id)
    assert info is not None
    assert (info.state, info.payload, info.attempts) == ("queued", payload, 0)

    task = await claim_one(queue, "pod-a:i1")
    assert task.id == task_id
    assert json.loads(task.payload_raw) == payload
    assert task.attempts == 1
    running = await queue.get(task_id)
    assert running is not None
    assert (running.state, running.owner) == ("running", "pod-a:i1")

    assert await queue.complete(task, {"summary": "ok"}) is True
    done = await queue.get(task_id)
    assert done is not None
    assert (done.state, done.result, done.error) == ("succeeded", {"summary": "ok"}, None)
    assert done.finished_ms is not None and done.finished_ms >= done.created_ms
    assert (await queue.claim("pod-a:i1", 10, 30)).tasks == []
    assert await redis.zcard(queue.prefix + "leases") == 0
    assert await queue.held_by("pod-a:i1") == set()


async def test_higher_priority_is_claimed_first(queue: TaskQueue) -> None:
    ids = {}
    for name, prio in [("low", 0), ("top", 9), ("mid", 5), ("top2", 9), ("low2", 0), ("one", 1)]:
        ids[await queue.submit(name, priority=prio)] = name
    batch = await queue.claim("w:1", 10, 30)
    assert [ids[t.id] for t in batch.tasks] == ["top", "top2", "mid", "one", "low", "low2"]


async def test_tasks_of_one_priority_are_claimed_in_submit_order(queue: TaskQueue) -> None:
    submitted = [await queue.submit(i, priority=3) for i in range(30)]
    claimed = [(await claim_one(queue, "w:1")).id for _ in range(30)]
    assert claimed == submitted


async def test_delayed_task_is_claimable_only_once_due(queue: TaskQueue) -> None:
    delay = 0.2
    start = time.monotonic()
    task_id = await queue.submit("later", delay=delay)
    batch = await queue.claim("w:1", 1, 30)
    assert batch.tasks == []
    assert batch.next_due_in is not None and 0 < batch.next_due_in <= delay
    info = await queue.get(task_id)
    assert info is not None and info.state == "delayed"

    task = await claim_within(queue, "w:1")
    assert task.id == task_id
    assert time.monotonic() - start >= delay - 0.01


async def test_idempotency_key_returns_the_same_task(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    first = await queue.submit({"n": 1}, idempotency_key="order-42")
    again = await queue.submit({"n": 2}, idempotency_key="order-42")
    other = await queue.submit({"n": 3}, idempotency_key="order-43")
    assert again == first
    assert other != first
    assert len(await task_keys(redis, queue)) == 2
    assert sorted(await queued_ids(redis, queue)) == sorted([first, other])
    info = await queue.get(first)
    assert info is not None and info.payload == {"n": 1}


async def test_concurrent_submits_sent_together_keep_their_own_options(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    """Submits beyond the calls in flight go to Redis in one script call (agentpool.coalesce);
    each keeps its priority, delay, attempt limit and idempotency key, a key given twice in
    one group names one task, and only created tasks count as submitted."""
    groups: list[int] = []
    send, send_one = queue._submits.send, queue._submits.send_one
    assert send_one is not None

    async def recording(group: Sequence[list[Any]]) -> Sequence[tuple[str, int]]:
        groups.append(len(group))
        return await send(group)

    async def recording_one(args: list[Any]) -> tuple[str, int]:
        groups.append(1)
        return await send_one(args)

    queue._submits.send, queue._submits.send_one = recording, recording_one
    options = [
        {"priority": i % 10, "delay": 60 if i % 7 == 0 else 0,
         "max_attempts": i % 3 + 1 if i % 5 == 0 else None,
         "idempotency_key": f"key-{i % 40}" if i % 4 == 0 else None}
        for i in range(120)
    ]
    ids = await asyncio.gather(*(queue.submit({"i": i}, **o) for i, o in enumerate(options)))

    assert sum(groups) == 120 and max(groups) > 1
    by_key: dict[str, set[str]] = {}
    for task_id, o in zip(ids, options, strict=True):
        if o["idempotency_key"]:
            by_key.setdefault(o["idempotency_key"], set()).add(task_id)
    assert all(len(same) == 1 for same in by_key.values())
    created = set(ids)
    assert len(created) == 120 - sum(1 for i in range(120) if i % 4 == 0) + len(by_key)
    assert len(await task_keys(redis, queue)) == len(created)
    for task_id in created:
        info = await queue.get(task_id)
        assert info is not None
        i = info.payload["i"]
        assert ids[i] == task_id  # the task is that of the submit whose payload it holds
        assert info.priority == options[i]["priority"]
        assert info.state == ("delayed" if options[i]["delay"] else "queued")
        assert info.max_attempts == options[i]["max_attempts"]
    assert (await queue.figures()).stats["submitted"] == len(created)


async def test_submitters_that_give_up_mid_way_leave_the_others_tasks_whole(
    queue: TaskQueue
) -> None:
    """Callers cancelled at random moments (request timeouts) while others' submits wait and
    go in groups: every submit that returned has its task, and afterwards nothing is left
    counted in flight or waiting."""
    rng = random.Random(7)
    calls = [asyncio.ensure_future(queue.submit({"i": i})) for i in range(300)]
    await asyncio.sleep(0)  # the first 8 go out alone, the rest wait for them
    for call in calls[:8:2]:
        call.cancel()
    for _ in range(6):
        await asyncio.sleep(rng.uniform(0, 0.002))
        for call in rng.sample(calls, 15):
            call.cancel()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    returned = {i: o for i, o in enumerate(outcomes) if isinstance(o, str)}
    assert 0 < len(returned) < 300
    assert all(isinstance(o, str | asyncio.CancelledError) for o in outcomes)
    for i, task_id in returned.items():
        info = await queue.get(task_id)
        assert info is not None and info.payload == {"i": i}
    assert (queue._submits._in_flight, len(queue._submits._waiting)) == (0, 0)
    lone = await queue.submit("after")
    assert (await queue.get(lone)) is not None


async def test_idempotency_key_of_a_purged_task_no_longer_dedupes(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    first = await queue.submit({"n": 1}, idempotency_key="order-7", max_attempts=1)
    task = await claim_one(queue, "w:1")
    assert await queue.fail(task, "boom", retryable=False) == "dead"
    assert await queue.purge_dead([first]) == 1

    again = await queue.submit({"n": 2}, idempotency_key="order-7")
    assert again != first
    info = await queue.get(again)
    assert info is not None and info.state == "queued" and info.payload == {"n": 2}
    assert await queue.submit({"n": 3}, idempotency_key="order-7") == again


async def test_payload_over_the_limit_is_refused_and_nothing_stored(
    redis: aioredis.Redis, queue_name: str
) -> None:
    queue = TaskQueue(redis, queue_name, max_payload_bytes=100)
    with pytest.raises(PayloadTooLarge) as excinfo:
        await queue.submit("x" * 200, idempotency_key="big")
    message = str(excinfo.value)
    assert "202 bytes" in message and "limit is 100 bytes" in message
    assert isinstance(excinfo.value, ProtocolError)
    assert await queue_keys(redis, queue) == set()

    # The limit counts encoded bytes, not characters.
    with pytest.raises(PayloadTooLarge):
        await queue.submit("é" * 60)
    await queue.submit("x" * 98)
    assert len(await task_keys(redis, queue)) == 1


@pytest.mark.parametrize("payload", [object(), {"when": time}, {1, 2}, float("nan")],
                         ids=["object", "module", "set", "nan"])
async def test_payload_that_is_not_json_is_refused(
    redis: aioredis.Redis, queue: TaskQueue, payload: Any
) -> None:
    with pytest.raises(ProtocolError, match="JSON"):
        await queue.submit(payload)
    assert await queue_keys(redis, queue) == set()


@pytest.mark.parametrize("priority", [-1, 10, 2.5, "3"])
async def test_priority_outside_0_to_9_is_refused(
    redis: aioredis.Redis, queue: TaskQueue, priority: Any
) -> None:
    with pytest.raises(ProtocolError, match="priority"):
        await queue.submit("x", priority=priority)
    assert await queue_keys(redis, queue) == set()


async def test_negative_delay_and_zero_max_attempts_are_refused(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    with pytest.raises(ProtocolError, match="delay"):
        await queue.submit("x", delay=-1)
    with pytest.raises(ProtocolError, match="max_attempts"):
        await queue.submit("x", max_attempts=0)
    assert await queue_keys(redis, queue) == set()


@pytest.mark.parametrize("name", ["", "has space", "{tag}", "-dash-first", "a" * 101, "a:b",
                                  "jobs\n"])
def test_invalid_queue_name_is_refused(redis: aioredis.Redis, name: str) -> None:
    with pytest.raises(ProtocolError, match="invalid queue name"):
        TaskQueue(redis, name)


def test_valid_queue_names_are_accepted(redis: aioredis.Redis) -> None:
    for name in ["a", "A" * 100, "jobs.v2_high-prio", "9lives"]:
        assert TaskQueue(redis, name).name == name


async def test_submit_many_stores_every_task_in_order(queue: TaskQueue) -> None:
    payloads = [{"i": i} for i in range(10)]
    ids = await queue.submit_many(payloads, priority=4, chunk=3)
    assert len(ids) == len(set(ids)) == 10
    batch = await queue.claim("w:1", 20, 30)
    assert [t.id for t in batch.tasks] == ids
    assert [json.loads(t.payload_raw) for t in batch.tasks] == payloads
    info = await queue.get(ids[0])
    assert info is not None and info.priority == 4


async def test_submit_many_with_an_attempt_limit_or_a_delay_keeps_them_and_the_order(
    queue: TaskQueue
) -> None:
    limited = await queue.submit_many([{"i": i} for i in range(7)], priority=2,
                                      max_attempts=3, chunk=3)
    delayed = await queue.submit_many(["later"] * 4, delay=60, chunk=3)
    batch = await queue.claim("w:1", 20, 30)
    assert [t.id for t in batch.tasks] == limited
    infos = [await queue.get(task_id) for task_id in limited + delayed]
    assert [(i.priority, i.max_attempts, i.state) for i in infos if i is not None] == (
        [(2, 3, "running")] * 7 + [(0, None, "delayed")] * 4)
    figures = await queue.figures()
    assert (figures.delayed, figures.stats["submitted"]) == (4, 11)


async def test_submit_many_with_one_bad_payload_stores_nothing(
    redis: aioredis.Redis, queue_name: str
) -> None:
    queue = TaskQueue(redis, queue_name, max_payload_bytes=50)
    with pytest.raises(PayloadTooLarge):
        await queue.submit_many(["ok", "ok", "x" * 100, "ok"], chunk=2)
    assert await queue_keys(redis, queue) == set()


async def test_submit_many_takes_chunks_larger_than_a_script_unpacks(queue: TaskQueue) -> None:
    """Lua unpacks at most about 8,000 values at once: a larger chunk is cut to
    MAX_SUBMIT_CHUNK instead of leaving written task hashes that were never queued."""
    ids = await queue.submit_many(range(MAX_SUBMIT_CHUNK * 4 + 500), chunk=10 * MAX_SUBMIT_CHUNK)
    figures = await queue.figures()
    assert figures.queued == len(ids) == len(set(ids))
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        await queue.submit_many([1], chunk=0)


async def test_submit_many_with_idempotency_keys_queues_only_the_tasks_not_queued_yet(
    queue: TaskQueue,
) -> None:
    """A fan-out submitted again (its request retried) gets the ids of the tasks already
    queued and queues only the new ones; a key given twice in one call names the first
    one's task, across chunks too."""
    first = await queue.submit_many(["a", "b", "c"], idempotency_keys=["o-1", None, "o-3"],
                                    chunk=2)
    again = await queue.submit_many(["a", "b", "c", "d", "e"],
                                    idempotency_keys=["o-1", None, "o-3", "o-4", "o-4"],
                                    chunk=2)
    assert (again[0], again[2]) == (first[0], first[2])
    assert len({*first, *again}) == 5 and again[3] == again[4]
    figures = await queue.figures()
    assert (figures.queued, figures.stats["submitted"]) == (5, 5)
    batch = await queue.claim("w:1", 10, 30)
    assert [t.id for t in batch.tasks] == [*first, again[1], again[3]]
    assert await queue.submit("z", idempotency_key="o-4") == again[3]


async def test_submit_many_keys_keep_the_other_options(queue: TaskQueue) -> None:
    ids = await queue.submit_many(["a", "b"], priority=7, delay=60, max_attempts=2,
                                  idempotency_keys=["d-1", "d-2"])
    infos = [await queue.get(task_id) for task_id in ids]
    assert [(i.state, i.priority, i.max_attempts) for i in infos if i is not None] == (
        [("delayed", 7, 2)] * 2)
    assert await queue.submit_many(["x"], idempotency_keys=["d-2"]) == ids[1:]


@pytest.mark.parametrize(("keys", "problem"), [
    (["k1"], "idempotency_keys has 1 keys for 2 payloads: give one per payload"),
    (["k1", "k2", "k3"], "idempotency_keys has 3 keys for 2 payloads"),
    ("k1", "idempotency_keys takes one key per payload, not one string"),
    (["k1", ""], "an idempotency key is a non-empty string or None, got ''"),
    (["k1", 7], "an idempotency key is a non-empty string or None, got 7"),
])
async def test_submit_many_refuses_keys_that_do_not_match_the_payloads(
    queue: TaskQueue, keys: Any, problem: str,
) -> None:
    with pytest.raises(ProtocolError, match=problem):
        await queue.submit_many(["a", "b"], idempotency_keys=keys)
    assert await queue_keys(queue.redis, queue) == set()


@pytest.mark.parametrize("key", ["", " ", "\t\n", 7, b"k"])
async def test_an_empty_blank_or_non_text_idempotency_key_is_refused_not_read_as_none(
    queue: TaskQueue, key: Any,
) -> None:
    """An empty key used to mean no key: a caller whose key came out empty (a missing field)
    would queue the same task twice, believing it keyed."""
    problem = "an idempotency key is a non-(blank|empty) string or None"
    with pytest.raises(ProtocolError, match=problem):
        await queue.submit("x", idempotency_key=key)
    with pytest.raises(ProtocolError, match=problem):
        await queue.submit_once("x", idempotency_key=key)
    with pytest.raises(ProtocolError, match=problem):
        await queue.submit_many(["x", "y"], idempotency_keys=["k1", key])
    assert await queue_keys(queue.redis, queue) == set()


@pytest.mark.parametrize(("options", "problem"), [
    ({"delay": float("nan")}, "delay must be a number of seconds, got nan"),
    ({"delay": float("inf")}, "delay must be a number of seconds, got inf"),
    ({"delay": True}, "delay must be a number of seconds, got True"),
    ({"delay": "5"}, "delay must be a number of seconds, got '5'"),
    ({"delay": -1}, "delay must be from 0 to 31536000 seconds \\(a year\\), got -1"),
    ({"delay": 400 * 86400}, "delay must be from 0 to 31536000 seconds \\(a year\\), got 34560000"),
    ({"max_attempts": 101}, "max_attempts must be an integer between 1 and 100, got 101"),
    ({"max_attempts": 2.5}, "max_attempts must be an integer between 1 and 100, got 2.5"),
    ({"max_attempts": True}, "max_attempts must be an integer between 1 and 100, got True"),
    ({"priority": True}, "priority must be an integer between 0 and 9, got True"),
    ({"expires": 1e308}, "expires must be from 0.001 to 31536000 seconds \\(a year\\)"),
    ({"task_timeout": 1e308}, "task_timeout must be from 0.001 to 604800 seconds \\(a week\\)"),
])
async def test_options_out_of_range_are_refused_before_anything_is_stored(
    queue: TaskQueue, options: dict[str, Any], problem: str,
) -> None:
    with pytest.raises(ProtocolError, match=problem):
        await queue.submit({"x": 1}, **options)
    assert (await queue.figures()).stats.get("submitted", 0) == 0


async def test_submit_once_says_whether_the_call_created_the_task(queue: TaskQueue) -> None:
    task_id, created = await queue.submit_once({"n": 1}, idempotency_key="daily")
    assert created
    assert await queue.submit_once({"n": 1}, idempotency_key="daily") == (task_id, False)
    args = queue._submit_args({"n": 2}, 0, 0, "weekly", None)
    first = await queue._submit(args)
    assert await queue._submit(args) == first == (args[0], True), \
        "the same call sent again (its reply lost) still created it"
