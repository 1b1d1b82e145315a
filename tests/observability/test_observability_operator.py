"""Operator metrics: the record functions, the label values they produce, /metrics itself."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from observability_helpers import check_metrics, families, samples, value
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.samples import Sample

from agentpool.models import AgentPoolSpec
from agentpool.protocol import RequeueResult
from agentpool.ratelimit import LimitConfig, LimitState
from agentpool.redis_server import free_port
from agentpool.scaling.policy import QueueLoad, ScalingHistory, ScalingPolicy, decide
from agentpool_operator import metrics
from agentpool_operator.recovery import (
    InstanceView,
    PodView,
    RecoveryInputs,
    RecoveryPolicy,
    Requeue,
    decide_recovery,
)

NS = "team-a"
POOL_SERIES = {
    "agentpool_operator_scale_decisions_total": {"direction", "reason"},
    "agentpool_operator_pods_replaced_total": set(),
    "agentpool_operator_pod_starts_total": set(),
    "agentpool_pool_draining_replicas": set(),
    "agentpool_operator_drains_requested_total": {"purpose"},
    "agentpool_operator_tasks_requeued_total": {"cause"},
    "agentpool_operator_tasks_dead_lettered_total": {"cause"},
    "agentpool_operator_reconcile_errors_total": {"step"},
    "agentpool_operator_pool_last_observed_timestamp_seconds": set(),
    "agentpool_pool_min_replicas": set(),
    "agentpool_pool_max_replicas": set(),
    "agentpool_pool_paused": set(),
    "agentpool_pool_poll_seconds": set(),
    "agentpool_pool_tasks_total": {"event"},
    "agentpool_pool_queued": set(),
    "agentpool_pool_ready_replicas": set(),
    "agentpool_pool_desired_replicas": set(),
    "agentpool_pool_condition": {"type"},
    "agentpool_pool_degraded_reason": {"reason"},
    "agentpool_operator_queue_data_lost_total": set(),
}


@pytest.fixture
def pool() -> str:
    return f"pool-{uuid.uuid4().hex[:8]}"


def exposition() -> str:
    return generate_latest(REGISTRY).decode()


def of_pool(pool: str) -> list[Sample]:
    return [s for s in samples(exposition()) if s.labels.get("pool") == pool]


def spec(**scaling: int) -> AgentPoolSpec:
    return AgentPoolSpec.model_validate({
        "redis": {"url": "redis://redis:6379/0"},
        "worker": {"image": "worker:1", "handler": "app.tasks:run"},
        "scaling": scaling,
        "paused": True,
    })


def record_everything(pool: str) -> None:
    metrics.record_status(NS, pool, {
        "queued": 12, "delayed": 1, "inFlight": 4, "dead": 2, "workers": 2, "replicas": 2,
        "readyReplicas": 1, "desiredReplicas": 3, "drainingReplicas": 2,
        "conditions": [{"type": "Ready", "status": "False"},
                       {"type": "QueueReachable", "status": "True"},
                       {"type": "Degraded", "status": "True", "reason": "PodsFailing"},
                       {"type": "Credentials", "status": "True"}],
    })
    metrics.record_spec(NS, pool, spec(minReplicas=1, maxReplicas=7))
    metrics.record_observed(NS, pool, when=1_700_000_000.0)
    metrics.record_queue_totals(NS, pool, {"submitted": 50, "succeeded": 40, "dead": 3})
    metrics.record_scale(NS, pool, "up", "backlog 12 > 2 replicas × 4 tasks: scaling 2 → 3")
    metrics.record_scale(NS, pool, "up", "backlog")
    metrics.record_scale(NS, pool, "down", "nothing queued or in flight for 2m: scaling 1 → 0")
    metrics.record_pods_replaced(NS, pool, 2)
    metrics.record_pod_starts(NS, pool, 6)
    metrics.record_drains(NS, pool, "scale_down", 3)
    metrics.record_requeued(NS, pool, "pod deleted", 5)
    metrics.record_requeue_result(NS, pool, "node n2 is gone",
                                  RequeueResult(requeued=4, dead_lettered=1))
    metrics.record_reconcile_error(NS, pool, "act")


def test_every_record_function_exports_its_series_with_the_documented_labels(
    pool: str,
) -> None:
    record_everything(pool)
    mine = of_pool(pool)
    names = {s.name for s in mine}
    assert set(POOL_SERIES) <= names
    for sample in mine:
        extra = POOL_SERIES.get(sample.name)
        if extra is not None:
            assert set(sample.labels) == {"namespace", "pool", *extra}, sample

    def v(name: str, **labels: str) -> float:
        return value(mine, name, namespace=NS, **labels)

    assert v("agentpool_pool_queued") == 12
    assert v("agentpool_pool_desired_replicas") == 3
    assert v("agentpool_pool_condition", type="Ready") == 0
    assert v("agentpool_pool_condition", type="QueueReachable") == 1
    assert v("agentpool_pool_degraded_reason", reason="PodsFailing") == 1
    assert v("agentpool_pool_max_replicas") == 7
    assert v("agentpool_pool_min_replicas") == 1
    assert v("agentpool_pool_paused") == 1
    assert v("agentpool_pool_poll_seconds") == 2
    assert v("agentpool_pool_tasks_total", event="dead") == 3
    assert v("agentpool_pool_tasks_total", event="submitted") == 50
    assert v("agentpool_pool_tasks_total", event="expired") == 0
    assert v("agentpool_operator_pool_last_observed_timestamp_seconds") == 1_700_000_000
    assert v("agentpool_operator_scale_decisions_total", direction="up", reason="backlog") == 2
    assert v("agentpool_operator_scale_decisions_total", direction="down", reason="idle") == 1
    assert v("agentpool_operator_pods_replaced_total") == 2
    assert v("agentpool_operator_pod_starts_total") == 6
    assert v("agentpool_pool_draining_replicas") == 2
    assert v("agentpool_operator_drains_requested_total", purpose="scale_down") == 3
    assert v("agentpool_operator_tasks_requeued_total", cause="pod_deleted") == 5
    assert v("agentpool_operator_tasks_requeued_total", cause="node_gone") == 4
    assert v("agentpool_operator_tasks_dead_lettered_total", cause="node_gone") == 1
    assert v("agentpool_operator_reconcile_errors_total", step="act") == 1

    kinds = families(exposition())
    assert kinds["agentpool_operator_scale_decisions"] == "counter"
    assert kinds["agentpool_pool_tasks"] == "counter"
    assert kinds["agentpool_operator_pool_last_observed_timestamp_seconds"] == "gauge"
    assert kinds["agentpool_operator_info"] == "gauge"


def test_forget_pool_drops_every_series_of_that_pool_only(pool: str) -> None:
    other = f"{pool}-other"
    record_everything(pool)
    record_everything(other)
    metrics.forget_pool(NS, pool)
    assert of_pool(pool) == []
    assert {s.name for s in of_pool(other)} >= set(POOL_SERIES)
    metrics.forget_pool(NS, pool)  # twice is harmless
    metrics.forget_pool(NS, other)


def test_a_schedules_counters_are_exported_at_zero_before_its_first_task_or_miss(
    pool: str,
) -> None:
    """`increase()` sees no rise in a series whose first sample is already 1: at 0 from the
    pool's round, its counters show a later first task or miss. Not a miss a restarted
    operator finds in its first round, before this call: the alert reads the time it was found
    (tests/operator/test_operator_metrics.py)."""
    scheduled = spec().model_copy(update={"schedules": AgentPoolSpec.model_validate({
        "redis": {"url": "redis://redis:6379/0"},
        "worker": {"image": "worker:1", "handler": "app.tasks:run"},
        "schedules": [{"name": "nightly", "cron": "0 3 * * *", "payload": {}}],
    }).schedules})
    metrics.record_spec(NS, pool, scheduled)
    mine = of_pool(pool)
    assert value(mine, "agentpool_operator_schedule_times_missed_total", schedule="nightly") == 0
    assert value(mine, "agentpool_operator_scheduled_tasks_total", schedule="nightly") == 0
    metrics.forget_pool(NS, pool)


def test_the_data_loss_counter_is_exported_at_zero_before_a_first_loss(pool: str) -> None:
    """Else `increase()` of the counter would miss the loss that creates the series (the loss
    alert reads the time the loss was found, which has no such gap)."""
    metrics.record_spec(NS, pool, spec())
    assert value(of_pool(pool), "agentpool_operator_queue_data_lost_total") == 0
    metrics.record_queue_data_lost(NS, pool)
    assert value(of_pool(pool), "agentpool_operator_queue_data_lost_total") == 1
    metrics.forget_pool(NS, pool)


def status(*conditions: tuple[str, str, str]) -> dict[str, object]:
    """A status with figures and the conditions given as (type, status, reason)."""
    return {
        "queued": 12, "delayed": 1, "deferred": 0, "capped": 3, "inFlight": 4, "dead": 2,
        "workers": 2, "replicas": 2, "readyReplicas": 1, "desiredReplicas": 3,
        "drainingReplicas": 0,
        "conditions": [{"type": kind, "status": state, "reason": reason}
                       for kind, state, reason in conditions],
    }


def degraded_reasons(pool: str) -> dict[str, float]:
    return {s.labels["reason"]: s.value for s in of_pool(pool)
            if s.name == "agentpool_pool_degraded_reason"}


REACHABLE = ("QueueReachable", "True", "Reachable")


def test_the_degraded_reason_has_one_series_that_follows_the_condition(pool: str) -> None:
    metrics.record_status(NS, pool, status(REACHABLE, ("Degraded", "True", "PodsFailing")))
    assert degraded_reasons(pool) == {"PodsFailing": 1}
    metrics.record_status(NS, pool, status(REACHABLE, ("Degraded", "True", "RedisFull")))
    assert degraded_reasons(pool) == {"RedisFull": 1}
    metrics.record_status(NS, pool, status(REACHABLE, ("Degraded", "False", "AsExpected")))
    assert degraded_reasons(pool) == {}
    metrics.record_status(NS, pool, status(REACHABLE, ("Degraded", "True", "not a code!")))
    assert degraded_reasons(pool) == {"Other": 1}
    metrics.forget_pool(NS, pool)
    assert degraded_reasons(pool) == {}


QUEUE_SERIES = {"agentpool_pool_queued", "agentpool_pool_delayed", "agentpool_pool_deferred",
                "agentpool_pool_capped", "agentpool_pool_in_flight", "agentpool_pool_dead",
                "agentpool_pool_workers"}
REPLICA_SERIES = {"agentpool_pool_replicas", "agentpool_pool_ready_replicas",
                  "agentpool_pool_desired_replicas", "agentpool_pool_draining_replicas"}


def figure_series(pool: str) -> set[str]:
    return {s.name for s in of_pool(pool) if s.name in QUEUE_SERIES | REPLICA_SERIES}


def test_figures_the_round_did_not_read_are_not_exported(pool: str) -> None:
    """The status keeps the last figures read: alerts must not act on them."""
    metrics.record_status(NS, pool, status(REACHABLE))
    assert figure_series(pool) == QUEUE_SERIES | REPLICA_SERIES
    unreachable = ("QueueReachable", "False", "RedisUnreachable")
    metrics.record_status(NS, pool, status(unreachable, ("Degraded", "True", "RedisUnreachable")))
    assert figure_series(pool) == REPLICA_SERIES
    assert value(of_pool(pool), "agentpool_pool_condition", type="QueueReachable") == 0
    metrics.record_status(NS, pool, status(REACHABLE))
    assert figure_series(pool) == QUEUE_SERIES | REPLICA_SERIES
    assert value(of_pool(pool), "agentpool_pool_queued") == 12
    # A spec the operator refuses: the pool is not observed at all.
    metrics.record_status(NS, pool, status(REACHABLE, ("Degraded", "True", "InvalidSpec")))
    assert figure_series(pool) == set()
    metrics.forget_pool(NS, pool)


def test_a_limits_waiting_share_goes_when_it_is_no_longer_known(pool: str) -> None:
    metrics.record_limit_waits(NS, pool, {"openai": 0.92, "search": 0.1})
    metrics.record_limit_waits(NS, pool, {"search": 0.2})
    shares = [s for s in of_pool(pool) if s.name == "agentpool_pool_limit_wait_share"]
    assert [(s.labels["limit"], s.value) for s in shares] == [("search", 0.2)]
    metrics.record_limit_waits(NS, pool, {})  # idle, or no limit declared any more
    assert [s for s in of_pool(pool) if s.name == "agentpool_pool_limit_wait_share"] == []
    metrics.forget_pool(NS, pool)


def limit_state(name: str, *, rpm: int | None = 60, tpm: int | None = None,
                max_concurrent: int | None = None) -> LimitState:
    config = LimitConfig(name, requests_per_minute=rpm, tokens_per_minute=tpm,
                         max_concurrent=max_concurrent)
    return LimitState(name=name, config=config, owner="team-a/p", factor=1.0, paused_for=0,
                      grants=5, tokens=0, throttles=0, last_throttle=None, waited_seconds=0,
                      released=0, waiting=0)


def limit_series(name: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for s in samples(exposition())
            if s.name.startswith("agentpool_limit_") and s.labels.get("limit") == name}


def test_a_limits_series_go_with_the_last_pool_that_names_it(pool: str) -> None:
    other = f"{pool}-other"
    shared, own = f"shared-{pool}", f"own-{pool}"
    metrics.record_limits(NS, pool, [limit_state(shared), limit_state(own, tpm=1000,
                                                                        max_concurrent=4)])
    metrics.record_limits(NS, other, [limit_state(shared)])
    assert ("agentpool_limit_held", (("limit", own),)) in limit_series(own)
    assert ("agentpool_limit_declared_rate", (("limit", own), ("unit", "tokens"))) in \
        limit_series(own)
    metrics.record_limits(NS, pool, [limit_state(own)])  # no tokens nor slots declared now
    assert limit_series(own) == {
        ("agentpool_limit_declared_rate", (("limit", own), ("unit", "requests"))),
        ("agentpool_limit_effective_rate", (("limit", own), ("unit", "requests"))),
        *((name, (("limit", own),)) for name in (
            "agentpool_limit_grants", "agentpool_limit_throttles",
            "agentpool_limit_waiting_workers", "agentpool_limit_wait_seconds")),
    }
    metrics.record_limits(NS, pool, [])  # the spec names no limit any more
    assert limit_series(own) == set()
    assert limit_series(shared) != set()  # still named by the other pool
    metrics.forget_pool(NS, other)
    assert limit_series(shared) == set()
    metrics.forget_pool(NS, pool)


def test_label_values_are_checked(pool: str) -> None:
    with pytest.raises(ValueError, match="direction"):
        metrics.record_scale(NS, pool, "sideways", "backlog")
    with pytest.raises(ValueError, match="step"):
        metrics.record_reconcile_error(NS, pool, "everything")
    with pytest.raises(ValueError, match="purpose"):
        metrics.record_drains(NS, pool, "fun")


POLICY = ScalingPolicy(min_replicas=0, max_replicas=5, tasks_per_replica=4,
                       scale_down_cooldown_seconds=60)


@pytest.mark.parametrize(
    ("policy", "load", "current", "expected"),
    [
        (POLICY, QueueLoad(queued=40), 1, "backlog"),
        (POLICY, QueueLoad(queued=1), 0, "backlog"),
        (POLICY, QueueLoad(queued=0), 3, "idle"),
        (POLICY, QueueLoad(queued=5), 4, "backlog"),
        (ScalingPolicy(min_replicas=3, max_replicas=3), QueueLoad(), 1, "fixed"),
        (POLICY, QueueLoad.unavailable(), 8, "bounds"),
    ],
)
def test_scale_reason_reduces_the_autoscalers_reasons_to_a_few_codes(
    policy: ScalingPolicy, load: QueueLoad, current: int, expected: str,
) -> None:
    # Long past any cooldown: the decision changes the replicas.
    decision = decide(policy, load, current, ScalingHistory(since=0.0), now=10_000.0)
    assert decision.changed, decision.reason
    assert metrics.scale_reason(decision.reason) == expected, decision.reason


def test_requeue_cause_reduces_the_recovery_reasons_to_a_few_codes() -> None:
    pods = [
        PodView("deleted", deleting=True),
        PodView("evicted", phase="Failed", reason="Evicted"),
        PodView("exited", phase="Succeeded"),
        PodView("stranded", node="gone-node"),
        PodView("restarted", restarts=1, container_started_at=500.0),
    ]
    instances = [InstanceView("restarted", "old", started=100.0, held=1),
                 InstanceView("vanished", "i1", started=100.0, held=2)]
    actions = decide_recovery(
        RecoveryInputs(pods=pods, instances=instances, gone_nodes=frozenset({"gone-node"})),
        RecoveryPolicy(), now=1000.0,
    )
    causes = {a.pod: metrics.requeue_cause(a.reason) for a in actions if isinstance(a, Requeue)}
    assert causes == {
        "deleted": "pod_deleted", "evicted": "pod_failed", "exited": "pod_exited",
        "stranded": "node_gone", "restarted": "container_restarted", "vanished": "pod_gone",
    }
    assert set(causes.values()) <= set(metrics.REQUEUE_CAUSES)
    assert metrics.requeue_cause("lease expired") == "lease_expired"
    assert metrics.requeue_cause("something nobody foresaw") == "other"
    assert metrics.requeue_cause("worker_lost") == "worker_lost"


async def test_the_operator_serves_metrics_and_health(promtool: str) -> None:
    port = free_port()
    runner = await metrics.serve(port, host="127.0.0.1")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                text = await response.text()
    finally:
        await runner.cleanup()
    found = samples(text)
    assert value(found, "agentpool_operator_up") == 1
    assert value(found, "agentpool_operator_info", version=metrics.version()) == 1
    assert metrics.version() != "unknown"
    await asyncio.to_thread(check_metrics, promtool, text)
