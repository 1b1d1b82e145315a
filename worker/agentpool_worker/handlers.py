"""Task handlers: how a pool's ``package.module:function`` is found and what it is given.

A handler takes the task's payload (decoded JSON) and, if it accepts a second positional
argument, a :class:`TaskContext`. Its return value (JSON, at most the worker's
``AGENTPOOL_MAX_RESULT_BYTES`` once encoded) is the task's result; one that is not JSON (a
datetime, bytes, NaN) fails the run without a retry, its error saying what and where.

- ``async def`` handlers run on the worker's event loop. They must not block it: a handler
  that does blocks heartbeats too, and ``/livez`` reports it (the worker logs the stall).
- plain functions run in a thread pool sized to the worker's concurrency. A long call into C
  that holds the GIL (a huge regex, ``sorted`` of tens of millions) stops the event loop all
  the same: run it in a process pool, or in a library that releases the GIL.

Raising :class:`agentpool.errors.PermanentError` dead-letters the task at once; any other
exception is retried with backoff until the task runs out of attempts. A run that exceeds
the task timeout counts as a retryable failure.

Cancellation: async handlers receive ``asyncio.CancelledError`` when their task is cancelled,
times out, or its lease is lost, and should let it propagate: one that catches it and goes on
runs until it returns, holding its lease, however long past its timeout. Threads
cannot be interrupted, so sync handlers should look at ``ctx.cancelled`` (a
``threading.Event``; ``ctx.cancelled.wait(n)`` is an interruptible sleep). A sync run that is
abandoned keeps its thread, and its concurrency slot, until it returns. Once a run is over or
told to stop, its ``ctx.submit*``, ``ctx.results_before`` and ``ctx.wait_many`` raise
LeaseLost (but in the ``after_task`` hook of a run that succeeded or failed).

The handler's module may also define hooks (each sync or async): ``startup(worker_ctx)`` and
``shutdown(worker_ctx)`` run once per process (``worker_ctx.state`` reaches every task as
``ctx.state``), ``after_task(ctx, outcome)`` runs after every run whatever its outcome, and
``ready()`` is a check that joins ``/readyz``. Sync hooks run in daemon threads of the
worker's own (see :mod:`agentpool_worker.threads`).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Protocol

from agentpool.protocol import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_TASK_TIMEOUT_SECONDS,
    ProtocolError,
    TaskInfo,
    encode_checkpoint,
    encode_event,
    encode_progress,
)
from agentpool.ratelimit import RateLimitError, Reservation, Throttle, UndeclaredLimit
from agentpool.slots import Held, enter_unless
from agentpool_worker.threads import DaemonThreads

SYNC_WAIT_CHECK_SECONDS = 0.05
"""How often a sync handler's wait looks at ``ctx.cancelled``."""


class QueueNotListed(ProtocolError):
    """A run submitted to (or waited on) a queue its pool does not list in
    ``spec.worker.submitsTo``. A failure worth retrying: the list may arrive with the next
    rollout."""


class WaitCancelled(Exception):
    """A sync handler's wait (``ctx.wait_many_sync``, ``ctx.limit_sync``) ended because the
    run was cancelled. Let it propagate: the run is being stopped."""


class LimitWaitCancelled(WaitCancelled):
    """A sync handler's ``ctx.limit_sync`` wait ended because the run was cancelled; its
    reservation was given back. Let it propagate: the run is being stopped."""


class HandlerError(Exception):
    """The handler named in the configuration cannot be used (phrased for a person)."""


class RunChannel(Protocol):
    """The worker side of a TaskContext: where its events go."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    async def emit(self, ctx: TaskContext, kind: str, raw: str) -> None: ...

    async def checkpoint(self, ctx: TaskContext, raw: str) -> None: ...

    async def results_before(self, ctx: TaskContext) -> dict[str, Any]: ...

    async def submit(self, ctx: TaskContext, payload: Any, **options: Any) -> str: ...

    async def submit_many(self, ctx: TaskContext, payloads: list[Any],
                          **options: Any) -> list[str]: ...

    async def wait_many(self, ctx: TaskContext, task_ids: list[str], queue: str,
                        timeout: float | None) -> list[TaskInfo]: ...

    @property
    def limits(self) -> LimitChannel | None: ...


class LimitChannel(Protocol):
    """The worker's rate limits (see agentpool_worker.limits.WorkerLimits)."""

    async def limit(self, name: str, tokens: int, requests: int) -> Reservation: ...

    async def reserve(self, name: str, tokens: int, requests: int) -> Reservation: ...

    async def release(self, reservation: Reservation, remaining: float) -> None: ...

    async def throttled(self, name: str, retry_after: float | None) -> Throttle: ...

    def hold(self, name: str) -> AbstractAsyncContextManager[Held]: ...


class SubmitNames:
    """How a run names its submits (``TaskContext.submit``): by a digest of what is submitted
    and which of its kind it is, so that another attempt submitting the same tasks, in any
    order, names each as the first did. A submit that failed (its reply may be lost) gives its
    name back for the next submit of its kind: a retry sends the same name."""

    def __init__(self) -> None:
        self._taken: dict[str, int] = {}
        self._returned: dict[str, list[str]] = {}

    def take(self, payload: Any, options: dict[str, Any]) -> str:
        text = json.dumps([payload, options], sort_keys=True, separators=(",", ":"),
                          default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        returned = self._returned.get(digest)
        if returned:
            return returned.pop()
        number = self._taken.get(digest, 0)
        self._taken[digest] = number + 1
        return f"s:{digest}#{number}"

    def give_back(self, name: str) -> None:
        if name.startswith("s:"):
            self._returned.setdefault(name[2:].partition("#")[0], []).append(name)


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about the run it is doing, and how it reports along the way.

    ``emit`` and ``progress`` are for async handlers; sync handlers (in threads) call
    ``emit_sync`` and ``progress_sync``.
    """

    task_id: str
    attempt: int
    """1 for the first run; a run lost with its worker counts too."""
    max_attempts: int
    queue: str
    worker_id: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the run should stop: cancel requested, timeout, lease lost, or shutdown."""
    state: dict[str, Any] = field(default_factory=dict)
    """The worker process's shared state, as the ``startup`` hook left it."""
    checkpoint_state: Any = None
    """The state the last checkpoint of an earlier attempt saved; None on a first attempt
    (or when no attempt checkpointed)."""
    channel: RunChannel | None = field(default=None, repr=False, compare=False)
    timeout_seconds: float = DEFAULT_TASK_TIMEOUT_SECONDS
    """How long this run may last before it is stopped and fails: the pool's task timeout, or
    the task's own when its submit gave a shorter one."""
    after: tuple[str, ...] = ()
    """The tasks this one was submitted to run after (its claim carries them)."""
    tenant: str | None = None
    """Whose task this is (its submit's `tenant`): the tasks this run submits are theirs too,
    unless the submit names another tenant."""
    _submit_names: SubmitNames = field(default_factory=lambda: SubmitNames(),
                                       repr=False, compare=False)

    async def submit(self, payload: Any, *, priority: int = 0, delay: float = 0,
                     max_attempts: int | None = None, expires: float | None = None,
                     task_timeout: float | None = None, after: Iterable[str] | None = None,
                     key: str | None = None, queue: str | None = None,
                     tenant: str | None = None) -> str:
        """Queue a task on this pool's queue (a step, a sub-agent) and return its id; the
        options are those of ``TaskQueue.submit``. With `after`, a task that gathers the
        results of those it runs after (``ctx.results_before()``) once they have all
        succeeded, without holding this run's slot while they run.

        Once per task, not per attempt: a submit is named by this task's id and what it
        submits (payload and options; the same one submitted again in a run is the next of
        its kind), or by a `key` of its own, as an idempotency key. A later attempt that
        submits the same gets the id its earlier attempt got, whatever the order (resuming
        from a checkpoint, it submits only what is left); one that submits something else gets
        a new task, and the earlier attempt's tasks it no longer submits run all the same. This
        holds while those tasks are on record (their result TTL once finished; the key a day).
        With `queue`, the task goes to another queue of the same Redis, one the pool lists in
        ``spec.worker.submitsTo`` (its `after` ids are tasks of that queue); ProtocolError for
        one it does not list. The task is this run's tenant's (:attr:`tenant`) unless
        `tenant` names another: a tenant's steps and sub-agents take turns as its own tasks.
        While Redis cannot be reached it waits for it (a resend is harmless: the name is the
        same). Raises as ``TaskQueue.submit`` does: TaskNotFound for an unknown `after` id,
        ProtocolError for a bad option, Redis's refusal when it is full."""
        if self.channel is None:
            raise RuntimeError("ctx.submit needs the worker behind the run")
        options = self._submit_options(priority, delay, max_attempts, expires, task_timeout,
                                       after, queue, tenant)
        name = self._submit_names.take(payload, options) if key is None else f"k:{key}"
        try:
            task_id = await self.channel.submit(
                self, payload, idempotency_key=f"{self.task_id}:{name}",
                **self._with_tenant(options))
        except BaseException:
            self._submit_names.give_back(name)
            raise
        return task_id

    async def submit_many(self, payloads: Iterable[Any], *, priority: int = 0,
                          delay: float = 0, max_attempts: int | None = None,
                          expires: float | None = None, task_timeout: float | None = None,
                          after: Iterable[str] | None = None,
                          keys: Iterable[str | None] | None = None,
                          queue: str | None = None,
                          tenant: str | None = None) -> list[str]:
        """:meth:`submit` for many tasks with the same options, in one call (a fan-out); their
        ids in order. Once per task, as :meth:`submit`: each is named by what it submits (or
        by its entry in `keys`, one per payload, None for one named by what it submits), so
        a later attempt that fans out again gets the ids the earlier one got and queues only
        the tasks it did not; `queue` and `tenant` as :meth:`submit` takes them. Raises as
        ``TaskQueue.submit_many`` does."""
        if self.channel is None:
            raise RuntimeError("ctx.submit_many needs the worker behind the run")
        items = list(payloads)
        options = self._submit_options(priority, delay, max_attempts, expires, task_timeout,
                                       after, queue, tenant)
        given: list[str | None] = [None] * len(items) if keys is None else list(keys)
        if isinstance(keys, str) or len(given) != len(items):
            raise ProtocolError(f"keys has {len(given)} keys for {len(items)} payloads: give "
                                "one per payload (None: named by what it submits)")
        for key in given:
            if key is not None and (not isinstance(key, str) or not key):
                raise ProtocolError(f"a key is a non-empty string or None, got {key!r}")
        names: list[str] = []
        try:
            for payload, key in zip(items, given, strict=True):
                names.append(self._submit_names.take(payload, options) if key is None
                             else f"k:{key}")
            return await self.channel.submit_many(
                self, items, idempotency_keys=[f"{self.task_id}:{name}" for name in names],
                **self._with_tenant(options))
        except BaseException:
            for name in reversed(names):
                self._submit_names.give_back(name)
            raise

    def _submit_options(self, priority: int, delay: float, max_attempts: int | None,
                        expires: float | None, task_timeout: float | None,
                        after: Iterable[str] | None, queue: str | None,
                        tenant: str | None) -> dict[str, Any]:
        """A submit's options as its name digests them (see SubmitNames): `after` as a list,
        `queue` only when it is another queue than the pool's, `tenant` only when given (the
        run's own, added when it is sent, is the same for every attempt and names nothing:
        an attempt by a worker of an earlier version names its submits as this one does)."""
        options: dict[str, Any] = {
            "priority": priority, "delay": delay, "max_attempts": max_attempts,
            "expires": expires, "task_timeout": task_timeout,
            "after": None if after is None else
            ([after] if isinstance(after, str) else list(after))}
        if queue is not None and queue != self.queue:
            options["queue"] = queue
        if tenant is not None:
            options["tenant"] = tenant
        return options

    def _with_tenant(self, options: dict[str, Any]) -> dict[str, Any]:
        if "tenant" in options or self.tenant is None:
            return options
        return {**options, "tenant": self.tenant}

    def submit_sync(self, payload: Any, *, priority: int = 0, delay: float = 0,
                    max_attempts: int | None = None, expires: float | None = None,
                    task_timeout: float | None = None, after: Iterable[str] | None = None,
                    key: str | None = None, queue: str | None = None,
                    tenant: str | None = None) -> str:
        """:meth:`submit` for sync handlers (called from their thread)."""
        if self.channel is None:
            raise RuntimeError("ctx.submit_sync needs the worker behind the run")
        loop = self._loop_for_sync("submit_sync")
        submit = self.submit(payload, priority=priority, delay=delay,
                             max_attempts=max_attempts, expires=expires,
                             task_timeout=task_timeout, after=after, key=key, queue=queue,
                             tenant=tenant)
        return asyncio.run_coroutine_threadsafe(submit, loop).result()

    async def wait_many(self, task_ids: Iterable[str], *, queue: str,
                        timeout: float | None = None) -> list[TaskInfo]:
        """Wait until every one of these tasks of another queue (one the pool lists in
        ``spec.worker.submitsTo``, to which this run handed them) is final; their infos, with
        their results, in the order of the ids, as ``TaskQueue.wait_many`` gives them. The run
        holds its slot meanwhile. Tasks of the pool's own queue are waited for with
        ``after=`` instead (a run waiting for its own queue's tasks could hold every slot they
        need): ProtocolError. TimeoutError after `timeout` seconds; the run's own timeout
        bounds the wait in any case."""
        if self.channel is None:
            raise RuntimeError("ctx.wait_many needs the worker behind the run")
        if queue == self.queue:
            raise ProtocolError(
                f"ctx.wait_many waits for tasks of another queue, not of this pool's own "
                f"({queue!r}): submit the task that needs their results with after=[...]")
        return await self.channel.wait_many(self, list(task_ids), queue, timeout)

    def wait_many_sync(self, task_ids: Iterable[str], *, queue: str,
                       timeout: float | None = None) -> list[TaskInfo]:
        """:meth:`wait_many` for sync handlers; ends early with :class:`WaitCancelled` when
        ``ctx.cancelled`` is set."""
        if self.channel is None:
            raise RuntimeError("ctx.wait_many_sync needs the worker behind the run")
        loop = self._loop_for_sync("wait_many_sync")
        waiting = asyncio.run_coroutine_threadsafe(
            self.wait_many(task_ids, queue=queue, timeout=timeout), loop)
        while not self.cancelled.wait(SYNC_WAIT_CHECK_SECONDS):
            if waiting.done():
                return waiting.result()
        waiting.cancel()
        raise WaitCancelled(f"run cancelled while waiting for tasks of queue {queue!r}")

    def submit_many_sync(self, payloads: Iterable[Any], *, priority: int = 0,
                         delay: float = 0, max_attempts: int | None = None,
                         expires: float | None = None, task_timeout: float | None = None,
                         after: Iterable[str] | None = None,
                         keys: Iterable[str | None] | None = None,
                         queue: str | None = None,
                         tenant: str | None = None) -> list[str]:
        """:meth:`submit_many` for sync handlers (called from their thread)."""
        if self.channel is None:
            raise RuntimeError("ctx.submit_many_sync needs the worker behind the run")
        loop = self._loop_for_sync("submit_many_sync")
        submit = self.submit_many(payloads, priority=priority, delay=delay,
                                  max_attempts=max_attempts, expires=expires,
                                  task_timeout=task_timeout, after=after, keys=keys,
                                  queue=queue, tenant=tenant)
        return asyncio.run_coroutine_threadsafe(submit, loop).result()

    async def checkpoint(self, state: Any) -> None:
        """Save `state` (JSON) for the next attempt, should this one be lost; it becomes that
        attempt's ``ctx.checkpoint_state``. Fenced: only the current lease holder's write is
        accepted; a run that lost its task gets :class:`agentpool.errors.LeaseLost`. The run's
        events emitted so far are recorded first. One round trip.

        While Redis cannot be reached, it waits for Redis. When Redis is full (maxmemory
        reached) it refuses checkpoints: this one is then not saved (the worker logs it once
        per run) and the call returns without an error, so that the run goes on and ends
        (Redis still records outcomes); a later checkpoint is saved once there is room, and a
        lost attempt's successor resumes from the last checkpoint Redis took."""
        raw = encode_checkpoint(state)
        if self.channel is not None:
            await self.channel.checkpoint(self, raw)

    def checkpoint_sync(self, state: Any) -> None:
        """:meth:`checkpoint` for sync handlers (called from their thread)."""
        raw = encode_checkpoint(state)
        channel = self.channel
        if channel is None:
            return
        if _running_loop() is channel.loop:
            raise RuntimeError("checkpoint_sync is for sync handlers; "
                               "use `await ctx.checkpoint(...)`")
        asyncio.run_coroutine_threadsafe(channel.checkpoint(self, raw), channel.loop).result()

    async def results_before(self) -> dict[str, Any]:
        """The results of the tasks this one was submitted to run after
        (``submit(after=[...])``), by task id, in the order the submit named them: a fan-in
        step reads what the steps before it found. Each had succeeded before this task was
        queued; one whose record is gone (finished longer ago than the result TTL) is left
        out. Empty for a task submitted without `after` (without reading Redis: its claim
        said so). Read from Redis on each call."""
        if self.channel is None or not self.after:
            return {}
        return await self.channel.results_before(self)

    def results_before_sync(self) -> dict[str, Any]:
        """:meth:`results_before` for sync handlers (called from their thread)."""
        if self.channel is None or not self.after:
            return {}
        loop = self._loop_for_sync("results_before_sync")
        return asyncio.run_coroutine_threadsafe(self.channel.results_before(self), loop).result()

    async def emit(self, kind: str, data: Any = None) -> None:
        """Append an event (JSON `data`, at most 64 KiB) to the task's stream. Batched: it is
        on its way to Redis when this returns, and recorded before the run's outcome.

        When Redis is full (maxmemory reached) it refuses events but records outcomes: a
        success is recorded first and its events join its stream, before its ``final`` event,
        once there is room; the events of a run that fails (or is cancelled or handed back)
        meanwhile are lost, and so are events beyond the worker's cap on those waiting
        (20,000, outbox.MAX_PENDING_EVENTS): the run is not held up for them."""
        raw = encode_event(kind, data)
        if self.channel is not None:
            await self.channel.emit(self, kind, raw)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """A ``progress`` event (0..1, optional message): views show the latest."""
        await self.emit("progress", encode_progress(fraction, message))

    def emit_sync(self, kind: str, data: Any = None) -> None:
        """:meth:`emit` for sync handlers (called from their thread)."""
        raw = encode_event(kind, data)
        self._from_thread(kind, raw)

    def progress_sync(self, fraction: float, message: str | None = None) -> None:
        self.emit_sync("progress", encode_progress(fraction, message))

    def _from_thread(self, kind: str, raw: str) -> None:
        channel = self.channel
        if channel is None:
            return
        if _running_loop() is channel.loop:
            raise RuntimeError("emit_sync is for sync handlers; use `await ctx.emit(...)`")
        asyncio.run_coroutine_threadsafe(channel.emit(self, kind, raw), channel.loop).result()

    async def limit(self, name: str, tokens: int = 0, *, requests: int = 1) -> Reservation:
        """Wait until rate limit `name` (one of the pool's spec.rateLimits) allows a call
        spending `requests` requests and `tokens` tokens, then return. One round trip to
        Redis; the wait is a sleep until the reserved time. Cancelled while it waits, it
        gives the reservation back. An undeclared name raises UndeclaredLimit (permanent: its
        task is dead-lettered)."""
        return await self._limits(name).limit(name, tokens, requests)

    def limit_sync(self, name: str, tokens: int = 0, *, requests: int = 1) -> Reservation:
        """:meth:`limit` for sync handlers. The wait ends early when ``ctx.cancelled`` is set:
        the reservation is given back and LimitWaitCancelled is raised."""
        limits, loop = self._limits(name), self._loop_for_sync("limit_sync")
        reservation = asyncio.run_coroutine_threadsafe(
            limits.reserve(name, tokens, requests), loop).result()
        began = time.monotonic()
        if reservation.wait > 0 and self.cancelled.wait(reservation.wait):
            remaining = reservation.wait - (time.monotonic() - began)
            asyncio.run_coroutine_threadsafe(
                limits.release(reservation, remaining), loop).result()
            raise LimitWaitCancelled(f"run cancelled while waiting for rate limit {name!r}")
        return reservation

    async def throttled(self, name: str, retry_after: float | None = None) -> Throttle:
        """The provider answered 429 (rate limited): pause limit `name` for every worker of
        every pool for `retry_after` seconds, then let its rate recover step by step."""
        return await self._limits(name).throttled(name, retry_after)

    def throttled_sync(self, name: str, retry_after: float | None = None) -> Throttle:
        limits, loop = self._limits(name), self._loop_for_sync("throttled_sync")
        return asyncio.run_coroutine_threadsafe(limits.throttled(name, retry_after),
                                                loop).result()

    def hold(self, name: str) -> AbstractAsyncContextManager[Held]:
        """``async with ctx.hold(name):`` waits for one of the ``maxConcurrent`` slots of
        limit `name` (shared with every worker of every pool naming it; first come, first
        served) and gives it back when the block ends, however it ends. A limit declared
        without maxConcurrent raises NoConcurrencyLimit, an undeclared one UndeclaredLimit."""
        return self._limits(name).hold(name)

    @contextmanager
    def hold_sync(self, name: str) -> Iterator[Held]:
        """:meth:`hold` for sync handlers: ``with ctx.hold_sync(name):``. The wait ends early
        when ``ctx.cancelled`` is set: the caller leaves the line and LimitWaitCancelled is
        raised."""
        manager = self._limits(name).hold(name)
        loop = self._loop_for_sync("hold_sync")
        held = asyncio.run_coroutine_threadsafe(
            enter_unless(manager, self.cancelled), loop).result()
        if held is None:
            raise LimitWaitCancelled(f"run cancelled while waiting for a slot of {name!r}")
        try:
            yield held
        finally:
            asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result()

    def _limits(self, name: str) -> LimitChannel:
        """The worker's limits; a worker whose pool declares none refuses `name` as one that
        declares others does (UndeclaredLimit: permanent, no retry declares it)."""
        if self.channel is None:
            raise RateLimitError("no rate limits here: this run has no worker behind it")
        limits = self.channel.limits
        if limits is None:
            raise UndeclaredLimit(
                f"rate limit {name!r} is not declared for this pool: add it to the pool's "
                "spec.rateLimits (declared: none)")
        return limits

    def _loop_for_sync(self, what: str) -> asyncio.AbstractEventLoop:
        assert self.channel is not None
        if _running_loop() is self.channel.loop:
            raise RuntimeError(f"{what} is for sync handlers; use the async method")
        return self.channel.loop

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


@dataclass
class WorkerContext:
    """What the ``startup`` and ``shutdown`` hooks receive: one per worker process."""

    queue: str
    worker_id: str
    concurrency: int
    state: dict[str, Any] = field(default_factory=dict)
    """Put clients and pools here in ``startup``; every task sees it as ``ctx.state``."""
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """The largest result this worker stores (``AGENTPOOL_MAX_RESULT_BYTES``), JSON bytes."""


@dataclass(frozen=True)
class TaskOutcome:
    """How a run ended, as ``after_task`` sees it."""

    status: str
    """``succeeded``, ``failed`` (the handler raised or timed out), ``cancelled``, ``lost``
    (the lease went to another worker) or ``released`` (handed back by a stopping worker)."""
    duration_seconds: float
    result: Any = None
    error: str | None = None
    retryable: bool = False
    """For ``failed``: another attempt may follow (the failure is retryable and attempts
    remain); False on the last attempt, whose task goes to the dead letters. Redis may still
    end it otherwise: a cancel request, an expiry that comes before the retry."""


@dataclass(frozen=True)
class Hooks:
    startup: Callable[..., Any] | None = None
    shutdown: Callable[..., Any] | None = None
    after_task: Callable[..., Any] | None = None
    ready: Callable[..., Any] | None = None


HOOK_NAMES = ("startup", "shutdown", "after_task", "ready")


@dataclass(frozen=True)
class Handler:
    name: str
    func: Callable[..., Any]
    is_async: bool
    wants_context: bool
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def runs_commands(self) -> bool:
        """The command handler, under its own name or taken into a module of one's own."""
        return getattr(self.func, "__module__", None) == COMMAND_MODULE


async def call_hook(hook: Callable[..., Any], *args: Any, threads: DaemonThreads) -> Any:
    """Await an async hook; run a sync one in one of `threads` so it cannot block the loop
    (given up on, it goes on in its thread, which does not hold the process at exit, nor the
    calls after it: `DaemonThreads.give_up`)."""
    if _is_async(hook):
        return await hook(*args)
    future = threads.submit(hook, *args)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        threads.give_up(future)
        raise


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _working_directory() -> str | None:
    """The current directory, when Python may search it (not with ``PYTHONSAFEPATH``)."""
    if sys.flags.safe_path:
        return None
    try:
        return os.getcwd()
    except OSError:  # a working directory that was removed
        return None


def _import_handler_module(module_name: str) -> ModuleType:
    """Import the handler's module; one not found elsewhere is looked for in the current
    directory too, as ``python -m`` would (a console script's path holds its own directory
    instead). The directory joins the end of ``sys.path`` and only then: a module planted in
    a writable working directory never shadows the standard library, an installed package or
    a handler found elsewhere (the built-in ones, the image's ``PYTHONPATH``)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = _working_directory()
        if exc.name != module_name.partition(".")[0] or cwd is None or cwd in sys.path:
            raise
    sys.path.append(cwd)
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _where_modules_are_searched() -> str:
    """Where a top-level module that was not found was looked for, for the error line."""
    places = ["PYTHONPATH" if os.environ.get("PYTHONPATH") else "PYTHONPATH (not set)",
              "the installed packages"]
    cwd = _working_directory()
    if cwd is not None:
        places.append(f"the current directory {cwd}")
    return f"searched: {', '.join(places[:-1])} and {places[-1]}"


COMMAND_MODULE = "agentpool_worker.command"
"""Where the handler of pools of programs (``spec.worker.taskCommand``) lives."""


def load_handler(name: str) -> Handler:
    """Import ``package.module:function`` and work out how to call it."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler {name!r} must be written as package.module:function")
    try:
        module = _import_handler_module(module_name)
    except SystemExit as exc:
        raise HandlerError(
            f"cannot import handler {name!r}: module {module_name!r} called "
            f"sys.exit({exc.code!r}) while being imported"
        ) from None
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.partition(".")[0]:
            reason += f" ({_where_modules_are_searched()})"  # not a module the handler imports
        raise HandlerError(f"cannot import handler {name!r}: {reason}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerError(
                f"cannot import handler {name!r}: module {module_name!r} has no {attr!r}"
            ) from None
    if not callable(obj):
        raise HandlerError(f"handler {name!r} is not callable")
    handler = Handler(name, obj, _is_async(obj), _wants_context(name, obj),
                      _hooks(name, module))
    if handler.runs_commands and handler.hooks.startup is None:
        # taken into a module of one's own (to add hooks to it): the command's settings are
        # still read at start
        startup = getattr(sys.modules[COMMAND_MODULE], "startup", None)
        handler = replace(handler, hooks=replace(handler.hooks, startup=startup))
    return handler


def _hooks(name: str, module: ModuleType) -> Hooks:
    found: dict[str, Callable[..., Any]] = {}
    for hook in HOOK_NAMES:
        value = getattr(module, hook, None)
        if value is None:
            continue
        if not callable(value):
            raise HandlerError(f"handler {name!r}: the module's {hook!r} is not callable")
        found[hook] = value
    return Hooks(**found)


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - an async __call__ on an object
    return call is not None and inspect.iscoroutinefunction(call)


def _wants_context(name: str, func: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        raise HandlerError(f"handler {name!r} must accept the payload as its first argument")
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only:
        raise HandlerError(
            f"handler {name!r} must take (payload) or (payload, ctx): it has the required "
            f"keyword-only argument {keyword_only[0]!r}, which no call gives it"
        )
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2:
        raise HandlerError(
            f"handler {name!r} must take (payload) or (payload, ctx), "
            f"not {len(required)} required arguments"
        )
    return len(positional) >= 2
