"""Pools and runs that share and hand on work on a real cluster: a cap on calls at once that
the runs of two pods share, and a pool whose runs hand tasks to another pool."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_manifests import CAP, CAPPED_POOL_REPLICAS, Manifest, capped_pool, pipeline_pools
from e2e_pools import Pools

pytestmark = pytest.mark.e2e

SKEW_SECONDS = 0.05
"""Allowance for the clocks of two nodes when comparing when runs held their slots: an
excess shorter than twice this (a hand-over seen out of order) goes unnoticed here; the
protocol tests check the cap in Redis itself."""


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans (each narrowed by SKEW_SECONDS at both ends) that overlap."""
    events = sorted([(start + SKEW_SECONDS, 1) for start, _ in spans]
                    + [(end - SKEW_SECONDS, -1) for _, end in spans])
    inside = most = 0
    for _, step in events:
        inside += step
        most = max(most, inside)
    return most


def test_runs_of_two_pods_never_hold_more_slots_than_max_concurrent(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    limit = f"e2e-cap-{run_id}"
    name = make_pool(capped_pool(f"e2e-capped-{run_id}", e2e_config.worker_image,
                                 limit=limit, redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, CAPPED_POOL_REPLICAS)
    ids = cli.submit(name, [{"mean_seconds": 2, "hold": limit}] * 8)
    outcomes = [cli.wait(name, task_id, timeout=300) for task_id in ids]
    assert [o["state"] for o in outcomes] == ["succeeded"] * len(ids)
    assert all(o["result"]["capped"] for o in outcomes)  # the pool's declaration serves
    spans = [(o["result"]["held"][0], o["result"]["held"][1]) for o in outcomes]
    assert most_at_once(spans) == CAP


def test_a_pools_runs_hand_tasks_to_another_pool(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    planners, doers = pipeline_pools(f"e2e-plan-{run_id}", f"e2e-do-{run_id}",
                                     e2e_config.worker_image,
                                     redis_secret=e2e_config.redis_secret)
    first, second = make_pool(planners), make_pool(doers)
    pools.wait_serving(first, 1)
    pools.wait_serving(second, 1)
    payloads = [{"mean_seconds": 0.5,
                 "then": {"queue": second, "payload": {"mean_seconds": 0.5, "step": n}}}
                for n in range(3)]
    planned = [cli.wait(first, task_id, timeout=300)
               for task_id in cli.submit(first, payloads)]
    assert [o["state"] for o in planned] == ["succeeded"] * len(payloads)
    done = [cli.wait(second, o["result"]["submitted"], timeout=300) for o in planned]
    assert [o["state"] for o in done] == ["succeeded"] * len(payloads)
    assert sorted(o["payload"]["step"] for o in done) == list(range(len(payloads)))
