"""Configuration of the end-to-end suite, read from the environment (see e2e/README.md)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "agentpool-operator"
CRD_FILE = REPO / "crds" / "agentpool.dev_agentpools.yaml"
EXAMPLE_POOL = REPO / "examples" / "agentpool.yaml"

DEFAULT_WORKER_IMAGE = "ghcr.io/agentpool/worker:e2e"
DEFAULT_OPERATOR_IMAGE = "ghcr.io/agentpool/operator:e2e"
DEFAULT_RELEASE = "agentpool"
DEFAULT_REDIS_SECRET = "agentpool-redis"
"""The chart's `redis.urlSecretName`, which examples/agentpool.yaml references."""

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})

OperatorMode = Literal["chart", "local"]


class ConfigError(ValueError):
    """An E2E_* variable has a value the suite cannot use."""


@dataclass(frozen=True)
class ImageRef:
    repository: str
    tag: str

    @classmethod
    def parse(cls, image: str, variable: str) -> ImageRef:
        """`repository:tag` as the chart's image values take it (no digests)."""
        if "@" in image:
            raise ConfigError(f"{variable}={image}: the chart takes repository and tag, "
                              "not a digest; push or load the image under a tag")
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag:
            return cls(image, "latest")
        return cls(repository, tag)


@dataclass(frozen=True)
class E2EConfig:
    operator_mode: OperatorMode
    skip_install: bool
    namespace: str | None
    """Namespace of the pools; None: a fresh one, created and deleted by the suite."""
    release: str
    release_namespace_override: str | None
    worker_image: str
    operator_image: str
    helm: str
    helm_args: tuple[str, ...]
    redis_secret: str
    redis_url: str | None
    """Redis reachable from the suite; None: port-forward to the chart's bundled Redis."""
    pod_security: str
    timeout_scale: float
    keep: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> E2EConfig:
        env = os.environ if env is None else env
        mode = env.get("E2E_OPERATOR", "chart").strip().lower() or "chart"
        if mode not in ("chart", "local"):
            raise ConfigError(f"E2E_OPERATOR={mode}: use chart (the operator installed by "
                              "the chart) or local (run agentpool-operator here)")
        skip_install = _flag(env, "E2E_SKIP_INSTALL")
        namespace = _name(env, "E2E_NAMESPACE")
        release_namespace = _name(env, "E2E_RELEASE_NAMESPACE")
        if skip_install and namespace is None and release_namespace is None:
            raise ConfigError("E2E_SKIP_INSTALL=1 uses an installed release: set "
                              "E2E_NAMESPACE (or E2E_RELEASE_NAMESPACE) to its namespace")
        if not skip_install and release_namespace is not None:
            raise ConfigError("E2E_RELEASE_NAMESPACE names an installed release: it needs "
                              "E2E_SKIP_INSTALL=1 (otherwise the suite installs into "
                              "E2E_NAMESPACE)")
        operator_image = env.get("E2E_OPERATOR_IMAGE", "").strip() or DEFAULT_OPERATOR_IMAGE
        if mode == "chart" and not skip_install:
            ImageRef.parse(operator_image, "E2E_OPERATOR_IMAGE")
        try:
            helm_args = tuple(shlex.split(env.get("E2E_HELM_ARGS", "")))
        except ValueError as exc:
            raise ConfigError(f"E2E_HELM_ARGS: {exc}") from None
        return cls(
            operator_mode="local" if mode == "local" else "chart",
            skip_install=skip_install,
            namespace=namespace,
            release=_name(env, "E2E_RELEASE") or DEFAULT_RELEASE,
            release_namespace_override=release_namespace,
            worker_image=env.get("E2E_WORKER_IMAGE", "").strip() or DEFAULT_WORKER_IMAGE,
            operator_image=operator_image,
            helm=env.get("E2E_HELM", "").strip() or default_helm(),
            helm_args=helm_args,
            redis_secret=_name(env, "E2E_REDIS_SECRET") or DEFAULT_REDIS_SECRET,
            redis_url=env.get("E2E_REDIS_URL", "").strip() or None,
            pod_security=env.get("E2E_POD_SECURITY", "restricted").strip(),
            timeout_scale=timeout_scale(env),
            keep=_flag(env, "E2E_KEEP"),
        )

    @property
    def installs_chart(self) -> bool:
        return self.operator_mode == "chart" and not self.skip_install

    @property
    def installs_redis_only(self) -> bool:
        return self.operator_mode == "local" and not self.skip_install

    def release_namespace(self, namespace: str) -> str:
        """Where the chart's release (operator and/or Redis) lives, given the pools' one."""
        return self.release_namespace_override or namespace

    def describe(self) -> str:
        install = "installed release" if self.skip_install else "installed by the suite"
        where = self.namespace or "a fresh namespace"
        return (f"operator={self.operator_mode} ({install}), namespace={where}, "
                f"release={self.release}, worker image={self.worker_image}"
                + (f", operator image={self.operator_image}" if self.installs_chart else ""))


def default_helm() -> str:
    """The helm of scripts/install-helm.sh, else the one on PATH."""
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm") or str(local)


def _flag(env: Mapping[str, str], variable: str) -> bool:
    value = env.get(variable, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{variable}={value}: use 1 or 0")


def _name(env: Mapping[str, str], variable: str) -> str | None:
    value = env.get(variable, "").strip()
    if not value:
        return None
    if not NAME.match(value):
        raise ConfigError(f"{variable}={value}: not a Kubernetes name (lower-case letters, "
                          "digits and '-', at most 63)")
    return value


def timeout_scale(env: Mapping[str, str]) -> float:
    raw = env.get("E2E_TIMEOUT_SCALE", "").strip() or "1"
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 100:
        raise ConfigError(f"E2E_TIMEOUT_SCALE={raw}: a number above 0, e.g. 2 for a slow "
                          "cluster")
    return scale
