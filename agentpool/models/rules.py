"""The CEL rules the API server enforces on an AgentPool, each with the message a user reads.

Every rule on the spec as it stands (`CEL_RULES`) has a Python twin in the models raising the
same message, so the operator refuses exactly what the API server refuses; the rules on a change
(`TRANSITION_RULES`) only the API server, which holds the stored pool, can check.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from agentpool.models.formats import (
    CRON_PATTERN,
    CRON_TIME_ZONE_PATTERN,
    HANDLER_PATTERN,
    LIMIT_NAME_PATTERN,
    PERCENT_PATTERN,
    TIME_ZONE_PATTERN,
    VOLUME_SOURCES,
)
from agentpool.protocol import has_control_character
from agentpool.urls import URL_PREFIXES, URL_PREFIXES_TEXT


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
    f"self.matches('{CRON_TIME_ZONE_PATTERN}') || self.matches('{CRON_PATTERN}')",
    "schedules[].cron must be five fields (minute hour day-of-month month day-of-week, e.g. "
    "'0 * * * *' or '30 9 * * mon-fri') or @hourly, @daily, @weekly, @monthly or @yearly",
)
"""A cron with a time zone in it is left to SCHEDULE_CRON_TIME_ZONE, which says what to do."""
SCHEDULE_CRON_TIME_ZONE = CelRule(
    f"!self.matches('{CRON_TIME_ZONE_PATTERN}')",
    "schedules[].cron cannot hold a time zone (TZ= or CRON_TZ=), as a CronJob's cannot: set "
    "the schedule's timeZone field instead, e.g. timeZone: Europe/Paris",
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
ENV_ONE_VALUE = CelRule(
    "!(has(self.value) && size(self.value) > 0 && has(self.valueFrom))",
    "an env entry takes value or valueFrom, not both",
)
"""As the API server has it: an empty value beside valueFrom is no value."""
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
    SCHEDULE_CRON_TIME_ZONE,
    SCHEDULE_TIME_ZONE_FORMAT,
    SCHEDULE_TENANT_FORMAT,
    SCHEDULE_NAMES_UNIQUE,
    SCHEDULE_TIMEOUT_WITHIN_POOLS,
    TENANT_NAME_FORMAT,
    TENANT_NAMES_UNIQUE,
    ENV_ONE_VALUE,
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



def refuse_control_characters(value: str | None, rule: CelRule) -> None:
    """The Python twin of NO_CONTROL_CHARACTER, refusing with `rule`'s message."""
    if value is not None and has_control_character(value):
        raise ValueError(rule.message)
