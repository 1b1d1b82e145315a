"""What the operator keeps in memory: clients, and per pool its loop's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf

from agentpool.protocol import ProtocolError, TaskQueue
from agentpool.scaling.policy import ScalingHistory

from .credentials import Grants, KnownSecrets, WorkerCredentials
from .disruption_actions import GuardState
from .installed_crd import InstalledCrd
from .kube import KubeApi
from .queue_loss import QueueMarks
from .recovery import RecoveryPolicy
from .redis_access import QueueAccessError, RedisClients
from .redis_memory import MemoryCheck
from .settings import OperatorSettings

SECRET_RECHECK_SECONDS = 3600.0
"""A Redis URL read from a Secret is read again at least this often, whatever else happens."""
EXPIRY_MARGIN_SECONDS = 0.005

PoolPods = kopf.Index[tuple[str, str], dict[str, Any]]
"""kopf's index of the pools' pods (`pod_events.pool_pods`): (namespace, pool) -> pods."""


def pods_of(index: PoolPods, namespace: str, pool: str) -> list[dict[str, Any]]:
    return list(index.get((namespace, pool), ()))


@dataclass
class PoolRecovery:
    """What pod events need between the pool's rounds, and what they did since the last one.

    Lives in the pool's `PoolState`; each round refreshes the queue, pool and policy.
    """

    queue: TaskQueue | None = None
    pool: Mapping[str, Any] | None = None
    policy: RecoveryPolicy = field(default_factory=RecoveryPolicy)
    unreported: int = 0
    """Tasks requeued (by pod events, the start of a loop or a round), not yet counted into
    the status."""
    gone_pods_checked: bool = False
    """`recover_gone_pods` ran for this loop."""
    expiry_wake: asyncio.TimerHandle | None = None

    def take_unreported(self) -> int:
        count, self.unreported = self.unreported, 0
        return count

    def wake_at_expiry(self, delay: float | None, wake: asyncio.Event, poll: float) -> None:
        """Wake the pool's loop when the earliest lease runs out, if that comes before the
        round after next: a silent death then costs the lease, not the lease plus a poll."""
        if self.expiry_wake is not None:
            self.expiry_wake.cancel()
            self.expiry_wake = None
        if delay is not None and delay < 2 * poll:
            self.expiry_wake = asyncio.get_running_loop().call_later(
                max(0.0, delay) + EXPIRY_MARGIN_SECONDS, wake.set
            )


@dataclass(frozen=True)
class ServedQueue:
    """The queue a pool's round opened: where (`queue_sharing.queue_address`), and the URL
    and name to open it again once the pool has moved on (see `queue_moves`)."""

    address: str
    url: str
    name: str


@dataclass
class LeftQueue:
    """A queue the pool served before it moved to another Redis, followed until it is read
    empty (see `queue_moves`), with a client of its own: the pools' shared client of that
    Redis closes when its last pool leaves it."""

    url: str
    name: str
    warned: bool = False
    """Its Warning Event was posted."""
    unreadable_since: float | None = None
    """When (monotonic) its reads began to fail; None while they succeed."""
    _queue: TaskQueue | None = field(default=None, init=False, repr=False)
    _closer: contextlib.AsyncExitStack = field(
        default_factory=contextlib.AsyncExitStack, init=False, repr=False)

    async def queue(self, clients: RedisClients) -> TaskQueue:
        """The queue, its client opened at first use. Raises `QueueAccessError`."""
        if self._queue is None:
            client = await self._closer.enter_async_context(clients.own(self.url))
            try:
                self._queue = TaskQueue(client, self.name)
            except ProtocolError as error:
                raise QueueAccessError("InvalidQueueName", str(error)) from None
        return self._queue

    async def close(self) -> None:
        self._queue = None
        await self._closer.aclose()


@dataclass
class PoolState:
    """One pool's loop state, shared by its daemon and the handlers that wake it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serialises Deployment writes of the create/update handler and the daemon."""

    deployment: dict[str, Any] | None = None
    """The newest copy of the pool's Deployment, from a read, a write or the watch."""
    deployment_known: bool = False
    """Whether `deployment` is known (None then means: there is no Deployment). Once known,
    the watch keeps it current: it is not read again."""
    reconciled_generation: int | None = None
    """The pool generation the Deployment was last made to match."""
    deleted: dict[str, Any] | None = None
    """The last Deployment the watch saw deleted: a copy of it that a write's answer brings
    later (the delete landed while the write was in flight) is not kept, unless it is newer
    than the deletion (the watch selects by the pool's label: a Deployment whose label was
    taken off comes as deleted, and a read finds it still there)."""

    schedules_round: datetime | None = None
    """When this loop last ran the pool's schedules (see `schedule_actions`)."""

    redis_url: str | None = None
    redis_url_read: float = 0.0
    redis_url_source: str = ""
    """The `spec.redis` the cached URL was resolved from."""
    redis_url_pods: frozenset[str] = frozenset()
    """The pool's pods when the URL was read: a new pod took the Secret's value of its time."""
    queue_address: str | None = None
    """The Redis server and queue the pool's workers serve, as last opened (see
    `queue_sharing`); None while the queue cannot be opened."""
    served: ServedQueue | None = None
    """The queue the pool's last round that opened one opened (unlike `queue_address`, kept
    while the queue cannot be opened): a round that opens another one finds the pool moved."""
    left_queues: dict[str, LeftQueue] = field(default_factory=dict)
    """Queues the pool left behind holding tasks, by address (see `queue_moves`)."""
    seen: bool = False
    """A round has looked at the pool (its spec read, its queue opened or not)."""
    queue_marks: QueueMarks | None = None
    """What the last round that read the queue's figures saw (see `queue_loss`): a failed
    read keeps it, another queue or Redis URL replaces it without a comparison."""

    last_status: dict[str, Any] | None = None
    """The status as last written, the base of the next write."""
    last_write: datetime | None = None
    failing_since: float | None = None
    """Monotonic time since which every observation found a problem; drives the backoff."""
    recovery: PoolRecovery = field(default_factory=PoolRecovery)
    """Shared by the pool's loop and its pods' event handler."""

    scaling_history: ScalingHistory | None = None
    """The scaling policy's memory; None until restored from the Deployment's annotation."""
    drains_swept: float | None = None
    """Monotonic time stale drain requests of the pool's pods were last cleared."""
    worker_credentials: WorkerCredentials | None = None
    """What the workers connect with, once decided (None: the pool's URL, no condition)."""
    granted: Grants | None = None
    """The rate limits and other queues of the spec the worker user's rights were last set
    for: a spec edit that changes them sets them before the Deployment changes."""
    credential_secrets: KnownSecrets = field(default_factory=KnownSecrets)
    memory: MemoryCheck = field(default_factory=MemoryCheck)
    """Whether the pool's Redis is full (read every round) or may evict its keys (every few
    minutes)."""
    guard: GuardState = field(default_factory=GuardState)
    """The pool's PodDisruptionBudget and which pods carry its busy label."""

    def remember_deployment(self, body: dict[str, Any] | None) -> None:
        """Keep the newest known Deployment; a late watch event for an older spec, an older
        copy of the same spec (a write's answer that arrives after the watch brought a status
        change made since), or a copy of one deleted since, is ignored. A copy of a deleted
        Deployment as new as its deletion is kept: what the watch took for a deletion was
        its pool label taken off, and it is still there."""
        current = self.deployment
        if body is not None and (
            (current is not None and _uid(body) == _uid(current)
             and _older(body, current))
            or (self.deleted is not None and _uid(body) == _uid(self.deleted)
                and _version_order(body, self.deleted) not in (0, 1))
        ):
            return
        self.deployment = body
        self.deployment_known = True

    def newer_spec_applied(self, generation: int) -> bool:
        """Whether a spec newer than `generation` was applied already: a caller that read the
        spec at `generation` would act on an older one."""
        return self.reconciled_generation is not None and generation < self.reconciled_generation

    def forget_deployment(self, deleted: dict[str, Any]) -> None:
        """The watch saw `deleted` go: no Deployment, unless a newer one is known already."""
        self.deleted = deleted
        current = self.deployment
        if current is None or _uid(current) == _uid(deleted):
            self.deployment = None
        self.deployment_known = True

    async def close_left_queues(self) -> None:
        left, self.left_queues = list(self.left_queues.values()), {}
        for queue in left:
            await queue.close()

    def failing_for(self, now: float) -> float | None:
        return None if self.failing_since is None else now - self.failing_since

    def cached_redis_url(self, now: float, source: str, pods: frozenset[str] | None) -> str | None:
        """The URL read before, while it can still be trusted.

        It is read again when `spec.redis` changed, when the queue could not be reached (the
        caller forgets the URL), when a pod appeared since (it started with the Secret's
        current value, which may be new), and at least every SECRET_RECHECK_SECONDS. A steady
        pool so costs no Secret reads.
        """
        if (
            self.redis_url is None
            or source != self.redis_url_source
            or now - self.redis_url_read >= SECRET_RECHECK_SECONDS
            or (pods is not None and not pods <= self.redis_url_pods)
        ):
            return None
        return self.redis_url

    def remember_redis_url(self, url: str, now: float, source: str,
                           pods: frozenset[str] | None) -> None:
        self.redis_url, self.redis_url_read, self.redis_url_source = url, now, source
        self.redis_url_pods = pods or frozenset()


def _older(body: dict[str, Any], current: dict[str, Any]) -> bool:
    """`body` is an older copy of the Deployment `current` is a copy of: an older spec, or
    the same spec at an earlier resourceVersion. Versions are compared only where both are
    integers, as etcd's are (the API calls them opaque; where they are not, the newest
    write or event wins, as before)."""
    if _generation(body) != _generation(current):
        return _generation(body) < _generation(current)
    return _version_order(body, current) == -1


def _version_order(body: dict[str, Any], other: dict[str, Any]) -> int | None:
    """-1, 0 or 1 as `body` was written before, with or after `other`; None when the
    versions are not both integers, as etcd's are (the API calls them opaque)."""
    mine, theirs = ((b.get("metadata") or {}).get("resourceVersion") for b in (body, other))
    if not (isinstance(mine, str) and isinstance(theirs, str)
            and mine.isdigit() and theirs.isdigit()):
        return None
    return (int(mine) > int(theirs)) - (int(mine) < int(theirs))


def _uid(body: dict[str, Any]) -> Any:
    return (body.get("metadata") or {}).get("uid")


def _generation(body: dict[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: KubeApi | None = None
    redis: RedisClients = field(default_factory=RedisClients)
    pools: dict[tuple[str, str], PoolState] = field(default_factory=dict)
    installed_crd: InstalledCrd = field(default_factory=InstalledCrd)
    """Whether the cluster's AgentPool CRD knows every field of this operator."""

    def __post_init__(self) -> None:
        if self.settings.redis_address_map:
            self.redis = RedisClients(self.settings.redis_address_map)

    @property
    def api(self) -> KubeApi:
        if self.kube is None:
            raise RuntimeError("the Kubernetes client is not configured yet")
        return self.kube

    def pool(self, namespace: str, name: str) -> PoolState:
        return self.pools.setdefault((namespace, name), PoolState())

    async def forget(self, namespace: str, name: str) -> None:
        state = self.pools.pop((namespace, name), None)
        if state is not None:
            await state.close_left_queues()
        await self.redis.forget(namespace, name)

    async def close(self) -> None:
        for state in list(self.pools.values()):
            await state.close_left_queues()
        await self.redis.close()
        if self.kube is not None:
            self.kube.close()
            self.kube = None
