"""`/healthz` and `/metrics` on the operator's port.

Served from the operator's event loop on purpose: a loop too blocked to answer `/healthz` is an
operator that needs a restart. `/metrics` carries each pool's status figures (the same numbers
as `kubectl get agentpools`, for dashboards and alerts across pools), its scaling bounds,
counters of what the operator did to it, and the operator's own health. docs/metrics.md lists
every series; the chart's alerts and dashboard are built on them.

Label values stay few: the `record_*` functions take either a short code (`backlog`,
`pod_deleted`) or the human-readable reason a decision gave, which they reduce to a code.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sized
from importlib import metadata
from typing import Any

import aiohttp.web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from agentpool.models import CONDITION_TYPES, AgentPoolSpec
from agentpool.protocol import RequeueResult
from agentpool.ratelimit import LimitState
from agentpool_operator.credentials import CONDITION as CREDENTIALS_CONDITION
from agentpool_operator.status import FIGURE_FIELDS, INVALID_SPEC

POOL_LABELS = ("namespace", "pool")
_FIGURES = {
    "queued": "Tasks waiting to be claimed",
    "delayed": "Tasks scheduled for later or awaiting a retry",
    "deferred": "Tasks waiting for the tasks they run after to succeed",
    "capped": "Of the queued tasks, those parked for their tenant's cap on runs at once",
    "inFlight": "Tasks being run by a worker",
    "dead": "Tasks in the dead-letter list",
    "workers": "Worker processes with a live heartbeat",
    "replicas": "Worker pods that exist",
    "readyReplicas": "Worker pods that are ready",
    "desiredReplicas": "Worker pods the pool should have",
    "drainingReplicas": "Worker pods that finish their runs before they go (scale-down, node "
    "drain, rollout)",
}


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


POOL_FIGURES = {
    field: Gauge(f"agentpool_pool_{_snake(field)}", help_text, POOL_LABELS)
    for field, help_text in _FIGURES.items()
}
POOL_CONDITION = Gauge(
    "agentpool_pool_condition", "1 when the pool's condition is True, else 0",
    [*POOL_LABELS, "type"],
)
POOL_DEGRADED_REASON = Gauge(
    "agentpool_pool_degraded_reason",
    "1 for the reason of the pool's Degraded condition while it is True; no series otherwise",
    [*POOL_LABELS, "reason"],
)
DEPLOYMENT_WRITES = Counter(
    "agentpool_operator_deployment_writes",
    "Writes to worker Deployments (created, updated to a new spec, restored after drift)",
    ["action"],
)
STATUS_WRITES = Counter("agentpool_operator_status_writes", "Pool status patches")
PROBLEMS = Counter(
    "agentpool_operator_pool_problems",
    "Observations of a pool that found a problem (Secret missing, Redis unreachable, ...)",
    ["reason"],
)
POOL_POLL_SECONDS = Gauge(
    "agentpool_pool_poll_seconds",
    "The pool's spec.scaling.pollSeconds: the longest time between two of its rounds",
    POOL_LABELS,
)
POOL_MIN_REPLICAS = Gauge(
    "agentpool_pool_min_replicas", "The pool's spec.scaling.minReplicas", POOL_LABELS
)
POOL_MAX_REPLICAS = Gauge(
    "agentpool_pool_max_replicas", "The pool's spec.scaling.maxReplicas", POOL_LABELS
)
POOL_PAUSED = Gauge(
    "agentpool_pool_paused", "1 when the pool's spec.paused is set (no scaling, no recovery)",
    POOL_LABELS,
)
POOL_LAST_OBSERVED = Gauge(
    "agentpool_operator_pool_last_observed_timestamp_seconds",
    "Unix time of the pool's last round that read its Deployment and its queue without a problem",
    POOL_LABELS,
)
SCALE_DECISIONS = Counter(
    "agentpool_operator_scale_decisions",
    "Changes of a pool's replica count decided by the autoscaler",
    [*POOL_LABELS, "direction", "reason"],
)
POD_STARTS = Counter(
    "agentpool_operator_pod_starts",
    "Worker pods the autoscaler added (scale-ups that no withdrawn drain could serve)",
    POOL_LABELS,
)
PODS_REPLACED = Counter(
    "agentpool_operator_pods_replaced",
    "Worker pods deleted by recovery (dead, or unready past the grace period) to be recreated",
    POOL_LABELS,
)
DRAINS_REQUESTED = Counter(
    "agentpool_operator_drains_requested",
    "Worker pods asked to drain (finish their tasks, claim no more)",
    [*POOL_LABELS, "purpose"],
)
TASKS_REQUEUED = Counter(
    "agentpool_operator_tasks_requeued",
    "Tasks of lost workers put back in the queue by the operator",
    [*POOL_LABELS, "cause"],
)
TASKS_DEAD_LETTERED = Counter(
    "agentpool_operator_tasks_dead_lettered",
    "Tasks of lost workers that had no attempt left, sent to the dead-letter list by the operator",
    [*POOL_LABELS, "cause"],
)
SCHEDULED_TASKS = Counter(
    "agentpool_operator_scheduled_tasks",
    "Tasks the operator submitted for a pool's schedule (spec.schedules)",
    [*POOL_LABELS, "schedule"],
)
SCHEDULE_TIMES_MISSED = Counter(
    "agentpool_operator_schedule_times_missed",
    "Scheduled times that passed without a task (no operator running, the queue unreachable)",
    [*POOL_LABELS, "schedule"],
)
SCHEDULE_LAST_MISSED = Gauge(
    "agentpool_operator_schedule_last_missed_timestamp_seconds",
    "Unix time the operator last found scheduled times of the schedule that passed without "
    "a task (not the missed times themselves, which may be long past); no series before",
    [*POOL_LABELS, "schedule"],
)
QUEUE_DATA_LOST = Counter(
    "agentpool_operator_queue_data_lost",
    "Times the pool's Redis lost its queue's data (came back empty: restart without "
    "persistence, FLUSHALL, failover to an unsynced replica); each posts a QueueDataLost Event",
    POOL_LABELS,
)
QUEUE_LAST_DATA_LOST = Gauge(
    "agentpool_operator_queue_last_data_lost_timestamp_seconds",
    "Unix time the operator last found that the pool's Redis lost the queue's data; no series "
    "before",
    POOL_LABELS,
)
RECONCILE_ERRORS = Counter(
    "agentpool_operator_reconcile_errors",
    "Failed reconcile steps of a pool (the error is in the operator's log)",
    [*POOL_LABELS, "step"],
)
POOL_LIMIT_WAIT_SHARE = Gauge(
    "agentpool_pool_limit_wait_share",
    "Share of the pool's run time spent waiting for a rate limit's grants (last minute)",
    [*POOL_LABELS, "limit"],
)
LIMIT_LABELS = ("limit",)
LIMIT_DECLARED_RATE = Gauge(
    "agentpool_limit_declared_rate", "A rate limit's declared rate per minute (serving "
    "declaration)", [*LIMIT_LABELS, "unit"])
LIMIT_EFFECTIVE_RATE = Gauge(
    "agentpool_limit_effective_rate", "A rate limit's rate per minute now (lower after a 429, "
    "recovering step by step)", [*LIMIT_LABELS, "unit"])
LIMIT_GRANTS = Gauge(
    "agentpool_limit_grants", "Grants a rate limit handed out (its counter in Redis)",
    LIMIT_LABELS)
LIMIT_THROTTLES = Gauge(
    "agentpool_limit_throttles", "429s reported on a rate limit (its counter in Redis)",
    LIMIT_LABELS)
LIMIT_WAITING = Gauge(
    "agentpool_limit_waiting_workers", "Workers holding a reservation of a rate limit that "
    "is still in the future", LIMIT_LABELS)
LIMIT_WAITED = Gauge(
    "agentpool_limit_wait_seconds", "Run-seconds callers were told to wait for a rate "
    "limit's grants (its counter in Redis)", LIMIT_LABELS)
LIMIT_MAX_CONCURRENT = Gauge(
    "agentpool_limit_max_concurrent", "A limit's declared maxConcurrent (serving declaration)",
    LIMIT_LABELS)
LIMIT_HELD = Gauge(
    "agentpool_limit_held", "Slots of a limit's maxConcurrent held now, across every pool",
    LIMIT_LABELS)
LIMIT_IN_LINE = Gauge(
    "agentpool_limit_in_line", "Callers waiting for a slot of a limit's maxConcurrent",
    LIMIT_LABELS)
OPERATOR_UP = Gauge("agentpool_operator_up", "1 while the operator runs")
REDIS_CLIENTS = Gauge(
    "agentpool_operator_redis_clients",
    "Redis clients (connection pools) the operator holds: one per distinct Redis URL in use",
)
OPERATOR_INFO = Info("agentpool_operator", "The running operator")

QUEUE_EVENTS = (
    "submitted", "succeeded", "failed", "retried", "requeued", "dead", "cancelled", "expired",
)
"""The queue's own counts (its `stats` in Redis) exported per pool; see `QueueTotals`."""


class QueueTotals(Collector):
    """What happened to each pool's tasks, as the queue counts it in Redis, where every
    producer, worker and operator adds to the same counts: counters that a restarted operator
    or worker does not set back, and that start again only when Redis loses the queue's data
    (a counter reset to Prometheus). Alerts on them see every task dead-lettered, whoever did
    it, where the dead-letter list's length falls with each purge or requeue."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], dict[str, int]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "agentpool_pool_tasks",
            "What happened to the tasks of the pool's queue, as the queue counts it in Redis: "
            "submitted, succeeded, failed (runs), retried, requeued (from a lost worker), dead "
            "(dead-lettered), cancelled (expired ones included), expired",
            labels=[*POOL_LABELS, "event"],
        )
        for (namespace, pool), counts in sorted(self.totals.items()):
            for event in QUEUE_EVENTS:
                family.add_metric([namespace, pool, event], counts.get(event, 0))
        yield family


QUEUE_TOTALS = QueueTotals()
REGISTRY.register(QUEUE_TOTALS)

SCALE_DIRECTIONS = ("up", "down")
DRAIN_PURPOSES = ("scale_down", "node_drain", "recovery")
RECONCILE_STEPS = ("deployment", "observe", "act")
SCALE_REASONS = ("backlog", "idle", "bounds", "fixed", "rate_limit", "other")
"""What `scale_reason` reduces a decision's reason to."""
REQUEUE_CAUSES = (
    "pod_deleted", "pod_failed", "pod_exited", "pod_gone", "node_gone",
    "container_restarted", "pod_unready", "lease_expired", "other",
)
"""What `requeue_cause` reduces a recovery reason to."""
DEPLOYMENT_ACTIONS = ("created", "updated", "restored")

BORN_AT_ZERO: tuple[tuple[Counter, tuple[tuple[str, ...], ...]], ...] = (
    (SCALE_DECISIONS, tuple(itertools.product(SCALE_DIRECTIONS, SCALE_REASONS))),
    (POD_STARTS, ((),)),
    (PODS_REPLACED, ((),)),
    (DRAINS_REQUESTED, tuple((purpose,) for purpose in DRAIN_PURPOSES)),
    (TASKS_REQUEUED, tuple((cause,) for cause in REQUEUE_CAUSES)),
    (TASKS_DEAD_LETTERED, tuple((cause,) for cause in REQUEUE_CAUSES)),
    (RECONCILE_ERRORS, tuple((step,) for step in RECONCILE_STEPS)),
    (QUEUE_DATA_LOST, ((),)),
)
"""Each pool's counters whose extra labels come from a fixed set, with every value of it:
`record_spec` exports them at 0. The autoscaler's and recovery's reasons reduce to
SCALE_REASONS and REQUEUE_CAUSES; only a short code a caller passes as it is (`lease_expired`
is one of the set) could make another series, born at its first count."""

for _action in DEPLOYMENT_ACTIONS:
    DEPLOYMENT_WRITES.labels(_action)

_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CONDITION_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_NODE_GONE = re.compile(r"node \S+ is gone")


def version() -> str:
    try:
        return metadata.version("agentpool")
    except metadata.PackageNotFoundError:
        return "unknown"


OPERATOR_INFO.info({"version": version()})

_series: dict[tuple[str, str], set[tuple[Any, tuple[str, ...]]]] = {}
"""Every labelled series recorded for a pool, so `forget_pool` can remove them all."""


def _child(metric: Any, namespace: str, pool: str, *labels: str) -> Any:
    values = (namespace, pool, *labels)
    _series.setdefault((namespace, pool), set()).add((metric, values))
    return metric.labels(*values)


def scale_reason(reason: str) -> str:
    """A label value for why a pool was scaled: a short code is kept as it is, the sentence
    `scaling.decide` gives is reduced to one of SCALE_REASONS."""
    if _CODE.fullmatch(reason):
        return reason
    text = reason.lower()
    if text.startswith("fixed-size"):
        return "fixed"
    if " outside [" in text:
        return "bounds"
    if text.startswith(("nothing queued", "queue idle")):
        return "idle"
    if text.startswith("rate limit") or "; rate limit " in text:
        return "rate_limit"
    if text.startswith("backlog"):
        return "backlog"
    return "other"


def requeue_cause(reason: str) -> str:
    """A label value for why tasks were requeued: a short code is kept as it is, the reason
    `recovery.decide_recovery` gives is reduced to one of REQUEUE_CAUSES."""
    if _CODE.fullmatch(reason):
        return reason
    text = reason.lower()
    if text == "pod deleted":
        return "pod_deleted"
    if text == "pod exited":
        return "pod_exited"
    if text.startswith("pod no longer exists"):
        return "pod_gone"
    if _NODE_GONE.fullmatch(text):
        return "node_gone"
    if "restarted" in text:
        return "container_restarted"
    if "unready" in text:
        return "pod_unready"
    if "lease" in text:
        return "lease_expired"
    if text.startswith("pod "):
        return "pod_failed"
    return "other"


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def degraded_reason(status: Mapping[str, Any]) -> str | None:
    """The label value of the pool's Degraded reason while the condition is True. The
    operator's reasons are fixed CamelCase codes; anything else (a hand-written status) is
    `Other`, so the label stays bounded."""
    degraded = _condition(status, "Degraded")
    if degraded.get("status") != "True":
        return None
    reason = str(degraded.get("reason"))
    return reason if _CONDITION_REASON.fullmatch(reason) else "Other"


def unobserved_figures(status: Mapping[str, Any]) -> frozenset[str]:
    """The figures of `status` that this round did not read, which the status keeps at their
    last values: every one while the spec is refused (the pool is not observed at all), the
    queue's while the queue cannot be read (QueueReachable not True)."""
    if degraded_reason(status) == INVALID_SPEC:
        return frozenset(_FIGURES)
    if _condition(status, "QueueReachable").get("status") != "True":
        return FIGURE_FIELDS
    return frozenset()


def record_status(namespace: str, pool: str, status: Mapping[str, Any]) -> None:
    """The status' figures and conditions. Figures it holds from an earlier round (see
    `unobserved_figures`) lose their series rather than export stale numbers to alerts."""
    unobserved = unobserved_figures(status)
    for field, gauge in POOL_FIGURES.items():
        value = status.get(field)
        if field in unobserved:
            _remove(gauge, namespace, pool)
        elif isinstance(value, int | float):
            gauge.labels(namespace, pool).set(value)
    for condition in status.get("conditions") or []:
        POOL_CONDITION.labels(namespace, pool, str(condition.get("type"))).set(
            1 if condition.get("status") == "True" else 0
        )
    reason = degraded_reason(status)
    _keep_only(POOL_DEGRADED_REASON, namespace, pool, () if reason is None else (reason,))
    if reason is not None:
        _child(POOL_DEGRADED_REASON, namespace, pool, reason).set(1)


def record_spec(namespace: str, pool: str, spec: AgentPoolSpec) -> None:
    """The spec values alerts compare the figures with (maxReplicas) or filter on (paused).
    The pool's counters of BORN_AT_ZERO (scale decisions, pod starts, pods replaced, drains,
    requeued and dead-lettered tasks, reconcile errors, data losses) and each schedule's
    counters start at 0 from the round that gets here, so that `increase()` and `rate()` see
    a later first event: a series born at its first count shows no rise. What the pool's
    first round itself does comes before (a first scale-up, tasks of pods gone while no
    operator ran, the times missed while it was down), so those series can appear above 0;
    the loss and miss alerts read `record_queue_data_lost`'s and `record_scheduled`'s
    timestamps instead."""
    POOL_MIN_REPLICAS.labels(namespace, pool).set(spec.scaling.min_replicas)
    POOL_MAX_REPLICAS.labels(namespace, pool).set(spec.scaling.max_replicas)
    POOL_PAUSED.labels(namespace, pool).set(1 if spec.paused else 0)
    POOL_POLL_SECONDS.labels(namespace, pool).set(spec.scaling.poll_seconds)
    for counter, label_sets in BORN_AT_ZERO:
        for labels in label_sets:
            _child(counter, namespace, pool, *labels)
    for schedule in spec.schedules or ():
        _child(SCHEDULED_TASKS, namespace, pool, schedule.name)
        _child(SCHEDULE_TIMES_MISSED, namespace, pool, schedule.name)


def record_queue_totals(namespace: str, pool: str, stats: Mapping[str, int]) -> None:
    """The queue's counts as this round read them (`QueueFigures.stats`)."""
    QUEUE_TOTALS.totals[(namespace, pool)] = {e: stats.get(e, 0) for e in QUEUE_EVENTS}


def record_observed(namespace: str, pool: str, when: float | None = None) -> None:
    """The pool's round read its Deployment and its queue without a problem."""
    POOL_LAST_OBSERVED.labels(namespace, pool).set(time.time() if when is None else when)


def record_scale(namespace: str, pool: str, direction: str, reason: str) -> None:
    """The autoscaler changed the pool's replicas. `direction`: "up" or "down"; `reason`: a
    short code, or the decision's reason (see `scale_reason`)."""
    if direction not in SCALE_DIRECTIONS:
        raise ValueError(f"direction must be one of {SCALE_DIRECTIONS}, got {direction!r}")
    _child(SCALE_DECISIONS, namespace, pool, direction, scale_reason(reason)).inc()


def record_pod_starts(namespace: str, pool: str, n: int) -> None:
    _child(POD_STARTS, namespace, pool).inc(n)


def record_pods_replaced(namespace: str, pool: str, n: int = 1) -> None:
    _child(PODS_REPLACED, namespace, pool).inc(n)


def record_drains(namespace: str, pool: str, purpose: str, n: int = 1) -> None:
    """Pods asked to drain. `purpose`: "scale_down", "node_drain" or "recovery"."""
    if purpose not in DRAIN_PURPOSES:
        raise ValueError(f"purpose must be one of {DRAIN_PURPOSES}, got {purpose!r}")
    _child(DRAINS_REQUESTED, namespace, pool, purpose).inc(n)


def record_requeued(namespace: str, pool: str, cause: str, n: int) -> None:
    """`n` tasks put back in the queue. `cause`: a short code, or the recovery reason (see
    `requeue_cause`)."""
    _child(TASKS_REQUEUED, namespace, pool, requeue_cause(cause)).inc(n)


def record_requeue_result(namespace: str, pool: str, cause: str, result: RequeueResult) -> None:
    """What one `TaskQueue.requeue_*` call did: requeued tasks, and those it dead-lettered."""
    record_requeued(namespace, pool, cause, result.requeued)
    if result.dead_lettered:
        _child(TASKS_DEAD_LETTERED, namespace, pool, requeue_cause(cause)).inc(
            result.dead_lettered
        )


def record_scheduled(namespace: str, pool: str, schedule: str, *, submitted: int,
                     missed: int, when: float | None = None) -> None:
    """A schedule's round: the tasks it submitted, and the scheduled times it found missed,
    counted and, at `when` (now by default), timestamped: the time they were found, which
    the alert compares with its window, where a missed time itself may be far older (a daily
    time missed while no operator ran for hours)."""
    if submitted:
        _child(SCHEDULED_TASKS, namespace, pool, schedule).inc(submitted)
    if missed:
        _child(SCHEDULE_TIMES_MISSED, namespace, pool, schedule).inc(missed)
        _child(SCHEDULE_LAST_MISSED, namespace, pool, schedule).set(
            time.time() if when is None else when)


def record_queue_data_lost(namespace: str, pool: str, when: float | None = None) -> None:
    """A loss of the queue's data, found at `when` (now by default)."""
    _child(QUEUE_DATA_LOST, namespace, pool).inc()
    _child(QUEUE_LAST_DATA_LOST, namespace, pool).set(time.time() if when is None else when)


def record_reconcile_error(namespace: str, pool: str, step: str) -> None:
    """A reconcile step failed. `step`: "deployment" (the create/update handler), "observe"
    (a round of the pool's loop crashed) or "act" (scaling or recovery raised)."""
    if step not in RECONCILE_STEPS:
        raise ValueError(f"step must be one of {RECONCILE_STEPS}, got {step!r}")
    _child(RECONCILE_ERRORS, namespace, pool, step).inc()


def record_limit_waits(namespace: str, pool: str, shares: Mapping[str, float]) -> None:
    """The pool's waiting share per limit; a limit without one now (too little run time to
    tell, or no longer declared) loses its series rather than keep its last value."""
    for limit, share in shares.items():
        _child(POOL_LIMIT_WAIT_SHARE, namespace, pool, limit).set(share)
    _keep_only(POOL_LIMIT_WAIT_SHARE, namespace, pool, shares)


def _keep_only(metric: Any, namespace: str, pool: str, kept: Container[str]) -> None:
    """Remove the pool's series of `metric` whose one extra label value is not in `kept`."""
    series = _series.get((namespace, pool), set())
    for recorded, values in list(series):
        if recorded is metric and values[2] not in kept:
            _remove(recorded, *values)
            series.discard((recorded, values))


_limits_named: dict[tuple[str, str], set[str]] = {}
"""The limits each pool named in its last round: a limit's series go with the last pool that
names it."""

LIMIT_UNITS = ("requests", "tokens")


def record_limits(namespace: str, pool: str, states: Iterable[LimitState]) -> None:
    """The limits a pool names, as Redis holds them; `[]` when it names none any more."""
    names = set()
    for state in states:
        _record_limit(state)
        names.add(state.name)
    _name_limits((namespace, pool), names)


def _name_limits(key: tuple[str, str], names: set[str]) -> None:
    """The limits pool `key` names now; those no pool names any more lose their series."""
    before = _limits_named.pop(key, set())
    if names:
        _limits_named[key] = names
    for name in before - set().union(*_limits_named.values()):
        for gauge in (LIMIT_DECLARED_RATE, LIMIT_EFFECTIVE_RATE):
            for unit in LIMIT_UNITS:
                _remove(gauge, name, unit)
        for gauge in (LIMIT_GRANTS, LIMIT_THROTTLES, LIMIT_WAITING, LIMIT_WAITED,
                      LIMIT_MAX_CONCURRENT, LIMIT_HELD, LIMIT_IN_LINE):
            _remove(gauge, name)


def _record_limit(state: LimitState) -> None:
    """A limit's figures as Redis holds them (shared by every pool naming it)."""
    name = state.name
    config = state.config
    if config is not None:
        for unit, declared, effective in (
            ("requests", config.requests_per_minute, state.effective_rpm),
            ("tokens", config.tokens_per_minute, state.effective_tpm),
        ):
            if declared is not None and effective is not None:
                LIMIT_DECLARED_RATE.labels(name, unit).set(declared)
                LIMIT_EFFECTIVE_RATE.labels(name, unit).set(effective)
            else:
                _remove(LIMIT_DECLARED_RATE, name, unit)
                _remove(LIMIT_EFFECTIVE_RATE, name, unit)
    LIMIT_GRANTS.labels(name).set(state.grants)
    LIMIT_THROTTLES.labels(name).set(state.throttles)
    LIMIT_WAITING.labels(name).set(state.waiting)
    LIMIT_WAITED.labels(name).set(state.waited_seconds)
    if config is not None and config.max_concurrent is not None:
        LIMIT_MAX_CONCURRENT.labels(name).set(config.max_concurrent)
        LIMIT_HELD.labels(name).set(state.held)
        LIMIT_IN_LINE.labels(name).set(state.in_line)
    else:
        for gauge in (LIMIT_MAX_CONCURRENT, LIMIT_HELD, LIMIT_IN_LINE):
            _remove(gauge, name)


def forget_pool(namespace: str, pool: str) -> None:
    """Drop every series of a pool whose loop stopped (deleted, or another replica leads)."""
    for gauge in (
        *POOL_FIGURES.values(), POOL_MIN_REPLICAS, POOL_MAX_REPLICAS, POOL_PAUSED,
        POOL_POLL_SECONDS, POOL_LAST_OBSERVED,
    ):
        _remove(gauge, namespace, pool)
    QUEUE_TOTALS.totals.pop((namespace, pool), None)
    for condition_type in (*CONDITION_TYPES, CREDENTIALS_CONDITION):
        _remove(POOL_CONDITION, namespace, pool, condition_type)
    for metric, values in _series.pop((namespace, pool), set()):
        _remove(metric, *values)
    _name_limits((namespace, pool), set())


def _remove(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


async def _healthz(request: aiohttp.web.Request) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"status": "ok"})


async def _metrics(request: aiohttp.web.Request) -> aiohttp.web.Response:
    response = aiohttp.web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def count_redis_clients(clients: Sized) -> None:
    """Report how many Redis clients the operator holds, read at each scrape."""
    REDIS_CLIENTS.set_function(lambda: len(clients))


async def serve(port: int, host: str = "0.0.0.0") -> aiohttp.web.AppRunner:
    """Start serving; the caller cleans the returned runner up. Without the `_created` series
    prometheus_client adds to every counter (as the worker does): nothing reads them, and they
    would add one per counter series of every pool."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    OPERATOR_UP.set(1)
    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get("/healthz", _healthz), aiohttp.web.get("/metrics", _metrics)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
