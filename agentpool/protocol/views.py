"""Read-only views: the queues used on a Redis, several queues' figures, a page of tasks, one
task, the task of an idempotency key (one round trip each but the scan for queues)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis

from agentpool.connection import is_cluster
from agentpool.protocol.bounds import (
    NEXT_ENTRY_BYTES,
    STATE_SETS,
    TASK_LIST_STATES,
    WORKER_LIVENESS_WINDOW,
)
from agentpool.protocol.records import ProtocolError, QueueFigures, TaskEvent, TaskInfo, WorkerState
from agentpool.protocol.replies import (
    as_text,
    decoded_text,
    listed_ids,
    queue_figures,
    task_event,
    task_info,
    worker_states,
)
from agentpool.protocol.round_trips import scripts_in_one_trip
from agentpool.redis_errors import redis_full

if TYPE_CHECKING:
    from agentpool.protocol.task_queue import TaskQueue


_QUEUE_MARK = re.compile(
    r"^ap:\{([A-Za-z0-9][A-Za-z0-9._-]{0,99})\}:(?:seq|stats|config|workers)\Z")


async def known_queues(redis: aioredis.Redis, max_keys: int = 20_000) -> tuple[list[str], bool]:
    """Names of the queues used on this Redis database, and whether the list is complete.

    The protocol keeps no registry of queues (a global key would leave the queue's hash slot
    and its ACL key pattern), so this scans the keyspace for each queue's counters, config or
    worker registry, and stops after about `max_keys` keys: meant for a hint after a typo,
    not for a hot path. On a cluster each primary is scanned in turn (a queue lives on the
    primary of its slot), sharing the `max_keys` budget.
    """
    names: set[str] = set()
    nodes: list[Any] = cast(Any, redis).get_primaries() if is_cluster(redis) else [None]
    seen = 0
    for node in nodes:
        target = {} if node is None else {"target_nodes": node}
        cursor = 0
        while True:
            reply, keys = await redis.scan(cursor, match="ap:{*}:[scw]*", count=1000, **target)
            if node is not None:  # a cluster answers with the cursor of each node
                reply = cast(dict[str, int], reply)[node.name]
            cursor = int(reply)
            for key in keys:
                match = _QUEUE_MARK.match(as_text(key))
                if match:
                    names.add(match[1])
            seen += 1000
            if not cursor:
                break
            if seen >= max_keys:
                return sorted(names), False
    return sorted(names), True


async def figures_of(queues: Sequence[TaskQueue]) -> list[QueueFigures]:
    """The figures of several queues on the same Redis, in one round trip."""
    if not queues:
        return []
    window = int(WORKER_LIVENESS_WINDOW * 1000)
    replies = await scripts_in_one_trip(queues[0].redis,
                                         [(q, "figures", [window]) for q in queues])
    return [queue_figures(reply) for reply in replies]


async def full_among(queues: Sequence[TaskQueue]) -> set[str]:
    """The names of those of `queues` (on the same Redis) whose Redis refuses writes that may
    grow memory, in one round trip: :meth:`TaskQueue.has_room`'s question for each. A queue
    the caller's Redis user may not ask about (a user that may not write) is not counted."""
    if not queues:
        return set()
    async with queues[0].redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.set(queue.prefix + "full", "", xx=True)
        replies = await pipe.execute(raise_on_error=False)
    return {queue.name for queue, reply in zip(queues, replies, strict=True)
            if isinstance(reply, Exception) and redis_full(reply)}


async def figures_and_workers(queue: TaskQueue) -> tuple[QueueFigures, list[WorkerState]]:
    """A queue's figures and live workers, in one round trip."""
    window = int(WORKER_LIVENESS_WINDOW * 1000)
    figures, workers = await scripts_in_one_trip(
        queue.redis, [(queue, "figures", [window]), (queue, "workers", [window])])
    return queue_figures(figures), worker_states(workers)


_PAGE_FIELDS = ("state", "payload", "attempts", "prio", "created", "started", "finished",
                "error", "owner", "max", "progress", "tenant")
"""The fields of a task that task_page.lua reads, in its order."""
_VIEW_FIELDS = ("state", "payload", "attempts", "prio", "created", "started", "finished",
                "result", "error", "owner", "max", "progress", "expires", "timeout", "after",
                "tenant")
"""The fields of a task that task_view.lua reads, in its order."""


def _cut_task(task_id: str, names: Sequence[str], values: Sequence[Any],
              cut_names: Sequence[str], sizes: Sequence[Any],
              cut_bytes: int) -> tuple[TaskInfo | None, dict[str, int]]:
    """A task read with some fields cut to their first `cut_bytes` (task_page.lua,
    task_view.lua): those fields that were cut hold the start of their text (never parsed),
    and the returned mapping gives their full size in bytes."""
    info = task_info(task_id, {n: v for n, v in zip(names, values, strict=True)
                                if v is not None})
    cut = {name: int(size) for name, size in zip(cut_names, sizes, strict=True)
           if int(size) > cut_bytes}
    if info is None or not cut:
        return info, cut
    texts: dict[str, Any] = {name: decoded_text(values[names.index(name)]) for name in cut}
    return replace(info, **texts), cut


@dataclass(frozen=True)
class TaskRow:
    """A task as a page of a task list shows it: payload and error cut to their start, no
    result."""

    info: TaskInfo
    cut: Mapping[str, int]
    """The fields that were cut ("payload", "error"): their full size in bytes."""
    next_count: int = 0
    """How many tasks were submitted to run after it (of a dead task, those its death
    cancelled come back when it is requeued)."""


async def task_page(queue: TaskQueue, state: str, offset: int, limit: int, *,
                    preview_bytes: int) -> tuple[int, list[TaskRow]]:
    """How many tasks are in `state` (one of TASK_LIST_STATES) and one page of them, in the
    order of `TaskQueue.list_tasks`, in one round trip; their payloads and errors cut to their
    first `preview_bytes` bytes (on a character boundary) and without their results."""
    if state not in TASK_LIST_STATES:
        raise ProtocolError(f"no task state {state!r}: use one of {', '.join(TASK_LIST_STATES)}")
    name = "dead" if state == "dead" else STATE_SETS[state]
    [reply] = await scripts_in_one_trip(
        queue.redis, [(queue, "task_page", [name, offset, limit, int(state == "dead"),
                                            preview_bytes])])
    rows: list[TaskRow] = []
    for i in range(1, len(reply), 3):
        sizes = reply[i + 2]
        info, cut = _cut_task(as_text(reply[i]), _PAGE_FIELDS, reply[i + 1], ("payload", "error"),
                              sizes[:2], preview_bytes)
        if info is not None:
            info = replace(info, capped=bool(int(sizes[3])))
            rows.append(TaskRow(info, cut, int(sizes[2]) // NEXT_ENTRY_BYTES))
    return int(reply[0]), rows


@dataclass(frozen=True)
class TaskView:
    """What a page showing one task reads on each refresh."""

    info: TaskInfo | None
    events: list[TaskEvent]
    """Events after the id asked for, oldest first."""
    checkpoint: str | None
    """The start of its checkpoint's JSON (at most the bytes asked for), None without one."""
    checkpoint_bytes: int
    cut: Mapping[str, int] = field(default_factory=dict)
    """The fields of the task that were cut to their start ("payload", "result", "error"):
    their full size in bytes."""
    next: tuple[str, ...] = ()
    """The first of the tasks submitted to run after it, in submit order."""
    next_count: int = 0
    """How many tasks were submitted to run after it."""


async def task_view(queue: TaskQueue, task_id: str, *, after: str | None, count: int,
                    checkpoint_bytes: int, field_bytes: int, next_count: int = 0) -> TaskView:
    """A task (its payload, result and error cut to their first `field_bytes` bytes, on a
    character boundary), the start of its checkpoint, the first `next_count` tasks submitted
    to run after it and up to `count` of its events after the event id `after` (from the
    first when None), in one round trip."""
    checkpoint_key = f"{queue.prefix}cp:{task_id}"
    next_key = queue.next_key(task_id)
    then: list[Sequence[Any]] = [
        ("STRLEN", checkpoint_key),
        ("GETRANGE", checkpoint_key, 0, max(0, checkpoint_bytes - 1)),
        ("STRLEN", next_key),
        ("GETRANGE", next_key, 0, max(0, next_count * NEXT_ENTRY_BYTES - 1))]
    if count > 0:
        then.append(("XRANGE", queue.events_key(task_id), "-" if after is None else f"({after}",
                     "+", "COUNT", count))
    reply, size, start, next_size, next_start, *rest = await scripts_in_one_trip(
        queue.redis, [(queue, "task_view", [task_id, field_bytes])], then=then)
    info, cut = _cut_task(task_id, _VIEW_FIELDS, reply[0], ("payload", "result", "error"),
                          reply[1], field_bytes)
    if info is not None:
        info = replace(info, capped=bool(int(reply[2])))
    entries = rest[0] if rest else []
    checkpoint = None
    if size:
        checkpoint = decoded_text(start)
    next_ids = listed_ids(next_start)[:next_count]
    return TaskView(
        info=info,
        events=[task_event(entry_id, fields) for entry_id, fields in entries],
        checkpoint=checkpoint, checkpoint_bytes=int(size), cut=cut,
        next=next_ids, next_count=int(next_size) // NEXT_ENTRY_BYTES,
    )


async def task_for_idempotency_key(queue: TaskQueue, key: str) -> str | None:
    """The id of the task an idempotency key names, if it is still known."""
    task_id = await queue.redis.get(queue.prefix + "idem:" + key)
    return None if task_id is None else as_text(task_id)
