"""With a cluster: the fleet is the AgentPools of the chosen namespaces (kmock), with their
status and conditions, live queue figures from Redis, and each pool's Events."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp.test_utils import TestClient, TestServer

from agentpool.cli.status import KubeReader
from agentpool.connection import redis_from_url
from agentpool.console.app import ConsoleConfig, build_app
from agentpool.console.sources import Sources
from agentpool.protocol import TaskQueue, WorkerInfo
from agentpool.ratelimit import LimitConfig, RateLimiter
from agentpool.redis_server import RedisServer, free_port
from agentpool.urls import redis_server

RESOURCE = "agentpool.dev/v1alpha1/agentpools"


def agentpool(namespace: str, name: str, queue: str, redis: dict[str, Any]) -> dict[str, Any]:
    """An AgentPool whose queue is on `redis` (its spec.redis)."""
    return {
        "apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": namespace,
                     "creationTimestamp": "2026-01-01T10:00:00Z"},
        "spec": {"queue": queue, "redis": redis,
                 "worker": {"image": "w:1", "handler": "m:f"},
                 "rateLimits": [{"name": "openai", "requestsPerMinute": 500}],
                 "schedules": [{"name": "nightly", "cron": "30 2 * * *",
                                "timeZone": "Europe/Paris", "concurrencyPolicy": "Replace"},
                               {"name": "hourly", "cron": "@hourly", "suspend": True}]},
        "status": {"replicas": 3, "readyReplicas": 2, "desiredReplicas": 3, "queued": 99,
                   "drainingReplicas": 1,
                   "schedules": [{"name": "nightly", "lastScheduleTime": "2026-01-01T01:30:00Z",
                                  "lastTaskId": "a" * 32,
                                  "nextScheduleTime": "2026-01-02T01:30:00Z"}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                   "message": "2/3 ready"}]},
    }


def event(namespace: str, name: str, pool: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"kind": "AgentPool", "name": pool, "namespace": namespace},
        "reason": reason, "message": message, "type": "Normal", "count": 1,
        "lastTimestamp": "2026-01-01T10:05:00Z",
    }


@pytest.fixture
def reader(kmock: Any, tmp_path: Path, queue_name: str, redis_url: str) -> KubeReader:
    kmock.resources[RESOURCE] = {
        "namespaced": True, "kind": "AgentPool", "singular": "agentpool",
        "verbs": ["get", "list", "watch", "patch"], "shortnames": ["ap"], "categories": [],
        "subresources": ["status"],
    }
    on_console = {"url": redis_url}  # the console's Redis (spec.redis.url has no password)
    kmock.objects[RESOURCE, "team-a", "alpha"] = agentpool("team-a", "alpha", queue_name,
                                                           on_console)
    kmock.objects[RESOURCE, "team-b", "beta"] = agentpool("team-b", "beta", "other", on_console)
    kmock.objects["v1/events", "team-a", "e1"] = event(
        "team-a", "e1", "alpha", "ScaledUp", "1 → 3 replicas: 40 queued")
    kmock.objects["v1/events", "team-a", "e2"] = event(
        "team-a", "e2", "someone-else", "ScaledUp", "not this pool")
    return kube_reader(str(kmock.url).rstrip("/"), tmp_path)


def kube_reader(server: str, tmp_path: Path) -> KubeReader:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "kmock", "user": "me"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return KubeReader.from_config(str(path), None)


async def test_fleet_and_pool_from_kubernetes(reader: KubeReader, redis: aioredis.Redis,
                                              queue_name: str) -> None:
    first_task = await TaskQueue(redis, queue_name).submit({"x": 1})
    await TaskQueue(redis, queue_name).submit({"x": 2}, after=[first_task])
    await redis.delete("ap:{rl:openai}:config", "ap:{rl:openai}:state")
    first = LimitConfig("openai", requests_per_minute=600)
    await RateLimiter(redis, "openai").declare(first, "team-z/first")
    await RateLimiter(redis, "openai").throttled(retry_after=600)
    sources = Sources(redis, kube=reader, namespaces=["team-a"])
    try:
        fleet = await sources.refresh_fleet()
        [pool] = fleet["pools"]
        assert fleet["source"] == "kubernetes"
        assert (pool["namespace"], pool["name"], pool["queue"]) == ("team-a", "alpha",
                                                                     queue_name)
        assert (pool["ready_replicas"], pool["desired_replicas"]) == (2, 3)
        assert pool["draining_replicas"] == 1
        # live from Redis, not the status's last figures
        assert (pool["queued"], pool["deferred"]) == (1, 1)
        assert pool["conditions"][0]["message"] == "2/3 ready"
        assert pool["conditions"][0]["bad"] is False

        page = await sources.pool("team-a", "alpha")
        assert page["draining_replicas"] == 1
        assert [(e["reason"], e["message"]) for e in page["events"]] == [
            ("ScaledUp", "1 → 3 replicas: 40 queued")]
        assert page["rate_limits"] == [{"name": "openai", "requestsPerMinute": 500}]
        assert page["schedules"] == [
            {"name": "nightly", "cron": "30 2 * * *", "time_zone": "Europe/Paris",
             "concurrency_policy": "Replace",
             "suspend": False, "last_schedule_time": "2026-01-01T01:30:00Z",
             "last_task_id": "a" * 32, "next_schedule_time": "2026-01-02T01:30:00Z"},
            {"name": "hourly", "cron": "@hourly", "time_zone": "UTC",
             "concurrency_policy": "Allow", "suspend": True, "last_schedule_time": None,
             "last_task_id": None, "next_schedule_time": None},
        ]
        [limit] = page["limits"]
        assert limit["declared"] == {"name": "openai", "requestsPerMinute": 500}
        assert limit["serving"] == first.to_json() and limit["conflict"] is True
        assert (limit["effective_rpm"], limit["throttles"], limit["grants"]) == (300, 1, 0)
        assert limit["last_throttle"] is not None
        assert page["history"][-1][3:] == [3, 2]

        everywhere = await Sources(redis, kube=reader).refresh_fleet()
        assert [(p["namespace"], p["name"]) for p in everywhere["pools"]] == [
            ("team-a", "alpha"), ("team-b", "beta")]
    finally:
        await asyncio.to_thread(reader.close)


async def test_a_pool_page_says_where_its_tasks_go_and_come_from(
    reader: KubeReader, kmock: Any, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """spec.worker.submitsTo read both ways: alpha hands tasks to beta's queue and to one no
    pool serves; beta's page names alpha as a pool it gets tasks from."""
    alpha = agentpool("team-a", "alpha", queue_name, {"url": redis_url})
    alpha["spec"]["worker"]["submitsTo"] = ["other", "nowhere"]
    kmock.objects[RESOURCE, "team-a", "alpha"] = alpha
    sources = Sources(redis, kube=reader)
    try:
        await sources.refresh_fleet()
        page = await sources.pool("team-a", "alpha")
        assert page["submits_to"] == [
            {"queue": "other", "pools": [{"namespace": "team-b", "name": "beta"}]},
            {"queue": "nowhere", "pools": []}]
        assert page["fed_by"] == []
        beta = await sources.pool("team-b", "beta")
        assert (beta["submits_to"], beta["fed_by"]) == (
            [], [{"namespace": "team-a", "name": "alpha"}])
    finally:
        await asyncio.to_thread(reader.close)


def secret(namespace: str, name: str, url: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name,
                                                               "namespace": namespace},
            "type": "Opaque", "data": {"url": base64.b64encode(url.encode()).decode()}}


async def test_each_pool_is_read_from_its_own_redis_or_shows_its_status(
    reader: KubeReader, kmock: Any, redis: aioredis.Redis, redis_url: str, queue_name: str,
    protected_redis: RedisServer,
) -> None:
    """Four pools: three with the same queue name, on the console's Redis; on another Redis
    named by a Secret the console may read (read there, with its password, never the
    console's queue of that name); on a Redis that is down (the status's figures, saying
    why: never the console's namesake queue, whose task pages would act on another pool's
    tasks); and one behind a Secret that cannot be read, whose queue the console's Redis
    does not have (the status's figures, saying why)."""
    other = redis_from_url(protected_redis.url)
    try:
        await redis.delete("ap:{rl:openai}:config", "ap:{rl:openai}:state")
        await other.delete("ap:{rl:openai}:config", "ap:{rl:openai}:state")
        await TaskQueue(redis, queue_name).submit({"on": "console"})
        elsewhere = TaskQueue(other, queue_name)
        await elsewhere.submit_many([{"on": "other"}, {"on": "other"}])
        await elsewhere.heartbeat(WorkerInfo(pod="pod-b", instance="i1", concurrency=2), {}, 30)
        await RateLimiter(other, "openai").declare(LimitConfig("openai", requests_per_minute=500),
                                                   "team-b/alpha")
        await RateLimiter(other, "openai").throttled(retry_after=600)

        kmock.objects["v1/secrets", "team-b", "pool-redis"] = secret(
            "team-b", "pool-redis", protected_redis.url)
        kmock.objects[RESOURCE, "team-b", "alpha"] = agentpool(
            "team-b", "alpha", queue_name, {"urlSecretRef": {"name": "pool-redis"}})
        down = agentpool("team-c", "down", queue_name,
                         {"url": f"redis://127.0.0.1:{free_port()}/0"})
        down["status"].update(queued=420, inFlight=7, dead=12)
        kmock.objects[RESOURCE, "team-c", "down"] = down
        hidden = agentpool("team-d", "hidden", f"{queue_name}-hidden",
                           {"urlSecretRef": {"name": "not-for-me", "key": "url"}})
        hidden["status"].update(queued=5, inFlight=0, dead=0)
        kmock.objects[RESOURCE, "team-d", "hidden"] = hidden

        sources = Sources(redis, kube=reader,
                          namespaces=["team-a", "team-b", "team-c", "team-d"])
        fleet = await sources.refresh_fleet()
        rows = {(p["namespace"], p["name"]): p for p in fleet["pools"]}
        shown = {key: (p["queued"], p["in_flight"], p["dead"], p["own_redis"],
                       p["figures_from"]) for key, p in rows.items()}
        assert shown[("team-a", "alpha")] == (1, 0, 0, True, "console")
        assert shown[("team-b", "alpha")] == (2, 0, 0, False, "pool")
        assert shown[("team-c", "down")] == (420, 7, 12, False, "status")
        assert shown[("team-d", "hidden")] == (5, 0, 0, False, "status")
        assert rows[("team-a", "alpha")]["figures_note"] is None
        assert "the pool's own Redis" in rows[("team-b", "alpha")]["figures_note"]
        assert "cannot read the pool's Redis: Connection refused" in rows[
            ("team-c", "down")]["figures_note"]
        assert "cannot read Secret team-d/not-for-me" in rows[
            ("team-d", "hidden")]["figures_note"]
        assert rows[("team-b", "alpha")]["workers"] == 1

        mine = await sources.pool("team-a", "alpha")
        assert (mine["figures"]["queued"], mine["own_redis"], mine["workers"]) == (1, True, [])
        assert mine["limits"][0]["serving"] is None
        theirs = await sources.pool("team-b", "alpha")
        assert (theirs["figures"]["queued"], theirs["own_redis"]) == (2, False)
        assert [w["pod"] for w in theirs["workers"]] == ["pod-b"]
        assert (theirs["limits"][0]["throttles"], theirs["limits"][0]["conflict"]) == (1, False)
        gone = await sources.pool("team-c", "down")
        assert (gone["figures"]["queued"], gone["figures"]["in_flight"],
                gone["figures"]["dead"], gone["figures"]["from_status"]) == (420, 7, 12, True)
        assert (gone["workers"], gone["own_redis"], gone["figures_from"]) == (
            None, False, "status")
        assert "Connection refused" in gone["figures_note"]
        assert gone["history"][-1][1:3] == [420, 7]
        unseen = await sources.pool("team-d", "hidden")
        assert (unseen["figures"]["queued"], unseen["figures"]["from_status"],
                unseen["workers"], unseen["limits"], unseen["own_redis"]) == (
            5, True, None, None, False)
        text = json.dumps([fleet, mine, theirs, gone, unseen])
        assert str(protected_redis.password) not in text and "redis://" not in text
        await sources.aclose()
    finally:
        await other.aclose()
        await asyncio.to_thread(reader.close)


async def test_a_pool_behind_an_unreadable_secret_is_read_where_its_status_says(
    reader: KubeReader, kmock: Any, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """The chart's console may not read Secrets: a pool whose status.redis (written by the
    operator) names the console's own Redis is read live there, with its task links; one
    whose status names another server, and whose queue the console's Redis does not have,
    shows its status's figures."""
    await TaskQueue(redis, queue_name).submit_many([{"n": 1}, {"n": 2}])
    own = redis_server(redis_url, "agentpool")
    ours = agentpool("team-e", "ours", queue_name, {"urlSecretRef": {"name": "agentpool-redis"}})
    ours["status"].update(queued=0, redis=own)
    elsewhere = agentpool("team-e", "elsewhere", f"{queue_name}-elsewhere",
                          {"urlSecretRef": {"name": "agentpool-redis"}})
    elsewhere["status"].update(queued=9, redis="redis://redis.other.svc:6379/0")
    kmock.objects[RESOURCE, "team-e", "ours"] = ours
    kmock.objects[RESOURCE, "team-e", "elsewhere"] = elsewhere
    sources = Sources(redis, kube=reader, namespaces=["team-e"], own_server=own)
    try:
        fleet = await sources.refresh_fleet()
        rows = {p["name"]: p for p in fleet["pools"]}
        assert (rows["ours"]["queued"], rows["ours"]["own_redis"],
                rows["ours"]["figures_from"]) == (2, True, "console")
        assert (rows["elsewhere"]["queued"], rows["elsewhere"]["own_redis"],
                rows["elsewhere"]["figures_from"]) == (9, False, "status")
    finally:
        await sources.aclose()
        await asyncio.to_thread(reader.close)


async def test_a_pool_whose_redis_cannot_be_read_from_here_is_read_on_the_consoles_queue(
    reader: KubeReader, kmock: Any, redis: aioredis.Redis, queue_name: str,
) -> None:
    """A console on a laptop, through a port-forward to the cluster's Redis: the pools'
    spec.redis names an in-cluster Service that does not resolve here, or a Secret it may not
    read. A pool whose queue the console's Redis has is read there, live, with its task
    links and a note that says why; one whose Redis is down (it resolves: it is not a name
    of the cluster's) shows its status, though the console's Redis has a queue of its name."""
    queue = TaskQueue(redis, queue_name)
    await queue.submit_many([{"n": 1}, {"n": 2}, {"n": 3}])
    await queue.heartbeat(WorkerInfo(pod="pod-l", instance="i1", concurrency=1), {}, 30)
    in_cluster = {"url": "redis://:in-cluster-s3cret@agentpool-redis.agentpool.svc:6379/0"}
    laptop = agentpool("team-f", "laptop", queue_name, in_cluster)
    secret_ref = agentpool("team-f", "secret", queue_name,
                           {"urlSecretRef": {"name": "agentpool-redis"}})
    secret_ref["status"].update(redis="redis://agentpool-redis.agentpool.svc:6379/0")
    unused = agentpool("team-f", "unused", queue_name,
                       {"url": f"redis://127.0.0.1:{free_port()}/0"})
    unused["status"].update(queued=42)
    for pool in (laptop, secret_ref, unused):
        kmock.objects[RESOURCE, "team-f", pool["metadata"]["name"]] = pool
    sources = Sources(redis, kube=reader, namespaces=["team-f"],
                      own_server="redis://localhost:6379/0")
    try:
        fleet = await sources.refresh_fleet()
        rows = {p["name"]: p for p in fleet["pools"]}
        assert {name: (p["queued"], p["workers"], p["own_redis"], p["figures_from"])
                for name, p in rows.items()} == {
            "laptop": (3, 1, True, "console-fallback"),
            "secret": (3, 1, True, "console-fallback"),
            "unused": (42, 0, False, "status")}
        assert rows["laptop"]["figures_note"].startswith(
            "Read on the console's Redis, which has a queue of this name: the pool's own Redis "
            "(agentpool-redis.agentpool.svc:6379/0) could not be read from here: ")
        assert "cannot read Secret team-f/agentpool-redis" in rows["secret"]["figures_note"]
        assert "(agentpool-redis.agentpool.svc:6379/0)" in rows["secret"]["figures_note"]
        assert "Connection refused" in rows["unused"]["figures_note"]

        page = await sources.pool("team-f", "laptop")
        assert (page["figures"]["queued"], page["own_redis"], page["figures_from"]) == (
            3, True, "console-fallback")
        assert [w["pod"] for w in page["workers"]] == ["pod-l"]
        assert page["figures_note"] == rows["laptop"]["figures_note"]
        assert "in-cluster-s3cret" not in json.dumps([fleet, page])
        shown = await sources.pool("team-f", "unused")
        assert (shown["figures"]["queued"], shown["figures"]["from_status"],
                shown["own_redis"]) == (42, True, False)
    finally:
        await sources.aclose()
        await asyncio.to_thread(reader.close)


async def test_a_pool_page_while_the_api_server_is_down_says_so(
    tmp_path: Path, redis: aioredis.Redis,
) -> None:
    """Not "no pool alpha in namespace team-a": the page shows why it cannot tell."""
    reader = kube_reader(f"http://127.0.0.1:{free_port()}", tmp_path)
    app = build_app(Sources(redis, kube=reader, namespaces=["team-a"]),
                    ConsoleConfig(fleet_seconds=0.05))
    try:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/api/pools/team-a/alpha")
            doc = await response.json()
    finally:
        await asyncio.to_thread(reader.close)
    assert response.status == 502
    assert "not_found" not in doc
    assert doc["error"].startswith("cannot reach the Kubernetes API at http://127.0.0.1:")
