from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pool_fixtures import CEL_VIOLATIONS, NEAR_THE_RULES, minimal_spec
from pydantic import ValidationError

from agentpool import models
from agentpool.models import AgentPoolSpec, AgentPoolStatus, CelRule, Condition, ScalingSpec


def test_defaults_fill_a_minimal_spec() -> None:
    spec = AgentPoolSpec.model_validate(minimal_spec())
    assert spec.redis.url_secret_ref is not None
    assert spec.redis.url_secret_ref.key == "url"
    assert spec.worker.concurrency == 4
    assert spec.worker.task_timeout_seconds == 600
    assert spec.worker.max_attempts == 3
    assert spec.worker.drain_seconds is None
    assert spec.worker.stop_seconds == 600, "a stopped pod gets as long as a run may last"
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (1, 10)
    assert spec.scaling.scale_down_cooldown_seconds == 20
    assert spec.scaling.keep_drained_seconds == 600
    assert spec.recovery.max_unavailable == "25%"
    assert spec.paused is False


def test_camel_case_aliases_and_python_names_both_work() -> None:
    by_alias = ScalingSpec.model_validate({"minReplicas": 2, "scaleUpStep": 3})
    by_name = ScalingSpec(min_replicas=2, scale_up_step=3)
    assert by_alias == by_name
    dumped = by_name.model_dump(by_alias=True, exclude_none=True)
    assert dumped["minReplicas"] == 2
    assert dumped["scaleUpStep"] == 3


def test_queue_name_defaults_to_pool_name() -> None:
    assert AgentPoolSpec.model_validate(minimal_spec()).queue_name("pool-a") == "pool-a"
    spec = AgentPoolSpec.model_validate(minimal_spec(queue="jobs.v1"))
    assert spec.queue_name("pool-a") == "jobs.v1"


def test_target_per_replica_defaults_to_concurrency() -> None:
    assert ScalingSpec().target_per_replica(8) == 8
    assert ScalingSpec(tasks_per_replica=20).target_per_replica(8) == 20


@pytest.mark.parametrize(
    "spec",
    [
        minimal_spec(queue="-leading-dash"),
        minimal_spec(queue="x" * 101),
        minimal_spec(worker={"image": "img", "handler": "pkg.mod:run", "concurrency": 0}),
        minimal_spec(worker={"image": "img", "handler": "pkg.mod:run", "concurrency": 1001}),
        minimal_spec(worker={"image": "img", "handler": "pkg.mod:run", "maxAttempts": 0}),
        minimal_spec(worker={"image": "img", "handler": "pkg.mod:run", "imagePullPolicy": "Often"}),
        minimal_spec(worker={"handler": "pkg.mod:run"}),
        minimal_spec(scaling={"minReplicas": -1}),
        minimal_spec(scaling={"pollSeconds": 0}),
    ],
)
def test_schema_bounds_are_enforced(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AgentPoolSpec.model_validate(spec)


@pytest.mark.parametrize(("rule", "spec"), CEL_VIOLATIONS)
def test_python_twin_of_each_cel_rule_refuses_with_its_message(
    rule: CelRule, spec: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as caught:
        AgentPoolSpec.model_validate(spec)
    assert rule.message in str(caught.value)


def test_every_cel_rule_has_a_violating_case() -> None:
    assert {rule for rule, _ in CEL_VIOLATIONS} == set(models.CEL_RULES)


@pytest.mark.parametrize("spec", NEAR_THE_RULES)
def test_specs_near_the_rules_are_accepted(spec: dict[str, Any]) -> None:
    AgentPoolSpec.model_validate(spec)


def test_status_round_trips_in_camel_case() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = AgentPoolStatus(
        queue="jobs",
        ready_replicas=2,
        in_flight=7,
        last_scale_time=when,
        conditions=[Condition(type="Ready", status="True", reason="AllReady")],
    )
    dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["readyReplicas"] == 2
    assert dumped["inFlight"] == 7
    assert dumped["lastScaleTime"] == "2026-01-02T03:04:05Z"
    assert AgentPoolStatus.model_validate(dumped) == status
    assert status.condition("Ready") == status.conditions[0]
    assert status.condition("Degraded") is None


def test_the_volume_rule_names_every_source_the_volume_model_has() -> None:
    sources = tuple(field.alias or name for name, field in models.Volume.model_fields.items()
                    if name != "name")
    assert sources == models.VOLUME_SOURCES
