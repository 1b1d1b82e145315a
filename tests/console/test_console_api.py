"""The console's data and write actions over HTTP, on a real redis-server (and some on a Redis
Cluster)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from console_helpers import TOKEN, eventually
from redis.asyncio.connection import Connection
from redis_freeze import frozen

from agentpool.cli.tenants import due_as_queued
from agentpool.connection import redis_from_url
from agentpool.console import app as console_app
from agentpool.console import sources as console_sources
from agentpool.console.app import ConsoleConfig, build_app
from agentpool.console.hub import _unstamped
from agentpool.console.sources import (
    CHECKPOINT_PREVIEW_BYTES,
    FIELD_PREVIEW_BYTES,
    MAX_PAGE,
    NEXT_SHOWN,
    NO_NAMESPACE,
    PAGE_SIZE,
    PREVIEW_BYTES,
    PREVIEW_CHARS,
    Sources,
    _conditions,
    limit_rows,
)
from agentpool.protocol import TaskQueue, TenantLoad, WorkerInfo, encode_checkpoint, task_page
from agentpool.ratelimit import LimitConfig, RateLimiter
from agentpool.redis_errors import REDIS_FULL
from agentpool.redis_server import RedisServer, free_port

Client = TestClient  # type: ignore[type-arg]


class CountingConnection(Connection):
    trips = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.trips += 1
        await super().send_packed_command(command, check_health)

WRITE = {"Authorization": f"Bearer {TOKEN}"}


async def get_json(api: Client, path: str, status: int = 200) -> Any:
    response = await api.get(path)
    assert response.status == status, await response.text()
    return await response.json()


ALSO_ON_A_CLUSTER = pytest.mark.parametrize("redis_mode", ["standalone", "cluster"])
"""The console's reads (figures of many queues in one pipeline, pages, dead letters) on one
server and on a 3-shard Redis Cluster."""

async def dead_task(queue: TaskQueue, error: str = "boom") -> str:
    task_id = await queue.submit({"n": 1}, max_attempts=1)
    [claimed] = (await queue.claim("pod-x:i1", 1, 30)).tasks
    await queue.fail(claimed, error, retryable=False)
    return task_id


@ALSO_ON_A_CLUSTER
async def test_fleet_lists_the_queue_with_its_figures(api: Client, redis: aioredis.Redis,
                                                      queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    later = await queue.submit({"a": 2}, delay=60)
    await queue.submit({"a": 3}, after=[later])
    await queue.submit({"a": 1})  # last: the fleet waits for it, and so sees all three

    async def fleet_shows_it() -> dict[str, Any]:
        while True:
            doc = await get_json(api, "/api/fleet")
            pools = {p["name"]: p for p in doc["pools"]}
            if queue_name in pools and pools[queue_name]["queued"] == 1:
                return doc
            await asyncio.sleep(0.05)

    doc = await asyncio.wait_for(fleet_shows_it(), 10)
    [pool] = doc["pools"]
    assert doc["source"] == "redis"
    assert (pool["namespace"], pool["queue"], pool["delayed"], pool["deferred"],
            pool["health"]) == ("-", queue_name, 1, 1, "NoWorkers")


async def test_a_queue_found_in_redis_alone_on_a_full_redis_is_degraded(
    queue_name: str,
) -> None:
    """No operator says RedisFull of a queue without a pool: the Redis-only fleet asks Redis
    (a queue that takes no task is not merely NoWorkers)."""
    with RedisServer(extra_args=("--maxmemory-policy", "noeviction")) as server:
        redis = aioredis.Redis.from_url(server.url)
        await TaskQueue(redis, queue_name).submit({"a": 1})
        app = build_app(Sources(redis, queues=[queue_name]),
                        ConsoleConfig(token=TOKEN, fleet_seconds=0.2))
        try:
            async with TestClient(TestServer(app)) as api:
                async def health_turns(word: str) -> str | None:
                    """The fleet's problem of the queue once its health is `word`."""
                    while True:
                        pools = (await get_json(api, "/api/fleet"))["pools"]
                        if pools and pools[0]["health"] == word:
                            return cast(str | None, pools[0]["problem"])
                        await asyncio.sleep(0.05)

                assert await asyncio.wait_for(health_turns("NoWorkers"), 10) is None
                used = int((await redis.info("memory"))["used_memory"])
                await redis.config_set("maxmemory", used - 200_000)
                assert await asyncio.wait_for(health_turns("Degraded"), 10) == (
                    f"RedisFull: {REDIS_FULL}")
                await redis.config_set("maxmemory", 0)
                assert await asyncio.wait_for(health_turns("NoWorkers"), 10) is None
        finally:
            await redis.aclose()


@ALSO_ON_A_CLUSTER
async def test_pool_page_has_figures_workers_and_history(api: Client, redis: aioredis.Redis,
                                                         queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    await queue.submit({"a": 1})
    await queue.heartbeat(WorkerInfo(pod="pod-a", instance="i1", concurrency=4, done=7), {}, 30)

    async def known() -> dict[str, Any]:
        while True:
            response = await api.get(f"/api/pools/-/{queue_name}")
            if response.status == 200:
                doc = dict(await response.json())
                if doc["history"][-1][1] == 1:
                    return doc
            await asyncio.sleep(0.05)

    doc = await asyncio.wait_for(known(), 10)  # the last hour's chart got the queued task
    assert doc["figures"]["queued"] == 1
    [worker] = doc["workers"]
    assert (worker["pod"], worker["done"], worker["concurrency"]) == ("pod-a", 7, 4)
    assert doc["events"] is None and "Kubernetes" in doc["events_note"]


async def test_unknown_pool_and_task_are_404(api: Client, queue_name: str) -> None:
    doc = await get_json(api, "/api/pools/-/no-such-queue", 404)
    assert doc["error"] == "no queue no-such-queue"
    doc = await get_json(api, f"/api/queues/{queue_name}/tasks/nope", 404)
    assert doc["error"].startswith("no task nope")


@ALSO_ON_A_CLUSTER
async def test_a_pools_last_429_is_aged_on_redis_clock_not_the_consoles(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stamps a 429 with its own time: a console whose clock runs an hour ahead still
    shows it seconds old (the page ages it by the console's clock, as the snapshot's "at"),
    and reads the same time on every refresh."""
    name = f"l-{os.urandom(5).hex()}"
    await RateLimiter(redis, name).declare(LimitConfig(name, requests_per_minute=60), "ns/p")
    await RateLimiter(redis, name).throttled(retry_after=1)
    local = time.time
    monkeypatch.setattr(time, "time", lambda: local() + 3600)
    declared = [{"name": name, "requestsPerMinute": 60}]
    [row] = await limit_rows(redis, declared)
    assert row["throttles"] == 1
    at = datetime.fromisoformat(row["last_throttle"]).timestamp()
    assert -1 < time.time() - at < 60  # whole seconds: up to half of one ahead
    assert at == int(at)
    assert 0 <= row["last_throttle_age_seconds"] < 60  # as the CLI gives it, on Redis's clock
    reads = [await limit_rows(redis, declared) for _ in range(3)]
    assert [_unstamped({"limits": r}) for r in reads] == [_unstamped({"limits": [row]})] * 3


async def test_tasks_are_paged_in_claim_order(api: Client, redis: aioredis.Redis,
                                              queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"i": i} for i in range(PAGE_SIZE + 5)])
    first = await get_json(api, f"/api/queues/{queue_name}/tasks?state=queued")
    second = await get_json(api, f"/api/queues/{queue_name}/tasks?state=queued&page=2")
    assert first["total"] == second["total"] == PAGE_SIZE + 5
    assert [t["id"] for t in first["tasks"] + second["tasks"]] == ids
    assert second["tasks"][0]["payload"] == json.dumps({"i": PAGE_SIZE}, separators=(",", ":"))


async def test_tenants_page_counts_each_tenants_tasks_with_its_weight(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    await queue.set_tenant_weights({"gold": 3, "idle": 2})
    for n in range(3):
        await queue.submit({"n": n}, tenant="acme")
    await queue.submit({"n": 0}, tenant="gold", delay=600)
    await queue.submit({"n": 0})
    doc = await get_json(api, f"/api/queues/{queue_name}/tenants")
    rows = {t["tenant"]: (t["weight"], t["queued"], t["running"], t["later"])
            for t in doc["tenants"]}
    assert rows == {"acme": (1, 3, 0, 0), None: (1, 1, 0, 0), "gold": (3, 0, 0, 1),
                    "idle": (2, 0, 0, 0)}
    assert [t["tenant"] for t in doc["tenants"]][:2] == ["acme", None]
    assert (doc["counted"], doc["total"]) == (5, 5)
    oldest = {t["tenant"]: t["oldest_queued"] for t in doc["tenants"]}
    assert oldest["gold"] is None and oldest["acme"].endswith("Z")


async def test_tenants_page_shows_each_tenants_cap_and_the_tasks_a_cap_holds(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    await queue.set_tenant_caps({"acme": 1}, default=4)
    for n in range(3):
        await queue.submit({"n": n}, tenant="acme")
    await queue.submit({"n": 0})
    assert len((await queue.claim("pod-a:i1", 4, 30)).tasks) == 2
    doc = await get_json(api, f"/api/queues/{queue_name}/tenants")
    assert {t["tenant"]: (t["max_running"], t["running"]) for t in doc["tenants"]} == {
        "acme": (1, 1), None: (None, 1)}
    assert doc["capped"] == 2
    listed = await get_json(api, f"/api/queues/{queue_name}/tasks?state=queued")
    assert listed["total"] == 2
    assert [(t["tenant"], t["capped"]) for t in listed["tasks"]] == [("acme", True)] * 2
    one = await get_json(api, f"/api/queues/{queue_name}/tasks/{listed['tasks'][0]['id']}")
    assert (one["task"]["state"], one["task"]["capped"]) == ("queued", True)
    running = await get_json(api, f"/api/queues/{queue_name}/tasks?state=running")
    assert {t["capped"] for t in running["tasks"]} == {False}


async def test_requests_for_a_queues_tenants_share_one_read(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    """Reading a queue's tenants takes a round trip per 1,000 tasks: requests within
    TENANT_READ_SECONDS of a read get its answer."""
    queue = TaskQueue(redis, queue_name)
    await queue.submit({"n": 0}, tenant="acme")
    first = await get_json(api, f"/api/queues/{queue_name}/tenants")
    await queue.submit({"n": 1}, tenant="acme")
    second = await get_json(api, f"/api/queues/{queue_name}/tenants")
    assert first == second
    assert [t["queued"] for t in second["tenants"]] == [1]


async def test_task_detail_and_search_by_id_and_idempotency_key(
    api: Client, redis: aioredis.Redis, queue_name: str
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"prompt": "hi"}, idempotency_key="order-42")
    doc = await get_json(api, f"/api/queues/{queue_name}/tasks/{task_id}")
    assert (doc["task"]["state"], doc["task"]["payload"], doc["done"]) == (
        "queued", {"prompt": "hi"}, False)
    for text in (task_id, "order-42", f"  {task_id} "):
        found = await get_json(api, f"/api/queues/{queue_name}/find?q={text}")
        assert found["id"] == task_id
    assert (await get_json(api, f"/api/queues/{queue_name}/find?q=other"))["id"] is None


@ALSO_ON_A_CLUSTER
async def test_a_dead_letter_counts_the_tasks_its_requeue_brings_back(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    failing = await queue.submit({"n": 1})
    after = [await queue.submit({"step": n}, after=[failing]) for n in range(2)]
    lone = await queue.submit({"n": 2})
    for claimed in (await queue.claim("pod-x:i1", 2, 30)).tasks:
        await queue.fail(claimed, "boom", retryable=False)
    dead = await get_json(api, f"/api/queues/{queue_name}/dead")
    assert {t["id"]: t["next_count"] for t in dead["tasks"]} == {failing: 2, lone: 0}
    response = await api.post(f"/api/queues/{queue_name}/dead/requeue",
                              json={"ids": [failing]}, headers=WRITE)
    assert response.status == 200
    assert await response.json() == {"requeued": 1, "revived": 2}
    assert [i.state for i in await queue.get_many(after)] == ["deferred", "deferred"]


@ALSO_ON_A_CLUSTER
async def test_dead_letters_requeue_with_the_token_only(api: Client, redis: aioredis.Redis,
                                                        queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await dead_task(queue)
    dead = await get_json(api, f"/api/queues/{queue_name}/dead")
    assert [(t["id"], t["error"]) for t in dead["tasks"]] == [(task_id, "boom")]
    url = f"/api/queues/{queue_name}/dead/requeue"
    body = {"ids": [task_id]}
    refusals = [
        (await api.post(url, json=body), 401),
        (await api.post(url, json=body, headers={"Authorization": "Bearer wrong-token"}), 401),
        (await api.post(url, json=body, headers={**WRITE, "Origin": "https://evil.example"}),
         403),
        (await api.post(url, json=body, headers={**WRITE, "Sec-Fetch-Site": "cross-site"}), 403),
        (await api.post(url, data=f"ids={task_id}", headers={
            **WRITE, "Content-Type": "application/x-www-form-urlencoded"}), 415),
    ]
    for response, status in refusals:
        assert response.status == status, await response.text()
    assert (await queue.get(task_id)).state == "dead"  # type: ignore[union-attr]

    response = await api.post(url, json=body, headers=WRITE)
    assert (response.status, await response.json()) == (200, {"requeued": 1, "revived": 0})
    assert (await queue.get(task_id)).state == "queued"  # type: ignore[union-attr]


async def test_a_write_through_a_proxy_that_ends_tls_is_its_own_origin(
    api: Client, redis: aioredis.Redis, queue_name: str
) -> None:
    """Behind an ingress that ends TLS the browser's Origin is https while the console is
    reached over http: the proxy's X-Forwarded-Proto says which scheme the page had."""
    queue = TaskQueue(redis, queue_name)
    task_id = await dead_task(queue)
    url = f"/api/queues/{queue_name}/dead/requeue"
    host = f"{api.host}:{api.port}"
    tls_page = {**WRITE, "Origin": f"https://{host}", "Sec-Fetch-Site": "same-origin"}
    refusals = [
        await api.post(url, json={"ids": [task_id]}, headers=tls_page),
        await api.post(url, json={"ids": [task_id]}, headers={
            **tls_page, "Origin": "https://evil.example", "X-Forwarded-Proto": "https"}),
        await api.post(url, json={"ids": [task_id]}, headers={
            **tls_page, "X-Forwarded-Proto": "gopher"}),
    ]
    assert [r.status for r in refusals] == [403, 403, 403]
    assert (await queue.get(task_id)).state == "dead"  # type: ignore[union-attr]
    response = await api.post(url, json={"ids": [task_id]},
                              headers={**tls_page, "X-Forwarded-Proto": "https, http"})
    assert (response.status, await response.json()) == (200, {"requeued": 1, "revived": 0})


async def test_purge_and_cancel(api: Client, redis: aioredis.Redis, queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await dead_task(queue)
    response = await api.post(f"/api/queues/{queue_name}/dead/purge", json={"ids": [task_id]},
                              headers=WRITE)
    assert (response.status, await response.json()) == (200, {"purged": 1})
    assert await queue.get(task_id) is None

    queued = await queue.submit({"x": 1})
    response = await api.post(f"/api/queues/{queue_name}/tasks/{queued}/cancel", json={},
                              headers=WRITE)
    assert (response.status, await response.json()) == (200, {"outcome": "cancelled"})
    response = await api.post(f"/api/queues/{queue_name}/dead/purge", json={"ids": []},
                              headers=WRITE)
    assert response.status == 400


async def test_read_only_console_refuses_every_write(redis: aioredis.Redis,
                                                     queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await dead_task(queue)
    app = build_app(Sources(redis, queues=[queue_name]), ConsoleConfig(token=None))
    async with TestClient(TestServer(app)) as client:
        info = await get_json(client, "/api/console")
        response = await client.post(f"/api/queues/{queue_name}/dead/requeue",
                                     json={"ids": [task_id]}, headers=WRITE)
        assert info["writes"] is False
        assert response.status == 403
        assert "--allow-writes" in (await response.json())["error"]
    assert (await queue.get(task_id)).state == "dead"  # type: ignore[union-attr]


async def test_pages_and_assets_carry_a_strict_content_security_policy(api: Client) -> None:
    for path in ("/", "/queues/q/tasks/abc", "/static/console.js", "/api/fleet"):
        response = await api.get(path)
        assert response.status == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert (await api.get("/static/..%2Fapp.py")).status == 404


async def test_an_unreachable_redis_shows_the_reason_without_url_or_password() -> None:
    secret = "s3cret-pass"
    redis = aioredis.Redis.from_url(f"redis://user:{secret}@127.0.0.1:1/0",
                                    socket_connect_timeout=1)
    app = build_app(Sources(redis, queues=["q"]), ConsoleConfig(fleet_seconds=0.1))
    try:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/api/queues/q/tasks?state=queued")
            text = await response.text()
            fleet = await (await client.get("/api/fleet")).text()
    finally:
        await redis.aclose()
    assert response.status == 502
    assert json.loads(text)["error"].startswith("cannot read Redis: ")
    for shown in (text, fleet):
        assert secret not in shown and "127.0.0.1:1" not in shown and "redis://" not in shown


async def test_live_updates_stream_the_page_as_it_changes(api: Client, redis: aioredis.Redis,
                                                         queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"x": 1})
    response = await api.get(f"/api/queues/{queue_name}/tasks/{task_id}",
                             headers={"Accept": "text/event-stream"})
    assert response.headers["Content-Type"] == "text/event-stream"

    async def next_state() -> str:
        while True:
            line = (await response.content.readline()).decode()
            if line.startswith("data: "):
                return str(json.loads(line[6:])["task"]["state"])

    assert await asyncio.wait_for(next_state(), 10) == "queued"
    await queue.cancel(task_id)
    assert await asyncio.wait_for(next_state(), 10) == "cancelled"
    response.close()


async def test_a_quiet_stream_gets_keep_alives_and_then_the_next_change(
    api: Client, redis: aioredis.Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page that does not change for a while gets comments that keep proxies from closing
    the stream, and the stream still carries the change that comes after them."""
    monkeypatch.setattr(console_app, "KEEPALIVE_SECONDS", 0.2)
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"x": 1})
    response = await api.get(f"/api/queues/{queue_name}/tasks/{task_id}",
                             headers={"Accept": "text/event-stream"})
    lines: list[str] = []

    async def next_data() -> str:
        while True:
            line = (await response.content.readline()).decode()
            lines.append(line)
            if line.startswith("data: "):
                return str(json.loads(line[6:])["task"]["state"])

    assert await asyncio.wait_for(next_data(), 10) == "queued"

    async def keep_alives(count: int) -> None:
        while lines.count(": keep-alive\n") < count:
            lines.append((await response.content.readline()).decode())

    await asyncio.wait_for(keep_alives(3), 10)
    await queue.cancel(task_id)
    assert await asyncio.wait_for(next_data(), 10) == "cancelled"
    response.close()


def test_the_console_stops_on_sigterm_while_browsers_still_watch(redis_url: str) -> None:
    """aiohttp would wait up to a minute for the open live streams; the console ends them."""
    console = subprocess.Popen(
        [str(Path(sys.executable).with_name("agentpool")), "console", "--redis-url", redis_url,
         "--redis-only", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert console.stdout is not None
        url = console.stdout.readline().split()[2]
        request = urllib.request.Request(url + "api/fleet",
                                         headers={"Accept": "text/event-stream"})
        with urllib.request.urlopen(request, timeout=10) as stream:
            assert [stream.readline() for _ in range(3)][2].startswith(b"data: ")  # retry: first
            console.terminate()
            assert console.wait(timeout=15) == 0
    finally:
        console.kill()
        console.wait()


@pytest.mark.parametrize(("url", "warning"), [
    ("redis://:wrong-pw@127.0.0.1:{protected}/0",
     "Redis at redis://:***@127.0.0.1:{protected}/0 refused the password"),
    ("redis://:s3cret@127.0.0.1:{free}/0",
     "cannot reach Redis at redis://:***@127.0.0.1:{free}/0: Connection refused"),
])
def test_a_redis_that_does_not_answer_at_start_is_one_warning_and_the_console_serves(
    protected_redis: RedisServer, tmp_path: Path, url: str, warning: str,
) -> None:
    ports = {"protected": protected_redis.port, "free": free_port()}
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        console = subprocess.Popen(
            [str(Path(sys.executable).with_name("agentpool")), "console", "--redis-url",
             url.format(**ports), "--redis-only", "--port", "0"],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert console.stdout is not None
        url_line = console.stdout.readline()
        assert url_line.startswith("agentpool console: http://127.0.0.1:")
        with urllib.request.urlopen(url_line.split()[2], timeout=10) as page:
            assert page.status == 200
        console.terminate()
        assert console.wait(timeout=15) == 0
    finally:
        console.kill()
        console.wait()
    assert err.read_text() == (
        f"agentpool console: warning: {warning.format(**ports)} (serving anyway: every "
        "request asks Redis again)\n")


def test_a_console_without_kubernetes_says_so_in_its_own_words(redis_url: str,
                                                              tmp_path: Path) -> None:
    """Not `status`'s hint (--queue with --redis-url reads one queue): the console shows every
    queue of its Redis."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AGENTPOOL_") and k not in ("KUBECONFIG",
                                                            "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    console = subprocess.Popen(
        [str(Path(sys.executable).with_name("agentpool")), "console", "--redis-url", redis_url,
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert console.stdout is not None
        assert console.stdout.readline().endswith("(read-only; pools from Redis)\n")
        console.terminate()
        _, err = console.communicate(timeout=15)
    finally:
        console.kill()
        console.wait()
    assert err == ("agentpool console: pools from Redis alone (no kubeconfig, not in a "
                   "cluster: every queue found in Redis; --kubeconfig shows the AgentPools "
                   "of a cluster)\n")


async def test_a_queue_alone_is_its_task_list(api: Client) -> None:
    for path in ("/queues/demo", "/queues/demo/"):
        response = await api.get(path, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (302, "/queues/demo/tasks")


async def test_a_path_that_is_no_page_names_the_pages(api: Client) -> None:
    for path in ("/queues/demo/nope", "/pools/team-a", "/fleet", "/a<b>"):
        response = await api.get(path)
        page = await response.text()
        assert (response.status, response.content_type) == (404, "text/html"), path
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "404: Not Found" not in page
        assert f"<h1>No page at {path.replace('<', '&lt;').replace('>', '&gt;')}</h1>" in page
        assert "<code>/queues/&lt;queue&gt;/tenants</code>: a queue's tenants" in page
        assert '<a href="/">/</a>: every pool' in page
    doc = await get_json(api, "/api/queues/demo", 404)
    assert doc["error"].startswith("no data at /api/queues/demo: the pages' data is at ")
    assert "/api/queues/<queue>/tenants" in doc["error"]
    response = await api.get("/static/nope.js")
    assert (response.status, await response.text()) == (404, "no such asset")
    assert (await api.post("/")).status == 405


async def test_the_console_answers_only_to_its_allowed_host_names(redis: aioredis.Redis,
                                                                 queue_name: str) -> None:
    """A web page that points its own name at the console's address (DNS rebinding) gets
    421, whatever address the console listens on; every loopback spelling is the loopback."""
    cases = {
        None: [("127.0.0.1:8080", 200), ("localhost", 200), ("[::1]:8080", 200),
               ("127.0.0.2:8080", 200), ("LOCALHOST.", 200), ("attacker.example:8080", 421),
               ("127.0.0.1.nip.io", 421), ("", 421)],
        frozenset({"localhost", "127.0.0.1", "console.ns.svc"}): [
            ("console.ns.svc:80", 200), ("127.0.0.9", 200), ("attacker.example", 421)],
        frozenset({"console.example.com"}): [
            ("console.example.com", 200), ("localhost:8080", 421), ("127.0.0.1", 421)],
    }
    for hosts, expected in cases.items():
        config = ConsoleConfig() if hosts is None else ConsoleConfig(allowed_hosts=hosts)
        app = build_app(Sources(redis, queues=[queue_name]), config)
        async with TestClient(TestServer(app)) as client:
            for host, status in expected:
                for accept in ("application/json", "text/event-stream"):
                    response = await client.get("/api/fleet",
                                                headers={"Host": host, "Accept": accept})
                    assert response.status == status, (hosts, host, accept)
                    response.close()


def test_a_console_listening_on_every_address_refuses_other_host_names(redis_url: str) -> None:
    """As the chart starts it (--host 0.0.0.0, reached through a port-forward)."""
    port = free_port()
    console = subprocess.Popen(
        [str(Path(sys.executable).with_name("agentpool")), "console", "--redis-url", redis_url,
         "--redis-only", "--host", "0.0.0.0", "--port", str(port),
         "--allowed-host", "localhost", "--allowed-host", "console.example.com"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert console.stdout is not None
        assert console.stdout.readline().startswith(f"agentpool console: http://0.0.0.0:{port}/")

        def status(host: str) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/queues/q/tasks",
                                             headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(f"attacker.example:{port}") == 421
        assert status(f"localhost:{port}") == 200
        assert status("console.example.com") == 200
        assert status(f"127.0.0.2:{port}") == 200
    finally:
        console.terminate()
        console.wait(timeout=15)


async def read_stream(response: Any, events: list[dict[str, Any]], until: int) -> list[Any]:
    """Read an SSE response until `until` events came; returns the snapshots seen and sets
    nothing else (a batch's `id:` must be its last event's id)."""
    snapshots: list[Any] = []
    name = event_id = None
    while len(events) < until:
        line = (await response.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            doc = json.loads(line[6:])
            if name == "events":
                assert event_id == doc[-1]["id"]
                events.extend(doc)
            else:
                snapshots.append(doc)
            name = event_id = None
    return snapshots


@ALSO_ON_A_CLUSTER
async def test_a_task_page_streams_its_events_and_resumes_after_the_last_event_id(
    api: Client, redis: aioredis.Redis, queue_name: str
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"steps": 5}, max_attempts=2)
    [claimed] = (await queue.claim("pod-a:i1", 1, 30)).tasks
    await queue.emit(task_id, "progress", {"fraction": 0.2, "message": "<b>one</b>"}, attempt=1)
    await queue.emit(task_id, "token", "Hel", attempt=1)
    url = f"/api/queues/{queue_name}/tasks/{task_id}"
    sse = {"Accept": "text/event-stream"}

    response = await api.get(url, headers=sse)
    seen: list[dict[str, Any]] = []
    snapshots = await asyncio.wait_for(read_stream(response, seen, 2), 10)
    assert snapshots[0]["task"]["progress"] == {"fraction": 0.2, "message": "<b>one</b>"}
    await queue.emit(task_id, "token", "lo", attempt=1)
    await asyncio.wait_for(read_stream(response, seen, 3), 10)
    response.close()  # the browser loses its connection; events go on meanwhile

    await queue.fail(claimed, "lost", delay=0)
    [again] = (await queue.claim("pod-b:i1", 1, 30)).tasks
    await queue.emit(task_id, "progress", {"fraction": 0.6}, attempt=2)
    await queue.complete(again, {"ok": True})
    resumed = await api.get(url, headers={**sse, "Last-Event-ID": seen[-1]["id"]})
    await asyncio.wait_for(read_stream(resumed, seen, 5), 10)
    resumed.close()

    assert [(e["kind"], e["attempt"], e["data"]) for e in seen] == [
        ("progress", 1, {"fraction": 0.2, "message": "<b>one</b>"}), ("token", 1, "Hel"),
        ("token", 1, "lo"), ("progress", 2, {"fraction": 0.6}),
        ("final", 2, {"state": "succeeded"})]
    assert len({e["id"] for e in seen}) == 5
    everything: list[dict[str, Any]] = []
    fresh = await api.get(url, headers=sse)  # a new page starts from the first event
    await asyncio.wait_for(read_stream(fresh, everything, 5), 10)
    fresh.close()
    assert everything == seen


async def test_a_task_page_shows_its_checkpoint(api: Client, redis: aioredis.Redis,
                                                queue_name: str) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"steps": 9})
    url = f"/api/queues/{queue_name}/tasks/{task_id}"
    assert (await get_json(api, url))["checkpoint"] is None
    [claimed] = (await queue.claim("pod-a:i1", 1, 30)).tasks
    assert await queue.checkpoint(claimed, encode_checkpoint({"step": 4, "notes": ["<i>"]}))
    doc = await get_json(api, url)
    assert doc["checkpoint"] == {"state": {"step": 4, "notes": ["<i>"]}, "bytes": 26,
                                 "complete": True}
    big = {"blob": "x" * (CHECKPOINT_PREVIEW_BYTES + 10)}
    assert await queue.checkpoint(claimed, encode_checkpoint(big))
    doc = await get_json(api, url)
    assert doc["checkpoint"]["complete"] is False
    assert doc["checkpoint"]["bytes"] == len(encode_checkpoint(big))
    assert doc["checkpoint"]["state"] == encode_checkpoint(big)[:CHECKPOINT_PREVIEW_BYTES]


@ALSO_ON_A_CLUSTER
async def test_a_task_page_lists_the_tasks_submitted_after_it(api: Client, redis: aioredis.Redis,
                                                              queue_name: str) -> None:
    """The first NEXT_SHOWN in submit order, and how many in all."""
    queue = TaskQueue(redis, queue_name)
    first = await queue.submit({"plan": True})
    url = f"/api/queues/{queue_name}/tasks/{first}"
    task = (await get_json(api, url))["task"]
    assert (task["next"], task["next_count"]) == ([], 0)
    steps = [await queue.submit({"step": n}, after=[first]) for n in range(NEXT_SHOWN + 2)]
    task = (await get_json(api, url))["task"]
    assert (task["next"], task["next_count"]) == (steps[:NEXT_SHOWN], NEXT_SHOWN + 2)
    assert (await get_json(api, f"/api/queues/{queue_name}/tasks/{steps[0]}"))["task"][
        "after"] == [first]


async def test_task_lists_and_task_pages_read_redis_in_one_round_trip(
    redis_url: str, queue_name: str
) -> None:
    counting = aioredis.Redis.from_url(redis_url, connection_class=CountingConnection)
    sources = Sources(counting, queues=[queue_name])
    queue = sources.queue(queue_name)
    task_id = await queue.submit({"n": 1})
    await queue.submit_many([{"n": n} for n in range(3)])
    [claimed] = (await queue.claim("pod-a:i1", 1, 30)).tasks
    await queue.emit(task_id, "progress", {"fraction": 0.5}, attempt=1)
    for state in ("queued", "running", "dead"):
        await sources.tasks(queue_name, state, 1)  # loads the read scripts once
    await sources.task_feed(queue_name, task_id, None)
    reads: list[int] = []
    for read in (lambda: sources.tasks(queue_name, "queued", 1),
                 lambda: sources.tasks(queue_name, "running", 1),
                 lambda: sources.task_feed(queue_name, task_id, None)):
        before = CountingConnection.trips
        await read()
        reads.append(CountingConnection.trips - before)
    assert reads == [1, 1, 1]
    running = await sources.tasks(queue_name, "running", 1)
    assert [(t["id"], t["progress"]) for t in running["tasks"]] == [
        (claimed.id, {"fraction": 0.5, "message": None})]
    feed = await sources.task_feed(queue_name, task_id, None)
    assert [e["kind"] for e in feed.events] == ["progress"]
    await counting.aclose()


@ALSO_ON_A_CLUSTER
async def test_big_payloads_results_and_errors_are_sent_as_their_start_and_size(
    api: Client, redis: aioredis.Redis, queue_name: str
) -> None:
    """A task page carries at most FIELD_PREVIEW_BYTES of each, cut on a character boundary,
    with the full size; a task list reads no more of them than its previews need."""
    queue = TaskQueue(redis, queue_name)
    payload = {"text": "é" * 100_000}  # two bytes a character: a cut may fall inside one
    payload_bytes = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    task_id = await queue.submit(payload, max_attempts=1)
    [claimed] = (await queue.claim("pod-a:i1", 1, 30)).tasks
    result = ["ok"] * 200_000
    await queue.complete(claimed, result)
    doc = await get_json(api, f"/api/queues/{queue_name}/tasks/{task_id}")
    task = doc["task"]
    result_bytes = len(json.dumps(result, separators=(",", ":")).encode())
    assert task["cut"] == {"payload": payload_bytes, "result": result_bytes}
    for field, whole in (("payload", payload), ("result", result)):
        text = task[field]
        assert 0 < len(text.encode()) <= FIELD_PREVIEW_BYTES
        assert json.dumps(whole, separators=(",", ":"), ensure_ascii=False).startswith(text)

    dead_id = await queue.submit(payload, max_attempts=1)
    [claimed] = (await queue.claim("pod-a:i1", 1, 30)).tasks
    await queue.fail(claimed, "ü" * 3000, retryable=False)
    _, rows = await task_page(queue, "dead", 0, 10, preview_bytes=PREVIEW_BYTES)
    [row] = [r for r in rows if r.info.id == dead_id]
    assert row.cut == {"payload": payload_bytes, "error": 6000}
    assert row.info.result is None
    assert len(str(row.info.payload).encode()) <= PREVIEW_BYTES
    listed = await get_json(api, f"/api/queues/{queue_name}/dead")
    [shown] = [t for t in listed["tasks"] if t["id"] == dead_id]
    assert shown["payload"] == '{"text":"' + "é" * (PREVIEW_CHARS - 10) + "…"
    assert shown["error"] == "ü" * (PREVIEW_CHARS - 1) + "…"
    small = await get_json(api, f"/api/queues/{queue_name}/tasks/{await queue.submit([1])}")
    assert small["task"]["payload"] == [1] and small["task"]["cut"] == {}


async def test_a_browser_that_stops_reading_is_dropped(
    api: Client, redis: aioredis.Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stream is cut after WRITE_SECONDS without progress: the console does not keep what
    it could not send, and the page's refresher stops with its last watcher."""
    monkeypatch.setattr(console_app, "WRITE_SECONDS", 0.5)
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"n": 1})
    async with redis.pipeline(transaction=False) as pipe:  # ~20 MB of events to send
        for n in range(10_000):
            pipe.xadd(queue.events_key(task_id), {"kind": "note", "attempt": 1,
                                                  "data": json.dumps("x" * 2000 + str(n))})
        await pipe.execute()
    await redis.hset(queue.task_key(task_id), "ev", 1)
    hub = api.server.app[console_app.HUB]
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f"GET /api/queues/{queue_name}/tasks/{task_id} HTTP/1.1\r\n"
                 f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")  # and reads no more

    await eventually(lambda: not hub.topics and not api.server.app[console_app.STREAMS])
    writer.close()


async def test_a_closed_tab_stops_its_pages_refresher_within_seconds(
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """Not at the next keep-alive, 15 s later: the refresher reads Redis every second. Served
    as `agentpool console` serves it (aiohttp's test server cancels a handler whose client
    left, which the console's runner does not)."""
    task_id = await TaskQueue(redis, queue_name).submit({"n": 1})
    app = build_app(Sources(redis, queues=[queue_name]), ConsoleConfig())
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hub = app[console_app.HUB]
    try:
        async with aiohttp.ClientSession() as session:
            response = await session.get(
                f"http://127.0.0.1:{port}/api/queues/{queue_name}/tasks/{task_id}",
                headers={"Accept": "text/event-stream"})
            while not (await response.content.readline()).startswith(b"data: "):
                pass  # the page as it is; nothing changes after it
            assert hub.topics
            response.close()
            started = time.monotonic()
            await eventually(lambda: not hub.topics and not app[console_app.STREAMS])
            assert time.monotonic() - started < console_app.KEEPALIVE_SECONDS
    finally:
        await runner.cleanup()


async def test_a_stream_opened_after_an_event_resumes_after_it(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    """What a page that closed its stream while hidden asks for (`after`), as a reconnecting
    browser does with Last-Event-ID."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"n": 1})
    for n in range(3):
        await queue.emit(task_id, "note", {"n": n}, attempt=1)
    url = f"/api/queues/{queue_name}/tasks/{task_id}"
    sse = {"Accept": "text/event-stream"}
    first: list[dict[str, Any]] = []
    response = await api.get(url, headers=sse)
    await asyncio.wait_for(read_stream(response, first, 3), 10)
    response.close()
    rest: list[dict[str, Any]] = []
    resumed = await api.get(f"{url}?after={first[0]['id']}", headers=sse)
    await asyncio.wait_for(read_stream(resumed, rest, 2), 10)
    resumed.close()
    assert [e["data"] for e in rest] == [{"n": 1}, {"n": 2}]


async def test_junk_query_parameters_share_the_pages_refresher_and_pages_watched_are_capped(
    api: Client, redis: aioredis.Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = api.server.app[console_app.HUB]
    sse = {"Accept": "text/event-stream"}
    base = f"/api/queues/{queue_name}/tasks"
    streams = [await api.get(f"{base}?state=queued&page=1&c={n}", headers=sse)
               for n in range(5)]
    streams.append(await api.get(base, headers=sse))
    for stream in streams:
        assert stream.status == 200
        await stream.content.readline()  # retry:
    assert list(hub.topics) == [console_app.page_key("tasks", queue_name, "queued", 1)]
    monkeypatch.setattr(console_app, "MAX_WATCHED_PAGES", 1)
    refused = await api.get(f"{base}?state=dead", headers=sse)
    assert refused.status == 503
    assert "watched live already" in (await refused.json())["error"]
    for stream in streams:
        stream.close()


async def test_a_lone_surrogate_in_a_task_shows_on_every_page(
    api: Client, redis: aioredis.Redis, queue_name: str
) -> None:
    """Valid JSON from another producer ("\\ud800", no character of its own) must not break
    the pages that show it."""
    queue = TaskQueue(redis, queue_name)
    task_id = await dead_task(queue, error="boom")
    await redis.hset(queue.task_key(task_id), mapping={"payload": '{"s":"\\ud800x"}',
                                                       "error": "bad \ud800".encode(
                                                           "utf-8", "surrogatepass")})
    doc = await get_json(api, f"/api/queues/{queue_name}/tasks/{task_id}")
    assert doc["task"]["payload"] == {"s": "\ud800x"}
    assert doc["task"]["error"].startswith("bad \ufffd")  # not UTF-8: shown, not a failure
    for path in (f"/api/queues/{queue_name}/dead", f"/api/queues/{queue_name}/tasks?state=dead"):
        [row] = (await get_json(api, path))["tasks"]
        assert row["payload"] == '{"s":"\ud800x"}'
    response = await api.get(f"/api/queues/{queue_name}/tasks/{task_id}",
                             headers={"Accept": "text/event-stream"})
    snapshot = await asyncio.wait_for(_first_snapshot(response), 10)
    assert snapshot["task"]["payload"] == {"s": "\ud800x"}
    response.close()


async def _first_snapshot(response: Any) -> Any:
    while True:
        line = (await response.content.readline()).decode()
        if line.startswith("data: "):
            return json.loads(line[6:])


async def test_live_streams_carry_the_security_headers(api: Client, queue_name: str) -> None:
    for path in ("/api/fleet", f"/api/queues/{queue_name}/tasks"):
        response = await api.get(path, headers={"Accept": "text/event-stream"})
        assert response.headers["Content-Type"] == "text/event-stream"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        response.close()


async def test_the_fleet_is_502_while_redis_is_down() -> None:
    redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    app = build_app(Sources(redis, queues=["q"]), ConsoleConfig(fleet_seconds=0.05))
    try:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/api/fleet")
            assert response.status == 502
            assert (await response.json())["error"].startswith("cannot read Redis: ")
    finally:
        await redis.aclose()


@pytest.mark.parametrize("page", ["99999999999999999999", "0", "-3", "two"])
async def test_a_page_number_out_of_range_is_refused_in_one_line(api: Client, queue_name: str,
                                                                   page: str) -> None:
    for path in (f"/api/queues/{queue_name}/tasks?state=queued&page={page}",
                 f"/api/queues/{queue_name}/dead?page={page}"):
        doc = await get_json(api, path, 400)
        assert doc == {"error": f"page must be a whole number from 1 to {MAX_PAGE}"}


def test_a_cluster_with_no_node_answering_is_a_redis_failure() -> None:
    shown = console_app.error_doc(redis.exceptions.RedisClusterException(
        "Redis Cluster cannot be connected"))
    assert shown == {"error": "cannot read Redis: Redis Cluster cannot be connected"}


async def test_a_pool_asked_for_while_redis_does_not_answer_is_not_called_unknown() -> None:
    """Started while Redis was down, the console has read no pool: a pool page says why (an
    error the page retries), not that the pool does not exist (a 404), also once the fleet's
    recorder has failed."""
    down = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    sources = Sources(down, queues=["evilq"])
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await sources.pool(NO_NAMESPACE, "evilq")
        app = build_app(sources, ConsoleConfig(fleet_seconds=0.05))
        async with TestClient(TestServer(app)) as client:
            await eventually(lambda: sources.fleet is not None)  # the recorder failed
            assert sources.fleet is not None and "error" in sources.fleet
            for _ in range(2):  # before and after the page is watched
                response = await client.get(f"/api/pools/{NO_NAMESPACE}/evilq")
                assert response.status == 502
                assert await response.json() == {
                    "error": "cannot read Redis: Connection refused"}
    finally:
        await down.aclose()


@pytest.mark.parametrize(("password", "error"), [
    ("", "Redis requires a password: put it in the console's Redis URL (--redis-url or "
     "AGENTPOOL_REDIS_URL)"),
    ("wrong-pw", "Redis refused the password"),
])
async def test_a_missing_or_wrong_redis_password_says_so_in_one_line(
    protected_redis: RedisServer, password: str, error: str,
) -> None:
    """In the CLI's words, not Redis's paragraph about HELLO AUTH."""
    auth = f":{password}@" if password else ""
    client = redis_from_url(f"redis://{auth}127.0.0.1:{protected_redis.port}/0")
    app = build_app(Sources(client, queues=["q"]), ConsoleConfig(fleet_seconds=0.05))
    try:
        async with TestClient(TestServer(app)) as api:
            for path in ("/api/fleet", "/api/queues/q/tasks", f"/api/pools/{NO_NAMESPACE}/q"):
                assert await get_json(api, path, 502) == {"error": error}
    finally:
        await client.aclose()


async def until_due(queue: TaskQueue, count: int) -> None:
    """Until `count` delayed tasks are due (Redis's clock decides, not this one's)."""
    while True:
        if (await queue.figures()).due_delayed >= count:
            return
        await asyncio.sleep(0.02)


async def test_a_due_delayed_task_is_counted_once_as_queued_on_every_page(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    """As the figures count it (the next claim queues it): the fleet, the pool, the task
    lists and the tenants page say queued 1, delayed 2, and list it once."""
    queue = TaskQueue(redis, queue_name)
    due = await queue.submit({"n": 0}, delay=0.1, tenant="acme")
    # distinct delays: tasks due at the same millisecond are listed by id, not submit order
    later = [await queue.submit({"n": n}, delay=3600 + n, tenant="globex") for n in (1, 2)]
    await asyncio.wait_for(until_due(queue, 1), 10)

    async def fleet_row() -> dict[str, Any]:
        while True:
            pools = {p["name"]: p for p in (await get_json(api, "/api/fleet"))["pools"]}
            if queue_name in pools and pools[queue_name]["queued"]:
                return pools[queue_name]
            await asyncio.sleep(0.05)

    row = await asyncio.wait_for(fleet_row(), 10)
    assert (row["queued"], row["delayed"]) == (1, 2)
    figures = (await get_json(api, f"/api/pools/{NO_NAMESPACE}/{queue_name}"))["figures"]
    assert (figures["queued"], figures["delayed"]) == (1, 2)
    queued = await get_json(api, f"/api/queues/{queue_name}/tasks?state=queued")
    delayed = await get_json(api, f"/api/queues/{queue_name}/tasks?state=delayed")
    assert (queued["total"], [t["id"] for t in queued["tasks"]]) == (1, [due])
    assert (delayed["total"], [t["id"] for t in delayed["tasks"]]) == (2, later)
    tenants = (await get_json(api, f"/api/queues/{queue_name}/tenants"))["tenants"]
    assert [(t["tenant"], t["queued"], t["later"]) for t in tenants] == [
        ("acme", 1, 0), ("globex", 0, 2)]
    assert tenants[0]["oldest_queued"] is not None and tenants[1]["oldest_queued"] is None


async def test_the_cli_and_the_tenants_page_count_tenants_the_same(
    api: Client, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """One count of a queue's tenants: `agentpool tenants -o json` and the tenants page agree
    (a due delayed task is queued for both), and their queued add up to the figures'."""
    queue = TaskQueue(redis, queue_name)
    await queue.set_tenant_caps({"capped": 1})
    await queue.set_tenant_weights({"gold": 3})
    for n in range(4):
        await queue.submit({"n": n}, tenant="acme" if n % 2 else None)
    await queue.submit({"n": 4}, tenant="acme", delay=0.05)
    await queue.submit({"n": 5}, tenant="globex", delay=3600)
    await queue.submit({"n": 6}, tenant="gold", delay=0.05)
    await asyncio.wait_for(until_due(queue, 2), 10)
    cli = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("agentpool")), "tenants", "--redis-url", redis_url,
        "--queue", queue_name, "-o", "json", stdout=asyncio.subprocess.PIPE)
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    mine, page = json.loads(out), await get_json(api, f"/api/queues/{queue_name}/tenants")
    fields = ("tenant", "weight", "max_running", "queued", "running", "later")
    assert [[t[f] for f in fields] for t in mine["tenants"]] == [
        [t[f] for f in fields] for t in page["tenants"]] == [
        ["acme", 1, None, 3, 0, 0], [None, 1, None, 2, 0, 0], ["gold", 3, None, 1, 0, 0],
        ["capped", 1, 1, 0, 0, 0], ["globex", 1, None, 0, 0, 1]]
    assert [t["oldest_queued_wait_seconds"] is None for t in mine["tenants"]] == [
        t["oldest_queued"] is None for t in page["tenants"]] == [False] * 3 + [True] * 2
    assert {k: mine[k] for k in ("counted", "total", "capped")} == {
        k: page[k] for k in ("counted", "total", "capped")} == {
        "counted": 7, "total": 7, "capped": 0}
    assert sum(t["queued"] for t in mine["tenants"]) == (await queue.figures()).queued


def test_tenants_count_due_tasks_as_queued_most_queued_first() -> None:
    loads = [TenantLoad("a", 1, queued=2, later=1), TenantLoad("b", 2, later=3,
                                                               oldest_queued=None)]
    assert due_as_queued(loads, [("b", 50.0), ("b", 40.0), ("c", None)]) == [
        TenantLoad("a", 1, queued=2, later=1), TenantLoad("b", 2, queued=2, later=1,
                                                          oldest_queued=40.0),
        TenantLoad("c", 1, queued=1)]


async def test_find_in_a_queue_that_cannot_exist_is_404(api: Client) -> None:
    doc = await get_json(api, "/api/queues/bad%20name/find?q=x", 404)
    assert doc == {"error": "no queue named 'bad name'", "not_found": True}


async def test_a_task_list_says_how_many_pages_it_has(api: Client, redis: aioredis.Redis,
                                                      queue_name: str) -> None:
    await TaskQueue(redis, queue_name).submit_many([{"i": i} for i in range(PAGE_SIZE + 1)])
    for page, shown in ((1, PAGE_SIZE), (2, 1), (999_999_999, 0)):
        doc = await get_json(api, f"/api/queues/{queue_name}/tasks?state=queued&page={page}")
        assert (doc["page"], doc["pages"], doc["total"], len(doc["tasks"])) == (
            page, 2, PAGE_SIZE + 1, shown)


async def test_a_redis_that_hangs_is_an_error_within_seconds_and_says_as_of_when(
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis that stops answering (here paused with SIGSTOP) is not a page that keeps its
    last data as if current: each read gives up after REDIS_ANSWER_SECONDS, and a watched
    page's error says when it was last read."""
    monkeypatch.setattr(console_sources, "REDIS_ANSWER_SECONDS", 0.5)
    with RedisServer() as server:
        redis = aioredis.Redis.from_url(server.url)
        await TaskQueue(redis, queue_name).submit({"a": 1})
        sources = Sources(redis, queues=[queue_name])
        app = build_app(sources, ConsoleConfig(fleet_seconds=0.1))
        path = f"/api/queues/{queue_name}/tasks?state=queued"
        try:
            async with TestClient(TestServer(app)) as client:
                stream = await client.get(path, headers={"Accept": "text/event-stream"})

                async def next_data() -> dict[str, Any]:
                    while True:
                        line = (await stream.content.readline()).decode()
                        if line.startswith("data: "):
                            return dict(json.loads(line[6:]))

                shown = await asyncio.wait_for(next_data(), 10)
                assert shown["total"] == 1
                await eventually(lambda: sources.fleet is not None and "error" not in
                                 sources.fleet)
                with frozen(server):
                    stopped = time.time()
                    response = await client.get(f"/api/queues/{queue_name}/tasks?state=dead")
                    assert response.status == 502
                    assert await response.json() == {
                        "error": "cannot read Redis: no answer within 0.5 s"}
                    assert time.time() - stopped < 3
                    failed = await asyncio.wait_for(next_data(), 5)
                    assert failed["error"] == "cannot read Redis: no answer within 0.5 s"
                    assert shown["at"] <= failed["as_of"] <= stopped
                    await eventually(lambda: sources.fleet is not None
                                     and "error" in sources.fleet, within=5)
                    assert sources.fleet["error"] == "cannot read Redis: no answer within 0.5 s"
                assert (await asyncio.wait_for(next_data(), 10))["total"] == 1
                stream.close()
        finally:
            await redis.aclose()


async def test_a_tenants_read_of_a_redis_that_hangs_gives_up_within_its_limit(
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console_sources, "TENANT_ANSWER_SECONDS", 0.5)
    with RedisServer() as server:
        redis = aioredis.Redis.from_url(server.url)
        await TaskQueue(redis, queue_name).submit({"a": 1}, tenant="t1")
        app = build_app(Sources(redis, queues=[queue_name]), ConsoleConfig(fleet_seconds=0.1))
        try:
            async with TestClient(TestServer(app)) as client:
                with frozen(server):
                    stopped = time.time()
                    response = await client.get(f"/api/queues/{queue_name}/tenants")
                    assert response.status == 502
                    assert await response.json() == {
                        "error": "cannot read Redis: no answer within 0.5 s"}
                    assert time.time() - stopped < 3
        finally:
            await redis.aclose()


async def test_a_quiet_pool_and_fleet_read_the_same_on_every_refresh(
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """A snapshot goes to the browsers only when it changed: a worker's heartbeat is sent as
    its time (the browser ages it), the rates' window in whole seconds, so a quiet pool does
    not redraw its page every refresh."""
    queue = TaskQueue(redis, queue_name)
    await queue.submit({"a": 1})
    await queue.heartbeat(WorkerInfo(pod="pod-a", instance="i1", concurrency=1), {}, 30)
    sources = Sources(redis, queues=[queue_name])

    def unstamped(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k != "at"}

    fleets = []
    for _ in range(3):
        fleets.append(unstamped(await sources.refresh_fleet()))
        await asyncio.sleep(0.05)  # time passes between refreshes: the point of the test
    assert fleets[1]["pools"][0]["rates"] is not None
    assert fleets[1] == fleets[2]
    pools = []
    for _ in range(2):
        pools.append(await sources.pool(NO_NAMESPACE, queue_name))
        await asyncio.sleep(0.05)
    assert _unstamped(pools[0]) == _unstamped(pools[1])  # what the hub compares: no resend
    ages = [p["workers"][0]["heartbeat_age_seconds"] for p in pools]
    assert 0 <= ages[0] < ages[1]  # the API still gives the age, as the CLI's JSON does
    [worker] = pools[0]["workers"]
    assert worker["last_heartbeat"].endswith("Z")


def test_a_conditions_status_says_whether_it_is_a_problem() -> None:
    """As the pool's health reads them: Degraded True, QueueReachable False and Ready False or
    Unknown are problems; the same words in the other states are not."""
    states = [("Degraded", "True"), ("Degraded", "False"), ("QueueReachable", "False"),
              ("QueueReachable", "True"), ("Ready", "False"), ("Ready", "Unknown"),
              ("Ready", "True"), ("Scaling", "True")]
    shown = _conditions({"status": {"conditions": [
        {"type": kind, "status": status, "reason": "R"} for kind, status in states]}})
    assert [(c["type"], c["status"], c["bad"]) for c in shown] == [
        ("Degraded", "True", True), ("Degraded", "False", False),
        ("QueueReachable", "False", True), ("QueueReachable", "True", False),
        ("Ready", "False", True), ("Ready", "Unknown", True), ("Ready", "True", False),
        ("Scaling", "True", False)]


async def test_task_lists_give_when_running_tasks_started_and_dead_ones_died(
    api: Client, redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    running = await queue.submit({"n": 1})
    await queue.claim("pod-x:i1", 1, 30)
    dead = await dead_task(queue)
    [row] = (await get_json(api, f"/api/queues/{queue_name}/tasks?state=running"))["tasks"]
    assert row["id"] == running and row["started"].endswith("Z")
    [row] = (await get_json(api, f"/api/queues/{queue_name}/dead"))["tasks"]
    assert row["id"] == dead and row["finished"].endswith("Z")
