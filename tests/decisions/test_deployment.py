from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from merge_patch import merge_patch
from pydantic import ValidationError

from agentpool.models import AgentPoolSpec
from agentpool.ratelimit import LimitConfig, decode_limits
from agentpool_operator.deployment import (
    CREDENTIALS_VERSION,
    POD_METADATA_KEYS,
    POOL_LABEL,
    PROBE_KILL_GRACE_SECONDS,
    WORKER_CONTAINER,
    borrowed_account,
    deployment_drift,
    desired_deployment,
    replayed,
)
from agentpool_worker.command import COMMAND_ENV, command_settings
from agentpool_worker.handlers import load_handler
from agentpool_worker.settings import load_settings

POOL = "demo"
NAMESPACE = "agents"


def make_spec(**worker: Any) -> AgentPoolSpec:
    return AgentPoolSpec.model_validate(
        {
            "redis": {"urlSecretRef": {"name": "agentpool-redis", "key": "url"}},
            "worker": {
                "image": "ghcr.io/agentpool/worker:0.1.0",
                "handler": "agentpool_worker.builtin:simulated_agent",
                **worker,
            },
        }
    )


def render(spec: AgentPoolSpec | None = None, **kwargs: Any) -> dict[str, Any]:
    return desired_deployment(POOL, NAMESPACE, spec or make_spec(), **kwargs)


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    worker: dict[str, Any]
    (worker,) = pod_spec(deployment)["containers"]
    assert worker["name"] == WORKER_CONTAINER
    return worker


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment)["env"]}


def as_returned_by_the_api_server(desired: dict[str, Any]) -> dict[str, Any]:
    """The Deployment as a GET returns it: defaults in, empties out, quantities canonical."""
    actual = copy.deepcopy(desired)
    actual["metadata"].update(
        uid="0a1b", resourceVersion="42", generation=3, creationTimestamp="2026-01-01T00:00:00Z"
    )
    actual["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "3"
    actual["metadata"]["labels"]["team"] = "agents"
    spec = actual["spec"]
    spec.update(replicas=4, revisionHistoryLimit=10, progressDeadlineSeconds=600)
    template = spec["template"]
    template["metadata"].setdefault("annotations", {})["kubectl.kubernetes.io/restartedAt"] = (
        "2026-01-01")
    pod = template["spec"]
    for volume in pod["volumes"]:
        for source in ("configMap", "secret", "projected", "downwardAPI"):
            if source in volume:
                volume[source].setdefault("defaultMode", 420)
    pod.update(
        restartPolicy="Always",
        dnsPolicy="ClusterFirst",
        schedulerName="default-scheduler",
    )
    for c in pod["containers"]:
        c.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            c[probe]["initialDelaySeconds"] = 0
        for entry in c["env"]:
            if entry.get("value") == "":
                del entry["value"]
    canonical_quantities(pod)
    actual["status"] = {"replicas": 4, "readyReplicas": 4, "observedGeneration": 3}
    return actual


CANONICAL = {"1000m": "1", "1024Mi": "1Gi", "1024Ki": "1Mi", 2: "2"}


def canonical_quantities(node: Any, key: str = "") -> None:
    """Rewrite, in place, every quantity of a pod spec in the API server's canonical form:
    resource lists (of containers, init containers, volume claim templates), emptyDir
    sizeLimit, resourceFieldRef divisor."""
    if isinstance(node, list):
        for item in node:
            canonical_quantities(item, key)
    elif isinstance(node, dict):
        for name, value in node.items():
            if isinstance(value, dict | list):
                canonical_quantities(value, name)
            elif key in ("limits", "requests") or name in ("sizeLimit", "divisor"):
                node[name] = CANONICAL.get(value, value)


def test_name_labels_and_selector() -> None:
    deployment = render()
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["kind"] == "Deployment"
    assert deployment["metadata"]["name"] == POOL
    assert deployment["metadata"]["namespace"] == NAMESPACE
    labels = {
        "app.kubernetes.io/name": "agentpool-worker",
        "app.kubernetes.io/instance": POOL,
        "app.kubernetes.io/managed-by": "agentpool-operator",
        POOL_LABEL: POOL,
    }
    assert deployment["metadata"]["labels"] == labels
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    assert deployment["spec"]["selector"] == {"matchLabels": {POOL_LABEL: POOL}}


def test_replicas_only_at_creation() -> None:
    assert "replicas" not in render()["spec"]
    assert render(initial_replicas=3)["spec"]["replicas"] == 3


def test_owner_reference_makes_the_pool_the_controller() -> None:
    owner = {
        "apiVersion": "agentpool.dev/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": POOL, "namespace": NAMESPACE, "uid": "u-1"},
    }
    (ref,) = render(owner=owner)["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "agentpool.dev/v1alpha1",
        "kind": "AgentPool",
        "name": POOL,
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert "ownerReferences" not in render()["metadata"]


def test_redis_url_from_the_secret() -> None:
    env = env_of(render())
    assert env["AGENTPOOL_REDIS_URL"] == {
        "name": "AGENTPOOL_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "agentpool-redis", "key": "url"}},
    }


def test_redis_url_as_a_value() -> None:
    spec = AgentPoolSpec.model_validate(
        {"redis": {"url": "redis://redis:6379/0"}, "worker": {"image": "i", "handler": "m:f"}}
    )
    assert env_of(render(spec))["AGENTPOOL_REDIS_URL"] == {
        "name": "AGENTPOOL_REDIS_URL",
        "value": "redis://redis:6379/0",
    }


def test_replicated_durability_reaches_the_workers_and_none_adds_nothing() -> None:
    replicated = AgentPoolSpec.model_validate({
        "redis": {"url": "redis+sentinel://s1:26379/mymaster", "durability": "replicated"},
        "worker": {"image": "i", "handler": "m:f"},
    })
    assert env_of(render(replicated))["AGENTPOOL_DURABILITY"] == {
        "name": "AGENTPOOL_DURABILITY", "value": "replicated"}
    assert "AGENTPOOL_DURABILITY" not in env_of(render())


def test_worker_settings_and_downward_api() -> None:
    env = env_of(render(make_spec(concurrency=8, taskTimeoutSeconds=30, maxAttempts=5)))
    values = {name: e.get("value") for name, e in env.items()}
    assert values["AGENTPOOL_QUEUE"] == POOL
    assert values["AGENTPOOL_HANDLER"] == "agentpool_worker.builtin:simulated_agent"
    assert values["AGENTPOOL_CONCURRENCY"] == "8"
    assert values["AGENTPOOL_TASK_TIMEOUT_SECONDS"] == "30"
    assert values["AGENTPOOL_MAX_ATTEMPTS"] == "5"
    assert values["AGENTPOOL_DRAIN_SECONDS"] == "30", "by default, as long as a run may last"
    assert values["AGENTPOOL_PORT"] == "8080"
    assert env["AGENTPOOL_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    namespace_ref = env["AGENTPOOL_POD_NAMESPACE"]["valueFrom"]["fieldRef"]
    assert namespace_ref["fieldPath"] == "metadata.namespace"


def test_a_task_command_runs_through_the_workers_command_handler() -> None:
    program = [sys.executable, "/app/agent.py", "--model", "modèle-4"]
    spec = AgentPoolSpec.model_validate({
        "redis": {"url": "redis://redis:6379"},
        "worker": {"image": "ghcr.io/me/agent:1", "taskCommand": program},
    })
    values = {name: e.get("value") for name, e in env_of(render(spec)).items()}
    handler = load_handler(values["AGENTPOOL_HANDLER"])
    assert handler.hooks.startup is not None
    worker_sees = command_settings({COMMAND_ENV: values[COMMAND_ENV]})
    assert worker_sees.argv == tuple(program)
    assert "AGENTPOOL_TASK_COMMAND" not in env_of(render())


def test_user_env_comes_last_and_replaces_ours_of_the_same_name() -> None:
    deployment = render(
        make_spec(
            env=[{"name": "AGENTPOOL_CONCURRENCY", "value": "2"}, {"name": "X", "value": "1"}]
        )
    )
    names = [e["name"] for e in container(deployment)["env"]]
    assert names.count("AGENTPOOL_CONCURRENCY") == 1
    assert names[-2:] == ["AGENTPOOL_CONCURRENCY", "X"]
    assert env_of(deployment)["AGENTPOOL_CONCURRENCY"]["value"] == "2"


def test_restricted_security_context() -> None:
    deployment = render()
    pod = pod_spec(deployment)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(deployment)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["readOnlyRootFilesystem"] is True


def test_no_kubernetes_token_in_the_pods_unless_asked() -> None:
    assert pod_spec(render())["automountServiceAccountToken"] is False
    spec = make_spec(serviceAccountName="cluster-agent", automountServiceAccountToken=True)
    assert pod_spec(render(spec))["automountServiceAccountToken"] is True


def test_a_pool_may_not_borrow_a_protected_service_account() -> None:
    protected = ("ap/agentpool-operator", "ap/agentpool-console")
    borrowing = make_spec(serviceAccountName="agentpool-operator")
    refusal = borrowed_account("ap", borrowing, protected)
    assert refusal is not None and refusal.startswith(
        "spec.worker.serviceAccountName: agentpool-operator is the ServiceAccount")
    assert borrowed_account("team-a", borrowing, protected) is None, "another namespace's"
    assert borrowed_account("ap", make_spec(serviceAccountName="agents"), protected) is None
    assert borrowed_account("ap", make_spec(), protected) is None


def test_a_deployment_that_mounts_the_token_gets_it_turned_off() -> None:
    desired = render()
    actual = as_returned_by_the_api_server(desired)
    del pod_spec(actual)["automountServiceAccountToken"]
    assert deployment_drift(desired, actual) == {
        "spec": {"template": {"spec": {"automountServiceAccountToken": False}}}}


def test_port_and_probes() -> None:
    worker = container(render())
    assert worker["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"]["port"] == "http"
        assert worker[probe]["periodSeconds"] > 0
        assert worker[probe]["failureThreshold"] >= 1


@pytest.mark.parametrize("worker", [
    {},
    {"taskTimeoutSeconds": 604800},
    {"taskTimeoutSeconds": 1, "drainSeconds": 604800},
    {"drainSeconds": 0, "concurrency": 1000, "maxAttempts": 100},
])
def test_the_worker_accepts_the_settings_the_operator_gives_it(worker: dict[str, Any]) -> None:
    """Every bound of the pool's fields is within the worker's own: a pool the API server
    accepts never makes its workers refuse their configuration (a crash loop)."""
    spec = make_spec(**worker)
    env = {name: e["value"] for name, e in env_of(render(spec)).items() if "value" in e}
    settings = load_settings({**env, "AGENTPOOL_REDIS_URL": "redis://redis:6379/0"})
    assert settings.drain_seconds == spec.worker.stop_seconds
    assert settings.task_timeout_seconds == spec.worker.task_timeout_seconds


def test_grace_period_covers_the_drain() -> None:
    assert pod_spec(render(make_spec(drainSeconds=120)))["terminationGracePeriodSeconds"] == 135


def test_a_stopped_pod_gets_as_long_as_a_run_may_last_unless_told_otherwise() -> None:
    """A rollout's or a deletion's SIGTERM cuts no run short by default: the worker waits up to
    taskTimeoutSeconds (no run lasts longer), and the kubelet waits for the worker."""
    default = render(make_spec(taskTimeoutSeconds=1800))
    assert pod_spec(default)["terminationGracePeriodSeconds"] == 1815
    assert env_of(default)["AGENTPOOL_DRAIN_SECONDS"]["value"] == "1800"
    bounded = render(make_spec(taskTimeoutSeconds=1800, drainSeconds=0))
    assert pod_spec(bounded)["terminationGracePeriodSeconds"] == 15
    assert env_of(bounded)["AGENTPOOL_DRAIN_SECONDS"]["value"] == "0"


@pytest.mark.parametrize("drain", [1, 60, 3600])
def test_a_wedged_worker_is_killed_within_seconds_whatever_the_drain(drain: int) -> None:
    deployment = render(make_spec(drainSeconds=drain))
    worker = container(deployment)
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == drain + 15
    for probe in ("livenessProbe", "startupProbe"):
        assert worker[probe]["terminationGracePeriodSeconds"] == PROBE_KILL_GRACE_SECONDS
    assert PROBE_KILL_GRACE_SECONDS <= 10
    assert "terminationGracePeriodSeconds" not in worker["readinessProbe"], (
        "the API server refuses it on a readiness probe"
    )


def test_rolling_update_never_removes_a_pod_first() -> None:
    assert render()["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
    }


@pytest.mark.parametrize(
    ("image", "policy", "expected"),
    [
        ("ghcr.io/agentpool/worker:0.1.0", None, "IfNotPresent"),
        ("ghcr.io/agentpool/worker", None, "Always"),
        ("registry:5000/worker:latest", None, "Always"),
        ("registry:5000/worker", None, "Always"),
        ("worker@sha256:abc", None, "IfNotPresent"),
        ("worker:1", "Always", "Always"),
    ],
)
def test_image_pull_policy(image: str, policy: str | None, expected: str) -> None:
    worker = container(render(make_spec(image=image, imagePullPolicy=policy)))
    assert worker["imagePullPolicy"] == expected


SCHEDULING: dict[str, Any] = {
    "nodeSelector": {"pool": "agents"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "serviceAccountName": "agents",
    "imagePullSecrets": [{"name": "ghcr"}],
    "priorityClassName": "batch",
    "runtimeClassName": "gvisor",
    "topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"team": "agents"}},
    }],
}


def test_scheduling_resources_and_env_from_pass_through() -> None:
    deployment = render(
        make_spec(
            **SCHEDULING,
            resources={"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}},
            envFrom=[{"secretRef": {"name": "api-keys"}}],
        )
    )
    pod = pod_spec(deployment)
    for key, value in SCHEDULING.items():
        assert pod[key] == value
    worker = container(deployment)
    assert worker["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}}
    assert worker["envFrom"] == [{"secretRef": {"name": "api-keys"}}]


def test_a_spread_constraint_without_selector_spreads_the_pools_pods() -> None:
    by_zone = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
               "whenUnsatisfiable": "DoNotSchedule"}
    (by_team,) = SCHEDULING["topologySpreadConstraints"]
    spec = make_spec(topologySpreadConstraints=[by_zone, by_team])
    (own, given) = pod_spec(render(spec))["topologySpreadConstraints"]
    assert own == {**by_zone, "labelSelector": {"matchLabels": {POOL_LABEL: POOL}}}
    assert given == by_team
    assert "labelSelector" not in spec.worker.topology_spread_constraints[0]  # type: ignore[index]


def test_a_hand_edited_spread_constraint_is_put_back() -> None:
    spec = make_spec(topologySpreadConstraints=[
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
         "whenUnsatisfiable": "ScheduleAnyway"}])
    desired = render(spec)
    assert deployment_drift(desired, as_returned_by_the_api_server(desired)) is None
    actual = as_returned_by_the_api_server(desired)
    pod_spec(actual)["topologySpreadConstraints"][0]["maxSkew"] = 5
    patch = deployment_drift(desired, actual)
    assert patch == {"spec": {"template": {"spec": {
        "topologySpreadConstraints": pod_spec(desired)["topologySpreadConstraints"]}}}}


def test_unset_pass_through_fields_are_absent() -> None:
    deployment = render()
    for key in SCHEDULING:
        assert key not in pod_spec(deployment)
    assert "resources" not in container(deployment)
    assert "envFrom" not in container(deployment)


@pytest.mark.parametrize("version", ["1.30", "1.36"])
@pytest.mark.parametrize("strict", [False, True])
def test_manifest_is_a_valid_deployment(strict: bool, version: str) -> None:
    spec = make_spec(**SCHEDULING, resources={"limits": {"cpu": 2}}, env=[{"name": "A"}])
    kubernetes_validate.validate(render(spec, initial_replicas=1), version, strict=strict)


def test_strict_validation_checks_the_probe_fields() -> None:
    deployment = render(initial_replicas=1)
    probe = container(deployment)["livenessProbe"]
    probe["terminationGracePeriodSecond"] = probe.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


# --- drift -----------------------------------------------------------------------------------

FULL_SPEC = make_spec(
    **SCHEDULING,
    resources={"limits": {"cpu": "1000m", "memory": "1024Mi"}, "requests": {"cpu": 2}},
    env=[{"name": "EMPTY", "value": ""}, {"name": "B", "value": "2"}],
    envFrom=[{"configMapRef": {"name": "settings"}}],
)


@pytest.mark.parametrize("spec", [make_spec(), FULL_SPEC])
def test_no_drift_when_identical(spec: AgentPoolSpec) -> None:
    desired = render(spec)
    assert deployment_drift(desired, copy.deepcopy(desired)) is None


@pytest.mark.parametrize("spec", [make_spec(), FULL_SPEC])
def test_api_server_defaults_are_not_drift(spec: AgentPoolSpec) -> None:
    desired = render(spec)
    assert deployment_drift(desired, as_returned_by_the_api_server(desired)) is None


def test_replicas_are_not_drift() -> None:
    desired = render(initial_replicas=1)
    actual = as_returned_by_the_api_server(desired)
    actual["spec"]["replicas"] = 7
    assert deployment_drift(render(), actual) is None


def test_hand_edited_image_is_put_back() -> None:
    desired = render()
    actual = as_returned_by_the_api_server(desired)
    container(actual)["image"] = "evil:latest"
    patch = deployment_drift(desired, actual)
    assert patch is not None
    assert patch["spec"]["template"]["spec"]["containers"] == pod_spec(desired)["containers"]
    assert "replicas" not in patch["spec"]
    assert "selector" not in patch["spec"]


def test_hand_added_or_changed_env_is_put_back() -> None:
    desired = render()
    added = as_returned_by_the_api_server(desired)
    container(added)["env"].append({"name": "DEBUG", "value": "1"})
    changed = as_returned_by_the_api_server(desired)
    container(changed)["env"][1]["value"] = "other-queue"
    for actual in (added, changed):
        patch = deployment_drift(desired, actual)
        assert patch is not None
        (worker,) = patch["spec"]["template"]["spec"]["containers"]
        assert worker["env"] == container(desired)["env"]


def test_a_deployment_without_the_probe_grace_gets_it() -> None:
    desired = render()
    actual = as_returned_by_the_api_server(desired)
    del container(actual)["livenessProbe"]["terminationGracePeriodSeconds"]
    patch = deployment_drift(desired, actual)
    assert patch is not None
    (worker,) = patch["spec"]["template"]["spec"]["containers"]
    assert worker["livenessProbe"]["terminationGracePeriodSeconds"] == PROBE_KILL_GRACE_SECONDS


def test_spec_change_shows_as_drift() -> None:
    actual = as_returned_by_the_api_server(render())
    patch = deployment_drift(render(make_spec(concurrency=9)), actual)
    assert patch is not None
    (worker,) = patch["spec"]["template"]["spec"]["containers"]
    assert {"name": "AGENTPOOL_CONCURRENCY", "value": "9"} in worker["env"]


def test_weakened_security_context_is_put_back() -> None:
    desired = render()
    actual = as_returned_by_the_api_server(desired)
    pod_spec(actual)["securityContext"]["runAsUser"] = 0
    patch = deployment_drift(desired, actual)
    assert patch == {
        "spec": {"template": {"spec": {"securityContext": pod_spec(desired)["securityContext"]}}}
    }


def test_removed_label_is_put_back_and_foreign_labels_stay() -> None:
    desired = render()
    actual = as_returned_by_the_api_server(desired)
    del actual["metadata"]["labels"][POOL_LABEL]
    patch = deployment_drift(desired, actual)
    assert patch == {"metadata": {"labels": desired["metadata"]["labels"]}}


def test_hand_added_scheduling_fields_are_removed() -> None:
    desired = render()
    actual = as_returned_by_the_api_server(desired)
    pod_spec(actual).update(
        nodeSelector={"zone": "a"}, serviceAccountName="admin", serviceAccount="admin"
    )
    patch = deployment_drift(desired, actual)
    assert patch is not None
    pod_patch = patch["spec"]["template"]["spec"]
    assert pod_patch["nodeSelector"] is None
    assert pod_patch["serviceAccountName"] is None
    assert pod_patch["serviceAccount"] is None


def test_extra_key_in_an_exact_pass_through_map_is_nulled() -> None:
    desired = render(make_spec(nodeSelector={"pool": "agents"}))
    actual = as_returned_by_the_api_server(desired)
    pod_spec(actual)["nodeSelector"]["zone"] = "a"
    patch = deployment_drift(desired, actual)
    assert patch == {
        "spec": {"template": {"spec": {"nodeSelector": {"pool": "agents", "zone": None}}}}
    }


def test_hand_added_resource_limit_is_drift() -> None:
    desired = render(make_spec(resources={"requests": {"cpu": "250m"}}))
    actual = as_returned_by_the_api_server(desired)
    container(actual)["resources"]["limits"] = {"cpu": "1"}
    assert deployment_drift(desired, actual) is not None


def test_changed_quantity_is_drift() -> None:
    desired = render(make_spec(resources={"limits": {"memory": "1Gi"}}))
    actual = as_returned_by_the_api_server(desired)
    container(actual)["resources"]["limits"]["memory"] = "2Gi"
    assert deployment_drift(desired, actual) is not None


def test_a_watched_copy_with_the_known_resource_version_is_a_replay() -> None:
    known = {"metadata": {"name": POOL, "resourceVersion": "7"}}
    assert replayed(known, {"metadata": {"name": POOL, "resourceVersion": "7"}})
    assert not replayed(known, {"metadata": {"name": POOL, "resourceVersion": "8"}})
    assert not replayed(known, None), "a deletion is news"
    assert not replayed(None, {"metadata": {"resourceVersion": "7"}}), "nothing known yet"


def test_rate_limits_reach_the_workers_as_json_and_only_when_declared() -> None:
    assert "AGENTPOOL_RATE_LIMITS" not in env_of(render())
    spec = AgentPoolSpec.model_validate({
        "redis": {"url": "redis://redis:6379/0"},
        "worker": {"image": "i", "handler": "m:f"},
        "rateLimits": [{"name": "openai", "tokensPerMinute": 90000, "burstSeconds": 2}],
    })
    entry = env_of(render(spec))["AGENTPOOL_RATE_LIMITS"]
    assert decode_limits(entry["value"]) == {
        "openai": LimitConfig("openai", tokens_per_minute=90000, burst_seconds=2.0)
    }


# --- volumes, pod labels and annotations ---------------------------------------------------------

VOLUMES: dict[str, Any] = {
    "volumes": [
        {"name": "prompts", "configMap": {"name": "prompts"}},
        {"name": "git-key", "secret": {"secretName": "deploy-key"}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}},
    ],
    "volumeMounts": [
        {"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True},
        {"name": "git-key", "mountPath": "/home/agent/.ssh/id_ed25519", "subPath": "id_ed25519"},
        {"name": "tmp", "mountPath": "/home/agent", "subPath": "home"},
    ],
    "podLabels": {"team": "agents"},
    "podAnnotations": {"sidecar.istio.io/inject": "false"},
}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


def test_pool_volumes_come_after_the_scratch_volume_and_mount_where_asked() -> None:
    deployment = render(make_spec(**VOLUMES))
    assert pod_spec(deployment)["volumes"] == [{"name": "tmp", "emptyDir": {}}, *VOLUMES["volumes"]]
    assert container(deployment)["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"}, *VOLUMES["volumeMounts"]]
    for volume in pod_spec(deployment)["volumes"]:
        assert set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES, volume


def test_a_pool_volume_named_tmp_replaces_the_scratch_volume() -> None:
    in_memory = {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}}
    deployment = render(make_spec(volumes=[{"name": "a", "emptyDir": {}}, in_memory]))
    assert pod_spec(deployment)["volumes"] == [in_memory, {"name": "a", "emptyDir": {}}]
    assert container(deployment)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_pod_labels_and_annotations_reach_the_pods_and_ours_win() -> None:
    spec = make_spec(podLabels={"team": "agents", POOL_LABEL: "other"},
                     podAnnotations={"sidecar.istio.io/inject": "false"})
    deployment = render(spec, credentials_version="3")
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"] == {**pool_labels_of(POOL), "team": "agents"}
    assert template["annotations"] == {"sidecar.istio.io/inject": "false",
                                       CREDENTIALS_VERSION: "3"}
    assert deployment["spec"]["selector"] == {"matchLabels": {POOL_LABEL: POOL}}
    assert deployment["metadata"]["annotations"] == {
        POD_METADATA_KEYS: '{"labels":["team"],"annotations":["sidecar.istio.io/inject"]}'}
    assert "annotations" not in render()["metadata"]
    assert "annotations" not in render()["spec"]["template"]["metadata"]


def pool_labels_of(pool: str) -> dict[str, str]:
    return render()["spec"]["template"]["metadata"]["labels"] | {POOL_LABEL: pool}


@pytest.mark.parametrize("version", ["1.30", "1.36"])
def test_a_deployment_with_volumes_and_pod_metadata_is_valid(version: str) -> None:
    spec = make_spec(**VOLUMES)
    kubernetes_validate.validate(render(spec, initial_replicas=1), version, strict=True)


def test_volumes_with_api_server_defaults_are_not_drift() -> None:
    desired = render(make_spec(**VOLUMES))
    actual = as_returned_by_the_api_server(desired)
    assert pod_spec(actual)["volumes"][1]["configMap"]["defaultMode"] == 420
    assert deployment_drift(desired, actual) is None


def test_a_hand_removed_volume_or_mount_is_put_back() -> None:
    desired = render(make_spec(**VOLUMES))
    actual = as_returned_by_the_api_server(desired)
    pod_spec(actual)["volumes"].pop()
    container(actual)["volumeMounts"].pop()
    patch = deployment_drift(desired, actual)
    assert patch is not None
    pod_patch = patch["spec"]["template"]["spec"]
    assert pod_patch["volumes"] == pod_spec(desired)["volumes"]
    assert pod_patch["containers"][0]["volumeMounts"] == container(desired)["volumeMounts"]


def test_pod_metadata_keys_dropped_from_the_spec_leave_the_pods_and_others_stay() -> None:
    before = render(make_spec(podLabels={"team": "agents", "tier": "gold"},
                              podAnnotations={"a.example/x": "1", "b.example/y": "2"}))
    actual = as_returned_by_the_api_server(before)
    after = render(make_spec(podLabels={"team": "agents"}, podAnnotations={"b.example/y": "3"}))
    patch = deployment_drift(after, actual)
    assert patch is not None
    template = patch["spec"]["template"]["metadata"]
    assert template["labels"] == {"tier": None}
    assert template["annotations"] == {"a.example/x": None, "b.example/y": "3"}
    assert patch["metadata"]["annotations"] == {
        POD_METADATA_KEYS: '{"labels":["team"],"annotations":["b.example/y"]}'}
    assert "kubectl.kubernetes.io/restartedAt" not in template["annotations"]
    assert deployment_drift(after, merge_patch(actual, patch)) is None


def test_pod_metadata_all_dropped_removes_the_record_too() -> None:
    before = render(make_spec(podLabels={"team": "agents"}, podAnnotations={"a.example/x": "1"}))
    actual = as_returned_by_the_api_server(before)
    patch = deployment_drift(render(), actual)
    assert patch is not None
    assert patch["spec"]["template"]["metadata"] == {
        "labels": {"team": None}, "annotations": {"a.example/x": None}}
    assert patch["metadata"] == {"annotations": {POD_METADATA_KEYS: None}}
    patched = merge_patch(actual, patch)
    assert patched["spec"]["template"]["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/restartedAt": "2026-01-01"}
    assert deployment_drift(render(), patched) is None


def test_a_dropped_pod_label_that_is_also_ours_keeps_ours() -> None:
    before = render(make_spec(podLabels={POOL_LABEL: "other", "team": "a"}))
    actual = as_returned_by_the_api_server(before)
    patch = deployment_drift(render(), actual)
    assert patch is not None
    assert patch["spec"]["template"]["metadata"] == {"labels": {"team": None}}



INIT: dict[str, Any] = {
    "volumes": [{"name": "models", "emptyDir": {}}],
    "initContainers": [
        {"name": "fetch-model", "image": "curlimages/curl:8",
         "args": ["-o", "/models/m.bin", "https://example.com/m.bin"],
         "volumeMounts": [{"name": "models", "mountPath": "/models"}]},
        {"name": "llm-gateway", "image": "litellm:1", "restartPolicy": "Always",
         "env": [{"name": "PORT", "value": "4000"}]},
    ],
}


def test_init_containers_and_sidecars_run_restricted_with_the_scratch_volume() -> None:
    deployment = render(make_spec(**INIT))
    fetch, gateway = pod_spec(deployment)["initContainers"]
    for given, rendered in zip(INIT["initContainers"], (fetch, gateway), strict=True):
        assert {k: v for k, v in rendered.items()
                if k not in ("securityContext", "volumeMounts")} == {
            k: v for k, v in given.items() if k != "volumeMounts"}
        assert rendered["securityContext"] == container(deployment)["securityContext"]
        assert rendered["volumeMounts"][0] == {"name": "tmp", "mountPath": "/tmp"}
    assert fetch["volumeMounts"][1:] == [{"name": "models", "mountPath": "/models"}]
    assert gateway["restartPolicy"] == "Always"
    assert "initContainers" not in pod_spec(render())


@pytest.mark.parametrize("policy", ["IfNotPresent", "Never", "Always"])
def test_init_containers_and_sidecars_take_the_pools_pull_policy(policy: str) -> None:
    """An image loaded into the nodes (kind load) is pulled by none of the pod's containers:
    an init container of the worker's image, untagged, would otherwise be pulled Always."""
    spec = make_spec(**INIT)
    spec.worker.image_pull_policy = policy  # type: ignore[assignment]
    deployment = render(spec)
    assert [c["imagePullPolicy"] for c in pod_spec(deployment)["initContainers"]] == [policy] * 2
    assert container(deployment)["imagePullPolicy"] == policy


def test_a_sidecar_may_run_as_its_own_user_with_a_writable_root_filesystem() -> None:
    """An image that expects its own user or writes under its own directories (a gateway's
    cache); the restricted settings stay, so the pod still meets the standard."""
    own = {**INIT["initContainers"][1], "securityContext": {
        "runAsUser": 1000, "runAsGroup": 1000, "readOnlyRootFilesystem": False}}
    deployment = render(make_spec(initContainers=[own]))
    (gateway,) = pod_spec(deployment)["initContainers"]
    assert gateway["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": False, "runAsNonRoot": True,
        "runAsUser": 1000, "runAsGroup": 1000}
    assert container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True
    kubernetes_validate.validate(render(make_spec(initContainers=[own]), initial_replicas=1),
                                 "1.36", strict=True)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        make_spec(initContainers=[{**own, "securityContext": {"runAsUser": 0}}])


@pytest.mark.parametrize("version", ["1.30", "1.36"])
def test_a_deployment_with_init_containers_and_a_sidecar_is_valid(version: str) -> None:
    kubernetes_validate.validate(render(make_spec(**INIT), initial_replicas=1), version,
                                 strict=True)


def test_init_containers_with_api_server_defaults_are_not_drift_and_edits_are() -> None:
    desired = render(make_spec(**INIT))
    actual = as_returned_by_the_api_server(desired)
    for init in pod_spec(actual)["initContainers"]:
        init.update(imagePullPolicy="IfNotPresent", terminationMessagePolicy="File",
                    terminationMessagePath="/dev/termination-log")
    assert deployment_drift(desired, actual) is None
    pod_spec(actual)["initContainers"][0]["securityContext"]["runAsNonRoot"] = False
    patch = deployment_drift(desired, actual)
    assert patch == {"spec": {"template": {"spec": {
        "initContainers": pod_spec(desired)["initContainers"]}}}}
    dropped = deployment_drift(render(), as_returned_by_the_api_server(desired))
    assert dropped is not None
    assert dropped["spec"]["template"]["spec"]["initContainers"] is None


@pytest.mark.parametrize("version", ["1.30", "1.36"])
def test_the_cli_agent_example_renders_a_valid_restricted_deployment(version: str) -> None:
    example = Path(__file__).parents[2] / "examples" / "cli-agent.yaml"
    spec = AgentPoolSpec.model_validate(yaml.safe_load(example.read_text())["spec"])
    deployment = render(spec, initial_replicas=1)
    kubernetes_validate.validate(deployment, version, strict=True)
    pod = pod_spec(deployment)
    for each in (*pod["initContainers"], *pod["containers"]):
        assert each["securityContext"] == container(deployment)["securityContext"]
    assert pod["volumes"][0] == {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}}
    assert env_of(deployment)["AGENTPOOL_HANDLER"]["value"] == "agentpool_worker.command:run"


QUANTITY_SPEC = make_spec(
    env=[{"name": "MEMORY_MI", "valueFrom": {"resourceFieldRef": {
        "containerName": "worker", "resource": "limits.memory", "divisor": "1024Ki"}}}],
    resources={"limits": {"memory": "1024Mi"}},
    initContainers=[{"name": "fetch-model", "image": "curlimages/curl:8",
                     "resources": {"limits": {"cpu": "1000m", "memory": "1024Mi"}}}],
    volumes=[
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1024Mi"}},
        {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1024Mi"}}}}}},
        {"name": "limits", "downwardAPI": {"items": [{"path": "memory", "resourceFieldRef": {
            "containerName": "worker", "resource": "limits.memory", "divisor": "1024Ki"}}]}},
    ],
    volumeMounts=[{"name": "cache", "mountPath": "/cache"},
                  {"name": "limits", "mountPath": "/etc/limits"}],
)


def test_quantities_written_back_canonical_are_not_drift() -> None:
    """The API server returns every quantity of the pod template canonical ("1024Mi" reads
    "1Gi"): only a different amount is drift, wherever the quantity sits."""
    desired = render(QUANTITY_SPEC)
    actual = as_returned_by_the_api_server(desired)
    volumes = {v["name"]: v for v in pod_spec(actual)["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "1Gi"
    claim = volumes["cache"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "1Gi"
    assert volumes["limits"]["downwardAPI"]["items"][0]["resourceFieldRef"]["divisor"] == "1Mi"
    assert env_of(actual)["MEMORY_MI"]["valueFrom"]["resourceFieldRef"]["divisor"] == "1Mi"
    assert pod_spec(actual)["initContainers"][0]["resources"]["limits"]["cpu"] == "1"
    assert deployment_drift(desired, actual) is None

    volumes["tmp"]["emptyDir"]["sizeLimit"] = "2Gi"
    patch = deployment_drift(desired, actual)
    assert patch == {"spec": {"template": {"spec": {"volumes": pod_spec(desired)["volumes"]}}}}
    changed = as_returned_by_the_api_server(desired)
    env_of(changed)["MEMORY_MI"]["valueFrom"]["resourceFieldRef"]["divisor"] = "1"
    assert deployment_drift(desired, changed) is not None
