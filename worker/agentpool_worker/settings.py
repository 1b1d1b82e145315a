"""Worker configuration from the environment (prefix ``AGENTPOOL_``), checked at start.

The operator sets these from the pool spec. A bad value stops the worker before it touches
Redis, with one line that names the variable, what it must be and what it got.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentpool import urls
from agentpool.durability import DEFAULT_REPLICA_TIMEOUT, Durability
from agentpool.protocol import QUEUE_NAME
from agentpool.ratelimit import LimitConfig, decode_limits
from agentpool.urls import URL_PREFIXES

ENV_PREFIX = "AGENTPOOL_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


DEFAULT_LEASE_SECONDS = 7.0
"""A worker that dies unseen (its node lost, a partition) holds its tasks at most this long after
its last heartbeat; with the operator's reaper every 2 s they are claimable again within 10 s.
Heartbeats every lease/3 keep a live worker's leases; fencing keeps a late zombie's writes out."""


class ConfigError(Exception):
    """A configuration problem, already phrased for a person."""


def redact_url(url: str) -> str:
    """:func:`agentpool.urls.redact_url`, with an empty user name left out
    (``redis://***@host`` rather than ``redis://:***@host``)."""
    return urls.redact_url(url).replace(f"://:{urls.MASK}@", f"://{urls.MASK}@", 1)


class WorkerSettings(BaseSettings):
    """Every knob of a worker process. Field descriptions double as error messages."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=True
    )

    redis_url: str = Field(description=f"a {', '.join(URL_PREFIXES)} or unix:// URL")
    queue: str = Field(
        "default", description="a queue name of 1-100 letters, digits, '.', '_' or '-'"
    )
    handler: str = Field(description="a handler named as package.module:function")
    concurrency: int = Field(4, ge=1, le=1000, description="an integer between 1 and 1000")
    task_timeout_seconds: float = Field(
        600, gt=0, le=7 * 86400, description="a number of seconds above 0 (at most a week)"
    )
    max_attempts: int = Field(3, ge=1, le=100, description="an integer between 1 and 100")
    drain_seconds: float = Field(
        60, ge=0, le=86400, description="a number of seconds between 0 and 86400"
    )
    pod_name: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=253,
        pattern=r"^[^:\s]+$", description="a pod name without ':' or spaces",
    )
    pod_namespace: str = Field("", description="a namespace name")
    port: int = Field(
        8080, ge=0, le=65535,
        description="a TCP port between 1 and 65535 (0 turns the HTTP server off)",
    )
    log_level: LogLevel = Field(
        "info", description="one of debug, info, warning, error, critical"
    )
    lease_seconds: float = Field(
        DEFAULT_LEASE_SECONDS, ge=0.3, le=3600,
        description="a number of seconds between 0.3 and 3600",
    )
    claim_batch: int = Field(100, ge=1, le=1000, description="an integer between 1 and 1000")
    poll_seconds: float = Field(
        1.0, gt=0, le=60, description="a number of seconds above 0 (at most 60)"
    )
    retry_backoff_base_seconds: float = Field(
        1.0, gt=0, le=3600, description="a number of seconds above 0 (at most 3600)"
    )
    retry_backoff_cap_seconds: float = Field(
        300, gt=0, le=86400, description="a number of seconds above 0 (at most 86400)"
    )
    result_ttl_seconds: int = Field(
        86400, ge=1, le=365 * 86400, description="a whole number of seconds of at least 1"
    )
    redis_timeout_seconds: float = Field(
        5, gt=0, le=300, description="a number of seconds above 0 (at most 300)"
    )
    durability: Durability = Field(
        Durability.NONE, description="one of none, replicated (completions wait for a replica)"
    )
    loop_stall_seconds: float = Field(
        10, gt=0, le=3600, description="a number of seconds above 0 (at most 3600)"
    )
    rate_limits: str = Field(
        "",
        description=(
            "a JSON list of rate limits ({name, requestsPerMinute, tokensPerMinute, "
            "burstSeconds}), as the operator sets it from spec.rateLimits"
        ),
    )

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: str) -> str:
        decode_limits(value)
        return value

    @property
    def limits(self) -> dict[str, LimitConfig]:
        return decode_limits(self.rate_limits)

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith((*URL_PREFIXES, "unix://")):
            raise ValueError("bad scheme")
        return value

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        if not QUEUE_NAME.match(value):
            raise ValueError("bad queue name")
        return value

    @field_validator("handler")
    @classmethod
    def _check_handler(cls, value: str) -> str:
        module, sep, func = value.partition(":")
        if not sep or not module or not func.isidentifier():
            raise ValueError("bad handler name")
        return value

    @field_validator("log_level", "durability", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def heartbeat_seconds(self) -> float:
        """Three heartbeats per lease: one lost beat never costs a lease."""
        return self.lease_seconds / 3

    @property
    def heartbeat_stall_seconds(self) -> float:
        """No heartbeat attempt finished for this long: the heartbeat is stuck (liveness)."""
        return self.lease_seconds + self.redis_timeout_seconds

    @property
    def replica_timeout_seconds(self) -> float:
        """How long a replicated completion waits for a replica: within the Redis timeout."""
        return min(DEFAULT_REPLICA_TIMEOUT, self.redis_timeout_seconds / 2)

    @property
    def safe_redis_url(self) -> str:
        return redact_url(self.redis_url)


def load_settings(**overrides: Any) -> WorkerSettings:
    """Read the environment (keyword arguments win) and check it; ConfigError on a bad value."""
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    problems: list[str] = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        field = WorkerSettings.model_fields.get(name)
        var = ENV_PREFIX + name.upper()
        rule = field.description if field is not None and field.description else error["msg"]
        if error["type"] == "missing":
            problems.append(f"{var} is required ({rule})")
            continue
        got = error.get("input")
        if name == "redis_url" and isinstance(got, str):
            got = redact_url(got)
        problems.append(f"{var} must be {rule}, got {got!r}")
    return "; ".join(problems)
