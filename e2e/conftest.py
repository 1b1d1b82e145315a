"""Fixtures of the end-to-end suite: a real cluster from KUBECONFIG (see e2e/README.md).

Session order: namespace -> chart (operator + Redis) or Redis alone -> CRD -> port-forward to
Redis -> operator (in the cluster, or a local subprocess) -> pools. Teardown runs backwards:
the suite's pools are deleted while their operator still runs, so finalizers are honoured.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_cli import AgentpoolCli
from e2e_config import CRD_FILE, REPO, ConfigError, E2EConfig, timeout_scale
from e2e_install import (
    LocalOperator,
    RedisAccess,
    apply_crd,
    competing_operators,
    copy_secret,
    delete_namespace,
    ensure_namespace,
    install_chart,
    install_redis_only,
    operator_logs,
    operator_name,
    read_secret,
    redis_name,
    uninstall_chart,
    wait_rollout,
)
from e2e_kube import CommandError, Kubectl, PortForward, Waiter, run, snapshot
from e2e_manifests import Manifest
from e2e_pools import Pools

NO_CLUSTER = "e2e: no cluster configured (KUBECONFIG unset and no ~/.kube/config): skipped"


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not cluster_configured():
        return [NO_CLUSTER]
    try:
        return [f"e2e: {E2EConfig.from_env().describe()}"]
    except ConfigError as exc:
        return [f"e2e: configuration error: {exc}"]


E2E_TEST_SECONDS = 1800
"""The longest an e2e test may take, set-up and tear-down of the session's fixtures included
(the first test pays for the chart's install, the last for its removal), before
E2E_TIMEOUT_SCALE. The suite's own waits end sooner, with a snapshot of the cluster; this
bound replaces the 300 s that the unit suite's configuration gives every test."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        scale = timeout_scale(os.environ)
    except ConfigError:
        scale = 1.0  # reported by the fixtures, which need the configuration anyway
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.timeout(E2E_TEST_SECONDS * scale))


def cluster_configured() -> bool:
    if os.environ.get("KUBECONFIG") or os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    return Path("~/.kube/config").expanduser().is_file()


@dataclass
class Diagnostics:
    """What a timed-out wait adds to its message; fixtures register more as they start."""

    kube: Kubectl
    extras: list[Callable[[], str]] = field(default_factory=list)

    def __call__(self) -> str:
        return snapshot(self.kube, lambda: "\n".join(extra() for extra in self.extras))


@dataclass(frozen=True)
class Installation:
    release: str
    namespace: str
    kube: Kubectl


@dataclass(frozen=True)
class RedisEndpoint:
    access: RedisAccess
    local_url: str
    """For the CLI running here."""
    local_address: tuple[str, int]


# -- session ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_config() -> E2EConfig:
    try:
        return E2EConfig.from_env()
    except ConfigError as exc:
        problem = str(exc)
    pytest.fail(f"e2e configuration: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(e2e_config: E2EConfig) -> Kubectl:
    """kubectl for the cluster in KUBECONFIG; skips the suite when none is configured."""
    if not cluster_configured():
        pytest.skip(NO_CLUSTER)
    kube = Kubectl()
    problem = attempt(lambda: kube("version", "--output", "json", timeout=60))
    if problem:
        pytest.fail(f"e2e: the cluster in KUBECONFIG does not answer: {problem}", pytrace=False)
    return kube


@pytest.fixture(scope="session")
def run_id() -> str:
    """Suffix of the names this session creates."""
    return secrets.token_hex(3)


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Task files, port-forward and operator logs."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def namespace(e2e_config: E2EConfig, cluster: Kubectl, run_id: str) -> Iterator[str]:
    name = e2e_config.namespace or f"agentpool-e2e-{run_id}"
    outcome: list[bool] = []
    problem = attempt(lambda: outcome.append(
        ensure_namespace(cluster, name, e2e_config.pod_security)))
    if problem:
        pytest.fail(f"e2e: cannot create namespace {name}: {problem}", pytrace=False)
    created = outcome[0]
    yield name
    if created and not e2e_config.keep:
        problem = delete_namespace(cluster, name, timeout=300)
        if problem:
            warnings.warn(f"e2e cleanup: namespace {name} not deleted: {problem}",
                          stacklevel=1)


@pytest.fixture(scope="session")
def kube(cluster: Kubectl, namespace: str) -> Kubectl:
    """kubectl in the pools' namespace."""
    return cluster.in_namespace(namespace)


@pytest.fixture(scope="session")
def diagnostics(kube: Kubectl) -> Diagnostics:
    return Diagnostics(kube)


@pytest.fixture(scope="session")
def waiter(e2e_config: E2EConfig, diagnostics: Diagnostics) -> Waiter:
    return Waiter(scale=e2e_config.timeout_scale, diagnose=diagnostics)


@pytest.fixture(scope="session")
def installation(e2e_config: E2EConfig, cluster: Kubectl, namespace: str,
                 waiter: Waiter, diagnostics: Diagnostics) -> Iterator[Installation]:
    """The chart (chart mode), the chart's Redis alone (local mode), or what is installed
    already (E2E_SKIP_INSTALL=1)."""
    release_namespace = e2e_config.release_namespace(namespace)
    release_kube = cluster.in_namespace(release_namespace)
    installing = e2e_config.installs_chart or e2e_config.installs_redis_only
    if installing and attempt(lambda: run([e2e_config.helm, "version", "--short"])):
        pytest.fail(f"e2e: helm does not run at {e2e_config.helm}: run "
                    "scripts/install-helm.sh or set E2E_HELM", pytrace=False)
    rendered: list[str] = []

    def install() -> None:
        if e2e_config.installs_chart:
            install_chart(e2e_config, namespace)
        elif e2e_config.installs_redis_only:
            rendered.append(install_redis_only(e2e_config, release_kube) or "")
        if e2e_config.redis_url is None:
            wait_rollout(release_kube, f"statefulset/{redis_name(e2e_config.release)}",
                         timeout=300 * e2e_config.timeout_scale)

    def uninstall() -> None:
        """Also after an installation that failed half-way: a release's cluster-wide objects
        outlive the namespace."""
        if e2e_config.keep:
            return
        if e2e_config.installs_chart:
            problem = uninstall_chart(e2e_config, namespace)
            if problem:
                warnings.warn(f"e2e cleanup: {problem}", stacklevel=1)
        elif rendered and rendered[0]:
            release_kube("delete", "--filename", "-", "--ignore-not-found", "--wait=false",
                         input=rendered[0], check=False)

    problem = attempt(install)
    if problem:
        report = diagnostics()
        uninstall()
        pytest.fail(f"e2e: installing on the cluster failed: {problem}\n{report}",
                    pytrace=False)
    try:
        yield Installation(e2e_config.release, release_namespace, release_kube)
    finally:
        uninstall()


@pytest.fixture(scope="session")
def crd(cluster: Kubectl, installation: Installation, waiter: Waiter) -> dict[str, Any]:
    """The AgentPool CRD of crds/, applied (the chart installs it only when it is missing)."""
    applied: list[dict[str, Any]] = []
    problem = attempt(lambda: applied.append(apply_crd(cluster, waiter)))
    if problem:
        pytest.fail(f"e2e: cannot apply the AgentPool CRD ({CRD_FILE.relative_to(REPO)}): "
                    f"{problem}", pytrace=False)
    return applied[0]


@pytest.fixture(scope="session")
def redis_endpoint(e2e_config: E2EConfig, installation: Installation, kube: Kubectl,
                   namespace: str, waiter: Waiter, scratch: Path) -> Iterator[RedisEndpoint]:
    """The Redis the pools use, and a way to reach it from here (a port-forward to the
    bundled Redis Service, or E2E_REDIS_URL)."""
    data: dict[str, str] = {}

    def read() -> None:
        data.update(read_secret(installation.kube, e2e_config.redis_secret))
        if installation.namespace != namespace:
            copy_secret(installation.kube, kube, e2e_config.redis_secret)

    problem = attempt(read)
    if problem:
        pytest.fail(f"e2e: the Redis URL Secret is missing: {problem}", pytrace=False)
    if "url" not in data:
        pytest.fail(f"e2e: Secret {e2e_config.redis_secret} has no key `url`", pytrace=False)
    access = RedisAccess(data["url"])
    forward: PortForward | None = None
    if e2e_config.redis_url is not None:
        local_url = e2e_config.redis_url
        local = RedisAccess(local_url).host_port().rpartition(":")
        address = (local[0], int(local[2]))
    else:
        forward = PortForward(installation.kube, f"svc/{redis_name(installation.release)}",
                              6379, scratch / "port-forward.log")
        problem = attempt(forward.start)
        if problem or forward.local_port is None:
            pytest.fail(f"e2e: cannot port-forward to Redis: {problem}", pytrace=False)
        port = forward.local_port
        local_url = access.via("127.0.0.1", port)
        address = ("127.0.0.1", port)
    client = redis.Redis.from_url(local_url, socket_connect_timeout=5, socket_timeout=5)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        waiter.true(ping, timeout=60, what="Redis to answer PING through "
                    + ("E2E_REDIS_URL" if forward is None else "the port-forward"), interval=1)
    finally:
        client.close()
    yield RedisEndpoint(access, local_url, address)
    if forward is not None:
        forward.stop()


@pytest.fixture(scope="session")
def operator(e2e_config: E2EConfig, installation: Installation, crd: dict[str, Any],
             redis_endpoint: RedisEndpoint, namespace: str, waiter: Waiter,
             diagnostics: Diagnostics, scratch: Path) -> Iterator[str]:
    """The operator serving the namespace: the chart's Deployment, or a local process."""
    ours = None
    if e2e_config.operator_mode == "chart":
        ours = (installation.namespace, operator_name(installation.release))
    others = competing_operators(installation.kube, namespace, ours)
    if others:
        pytest.fail(f"e2e: other agentpool operators also serve namespace {namespace}: "
                    f"{', '.join(others)}. Two operators would fight over the same pools: "
                    "uninstall them, or run the suite in a namespace they do not watch.",
                    pytrace=False)
    if e2e_config.operator_mode == "chart":
        diagnostics.extras.append(lambda: operator_logs(installation.kube, installation.release))
        problem = attempt(lambda: wait_rollout(
            installation.kube, f"deployment/{operator_name(installation.release)}",
            timeout=300 * e2e_config.timeout_scale))
        if problem:
            pytest.fail(f"e2e: the operator did not become ready: {problem}\n{diagnostics()}",
                        pytrace=False)
        yield "chart"
        return
    host, port = redis_endpoint.local_address
    local = LocalOperator(namespace, redis_endpoint.access.address_map(host, port),
                          scratch / "operator.log")
    diagnostics.extras.append(local.log_tail)
    local.start(waiter)
    yield "local"
    local.stop()


@pytest.fixture(scope="session")
def pools(operator: str, kube: Kubectl, waiter: Waiter,
          e2e_config: E2EConfig) -> Iterator[Pools]:
    """Pool operations; at the end of the session the suite's pools are deleted (while the
    operator still runs, so that its finalizer is removed the normal way)."""
    ops = Pools(kube, waiter)
    yield ops
    if not e2e_config.keep:
        for problem in ops.delete_suite_pools():
            warnings.warn(f"e2e cleanup: {problem}", stacklevel=1)


@pytest.fixture(scope="session")
def cli(redis_endpoint: RedisEndpoint, scratch: Path) -> Iterator[AgentpoolCli]:
    tool = AgentpoolCli(redis_endpoint.local_url, scratch)
    yield tool
    tool.stop_all()


# -- per test ---------------------------------------------------------------------------------


@pytest.fixture
def make_pool(pools: Pools) -> Iterator[Callable[[Manifest], str]]:
    """Apply a pool for this test; it is deleted (and waited for) when the test ends."""
    made: list[str] = []

    def make(manifest: Manifest) -> str:
        name = pools.apply(manifest)
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            pools.delete(name)
        except (CommandError, AssertionError):
            pools.force_remove(name)
            raise


def attempt(action: Callable[[], object]) -> str | None:
    """Run a set-up step; its failure as text, so that the fixture can fail with one readable
    message (no traceback of the subprocess plumbing)."""
    try:
        action()
    except (CommandError, LookupError) as exc:
        return str(exc)
    return None
