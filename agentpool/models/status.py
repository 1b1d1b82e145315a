"""What the operator reports of a pool: counts, conditions and schedules' times."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from agentpool.models.base import Model


class Condition(Model):
    """The latest observation of one aspect of the pool, the Kubernetes way."""

    type: str = Field(description="Ready, QueueReachable, Scaling or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(default=None, description="CamelCase reason for the status.")
    message: str | None = Field(default=None, description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set for."
    )


CONDITION_TYPES = ("Ready", "QueueReachable", "Scaling", "Degraded")


class ScheduleStatus(Model):
    """The last and next times of one schedule."""

    name: str = Field(description="The schedule's name.")
    last_schedule_time: datetime | None = Field(
        default=None, description="The scheduled time of the last task submitted."
    )
    last_task_id: str | None = Field(default=None, description="The id of that task.")
    next_schedule_time: datetime | None = Field(
        default=None, description="The next time a task is due."
    )
    cron: str | None = Field(
        default=None,
        description=(
            "The cron expression nextScheduleTime was found with: once the schedule's cron "
            "differs, its times are found again from when the operator sees the change."
        ),
    )
    time_zone: str | None = Field(
        default=None,
        description=(
            "The time zone nextScheduleTime was found in: once the schedule's timeZone "
            "differs, its times are found again from when the operator sees the change."
        ),
    )


def parse_rfc3339(value: Any) -> datetime | None:
    """A timestamp of the API (``2026-12-04T01:00:00Z``) or of the status; None when `value`
    is not one (missing, or written by hand)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class AgentPoolStatus(Model):
    """What the operator last observed of the pool and its queue."""

    queue: str | None = Field(default=None, description="Name of the queue served.")
    redis: str | None = Field(
        default=None,
        description=(
            "The Redis server the queue is on, as the operator last reached it: scheme, "
            "hosts (a Service's name as name.namespace.svc) and database, never credentials. "
            "The console finds a pool's queue by it when it may not read the pool's Secret."
        ),
    )
    health: str | None = Field(
        default=None,
        description=(
            "The pool in one word: Ready, NotReady, Degraded, QueueUnreachable, Paused or "
            "Pending (no condition yet); the conditions say why."
        ),
    )
    replicas: int = Field(default=0, description="Worker pods that exist.")
    ready_replicas: int = Field(default=0, description="Worker pods that are ready.")
    desired_replicas: int = Field(default=0, description="Worker pods the pool should have.")
    draining_replicas: int = Field(
        default=0,
        description=(
            "Worker pods that claim no new task and finish their runs before they go: chosen "
            "by a scale-down (they keep their replica until their runs end), on a node being "
            "drained, or stopped by a rollout or a deletion while they hold runs."
        ),
    )
    draining_since: datetime | None = Field(
        default=None,
        description="When the longest-draining of those pods was asked to drain or stop.",
    )
    queued: int = Field(default=0, description="Tasks waiting to be claimed.")
    delayed: int = Field(default=0, description="Tasks scheduled for later or awaiting retry.")
    in_flight: int = Field(default=0, description="Tasks being run by a worker.")
    deferred: int = Field(
        default=0,
        description="Tasks waiting for the tasks they run after to succeed (not runnable yet, "
        "so not counted in queued).",
    )
    capped: int = Field(
        default=0,
        description="Of queued, the tasks parked for their tenant's cap on runs at once "
        "(tenantMaxRunning): not counted in the backlog the pool is sized for.",
    )
    dead: int = Field(default=0, description="Tasks in the dead-letter list.")
    workers: int = Field(default=0, description="Worker processes with a live heartbeat.")
    last_scale_time: datetime | None = Field(
        default=None, description="When the replica count was last changed."
    )
    last_scale_reason: str | None = Field(
        default=None, description="Why the replica count was last changed."
    )
    recovered_tasks: int = Field(
        default=0, description="Tasks requeued from dead or stuck workers."
    )
    replaced_pods: int = Field(default=0, description="Dead or stuck pods replaced.")
    rate_limited_by: str | None = Field(
        default=None,
        description=(
            "The name of the rate limit that holds the pool's size (its workers mostly wait "
            "on it; the Scaling condition says how many pods it can feed); unset when no "
            "limit binds."
        ),
    )
    schedules: list[ScheduleStatus] | None = Field(
        default=None,
        description="Per schedule: the last task submitted and the next time.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the status reflects."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, QueueReachable, Scaling and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
