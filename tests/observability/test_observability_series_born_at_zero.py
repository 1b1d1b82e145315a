"""Counters exported at 0 before their first event: `increase()` and `rate()` see no rise in a
series whose first sample is already its first count (a node loss requeueing 40 tasks would
show 0 requeued). A real operator against kmock and a real redis-server, a real worker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import redis.asyncio as aioredis
from kubernetes.config import kube_config
from observability_helpers import eventually, samples, scrape
from prometheus_client.samples import Sample

from agentpool.protocol import TaskQueue
from agentpool.ratelimit import LimitConfig, encode_limits
from agentpool.redis_server import free_port
from agentpool_operator import metrics as operator_metrics
from agentpool_operator.settings import OperatorSettings
from agentpool_worker.handlers import TaskContext
from agentpool_worker.settings import WorkerSettings
from agentpool_worker.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from operator_harness import (
    NAMESPACE,
    Cluster,
    ClusterEmulator,
    OperatorThread,
    pool_manifest,
    seed_resources,
    write_kubeconfig,
)

# -- operator ---------------------------------------------------------------------------------


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ClusterEmulator}


@pytest.fixture
def cluster(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Cluster:
    seed_resources(kmock)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    return Cluster(kmock)


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[OperatorThread]:
    thread = OperatorThread(OperatorSettings(port=free_port(), status_refresh_seconds=0.5))
    await thread.start()
    yield thread
    await thread.stop()
    assert thread.error is None, thread.error


def expected_at_zero() -> set[tuple[str, tuple[str, ...]]]:
    """Every series of a pool's counters with fixed label values, by the documented sets."""
    one = [("",)]
    return {
        (name, labels) for name, label_sets in (
            ("agentpool_operator_scale_decisions_total", itertools.product(
                operator_metrics.SCALE_DIRECTIONS, operator_metrics.SCALE_REASONS)),
            ("agentpool_operator_pod_starts_total", one),
            ("agentpool_operator_pods_replaced_total", one),
            ("agentpool_operator_drains_requested_total",
             [(p,) for p in operator_metrics.DRAIN_PURPOSES]),
            ("agentpool_operator_tasks_requeued_total",
             [(c,) for c in operator_metrics.REQUEUE_CAUSES]),
            ("agentpool_operator_tasks_dead_lettered_total",
             [(c,) for c in operator_metrics.REQUEUE_CAUSES]),
            ("agentpool_operator_reconcile_errors_total",
             [(s,) for s in operator_metrics.RECONCILE_STEPS]),
            ("agentpool_operator_queue_data_lost_total", one),
        ) for labels in label_sets
    }


EXTRA_LABEL = ("direction", "reason", "purpose", "cause", "step")


def key(sample: Sample) -> tuple[str, tuple[str, ...]]:
    extra = tuple(sample.labels[k] for k in EXTRA_LABEL if k in sample.labels)
    return sample.name, extra or ("",)


async def pool_samples(operator: OperatorThread, pool: str) -> list[Sample]:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{operator.settings.port}/metrics"
        async with session.get(url) as response:
            assert response.status == 200
            text = await response.text()
    return [s for s in samples(text)
            if s.labels.get("namespace") == NAMESPACE and s.labels.get("pool") == pool]


async def test_a_pools_counters_are_at_zero_after_its_first_round_and_go_with_the_pool(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    pool = f"zero-{uuid.uuid4().hex[:8]}"
    await cluster.create_pool(pool_manifest(
        pool, redis_url=redis_url, queue=queue_name,
        scaling={"minReplicas": 1, "maxReplicas": 3, "pollSeconds": 1}))

    async def first_round() -> list[Sample] | None:
        found = await pool_samples(operator, pool)
        names = {s.name for s in found}
        return found if "agentpool_operator_pool_last_observed_timestamp_seconds" in names \
            else None

    found = await eventually(first_round, what="the pool's first clean round")
    counters = {key(s): s.value for s in found if s.name in {n for n, _ in expected_at_zero()}}
    assert set(counters) == expected_at_zero()
    assert set(counters.values()) == {0}, {k: v for k, v in counters.items() if v}

    # the same series then counts the pool's first scale-up: a rise from 0
    await TaskQueue(redis, queue_name).submit_many([{"n": n} for n in range(10)])
    up = ("agentpool_operator_scale_decisions_total", ("up", "backlog"))

    async def scaled() -> bool:
        return {key(s): s.value for s in await pool_samples(operator, pool)}.get(up) == 1

    await eventually(scaled, what="a scale-up counted")

    await cluster.delete_pool(pool)

    async def gone() -> bool:
        return await pool_samples(operator, pool) == []

    await eventually(gone, what="no series of the deleted pool")


# -- worker -----------------------------------------------------------------------------------


async def relay(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """The worker test's handler: submits `n` tasks to the queue `to`."""
    return await ctx.submit_many([{"step": i} for i in range(payload["n"])], queue=payload["to"])


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


async def test_a_workers_submitted_and_limit_counters_are_at_zero_before_any_use(
    redis_url: str, redis: aioredis.Redis, queue_name: str,
) -> None:
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
