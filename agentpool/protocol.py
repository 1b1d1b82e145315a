"""The task protocol on Redis: the one module producers, workers and the operator share.

Every state change is one Lua script (one round trip, atomic). A queue's keys live under
``ap:{<queue>}:`` so they share a hash tag and one Redis Cluster slot. Task states:

    queued --claim--> running --complete--> succeeded
    delayed --due--> queued     running --fail--> delayed (retry) | dead
                                running --holder lost--> queued | dead (attempts used up)
    queued/delayed/dead --cancel--> cancelled;  running --cancel--> (its worker stops it)

A claim hands out a fencing token; only the holder of the current token can complete or fail
the task, so a worker that wakes up after its task was requeued cannot overwrite anything.

A task may have an event stream (``ev:<id>``, capped, kept as long as the task): the events its
runs emit, each tagged with its attempt, closed by a ``final`` event written in the same step
as the final state, so :meth:`TaskQueue.events` can follow it live and know when it has all.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import random
import re
import time
import unicodedata
import uuid
import weakref
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentpool.coalesce import Coalescer
from agentpool.connection import is_cluster, node_of_key
from agentpool.direct import DEFAULT_LIMIT as DEFAULT_LINE_LIMIT
from agentpool.direct import BlockingScriptLine, ScriptLine
from agentpool.durability import (
    DEFAULT_REPLICA_TIMEOUT,
    Durability,
    NotReplicated,
    parse_durability,
    wait_command,
)
from agentpool.lua_source import script_source
from agentpool.redis_errors import redis_full
from agentpool.seconds import as_seconds, given_text, seconds_text, short_repr

MAX_PRIORITY = 9
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
DEFAULT_MAX_RESULT_BYTES = 1_048_576
"""A worker's default for the largest result it stores (AGENTPOOL_MAX_RESULT_BYTES): every
result stays in Redis for the result TTL, in the memory the whole fleet shares."""
MAX_RESULT_BYTES_LIMIT = 512 * 1_048_576
"""Redis's own limit on one value (proto-max-bulk-len's default)."""
DEFAULT_IDEMPOTENCY_TTL = 86_400
LISTEN_SECONDS = 30
"""How long one `TaskQueue.listen_for_finishes` keeps finishes published on ``done``."""
COMPLETE_CHUNK = 500
"""Completions per script call of a group commit."""
MAX_SUBMIT_CHUNK = 1000
"""Tasks per script call of ``submit_many``: Lua unpacks at most about 8,000 values at once."""
MAX_DELAY_SECONDS = 365 * 86400
DEFAULT_TASK_TIMEOUT_SECONDS = 600
"""A pool's task timeout when it sets none (taskTimeoutSeconds, AGENTPOOL_TASK_TIMEOUT_SECONDS)."""
MAX_TASK_TIMEOUT_SECONDS = 7 * 86400
"""The longest task timeout a pool or a task (taskTimeoutSeconds, submit's `task_timeout`)
has."""
MAX_ATTEMPTS_LIMIT = 100
"""The most attempts a task or a queue allows (a pool's maxAttempts, a worker's
AGENTPOOL_MAX_ATTEMPTS)."""
MAX_AFTER = 100
"""The most tasks one task may run after (``submit(after=...)``)."""
MAX_TENANT_CHARS = 128
"""The longest tenant name a submit takes (see :meth:`TaskQueue.submit`)."""
MAX_TENANT_WEIGHT = 100
"""The largest weight a tenant may have (:meth:`TaskQueue.set_tenant_weights`): it takes about
that many turns to one of a tenant of weight 1. Its place moves 1/weight of a turn per task,
rounded to 1/512 (common.lua): weight w acts as 512/round(512/w), within 9 % of w (exact for
powers of two; 3 acts as 2.99, 10 as 10.04, 50 as 51.2, 94 to 100 as 102.4)."""
MAX_TENANT_RUNS = 1000
"""The largest cap on one tenant's runs at once (:meth:`TaskQueue.set_tenant_caps`)."""
WORKER_LIVENESS_WINDOW = 30.0
WAIT_RECONNECT_SECONDS = 30.0
NEWS_AT_ONCE = 1000
"""Finishes a wait takes from what it has received before it reads the tasks they name."""
SUBSCRIBED_WAITS = 32
"""Waits of one client that hold a subscription to their queue's finishes; more poll the task
once a second. A subscription holds a pooled connection while its wait reads the task on
another: with as many waits as the pool has connections, none could read."""
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
TASK_ID = re.compile(r"^[0-9a-f]{32}\Z")
"""What `submit` returns: a random UUID in 32 lowercase hexadecimal digits."""
_NEXT_ENTRY_BYTES = 33
"""A ``next:`` key holds the ids of the tasks after a task (each a TASK_ID), each followed by
a comma."""
FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})
_STATE_SETS = {"queued": "queued", "delayed": "delayed", "deferred": "deferred",
               "running": "leases"}
TASK_LIST_STATES = ("queued", "delayed", "deferred", "running", "dead")
MAX_EVENT_BYTES = 65_536
FINAL_EVENT = "final"
"""The kind of the event that closes a task's stream (data: ``{"state", "error"?}``)."""
EVENT_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")


class ProtocolError(ValueError):
    """A request the protocol refuses; nothing was stored."""


class PayloadTooLarge(ProtocolError):
    pass


class TaskNotFound(ProtocolError):
    """No such task. Raised by a `submit_many` whose task to run after was found gone after
    some chunks went in, `submitted` holds the ids of those tasks (stored, deferred)."""

    def __init__(self, message: str, submitted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.submitted = list(submitted)


class FailOutcome(enum.StrEnum):
    RETRY = "retry"
    DEAD = "dead"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """No retry could start before the task's expiry: it ended cancelled, as expired."""
    REQUEUED = "requeued"
    STALE = "stale"


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"
    REQUESTED = "requested"
    FINISHED = "finished"
    UNKNOWN = "unknown"


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

    @property
    def wait_seconds(self) -> float:
        """Time from submit to this start (includes earlier attempts and backoff)."""
        return max(0.0, (self.claimed_ms - self.created_ms) / 1000)


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

    @property
    def worker_id(self) -> str:
        return worker_id(self.pod, self.instance)


@dataclass(frozen=True)
class WorkerState:
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


def worker_id(pod: str, instance: str) -> str:
    return f"{pod}:{instance}"


def new_instance_id() -> str:
    return uuid.uuid4().hex[:12]


def key_prefix(queue: str) -> str:
    return f"ap:{{{queue}}}:"


def worth_retrying(error: BaseException, *, reached: bool = True, failing_for: float = 0.0,
                   patience: float = float("inf")) -> bool:
    """Whether a caller that waits on Redis (`TaskQueue.wait`, `TaskQueue.events`) should try
    again after `error`: a lost connection (a failover) is worth it once Redis was reached, for
    up to `patience` seconds in a row. A Redis never reached, refused credentials and a
    deadline (the builtin TimeoutError, an OSError too) are not: retrying mends none."""
    if not isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
        return False
    if isinstance(error, AuthenticationError | TimeoutError):
        return False
    return reached and failing_for <= patience


def retry_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0,
                rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    step = min(cap, base * 2.0 ** min(max(0, attempt - 1), 1023))
    return step / 2 + (rng or random).uniform(0, step / 2)


def encode_event(kind: str, data: Any) -> str:
    """An event's data as JSON, after checking its kind and size (ProtocolError if refused)."""
    if not isinstance(kind, str) or not EVENT_KIND.match(kind) or kind == FINAL_EVENT:
        raise ProtocolError(
            f"invalid event kind {kind!r}: use 1-64 letters, digits, '.', '_', ':' or '-', "
            f"starting with a letter or digit (and not {FINAL_EVENT!r})"
        )
    try:
        raw, size = compact_json(data)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"event data is not JSON-serialisable: {exc}") from None
    if size > MAX_EVENT_BYTES:
        raise ProtocolError(f"event data is over the {MAX_EVENT_BYTES}-byte limit")
    return raw


def encode_progress(fraction: float, message: str | None = None) -> dict[str, Any]:
    if not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ProtocolError(f"progress must be a number between 0 and 1, got {fraction!r}")
    data: dict[str, Any] = {"fraction": round(float(fraction), 4)}
    if message is not None:
        data["message"] = str(message)[:500]
    return data


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every payload: ``json.dumps`` with options builds a new one per call."""
_ASCII_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def compact_json(value: Any) -> tuple[str, int]:
    """`value` as compact JSON, with its size in UTF-8 bytes. A string holding a lone
    surrogate (Python's strings may, UTF-8 cannot: Redis would never receive it) is written
    with ASCII escapes instead, which is valid JSON and reads back the same. TypeError or
    ValueError when `value` is not JSON, RecursionError when it is nested too deeply."""
    raw = _COMPACT_JSON.encode(value)
    if raw.isascii():
        return raw, len(raw)
    try:
        return raw, len(raw.encode())
    except UnicodeEncodeError:
        raw = _ASCII_JSON.encode(value)
        return raw, len(raw)


def tenant_arg(tenant: str | None) -> str:
    """The submit script's `tenant` value ('' for none); ProtocolError for a name that is
    empty, too long or holds a control character (it is shown in listings and logs)."""
    if tenant is None:
        return ""
    if not isinstance(tenant, str) or not 1 <= len(tenant) <= MAX_TENANT_CHARS \
            or has_control_character(tenant):
        raise ProtocolError(f"tenant must be a name of 1 to {MAX_TENANT_CHARS} characters, "
                            f"none a control character, got {short_repr(tenant)}")
    return tenant


_WEIGHT_TEXT = re.compile(r"[1-9][0-9]?|100")
"""A weight as `set_tenant_weights` writes it."""


def tenant_weight_arg(weight: int) -> int:
    """A tenant's weight, 1 to MAX_TENANT_WEIGHT; ProtocolError otherwise."""
    if isinstance(weight, bool) or not isinstance(weight, int) \
            or not 1 <= weight <= MAX_TENANT_WEIGHT:
        raise ProtocolError(f"a tenant's weight must be a whole number from 1 to "
                            f"{MAX_TENANT_WEIGHT}, got {short_repr(weight)}")
    return weight


def tenant_cap_arg(cap: int) -> int:
    """A cap on a tenant's runs at once, 1 to MAX_TENANT_RUNS; ProtocolError otherwise."""
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_TENANT_RUNS:
        raise ProtocolError(f"a tenant's cap on runs at once must be a whole number from 1 to "
                            f"{MAX_TENANT_RUNS}, got {short_repr(cap)}")
    return cap


_CAP_TEXT = re.compile(r"[1-9][0-9]{0,3}")
"""A cap as `set_tenant_caps` writes it."""


@dataclass(frozen=True)
class TenantCaps:
    """Caps on tenants' runs at once (:meth:`TaskQueue.set_tenant_caps`)."""

    caps: Mapping[str, int] = field(default_factory=dict)
    """Per tenant named."""
    default: int | None = None
    """Every other tenant's; None: no cap. Tasks without a tenant have none."""

    def of(self, tenant: str | None) -> int | None:
        if tenant is None:
            return None
        return self.caps.get(tenant, self.default)


def has_control_character(text: str) -> bool:
    """Whether `text` holds a character of Unicode's category Cc (U+0000-001F, U+007F-009F:
    a tab, a line break, an escape), what RE2's ``\\p{Cc}`` matches in the CRD's rule."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def _after_arg(after: Iterable[str] | None) -> str:
    """The submit script's `after` value: the ids, comma-separated, each once, in order."""
    if after is None:
        return ""
    ids = [after] if isinstance(after, str) else list(after)
    for task_id in ids:
        if not isinstance(task_id, str) or not task_id or "," in task_id:
            raise ProtocolError(f"after takes task ids, got {short_repr(task_id)}")
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_AFTER:
        raise ProtocolError(f"a task may run after at most {MAX_AFTER} tasks, got {len(unique)}")
    return ",".join(unique)


def _submitted(reply: tuple[int, str, int], queue: str) -> str:
    """The id of a submit's task, from the script's (created, id); a task it was to run after
    that the queue does not know raises TaskNotFound."""
    created, task_id, _ = reply
    if created < 0:
        _unknown_after(task_id, queue)
    return task_id


def _unknown_after(task_id: str, queue: str, submitted: Sequence[str] = ()) -> NoReturn:
    went_in = (f"{len(submitted)} {'task was' if len(submitted) == 1 else 'tasks were'} "
               "submitted before it was found gone, the rest were not")
    raise TaskNotFound(
        f"after: no task {task_id} in queue {queue} (never submitted, or finished longer ago "
        f"than the result TTL); {went_in if submitted else 'nothing was submitted'}",
        submitted)


def _keys_for(payloads: Sequence[Any],
              keys: Iterable[str | None] | None) -> list[str | None]:
    """`submit_many`'s idempotency keys, one per payload (None: no key)."""
    if keys is None:
        return [None] * len(payloads)
    if isinstance(keys, str):
        raise ProtocolError("idempotency_keys takes one key per payload, not one string")
    given = list(keys)
    if len(given) != len(payloads):
        raise ProtocolError(f"idempotency_keys has {len(given)} keys for {len(payloads)} "
                            "payloads: give one per payload (None for a task without one)")
    for key in given:
        if key is not None and (not isinstance(key, str) or not key):
            raise ProtocolError(f"an idempotency key is a non-empty string or None, got "
                                f"{short_repr(key)}")
    return given


def new_task_id() -> str:
    """A new task's id: 32 random hex digits (128 bits, as a UUID's hex form, without its
    version bits and for a quarter of the CPU)."""
    return os.urandom(16).hex()


def encode_checkpoint(state: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    try:
        raw, size = compact_json(state)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"checkpoint is not JSON-serialisable: {exc}") from None
    if size > limit:
        raise PayloadTooLarge(f"checkpoint is over the {limit}-byte limit")
    return raw


def encode_payload(payload: Any, limit: int) -> str:
    """The payload as compact JSON: any JSON value, at most `limit` bytes once encoded."""
    try:
        raw, size = compact_json(payload)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"payload is not JSON-serialisable: {exc}") from None
    if size > limit:
        raise PayloadTooLarge(
            f"payload is {size} bytes encoded as JSON; the limit is {limit} bytes"
            f"{_in_binary_units(limit)}"
        )
    return raw


def _in_binary_units(size: int) -> str:
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f" ({size / factor:.3g} {unit})"
    return ""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_text(value: Any) -> str:
    """Text read from Redis that another writer may have put there: never a decoding error."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int = 0) -> int:
    """A number field of a task hash; `default` for one written behind the protocol's back."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _json_or_raw(value: Any) -> Any:
    if value is None:
        return None
    text = _decode_text(value)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        return text


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
    ) -> None:
        """`durability` replicated: submits and completions wait for one replica
        (agentpool.durability). With a `line` (agentpool.direct), script calls on the queue's
        own client go on the line's connections."""
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
        keys, argv = [self.prefix + "queued"], [self.prefix, *args]
        if self.line is not None and (client is None or client is self.redis):
            return await self.line.run(self._script(name), keys, argv)
        return await self._script(name)(keys=keys, args=argv, client=client)

    def task_key(self, task_id: str) -> str:
        return f"{self.prefix}t:{task_id}"

    def next_key(self, task_id: str) -> str:
        """The list of the tasks submitted to run after the task (see _NEXT_ENTRY_BYTES)."""
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
        delay = _seconds_given("delay", delay)
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
            expires_ms = _expiry_ms(expires, delay, delay_ms)
        timeout_ms: int | str = "" if task_timeout is None else _timeout_ms(task_timeout)
        raw = encode_payload(payload, self.max_payload_bytes)
        return [
            new_task_id(), raw, priority, delay_ms,
            "" if max_attempts is None else max_attempts,
            idempotency_key or "", DEFAULT_IDEMPOTENCY_TTL, expires_ms, timeout_ms,
            _after_arg(after), tenant_arg(tenant),
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
        reply = await self._submits.call(args, size=len(args[1]))
        task_id = _submitted(reply, self.name)
        self._check_replicated("submit", reply[2], task_id)
        return task_id, task_id == args[0]

    async def _submit_one(self, args: list[Any]) -> tuple[int, str, int]:
        if self.durability is Durability.NONE:
            reply = await self._run("submit", *args)
            return int(reply[0]), _s(reply[1]), 1
        return (await self._submit_group([args]))[0]

    async def _submit_group(self, group: Sequence[list[Any]]) -> list[tuple[int, str, int]]:
        """One script call for concurrent submits (agentpool.coalesce): (created, id, acked)
        each, as the submit script answers."""
        flat = [value for args in group for value in args]
        if self.durability is Durability.NONE:
            reply, acked = await self._run("submit", *flat), 1
        else:
            reply, _, acked = await _scripts_in_one_trip(
                self.redis, [(self, "submit", flat), *self._durable_write()],
                then=self._wait_commands())
        return [(int(reply[2 * i]), _s(reply[2 * i + 1]), int(acked))
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
        reply = cast(list[Any], line.run(script.sha, script.script, [self.prefix + "queued"],
                                         [self.prefix, *args]))
        return _submitted((int(reply[0]), _s(reply[1]), 1), self.name)

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
        keys = _keys_for(items, idempotency_keys)
        all_args = [self._submit_args(p, priority, delay, key, max_attempts, expires,
                                      task_timeout, tenant=tenant)
                    for p, key in zip(items, keys, strict=True)]
        after_ids = _after_arg(after)
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
            replies = await _scripts_in_one_trip(self.redis, [call, *self._durable_write()],
                                                 then=self._wait_commands())
            if self.durability is Durability.REPLICATED:
                replicated = replicated and int(replies[-1]) >= 1
            if plain:
                ids.extend(args[0] for args in part)
                created.extend(args[0] for args in part)
                continue
            answers = replies[0]
            for i in range(len(part)):
                if int(answers[2 * i]) < 0:
                    _unknown_after(_s(answers[2 * i + 1]), self.name, submitted=created)
            for i in range(len(part)):
                ids.append(_s(answers[2 * i + 1]))
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
        return _task_info(task_id, await self.redis.hgetall(self.task_key(task_id)))

    async def results_of(self, task_ids: Sequence[str]) -> dict[str, Any]:
        """The results of these tasks, by id, in their order (a run's ``ctx.results_before()``
        reads those of the tasks its claim says it ran after); a task whose record is gone (kept
        for the result TTL after it finished) is left out. One round trip."""
        return {info.id: info.result for info in await self.get_many(task_ids)}

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskInfo]:
        """Several tasks in one round trip; ids with no task are left out."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.task_key(task_id))
            replies = await pipe.execute()
        infos = (_task_info(i, raw) for i, raw in zip(task_ids, replies, strict=True))
        return [info for info in infos if info is not None]

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
        seconds passed since the call, lost connections retried the same way. A caller that
        stops before the last closes it (``contextlib.aclosing``), which ends its subscription.

        One subscription to the queue's finishes serves every id: a finish published reads
        that task's state again, and a second without one, a renewal of the listening flag
        (every LISTEN_SECONDS / 3, however busy the channel) or a reconnection reads every
        pending task's, a pipelined HGET each (a subscription confirmed late, a finish
        published while it was being renewed, a flag Redis lost: the read catches up with
        whatever the channel missed). A task's record is read whole once, when it is final.
        The loop checks the deadline itself as well: on Python 3.11 a cancellation that meets
        a finishing ``asyncio.wait_for`` inside redis-py is dropped, and a timeout's single
        cancellation with it."""
        pending: dict[str, str | None] = dict.fromkeys(task_ids)
        """The ids still to hand over, each with its state last read (None: not read yet)."""
        if not pending:
            return
        subscribed = _SUBSCRIBED_WAITS.get(self.redis, 0) < SUBSCRIBED_WAITS
        done = DoneSignal(self.redis, self.prefix + "done", poll=not subscribed)
        if subscribed:
            _SUBSCRIBED_WAITS[self.redis] = _SUBSCRIBED_WAITS.get(self.redis, 0) + 1
        deadline = None if timeout is None else time.monotonic() + timeout
        failing_since: float | None = None
        reached = False
        listened = -float(LISTEN_SECONDS)
        to_read, news_first = set(pending), False
        try:
            while pending:
                finished: list[TaskInfo] = []
                try:
                    async with asyncio.timeout(
                            None if deadline is None else _time_left(deadline, float("inf"))):
                        if news_first:
                            to_read = await _news_of(done, pending, deadline,
                                                     until=listened + LISTEN_SECONDS / 3)
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
                except (RedisConnectionError, RedisTimeoutError, OSError) as error:
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
                _SUBSCRIBED_WAITS[self.redis] -= 1
            await done.aclose()

    async def _finished_among(self, task_ids: Iterable[str],
                              pending: dict[str, str | None]) -> list[TaskInfo]:
        """The tasks of `task_ids` now final, read whole; `pending` notes the others' states.
        TaskNotFound for one with no record (see :meth:`wait`)."""
        ids = [task_id for task_id in task_ids if task_id in pending]
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.task_key(task_id), "state")
            states = [None if raw is None else _s(raw) for raw in await pipe.execute()]
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
        """The task's events, oldest first, from the start or after the event id `after`.

        With `follow`, waits for new ones until the task is final (its ``final`` event is the
        last one yielded; a task that never emitted ends without one). Resumes from the last
        event it yielded after a lost connection, so none is missed or repeated (unless the
        stream's cap dropped it first). Raises TaskNotFound for an unknown task.
        """
        key = self.events_key(task_id)
        last = after or "0-0"
        info = await self.get(task_id)
        if info is None:
            raise TaskNotFound(f"no task {task_id} in queue {self.name}")
        follow = follow and not info.done  # a final task's stream is complete: no waiting
        failures = 0
        after_final = False
        while True:
            try:
                if after_final and await self._ended_at(task_id, key, last):
                    return
                after_final = False
                entries: list[Any]
                if follow:
                    reply = cast(list[Any], await self.redis.xread(
                        {key: last}, count=1000, block=int(block_seconds * 1000)))
                    entries = reply[0][1] if reply else []
                else:
                    entries = cast(list[Any], await self.redis.xrange(
                        key, min=f"({last}", count=1000))
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
                if not worth_retrying(error):
                    raise
                failures += 1
                await asyncio.sleep(retry_delay(failures, base=0.1, cap=2.0))
                continue
            failures = 0
            for entry_id, fields in entries:
                event = _task_event(entry_id, fields)
                last = event.id
                yield event
            after_final = event.final

    async def _ended_at(self, task_id: str, key: str, last: str) -> bool:
        """A ``final`` event ends the stream unless the task went on (a dead task requeued
        runs again, its next attempt's events after that ``final``)."""
        info = await self.get(task_id)
        if info is not None and not info.done:
            return False
        return not await self.redis.xrange(key, min=f"({last}", count=1)

    async def cancel(self, task_id: str) -> CancelOutcome:
        return CancelOutcome(_s(await self._run("cancel", task_id, call_id())))

    async def cancel_waiting(self, *, batch: int = 1000) -> int:
        """Cancel every task waiting to run (queued, deferred, or delayed: a delayed submit, a
        retry waiting out its backoff) that was submitted before this call, as :meth:`cancel`
        cancels one; running tasks go on, and tasks submitted meanwhile are left (unless they
        run after a task cancelled here: they end with it). Each script call removes or passes
        over at most `batch` entries, so that Redis serves others between them. Returns how
        many were cancelled, those ended with a task they run after included.

        A call goes on where the last one stopped: in the queue after the last task it passed
        over (a task placed in turn after the call began may lie among older ones), in the
        delayed set past the newer entries it passed over. A task that enters the queue
        meanwhile where a call already looked (handed back, come due, released by the end of
        the tasks it ran after) or a claim promoting delayed entries may hide one from it, so
        a pass that cancelled anything is followed by another from the start, until one
        cancels nothing."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a whole number of at least 1, got {batch!r}")
        last = int(await self.redis.get(self.prefix + "seq") or 0)
        total = this_pass = offset = band = 0
        after = tops = ""
        while True:
            done, more, offset, band, after_raw, tops_raw = await self._run(
                "cancel_waiting", last, batch, offset, band, after, tops)
            after, tops = _s(after_raw), _s(tops_raw)
            total += int(done)
            this_pass += int(done)
            if int(more):
                continue
            if not this_pass:
                return total
            this_pass = offset = band = 0
            after = tops = ""

    # -- workers ---------------------------------------------------------------------------

    async def claim(self, worker: str, count: int, lease_seconds: float,
                    promote_limit: int = 100) -> ClaimBatch:
        return _claim_batch(await self._run(
            "claim", *_claim_args(worker, count, lease_seconds, promote_limit)))

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
        args = _claim_args(worker, count, lease_seconds, promote_limit)
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
        return _claim_batch(reply)

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
        replies = await _scripts_in_one_trip(self.redis, calls, then=wait)
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
        return _json_or_raw(await self.redis.get(f"{self.prefix}cp:{task_id}"))

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
        reply = await self._run("fail", task.id, task.token, storable_text(error[:4000]),
                                int(retryable), round(delay * 1000), "fail")
        return FailOutcome(_s(reply))

    async def cancelled(self, task: ClaimedTask) -> FailOutcome:
        """Record that a running task stopped on its cancel request."""
        return FailOutcome(_s(await self._run("fail", task.id, task.token, "cancelled", 0, 0,
                                              "cancel")))

    async def release(self, task: ClaimedTask, reason: str) -> FailOutcome:
        """Hand an unfinished task back to the queue without spending an attempt (drain)."""
        return FailOutcome(_s(await self._run("fail", task.id, task.token, reason, 1, 0,
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
        })
        pairs = [x for item in held.items() for x in item]
        max_attempts, result_ttl = settings if settings is not None else ("", "")
        lost, cancel, drain, overdue_ms, restored = await self._run(
            "heartbeat", worker.worker_id, worker.pod, int(lease_seconds * 1000), info,
            max_attempts, result_ttl, *pairs
        )
        return Heartbeat([_s(i) for i in lost], [_s(i) for i in cancel], bool(drain),
                         int(overdue_ms) / 1000, bool(restored))

    async def request_drain(self, pod_or_worker: str) -> None:
        """Ask a pod's workers (or one instance) to stop claiming and finish what they hold."""
        await self.redis.hset(self.prefix + "drain", pod_or_worker, int(time.time()))

    async def clear_drain(self, pod_or_worker: str) -> None:
        await self.redis.hdel(self.prefix + "drain", pod_or_worker)

    async def drain_requests(self) -> dict[str, float]:
        raw = await self.redis.hgetall(self.prefix + "drain")
        return {_s(k): float(v) for k, v in raw.items()}

    # -- tenants ---------------------------------------------------------------------------

    async def tenant_weights(self) -> dict[str, int]:
        """The tenants given a weight (:meth:`set_tenant_weights`); any other weighs 1. A
        value that is not a weight (written by hand) is left out."""
        return {tenant: int(weight) for tenant, weight in (await self._raw_weights()).items()
                if _WEIGHT_TEXT.fullmatch(weight)}

    async def _raw_weights(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.prefix + "weights")
        return {_s(tenant): _s(weight) for tenant, weight in raw.items()}

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
               if _CAP_TEXT.fullmatch(cap) and int(cap) <= MAX_TENANT_RUNS}
        default = raw.pop("", None)
        return TenantCaps({t: int(c) for t, c in raw.items()},
                          int(default) if default is not None else None)

    async def _raw_caps(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.prefix + "caps")
        return {_s(tenant): _s(cap) for tenant, cap in raw.items()}

    async def set_tenant_caps(self, caps: Mapping[str, int], default: int | None = None
                              ) -> bool:
        """Cap how many tasks of each tenant run at once: `caps` per tenant named, `default`
        for every other tenant (None: none); tasks without a tenant are never capped. One
        MULTI; True when that changed them, and then the tasks parked for a cap that now
        leaves room go back to the queue. A claim parks the tasks of a tenant that has as
        many runs as its cap until one of them ends; they keep their places. Runs started
        while the queue had no caps are not counted. The operator sets them from
        ``spec.tenants`` and ``spec.tenantMaxRunning``; a producer's ACL user cannot."""
        wanted = {tenant_arg(tenant): str(tenant_cap_arg(cap)) for tenant, cap in caps.items()}
        if default is not None:
            wanted[""] = str(tenant_cap_arg(default))
        if not await self._replace_hash("caps", await self._raw_caps(), wanted):
            return False
        await self._run("unpark")
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
        for kind, set_name in [*_TENANT_SETS, *[("queued", name)
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
        (one of TASK_LIST_STATES), in `list_tasks`' order; how many of its tasks there are
        among the first `most` of that state (read in pages of 1,000); and whether the look
        stopped at `most` with more tasks left."""
        if state not in TASK_LIST_STATES:
            raise ProtocolError(f"no task state {state!r}: use one of "
                                f"{', '.join(TASK_LIST_STATES)}")
        name = "dead" if state == "dead" else _STATE_SETS[state]
        found: list[str] = []
        read = size = 0
        parked = f"parked:{tenant}"
        if state == "queued" and tenant is not None and parked in await self._parked_sets():
            # parked for its cap: the tenant's oldest queued tasks, first
            async for set_size, rows in self._tenant_pages(parked, most, 1_000):
                size = set_size
                read += len(rows)
                found += [task_id for task_id, _, _ in rows]
        queued_read = queued_size = 0
        async for set_size, rows in self._tenant_pages(name, most, 1_000,
                                                       newest_first=state == "dead"):
            queued_size = set_size
            queued_read += len(rows)
            found += [task_id for task_id, owner, _ in rows if owner == tenant]
        return (found[:limit], len(found),
                read < size or queued_read < queued_size)

    async def _parked_sets(self) -> list[str]:
        """The sets of tasks parked for their tenant's cap (``parked:<tenant>``), as names
        under the queue's prefix."""
        tenants = await self.redis.smembers(self.prefix + "parked")
        return sorted(f"parked:{_s(tenant)}" for tenant in tenants)

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
            rows = [(_s(flat[i]), _s(flat[i + 2]) or None,
                     float(flat[i + 3]) / 1000 if flat[i + 3] else None)
                    for i in range(0, len(flat), 4)]
            yield size, rows
            if not rows:
                return
            read += len(rows)
            after, after_score = rows[-1][0], _s(flat[-3])

    # -- recovery --------------------------------------------------------------------------

    async def requeue_owner(self, worker: str, reason: str = "worker lost") -> RequeueResult:
        """Return every task one worker instance holds to the queue, atomically."""
        return _requeue_result(await self._run("requeue_workers", reason, "worker", worker, ""))

    async def requeue_pod(self, pod: str, *, keep_instance: str | None = None,
                          reason: str = "pod lost") -> RequeueResult:
        """Return the tasks of every instance of `pod` (all but `keep_instance`) to the queue."""
        keep = worker_id(pod, keep_instance) if keep_instance else ""
        return _requeue_result(await self._run("requeue_workers", reason, "pod", pod, keep))

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
            holder, outcome = _s(moved[index]), int(moved[index + 1])
            one = RequeueResult(requeued=int(outcome == 1), dead_lettered=int(outcome == 2),
                                cancelled=int(outcome == 3))
            by_worker[holder] = by_worker.get(holder, RequeueResult()) + one
        requeued, dead_lettered, cancelled = (int(c) for c in counts)
        return ReapResult(requeued=requeued, dead_lettered=dead_lettered, cancelled=cancelled,
                          by_worker=by_worker, expired_waiting=int(swept))

    # -- inspection ------------------------------------------------------------------------

    async def figures(self) -> QueueFigures:
        """Queue depth per priority, delayed, in flight, dead and live workers: one round trip."""
        return _queue_figures(await self._run("figures", int(WORKER_LIVENESS_WINDOW * 1000)))

    async def used(self) -> bool:
        """Whether anything was ever submitted to this queue or a worker serves (or served) it:
        its counters, config, worker registry or task sets exist. One round trip."""
        return bool(await self._run("used"))

    async def workers(self) -> list[WorkerState]:
        """Worker instances that heart-beat recently, newest first: one round trip."""
        return _worker_states(await self._run("workers", int(WORKER_LIVENESS_WINDOW * 1000)))

    async def instances(self, pod: str | None = None) -> list[InstanceState]:
        """Every registered worker instance (of `pod` only, when given), including those that
        stopped heart-beating but still hold tasks: what recovery decides on. Read-only.

        Heartbeat times are Redis's; they are moved onto this process's clock by the Redis
        time read in the same call, so a reader whose clock runs ahead of Redis's does not
        judge live workers silent (or young runs old)."""
        members = cast(list[tuple[bytes | str, float]], await self.redis.zrange(
            self.prefix + "workers", 0, -1, withscores=True))
        found = [(_s(member), float(score)) for member, score in members]
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
        ahead = time.time() - _redis_seconds(replies.pop())
        out: list[InstanceState] = []
        for index, (wid, score) in enumerate(found):
            raw, held = replies[2 * index], replies[2 * index + 1]
            info = json.loads(_s(raw)) if raw else {}
            pod_name, _, instance = wid.rpartition(":")
            out.append(InstanceState(
                worker_id=wid, pod=pod_name, instance=instance,
                started=float(info.get("started") or score / 1000 + ahead),
                last_seen=score / 1000 + ahead, held=int(held),
                runs_since=tuple(t + ahead for t in _runs_since(info.get("runsSince"))),
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
        return float(earliest[0][1]) / 1000 - _redis_seconds(now)

    async def _clock_route(self) -> dict[str, Any]:
        """Where a `TIME` sent outside a script goes: on a Cluster, to the node that holds this
        queue, whose clock its scripts read (the client's slot map read first if need be)."""
        if not is_cluster(self.redis):
            return {}
        return {"target_nodes": await node_of_key(self.redis, self.prefix + "leases")}

    async def held_by(self, worker: str) -> set[str]:
        members = await self.redis.smembers(self.prefix + "owner:" + worker)
        return {_s(m) for m in members}

    async def dead_letters(self, limit: int = 100) -> list[TaskInfo]:
        ids = await self.redis.zrevrange(self.prefix + "dead", 0, limit - 1)
        return await self.get_many([_s(i) for i in ids])

    async def tasks_after(self, task_id: str) -> list[str]:
        """The tasks submitted to run after this one, in submit order. One round trip."""
        return list(_listed_ids(await self.redis.get(self.next_key(task_id))))

    async def next_counts(self, task_ids: Sequence[str]) -> list[int]:
        """How many tasks were submitted to run after each of these (of a dead task, those
        its death cancelled come back when it is requeued). One round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.strlen(self.next_key(task_id))
            sizes = await pipe.execute()
        return [int(size) // _NEXT_ENTRY_BYTES for size in sizes]

    async def list_tasks(self, state: str, limit: int = 100) -> list[TaskInfo]:
        """Up to `limit` tasks in one of TASK_LIST_STATES (read-only): queued in claim order,
        delayed by due time, deferred in submit order, running by lease expiry, dead newest
        first."""
        if state == "dead":
            return await self.dead_letters(limit)
        ids = await self.redis.zrange(self.prefix + _STATE_SETS[state], 0, limit - 1)
        return await self.get_many([_s(i) for i in ids])

    async def requeue_dead(self, task_ids: Sequence[str] | None = None) -> int:
        """Requeue dead tasks (every one without ids), attempts from 0; how many were dead.
        :meth:`requeue_dead_counted` also counts the tasks after them that came back."""
        return (await self.requeue_dead_counted(task_ids)).requeued

    async def requeue_dead_counted(self, task_ids: Sequence[str] | None = None) -> DeadRequeued:
        """:meth:`requeue_dead`, with how many tasks their deaths had cancelled (those after
        them, and after those) wait for them again (docs/protocol.md)."""
        requeued, revived = await self._run("dead_letters", "requeue", *(task_ids or []))
        return DeadRequeued(int(requeued), int(revived))

    async def purge_dead(self, task_ids: Sequence[str] | None = None) -> int:
        return int((await self._run("dead_letters", "purge", *(task_ids or [])))[0])


async def _news_of(done: DoneSignal, pending: Mapping[str, object], deadline: float | None,
                   until: float) -> set[str]:
    """The ids of `pending` published as finished once one is, or every one of them after a
    second without a finish or once `until` (monotonic) passed (the caller then reads them
    again); TimeoutError once `deadline` passed. Messages already received are taken along,
    so that a burst of finishes is read in one round trip."""
    while True:
        published = await done.next(timeout=_time_left(deadline, 1.0))
        if published is None or time.monotonic() >= until:
            return set(pending)
        if published in pending:
            news = {published}
            for _ in range(NEWS_AT_ONCE):
                more = await done.next(timeout=0)
                if more is None:
                    break
                if more in pending:
                    news.add(more)
            return news


_SUBSCRIBED_WAITS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""Waits holding a subscription, per client (see SUBSCRIBED_WAITS)."""


def _time_left(deadline: float | None, at_most: float) -> float:
    """Seconds until `deadline` (monotonic), at most `at_most`; TimeoutError once it passed."""
    if deadline is None:
        return at_most
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return min(left, at_most)


class DoneSignal:
    """The ids of a queue's tasks as they reach a final state, from its ``done`` channel.

    The scripts publish on a shard channel (SPUBLISH, Redis 7+), so on a cluster the
    subscription is held by the node of the queue's slot and a message crosses no other
    shard. On a server without sharded pub/sub (Redis 6, whose scripts PUBLISH) `next`
    returns None after each `timeout` and the caller polls.
    """

    def __init__(self, redis: aioredis.Redis, channel: str, *, poll: bool = False) -> None:
        """`poll`: no subscription (no connection held); `next` only waits out its timeout."""
        self._redis = redis
        self._pubsub: Any = None if poll else redis.pubsub()
        self._channel = channel
        self._cluster = is_cluster(redis)
        self._state = "polling" if poll else "new"

    async def subscribe(self) -> None:
        """Subscribe now (else the first `next` does): ids published from here on arrive."""
        if self._state == "new":
            if self._cluster:  # a cluster client learns the slot map on its first command
                await cast(Any, self._redis).initialize()
            try:
                await self._pubsub.ssubscribe(self._channel)
                self._state = "subscribed"
            except ResponseError:
                self._state = "polling"

    @property
    def subscribed(self) -> bool:
        """Messages arrive (else `next` only waits out its timeout)."""
        return self._state == "subscribed"

    async def next(self, timeout: float) -> str | None:
        """The next task id published, or None after `timeout` seconds without one."""
        await self.subscribe()
        if self._state == "polling":
            await asyncio.sleep(timeout)
            return None
        try:
            if self._cluster:
                message = await self._pubsub.get_sharded_message(
                    ignore_subscribe_messages=True, timeout=timeout)
            else:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=timeout)
        except ResponseError:
            self._state = "polling"
            return None
        return None if message is None else _s(message["data"])

    async def aclose(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()


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
                match = _QUEUE_MARK.match(_s(key))
                if match:
                    names.add(match[1])
            seen += 1000
            if not cursor:
                break
            if seen >= max_keys:
                return sorted(names), False
    return sorted(names), True


def call_id() -> str:
    """A random id per call, sent with it: Redis tells the same call sent again (after its
    connection was lost with the reply) from a new one."""
    return uuid.uuid4().hex[:12]


def _claim_args(worker: str, count: int, lease_seconds: float,
                promote_limit: int) -> list[Any]:
    """claim.lua's arguments after the prefix; the call's id as the token prefix keeps fencing
    tokens unique when a failover rolls the fence counter back, and tells the same claim sent
    again from a new one."""
    return [worker, count, int(lease_seconds * 1000), promote_limit, call_id() + "-"]


def _claim_batch(reply: Sequence[Any]) -> ClaimBatch:
    tasks, next_due, now, left = reply
    now = int(now)
    claimed = [
        ClaimedTask(
            # a payload written behind the protocol's back may not even be UTF-8: let the
            # worker dead-letter it as malformed instead of failing the whole claim
            id=_s(t[0]), token=_s(t[1]), attempts=int(t[2]),
            payload_raw=_decode_text(t[3]),
            created_ms=int(t[4]), max_attempts=int(t[5]), claimed_ms=now,
            checkpoint_raw=None if len(t) < 7 or t[6] is None else _s(t[6]),
            timeout_ms=_opt_int(t[7]) if len(t) > 7 else None,
            after=tuple(_s(t[8]).split(",")) if len(t) > 8 and t[8] else (),
            tenant=_s(t[9]) if len(t) > 9 and t[9] else None,
        )
        for t in tasks
    ]
    due_in = None if next_due is None else max(0.0, (float(next_due) - now) / 1000)
    return ClaimBatch(claimed, due_in, int(left))


def _task_info(task_id: str, raw: Mapping[Any, Any]) -> TaskInfo | None:
    """A task hash as read from Redis (bytes or str keys), or None when there is none."""
    if not raw:
        return None
    f = {_s(k): v for k, v in raw.items()}
    return TaskInfo(
        id=task_id,
        state=_s(f.get("state", b"unknown")),
        payload=_json_or_raw(f.get("payload")),
        attempts=_int(f.get("attempts")),
        priority=_int(f.get("prio")),
        created_ms=_int(f.get("created")),
        started_ms=_opt_int(f.get("started")),
        finished_ms=_opt_int(f.get("finished")),
        result=_json_or_raw(f.get("result")),
        error=_decode_text(f["error"]) if "error" in f else None,
        owner=_s(f["owner"]) if "owner" in f else None,
        max_attempts=_opt_int(f.get("max")),
        progress=_progress(f.get("progress")),
        expires_ms=_opt_int(f.get("expires")),
        timeout_ms=_opt_int(f.get("timeout")),
        after=tuple(_s(f["after"]).split(",")) if f.get("after") else (),
        tenant=_decode_text(f["tenant"]) if f.get("tenant") else None,
    )


def _progress(raw: Any) -> Progress | None:
    data = _json_or_raw(raw)
    if not isinstance(data, dict) or not isinstance(data.get("fraction"), int | float):
        return None
    message = data.get("message")
    return Progress(float(data["fraction"]), None if message is None else str(message))


def _task_event(entry_id: Any, fields: Mapping[Any, Any]) -> TaskEvent:
    f = {_s(k): v for k, v in fields.items()}
    return TaskEvent(id=_s(entry_id), kind=_s(f.get("kind", "")),
                     data=_json_or_raw(f.get("data")), attempt=int(f.get("attempt", 0)))


def _queue_figures(reply: Sequence[Any]) -> QueueFigures:
    per, due, delayed, in_flight, dead, workers, stats, used, deferred, capped = reply
    flat = [_s(x) for x in stats]
    return QueueFigures(
        queued_by_priority={prio: int(n) for prio, n in enumerate(per)},
        due_delayed=int(due), delayed=int(delayed), in_flight=int(in_flight),
        dead=int(dead), workers=int(workers),
        stats={flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)},
        used=bool(used), deferred=int(deferred), capped=int(capped),
    )


def _worker_states(reply: Sequence[Any]) -> list[WorkerState]:
    out: list[WorkerState] = []
    for wid_raw, score, raw, held, drain in reply:
        wid = _s(wid_raw)
        info = json.loads(_s(raw)) if raw else {}
        pod, _, instance = wid.rpartition(":")
        out.append(WorkerState(
            worker_id=wid, pod=pod, instance=instance,
            state=str(info.get("state", "unknown")),
            in_flight=int(held), done=int(info.get("done", 0)),
            failed=int(info.get("failed", 0)),
            concurrency=int(info.get("concurrency", 0)),
            last_heartbeat=float(score) / 1000, started=float(info.get("started", 0)),
            drain_requested=bool(int(drain)),
            limit_window=_limit_window(info.get("limitWindow")),
        ))
    return out


def _limit_window(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _expiry_ms(expires: Any, delay: float, delay_ms: int) -> int:
    """A submit's `expires` in milliseconds, as the submit script stores it; ProtocolError
    unless it is a number of seconds, after the delay (as stored) and within a year."""
    seconds = _seconds_given("expires", expires)
    expires_ms = round(min(seconds, 2 * MAX_DELAY_SECONDS) * 1000)  # past the limit, not inf
    if not delay_ms < expires_ms <= MAX_DELAY_SECONDS * 1000:
        low = seconds_text((delay_ms + 1) / 1000)
        after = f"after the delay ({seconds_text(delay)} s): " if delay_ms else ""
        raise ProtocolError(f"expires must be {after}from {low} to {MAX_DELAY_SECONDS} "
                            f"seconds (a year), got {given_text(seconds)}")
    return expires_ms


def _timeout_ms(task_timeout: Any) -> int:
    """A submit's `task_timeout` in milliseconds, as stored; ProtocolError unless it is a
    number of seconds from 0.001 to a week (the longest a pool's task timeout may be)."""
    seconds = _seconds_given("task_timeout", task_timeout)
    timeout_ms = round(min(seconds, 2 * MAX_TASK_TIMEOUT_SECONDS) * 1000)
    if not 1 <= timeout_ms <= MAX_TASK_TIMEOUT_SECONDS * 1000:
        raise ProtocolError(f"task_timeout must be from 0.001 to {MAX_TASK_TIMEOUT_SECONDS} "
                            f"seconds (a week), got {given_text(seconds)}")
    return timeout_ms


def _seconds_given(name: str, value: Any) -> float:
    seconds = as_seconds(value)
    if seconds is None:
        raise ProtocolError(f"{name} must be a number of seconds, got {short_repr(value)}")
    return seconds


def storable_text(text: str) -> str:
    """`text` as Redis can take it: a lone surrogate, which UTF-8 cannot encode (an exception
    message may hold one), becomes '?'."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def encode_result(result: Any, limit: int | None = None) -> str:
    """A run's result as stored: JSON, or the JSON string of its ``repr`` when it is not
    JSON-able. ValueError when neither can be made (nested deeper than Python recurses);
    PayloadTooLarge (a ValueError) when it is over `limit` bytes."""
    if result is None:
        return "null"
    try:
        try:
            raw, size = compact_json(result)
        except (TypeError, ValueError):  # ValueError: NaN or infinity, not JSON
            raw = json.dumps(repr(result))
            size = len(raw)
    except RecursionError:
        raise ValueError("the result is nested too deeply to store as JSON") from None
    if limit is not None and size > limit:
        raise PayloadTooLarge(f"the result is {size} bytes encoded as JSON; the limit is "
                              f"{limit} bytes{_in_binary_units(limit)}")
    return raw


def _redis_seconds(time_reply: Sequence[Any]) -> float:
    """Redis's `TIME` reply (seconds, microseconds) as epoch seconds."""
    seconds, micros = time_reply
    return int(seconds) + int(micros) / 1_000_000


def _runs_since(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        float(ms) / 1000 for ms in value
        if isinstance(ms, int | float) and not isinstance(ms, bool)
    )


def _requeue_result(reply: Sequence[Any]) -> RequeueResult:
    values = [int(x) for x in reply]
    return RequeueResult(*values)


# -- read-only views over several queues or a page of one (one round trip each) -------------


async def _scripts_in_one_trip(redis: aioredis.Redis,
                               calls: Sequence[tuple[TaskQueue, str, Sequence[Any]]], *,
                               then: Sequence[Sequence[Any]] = ()) -> list[Any]:
    """Run scripts of queues on one Redis in one pipeline (no SCRIPT EXISTS trip: a script
    Redis does not know yet is loaded and only the calls it refused are sent again). On a
    cluster the pipeline sends each call to the node of its queue's slot. The commands of
    `then` follow the calls in every pipeline sent; their replies (of the last one) follow
    the calls' replies. A single call without `then` goes without a pipeline, which costs
    redis-py more than the command itself (a worker's flush of one completion, often).

    On a cluster the commands of `then` (a replicated write's WAIT) go to the node of
    the first call's queue, on the connection of its writes: redis-py would send a keyless
    WAIT to any node, whose answer says nothing of these writes. If that slot moved to
    another node during the trip (a failover, a reshard: redis-py followed the redirection),
    the WAIT answered for the old node, and its reply counts no replica."""
    if len(calls) == 1 and not then:
        queue, name, args = calls[0]
        return [await queue._run(name, *args, client=redis)]
    routed: dict[str, Any] = {}
    if then and is_cluster(redis):
        slot_key = calls[0][0].prefix + "queued"
        routed = {"target_nodes": await node_of_key(redis, slot_key)}
    replies: list[Any] = [NoScriptError()] * len(calls)
    after: list[Any] = []
    for _ in range(2):
        pending = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        async with redis.pipeline(transaction=False) as pipe:
            for i in pending:
                queue, name, args = calls[i]
                pipe.execute_command("EVALSHA", queue._script(name).sha, 1,
                                     queue.prefix + "queued", queue.prefix, *args)
            for command in then:
                pipe.execute_command(*command, **routed)
            sent = await pipe.execute(raise_on_error=False)
        after = sent[len(pending):]
        for i, reply in zip(pending, sent[:len(pending)], strict=True):
            replies[i] = reply
        missing = {calls[i][1] for i in pending if isinstance(replies[i], NoScriptError)}
        if not missing:
            break
        for name in missing:
            await redis.script_load(script_source(name))
    if routed and (await node_of_key(redis, slot_key)).name != routed["target_nodes"].name:
        after = [0 if command[0] == "WAIT" else reply
                 for command, reply in zip(then, after, strict=True)]
    for reply in (*replies, *after):
        if isinstance(reply, Exception):
            raise reply
    return [*replies, *after]


async def figures_of(queues: Sequence[TaskQueue]) -> list[QueueFigures]:
    """The figures of several queues on the same Redis, in one round trip."""
    if not queues:
        return []
    window = int(WORKER_LIVENESS_WINDOW * 1000)
    replies = await _scripts_in_one_trip(queues[0].redis,
                                         [(q, "figures", [window]) for q in queues])
    return [_queue_figures(reply) for reply in replies]


async def figures_and_workers(queue: TaskQueue) -> tuple[QueueFigures, list[WorkerState]]:
    """A queue's figures and live workers, in one round trip."""
    window = int(WORKER_LIVENESS_WINDOW * 1000)
    figures, workers = await _scripts_in_one_trip(
        queue.redis, [(queue, "figures", [window]), (queue, "workers", [window])])
    return _queue_figures(figures), _worker_states(workers)


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
    info = _task_info(task_id, {n: v for n, v in zip(names, values, strict=True)
                                if v is not None})
    cut = {name: int(size) for name, size in zip(cut_names, sizes, strict=True)
           if int(size) > cut_bytes}
    if info is None or not cut:
        return info, cut
    texts: dict[str, Any] = {name: _decode_text(values[names.index(name)]) for name in cut}
    return replace(info, **texts), cut


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's tasks waiting and running on a queue (`tenant_loads`)."""

    tenant: str | None
    """None: the tasks without a tenant."""
    weight: int
    queued: int = 0
    running: int = 0
    later: int = 0
    """Delayed (a delayed submit, a retry's backoff) or deferred (waiting for the tasks it
    runs after)."""
    oldest_queued: float | None = None
    """When its longest-waiting queued task was submitted (epoch seconds)."""
    cap: int | None = None
    """The most of its tasks that run at once; None: no cap."""


@dataclass(frozen=True)
class TenantLoads:
    loads: list[TenantLoad]
    """Most queued first."""
    counted: int
    """The tasks read; fewer than `total` when the sets held more than the reading's bound."""
    total: int


_TENANT_SETS = (("queued", "queued"), ("running", "leases"), ("later", "delayed"),
                ("later", "deferred"))
"""What `TaskQueue.tenant_loads` counts, and the set it reads for it."""


def tally_tenants(weights: Mapping[str, int],
                  tasks: Iterable[tuple[str, str | None, float | None]],
                  caps: TenantCaps = TenantCaps()) -> list[TenantLoad]:
    """Each tenant's load from its tasks, given as (kind: queued, running or later; tenant,
    None for none; submitted at), and each weighted or capped tenant's even without tasks;
    most queued first, then most running, then by name."""
    counts: dict[str | None, dict[str, Any]] = {
        tenant: {} for tenant in [*weights, *caps.caps]}
    for kind, tenant, created in tasks:
        load = counts.setdefault(tenant, {})
        load[kind] = load.get(kind, 0) + 1
        if kind == "queued" and created is not None:
            load["oldest_queued"] = min(created, load.get("oldest_queued", created))
    loads = [TenantLoad(tenant, weights.get(tenant, 1) if tenant else 1, **fields,
                        cap=caps.of(tenant))
             for tenant, fields in counts.items()]
    loads.sort(key=lambda load: (-load.queued, -load.running, load.tenant or ""))
    return loads


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
    name = "dead" if state == "dead" else _STATE_SETS[state]
    [reply] = await _scripts_in_one_trip(
        queue.redis, [(queue, "task_page", [name, offset, limit, int(state == "dead"),
                                            preview_bytes])])
    rows: list[TaskRow] = []
    for i in range(1, len(reply), 3):
        sizes = reply[i + 2]
        info, cut = _cut_task(_s(reply[i]), _PAGE_FIELDS, reply[i + 1], ("payload", "error"),
                              sizes[:2], preview_bytes)
        if info is not None:
            rows.append(TaskRow(info, cut, int(sizes[2]) // _NEXT_ENTRY_BYTES))
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
        ("GETRANGE", next_key, 0, max(0, next_count * _NEXT_ENTRY_BYTES - 1))]
    if count > 0:
        then.append(("XRANGE", queue.events_key(task_id), "-" if after is None else f"({after}",
                     "+", "COUNT", count))
    reply, size, start, next_size, next_start, *rest = await _scripts_in_one_trip(
        queue.redis, [(queue, "task_view", [task_id, field_bytes])], then=then)
    info, cut = _cut_task(task_id, _VIEW_FIELDS, reply[0], ("payload", "result", "error"),
                          reply[1], field_bytes)
    entries = rest[0] if rest else []
    checkpoint = None
    if size:
        checkpoint = _decode_text(start)
    next_ids = _listed_ids(next_start)[:next_count]
    return TaskView(
        info=info,
        events=[_task_event(entry_id, fields) for entry_id, fields in entries],
        checkpoint=checkpoint, checkpoint_bytes=int(size), cut=cut,
        next=next_ids, next_count=int(next_size) // _NEXT_ENTRY_BYTES,
    )


def _listed_ids(raw: bytes | str | None) -> tuple[str, ...]:
    """The task ids of a ``next:`` list (or of its start), in order, each once."""
    return tuple(dict.fromkeys(i for i in _s(raw or b"").split(",") if i))


async def task_for_idempotency_key(queue: TaskQueue, key: str) -> str | None:
    """The id of the task an idempotency key names, if it is still known."""
    task_id = await queue.redis.get(queue.prefix + "idem:" + key)
    return None if task_id is None else _s(task_id)
