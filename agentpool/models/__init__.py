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

| module | holds |
|---|---|
| `formats.py` | the resource's group, version and names; its fields' patterns and list limits |
| `rules.py` | the CEL rules with their messages (`CEL_RULES`, `TRANSITION_RULES`) |
| `base.py` | the camelCase base model and the schema helpers |
| `redis_spec.py` | `spec.redis`: a URL or a Secret's key, durability, producer credentials |
| `pod.py` | pieces of a Pod spec: resources, env, volumes, mounts, init containers |
| `worker.py` | `spec.worker`: image, handler or program, pod settings |
| `scaling.py` | `spec.scaling` and `spec.recovery` |
| `spec.py` | the whole spec, with its rate limits, schedules and tenants |
| `status.py` | the status the operator writes: counts, conditions, schedules' times |
"""

from __future__ import annotations

from agentpool.models.formats import (
    CRON_PATTERN,
    CRON_TIME_ZONE_PATTERN,
    DNS_LABEL_PATTERN,
    GROUP,
    HANDLER_PATTERN,
    KIND,
    LABEL_VALUE_PATTERN,
    LIMIT_NAME_PATTERN,
    MAX_INIT_CONTAINERS,
    MAX_POD_METADATA,
    MAX_POOL_NAME,
    MAX_RATE_LIMITS,
    MAX_SCHEDULES,
    MAX_SUBMITS_TO,
    MAX_TENANTS,
    MAX_VOLUMES,
    PERCENT_PATTERN,
    PLURAL,
    QUEUE_PATTERN,
    SCRATCH_VOLUME,
    SHORT_NAMES,
    SINGULAR,
    TIME_ZONE_PATTERN,
    VERSION,
    VOLUME_SOURCES,
    WORKER_CONTAINER_NAME,
)
from agentpool.models.pod import (
    ContainerSecurity,
    EnvVar,
    InitContainer,
    LocalObjectReference,
    ResourceRequirements,
    Volume,
    VolumeMount,
)
from agentpool.models.redis_spec import (
    RedisSpec,
    SecretKeyRef,
)
from agentpool.models.rules import (
    CEL_RULES,
    ENV_ONE_VALUE,
    HANDLER_FORMAT,
    INIT_CONTAINER_NAMES,
    INIT_MOUNTS_NAME_VOLUMES,
    MAX_UNAVAILABLE_FORMAT,
    MIN_LE_MAX,
    MOUNT_NOT_ON_SCRATCH,
    MOUNT_PATHS_UNIQUE,
    MOUNT_SUB_PATH_RELATIVE,
    MOUNTS_NAME_VOLUMES,
    QUEUE_FIXED,
    RATE_LIMIT_HAS_RATE,
    RATE_LIMIT_NAME_FORMAT,
    RATE_LIMIT_NAMES_UNIQUE,
    REDIS_EXACTLY_ONE,
    REDIS_URL_NO_CREDENTIALS,
    REDIS_URL_SCHEME,
    SCALE_DOWN_STEP_MIN,
    SCALE_UP_STEP_MIN,
    SCHEDULE_CRON_FORMAT,
    SCHEDULE_CRON_TIME_ZONE,
    SCHEDULE_NAME_FORMAT,
    SCHEDULE_NAMES_UNIQUE,
    SCHEDULE_TENANT_FORMAT,
    SCHEDULE_TIME_ZONE_FORMAT,
    SCHEDULE_TIMEOUT_WITHIN_POOLS,
    SUBMITS_TO_UNIQUE,
    TENANT_NAME_FORMAT,
    TENANT_NAMES_UNIQUE,
    TRANSITION_RULES,
    VOLUME_NAMES_UNIQUE,
    VOLUME_ONE_SOURCE,
    WORKER_HANDLER_OR_COMMAND,
    CelRule,
)
from agentpool.models.scaling import (
    RecoverySpec,
    ScalingSpec,
)
from agentpool.models.spec import (
    AgentPoolSpec,
    RateLimitSpec,
    ScheduleSpec,
    TenantSpec,
)
from agentpool.models.status import (
    CONDITION_TYPES,
    AgentPoolStatus,
    Condition,
    ScheduleStatus,
    parse_rfc3339,
)
from agentpool.models.worker import (
    WorkerSpec,
)

__all__ = [
    "CEL_RULES",
    "CONDITION_TYPES",
    "CRON_PATTERN",
    "CRON_TIME_ZONE_PATTERN",
    "DNS_LABEL_PATTERN",
    "ENV_ONE_VALUE",
    "GROUP",
    "HANDLER_FORMAT",
    "HANDLER_PATTERN",
    "INIT_CONTAINER_NAMES",
    "INIT_MOUNTS_NAME_VOLUMES",
    "KIND",
    "LABEL_VALUE_PATTERN",
    "LIMIT_NAME_PATTERN",
    "MAX_INIT_CONTAINERS",
    "MAX_POD_METADATA",
    "MAX_POOL_NAME",
    "MAX_RATE_LIMITS",
    "MAX_SCHEDULES",
    "MAX_SUBMITS_TO",
    "MAX_TENANTS",
    "MAX_UNAVAILABLE_FORMAT",
    "MAX_VOLUMES",
    "MIN_LE_MAX",
    "MOUNTS_NAME_VOLUMES",
    "MOUNT_NOT_ON_SCRATCH",
    "MOUNT_PATHS_UNIQUE",
    "MOUNT_SUB_PATH_RELATIVE",
    "PERCENT_PATTERN",
    "PLURAL",
    "QUEUE_FIXED",
    "QUEUE_PATTERN",
    "RATE_LIMIT_HAS_RATE",
    "RATE_LIMIT_NAMES_UNIQUE",
    "RATE_LIMIT_NAME_FORMAT",
    "REDIS_EXACTLY_ONE",
    "REDIS_URL_NO_CREDENTIALS",
    "REDIS_URL_SCHEME",
    "SCALE_DOWN_STEP_MIN",
    "SCALE_UP_STEP_MIN",
    "SCHEDULE_CRON_FORMAT",
    "SCHEDULE_CRON_TIME_ZONE",
    "SCHEDULE_NAMES_UNIQUE",
    "SCHEDULE_NAME_FORMAT",
    "SCHEDULE_TENANT_FORMAT",
    "SCHEDULE_TIMEOUT_WITHIN_POOLS",
    "SCHEDULE_TIME_ZONE_FORMAT",
    "SCRATCH_VOLUME",
    "SHORT_NAMES",
    "SINGULAR",
    "SUBMITS_TO_UNIQUE",
    "TENANT_NAMES_UNIQUE",
    "TENANT_NAME_FORMAT",
    "TIME_ZONE_PATTERN",
    "TRANSITION_RULES",
    "VERSION",
    "VOLUME_NAMES_UNIQUE",
    "VOLUME_ONE_SOURCE",
    "VOLUME_SOURCES",
    "WORKER_CONTAINER_NAME",
    "WORKER_HANDLER_OR_COMMAND",
    "AgentPoolSpec",
    "AgentPoolStatus",
    "CelRule",
    "Condition",
    "ContainerSecurity",
    "EnvVar",
    "InitContainer",
    "LocalObjectReference",
    "RateLimitSpec",
    "RecoverySpec",
    "RedisSpec",
    "ResourceRequirements",
    "ScalingSpec",
    "ScheduleSpec",
    "ScheduleStatus",
    "SecretKeyRef",
    "TenantSpec",
    "Volume",
    "VolumeMount",
    "WorkerSpec",
    "parse_rfc3339",
]
