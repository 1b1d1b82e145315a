"""The console with a large fleet: is it fast enough to leave open?

A private redis-server holds 200 queues and 100,000 tasks (queued, running, dead); the
console's app runs in this process on that Redis with a connection class that counts round
trips. Measured:

- server time of the fleet page (one refresh of every queue's figures, then the JSON the page
  gets) and of a task list page, a deep page and a task's detail (median and p95 of 30);
- round trips per second with nobody watching, then with 50 browsers (SSE connections)
  watching the fleet page, then 50 more watching one task list page, then 50 more watching a
  running task that emits 20 events a second (and whether each got every event once);
- server time of a task page's first read when the task has 1,000 events;
- the cost of finding the queues in Redis (a SCAN of the keyspace, every 30 s, when the
  console has no Kubernetes access and no --queue), apart from the figures above.

    .venv/bin/python bench/console_bench.py            # writes bench/results/console.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from redis.asyncio.connection import Connection

from agentpool.console import sources as console_sources
from agentpool.console.app import HUB, ConsoleConfig, build_app
from agentpool.console.sources import Sources
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


class CountingConnection(Connection):
    trips = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.trips += 1
        await super().send_packed_command(command, check_health)


async def fill(url: str, pools: int, tasks: int) -> None:
    redis = aioredis.Redis.from_url(url)
    per = tasks // pools
    for index in range(pools):
        queue = TaskQueue(redis, f"pool-{index:03d}")
        await queue.configure(max_attempts=3)
        await queue.submit_many([{"prompt": f"task {index}-{n}", "n": n} for n in range(per)])
        batch = await queue.claim(f"pod-{index}:a", 4, 600)
        for task in batch.tasks[:1]:
            await queue.fail(task, "upstream said no", retryable=False)
    await redis.aclose()


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


async def timed(session: aiohttp.ClientSession, url: str, runs: int = 30) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            assert response.status == 200, url
        samples.append(time.perf_counter() - start)
    return summary(samples)


async def watch(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> int:
    updates = 0
    async with session.get(url, headers={"Accept": "text/event-stream"}) as response:
        while not stop.is_set():
            try:
                line = await asyncio.wait_for(response.content.readline(), 0.5)
            except TimeoutError:
                continue
            updates += line.startswith(b"data: ")
    return updates


async def watch_events(session: aiohttp.ClientSession, url: str,
                       stop: asyncio.Event) -> list[str]:
    """The ids of the events a task page's stream delivered."""
    ids: list[str] = []
    async with session.get(url, headers={"Accept": "text/event-stream"}) as response:
        name = None
        while not stop.is_set():
            try:
                line = await asyncio.wait_for(response.content.readline(), 0.5)
            except TimeoutError:
                continue
            if line.startswith(b"event: "):
                name = line[7:].strip()
            elif line.startswith(b"data: "):
                if name == b"events":
                    ids += [e["id"] for e in json.loads(line[6:])]
                name = None
    return ids


async def emit_events(queue: TaskQueue, task_id: str, per_second: float,
                      stop: asyncio.Event) -> int:
    sent = 0
    while not stop.is_set():
        await queue.emit(task_id, "token", {"text": f"chunk {sent}"}, attempt=1)
        sent += 1
        await asyncio.sleep(1 / per_second)
    return sent


async def trips_per_second(seconds: float) -> float:
    before = CountingConnection.trips
    await asyncio.sleep(seconds)
    return (CountingConnection.trips - before) / seconds


async def run(pools: int, tasks: int, watchers: int, window: float) -> dict[str, Any]:
    with RedisServer() as server:
        started = time.perf_counter()
        await fill(server.url, pools, tasks)
        filled = time.perf_counter() - started
        redis = aioredis.Redis.from_url(server.url, connection_class=CountingConnection)
        sources = Sources(redis)
        trips, start = CountingConnection.trips, time.perf_counter()
        await sources.discover_queues()
        discovery = {"ms": round((time.perf_counter() - start) * 1000, 1),
                     "round_trips": CountingConnection.trips - trips,
                     "every_seconds": console_sources.DISCOVERY_SECONDS}
        # the rescan runs on its own clock; keep it out of the per-page figures below
        console_sources.DISCOVERY_SECONDS = float("inf")
        fleet_refresh = []
        for _ in range(30):
            start = time.perf_counter()
            await sources.refresh_fleet()
            fleet_refresh.append(time.perf_counter() - start)
        assert sources.fleet is not None and len(sources.fleet["pools"]) == pools
        app = build_app(sources, ConsoleConfig())
        server_app = TestServer(app)
        await server_app.start_server()
        base = str(server_app.make_url("/"))
        doc: dict[str, Any] = {"pools": pools, "tasks": tasks, "fill_seconds": round(filled, 1),
                               "queue_discovery": discovery,
                               "fleet_refresh": summary(fleet_refresh)}
        try:
            # one connection per browser: the default pool of 100 would queue the last 50
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                doc["fleet_page"] = await timed(session, base + "api/fleet")
                doc["tasks_page"] = await timed(session,
                                                base + "api/queues/pool-007/tasks?state=queued")
                doc["tasks_page_10"] = await timed(
                    session, base + "api/queues/pool-007/tasks?state=queued&page=10")
                doc["dead_page"] = await timed(session, base + "api/queues/pool-007/dead")
                some = (await (await session.get(
                    base + "api/queues/pool-007/tasks?state=queued")).json())["tasks"][0]["id"]
                doc["task_page"] = await timed(session, base + f"api/queues/pool-007/tasks/{some}")
                doc["idle_trips_per_second"] = round(await trips_per_second(window), 2)
                stop = asyncio.Event()
                fleet_url = base + "api/fleet"
                tasks_url = base + "api/queues/pool-007/tasks?state=queued"
                clients = [asyncio.create_task(watch(session, fleet_url, stop))
                           for _ in range(watchers)]
                await asyncio.sleep(3)
                doc["fleet_watched_trips_per_second"] = round(await trips_per_second(window), 2)
                clients += [asyncio.create_task(watch(session, tasks_url, stop))
                            for _ in range(watchers)]
                await asyncio.sleep(3)
                doc["watched_trips_per_second"] = round(await trips_per_second(window), 2)
                emitter_redis = aioredis.Redis.from_url(server.url)  # not counted: a worker
                emitter = TaskQueue(emitter_redis, "pool-007")
                running = (await emitter.list_tasks("running", 1))[0].id
                for n in range(1000):
                    await emitter.emit(running, "token", {"text": f"before {n}"}, attempt=1)
                first_reads = []
                for _ in range(30):
                    start = time.perf_counter()
                    await sources.task_feed("pool-007", running, None)
                    first_reads.append(time.perf_counter() - start)
                doc["task_page_first_read_1000_events"] = summary(first_reads)
                emitting = asyncio.Event()
                sender = asyncio.create_task(emit_events(emitter, running, 20, emitting))
                task_url = base + f"api/queues/pool-007/tasks/{running}"
                followers = [asyncio.create_task(watch_events(session, task_url, stop))
                             for _ in range(watchers)]
                await asyncio.sleep(3)
                doc["task_watched_trips_per_second"] = round(await trips_per_second(window), 2)
                emitting.set()
                sent = await sender
                await asyncio.sleep(2.5)  # the last refresh reaches every follower
                stop.set()
                updates = await asyncio.gather(*clients)
                delivered = await asyncio.gather(*followers)
                await emitter_redis.aclose()
                expected = 1000 + sent
                doc["task_events"] = {
                    "per_second": 20, "sent_while_watched": sent, "followers": watchers,
                    "followers_with_every_event_once": sum(
                        len(ids) == len(set(ids)) == expected for ids in delivered)}
                doc["watchers"] = {"fleet": watchers, "tasks": watchers, "task": watchers,
                                   "updates_received": sum(updates),
                                   "page_reloads_by_kind": dict(app[HUB].loads)}
        finally:
            await server_app.close()
            await redis.aclose()
        doc["added_trips_per_second"] = {
            "fleet_page": round(doc["fleet_watched_trips_per_second"]
                                - doc["idle_trips_per_second"], 2),
            "tasks_page": round(doc["watched_trips_per_second"]
                                - doc["fleet_watched_trips_per_second"], 2),
            "task_page_with_events": round(doc["task_watched_trips_per_second"]
                                           - doc["watched_trips_per_second"], 2),
        }
        return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    doc = asyncio.run(run(args.pools, args.tasks, args.watchers, args.window))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "console.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
