"""The e2e suite's own code, checked without a cluster: it collects, its pools are valid, its
helpers read kubectl's formats right. Nothing here stands in for cluster behaviour."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from e2e_config import DEFAULT_OPERATOR_IMAGE, ConfigError, E2EConfig, ImageRef
from e2e_manifests import (
    EVICTION_TASK,
    LONG_TASK_SEEDS,
    ROLLOUT_TASK,
    SUITE_LABEL,
    applied_pools,
    demo_pool,
    invalid_pools,
    load_example,
    recovery_pool,
    recovery_tasks,
    rollout_pool,
    scale_pool,
    scale_tasks,
    small_pool,
)
from e2e_stubs import Stubs, answer, refuse
from pydantic import ValidationError

from agentpool.crd import open_api_schema
from agentpool.models import CEL_RULES, QUEUE_PATTERN, AgentPoolSpec

REPO = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/agentpool/worker:e2e"

EXPECTED_E2E_TESTS = {
    "e2e/test_e2e_api.py::test_crd_is_established_with_printer_columns_and_cel_rules",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message[min-above-max]",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message"
    "[submits-to-a-queue-twice]",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message"
    "[neither-handler-nor-command]",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message"
    "[cron-out-of-range]",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message"
    "[volume-without-source]",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message"
    "[mount-on-scratch]",
    "e2e/test_e2e_api.py::test_invalid_pool_is_refused_with_a_readable_message"
    "[url-with-credentials]",
    "e2e/test_e2e_api.py::test_a_pools_queue_cannot_change_once_it_exists",
    "e2e/test_e2e_demo_pool.py::test_tasks_submitted_with_the_cli_all_finish",
    "e2e/test_e2e_demo_pool.py::test_get_agentpools_shows_queue_replicas_and_tasks",
    "e2e/test_e2e_demo_pool.py::test_status_reports_the_pool_ready",
    "e2e/test_e2e_demo_pool.py::test_worker_pods_spread_by_the_pools_own_label",
    "e2e/test_e2e_scaling.py::"
    "test_backlog_scales_up_and_empty_queue_scales_down_without_interrupting_tasks",
    "e2e/test_e2e_recovery.py::test_deleted_busy_pod_has_its_tasks_requeued_and_finished",
    "e2e/test_e2e_eviction.py::test_a_busy_pod_refuses_eviction_until_its_run_ends",
    "e2e/test_e2e_eviction.py::"
    "test_a_node_drain_waits_for_the_run_while_the_pool_moves_to_another_node",
    "e2e/test_e2e_rollout.py::test_a_rollout_lets_the_old_pod_finish_its_run",
    "e2e/test_e2e_lifecycle.py::test_deleting_the_pool_removes_its_deployment",
    "e2e/test_e2e_lifecycle.py::"
    "test_worker_pods_run_under_the_restricted_pod_security_standard",
    "e2e/test_e2e_lifecycle.py::test_two_pools_on_one_queue_are_degraded_until_one_goes",
    "e2e/test_e2e_lifecycle.py::test_a_pool_with_a_task_command_runs_its_program",
    "e2e/test_e2e_lifecycle.py::test_a_pool_whose_image_cannot_be_pulled_says_why",
    "e2e/test_e2e_lifecycle.py::test_a_schedule_submits_a_task_that_the_pool_runs",
    "e2e/test_e2e_lifecycle.py::"
    "test_a_pools_tenant_weights_reach_its_queue_and_follow_an_edit",
    "e2e/test_e2e_work_together.py::"
    "test_runs_of_two_pods_never_hold_more_slots_than_max_concurrent",
    "e2e/test_e2e_work_together.py::test_a_pools_runs_hand_tasks_to_another_pool",
}


@pytest.fixture(scope="module")
def collections() -> dict[str, subprocess.CompletedProcess[str]]:
    """`pytest --collect-only e2e` with `-m e2e` and with the default selection, run side by
    side in subprocesses (each pays pytest's start-up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2E_")}
    runs = {name: subprocess.Popen(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args, "e2e"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        for name, args in (("e2e", ("-m", "e2e")), ("default", ()))}
    done = {}
    for name, process in runs.items():
        out, err = process.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def test_e2e_tests_collect_under_the_e2e_marker(
    collections: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = collections["e2e"]
    assert result.returncode == 0, result.stdout + result.stderr
    collected = {line for line in result.stdout.splitlines() if "::" in line}
    assert collected == EXPECTED_E2E_TESTS


def test_default_selection_leaves_e2e_out(
    collections: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = collections["default"]
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"{len(EXPECTED_E2E_TESTS)} deselected" in result.stdout


# -- pools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", applied_pools(IMAGE), ids=lambda p: p["metadata"]["name"])
def test_pools_the_suite_applies_pass_the_models_and_the_crd_schema(pool: dict[str, Any]) -> None:
    spec = AgentPoolSpec.model_validate(pool["spec"])
    assert spec.model_dump(by_alias=True, exclude_unset=True, mode="json") == pool["spec"], (
        "the pool sets a field the model does not know (the API server would prune it)")
    jsonschema.Draft7Validator(open_api_schema()).validate(pool)
    assert spec.worker.image == IMAGE
    assert spec.worker.image_pull_policy == "IfNotPresent"
    assert pool["metadata"]["labels"][SUITE_LABEL] == "true"
    queue = spec.queue_name(pool["metadata"]["name"])
    assert re.match(QUEUE_PATTERN, queue)


def test_the_demo_pool_is_the_example_with_only_the_image_name_and_queue_changed() -> None:
    """Named for the run: a namespace or Redis shared with the quickstart keeps its pool and
    queue `demo`."""
    example, applied = load_example(), demo_pool("e2e-demo-abc123", IMAGE)
    assert example["metadata"]["name"] == example["spec"]["queue"] == "demo"
    assert applied["metadata"]["name"] == applied["spec"]["queue"] == "e2e-demo-abc123"
    assert applied["metadata"]["labels"][SUITE_LABEL] == "true"
    del applied["spec"]["worker"]["image"], example["spec"]["worker"]["image"]
    del applied["spec"]["worker"]["imagePullPolicy"]
    del applied["spec"]["queue"], example["spec"]["queue"]
    assert applied["spec"] == example["spec"]


@pytest.mark.parametrize("invalid", invalid_pools(IMAGE), ids=lambda p: p.case)
def test_invalid_pools_fail_the_models_with_the_cel_message(invalid: Any) -> None:
    assert invalid.message in {rule.message for rule in CEL_RULES}
    with pytest.raises(ValidationError) as error:
        AgentPoolSpec.model_validate(invalid.manifest["spec"])
    assert invalid.message in str(error.value)
    # The OpenAPI part of the schema accepts them: the refusal can only come from the CEL
    # rule, whose message the e2e test expects in kubectl's error.
    jsonschema.Draft7Validator(open_api_schema()).validate(invalid.manifest)


def test_long_scaling_tasks_outlast_drain_seconds_but_not_the_task_timeout() -> None:
    """Only a scale-down that waits for the runs to end spares them; the timeout never
    cuts one short."""
    worker = AgentPoolSpec.model_validate(scale_pool("s", IMAGE)["spec"]).worker
    long = [t for t in scale_tasks() if t.get("seed") in LONG_TASK_SEEDS]
    assert worker.drain_seconds < min(float(t["mean_seconds"]) for t in long) / 2
    longest = max(10 * float(t["mean_seconds"]) for t in scale_tasks())
    assert worker.task_timeout_seconds >= longest
    assert len({t["seed"] for t in scale_tasks() if "seed" in t}) == len(LONG_TASK_SEEDS)


def test_the_eviction_task_outlasts_drain_seconds_but_not_the_task_timeout() -> None:
    worker = AgentPoolSpec.model_validate(small_pool("s", IMAGE)["spec"]).worker
    mean = float(EVICTION_TASK["mean_seconds"])
    assert worker.drain_seconds < mean / 2
    assert worker.task_timeout_seconds >= 10 * mean
    assert worker.protect_busy_pods


def test_the_rollout_task_outlasts_a_pod_start_and_the_pool_waits_for_it() -> None:
    """The rollout pool leaves drainSeconds to its default: the old pod may take as long as
    the task's timeout, which the task never reaches."""
    pool = rollout_pool("r", IMAGE)
    assert "drainSeconds" not in pool["spec"]["worker"]
    worker = AgentPoolSpec.model_validate(pool["spec"]).worker
    mean = float(ROLLOUT_TASK["mean_seconds"])
    assert worker.stop_seconds == worker.task_timeout_seconds >= 10 * mean


def test_recovery_tasks_outnumber_one_pod_and_fit_the_pool() -> None:
    spec = AgentPoolSpec.model_validate(recovery_pool("r", IMAGE)["spec"])
    slots = spec.worker.concurrency * spec.scaling.max_replicas
    assert spec.worker.concurrency < len(recovery_tasks()) <= slots
    # a deleted pod waits for its runs rather than handing them back: only the operator can
    assert spec.worker.drain_seconds >= 10 * max(t["mean_seconds"] for t in recovery_tasks())


# -- configuration ----------------------------------------------------------------------------


def test_configuration_defaults() -> None:
    config = E2EConfig.from_env({})
    assert config.operator_mode == "chart"
    assert config.installs_chart and not config.installs_redis_only
    assert config.namespace is None
    assert config.release == "agentpool"
    assert config.operator_image == DEFAULT_OPERATOR_IMAGE
    assert config.timeout_scale == 1
    assert not config.node_drain, "the drain test cordons a node: only when let"


def test_local_mode_with_an_installed_release_elsewhere() -> None:
    config = E2EConfig.from_env({"E2E_OPERATOR": "local", "E2E_SKIP_INSTALL": "1",
                                 "E2E_NAMESPACE": "pools", "E2E_RELEASE_NAMESPACE": "infra",
                                 "E2E_HELM_ARGS": "--set a=b --set 'c=d e'"})
    assert not config.installs_chart and not config.installs_redis_only
    assert config.release_namespace("pools") == "infra"
    assert config.helm_args == ("--set", "a=b", "--set", "c=d e")


@pytest.mark.parametrize(("env", "complaint"), [
    ({"E2E_OPERATOR": "cluster"}, "E2E_OPERATOR=cluster"),
    ({"E2E_SKIP_INSTALL": "1"}, "E2E_NAMESPACE"),
    ({"E2E_SKIP_INSTALL": "maybe"}, "use 1 or 0"),
    ({"E2E_RELEASE_NAMESPACE": "infra"}, "needs E2E_SKIP_INSTALL=1"),
    ({"E2E_NAMESPACE": "Not_A_Name"}, "not a Kubernetes name"),
    ({"E2E_OPERATOR_IMAGE": "reg/op@sha256:00"}, "not a digest"),
    ({"E2E_TIMEOUT_SCALE": "fast"}, "E2E_TIMEOUT_SCALE"),
    ({"E2E_NODE_DRAIN": "sure"}, "E2E_NODE_DRAIN=sure: use 1 or 0"),
    ({"E2E_REDIS_URL": "redis+sentinel://:hunter2@s1:26379,s2:26379/mymaster/0"},
     "not a redis:// or rediss:// URL: the e2e suite needs a standalone Redis URL"),
    ({"E2E_REDIS_URL": "rediss+cluster://:hunter2@r1:6379,r2:6379"}, "standalone Redis URL"),
    ({"E2E_REDIS_URL": "redis://:hunter2@r1:6379,r2:6379/0"}, "names several hosts"),
])
def test_bad_configuration_is_one_readable_error(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)) as error:
        E2EConfig.from_env(env)
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(("image", "expected"), [
    ("ghcr.io/agentpool/operator:e2e", ("ghcr.io/agentpool/operator", "e2e")),
    ("localhost:5000/operator", ("localhost:5000/operator", "latest")),
    ("localhost:5000/operator:v1", ("localhost:5000/operator", "v1")),
])
def test_image_references_split_for_the_chart(image: str, expected: tuple[str, str]) -> None:
    ref = ImageRef.parse(image, "E2E_OPERATOR_IMAGE")
    assert (ref.repository, ref.tag) == expected


# -- fixtures failing -------------------------------------------------------------------------

def test_a_crd_the_cluster_refuses_fails_the_suite_with_one_readable_message(
    stubs: Stubs, tmp_path: Path,
) -> None:
    """A full run applies crds/ of this checkout (after installing the chart, which it then
    uninstalls); an API server that refuses it fails the suite in one line."""
    stubs.rules(
        answer("kubectl get namespace e2e-offline --output json --ignore-not-found",
               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "e2e-offline"}}),
        answer("kubectl get deployments --all-namespaces *", {"items": []}),
        answer("helm version --short", "v3.16.0\n"),
        refuse("helm status agentpool --namespace e2e-offline", "Error: release: not found\n"),
        answer("helm upgrade --install agentpool *"),
        answer("helm uninstall agentpool --namespace e2e-offline --ignore-not-found"),
        answer("kubectl --namespace e2e-offline get persistentvolumeclaims *", {"items": []}),
        answer("kubectl --namespace e2e-offline delete persistentvolumeclaims *"),
        {**refuse("kubectl apply --filename - --server-side *",
                  'Error from server (Forbidden): customresourcedefinitions.apiextensions.k8s.io '
                  '"agentpools.agentpool.dev" is forbidden: User "dev" cannot patch resource '
                  '"customresourcedefinitions" at the cluster scope\n'),
         "stdin_to": str(tmp_path / "applied.yaml")},
    )
    test = "test_e2e_api.py::test_crd_is_established_with_printer_columns_and_cel_rules"
    result = stubs.run_e2e(test, E2E_NAMESPACE="e2e-offline",
                           E2E_REDIS_URL="redis://127.0.0.1:1/0")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output, output
    assert ("e2e: cannot apply the AgentPool CRD (crds/agentpool.dev_agentpools.yaml): "
            "`kubectl apply --filename - --server-side --force-conflicts --field-manager "
            "agentpool-e2e` exited 1: Error from server (Forbidden): ") in output, output
    assert "Traceback" not in output and "CommandError" not in output, output
    assert "raise " not in output, "no source lines of the fixture or of e2e_kube"
    assert (tmp_path / "applied.yaml").read_text() == (
        REPO / "crds" / "agentpool.dev_agentpools.yaml").read_text()
    assert stubs.calls()[-2] == (
        "helm uninstall agentpool --namespace e2e-offline --ignore-not-found")
    assert stubs.calls()[-1].startswith(
        "kubectl --namespace e2e-offline delete persistentvolumeclaims --selector ")


def test_the_local_operator_takes_no_operator_setting_from_the_shell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2e_install import LocalOperator

    monkeypatch.setenv("AGENTPOOL_OPERATOR_PER_POOL_CREDENTIALS", "false")
    monkeypatch.setenv("AGENTPOOL_OPERATOR_NAMESPACES", "production")
    env = LocalOperator("agentpool-e2e-x", "redis:6379=127.0.0.1:1", tmp_path / "log").env()
    assert "AGENTPOOL_OPERATOR_PER_POOL_CREDENTIALS" not in env
    assert env["AGENTPOOL_OPERATOR_NAMESPACES"] == "agentpool-e2e-x"
    assert env["PATH"] == os.environ["PATH"]
