"""Where a pool's queue lives: a Redis URL, or a Secret that holds one."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from agentpool.models.base import Model
from agentpool.models.rules import (
    REDIS_EXACTLY_ONE,
    REDIS_URL_NO_CREDENTIALS,
    REDIS_URL_SCHEME,
    cel,
)
from agentpool.urls import URL_PREFIXES


class SecretKeyRef(Model):
    """A key of a Secret in the pool's namespace."""

    name: str = Field(
        min_length=1, max_length=253, description="Name of the Secret in the pool's namespace."
    )
    key: str = Field(
        default="url", min_length=1, max_length=253, description="Key within the Secret."
    )


class RedisSpec(Model):
    """Where the queue lives. Set exactly one of `url` and `urlSecretRef`."""

    model_config = ConfigDict(
        json_schema_extra=cel(REDIS_EXACTLY_ONE, REDIS_URL_SCHEME, REDIS_URL_NO_CREDENTIALS)
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "Redis URL without credentials, e.g. redis://redis.default:6379/0; use rediss:// "
            "for TLS. A URL with a password belongs in a Secret: use urlSecretRef instead."
        ),
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding the full Redis URL (it may carry credentials). The operator "
            "reads it; the workers receive it as AGENTPOOL_REDIS_URL unless the operator gives "
            "them a Redis user of the pool's own (per-pool credentials)."
        ),
    )
    producer_credentials: bool = Field(
        default=False,
        description=(
            "With per-pool credentials: also publish a producer credential for the services "
            "that submit tasks (submit, read tasks and results, wait, cancel; no claim, no "
            "worker, lease or rate-limit key; within its queue it can still remove or rewrite "
            "tasks, see docs/security.md), as the URL under key url of Secret "
            "<pool>-redis-producer. Turning it off deletes that Secret and its Redis user."
        ),
    )

    durability: Literal["none", "replicated"] = Field(
        default="none",
        description=(
            "none: a write counts once the Redis primary has it (replication is "
            "asynchronous; a failover can lose the last writes, so a task may run again). "
            "replicated: the workers' completions also wait for one replica (WAIT 1), so a "
            "failover loses none; needs a Redis with a replica (Sentinel or Cluster). "
            "Producers choose the same for their submits on their client."
        ),
    )

    @field_validator("url")
    @classmethod
    def _url_is_plain_redis(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if "@" in url or "password=" in url:
            raise ValueError(REDIS_URL_NO_CREDENTIALS.message)
        if not url.startswith(URL_PREFIXES):
            raise ValueError(REDIS_URL_SCHEME.message)
        return url

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RedisSpec:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError(REDIS_EXACTLY_ONE.message)
        return self
