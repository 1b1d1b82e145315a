"""The e2e suite's set-up against stand-ins for kubectl and helm (tests/e2e_static/conftest.py):
what it refuses to touch on a cluster it shares, what it removes when a step fails or is
interrupted, and the order of its steps. The fixtures run in a pytest subprocess, as a user
runs them; the set-up steps they are made of run here too."""

from __future__ import annotations

import base64
import json
import os
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
from e2e_pools import Pools
from e2e_stubs import Rule, Stubs, answer, refuse

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


HELM_ANSWERS = [
    answer("helm version --short", "v3.16.0\n"),
    refuse("helm status agentpool --namespace *", "Error: release: not found\n"),
    answer("helm upgrade --install agentpool *"),
    answer("helm uninstall agentpool --namespace * --ignore-not-found"),
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
    stubs.rules(namespace_exists("e2e-x"), *HELM_ANSWERS,
                answer(OPERATOR_LIST, {"items": [operator_deployment("prod", None)]}))
    result = stubs.run_e2e(CRD_TEST, E2E_NAMESPACE="e2e-x",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    one_readable_error(output)
    assert ("e2e: other agentpool operators also serve namespace e2e-x: "
            "prod/agentpool-operator.") in output, output
    assert not starting(stubs.calls(), "helm"), stubs.calls()


def test_an_operator_check_that_cannot_run_is_reported(stubs: Stubs) -> None:
    """A namespaced user may not list Deployments everywhere: a warning, then the run goes
    on (here to a CRD the cluster refuses, whose release is then uninstalled)."""
    stubs.rules(namespace_exists("e2e-x"), *HELM_ANSWERS,
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
                answer("helm uninstall agentpool --namespace e2e-x --ignore-not-found"))
    result = stubs.run_e2e(CRD_TEST, E2E_NAMESPACE="e2e-x",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "KeyboardInterrupt" in output, output
    calls = stubs.calls()
    assert starting(calls, "helm uninstall agentpool --namespace e2e-x"), calls
    assert calls.index(starting(calls, "helm upgrade")[0]) < calls.index(
        starting(calls, "helm uninstall")[0])


def test_a_redis_that_never_rolls_out_is_uninstalled_with_a_picture(stubs: Stubs) -> None:
    stubs.rules(*HELM_ANSWERS,
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
    assert starting(stubs.calls(), "helm uninstall agentpool --namespace e2e-x")


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
    with pytest.raises(AssertionError, match="Redis to answer PING through the port-forward"), \
            reach_redis(config, stubs.kubectl("infra"), stubs.kubectl("pools"),
                        Waiter(scale=0.02), tmp_path / "forward.log"):
        pytest.fail("Redis should not have answered")
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
    with pytest.raises(AssertionError, match="the local operator's /healthz"):
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
               "e2e.agentpool.dev/suite=true --output json", {"items": [pool]}),
        answer("kubectl --namespace e2e-x patch agentpool e2e-demo-abc123 --type=merge "
               '--patch {"metadata":{"finalizers":null}}'),
    )
    operator = HealthyOperator("e2e-x", "", log)
    kept = Pools(stubs.kubectl("e2e-x"), Waiter())
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

