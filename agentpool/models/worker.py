"""The worker pods of a pool: image, task handler or program, and how they run."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from agentpool.models.base import Model
from agentpool.models.formats import (
    DNS_SUBDOMAIN_PATTERN,
    HANDLER_PATTERN,
    MAX_INIT_CONTAINERS,
    MAX_POD_METADATA,
    MAX_SUBMITS_TO,
    MAX_VOLUMES,
    QUEUE_PATTERN,
    SCRATCH_VOLUME,
    WORKER_CONTAINER_NAME,
)
from agentpool.models.pod import (
    EnvVar,
    InitContainer,
    LabelValue,
    LocalObjectReference,
    ResourceRequirements,
    Volume,
    VolumeMount,
)
from agentpool.models.rules import (
    HANDLER_FORMAT,
    INIT_CONTAINER_NAMES,
    INIT_MOUNTS_NAME_VOLUMES,
    MOUNT_PATHS_UNIQUE,
    MOUNTS_NAME_VOLUMES,
    SUBMITS_TO_UNIQUE,
    VOLUME_NAMES_UNIQUE,
    WORKER_HANDLER_OR_COMMAND,
    cel,
)
from agentpool.protocol import (
    DEFAULT_TASK_TIMEOUT_SECONDS,
    MAX_ATTEMPTS_LIMIT,
    MAX_TASK_TIMEOUT_SECONDS,
)


class WorkerSpec(Model):
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
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
        description="Service account the worker pods run as.",
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, description="Secrets for pulling the worker image."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
        description="Priority class of the worker pods.",
    )
    runtime_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
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
