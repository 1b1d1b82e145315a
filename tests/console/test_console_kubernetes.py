"""With a cluster: the fleet is the AgentPools of the chosen namespaces (kmock), with their
status and conditions, live queue figures from Redis, and each pool's Events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from agentpool.cli.status import KubeReader
from agentpool.console.sources import Sources
from agentpool.protocol import TaskQueue
from agentpool.ratelimit import LimitConfig, RateLimiter

RESOURCE = "agentpool.dev/v1alpha1/agentpools"


def agentpool(namespace: str, name: str, queue: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": namespace,
                     "creationTimestamp": "2026-01-01T10:00:00Z"},
        "spec": {"queue": queue, "redis": {"url": "redis://unused:6379/0"},
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
def reader(kmock: Any, tmp_path: Path, queue_name: str) -> KubeReader:
    kmock.resources[RESOURCE] = {
        "namespaced": True, "kind": "AgentPool", "singular": "agentpool",
        "verbs": ["get", "list", "watch", "patch"], "shortnames": ["ap"], "categories": [],
        "subresources": ["status"],
    }
    kmock.objects[RESOURCE, "team-a", "alpha"] = agentpool("team-a", "alpha", queue_name)
    kmock.objects[RESOURCE, "team-b", "beta"] = agentpool("team-b", "beta", "other")
    kmock.objects["v1/events", "team-a", "e1"] = event(
        "team-a", "e1", "alpha", "ScaledUp", "1 → 3 replicas: 40 queued")
    kmock.objects["v1/events", "team-a", "e2"] = event(
        "team-a", "e2", "someone-else", "ScaledUp", "not this pool")
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
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
        assert limit["last_throttle_age_seconds"] is not None
        assert page["history"][-1][3:] == [3, 2]

        everywhere = await Sources(redis, kube=reader).refresh_fleet()
        assert [(p["namespace"], p["name"]) for p in everywhere["pools"]] == [
            ("team-a", "alpha"), ("team-b", "beta")]
    finally:
        await asyncio.to_thread(reader.close)


async def test_a_pool_page_says_where_its_tasks_go_and_come_from(
    reader: KubeReader, kmock: Any, redis: aioredis.Redis, queue_name: str,
) -> None:
    """spec.worker.submitsTo read both ways: alpha hands tasks to beta's queue and to one no
    pool serves; beta's page names alpha as a pool it gets tasks from."""
    alpha = agentpool("team-a", "alpha", queue_name)
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
