"""Worker metrics after real runs against a real redis-server, scraped from /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from observability_helpers import (
    check_metrics,
    eventually,
    families,
    samples,
    scrape,
    spawn,
    value,
)
from prometheus_client import REGISTRY

from agentpool.protocol import TaskQueue
from agentpool.ratelimit import LimitConfig, encode_limits
from agentpool.redis_server import free_port
from agentpool_worker.handlers import TaskContext
from agentpool_worker.metrics import BUCKETS, NAMES
from agentpool_worker.settings import WorkerSettings
from agentpool_worker.worker import Worker

COUNTERS = ("started", "succeeded", "failed", "timed_out", "retried", "dead_lettered",
            "requeued")


def worker_settings(redis_url: str, queue: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "queue": queue, "handler": "observability_handlers:scenario",
        "pod_name": "pod-metrics", "port": free_port(), "concurrency": 4,
        "lease_seconds": 1.5, "redis_timeout_seconds": 1.0, "poll_seconds": 0.2,
        "retry_backoff_base_seconds": 0.05, "retry_backoff_cap_seconds": 0.1,
        "drain_seconds": 0.3, "max_attempts": 2,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@contextlib.asynccontextmanager
async def running(settings: WorkerSettings) -> AsyncIterator[Worker]:
    worker = Worker(settings)
    run = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.wait_started())
    done, _ = await asyncio.wait([run, started], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if run in done:
        run.result()
    assert started in done, "the worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        async with asyncio.timeout(15):
            await run


async def test_a_real_run_is_counted_with_the_documented_names_and_labels(
    redis_url: str, queue_name: str, redis: aioredis.Redis, promtool: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    ok = await queue.submit_many([{"kind": "ok", "seconds": 0.02}] * 3)
    flaky = await queue.submit({"kind": "flaky"})
    broken = await queue.submit({"kind": "broken"})
    refused = await queue.submit({"kind": "refused"})
    hung = await queue.submit({"kind": "ok", "seconds": 30}, task_timeout=0.2, max_attempts=1)
    await asyncio.sleep(0.05)  # every first run waits at least this long after its submit
    settings = worker_settings(redis_url, queue_name)

    async with running(settings) as worker:
        assert worker.probe_port is not None
        for task_id in [*ok, flaky]:
            await eventually(lambda t=task_id: _in(queue, t, "succeeded"), what="successes")
        for task_id in (broken, refused, hung):
            await eventually(lambda t=task_id: _in(queue, t, "dead"), what="dead letters")

        def counted(name: str) -> float:
            return REGISTRY.get_sample_value(f"agentpool_worker_tasks_{name}_total",
                                             {"queue": queue_name}) or 0.0

        # outcomes are counted once the worker reads Redis's answer, a moment after Redis
        # shows them
        await eventually(lambda: counted("succeeded") == 4 and counted("dead_lettered") == 3,
                         what="the outcomes counted")
        exposition = await asyncio.to_thread(scrape, worker.probe_port)

    kinds = families(exposition)
    for name in NAMES:
        family = name.removesuffix("_total")
        assert family in kinds, f"{family} is not exposed"
    assert kinds["agentpool_worker_task_duration_seconds"] == "histogram"
    assert kinds["agentpool_worker_task_wait_seconds"] == "histogram"
    assert kinds["agentpool_worker_tasks_in_flight"] == "gauge"
    assert all(kinds[f"agentpool_worker_tasks_{c}"] == "counter" for c in COUNTERS)
    assert "process_cpu_seconds_total" in {s.name for s in samples(exposition)}
    await asyncio.to_thread(check_metrics, promtool, exposition)

    mine = [s for s in samples(exposition) if s.labels.get("queue") == queue_name]
    assert {s.name for s in mine} >= {
        *(f"agentpool_worker_tasks_{c}_total" for c in COUNTERS),
        "agentpool_worker_tasks_in_flight",
        "agentpool_worker_task_wait_seconds_bucket",
        "agentpool_worker_task_duration_seconds_count",
    }
    assert all(set(s.labels) - {"le", "to"} == {"queue"} for s in mine)  # to: submitted_total

    def counter(name: str) -> float:
        return value(mine, f"agentpool_worker_tasks_{name}_total")

    # ok: 3 tasks, once each; flaky twice (fails, retried, succeeds); broken twice (fails, retried,
    # fails, dead-lettered: maxAttempts 2); refused once (PermanentError: dead-lettered); hung
    # once (stopped by its own timeout, one attempt: dead-lettered).
    assert counter("started") == 3 + 2 + 2 + 1 + 1
    assert counter("succeeded") == 3 + 1
    assert counter("failed") == 1 + 2 + 1 + 1
    assert counter("timed_out") == 1
    assert counter("retried") == 1 + 1
    assert counter("dead_lettered") == 1 + 1 + 1
    assert counter("requeued") == 0
    assert value(mine, "agentpool_worker_tasks_in_flight") == 0
    assert value(mine, "agentpool_worker_ready") == 1

    for histogram in ("agentpool_worker_task_duration_seconds",
                      "agentpool_worker_task_wait_seconds"):
        buckets = sorted(
            (float(s.labels["le"]), s.value) for s in mine if s.name == f"{histogram}_bucket"
        )
        assert [le for le, _ in buckets] == [*BUCKETS, float("inf")]
        assert BUCKETS[0] == 0.01 and BUCKETS[-1] == 3600
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), "buckets are cumulative"
        assert counts[-1] == value(mine, f"{histogram}_count") == counter("started")
        assert 0 < value(mine, f"{histogram}_sum") < 60
    wait = dict((float(s.labels["le"]), s.value) for s in mine
                if s.name == "agentpool_worker_task_wait_seconds_bucket")
    # every first run waited at least 50 ms after its submit; a retry waits from when its
    # delay ended, and an idle worker may claim it within 10 ms of that
    assert wait[0.01] <= counter("retried"), "a first run waited less than 50 ms"
    assert wait[60.0] == counter("started")


async def test_tasks_released_on_shutdown_count_as_requeued(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    slow = await queue.submit({"kind": "ok", "seconds": 30})
    async with running(worker_settings(redis_url, queue_name)) as worker:
        assert worker.probe_port is not None
        await eventually(lambda: _in(queue, slow, "running"), what="the claim")
        during = samples(await asyncio.to_thread(scrape, worker.probe_port))
        assert value(during, "agentpool_worker_tasks_in_flight", queue=queue_name) == 1
    # Stopped: the run outlived drainSeconds and went back to the queue.
    assert await _in(queue, slow, "queued")
    labels = {"queue": queue_name}
    assert REGISTRY.get_sample_value("agentpool_worker_tasks_requeued_total", labels) == 1
    assert REGISTRY.get_sample_value("agentpool_worker_tasks_in_flight", labels) == 0
    assert REGISTRY.get_sample_value("agentpool_worker_ready", labels) == 0


async def test_the_worker_entrypoint_serves_metrics(
    redis_url: str, queue_name: str, redis: aioredis.Redis, tmp_path: Path,
) -> None:
    """`agentpool-worker` as the image runs it, configured by environment only."""
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"n": i} for i in range(5)])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env.update({
        "AGENTPOOL_REDIS_URL": redis_url, "AGENTPOOL_QUEUE": queue_name,
        "AGENTPOOL_HANDLER": "agentpool_worker.builtin:echo", "AGENTPOOL_PORT": str(port),
        "AGENTPOOL_POD_NAME": "pod-entrypoint", "AGENTPOOL_POLL_SECONDS": "0.2",
    })
    proc = spawn([sys.executable, "-m", "agentpool_worker.main"], env, tmp_path / "worker.log")
    try:
        for task_id in ids:
            await eventually(lambda t=task_id: _in(queue, t, "succeeded"), what="successes")

        async def scraped() -> list[Any] | None:
            """The samples once every success is counted (the worker counts one when it
            reads Redis's answer, a moment after Redis shows it)."""
            try:
                found = samples(await asyncio.to_thread(scrape, port))
            except OSError:
                return None
            mine = [s for s in found if s.labels.get("queue") == queue_name]
            return found if value(mine, "agentpool_worker_tasks_succeeded_total") == 5 else None

        found = await eventually(scraped, what="/metrics")
        mine = [s for s in found if s.labels.get("queue") == queue_name]
        assert value(mine, "agentpool_worker_tasks_started_total") == 5
        assert value(mine, "agentpool_worker_tasks_succeeded_total") == 5
        assert value(mine, "agentpool_worker_tasks_failed_total") == 0
        assert value(mine, "agentpool_worker_task_wait_seconds_count") == 5
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


async def _in(queue: TaskQueue, task_id: str, state: str) -> bool:
    info = await queue.get(task_id)
    return info is not None and info.state == state


async def relay(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """The born-at-zero test's handler: submits `n` tasks to the queue `to`."""
    return await ctx.submit_many([{"step": i} for i in range(payload["n"])], queue=payload["to"])


async def test_a_workers_submitted_and_limit_counters_are_at_zero_before_any_use(
    redis_url: str, redis: aioredis.Redis, queue_name: str,
) -> None:
    """Counters exported at 0 from the worker's start: `increase()` sees the first count."""
    pipe, limit = f"{queue_name}-pipe", f"llm-{uuid.uuid4().hex[:6]}"
    settings = WorkerSettings(
        redis_url=redis_url, queue=queue_name, handler=f"{__name__}:relay",
        pod_name="pod-zero", port=free_port(), poll_seconds=0.2, submits_to=pipe,
        rate_limits=encode_limits([LimitConfig(limit, requests_per_minute=600)]))
    async with running(settings) as worker:
        port = worker.probe_port
        assert port is not None
        mine = [s for s in samples(await asyncio.to_thread(scrape, port))
                if s.labels.get("queue") == queue_name]
        submitted = {s.labels["to"]: s.value for s in mine
                     if s.name == "agentpool_worker_submitted_total"}
        assert submitted == {queue_name: 0, pipe: 0}
        limits = {s.name: s.value for s in mine
                  if s.labels.get("limit") == limit and s.name.endswith("_total")}
        assert limits == {
            f"agentpool_worker_limit_{c}_total": 0 for c in (
                "grants", "tokens", "wait_seconds", "released", "throttles", "holds", "lapsed")
        }

        await TaskQueue(redis, queue_name).submit({"n": 3, "to": pipe})

        async def relayed() -> bool:
            found = samples(await asyncio.to_thread(scrape, port))
            return any(s.name == "agentpool_worker_submitted_total" and s.value == 3
                       and s.labels == {"queue": queue_name, "to": pipe} for s in found)

        await eventually(relayed, what="the relayed tasks counted")
