"""An AgentPool's spec: its queue, Redis, workers and scaling, and the lists a pool may
declare (shared rate limits, cron schedules, tenants' weights and caps)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agentpool.models.base import Model, full_default
from agentpool.models.formats import (
    CRON_PATTERN,
    CRON_TIME_ZONE_PATTERN,
    LIMIT_NAME_PATTERN,
    MAX_RATE_LIMITS,
    MAX_SCHEDULES,
    MAX_TENANTS,
    QUEUE_PATTERN,
    TIME_ZONE_PATTERN,
)
from agentpool.models.redis_spec import RedisSpec
from agentpool.models.rules import (
    QUEUE_FIXED,
    RATE_LIMIT_HAS_RATE,
    RATE_LIMIT_NAME_FORMAT,
    RATE_LIMIT_NAMES_UNIQUE,
    SCHEDULE_CRON_FORMAT,
    SCHEDULE_CRON_TIME_ZONE,
    SCHEDULE_NAME_FORMAT,
    SCHEDULE_NAMES_UNIQUE,
    SCHEDULE_TENANT_FORMAT,
    SCHEDULE_TIME_ZONE_FORMAT,
    SCHEDULE_TIMEOUT_WITHIN_POOLS,
    TENANT_NAME_FORMAT,
    TENANT_NAMES_UNIQUE,
    cel,
    refuse_control_characters,
)
from agentpool.models.scaling import RecoverySpec, ScalingSpec
from agentpool.models.worker import WorkerSpec
from agentpool.protocol import (
    MAX_DELAY_SECONDS,
    MAX_TASK_TIMEOUT_SECONDS,
    MAX_TENANT_CHARS,
    MAX_TENANT_RUNS,
    MAX_TENANT_WEIGHT,
)


class RateLimitSpec(Model):
    """A named budget of requests and/or tokens per minute (one LLM API key, say), and/or of
    calls in progress at once (`maxConcurrent`). Every pool on the same Redis naming the same
    limit shares one budget; the first declaration of a name serves, a pool declaring other
    rates for it is reported Degraded."""

    model_config = ConfigDict(json_schema_extra=cel(RATE_LIMIT_HAS_RATE))

    name: str = Field(
        max_length=63,
        description=(
            "Name of the limit, e.g. openai; handlers call ctx.limit(name, tokens=n). The "
            "same name on another pool of the same Redis is the same budget."
        ),
        json_schema_extra=cel(RATE_LIMIT_NAME_FORMAT),
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Calls per minute; every ctx.limit call spends one.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000_000,
        description=(
            "Tokens (or any unit a handler spends) per minute; ctx.limit(name, tokens=n) "
            "spends n."
        ),
    )
    burst_seconds: float = Field(
        default=1.0,
        ge=0.01,
        le=60,
        description=(
            "The burst: how much of the budget may be spent at once after a quiet spell, in "
            "seconds of the declared rate (600 requests/min with burstSeconds 2 lets 20 "
            "calls go at once)."
        ),
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description=(
            "Most calls in progress at once, across every pool naming the limit (sandboxes "
            "of a provider, sessions of a browser service): handlers wrap each call in "
            "`async with ctx.hold(name)`, which waits for a free slot, first come first "
            "served. A worker that dies gives its slots back within 15 seconds."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name_format(cls, name: str) -> str:
        if not re.fullmatch(LIMIT_NAME_PATTERN, name):
            raise ValueError(RATE_LIMIT_NAME_FORMAT.message)
        return name

    @model_validator(mode="after")
    def _some_rate(self) -> RateLimitSpec:
        if (self.requests_per_minute is None and self.tokens_per_minute is None
                and self.max_concurrent is None):
            raise ValueError(RATE_LIMIT_HAS_RATE.message)
        return self


class ScheduleSpec(Model):
    """A task the operator submits to the pool's queue on a cron schedule."""

    name: str = Field(
        max_length=63,
        description="Name of the schedule, unique within the pool, e.g. nightly-report.",
        json_schema_extra=cel(SCHEDULE_NAME_FORMAT),
    )
    cron: str = Field(
        max_length=100,
        description=(
            "When: five fields, minute hour day-of-month month day-of-week, as in a CronJob "
            "('0 * * * *' hourly, '30 9 * * mon-fri' at 9:30 on weekdays), or @hourly, "
            "@daily, @weekly, @monthly, @yearly."
        ),
        json_schema_extra=cel(SCHEDULE_CRON_FORMAT, SCHEDULE_CRON_TIME_ZONE),
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        description="The time zone the cron fields are read in, e.g. Europe/Paris.",
        json_schema_extra=cel(SCHEDULE_TIME_ZONE_FORMAT),
    )
    payload: Any = Field(
        default=None,
        description="The task's payload: any JSON value (at most 1 MiB encoded).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority: int = Field(default=0, ge=0, le=9, description="The task's priority, 0-9.")
    starting_deadline_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description=(
            "A time missed by more than this (the operator was not running) is skipped and "
            "reported, not submitted late."
        ),
    )
    expires_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DELAY_SECONDS,
        description=(
            "A task of this schedule not started within this many seconds of its submit "
            "(its scheduled time, or later within startingDeadlineSeconds) is not run: it "
            "ends cancelled, as expired. Unset: it waits in the queue for a worker however "
            "long."
        ),
    )
    task_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TASK_TIMEOUT_SECONDS,
        description=(
            "A run of this schedule's task lasting longer is stopped and fails, as one past "
            "worker.taskTimeoutSeconds does; at most that. Unset: worker.taskTimeoutSeconds."
        ),
    )
    tenant: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TENANT_CHARS,
        description=(
            "Whose task it is (a customer, a project): tenants' tasks take turns within a "
            "priority, one task each, so this schedule's tasks neither stall nor are stalled "
            "by another tenant's flood. Unset: a task without a tenant."
        ),
        json_schema_extra=cel(SCHEDULE_TENANT_FORMAT),
    )
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        default="Allow",
        description=(
            "As a CronJob's. Allow: every time gets its task. Forbid: a time whose previous "
            "task is still queued or running is skipped (and reported). Replace: that "
            "previous task is cancelled (a running one is stopped by its worker) and the "
            "time gets its task."
        ),
    )
    suspend: bool = Field(default=False, description="Submit nothing until set back to false.")

    @field_validator("name", "time_zone")
    @classmethod
    def _format(cls, value: str, info: ValidationInfo) -> str:
        pattern, rule = _SCHEDULE_FORMATS[str(info.field_name)]
        if not re.fullmatch(pattern, value):
            raise ValueError(rule.message)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        """The twins of the cron's two rules; CEL's `matches` seeks its pattern."""
        if re.search(CRON_TIME_ZONE_PATTERN, value):
            raise ValueError(SCHEDULE_CRON_TIME_ZONE.message)
        if not re.fullmatch(CRON_PATTERN, value):
            raise ValueError(SCHEDULE_CRON_FORMAT.message)
        return value


    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        refuse_control_characters(value, SCHEDULE_TENANT_FORMAT)
        return value


_UNIQUE_NAMES = {
    "schedules": SCHEDULE_NAMES_UNIQUE,
    "rate_limits": RATE_LIMIT_NAMES_UNIQUE,
    "tenants": TENANT_NAMES_UNIQUE,
}

_SCHEDULE_FORMATS = {
    "name": (LIMIT_NAME_PATTERN, SCHEDULE_NAME_FORMAT),
    "time_zone": (TIME_ZONE_PATTERN, SCHEDULE_TIME_ZONE_FORMAT),
}


class TenantSpec(Model):
    """A tenant's share of the queue: tenants' tasks take turns within a priority, and a
    tenant of weight w takes w turns to one of a tenant of weight 1; and the most of its
    tasks that run at once."""

    name: str = Field(
        min_length=1,
        max_length=MAX_TENANT_CHARS,
        description="The tenant, as tasks name it (submit(..., tenant=name)).",
        json_schema_extra=cel(TENANT_NAME_FORMAT),
    )
    weight: int = Field(
        default=1,
        ge=1,
        le=MAX_TENANT_WEIGHT,
        description=(
            "Turns this tenant takes to one of a tenant of weight 1 (tenants not listed "
            "weigh 1), from its next task on."
        ),
    )
    max_running: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TENANT_RUNS,
        description=(
            "The most of this tenant's tasks that run at once, in place of "
            "tenantMaxRunning; its other tasks wait, keeping their places, while the other "
            "tenants' run."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        refuse_control_characters(value, TENANT_NAME_FORMAT)
        return value


class AgentPoolSpec(Model):
    """A pool of workers serving one Redis task queue."""

    model_config = ConfigDict(json_schema_extra=cel(SCHEDULE_TIMEOUT_WITHIN_POOLS, QUEUE_FIXED))

    queue: str | None = Field(
        default=None,
        max_length=100,
        pattern=QUEUE_PATTERN,
        description="Name of the task queue; defaults to the pool's name. Fixed once the "
        "pool exists.",
    )
    redis: RedisSpec = Field(description="Redis server holding the queue.")
    worker: WorkerSpec = Field(description="The worker pods: image, handler, concurrency.")
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec,
        description="Queue-depth autoscaling bounds and pace.",
        json_schema_extra=full_default(ScalingSpec),
    )
    recovery: RecoverySpec = Field(
        default_factory=RecoverySpec,
        description="Replacement of dead or stuck pods.",
        json_schema_extra=full_default(RecoverySpec),
    )
    paused: bool = Field(
        default=False,
        description=(
            "Stop scaling and the draining or replacing of pods; the tasks of dead workers are "
            "still requeued, and status keeps being reported."
        ),
    )
    rate_limits: list[RateLimitSpec] | None = Field(
        default=None,
        max_length=MAX_RATE_LIMITS,
        description=(
            "Shared request/token budgets the handlers wait on (ctx.limit): one per LLM API "
            "key. Scale-up stops at the size a limit can feed."
        ),
        json_schema_extra=cel(RATE_LIMIT_NAMES_UNIQUE),
    )

    schedules: list[ScheduleSpec] | None = Field(
        default=None,
        max_length=MAX_SCHEDULES,
        description=(
            "Tasks the operator submits to the queue on cron schedules, each at most once "
            "per scheduled time (while the pool is not paused)."
        ),
        json_schema_extra=cel(SCHEDULE_NAMES_UNIQUE),
    )

    tenants: list[TenantSpec] | None = Field(
        default=None,
        max_length=MAX_TENANTS,
        description=(
            "Weights and caps of the tenants whose tasks share the queue (submit(..., "
            "tenant=name)): a tenant of weight 3 takes three turns to one of a tenant of "
            "weight 1. Tenants not listed weigh 1."
        ),
        json_schema_extra=cel(TENANT_NAMES_UNIQUE),
    )
    tenant_max_running: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TENANT_RUNS,
        description=(
            "The most tasks of any one tenant that run at once (a tenant's maxRunning in "
            "tenants comes first): a tenant at its cap waits, its tasks keeping their places, "
            "while the other tenants' run, and the autoscaler does not count its waiting "
            "tasks. Tasks without a tenant are not capped. Unset: no cap."
        ),
    )

    @field_validator("schedules", "rate_limits", "tenants")
    @classmethod
    def _unique_names(cls, items: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        names = [item.name for item in items or ()]
        if len(names) != len(set(names)):
            raise ValueError(_UNIQUE_NAMES[str(info.field_name)].message)
        return items

    @model_validator(mode="after")
    def _schedule_timeouts_within_the_pools(self) -> AgentPoolSpec:
        if any(s.task_timeout_seconds is not None
               and s.task_timeout_seconds > self.worker.task_timeout_seconds
               for s in self.schedules or ()):
            raise ValueError(SCHEDULE_TIMEOUT_WITHIN_POOLS.message)
        return self

    def queue_name(self, pool_name: str) -> str:
        return self.queue or pool_name
