"""The AgentPools the suite applies, all derived from examples/agentpool.yaml.

Task payloads for `agentpool_worker.builtin:simulated_agent` (the example's handler) are here
too. Its latency is log-normal around `mean_seconds`; a `seed` makes it reproducible. The seeds
below were picked because they draw latencies close to the mean for the first attempts, which
keeps the scaling and recovery scenarios short and their timing predictable. Any seed would
be correct: the assertions never depend on a latency, and each scenario checks its own
precondition (a task really was running when it mattered).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from e2e_config import DEFAULT_REDIS_SECRET, EXAMPLE_POOL

from agentpool.models import (
    MIN_LE_MAX,
    MOUNT_NOT_ON_SCRATCH,
    REDIS_URL_NO_CREDENTIALS,
    SCHEDULE_CRON_FORMAT,
    SUBMITS_TO_UNIQUE,
    VOLUME_ONE_SOURCE,
    WORKER_HANDLER_OR_COMMAND,
)

SUITE_LABEL = "e2e.agentpool.dev/suite"
"""On every pool the suite creates."""
RUN_LABEL = "e2e.agentpool.dev/run"
"""The run that created the pool: a run's teardown deletes its own pools and no others (two
runs may share a namespace)."""

Manifest = dict[str, Any]


def of_run(manifest: Manifest, run_id: str) -> Manifest:
    """The manifest labelled with the run that applies it."""
    metadata = manifest.get("metadata") or {}
    labels = {**(metadata.get("labels") or {}), RUN_LABEL: run_id}
    return {**manifest, "metadata": {**metadata, "labels": labels}}


def run_selector(run_id: str) -> str:
    return f"{SUITE_LABEL}=true,{RUN_LABEL}={run_id}"


def load_example() -> Manifest:
    manifest: Manifest = yaml.safe_load(EXAMPLE_POOL.read_text(encoding="utf-8"))
    return manifest


def example_pool(worker_image: str, *, redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """examples/agentpool.yaml as a user would apply it, with the image under test.

    IfNotPresent, so that an image loaded into the nodes (kind load) is used as is.
    """
    pool = load_example()
    pool.setdefault("metadata", {}).setdefault("labels", {})[SUITE_LABEL] = "true"
    worker = pool["spec"]["worker"]
    worker["image"] = worker_image
    worker["imagePullPolicy"] = "IfNotPresent"
    pool["spec"]["redis"]["urlSecretRef"]["name"] = redis_secret
    return pool


def demo_pool(name: str, worker_image: str, *,
              redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """examples/agentpool.yaml under the run's own name and queue (both `name`): a namespace
    or a Redis shared with the README's quickstart has its own pool and queue `demo`."""
    pool = example_pool(worker_image, redis_secret=redis_secret)
    pool["metadata"]["name"] = name
    pool["spec"]["queue"] = name
    return pool


def derived_pool(name: str, worker_image: str, *, redis_secret: str = DEFAULT_REDIS_SECRET,
                 worker: dict[str, Any] | None = None,
                 scaling: dict[str, Any] | None = None) -> Manifest:
    """The example under another name and queue, with some worker/scaling fields replaced."""
    pool = example_pool(worker_image, redis_secret=redis_secret)
    pool["metadata"]["name"] = name
    pool["spec"]["queue"] = name
    pool["spec"]["worker"].update(worker or {})
    pool["spec"]["scaling"] = {**pool["spec"].get("scaling", {}), **(scaling or {})}
    return pool


# -- scenario pools ---------------------------------------------------------------------------

SCALE_POOL_MIN = 1
SCALE_POOL_MAX = 4
SCALE_POOL_DRAIN_SECONDS = 5


def scale_pool(name: str, worker_image: str, *,
               redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """Two tasks per pod, 1..4 pods, quick polling, a short scale-down window and a short
    keepDrainedSeconds (so the spare drained pod goes within the test's wait).

    drainSeconds is far shorter than the long tasks: a scale-down that relied on SIGTERM's
    drain would cut them short. The task timeout exceeds the longest latency simulated_agent
    can draw for them (ten times their mean), so any requeue or second attempt is a real
    interruption.
    """
    return derived_pool(
        name, worker_image, redis_secret=redis_secret,
        worker={"concurrency": 2, "drainSeconds": SCALE_POOL_DRAIN_SECONDS,
                "taskTimeoutSeconds": 900},
        scaling={"minReplicas": SCALE_POOL_MIN, "maxReplicas": SCALE_POOL_MAX,
                 "pollSeconds": 1, "scaleDownCooldownSeconds": 5, "keepDrainedSeconds": 5},
    )


RECOVERY_POOL_REPLICAS = 2


def recovery_pool(name: str, worker_image: str, *,
                  redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """A fixed pool of two pods. drainSeconds is long, so a pod deleted at once (grace period
    0) is killed before it could hand its runs back itself: only the operator (or, 30 s after
    their leases expire, a surviving worker) puts them back in the queue."""
    return derived_pool(
        name, worker_image, redis_secret=redis_secret,
        worker={"concurrency": 2, "drainSeconds": 600},
        scaling={"minReplicas": RECOVERY_POOL_REPLICAS, "maxReplicas": RECOVERY_POOL_REPLICAS,
                 "pollSeconds": 1},
    )


def small_pool(name: str, worker_image: str, *,
               redis_secret: str = DEFAULT_REDIS_SECRET, queue: str | None = None) -> Manifest:
    """One pod, for lifecycle checks; on its own queue unless `queue` names one."""
    pool = derived_pool(name, worker_image, redis_secret=redis_secret,
                        worker={"drainSeconds": 5},
                        scaling={"minReplicas": 1, "maxReplicas": 1})
    if queue is not None:
        pool["spec"]["queue"] = queue
    return pool


ROLLOUT_TASK_TIMEOUT_SECONDS = 900


def rollout_pool(name: str, worker_image: str, *,
                 redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """One pod whose drainSeconds is left to its default (taskTimeoutSeconds): a rollout's old
    pod finishes its run while it terminates."""
    pool = derived_pool(name, worker_image, redis_secret=redis_secret,
                        worker={"taskTimeoutSeconds": ROLLOUT_TASK_TIMEOUT_SECONDS},
                        scaling={"minReplicas": 1, "maxReplicas": 1})
    pool["spec"]["worker"].pop("drainSeconds", None)
    return pool


COMMAND_AGENT_LABEL = ("e2e.agentpool.dev/agent", "command")
"""A pod label from spec.worker.podLabels that the command pool's program reads back from a
downward-API volume of spec.worker.volumes."""
PODINFO = "/etc/podinfo"
INIT_MARKER = ("/tmp/written-by-init", "ready")
"""A file an init container of the command pool writes on the scratch volume; the program
reads it back."""
COMMAND_AGENT = f"""\
import json, os, sys
payload = json.load(sys.stdin)
print(json.dumps({{"progress": 0.5, "message": "half way"}}), flush=True)
attempt = int(os.environ["AGENTPOOL_TASK_ATTEMPT"])
with open("{PODINFO}/labels") as f:
    labels = dict(line.split("=", 1) for line in f.read().splitlines() if line)
label = json.loads(labels.get("{COMMAND_AGENT_LABEL[0]}", "null"))
with open("{INIT_MARKER[0]}") as f:
    init = f.read()
print(json.dumps({{"result": {{"echo": payload, "attempt": attempt, "label": label,
                               "init": init}}}}))
"""
"""A program each task of the command pool runs: the worker image's own Python, no handler."""


def command_pool(name: str, worker_image: str, *,
                 redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """One pod whose tasks run a program (spec.worker.taskCommand) instead of a handler; the
    program reads a label of its pod (spec.worker.podLabels) from a mounted volume, and a
    file an init container left on the scratch volume."""
    pool = small_pool(name, worker_image, redis_secret=redis_secret)
    worker = pool["spec"]["worker"]
    del worker["handler"]
    worker["taskCommand"] = ["python", "-c", COMMAND_AGENT]
    worker["podLabels"] = dict([COMMAND_AGENT_LABEL])
    worker["volumes"] = [{"name": "podinfo", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]
    worker["volumeMounts"] = [{"name": "podinfo", "mountPath": PODINFO, "readOnly": True}]
    worker["initContainers"] = [{
        "name": "prepare", "image": worker_image,
        "command": ["python", "-c",
                    f"open({INIT_MARKER[0]!r}, 'w').write({INIT_MARKER[1]!r})"],
    }]
    return pool


def scheduled_pool(name: str, worker_image: str, *,
                   redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """One pod, and a schedule that submits a short task every minute."""
    pool = small_pool(name, worker_image, redis_secret=redis_secret)
    pool["spec"]["schedules"] = [{"name": "every-minute", "cron": "* * * * *",
                                  "payload": {"mean_seconds": 0.5, "prompt": "scheduled"}}]
    return pool


def weighted_pool(name: str, worker_image: str, *,
                  redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """One pod, and two tenants given weights (`spec.tenants`)."""
    pool = small_pool(name, worker_image, redis_secret=redis_secret)
    pool["spec"]["tenants"] = [{"name": "gold", "weight": 4}, {"name": "Acme Corp", "weight": 2}]
    return pool


CAPPED_POOL_REPLICAS = 2
CAP = 2


def capped_pool(name: str, worker_image: str, *, limit: str,
                redis_secret: str = DEFAULT_REDIS_SECRET) -> Manifest:
    """Two pods of three runs each under a rate limit of `CAP` calls at once
    (`maxConcurrent`), which the simulated agent holds while it works (`"hold"`)."""
    pool = derived_pool(name, worker_image, redis_secret=redis_secret,
                        worker={"concurrency": 3, "drainSeconds": 5},
                        scaling={"minReplicas": CAPPED_POOL_REPLICAS,
                                 "maxReplicas": CAPPED_POOL_REPLICAS})
    pool["spec"]["rateLimits"] = [{"name": limit, "maxConcurrent": CAP}]
    return pool


def pipeline_pools(planners: str, doers: str, worker_image: str, *,
                   redis_secret: str = DEFAULT_REDIS_SECRET) -> tuple[Manifest, Manifest]:
    """Two one-pod pools: the planners' runs hand a task each to the doers' queue
    (`submitsTo`, the simulated agent's `"then"`)."""
    first = small_pool(planners, worker_image, redis_secret=redis_secret)
    first["spec"]["worker"]["submitsTo"] = [doers]
    return first, small_pool(doers, worker_image, redis_secret=redis_secret)


def applied_pools(worker_image: str) -> list[Manifest]:
    """Every pool the suite applies, under names like the ones it generates."""
    return [
        demo_pool("e2e-demo-abc123", worker_image),
        scale_pool("e2e-scale-abc123", worker_image),
        recovery_pool("e2e-recover-abc123", worker_image),
        small_pool("e2e-gc-abc123", worker_image),
        rollout_pool("e2e-rollout-abc123", worker_image),
        small_pool("e2e-shared-1-abc123", worker_image, queue="e2e-shared-abc123"),
        command_pool("e2e-command-abc123", worker_image),
        scheduled_pool("e2e-scheduled-abc123", worker_image),
        capped_pool("e2e-capped-abc123", worker_image, limit="e2e-cap-abc123"),
        *pipeline_pools("e2e-plan-abc123", "e2e-do-abc123", worker_image),
    ]


@dataclass(frozen=True)
class InvalidPool:
    case: str
    manifest: Manifest
    message: str
    """The CEL rule message (agentpool.models) the API server must answer with."""
    secret: str | None = None
    """A credential in the manifest that the API server's answer must not quote."""


def invalid_pools(worker_image: str) -> list[InvalidPool]:
    min_above_max = derived_pool("e2e-invalid-bounds", worker_image,
                                 scaling={"minReplicas": 5, "maxReplicas": 2})
    with_credentials = derived_pool("e2e-invalid-url", worker_image)
    password = "hunter2"
    with_credentials["spec"]["redis"] = {"url": f"redis://:{password}@redis.example:6379/0"}
    bad_cron = derived_pool("e2e-invalid-cron", worker_image)
    bad_cron["spec"]["schedules"] = [{"name": "hourly", "cron": "60 * * * *"}]
    no_handler = derived_pool("e2e-invalid-handler", worker_image)
    del no_handler["spec"]["worker"]["handler"]
    no_source = derived_pool("e2e-invalid-volume", worker_image)
    no_source["spec"]["worker"]["volumes"] = [{"name": "data"}]
    on_scratch = derived_pool("e2e-invalid-mount", worker_image)
    on_scratch["spec"]["worker"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    on_scratch["spec"]["worker"]["volumeMounts"] = [{"name": "data", "mountPath": "/tmp"}]
    twice = derived_pool("e2e-invalid-submits-to", worker_image)
    twice["spec"]["worker"]["submitsTo"] = ["coder", "coder"]
    return [
        InvalidPool("min-above-max", min_above_max, MIN_LE_MAX.message),
        InvalidPool("submits-to-a-queue-twice", twice, SUBMITS_TO_UNIQUE.message),
        InvalidPool("neither-handler-nor-command", no_handler, WORKER_HANDLER_OR_COMMAND.message),
        InvalidPool("cron-out-of-range", bad_cron, SCHEDULE_CRON_FORMAT.message),
        InvalidPool("volume-without-source", no_source, VOLUME_ONE_SOURCE.message),
        InvalidPool("mount-on-scratch", on_scratch, MOUNT_NOT_ON_SCRATCH.message),
        InvalidPool("url-with-credentials", with_credentials, REDIS_URL_NO_CREDENTIALS.message,
                    secret=password),
    ]


# -- task payloads ----------------------------------------------------------------------------

LONG_TASK_SEEDS = ("long-3", "long-6", "long-7", "long-24")
"""About 55-65 s each at 60 s mean (first attempt)."""

RECOVERY_TASK_SEEDS = ("recover-10", "recover-21", "recover-66", "recover-124")
"""About 25-40 s each at 30 s mean, on each of the first three attempts."""


EVICTION_TASK = {"mean_seconds": 30, "seed": "evict-1", "prompt": "outlasts drainSeconds"}
"""About 58 s (first attempt): long enough to try an eviction while it runs, and far longer
than the small pool's drainSeconds, which an eviction let through would cut it down to."""


ROLLOUT_TASK = {**EVICTION_TASK, "mean_seconds": 62, "prompt": "outlasts a rollout's start"}
"""The eviction task's seed at about twice its length, 2 minutes: running when the rollout
starts, and still running when the new pod is ready and the old one is told to stop, on a
slow kind cluster too (a busy label, a patch, a pod start and its probes)."""


def quick_tasks(count: int, *, mean_seconds: float = 0.5, tag: str = "quick") -> list[Any]:
    return [{"mean_seconds": mean_seconds, "prompt": f"{tag} task {i}"} for i in range(count)]


def scale_tasks() -> list[Any]:
    """Four long tasks first (claimed early, still running when the backlog is gone and the
    pool shrinks), then eight short ones that make the backlog."""
    long = [{"mean_seconds": 60, "seed": seed, "prompt": f"long task {seed}"}
            for seed in LONG_TASK_SEEDS]
    return long + quick_tasks(8, mean_seconds=2, tag="short")


def recovery_tasks() -> list[Any]:
    return [{"mean_seconds": 30, "seed": seed, "prompt": f"recoverable task {seed}"}
            for seed in RECOVERY_TASK_SEEDS]

