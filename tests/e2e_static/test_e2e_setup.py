"""The e2e suite's set-up against stand-ins for kubectl and helm (tests/e2e_static/conftest.py):
what it refuses to touch on a cluster it shares, what it removes when a step fails or is
interrupted, and the order of its steps. The fixtures run in a pytest subprocess, as a user
runs them; the set-up steps they are made of run here too."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_config import CRD_FILE, E2EConfig
from e2e_install import (
    LocalOperator,
    SetupError,
    competing_operators,
    local_operator,
    reach_redis,
    release_operator_problem,
    suite_installation,
    suite_namespace,
)
from e2e_kube import Waiter
from e2e_manifests import RUN_LABEL, SUITE_LABEL, small_pool
from e2e_pools import Pools
from e2e_stubs import STUB_CONTEXT, STUB_SERVER, Rule, Stubs, answer, refuse

from agentpool.redis_server import RedisServer, free_port

CRD_TEST = "test_e2e_api.py::test_crd_is_established_with_printer_columns_and_cel_rules"
OPERATOR_LIST = ("kubectl get deployments --all-namespaces --selector "
                 "app.kubernetes.io/name=agentpool-operator --output json")
CRD_GET = ("kubectl get customresourcedefinition agentpools.agentpool.dev --output json "
           "--ignore-not-found")


def namespace_exists(name: str) -> Rule:
    return answer(f"kubectl get namespace {name} --output json --ignore-not-found",
                  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def operator_deployment(namespace: str, watches: str | None,
                        name: str = "agentpool-operator") -> dict[str, Any]:
    env = [] if watches is None else [{"name": "AGENTPOOL_OPERATOR_NAMESPACES",
                                       "value": watches}]
    return {"metadata": {"namespace": namespace, "name": name},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "operator", "env": env}]}}}}


def established_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    crd["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    return crd


CLAIMS_SELECTOR = ("--selector app.kubernetes.io/name=agentpool-redis,"
                   "app.kubernetes.io/instance=agentpool")
NO_CLAIMS = [
    answer(f"kubectl --namespace * get persistentvolumeclaims {CLAIMS_SELECTOR} --output json",
           {"items": []}),
    answer(f"kubectl --namespace * delete persistentvolumeclaims {CLAIMS_SELECTOR} "
           "--ignore-not-found --wait=false"),
]
"""No claim of an earlier Redis of the release; the suite's own are deleted at the end."""

INSTALL_ANSWERS = [
    answer("helm version --short", "v3.16.0\n"),
    refuse("helm status agentpool --namespace *", "Error: release: not found\n"),
    answer("helm upgrade --install agentpool *"),
    answer("helm uninstall agentpool --namespace * --ignore-not-found"),
    *NO_CLAIMS,
]


def starting(calls: list[str], prefix: str) -> list[str]:
    return [call for call in calls if call.startswith(prefix)]


def one_readable_error(output: str) -> None:
    assert "1 error" in output, output
    assert "Traceback" not in output and "raise " not in output, output


# -- what the suite refuses to touch ----------------------------------------------------------


def test_an_existing_release_is_refused_and_left_alone(stubs: Stubs) -> None:
    stubs.rules(namespace_exists("agentpool"), answer(OPERATOR_LIST, {"items": []}),
                answer("helm version --short", "v3.16.0\n"),
                answer("helm status agentpool --namespace agentpool", "STATUS: deployed\n"))
    result = stubs.run_e2e(CRD_TEST, E2E_NAMESPACE="agentpool",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e: helm release agentpool is installed in namespace agentpool already: the "
            "suite would upgrade it to its own images and values and uninstall it at the end. "
            "Run the suite against it as it is with E2E_SKIP_INSTALL=1, or set E2E_NAMESPACE "
            "to another namespace") in output, output
    calls = stubs.calls()
    assert not [c for c in calls if c.startswith(("helm upgrade", "helm uninstall"))], calls
    assert not [c for c in calls if " apply " in f" {c} " or " delete " in f" {c} "], calls


def test_local_mode_refuses_a_namespace_that_has_the_charts_redis(stubs: Stubs) -> None:
    rendered = "\n---\n".join(yaml.safe_dump({"apiVersion": "v1", "kind": kind,
                                              "metadata": {"name": name}})
                              for kind, name in (("Service", "agentpool-redis"),
                                                 ("StatefulSet", "agentpool-redis")))
    stubs.rules(
        answer("helm version --short", "v3.16.0\n"),
        answer("kubectl --namespace agentpool get secret agentpool-redis *", ""),
        answer("helm template agentpool *", rendered),
        answer("kubectl --namespace agentpool get Service agentpool-redis *", ""),
        answer("kubectl --namespace agentpool get StatefulSet agentpool-redis *",
               {"kind": "StatefulSet", "metadata": {"name": "agentpool-redis"}}),
    )
    config = E2EConfig.from_env({"E2E_OPERATOR": "local", "E2E_NAMESPACE": "agentpool",
                                 "E2E_HELM": stubs.helm})
    with pytest.raises(SetupError) as refused, suite_installation(
            config, stubs.kubectl("agentpool"), lambda: "picture"):
        pytest.fail("the suite went on over the existing Redis")
    assert str(refused.value) == (
        "the chart's Redis is in namespace agentpool already (StatefulSet/agentpool-redis): "
        "the suite would apply its own over it and delete it at the end. Run the suite "
        "against it as it is with E2E_SKIP_INSTALL=1, or set E2E_NAMESPACE to another "
        "namespace (unset: a fresh one).")
    assert not [c for c in stubs.calls() if " apply " in c or " delete " in c]


def test_skip_install_uses_the_installed_crd_and_applies_nothing(stubs: Stubs) -> None:
    stubs.rules(namespace_exists("agentpool"),
                answer("kubectl --namespace agentpool get deployment agentpool-operator *",
                       operator_deployment("agentpool", "agentpool")),
                answer(OPERATOR_LIST,
                       {"items": [operator_deployment("agentpool", "agentpool")]}),
                answer(CRD_GET, established_crd()),
                answer("kubectl --namespace agentpool get ap", "No resources found\n"))
    result = stubs.run_e2e(CRD_TEST, E2E_SKIP_INSTALL="1", E2E_NAMESPACE="agentpool",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = stubs.calls()
    assert not [c for c in calls if " apply " in c or c.startswith("helm")], calls


def test_skip_install_without_the_crd_is_refused(stubs: Stubs) -> None:
    stubs.rules(namespace_exists("agentpool"),
                answer("kubectl --namespace agentpool get deployment agentpool-operator *",
                       operator_deployment("agentpool", "")),
                answer(OPERATOR_LIST, {"items": []}),
                answer(CRD_GET, ""))
    result = stubs.run_e2e(CRD_TEST, E2E_SKIP_INSTALL="1", E2E_NAMESPACE="agentpool",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e: E2E_SKIP_INSTALL=1 uses what is installed, and the CRD "
            "agentpools.agentpool.dev is not: install the chart first, or run without "
            "E2E_SKIP_INSTALL (which applies crds/agentpool.dev_agentpools.yaml of this "
            "checkout)") in output, output
    assert not [c for c in stubs.calls() if " apply " in c]


# -- other operators ----------------------------------------------------------------------------


def test_a_competing_operator_is_refused_before_anything_is_installed(stubs: Stubs) -> None:
    stubs.rules(namespace_exists("e2e-x"), *INSTALL_ANSWERS,
                answer(OPERATOR_LIST, {"items": [operator_deployment("prod", None)]}))
    result = stubs.run_e2e(CRD_TEST, E2E_NAMESPACE="e2e-x",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e: other agentpool operators also serve namespace e2e-x: "
            "prod/agentpool-operator.") in output, output
    assert ("On a shared cluster, run the suite against that release as it is: "
            "E2E_OPERATOR=chart E2E_SKIP_INSTALL=1 E2E_RELEASE_NAMESPACE=prod "
            "E2E_RELEASE=agentpool E2E_NAMESPACE=e2e-x") in " ".join(output.split()), output
    assert not starting(stubs.calls(), "helm"), stubs.calls()


def test_an_operator_check_that_cannot_run_is_reported(stubs: Stubs) -> None:
    """A namespaced user may not list Deployments everywhere: a warning, then the run goes
    on (here to a CRD the cluster refuses, whose release is then uninstalled)."""
    stubs.rules(namespace_exists("e2e-x"), *INSTALL_ANSWERS,
                refuse(OPERATOR_LIST, 'Error from server (Forbidden): deployments.apps is '
                       'forbidden: User "dev" cannot list resource "deployments"\n'),
                refuse("kubectl apply --filename - --server-side *",
                       "Error from server (Forbidden): customresourcedefinitions is forbidden\n"))
    result = stubs.run_e2e(CRD_TEST, E2E_NAMESPACE="e2e-x",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert "e2e: could not check whether other agentpool operators serve namespace e2e-x" in (
        " ".join(output.split())), output
    calls = stubs.calls()
    install, uninstall = (calls.index(starting(calls, prefix)[0])
                          for prefix in ("helm upgrade", "helm uninstall"))
    assert install < uninstall


def test_a_release_operator_that_does_not_watch_the_pools_namespace_is_refused(
    stubs: Stubs,
) -> None:
    stubs.rules(namespace_exists("pools"),
                answer("kubectl --namespace infra get deployment agentpool-operator *",
                       operator_deployment("infra", "infra,staging-*")))
    result = stubs.run_e2e(CRD_TEST, E2E_SKIP_INSTALL="1", E2E_NAMESPACE="pools",
                           E2E_RELEASE_NAMESPACE="infra",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e: the operator infra/agentpool-operator does not watch namespace pools "
            "(AGENTPOOL_OPERATOR_NAMESPACES=infra,staging-*): add it to the release's "
            "watchNamespaces, or set E2E_NAMESPACE to a namespace it watches") in output, output


def test_which_operators_serve_a_namespace() -> None:
    deployments = [operator_deployment("agentpool", ""),
                   operator_deployment("team", "team-*"),
                   {**operator_deployment("idle", None), "spec": {
                       **operator_deployment("idle", None)["spec"], "replicas": 0}}]
    assert competing_operators(deployments, "team-a", None) == [
        "agentpool/agentpool-operator", "team/agentpool-operator"]
    assert competing_operators(deployments, "team-a", ("agentpool", "agentpool-operator")) == [
        "team/agentpool-operator"]
    assert competing_operators(deployments, "other", ("agentpool", "agentpool-operator")) == []
    where = ("infra", "agentpool-operator")
    assert release_operator_problem(operator_deployment("infra", "pools"), where,
                                    "pools") is None
    assert "no operator Deployment infra/agentpool-operator" in (
        release_operator_problem(None, where, "pools") or "")
    assert "scaled to zero" in (release_operator_problem(deployments[2], where, "x") or "")


# -- set-up that fails or is interrupted half-way ---------------------------------------------


def test_an_interrupted_chart_install_is_uninstalled(stubs: Stubs) -> None:
    """Ctrl-C while helm upgrade runs: the release it may have left (and its ClusterRole)
    goes before pytest stops."""
    stubs.rules(namespace_exists("e2e-x"), answer(OPERATOR_LIST, {"items": []}),
                answer("helm version --short", "v3.16.0\n"),
                refuse("helm status agentpool --namespace *", "Error: release: not found\n"),
                {**answer("helm upgrade --install agentpool *"), "interrupt_parent": True,
                 "sleep": 30},
                answer("helm uninstall agentpool --namespace e2e-x --ignore-not-found"),
                *NO_CLAIMS)
    result = stubs.run_e2e(CRD_TEST, E2E_NAMESPACE="e2e-x",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "KeyboardInterrupt" in output, output
    calls = stubs.calls()
    assert starting(calls, "helm uninstall agentpool --namespace e2e-x"), calls
    assert calls.index(starting(calls, "helm upgrade")[0]) < calls.index(
        starting(calls, "helm uninstall")[0])


def test_a_redis_that_never_rolls_out_is_uninstalled_with_a_picture(stubs: Stubs) -> None:
    stubs.rules(*INSTALL_ANSWERS,
                refuse("kubectl --namespace e2e-x rollout status statefulset/agentpool-redis *",
                       "error: timed out waiting for the condition\n"))
    config = E2EConfig.from_env({"E2E_NAMESPACE": "e2e-x", "E2E_HELM": stubs.helm})
    with pytest.raises(SetupError) as failed, suite_installation(
            config, stubs.kubectl("e2e-x"), lambda: "--- cluster ---\npods: pending"):
        pytest.fail("the installation should have failed")
    assert str(failed.value).startswith(
        f"installing on the cluster failed: `{stubs.bin_dir / 'kubectl'} --namespace e2e-x "
        "rollout status statefulset/agentpool-redis")
    assert "timed out waiting for the condition" in str(failed.value)
    assert str(failed.value).endswith("--- cluster ---\npods: pending")
    calls = stubs.calls()
    uninstall = calls.index(starting(calls, "helm uninstall agentpool --namespace e2e-x")[0])
    assert calls[uninstall + 1:] == [
        f"kubectl --namespace e2e-x delete persistentvolumeclaims {CLAIMS_SELECTOR} "
        "--ignore-not-found --wait=false"], "the claims of the suite's Redis go after it"


def test_a_namespace_whose_creation_fails_is_deleted_again(stubs: Stubs) -> None:
    stubs.rules(answer("kubectl get namespace e2e-x *", ""),
                refuse("kubectl apply *", "error: the server was unable to return a response\n"),
                answer("kubectl delete namespace e2e-x *"))
    with pytest.raises(Exception, match="unable to return a response"), suite_namespace(
            stubs.kubectl(), "e2e-x", "restricted", keep=False):
        pytest.fail("the namespace should not have been made")
    assert starting(stubs.calls(), "kubectl delete namespace e2e-x --ignore-not-found")


def secret_of(url: str) -> dict[str, Any]:
    return {"kind": "Secret", "metadata": {"name": "agentpool-redis"},
            "data": {"url": base64.b64encode(url.encode()).decode()}}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_redis_that_does_not_answer_leaves_no_port_forward_and_no_copied_secret(
    stubs: Stubs, tmp_path: Path,
) -> None:
    port = free_port()
    pid_file = tmp_path / "port-forward.pid"
    stubs.rules(
        answer("kubectl --namespace infra get secret agentpool-redis *",
               secret_of("redis://:pw@agentpool-redis.infra.svc:6379/0")),
        answer("kubectl --namespace pools get secret agentpool-redis *", ""),
        answer("kubectl --namespace pools apply --filename -"),
        answer("kubectl --namespace pools delete secret agentpool-redis --ignore-not-found"),
        {**answer("kubectl --namespace infra port-forward *",
                  f"Forwarding from 127.0.0.1:{port} -> 6379\n"), "pid_to": str(pid_file),
         "sleep": 60},
    )
    config = E2EConfig.from_env({"E2E_SKIP_INSTALL": "1", "E2E_NAMESPACE": "pools",
                                 "E2E_RELEASE_NAMESPACE": "infra"})
    with pytest.raises(SetupError) as failed, reach_redis(
            config, stubs.kubectl("infra"), stubs.kubectl("pools"), Waiter(scale=0.02),
            tmp_path / "forward.log"):
        pytest.fail("Redis should not have answered")
    assert str(failed.value).startswith(
        "Redis did not answer PING through the port-forward within 1.2s (last error: "
        f"ConnectionError: Error 111 connecting to 127.0.0.1:{port}. Connection refused.)")
    pid = int(pid_file.read_text())
    try:
        assert gone(pid), "the port-forward outlived the failed set-up"
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    calls = stubs.calls()
    assert not [c for c in calls if "pw" in c], "the password goes to kubectl on stdin only"
    copied = calls.index("kubectl --namespace pools apply --filename -")
    assert calls.index("kubectl --namespace pools delete secret agentpool-redis "
                       "--ignore-not-found") > copied


@pytest.mark.parametrize(("present", "keep", "deleted"), [
    (False, False, True), (True, False, False), (False, True, False)])
def test_a_redis_secret_the_suite_copied_is_deleted_at_the_end(
    stubs: Stubs, tmp_path: Path, redis_server: RedisServer, present: bool, keep: bool,
    deleted: bool,
) -> None:
    secret = secret_of("redis://:pw@agentpool-redis.infra.svc:6379/0")
    stubs.rules(
        answer("kubectl --namespace infra get secret agentpool-redis *", secret),
        answer("kubectl --namespace pools get secret agentpool-redis *",
               secret if present else ""),
        {**answer("kubectl --namespace pools apply --filename -"),
         "stdin_to": str(tmp_path / "applied.json")},
        answer("kubectl --namespace pools delete secret agentpool-redis --ignore-not-found"),
    )
    config = E2EConfig.from_env({"E2E_SKIP_INSTALL": "1", "E2E_NAMESPACE": "pools",
                                 "E2E_RELEASE_NAMESPACE": "infra",
                                 "E2E_REDIS_URL": redis_server.url,
                                 "E2E_KEEP": "1" if keep else "0"})
    with reach_redis(config, stubs.kubectl("infra"), stubs.kubectl("pools"), Waiter(),
                     tmp_path / "forward.log") as endpoint:
        assert endpoint.local_url == redis_server.url
        assert endpoint.access.in_cluster_url == "redis://:pw@agentpool-redis.infra.svc:6379/0"
        during = stubs.calls()
    assert not [c for c in during if " delete " in c]
    if not present:
        copy = json.loads((tmp_path / "applied.json").read_text())
        assert copy["data"] == secret["data"]
    deletions = [c for c in stubs.calls() if " delete secret " in c]
    assert bool(deletions) == deleted


class SilentOperator(LocalOperator):
    """Never answers /healthz."""

    def argv(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


class HealthyOperator(LocalOperator):
    """Answers /healthz, and notes in `log_path` when it is told to stop."""

    def argv(self) -> list[str]:
        return [sys.executable, "-c", f"""
import http.server, signal, sys
def stop(*_):
    print("operator stopped", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", {self.port}), Health).serve_forever()
"""]


def test_a_local_operator_that_never_answers_is_stopped(tmp_path: Path) -> None:
    operator = SilentOperator("e2e-x", "", tmp_path / "operator.log")
    with pytest.raises(SetupError, match="the local operator did not start: timed out after "
                       r"1\.8s waiting for the local operator's /healthz"):
        operator.start(Waiter(scale=0.02))
    assert operator.process is not None
    assert operator.process.poll() is not None, "the operator outlived its failed start"


def test_a_kept_local_run_takes_the_finalizers_off_once_the_operator_stopped(
    stubs: Stubs, tmp_path: Path,
) -> None:
    log = tmp_path / "operator.log"
    pool = {"metadata": {"name": "e2e-demo-abc123", "finalizers": ["kopf.zalando.org/x"]}}
    stubs.rules(
        answer("kubectl --namespace e2e-x get agentpools --selector "
               "e2e.agentpool.dev/suite=true,e2e.agentpool.dev/run=abc123 --output json",
               {"items": [pool]}),
        answer("kubectl --namespace e2e-x patch agentpool e2e-demo-abc123 --type=merge "
               '--patch {"metadata":{"finalizers":null}}'),
    )
    operator = HealthyOperator("e2e-x", "", log)
    kept = Pools(stubs.kubectl("e2e-x"), Waiter(), "abc123")
    with local_operator(operator, Waiter(), kept_pools=kept) as running:
        assert running.process is not None
        pid = running.process.pid
        assert os.getsid(pid) == pid, "in a session of its own: a Ctrl-C does not reach it"
        assert not stubs.calls()
    assert running.process.poll() is not None
    assert "operator stopped" in log.read_text()
    assert [c for c in stubs.calls() if " patch " in c], stubs.calls()


def test_a_local_run_not_kept_leaves_the_finalizers_to_the_operator(
    stubs: Stubs, tmp_path: Path,
) -> None:
    operator = HealthyOperator("e2e-x", "", tmp_path / "operator.log")
    with local_operator(operator, Waiter(), kept_pools=None):
        pass
    assert stubs.calls() == []



# -- whom a run touches, and what it shows first ------------------------------------------------

LIFECYCLE_TEST = "test_e2e_lifecycle.py::test_deleting_the_pool_removes_its_deployment"
DRAIN_TEST = ("test_e2e_eviction.py::"
              "test_a_node_drain_waits_for_the_run_while_the_pool_moves_to_another_node")
PASSWORD = "S3cretPassw0rd"


def installed_release(namespace: str, url: str) -> list[Rule]:
    """E2E_SKIP_INSTALL=1 in chart mode: the release's operator, the CRD and the Redis URL
    Secret are there."""
    deployment = operator_deployment(namespace, namespace)
    return [namespace_exists(namespace),
            answer(f"kubectl --namespace {namespace} get deployment agentpool-operator *",
                   deployment),
            answer(OPERATOR_LIST, {"items": [deployment]}),
            answer(CRD_GET, established_crd()),
            answer(f"kubectl --namespace {namespace} get secret agentpool-redis *",
                   secret_of(url))]


def test_without_kubeconfig_the_suite_is_skipped_even_with_a_kube_config_at_home(
    stubs: Stubs, tmp_path: Path,
) -> None:
    """~/.kube/config (often a work cluster) and a pod's service account are never taken
    by themselves: the suite installs into the cluster."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(stubs.kubeconfig.read_text())
    result = stubs.run_e2e(CRD_TEST, "-rs", unset=("KUBECONFIG",), HOME=str(home),
                           KUBERNETES_SERVICE_HOST="10.96.0.1")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "1 skipped" in output, output
    assert "e2e: KUBECONFIG is not set: skipped" in output, output
    assert stubs.calls() == []


def test_the_report_header_names_the_context_and_api_server(stubs: Stubs) -> None:
    result = stubs.run_e2e(CRD_TEST, "-v", "--collect-only", E2E_NAMESPACE="e2e-x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"e2e: cluster: context {STUB_CONTEXT}, API server {STUB_SERVER} "
            f"(KUBECONFIG={stubs.kubeconfig})") in result.stdout, result.stdout
    assert "e2e: operator=chart (installed by the suite), namespace=e2e-x" in result.stdout
    assert stubs.calls() == ["kubectl config view --minify --output json"], (
        "the header reads the kubeconfig and contacts nothing")


def test_a_kubeconfig_that_names_a_missing_file_fails_in_one_line(
    stubs: Stubs, tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    result = stubs.run_e2e(CRD_TEST, KUBECONFIG=f"{stubs.kubeconfig}{os.pathsep}{missing}")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert f"e2e: KUBECONFIG names {missing}, which is not a file" in output, output
    assert stubs.calls() == [], "no kubectl that would try localhost:8080"


def test_the_node_drain_test_runs_only_when_let(stubs: Stubs) -> None:
    result = stubs.run_e2e(DRAIN_TEST, "-rs")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0 and "1 skipped" in output, output
    assert ("the node-drain test cordons and drains a node of the cluster: it runs only with "
            "E2E_NODE_DRAIN=1, which e2e/kind-up.sh sets") in output, output
    assert stubs.calls() == [], "skipped before any set-up"


def test_teardown_deletes_this_runs_pools_and_no_other_runs(
    stubs: Stubs, tmp_path: Path,
) -> None:
    """Two runs may share a namespace (E2E_SKIP_INSTALL=1 E2E_NAMESPACE=staging): each
    labels its pools with its run, and its teardown selects on that label alone."""
    name = "e2e-scale-abc123"
    stubs.rules(
        {**answer("kubectl --namespace staging apply --filename -"),
         "stdin_to": str(tmp_path / "applied.json")},
        answer("kubectl --namespace staging get agentpools --selector "
               f"{SUITE_LABEL}=true,{RUN_LABEL}=abc123 --output json",
               {"items": [{"metadata": {"name": name}}]}),
        answer(f"kubectl --namespace staging delete agentpool {name} *"),
        answer(f"kubectl --namespace staging get deployment {name} *", ""),
        answer(f"kubectl --namespace staging get pods --selector agentpool.dev/pool={name} "
               "--output json", {"items": []}),
    )
    pools = Pools(stubs.kubectl("staging"), Waiter(), "abc123")
    pools.apply(small_pool(name, "worker:e2e"))
    labels = json.loads((tmp_path / "applied.json").read_text())["metadata"]["labels"]
    assert (labels[SUITE_LABEL], labels[RUN_LABEL]) == ("true", "abc123")
    assert pools.delete_suite_pools() == []
    assert [c for c in stubs.calls() if " delete " in c] == [
        f"kubectl --namespace staging delete agentpool {name} --ignore-not-found --wait=true "
        "--timeout=180s"]


def test_an_earlier_redis_claim_is_refused_before_anything_is_installed(stubs: Stubs) -> None:
    """A claim of the release's Redis left by an earlier install: the suite's Redis would
    mount its data (and the suite would delete it at the end)."""
    stubs.rules(
        answer("helm version --short", "v3.16.0\n"),
        refuse("helm status agentpool --namespace *", "Error: release: not found\n"),
        answer(f"kubectl --namespace e2e-x get persistentvolumeclaims {CLAIMS_SELECTOR} "
               "--output json", {"items": [{"metadata": {"name": "data-agentpool-redis-0"}}]}),
    )
    config = E2EConfig.from_env({"E2E_NAMESPACE": "e2e-x", "E2E_HELM": stubs.helm})
    with pytest.raises(SetupError) as refused, suite_installation(
            config, stubs.kubectl("e2e-x"), lambda: "picture"):
        pytest.fail("the suite went on next to the earlier claim")
    assert str(refused.value) == (
        "PersistentVolumeClaim data-agentpool-redis-0 of an earlier Redis of release agentpool "
        "is in namespace e2e-x: the suite's Redis would mount its data. Delete it if nobody "
        "needs it (kubectl delete pvc --namespace e2e-x data-agentpool-redis-0), or set "
        "E2E_NAMESPACE to another namespace (unset: a fresh one).")
    assert not [c for c in stubs.calls()
                if c.startswith(("helm upgrade", "helm uninstall")) or " delete " in c]


def test_an_earlier_runs_claim_still_being_deleted_is_waited_for(stubs: Stubs) -> None:
    """The teardown of a run just before does not wait for its claims to go: the next run
    waits for them instead of refusing them (or starting a Redis that stays Pending)."""
    ending = {"name": "data-agentpool-redis-0", "deletionTimestamp": "2026-12-07T20:00:00Z"}
    gone = stubs.bin_dir.parent / "claim-gone"
    stubs.rules(
        answer(f"kubectl --namespace e2e-x get persistentvolumeclaims {CLAIMS_SELECTOR} "
               "--output json", {"items": [{"metadata": ending}]}, unless=str(gone)),
        answer("kubectl --namespace e2e-x wait --for=delete persistentvolumeclaims "
               "data-agentpool-redis-0 --timeout=120s", touch=str(gone)),
        *INSTALL_ANSWERS,
    )
    config = E2EConfig.from_env({"E2E_NAMESPACE": "e2e-x", "E2E_HELM": stubs.helm,
                                 "E2E_REDIS_URL": "redis://127.0.0.1:1/0"})
    with suite_installation(config, stubs.kubectl("e2e-x"), lambda: "picture"):
        calls = stubs.calls()
    waited = calls.index("kubectl --namespace e2e-x wait --for=delete persistentvolumeclaims "
                         "data-agentpool-redis-0 --timeout=120s")
    assert waited < calls.index(starting(calls, "helm upgrade --install agentpool")[0]), calls


@pytest.mark.parametrize("keep", [False, True])
def test_the_claims_of_the_suites_redis_go_after_it_unless_kept(
    stubs: Stubs, keep: bool,
) -> None:
    stubs.rules(*INSTALL_ANSWERS)
    config = E2EConfig.from_env({"E2E_NAMESPACE": "e2e-x", "E2E_HELM": stubs.helm,
                                 "E2E_REDIS_URL": "redis://127.0.0.1:1/0",
                                 "E2E_KEEP": "1" if keep else "0"})
    with suite_installation(config, stubs.kubectl("e2e-x"), lambda: "picture"):
        during = stubs.calls()
    assert starting(during, "helm upgrade --install agentpool"), during
    after = stubs.calls()[len(during):]
    assert after == ([] if keep else [
        "helm uninstall agentpool --namespace e2e-x --ignore-not-found",
        f"kubectl --namespace e2e-x delete persistentvolumeclaims {CLAIMS_SELECTOR} "
        "--ignore-not-found --wait=false"])


# -- set-up failures in one line ----------------------------------------------------------------


def test_a_redis_that_never_answers_ping_fails_in_one_line_with_its_last_error(
    stubs: Stubs,
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    stubs.rules(*installed_release("e2e-x", url))
    result = stubs.run_e2e(LIFECYCLE_TEST, E2E_SKIP_INSTALL="1", E2E_NAMESPACE="e2e-x",
                           E2E_REDIS_URL=url, E2E_TIMEOUT_SCALE="0.02")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e: Redis did not answer PING through E2E_REDIS_URL within 1.2s (last error: "
            f"ConnectionError: Error 111 connecting to 127.0.0.1:{port}.") in output, output


def test_a_local_operator_that_exits_at_once_fails_in_one_line_with_its_last_log_line(
    stubs: Stubs, protected_redis: RedisServer,
) -> None:
    """The real agentpool-operator, with a kubeconfig that names no cluster: it exits at
    once. Redis (a real one behind a stand-in port-forward) answers; what the suite set up
    goes again, the claims of its Redis included."""
    assert protected_redis.password is not None
    secret = secret_of(f"redis://:{protected_redis.password}@agentpool-redis.ns1.svc:6379/0")
    rendered = "\n---\n".join(json.dumps({"apiVersion": api, "kind": kind,
                                          "metadata": {"name": "agentpool-redis"}})
                              for api, kind in (("v1", "Service"),
                                                ("apps/v1", "StatefulSet")))
    stubs.rules(
        answer("kubectl get namespace ns1 *", ""),
        answer("kubectl apply --filename -"),
        answer(OPERATOR_LIST, {"items": []}),
        *INSTALL_ANSWERS,
        answer("kubectl --namespace ns1 get secret agentpool-redis *", secret),
        answer("helm template agentpool *", rendered),
        answer("kubectl --namespace ns1 get * agentpool-redis *", ""),
        answer("kubectl --namespace ns1 apply --filename -"),
        answer("kubectl --namespace ns1 rollout status statefulset/agentpool-redis *"),
        answer("kubectl apply --filename - --server-side *"),
        answer(CRD_GET, established_crd()),
        {**answer("kubectl --namespace ns1 port-forward *",
                  f"Forwarding from 127.0.0.1:{protected_redis.port} -> 6379\n"), "sleep": 60},
        answer("kubectl --namespace ns1 delete --filename - *"),
        answer("kubectl delete namespace ns1 *"),
    )
    result = stubs.run_e2e(LIFECYCLE_TEST, E2E_OPERATOR="local", E2E_NAMESPACE="ns1",
                           E2E_TIMEOUT_SCALE="0.2")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert re.search(r"^e2e: the local operator exited with \d+ as it started: \S.* "
                     r"\(log: \S+/operator\.log\)$", output, re.MULTILINE), output
    assert protected_redis.password not in output
    calls = stubs.calls()
    teardown = [c for c in calls if " delete " in c or c.startswith("helm uninstall")]
    assert teardown[-2:] == [
        f"kubectl --namespace ns1 delete persistentvolumeclaims {CLAIMS_SELECTOR} "
        "--ignore-not-found --wait=false",
        "kubectl delete namespace ns1 --ignore-not-found --wait=true --timeout=300s"], calls


def test_a_sentinel_redis_url_is_refused_in_one_line(stubs: Stubs) -> None:
    url = f"redis+sentinel://:{PASSWORD}@redis-sentinel.infra.svc:26379/mymaster/0"
    result = stubs.run_e2e(LIFECYCLE_TEST, E2E_SKIP_INSTALL="1", E2E_NAMESPACE="ns1",
                           E2E_REDIS_URL=url)
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e configuration: E2E_REDIS_URL: redis+sentinel://:***@redis-sentinel.infra.svc"
            ":26379/mymaster/0 is not a redis:// or rediss:// URL: the e2e suite needs a "
            "standalone Redis URL") in " ".join(output.split()), output
    assert PASSWORD not in output
    assert stubs.calls() == []


def test_a_secret_with_a_cluster_url_is_refused_before_a_port_forward(
    stubs: Stubs, tmp_path: Path,
) -> None:
    url = f"redis://:{PASSWORD}@redis-0.infra.svc:6379,redis-1.infra.svc:6379/0"
    stubs.rules(answer("kubectl --namespace e2e-x get secret agentpool-redis *", secret_of(url)))
    config = E2EConfig.from_env({"E2E_NAMESPACE": "e2e-x"})
    with pytest.raises(SetupError) as refused, reach_redis(
            config, stubs.kubectl("e2e-x"), stubs.kubectl("e2e-x"), Waiter(),
            tmp_path / "forward.log"):
        pytest.fail("the suite went on with a URL it cannot forward to")
    assert str(refused.value) == (
        "the Redis URL of Secret agentpool-redis in namespace e2e-x: redis://:***@"
        "redis-0.infra.svc:6379,redis-1.infra.svc:6379/0 names several hosts: the e2e suite "
        "needs a standalone Redis URL (redis:// or rediss://, one host:port), not a Sentinel "
        "or Cluster one")
    assert not [c for c in stubs.calls() if " port-forward " in c]


def test_an_in_cluster_operator_may_use_a_sentinel_secret_next_to_an_external_url(
    stubs: Stubs, tmp_path: Path, redis_server: RedisServer,
) -> None:
    """Chart mode with E2E_REDIS_URL: only the workers and the in-cluster operator read the
    Secret's URL; the suite never parses it."""
    url = "redis+sentinel://:pw@redis-sentinel.infra.svc:26379/mymaster/0"
    stubs.rules(answer("kubectl --namespace e2e-x get secret agentpool-redis *", secret_of(url)))
    config = E2EConfig.from_env({"E2E_NAMESPACE": "e2e-x", "E2E_REDIS_URL": redis_server.url})
    with reach_redis(config, stubs.kubectl("e2e-x"), stubs.kubectl("e2e-x"), Waiter(),
                     tmp_path / "forward.log") as endpoint:
        assert endpoint.access.in_cluster_url == url


# -- secrets in what pytest prints --------------------------------------------------------------


def test_the_reprs_pytest_prints_for_a_failing_test_carry_no_redis_password(
    tmp_path: Path,
) -> None:
    from e2e_cli import AgentpoolCli
    from e2e_install import RedisAccess, RedisEndpoint

    for url in (f"redis://:{PASSWORD}@redis.staging.example:6379/0",
                f"rediss://app:{PASSWORD}@redis.staging.example:6380/2"):
        access = RedisAccess(url)
        for shown in (repr(E2EConfig.from_env({"E2E_REDIS_URL": url})),
                      repr(AgentpoolCli(url, tmp_path)), repr(access),
                      repr(RedisEndpoint(access, url, ("127.0.0.1", 6379)))):
            assert PASSWORD not in shown
            assert ":***@redis.staging.example" in shown, "masked, not left out"


def test_a_failing_tests_report_shows_no_redis_password(stubs: Stubs) -> None:
    """pytest prints the repr of every fixture value a failing test took (e2e_config here)."""
    url = f"redis://:{PASSWORD}@redis.staging.example:6379/0"
    stubs.rules(*installed_release("ns1", url),
                answer("kubectl --namespace ns1 apply --filename -"),
                answer("kubectl --namespace ns1 delete agentpool *"))
    result = stubs.run_e2e("test_e2e_api.py::test_a_pools_queue_cannot_change_once_it_exists",
                           E2E_SKIP_INSTALL="1", E2E_NAMESPACE="ns1", E2E_REDIS_URL=url)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "the API server let a pool move" in output, output
    assert "e2e_config = E2EConfig(" in output, output
    assert not shows_part_of_the_password(output), output


def shows_part_of_the_password(text: str) -> bool:
    """Any six characters of it in a row: pytest cuts long reprs in the middle."""
    return any(PASSWORD[i:i + 6] in text for i in range(len(PASSWORD) - 5))
