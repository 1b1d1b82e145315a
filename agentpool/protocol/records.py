"""What the protocol's calls take and return, and the errors they raise."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentpool.protocol.bounds import FINAL_EVENT, FINAL_STATES
from agentpool.protocol.ids import worker_id


class ProtocolError(ValueError):
    """A request the protocol refuses; nothing was stored."""


class PayloadTooLarge(ProtocolError):
    pass


class DeadLettersCut(Exception):
    """A requeue or purge of dead tasks in pages that Redis failed part-way through: the
    pages before the failure were done (`handled` dead tasks, `revived` tasks after them
    back); running it again does the rest. Its cause is Redis's error."""

    def __init__(self, handled: int, revived: int) -> None:
        super().__init__(f"{handled} dead tasks handled before Redis failed")
        self.handled = handled
        self.revived = revived


class TaskNotFound(ProtocolError):
    """No such task. Raised by a `submit_many` whose task to run after was found gone after
    some chunks went in, `submitted` holds the ids of those tasks (stored, deferred)."""

    def __init__(self, message: str, submitted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.submitted = list(submitted)


class FailOutcome(enum.StrEnum):
    """What became of a run's task when its holder reported it failed (`fail`), cancelled
    (`cancelled`) or handed it back (`release`)."""

    RETRY = "retry"
    """Delayed for its next attempt."""
    DEAD = "dead"
    """Attempts used up, or not retryable: in the dead letters."""
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """No retry could start before the task's expiry: it ended cancelled, as expired."""
    REQUEUED = "requeued"
    """Back in the queue at its place, the attempt not counted (a release)."""
    STALE = "stale"
    """Nothing: the reporter no longer held the task (fenced off; it moved on)."""


class CancelOutcome(enum.StrEnum):
    """What a cancel did."""

    CANCELLED = "cancelled"
    """It was waiting (queued, delayed, deferred, dead): it ended cancelled."""
    REQUESTED = "requested"
    """It runs: its worker is told to stop it, and records the cancel."""
    FINISHED = "finished"
    """It had ended already: nothing changed."""
    UNKNOWN = "unknown"
    """No such task."""


@dataclass(frozen=True)
class ClaimedTask:
    id: str
    token: str
    attempts: int
    max_attempts: int
    payload_raw: str
    created_ms: int
    claimed_ms: int
    checkpoint_raw: str | None = None
    """The last checkpoint an earlier attempt saved (JSON), if any."""
    timeout_ms: int | None = None
    """The submit's `task_timeout` (ms), if it gave one (the worker keeps the shorter of it
    and the pool's task timeout)."""
    after: tuple[str, ...] = ()
    """The tasks it was submitted to run after (its submit's `after`)."""
    tenant: str | None = None
    """Whose task it is (its submit's `tenant`), if its submit said."""
    ready_ms: int | None = None
    """When it was last ready to run: its submit, or later the end of its delay or retry
    backoff, of the tasks it ran after, its requeue (None: its submit)."""

    @property
    def wait_seconds(self) -> float:
        """Time this run waited in the queue: from the moment the task was last ready to run
        to this start (a delay, a retry's backoff, the tasks it runs after and earlier runs are
        not waiting for a worker)."""
        ready = self.created_ms if self.ready_ms is None else self.ready_ms
        return max(0.0, (self.claimed_ms - ready) / 1000)


@dataclass(frozen=True)
class RunEvents:
    """Events one run emitted, in order, for :meth:`TaskQueue.record`."""

    task_id: str
    attempt: int
    items: Sequence[tuple[str, str]]
    """(kind, data JSON) pairs."""
    token: str = ""
    """The run's fencing token: once the task is held by another run (or by none), the
    events are dropped. Empty: only a final task refuses them."""


@dataclass(frozen=True)
class ClaimBatch:
    tasks: list[ClaimedTask]
    next_due_in: float | None
    """Seconds until the earliest delayed task is due, if any."""
    queued_left: int = 0
    """Tasks still queued after this claim."""


@dataclass(frozen=True)
class Heartbeat:
    lost: list[str]
    cancel: list[str]
    drain_requested: bool
    leases_overdue: float = 0.0
    """How long ago the queue's earliest lease ran out (seconds; 0 when none has)."""
    settings_restored: bool = False
    """The queue had no settings and this heartbeat wrote them: Redis lost its data."""


@dataclass(frozen=True)
class DeadRequeued:
    requeued: int
    """Dead tasks queued again."""
    revived: int
    """Tasks their deaths had cancelled that wait for them again (deferred)."""


@dataclass(frozen=True)
class RequeueResult:
    requeued: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    instances: int = 0

    @property
    def total(self) -> int:
        return self.requeued + self.dead_lettered + self.cancelled

    def __add__(self, other: RequeueResult) -> RequeueResult:
        return RequeueResult(
            self.requeued + other.requeued,
            self.dead_lettered + other.dead_lettered,
            self.cancelled + other.cancelled,
            self.instances + other.instances,
        )


@dataclass(frozen=True)
class ReapResult(RequeueResult):
    by_worker: Mapping[str, RequeueResult] = field(default_factory=dict)
    """What was moved of each worker instance that held a task whose lease expired."""
    expired_waiting: int = 0
    """Waiting tasks past their expiry that were ended, at the head of the queue or of the due
    delayed tasks, or deferred (not in `total`; a task this reap requeued may be one of
    them)."""


@dataclass(frozen=True)
class QueueFigures:
    queued_by_priority: dict[int, int]
    due_delayed: int
    delayed: int
    in_flight: int
    dead: int
    workers: int
    stats: dict[str, int] = field(default_factory=dict)
    used: bool = True
    """Something was ever submitted to the queue or a worker serves it; False for a name
    nobody used (a typo looks like an empty queue otherwise)."""
    deferred: int = 0
    """Tasks waiting for the tasks they run after (``submit(after=...)``): not runnable, so
    neither in `queued` nor in the backlog the autoscaler reads."""
    capped: int = 0
    """Tasks parked for their tenant's cap on runs at once (:meth:`TaskQueue.set_tenant_caps`):
    counted in `queued`, not in `queued_by_priority`; no claim takes them until the tenant has
    room, so the autoscaler does not count them."""

    @property
    def queued(self) -> int:
        """Tasks ready to run now (due delayed tasks count: a worker will promote them), and
        those that wait for their tenant's cap."""
        return sum(self.queued_by_priority.values()) + self.due_delayed + self.capped

    @property
    def backlog(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True)
class TaskEvent:
    id: str
    """The stream entry id (``<ms>-<seq>``): resume after it with ``events(after=id)``."""
    kind: str
    data: Any
    attempt: int

    @property
    def time(self) -> float:
        """When it was appended, epoch seconds (Redis's clock)."""
        return int(self.id.partition("-")[0]) / 1000

    @property
    def final(self) -> bool:
        return self.kind == FINAL_EVENT


@dataclass(frozen=True)
class Progress:
    fraction: float
    message: str | None = None


@dataclass(frozen=True)
class TaskInfo:
    id: str
    state: str
    payload: Any
    attempts: int
    priority: int
    created_ms: int
    started_ms: int | None
    finished_ms: int | None
    result: Any
    error: str | None
    owner: str | None
    max_attempts: int | None
    progress: Progress | None = None
    """The latest ``progress`` event of any of its runs."""
    expires_ms: int | None = None
    """When a run may no longer start (Redis time, ms): the submit's `expires`."""
    timeout_ms: int | None = None
    """How long one run of it may last (ms), if its submit gave a `task_timeout`."""
    after: tuple[str, ...] = ()
    """The tasks it runs after (its submit's `after`): it is ``deferred`` until they all
    succeed."""
    tenant: str | None = None
    """Whose task it is (its submit's `tenant`): tenants take turns in the queue."""
    capped: bool = False
    """Queued, but out of the queue until its tenant has fewer runs than its cap on runs at
    once (:meth:`TaskQueue.set_tenant_caps`): no claim takes it meanwhile."""

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def expired_waiting(self, now_ms: float) -> bool:
        """Waiting to run past its expiry: the claim that reaches it (or the reaper) ends it."""
        return (self.expires_ms is not None and self.state in ("queued", "delayed", "deferred")
                and now_ms >= self.expires_ms)


@dataclass
class WorkerInfo:
    """What a worker instance reports about itself on every heartbeat."""

    pod: str
    instance: str
    concurrency: int
    state: str = "running"
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.time)
    runs_since: tuple[int, ...] = ()
    """When each task it holds was claimed (ms, Redis clock): how long its runs have been
    going, which scale-down reads to drain the pods that will empty first."""
    limit_window: Mapping[str, Any] | None = None
    """Run-seconds busy and spent waiting on each rate limit over the last minute
    (``{"busy": s, "waited": {limit: s}}``), when the pool declares rate limits."""
    not_ready: str = ""
    """Why a ``running`` worker claims nothing, as its ``/readyz`` says it (its ``ready`` hook
    failed, every slot is stuck, Redis is full); "" while it claims. For the listings only:
    nothing decides on it."""

    @property
    def worker_id(self) -> str:
        return worker_id(self.pod, self.instance)


@dataclass(frozen=True)
class WorkerState:
    """A live worker instance as the listings show it (`TaskQueue.workers`: the CLI, the
    console, the operator's status); `InstanceState` is what recovery reads of every
    registered instance, live or not, and `WorkerInfo` what an instance reports."""

    worker_id: str
    pod: str
    instance: str
    state: str
    in_flight: int
    """Tasks leased to it now (what `list_tasks("running")` shows as its own), not a count
    from its last heartbeat."""
    done: int
    failed: int
    concurrency: int
    last_heartbeat: float
    started: float
    drain_requested: bool = False
    limit_window: Mapping[str, Any] | None = None
    """What the worker reported of its rate-limit waits (see WorkerInfo.limit_window)."""
    not_ready: str = ""
    """Why a ``running`` worker claims nothing, as of its last heartbeat (see
    WorkerInfo.not_ready); "" while it claims, or from a worker that does not say."""


@dataclass(frozen=True)
class InstanceState:
    """A registered worker instance, heart-beating or not, with what Redis says it holds."""

    worker_id: str
    pod: str
    instance: str
    started: float
    last_seen: float
    """Its last heartbeat (or its first claim, before any heartbeat), epoch seconds on the
    reader's clock."""
    held: int
    """Tasks leased to it."""
    runs_since: tuple[float, ...] = ()
    """When each of its runs began (epoch seconds on the reader's clock), as of its last
    heartbeat."""
