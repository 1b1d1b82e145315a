"""Putting the product on the cluster: namespace, CRD, chart (or Redis alone), local operator."""

from __future__ import annotations

import base64
import fnmatch
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from e2e_config import CHART, CRD_FILE, E2EConfig, ImageRef
from e2e_kube import CommandError, Kubectl, Waiter, run

from agentpool.models import GROUP, PLURAL
from agentpool.redis_server import free_port

CRD_NAME = f"{PLURAL}.{GROUP}"
REDIS_PORT = 6379
REDIS_SECRET_TEMPLATE = "templates/redis-secret.yaml"
REDIS_TEMPLATES = (
    REDIS_SECRET_TEMPLATE,
    "templates/redis-service.yaml",
    "templates/redis-statefulset.yaml",
)
"""The chart's bundled Redis, rendered alone when the chart cannot switch its operator off."""

OPERATOR_SELECTOR = "app.kubernetes.io/name=agentpool-operator"
POD_SECURITY_LABELS = ("enforce", "warn", "audit")


def operator_name(release: str) -> str:
    return f"{release}-operator"


def redis_name(release: str) -> str:
    return f"{release}-redis"


# -- namespace and CRD ------------------------------------------------------------------------


def ensure_namespace(kube: Kubectl, name: str, pod_security: str) -> bool:
    """Create the namespace unless it exists; True when the suite created it.

    A namespace the suite creates enforces the Pod Security Standard `pod_security`
    (default restricted), so every pod of the chart and of the pools must meet it.
    """
    if kube.get("namespace", name) is not None:
        return False
    labels = {}
    if pod_security:
        labels = {f"pod-security.kubernetes.io/{mode}": pod_security
                  for mode in POD_SECURITY_LABELS}
    labels["e2e.agentpool.dev/suite"] = "true"
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}})
    return True


def delete_namespace(kube: Kubectl, name: str, timeout: float) -> str | None:
    """Delete and wait; the problem as text when it did not go (it is only cleanup)."""
    try:
        kube("delete", "namespace", name, "--ignore-not-found", "--wait=true",
             f"--timeout={int(timeout)}s", timeout=timeout + 30)
    except CommandError as exc:
        return str(exc)
    return None


def apply_crd(kube: Kubectl, waiter: Waiter) -> dict[str, Any]:
    """Apply crds/ and wait until the API server serves it. Server-side, so that applying over
    the CRD the chart created (field manager helm) takes its fields over cleanly."""
    kube.in_namespace(None).apply(CRD_FILE.read_text(encoding="utf-8"), server_side=True)
    crd: dict[str, Any] = waiter.until(
        lambda: kube.in_namespace(None).get("customresourcedefinition", CRD_NAME) or {},
        lambda c: _established(c), timeout=60, what=f"CRD {CRD_NAME} to be Established",
        interval=1)
    return crd


def _established(crd: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


# -- chart ------------------------------------------------------------------------------------


def chart_has_operator_switch() -> bool:
    """Whether values.yaml offers operator.enabled (Redis without the operator)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return isinstance(values.get("operator"), dict) and "enabled" in values["operator"]


def helm_values(config: E2EConfig, namespace: str, *, operator: bool) -> list[str]:
    args = []
    if operator:
        image = ImageRef.parse(config.operator_image, "E2E_OPERATOR_IMAGE")
        args += ["--set-string", f"operator.image.repository={image.repository}",
                 "--set-string", f"operator.image.tag={image.tag}",
                 "--set-string", "operator.image.pullPolicy=IfNotPresent",
                 "--set-json", f'watchNamespaces=["{namespace}"]']
    else:
        args += ["--set", "operator.enabled=false"]
    return [*args, *config.helm_args]


def install_chart(config: E2EConfig, namespace: str) -> None:
    """helm upgrade --install into `namespace`, operator watching that namespace only."""
    run([config.helm, "upgrade", "--install", config.release, str(CHART),
         "--namespace", namespace, *helm_values(config, namespace, operator=True)],
        timeout=300)


def install_redis_only(config: E2EConfig, kube: Kubectl) -> str | None:
    """The chart's Redis without its operator. Returns the manifests applied directly (to be
    deleted at the end) or None when helm installed a release."""
    namespace = kube.namespace
    assert namespace is not None
    if chart_has_operator_switch():
        run([config.helm, "upgrade", "--install", config.release, str(CHART),
             "--namespace", namespace, *helm_values(config, namespace, operator=False)],
            timeout=300)
        return None
    templates = REDIS_TEMPLATES
    if kube.get("secret", config.redis_secret) is not None:
        # A namespace kept from an earlier run: its Redis runs with that Secret's password,
        # and a new render would draw another one.
        templates = tuple(t for t in templates if t != REDIS_SECRET_TEMPLATE)
    show_only = [arg for template in templates for arg in ("--show-only", template)]
    rendered = run([config.helm, "template", config.release, str(CHART),
                    "--namespace", namespace, *show_only, *config.helm_args],
                   timeout=120).stdout
    kube.apply(rendered)
    return rendered


def uninstall_chart(config: E2EConfig, namespace: str) -> str | None:
    try:
        run([config.helm, "uninstall", config.release, "--namespace", namespace,
             "--ignore-not-found"], timeout=300)
    except CommandError as exc:
        return str(exc)
    return None


def wait_rollout(kube: Kubectl, resource: str, timeout: float) -> None:
    """kubectl rollout status: waits for the Deployment/StatefulSet's pods to be ready."""
    kube("rollout", "status", resource, f"--timeout={int(timeout)}s", timeout=timeout + 30)


# -- Redis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisAccess:
    in_cluster_url: str
    """As the Secret holds it: what the pools' workers (and an in-cluster operator) use."""

    def host_port(self) -> str:
        """host:port as written in the URL (the port defaulted), which is how the operator
        looks addresses up in its address map."""
        parts = urlsplit(self.in_cluster_url)
        address = parts.netloc.rpartition("@")[2]
        return address if parts.port is not None else f"{address}:{REDIS_PORT}"

    def via(self, host: str, port: int) -> str:
        """The same Redis (credentials as written, database) through another address."""
        parts = urlsplit(self.in_cluster_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return f"{parts.scheme}://{userinfo}{at}{host}:{port}{parts.path or '/0'}"

    def address_map(self, host: str, port: int) -> str:
        """AGENTPOOL_OPERATOR_REDIS_ADDRESS_MAP for an operator outside the cluster: the
        address in the Secret (and its fully qualified form) -> where it is reachable here."""
        here = f"{host}:{port}"
        in_cluster = self.host_port()
        pairs = [f"{in_cluster}={here}"]
        name, _, cluster_port = in_cluster.rpartition(":")
        if name.endswith(".svc"):
            pairs.append(f"{name}.cluster.local:{cluster_port}={here}")
        return ",".join(pairs)


def read_secret(kube: Kubectl, name: str) -> dict[str, str]:
    secret = kube.get("secret", name)
    if secret is None:
        raise LookupError(f"no Secret {name} in namespace {kube.namespace}")
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def copy_secret(source: Kubectl, target: Kubectl, name: str) -> bool:
    """Copy the Redis URL Secret into the pools' namespace unless it is there already."""
    if target.get("secret", name) is not None:
        return False
    data = read_secret(source, name)
    target.apply({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": {"e2e.agentpool.dev/suite": "true"}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    })
    return True


# -- other operators --------------------------------------------------------------------------


def competing_operators(kube: Kubectl, namespace: str,
                        ours: tuple[str, str] | None) -> list[str]:
    """agentpool operator Deployments (other than `ours`, (namespace, name)) that also serve
    `namespace`: two operators on one pool would fight over its Deployment."""
    try:
        deployments = kube.in_namespace(None).json(
            "get", "deployments", "--all-namespaces", "--selector", OPERATOR_SELECTOR)["items"]
    except CommandError:
        return []
    found = []
    for deployment in deployments:
        meta = deployment["metadata"]
        where = (meta["namespace"], meta["name"])
        if where == ours or not (deployment.get("spec") or {}).get("replicas", 1):
            continue
        if serves(deployment, namespace):
            found.append(f"{where[0]}/{where[1]}")
    return found


def serves(deployment: Mapping[str, Any], namespace: str) -> bool:
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    for container in containers:
        for env in container.get("env") or []:
            if env.get("name") == "AGENTPOOL_OPERATOR_NAMESPACES":
                patterns = [p.strip() for p in str(env.get("value") or "").split(",")
                            if p.strip()]
                return not patterns or any(fnmatch.fnmatchcase(namespace, p)
                                           for p in patterns)
    return True


# -- local operator ---------------------------------------------------------------------------


@dataclass
class LocalOperator:
    """`agentpool-operator` as a subprocess with the suite's kubeconfig, one namespace."""

    namespace: str
    address_map: str
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "agentpool_operator.main"]

    def env(self) -> dict[str, str]:
        """The shell's environment without its AGENTPOOL_OPERATOR_* settings: the suite's
        operator is configured here alone."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_OPERATOR_")}
        env.update({
            "AGENTPOOL_OPERATOR_NAMESPACES": self.namespace,
            "AGENTPOOL_OPERATOR_PORT": str(self.port),
            "AGENTPOOL_OPERATOR_PEERING": "",
            "AGENTPOOL_OPERATOR_LOG_LEVEL": "info",
            "AGENTPOOL_OPERATOR_REDIS_ADDRESS_MAP": self.address_map,
        })
        return env

    def start(self, waiter: Waiter) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env())
        waiter.true(self.healthy, timeout=90, what="the local operator's /healthz",
                    interval=1)

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the local operator exited with {self.process.returncode}:\n"
                                 + self.log_tail())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no operator log)"
        return "--- local operator log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def operator_logs(kube: Kubectl, release: str, lines: int = 40) -> str:
    try:
        out = kube("logs", f"deployment/{operator_name(release)}", f"--tail={lines}",
                   timeout=30).stdout
    except CommandError as exc:
        out = str(exc)
    return f"--- operator log (tail) ---\n{out.rstrip()}"

