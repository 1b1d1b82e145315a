"""Names of the AgentPool resource, and the formats and list limits of its fields."""

GROUP = "agentpool.dev"
VERSION = "v1alpha1"
KIND = "AgentPool"
PLURAL = "agentpools"
SINGULAR = "agentpool"
SHORT_NAMES = ("ap",)
MAX_POOL_NAME = 63
"""A pool's name labels its pods (agentpool.dev/pool), and a label value is at most 63."""

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
DNS_SUBDOMAIN_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
"""The names of most Kubernetes objects (Secrets, ServiceAccounts, classes), up to 253."""
ENV_NAME_PATTERN = r"^[ -<>-~]+$"
"""Printable ASCII without '=': what the API server takes for an environment variable's name
(Kubernetes 1.32 and later; earlier ones also refuse a name starting with a digit)."""
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
VOLUME_SOURCES = ("configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected", "csi",
                  "downwardAPI", "ephemeral")
"""The volume types the restricted Pod Security Standard allows."""
SCRATCH_VOLUME = "tmp"
"""The worker's own writable volume at /tmp (its root filesystem is read-only)."""
WORKER_CONTAINER_NAME = "worker"


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
CRON_TIME_ZONE_PATTERN = "(^|[ ])(CRON_)?TZ="
"""A time zone written into the cron expression, which a CronJob refuses too (it has a
field of its own, as a schedule has `timeZone`)."""
TIME_ZONE_PATTERN = "^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
