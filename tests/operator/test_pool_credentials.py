"""Per-pool Redis users: the operator creates one per pool, gives the workers only its Secret,
re-applies it when Redis forgot it, deletes it with the pool, and falls back to the pool's URL
(visibly, not as a degradation) where Redis cannot have one."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    NAMESPACE,
    Cluster,
    OperatorThread,
    eventually,
    last_observed,
    pool_manifest,
)
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.acl import password_hash
from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue, WorkerInfo
from agentpool.redis_server import RedisServer, free_port
from agentpool.urls import with_credentials
from agentpool_operator import credentials, handlers
from agentpool_operator.credentials import PRODUCER_ROTATE_ANNOTATION as PRODUCER_ROTATE
from agentpool_operator.credentials import ROTATE_ANNOTATION as ROTATE
from agentpool_operator.credentials import (
    KnownSecrets,
    ensure_worker_credentials,
    password_of,
)
from agentpool_operator.deployment import CREDENTIALS_VERSION, pool_labels
from agentpool_operator.kube import KubeApi
from agentpool_operator.settings import OperatorSettings

SECRETS = "v1/secrets"


@pytest.fixture
def operator_settings(per_pool_settings: OperatorSettings) -> OperatorSettings:
    return per_pool_settings


@pytest.fixture
async def worker_client() -> AsyncIterator[list[aioredis.Redis]]:
    clients: list[aioredis.Redis] = []
    yield clients
    for client in clients:
        await client.aclose()


def worker_url(cluster: Cluster, pool: str) -> str:
    secret = cluster.get(SECRETS, f"{pool}-redis-worker")
    return base64.b64decode(secret["data"]["url"]).decode()


def redis_env(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return next(e for e in container["env"] if e["name"] == "AGENTPOOL_REDIS_URL")


async def test_a_pool_gets_its_own_redis_user_and_the_workers_only_its_secret(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, worker_client: list[aioredis.Redis], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url, queue="jobs"))
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"

    secret = await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
    assert secret["metadata"]["ownerReferences"][0]["uid"] == pool["metadata"]["uid"]
    url = worker_url(cluster, pool_name)
    assert url.startswith(f"redis://agentpool%3A{NAMESPACE}%3A{pool_name}%3Aworker:")
    password = urlsplit(url).password
    assert password is not None and len(password) >= 40

    await eventually(lambda: cluster.deployment(pool_name))
    [created] = [json.loads(r.data) if isinstance(r.data, bytes) else r.data
                 for r in cluster.requests("POST", "/deployments")]
    assert redis_env(created) == {"name": "AGENTPOOL_REDIS_URL", "valueFrom": {
        "secretKeyRef": {"name": f"{pool_name}-redis-worker", "key": "url"}}}, \
        "the Deployment is created with the pool's user: no rollout from shared to own"
    condition = await eventually(lambda: cluster.condition(pool_name, "Credentials"))
    assert (condition["status"], condition["reason"]) == ("True", "PerPoolUser")
    assert user in condition["message"]
    assert cluster.condition(pool_name, "Degraded")["status"] == "False"

    assert (await redis.execute_command("ACL", "GETUSER", user)) is not None
    client = aioredis.Redis.from_url(url)
    worker_client.append(client)
    jobs = TaskQueue(client, "jobs")
    await TaskQueue(redis, "jobs").submit({"n": 1})
    batch = await jobs.claim(WorkerInfo("pod", "i", 1).worker_id, 1, 30)
    assert len(batch.tasks) == 1 and await jobs.complete(batch.tasks[0], "done")
    with pytest.raises(NoPermissionError):
        await TaskQueue(client, "other-jobs").figures()
    with pytest.raises(NoPermissionError):
        await client.execute_command("FLUSHALL")

    published = json.dumps([cluster.pool(pool_name), cluster.events()])
    assert password not in published, "the password is in the pool's status or its events"
    assert "CredentialsCreated" in caplog.text
    assert password not in caplog.text


async def test_a_redis_whose_default_user_needs_no_password_is_said_to_confine_nothing(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
    protected_redis: RedisServer,
) -> None:
    """On a Redis without a password any connection, a pool user's too, may `AUTH default x`
    and leave its confinement: the condition says so, with one Warning; a Redis whose default
    user has a password confines."""
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url, queue="jobs"))
    condition = await eventually(lambda: cluster.condition(pool_name, "Credentials"))
    assert condition["status"] == "True"
    assert "confined to nothing: Redis's default user needs no password" in condition["message"]
    [warning] = await eventually(lambda: cluster.events(credentials.DEFAULT_OPEN))
    assert warning["type"] == "Warning"
    assert f"agentpool:{NAMESPACE}:{pool_name}:worker" in warning["message"]

    await cluster.create_secret("guarded-redis", {"url": protected_redis.url})
    await cluster.create_pool(pool_manifest("guarded", secret="guarded-redis", queue="jobs"))
    guarded = await eventually(lambda: cluster.condition("guarded", "Credentials"))
    assert guarded["message"].startswith(
        f"workers use Redis user agentpool:{NAMESPACE}:guarded:worker, confined to queue 'jobs'")
    assert len(cluster.events(credentials.DEFAULT_OPEN)) == 1


async def test_a_pool_submitting_to_other_queues_may_submit_there_and_not_claim(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, worker_client: list[aioredis.Redis],
) -> None:
    """worker.submitsTo: the workers learn the queues (AGENTPOOL_SUBMITS_TO) and their Redis
    user may submit to them, read, wait for and cancel their tasks; claiming there, or
    touching a queue not listed, is refused; a queue taken off the list is refused again."""
    manifest = pool_manifest(pool_name, redis_url=redis_url, queue="planner")
    manifest["spec"]["worker"]["submitsTo"] = ["coder", "review"]
    await cluster.create_pool(manifest)
    deployment = await eventually(lambda: cluster.deployment(pool_name))
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "AGENTPOOL_SUBMITS_TO", "value": "coder,review"} in container["env"]
    await eventually(lambda: cluster.condition(pool_name, "Credentials"))
    client = aioredis.Redis.from_url(worker_url(cluster, pool_name))
    worker_client.append(client)

    coder = TaskQueue(client, "coder")
    step = await coder.submit({"write": "tests"}, idempotency_key="plan-1:step-1")
    assert await coder.submit({"write": "tests"}, idempotency_key="plan-1:step-1") == step
    fan = await coder.submit_many(["a", "b"], after=[step])
    assert [i.state for i in await coder.get_many(fan)] == ["deferred"] * 2
    served = TaskQueue(redis, "coder")
    task = (await served.claim("coder-pod:i", 1, 30)).tasks[0]
    assert await served.complete(task, "done")
    assert (await coder.wait(step, timeout=5)).result == "done"
    other = await TaskQueue(client, "review").submit("look")
    assert await TaskQueue(client, "review").cancel(other) is not None
    for refused in (coder.claim("planner-pod:i", 1, 30), TaskQueue(client, "third").submit("x"),
                    client.delete(coder.task_key(step))):
        with pytest.raises(ResponseError, match=r"can't access|no permissions"):
            await refused
    await TaskQueue(client, "planner").figures()  # its own queue still as before

    await cluster.patch_pool(pool_name, {"spec": {"worker": {"submitsTo": ["review"]}}})

    async def refused() -> bool:
        try:
            await coder.submit("again")
        except ResponseError:
            return True
        return False

    await eventually(refused)
    await TaskQueue(client, "review").submit("still")


async def test_rights_a_spec_edit_adds_come_before_the_pods_that_need_them(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Deployment's new pods name a rate limit the moment it changes: its user may use
    it by then."""
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url,
                                            queue=f"q-{pool_name}", poll_seconds=3600))
    await eventually(lambda: cluster.condition(pool_name, "Credentials"))
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"
    limit_key = "ap:{rl:added-api}:state"
    assert not await may(redis, user, "HGET", limit_key, "x")
    real_patch = KubeApi.patch_deployment
    allowed_when_patched: list[bool] = []

    async def patch_deployment(api: KubeApi, namespace: str, name: str,
                               patch: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        if name == pool_name and "added-api" in json.dumps(patch):
            checker = aioredis.Redis.from_url(redis_url)
            try:
                allowed_when_patched.append(await may(checker, user, "HGET", limit_key, "x"))
            finally:
                await checker.aclose()
        return await real_patch(api, namespace, name, patch, *args, **kwargs)

    monkeypatch.setattr(KubeApi, "patch_deployment", patch_deployment)
    await cluster.patch_pool(pool_name, {"spec": {"rateLimits": [
        {"name": "added-api", "requestsPerMinute": 60}]}})
    await eventually(lambda: allowed_when_patched)
    assert allowed_when_patched[0], "the pods were given the limit before the user was"


@pytest.mark.parametrize("redis_mode", ["cluster"])
async def test_on_a_redis_cluster_the_pools_user_is_on_every_node(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, worker_client: list[aioredis.Redis],
) -> None:
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url, queue="jobs"))
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
    url = worker_url(cluster, pool_name)
    assert url.startswith(f"redis+cluster://agentpool%3A{NAMESPACE}%3A{pool_name}%3Aworker:")
    on_nodes = await redis.execute_command(  # type: ignore[no-untyped-call]
        "ACL GETUSER", user, target_nodes=RedisCluster.ALL_NODES)
    assert len(on_nodes) == 3 and all(on_nodes.values()), on_nodes

    client = redis_from_url(url)
    worker_client.append(client)
    jobs = TaskQueue(client, "jobs")
    await TaskQueue(redis, "jobs").submit({"n": 1})
    batch = await jobs.claim(WorkerInfo("pod", "i", 1).worker_id, 1, 30)
    assert len(batch.tasks) == 1 and await jobs.complete(batch.tasks[0], "done")
    with pytest.raises(NoPermissionError):
        await TaskQueue(client, "other-jobs").figures()


async def test_a_forgotten_user_is_applied_again_with_the_same_password(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str,
) -> None:
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
    url = worker_url(cluster, pool_name)
    await redis.execute_command("ACL", "DELUSER", user)  # as a Redis restart without ACL file

    async def usable() -> bool:
        client = aioredis.Redis.from_url(url)
        try:
            return bool(await client.ping())
        except AuthenticationError:
            return False
        finally:
            await client.aclose()

    assert await eventually(usable, within=10)
    assert worker_url(cluster, pool_name) == url, "the password changed: pods would roll"
    assert not cluster.requests("PATCH", f"/secrets/{pool_name}-redis-worker")
    # the round that created the Secret and the one that restored the user are two rounds
    assert len(cluster.requests("GET", f"/secrets/{pool_name}-redis-worker")) <= 1, \
        "a steady pool reads its worker Secret every round"


async def test_deleting_the_pool_deletes_its_redis_user(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str,
) -> None:
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
    assert await redis.execute_command("ACL", "GETUSER", user) is not None
    await cluster.delete_pool(pool_name)

    async def user_gone() -> bool:
        return await redis.execute_command("ACL", "GETUSER", user) is None

    await eventually(user_gone, within=10)
    await eventually(lambda: _gone(cluster, pool_name), within=10)


def _gone(cluster: Cluster, pool: str) -> bool:
    try:
        cluster.pool(pool)
    except KeyError:
        return True
    return False


async def test_a_credential_that_may_not_manage_users_leaves_the_workers_on_the_pool_url(
    cluster: Cluster, operator: OperatorThread, redis_server: RedisServer,
    redis: aioredis.Redis, pool_name: str,
) -> None:
    limited, password = f"limited-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    await redis.execute_command("ACL", "SETUSER", limited, "on", f">{password}", "~*", "&*",
                                "+@all", "-acl")
    try:
        await cluster.create_secret(f"{pool_name}-url", {
            "url": with_credentials(redis_server.url, limited, password)})
        await cluster.create_pool(pool_manifest(pool_name, secret=f"{pool_name}-url"))
        condition = await eventually(lambda: cluster.condition(pool_name, "Credentials"))
        assert (condition["status"], condition["reason"]) == ("False", "CredentialsShared")
        assert "may not manage ACL users" in condition["message"]
        assert cluster.condition(pool_name, "Degraded")["status"] == "False"
        assert cluster.condition(pool_name, "QueueReachable")["status"] == "True"
        assert redis_env(cluster.deployment(pool_name))["valueFrom"]["secretKeyRef"] == {
            "name": f"{pool_name}-url", "key": "url"}
        with pytest.raises(KeyError):
            cluster.get(SECRETS, f"{pool_name}-redis-worker")
        assert password not in json.dumps([cluster.pool(pool_name), cluster.events()])
    finally:
        await redis.execute_command("ACL", "DELUSER", limited)


def pod_manifest(pool: str, name: str, version: str) -> dict:
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": pool_labels(pool),
                     "annotations": {CREDENTIALS_VERSION: version}},
        "spec": {"containers": [{"name": "worker", "image": "registry.example/w:1"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [{"name": "worker", "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": started}}}],
        },
    }


def template_version(cluster: Cluster, pool: str) -> str:
    template = cluster.deployment(pool)["spec"]["template"]
    return str(template["metadata"]["annotations"][CREDENTIALS_VERSION])


async def can_claim(url: str, queue: str) -> bool:
    """A new connection with `url` claims a task (a worker pod starting or reconnecting)."""
    client = aioredis.Redis.from_url(url)
    try:
        batch = await TaskQueue(client, queue).claim(f"pod-{uuid.uuid4().hex[:6]}:i", 1, 30)
        return len(batch.tasks) == 1
    except AuthenticationError:
        return False
    finally:
        await client.aclose()


async def test_a_redis_restarted_empty_gets_the_pools_user_back_with_the_same_password(
    cluster: Cluster, operator: OperatorThread, pool_name: str,
    worker_client: list[aioredis.Redis], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis keeps ACL users in memory only: restarted without an ACL file (same port, no
    data), it has forgotten the pool's user. The operator's client reconnects, its backoff
    while Redis was down does not keep the workers out for long, and the user comes back with
    the password in the Secret: the Secret and the pods' credentials version stay, no pod
    rolls."""
    queue = f"q-{pool_name}"
    rounds: list[bool] = []  # each round of the pool: True when it read the queue
    real_observe = handlers.observe_queue

    async def counted(*args: Any) -> Any:
        observed = await real_observe(*args)
        rounds.append(observed[2] is None)
        return observed

    monkeypatch.setattr(handlers, "observe_queue", counted)
    server = RedisServer(port=free_port()).start()
    try:
        await cluster.create_pool(pool_manifest(pool_name, redis_url=server.url, queue=queue,
                                                poll_seconds=1))
        await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
        url = worker_url(cluster, pool_name)
        version = await eventually(lambda: template_version(cluster, pool_name))
        admin = aioredis.Redis.from_url(server.url)
        worker_client.append(admin)
        await TaskQueue(admin, queue).submit_many(list(range(3)))
        assert await eventually(lambda: can_claim(url, queue))

        server.stop()
        await eventually(
            lambda: cluster.condition(pool_name, "QueueReachable")["status"] == "False")
        # three failed rounds in a row: by then the retry delay has grown past pollSeconds
        await eventually(lambda: rounds[-3:] == [False] * 3, within=10)

        server.start()  # same port, empty: no data, no ACL file
        back = time.monotonic()
        fresh = aioredis.Redis.from_url(server.url)
        worker_client.append(fresh)
        assert await fresh.dbsize() == 0
        await TaskQueue(fresh, queue).submit_many(list(range(3)))
        assert await eventually(lambda: can_claim(url, queue), within=15, interval=0.1), \
            "the worker URL does not claim after Redis restarted"
        locked_out = time.monotonic() - back
        logging.getLogger(__name__).info(f"the workers claimed {locked_out:.1f}s after the "
                                         "restart")
        assert locked_out < 10, f"the workers were locked out {locked_out:.1f}s"
        assert await eventually(
            lambda: cluster.condition(pool_name, "QueueReachable")["status"] == "True")

        assert worker_url(cluster, pool_name) == url, "the password changed: pods would roll"
        assert template_version(cluster, pool_name) == version, "the pods would roll"
        assert not cluster.requests("PATCH", f"/secrets/{pool_name}-redis-worker")
        assert not cluster.events("CredentialsRotating")
        assert not cluster.events("CredentialsRestored")
    finally:
        server.close()


async def test_rotation_fails_no_claim_and_drops_the_old_password_once_the_pods_rolled(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, worker_client: list[aioredis.Redis],
) -> None:
    queue = f"q-{pool_name}"
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url, queue=queue))
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
    old_url = worker_url(cluster, pool_name)
    old_version = await eventually(lambda: template_version(cluster, pool_name))
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    await cluster.create(pods, pod_manifest(pool_name, "w-old", old_version))
    connected = aioredis.Redis.from_url(old_url)
    worker_client.append(connected)
    assert await connected.ping()
    await TaskQueue(redis, queue).submit_many(list(range(5)))

    await cluster.patch_pool(pool_name, {"metadata": {"annotations": {ROTATE: "now"}}})
    new_url = await eventually(
        lambda: worker_url(cluster, pool_name) != old_url and worker_url(cluster, pool_name))
    new_version = await eventually(
        lambda: template_version(cluster, pool_name) != old_version
        and template_version(cluster, pool_name))
    await eventually(lambda: ROTATE not in cluster.pool(pool_name)["metadata"]["annotations"])
    await eventually(lambda: cluster.events("CredentialsRotating"))

    # the old pod still runs: its open connection, a reconnect with the old password and a
    # new pod with the new one all claim
    assert len((await TaskQueue(connected, queue).claim("w-old:i", 1, 30)).tasks) == 1
    assert await can_claim(old_url, queue)
    assert await can_claim(new_url, queue)
    assert not cluster.events("CredentialsRotated")

    await cluster.create(pods, pod_manifest(pool_name, "w-new", new_version))
    await cluster.delete(f"{pods}/w-old")
    await eventually(lambda: cluster.events("CredentialsRotated"), within=10)

    async def old_refused() -> bool:
        return not await can_claim(old_url, queue)

    assert await eventually(old_refused, within=10)
    assert await can_claim(new_url, queue)
    with pytest.raises(RedisConnectionError):  # its connection was closed: no reconnect
        await TaskQueue(connected, queue).figures()
    secret = cluster.get(SECRETS, f"{pool_name}-redis-worker")
    assert not (secret["metadata"].get("annotations") or {}).get(
        "agentpool.dev/retiring-password-sha256")
    published = json.dumps([cluster.pool(pool_name), cluster.events()])
    for url in (old_url, new_url):
        password = urlsplit(url).password
        assert password and password not in published


async def test_a_pool_can_publish_a_producer_credential_that_submits_but_cannot_claim(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, worker_client: list[aioredis.Redis],
) -> None:
    queue = f"q-{pool_name}"
    await cluster.create_pool(pool_manifest(
        pool_name, redis_url=redis_url, queue=queue,
        redis={"url": redis_url, "producerCredentials": True}))
    secret = await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-producer"))
    user = f"agentpool:{NAMESPACE}:{pool_name}:producer"
    assert secret["metadata"]["ownerReferences"][0]["name"] == pool_name
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert urlsplit(url).username == user.replace(":", "%3A")
    client = aioredis.Redis.from_url(url)
    worker_client.append(client)
    producer = TaskQueue(client, queue)
    task_id = await producer.submit({"prompt": "hi"})
    admin = TaskQueue(redis, queue)
    waiting = producer.wait(task_id, timeout=10)
    [task] = (await admin.claim("pod:i", 1, 30)).tasks
    await admin.complete(task, "answer")
    assert (await waiting).result == "answer"
    await producer.submit("another")
    with pytest.raises(ResponseError, match="can't run this command"):
        await producer.claim("pod:p", 1, 30)
    assert (await admin.figures()).queued == 1

    await cluster.patch_pool(pool_name, {"spec": {"redis": {"producerCredentials": False}}})

    async def user_gone() -> bool:
        return await redis.execute_command("ACL", "GETUSER", user) is None

    await eventually(user_gone, within=10)
    await eventually(lambda: cluster.events("CredentialsRemoved"))
    with pytest.raises(KeyError):
        cluster.get(SECRETS, f"{pool_name}-redis-producer")


async def can_submit(url: str, queue: str) -> bool:
    """A new connection with `url` submits a task (a producer starting or reconnecting)."""
    client = aioredis.Redis.from_url(url)
    try:
        return bool(await TaskQueue(client, queue).submit("hi"))
    except AuthenticationError:
        return False
    finally:
        await client.aclose()


def producer_url(cluster: Cluster, pool: str) -> str:
    secret = cluster.get(SECRETS, f"{pool}-redis-producer")
    return base64.b64decode(secret["data"]["url"]).decode()


@pytest.mark.parametrize("operator_settings", [OperatorSettings(
    port=free_port(), status_refresh_seconds=0.5, per_pool_credentials=True,
    producer_password_grace_seconds=4)])
async def test_rotation_gives_producers_a_new_password_and_the_old_one_a_grace_period(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
) -> None:
    """The services that submit are not the operator's to roll: their Secret gets the new
    password at once, and the old one is accepted until the grace period ends."""
    queue = f"q-{pool_name}"
    await cluster.create_pool(pool_manifest(
        pool_name, redis_url=redis_url, queue=queue,
        redis={"url": redis_url, "producerCredentials": True}))
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-producer"))
    old_url = producer_url(cluster, pool_name)

    await cluster.patch_pool(pool_name, {"metadata": {"annotations": {ROTATE: "now"}}})
    new_url = await eventually(
        lambda: producer_url(cluster, pool_name) != old_url and producer_url(cluster, pool_name))
    [rotating] = await eventually(lambda: [e for e in cluster.events("CredentialsRotating")
                                           if "producer" in e["message"]])
    assert "the old one is accepted until 20" in rotating["message"]
    annotations = cluster.get(SECRETS, f"{pool_name}-redis-producer")["metadata"]["annotations"]
    assert float(annotations["agentpool.dev/retiring-password-until"]) > time.time()
    assert await can_submit(old_url, queue)
    assert await can_submit(new_url, queue)

    # rotated again within the grace (after a leak, say): the first password goes at once
    await cluster.patch_pool(pool_name, {"metadata": {"annotations": {ROTATE: "again"}}})
    newest = await eventually(
        lambda: producer_url(cluster, pool_name) != new_url and producer_url(cluster, pool_name))

    async def refused(url: str) -> bool:
        try:
            return not await can_submit(url, queue)
        except RedisConnectionError:
            return False  # let in just before its password went, then closed: ask again

    assert await refused(old_url)
    assert await can_submit(new_url, queue)
    assert await eventually(lambda: refused(new_url), within=15)

    def retiring_until() -> str | None:
        annotations = cluster.get(SECRETS, f"{pool_name}-redis-producer")["metadata"].get(
            "annotations") or {}
        return annotations.get("agentpool.dev/retiring-password-until")

    # the user's connections are closed after its password goes, the Secret written after
    # that (not the Event: a first grace that ended before the second rotation said it)
    await eventually(lambda: not retiring_until())
    assert await can_submit(newest, queue)
    await eventually(lambda: [e for e in cluster.events("CredentialsRotated")
                              if "producer" in e["message"]])
    published = json.dumps([cluster.pool(pool_name), cluster.events()])
    for url in (old_url, new_url, newest):
        password = urlsplit(url).password
        assert password and password not in published


async def test_a_producer_rotation_that_fails_once_is_done_in_a_later_round(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rotation request leaves the pool only when the producer's password rotated too: a
    round whose producer step fails (here Redis drops the connection on its ACL SETUSER)
    leaves it to the next round."""
    queue = f"q-{pool_name}"
    await cluster.create_pool(pool_manifest(
        pool_name, redis_url=redis_url, queue=queue,
        redis={"url": redis_url, "producerCredentials": True}))
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-producer"))
    await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-worker"))
    old_producer, old_worker = producer_url(cluster, pool_name), worker_url(cluster, pool_name)
    producer_user = f"agentpool:{NAMESPACE}:{pool_name}:producer"
    real_set_user = credentials.set_user
    failures: list[str] = []

    async def fails_once_for_the_producer(admin: aioredis.Redis, username: str,
                                          rules: Iterable[str]) -> None:
        if username == producer_user and not failures:
            failures.append(username)
            raise RedisConnectionError("connection reset by peer")
        await real_set_user(admin, username, rules)

    monkeypatch.setattr(credentials, "set_user", fails_once_for_the_producer)
    await cluster.patch_pool(pool_name, {"metadata": {"annotations": {ROTATE: "now"}}})
    await eventually(lambda: worker_url(cluster, pool_name) != old_worker)
    await eventually(lambda: failures)
    new_producer = await eventually(
        lambda: producer_url(cluster, pool_name) != old_producer
        and producer_url(cluster, pool_name))
    await eventually(lambda: [e for e in cluster.events("CredentialsRotating")
                              if "producer" in e["message"]])
    annotations = await eventually(
        lambda: (lambda a: PRODUCER_ROTATE not in a and ROTATE not in a and a)(
            cluster.pool(pool_name)["metadata"].get("annotations") or {"-": ""}))
    assert PRODUCER_ROTATE not in annotations
    assert await can_submit(old_producer, queue), "the old password has its grace period"
    assert await can_submit(new_producer, queue)
    assert len([e for e in cluster.events("CredentialsRotating")
                if "producer" in e["message"]]) == 1, "rotated once"


class SecretsInMemory:
    """The Secret calls of the operator, on a dict: the test deletes a Secret by hand."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.secrets.get(name))

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.secrets[body["metadata"]["name"]] = copy.deepcopy(dict(body))
        return copy.deepcopy(dict(body))

    async def patch_secret(self, namespace: str, name: str,
                           patch: Mapping[str, Any]) -> dict[str, Any]:
        secret = self.secrets[name]
        secret.update({k: v for k, v in patch.items() if k != "metadata"})
        meta = secret["metadata"]
        for key, value in (patch.get("metadata") or {}).items():
            if key != "annotations":
                meta[key] = value
        annotations = meta.setdefault("annotations", {})
        for key, value in ((patch.get("metadata") or {}).get("annotations") or {}).items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return copy.deepcopy(secret)


async def test_a_deleted_worker_secret_keeps_the_running_pods_password_until_they_rolled(
    redis: aioredis.Redis, redis_url: str, pool_name: str,
) -> None:
    """A worker Secret deleted by hand comes back with a new password (the old one is known
    to Redis only as a hash), and the old one stays accepted until every pod rolled: running
    pods reconnect meanwhile."""
    queue = f"q-{pool_name}"
    pool = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"namespace": NAMESPACE, "name": pool_name, "uid": "u-1"}, "spec": {}}
    kube, known = SecretsInMemory(), KnownSecrets()
    secret = f"{pool_name}-redis-worker"

    async def round_(now: float, pods: list[dict] | None = None) -> credentials.CredentialsRound:
        return await ensure_worker_credentials(kube, redis, pool, queue, redis_url,
                                               known=known, now=now, pods=pods)

    try:
        first = await round_(0.0)
        assert first.credentials.version
        old_url = base64.b64decode(kube.secrets[secret]["data"]["url"]).decode()
        old_pod = pod_manifest(pool_name, "w-old", first.credentials.version)
        await TaskQueue(redis, queue).submit_many(list(range(5)))

        del kube.secrets[secret]
        again = await round_(credentials.SECRET_RECHECK_SECONDS + 1, [old_pod])
        assert secret in kube.secrets
        assert again.credentials.version != first.credentials.version, "the pods roll"
        new_url = base64.b64decode(kube.secrets[secret]["data"]["url"]).decode()
        assert password_of(kube.secrets[secret]) != urlsplit(old_url).password
        assert await can_claim(old_url, queue), "a running pod's reconnect still works"
        assert await can_claim(new_url, queue)
        assert [reason for reason, _ in again.events] == ["CredentialsRestored"]

        assert again.credentials.version
        new_pod = pod_manifest(pool_name, "w-new", again.credentials.version)
        waiting = await round_(credentials.SECRET_RECHECK_SECONDS + 2, [old_pod, new_pod])
        assert not waiting.events
        assert await can_claim(old_url, queue)
        done = await round_(credentials.SECRET_RECHECK_SECONDS + 3, [new_pod])
        assert [reason for reason, _ in done.events] == ["CredentialsRotated"]
        assert not await can_claim(old_url, queue)
        assert await can_claim(new_url, queue)
        published = json.dumps([kube.secrets[secret]["metadata"], done.events, again.events])
        for url in (old_url, new_url):
            password = urlsplit(url).password
            assert password and password not in published
    finally:
        await credentials.remove_user(redis, NAMESPACE, pool_name)


class InMemoryRounds:
    """`ensure_worker_credentials` rounds of one pool on a real Redis, its Secret in memory,
    each round reading the Secret afresh (as after SECRET_RECHECK_SECONDS)."""

    def __init__(self, redis: aioredis.Redis, redis_url: str, pool_name: str) -> None:
        self.redis, self.pool_url, self.pool_name = redis, redis_url, pool_name
        self.queue = f"q-{pool_name}"
        self.pool = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                     "metadata": {"namespace": NAMESPACE, "name": pool_name, "uid": "u-1"},
                     "spec": {}}
        self.kube, self.known = SecretsInMemory(), KnownSecrets()
        self.secret = f"{pool_name}-redis-worker"
        self.now = 0.0
        self.patches = 0

    async def round(self, pods: list[dict] | None = None) -> credentials.CredentialsRound:
        self.now += credentials.SECRET_RECHECK_SECONDS + 1
        before = copy.deepcopy(self.kube.secrets.get(self.secret))
        done = await ensure_worker_credentials(
            self.kube, self.redis, self.pool, self.queue, self.pool_url, known=self.known,
            now=self.now, pods=pods)
        if before is not None and self.kube.secrets.get(self.secret) != before:
            self.patches += 1
        return done

    @property
    def url(self) -> str:
        return base64.b64decode(self.kube.secrets[self.secret]["data"]["url"]).decode()

    def pod(self, name: str, done: credentials.CredentialsRound) -> dict:
        assert done.credentials.version
        return pod_manifest(self.pool_name, name, done.credentials.version)


@pytest.fixture
async def rounds(redis: aioredis.Redis, redis_url: str,
                 pool_name: str) -> AsyncIterator[InMemoryRounds]:
    yield InMemoryRounds(redis, redis_url, pool_name)
    await credentials.remove_user(redis, NAMESPACE, pool_name)


async def test_a_worker_secret_edited_by_hand_keeps_the_running_pods_password_until_they_rolled(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    """A password written into the Secret by hand (or a Secret restored from a backup) is
    taken, and the password the running pods have stays accepted until they rolled."""
    first = await rounds.round()
    old_url = rounds.url
    await TaskQueue(redis, rounds.queue).submit_many(list(range(5)))
    edited = with_credentials(redis_url, unquote(urlsplit(old_url).username or ""),
                              secrets.token_urlsafe(16))
    rounds.kube.secrets[rounds.secret]["data"]["url"] = base64.b64encode(
        edited.encode()).decode()
    old_pod = rounds.pod("w-old", first)
    again = await rounds.round([old_pod])
    assert rounds.url == edited
    assert again.credentials.version != first.credentials.version, "the pods roll"
    assert await can_claim(old_url, rounds.queue), "a running pod's reconnect still works"
    assert await can_claim(edited, rounds.queue)
    await rounds.round([old_pod, rounds.pod("w-new", again)])
    assert await can_claim(old_url, rounds.queue)
    done = await rounds.round([rounds.pod("w-new", again)])
    assert [reason for reason, _ in done.events] == ["CredentialsRotated"]
    assert not await can_claim(old_url, rounds.queue)
    assert await can_claim(edited, rounds.queue)


async def test_a_rotation_whose_retiring_mark_was_removed_keeps_the_old_password_until_rolled(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    first = await rounds.round()
    old_url, old_pod = rounds.url, rounds.pod("w-old", first)
    await TaskQueue(redis, rounds.queue).submit_many(list(range(5)))
    started = await ensure_worker_credentials(
        rounds.kube, redis, rounds.pool, rounds.queue, redis_url, known=rounds.known,
        now=rounds.now, pods=[old_pod], request="r-1")
    assert [reason for reason, _ in started.events] == ["CredentialsRotating"]
    annotations = rounds.kube.secrets[rounds.secret]["metadata"]["annotations"]
    del annotations[credentials.RETIRING_ANNOTATION]
    await rounds.round([old_pod])
    assert await can_claim(old_url, rounds.queue), "still accepted: a pod has it"
    done = await rounds.round([rounds.pod("w-new", started)])
    assert [reason for reason, _ in done.events] == ["CredentialsRotated"]
    assert not await can_claim(old_url, rounds.queue)


async def test_another_redis_url_rolls_the_pods_and_no_admin_password_reaches_them(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    """The pool moved to another Redis (here: another database of the same one) keeps its
    password, yet its pods must roll to reach it; an admin password given in the pool URL's
    query goes no further than the operator."""
    first = await rounds.round()
    base = redis_url.rsplit("/", 1)[0] if urlsplit(redis_url).path not in ("", "/") \
        else redis_url.rstrip("/")
    rounds.pool_url = (f"{base}/3?password=ADMIN-SECRET&socket_timeout=5"
                       "&client_name=a/b&health_check_interval")
    moved = await rounds.round()
    assert moved.credentials.version != first.credentials.version
    assert urlsplit(rounds.url).path == "/3"
    assert "ADMIN-SECRET" not in rounds.url
    assert urlsplit(rounds.url).query == (
        "socket_timeout=5&client_name=a/b&health_check_interval"), "the others as written"


async def may(redis: aioredis.Redis, user: str, *command: str) -> bool:
    reply = await redis.execute_command("ACL DRYRUN", user, *command)
    return reply in (b"OK", "OK")


async def test_rights_a_spec_edit_takes_away_stay_until_the_pods_rolled(
    redis: aioredis.Redis, pool_name: str, rounds: InMemoryRounds,
) -> None:
    """The pods of the spec before run on with its rate limit and its queue to submit to
    until they are replaced: their runs must not be refused half-way."""
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"
    limit_key, other_key = "ap:{rl:search-api}:state", f"ap:{{other-{pool_name}}}:t:x"
    rounds.pool["spec"] = {"rateLimits": [{"name": "search-api", "requestsPerMinute": 60}],
                           "worker": {"submitsTo": [f"other-{pool_name}"]}}
    before = await rounds.round()
    old_pod = rounds.pod("w-old", before)
    assert await may(redis, user, "HGET", limit_key, "x")
    assert await may(redis, user, "HGET", other_key, "payload")
    rounds.pool["spec"] = {}
    after = await rounds.round([old_pod])
    assert after.credentials.version != before.credentials.version, "the pods roll"
    assert await may(redis, user, "HGET", limit_key, "x"), "an old pod still runs"
    assert await may(redis, user, "HGET", other_key, "payload")
    assert after.events == (), "a spec edit is no restored Secret"
    new_pod = rounds.pod("w-new", after)
    await rounds.round([old_pod, new_pod])
    assert await may(redis, user, "HGET", limit_key, "x")
    await rounds.round([new_pod])
    assert not await may(redis, user, "HGET", limit_key, "x")
    assert not await may(redis, user, "HGET", other_key, "payload")
    annotations = rounds.kube.secrets[rounds.secret]["metadata"]["annotations"]
    assert credentials.RETIRING_GRANTS_ANNOTATION not in annotations


async def test_a_key_added_to_the_worker_secret_by_hand_is_left_alone(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    await rounds.round()
    rounds.kube.secrets[rounds.secret]["data"]["note"] = base64.b64encode(b"x").decode()
    for _ in range(3):
        assert (await rounds.round()).events == ()
    assert rounds.patches == 0


async def test_a_redis_without_the_acl_command_leaves_the_workers_on_the_pool_url(
    cluster: Cluster, operator: OperatorThread, pool_name: str,
) -> None:
    with RedisServer(extra_args=("--rename-command", "ACL", "")) as no_acl:
        await cluster.create_pool(pool_manifest(pool_name, redis_url=no_acl.url))
        condition = await eventually(lambda: cluster.condition(pool_name, "Credentials"))
        assert (condition["status"], condition["reason"]) == ("False", "CredentialsShared")
        assert "this Redis has no ACLs" in condition["message"]
        assert cluster.condition(pool_name, "QueueReachable")["status"] == "True"
        assert cluster.condition(pool_name, "Degraded")["status"] == "False"
        assert redis_env(cluster.deployment(pool_name)) == {
            "name": "AGENTPOOL_REDIS_URL", "value": no_acl.url}


async def test_a_pool_whose_redis_does_not_answer_yet_gets_no_pod_with_the_operators_url(
    cluster: Cluster, operator: OperatorThread, pool_name: str,
) -> None:
    """Until its own Redis user is settled, a pool has no Deployment: pods started meanwhile
    got the pool's URL (the operator's credential), read by agent code before the rollout
    that moved them to the pool's user."""
    server = RedisServer(port=free_port())
    await cluster.create_pool(pool_manifest(pool_name, redis_url=server.url))
    degraded = await eventually(
        lambda: cluster.condition(pool_name, "Degraded")["reason"] == "CredentialsPending")
    assert degraded
    with pytest.raises(KeyError):
        cluster.deployment(pool_name)
    server.start()
    try:
        deployment = await eventually(lambda: _deployment_or_none(cluster, pool_name),
                                      within=20)
        (worker,) = deployment["spec"]["template"]["spec"]["containers"]
        urls = [e for e in worker["env"] if e["name"] == "AGENTPOOL_REDIS_URL"]
        assert urls == [{"name": "AGENTPOOL_REDIS_URL", "valueFrom": {
            "secretKeyRef": {"name": f"{pool_name}-redis-worker", "key": "url"}}}]
        assert [e["reason"] for e in cluster.events()
                if e["involvedObject"]["name"] == pool_name
                and e["reason"] == "DeploymentRestored"] == []
    finally:
        server.stop()


def _deployment_or_none(cluster: Cluster, name: str) -> dict[str, Any] | None:
    try:
        return cluster.deployment(name)
    except KeyError:
        return None


async def test_a_request_rotates_once_however_often_a_round_sees_it(
    redis: aioredis.Redis, redis_url: str, pool_name: str,
) -> None:
    """The worker Secret records the request its rotation served, with the new password: a
    round that sees the same request again (a stale copy of the pool, an operator restarted
    between two writes) starts no second rotation, and so no second rollout."""
    queue = f"q-{pool_name}"
    pool = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"namespace": NAMESPACE, "name": pool_name, "uid": "u-1"}, "spec": {}}
    kube, known = SecretsInMemory(), KnownSecrets()
    secret = f"{pool_name}-redis-worker"
    clock = iter(range(0, 10_000, int(credentials.SECRET_RECHECK_SECONDS) + 1))

    async def round_(request: str | None, pods: list[dict]) -> credentials.CredentialsRound:
        return await ensure_worker_credentials(kube, redis, pool, queue, redis_url,
                                               known=known, now=next(clock), pods=pods,
                                               request=request)

    try:
        first = await round_(None, [])
        assert first.credentials.version
        old_pod = pod_manifest(pool_name, "w-old", first.credentials.version)
        rotating = await round_("41", [old_pod])
        assert [reason for reason, _ in rotating.events] == ["CredentialsRotating"]
        assert rotating.credentials.version != first.credentials.version
        assert kube.secrets[secret]["metadata"]["annotations"][
            credentials.ROTATION_ANNOTATION] == "41"
        assert not (await round_("41", [old_pod])).events, "seen again while the pods roll"
        assert rotating.credentials.version
        new_pod = pod_manifest(pool_name, "w-new", rotating.credentials.version)
        done = await round_("41", [new_pod])
        assert [reason for reason, _ in done.events] == ["CredentialsRotated"]
        steady = await round_("41", [new_pod])
        assert not steady.events, "the same request once the pods rolled"
        assert steady.credentials.version == rotating.credentials.version
        again = await round_("57", [new_pod])
        assert [reason for reason, _ in again.events] == ["CredentialsRotating"]
        assert again.credentials.version != rotating.credentials.version
    finally:
        await credentials.remove_user(redis, NAMESPACE, pool_name)


async def acl_setuser_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_acl|setuser", {}).get("calls", 0))


async def test_an_operator_restarted_mid_rotation_rotates_once(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, pool_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator stops right after the worker Secret got the new password: the next one
    finishes that rotation, rotates the producer once, and the pods roll once."""
    await cluster.create_pool(pool_manifest(
        pool_name, redis_url=redis_url, queue=f"q-{pool_name}",
        redis={"url": redis_url, "producerCredentials": True}))
    first = OperatorThread(operator_settings)
    await first.start()
    stopped_at = threading.Event()
    real_patch = KubeApi.patch_secret

    async def stops_after_the_new_password(api: KubeApi, namespace: str, name: str,
                                           patch: Mapping[str, Any]) -> Any:
        patched = await real_patch(api, namespace, name, patch)
        if name.endswith("-redis-worker") and "data" in patch and not stopped_at.is_set():
            stopped_at.set()
            await asyncio.Event().wait()  # the process died here
        return patched

    try:
        await eventually(lambda: cluster.get(SECRETS, f"{pool_name}-redis-producer"))
        old_worker, old_producer = worker_url(cluster, pool_name), producer_url(cluster, pool_name)
        old_version = await eventually(lambda: template_version(cluster, pool_name))
        pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
        await cluster.create(pods, pod_manifest(pool_name, "w-old", old_version))
        monkeypatch.setattr(KubeApi, "patch_secret", stops_after_the_new_password)
        await cluster.patch_pool(pool_name, {"metadata": {"annotations": {ROTATE: "now"}}})
        assert await asyncio.to_thread(stopped_at.wait, 20)
    finally:
        await first.stop()
    monkeypatch.setattr(KubeApi, "patch_secret", real_patch)
    new_worker = worker_url(cluster, pool_name)
    assert new_worker != old_worker

    second = OperatorThread(operator_settings.model_copy(update={"port": free_port()}))
    await second.start()
    try:
        new_version = await eventually(
            lambda: template_version(cluster, pool_name) != old_version
            and template_version(cluster, pool_name))
        await eventually(lambda: producer_url(cluster, pool_name) != old_producer)
        await cluster.create(pods, pod_manifest(pool_name, "w-new", new_version))
        await cluster.delete(f"{pods}/w-old")
        await eventually(lambda: [e for e in cluster.events("CredentialsRotated")
                                  if "producer" not in e["message"]], within=15)
        await eventually(lambda: PRODUCER_ROTATE not in (
            cluster.pool(pool_name)["metadata"].get("annotations") or {}))
        # rounds after the rotation ended (each applies the users again): nothing starts
        applied = await acl_setuser_calls(redis)

        async def three_more_rounds() -> bool:
            return await acl_setuser_calls(redis) >= applied + 6

        await eventually(three_more_rounds, within=15)
        assert worker_url(cluster, pool_name) == new_worker
        assert template_version(cluster, pool_name) == new_version
        assert ROTATE not in (cluster.pool(pool_name)["metadata"].get("annotations") or {})
        assert len([e for e in cluster.events("CredentialsRotating")
                    if "producer" in e["message"]]) == 1
    finally:
        await second.stop()
    assert second.error is None, second.error


class RefusingSecrets(SecretsInMemory):
    """Secrets in memory whose writes the API refuses (as RBAC, a ResourceQuota or a
    namespace outside secretNamespaces would) while `refusing` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = True

    def _refuse(self) -> None:
        if self.refusing:
            error = ApiException(status=403, reason="Forbidden")
            error.body = json.dumps({"message": 'secrets is forbidden: exceeded quota: '
                                                'secrets, requested: secrets=1'})
            raise error

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._refuse()
        return await super().create_secret(namespace, body)

    async def patch_secret(self, namespace: str, name: str,
                           patch: Mapping[str, Any]) -> dict[str, Any]:
        self._refuse()
        return await super().patch_secret(namespace, name, patch)


def foreign_secret(name: str, url: str, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE, **metadata},
            "data": {"url": base64.b64encode(url.encode()).decode(),
                     "other": base64.b64encode(b"keep").decode()}}


async def connects(url: str, queue: str) -> bool:
    """A new connection with `url` reads the queue's figures."""
    client = aioredis.Redis.from_url(url)
    try:
        return await TaskQueue(client, queue).figures() is not None
    except AuthenticationError:
        return False
    finally:
        await client.aclose()


async def user_hashes(redis: aioredis.Redis, user: str) -> list[str] | None:
    """The password hashes of `user` (None: no such user)."""
    info = await redis.execute_command("ACL", "GETUSER", user)
    if info is None:
        return None
    reply = info.get(b"passwords", info.get("passwords"))
    return [h.decode() if isinstance(h, bytes) else h for h in reply]


async def test_another_secret_of_the_worker_secrets_name_is_neither_used_nor_written(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    """Whoever may create a pool may not take over a Secret they cannot write: one of the
    worker Secret's name that no AgentPool of the pool's name controls is not patched,
    adopted or read for its password, and no user is made for it, until a person deletes
    it."""
    user = f"agentpool:{NAMESPACE}:{rounds.pool_name}:worker"
    theirs = foreign_secret(rounds.secret, "redis://app:their-password@db:6379/0",
                            ownerReferences=[{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": rounds.pool_name, "uid": "d-1",
                                              "controller": True}])
    rounds.kube.secrets[rounds.secret] = copy.deepcopy(theirs)
    first = await rounds.round()
    assert rounds.kube.secrets[rounds.secret] == theirs
    assert await user_hashes(redis, user) is None, "a user was made for another's Secret"
    condition = first.credentials.condition
    assert (condition.status, condition.reason) == ("False", credentials.CONFLICT)
    assert f"{NAMESPACE}/{rounds.secret}" in condition.message
    assert "rename or delete" in condition.message
    assert not first.credentials.usable
    assert [reason for reason, _ in first.events] == [credentials.CONFLICT]
    again = await ensure_worker_credentials(
        rounds.kube, redis, rounds.pool, rounds.queue, rounds.pool_url, known=rounds.known,
        now=rounds.now + 1)
    assert again.credentials.condition.reason == credentials.CONFLICT
    assert again.events == (), "reported once, when it began"
    assert "their-password" not in json.dumps([condition.message, again.events])

    del rounds.kube.secrets[rounds.secret]  # a person deleted it
    ours = await ensure_worker_credentials(
        rounds.kube, redis, rounds.pool, rounds.queue, rounds.pool_url, known=rounds.known,
        now=rounds.now + 2)
    assert ours.credentials.condition.reason == "PerPoolUser"
    assert [reason for reason, _ in ours.events
            if reason != credentials.DEFAULT_OPEN] == ["CredentialsCreated"]  # (this Redis)
    assert password_of(rounds.kube.secrets[rounds.secret]) != "their-password"


async def test_the_secret_of_an_earlier_pool_of_the_same_name_is_taken_over(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    """A pool deleted and created again while the garbage collector has not removed the
    Secret of the earlier one: the new pool owns it from then on, with its password."""
    await rounds.round()
    password = password_of(rounds.kube.secrets[rounds.secret])
    rounds.pool["metadata"]["uid"] = "u-2"
    again = await rounds.round()
    assert again.credentials.condition.reason == "PerPoolUser"
    secret = rounds.kube.secrets[rounds.secret]
    assert [ref["uid"] for ref in secret["metadata"]["ownerReferences"]] == ["u-2"]
    assert password_of(secret) == password


async def test_another_secret_of_the_producer_secrets_name_is_neither_used_nor_deleted(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    user = f"agentpool:{NAMESPACE}:{rounds.pool_name}:producer"
    name = f"{rounds.pool_name}-redis-producer"
    theirs = foreign_secret(name, "redis://app:their-password@db:6379/0")

    async def producer_round(wanted: bool, now: float) -> tuple[str, str] | None:
        kube = ProducerSecrets(rounds.kube)
        return await credentials.ensure_producer_credentials(
            kube, redis, rounds.pool, rounds.queue, redis_url, wanted=wanted,
            known=rounds.known, now=now, clock=time.time(), grace=60.0)

    try:
        rounds.kube.secrets[name] = copy.deepcopy(theirs)
        event = await producer_round(True, 1.0)
        assert event is not None and event[0] == credentials.CONFLICT
        assert f"{NAMESPACE}/{name}" in event[1]
        assert await producer_round(True, 2.0) is None, "reported once"
        assert rounds.kube.secrets[name] == theirs
        assert await user_hashes(redis, user) is None
        assert await producer_round(False, 3.0) is None
        assert rounds.kube.secrets.get(name) == theirs, "another's Secret was deleted"
    finally:
        await credentials.remove_user(redis, NAMESPACE, rounds.pool_name, credentials.Role.PRODUCER)


class ProducerSecrets:
    """The Secret calls of the producer's rounds on `SecretsInMemory`, deletion too."""

    def __init__(self, store: SecretsInMemory) -> None:
        self.store = store
        self.get_secret = store.get_secret
        self.create_secret = store.create_secret
        self.patch_secret = store.patch_secret

    async def delete_secret(self, namespace: str, name: str) -> bool:
        return self.store.secrets.pop(name, None) is not None


async def test_a_worker_secret_the_api_refuses_leaves_no_password_on_the_user(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    """Round after round of a Secret the API refuses to create: no password gathers on the
    user (each round's would be one more), the condition says what the API answered, and
    once the API allows it the Secret and the user hold the same one password."""
    user = f"agentpool:{NAMESPACE}:{rounds.pool_name}:worker"
    rounds.kube = RefusingSecrets()
    reports = []
    for _ in range(4):
        refused = await rounds.round()
        reports.extend(refused.events)
        assert await user_hashes(redis, user) in (None, []), \
            "a password no Secret holds is on the user"
    condition = refused.credentials.condition
    assert (condition.status, condition.reason) == ("False", credentials.REFUSED)
    assert "403 Forbidden: secrets is forbidden: exceeded quota" in condition.message
    assert "does not answer" not in condition.message
    assert not refused.credentials.usable
    assert [reason for reason, _ in reports] == [credentials.REFUSED], "once, as it began"

    rounds.kube.refusing = False
    created = await rounds.round()
    assert [reason for reason, _ in created.events
            if reason != credentials.DEFAULT_OPEN] == ["CredentialsCreated"]  # (this Redis)
    assert created.credentials.condition.reason == "PerPoolUser"
    assert await user_hashes(redis, user) == [password_hash(password_of(
        rounds.kube.secrets[rounds.secret]) or "")]
    assert await connects(rounds.url, rounds.queue)


async def test_a_rotation_whose_secret_the_api_refuses_keeps_the_old_password_alone(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    user = f"agentpool:{NAMESPACE}:{rounds.pool_name}:worker"
    first = await rounds.round()
    old_url, old_pod = rounds.url, rounds.pod("w-old", first)
    secrets_before = copy.deepcopy(rounds.kube.secrets)
    refusing = RefusingSecrets()
    refusing.secrets = rounds.kube.secrets
    rounds.kube = refusing
    for _ in range(3):
        waiting = await ensure_worker_credentials(
            rounds.kube, redis, rounds.pool, rounds.queue, redis_url, known=rounds.known,
            now=rounds.now, pods=[old_pod], request="r-1")
        rounds.now += credentials.SECRET_RECHECK_SECONDS + 1
        assert await user_hashes(redis, user) == [password_hash(urlsplit(old_url).password
                                                                or "")]
    assert rounds.kube.secrets == secrets_before
    assert waiting.credentials.usable, "the workers' Secret is there, as it was"
    assert waiting.credentials.version == first.credentials.version, "no pod rolls"
    assert waiting.credentials.condition.reason == credentials.REFUSED
    refusing.refusing = False
    started = await ensure_worker_credentials(
        rounds.kube, redis, rounds.pool, rounds.queue, redis_url, known=rounds.known,
        now=rounds.now, pods=[old_pod], request="r-1")
    assert [reason for reason, _ in started.events] == ["CredentialsRotating"]
    assert started.credentials.condition.reason == "PerPoolUser"
    assert len(await user_hashes(redis, user) or []) == 2
    assert await connects(old_url, rounds.queue) and await connects(rounds.url, rounds.queue)


@pytest.fixture
async def operator_user(redis: aioredis.Redis,
                        redis_url: str) -> AsyncIterator[tuple[str, str, aioredis.Redis]]:
    """An operator's credential of its own on the test's Redis (its rights narrowed by the
    test): its user's name, its URL and a client with it."""
    name, password = f"op-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    await redis.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", "~*",
                                "&*", "+@all")
    url = with_credentials(redis_url, name, password)
    client = aioredis.Redis.from_url(url)
    yield name, url, client
    await client.aclose()
    await redis.execute_command("ACL", "DELUSER", name)


async def test_a_pool_whose_credential_loses_acl_setuser_keeps_its_workers_user(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
    operator_user: tuple[str, str, aioredis.Redis],
) -> None:
    """The pool's own credential may no longer manage users: the workers stay on the user
    they have (not on the pool's URL, the operator's credential), and the condition says
    rotations wait."""
    name, _, admin = operator_user
    rounds.redis = admin
    first = await rounds.round()
    url = rounds.url
    await redis.execute_command("ACL", "SETUSER", name, "-acl|setuser")
    held = await rounds.round()
    assert held.credentials.secret is not None
    assert held.credentials.secret.name == rounds.secret
    assert held.credentials.usable and held.credentials.version is None
    condition = held.credentials.condition
    assert (condition.status, condition.reason) == ("False", credentials.UNMANAGED)
    assert "may not manage ACL users" in condition.message
    assert "rotations" in condition.message
    assert [reason for reason, _ in held.events] == [credentials.UNMANAGED]
    assert (await rounds.round()).events == (), "reported once"
    assert rounds.url == url
    await TaskQueue(redis, rounds.queue).submit("x")
    assert await can_claim(url, rounds.queue)

    await redis.execute_command("ACL", "SETUSER", name, "+acl|setuser")
    back = await rounds.round()
    assert back.credentials.condition.reason == "PerPoolUser"
    assert back.credentials.version == first.credentials.version
    assert back.events == ()


async def test_a_producer_user_the_credential_may_no_longer_manage_keeps_its_rotation_owed(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
    operator_user: tuple[str, str, aioredis.Redis],
) -> None:
    """Raised, not returned: a round that returns lets the pool drop the rotation owed."""
    name, _, admin = operator_user
    producer = f"{rounds.pool_name}-redis-producer"

    async def producer_round(now: float) -> tuple[str, str] | None:
        return await credentials.ensure_producer_credentials(
            ProducerSecrets(rounds.kube), admin, rounds.pool, rounds.queue, redis_url,
            wanted=True, known=rounds.known, now=now, rotation="r-1", clock=time.time(),
            grace=60.0)

    try:
        assert (await producer_round(1.0) or ("",))[0] == "CredentialsCreated"
        before = copy.deepcopy(rounds.kube.secrets[producer])
        await redis.execute_command("ACL", "SETUSER", name, "-acl|setuser")
        with pytest.raises(NoPermissionError):
            await producer_round(credentials.SECRET_RECHECK_SECONDS + 2)
        assert rounds.kube.secrets[producer] == before
    finally:
        await credentials.remove_user(redis, NAMESPACE, rounds.pool_name,
                                      credentials.Role.PRODUCER)


async def test_connections_opened_with_a_rotated_password_are_closed_when_it_goes(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    """Redis checks a password when a connection authenticates: removing it from the user
    leaves a connection opened with it open, until the operator closes the user's
    connections. The pods reconnect with the new one."""
    first = await rounds.round()
    old_url, old_pod = rounds.url, rounds.pod("w-old", first)
    opened = aioredis.Redis.from_url(old_url, single_connection_client=True)
    try:
        assert await opened.ping()
        started = await ensure_worker_credentials(
            rounds.kube, redis, rounds.pool, rounds.queue, redis_url, known=rounds.known,
            now=rounds.now, pods=[old_pod], request="r-1")
        assert await opened.ping(), "the old password stays until the pods rolled"
        done = await rounds.round([rounds.pod("w-new", started)])
        assert [reason for reason, _ in done.events] == ["CredentialsRotated"]
        assert "connections closed" in done.events[0][1]
        with pytest.raises(RedisConnectionError):  # closed; reconnecting is refused
            await TaskQueue(opened, rounds.queue).figures()
        assert await connects(rounds.url, rounds.queue)
    finally:
        await opened.aclose()


async def test_producer_connections_opened_with_a_rotated_password_are_closed_when_it_goes(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
) -> None:
    name = f"{rounds.pool_name}-redis-producer"
    clock = time.time()

    async def producer_round(now: float, rotation: str | None) -> tuple[str, str] | None:
        return await credentials.ensure_producer_credentials(
            ProducerSecrets(rounds.kube), redis, rounds.pool, rounds.queue, redis_url,
            wanted=True, known=rounds.known, now=now, rotation=rotation, clock=clock,
            grace=60.0)

    def url() -> str:
        return base64.b64decode(rounds.kube.secrets[name]["data"]["url"]).decode()

    try:
        await producer_round(1.0, None)
        opened = aioredis.Redis.from_url(url(), single_connection_client=True)
        assert await opened.ping()
        assert (await producer_round(2.0, "r-1") or ("",))[0] == "CredentialsRotating"
        assert await opened.ping(), "the old password has its grace period"
        clock += 61
        done = await producer_round(3.0, None)
        assert done is not None and done[0] == "CredentialsRotated"
        with pytest.raises(RedisConnectionError):
            await TaskQueue(opened, rounds.queue).figures()
        assert await can_submit(url(), rounds.queue)
        await opened.aclose()
    finally:
        await credentials.remove_user(redis, NAMESPACE, rounds.pool_name,
                                      credentials.Role.PRODUCER)


async def test_a_pool_naming_its_url_secret_like_its_worker_secret_does_not_overwrite_it(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str,
) -> None:
    name = f"{pool_name}-redis-worker"
    await cluster.create_secret(name, {"url": redis_url})
    before = cluster.get(SECRETS, name)
    await cluster.create_pool(pool_manifest(pool_name, secret=name))
    condition = await eventually(
        lambda: (lambda c: c["reason"] == credentials.CONFLICT and c)(
            cluster.condition(pool_name, "Credentials")))
    assert condition["status"] == "False" and name in condition["message"]
    # rounds later: still untouched, reported once
    await eventually(lambda: len(cluster.requests("GET", f"/secrets/{name}")) >= 3)
    assert cluster.get(SECRETS, name) == before
    assert not cluster.requests("PATCH", f"/secrets/{name}")
    assert await redis.execute_command(
        "ACL", "GETUSER", f"agentpool:{NAMESPACE}:{pool_name}:worker") is None
    assert len(cluster.events(credentials.CONFLICT)) == 1


async def test_a_worker_secret_the_api_refuses_gathers_no_passwords_and_says_why(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(api: KubeApi, namespace: str, body: Mapping[str, Any]) -> Any:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(KubeApi, "create_secret", refuse)
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))
    user = f"agentpool:{NAMESPACE}:{pool_name}:worker"
    condition = await eventually(lambda: cluster.condition(pool_name, "Credentials"))
    assert (condition["status"], condition["reason"]) == ("False", credentials.REFUSED)
    assert "403 Forbidden" in condition["message"]
    applied = await acl_setuser_calls(redis)

    async def rounds_later() -> bool:
        return await acl_setuser_calls(redis) >= applied + 8

    await eventually(rounds_later, within=15)
    assert len(await user_hashes(redis, user) or []) <= 1, \
        "each round left a password on the user"
    assert len(cluster.events(credentials.REFUSED)) == 1


async def rounds_pass(pool: str, count: int) -> None:
    """`count` rounds of the pool end (each one that observed it without a failure)."""
    for _ in range(count):
        await next_round(pool)


async def next_round(pool: str) -> None:
    seen = last_observed(pool)
    await eventually(lambda: last_observed(pool) > seen)


async def test_a_pool_whose_credential_loses_acl_setuser_keeps_its_workers_off_it(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    pool_name: str, operator_user: tuple[str, aioredis.Redis],
) -> None:
    """The workers of a pool that had its own user never move to the pool's URL (the
    operator's credential) because that credential lost a right."""
    name, url, _ = operator_user
    await cluster.create_secret(f"{pool_name}-url", {"url": url})
    await cluster.create_pool(pool_manifest(pool_name, secret=f"{pool_name}-url"))
    await eventually(lambda: cluster.condition(pool_name, "Credentials")["reason"]
                     == "PerPoolUser")
    own = {"name": "AGENTPOOL_REDIS_URL", "valueFrom": {
        "secretKeyRef": {"name": f"{pool_name}-redis-worker", "key": "url"}}}
    assert redis_env(cluster.deployment(pool_name)) == own
    await redis.execute_command("ACL", "SETUSER", name, "-acl|setuser")
    condition = await eventually(
        lambda: (lambda c: c["reason"] == credentials.UNMANAGED and c)(
            cluster.condition(pool_name, "Credentials")), within=15)
    assert condition["status"] == "False"
    await rounds_pass(pool_name, 3)
    assert redis_env(cluster.deployment(pool_name)) == own
    assert cluster.condition(pool_name, "Credentials")["reason"] == credentials.UNMANAGED
    assert len(cluster.events(credentials.UNMANAGED)) == 1


async def test_a_pool_whose_worker_secret_name_is_taken_gets_no_deployment(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
) -> None:
    """Its workers have no Secret of their own: no Deployment hands them another's (here the
    pool's own URL, the operator's credential), and the pool says why."""
    name = f"{pool_name}-redis-worker"
    await cluster.create_secret(name, {"url": redis_url})
    await cluster.create_pool(pool_manifest(pool_name, secret=name))
    degraded = await eventually(
        lambda: (lambda c: c["reason"] == credentials.CONFLICT and c)(
            cluster.condition(pool_name, "Degraded")))
    assert degraded["status"] == "True" and name in degraded["message"]
    assert cluster.condition(pool_name, "Ready")["status"] == "False"
    await eventually(lambda: len(cluster.requests("GET", f"/secrets/{name}")) >= 3)
    assert _deployment_or_none(cluster, pool_name) is None
    assert {e["type"] for e in cluster.events(credentials.CONFLICT)} == {"Warning"}

    await cluster.delete(f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")
    await cluster.create_secret(f"{pool_name}-url", {"url": redis_url})
    await cluster.patch_pool(pool_name, {"spec": {"redis": {"urlSecretRef": {
        "name": f"{pool_name}-url"}}}})
    deployment = await eventually(lambda: _deployment_or_none(cluster, pool_name), within=15)
    assert redis_env(deployment)["valueFrom"]["secretKeyRef"]["name"] == name
    assert cluster.get(SECRETS, name)["metadata"]["ownerReferences"][0]["name"] == pool_name


async def test_a_worker_secret_the_api_refuses_holds_the_pool_back_and_says_why(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(api: KubeApi, namespace: str, body: Mapping[str, Any]) -> Any:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(KubeApi, "create_secret", refuse)
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))
    degraded = await eventually(
        lambda: (lambda c: c["reason"] == credentials.REFUSED and c)(
            cluster.condition(pool_name, "Degraded")))
    assert "403 Forbidden" in degraded["message"]
    assert "does not answer" not in degraded["message"]
    assert _deployment_or_none(cluster, pool_name) is None
    # the Event is posted from kopf's queue, maybe after the status that says it
    warned = await eventually(lambda: cluster.events(credentials.REFUSED))
    assert {e["type"] for e in warned} == {"Warning"}


async def test_a_credential_that_lost_acl_setuser_degrades_the_pool_that_still_serves(
    cluster: Cluster, operator: OperatorThread, redis: aioredis.Redis, pool_name: str,
    operator_user: tuple[str, str, aioredis.Redis],
) -> None:
    name, url, _ = operator_user
    await cluster.create_secret(f"{pool_name}-url", {"url": url})
    await cluster.create_pool(pool_manifest(pool_name, secret=f"{pool_name}-url"))
    await eventually(lambda: cluster.condition(pool_name, "Credentials")["reason"]
                     == "PerPoolUser")
    await redis.execute_command("ACL", "SETUSER", name, "-acl|setuser")
    degraded = await eventually(
        lambda: (lambda c: c["reason"] == credentials.UNMANAGED and c)(
            cluster.condition(pool_name, "Degraded")), within=15)
    assert degraded["status"] == "True"
    assert cluster.condition(pool_name, "QueueReachable")["status"] == "True"
    # the Event is posted from kopf's queue, maybe after the status that says it
    warned = await eventually(lambda: cluster.events(credentials.UNMANAGED))
    assert {e["type"] for e in warned} == {"Warning"}
    await redis.execute_command("ACL", "SETUSER", name, "+acl|setuser")
    await eventually(lambda: cluster.condition(pool_name, "Degraded")["status"] == "False",
                     within=15)


async def test_a_pool_whose_redis_does_not_answer_takes_no_others_secret_for_its_own(
    cluster: Cluster, operator: OperatorThread, pool_name: str,
) -> None:
    """The Secret is judged before Redis is asked: the conflict is what the pool says."""
    name = f"{pool_name}-redis-worker"
    await cluster.create_secret(name, {"url": "redis://app:their-password@db:6379/0"})
    server = RedisServer(port=free_port())  # not started: Redis does not answer
    await cluster.create_pool(pool_manifest(pool_name, redis_url=server.url))
    await eventually(
        lambda: cluster.condition(pool_name, "Degraded")["reason"] == credentials.CONFLICT)
    await eventually(lambda: len(cluster.requests("GET", f"/secrets/{name}")) >= 2)
    assert _deployment_or_none(cluster, pool_name) is None


@pytest.fixture
async def other_redis() -> AsyncIterator[tuple[RedisServer, str]]:
    """A second Redis, whose credential for pools (its URL given) may do all but manage users
    (no ``+acl``)."""
    with RedisServer(port=free_port()) as server:
        password = secrets.token_urlsafe(16)
        root = aioredis.Redis.from_url(server.url)
        try:
            await root.execute_command("ACL", "SETUSER", "app", "on", f">{password}", "~*",
                                       "&*", "+@all", "-acl")
        finally:
            await root.aclose()
        yield server, with_credentials(server.url, "app", password)


async def test_a_pool_moved_to_a_redis_that_refuses_it_a_user_takes_its_workers_along(
    redis: aioredis.Redis, redis_url: str, rounds: InMemoryRounds,
    other_redis: tuple[RedisServer, str],
) -> None:
    """The pool has no user on its new Redis: its workers go to the pool's URL, as a new
    pool's would, and not stay on a Secret naming the Redis before (whose queue the operator
    no longer scales on); back on that Redis the pool has its user again."""
    first = await rounds.round()
    before = rounds.url
    server, url = other_redis
    admin = aioredis.Redis.from_url(url)
    try:
        rounds.redis, rounds.pool_url = admin, url
        moved = await rounds.round()
    finally:
        await admin.aclose()
    assert moved.credentials.secret is None, "the workers use the pool's URL"
    assert moved.credentials.usable
    condition = moved.credentials.condition
    assert (condition.status, condition.reason) == ("False", credentials.SHARED)
    assert moved.credentials.problem is None and moved.events == ()
    assert "moved" in condition.message and "may not manage ACL users" in condition.message
    assert f"127.0.0.1:{server.port}/0" in condition.message
    assert f"127.0.0.1:{urlsplit(redis_url).port}/0" in condition.message
    assert "@" not in condition.message and (urlsplit(url).password or "?") not in str(moved)
    assert rounds.url == before, "the Secret is left as it is"

    rounds.redis, rounds.pool_url = redis, redis_url
    back = await rounds.round()
    assert back.credentials.condition.reason == "PerPoolUser"
    assert back.credentials.version == first.credentials.version


async def test_workers_of_a_pool_moved_to_a_redis_that_refuses_it_a_user_follow_the_pool(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
    other_redis: tuple[RedisServer, str],
) -> None:
    server, url = other_redis
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))
    await eventually(lambda: cluster.condition(pool_name, "Credentials")["reason"]
                     == "PerPoolUser")
    await cluster.create_secret(f"{pool_name}-url", {"url": url})
    await cluster.patch_pool(pool_name, {"spec": {"redis": {
        "url": None, "urlSecretRef": {"name": f"{pool_name}-url"}}}})
    condition = await eventually(
        lambda: (lambda c: c["reason"] == credentials.SHARED and c)(
            cluster.condition(pool_name, "Credentials")), within=15)
    assert f"127.0.0.1:{server.port}/0" in condition["message"] and "moved" in condition["message"]
    await eventually(lambda: redis_env(cluster.deployment(pool_name)).get("valueFrom") == {
        "secretKeyRef": {"name": f"{pool_name}-url", "key": "url"}})
    assert cluster.condition(pool_name, "Degraded")["status"] == "False"
    assert not cluster.events(credentials.UNMANAGED)
