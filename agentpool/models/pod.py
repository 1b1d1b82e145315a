"""Pieces of the worker pods as a Pod spec has them: resources, environment, volumes, mounts
and init containers, limited to what the restricted Pod Security Standard allows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from agentpool.models.base import Model, Quantity
from agentpool.models.formats import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    LABEL_VALUE_PATTERN,
    MAX_VOLUMES,
)
from agentpool.models.rules import (
    ENV_ONE_VALUE,
    MOUNT_NOT_ON_SCRATCH,
    MOUNT_SUB_PATH_RELATIVE,
    VOLUME_ONE_SOURCE,
    cel,
)


class ResourceRequirements(Model):
    """Compute resources of each worker container, as in a Pod spec."""

    limits: dict[str, Quantity] | None = Field(
        default=None, description="Maximum resources, e.g. {cpu: '1', memory: 1Gi}."
    )
    requests: dict[str, Quantity] | None = Field(
        default=None, description="Resources the scheduler reserves, e.g. {cpu: 250m}."
    )


class EnvVar(Model):
    """An environment variable of the worker container, as in a Pod spec."""

    model_config = ConfigDict(json_schema_extra=cel(ENV_ONE_VALUE))

    name: str = Field(min_length=1, pattern=ENV_NAME_PATTERN,
                      description="Variable name (printable ASCII, no '=').")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="Source of the value (secretKeyRef, configMapKeyRef, fieldRef, ...).",
    )

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if self.value and self.value_from is not None:
            raise ValueError(ENV_ONE_VALUE.message)
        return self


class LocalObjectReference(Model):
    """A reference to an object in the pool's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
                      description="Name of the object.")


def _source(what: str, alias: str | None = None) -> Any:
    return Field(default=None, alias=alias, description=f"{what}, as in a Pod's volume.")


class Volume(Model):
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


class VolumeMount(Model):
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


class ContainerSecurity(Model):
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


class InitContainer(Model):
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
