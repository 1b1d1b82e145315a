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
:mod:`agentpool.protocol`; these classes only manage the connection around it. The errors a
producer catches are exported here and from :mod:`agentpool` alike: :class:`ClientClosed`,
:class:`TaskNotFound`, :class:`RedisFull` (a submit Redis refused for being full: the task
was not stored).

A Python handler's failure is stored in ``TaskInfo.error`` as its type and message followed
by the end of its traceback (the worker's file paths and code lines; URLs' passwords masked):
log it, but do not show it to a web app's end users as it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import inspect
import os
import sys
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import Any, Generic, NamedTuple, Self, TypeVar, cast, overload

import redis.asyncio as aioredis

from agentpool.connection import (
    ClientClosed,
    redis_from_url,
    refuse_calls,
    sync_redis_from_url,
)
from agentpool.direct import BlockingScriptLine, ScriptLine
from agentpool.durability import Durability, parse_durability
from agentpool.forks import ForkSafeLock
from agentpool.protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    CancelOutcome,
    DeadRequeued,
    OneLoop,
    QueueFigures,
    TaskEvent,
    TaskInfo,
    TaskNotFound,
    TaskQueue,
    WorkerState,
)
from agentpool.ratelimit import LimitState, RateLimiter, Reservation, Throttle
from agentpool.redis_errors import RedisFull
from agentpool.slots import Held, enter_unless
from agentpool.urls import redact_url

ENV_REDIS_URL = "AGENTPOOL_REDIS_URL"
DEFAULT_CONNECT_TIMEOUT = 10.0
CLOSE_GRACE_SECONDS = 5.0
"""How long closing a SyncClient waits for the calls it cancels to end."""
ASYNC_ONLY_OPTIONS = frozenset({"pool_timeout", "retry"})
"""Options of the asyncio client that its blocking line (redis-py's blocking client) does not
take (`retry` is an asyncio object there)."""

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ENV_REDIS_URL",
    "Client",
    "ClientClosed",
    "ClientConfigError",
    "RedisFull",
    "SyncClient",
    "SyncQueue",
    "SyncRateLimit",
    "TaskNotFound",
    "resolve_redis_url",
]

T = TypeVar("T")


class ClientConfigError(ValueError):
    """No usable Redis URL was given."""


def resolve_redis_url(url: str | None = None, *, pass_as: str = "Client.from_url(url)") -> str:
    """`url`, else ``$AGENTPOOL_REDIS_URL``; raises ClientConfigError when neither is set,
    telling to pass it as `pass_as` says (the call that takes it)."""
    resolved = url or os.environ.get(ENV_REDIS_URL)
    if not resolved:
        raise ClientConfigError(
            f"no Redis URL: pass a Redis URL ({pass_as}) or set {ENV_REDIS_URL}")
    return resolved


def _call_on_one_loop(method: Callable[..., Coroutine[Any, Any, T]]
                      ) -> Callable[..., Coroutine[Any, Any, T]]:
    name = method.__name__

    @functools.wraps(method)
    async def call(self: _ClientQueue, *args: Any, **kwargs: Any) -> T:
        turn = self.one_loop.enter()
        try:  # TaskQueue's method as it is now (a test may have replaced it)
            current: Callable[..., Coroutine[Any, Any, T]] = getattr(TaskQueue, name)
            return await current(self, *args, **kwargs)
        finally:
            self.one_loop.leave(turn)
    return call


def _stream_on_one_loop(method: Callable[..., AsyncGenerator[T, None]]
                        ) -> Callable[..., AsyncGenerator[T, None]]:
    """The stream counts as one call in flight from its first step until it is closed."""
    name = method.__name__

    @functools.wraps(method)
    async def stream(self: _ClientQueue, *args: Any, **kwargs: Any) -> AsyncGenerator[T, None]:
        turn = self.one_loop.enter()
        try:
            async with contextlib.aclosing(
                    getattr(TaskQueue, name)(self, *args, **kwargs)) as steps:
                async for item in steps:
                    yield item
        finally:
            self.one_loop.leave(turn)
    return stream


Q = TypeVar("Q", bound=type[TaskQueue])

_KEPT_INSIDE = frozenset({"submit", "submit_once"})
"""TaskQueue methods that keep to the queue's `one_loop` themselves."""


def _each_call_on_one_loop(cls: Q) -> Q:
    """Every other public coroutine and stream of TaskQueue, kept by the queue's
    `one_loop`."""
    for name, method in vars(TaskQueue).items():
        if name.startswith("_") or name in _KEPT_INSIDE:
            continue
        if inspect.isasyncgenfunction(method):
            setattr(cls, name, _stream_on_one_loop(method))
        elif inspect.iscoroutinefunction(method):
            setattr(cls, name, _call_on_one_loop(method))
    return cls


@_each_call_on_one_loop
class _ClientQueue(TaskQueue):
    """A Client's queue: its calls keep to one event loop at a time (see `OneLoop`)."""

    one_loop: OneLoop


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

    Use it from one event loop at a time: a call made on another loop while calls are in
    flight on the one in use raises RuntimeError (threads that each run a loop make a Client
    each, or share a SyncClient). Kept from one loop to the next (one ``asyncio.run`` after
    another), it lets go of the old loop's connections and opens new ones. A process
    forked while it was open (a module-level client in a web server's workers) opens
    connections of its own and leaves the parent's be.

    Once closed, ``queue`` and ``rate_limit`` raise :class:`ClientClosed`, and so do the later
    calls of the queues and limiters it gave, as with :class:`SyncClient`.
    """

    def __init__(self, redis: aioredis.Redis, *, url: str | None = None,
                 durability: Durability | str = Durability.NONE) -> None:
        self.redis = redis
        self.url = url
        """The URL as given, its password included (kept for compatibility): messages and
        logs show :attr:`display_url` instead."""
        self.durability = parse_durability(durability)
        self._line = ScriptLine(redis) if url is not None else None
        self._queues: dict[tuple[str, int, Durability], TaskQueue] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._closed = False
        self._one_loop = OneLoop()

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

    def __repr__(self) -> str:
        return f"Client({self.display_url!r})"

    def queue(self, name: str, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
              durability: Durability | str | None = None) -> TaskQueue:
        """The queue `name`; `durability` defaults to the client's."""
        self._check_open()
        chosen = self.durability if durability is None else parse_durability(durability)
        key = (name, max_payload_bytes, chosen)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _ClientQueue(
                self.redis, name, max_payload_bytes=max_payload_bytes, durability=chosen,
                line=self._line, one_loop=self._one_loop,
            )
        return queue

    def rate_limit(self, name: str) -> RateLimiter:
        """The shared rate limit `name` as the pools on this Redis declare it (their
        spec.rateLimits): ``await limiter.acquire(tokens=n)`` waits for a grant, ``await
        limiter.throttled(retry_after)`` reports a 429, ``async with limiter.hold():`` runs
        the block in one of its ``maxConcurrent`` slots. An undeclared name raises
        :class:`agentpool.ratelimit.UndeclaredLimit` at the first call. One limiter per name
        and client: the calls and the waits for slots of a process go together."""
        self._check_open()
        limiter = self._limiters.get(name)
        if limiter is None:  # setdefault: threads of a SyncClient may race here
            limiter = self._limiters.setdefault(
                name, RateLimiter(self.redis, name, caller=f"client:{os.getpid()}"))
        return limiter

    async def ping(self) -> None:
        turn = self._one_loop.enter()
        try:
            await self.redis.ping()
        finally:
            self._one_loop.leave(turn)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    async def aclose(self) -> None:
        """Close the connections; calls made after raise ClientClosed (redis-py's own clients
        would open new connections for them). Closing twice is harmless."""
        self._closed = True
        refuse_calls(self.redis)
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


_FORK_LOCK = ForkSafeLock()


class _LoopThread:
    """An event loop running in a daemon thread; `call` runs a coroutine on it and blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._handing_over = threading.RLock()
        """Held from the `closed` check to the hand-over of a call, and to set `closed`: a
        call racing `stop` is either handed over before it (and cancelled by it) or refused.
        Re-entrant: a signal handler that closes the client may interrupt this thread's own
        hand-over."""
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._thread = threading.Thread(
            target=_serve, args=(self.loop,), name="agentpool-client", daemon=True
        )
        self._thread.start()

    def on_own_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def refuse_own_thread(self) -> None:
        """A blocking call from the loop's own thread (a coroutine or callback running there,
        a finalizer that the garbage collector happened to run there) would wait for what
        only that thread runs: for ever, and every later call with it."""
        if self.on_own_thread():
            raise RuntimeError(
                "a blocking SyncClient call was made on the client's own event loop thread "
                "(from a coroutine or callback running on it, or a finalizer run there), where "
                "it would wait for itself: use the async Client in coroutines")

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self.refuse_own_thread()
        except RuntimeError:
            coro.close()
            raise
        return self.result(self.start(coro))

    def start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Hand `coro` over to the loop, without waiting for it (from any thread). Refused
        once the interpreter is exiting: its daemon threads, this loop's, no longer run (an
        iterator left in a module's globals is closed then)."""
        with self._handing_over:
            if self.closed or sys.is_finalizing():
                coro.close()
                raise ClientClosed("the client is closed" if self.closed
                                   else "the interpreter is exiting")
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError:  # closed by a signal handler in this very hand-over
                coro.close()
                raise ClientClosed("the client is closed") from None
            self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)
        return future

    def result(self, future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
        """What `future` (of `start`) gives, waited for in this thread; `_StillRunning` once
        `timeout` seconds passed first, and it runs on. An interrupted wait cancels it."""
        self.refuse_own_thread()
        try:
            if timeout is None or concurrent.futures.wait([future], timeout).done:
                return future.result()
        except concurrent.futures.CancelledError:
            if self.closed:
                raise ClientClosed("the client closed while this call waited") from None
            raise
        except BaseException:
            future.cancel()
            raise
        raise _StillRunning

    def stop(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Cancel what still runs on the loop (its callers get ClientClosed), then stop it.
        From the loop's own thread, or as the interpreter exits, as `stop_soon` does: the
        wait would hold up the very loop it waits for, or one whose thread runs no more."""
        if self.on_own_thread() or sys.is_finalizing():
            self.stop_soon()
            return
        with self._handing_over:
            self.closed = True
        if self.loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(_cancel_others(), self.loop).result(grace)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        for future in list(self._waiting):  # what the grace did not end: never answered now
            future.cancel()
        self.loop.close()

    def stop_soon(self, last: Coroutine[Any, Any, Any] | None = None) -> None:
        """`stop` without waiting, for a finalizer (which may run on any thread, this loop's
        own included): `last` runs, what else runs on the loop is cancelled, and the loop
        stops; its thread then closes it and ends."""
        with self._handing_over:
            self.closed = True
        finale = _last_call(last)
        try:
            asyncio.run_coroutine_threadsafe(finale, self.loop)
        except RuntimeError:  # the loop is closed already
            finale.close()
            if last is not None:
                last.close()


class _Collecting(threading.local):
    now = False
    """Whether this thread runs a garbage collection (and the finalizers it calls)."""


_COLLECTING = _Collecting()


def _note_collection(phase: str, info: dict[str, int]) -> None:
    _COLLECTING.now = phase == "start"


gc.callbacks.append(_note_collection)


class _StillRunning(Exception):
    """The wait for a step of the loop ran out; the step runs on."""


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread's whole work. It holds the loop, never the SyncClient: a client
    dropped without being closed is then collected, and its finalizer ends the thread."""
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _last_call(last: Coroutine[Any, Any, Any] | None) -> None:
    try:
        if last is not None:
            await last
    finally:
        await _cancel_others()
        asyncio.get_running_loop().stop()


class _Parts(NamedTuple):
    """What a SyncClient runs on in process `pid`, published whole: a thread that reads them
    while another makes them (the first calls of a forked child, from several threads at
    once) sees either the parent's, with the parent's pid, or this process's, never a mix."""

    pid: int
    runner: _LoopThread
    client: Client
    blocking: BlockingScriptLine | None


def _release(pid: int, runner: _LoopThread, client: Client,
             blocking: BlockingScriptLine | None) -> None:
    """What `SyncClient.close` does, for a client dropped without being closed (a helper that
    makes one per request), without waiting: its loop thread and its connections would
    otherwise last as long as the process. Nothing in a forked child: they are the parent's."""
    if os.getpid() != pid:
        return
    if blocking is not None:
        with contextlib.suppress(Exception):  # closing what may be broken already
            blocking.close()
    runner.stop_soon(client.aclose())


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

    A process forked after the client was made (a web server that imports the app, then
    forks its workers) gets a loop and connections of its own at its first call: the loop's
    thread and the parent's connections stay the parent's. ``close`` ends the calls other
    threads are still waiting in with :class:`ClientClosed`, as it does any call after it.
    A client dropped without being closed is closed when it is garbage collected (its loop
    thread ends, its connections close); ``close`` or ``with`` closes it at a known moment.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        durability: Durability | str = Durability.NONE,
        **redis_kwargs: Any,
    ) -> None:
        self._url = resolve_redis_url(url, pass_as="SyncClient(url)")
        self._durability = parse_durability(durability)
        self._connect_timeout = connect_timeout
        self._redis_kwargs = redis_kwargs
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._here = self._start()

    def _start(self) -> _Parts:
        """A loop thread, async client and blocking line for this process, and the finalizer
        that closes them (a forked child's previous one, its parent's, is detached)."""
        runner = _LoopThread()
        try:
            client = runner.call(_make_client(
                self._url, self._connect_timeout, self._durability, self._redis_kwargs))
            blocking_kwargs = {key: value for key, value in self._redis_kwargs.items()
                               if key not in ASYNC_ONLY_OPTIONS}
            blocking = BlockingScriptLine(sync_redis_from_url(
                self._url, **{"socket_connect_timeout": self._connect_timeout,
                              **blocking_kwargs}),
                pool_timeout=self._redis_kwargs.get("pool_timeout"))
        except BaseException:
            runner.stop()
            raise
        parts = _Parts(os.getpid(), runner, client, blocking)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _release, *parts)
        self._finalizer.atexit = False  # the process's end closes everything anyway
        return parts

    def _parts(self) -> tuple[_LoopThread, Client, BlockingScriptLine | None]:
        """The loop, async client and blocking line of this process."""
        if self._closed:
            raise ClientClosed("the client is closed")
        here = self._here
        if here.pid != os.getpid():
            with _FORK_LOCK:  # held by `close` too: no parts are made once it has run
                if self._closed:
                    raise ClientClosed("the client is closed")
                here = self._here
                if here.pid != os.getpid():
                    here = self._here = self._start()
        return here.runner, here.client, here.blocking

    @property
    def _runner(self) -> _LoopThread:
        return self._here.runner

    @property
    def _blocking(self) -> BlockingScriptLine | None:
        return self._here.blocking

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            runner = self._parts()[0]
        except BaseException:
            coro.close()
            raise
        return runner.call(coro)

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
        return redact_url(self._url)

    def __repr__(self) -> str:
        return f"SyncClient({self.display_url!r})"

    def queue(
        self, name: str, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        durability: Durability | str | None = None,
    ) -> SyncQueue:
        chosen = None if durability is None else parse_durability(durability)
        return SyncQueue(self, name, max_payload_bytes, chosen)

    def rate_limit(self, name: str) -> SyncRateLimit:
        """Blocking twin of :meth:`Client.rate_limit`."""
        return SyncRateLimit(self, name)

    def ping(self) -> None:
        self._call(self._parts()[1].ping())

    def close(self) -> None:
        """Close the connections and end the loop's thread once the calls in flight are
        cancelled (waiting for them at most CLOSE_GRACE_SECONDS). From the loop's own thread
        (a coroutine there, a ``__del__`` the garbage collector runs there) it returns at
        once, and the loop closes the rest by itself; as the interpreter exits, the loop's
        thread runs no more, and the process's end closes the rest."""
        with _FORK_LOCK:  # parts a forked child's first call is making are closed here
            if self._closed:
                return
            self._closed = True
            if self._finalizer is not None:
                self._finalizer.detach()
            here = self._here
        if here.pid != os.getpid():
            return  # the loop and the connections are the parent's to close
        if here.runner.on_own_thread() or sys.is_finalizing():
            _release(*here)
            return
        try:
            if here.blocking is not None:
                here.blocking.close()
            with contextlib.suppress(ClientClosed):
                here.runner.call(here.client.aclose())
        finally:
            here.runner.stop()

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

    def __init__(self, client: SyncClient, name: str) -> None:
        self._client = client
        self.name = name

    @property
    def limiter(self) -> RateLimiter:
        return self._client._parts()[1].rate_limit(self.name)

    def acquire(self, *, tokens: int = 0, requests: int = 1) -> Reservation:
        limiter = self.limiter
        reservation = self._client._call(limiter.reserve(tokens=tokens, requests=requests))
        if reservation.wait > 0:
            try:
                time.sleep(reservation.wait)
            except BaseException:
                self._client._call(limiter.release(reservation))
                raise
        return reservation

    def throttled(self, retry_after: float | None = None) -> Throttle:
        return self._client._call(self.limiter.throttled(retry_after))

    @contextlib.contextmanager
    def hold(self) -> Iterator[Held]:
        """``with limit.hold():`` waits in the caller's thread for one of the limit's
        ``maxConcurrent`` slots and gives it back after the block. A caller interrupted while
        it waits (KeyboardInterrupt, say) leaves the line."""
        runner = self._client._parts()[0]
        runner.refuse_own_thread()
        manager = self.limiter.hold()
        stop = threading.Event()
        entered = asyncio.run_coroutine_threadsafe(enter_unless(manager, stop), runner.loop)
        try:
            held = entered.result()
        except concurrent.futures.CancelledError:
            if self._client._closed:
                raise ClientClosed("the client closed while this call waited") from None
            raise
        except BaseException:
            stop.set()
            with contextlib.suppress(Exception):
                entered.result(timeout=10.0)
            raise
        assert held is not None
        try:
            yield held
        finally:
            self._client._call(manager.__aexit__(None, None, None))

    def state(self) -> LimitState:
        return self._client._call(self.limiter.state())


class SyncQueue:
    """Blocking counterparts of the producer-side :class:`TaskQueue` methods."""

    def __init__(self, client: SyncClient, name: str, max_payload_bytes: int,
                 durability: Durability | None) -> None:
        self._client = client
        self._options = (name, max_payload_bytes, durability)
        self.queue  # noqa: B018 - a bad name or option fails here, as Client.queue does

    @property
    def queue(self) -> TaskQueue:
        """The async queue of this process's client."""
        name, max_payload_bytes, durability = self._options
        return self._client._parts()[1].queue(
            name, max_payload_bytes=max_payload_bytes, durability=durability)

    @property
    def name(self) -> str:
        return self._options[0]

    def _run(self, coro_of: Callable[[TaskQueue], Coroutine[Any, Any, T]]) -> T:
        return self._client._call(coro_of(self.queue))

    def submit(
        self,
        payload: Any,
        *,
        priority: int = 0,
        delay: float = 0,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        expires: float | None = None,
        task_timeout: float | None = None,
        after: Iterable[str] | None = None,
        tenant: str | None = None,
    ) -> str:
        blocking = self._client._parts()[2]
        queue = self.queue
        if (blocking is not None and queue.durability is Durability.NONE
                and not blocking.busy(queue.prefix + "queued")):
            return queue.submit_blocking(
                blocking, payload, priority=priority, delay=delay,
                idempotency_key=idempotency_key, max_attempts=max_attempts, expires=expires,
                task_timeout=task_timeout, after=after, tenant=tenant,
            )
        return self._client._call(queue.submit(
            payload, priority=priority, delay=delay, idempotency_key=idempotency_key,
            max_attempts=max_attempts, expires=expires, task_timeout=task_timeout, after=after,
            tenant=tenant,
        ))

    def submit_many(self, payloads: Iterable[Any], *, priority: int = 0, delay: float = 0,
                    max_attempts: int | None = None, expires: float | None = None,
                    task_timeout: float | None = None,
                    after: Iterable[str] | None = None,
                    idempotency_keys: Iterable[str | None] | None = None,
                    tenant: str | None = None) -> list[str]:
        """:meth:`TaskQueue.submit_many`, blocking."""
        items = list(payloads)
        keys = (idempotency_keys if idempotency_keys is None or isinstance(idempotency_keys, str)
                else list(idempotency_keys))
        return self._run(lambda q: q.submit_many(items, priority=priority, delay=delay,
                                                 max_attempts=max_attempts, expires=expires,
                                                 task_timeout=task_timeout, after=after,
                                                 idempotency_keys=keys, tenant=tenant))

    def get(self, task_id: str) -> TaskInfo | None:
        return self._run(lambda q: q.get(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Block until the task is final; raises TimeoutError after `timeout` seconds, and
        TaskNotFound for an id the queue does not know (never submitted, or its result
        expired)."""
        return self._run(lambda q: q.wait(task_id, timeout))

    def wait_many(self, task_ids: Iterable[str], timeout: float | None = None) -> list[TaskInfo]:
        """Block until every task is final, on one subscription; their infos in the order of
        the ids (see :meth:`TaskQueue.wait_many`)."""
        ids = list(task_ids)
        return self._run(lambda q: q.wait_many(ids, timeout))

    @overload
    def events(self, task_id: str, *, after: str | None = None, follow: bool = True,
               idle: None = None) -> Generator[TaskEvent, None, None]: ...

    @overload
    def events(self, task_id: str, *, after: str | None = None, follow: bool = True,
               idle: float) -> Generator[TaskEvent | None, None, None]: ...

    def events(self, task_id: str, *, after: str | None = None, follow: bool = True,
               idle: float | None = None,
               ) -> Generator[TaskEvent, None, None] | Generator[TaskEvent | None, None, None]:
        """The task's events as :meth:`TaskQueue.events` yields them, one blocking step at a
        time (with `follow`, until the task is final).

        With `idle` (seconds), a step that has waited that long for the next event yields None
        instead, and the next step goes on waiting for it: a server-sent-events view of a web
        framework's thread writes a keep-alive comment then, and a browser that left fails
        that write, instead of holding the thread until the task ends. Close the iterator
        when the view ends early (``with contextlib.closing(queue.events(...)) as events:``):
        its step still waiting is cancelled, and the stream's connection freed."""
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int | float)
                                 or not 0 < idle < float("inf")):
            raise ValueError(f"idle must be a positive number of seconds, got {idle!r}")
        steps = self._steps(self.queue.events(task_id, after=after, follow=follow), idle)
        return steps if idle is not None else cast(Generator[TaskEvent, None, None], steps)

    def as_finished(self, task_ids: Iterable[str],
                    timeout: float | None = None) -> Generator[TaskInfo, None, None]:
        """Each task's final info as it ends (:meth:`TaskQueue.as_finished`), one blocking
        step at a time; leaving the loop early ends the subscription."""
        return cast(Generator[TaskInfo, None, None],
                    self._steps(self.queue.as_finished(list(task_ids), timeout)))

    def _steps(self, stream: AsyncGenerator[T, None],
               idle: float | None = None) -> Generator[T | None, None, None]:
        """An async generator of the client's loop, one blocking step at a time (None for
        each `idle` seconds a step waits); closed with the iterator (early or not)."""
        step: _Step[T] | None = None
        try:
            while True:
                if step is None:
                    step = _Step(stream)
                    runner = self._client._parts()[0]
                    future = runner.start(step.run())
                try:
                    item = runner.result(future, idle)
                except _StillRunning:
                    yield None
                    continue
                except StopAsyncIteration:
                    return
                step = None
                yield item
        finally:
            self._close(stream, step)

    def _close(self, stream: AsyncGenerator[Any, None], step: _Step[Any] | None) -> None:
        """Close `stream` on the loop once its `step` still running, if any, is cancelled.
        Waited for, except in a garbage collection: the collector finalizes the iterator
        on whichever thread allocated last, the loop's own, or one that holds a lock the
        loop needs next (a future's), where a wait would never end."""
        closing = _close_stream(stream, step)
        here = self._client._here
        if here.pid != os.getpid():  # a stream of the parent's loop, which runs no more here
            closing.close()
            return
        with contextlib.suppress(ClientClosed):
            if _COLLECTING.now or here.runner.on_own_thread():
                here.runner.start(closing)
            else:
                here.runner.call(closing)

    def cancel(self, task_id: str) -> CancelOutcome:
        return self._run(lambda q: q.cancel(task_id))

    def cancel_waiting(self, *, batch: int = 1000) -> int:
        """:meth:`TaskQueue.cancel_waiting`: every task waiting to run, submitted before."""
        return self._run(lambda q: q.cancel_waiting(batch=batch))

    def cancel_waiting_of(self, tenant: str | None, *, batch: int = 500) -> int:
        """:meth:`TaskQueue.cancel_waiting_of`: a tenant's tasks waiting to run."""
        return self._run(lambda q: q.cancel_waiting_of(tenant, batch=batch))

    def figures(self) -> QueueFigures:
        return self._run(lambda q: q.figures())

    def workers(self) -> list[WorkerState]:
        return self._run(lambda q: q.workers())

    def dead_letters(self, limit: int = 100) -> list[TaskInfo]:
        return self._run(lambda q: q.dead_letters(limit))

    def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        return self._run(lambda q: q.requeue_dead(task_ids))

    def requeue_dead_counted(self, task_ids: Sequence[str] | None = None) -> DeadRequeued:
        return self._run(lambda q: q.requeue_dead_counted(task_ids))

    def purge_dead(self, task_ids: Sequence[str] | None = None) -> int:
        return self._run(lambda q: q.purge_dead(task_ids))


class _Step(Generic[T]):
    """One step of a stream on the client's loop, which closing the stream cancels first (an
    async generator in the middle of a step cannot be closed)."""

    def __init__(self, stream: AsyncGenerator[T, None]) -> None:
        self.stream = stream
        self.task: asyncio.Task[Any] | None = None
        self.dropped = False

    async def run(self) -> T:
        if self.dropped:
            raise StopAsyncIteration
        self.task = asyncio.current_task()
        return await anext(self.stream)


async def _close_stream(stream: AsyncGenerator[Any, None], step: _Step[Any] | None) -> None:
    if step is not None:
        step.dropped = True
        if step.task is not None and not step.task.done():
            step.task.cancel()
            await asyncio.wait([step.task])
    await stream.aclose()
