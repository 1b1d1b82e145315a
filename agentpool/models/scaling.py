"""How a pool's size follows its queue, and how dead or stuck pods are replaced."""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator, model_validator

from agentpool.models.base import IntOrString, Model
from agentpool.models.formats import PERCENT_PATTERN
from agentpool.models.rules import (
    MAX_UNAVAILABLE_FORMAT,
    MIN_LE_MAX,
    SCALE_DOWN_STEP_MIN,
    SCALE_UP_STEP_MIN,
    cel,
)


class ScalingSpec(Model):
    """Queue-depth autoscaling. minReplicas == maxReplicas means a fixed size."""

    model_config = ConfigDict(
        json_schema_extra=cel(MIN_LE_MAX, SCALE_UP_STEP_MIN, SCALE_DOWN_STEP_MIN)
    )

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest worker pods; 0 allows scaling to zero."
    )
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most worker pods.")
    tasks_per_replica: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description=(
            "Queued plus in-flight tasks one pod is expected to carry; desired replicas = "
            "ceil(backlog / tasksPerReplica). Defaults to worker.concurrency."
        ),
    )
    activation_depth: int = Field(
        default=0,
        ge=0,
        description="A pool at zero replicas wakes only when more tasks than this are queued.",
    )
    poll_seconds: float = Field(
        default=2, ge=0.5, le=3600,
        description=("How often the queue depth is measured (at most once a second: below 1, "
                     "1; more often while tasks run, at their leases' expiry, to find a dead "
                     "worker within 10 s).")
    )
    scale_up_cooldown_seconds: int = Field(
        default=0, ge=0, le=86400, description="Least time between two scale-ups."
    )
    scale_down_cooldown_seconds: int = Field(
        default=20,
        ge=0,
        le=86400,
        description=(
            "Least time after a scale-up before a scale-down; also the stabilisation window "
            "(the highest recommendation within it wins). A scale-down drains pods: they take "
            "no new work and keep their replicas until their runs end."
        ),
    )
    keep_drained_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description=(
            "One drained pod whose runs have ended keeps its replica while the need within "
            "this window rose above the serving pods, so a load that comes and goes takes it "
            "back instead of starting a new pod."
        ),
    )
    scale_up_step: int | None = Field(
        default=None, le=1000, description="Most pods added by one decision; unlimited if unset."
    )
    scale_down_step: int | None = Field(
        default=None,
        le=1000,
        description="Most pods removed by one decision; unlimited if unset.",
    )

    def target_per_replica(self, concurrency: int) -> int:
        return self.tasks_per_replica if self.tasks_per_replica is not None else concurrency

    @model_validator(mode="after")
    def _bounds_and_steps(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_LE_MAX.message)
        if self.scale_up_step is not None and self.scale_up_step < 1:
            raise ValueError(SCALE_UP_STEP_MIN.message)
        if self.scale_down_step is not None and self.scale_down_step < 1:
            raise ValueError(SCALE_DOWN_STEP_MIN.message)
        return self


class RecoverySpec(Model):
    """Replacement of dead or stuck worker pods and requeueing of the tasks they held."""

    unready_grace_seconds: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="How long a pod may stay unready, once its worker has started, before it "
        "is drained and replaced when its worker does not heartbeat either (a worker that "
        "heartbeats but is unready, such as a failing ready hook, is left in place).",
    )
    max_unavailable: IntOrString = Field(
        default="25%",
        description=(
            "Most stuck pods recovery replaces at the same time (pods being deleted count): a "
            "count, or a percentage of the desired replicas rounded down but at least one. 0 "
            "or 0% replaces none: a stuck pod stays until the kubelet restarts its worker or "
            "someone deletes it. The tasks of dead pods are requeued either way."
        ),
        json_schema_extra=cel(MAX_UNAVAILABLE_FORMAT),
    )

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable_format(cls, value: IntOrString) -> IntOrString:
        ok = value >= 0 if isinstance(value, int) else re.fullmatch(PERCENT_PATTERN, value)
        if not ok:
            raise ValueError(MAX_UNAVAILABLE_FORMAT.message)
        return value
