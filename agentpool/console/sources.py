"""What each page shows, read from Redis (and from Kubernetes when the console has access).

The fleet is read by one recorder that runs all the time: one pipelined round trip for the
figures of every queue per refresh, which also feeds each pool's rates and its last hour of
history. The other pages are read on demand by their topic in the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis

from agentpool.cli.fleet import (
    CounterSample,
    PoolSummary,
    RateTracker,
    pool_schedules,
    pool_summary,
    queue_summary,
)
from agentpool.cli.status import KubeReader
from agentpool.cli.views import (
    FleetRow,
    compact,
    event_json,
    figures_json,
    fleet_json,
    iso_ms,
    task_json,
    workers_json,
)
from agentpool.console.history import History, Point
from agentpool.console.hub import Feed, encode
from agentpool.models import RateLimitSpec
from agentpool.protocol import (
    QUEUE_NAME,
    TASK_LIST_STATES,
    TaskEvent,
    TaskQueue,
    TaskRow,
    TaskView,
    figures_and_workers,
    figures_of,
    known_queues,
    task_for_idempotency_key,
    task_page,
    task_view,
)
from agentpool.ratelimit import RateLimiter, RateLimitError, limit_configs
from agentpool.redis_errors import REDIS_FAILURES

NO_NAMESPACE = "-"
"""The namespace part of a pool's address when the fleet comes from Redis alone."""
PAGE_SIZE = 50
TENANT_READ_LIMIT = 10_000
"""The tasks per set (queued, running, delayed, deferred) the tenants page reads on each
refresh (in pages of 1,000)."""
TENANT_READ_SECONDS = 4.0
"""How long a read of a queue's tenants answers the page's requests."""
MAX_PAGE = 1_000_000_000
"""The last page number a task list accepts (its offset must fit Redis's 64-bit integers)."""
PREVIEW_CHARS = 120
PREVIEW_BYTES = 4 * PREVIEW_CHARS
"""Bytes of a payload or an error a task list reads: enough for its preview's characters."""
PROGRESS_CHARS = 60
DISCOVERY_SECONDS = 30.0
DISCOVERY_MAX_KEYS = 5_000_000
REQUEST_TIMEOUT = 10.0
MAX_CACHED_QUEUES = 10_000
EVENT_BATCH = 1000
"""Events a task page reads per round trip (more are read at once, not after the interval)."""
EVENT_DATA_CHARS = 2000
CHECKPOINT_PREVIEW_BYTES = 65_536
NEXT_SHOWN = 50
"""Tasks submitted to run after a task that its page links to (it gives how many in all)."""
FIELD_PREVIEW_BYTES = 65_536
"""Bytes of a payload, result or error a task page reads and sends: the start of a bigger one,
with its size."""


class NotFound(LookupError):
    pass


@dataclass
class PoolRecord:
    summary: PoolSummary
    obj: Mapping[str, Any] | None
    rates: RateTracker
    history: History
    rates_error: str | None = None


def submits_to(obj: Mapping[str, Any] | None) -> list[str]:
    """The queues of an AgentPool's ``spec.worker.submitsTo``."""
    spec = (obj or {}).get("spec")
    worker = spec.get("worker") if isinstance(spec, Mapping) else None
    queues = worker.get("submitsTo") if isinstance(worker, Mapping) else None
    return [q for q in queues if isinstance(q, str)] if isinstance(queues, list) else []


def pipeline(records: Mapping[tuple[str, str], PoolRecord], key: tuple[str, str],
             pool: PoolRecord) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Where a pool's handlers send tasks and where its queue's tasks come from, among the
    pools the console sees: each queue of its ``submitsTo`` with the pools serving it, and
    the other pools whose ``submitsTo`` names its queue. `pool` is the record of `key` (the
    fleet may have dropped it meanwhile). Pools are matched by queue name: the console shows
    one Redis."""
    def ref(pool: tuple[str, str]) -> dict[str, str]:
        return {"namespace": pool[0], "name": pool[1]}

    queue = pool.summary.queue
    handed = [{"queue": other, "pools": [ref(k) for k, r in sorted(records.items())
                                         if r.summary.queue == other]}
              for other in submits_to(pool.obj)]
    fed_by = [ref(k) for k, r in sorted(records.items())
              if k != key and queue in submits_to(r.obj)]
    return handed, fed_by


@dataclass
class Sources:
    """The console's view of one Redis and, optionally, the AgentPools of a cluster."""

    redis: aioredis.Redis
    kube: KubeReader | None = None
    namespaces: Sequence[str] | None = None
    """With Kubernetes: the namespaces shown (None: all)."""
    queues: Sequence[str] = ()
    """Without Kubernetes: the queues to show (empty: every queue found in Redis)."""
    pools: dict[tuple[str, str], PoolRecord] = field(default_factory=dict)
    fleet: dict[str, Any] | None = None
    _queues: dict[str, TaskQueue] = field(default_factory=dict)
    _found: list[str] = field(default_factory=list)
    _found_at: float = float("-inf")
    _tenant_reads: dict[str, tuple[float, asyncio.Future[dict[str, Any]]]] = field(
        default_factory=dict)

    @property
    def source(self) -> str:
        return "kubernetes" if self.kube is not None else "redis"

    def queue(self, name: str) -> TaskQueue:
        queue = self._queues.get(name)
        if queue is None:
            if not QUEUE_NAME.match(name):
                raise NotFound(f"no queue named {name!r}")
            if len(self._queues) > MAX_CACHED_QUEUES:
                self._queues.clear()
            queue = self._queues[name] = TaskQueue(self.redis, name)
        return queue

    # -- fleet -----------------------------------------------------------------------------

    async def discover_queues(self) -> list[str]:
        """Queues that ever had a task submitted or a worker started, rescanned every
        DISCOVERY_SECONDS (at most DISCOVERY_MAX_KEYS keys looked at per scan)."""
        if self.queues:
            return sorted(self.queues)
        if time.monotonic() - self._found_at < DISCOVERY_SECONDS:
            return self._found
        found, _ = await known_queues(self.redis, max_keys=DISCOVERY_MAX_KEYS)
        self._found = found
        self._found_at = time.monotonic()
        return self._found

    async def _summaries(self) -> list[tuple[PoolSummary, Mapping[str, Any] | None]]:
        if self.kube is None:
            return [(PoolSummary(name=q, queue=q), None) for q in await self.discover_queues()]
        kube = self.kube
        lists = await asyncio.gather(*(
            asyncio.to_thread(kube.list_pools, namespace)
            for namespace in (self.namespaces if self.namespaces is not None else [None])))
        pairs = [(pool_summary(o), o) for objects in lists for o in objects]
        return sorted(pairs, key=lambda p: (p[0].namespace or "", p[0].name))

    async def refresh_fleet(self) -> dict[str, Any]:
        """Read the fleet (one Redis round trip), record rates and history, keep the snapshot."""
        pairs = await self._summaries()
        queues = [self.queue(summary.queue) for summary, _ in pairs]
        figures = await figures_of(queues)
        now, clock = time.time(), time.monotonic()
        seen: set[tuple[str, str]] = set()
        rows: list[FleetRow] = []
        conditions: list[list[dict[str, Any]]] = []
        for (summary, obj), fig in zip(pairs, figures, strict=True):
            if obj is None:
                summary = queue_summary(summary.queue, fig)
            else:
                summary = replace(summary, queued=fig.queued, delayed=fig.delayed,
                                  deferred=fig.deferred, in_flight=fig.in_flight, dead=fig.dead,
                                  workers=fig.workers)
            key = (summary.namespace or NO_NAMESPACE, summary.name)
            seen.add(key)
            record = self.pools.get(key)
            if record is None:
                record = self.pools[key] = PoolRecord(summary, obj, RateTracker(), History())
            record.summary, record.obj = summary, obj
            record.rates.add(CounterSample(clock, fig.stats))
            record.history.add(Point(now, summary.queued, summary.in_flight, summary.replicas,
                                     summary.ready_replicas))
            rows.append(FleetRow(summary, record.rates.rates()))
            conditions.append(_conditions(obj))
        for gone in set(self.pools) - seen:
            del self.pools[gone]
        pools = fleet_json(rows, now)
        for doc, conds in zip(pools, conditions, strict=True):
            doc["namespace"] = doc["namespace"] or NO_NAMESPACE
            doc["conditions"] = conds
        self.fleet = {"source": self.source, "namespaces": self.namespaces, "at": now,
                      "pools": pools}
        return self.fleet

    # -- pool ------------------------------------------------------------------------------

    async def pool(self, namespace: str, name: str) -> dict[str, Any]:
        record = self.pools.get((namespace, name))
        if record is None and self.fleet is None:
            # no pool read yet: read them now (a Redis that does not answer is an error the
            # page retries, not a verdict on the pool)
            await self.refresh_fleet()
            record = self.pools.get((namespace, name))
        if record is None:
            raise NotFound(f"no pool {name} in namespace {namespace}"
                           if namespace != NO_NAMESPACE else f"no queue {name}")
        figures, workers = await figures_and_workers(self.queue(record.summary.queue))
        now = time.time()
        spec = (record.obj or {}).get("spec") or {}
        rates = record.rates.rates()
        events, events_note = await self._events(namespace, name)
        handed_to, fed_by = pipeline(self.pools, (namespace, name), record)
        return {
            "namespace": namespace, "name": name, "queue": record.summary.queue,
            "source": self.source, "at": now,
            "health": record.summary.health,
            "replicas": record.summary.replicas,
            "ready_replicas": record.summary.ready_replicas,
            "desired_replicas": record.summary.desired_replicas,
            "draining_replicas": record.summary.draining_replicas,
            "last_scale_reason": record.summary.last_scale_reason,
            "conditions": _conditions(record.obj),
            "figures": figures_json(record.summary.queue, figures, rates),
            "history": [[round(p.at, 1), p.queued, p.in_flight, p.replicas, p.ready_replicas]
                        for p in record.history.points()],
            "workers": workers_json(workers, now),
            "rate_limits": spec.get("rateLimits"),
            "schedules": pool_schedules(record.obj),
            "submits_to": handed_to,
            "fed_by": fed_by,
            "limits": await limit_rows(self.redis, spec.get("rateLimits"), now),
            "events": events,
            "events_note": events_note,
        }

    async def _events(self, namespace: str,
                      name: str) -> tuple[list[dict[str, Any]] | None, str | None]:
        if self.kube is None:
            return None, "Scaling decisions and recovery actions are the pool's Kubernetes " \
                "Events: start the console with access to the cluster to see them."
        from kubernetes import client

        api = client.CoreV1Api(self.kube.api_client)
        selector = f"involvedObject.kind=AgentPool,involvedObject.name={name}"
        try:
            body = await asyncio.to_thread(
                api.list_namespaced_event, namespace, field_selector=selector,
                _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            return None, f"cannot read the pool's Events: {getattr(exc, 'reason', None) or exc}"
        events = [
            {
                "type": e.type, "reason": e.reason, "message": e.message, "count": e.count,
                "last": _iso(e.last_timestamp or e.event_time or e.first_timestamp),
            }
            for e in body.items or []
            if e.involved_object is None or (e.involved_object.name == name
                                             and e.involved_object.kind == "AgentPool")
        ]
        events.sort(key=lambda e: e["last"] or "", reverse=True)
        return events[:100], None

    # -- tasks -----------------------------------------------------------------------------

    async def tasks(self, queue_name: str, state: str, page: int) -> dict[str, Any]:
        if state not in TASK_LIST_STATES:
            raise NotFound(f"no task state {state!r}: use one of {', '.join(TASK_LIST_STATES)}")
        page = min(max(1, page), MAX_PAGE)
        total, rows = await task_page(self.queue(queue_name), state, (page - 1) * PAGE_SIZE,
                                      PAGE_SIZE, preview_bytes=PREVIEW_BYTES)
        return {
            "queue": queue_name, "state": state, "page": page, "per_page": PAGE_SIZE,
            "total": total, "states": list(TASK_LIST_STATES), "at": time.time(),
            "tasks": [task_row(row) for row in rows],
        }

    async def tenants(self, queue_name: str) -> dict[str, Any]:
        """Each tenant's tasks queued, running and later, its weight, cap on runs at once and
        oldest queued task, and the queued tasks that wait for their tenant's cap,
        read in pages (at most TENANT_READ_LIMIT tasks per set): a read is shared by the
        requests of the next TENANT_READ_SECONDS (up to 40 round trips, unlike the other
        pages' one)."""
        queue = self.queue(queue_name)
        now = time.monotonic()
        held = self._tenant_reads.get(queue_name)
        if held is None or now - held[0] > TENANT_READ_SECONDS or (held[1].done() and (
                held[1].cancelled() or held[1].exception() is not None)):
            if len(self._tenant_reads) > MAX_CACHED_QUEUES:
                self._tenant_reads.clear()
            held = self._tenant_reads[queue_name] = (
                now, asyncio.ensure_future(self._read_tenants(queue)))
        return await asyncio.shield(held[1])

    async def _read_tenants(self, queue: TaskQueue) -> dict[str, Any]:
        queue_name = queue.name
        loads = await queue.tenant_loads(most=TENANT_READ_LIMIT)
        figures = await queue.figures()
        return {
            "queue": queue_name, "at": time.time(), "counted": loads.counted,
            "total": loads.total, "capped": figures.capped,
            "tenants": [
                {"tenant": load.tenant, "weight": load.weight, "max_running": load.cap,
                 "queued": load.queued,
                 "running": load.running, "later": load.later,
                 "oldest_queued": iso_ms(None if load.oldest_queued is None
                                         else int(load.oldest_queued * 1000))}
                for load in loads.loads
            ],
        }

    async def find(self, queue_name: str, text: str) -> str | None:
        """The id of a task given its id or its idempotency key."""
        queue = self.queue(queue_name)
        text = text.strip()
        if not text:
            return None
        if await queue.redis.exists(queue.task_key(text)):
            return text
        return await task_for_idempotency_key(queue, text)

    async def task(self, queue_name: str, task_id: str) -> dict[str, Any]:
        return (await self.task_feed(queue_name, task_id, None, events=False)).snapshot

    async def task_feed(self, queue_name: str, task_id: str, after: str | None, *,
                        events: bool = True) -> Feed:
        """The task page: the task, its checkpoint and its events after `after`, one round
        trip."""
        view = await task_view(self.queue(queue_name), task_id, after=after,
                               count=EVENT_BATCH if events else 0,
                               checkpoint_bytes=CHECKPOINT_PREVIEW_BYTES,
                               field_bytes=FIELD_PREVIEW_BYTES, next_count=NEXT_SHOWN)
        info = view.info
        if info is None:
            raise NotFound(f"no task {task_id} in queue {queue_name} (it may have expired)")
        doc = task_json(queue_name, info)
        doc["cut"] = dict(view.cut)
        doc["next"], doc["next_count"] = list(view.next), view.next_count
        snapshot = {"queue": queue_name, "at": time.time(), "task": doc,
                    "done": info.done, "checkpoint": checkpoint_json(view)}
        return Feed(snapshot, [page_event(e) for e in view.events],
                    more=len(view.events) >= EVENT_BATCH)


def page_event(event: TaskEvent) -> dict[str, Any]:
    """An event as the task page shows it: data past EVENT_DATA_CHARS is cut, as text."""
    doc = event_json(event)
    text = encode(event.data)
    if len(text) > EVENT_DATA_CHARS:
        doc["data"], doc["cut"] = text[:EVENT_DATA_CHARS - 1] + "…", True
    return doc


def checkpoint_json(view: TaskView) -> dict[str, Any] | None:
    if view.checkpoint is None:
        return None
    complete = view.checkpoint_bytes <= CHECKPOINT_PREVIEW_BYTES
    state: Any = view.checkpoint
    if complete:
        with contextlib.suppress(ValueError):
            state = json.loads(view.checkpoint)
    return {"state": state, "bytes": view.checkpoint_bytes, "complete": complete}


async def limit_rows(redis: aioredis.Redis, declared: Any, now: float) -> list[dict[str, Any]]:
    """The pool's rate limits as it declares them, with what Redis says of each (the serving
    declaration, effective rate, waiting workers, grants, 429s, slots held and callers in line
    for them); None figures when unread."""
    rows: list[dict[str, Any]] = []
    for item in declared if isinstance(declared, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        row: dict[str, Any] = {"name": item["name"], "declared": dict(item), "serving": None,
                               "conflict": False, "effective_rpm": None, "effective_tpm": None,
                               "paused_seconds": None, "waiting": None, "grants": None,
                               "throttles": None, "last_throttle_age_seconds": None,
                               "held": None, "in_line": None}
        try:
            state = await RateLimiter(redis, item["name"]).state()
        except (RateLimitError, *REDIS_FAILURES):
            rows.append(row)
            continue
        config = state.config
        if config is not None:
            row["serving"] = config.to_json()
            try:
                row["conflict"] = limit_configs([RateLimitSpec.model_validate(item)]) != [config]
            except ValueError:
                row["conflict"] = True
        row.update(
            effective_rpm=state.effective_rpm, effective_tpm=state.effective_tpm,
            paused_seconds=round(state.paused_for, 1), waiting=state.waiting,
            grants=state.grants, throttles=state.throttles, held=state.held,
            in_line=state.in_line, last_throttle_age_seconds=None if state.last_throttle is None
            else round(now - state.last_throttle, 1),
        )
        rows.append(row)
    return rows


def task_row(row: TaskRow) -> dict[str, Any]:
    info = row.info
    return {
        "id": info.id, "state": info.state, "priority": info.priority,
        "attempts": info.attempts, "max_attempts": info.max_attempts,
        "created": iso_ms(info.created_ms), "finished": iso_ms(info.finished_ms),
        "owner": info.owner, "tenant": info.tenant, "capped": info.capped,
        "next_count": row.next_count,
        "error": None if info.error is None else _preview(info.error, "error" in row.cut),
        "payload": _preview(info.payload, "payload" in row.cut),
        "progress": None if info.progress is None else {
            "fraction": info.progress.fraction,
            "message": None if info.progress.message is None else compact(
                info.progress.message, PROGRESS_CHARS)},
    }


def _preview(value: Any, cut: bool) -> str:
    """A one-line preview; the start of a field that was cut ends with "…" in any case."""
    text = compact(value, PREVIEW_CHARS)
    return text if not cut or text.endswith("…") else text + "…"


def _conditions(obj: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    status = (obj or {}).get("status") or {}
    return [
        {k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
        for c in status.get("conditions") or [] if isinstance(c, Mapping)
    ]


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
