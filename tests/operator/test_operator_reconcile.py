"""The operator against kmock's Kubernetes emulation and a real redis-server."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
import redis.asyncio as aioredis
from operator_harness import (
    NAMESPACE,
    Cluster,
    OperatorThread,
    eventually,
    pool_manifest,
)
from prometheus_client import REGISTRY

from agentpool.models import AgentPoolStatus
from agentpool.protocol import TaskQueue, WorkerInfo
from agentpool.redis_server import RedisServer, free_port
from agentpool_operator import handlers
from agentpool_operator.context import OperatorContext, PoolState
from agentpool_operator.handlers import generation_of, parse_spec
from agentpool_operator.kube import FIELD_MANAGER, KubeApi
from agentpool_operator.scaling_plan import OWN_FIELD_MANAGERS
from agentpool_operator.settings import OperatorSettings

IMAGE = "registry.example/agent-worker:1.0"


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    return dict(containers[0])


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(deployment)["env"]}


def deployment_patches(cluster: Cluster, name: str) -> list:
    """PATCHes to the Deployment itself (not to its status, which the test writes)."""
    return cluster.requests("PATCH", f"/deployments/{name}")


async def test_pool_gets_an_owned_deployment(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    pool = await cluster.create_pool(pool_manifest("alpha", redis_url=redis_url, queue="jobs"))

    deployment = await eventually(lambda: cluster.deployment("alpha"))
    owners = deployment["metadata"]["ownerReferences"]
    assert owners == [{
        "apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool", "name": "alpha",
        "uid": pool["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
    }]
    assert deployment["metadata"]["labels"]["agentpool.dev/pool"] == "alpha"
    assert deployment["spec"]["replicas"] == 1
    worker = container(deployment)
    assert worker["image"] == IMAGE
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http",
                                                  "scheme": "HTTP"}
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(deployment)
    assert env["AGENTPOOL_REDIS_URL"]["value"] == redis_url
    assert env["AGENTPOOL_QUEUE"]["value"] == "jobs"
    assert env["AGENTPOOL_HANDLER"]["value"] == "agentpool_worker.builtin:echo"

    event = (await eventually(lambda: cluster.events("DeploymentCreated")))[0]
    assert event["type"] == "Normal"
    assert event["involvedObject"]["name"] == "alpha"

    await eventually(lambda: cluster.pool("alpha")["status"]["conditions"])
    annotations = await eventually(lambda: cluster.pool("alpha")["metadata"]["annotations"])
    assert "agentpool.dev/last-handled-configuration" in annotations
    watches = cluster.requests("GET", "/apis/apps/v1/deployments")
    assert watches and all(r.params.get("labelSelector") == "agentpool.dev/pool"
                           for r in watches), "only the pools' Deployments are watched"
    status_keys = set(cluster.pool("alpha")["status"])
    schema = {field.alias for field in AgentPoolStatus.model_fields.values()}
    assert {"queue", "replicas", "conditions", "health"} <= status_keys <= schema, (
        "kopf must keep its progress out of the status (the CRD's schema would prune it)")


async def test_spec_change_patches_the_deployment(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    await cluster.create_pool(pool_manifest("beta", redis_url=redis_url))
    await eventually(lambda: cluster.pool("beta")["status"]["observedGeneration"] == 1)

    await cluster.patch_pool("beta", {"spec": {"worker": {"image": "registry.example/w:2.0",
                                                          "concurrency": 8}}})

    deployment = await eventually(
        lambda: (d := cluster.deployment("beta"))
        and container(d)["image"] == "registry.example/w:2.0" and d
    )
    assert env_of(deployment)["AGENTPOOL_CONCURRENCY"]["value"] == "8"
    assert len(deployment_patches(cluster, "beta")) == 1
    event = (await eventually(lambda: cluster.events("DeploymentUpdated")))[0]
    assert "containers" in event["message"]
    await eventually(lambda: cluster.pool("beta")["status"]["observedGeneration"] == 2)
    assert cluster.condition("beta", "Ready")["observedGeneration"] == 2


async def test_pod_metadata_and_volumes_follow_the_spec_and_dropped_keys_leave(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    manifest = pool_manifest("kappa", redis_url=redis_url)
    manifest["spec"]["worker"].update(
        podLabels={"team": "agents"},
        podAnnotations={"sidecar.istio.io/inject": "false", "example.com/owner": "ml"},
        volumes=[{"name": "prompts", "configMap": {"name": "prompts"}}],
        volumeMounts=[{"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True}],
    )
    await cluster.create_pool(manifest)
    deployment = await eventually(lambda: cluster.deployment("kappa"))
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "agents"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false",
                                                   "example.com/owner": "ml"}
    assert {"name": "prompts", "configMap": {"name": "prompts"}} in template["spec"]["volumes"]
    await eventually(lambda: cluster.pool("kappa")["status"]["observedGeneration"] == 1)

    await cluster.patch_pool("kappa", {"spec": {"worker": {
        "podLabels": None, "podAnnotations": {"example.com/owner": None}}}})

    def without_the_dropped_keys() -> dict | None:
        metadata = cluster.deployment("kappa")["spec"]["template"]["metadata"]
        dropped = "team" in metadata["labels"] or "example.com/owner" in metadata["annotations"]
        return None if dropped else dict(metadata)

    metadata = await eventually(without_the_dropped_keys)
    assert metadata["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert metadata["labels"]["agentpool.dev/pool"] == "kappa"


async def test_unchanged_pool_writes_nothing_to_its_deployment(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await cluster.create_pool(pool_manifest("gamma", redis_url=redis_url))
    await eventually(lambda: cluster.deployment("gamma"))

    # More rounds, each provably run: Deployment status changes wake the pool, a queue change
    # shows in the next timed round; a metadata-only change of the pool is not a spec change.
    await cluster.patch_deployment("gamma", {"status": {"replicas": 1, "readyReplicas": 1}},
                                   subresource="status")
    await eventually(lambda: cluster.pool("gamma")["status"]["readyReplicas"] == 1)
    await TaskQueue(redis, "gamma").submit({"n": 1})
    await eventually(lambda: cluster.pool("gamma")["status"]["queued"] == 1)
    await cluster.patch_pool("gamma", {"metadata": {"labels": {"team": "search"}}})
    await cluster.patch_deployment("gamma", {"status": {"replicas": 2, "readyReplicas": 1}},
                                   subresource="status")
    await eventually(lambda: cluster.pool("gamma")["status"]["replicas"] == 2)

    assert deployment_patches(cluster, "gamma") == []
    assert len(cluster.requests("POST", f"/namespaces/{NAMESPACE}/deployments")) == 1


async def test_hand_edit_of_the_deployment_is_put_back(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    await cluster.create_pool(pool_manifest("delta", redis_url=redis_url))
    original = await eventually(lambda: cluster.deployment("delta"))
    edited = original["spec"]["template"]["spec"]["containers"]
    edited[0]["image"] = "registry.example/hacked:latest"

    await cluster.patch_deployment(
        "delta", {"spec": {"template": {"spec": {"containers": edited}}}}
    )

    await eventually(lambda: container(cluster.deployment("delta"))["image"] == IMAGE)
    event = (await eventually(lambda: cluster.events("DeploymentRestored")))[0]
    assert "spec.template.spec.containers" in event["message"]
    assert cluster.events("DeploymentUpdated") == []


async def test_deleted_deployment_is_recreated(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    await cluster.create_pool(pool_manifest("epsilon", redis_url=redis_url))
    first = await eventually(lambda: cluster.deployment("epsilon"))

    async with cluster.emulator.delete(
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/epsilon"
    ) as response:
        assert response.status == 200

    second = await eventually(
        lambda: (d := cluster.deployment("epsilon"))
        and d["metadata"]["uid"] != first["metadata"]["uid"] and d
    )
    assert container(second)["image"] == IMAGE
    await eventually(lambda: len(cluster.events("DeploymentCreated")) == 2)


async def test_foreign_deployment_is_left_alone(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    foreign = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "zeta", "namespace": NAMESPACE,
                     "labels": {"agentpool.dev/pool": "zeta"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "other"}},
                 "template": {"metadata": {"labels": {"app": "other"}},
                              "spec": {"containers": [{"name": "x", "image": "other:1"}]}}},
    }
    await cluster.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", foreign)
    await cluster.create_pool(pool_manifest("zeta", redis_url=redis_url))

    degraded = await eventually(lambda: cluster.condition("zeta", "Degraded"))
    assert (degraded["status"], degraded["reason"]) == ("True", "DeploymentConflict")
    assert "not controlled by this pool" in degraded["message"]
    await eventually(lambda: cluster.events("DeploymentConflict"))
    assert deployment_patches(cluster, "zeta") == []
    pod = cluster.deployment("zeta")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "other:1"


async def test_a_pool_may_not_run_its_workers_as_the_operator(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str
) -> None:
    """Whoever may create a pool must not get the operator's rights by naming its
    ServiceAccount: no Deployment is written, the pool says why, until it names another."""
    settings = operator_settings.model_copy(update={
        "protected_service_accounts": (f"{NAMESPACE}/agentpool-operator",)})
    thread = OperatorThread(settings)
    await thread.start()
    try:
        manifest = pool_manifest("eta", redis_url=redis_url)
        manifest["spec"]["worker"]["serviceAccountName"] = "agentpool-operator"
        await cluster.create_pool(manifest)

        degraded = await eventually(
            lambda: (c := cluster.condition("eta", "Degraded"))["status"] == "True" and c)
        assert degraded["reason"] == "ServiceAccountRefused"
        assert degraded["message"].startswith(
            "spec.worker.serviceAccountName: agentpool-operator is the ServiceAccount of the "
            "agentpool operator or console")
        assert cluster.requests("POST", "/deployments") == []
        scaling = await eventually(lambda: cluster.condition("eta", "Scaling"))
        assert (scaling["status"], scaling["reason"]) == ("False", "ServiceAccountRefused")

        await cluster.patch_pool("eta", {"spec": {"worker": {"serviceAccountName": "agents"}}})
        created = await eventually(lambda: cluster.deployment("eta"))
        assert created["spec"]["template"]["spec"]["serviceAccountName"] == "agents"
    finally:
        await thread.stop()
    assert thread.error is None, thread.error


async def test_a_pool_made_before_the_operator_protected_its_account_is_scaled_to_zero(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str
) -> None:
    """Its Deployment, written by an operator that did not protect the account, runs pods
    with the operator's rights: the protecting operator scales it to zero (its runs end in
    their termination grace) and scales it no more."""
    manifest = pool_manifest("theta", redis_url=redis_url)
    manifest["spec"]["worker"]["serviceAccountName"] = "agentpool-operator"
    manifest["spec"]["scaling"] = {"minReplicas": 2, "maxReplicas": 2}
    earlier = OperatorThread(operator_settings)
    await earlier.start()
    try:
        await cluster.create_pool(manifest)
        await eventually(lambda: cluster.deployment("theta")["spec"]["replicas"] == 2)
    finally:
        await earlier.stop()

    settings = operator_settings.model_copy(update={
        "protected_service_accounts": (f"{NAMESPACE}/agentpool-operator",)})
    protecting = OperatorThread(settings)
    await protecting.start()
    try:
        await eventually(lambda: cluster.deployment("theta")["spec"]["replicas"] == 0)
        degraded = await eventually(
            lambda: (c := cluster.condition("theta", "Degraded"))["status"] == "True" and c)
        assert degraded["reason"] == "ServiceAccountRefused"
        [event] = await eventually(lambda: [e for e in cluster.events("ServiceAccountRefused")
                                            if "scaled Deployment" in e["message"]])
        assert event["type"] == "Warning"
        scaling = await eventually(
            lambda: (c := cluster.condition("theta", "Scaling"))["status"] == "False" and c)
        assert scaling["reason"] == "ServiceAccountRefused"
        assert scaling["message"].startswith("the pool does not scale: ")
        assert cluster.deployment("theta")["spec"]["replicas"] == 0
    finally:
        await protecting.stop()
    assert protecting.error is None, protecting.error


async def test_status_reports_replicas_and_queue_figures(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await cluster.create(f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "eta-abc", "namespace": NAMESPACE,
                     "labels": {"agentpool.dev/pool": "eta"}},
        "spec": {"containers": [{"name": "worker", "image": IMAGE}]},
    })
    queue = TaskQueue(redis, "eta-jobs")
    await queue.submit_many([{"n": n} for n in range(5)])
    await queue.submit({"later": True}, delay=3600)
    await queue.heartbeat(WorkerInfo(pod="eta-abc", instance="i1", concurrency=4), {}, 30)
    claimed = await queue.claim("eta-abc:i1", 2, lease_seconds=60)
    assert len(claimed.tasks) == 2

    await cluster.create_pool(pool_manifest(
        "eta", redis_url=redis_url, queue="eta-jobs",
        scaling={"minReplicas": 1, "maxReplicas": 3, "pollSeconds": 1, "tasksPerReplica": 10},
    ))
    await eventually(lambda: cluster.deployment("eta"))
    await cluster.patch_deployment("eta", {"status": {"replicas": 1, "readyReplicas": 1}},
                                   subresource="status")

    status = await eventually(
        lambda: (s := cluster.pool("eta").get("status", {})).get("readyReplicas") == 1 and s
    )
    assert {k: status[k] for k in (
        "queue", "replicas", "readyReplicas", "desiredReplicas", "queued", "delayed",
        "inFlight", "dead", "workers", "observedGeneration",
    )} == {
        "queue": "eta-jobs", "replicas": 1, "readyReplicas": 1, "desiredReplicas": 1,
        "queued": 3, "delayed": 1, "inFlight": 2, "dead": 0, "workers": 1,
        "observedGeneration": 1,
    }
    port = redis.connection_pool.connection_kwargs["port"]
    assert status["redis"] == f"redis://127.0.0.1:{port}/0", "the server, never credentials"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "True", "ReplicasReady")
    assert conditions["Ready"]["message"] == "1/1 replicas ready"
    assert conditions["QueueReachable"]["status"] == "True"
    assert conditions["Degraded"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"]
               for c in conditions.values())
    status_patches = cluster.requests("PATCH", "/agentpools/eta/status")
    assert status_patches, "status goes through the /status subresource"


async def test_missing_secret_is_reported_and_retried(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    await cluster.create_pool(pool_manifest("theta", secret="theta-redis"))

    reachable = await eventually(lambda: cluster.condition("theta", "QueueReachable"))
    assert (reachable["status"], reachable["reason"]) == ("False", "SecretNotFound")
    assert reachable["message"] == "Secret default/theta-redis not found"
    assert cluster.condition("theta", "Ready")["status"] == "False"
    assert cluster.condition("theta", "Degraded")["reason"] == "SecretNotFound"
    event = (await eventually(lambda: cluster.events("SecretNotFound")))[0]
    assert event["type"] == "Warning"
    # The Deployment does not wait for the Secret: pods start once it exists.
    ref = env_of(cluster.deployment("theta"))["AGENTPOOL_REDIS_URL"]["valueFrom"]
    assert ref == {"secretKeyRef": {"name": "theta-redis", "key": "url"}}

    await cluster.create_secret("theta-redis", {"url": redis_url})

    await eventually(lambda: cluster.condition("theta", "QueueReachable")["status"] == "True")
    await eventually(lambda: cluster.events("Recovered"))
    assert operator.alive


async def test_secret_without_the_key_is_reported(
    cluster: Cluster, operator: OperatorThread
) -> None:
    await cluster.create_secret("agentpool-redis", {"uri": "redis://nowhere:6379/0"})
    await cluster.create_pool(pool_manifest("iota", secret="agentpool-redis"))

    reachable = await eventually(lambda: cluster.condition("iota", "QueueReachable"))
    assert (reachable["reason"], reachable["message"]) == (
        "SecretKeyMissing", "Secret default/agentpool-redis has no key 'url'")


async def test_unreachable_redis_is_reported_without_credentials(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    closed = f"redis://agent:s3cr3t-pw@127.0.0.1:{free_port()}/0"
    await cluster.create_secret("kappa-redis", {"url": closed})
    await cluster.create_pool(pool_manifest("kappa", secret="kappa-redis"))
    await cluster.create_pool(pool_manifest("lambda", redis_url=redis_url))

    reachable = await eventually(lambda: cluster.condition("kappa", "QueueReachable"))
    assert (reachable["status"], reachable["reason"]) == ("False", "RedisUnreachable")
    assert cluster.condition("kappa", "Degraded")["status"] == "True"
    warning = (await eventually(lambda: cluster.events("RedisUnreachable")))[0]
    assert warning["type"] == "Warning"
    assert "s3cr3t-pw" not in json.dumps(cluster.pool("kappa"))
    assert all("s3cr3t-pw" not in json.dumps(e) for e in cluster.events())

    # The operator keeps serving: other pools, and its liveness endpoint.
    await eventually(lambda: cluster.condition("lambda", "QueueReachable")["status"] == "True")
    base = f"http://127.0.0.1:{operator.settings.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{base}/metrics") as response:
            assert response.status == 200
            exposition = await response.text()
    assert 'agentpool_pool_condition{namespace="default",pool="kappa",type="QueueReachable"}' \
        ' 0.0' in exposition
    assert 'agentpool_operator_pool_problems_total{reason="RedisUnreachable"}' in exposition
    assert operator.alive


async def test_deleted_pool_is_released_and_forgotten(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    pool = await cluster.create_pool(pool_manifest("omega", redis_url=redis_url))
    await eventually(lambda: cluster.pool("omega")["status"]["observedGeneration"] == 1)
    assert cluster.pool("omega")["metadata"]["finalizers"] == ["agentpool.dev/finalizer"]
    labels = {"namespace": NAMESPACE, "pool": "omega"}
    await eventually(lambda: REGISTRY.get_sample_value("agentpool_pool_queued", labels) == 0)

    path = f"/apis/agentpool.dev/v1alpha1/namespaces/{NAMESPACE}/agentpools/omega"
    await cluster._send("DELETE", path)

    def gone() -> bool:
        try:
            cluster.pool("omega")
        except KeyError:
            return True
        return False

    await eventually(gone)
    await eventually(lambda: REGISTRY.get_sample_value("agentpool_pool_queued", labels) is None)
    owner = cluster.deployment("omega")["metadata"]["ownerReferences"][0]
    assert (owner["uid"], owner["blockOwnerDeletion"]) == (pool["metadata"]["uid"], True), (
        "the cluster's garbage collector deletes the Deployment with its pool"
    )


async def test_pools_serving_one_queue_on_one_redis_are_degraded_until_one_leaves(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str
) -> None:
    """Their workers would take each other's tasks (with their own images) and each pool
    scale for the whole queue: both pools say so, naming the other, and keep running."""
    await cluster.create_pool(pool_manifest("first", redis_url=redis_url, queue=queue_name))
    await cluster.create_pool(pool_manifest("second", redis_url=redis_url, queue=queue_name))
    await cluster.create_pool(pool_manifest("apart", redis_url=redis_url))

    def degraded(pool: str) -> dict | None:
        condition = cluster.condition(pool, "Degraded")
        return condition if condition["status"] == "True" else None

    first = await eventually(lambda: degraded("first"))
    second = await eventually(lambda: degraded("second"))
    where = f"queue '{queue_name}' on {redis_url.rstrip('/')}"
    assert first["reason"] == second["reason"] == "QueueShared"
    assert first["message"].startswith(f"{where} is also served by {NAMESPACE}/second: ")
    assert second["message"].startswith(f"{where} is also served by {NAMESPACE}/first: ")
    await eventually(lambda: any(e["involvedObject"]["name"] == "first"
                                 and e["type"] == "Warning"
                                 for e in cluster.events("QueueShared")))
    await eventually(lambda: cluster.pool("apart").get("status", {}).get("conditions"))
    assert cluster.condition("apart", "Degraded")["status"] == "False"
    assert cluster.deployment("first") and cluster.deployment("second")

    await cluster.delete_pool("second")
    await eventually(lambda: cluster.condition("first", "Degraded")["status"] == "False")


async def test_a_pool_handing_tasks_to_a_queue_no_pool_serves_is_degraded_until_one_does(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str
) -> None:
    coder = f"{queue_name}-coder"
    planner = pool_manifest("planner", redis_url=redis_url, queue=queue_name)
    planner["spec"]["worker"]["submitsTo"] = [coder]
    await cluster.create_pool(planner)

    def degraded() -> dict | None:
        condition = cluster.condition("planner", "Degraded")
        return condition if condition["status"] == "True" else None

    condition = await eventually(degraded)
    assert condition["reason"] == "SubmitsToUnserved"
    assert condition["message"].startswith(
        f"spec.worker.submitsTo names {coder!r}, served by no pool on {redis_url.rstrip('/')}")
    await cluster.create_pool(pool_manifest("coder", redis_url=redis_url, queue=coder))
    await eventually(lambda: cluster.condition("planner", "Degraded")["status"] == "False")


async def test_pods_that_cannot_come_up_make_the_pool_degraded_with_the_reason(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    quota = 'pods "lambda-7c9f-x1" is forbidden: exceeded quota: agents, limited: cpu=8'
    await cluster.create_pool(pool_manifest("lambda", redis_url=redis_url,
                                            scaling={"pollSeconds": 1}))
    await eventually(lambda: cluster.deployment("lambda"))
    await eventually(lambda: cluster.condition("lambda", "Degraded")["reason"] == "AsExpected")

    await cluster.patch_deployment("lambda", {"status": {"replicas": 1, "conditions": [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": quota}]}}, subresource="status")
    degraded = await eventually(
        lambda: (c := cluster.condition("lambda", "Degraded"))["reason"] == "PodsNotCreated" and c)
    assert degraded["status"] == "True"
    assert degraded["message"] == f"pods cannot be created: {quota}"
    await eventually(lambda: cluster.events("PodsNotCreated"))

    await cluster.create(f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "lambda-7c9f-x2", "namespace": NAMESPACE,
                     "labels": {"agentpool.dev/pool": "lambda"}},
        "spec": {"containers": [{"name": "worker", "image": IMAGE}]},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "state": {
            "waiting": {"reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{IMAGE}"'}}}]},
    })
    await cluster.patch_deployment("lambda", {"status": {"conditions": [
        {"type": "ReplicaFailure", "status": "False"}]}}, subresource="status")
    degraded = await eventually(
        lambda: (c := cluster.condition("lambda", "Degraded"))["reason"] == "PodsFailing" and c)
    assert degraded["message"] == f'1 pod ImagePullBackOff: Back-off pulling image "{IMAGE}"'
    assert cluster.condition("lambda", "Ready")["reason"] != "PodsFailing", \
        "a pool whose other pods serve is degraded, not unready"


async def test_a_redis_that_may_evict_tasks_makes_the_pool_degraded(
    cluster: Cluster, operator: OperatorThread
) -> None:
    with RedisServer(extra_args=("--maxmemory-policy", "allkeys-lru")) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        await cluster.create_pool(pool_manifest("mu", redis_url=url))
        degraded = await eventually(
            lambda: (c := cluster.condition("mu", "Degraded"))["reason"] == "RedisEvictsKeys"
            and c)
        assert degraded["status"] == "True"
        assert "maxmemory-policy allkeys-lru" in degraded["message"]
        assert "queued and running tasks can be lost" in degraded["message"]
        assert cluster.condition("mu", "Ready")["reason"] != "RedisEvictsKeys"
        await eventually(lambda: cluster.events("RedisEvictsKeys"))


def _gone(cluster: Cluster, name: str) -> bool:
    try:
        cluster.pool(name)
    except KeyError:
        return True
    return False


async def test_a_cluster_with_no_node_answering_is_reported_unreachable(
    cluster: Cluster, operator: OperatorThread,
) -> None:
    """redis-py's cluster client raises RedisClusterException, not a RedisError, when no node
    answers: the pool's round failed before its status, which never said why."""
    await cluster.create_pool(pool_manifest(
        "cl-down", redis_url=f"redis+cluster://127.0.0.1:{free_port()}/0"))
    reachable = await eventually(lambda: cluster.condition("cl-down", "QueueReachable"))
    assert (reachable["status"], reachable["reason"]) == ("False", "RedisUnreachable")
    assert "Redis Cluster cannot be connected" in reachable["message"]
    assert operator.alive


class TestPerPoolCredentialsOnADownCluster:
    @pytest.fixture
    def operator_settings(self) -> OperatorSettings:
        return OperatorSettings(port=free_port(), status_refresh_seconds=0.5,
                                per_pool_credentials=True)

    async def test_the_pool_reports_it_and_can_be_deleted(
        self, cluster: Cluster, operator: OperatorThread,
    ) -> None:
        """Its credentials could not be decided nor removed: the create handler and the
        finalizer were retried every minute for as long as the cluster was down."""
        await cluster.create_pool(pool_manifest(
            "cl-creds", redis_url=f"redis+cluster://127.0.0.1:{free_port()}/0"))
        reachable = await eventually(lambda: cluster.condition("cl-creds", "QueueReachable"))
        assert reachable["reason"] == "RedisUnreachable"
        await cluster.delete_pool("cl-creds")
        await eventually(lambda: _gone(cluster, "cl-creds"), within=15)


async def test_a_spec_the_models_refuse_is_reported_not_silently_left(
    cluster: Cluster, operator: OperatorThread, redis_url: str,
) -> None:
    """An installed CRD older than the operator lets in a spec that breaks a newer rule: the
    pool's round stopped before its status, so it went on reading healthy while nothing was
    acted on."""
    await cluster.create_pool(pool_manifest("iota2", redis_url=redis_url))
    await eventually(lambda: cluster.condition("iota2", "QueueReachable")["status"] == "True")
    await cluster.patch_pool("iota2", {"spec": {"scaling": {"minReplicas": 5, "maxReplicas": 3}}})
    degraded = await eventually(
        lambda: (c := cluster.condition("iota2", "Degraded"))["reason"] == "InvalidSpec" and c)
    assert degraded["status"] == "True"
    assert degraded["message"].startswith("the spec breaks a rule of this operator")
    assert "spec.scaling" in degraded["message"]
    assert cluster.pool("iota2")["status"]["health"] == "Degraded"
    [event] = await eventually(lambda: cluster.events("InvalidSpec"))
    assert (event["type"], event["message"]) == ("Warning", degraded["message"])
    namespace = cluster.pool("iota2")["metadata"]["namespace"]
    assert REGISTRY.get_sample_value("agentpool_pool_condition", {
        "namespace": namespace, "pool": "iota2", "type": "Degraded"}) == 1  # the alert's input
    await cluster.patch_pool("iota2", {"spec": {"scaling": {"minReplicas": 1}}})
    await eventually(lambda: cluster.condition("iota2", "Degraded")["status"] == "False")
    assert operator.alive


async def test_a_credentials_condition_goes_once_per_pool_credentials_are_off(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
) -> None:
    """Left by an operator that ran with per-pool credentials: nothing would update it again."""
    await cluster.create_pool(pool_manifest("kappa2", redis_url=redis_url))
    await cluster.patch_pool_status("kappa2", {"conditions": [{
        "type": "Credentials", "status": "True", "reason": "PerPoolUser", "message": "",
        "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": 1}]})
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: cluster.condition("kappa2", "QueueReachable"))
        assert "Credentials" not in [
            c["type"] for c in cluster.pool("kappa2")["status"]["conditions"]]
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_round_that_read_an_older_spec_does_not_put_it_back(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's loop reads the spec, then may wait for the lock while a newer spec is
    applied; what it then writes must not roll the Deployment back to what it read."""
    posted: list[str] = []
    monkeypatch.setattr(handlers, "post", lambda _body, event, _logger: posted.append(
        event.reason))
    kube = KubeApi.from_environment()
    state = PoolState()
    logger = logging.getLogger("test.pool")
    first = await cluster.create_pool(pool_manifest("gamma", image="registry.example/w:1"))
    await handlers.ensure_deployment(kube, state, first, parse_spec(first), 1, logger)
    newer = await cluster.patch_pool(
        "gamma", {"spec": {"worker": {"image": "registry.example/w:2"}}})
    assert generation_of(newer) == 2
    await handlers.ensure_deployment(kube, state, newer, parse_spec(newer), 2, logger)

    await handlers.ensure_deployment(kube, state, first, parse_spec(first), 1, logger)

    assert container(cluster.deployment("gamma"))["image"] == "registry.example/w:2"
    assert len(deployment_patches(cluster, "gamma")) == 1
    assert posted == ["DeploymentCreated", "DeploymentUpdated"]


async def test_the_operators_writes_name_it_as_their_field_manager(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server names a write's field manager after the client's user agent: the
    operator's own replica writes are told apart from `kubectl scale` or an HPA's by it."""
    monkeypatch.setattr(handlers, "post", lambda _body, _event, _logger: None)
    kube = KubeApi.from_environment()
    pool = await cluster.create_pool(pool_manifest("epsilon"))
    await handlers.ensure_deployment(kube, PoolState(), pool, parse_spec(pool), 1,
                                     logging.getLogger("test.pool"))
    [create] = cluster.requests("POST", "/deployments")
    assert create.headers["User-Agent"].startswith(f"{FIELD_MANAGER}/")
    assert FIELD_MANAGER in OWN_FIELD_MANAGERS


async def test_a_round_that_read_an_older_spec_acts_on_nothing(
    cluster: Cluster, redis_url: str
) -> None:
    """Scaling, credentials and the disruption budget follow the spec too: a round that read
    the spec before a newer one was applied gives way to the next round."""
    ctx = OperatorContext(settings=OperatorSettings(), kube=KubeApi.from_environment())
    older = await cluster.create_pool(pool_manifest("delta", redis_url=redis_url))
    state = ctx.pool(NAMESPACE, "delta")
    state.reconciled_generation = 2

    delay = await handlers.observe_once(ctx, state, older, logging.getLogger("test.pool"))

    assert delay == handlers.MIN_POLL_SECONDS
    assert cluster.requests("POST", "/deployments") == []
    assert cluster.requests("PATCH", "/agentpools/delta/status") == []
    assert state.last_status is None
