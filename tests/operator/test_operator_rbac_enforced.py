"""The real operator against an API server that enforces the RBAC the Helm chart renders for the
operator's ServiceAccount: it serves a pool in either mode without a single refused request."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import pytest
from operator_harness import (
    NAMESPACE,
    Cluster,
    ClusterEmulator,
    OperatorThread,
    eventually,
    last_observed,
    pool_manifest,
)
from rbac_rules import Grants, Need, Rule, request_need, service_account_grants

from agentpool.crd import render_crd
from agentpool.redis_server import free_port
from agentpool_operator.installed_crd import CRD_NAME
from agentpool_operator.main import kopf_settings
from agentpool_operator.settings import OperatorSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))

from chart_helpers import HELM, Helm, Rendered
from chart_helpers import NAMESPACE as RELEASE_NAMESPACE

NAMESPACES_ENV = "AGENTPOOL_OPERATOR_NAMESPACES"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_READ = Need("get", "apiextensions.k8s.io", "customresourcedefinitions", name=CRD_NAME)
PER_POOL_ENV = "AGENTPOOL_OPERATOR_PER_POOL_CREDENTIALS"
MODES = {"cluster-wide": {"secretNamespaces": [NAMESPACE]},
         "namespaced": {"watchNamespaces": [NAMESPACE]}}
"""The chart's defaults (per-pool Redis users among them), with the pools' namespace where
each mode lets the operator manage their Secrets."""


@attrs.define(kw_only=True)
class RbacEnforcingEmulator(ClusterEmulator):
    """Answers 403 to each request of the operator that `grants` does not allow. The operator
    is who sends the kubeconfig's token; the test's own requests carry none (cluster admin)."""

    grants: Grants
    allowed: list[Need] = attrs.field(factory=list, init=False)
    denied: list[Need] = attrs.field(factory=list, init=False)

    async def __call__(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Before kmock parses the request (it fails on a list of namespaces)."""
        need = request_need(request.method, request.path, request.query)
        if need is None or "Authorization" not in request.headers:
            return await super().__call__(request)
        if self.grants.allow(need):
            self.allowed.append(need)
            return await super().__call__(request)
        self.denied.append(need)
        return aiohttp.web.json_response({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
            "code": 403, "message": f"forbidden: {need}",
        }, status=403)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm is missing at {HELM}: run `make setup` (scripts/install-helm.sh)")
    return Helm(tmp_path_factory.mktemp("helm"))


@pytest.fixture(params=sorted(MODES))
def rendered(request: pytest.FixtureRequest, helm: Helm) -> Rendered:
    return helm.render(MODES[request.param])


def chart_operator(rendered: Rendered) -> tuple[str, dict[str, str]]:
    """The rendered operator Deployment's ServiceAccount and environment."""
    for deployment in rendered.of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            if NAMESPACES_ENV in env:
                return pod["serviceAccountName"], env
    raise AssertionError("the chart renders no operator Deployment")


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any], rendered: Rendered) -> dict[str, Any]:
    account, _ = chart_operator(rendered)
    grants = service_account_grants(rendered.manifests, RELEASE_NAMESPACE, account)
    return {**kmock_options, "cls": RbacEnforcingEmulator, "grants": grants}


@pytest.fixture
async def crd_installed(cluster: Cluster) -> None:
    """As Helm installs it, before the operator (one serving listed namespaces refuses to
    start without it)."""
    await cluster.create(CRDS, render_crd())


@pytest.fixture
def operator_settings(rendered: Rendered, crd_installed: None) -> OperatorSettings:
    """The namespaces and per-pool credentials the chart gives the operator."""
    _, env = chart_operator(rendered)
    return OperatorSettings(port=free_port(), status_refresh_seconds=0.5,
                            namespaces=env[NAMESPACES_ENV],
                            per_pool_credentials=env[PER_POOL_ENV] == "true")


async def test_the_operator_serves_a_pool_with_the_charts_rbac_alone(
    cluster: Cluster, kmock: RbacEnforcingEmulator, operator: OperatorThread, redis_url: str,
    pool_name: str,
) -> None:
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))

    def served() -> bool:
        return bool(cluster.deployment(pool_name)
                    and cluster.pool(pool_name)["status"]["conditions"])

    await eventually(lambda: kmock.denied or served())
    first = last_observed(pool_name)
    await eventually(lambda: kmock.denied or last_observed(pool_name) > first)
    refused = [str(need) for need in kmock.denied]
    assert not refused, "the chart's RBAC refused:\n" + "\n".join(refused)
    assert CRD_READ in kmock.allowed, "the installed CRD was not read (or not under RBAC)"
    assert Need("create", "", "secrets", NAMESPACE) in kmock.allowed, (
        "the pool's Redis user's Secret was not written (per-pool credentials, the default)")


def test_kopf_scans_namespaces_and_crds_unless_given_names_only() -> None:
    def scans(namespaces: str) -> bool:
        return not kopf_settings(OperatorSettings(namespaces=namespaces)).scanning.disabled

    assert not scans("team-a") and not scans("team-a,team-b")
    assert scans("")
    assert scans("team-*") and scans("team-a,!kube-system") and scans("team-?")


def test_a_need_is_read_from_a_request_as_the_api_server_does() -> None:
    assert request_need("GET", "/api/v1/namespaces", {}) == Need("list", "", "namespaces")
    assert request_need("GET", "/apis/apps/v1/deployments", {"watch": "true"}) == Need(
        "watch", "apps", "deployments")
    assert request_need(
        "PATCH", "/apis/agentpool.dev/v1alpha1/namespaces/a/agentpools/p/status", {}
    ) == Need("patch", "agentpool.dev", "agentpools/status", "a", "p")
    assert request_need("GET", "/api/v1/namespaces/a", {}) == Need(
        "get", "", "namespaces", "a", "a")
    assert request_need("POST", "/api/v1/namespaces/a/events", {}) == Need(
        "create", "", "events", "a")
    for discovery in ("/api", "/api/v1", "/apis", "/apis/apps/v1", "/version"):
        assert request_need("GET", discovery, {}) is None


def test_grants_keep_to_their_namespace_and_resource_names() -> None:
    crd = Rule(frozenset({"apiextensions.k8s.io"}), frozenset({"customresourcedefinitions"}),
               frozenset({"get"}), names=frozenset({"agentpools.agentpool.dev"}))
    pods = Rule(frozenset({""}), frozenset({"pods"}), frozenset({"list"}))
    grants = Grants(cluster=(crd,), namespaced={"a": (pods,)})
    crds = "apiextensions.k8s.io", "customresourcedefinitions"
    assert grants.allow(Need("get", *crds, name="agentpools.agentpool.dev"))
    assert not grants.allow(Need("get", *crds, name="other.example.com"))
    assert not grants.allow(Need("list", *crds))
    assert grants.allow(Need("list", "", "pods", "a"))
    assert not grants.allow(Need("list", "", "pods", "b"))
    assert not grants.allow(Need("list", "", "pods"))
