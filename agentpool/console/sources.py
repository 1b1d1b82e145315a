"""What each page shows, read from Redis (and from Kubernetes when the console has access).

The fleet is read by one recorder that runs all the time: one pipelined round trip for the
figures of every queue on a Redis per refresh, which also feeds each pool's rates and its last
hour of history. The other pages are read on demand by their topic in the hub.

With Kubernetes, each pool's queue is read where its spec.redis says: the console's own Redis
when it names that server, else the pool's own Redis as `agentpool status` reads it (its
spec.redis.url, or the URL in the Secret of its spec.redis.urlSecretRef when the console may
read that Secret). A pool whose Redis cannot be read from here (it does not answer or its
Secret cannot be read) is read on the console's Redis when that has a queue of its name (a
console on a laptop, through a port-forward to the cluster's Redis), saying so; else it shows
the figures of its status, as the operator last wrote them, and says why. The task pages read
the console's Redis only, so only the pools read there link to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import SentinelConnectionPool

from agentpool.cli.fleet import (
    CounterSample,
    PoolSummary,
    RateTracker,
    pool_schedules,
    pool_summary,
    queue_summary,
)
from agentpool.cli.status import KubeReader
from agentpool.cli.tenants import read_tenant_loads
from agentpool.cli.views import (
    FleetRow,
    compact,
    event_json,
    figures_json,
    fleet_json,
    iso_ms,
    iso_s,
    iso_time,
    task_json,
    workers_json,
)
from agentpool.connection import is_cluster, redis_from_url
from agentpool.console.history import History, Point
from agentpool.console.hub import Feed, encode
from agentpool.health import pool_health
from agentpool.models import Condition, RateLimitSpec
from agentpool.protocol import (
    QUEUE_NAME,
    TASK_LIST_STATES,
    QueueFigures,
    TaskEvent,
    TaskQueue,
    TaskRow,
    TaskView,
    WorkerState,
    figures_and_workers,
    figures_of,
    full_among,
    known_queues,
    redis_seconds,
    task_for_idempotency_key,
    task_page,
    task_view,
)
from agentpool.ratelimit import RateLimiter, RateLimitError, limit_configs
from agentpool.redis_errors import (
    POOL_PASSWORD_PLACE,
    REDIS_FAILURES,
    auth_failure,
    describe_redis_error,
    error_chain,
    redis_full,
)
from agentpool.urls import redis_server

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
REDIS_ANSWER_SECONDS = 5.0
"""How long a page's read waits for the console's Redis: one that does not answer (a Redis
hung or paused, a network that drops its packets) is an error the page shows within seconds,
not a page that goes on showing what it read last as if it were current."""
TENANT_ANSWER_SECONDS = 10.0
"""How long the tenants page's read (up to 40 round trips) waits for the console's Redis, as
REDIS_ANSWER_SECONDS for the other pages' single round trip."""
MAX_CACHED_QUEUES = 10_000
EVENT_BATCH = 250
"""Events a task page reads per round trip (more are read at once, not after the interval):
what a page catching up on a long backlog holds in memory while it does (about 2.5 MB for
events of 3,000 characters)."""
EVENT_DATA_CHARS = 2000
CHECKPOINT_PREVIEW_BYTES = 65_536
NEXT_SHOWN = 50
"""Tasks submitted to run after a task that its page links to (it gives how many in all)."""
FIELD_PREVIEW_BYTES = 65_536
"""Bytes of a payload, result or error a task page reads and sends: the start of a bigger one,
with its size."""


class NotFound(LookupError):
    pass


class Unreadable(RuntimeError):
    """What a page needed could not be read (Redis or Kubernetes did not answer): its message
    says why, as the fleet's error does."""


CONSOLE_PASSWORD_PLACE = "the console's Redis URL (--redis-url or AGENTPOOL_REDIS_URL)"
POOL_REDIS_TIMEOUT = 3.0
"""Seconds to connect to, and wait for, the Redis of a pool that is not the console's."""
PLACE_SECONDS = 30.0
"""How long the URL read from a pool's Secret is used before the Secret is read again."""
MAX_POOL_REDIS = 100
"""Redis servers besides its own that the console reads pools from at most."""
OWN_REDIS = "console"
FALLBACK = "console-fallback"
"""`figures_from` of a pool whose own Redis could not be read, read on the console's Redis
because that has a queue of its name."""


def redis_problem(exc: BaseException, *, own: bool = True) -> str:
    """A failed read of Redis in one line that names no URL: an authentication failure in
    the words of the CLI (where the password goes), else the reason (`Connection refused`).
    `own`: the console's Redis, else a pool's."""
    auth = auth_failure(exc, password_place=CONSOLE_PASSWORD_PLACE if own
                        else POOL_PASSWORD_PLACE)
    if own:
        if auth is not None:
            return auth
        if redis_full(exc):
            return describe_redis_error(exc)
        return f"cannot read Redis: {describe_redis_error(exc)}"
    return f"cannot read the pool's Redis: {auth or describe_redis_error(exc)}"


@contextlib.asynccontextmanager
async def answer_within(seconds: float) -> AsyncIterator[None]:
    """Reads of Redis that must end within `seconds`: past it they are cancelled and a
    TimeoutError says so ("no answer within 5 s")."""
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            yield
    except TimeoutError as exc:
        if deadline.expired():
            raise TimeoutError(f"no answer within {seconds:g} s") from exc
        raise


def unresolved(exc: BaseException) -> bool:
    """Whether a failed read means the server's name does not resolve from here (a cluster
    Service's name seen from a laptop), not that the server is down, slow or refusing: only
    then may the console look for the pool's queue on its own Redis."""
    return any(isinstance(cause, socket.gaierror) for cause in error_chain(exc))


SECRET_PLACE = "secret:"
"""The key of a place whose Redis URL is in a Secret the console could not read."""


@dataclass(frozen=True)
class Place:
    """Where a pool's queue is read."""

    key: str
    """Pools with the same key share a Redis (their spec.worker.submitsTo is matched)."""
    redis: aioredis.Redis | None
    """None: its Redis is not read, its figures are its status's."""
    own: bool = False
    """Its queue is on the console's Redis, whose task pages the console shows."""
    problem: str | None = None
    """Why its Redis is not read."""
    server: str | None = None
    """The pool's own Redis server (host:port/db, no credentials) when known."""
    fallback: str | None = None
    """Why its queue is read on the console's Redis although its spec.redis names another."""


def server_of_url(url: str) -> tuple[str, ...] | None:
    """The server and database a plain Redis URL names (without its credentials), to tell
    whether two URLs name the same; None for another kind (Sentinel, Cluster)."""
    try:
        kwargs = parse_url(url)
    except (ValueError, TypeError):
        return None
    return _server(kwargs)


def server_of(redis: aioredis.Redis) -> tuple[str, ...] | None:
    """The server and database a client of a plain URL connects to; None for another kind."""
    if is_cluster(redis):
        return None
    pool = redis.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return None
    return _server(pool.connection_kwargs)


def _server(kwargs: Mapping[str, Any]) -> tuple[str, ...] | None:
    db = str(kwargs.get("db") or 0)
    if kwargs.get("path"):
        return ("unix", str(kwargs["path"]), db)
    host = str(kwargs.get("host") or "localhost").lower()
    return ("tcp", host, str(kwargs.get("port") or 6379), db)


@dataclass
class PoolRecord:
    summary: PoolSummary
    obj: Mapping[str, Any] | None
    rates: RateTracker
    history: History
    place: Place = field(default_factory=lambda: Place(OWN_REDIS, None, own=True))


def shown_server(server: str | None) -> str | None:
    """A server as `agentpool.urls.redis_server` writes it, without its scheme (host:port/db),
    so that no text a page shows reads as a Redis URL."""
    return None if server is None else server.partition("://")[2] or server


def fallback_note(server: str | None, reason: str) -> str:
    where = f"the pool's own Redis ({server})" if server else "the pool's own Redis"
    return (f"Read on the console's Redis, which has a queue of this name: {where} could not "
            f"be read from here: {reason}.")


def figures_from(place: Place, problem: str | None) -> str:
    if problem is not None:
        return "status"
    if place.fallback is not None:
        return FALLBACK
    return OWN_REDIS if place.own else "pool"


def figures_note(place: Place, problem: str | None) -> str | None:
    """What a pool's page and row say of where its figures come from, None for the console's
    own Redis read live."""
    if problem is not None:
        note = f"Figures from the pool's status, as the operator last wrote them: {problem}."
    elif place.fallback is not None:
        return place.fallback
    elif not place.own:
        note = "Read from the pool's own Redis (its spec.redis), not the console's."
    else:
        return None
    if not place.own:
        note += " Its tasks, dead letters and tenants are not on the console's Redis: not shown."
    return note


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
    fleet may have dropped it meanwhile). Pools are matched by queue name among those on the
    same Redis (a handler submits to its own pool's Redis)."""
    def ref(pool: tuple[str, str]) -> dict[str, str]:
        return {"namespace": pool[0], "name": pool[1]}

    queue, where = pool.summary.queue, pool.place.key
    near = sorted((k, r) for k, r in records.items() if r.place.key == where)
    handed = [{"queue": other, "pools": [ref(k) for k, r in near if r.summary.queue == other]}
              for other in submits_to(pool.obj)]
    fed_by = [ref(k) for k, r in near if k != key and queue in submits_to(r.obj)]
    return handed, fed_by


def status_figures(summary: PoolSummary, obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """A pool's figures as its status gives them (the operator's last reading)."""
    status = (obj or {}).get("status") or {}
    capped = status.get("capped")
    return {"queue": summary.queue, "queued": summary.queued,
            "capped": capped if isinstance(capped, int) else 0,
            "delayed": summary.delayed, "deferred": summary.deferred,
            "in_flight": summary.in_flight, "dead": summary.dead, "workers": summary.workers,
            "from_status": True}


@dataclass
class Sources:
    """The console's view of one Redis and, optionally, the AgentPools of a cluster (each
    read from its own Redis when that is another one)."""

    redis: aioredis.Redis
    kube: KubeReader | None = None
    namespaces: Sequence[str] | None = None
    """With Kubernetes: the namespaces shown (None: all)."""
    queues: Sequence[str] = ()
    """Without Kubernetes: the queues to show (empty: every queue found in Redis)."""
    own_server: str | None = None
    """The console's Redis server as the operator writes a pool's status.redis
    (`agentpool.urls.redis_server`): a pool whose Secret the console may not read is read
    on the console's Redis when its status names that server."""
    pools: dict[tuple[str, str], PoolRecord] = field(default_factory=dict)
    fleet: dict[str, Any] | None = None
    _queues: dict[str, TaskQueue] = field(default_factory=dict)
    _found: list[str] = field(default_factory=list)
    _found_at: float = float("-inf")
    _tenant_reads: dict[str, tuple[float, asyncio.Future[dict[str, Any]]]] = field(
        default_factory=dict)
    _secrets: dict[tuple[str, str, str], tuple[float, str | None, str | None]] = field(
        default_factory=dict)
    """(namespace, Secret, key): when it was read, the URL it holds or why it was not read."""
    _clients: dict[str, aioredis.Redis] = field(default_factory=dict)
    """Clients of the pools' Redis servers that are not the console's, by URL."""

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

    def _queue_at(self, place: Place, name: str) -> TaskQueue:
        if place.own or place.redis is None:
            return self.queue(name)
        return TaskQueue(place.redis, name)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- where each pool's queue is ----------------------------------------------------------

    async def _places(self, summaries: Sequence[PoolSummary]) -> list[Place]:
        own = Place(OWN_REDIS, self.redis, own=True)
        if self.kube is None:
            return [own] * len(summaries)
        await self._read_secrets({(s.namespace or "", s.redis_secret.name, s.redis_secret.key)
                                  for s in summaries
                                  if s.redis_url is None and s.redis_secret is not None})
        places = [self._place(summary, own) for summary in summaries]
        used = {url for url, client in self._clients.items()
                if any(p.redis is client for p in places)}
        for url in set(self._clients) - used:
            with contextlib.suppress(Exception):
                await self._clients.pop(url).aclose()
        return places

    async def _read_secrets(self, refs: set[tuple[str, str, str]]) -> None:
        kube, now = self.kube, time.monotonic()
        assert kube is not None
        stale = [ref for ref in refs
                 if now - self._secrets.get(ref, (float("-inf"), None, None))[0] >= PLACE_SECONDS]

        async def read(ref: tuple[str, str, str]) -> None:
            namespace, name, key = ref
            try:
                url = await asyncio.to_thread(kube.read_secret, namespace, name, key)
            except LookupError as exc:
                self._secrets[ref] = (now, None, str(exc))
            except Exception as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self._secrets[ref] = (now, None, f"cannot read Secret {namespace}/{name}: "
                                                  f"{reason}")
            else:
                self._secrets[ref] = (now, url, None)

        await asyncio.gather(*(read(ref) for ref in stale))
        for ref in set(self._secrets) - refs:
            del self._secrets[ref]

    def _place(self, summary: PoolSummary, own: Place) -> Place:
        url, ref = summary.redis_url, summary.redis_secret
        if url is None and ref is not None:
            namespace = summary.namespace or ""
            _, url, problem = self._secrets.get((namespace, ref.name, ref.key),
                                                (0.0, None, "its Secret was not read yet"))
            if url is None and self.own_server is not None \
                    and summary.redis_server == self.own_server:
                return own  # the operator reached the pool's queue on the console's Redis
            if url is None:
                return Place(f"{SECRET_PLACE}{namespace}/{ref.name}/{ref.key}", None,
                             problem=f"the console cannot read its Redis URL ({problem})",
                             server=shown_server(summary.redis_server))
        if not url:
            return Place(f"none:{summary.namespace}/{summary.name}", None,
                         problem="the pool names no Redis URL")
        server = server_of_url(url)
        if server is not None and server == server_of(self.redis):
            return own
        key = f"redis:{server}" if server is not None else f"url:{url}"
        try:
            shown = shown_server(redis_server(url, summary.namespace or "default"))
        except ValueError:
            shown = None
        client = self._clients.get(url)
        if client is None:
            if len(self._clients) >= MAX_POOL_REDIS:
                return Place(key, None, problem=f"the console reads at most {MAX_POOL_REDIS} "
                             "Redis servers besides its own", server=shown)
            try:
                client = redis_from_url(url, socket_connect_timeout=POOL_REDIS_TIMEOUT,
                                        socket_timeout=POOL_REDIS_TIMEOUT,
                                        client_name="agentpool-console")
            except ValueError:
                return Place(key, None, problem="its Redis URL is not one the console can use")
            self._clients[url] = client
        return Place(key, client, server=shown)

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

    async def _figures(self, places: Sequence[Place],
                       names: Sequence[str]) -> tuple[list[QueueFigures | str], list[str | None]]:
        """Each pool's figures, one round trip per Redis, or why they were not read; and for
        each pool whose own Redis could not be read from here (did not answer, or was not
        read: its Secret, say), why in a few words. Without Kubernetes (no status to show
        instead), a failure of Redis is raised."""
        groups: dict[int, list[int]] = {}
        for index, place in enumerate(places):
            if place.redis is not None:
                groups.setdefault(id(place.redis), []).append(index)

        async def read(indexes: list[int]) -> list[QueueFigures]:
            place = places[indexes[0]]
            queues = [self._queue_at(place, names[i]) for i in indexes]
            if place.own:
                async with answer_within(REDIS_ANSWER_SECONDS):
                    return await figures_of(queues)
            async with asyncio.timeout(POOL_REDIS_TIMEOUT + 2):
                return await figures_of(queues)

        replies = await asyncio.gather(*(read(ix) for ix in groups.values()),
                                       return_exceptions=True)
        out: list[QueueFigures | str] = [p.problem or "" for p in places]
        unread: list[str | None] = [
            p.problem if p.redis is None and p.key.startswith(SECRET_PLACE) else None
            for p in places]
        for indexes, reply in zip(groups.values(), replies, strict=True):
            if isinstance(reply, BaseException):
                if self.kube is None or not isinstance(reply, Exception):
                    raise reply
                problem = redis_problem(reply, own=places[indexes[0]].own)
                for i in indexes:
                    out[i] = problem
                    if not places[i].own and unresolved(reply):
                        unread[i] = describe_redis_error(reply)
            else:
                for i, figures in zip(indexes, reply, strict=True):
                    out[i] = figures
        return out, unread

    async def _fall_back(self, places: list[Place], names: Sequence[str],
                         read: list[QueueFigures | str], unread: Sequence[str | None]) -> None:
        """Read on the console's Redis, in one round trip, the pools whose own Redis could not
        be read from here and that have a queue of their name there (a console on a laptop
        reaches the cluster's Redis through a port-forward, under another name than the
        pools' spec.redis); the others keep their status's figures."""
        indexes = [i for i, reason in enumerate(unread) if reason is not None]
        if not indexes:
            return
        try:
            async with answer_within(REDIS_ANSWER_SECONDS):
                found = await figures_of([self.queue(names[i]) for i in indexes])
        except REDIS_FAILURES:
            return
        for i, figures in zip(indexes, found, strict=True):
            if figures.used:
                places[i] = Place(OWN_REDIS, self.redis, own=True, fallback=fallback_note(
                    places[i].server, unread[i] or ""))
                read[i] = figures

    async def _full(self, names: Sequence[str]) -> set[str]:
        """The queues, of those found in Redis alone, whose Redis refuses new tasks (no
        operator says so of a queue without a pool); none when Redis does not answer."""
        try:
            async with answer_within(REDIS_ANSWER_SECONDS):
                return await full_among([self.queue(name) for name in names])
        except REDIS_FAILURES:
            return set()

    async def refresh_fleet(self) -> dict[str, Any]:
        """Read the fleet (one Redis round trip per Redis), record rates and history, keep the
        snapshot."""
        pairs = await self._summaries()
        places = await self._places([summary for summary, _ in pairs])
        names = [summary.queue for summary, _ in pairs]
        read, unread = await self._figures(places, names)
        await self._fall_back(places, names, read, unread)
        full = await self._full([summary.queue for (summary, obj), fig in zip(pairs, read,
                                                                                strict=True)
                                 if obj is None and not isinstance(fig, str)])
        now, clock = time.time(), time.monotonic()
        seen: set[tuple[str, str]] = set()
        rows: list[FleetRow] = []
        extra: list[dict[str, Any]] = []
        for (summary, obj), place, fig in zip(pairs, places, read, strict=True):
            problem = None
            if isinstance(fig, str):
                problem = fig
            elif obj is None:
                summary = queue_summary(summary.queue, fig, full=summary.queue in full)
            else:
                summary = replace(summary, queued=fig.queued, delayed=fig.delayed,
                                  deferred=fig.deferred, in_flight=fig.in_flight, dead=fig.dead,
                                  workers=fig.workers)
            key = (summary.namespace or NO_NAMESPACE, summary.name)
            seen.add(key)
            record = self.pools.get(key)
            if record is None:
                record = self.pools[key] = PoolRecord(summary, obj, RateTracker(), History())
            record.summary, record.obj, record.place = summary, obj, place
            if not isinstance(fig, str):
                record.rates.add(CounterSample(clock, fig.stats))
            record.history.add(Point(now, summary.queued, summary.in_flight, summary.replicas,
                                     summary.ready_replicas))
            rows.append(FleetRow(summary, None if problem else record.rates.rates(), problem))
            extra.append({
                "conditions": _conditions(obj), "own_redis": place.own,
                "figures_from": figures_from(place, problem),
                "figures_note": figures_note(place, problem)})
        for gone in set(self.pools) - seen:
            del self.pools[gone]
        pools = fleet_json(rows, now)
        for doc, more in zip(pools, extra, strict=True):
            doc["namespace"] = doc["namespace"] or NO_NAMESPACE
            doc.update(more)
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
            if self.fleet is not None and self.fleet.get("error"):
                # the pools could not be read: that is what the page says, not "no such pool"
                raise Unreadable(str(self.fleet["error"]))
            raise NotFound(f"no pool {name} in namespace {namespace}"
                           if namespace != NO_NAMESPACE else f"no queue {name}")
        place, queue_name = record.place, record.summary.queue
        spec = (record.obj or {}).get("spec") or {}
        now = time.time()
        problem = place.problem
        figures: dict[str, Any] | None = None
        workers: list[dict[str, Any]] | None = None
        limits: list[dict[str, Any]] | None = None
        if place.redis is not None:
            try:
                async with answer_within(REDIS_ANSWER_SECONDS if place.own
                                         else POOL_REDIS_TIMEOUT + 2):
                    read, live = await figures_and_workers(self._queue_at(place, queue_name))
                    limits = await limit_rows(place.redis, spec.get("rateLimits"))
            except REDIS_FAILURES as exc:
                if self.kube is None:
                    raise
                problem = redis_problem(exc, own=place.own)
            else:
                figures = figures_json(queue_name, read, record.rates.rates())
                workers = page_workers(live, now)
        if figures is None:
            figures = status_figures(pool_summary(record.obj or {}), record.obj)
        events, events_note = await self._events(namespace, name)
        handed_to, fed_by = pipeline(self.pools, (namespace, name), record)
        return {
            "namespace": namespace, "name": name, "queue": queue_name,
            "source": self.source, "at": now,
            "own_redis": place.own,
            "figures_from": figures_from(place, problem),
            "figures_note": figures_note(place, problem),
            "health": record.summary.health,
            "replicas": record.summary.replicas,
            "ready_replicas": record.summary.ready_replicas,
            "desired_replicas": record.summary.desired_replicas,
            "draining_replicas": record.summary.draining_replicas,
            "last_scale_reason": record.summary.last_scale_reason,
            "conditions": _conditions(record.obj),
            "figures": figures,
            "history": [[round(p.at, 1), p.queued, p.in_flight, p.replicas, p.ready_replicas]
                        for p in record.history.points()],
            "workers": workers,
            "rate_limits": spec.get("rateLimits"),
            "schedules": pool_schedules(record.obj),
            "submits_to": handed_to,
            "fed_by": fed_by,
            "limits": limits,
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
        """One page of a task list, in one round trip; the delayed list in two: a delayed
        task already due is listed (and counted) once, as queued, as the figures count it,
        so the delayed list starts after the due ones (`agentpool tasks` does the same)."""
        if state not in TASK_LIST_STATES:
            raise NotFound(f"no task state {state!r}: use one of {', '.join(TASK_LIST_STATES)}")
        page = min(max(1, page), MAX_PAGE)
        queue = self.queue(queue_name)
        async with answer_within(REDIS_ANSWER_SECONDS):
            due = (await queue.figures()).due_delayed if state == "delayed" else 0
            total, rows = await task_page(queue, state, (page - 1) * PAGE_SIZE + due,
                                          PAGE_SIZE, preview_bytes=PREVIEW_BYTES)
        total = max(0, total - due)
        return {
            "queue": queue_name, "state": state, "page": page, "per_page": PAGE_SIZE,
            "pages": max(1, -(-total // PAGE_SIZE)),
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
        async with answer_within(TENANT_ANSWER_SECONDS):
            loads, figures = await read_tenant_loads(queue, TENANT_READ_LIMIT)
        return {
            "queue": queue.name, "at": time.time(), "counted": loads.counted,
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
        async with answer_within(REDIS_ANSWER_SECONDS):
            if await queue.redis.exists(queue.task_key(text)):
                return text
            return await task_for_idempotency_key(queue, text)

    async def task(self, queue_name: str, task_id: str) -> dict[str, Any]:
        return (await self.task_feed(queue_name, task_id, None, events=False)).snapshot

    async def task_feed(self, queue_name: str, task_id: str, after: str | None, *,
                        events: bool = True) -> Feed:
        """The task page: the task, its checkpoint and its events after `after`, one round
        trip."""
        queue = self.queue(queue_name)
        async with answer_within(REDIS_ANSWER_SECONDS):
            view = await task_view(queue, task_id, after=after,
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


async def limit_rows(redis: aioredis.Redis, declared: Any) -> list[dict[str, Any]]:
    """The pool's rate limits as it declares them, with what Redis says of each (the serving
    declaration, effective rate, waiting workers, grants, 429s, slots held and callers in line
    for them); None figures when unread. The last 429 is stamped by Redis's clock: it is given
    on this machine's clock (as the page's "at", which the browser ages it by), in whole
    seconds, so that its age is right whatever the two clocks say and a pool that is not
    throttled again reads the same on every refresh; its age on Redis's clock
    ("last_throttle_age_seconds", as the CLI gives it) is left out of that comparison by the
    hub."""
    rows: list[dict[str, Any]] = []
    skew: float | None = None
    """This machine's clock minus Redis's."""
    for item in declared if isinstance(declared, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        row: dict[str, Any] = {"name": item["name"], "declared": dict(item), "serving": None,
                               "conflict": False, "effective_rpm": None, "effective_tpm": None,
                               "paused_seconds": None, "waiting": None, "grants": None,
                               "throttles": None, "last_throttle": None,
                               "last_throttle_age_seconds": None,
                               "held": None, "in_line": None}
        try:
            state = await RateLimiter(redis, item["name"]).state()
            if skew is None and state.last_throttle is not None:
                redis_now = redis_seconds(await redis.time())
                skew = time.time() - redis_now
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
            in_line=state.in_line,
            last_throttle=None if state.last_throttle is None or skew is None
            else iso_s(round(state.last_throttle + skew)),
            last_throttle_age_seconds=None if state.last_throttle is None or skew is None
            else round(time.time() - skew - state.last_throttle, 1),
        )
        rows.append(row)
    return rows


def task_row(row: TaskRow) -> dict[str, Any]:
    info = row.info
    return {
        "id": info.id, "state": info.state, "priority": info.priority,
        "attempts": info.attempts, "max_attempts": info.max_attempts,
        "created": iso_ms(info.created_ms), "started": iso_ms(info.started_ms),
        "finished": iso_ms(info.finished_ms),
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


def condition_bad(kind: Any, status: Any) -> bool:
    """Whether a condition in this state is a problem, as the pool's health word reads it
    (Degraded True, QueueReachable False, Ready False or Unknown)."""
    if not isinstance(kind, str) or status not in ("True", "False", "Unknown"):
        return False
    return pool_health([Condition(type=kind, status=status)], paused=False) not in (
        "Ready", "Pending")


def _conditions(obj: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The pool's conditions, each with whether it is a problem ("bad")."""
    status = (obj or {}).get("status") or {}
    return [
        {**{k: c.get(k) for k in ("type", "status", "reason", "message",
                                  "lastTransitionTime")},
         "bad": condition_bad(c.get("type"), c.get("status"))}
        for c in status.get("conditions") or [] if isinstance(c, Mapping)
    ]


def page_workers(workers: Sequence[WorkerState], now: float) -> list[dict[str, Any]]:
    """The workers as the CLI's JSON gives them: their last heartbeat, which the browser ages,
    and its age for scripts, which the hub leaves out when it tells whether a page changed."""
    return workers_json(workers, now)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return iso_time(value) if isinstance(value, datetime) else str(value)
