"""The producer-facing Python API.

Async code uses :class:`Client`::

    async with Client.from_url("redis://redis:6379/0") as client:
        queue = client.queue("agents")
        task_id = await queue.submit({"prompt": "..."})
        info = await queue.wait(task_id, timeout=600)

Synchronous code uses :class:`SyncClient`, which offers the same operations as blocking calls::

    with SyncClient.from_url("redis://redis:6379/0") as client:
        queue = client.queue("agents")
        info = queue.wait(queue.submit({"prompt": "..."}), timeout=600)

A payload is any JSON value: an object, a list, a string (a prompt), a number or ``None``.
The handler receives it decoded, as it was given. Encoded as JSON it may take at most 1 MiB
(``DEFAULT_MAX_PAYLOAD_BYTES``; ``client.queue(name, max_payload_bytes=...)`` sets another
limit); a larger payload raises :class:`agentpool.protocol.PayloadTooLarge` and nothing is
stored. Put large inputs in object storage and submit their address.

``durability="replicated"`` (per client, or per queue with ``client.queue(name,
durability=...)``) makes submits wait for one Redis replica, so a failover loses no task that
``submit`` returned; see :mod:`agentpool.durability`.

Both read the URL from ``AGENTPOOL_REDIS_URL`` when none is given. The protocol itself lives in
:mod:`agentpool.protocol`; these classes only manage the connection around it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis

from agentpool.connection import (
    redis_from_url,
    sync_redis_from_url,
)
from agentpool.direct import BlockingScriptLine, ScriptLine
from agentpool.durability import Durability, parse_durability
from agentpool.protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    CancelOutcome,
    QueueFigures,
    TaskEvent,
    TaskInfo,
    TaskQueue,
    WorkerState,
)
from agentpool.ratelimit import LimitState, RateLimiter, Reservation, Throttle
from agentpool.urls import redact_url

ENV_REDIS_URL = "AGENTPOOL_REDIS_URL"
DEFAULT_CONNECT_TIMEOUT = 10.0

T = TypeVar("T")


class ClientConfigError(ValueError):
    """No usable Redis URL was given."""


def resolve_redis_url(url: str | None = None) -> str:
    """`url`, else ``$AGENTPOOL_REDIS_URL``; raises ClientConfigError when neither is set."""
    resolved = url or os.environ.get(ENV_REDIS_URL)
    if not resolved:
        raise ClientConfigError(f"no Redis URL: pass --redis-url or set {ENV_REDIS_URL}")
    return resolved


def _connect(url: str, connect_timeout: float, **redis_kwargs: Any) -> aioredis.Redis:
    redis_kwargs.setdefault("socket_connect_timeout", connect_timeout)
    try:
        return redis_from_url(url, **redis_kwargs)
    except ValueError as exc:
        raise ClientConfigError(f"invalid Redis URL {redact_url(url)}: {exc}") from None


class Client:
    """A Redis connection pool and the queues on it. Close it (or use ``async with``).

    The queues' script calls, submits above all, go on a
    :class:`agentpool.direct.ScriptLine` of the client's (on a Cluster, to each queue's
    primary).

    Use it from one event loop at a time. Kept from one loop to the next (one ``asyncio.run``
    after another), it lets go of the old loop's connections and opens new ones.
    """

    def __init__(self, redis: aioredis.Redis, *, url: str | None = None,
                 durability: Durability | str = Durability.NONE) -> None:
        self.redis = redis
        self.url = url
        self.durability = parse_durability(durability)
        self._line = ScriptLine(redis) if url is not None else None
        self._queues: dict[tuple[str, int, Durability], TaskQueue] = {}

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        durability: Durability | str = Durability.NONE,
        **redis_kwargs: Any,
    ) -> Client:
        """Connect lazily to `url` (default ``$AGENTPOOL_REDIS_URL``); extra arguments go to
        ``redis.asyncio.Redis.from_url``."""
        resolved = resolve_redis_url(url)
        durability = parse_durability(durability)
        return cls(_connect(resolved, connect_timeout, **redis_kwargs), url=resolved,
                   durability=durability)

    @property
    def display_url(self) -> str:
        """The URL without its password, for messages."""
        return redact_url(self.url) if self.url else "Redis"

    def queue(self, name: str, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
              durability: Durability | str | None = None) -> TaskQueue:
        """The queue `name`; `durability` defaults to the client's."""
        chosen = self.durability if durability is None else parse_durability(durability)
        key = (name, max_payload_bytes, chosen)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = TaskQueue(
                self.redis, name, max_payload_bytes=max_payload_bytes, durability=chosen,
                line=self._line,
            )
        return queue

    def rate_limit(self, name: str) -> RateLimiter:
        """The shared rate limit `name` as the pools on this Redis declare it (their
        spec.rateLimits): ``await limiter.acquire(tokens=n)`` waits for a grant, ``await
        limiter.throttled(retry_after)`` reports a 429. An undeclared name raises
        :class:`agentpool.ratelimit.UndeclaredLimit` at the first call."""
        return RateLimiter(self.redis, name, caller=f"client:{os.getpid()}")

    async def ping(self) -> None:
        await self.redis.ping()

    async def aclose(self) -> None:
        if self._line is not None:
            await self._line.aclose()
        await self.redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _LoopThread:
    """An event loop running in a daemon thread; `call` runs a coroutine on it and blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="agentpool-client", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncClient:
    """Blocking facade over :class:`Client` for producers in synchronous code.

    The async protocol runs on a private event loop in a background thread. A
    ``redis.asyncio`` connection belongs to the loop that opened it, so one long-lived loop
    lets every call reuse the same connections; ``asyncio.run`` per call would reconnect
    each time (:class:`agentpool.connection.LeanConnection`) and fails where a loop is
    already running (a notebook, an async framework).
    Calls are thread-safe; an interrupted call (Ctrl-C) is cancelled on the loop. ``submit``
    skips the loop: one round trip on a blocking line of its own
    (:class:`agentpool.direct.BlockingScriptLine`), with no thread hand-over. From more
    threads at once than the line has connections, the submits that find them all in use go
    to the loop instead, where they gather into groups (:mod:`agentpool.coalesce`). On
    Sentinel the line follows the primary as the loop's client does; on a Cluster it keeps
    connections to each queue's primary.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        durability: Durability | str = Durability.NONE,
        **redis_kwargs: Any,
    ) -> None:
        resolved = resolve_redis_url(url)
        durability = parse_durability(durability)
        self._runner = _LoopThread()
        self._blocking: BlockingScriptLine | None = None
        try:
            self._client = self._runner.call(
                _make_client(resolved, connect_timeout, durability, redis_kwargs)
            )
            self._blocking = BlockingScriptLine(
                sync_redis_from_url(resolved, **{"socket_connect_timeout": connect_timeout,
                                                 **redis_kwargs}))
        except BaseException:
            self._runner.stop()
            raise
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        durability: Durability | str = Durability.NONE,
        **redis_kwargs: Any,
    ) -> SyncClient:
        return cls(url, connect_timeout=connect_timeout, durability=durability, **redis_kwargs)

    @property
    def display_url(self) -> str:
        return self._client.display_url

    def queue(
        self, name: str, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        durability: Durability | str | None = None,
    ) -> SyncQueue:
        queue = self._client.queue(name, max_payload_bytes=max_payload_bytes,
                                   durability=durability)
        blocking = self._blocking if queue.durability is Durability.NONE else None
        return SyncQueue(queue, self._runner, blocking)

    def rate_limit(self, name: str) -> SyncRateLimit:
        """Blocking twin of :meth:`Client.rate_limit`."""
        return SyncRateLimit(self._client.rate_limit(name), self._runner)

    def ping(self) -> None:
        self._runner.call(self._client.ping())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._blocking is not None:
                self._blocking.close()
            self._runner.call(self._client.aclose())
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _make_client(url: str, connect_timeout: float, durability: Durability,
                       redis_kwargs: dict[str, Any]) -> Client:
    """Create the client on the loop that will use it."""
    return Client.from_url(url, connect_timeout=connect_timeout, durability=durability,
                           **redis_kwargs)


class SyncRateLimit:
    """Blocking counterparts of :class:`RateLimiter`: ``acquire`` sleeps in the caller's thread
    (not on the client's loop), so one waiting caller never holds up another."""

    def __init__(self, limiter: RateLimiter, runner: _LoopThread) -> None:
        self.limiter = limiter
        self._run = runner.call

    def acquire(self, *, tokens: int = 0, requests: int = 1) -> Reservation:
        reservation = self._run(self.limiter.reserve(tokens=tokens, requests=requests))
        if reservation.wait > 0:
            try:
                time.sleep(reservation.wait)
            except BaseException:
                self._run(self.limiter.release(reservation))
                raise
        return reservation

    def throttled(self, retry_after: float | None = None) -> Throttle:
        return self._run(self.limiter.throttled(retry_after))

    def state(self) -> LimitState:
        return self._run(self.limiter.state())


class SyncQueue:
    """Blocking counterparts of the producer-side :class:`TaskQueue` methods."""

    def __init__(self, queue: TaskQueue, runner: _LoopThread,
                 blocking: BlockingScriptLine | None = None) -> None:
        self.queue = queue
        self._run = runner.call
        self._blocking = blocking

    @property
    def name(self) -> str:
        return self.queue.name

    def submit(
        self,
        payload: Any,
        *,
        priority: int = 0,
        delay: float = 0,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        if self._blocking is not None and not self._blocking.busy(self.queue.prefix + "queued"):
            return self.queue.submit_blocking(
                self._blocking, payload, priority=priority, delay=delay,
                idempotency_key=idempotency_key, max_attempts=max_attempts,
            )
        return self._run(self.queue.submit(
            payload, priority=priority, delay=delay, idempotency_key=idempotency_key,
            max_attempts=max_attempts,
        ))

    def submit_many(self, payloads: Iterable[Any], *, priority: int = 0, delay: float = 0,
                    max_attempts: int | None = None) -> list[str]:
        return self._run(self.queue.submit_many(list(payloads), priority=priority, delay=delay,
                                                max_attempts=max_attempts))

    def get(self, task_id: str) -> TaskInfo | None:
        return self._run(self.queue.get(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Block until the task is final; raises TimeoutError after `timeout` seconds."""
        return self._run(self.queue.wait(task_id, timeout))

    def events(self, task_id: str, *, after: str | None = None,
               follow: bool = True) -> Iterator[TaskEvent]:
        """The task's events as :meth:`TaskQueue.events` yields them, one blocking step at a
        time (with `follow`, until the task is final)."""
        stream = self.queue.events(task_id, after=after, follow=follow)
        try:
            while True:
                try:
                    yield self._run(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())

    def cancel(self, task_id: str) -> CancelOutcome:
        return self._run(self.queue.cancel(task_id))

    def figures(self) -> QueueFigures:
        return self._run(self.queue.figures())

    def workers(self) -> list[WorkerState]:
        return self._run(self.queue.workers())

    def dead_letters(self, limit: int = 100) -> list[TaskInfo]:
        return self._run(self.queue.dead_letters(limit))

    def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        return self._run(self.queue.requeue_dead(task_ids))

    def purge_dead(self, task_ids: Sequence[str] | None = None) -> int:
        return self._run(self.queue.purge_dead(task_ids))


async def _next(stream: AsyncGenerator[T, None]) -> T:
    return await anext(stream)
