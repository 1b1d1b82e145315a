"""examples/agentpool.yaml as a user applies it (under this run's name and queue): tasks
submitted with the CLI all finish, and `kubectl get agentpools` shows the pool's figures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_kube import KUBECTL_AGE, Waiter, condition
from e2e_manifests import demo_pool as demo_manifest
from e2e_manifests import load_example, quick_tasks
from e2e_pools import Pools

pytestmark = pytest.mark.e2e

TABLE_HEADERS = ["NAME", "QUEUE", "READY", "DESIRED", "QUEUED", "IN-FLIGHT", "HEALTH", "AGE"]
EXAMPLE_SPEC = load_example()["spec"]
DEMO_MIN: int = EXAMPLE_SPEC["scaling"]["minReplicas"]
DEMO_MAX: int = EXAMPLE_SPEC["scaling"]["maxReplicas"]


@pytest.fixture(scope="module")
def demo_pool(pools: Pools, e2e_config: E2EConfig, run_id: str) -> Iterator[str]:
    """The pool's name, which is its queue's too."""
    name = pools.apply(demo_manifest(f"e2e-demo-{run_id}", e2e_config.worker_image,
                                     redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, DEMO_MIN)
    yield name
    pools.delete(name)


def await_succeeded(cli: AgentpoolCli, waiter: Waiter, queue: str, before: dict[str, int],
                    count: int, timeout: float) -> dict[str, Any]:
    """Poll `agentpool stats` until `count` more tasks succeeded; fail at once on a dead one."""

    def probe() -> dict[str, Any]:
        stats = cli.stats(queue)
        dead = stats["counters"]["dead"] - before["dead"]
        assert dead == 0, f"{dead} task(s) of queue {queue} ended in the dead-letter list"
        return stats

    return waiter.until(
        probe, lambda s: s["counters"]["succeeded"] - before["succeeded"] >= count,
        timeout=timeout, what=f"{count} tasks of queue {queue} to succeed")


def test_tasks_submitted_with_the_cli_all_finish(
    demo_pool: str, cli: AgentpoolCli, waiter: Waiter
) -> None:
    count = 20
    before = cli.counters(demo_pool)
    ids = cli.submit(demo_pool, quick_tasks(count))
    assert len(set(ids)) == count
    await_succeeded(cli, waiter, demo_pool, before, count, timeout=300)
    outcomes = [cli.wait(demo_pool, task_id, timeout=60) for task_id in ids]
    assert [o["state"] for o in outcomes] == ["succeeded"] * count
    assert all(o["result"]["attempt"] >= 1 for o in outcomes), "results come from the handler"


def row_of(table: list[dict[str, str]], name: str) -> dict[str, str] | None:
    return next((row for row in table if row.get("NAME") == name), None)


def number(row: dict[str, str] | None, column: str) -> int | None:
    value = (row or {}).get(column, "")
    return int(value) if value.isdigit() else None


def check_row(row: dict[str, str], queue: str) -> None:
    """Values a person reading the table would call sensible."""
    assert list(row) == TABLE_HEADERS
    assert row["QUEUE"] == queue
    for column in ("READY", "DESIRED", "QUEUED", "IN-FLIGHT"):
        assert number(row, column) is not None, f"{column} is {row[column]!r}, not a count"
    assert DEMO_MIN <= (number(row, "DESIRED") or 0) <= DEMO_MAX
    assert 0 <= (number(row, "READY") or 0) <= DEMO_MAX
    assert row["HEALTH"] in ("Ready", "NotReady"), f"HEALTH is {row['HEALTH']!r}"
    assert KUBECTL_AGE.match(row["AGE"]), f"AGE is {row['AGE']!r}"


def test_get_agentpools_shows_queue_replicas_and_tasks(
    demo_pool: str, pools: Pools, cli: AgentpoolCli, waiter: Waiter
) -> None:
    count = 16

    def quiet(row: dict[str, str] | None) -> bool:
        return row is not None and number(row, "QUEUED") == 0 and number(row, "IN-FLIGHT") == 0

    # figures left by an earlier test (written every few seconds) must not pass for these tasks
    waiter.until(lambda: row_of(pools.table(), demo_pool), quiet, timeout=120,
                 what="QUEUED and IN-FLIGHT at 0 before submitting")
    before = cli.counters(demo_pool)
    cli.submit(demo_pool, quick_tasks(count, mean_seconds=8, tag="columns"))
    busy = waiter.until(
        lambda: row_of(pools.table(), demo_pool),
        lambda row: (number(row, "QUEUED") or 0) + (number(row, "IN-FLIGHT") or 0) > 0,
        timeout=120, what="QUEUED or IN-FLIGHT to show the submitted tasks")
    assert busy is not None
    check_row(busy, demo_pool)
    await_succeeded(cli, waiter, demo_pool, before, count, timeout=300)
    idle = waiter.until(
        lambda: row_of(pools.table(), demo_pool),
        lambda row: number(row, "QUEUED") == 0 and number(row, "IN-FLIGHT") == 0
        and (number(row, "READY") or 0) >= DEMO_MIN,
        timeout=120, what="QUEUED and IN-FLIGHT back to 0 with ready workers")
    assert idle is not None
    check_row(idle, demo_pool)


def test_status_reports_the_pool_ready(demo_pool: str, pools: Pools, waiter: Waiter) -> None:
    def ready(pool: dict[str, Any]) -> bool:
        status = pool.get("status") or {}
        return (status.get("observedGeneration") == pool["metadata"]["generation"]
                and (condition(pool, "Ready") or {}).get("status") == "True"
                and (condition(pool, "QueueReachable") or {}).get("status") == "True")

    pool = waiter.until(lambda: pools.get(demo_pool) or {}, ready, timeout=120,
                        what="status: observedGeneration current, Ready and QueueReachable")
    status = pool["status"]
    assert status["queue"] == demo_pool
    assert status["readyReplicas"] >= DEMO_MIN
    assert DEMO_MIN <= status["desiredReplicas"] <= DEMO_MAX


def test_worker_pods_spread_by_the_pools_own_label(demo_pool: str, pools: Pools) -> None:
    """The example's spread constraint has no labelSelector: the API server took the one the
    operator filled in (this pool's pods), and the pods carry that label."""
    deployment = pools.deployment(demo_pool)
    assert deployment is not None
    template = deployment["spec"]["template"]
    (constraint,) = template["spec"]["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    selector = constraint["labelSelector"]["matchLabels"]
    assert selector == {"agentpool.dev/pool": demo_pool}
    assert template["metadata"]["labels"]["agentpool.dev/pool"] == demo_pool
