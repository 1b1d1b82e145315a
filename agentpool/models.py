"""The AgentPool custom resource as pydantic models: the one source of truth for its schema.

`agentpool.crd` renders the CustomResourceDefinition from these classes. The validation rules
the API server enforces with CEL (`x-kubernetes-validations`) are declared here next to the
fields they guard, and each has a Python twin raising the same message, so that the operator
refuses exactly what the API server refuses.

A real API server holds these rules to more than a CEL runtime does, and the test suite checks
each point with Google's CEL runtime: every rule must compile (in a CEL string literal a
backslash-dot is no valid escape, so patterns spell a literal dot `[.]`); every `default` must
pass the rules of its node as written, without the defaults nested inside it (so an object's
default is written out in full, see `full_default`); and a failing rule on a scalar field quotes
that field's value back to the user, so rules about a field that may carry a secret sit on its
parent object.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from agentpool.protocol import (
    DEFAULT_TASK_TIMEOUT_SECONDS,
    MAX_ATTEMPTS_LIMIT,
    MAX_DELAY_SECONDS,
    MAX_TASK_TIMEOUT_SECONDS,
    MAX_TENANT_CHARS,
    MAX_TENANT_RUNS,
    MAX_TENANT_WEIGHT,
    has_control_character,
)
from agentpool.urls import URL_PREFIXES, URL_PREFIXES_TEXT

GROUP = "agentpool.dev"
VERSION = "v1alpha1"
KIND = "AgentPool"
PLURAL = "agentpools"
SINGULAR = "agentpool"
SHORT_NAMES = ("ap",)

QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
HANDLER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
PERCENT_PATTERN = r"^[0-9]{1,3}%$"
LIMIT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
MAX_RATE_LIMITS = 16
MAX_SCHEDULES = 32
MAX_TENANTS = 64
MAX_SUBMITS_TO = 32
MAX_VOLUMES = 32
MAX_INIT_CONTAINERS = 8
MAX_POD_METADATA = 64
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
VOLUME_SOURCES = ("configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected", "csi",
                  "downwardAPI", "ephemeral")
"""The volume types the restricted Pod Security Standard allows."""
SCRATCH_VOLUME = "tmp"
WORKER_CONTAINER_NAME = "worker"
"""The worker's own writable volume at /tmp (its root filesystem is read-only)."""


def _cron_field(value: str) -> str:
    """A cron field: a comma list of `*` or a value or a range, each with an optional /step.
    Written without backslashes, which a CEL string literal refuses."""
    item = f"([*]|{value}(-{value})?)(/[1-9][0-9]?)?"
    return f"{item}(,{item})*"


_MONTH_NAMES = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DAY_NAMES = "sun|mon|tue|wed|thu|fri|sat"
CRON_PATTERN = (
    "^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + " +".join(_cron_field(v) for v in (
        "[0-5]?[0-9]",                                  # minute
        "([01]?[0-9]|2[0-3])",                          # hour
        "(0?[1-9]|[12][0-9]|3[01])",                    # day of month
        f"(0?[1-9]|1[0-2]|(?i:{_MONTH_NAMES}))",        # month
        f"([0-7]|(?i:{_DAY_NAMES}))",                   # day of week (0 and 7: Sunday)
    ))
    + ")$"
)
TIME_ZONE_PATTERN = "^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"


class CelRule(NamedTuple):
    """A `x-kubernetes-validations` entry: `rule` is CEL, `message` is what the user reads."""

    rule: str
    message: str


REDIS_EXACTLY_ONE = CelRule(
    "has(self.url) != has(self.urlSecretRef)",
    "set exactly one of redis.url and redis.urlSecretRef",
)
REDIS_URL_SCHEME = CelRule(
    "!has(self.url) || " + " || ".join(f"self.url.startsWith('{p}')" for p in URL_PREFIXES),
    f"redis.url must start with {URL_PREFIXES_TEXT}",
)
REDIS_URL_NO_CREDENTIALS = CelRule(
    "!has(self.url) || !(self.url.contains('@') || self.url.contains('password='))",
    "redis.url must not carry credentials (user:password@ or password=): put the whole URL "
    "in a Secret and use redis.urlSecretRef",
)
HANDLER_FORMAT = CelRule(
    f"self.matches('{HANDLER_PATTERN}')",
    "worker.handler must look like package.module:function",
)
WORKER_HANDLER_OR_COMMAND = CelRule(
    "has(self.handler) != has(self.taskCommand)",
    "set exactly one of worker.handler (a Python function) and worker.taskCommand (a "
    "program each task runs)",
)
MIN_LE_MAX = CelRule(
    "self.minReplicas <= self.maxReplicas",
    "scaling.minReplicas must be less than or equal to scaling.maxReplicas",
)
SCALE_UP_STEP_MIN = CelRule(
    "!has(self.scaleUpStep) || self.scaleUpStep >= 1",
    "scaling.scaleUpStep must be at least 1 when set",
)
SCALE_DOWN_STEP_MIN = CelRule(
    "!has(self.scaleDownStep) || self.scaleDownStep >= 1",
    "scaling.scaleDownStep must be at least 1 when set",
)
MAX_UNAVAILABLE_FORMAT = CelRule(
    f"type(self) == int ? self >= 0 : self.matches('{PERCENT_PATTERN}')",
    "recovery.maxUnavailable must be a non-negative integer or a percentage such as 25%",
)

RATE_LIMIT_NAME_FORMAT = CelRule(
    f"self.matches('{LIMIT_NAME_PATTERN}')",
    "rateLimits[].name must be 1-63 lowercase letters, digits, '.', '_' or '-', starting and "
    "ending with a letter or digit",
)
RATE_LIMIT_HAS_RATE = CelRule(
    "has(self.requestsPerMinute) || has(self.tokensPerMinute) || has(self.maxConcurrent)",
    "each rate limit needs requestsPerMinute, tokensPerMinute, maxConcurrent or a mix",
)
SCHEDULE_NAME_FORMAT = CelRule(
    f"self.matches('{LIMIT_NAME_PATTERN}')",
    "schedules[].name must be 1-63 lowercase letters, digits, '.', '_' or '-', starting and "
    "ending with a letter or digit",
)
SCHEDULE_CRON_FORMAT = CelRule(
    f"self.matches('{CRON_PATTERN}')",
    "schedules[].cron must be five fields (minute hour day-of-month month day-of-week, e.g. "
    "'0 * * * *' or '30 9 * * mon-fri') or @hourly, @daily, @weekly, @monthly or @yearly",
)
SCHEDULE_TIME_ZONE_FORMAT = CelRule(
    f"self.matches('{TIME_ZONE_PATTERN}')",
    "schedules[].timeZone must be a time zone name such as UTC or Europe/Paris",
)
NO_CONTROL_CHARACTER = r"self.matches(r'^\P{Cc}*$')"
"""A tenant's name as the API server checks it (RE2's Cc, as `has_control_character`)."""
SCHEDULE_TENANT_FORMAT = CelRule(
    NO_CONTROL_CHARACTER,
    "schedules[].tenant must hold no control character (a tab, a line break)",
)
TENANT_NAME_FORMAT = CelRule(
    NO_CONTROL_CHARACTER,
    "tenants[].name must hold no control character (a tab, a line break)",
)
TENANT_NAMES_UNIQUE = CelRule(
    "self.all(a, self.exists_one(b, b.name == a.name))",
    "tenants names must be unique within a pool",
)
SCHEDULE_NAMES_UNIQUE = CelRule(
    "self.all(a, self.exists_one(b, b.name == a.name))",
    "schedules names must be unique within a pool",
)
SUBMITS_TO_UNIQUE = CelRule(
    "self.all(a, self.exists_one(b, b == a))",
    "worker.submitsTo must name each queue once",
)
RATE_LIMIT_NAMES_UNIQUE = CelRule(
    "self.all(a, self.exists_one(b, b.name == a.name))",
    "rateLimits names must be unique within a pool",
)
VOLUME_ONE_SOURCE = CelRule(
    "[" + ", ".join(f"has(self.{source})" for source in VOLUME_SOURCES) + "].exists_one(s, s)",
    "each worker.volumes entry needs exactly one of " + ", ".join(VOLUME_SOURCES)
    + " (the volume types the restricted Pod Security Standard allows)",
)
VOLUME_NAMES_UNIQUE = CelRule(
    "self.all(a, self.exists_one(b, b.name == a.name))",
    "worker.volumes names must be unique within a pool",
)
MOUNT_PATHS_UNIQUE = CelRule(
    "self.all(a, self.exists_one(b, b.mountPath == a.mountPath))",
    "worker.volumeMounts mountPath values must be unique within a pool",
)
MOUNT_NOT_ON_SCRATCH = CelRule(
    "self.mountPath != '/tmp' && self.mountPath != '/tmp/'",
    "a volumeMounts entry cannot use /tmp, the pod's scratch volume: to size it or keep it in "
    "memory, declare a volume named tmp in worker.volumes instead",
)
MOUNT_SUB_PATH_RELATIVE = CelRule(
    "!has(self.subPath) || !(self.subPath.startsWith('/') || self.subPath.contains('..'))",
    "a volumeMounts subPath must be a relative path without '..'",
)
MOUNTS_NAME_VOLUMES = CelRule(
    "!has(self.volumeMounts) || self.volumeMounts.all(m, m.name == 'tmp' || "
    "(has(self.volumes) && self.volumes.exists(v, v.name == m.name)))",
    "each worker.volumeMounts name must be the name of a volume in worker.volumes (or tmp, "
    "the worker's scratch volume)",
)
INIT_MOUNTS_NAME_VOLUMES = CelRule(
    "!has(self.initContainers) || self.initContainers.all(c, !has(c.volumeMounts) || "
    "c.volumeMounts.all(m, m.name == 'tmp' || "
    "(has(self.volumes) && self.volumes.exists(v, v.name == m.name))))",
    "each worker.initContainers[].volumeMounts name must be the name of a volume in "
    "worker.volumes (or tmp, the worker's scratch volume)",
)
SCHEDULE_TIMEOUT_WITHIN_POOLS = CelRule(
    "!has(self.schedules) || self.schedules.all(s, !has(s.taskTimeoutSeconds) || "
    "s.taskTimeoutSeconds <= self.worker.taskTimeoutSeconds)",
    "schedules[].taskTimeoutSeconds must be at most worker.taskTimeoutSeconds: a task's "
    "timeout can shorten the pool's, not lengthen it (drains count on no run outlasting it)",
)
QUEUE_FIXED = CelRule(
    "has(self.queue) == has(oldSelf.queue) && (!has(self.queue) || self.queue == oldSelf.queue)",
    "spec.queue cannot be set, changed or removed once the pool exists: the tasks queued and "
    "running are in its queue; create another pool for another queue",
)
"""A transition rule: the API server checks it on updates only. A pool moved to another queue
would leave the old one's tasks with nobody to run or recover them."""
INIT_CONTAINER_NAMES = CelRule(
    "self.all(a, a.name != 'worker' && self.exists_one(b, b.name == a.name))",
    "worker.initContainers names must be unique within a pool and not worker (the worker "
    "container's own)",
)

CEL_RULES: tuple[CelRule, ...] = (
    REDIS_EXACTLY_ONE,
    REDIS_URL_SCHEME,
    REDIS_URL_NO_CREDENTIALS,
    HANDLER_FORMAT,
    WORKER_HANDLER_OR_COMMAND,
    MIN_LE_MAX,
    SCALE_UP_STEP_MIN,
    SCALE_DOWN_STEP_MIN,
    MAX_UNAVAILABLE_FORMAT,
    RATE_LIMIT_NAME_FORMAT,
    RATE_LIMIT_HAS_RATE,
    RATE_LIMIT_NAMES_UNIQUE,
    SUBMITS_TO_UNIQUE,
    SCHEDULE_NAME_FORMAT,
    SCHEDULE_CRON_FORMAT,
    SCHEDULE_TIME_ZONE_FORMAT,
    SCHEDULE_TENANT_FORMAT,
    SCHEDULE_NAMES_UNIQUE,
    SCHEDULE_TIMEOUT_WITHIN_POOLS,
    TENANT_NAME_FORMAT,
    TENANT_NAMES_UNIQUE,
    VOLUME_ONE_SOURCE,
    VOLUME_NAMES_UNIQUE,
    MOUNT_PATHS_UNIQUE,
    MOUNT_NOT_ON_SCRATCH,
    MOUNT_SUB_PATH_RELATIVE,
    MOUNTS_NAME_VOLUMES,
    INIT_MOUNTS_NAME_VOLUMES,
    INIT_CONTAINER_NAMES,
)
"""Rules on a spec as it stands, which the models enforce too."""
TRANSITION_RULES: tuple[CelRule, ...] = (QUEUE_FIXED,)
"""Rules on a change of the spec: only the API server, which holds the stored pool, can."""


def cel(*rules: CelRule) -> dict[str, Any]:
    """JSON-schema extra carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": [rule._asdict() for rule in rules]}


def full_default(model: type[BaseModel]) -> dict[str, Any]:
    """JSON-schema extra giving an object field its model's defaults, written out in full.

    The API server checks a `default` against its node's rules without filling in the
    defaults nested inside it, so `default: {}` would fail a rule such as
    `self.minReplicas <= self.maxReplicas`.
    """
    return {"default": model().model_dump(by_alias=True, exclude_none=True, mode="json")}

IntOrString = int | str
Quantity = Annotated[IntOrString, Field(description="A quantity such as 2, 500m or 1Gi.")]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class SecretKeyRef(_Model):
    """A key of a Secret in the pool's namespace."""

    name: str = Field(
        min_length=1, max_length=253, description="Name of the Secret in the pool's namespace."
    )
    key: str = Field(
        default="url", min_length=1, max_length=253, description="Key within the Secret."
    )


class RedisSpec(_Model):
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


class ResourceRequirements(_Model):
    """Compute resources of each worker container, as in a Pod spec."""

    limits: dict[str, Quantity] | None = Field(
        default=None, description="Maximum resources, e.g. {cpu: '1', memory: 1Gi}."
    )
    requests: dict[str, Quantity] | None = Field(
        default=None, description="Resources the scheduler reserves, e.g. {cpu: 250m}."
    )


class EnvVar(_Model):
    """An environment variable of the worker container, as in a Pod spec."""

    name: str = Field(min_length=1, description="Variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="Source of the value (secretKeyRef, configMapKeyRef, fieldRef, ...).",
    )


class LocalObjectReference(_Model):
    """A reference to an object in the pool's namespace."""

    name: str = Field(min_length=1, description="Name of the object.")


def _source(what: str, alias: str | None = None) -> Any:
    return Field(default=None, alias=alias, description=f"{what}, as in a Pod's volume.")


class Volume(_Model):
    """A volume of the worker pods, of a type the restricted Pod Security Standard allows."""

    model_config = ConfigDict(json_schema_extra=cel(VOLUME_ONE_SOURCE))

    name: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "Volume name, named by volumeMounts. A volume named tmp replaces the worker's own "
            "scratch volume at /tmp (an emptyDir), e.g. to give it a sizeLimit or medium: "
            "Memory."
        ),
    )
    config_map: dict[str, Any] | None = _source("A ConfigMap's keys as files")
    secret: dict[str, Any] | None = _source("A Secret's keys as files")
    empty_dir: dict[str, Any] | None = _source("A scratch directory that lives with the pod")
    persistent_volume_claim: dict[str, Any] | None = _source("A PersistentVolumeClaim")
    projected: dict[str, Any] | None = _source("Several sources in one directory")
    csi: dict[str, Any] | None = _source("A CSI driver's inline volume")
    downward_api: dict[str, Any] | None = _source("Pod fields as files", alias="downwardAPI")
    ephemeral: dict[str, Any] | None = _source("A volume claimed for the pod's lifetime")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        if sum(value is not None for field, value in self if field != "name") != 1:
            raise ValueError(VOLUME_ONE_SOURCE.message)
        return self


class VolumeMount(_Model):
    """Where a volume appears in the worker container."""

    model_config = ConfigDict(json_schema_extra=cel(MOUNT_NOT_ON_SCRATCH, MOUNT_SUB_PATH_RELATIVE))

    name: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63,
        description="Name of a volume in worker.volumes (or tmp, the worker's scratch volume).",
    )
    mount_path: str = Field(
        pattern="^/", max_length=1024, description="Absolute path in the container."
    )
    read_only: bool | None = Field(default=None, description="Mount it read-only.")
    sub_path: str | None = Field(
        default=None, min_length=1, max_length=1024,
        description="A path within the volume to mount instead of its root.",
    )

    @model_validator(mode="after")
    def _paths(self) -> VolumeMount:
        if self.mount_path in ("/tmp", "/tmp/"):
            raise ValueError(MOUNT_NOT_ON_SCRATCH.message)
        if self.sub_path is not None and (self.sub_path.startswith("/") or ".." in self.sub_path):
            raise ValueError(MOUNT_SUB_PATH_RELATIVE.message)
        return self


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


class ContainerSecurity(_Model):
    """What an init container or sidecar may change of the worker's security context: its
    user and group (never root) and whether its root filesystem is writable. The rest (no
    privilege escalation, every capability dropped, non-root, RuntimeDefault seccomp) stays,
    so the pod still meets the restricted Pod Security Standard."""

    run_as_user: int | None = Field(
        default=None, ge=1, le=2147483647,
        description="User ID the container runs as, instead of the pod's 10001 (not 0).")
    run_as_group: int | None = Field(
        default=None, ge=1, le=2147483647,
        description="Group ID the container runs as, instead of the pod's 10001 (not 0).")
    read_only_root_filesystem: bool | None = Field(
        default=None,
        description=(
            "false: the container may write to its image's filesystem (an image that keeps "
            "a cache or state under its own directories). Default true."
        ),
    )


class InitContainer(_Model):
    """A container that runs before the worker (fetch a model, clone a repository, wait for a
    service), or beside it with restartPolicy Always (a sidecar, such as an LLM gateway). It
    runs under the worker's restricted security context (`securityContext` may change its
    user, group and root filesystem) and sees /tmp, the scratch volume, as the worker does."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Container name.")
    image: str = Field(min_length=1, max_length=1024, description="Container image.")
    command: list[str] | None = Field(
        default=None, max_length=256, description="Entrypoint, as in a container.")
    args: list[str] | None = Field(
        default=None, max_length=256, description="Arguments, as in a container.")
    env: list[EnvVar] | None = Field(default=None, description="Environment variables.")
    env_from: list[dict[str, Any]] | None = Field(
        default=None, description="Sources of environment variables, as in a container.")
    volume_mounts: list[VolumeMount] | None = Field(
        default=None, max_length=MAX_VOLUMES,
        description="Volumes of worker.volumes (or tmp) it mounts, besides /tmp.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the container.")
    restart_policy: Literal["Always"] | None = Field(
        default=None,
        description=(
            "Always: a sidecar that starts before the worker and runs beside it for the pod's "
            "life (Kubernetes 1.29 or later). Unset: it runs to completion before the worker "
            "starts."
        ),
    )
    security_context: ContainerSecurity | None = Field(
        default=None,
        description=(
            "User, group and a writable root filesystem for this container; the restricted "
            "settings stay."
        ),
    )


class WorkerSpec(_Model):
    """The worker pods: image, task handler and how they run."""

    model_config = ConfigDict(json_schema_extra=cel(
        WORKER_HANDLER_OR_COMMAND, MOUNTS_NAME_VOLUMES, INIT_MOUNTS_NAME_VOLUMES))

    image: str = Field(min_length=1, description="Worker container image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the worker, its init containers and "
        "sidecars; the Kubernetes default of each image when unset."
    )
    handler: str | None = Field(
        default=None,
        max_length=512,
        description=(
            "Task handler as package.module:function, importable in the image, e.g. "
            "agentpool_worker.builtin:simulated_agent. Set this or taskCommand."
        ),
        json_schema_extra=cel(HANDLER_FORMAT),
    )
    task_command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description=(
            "A program each task runs instead of a Python handler, as a container's command, "
            "e.g. [node, /app/agent.js]: the payload on its stdin, its result (and events, "
            "progress, checkpoints) as JSON lines on its stdout. It must be in the image. Set "
            "this or handler."
        ),
    )
    submits_to: list[Annotated[str, Field(max_length=100, pattern=QUEUE_PATTERN)]] | None = Field(
        default=None,
        max_length=MAX_SUBMITS_TO,
        description=(
            "Other queues of the same Redis the handlers submit tasks to (ctx.submit(..., "
            "queue=...), a program's submit line with \"queue\"), e.g. a planner handing "
            "steps to pools of other skills. With per-pool credentials the worker's Redis user "
            "gets a producer's rights on these queues (submit, read, cancel; see "
            "docs/security.md), not a worker's (Redis 7 or later)."
        ),
        json_schema_extra=cel(SUBMITS_TO_UNIQUE),
    )
    concurrency: int = Field(
        default=4, ge=1, le=1000, description="Tasks one pod runs at the same time."
    )
    task_timeout_seconds: int = Field(
        default=DEFAULT_TASK_TIMEOUT_SECONDS,
        ge=1,
        le=MAX_TASK_TIMEOUT_SECONDS,
        description="A task running longer is cancelled and counts as a failed attempt.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description="Attempts per task before it goes to the dead-letter list.",
    )
    drain_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TASK_TIMEOUT_SECONDS,
        description=(
            "Time a stopped pod (rollout, deletion, an eviction when protectBusyPods is off) "
            "gets to finish its in-flight tasks; tasks still running after it go back to the "
            "queue. Default: taskTimeoutSeconds, so no run is cut short (a rollout does not "
            "wait for it: the new pods serve at once). A scale-down does not use it: a pod "
            "chosen for removal leaves once its runs ended."
        ),
    )
    protect_busy_pods: bool = Field(
        default=True,
        description=(
            "Busy worker pods refuse evictions (kubectl drain, node upgrades, autoscalers "
            "that empty nodes): a PodDisruptionBudget covers the pods that hold runs. The "
            "pods of a node being drained (cordoned, or tainted by the Cluster Autoscaler or "
            "Karpenter) stop taking tasks and leave once their runs end, at most "
            "taskTimeoutSeconds later; new pods start elsewhere. Off: an eviction gives a "
            "busy pod drainSeconds."
        ),
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of each worker container."
    )
    env: list[EnvVar] | None = Field(
        default=None, description="Extra environment variables of the worker container."
    )
    env_from: list[dict[str, Any]] | None = Field(
        default=None,
        description="Sources of environment variables (configMapRef, secretRef), as in a Pod.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the worker pods must be scheduled on."
    )
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        description="Tolerations of the worker pods, as in a Pod spec.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Affinity of the worker pods, as in a Pod spec.",
    )
    service_account_name: str | None = Field(
        default=None, description="Service account the worker pods run as."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, description="Secrets for pulling the worker image."
    )
    priority_class_name: str | None = Field(
        default=None, description="Priority class of the worker pods."
    )
    runtime_class_name: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "RuntimeClass of the worker pods, e.g. gvisor or kata: a sandbox for agents that "
            "run code they generate."
        ),
    )
    automount_service_account_token: bool = Field(
        default=False,
        description=(
            "Mount the service account's Kubernetes API token in the worker pods. Off by "
            "default: workers need only Redis, and an agent that runs generated code should "
            "hold no Kubernetes credential. Turn it on (with serviceAccountName) for agents "
            "that call the Kubernetes API."
        ),
    )
    topology_spread_constraints: list[dict[str, Any]] | None = Field(
        default=None,
        description=(
            "How the worker pods spread over zones or nodes, as in a Pod spec. A constraint "
            "without labelSelector spreads this pool's pods (label agentpool.dev/pool)."
        ),
    )
    volumes: list[Volume] | None = Field(
        default=None,
        max_length=MAX_VOLUMES,
        description=(
            "Volumes of the worker pods (configMap, secret, emptyDir, persistentVolumeClaim, "
            "projected, csi, downwardAPI or ephemeral: the types the restricted Pod Security "
            "Standard allows), mounted with volumeMounts. The root filesystem is read-only; "
            "/tmp is writable."
        ),
        json_schema_extra=cel(VOLUME_NAMES_UNIQUE),
    )
    volume_mounts: list[VolumeMount] | None = Field(
        default=None,
        max_length=MAX_VOLUMES,
        description="Where the volumes appear in the worker container.",
        json_schema_extra=cel(MOUNT_PATHS_UNIQUE),
    )
    init_containers: list[InitContainer] | None = Field(
        default=None,
        max_length=MAX_INIT_CONTAINERS,
        description=(
            "Containers that run before the worker, or beside it with restartPolicy Always "
            "(sidecars), under the same restricted security context."
        ),
        json_schema_extra=cel(INIT_CONTAINER_NAMES),
    )
    pod_labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=MAX_POD_METADATA,
        description=(
            "Extra labels of the worker pods. The operator's own (app.kubernetes.io/name, "
            "instance, managed-by and agentpool.dev/pool) win over entries of the same key."
        ),
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_POD_METADATA,
        description=(
            "Annotations of the worker pods, e.g. for a service mesh, a secrets injector or "
            "the cluster autoscaler. Keys removed here are removed from the pods."
        ),
    )

    @property
    def stop_seconds(self) -> int:
        """What a stopped pod gets to finish its runs: drainSeconds, or by default as long as a
        run may last."""
        return self.task_timeout_seconds if self.drain_seconds is None else self.drain_seconds

    @field_validator("handler")
    @classmethod
    def _handler_format(cls, handler: str | None) -> str | None:
        if handler is not None and not re.fullmatch(HANDLER_PATTERN, handler):
            raise ValueError(HANDLER_FORMAT.message)
        return handler

    @model_validator(mode="after")
    def _handler_or_command(self) -> WorkerSpec:
        if (self.handler is None) == (self.task_command is None):
            raise ValueError(WORKER_HANDLER_OR_COMMAND.message)
        return self

    @field_validator("submits_to")
    @classmethod
    def _queues_once(cls, queues: list[str] | None) -> list[str] | None:
        if queues is not None and len(queues) != len(set(queues)):
            raise ValueError(SUBMITS_TO_UNIQUE.message)
        return queues

    @field_validator("volumes")
    @classmethod
    def _unique_volume_names(cls, volumes: list[Volume] | None) -> list[Volume] | None:
        names = [volume.name for volume in volumes or ()]
        if len(names) != len(set(names)):
            raise ValueError(VOLUME_NAMES_UNIQUE.message)
        return volumes

    @field_validator("volume_mounts")
    @classmethod
    def _unique_mount_paths(cls, mounts: list[VolumeMount] | None) -> list[VolumeMount] | None:
        paths = [mount.mount_path for mount in mounts or ()]
        if len(paths) != len(set(paths)):
            raise ValueError(MOUNT_PATHS_UNIQUE.message)
        return mounts

    @field_validator("init_containers")
    @classmethod
    def _init_container_names(cls, containers: list[InitContainer] | None
                              ) -> list[InitContainer] | None:
        names = [container.name for container in containers or ()]
        if len(names) != len(set(names)) or WORKER_CONTAINER_NAME in names:
            raise ValueError(INIT_CONTAINER_NAMES.message)
        return containers

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> WorkerSpec:
        names = {SCRATCH_VOLUME, *(volume.name for volume in self.volumes or ())}
        if any(mount.name not in names for mount in self.volume_mounts or ()):
            raise ValueError(MOUNTS_NAME_VOLUMES.message)
        if any(mount.name not in names for container in self.init_containers or ()
               for mount in container.volume_mounts or ()):
            raise ValueError(INIT_MOUNTS_NAME_VOLUMES.message)
        return self


class ScalingSpec(_Model):
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
        default=2, ge=0.5, le=3600, description="How often the queue depth is measured."
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


class RecoverySpec(_Model):
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
            "Most pods recovery replaces at the same time: a count or a percentage of the "
            "desired replicas."
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


class RateLimitSpec(_Model):
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


class ScheduleSpec(_Model):
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
        json_schema_extra=cel(SCHEDULE_CRON_FORMAT),
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

    @field_validator("name", "cron", "time_zone")
    @classmethod
    def _format(cls, value: str, info: ValidationInfo) -> str:
        pattern, rule = _SCHEDULE_FORMATS[str(info.field_name)]
        if not re.fullmatch(pattern, value):
            raise ValueError(rule.message)
        return value


    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        _refuse_control_characters(value, SCHEDULE_TENANT_FORMAT)
        return value


_UNIQUE_NAMES = {
    "schedules": SCHEDULE_NAMES_UNIQUE,
    "rate_limits": RATE_LIMIT_NAMES_UNIQUE,
    "tenants": TENANT_NAMES_UNIQUE,
}

def _refuse_control_characters(value: str | None, rule: CelRule) -> None:
    """The Python twin of NO_CONTROL_CHARACTER, refusing with `rule`'s message."""
    if value is not None and has_control_character(value):
        raise ValueError(rule.message)


_SCHEDULE_FORMATS = {
    "name": (LIMIT_NAME_PATTERN, SCHEDULE_NAME_FORMAT),
    "cron": (CRON_PATTERN, SCHEDULE_CRON_FORMAT),
    "time_zone": (TIME_ZONE_PATTERN, SCHEDULE_TIME_ZONE_FORMAT),
}


class TenantSpec(_Model):
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
        _refuse_control_characters(value, TENANT_NAME_FORMAT)
        return value


class AgentPoolSpec(_Model):
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


class Condition(_Model):
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


class ScheduleStatus(_Model):
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


class AgentPoolStatus(_Model):
    """What the operator last observed of the pool and its queue."""

    queue: str | None = Field(default=None, description="Name of the queue served.")
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
            "The rate limit that holds the pool's size (its workers mostly wait on it), with "
            "the share of run time spent waiting; unset when no limit binds."
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
