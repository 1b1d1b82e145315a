"""Configuration of the end-to-end suite, read from the environment (see e2e/README.md)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agentpool.urls import redact_url

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


def redacted_repr(obj: Any) -> str:
    """The dataclass's repr with the secrets of its URLs masked: pytest prints the repr of
    every fixture value a failing test took, and some hold a Redis password."""
    shown = ", ".join(f"{f.name}={_shown(getattr(obj, f.name))}" for f in fields(obj) if f.repr)
    return f"{type(obj).__name__}({shown})"


def _shown(value: object) -> str:
    return repr(redact_url(value)) if isinstance(value, str) and "://" in value else repr(value)


STANDALONE_SCHEMES = frozenset({"redis", "rediss"})


def standalone_url_problem(url: str) -> str | None:
    """Why the suite cannot reach Redis through `url`, None when it can. The suite needs one
    host:port (a port-forward, the local operator's address map, its own PING), which a
    Sentinel or Cluster URL does not name."""
    scheme = url.partition("://")[0].lower()
    if scheme not in STANDALONE_SCHEMES:
        return f"{redact_url(url)} is not a redis:// or rediss:// URL"
    parts = urlsplit(url)
    if "," in parts.netloc:
        return f"{redact_url(url)} names several hosts"
    try:
        _ = parts.port
    except ValueError:
        return f"{redact_url(url)} has a port that is not a number"
    if not parts.hostname:
        return f"{redact_url(url)} names no host"
    return None


STANDALONE_ONLY = ("the e2e suite needs a standalone Redis URL (redis:// or rediss://, one "
                   "host:port), not a Sentinel or Cluster one")


def missing_kubeconfig(value: str) -> list[str]:
    """The paths of a KUBECONFIG value (os.pathsep-separated) that are no file: kubectl
    would skip them, and with none left talk to localhost:8080."""
    return [path for path in value.split(os.pathsep)
            if path.strip() and not Path(path).expanduser().is_file()]


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
    node_drain: bool
    """E2E_NODE_DRAIN=1: the drain test may cordon a node of the cluster."""

    __repr__ = redacted_repr

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
        redis_url = env.get("E2E_REDIS_URL", "").strip() or None
        if redis_url is not None:
            problem = standalone_url_problem(redis_url)
            if problem:
                raise ConfigError(f"E2E_REDIS_URL: {problem}: {STANDALONE_ONLY}")
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
            redis_url=redis_url,
            pod_security=env.get("E2E_POD_SECURITY", "restricted").strip(),
            timeout_scale=timeout_scale(env),
            keep=_flag(env, "E2E_KEEP"),
            node_drain=_flag(env, "E2E_NODE_DRAIN"),
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
                + (f", operator image={self.operator_image}" if self.installs_chart else "")
                + (", node drain test on (E2E_NODE_DRAIN=1)" if self.node_drain else ""))


def node_drain_enabled(env: Mapping[str, str]) -> bool:
    """E2E_NODE_DRAIN, read where the configuration cannot be (a skip mark at collection); a
    value that is no flag is E2EConfig's error to report."""
    return env.get("E2E_NODE_DRAIN", "").strip().lower() in TRUE


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
