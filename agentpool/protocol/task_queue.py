"""A queue and every call that changes or reads it (each state change one Lua script: one
round trip, atomic)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import weakref
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentpool.coalesce import Coalescer
from agentpool.connection import connections_busy_for, is_cluster, node_of_key
from agentpool.direct import DEFAULT_LIMIT as DEFAULT_LINE_LIMIT
from agentpool.direct import BlockingScriptLine, ScriptLine
from agentpool.durability import (
    DEFAULT_REPLICA_TIMEOUT,
    Durability,
    NotReplicated,
    parse_durability,
    wait_command,
)
from agentpool.forks import ForkSafeLock
from agentpool.lua_source import script_source
from agentpool.protocol.bounds import (
    COMPLETE_CHUNK,
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_PAYLOAD_BYTES,
    FINAL_STATES,
    FIRST_LOOK_SECONDS,
    LISTEN_SECONDS,
    MAX_ATTEMPTS_LIMIT,
    MAX_DELAY_SECONDS,
    MAX_ERROR_CHARS,
    MAX_PRIORITY,
    MAX_SUBMIT_CHUNK,
    MAX_TENANT_RUNS,
    NEXT_ENTRY_BYTES,
    QUEUE_NAME,
    STATE_SETS,
    TASK_LIST_STATES,
    WAIT_RECONNECT_SECONDS,
    WORKER_LIVENESS_WINDOW,
)
from agentpool.protocol.encoding import (
    after_arg,
    claim_args,
    encode_event,
    encode_payload,
    encode_result,
    keys_for,
    seconds_given,
    storable_text,
    stored_expiry_ms,
    stored_timeout_ms,
)
from agentpool.protocol.ids import call_id, key_prefix, new_task_id, worker_id
from agentpool.protocol.records import (
    CancelOutcome,
    ClaimBatch,
    ClaimedTask,
    DeadLettersCut,
    DeadRequeued,
    FailOutcome,
    Heartbeat,
    InstanceState,
    ProtocolError,
    QueueFigures,
    ReapResult,
    RequeueResult,
    RunEvents,
    TaskEvent,
    TaskInfo,
    TaskNotFound,
    WorkerInfo,
    WorkerState,
)
from agentpool.protocol.replies import (
    as_text,
    claim_batch,
    json_or_raw,
    listed_ids,
    queue_figures,
    raise_unknown_after,
    redis_seconds,
    requeue_result,
    run_starts,
    submitted_id,
    task_event,
    task_info,
    worker_states,
)
from agentpool.protocol.round_trips import scripts_in_one_trip
from agentpool.protocol.tenants import (
    CAP_TEXT,
    TENANT_SETS,
    WEIGHT_TEXT,
    TenantCaps,
    TenantLoads,
    tally_tenants,
    tenant_arg,
    tenant_cap_arg,
    tenant_weight_arg,
)
from agentpool.protocol.waiting import (
    DoneSignal,
    follows_allowed,
    news_of,
    not_final,
    retry_delay,
    silence,
    subscriptions_allowed,
    time_left,
    waits_subscribed,
    worth_retrying,
)
from agentpool.redis_errors import REDIS_FAILURES, TASKS_NOT_STORED, RedisFull, redis_full
from agentpool.seconds import given_text, seconds_text, short_repr

_EVENT_ID = re.compile(r"(\d+)(?:-(\d+))?")
"""A stream entry id as `events(after=...)` takes it: <milliseconds>-<sequence>, or the
milliseconds alone."""
_LARGEST_ID_PART = 2**64 - 1
DEAD_LETTER_PAGE = 1000
"""The most dead tasks one script call requeues or purges."""
CANCEL_WAITING_OF_PASSES = 5
"""The most passes `cancel_waiting_of` makes over a queue's waiting tasks."""


def _checked_after(after: str) -> str:
    """`events`' `after`, refused before Redis answers it with its own error (a part past
    64 bits, or the largest id, after which Redis reads no interval at all)."""
    match = _EVENT_ID.fullmatch(after) if isinstance(after, str) else None
    parts = (int(match[1]), int(match[2] or 0)) if match else (0, 0)
    if match is None or max(parts) > _LARGEST_ID_PART or min(parts) == _LARGEST_ID_PART:
        raise ProtocolError(
            f"after must be an event id, <milliseconds>-<sequence> as TaskEvent.id gives it "
            f"(e.g. 1700000000000-0), got {short_repr(after)}")
    return after


follows_blocking: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""`TaskQueue.events` followers whose blocking XREAD is in flight, per client: each holds a
pooled connection until its read returns; kept under `follows_allowed`."""


def _pool_size(redis: Any) -> int | None:
    """A client's pool's `max_connections` (None: a Cluster client's, not capped)."""
    size: int | None = getattr(getattr(redis, "connection_pool", None), "max_connections", None)
    return size


def _may_subscribe(redis: Any) -> bool:
    """Whether one more wait on `redis` may hold a subscription (see `subscriptions_allowed`)."""
    return waits_subscribed.get(redis, 0) < subscriptions_allowed(_pool_size(redis))


def _may_block(redis: Any) -> bool:
    """Whether one more follower on `redis` may block in an XREAD (see `follows_allowed`)."""
    return follows_blocking.get(redis, 0) < follows_allowed(_pool_size(redis))


def _all_busy(redis: Any, busy_for: float) -> str:
    """What a wait's TimeoutError says when it was cut off waiting for a pooled connection."""
    return (f"the client's {_pool_size(redis)} connections (max_connections) were all in use "
            f"for the last {seconds_text(round(busy_for, 1))}s")


def _idempotency_arg(key: object) -> str:
    """The submit script's idempotency key: "" for none (None); an empty or blank key is
    refused, not read as none."""
    if key is None:
        return ""
    if not isinstance(key, str) or not key.strip():
        raise ProtocolError(
            f"an idempotency key is a non-blank string or None, got {short_repr(key)}")
    return key


def _not_stored(start: int, total: int) -> str:
    """What a submit_many refused by a full Redis at its task `start` (a chunk's first)
    says."""
    if not start:
        return TASKS_NOT_STORED
    return (f"Redis is full (maxmemory): only the first {start:,} of {total:,} tasks were "
            "stored (their ids in the error's `submitted`)")


_ONE_LOOP_LOCK = ForkSafeLock()


class OneLoop:
    """The event loop the calls of a client's queues run on, and how many of them are in
    flight there (`enter` as one starts, `leave` with the number `enter` gave as it ends).

    A client's pool, script line and submit groups keep their state for one loop at a time
    and follow a new one; shared by two loops at once (threads each running ``asyncio.run``,
    Django's ``async_to_sync``), their calls waited for ever. So a call made on another loop
    while calls are in flight on the one in use raises RuntimeError at once. A loop takes
    over once the one before has no call in flight, no longer runs (closed, or between two
    ``run_until_complete``), or is the parent process's. Each taking over starts a new turn:
    the calls of an earlier one (a stopped loop's, which ran on and took the client back)
    are no longer counted, and their ends count nothing."""

    __slots__ = ("_calls", "_loop", "_pid", "_turn")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls = 0
        self._pid = os.getpid()
        self._turn = 0

    def enter(self) -> int:
        """The turn the call is counted in, for `leave`."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:  # the loop in use counts its own calls, on its own thread
            self._calls += 1
            return self._turn
        with _ONE_LOOP_LOCK:
            if loop is not self._loop:
                self._take_over(loop)
            self._calls += 1
            return self._turn

    def _take_over(self, loop: asyncio.AbstractEventLoop) -> None:
        owner, pid = self._loop, os.getpid()
        if owner is not None and self._calls > 0 and self._pid == pid and owner.is_running():
            raise RuntimeError(
                "this Client has calls in flight on another event loop, and a Client serves "
                "one event loop at a time: make one Client per event loop (per thread that "
                "runs one), or use SyncClient from threads")
        self._loop, self._calls, self._pid = loop, 0, pid
        self._turn += 1

    def leave(self, turn: int) -> None:
        if turn == self._turn and self._calls > 0:
            self._calls -= 1


class TaskQueue:
    """One named queue on one Redis. Cheap to create; scripts load on first use."""

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        durability: Durability | str = Durability.NONE,
        replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
        line: ScriptLine | None = None,
        one_loop: OneLoop | None = None,
    ) -> None:
        """`durability` replicated: submits and completions wait for one replica
        (agentpool.durability). With a `line` (agentpool.direct), script calls on the queue's
        own client go on the line's connections. `one_loop`: the submits keep to one event
        loop at a time (a Client's queues, whose other calls its wrappers keep)."""
        if not QUEUE_NAME.match(name):
            raise ProtocolError(
                f"invalid queue name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        self.redis = redis
        self.name = name
        self.prefix = key_prefix(name)
        self.max_payload_bytes = max_payload_bytes
        self.durability = parse_durability(durability)
        self.replica_timeout = replica_timeout
        self.line = line
        self.one_loop = one_loop
        self._scripts: dict[str, AsyncScript] = {}
        self._submits: Coalescer[list[Any], tuple[int, str, int]] = Coalescer(
            self._submit_group, line.limit if line is not None else DEFAULT_LINE_LIMIT,
            send_one=self._submit_one)

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(script_source(name))
        return script

    async def _run(self, name: str, *args: Any, client: Any = None) -> Any:
        """Run a script of the queue (with `_script`, what `round_trips` calls too)."""
        keys, argv = [self.prefix + "queued"], [self.prefix, *args]
        if self.line is not None and (client is None or client is self.redis):
            return await self.line.run(self._script(name), keys, argv)
        return await self._script(name)(keys=keys, args=argv, client=client)

    def task_key(self, task_id: str) -> str:
        return f"{self.prefix}t:{task_id}"

    def next_key(self, task_id: str) -> str:
        """The list of the tasks submitted to run after the task (see NEXT_ENTRY_BYTES)."""
        return f"{self.prefix}next:{task_id}"

    # -- configuration ---------------------------------------------------------------------

    async def configure(self, *, max_attempts: int | None = None,
                        result_ttl: int | None = None) -> None:
        """Queue-wide defaults used by the scripts (written by workers at start)."""
        mapping: dict[str, int] = {}
        if max_attempts is not None:
            mapping["max_attempts"] = max_attempts
        if result_ttl is not None:
            mapping["result_ttl"] = result_ttl
        if mapping:
            await self.redis.hset(self.prefix + "config", mapping=mapping)  # type: ignore[arg-type]

    # -- producers -------------------------------------------------------------------------

    def _submit_args(self, payload: Any, priority: int, delay: float,
                     idempotency_key: str | None, max_attempts: int | None,
                     expires: float | None = None,
                     task_timeout: float | None = None,
                     after: Iterable[str] | None = None,
                     tenant: str | None = None) -> list[Any]:
        if (isinstance(priority, bool) or not isinstance(priority, int)
                or not 0 <= priority <= MAX_PRIORITY):
            raise ProtocolError(
                f"priority must be an integer between 0 and {MAX_PRIORITY}, got {priority!r}"
            )
        delay = seconds_given("delay", delay)
        if not 0 <= delay <= MAX_DELAY_SECONDS:
            raise ProtocolError(f"delay must be from 0 to {MAX_DELAY_SECONDS} seconds (a year), "
                                f"got {given_text(delay)}")
        if max_attempts is not None and (
                isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT):
            raise ProtocolError(f"max_attempts must be an integer between 1 and "
                                f"{MAX_ATTEMPTS_LIMIT}, got {max_attempts!r}")
        delay_ms = round(delay * 1000)
        expires_ms: int | str = ""
        if expires is not None:
            expires_ms = stored_expiry_ms(expires, delay, delay_ms)
        timeout_ms: int | str = "" if task_timeout is None else stored_timeout_ms(task_timeout)
        raw = encode_payload(payload, self.max_payload_bytes)
        return [
            new_task_id(), raw, priority, delay_ms,
            "" if max_attempts is None else max_attempts,
            _idempotency_arg(idempotency_key), DEFAULT_IDEMPOTENCY_TTL, expires_ms, timeout_ms,
            after_arg(after), tenant_arg(tenant),
        ]

    async def submit(
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
        """Queue a task and return its id (the existing id for a known idempotency key).

        The payload is any JSON value (an object, a list, a prompt string, a number, None) of
        at most `max_payload_bytes` (1 MiB by default) once encoded as JSON; a larger one raises
        PayloadTooLarge and nothing is stored. Priorities run from 0 to 9, higher first; FIFO
        within a priority. A task not started within `expires` seconds of its submit (a first
        run or any later one) is not run: it ends cancelled, its error saying it expired. A
        run of it lasting over `task_timeout` seconds is stopped and fails as one past the
        pool's task timeout does: a task's timeout may shorten the pool's, never lengthen it.

        A task submitted `after` other tasks of this queue (their ids) waits, in the
        ``deferred`` state, until they have all succeeded, and is then queued (a `delay`
        counts from its submit). When one of them ends otherwise (dead-lettered, cancelled,
        expired) it ends cancelled, saying which, and so do the tasks after it. An id the
        queue does not know raises TaskNotFound, and nothing is stored (unless the
        idempotency key names a task already: its id is returned, as for any known key).

        Tasks of a `tenant` (a customer, a user, a project: any name) take turns with other
        tenants' tasks of the same priority: each enters the queue at the turn being served
        or right after its tenant's previous task, whichever is later, so one tenant's
        thousand tasks delay another's next task by at most one task per tenant with tasks
        waiting. Once a queue has tenants, its tasks without one take turns as one more
        tenant (docs/protocol.md, "Tenants take turns").
        """
        args = self._submit_args(payload, priority, delay, idempotency_key, max_attempts,
                                 expires, task_timeout, after, tenant)
        return (await self._submit(args))[0]

    async def submit_once(
        self,
        payload: Any,
        *,
        idempotency_key: str,
        priority: int = 0,
        delay: float = 0,
        max_attempts: int | None = None,
        expires: float | None = None,
        task_timeout: float | None = None,
        after: Iterable[str] | None = None,
        tenant: str | None = None,
    ) -> tuple[str, bool]:
        """:meth:`submit` under an idempotency key, saying whether this call created the task
        (False when the key named one already; a call that reached Redis twice, its reply lost
        the first time, created it): a caller that reports its submits (the operator's
        schedules) reports each task once."""
        args = self._submit_args(payload, priority, delay, idempotency_key, max_attempts,
                                 expires, task_timeout, after, tenant)
        return await self._submit(args)

    async def _submit(self, args: list[Any]) -> tuple[str, bool]:
        # kept here rather than by a wrapper: a coroutine more per submit costs a sixth of a
        # gathered submit's client CPU
        one_loop = self.one_loop
        turn = None if one_loop is None else one_loop.enter()
        try:
            reply = await self._submits.call(args, size=len(args[1]))
        except ResponseError as error:
            if redis_full(error):  # said without the refused script's name and line
                raise RedisFull() from None
            raise
        finally:
            if one_loop is not None and turn is not None:
                one_loop.leave(turn)
        task_id = submitted_id(reply, self.name)
        self._check_replicated("submit", reply[2], task_id)
        return task_id, task_id == args[0]

    async def _submit_one(self, args: list[Any]) -> tuple[int, str, int]:
        if self.durability is Durability.NONE:
            reply = await self._run("submit", *args)
            return int(reply[0]), as_text(reply[1]), 1
        return (await self._submit_group([args]))[0]

    async def _submit_group(self, group: Sequence[list[Any]]) -> list[tuple[int, str, int]]:
        """One script call for concurrent submits (agentpool.coalesce): (created, id, acked)
        each, as the submit script answers."""
        flat = [value for args in group for value in args]
        if self.durability is Durability.NONE:
            reply, acked = await self._run("submit", *flat), 1
        else:
            reply, _, acked = await scripts_in_one_trip(
                self.redis, [(self, "submit", flat), *self._durable_write()],
                then=self._wait_commands())
        return [(int(reply[2 * i]), as_text(reply[2 * i + 1]), int(acked))
                for i in range(len(group))]

    def submit_blocking(
        self,
        line: BlockingScriptLine,
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
        """:meth:`submit` through a blocking line to the same Redis (the blocking producer's
        path: one round trip, no event loop in between)."""
        args = self._submit_args(payload, priority, delay, idempotency_key, max_attempts,
                                 expires, task_timeout, after, tenant)
        script = self._script("submit")
        try:
            reply = cast(list[Any], line.run(script.sha, script.script,
                                             [self.prefix + "queued"], [self.prefix, *args]))
        except ResponseError as error:
            if redis_full(error):  # said without the refused script's name and line
                raise RedisFull() from None
            raise
        return submitted_id((int(reply[0]), as_text(reply[1]), 1), self.name)

    async def submit_many(self, payloads: Iterable[Any], *, priority: int = 0,
                          delay: float = 0, max_attempts: int | None = None,
                          expires: float | None = None, task_timeout: float | None = None,
                          after: Iterable[str] | None = None,
                          idempotency_keys: Iterable[str | None] | None = None,
                          tenant: str | None = None,
                          chunk: int = 500) -> list[str]:
        """Queue many tasks with the same options, in order, one script call per `chunk` (at
        most ``MAX_SUBMIT_CHUNK``); every payload is checked before any is sent.

        With `after`, every task runs after the same tasks (a fan-out behind one step). A task
        named there that the queue does not know raises TaskNotFound: with the first chunk,
        nothing is stored; should it vanish between chunks (its result TTL ran out), the
        error's `submitted` holds the ids of the tasks this call stored before.

        With `idempotency_keys`, one per payload (None for a task without one), a key seen
        before gives the existing task's id in its place, as :meth:`submit` does: the same
        fan-out submitted again (a retried request) queues only the tasks not queued yet.

        With a `tenant`, the tasks take turns with other tenants' tasks as :meth:`submit`
        says: a tenant's fan-out of a thousand waits behind, not ahead of, the others."""
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        chunk = min(chunk, MAX_SUBMIT_CHUNK)
        items = list(payloads)
        keys = keys_for(items, idempotency_keys)
        all_args = [self._submit_args(p, priority, delay, key, max_attempts, expires,
                                      task_timeout, tenant=tenant)
                    for p, key in zip(items, keys, strict=True)]
        after_ids = after_arg(after)
        if after_ids:
            for args in all_args:
                args[-2] = after_ids  # the submit script's `after` value per task
        plain = (not delay and max_attempts is None and expires is None
                 and task_timeout is None and not after_ids and not any(keys)
                 and tenant is None)
        ids: list[str] = []
        created: list[str] = []  # by this call (not those a known key named)
        replicated = True
        for start in range(0, len(all_args), chunk):
            part = all_args[start:start + chunk]
            if plain:  # ids and payloads only: about 30 % less Redis CPU per task
                call = (self, "submit_many", [priority, *(x for a in part for x in a[:2])])
            else:  # the submit script's group form: each task with all its options
                call = (self, "submit", [x for args in part for x in args])
            try:
                replies = await scripts_in_one_trip(self.redis, [call, *self._durable_write()],
                                                     then=self._wait_commands())
            except ResponseError as error:
                if redis_full(error):
                    raise RedisFull(_not_stored(start, len(all_args)), created) from None
                raise
            if self.durability is Durability.REPLICATED:
                replicated = replicated and int(replies[-1]) >= 1
            if plain:
                ids.extend(args[0] for args in part)
                created.extend(args[0] for args in part)
                continue
            answers = replies[0]
            for i in range(len(part)):
                if int(answers[2 * i]) < 0:
                    raise_unknown_after(as_text(answers[2 * i + 1]), self.name, submitted=created)
            for i in range(len(part)):
                ids.append(as_text(answers[2 * i + 1]))
                if int(answers[2 * i]) == 1:
                    created.append(ids[-1])
        self._check_replicated("submit", int(replicated), ids)
        return ids

    def _durable_write(self) -> list[tuple[TaskQueue, str, Sequence[Any]]]:
        """With replicated durability, the call that follows the writes in their pipeline: a
        write of its own (durable.lua). The connection's last write is then this one, so the
        WAIT after it also covers any earlier write of the same server that a call repeated
        with no write of its own (a duplicate submit, a completion already recorded)."""
        return [(self, "durable", [])] if self.durability is Durability.REPLICATED else []

    def _wait_commands(self) -> tuple[tuple[Any, ...], ...]:
        """With replicated durability, the WAIT that ends the pipeline (after `_durable_write`)."""
        if self.durability is not Durability.REPLICATED:
            return ()
        return (wait_command(self.replica_timeout),)

    def _check_replicated(self, what: str, acked: Any, result: Any) -> None:
        if int(acked) < 1:
            raise NotReplicated(what, result, self.replica_timeout)

    async def get(self, task_id: str) -> TaskInfo | None:
        """The task, None when the queue does not know it. One round trip (two for a queued
        task of a tenant: whether it waits for its tenant's cap)."""
        info = task_info(task_id, await self.redis.hgetall(self.task_key(task_id)))
        return None if info is None else (await self._capped_marked([info]))[0]

    async def results_of(self, task_ids: Sequence[str]) -> dict[str, Any]:
        """The results of these tasks, by id, in their order (a run's ``ctx.results_before()``
        reads those of the tasks its claim says it ran after); a task whose record is gone (kept
        for the result TTL after it finished) is left out. One round trip."""
        return {info.id: info.result for info in await self.get_many(task_ids)}

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskInfo]:
        """Several tasks in one round trip (two when any is queued with a tenant: whether it
        waits for its tenant's cap); ids with no task are left out."""
        return await self._capped_marked(await self._records(task_ids))

    async def _records(self, task_ids: Sequence[str]) -> list[TaskInfo]:
        """The tasks as their records hold them (never `capped`), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.task_key(task_id))
            replies = await pipe.execute()
        infos = (task_info(i, raw) for i, raw in zip(task_ids, replies, strict=True))
        return [info for info in infos if info is not None]

    async def _capped_marked(self, infos: list[TaskInfo]) -> list[TaskInfo]:
        """`infos`, those parked for their tenant's cap marked `capped` (a task's record does
        not say: it stays ``queued`` while it waits out of the queue)."""
        asked = [i for i, info in enumerate(infos) if info.state == "queued" and info.tenant]
        if not asked:
            return infos
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in asked:
                pipe.zscore(f"{self.prefix}parked:{infos[i].tenant}", infos[i].id)
            scores = await pipe.execute()
        marked = list(infos)
        for i, score in zip(asked, scores, strict=True):
            if score is not None:
                marked[i] = replace(marked[i], capped=True)
        return marked

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Wait until the task reaches a final state; raises TimeoutError after `timeout`, and
        TaskNotFound for an id the queue does not know: never submitted, or finished longer
        ago than the queue's result TTL (a day by default), whose record has expired; or, for
        a task this wait saw queued or running, because Redis lost its data.

        Once waiting, a lost connection (a Redis failover) is retried for up to
        WAIT_RECONNECT_SECONDS in a row; a Redis unreachable before the task was first read,
        or refusing the credentials, raises at once. A full Redis (maxmemory reached) refuses
        the flag that has finishes published: the task is then read again each second."""
        return (await self.wait_many([task_id], timeout))[0]

    async def wait_many(self, task_ids: Iterable[str],
                        timeout: float | None = None) -> list[TaskInfo]:
        """:meth:`wait` for several tasks (a fan-out's) at once, on one subscription: their
        final infos, in the order of the ids (each once); TimeoutError once `timeout` passed
        before the last finished (:meth:`as_finished` hands each over as it finishes)."""
        ids = list(dict.fromkeys(task_ids))
        infos = {info.id: info async for info in self.as_finished(ids, timeout)}
        return [infos[task_id] for task_id in ids]

    async def as_finished(self, task_ids: Iterable[str],
                          timeout: float | None = None) -> AsyncGenerator[TaskInfo, None]:
        """Each task's final info as it reaches its final state (those final already first),
        each id once, as :meth:`wait` waits for one: TaskNotFound for an id the queue does not
        know (checked for all before anything is handed over), TimeoutError once `timeout`
        seconds passed since the call, saying how many of the tasks were not final ("2 of 5
        tasks of queue 'q' not final after 60s", with "; Redis did not answer" when no read
        was answered, or the last one not for a second or more; the tasks final by the first
        read are handed over first, even with timeout 0), lost connections retried the same
        way. A caller that stops before the last closes it (``contextlib.aclosing``), which
        ends its subscription.

        One subscription to the queue's finishes serves every id: a finish published reads
        that task's state again, and a second without one, a renewal of the listening flag
        (every LISTEN_SECONDS / 3, however busy the channel) or a reconnection reads every
        pending task's, a pipelined HGET each (a subscription confirmed late, a finish
        published while it was being renewed, a flag Redis lost: the read catches up with
        whatever the channel missed). A task's record is read whole once, when it is final.
        While the client's waits hold `subscriptions_allowed` subscriptions (32, at most half
        the pool; followers of `events` cannot take them), a wait reads its tasks once a second
        instead, and subscribes at the first of those reads that finds one free (then reads
        them all again: a finish before the subscription is not missed). The loop checks the
        deadline itself as well: on Python 3.11 a cancellation that meets a finishing
        ``asyncio.wait_for`` inside redis-py is dropped, and a timeout's single cancellation
        with it."""
        pending: dict[str, str | None] = dict.fromkeys(task_ids)
        """The ids still to hand over, each with its state last read (None: not read yet)."""
        if not pending:
            return
        total = len(pending)
        subscribed = False
        done = DoneSignal(self.redis, self.prefix + "done", poll=True)
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        failing_since: float | None = None
        unanswered_since: float | None = None
        """When the read Redis has not answered yet (or its first try, failing since) began."""
        reached = False
        listened = -float(LISTEN_SECONDS)
        to_read, news_first = set(pending), False
        try:
            while pending:
                if not subscribed and _may_subscribe(self.redis):
                    waits_subscribed[self.redis] = waits_subscribed.get(self.redis, 0) + 1
                    subscribed, news_first, listened = True, False, -float(LISTEN_SECONDS)
                    done = DoneSignal(self.redis, self.prefix + "done")
                finished: list[TaskInfo] = []
                try:
                    async with asyncio.timeout(
                            None if deadline is None
                            else time_left(deadline, float("inf")) if reached
                            else max(deadline - time.monotonic(), FIRST_LOOK_SECONDS)):
                        if news_first:
                            to_read = await news_of(done, pending, deadline,
                                                     until=listened + LISTEN_SECONDS / 3)
                        unanswered_since = unanswered_since or time.monotonic()
                        if subscribed and time.monotonic() - listened > LISTEN_SECONDS / 3:
                            await done.subscribe()
                            try:
                                await self.listen_for_finishes()
                            except ResponseError as error:  # full: a read each second
                                if not redis_full(error):
                                    raise
                            listened, to_read = time.monotonic(), set(pending)
                        finished = await self._finished_among(to_read, pending)
                        reached, news_first, failing_since = True, True, None
                        unanswered_since = None
                except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                    if isinstance(error, TimeoutError) and deadline is not None:
                        busy_for = connections_busy_for(self.redis, began)
                        unanswered_for = (None if unanswered_since is None
                                          else time.monotonic() - unanswered_since)
                        raise not_final(len(pending), total, self.name, timeout,
                                        silence(reached, unanswered_for) if busy_for is None
                                        else _all_busy(self.redis, busy_for)) from None
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if not worth_retrying(error, reached=reached,
                                          failing_for=now - failing_since,
                                          patience=WAIT_RECONNECT_SECONDS):
                        raise
                    to_read, news_first = set(pending), False
                    await asyncio.sleep(0.2)
                for info in finished:
                    del pending[info.id]
                    yield info
        finally:
            if subscribed:
                waits_subscribed[self.redis] -= 1
            await done.aclose()

    async def _finished_among(self, task_ids: Iterable[str],
                              pending: dict[str, str | None]) -> list[TaskInfo]:
        """The tasks of `task_ids` now final, read whole; `pending` notes the others' states.
        TaskNotFound for one with no record (see :meth:`wait`)."""
        ids = [task_id for task_id in task_ids if task_id in pending]
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.task_key(task_id), "state")
            states = [None if raw is None else as_text(raw) for raw in await pipe.execute()]
        final = []
        for task_id, state in zip(ids, states, strict=True):
            if state is None:
                raise self._not_found(task_id, pending[task_id])
            if state in FINAL_STATES:
                final.append(task_id)
            else:
                pending[task_id] = state
        infos = {info.id: info for info in await self.get_many(final)}
        finished = []
        for task_id in final:  # read again whole: it may have moved on between the two reads
            info = infos.get(task_id)
            if info is None:  # its record expired (or was purged) in between
                raise self._not_found(task_id, None)
            if info.done:
                finished.append(info)
            else:  # requeued from the dead letters, or brought back by such a requeue
                pending[task_id] = info.state
        return finished

    def _not_found(self, task_id: str, seen: str | None) -> TaskNotFound:
        if seen is not None:
            return TaskNotFound(
                f"task {task_id} of queue {self.name} was {seen} and is gone: Redis lost its "
                "data (a restart without persistence, a FLUSHALL, a failover to a replica "
                "that had not synced)")
        return TaskNotFound(f"no task {task_id} in queue {self.name}")

    async def has_room(self) -> bool:
        """Whether Redis takes a write that may grow memory (False: it is full, see
        ``refuse_when_full`` in common.lua). Writes nothing: SET ... XX of a key that never
        exists."""
        try:
            await self.redis.set(self.prefix + "full", "", xx=True)
        except ResponseError as error:
            if redis_full(error):
                return False
            raise
        return True

    async def listen_for_finishes(self) -> None:
        """Ask the scripts to publish finishes on the ``done`` channel for a while.

        Finishes are published only while someone listens: call this after subscribing, before
        reading what the finishes would change, and again at least every
        ``LISTEN_SECONDS / 2`` while listening.
        """
        await self.redis.set(self.prefix + "listening", 1, ex=LISTEN_SECONDS)

    def events_key(self, task_id: str) -> str:
        return f"{self.prefix}ev:{task_id}"

    async def events(self, task_id: str, *, after: str | None = None, follow: bool = True,
                     block_seconds: float = 1.0) -> AsyncGenerator[TaskEvent, None]:
        """The task's events, oldest first, from the start (`after` None or "", as an absent
        Last-Event-ID header gives it) or after the event id `after`.

        With `follow`, waits for new ones until the task is final (its ``final`` event is the
        last one yielded; a task that never emitted ends without one). Resumes from the last
        event it yielded after a lost connection, so none is missed or repeated (unless the
        stream's cap dropped it first); a connection lost for WAIT_RECONNECT_SECONDS in a row
        raises, as :meth:`wait` does. Raises TaskNotFound for an unknown task.

        A follower waits for new events in an XREAD that blocks up to `block_seconds` on one
        of the client's pooled connections while the client's followers blocked that way are
        under `follows_allowed` (16, at most a quarter of the pool, apart from waits' half);
        more followers read without blocking every `block_seconds` (the same two commands a
        second, an event up to that much later), each asking again before its every read, so
        that other calls and waits always find a connection.
        """
        last = "0-0" if after in (None, "") else _checked_after(after)
        key = self.events_key(task_id)
        info = await self.get(task_id)
        if info is None:
            raise TaskNotFound(f"no task {task_id} in queue {self.name}")
        follow = follow and not info.done  # a final task's stream is complete: no waiting
        failures = 0
        failing_since: float | None = None
        after_final = False
        while True:
            try:
                if after_final and await self._ended_at(task_id, key, last):
                    return
                after_final = False
                entries: list[Any]
                if follow:
                    entries = await self._entries_after(key, last, block_seconds)
                else:
                    entries = cast(list[Any], await self.redis.xrange(
                        key, min=f"({last}", count=1000))
                failures, failing_since = 0, None
                if not entries:
                    info = await self.get(task_id)
                    if info is None and not follow:
                        return
                    if info is None:
                        raise TaskNotFound(f"task {task_id} in queue {self.name} is gone")
                    if not info.done and follow:
                        continue
                    # final: whatever is left (a stream that outlived no final event)
                    entries = cast(list[Any], await self.redis.xrange(
                        key, min=f"({last}", count=1000))
                    if not entries:
                        return
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                now = time.monotonic()
                failing_since = failing_since or now
                if not worth_retrying(error, failing_for=now - failing_since,
                                      patience=WAIT_RECONNECT_SECONDS):
                    raise
                failures += 1
                await asyncio.sleep(retry_delay(failures, base=0.1, cap=2.0))
                continue
            for entry_id, fields in entries:
                event = task_event(entry_id, fields)
                last = event.id
                yield event
            after_final = event.final

    async def _entries_after(self, key: str, last: str, block_seconds: float) -> list[Any]:
        """The stream's entries after `last`, waiting up to `block_seconds` for the first: in
        a read that blocks, holding a pooled connection, while `follows_allowed`; else in one
        that does not, then a sleep when it found none."""
        if _may_block(self.redis):
            follows_blocking[self.redis] = follows_blocking.get(self.redis, 0) + 1
            try:
                reply = cast(list[Any], await self.redis.xread(
                    {key: last}, count=1000, block=max(1, round(block_seconds * 1000))))
            finally:
                follows_blocking[self.redis] -= 1
        else:
            reply = cast(list[Any], await self.redis.xread({key: last}, count=1000))
            if not reply:
                await asyncio.sleep(block_seconds)
        return cast(list[Any], reply[0][1]) if reply else []

    async def _ended_at(self, task_id: str, key: str, last: str) -> bool:
        """A ``final`` event ends the stream unless the task went on (a dead task requeued
        runs again, its next attempt's events after that ``final``)."""
        info = await self.get(task_id)
        if info is not None and not info.done:
            return False
        return not await self.redis.xrange(key, min=f"({last}", count=1)

    async def cancel(self, task_id: str) -> CancelOutcome:
        return CancelOutcome(as_text(await self._run("cancel", task_id, call_id())))

    async def cancel_waiting(self, *, batch: int = 1000) -> int:
        """Cancel every task waiting to run (queued, deferred, or delayed: a delayed submit, a
        retry waiting out its backoff) that was submitted before this call, as :meth:`cancel`
        cancels one; running tasks go on, and tasks submitted meanwhile are left (unless they
        run after a task cancelled here: they end with it). Each script call removes or passes
        over at most `batch` entries, so that Redis serves others between them. Returns how
        many were cancelled, those ended with a task they run after included.

        A call goes on where the last one stopped: in the queue after the last task it passed
        over (a task placed in turn after the call began may lie among older ones), in the
        delayed set after the last newer entry it passed over (by its due time and id). A task
        that enters the queue meanwhile where a call already looked (handed back, come due,
        released by the end of the tasks it ran after) may hide one from it, so a pass that
        cancelled anything is followed by another from the start, until one cancels
        nothing."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a whole number of at least 1, got {batch!r}")
        last = int(await self.redis.get(self.prefix + "seq") or 0)
        total = this_pass = band = 0
        cursor = after = tops = ""
        while True:
            done, more, cursor_raw, band, after_raw, tops_raw = await self._run(
                "cancel_waiting", last, batch, cursor, band, after, tops)
            cursor, after, tops = as_text(cursor_raw), as_text(after_raw), as_text(tops_raw)
            total += int(done)
            this_pass += int(done)
            if int(more):
                continue
            if not this_pass:
                return total
            this_pass = band = 0
            cursor = after = tops = ""

    async def cancel_waiting_of(self, tenant: str | None, *, batch: int = 500) -> int:
        """Cancel the tasks of `tenant` (None: those without one) waiting to run (queued,
        parked for the tenant's cap, deferred, delayed) that were submitted before this call,
        as :meth:`cancel` cancels one; running tasks go on. The waiting sets are read page by
        page first (tenant_page.lua, as :meth:`tenant_task_ids` reads them), then the tasks
        found are cancelled `batch` at a time, one round trip each, each only if it still
        waits and was submitted before the call (by the queue's submit counter, as
        :meth:`cancel_waiting` tells them; a task claimed meanwhile runs on). A task that
        moves from one set to another while a pass reads them (a claim parks it for the cap,
        it comes due, the task it waits for ends) may hide from that pass: passes repeat
        until one cancels nothing, two at least and CANCEL_WAITING_OF_PASSES at most (the
        tenant's runs that keep failing into a retry each make one more: a few may be left
        waiting; call again). Each pass reads the whole of those sets, every tenant's tasks
        (300,000: about a second). Returns how many were cancelled (not counting the tasks
        that run after them, which end with them)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a whole number of at least 1, got {batch!r}")
        last = int(await self.redis.get(self.prefix + "seq") or 0)
        sets = ([f"parked:{tenant}"] if tenant is not None else []) + [
            STATE_SETS[state] for state in ("queued", "deferred", "delayed")]
        total, passes = 0, 0
        while True:
            found: dict[str, None] = {}
            for name in sets:
                async for _, rows in self._tenant_pages(name, sys.maxsize, 1_000):
                    found.update((task_id, None) for task_id, owner, _ in rows
                                 if owner == tenant)
            ids, cancelled = list(found), 0
            for start in range(0, len(ids), batch):
                replies = await scripts_in_one_trip(self.redis, [
                    (self, "cancel", [task_id, call_id(), "waiting", last])
                    for task_id in ids[start:start + batch]])
                cancelled += sum(as_text(reply) == CancelOutcome.CANCELLED for reply in replies)
            total, passes = total + cancelled, passes + 1
            if (not cancelled and passes >= 2) or passes == CANCEL_WAITING_OF_PASSES:
                return total

    # -- workers ---------------------------------------------------------------------------

    async def claim(self, worker: str, count: int, lease_seconds: float,
                    promote_limit: int = 100) -> ClaimBatch:
        return claim_batch(await self._run(
            "claim", *claim_args(worker, count, lease_seconds, promote_limit)))

    async def wait_and_claim(self, worker: str, count: int, lease_seconds: float,
                             timeout: float, promote_limit: int = 100) -> ClaimBatch:
        """Block up to `timeout` seconds for a submit's wake-up signal, then claim, in one
        round trip: the claim is pipelined behind the BLPOP, so Redis runs it the moment the
        wait ends (a signal, or the timeout, when due delayed tasks are promoted).

        Redis runs that claim even when the worker cannot take the reply (frozen, its loop
        blocked, partitioned): the tasks then wait for their lease to run out. Workers keep
        `count` at 1 and claim the rest with :meth:`claim` when `queued_left` says there is
        more, so such a worker holds back one task at most.

        Needs a connection of its own; workers call it on a dedicated client. A wait cut
        short (cancelled) may have claimed: its caller hands back what it holds unknowingly.
        """
        args = claim_args(worker, count, lease_seconds, promote_limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.blpop([self.prefix + "wake"], timeout=max(timeout, 0.01))
            pipe.execute_command("EVALSHA", self._script("claim").sha, 1,
                                 self.prefix + "queued", self.prefix, *args)
            woken, reply = await pipe.execute(raise_on_error=False)
        if isinstance(woken, Exception):
            raise woken
        if isinstance(reply, NoScriptError):  # Redis restarted: the claim did not run
            reply = await self._run("claim", *args)
        elif isinstance(reply, Exception):
            raise reply
        return claim_batch(reply)

    async def complete(self, task: ClaimedTask, result: Any = None) -> bool:
        """Record success; False when this holder was fenced off (the task moved on)."""
        encoded = encode_result(result)
        if self.durability is Durability.REPLICATED:
            return (await self.record([], [(task, encoded)]))[0]
        reply = await self._run("complete", task.id, task.token, encoded)
        return bool(reply[0])

    async def complete_many(self, done: Sequence[tuple[ClaimedTask, Any]]) -> list[bool]:
        """Record several successes in one round trip (a worker's completions batch up)."""
        return await self.record([], [(task, encode_result(result)) for task, result in done])

    async def record(self, events: Sequence[RunEvents], done: Sequence[tuple[ClaimedTask, str]],
                     *, call: str | None = None) -> list[bool]:
        """Append runs' events and record successes (results as :func:`encode_result` made
        them), in that order and one round trip. Returns, per success, False when it was
        fenced off (with replicated durability, successes wait for a replica: NotReplicated
        carries that list when none acknowledged in time).

        `call` identifies the call: sending the same events again with the same `call` (after
        an error that may have come after Redis recorded them) appends them once.
        """
        call = call or call_id()
        calls: list[tuple[TaskQueue, str, Sequence[Any]]] = [
            (self, "events", [run.task_id, run.attempt, call, run.token,
                              *(x for item in run.items for x in item)])
            for run in events
        ]
        for start in range(0, len(done), COMPLETE_CHUNK):
            flat = [x for task, result in done[start:start + COMPLETE_CHUNK]
                    for x in (task.id, task.token, result)]
            calls.append((self, "complete", flat))
        if not calls:
            return []
        wait = self._wait_commands() if done else ()
        if wait:
            calls += self._durable_write()
        replies = await scripts_in_one_trip(self.redis, calls, then=wait)
        acked = replies.pop() if wait else 1
        if wait:
            replies.pop()  # the durable write's
        recorded = [bool(r) for reply in replies[len(events):] for r in reply]
        self._check_replicated("completion", acked, recorded)
        return recorded

    async def checkpoint(self, task: ClaimedTask, raw_state: str) -> bool:
        """Save a run's checkpoint (JSON from :func:`encode_checkpoint`); False when this
        holder was fenced off (the task moved on), which Redis counts."""
        return bool(await self._run("checkpoint", task.id, task.token, raw_state))

    async def checkpoint_state(self, task_id: str) -> Any:
        """The task's saved checkpoint, decoded (None when there is none)."""
        return json_or_raw(await self.redis.get(f"{self.prefix}cp:{task_id}"))

    async def emit(self, task_id: str, kind: str, data: Any = None, *, attempt: int = 0) -> int:
        """Append one event to a task's stream (workers batch theirs through :meth:`record`)."""
        raw = encode_event(kind, data)
        return int(await self._run("events", task_id, attempt, call_id(), "", kind, raw))

    async def fail(self, task: ClaimedTask, error: str, *, retryable: bool = True,
                   delay: float | None = None) -> FailOutcome:
        """Record a failed run: retry after `delay` seconds (a backoff by default) while
        attempts remain, else dead-letter; EXPIRED when the retry would come due past the
        task's expiry (it ends cancelled, as expired)."""
        if delay is None:
            delay = retry_delay(task.attempts)
        reply = await self._run("fail", task.id, task.token, storable_text(error[:MAX_ERROR_CHARS]),
                                int(retryable), round(delay * 1000), "fail")
        return FailOutcome(as_text(reply))

    async def cancelled(self, task: ClaimedTask) -> FailOutcome:
        """Record that a running task stopped on its cancel request."""
        return FailOutcome(as_text(await self._run("fail", task.id, task.token, "cancelled", 0, 0,
                                              "cancel")))

    async def release(self, task: ClaimedTask, reason: str) -> FailOutcome:
        """Hand an unfinished task back to the queue without spending an attempt (drain)."""
        return FailOutcome(as_text(await self._run("fail", task.id, task.token, reason, 1, 0,
                                              "release")))

    async def heartbeat(self, worker: WorkerInfo, held: Mapping[str, str],
                        lease_seconds: float, *,
                        settings: tuple[int, int] | None = None) -> Heartbeat:
        """Say the worker is alive and extend the leases of the tasks it holds (id -> token).
        `settings` (max attempts, result TTL), as :meth:`configure` writes them, are written
        again when the queue has none: Redis lost its data (``Heartbeat.settings_restored``)."""
        info = json.dumps({
            "state": worker.state, "done": worker.done, "failed": worker.failed,
            "concurrency": worker.concurrency, "started": worker.started,
            "runsSince": list(worker.runs_since),
            **({"limitWindow": worker.limit_window} if worker.limit_window is not None else {}),
            **({"notReady": worker.not_ready} if worker.not_ready else {}),
        })
        pairs = [x for item in held.items() for x in item]
        max_attempts, result_ttl = settings if settings is not None else ("", "")
        lost, cancel, drain, overdue_ms, restored = await self._run(
            "heartbeat", worker.worker_id, worker.pod, int(lease_seconds * 1000), info,
            max_attempts, result_ttl, *pairs
        )
        return Heartbeat([as_text(i) for i in lost], [as_text(i) for i in cancel], bool(drain),
                         int(overdue_ms) / 1000, bool(restored))

    async def request_drain(self, pod_or_worker: str) -> None:
        """Ask a pod's workers (or one instance) to stop claiming and finish what they hold."""
        await self.redis.hset(self.prefix + "drain", pod_or_worker, int(time.time()))

    async def clear_drain(self, pod_or_worker: str) -> None:
        await self.redis.hdel(self.prefix + "drain", pod_or_worker)

    async def drain_requests(self) -> dict[str, float]:
        raw = await self.redis.hgetall(self.prefix + "drain")
        return {as_text(k): float(v) for k, v in raw.items()}

    # -- tenants ---------------------------------------------------------------------------

    async def tenant_weights(self) -> dict[str, int]:
        """The tenants given a weight (:meth:`set_tenant_weights`); any other weighs 1. A
        value that is not a weight (written by hand) is left out."""
        return {tenant: int(weight) for tenant, weight in (await self._raw_weights()).items()
                if WEIGHT_TEXT.fullmatch(weight)}

    async def _raw_weights(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.prefix + "weights")
        return {as_text(tenant): as_text(weight) for tenant, weight in raw.items()}

    async def set_tenant_weights(self, weights: Mapping[str, int]) -> bool:
        """Make `weights` the queue's tenants' weights (tenants left out weigh 1), in one
        MULTI; True when that changed them. A tenant of weight w takes w turns to one of a
        tenant of weight 1 from its next task on (tasks already queued keep their places).
        The operator sets them from ``spec.tenants``; a producer's ACL user cannot."""
        wanted = {tenant_arg(tenant): str(tenant_weight_arg(weight))
                  for tenant, weight in weights.items()}
        return await self._replace_hash("weights", await self._raw_weights(), wanted)

    async def _replace_hash(self, key: str, held: Mapping[str, str],
                            wanted: Mapping[str, str]) -> bool:
        """Make the queue's hash `key` hold `wanted` in one MULTI, unless it `held` that."""
        if held == wanted:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.prefix + key)
            if wanted:
                pipe.hset(self.prefix + key, mapping=cast(Any, dict(wanted)))
            await pipe.execute()
        return True

    async def tenant_caps(self) -> TenantCaps:
        """The caps on tenants' runs at once (:meth:`set_tenant_caps`). A value that is not a
        cap (written by hand) is left out, as the scripts ignore it."""
        raw = {tenant: cap for tenant, cap in (await self._raw_caps()).items()
               if CAP_TEXT.fullmatch(cap) and int(cap) <= MAX_TENANT_RUNS}
        default = raw.pop("", None)
        return TenantCaps({t: int(c) for t, c in raw.items()},
                          int(default) if default is not None else None)

    async def _raw_caps(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.prefix + "caps")
        return {as_text(tenant): as_text(cap) for tenant, cap in raw.items()}

    async def set_tenant_caps(self, caps: Mapping[str, int], default: int | None = None
                              ) -> bool:
        """Cap how many tasks of each tenant run at once: `caps` per tenant named, `default`
        for every other tenant (None: none); tasks without a tenant are never capped. One
        script call (set_caps.lua); True when that changed them, and then the tasks parked
        for a cap that now leaves room go back to the queue in the same step. A claim parks
        the tasks of a tenant that has as many runs as its cap until one of them ends; they
        keep their places. Caps set on a queue that had none count the runs in progress,
        also in that step. The operator sets them from ``spec.tenants`` and
        ``spec.tenantMaxRunning``; a producer's ACL user cannot."""
        wanted = {tenant_arg(tenant): str(tenant_cap_arg(cap)) for tenant, cap in caps.items()}
        if default is not None:
            wanted[""] = str(tenant_cap_arg(default))
        if wanted == await self._raw_caps():
            return False
        await self._run("set_caps", *(part for pair in wanted.items() for part in pair))
        return True

    async def tenant_loads(self, *, most: int = 100_000, page: int = 1_000) -> TenantLoads:
        """Per tenant, its queued, running and later tasks and its oldest queued task's
        submit time, with its weight (and the weighted tenants with nothing here): read in
        pages of `page` tasks (tenant_page.lua), at most `most` per set. Read while tasks
        move: each set's tasks are read once each, but a task claimed after its page of the
        queued set was read counts again as running, and one that entered ahead of the pages
        read is not counted."""
        weights, caps = await self.tenant_weights(), await self.tenant_caps()
        read: list[tuple[str, str | None, float | None]] = []
        total = 0
        for kind, set_name in [*TENANT_SETS, *[("queued", name)
                                                for name in await self._parked_sets()]]:
            size = 0
            async for set_size, rows in self._tenant_pages(set_name, most, page):
                size = set_size
                read += [(kind, tenant, created) for _, tenant, created in rows]
            total += size
        return TenantLoads(tally_tenants(weights, read, caps), len(read), total)

    async def tenant_task_ids(self, state: str, tenant: str | None, limit: int, *,
                              most: int = 10_000) -> tuple[list[str], int, bool]:
        """The ids of the first `limit` tasks of `tenant` (None: those without one) in `state`
        (one of TASK_LIST_STATES), in `list_tasks`' order but for its queued tasks parked for
        its cap, listed first (they run first); how many of its tasks there are
        among the first `most` of that state (read in pages of 1,000); and whether the look
        stopped at `most` with more tasks left."""
        if state not in TASK_LIST_STATES:
            raise ProtocolError(f"no task state {state!r}: use one of "
                                f"{', '.join(TASK_LIST_STATES)}")
        name = "dead" if state == "dead" else STATE_SETS[state]
        found: list[str] = []
        parked_read = parked_size = 0
        if state == "queued" and tenant is not None:
            # those parked for its cap first: its oldest, they go back ahead of the others
            async for set_size, rows in self._tenant_pages(f"parked:{tenant}", most, 1_000):
                parked_size = set_size
                parked_read += len(rows)
                found += [task_id for task_id, _, _ in rows]
        read = size = 0
        async for set_size, rows in self._tenant_pages(name, most, 1_000,
                                                       newest_first=state == "dead"):
            size = set_size
            read += len(rows)
            found += [task_id for task_id, owner, _ in rows if owner == tenant]
        return (found[:limit], len(found), read < size or parked_read < parked_size)

    async def _parked_sets(self) -> list[str]:
        """The sets of tasks parked for their tenant's cap (``parked:<tenant>``), as names
        under the queue's prefix."""
        tenants = await self.redis.smembers(self.prefix + "parked")
        return sorted(f"parked:{as_text(tenant)}" for tenant in tenants)

    async def _tenant_pages(
        self, set_name: str, most: int, page: int, *, newest_first: bool = False,
    ) -> AsyncGenerator[tuple[int, list[tuple[str, str | None, float | None]]]]:
        """The first `most` tasks of a set, `page` at a time (tenant_page.lua): the set's size
        and (id, tenant, submitted at) of each task of the page. Each page goes on after the
        last task of the one before, however claims and new tasks moved it: a task is read
        at most once, and one that entered ahead of the pages read is not read."""
        if most < 1 or page < 1:
            raise ProtocolError(f"most and page must be at least 1, got {most} and {page}")
        read, after, after_score = 0, "", ""
        while read < most:
            reply = await self._run("tenant_page", set_name, min(page, most - read),
                                    int(newest_first), after, after_score)
            size, flat = int(reply[0]), reply[1:]
            rows = [(as_text(flat[i]), as_text(flat[i + 2]) or None,
                     float(flat[i + 3]) / 1000 if flat[i + 3] else None)
                    for i in range(0, len(flat), 4)]
            yield size, rows
            if not rows:
                return
            read += len(rows)
            after, after_score = rows[-1][0], as_text(flat[-3])

    # -- recovery --------------------------------------------------------------------------

    async def requeue_owner(self, worker: str, reason: str = "worker lost") -> RequeueResult:
        """Return every task one worker instance holds to the queue, atomically."""
        return requeue_result(await self._run("requeue_workers", reason, "worker", worker, ""))

    async def requeue_pod(self, pod: str, *, keep_instance: str | None = None,
                          reason: str = "pod lost", keep_drain: bool = False) -> RequeueResult:
        """Return the tasks of every instance of `pod` (all but `keep_instance`) to the queue;
        the pod's drain request goes too, unless `keep_drain` (its worker still runs)."""
        keep = worker_id(pod, keep_instance) if keep_instance else ""
        return requeue_result(await self._run("requeue_workers", reason, "pod", pod, keep,
                                              int(keep_drain)))

    async def reap_expired(self, limit: int = 1000,
                           stale_worker_seconds: float = 3600) -> ReapResult:
        """Requeue tasks whose lease ran out: the fallback when nobody saw a worker die. Also
        end the tasks at the head of the queue past their expiry (`expired_waiting`), so that
        the queue depth counts none of them, and the deferred tasks past theirs (and so the
        tasks after them)."""
        *counts, moved, swept = await self._run("reap", limit,
                                                int(stale_worker_seconds * 1000))
        by_worker: dict[str, RequeueResult] = {}
        for index in range(0, len(moved), 2):
            holder, outcome = as_text(moved[index]), int(moved[index + 1])
            one = RequeueResult(requeued=int(outcome == 1), dead_lettered=int(outcome == 2),
                                cancelled=int(outcome == 3))
            by_worker[holder] = by_worker.get(holder, RequeueResult()) + one
        requeued, dead_lettered, cancelled = (int(c) for c in counts)
        return ReapResult(requeued=requeued, dead_lettered=dead_lettered, cancelled=cancelled,
                          by_worker=by_worker, expired_waiting=int(swept))

    # -- inspection ------------------------------------------------------------------------

    async def figures(self) -> QueueFigures:
        """Queue depth per priority, delayed, in flight, dead and live workers: one round trip."""
        return queue_figures(await self._run("figures", int(WORKER_LIVENESS_WINDOW * 1000)))

    async def used(self) -> bool:
        """Whether anything was ever submitted to this queue or a worker serves (or served) it:
        its counters, config, worker registry or task sets exist. One round trip."""
        return bool(await self._run("used"))

    async def workers(self) -> list[WorkerState]:
        """Worker instances that heart-beat recently, newest first: one round trip."""
        return worker_states(await self._run("workers", int(WORKER_LIVENESS_WINDOW * 1000)))

    async def instances(self, pod: str | None = None) -> list[InstanceState]:
        """Every registered worker instance (of `pod` only, when given), including those that
        stopped heart-beating but still hold tasks: what recovery decides on. Read-only.

        Heartbeat times are Redis's; they are moved onto this process's clock by the Redis
        time read in the same call, so a reader whose clock runs ahead of Redis's does not
        judge live workers silent (or young runs old)."""
        members = cast(list[tuple[bytes | str, float]], await self.redis.zrange(
            self.prefix + "workers", 0, -1, withscores=True))
        found = [(as_text(member), float(score)) for member, score in members]
        if pod is not None:
            found = [(wid, score) for wid, score in found if wid.rpartition(":")[0] == pod]
        if not found:
            return []
        clock = await self._clock_route()
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid, _ in found:
                pipe.hget(self.prefix + "w:" + wid, "info")
                pipe.scard(self.prefix + "owner:" + wid)
            pipe.execute_command("TIME", **clock)
            replies = await pipe.execute()
        ahead = time.time() - redis_seconds(replies.pop())
        out: list[InstanceState] = []
        for index, (wid, score) in enumerate(found):
            raw, held = replies[2 * index], replies[2 * index + 1]
            info = json.loads(as_text(raw)) if raw else {}
            pod_name, _, instance = wid.rpartition(":")
            out.append(InstanceState(
                worker_id=wid, pod=pod_name, instance=instance,
                started=float(info.get("started") or score / 1000 + ahead),
                last_seen=score / 1000 + ahead, held=int(held),
                runs_since=tuple(t + ahead for t in run_starts(info.get("runsSince"))),
            ))
        return out

    async def next_lease_expiry(self) -> float | None:
        """Seconds until the earliest lease runs out, on Redis's clock (<= 0: it already has);
        None when no task is leased. Read-only: lets a reaper wake when it matters."""
        clock = await self._clock_route()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.prefix + "leases", 0, 0, withscores=True)
            pipe.execute_command("TIME", **clock)
            earliest, now = await pipe.execute()
        if not earliest:
            return None
        return float(earliest[0][1]) / 1000 - redis_seconds(now)

    async def _clock_route(self) -> dict[str, Any]:
        """Where a `TIME` sent outside a script goes: on a Cluster, to the node that holds this
        queue, whose clock its scripts read (the client's slot map read first if need be)."""
        if not is_cluster(self.redis):
            return {}
        return {"target_nodes": await node_of_key(self.redis, self.prefix + "leases")}

    async def held_by(self, worker: str) -> set[str]:
        members = await self.redis.smembers(self.prefix + "owner:" + worker)
        return {as_text(m) for m in members}

    async def dead_letters(self, limit: int = 100) -> list[TaskInfo]:
        ids = await self.redis.zrevrange(self.prefix + "dead", 0, limit - 1)
        return await self.get_many([as_text(i) for i in ids])

    async def tasks_after(self, task_id: str) -> list[str]:
        """The tasks submitted to run after this one, in submit order. One round trip."""
        return list(listed_ids(await self.redis.get(self.next_key(task_id))))

    async def next_counts(self, task_ids: Sequence[str]) -> list[int]:
        """How many tasks were submitted to run after each of these (of a dead task, those
        its death cancelled come back when it is requeued). One round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.strlen(self.next_key(task_id))
            sizes = await pipe.execute()
        return [int(size) // NEXT_ENTRY_BYTES for size in sizes]

    async def list_tasks(self, state: str, limit: int = 100) -> list[TaskInfo]:
        """Up to `limit` tasks in one of TASK_LIST_STATES (read-only): queued in claim order,
        then those that wait for their tenant's cap (`capped`, each tenant's in their order,
        tenants by name), then the delayed ones already due (the next claim queues them; the
        figures count them as queued, and the delayed list shows them too); delayed by due
        time, deferred in submit order, running by lease expiry, dead newest first."""
        if state not in TASK_LIST_STATES:
            raise ProtocolError(f"no task state {state!r}: use one of "
                                f"{', '.join(TASK_LIST_STATES)}")
        if limit < 1:
            return []
        if state == "dead":
            return await self.dead_letters(limit)
        if state != "queued":
            ids = await self.redis.zrange(self.prefix + STATE_SETS[state], 0, limit - 1)
            return await self.get_many([as_text(i) for i in ids])
        # the queue's own and the parked ones picked in one step, each knowing where it was
        reply = await self._run("task_page", "queued", 0, limit, 0, -1)
        picked = {as_text(reply[i]): bool(int(reply[i + 1])) for i in range(1, len(reply), 2)}
        return [replace(info, capped=info.state == "queued" and picked[info.id])
                for info in await self._records(list(picked))]

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Requeue dead tasks (every one when `task_ids` is None; none for an empty list),
        attempts from 0; how many were dead. :meth:`requeue_dead_counted` also counts the
        tasks after them that came back."""
        return (await self.requeue_dead_counted(task_ids)).requeued

    async def requeue_dead_counted(self, task_ids: Sequence[str] | None = None) -> DeadRequeued:
        """:meth:`requeue_dead`, with how many tasks their deaths had cancelled (those after
        them, and after those) wait for them again (docs/protocol.md)."""
        requeued, revived = await self._dead_letters("requeue", task_ids)
        return DeadRequeued(requeued, revived)

    async def purge_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Delete dead tasks for good (every one when `task_ids` is None; none for an empty
        list); how many were deleted."""
        return (await self._dead_letters("purge", task_ids))[0]

    async def _dead_letters(self, action: str,
                            task_ids: Sequence[str] | None) -> tuple[int, int]:
        """Requeue or purge dead tasks, at most DEAD_LETTER_PAGE per script call, so that
        Redis serves others between them (one call over 100,000 tasks holds it for seconds).
        Without ids: the tasks dead when the first call ran, oldest first, each call taking
        the head of the dead set, until none of them is left. Returns (handled, revived);
        raises `DeadLettersCut` (from Redis's error) when a page after the first fails."""
        handled = revived = 0
        try:
            if task_ids is not None:
                for start in range(0, len(task_ids), DEAD_LETTER_PAGE):
                    page = task_ids[start:start + DEAD_LETTER_PAGE]
                    done, back, _, _ = await self._run("dead_letters", action, call_id(), "",
                                                       DEAD_LETTER_PAGE, *page)
                    handled, revived = handled + int(done), revived + int(back)
                return handled, revived
            upto: Any = ""
            while True:
                done, back, more, upto = await self._run("dead_letters", action, call_id(),
                                                         upto, DEAD_LETTER_PAGE)
                handled, revived = handled + int(done), revived + int(back)
                if not int(more):
                    return handled, revived
        except REDIS_FAILURES as error:
            if not handled:
                raise
            raise DeadLettersCut(handled, revived) from error
