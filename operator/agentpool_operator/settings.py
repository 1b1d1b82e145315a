"""Operator configuration from the environment (prefix ``AGENTPOOL_OPERATOR_``)."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "AGENTPOOL_OPERATOR_"
PEERING_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")

LogLevel = Literal["debug", "info", "warning", "error"]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Namespaces to serve, comma-separated (kopf patterns allowed); "
        "empty = cluster-wide.",
    )
    peering: str = Field(
        default="",
        description="kopf peering object shared by the operator's replicas (one of them is "
        "active at a time); empty = standalone.",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="Port of /healthz and /metrics.")
    log_level: LogLevel = "info"
    status_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=("Least time between two status writes that change only queue figures "
                     "or a condition's message."),
    )

    unschedulable_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="How long a worker pod may wait for a node before its pool is Degraded "
        "(PodsUnschedulable): longer than a node autoscaler takes to add one; lower on a "
        "cluster without one.",
    )

    per_pool_credentials: bool = Field(
        default=False,
        description="Give each pool's workers a Redis ACL user confined to the pool's queue, "
        "created with the pool's own Redis URL, instead of that URL itself.",
    )

    producer_password_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        le=30 * 86400,
        description="After a rotation, how long a pool's producer user still accepts its old "
        "password (the services that submit read the new one from the Secret meanwhile).",
    )

    protected_service_accounts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="ServiceAccounts no pool may run its workers as, namespace/name, "
        "comma-separated: the operator's own and the console's (the chart sets them), whose "
        "rights a pool's author must not borrow.",
    )

    redis_address_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="host:port=host:port pairs, comma-separated: Redis addresses to reach "
        "another way (an operator outside the cluster, through a port-forward).",
    )

    @field_validator("redis_address_map", mode="before")
    @classmethod
    def _parse_address_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            source, sep, target = item.partition("=")
            if not sep or ":" not in source or ":" not in target:
                raise ValueError(f"expected host:port=host:port pairs, got {item!r}")
            pairs[source.strip()] = target.strip()
        return pairs

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("protected_service_accounts", mode="before")
    @classmethod
    def _split_accounts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        accounts = tuple(part.strip() for part in value.split(",") if part.strip())
        for account in accounts:
            namespace, sep, name = account.partition("/")
            if not (sep and namespace and name) or "/" in name:
                raise ValueError(f"expected namespace/name pairs, got {account!r}")
        return accounts

    @field_validator("peering")
    @classmethod
    def _peering_name(cls, value: str) -> str:
        value = value.strip()
        if value and not PEERING_NAME.match(value):
            raise ValueError("must be a Kubernetes object name (lower-case letters, digits, '-')")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def standalone(self) -> bool:
        return not self.peering


def describe_errors(error: ValidationError) -> str:
    """All problems on one line, each named by the environment variable that caused it."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = f"{ENV_PREFIX}{field.upper()}" if field else "configuration"
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        suffix = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        parts.append(f"{name}: {message}{suffix}")
    return "; ".join(parts)


def load_settings() -> OperatorSettings:
    """Read the environment; on a bad value print one line to stderr and exit with status 2."""
    try:
        return OperatorSettings()
    except ValidationError as error:
        print(f"agentpool-operator: invalid configuration: {describe_errors(error)}",
              file=sys.stderr)
        raise SystemExit(2) from None
