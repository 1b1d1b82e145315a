"""Per-queue ACL users on a real redis-server: a worker or producer credential works for its own
queue with nothing more than its ACL, and is refused everything beyond it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from protocol_helpers import ONE_SERVER, eventually
from redis.exceptions import NoPermissionError, ResponseError

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.connection import redis_from_url
from agentpool.protocol import (
    CancelOutcome,
    FailOutcome,
    TaskQueue,
    TenantCaps,
    WorkerInfo,
    task_page,
    task_view,
)
from agentpool.redis_server import RedisServer
from agentpool.urls import with_credentials

AclUrl = Callable[[str, Role], Awaitable[str]]
Connect = Callable[[str, Role], Awaitable[aioredis.Redis]]




@pytest.fixture
async def connect_as(acl_url: AclUrl) -> AsyncIterator[Connect]:
    """Connects as a new ACL user confined to (queue, role)."""
    clients: list[aioredis.Redis] = []

    async def connect(queue: str, role: Role) -> aioredis.Redis:
        client = redis_from_url(await acl_url(queue, role))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()


def other_queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


async def test_the_worker_protocol_runs_with_nothing_more_than_its_acl(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    producer = TaskQueue(redis, queue_name)
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    await worker.configure(max_attempts=2, result_ttl=60)
    info = WorkerInfo("pod-a", "i1", 4)
    beat = await worker.heartbeat(info, {}, 30)
    assert beat.lost == [] and not beat.drain_requested
    assert (await worker.requeue_pod("pod-a", keep_instance="i1")).total == 0

    ids = await producer.submit_many([{"n": n} for n in range(4)])
    batch = await worker.wait_and_claim(info.worker_id, 4, 30, timeout=1)
    assert sorted(t.id for t in batch.tasks) == sorted(ids)
    first, second, third, fourth = batch.tasks
    assert await worker.held_by(info.worker_id) == set(ids)
    beat = await worker.heartbeat(info, {t.id: t.token for t in batch.tasks}, 30)
    assert beat.lost == []

    assert await worker.complete(first, {"ok": True})
    assert await worker.complete_many([(second, 2)]) == [True]
    assert await worker.fail(third, "boom", delay=0) is FailOutcome.RETRY
    assert await worker.release(fourth, "draining") is FailOutcome.REQUEUED
    again = await worker.claim(info.worker_id, 4, 30)
    assert {t.id for t in again.tasks} == {third.id, fourth.id}
    assert await worker.fail(
        next(t for t in again.tasks if t.id == third.id), "boom again") is FailOutcome.DEAD
    await producer.cancel(fourth.id)
    assert await worker.cancelled(next(t for t in again.tasks if t.id == fourth.id)) \
        is FailOutcome.CANCELLED

    states = {i.id: i.state for i in await worker.get_many(ids)}
    assert states == {first.id: "succeeded", second.id: "succeeded", third.id: "dead",
                      fourth.id: "cancelled"}
    assert (await worker.figures()).dead == 1
    assert [w.worker_id for w in await worker.workers()] == [info.worker_id]


@ONE_SERVER
async def test_a_url_naming_another_database_works(
    acl_url: AclUrl, queue_name: str, redis_server: RedisServer,
) -> None:
    url = (await acl_url(queue_name, Role.WORKER)).removesuffix("/0") + "/3"
    client = aioredis.Redis.from_url(url, client_name="agentpool-test")
    try:
        queue = TaskQueue(client, queue_name)
        await queue.submit("in db 3")
        assert (await queue.figures()).queued == 1
    finally:
        await client.aclose()
    admin = aioredis.Redis.from_url(redis_server.url.removesuffix("/0") + "/3")
    try:
        assert await admin.exists(f"ap:{{{queue_name}}}:queued")
    finally:
        await admin.aclose()


@ONE_SERVER
async def test_a_worker_scripts_still_load_after_the_server_forgets_them(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    await TaskQueue(redis, queue_name).submit_many([1, 2])
    batch = await worker.claim("pod:i", 2, 30)
    await redis.script_flush()
    assert await worker.complete_many([(t, None) for t in batch.tasks]) == [True, True]


@ONE_SERVER
@pytest.mark.parametrize("command", [
    ("KEYS", "*"), ("SCAN", "0"), ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"),
    ("ACL", "LIST"), ("ACL", "WHOAMI"), ("SCRIPT", "FLUSH"), ("EVAL", "return 1", "0"),
    ("CLIENT", "LIST"), ("MONITOR",), ("INFO",), ("RANDOMKEY",), ("DBSIZE",),
], ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("role", list(Role))
async def test_commands_beyond_the_queue_are_refused(
    connect_as: Connect, queue_name: str, role: Role, command: tuple[str, ...],
    redis: aioredis.Redis,
) -> None:
    await redis.set("not-agentpool", "kept")
    client = await connect_as(queue_name, role)
    with pytest.raises(NoPermissionError):
        await client.execute_command(*command)
    assert await redis.get("not-agentpool") == b"kept"


@ONE_SERVER
@pytest.mark.parametrize("role", list(Role))
async def test_another_queues_keys_and_channels_are_refused(
    connect_as: Connect, queue_name: str, role: Role, redis: aioredis.Redis,
) -> None:
    other = other_queue()
    theirs = TaskQueue(redis, other)
    task_id = await theirs.submit({"secret": "pool b"})
    client = await connect_as(queue_name, role)
    mine_on_theirs = TaskQueue(client, other)
    for attempt in (
        client.hgetall(theirs.task_key(task_id)),
        client.get(theirs.prefix + "seq"),
        client.publish(theirs.prefix + "done", task_id),
        mine_on_theirs.submit("x"),
        mine_on_theirs.figures(),
        mine_on_theirs.cancel(task_id),
        mine_on_theirs.claim("pod:i", 1, 30),
    ):
        with pytest.raises(NoPermissionError):
            await attempt
    info = await theirs.get(task_id)
    assert info is not None and info.state == "queued"
    assert (await theirs.figures()).queued == 1


@ONE_SERVER
async def test_a_script_of_its_own_cannot_reach_another_queue(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A loaded script runs with the caller's ACL: declaring one of its own keys does not
    open another queue's keys, nor channels, nor other commands."""
    other = other_queue()
    await redis.set(f"ap:{{{other}}}:secret", "pool b")
    client = await connect_as(queue_name, Role.WORKER)
    own_key = f"ap:{{{queue_name}}}:queued"
    for body in (
        f"return redis.call('GET', 'ap:{{{other}}}:secret')",
        f"return redis.call('PUBLISH', 'ap:{{{other}}}:done', 'x')",
        "return redis.call('FLUSHALL')",
        "return redis.call('KEYS', '*')",
    ):
        sha = await client.script_load(body)
        with pytest.raises(ResponseError, match="The user executing the script can't"):
            await client.evalsha(sha, 1, own_key)
    assert await redis.get(f"ap:{{{other}}}:secret") == b"pool b"


async def test_a_producer_submits_waits_and_cancels_with_its_acl(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(redis, queue_name)
    task_id = await producer.submit({"prompt": "hi"}, priority=3, idempotency_key="k1")
    assert await producer.submit({"prompt": "hi"}, idempotency_key="k1") == task_id
    later = await producer.submit("later", delay=60)
    [doomed] = await producer.submit_many(["doomed"])
    assert await producer.cancel(doomed) == "cancelled"
    assert await producer.cancel(later) == "cancelled"
    figures = await producer.figures()
    assert figures.queued == 1 and figures.stats["submitted"] == 3

    batch = await worker.claim("pod:i", 1, 30)
    assert [t.id for t in batch.tasks] == [task_id]
    waiting = producer.wait(task_id, timeout=10)
    await worker.complete(batch.tasks[0], {"answer": 42})
    info = await waiting
    assert info.state == "succeeded" and info.result == {"answer": 42}


async def test_a_producer_reads_a_task_page_as_the_console_shows_it(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    """The console runs with a producer's URL: its task page reads the task, the start of
    its checkpoint and of the tasks after it, and its events."""
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(redis, queue_name)
    first = await producer.submit({"step": 1})
    await producer.submit({"step": 2}, after=[first])
    [task] = (await worker.claim("pod:i", 1, 30)).tasks
    await worker.checkpoint(task, '{"done": 3}')
    await worker.emit(task.id, "note", {"n": 1}, attempt=1)
    view = await task_view(producer, first, after=None, count=10, checkpoint_bytes=100,
                           field_bytes=100, next_count=5)
    assert view.info is not None and view.info.state == "running"
    assert view.checkpoint is not None
    assert view.next_count == 1 and len(view.next) == 1
    assert [event.kind for event in view.events] == ["note"]


async def test_tenants_take_turns_under_the_producer_and_worker_users(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A tenant's submit reads and writes the queue's `fair` set, as a producer and as a run's
    `ctx.submit` (the worker user)."""
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    flood = [await producer.submit({"n": n}, tenant="flood") for n in range(5)]
    small = await worker.submit({"small": True}, tenant="small")
    batch = await worker.claim("pod:i", 6, 30)
    assert small in [t.id for t in batch.tasks[:3]]
    assert [t.id for t in batch.tasks if t.id != small] == flood
    assert await producer.cancel_waiting() == 0


async def test_weights_are_read_under_the_users_and_set_by_neither_of_a_producers(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    """The scripts that place tasks read the `weights` hash as a producer and as a worker
    (delayed tasks placed by a claim); a producer cannot set weights (only the operator's
    connection does), and trying changes nothing."""
    admin = TaskQueue(redis, queue_name)
    await admin.set_tenant_weights({"big": 2})
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    ids = {await producer.submit({"n": n}, tenant="big", delay=0.05): "big" for n in range(4)}
    ids |= {await producer.submit({"n": n}, tenant="small", delay=0.05): "small"
            for n in range(4)}

    async def due() -> bool:
        return (await worker.figures()).due_delayed == 8

    await eventually(due)
    order = [ids[t.id] for t in (await worker.claim("pod:i", 8, 30)).tasks]
    assert order[:6].count("big") == 4, order  # without the weight: 3
    with pytest.raises(NoPermissionError):
        await producer.set_tenant_weights({"small": 100})
    assert await admin.tenant_weights() == {"big": 2}


async def test_caps_work_under_the_users_and_a_producer_can_neither_set_nor_break_them(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A worker's claims count and end runs under its user; a producer's cancels (of a task
    waiting and of one running) and figures go through with caps on the queue, and it cannot
    set caps."""
    admin = TaskQueue(redis, queue_name)
    await admin.set_tenant_caps({"big": 1})
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    ids = [await producer.submit({"n": n}, tenant="big") for n in range(4)]
    (first,) = (await worker.claim("pod:i", 4, 30)).tasks
    assert (await producer.figures()).capped == 3
    assert await producer.cancel(ids[3]) is CancelOutcome.CANCELLED
    assert await producer.cancel(first.id) is CancelOutcome.REQUESTED
    assert await worker.cancelled(first) is FailOutcome.CANCELLED
    (second,) = (await worker.claim("pod:i", 4, 30)).tasks
    assert second.id == ids[1]
    with pytest.raises(ResponseError, match="The user executing the script can't"):
        await producer.set_tenant_caps({"big": 100})
    assert await admin.tenant_caps() == TenantCaps({"big": 1})
    assert (await producer.figures()).capped == 1
    other = await producer.submit({"n": 9}, tenant="other")
    assert await producer.cancel_waiting_of("big") == 1, "its task parked for the cap"
    assert await producer.cancel_waiting() == 1, "the other tenant's"
    assert (await producer.figures()).queued == 0
    assert (await producer.get(other)).state == "cancelled"  # type: ignore[union-attr]


@ONE_SERVER
async def test_a_cancel_under_a_producers_rules_of_before_caps_refuses_before_it_writes(
    redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """During an upgrade a producer's user may still have the rules of a version without
    caps (no `parked:*`): cancelling a parked task is refused before anything changed, so the
    task stays parked, not lost; a tenant's task that is not parked is cancelled as before."""
    admin = TaskQueue(redis, queue_name)
    await admin.set_tenant_caps({"big": 1})
    ids = [await admin.submit({"n": n}, tenant="big") for n in range(3)]
    await admin.claim("pod:i", 3, 30)
    username, password = f"agentpool:tests:{uuid.uuid4().hex[:8]}:old", uuid.uuid4().hex
    old_rules = [rule for rule in acl_rules(queue_name, Role.PRODUCER,
                                            [password_hash(password)])
                 if not rule.endswith(":parked:*")]
    await set_user(redis, username, old_rules)
    producer = redis_from_url(with_credentials(redis_url, username, password))
    try:
        with pytest.raises(ResponseError, match="can't access"):
            await TaskQueue(producer, queue_name).cancel(ids[1])
        assert (await admin.get(ids[1])).state == "queued"
        assert await redis.zscore(admin.prefix + "parked:big", ids[1]) is not None
        waiting = await admin.submit({"n": 9}, tenant="small")  # queued, not parked
        assert await TaskQueue(producer, queue_name).cancel(waiting) is CancelOutcome.CANCELLED
    finally:
        await producer.aclose()
        await delete_user(redis, username)


@ONE_SERVER
async def test_a_producer_under_rules_of_before_caps_still_lists_a_queue_without_them(
    redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """Rules of a version without caps have no SMEMBERS: the queued task lists read the set
    of parked tenants only when it exists."""
    admin = TaskQueue(redis, queue_name)
    ids = [await admin.submit({"n": n}) for n in range(3)]
    username, password = f"agentpool:tests:{uuid.uuid4().hex[:8]}:old", uuid.uuid4().hex
    old_rules = [rule for rule in acl_rules(queue_name, Role.PRODUCER,
                                            [password_hash(password)])
                 if rule not in ("+smembers", f"~{admin.prefix}parked:*")]
    assert len(old_rules) == len(acl_rules(queue_name, Role.PRODUCER, ["0" * 64])) - 2
    await set_user(redis, username, old_rules)
    producer = redis_from_url(with_credentials(redis_url, username, password))
    try:
        queue = TaskQueue(producer, queue_name)
        assert [info.id for info in await queue.list_tasks("queued", 10)] == ids
        total, rows = await task_page(queue, "queued", 0, 10, preview_bytes=10)
        assert (total, [row.info.id for row in rows]) == (3, ids)
        with pytest.raises(NoPermissionError):
            await producer.smembers(admin.prefix + "parked")
    finally:
        await producer.aclose()
        await delete_user(redis, username)


async def test_a_producer_cancels_every_waiting_task_with_its_acl(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    ids = [await producer.submit({"n": n}) for n in range(3)]
    ids.append(await producer.submit("later", delay=60))
    assert await producer.cancel_waiting(batch=2) == 4
    infos = [await producer.get(task_id) for task_id in ids]
    assert [info.state for info in infos if info] == ["cancelled"] * 4


async def test_a_producer_cannot_claim_complete_or_delete_and_changes_nothing_trying(
    connect_as: Connect, queue_name: str, redis: aioredis.Redis,
) -> None:
    admin = TaskQueue(redis, queue_name)
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    running_id = await admin.submit("running")
    dead_id = await admin.submit("dead", max_attempts=1)
    batch = await admin.claim("pod:i", 2, 0.001)  # leases already expired: a reap has work
    running = next(t for t in batch.tasks if t.id == running_id)
    await admin.fail(next(t for t in batch.tasks if t.id == dead_id), "x", retryable=False)
    queued = await admin.submit("queued")
    await admin.submit("later", delay=60)
    keys_before = await snapshot(redis, admin)

    for attempt in (
        producer.claim("pod:p", 1, 30),
        producer.complete(running, "stolen"),
        producer.fail(running, "stolen"),
        producer.heartbeat(WorkerInfo("pod", "p", 1), {running.id: running.token}, 30),
        producer.requeue_owner("pod:i"),
        producer.reap_expired(),
        producer.purge_dead(),
        producer.requeue_dead(),
        producer.request_drain("pod"),
        producer.configure(max_attempts=99),
        producer.wait_and_claim("pod:p", 1, 30, timeout=0.01),
        producer.redis.delete(admin.task_key(queued)),
    ):
        with pytest.raises(ResponseError) as refused:
            await attempt
        assert isinstance(refused.value, NoPermissionError) or \
            "The user executing the script can't" in str(refused.value)
    assert await snapshot(redis, admin) == keys_before


async def snapshot(redis: aioredis.Redis, queue: TaskQueue) -> dict[str, object]:
    """Every key of the queue with its type and content."""
    out: dict[str, object] = {}
    async for key in redis.scan_iter(match=queue.prefix + "*"):
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            out[key.decode()] = await redis.hgetall(key)
        elif kind == "zset":
            out[key.decode()] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key.decode()] = await redis.smembers(key)
        elif kind == "list":
            out[key.decode()] = await redis.lrange(key, 0, -1)
        else:
            out[key.decode()] = await redis.get(key)
    return out


async def test_tasks_run_after_others_under_the_producer_and_worker_users(
    connect_as: Connect, queue_name: str,
) -> None:
    """A producer's submit `after` others writes their `next:` keys and the deferred set; its
    cancel ends the tasks after the cancelled one; a worker's completion releases them."""
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    first, doomed = await producer.submit({"n": 1}), await producer.submit({"n": 2})
    second = await producer.submit({"n": 3}, after=[first])
    third = await producer.submit({"n": 4}, after=[second, doomed])
    assert (await producer.figures()).deferred == 2

    assert await producer.cancel(doomed) == "cancelled"
    batch = await worker.claim("pod-a:i1", 1, 30)
    assert [t.id for t in batch.tasks] == [first]
    assert await worker.complete(batch.tasks[0], "ok")
    batch = await worker.claim("pod-a:i1", 1, 30)
    assert [t.id for t in batch.tasks] == [second]
    states = {i.id: i.state for i in await producer.get_many([first, second, third])}
    assert states == {first: "succeeded", second: "running", third: "cancelled"}


async def test_tasks_that_expire_after_others_under_the_producer_and_worker_users(
    connect_as: Connect, queue_name: str,
) -> None:
    """With an expiry, a deferred task is also in the reaper's list: a producer's submit,
    cancel and submit after a cancelled task write it; a worker's reap reads it."""
    producer = TaskQueue(await connect_as(queue_name, Role.PRODUCER), queue_name)
    worker = TaskQueue(await connect_as(queue_name, Role.WORKER), queue_name)
    first = await producer.submit({"n": 1})
    kept = await producer.submit({"n": 2}, after=[first], expires=3600)
    dropped = await producer.submit({"n": 3}, after=[first], expires=3600)
    assert await producer.cancel(dropped) == "cancelled"
    late = await producer.submit({"n": 4}, after=[dropped], expires=3600)
    await worker.reap_expired()
    states = {i.id: i.state for i in await producer.get_many([kept, dropped, late])}
    assert states == {kept: "deferred", dropped: "cancelled", late: "cancelled"}
