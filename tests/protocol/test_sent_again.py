"""A call whose connection is lost after Redis ran it is sent again on a new connection (a
client's own retry). A submit sent again must find its task and leave it alone: by then a
worker may hold it, or it may have finished; queuing it once more would run it twice. A claim
sent again must hand back what it took: tasks taken twice would wait out their lease, unknown
to the worker, an attempt spent. A completion sent again counts as recorded, not as fenced off;
a failure report and a cancel sent again get the first one's answer; events sent again are
not appended twice. A rate limit's grant sent again hands out the same grant, a reservation
given back twice frees its place once, and a 429 reported twice counts once.

Between the client and a real redis-server sits a proxy that, once armed, lets Redis run the
next command but closes the client's connection instead of passing the reply back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from agentpool.client import Client, SyncClient
from agentpool.connection import redis_from_url
from agentpool.protocol import (
    CancelOutcome,
    FailOutcome,
    RunEvents,
    TaskQueue,
    encode_event,
    encode_progress,
)
from agentpool.ratelimit import LimitConfig, RateLimiter
from agentpool.redis_server import RedisServer

Hook = Callable[[], Awaitable[None]]


class ReplyDropper:
    """A loopback TCP proxy to `upstream`. ``arm(hook)``: the next reply from Redis is held
    back, `hook` (if any) runs, and the client's connection is closed without that reply."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.dropped = 0
        self._armed = False
        self._hook: Hook | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, hook: Hook | None = None) -> None:
        self._armed, self._hook = True, hook

    async def __aenter__(self) -> ReplyDropper:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def requests() -> None:
            while data := await client_in.read(65536):
                server_out.write(data)
            server_out.close()

        async def replies() -> None:
            while data := await server_in.read(65536):
                if self._armed:
                    self._armed = False
                    if self._hook is not None:
                        await self._hook()
                    self.dropped += 1
                    return
                client_out.write(data)

        forward = asyncio.create_task(requests())
        with contextlib.suppress(ConnectionError):
            await replies()
        forward.cancel()
        client_out.close()
        server_out.close()


@dataclass
class Wiring:
    """A redis-server with a ReplyDropper in front of it; clients made here are closed after
    the test."""

    server: RedisServer
    dropper: ReplyDropper
    opened: list[aioredis.Redis] = field(default_factory=list)

    def beside(self, name: str) -> TaskQueue:
        """The queue on a connection straight to Redis (the other side of the call)."""
        return TaskQueue(self.client(through=False), name)

    def through(self, name: str) -> TaskQueue:
        """The queue on a connection through the proxy."""
        return TaskQueue(self.client(through=True), name)

    def client(self, *, through: bool) -> aioredis.Redis:
        client = redis_from_url(self.dropper.url if through else self.server.url)
        self.opened.append(client)
        return client


@pytest.fixture
async def wiring() -> AsyncIterator[Wiring]:
    with RedisServer() as server:
        async with ReplyDropper(server.port) as dropper:
            wired = Wiring(server, dropper)
            yield wired
            for client in wired.opened:
                await client.aclose()

async def _claim_first(beside: TaskQueue, claimed: list[str]) -> None:
    batch = await beside.claim("pod-a:w1", 1, 30)
    claimed.extend(task.id for task in batch.tasks)


async def test_a_submit_sent_again_leaves_the_task_a_worker_already_holds(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again")
    claimed: list[str] = []
    async with Client.from_url(dropper.url) as client:
        queue = client.queue("again")
        await queue.submit("warm-up: loads the script")
        await beside.claim("pod-a:w0", 1, 30)
        dropper.arm(lambda: _claim_first(beside, claimed))
        task_id = await queue.submit("held by a worker when it is sent again")
        info = await queue.get(task_id)
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert claimed == [task_id]
    assert info is not None and info.state == "running"
    assert figures.queued == 0 and figures.in_flight == 2
    assert figures.stats["submitted"] == 2


async def test_a_blocking_submit_sent_again_leaves_a_finished_task_finished(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-sync")

    async def claim_and_finish() -> None:
        for task in (await beside.claim("pod-a:w1", 1, 30)).tasks:
            await beside.complete(task, "done")

    with SyncClient.from_url(dropper.url) as client:
        queue = client.queue("again-sync")
        await asyncio.to_thread(queue.submit, "warm-up: loads the script")
        await beside.claim("pod-a:w0", 1, 30)
        dropper.arm(claim_and_finish)
        task_id = await asyncio.to_thread(queue.submit, "finished when it is sent again")
        info = await asyncio.to_thread(queue.get, task_id)
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert info is not None and info.state == "succeeded" and info.result == "done"
    assert figures.queued == 0
    assert figures.stats["submitted"] == 2


async def test_a_batch_sent_again_queues_none_of_its_tasks_twice(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-many")
    claimed: list[str] = []

    async def claim_two() -> None:
        batch = await beside.claim("pod-a:w1", 2, 30)
        claimed.extend(task.id for task in batch.tasks)

    async with Client.from_url(dropper.url) as client:
        queue = client.queue("again-many")
        await queue.submit_many(["warm-up"])
        await beside.claim("pod-a:w0", 1, 30)
        dropper.arm(claim_two)
        ids = await queue.submit_many([f"task {i}" for i in range(5)])
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert claimed == ids[:2]
    assert figures.in_flight == 3
    assert figures.queued == 3
    assert figures.stats["submitted"] == 6


async def test_a_claim_sent_again_hands_back_what_it_took_and_takes_no_more(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-claim")
    first = await beside.submit("the task they run after")
    [done] = (await beside.claim("pod-x:w0", 1, 30)).tasks
    assert await beside.complete(done, "ok")
    for i in range(6):
        await beside.submit(f"task {i}", task_timeout=i + 1, after=[first])
    worker = wiring.through("again-claim")
    await worker.claim("pod-b:w0", 1, 30)  # loads the script

    dropper.arm()
    batch = await worker.claim("pod-b:w1", 2, 30)
    completed = [await worker.complete(task, "done") for task in batch.tasks]
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert [json.loads(task.payload_raw) for task in batch.tasks] == ["task 1", "task 2"]
    assert [task.attempts for task in batch.tasks] == [1, 1]
    assert [task.timeout_ms for task in batch.tasks] == [2000, 3000]
    assert [task.after for task in batch.tasks] == [(first,), (first,)]
    assert completed == [True, True]
    assert figures.in_flight == 1
    assert figures.queued == 3


async def test_a_completion_sent_again_counts_as_recorded(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-complete")
    await beside.submit("warm-up")
    task_id = await beside.submit("finishes once")
    warm_up, task = (await beside.claim("pod-c:w1", 2, 30)).tasks
    worker = wiring.through("again-complete")
    assert await worker.complete(warm_up, "loads the script")

    dropper.arm()
    recorded = await worker.complete(task, "the answer")
    info = await beside.get(task_id)
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert recorded is True
    assert info is not None and info.state == "succeeded" and info.result == "the answer"
    assert figures.stats["succeeded"] == 2


async def test_a_completion_sent_again_in_a_batch_leaves_the_others_recorded(
        wiring: Wiring) -> None:
    queue = wiring.beside("again-batch")
    ids = [await queue.submit(f"task {i}") for i in range(3)]
    first, second, third = (await queue.claim("pod-d:w1", 3, 30)).tasks
    assert await queue.complete_many([(first, "one")]) == [True]
    recorded = await queue.complete_many([(second, "two"), (first, "one"), (third, "three")])
    infos = await queue.get_many(ids)
    figures = await queue.figures()
    assert recorded == [True, True, True]
    assert [(info.state, info.result) for info in infos] == [
        ("succeeded", "one"), ("succeeded", "two"), ("succeeded", "three")]
    assert figures.stats["succeeded"] == 3 and figures.in_flight == 0


@pytest.mark.parametrize(("delay", "promoted_meanwhile", "state"), [
    (60, False, "delayed"),
    (0, True, "queued"),  # the retry came due and was queued before the report came again
], ids=["retry-waiting", "retry-queued"])
async def test_a_failure_report_sent_again_gets_the_first_ones_answer(
        wiring: Wiring, delay: int, promoted_meanwhile: bool, state: str) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-fail")
    task_id = await beside.submit("fails once")
    await beside.submit("warm-up")
    task, warm_up = (await beside.claim("pod-e:w1", 2, 30)).tasks
    worker = wiring.through("again-fail")
    assert await worker.fail(warm_up, "loads the script", retryable=False) is FailOutcome.DEAD

    async def promote_due_retries() -> None:
        assert (await beside.claim("pod-e:w2", 0, 30)).tasks == []

    dropper.arm(promote_due_retries if promoted_meanwhile else None)
    outcome = await worker.fail(task, "boom", delay=delay)
    info = await beside.get(task_id)
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert outcome is FailOutcome.RETRY
    assert info is not None and info.state == state and info.attempts == 1
    assert figures.stats["failed"] == 2 and figures.stats["retried"] == 1


async def test_a_failure_report_that_ended_the_task_as_expired_gets_that_answer_again(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-expired")
    task_id = await beside.submit("fails late", expires=60)
    await beside.submit("warm-up")
    task, warm_up = (await beside.claim("pod-e:w1", 2, 30)).tasks
    worker = wiring.through("again-expired")
    assert await worker.fail(warm_up, "loads the script", retryable=False) is FailOutcome.DEAD

    dropper.arm()
    outcome = await worker.fail(task, "boom", delay=120)
    info = await beside.get(task_id)
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert outcome is FailOutcome.EXPIRED
    assert info is not None and info.state == "cancelled"
    assert figures.stats["expired"] == 1 and figures.stats["cancelled"] == 1


async def test_events_sent_again_are_appended_once(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-events")
    task_id = await beside.submit("streams")
    await beside.claim("pod-f:w1", 1, 30)
    worker = wiring.through("again-events")
    await worker.record([RunEvents(task_id, 1, [("token", '"loads the script"')])], [])

    dropper.arm()
    progress = encode_event("progress", encode_progress(0.5, "half"))
    await worker.record([RunEvents(task_id, 1, [("token", '"a"'), ("progress", progress)])], [])
    await worker.record([RunEvents(task_id, 1, [("token", '"b"')])], [])
    events = [event async for event in beside.events(task_id, follow=False)]
    info = await beside.get(task_id)
    assert dropper.dropped == 1
    assert [(event.kind, event.data) for event in events] == [
        ("token", "loads the script"), ("token", "a"),
        ("progress", {"fraction": 0.5, "message": "half"}), ("token", "b")]
    assert info is not None and info.progress is not None and info.progress.fraction == 0.5


async def test_a_cancel_sent_again_answers_cancelled_and_a_second_cancel_finished(
        wiring: Wiring) -> None:
    dropper = wiring.dropper
    beside = wiring.beside("again-cancel")
    task_id = await beside.submit("cancelled while queued")
    warm_up = await beside.submit("warm-up")
    producer = wiring.through("again-cancel")
    assert await producer.cancel(warm_up) is CancelOutcome.CANCELLED  # loads the script

    dropper.arm()
    outcome = await producer.cancel(task_id)
    second = await producer.cancel(task_id)
    info = await beside.get(task_id)
    figures = await beside.figures()
    assert dropper.dropped == 1
    assert outcome is CancelOutcome.CANCELLED
    assert second is CancelOutcome.FINISHED
    assert info is not None and info.state == "cancelled"
    assert figures.stats["cancelled"] == 2 and figures.queued == 0


US = 1_000_000


def _one_a_second(wiring: Wiring, *, through: bool, caller: str) -> tuple[str, RateLimiter]:
    name = f"again-{uuid.uuid4().hex[:8]}"
    config = LimitConfig(name, requests_per_minute=60)  # a grant a second, a burst of one
    return name, RateLimiter(wiring.client(through=through), name, config=config, caller=caller)


async def test_a_rate_limit_grant_sent_again_hands_out_the_same_grant(wiring: Wiring) -> None:
    name, producer = _one_a_second(wiring, through=True, caller="p")
    other = RateLimiter(wiring.client(through=False), name, caller="o")
    first = await producer.reserve()  # loads the script; takes the burst

    wiring.dropper.arm()
    second = await producer.reserve()
    third = await other.reserve()
    state = await other.state()
    assert wiring.dropper.dropped == 1
    assert second.grant_us - first.grant_us == US
    assert third.grant_us - second.grant_us == US
    assert state.grants == 3


async def test_a_reservation_given_back_twice_frees_its_place_once(wiring: Wiring) -> None:
    name, producer = _one_a_second(wiring, through=True, caller="p")
    other = RateLimiter(wiring.client(through=False), name, caller="o")
    await producer.reserve()
    await producer.reserve()
    third = await producer.reserve()

    wiring.dropper.arm()
    assert await producer.release(third)  # the last one handed out: it is given back
    fourth = await other.reserve()
    state = await other.state()
    assert wiring.dropper.dropped == 1
    assert state.released == 1
    assert fourth.grant_us == third.grant_us  # the place given back, and only that one


async def test_a_throttle_sent_again_counts_one_429(wiring: Wiring) -> None:
    name, worker = _one_a_second(wiring, through=True, caller="w")
    other = RateLimiter(wiring.client(through=False), name, caller="o")
    await worker.reserve()  # declares the limit and loads the script

    wiring.dropper.arm()
    first = await worker.throttled(retry_after=30)
    state = await other.state()
    assert wiring.dropper.dropped == 1
    assert first.decreased
    assert state.throttles == 1
    assert state.factor == 0.5
