"""Fixtures of the end-to-end suite: a real cluster from KUBECONFIG (see e2e/README.md).

Session order: namespace -> the check that no other operator serves it -> chart (operator +
Redis) or Redis alone -> CRD -> port-forward to Redis -> operator (in the cluster, or a local
subprocess) -> pools. Teardown runs backwards: the suite's pools are deleted while their
operator still runs, so finalizers are honoured. A set-up step that fails or is interrupted
removes what it had started before it gives up.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import (
    CRD_FILE,
    REPO,
    ConfigError,
    E2EConfig,
    missing_kubeconfig,
    timeout_scale,
)
from e2e_install import (
    LocalOperator,
    RedisEndpoint,
    SetupError,
    apply_crd,
    check_operators,
    installed_crd,
    local_operator,
    operator_logs,
    operator_name,
    reach_redis,
    suite_installation,
    suite_namespace,
    wait_rollout,
)
from e2e_kube import (
    CommandError,
    Kubectl,
    Waiter,
    run,
    snapshot,
    termination_as_interrupt,
)
from e2e_manifests import Manifest
from e2e_pools import Pools

from agentpool.urls import mask_urls

T = TypeVar("T")

NO_CLUSTER = ("e2e: KUBECONFIG is not set: skipped (the suite installs into the cluster it "
              "names, so it never takes ~/.kube/config by itself)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which cluster the suite will touch, before it touches it."""
    if not cluster_configured():
        return [NO_CLUSTER]
    problem = kubeconfig_problem()
    if problem:
        return [f"e2e: {problem}"]
    lines = [f"e2e: cluster: {current_cluster()} (KUBECONFIG={os.environ['KUBECONFIG']})"]
    try:
        lines.append(f"e2e: {E2EConfig.from_env().describe()}")
    except ConfigError as exc:
        lines.append(f"e2e: configuration error: {exc}")
    return lines


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
    """Only a KUBECONFIG set for the run: never ~/.kube/config (often a work cluster) or a
    pod's service account, which kubectl would take without being told."""
    return bool(os.environ.get("KUBECONFIG"))


def kubeconfig_problem() -> str | None:
    missing = missing_kubeconfig(os.environ.get("KUBECONFIG", ""))
    if not missing:
        return None
    return (f"KUBECONFIG names {', '.join(missing)}, which is not a file (kubectl would skip "
            "it, and without a cluster try localhost:8080)")


def current_cluster() -> str:
    """`context <name>, API server <url>` as kubectl reads KUBECONFIG (nothing is contacted)."""
    try:
        done = run([Kubectl().binary, "config", "view", "--minify", "--output", "json"],
                   check=False, timeout=30)
    except CommandError as exc:
        return f"unknown ({exc})"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        return f"unknown (kubectl config view: {why})"
    try:
        view = json.loads(done.stdout)
        context = view.get("current-context") or "unknown"
        server = view["clusters"][0]["cluster"]["server"]
    except (ValueError, LookupError, TypeError, AttributeError):
        return "unknown (kubectl config view printed no cluster)"
    return f"context {context}, API server {mask_urls(server)}"


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


# -- session ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_config() -> E2EConfig:
    try:
        return E2EConfig.from_env()
    except ConfigError as exc:
        problem = str(exc)
    pytest.fail(f"e2e configuration: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(e2e_config: E2EConfig) -> Iterator[Kubectl]:
    """kubectl for the cluster in KUBECONFIG; skips the suite when none is configured."""
    if not cluster_configured():
        pytest.skip(NO_CLUSTER)
    problem = kubeconfig_problem()
    if problem:
        pytest.fail(f"e2e: {problem}", pytrace=False)
    kube = Kubectl()
    step("the cluster in KUBECONFIG does not answer",
         lambda: kube("version", "--output", "json", timeout=60))
    with termination_as_interrupt():
        yield kube


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
    with ExitStack() as stack:
        step(f"cannot create namespace {name}", lambda: stack.enter_context(suite_namespace(
            cluster, name, e2e_config.pod_security, keep=e2e_config.keep)))
        yield name


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
                 diagnostics: Diagnostics) -> Iterator[Installation]:
    """The chart (chart mode), the chart's Redis alone (local mode), or what is installed
    already (E2E_SKIP_INSTALL=1); first of all, the check that no other operator serves the
    namespace."""
    release_namespace = e2e_config.release_namespace(namespace)
    release_kube = cluster.in_namespace(release_namespace)
    for warning in step(f"cannot check which operators serve namespace {namespace}",
                        lambda: check_operators(e2e_config, cluster, namespace)):
        warnings.warn(f"e2e: {warning}", stacklevel=1)
    with ExitStack() as stack:
        step("installing on the cluster failed", lambda: stack.enter_context(
            suite_installation(e2e_config, release_kube, diagnostics)))
        yield Installation(e2e_config.release, release_namespace, release_kube)


@pytest.fixture(scope="session")
def crd(e2e_config: E2EConfig, cluster: Kubectl, installation: Installation,
        waiter: Waiter) -> dict[str, Any]:
    """The AgentPool CRD: that of crds/, applied (the chart installs it only when it is
    missing), or with E2E_SKIP_INSTALL=1 the one installed, left as it is."""
    if e2e_config.skip_install:
        return step("cannot read the AgentPool CRD", lambda: installed_crd(cluster, waiter))
    return step(f"cannot apply the AgentPool CRD ({CRD_FILE.relative_to(REPO)})",
                lambda: apply_crd(cluster, waiter))


@pytest.fixture(scope="session")
def redis_endpoint(e2e_config: E2EConfig, installation: Installation, kube: Kubectl,
                   waiter: Waiter, scratch: Path) -> Iterator[RedisEndpoint]:
    """The Redis the pools use, and a way to reach it from here (a port-forward to the
    bundled Redis Service, or E2E_REDIS_URL)."""
    with ExitStack() as stack:
        endpoint = step("cannot reach Redis", lambda: stack.enter_context(reach_redis(
            e2e_config, installation.kube, kube, waiter, scratch / "port-forward.log")))
        yield endpoint


@pytest.fixture(scope="session")
def operator(e2e_config: E2EConfig, installation: Installation, crd: dict[str, Any],
             redis_endpoint: RedisEndpoint, namespace: str, kube: Kubectl, waiter: Waiter,
             diagnostics: Diagnostics, scratch: Path, run_id: str) -> Iterator[str]:
    """The operator serving the namespace: the chart's Deployment, or a local process."""
    if e2e_config.operator_mode == "chart":
        diagnostics.extras.append(lambda: operator_logs(installation.kube, installation.release))
        problem = ""
        try:
            wait_rollout(installation.kube, f"deployment/{operator_name(installation.release)}",
                         timeout=300 * e2e_config.timeout_scale)
        except CommandError as exc:
            problem = str(exc)
        if problem:
            pytest.fail(f"e2e: the operator did not become ready: {problem}\n{diagnostics()}",
                        pytrace=False)
        yield "chart"
        return
    host, port = redis_endpoint.local_address
    local = LocalOperator(namespace, redis_endpoint.access.address_map(host, port),
                          scratch / "operator.log")
    diagnostics.extras.append(local.log_tail)
    kept = Pools(kube, waiter, run_id) if e2e_config.keep else None
    with ExitStack() as stack:
        step("the local operator did not start", lambda: stack.enter_context(
            local_operator(local, waiter, kept_pools=kept)))
        yield "local"


@pytest.fixture(scope="session")
def pools(operator: str, kube: Kubectl, waiter: Waiter, e2e_config: E2EConfig,
          run_id: str) -> Iterator[Pools]:
    """Pool operations; at the end of the session this run's pools are deleted (while the
    operator still runs, so that its finalizer is removed the normal way)."""
    ops = Pools(kube, waiter, run_id)
    yield ops
    if not e2e_config.keep:
        for problem in ops.delete_suite_pools():
            warnings.warn(f"e2e cleanup: {problem}", stacklevel=1)


@pytest.fixture(scope="session")
def cli(redis_endpoint: RedisEndpoint, scratch: Path,
        diagnostics: Diagnostics) -> Iterator[AgentpoolCli]:
    tool = AgentpoolCli(redis_endpoint.local_url, scratch, diagnose=diagnostics)
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


def step(failure: str, action: Callable[[], T]) -> T:
    """Run a set-up step; its failure becomes one readable message (no traceback of the
    subprocess plumbing): the SetupError's own, or `failure` and the command's."""
    try:
        return action()
    except SetupError as exc:
        problem = str(exc)
    except (CommandError, LookupError) as exc:
        problem = f"{failure}: {exc}"
    pytest.fail(f"e2e: {problem}", pytrace=False)
