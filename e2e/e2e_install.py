"""Putting the product on the cluster: namespace, CRD, chart (or Redis alone), local operator."""

from __future__ import annotations

import base64
import fnmatch
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import yaml
from e2e_config import (
    CHART,
    CRD_FILE,
    REPO,
    STANDALONE_ONLY,
    E2EConfig,
    ImageRef,
    redacted_repr,
    standalone_url_problem,
)
from e2e_kube import CommandError, Kubectl, PortForward, Waiter, end_process, run, spawn
from e2e_pools import Pools

from agentpool.models import GROUP, PLURAL
from agentpool.redis_server import free_port
from agentpool.urls import mask_urls

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


class SetupError(Exception):
    """A set-up step failed, or refused to touch what it found; str() is one readable
    message that says what to do."""


def operator_name(release: str) -> str:
    return f"{release}-operator"


def redis_name(release: str) -> str:
    return f"{release}-redis"


# -- namespace and CRD ------------------------------------------------------------------------


def create_namespace(kube: Kubectl, name: str, pod_security: str) -> None:
    """A namespace the suite creates enforces the Pod Security Standard `pod_security`
    (default restricted), so every pod of the chart and of the pools must meet it."""
    labels = {}
    if pod_security:
        labels = {f"pod-security.kubernetes.io/{mode}": pod_security
                  for mode in POD_SECURITY_LABELS}
    labels["e2e.agentpool.dev/suite"] = "true"
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}})


@contextmanager
def suite_namespace(kube: Kubectl, name: str, pod_security: str, *,
                    keep: bool) -> Iterator[bool]:
    """The pools' namespace, created unless it exists (yields True when the suite created
    it), and deleted at the end, or when its creation is interrupted, if the suite created
    it and E2E_KEEP is not set."""
    if kube.get("namespace", name) is not None:
        yield False
        return

    def remove(timeout: float) -> None:
        problem = delete_namespace(kube, name, timeout=timeout)
        if problem:
            warnings.warn(f"e2e cleanup: namespace {name} not deleted: {problem}",
                          stacklevel=1)

    try:
        create_namespace(kube, name, pod_security)
    except BaseException:
        if not keep:
            remove(timeout=120)
        raise
    try:
        yield True
    finally:
        if not keep:
            remove(timeout=300)


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


def installed_crd(kube: Kubectl, waiter: Waiter) -> dict[str, Any]:
    """The CRD as the cluster has it (E2E_SKIP_INSTALL=1: the suite leaves the schema of an
    existing installation alone)."""
    cluster = kube.in_namespace(None)
    if cluster.get("customresourcedefinition", CRD_NAME) is None:
        raise SetupError(f"E2E_SKIP_INSTALL=1 uses what is installed, and the CRD {CRD_NAME} "
                         "is not: install the chart first, or run without E2E_SKIP_INSTALL "
                         f"(which applies {CRD_FILE.relative_to(REPO)} of this checkout)")
    crd: dict[str, Any] = waiter.until(
        lambda: cluster.get("customresourcedefinition", CRD_NAME) or {},
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


def install_chart(config: E2EConfig, namespace: str, *, operator: bool = True) -> None:
    """helm upgrade --install into `namespace`, operator watching that namespace only (or,
    operator=False, without the operator)."""
    run([config.helm, "upgrade", "--install", config.release, str(CHART),
         "--namespace", namespace, *helm_values(config, namespace, operator=operator)],
        timeout=300)


def render_redis(config: E2EConfig, kube: Kubectl) -> str:
    """The chart's bundled Redis alone, rendered by `helm template` (no release)."""
    namespace = kube.namespace
    assert namespace is not None
    templates: tuple[str, ...] = REDIS_TEMPLATES
    if kube.get("secret", config.redis_secret) is not None:
        # A Secret kept from an earlier run: a Redis with that password may still use it,
        # and a new render would draw another one.
        templates = tuple(t for t in templates if t != REDIS_SECRET_TEMPLATE)
    show_only = [arg for template in templates for arg in ("--show-only", template)]
    rendered: str = run([config.helm, "template", config.release, str(CHART),
                         "--namespace", namespace, *show_only, *config.helm_args],
                        timeout=120).stdout
    return rendered


def manifest_objects(manifests: str) -> list[tuple[str, str]]:
    """(kind, name) of each object in a multi-document YAML text."""
    return [(doc["kind"], doc["metadata"]["name"])
            for doc in yaml.safe_load_all(manifests) if isinstance(doc, dict) and doc]


def existing_objects(kube: Kubectl, objects: list[tuple[str, str]]) -> list[str]:
    return [f"{kind}/{name}" for kind, name in objects if kube.get(kind, name) is not None]


def release_exists(config: E2EConfig, namespace: str) -> bool:
    done = run([config.helm, "status", config.release, "--namespace", namespace],
               check=False, timeout=60)
    if done.returncode == 0:
        return True
    if "not found" in done.stderr:
        return False
    raise CommandError(done.args, done.returncode, done.stdout, done.stderr)


def uninstall_chart(config: E2EConfig, namespace: str) -> str | None:
    try:
        run([config.helm, "uninstall", config.release, "--namespace", namespace,
             "--ignore-not-found"], timeout=300)
    except CommandError as exc:
        return str(exc)
    return None


def redis_claim_selector(release: str) -> str:
    """The labels of the PersistentVolumeClaims of the release's Redis: the chart gives its
    StatefulSet's volumeClaimTemplates the Redis selector labels."""
    return f"app.kubernetes.io/name=agentpool-redis,app.kubernetes.io/instance={release}"


CLAIM_GONE_SECONDS = 120


def redis_claims(kube: Kubectl, release: str) -> list[str]:
    """The claims of the release's Redis left by an earlier install. Those being deleted (an
    earlier run's teardown, which does not wait for them) are waited for: a Redis started
    meanwhile would stay Pending on them."""
    selector = redis_claim_selector(release)
    claims = kube.items("persistentvolumeclaims", selector)
    ending = [c["metadata"]["name"] for c in claims if c["metadata"].get("deletionTimestamp")]
    if ending:
        kube("wait", "--for=delete", "persistentvolumeclaims", *ending,
             f"--timeout={CLAIM_GONE_SECONDS}s", check=False, timeout=CLAIM_GONE_SECONDS + 30)
        claims = kube.items("persistentvolumeclaims", selector)
    return [claim["metadata"]["name"] for claim in claims]


def delete_redis_claims(kube: Kubectl, release: str) -> str | None:
    """The claims of the suite's Redis, which outlive its StatefulSet: a later run in the same
    namespace would mount their data."""
    selector = redis_claim_selector(release)
    done = kube("delete", "persistentvolumeclaims", "--selector", selector,
                "--ignore-not-found", "--wait=false", check=False)
    if done.returncode == 0:
        return None
    return f"the PersistentVolumeClaims of Redis ({selector}) were not deleted: " + (
        done.stderr.strip())


def delete_manifests(kube: Kubectl, manifests: str) -> str | None:
    done = kube("delete", "--filename", "-", "--ignore-not-found", "--wait=false",
                input=manifests, check=False)
    return None if done.returncode == 0 else f"{done.stderr.strip()}"


USE_IT_INSTEAD = ("Run the suite against it as it is with E2E_SKIP_INSTALL=1, or set "
                  "E2E_NAMESPACE to another namespace (unset: a fresh one).")


@contextmanager
def suite_installation(config: E2EConfig, kube: Kubectl,
                       diagnose: Callable[[], str]) -> Iterator[None]:
    """What the suite installs in kube's namespace: the chart (chart mode) or the chart's
    Redis alone (local mode); nothing with E2E_SKIP_INSTALL=1.

    It refuses, before touching anything, to install over a release or Redis objects that
    are there already (it would upgrade them to its own images and values, and remove them
    at the end), or next to claims of an earlier Redis of the release (its Redis would mount
    their data). What it did install is removed when the block ends, its Redis's claims
    included, and also when the installation fails or is interrupted half-way (a release's
    ClusterRole and ClusterRoleBinding outlive the namespace); E2E_KEEP=1 keeps it all.
    """
    if not (config.installs_chart or config.installs_redis_only):
        yield
        return
    namespace = kube.namespace
    assert namespace is not None
    try:
        run([config.helm, "version", "--short"])
    except CommandError:
        raise SetupError(f"helm does not run at {config.helm}: run scripts/install-helm.sh "
                         "or set E2E_HELM") from None
    undo: list[Callable[[], str | None]] = []

    def remove() -> None:
        if config.keep:
            return
        for step in reversed(undo):
            problem = step()
            if problem:
                warnings.warn(f"e2e cleanup: {problem}", stacklevel=1)
        undo.clear()

    def no_earlier_claims() -> None:
        claims = redis_claims(kube, config.release)
        if claims:
            raise SetupError(
                f"PersistentVolumeClaim {', '.join(claims)} of an earlier Redis of release "
                f"{config.release} is in namespace {namespace}: the suite's Redis would mount "
                f"its data. Delete it if nobody needs it (kubectl delete pvc --namespace "
                f"{namespace} {' '.join(claims)}), or set E2E_NAMESPACE to another namespace "
                "(unset: a fresh one).")
        undo.append(lambda: delete_redis_claims(kube, config.release))

    try:
        if config.installs_chart or chart_has_operator_switch():
            if release_exists(config, namespace):
                raise SetupError(f"helm release {config.release} is installed in namespace "
                                 f"{namespace} already: the suite would upgrade it to its own "
                                 "images and values and uninstall it at the end. "
                                 + USE_IT_INSTEAD)
            no_earlier_claims()
            undo.append(lambda: uninstall_chart(config, namespace))
            install_chart(config, namespace, operator=config.installs_chart)
        else:
            rendered = render_redis(config, kube)
            found = existing_objects(kube, manifest_objects(rendered))
            if found:
                raise SetupError(f"the chart's Redis is in namespace {namespace} already "
                                 f"({', '.join(found)}): the suite would apply its own over "
                                 "it and delete it at the end. " + USE_IT_INSTEAD)
            no_earlier_claims()
            undo.append(lambda: delete_manifests(kube, rendered))
            kube.apply(rendered)
        if config.redis_url is None:
            wait_rollout(kube, f"statefulset/{redis_name(config.release)}",
                         timeout=300 * config.timeout_scale)
    except SetupError:
        remove()
        raise
    except (CommandError, LookupError) as exc:
        report = diagnose()
        remove()
        raise SetupError(f"installing on the cluster failed: {exc}\n{report}") from None
    except BaseException:
        remove()
        raise
    try:
        yield
    finally:
        remove()


def wait_rollout(kube: Kubectl, resource: str, timeout: float) -> None:
    """kubectl rollout status: waits for the Deployment/StatefulSet's pods to be ready."""
    kube("rollout", "status", resource, f"--timeout={int(timeout)}s", timeout=timeout + 30)


# -- Redis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisAccess:
    in_cluster_url: str
    """As the Secret holds it: what the pools' workers (and an in-cluster operator) use."""

    __repr__ = redacted_repr

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


def copy_secret(source: Kubectl, target: Kubectl, name: str) -> None:
    data = read_secret(source, name)
    target.apply({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": {"e2e.agentpool.dev/suite": "true"}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    })


@dataclass(frozen=True)
class RedisEndpoint:
    access: RedisAccess
    local_url: str
    """For the CLI running here."""
    local_address: tuple[str, int]

    __repr__ = redacted_repr


@contextmanager
def reach_redis(config: E2EConfig, release: Kubectl, pools: Kubectl, waiter: Waiter,
                log_path: Path) -> Iterator[RedisEndpoint]:
    """The Redis the pools use, and a way to reach it from here (a port-forward to the
    bundled Redis Service, or E2E_REDIS_URL).

    With the release in another namespace, its Redis URL Secret (password included) is
    copied into the pools' namespace, and deleted again at the end unless it was there
    before or E2E_KEEP=1 (the kept pools need it). The port-forward and the copy go also
    when the set-up fails or is interrupted.
    """
    undo: list[Callable[[], None]] = []

    def remove() -> None:
        for step in reversed(undo):
            step()
        undo.clear()

    def delete_copy() -> None:
        done = pools("delete", "secret", config.redis_secret, "--ignore-not-found",
                     check=False)
        if done.returncode != 0:
            warnings.warn(f"e2e cleanup: the copy of Secret {config.redis_secret} in "
                          f"namespace {pools.namespace} was not deleted: "
                          f"{done.stderr.strip()}", stacklevel=1)

    try:
        try:
            data = read_secret(release, config.redis_secret)
            if release.namespace != pools.namespace and pools.get(
                    "secret", config.redis_secret) is None:
                if not config.keep:
                    undo.append(delete_copy)
                copy_secret(release, pools, config.redis_secret)
        except (CommandError, LookupError) as exc:
            raise SetupError(f"the Redis URL Secret is missing: {exc}") from None
        if "url" not in data:
            raise SetupError(f"Secret {config.redis_secret} has no key `url`")
        access = RedisAccess(data["url"])
        if config.redis_url is None or config.operator_mode == "local":
            problem = standalone_url_problem(access.in_cluster_url)
            if problem:
                raise SetupError(f"the Redis URL of Secret {config.redis_secret} in namespace "
                                 f"{release.namespace}: {problem}: {STANDALONE_ONLY}")
        forward: PortForward | None = None
        if config.redis_url is not None:
            local_url = config.redis_url
            host, _, port = RedisAccess(local_url).host_port().rpartition(":")
            address = (host, int(port))
        else:
            forward = PortForward(release, f"svc/{redis_name(config.release)}", REDIS_PORT,
                                  log_path)
            undo.append(forward.stop)
            try:
                forwarded = forward.start()
            except CommandError as exc:
                raise SetupError(f"cannot port-forward to Redis: {exc}") from None
            local_url = access.via("127.0.0.1", forwarded)
            address = ("127.0.0.1", forwarded)
        await_ping(local_url, waiter, picture=forward is not None,
                   through="E2E_REDIS_URL" if forward is None else "the port-forward")
    except BaseException:
        remove()
        raise
    try:
        yield RedisEndpoint(access, local_url, address)
    finally:
        remove()


def await_ping(url: str, waiter: Waiter, *, through: str, picture: bool,
               timeout: float = 60) -> None:
    """Wait until Redis answers PING at `url`; SetupError with Redis's last error (and, with
    `picture`, the waiter's picture of the cluster) when it does not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    last: list[str] = []

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError as exc:
            last[:] = [mask_urls(f"{type(exc).__name__}: {exc}")]
            return False

    try:
        Waiter(scale=waiter.scale).true(ping, timeout=timeout, interval=1,
                                        what=f"Redis to answer PING through {through}")
    except AssertionError:
        problem = (f"Redis did not answer PING through {through} within "
                   f"{timeout * waiter.scale:g}s (last error: {last[0] if last else 'none'})")
        shown = waiter.picture() if picture else ""
        raise SetupError(problem + (f"\n{shown}" if shown else "")) from None
    finally:
        client.close()


# -- other operators --------------------------------------------------------------------------


def operator_deployments(kube: Kubectl) -> list[dict[str, Any]]:
    """Every agentpool operator Deployment of the cluster (needs cluster-wide list rights)."""
    listed: list[dict[str, Any]] = kube.in_namespace(None).json(
        "get", "deployments", "--all-namespaces", "--selector", OPERATOR_SELECTOR)["items"]
    return listed


def competing_operators(deployments: list[dict[str, Any]], namespace: str,
                        ours: tuple[str, str] | None) -> list[str]:
    """agentpool operator Deployments (other than `ours`, (namespace, name)) that also serve
    `namespace`: two operators on one pool would fight over its Deployment."""
    found = []
    for deployment in deployments:
        meta = deployment["metadata"]
        where = (meta["namespace"], meta["name"])
        if where == ours or not (deployment.get("spec") or {}).get("replicas", 1):
            continue
        if serves(deployment, namespace):
            found.append(f"{where[0]}/{where[1]}")
    return found


def watched_namespaces(deployment: Mapping[str, Any]) -> list[str] | None:
    """The patterns of AGENTPOOL_OPERATOR_NAMESPACES; None: every namespace."""
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    for container in containers:
        for env in container.get("env") or []:
            if env.get("name") == "AGENTPOOL_OPERATOR_NAMESPACES":
                patterns = [p.strip() for p in str(env.get("value") or "").split(",")
                            if p.strip()]
                return patterns or None
    return None


def serves(deployment: Mapping[str, Any], namespace: str) -> bool:
    patterns = watched_namespaces(deployment)
    return patterns is None or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


def release_operator_problem(deployment: Mapping[str, Any] | None, where: tuple[str, str],
                             namespace: str) -> str | None:
    """Why the installed release's operator will not serve the pools of `namespace`."""
    name = f"{where[0]}/{where[1]}"
    if deployment is None:
        return (f"no operator Deployment {name}: E2E_SKIP_INSTALL=1 uses the release "
                "E2E_RELEASE in E2E_RELEASE_NAMESPACE (else E2E_NAMESPACE), with its operator")
    if not (deployment.get("spec") or {}).get("replicas", 1):
        return f"the operator Deployment {name} is scaled to zero: no operator serves the pools"
    if not serves(deployment, namespace):
        watched = ",".join(watched_namespaces(deployment) or [])
        return (f"the operator {name} does not watch namespace {namespace} "
                f"(AGENTPOOL_OPERATOR_NAMESPACES={watched}): add it to the release's "
                "watchNamespaces, or set E2E_NAMESPACE to a namespace it watches")
    return None


def check_operators(config: E2EConfig, cluster: Kubectl, namespace: str) -> list[str]:
    """Before anything is installed: exactly one operator will serve the pools' namespace.

    Raises SetupError when another operator also serves it, or (E2E_SKIP_INSTALL=1, chart
    mode) when the release's own does not. Returns warnings: the check for other operators
    lists Deployments of every namespace, which a namespaced user may not do.
    """
    release_namespace = config.release_namespace(namespace)
    ours = None
    if config.operator_mode == "chart":
        ours = (release_namespace, operator_name(config.release))
        if config.skip_install:
            deployment = cluster.in_namespace(release_namespace).get("deployment", ours[1])
            problem = release_operator_problem(deployment, ours, namespace)
            if problem:
                raise SetupError(problem)
    try:
        deployments = operator_deployments(cluster)
    except CommandError as exc:
        return [f"could not check whether other agentpool operators serve namespace "
                f"{namespace} ({exc}); if one does, it and the suite's operator will both act "
                "on the suite's pools"]
    others = competing_operators(deployments, namespace, ours)
    if others:
        raise SetupError(f"other agentpool operators also serve namespace {namespace}: "
                         f"{', '.join(others)}. Two operators would fight over the same pools. "
                         + use_their_release(others[0], namespace))
    return []


def use_their_release(operator: str, namespace: str) -> str:
    """What to do instead, for a cluster shared with another installation (`operator` is
    namespace/name of its Deployment): test that release as it is, or go elsewhere."""
    where, _, name = operator.partition("/")
    release = name.removesuffix("-operator") or name
    return (f"On a shared cluster, run the suite against that release as it is: "
            f"E2E_OPERATOR=chart E2E_SKIP_INSTALL=1 E2E_RELEASE_NAMESPACE={where} "
            f"E2E_RELEASE={release} E2E_NAMESPACE={namespace}; or set E2E_NAMESPACE to a "
            "namespace no other operator watches; or uninstall them.")


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
        """Start it and wait for its /healthz; a start that fails or is interrupted leaves
        no process behind. SetupError when it exits or does not answer in time."""
        with self.log_path.open("ab") as log:
            self.process = spawn(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                 env=self.env())
        try:
            waiter.true(self.healthy, timeout=90, what="the local operator's /healthz",
                        interval=1)
        except AssertionError as exc:
            self.stop()
            raise SetupError(f"the local operator did not start: {exc}") from None
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SetupError(f"the local operator exited with {self.process.returncode} as "
                             f"it started: {self.last_log_line()} (log: {self.log_path})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGINT, which kopf takes as the order to stop cleanly; SIGKILL after 30 s."""
        if self.process is not None:
            end_process(self.process, grace=30, interrupt=True)

    def last_log_line(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no operator log)"
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else "(its log is empty)"

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


@contextmanager
def local_operator(operator: LocalOperator, waiter: Waiter, *,
                   kept_pools: Pools | None) -> Iterator[LocalOperator]:
    """The local operator running for the block. With `kept_pools` (E2E_KEEP=1), once it
    has stopped, the finalizers come off the pools left behind: no operator will be there
    to remove them when someone deletes those pools or their namespace."""
    operator.start(waiter)
    try:
        yield operator
    finally:
        operator.stop()
        if kept_pools is not None:
            for problem in kept_pools.release_finalizers():
                warnings.warn(f"e2e cleanup: {problem}", stacklevel=1)
