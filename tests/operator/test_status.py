"""The pool's status and conditions as pure functions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from agentpool.protocol import QueueFigures
from agentpool_operator.status import (
    ConditionUpdate,
    DeploymentView,
    Problem,
    build_status,
    condition_events,
    invalid_spec_status,
    sanitize,
    set_condition,
    status_write_needed,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=30)


def figures(queued: int = 0, in_flight: int = 0, delayed: int = 0, dead: int = 0,
            workers: int = 0, deferred: int = 0, capped: int = 0) -> QueueFigures:
    return QueueFigures(queued_by_priority={0: queued}, due_delayed=0, delayed=delayed,
                        in_flight=in_flight, dead=dead, workers=workers, deferred=deferred,
                        capped=capped)


def status(previous: dict | None = None, *, now: datetime = T0, generation: int = 1,
           deployment: DeploymentView | None = DeploymentView(2, 2, 2),  # noqa: B008
           queue_figures: QueueFigures | None = None, **kwargs: object) -> dict:
    return build_status(
        queue="jobs", generation=generation, deployment=deployment,
        figures=queue_figures if queue_figures is not None else figures(),
        previous=previous, now=now, **kwargs,  # type: ignore[arg-type]
    )


def conditions(s: dict) -> dict[str, dict]:
    return {c["type"]: c for c in s["conditions"]}


def test_healthy_pool() -> None:
    s = status(queue_figures=figures(queued=5, in_flight=2, delayed=1, dead=3, workers=2,
                                     deferred=4, capped=2))
    assert {k: v for k, v in s.items() if k != "conditions"} == {
        "queue": "jobs", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2,
        "queued": 7, "capped": 2, "inFlight": 2, "delayed": 1, "deferred": 4, "dead": 3,
        "workers": 2,
        "observedGeneration": 1, "health": "Ready",
    }
    c = conditions(s)
    assert list(c) == ["Ready", "QueueReachable", "Degraded"]
    assert (c["Ready"]["status"], c["Ready"]["reason"], c["Ready"]["message"]) == (
        "True", "ReplicasReady", "2/2 replicas ready")
    assert c["QueueReachable"]["status"] == "True"
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("False", "AsExpected")
    assert all(x["lastTransitionTime"] == "2025-01-01T12:00:00Z" for x in c.values())
    assert all(x["observedGeneration"] == 1 for x in c.values())


@pytest.mark.parametrize(("view", "ready", "reason"), [
    (None, "False", "DeploymentMissing"),
    (DeploymentView(desired=3, replicas=3, ready=0), "False", "NoReadyReplicas"),
    (DeploymentView(desired=3, replicas=3, ready=1), "True", "ReplicasReady"),
    (DeploymentView(desired=0, replicas=0, ready=0), "True", "ScaledToZero"),
])
def test_ready_follows_the_deployment(view: DeploymentView | None, ready: str,
                                      reason: str) -> None:
    c = conditions(status(deployment=view))["Ready"]
    assert (c["status"], c["reason"]) == (ready, reason)


def test_queue_problem_keeps_last_figures_and_marks_them_stale() -> None:
    healthy = status(queue_figures=figures(queued=7))
    problem = Problem("RedisUnreachable", "cannot reach Redis: Connection refused")
    s = build_status(queue="jobs", generation=1, deployment=DeploymentView(2, 2, 2),
                     figures=None, previous=healthy, now=T1, queue_problem=problem)
    assert s["queued"] == 7
    c = conditions(s)
    assert (c["QueueReachable"]["status"], c["QueueReachable"]["reason"]) == (
        "False", "RedisUnreachable")
    assert c["QueueReachable"]["message"] == "cannot reach Redis: Connection refused"
    assert c["QueueReachable"]["lastTransitionTime"] == "2025-01-01T12:00:30Z"
    assert (c["Ready"]["status"], c["Degraded"]["status"]) == ("False", "True")


@pytest.mark.parametrize(("kwargs", "health"), [
    ({}, "Ready"),
    ({"deployment": DeploymentView(desired=3, replicas=3, ready=0)}, "NotReady"),
    ({"degraded_problems": [Problem("PodsFailing", "1 pod in ImagePullBackOff")]}, "Degraded"),
    ({"queue_problem": Problem("RedisUnreachable", "no route")}, "Degraded"),
    ({"paused": True, "degraded_problems": [Problem("QueueShared", "x")]}, "Paused"),
])
def test_health_is_the_pools_state_in_one_word(kwargs: dict, health: str) -> None:
    """The default Health column of kubectl get agentpools: the same word as agentpool
    status's HEALTH (a queue problem also makes the pool Degraded, which outranks it)."""
    assert status(**kwargs)["health"] == health


def test_no_figures_ever_reads_as_zero() -> None:
    s = build_status(queue="jobs", generation=1, deployment=None, figures=None, previous=None,
                     now=T0, queue_problem=Problem("SecretNotFound", "Secret a/b not found"))
    assert (s["queued"], s["inFlight"], s["delayed"], s["dead"], s["workers"]) == (0,) * 5


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = status(now=T0)
    again = status(first, now=T1, deployment=DeploymentView(3, 3, 2))
    ready = conditions(again)["Ready"]
    assert ready["message"] == "2/3 replicas ready"
    assert ready["lastTransitionTime"] == "2025-01-01T12:00:00Z"
    down = status(again, now=T1, deployment=DeploymentView(3, 3, 0))
    assert conditions(down)["Ready"]["lastTransitionTime"] == "2025-01-01T12:00:30Z"


def test_new_generation_is_observed() -> None:
    s = status(status(), generation=4, now=T1)
    assert s["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in s["conditions"])


def test_fields_and_conditions_of_scaling_pass_through() -> None:
    scaling = ConditionUpdate("Scaling", "True", "ScaledUp", "2 -> 4: 30 queued")
    first = status(extra_fields={"desiredReplicas": 4, "lastScaleReason": "queue"},
                   extra_conditions=[scaling])
    assert first["desiredReplicas"] == 4
    assert list(conditions(first)) == ["Ready", "QueueReachable", "Scaling", "Degraded"]
    later = status(first, now=T1)
    assert later["lastScaleReason"] == "queue"
    assert conditions(later)["Scaling"] == conditions(first)["Scaling"]


def test_set_condition_replaces_only_its_type() -> None:
    start = [{"type": "Other", "status": "True"}]
    result = set_condition(start, ConditionUpdate("Ready", "True", "R", "m"), now=T0,
                           generation=2)
    assert result[0]["type"] == "Ready"
    assert result[1] == {"type": "Other", "status": "True"}


def test_figures_alone_are_written_at_most_every_refresh_interval() -> None:
    written = status(queue_figures=figures(queued=1))
    moved = status(written, queue_figures=figures(queued=9))
    assert not status_write_needed(written, written, T1, T0, refresh_seconds=5)
    assert not status_write_needed(written, moved, T0 + timedelta(seconds=4), T0, 5)
    assert status_write_needed(written, moved, T0 + timedelta(seconds=5), T0, 5)
    assert status_write_needed(written, moved, T0, None, 5)


def test_a_conditions_message_alone_waits_like_the_figures() -> None:
    """A rate limit's message says the backlog it holds back, which moves every poll; a
    write per poll would be the status's churn, not news."""
    held = ConditionUpdate("Scaling", "False", "RateLimited", "the backlog asks for 7")
    written = status(extra_conditions=[held])
    later = dataclasses.replace(held, message="the backlog asks for 9")
    moved = status(written, extra_conditions=[later])
    assert conditions(moved)["Scaling"]["message"] == "the backlog asks for 9"
    assert not status_write_needed(written, moved, T0 + timedelta(seconds=4), T0, 5)
    assert status_write_needed(written, moved, T0 + timedelta(seconds=5), T0, 5)
    at_max = dataclasses.replace(held, reason="AtMaxReplicas")
    other_reason = status(written, extra_conditions=[at_max])
    assert status_write_needed(written, other_reason, T0, T0, 60)


def test_anything_else_is_written_at_once() -> None:
    written = status()
    assert status_write_needed(written, status(written, deployment=DeploymentView(2, 2, 1)),
                               T0, T0, 60)
    assert status_write_needed(written, status(written, generation=2), T0, T0, 60)
    problem = Problem("RedisUnreachable", "down")
    assert status_write_needed(
        written, status(written, queue_figures=figures(), queue_problem=problem), T0, T0, 60)
    assert status_write_needed(None, written, T0, T0, 60)


def test_events_on_turning_bad_changing_reason_and_recovering() -> None:
    healthy = status()
    missing = status(healthy, queue_problem=Problem("SecretNotFound", "Secret a/b not found"))
    events = condition_events(healthy, missing)
    assert [(e.type, e.reason, e.message) for e in events] == [
        ("Warning", "SecretNotFound", "Secret a/b not found")]
    assert condition_events(missing, status(missing, queue_problem=Problem(
        "SecretNotFound", "Secret a/b not found"))) == []
    down = status(missing, queue_problem=Problem("RedisUnreachable", "refused"))
    assert [e.reason for e in condition_events(missing, down)] == ["RedisUnreachable"]
    back = status(down)
    assert [(e.type, e.reason) for e in condition_events(down, back)] == [
        ("Normal", "Recovered")]
    assert condition_events(None, healthy) == []


@pytest.mark.parametrize("text", [
    "Error connecting to redis://agent:hunter2@redis:6379/0.",
    "rediss://:hunter2@redis.example:6380/1 refused",
    "redis://redis:6379/0?password=hunter2",
])
def test_sanitize_strips_credentials(text: str) -> None:
    assert "hunter2" not in sanitize(text)


def test_sanitize_keeps_plain_text_and_caps_length() -> None:
    assert sanitize("Secret default/x has no key 'url'") == "Secret default/x has no key 'url'"
    assert len(sanitize("x" * 5000)) == 1024


def test_an_invalid_spec_makes_the_pool_degraded_and_keeps_the_rest() -> None:
    previous = {"queue": "q", "readyReplicas": 2, "conditions": [
        {"type": "QueueReachable", "status": "True", "reason": "Connected", "message": "",
         "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": 1}]}
    now = datetime(2026, 12, 5, tzinfo=UTC)
    status = invalid_spec_status(previous, "spec.scaling: no", now=now, generation=2)
    assert {k: v for k, v in status.items() if k not in ("conditions", "health")} == {
        "queue": "q", "readyReplicas": 2}
    assert status["health"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["observedGeneration"]) == (
        "True", "InvalidSpec", 2)
    assert degraded["message"].endswith("spec.scaling: no")
    again = invalid_spec_status(status, "spec.scaling: no", now=now.replace(day=6), generation=2)
    assert again == status  # unchanged: nothing to write again


def test_a_condition_whose_source_is_gone_is_dropped() -> None:
    """Per-pool credentials turned off: the pool's Credentials condition no longer says
    anything true, and nothing would ever update it again."""
    previous = {"conditions": [{"type": "Credentials", "status": "True", "reason": "PerPoolUser",
                                "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z",
                                "observedGeneration": 1}]}
    kept = build_status(queue="q", generation=1, deployment=None, figures=None,
                        previous=previous, now=T0)
    dropped = build_status(queue="q", generation=1, deployment=None, figures=None,
                           previous=previous, now=T0, gone_conditions=("Credentials",))
    assert "Credentials" in [c["type"] for c in kept["conditions"]]
    assert "Credentials" not in [c["type"] for c in dropped["conditions"]]
