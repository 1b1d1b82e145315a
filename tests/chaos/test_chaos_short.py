"""The short chaos soak (opt-in: ``pytest -m chaos``; about a minute).

Runs ``python -m bench.chaos`` with a fixed seed on a few thousand tasks: worker kill -9
(operator requeue and container restart), SIGSTOP past the lease, SIGTERM drains and Redis
restarts with AOF, while the lease reaper runs. The soak itself accounts for every task. The
second run does the same with per-queue Redis ACL users for the workers and the producer; the
checkpointing variant runs a few hundred multi-step tasks that checkpoint every 4 steps. The
Sentinel variant (about a minute each) fails a primary with one replica over, by kill -9 and
by SENTINEL FAILOVER in turn, while a producer submits all along; with durability replicated
no acknowledged submit or completion may be lost. The Cluster variant (about a minute) does
the same to the primary holding the queue in a cluster of three primaries with a replica
each, by kill -9 and by CLUSTER FAILOVER, with durability replicated. The chain variant
submits the tasks as chains, each after the one before, and once more requeuing the dead
letters as it goes; the planner variant has each task submit steps and a summary from its
run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "--seed", "7", "--tasks", "2000", "--workers", "3", "--concurrency", "10",
    "--mean-seconds", "0.3", "--lease-seconds", "3", "--event-gap", "2", "--freezes", "3",
    "--timeout", "240",
]


CHECKPOINT_ARGS = [
    "--seed", "7", "--tasks", "300", "--workers", "3", "--concurrency", "10",
    "--mean-seconds", "2", "--lease-seconds", "3", "--event-gap", "2", "--freezes", "3",
    "--checkpoint-every", "4", "--steps", "20", "--timeout", "240",
]


SENTINEL_ARGS = [
    "--sentinel", "--seed", "7", "--tasks", "1200", "--workers", "3", "--concurrency", "10",
    "--mean-seconds", "0.3", "--lease-seconds", "10", "--event-gap", "6", "--freezes", "0",
    "--timeout", "150",
]


TENANTS = ["--tenants", "6", "--tenant-cap", "4"]


def soak(args: list[str]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    # The soak's progress and events go to stderr as they happen: live under `pytest -s`,
    # otherwise captured and shown with a failure.
    run = subprocess.run([sys.executable, "-m", "bench.chaos", *args, "--json"], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, timeout=420, check=False)
    assert run.stdout.strip(), "no report (the soak's own output is above)"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return run, report, f"report: {json.dumps(report, indent=1)}"


@pytest.mark.chaos
@pytest.mark.parametrize("credentials", [[], ["--acl", *TENANTS]],
                         ids=["shared-url", "acl-users-capped-tenants"])
def test_short_chaos_soak_loses_nothing_and_accepts_no_zombie(credentials: list[str]) -> None:
    """With --acl the workers and the producer are Redis users confined to the queue, and no
    command of the whole soak is refused for permissions; that soak's tasks are six tenants'
    with a cap of four runs each (24 of the 30 slots), and no tenant ever holds more leases
    than its cap while the caps hold tasks back."""
    run, report, context = soak([*ARGS, *credentials])
    if TENANTS[0] in credentials:
        tenants = report["tenants"]
        assert 1 <= tenants["most_leased_at_once"] <= 4, context
        assert tenants["most_capped"] > 0, context
    assert report["submitted"] == 2000, context
    assert report["lost"] == 0, context
    assert report["zombie_completions_accepted"] == 0, context
    assert report["completions_refused"] >= 1, "no zombie completion reached the fence"
    assert report["dead_with_attempts_left"] == 0, context
    assert report["duplicate_executions"] <= report["duplicate_bound"], context
    assert report["succeeded"] + report["dead_lettered"] == report["submitted"], context
    assert all(report["events"].get(kind, 0) >= 1 for kind in ("kill", "stop", "drain",
                                                               "redis", "freeze")), context
    assert report["acl"] is bool(credentials), context
    assert report["permission_denials"] == 0, context
    assert run.returncode == 0, context


@pytest.mark.chaos
def test_checkpointing_tasks_end_as_if_uninterrupted_and_redo_at_most_an_interval() -> None:
    run, report, context = soak(CHECKPOINT_ARGS)
    checks = report["checkpoints"]
    assert report["lost"] == 0, context
    assert report["succeeded"] == report["submitted"] == 300, context
    assert checks["wrong_results"] == 0, context
    assert checks["lost_runs"] > 0, context
    assert checks["tasks_over_bound"] == 0, context
    assert checks["worst_redone_per_lost_run"] <= 4, context
    assert checks["zombie_checkpoints_accepted"] == 0, context
    assert report["zombie_completions_accepted"] == 0, context
    assert all(report["events"].get(kind, 0) >= 1 for kind in ("kill", "stop", "drain",
                                                               "redis")), context
    assert run.returncode == 0, context


CHAIN_ARGS = [
    "--seed", "7", "--tasks", "800", "--workers", "3", "--concurrency", "10",
    "--mean-seconds", "0.3", "--lease-seconds", "3", "--event-gap", "2", "--freezes", "3",
    "--chains", "4", "--max-attempts", "1", "--timeout", "240",
]


PLAN_ARGS = [
    "--seed", "7", "--tasks", "200", "--workers", "3", "--concurrency", "10",
    "--mean-seconds", "0.5", "--lease-seconds", "3", "--event-gap", "2", "--freezes", "0",
    "--plans", "4", "--timeout", "240",
]


@pytest.mark.chaos
def test_planners_run_again_by_the_chaos_submit_each_step_once() -> None:
    """Planners that submit four steps and a summary from their runs (ctx.submit), killed,
    stopped and drained between two submits: the queue ends with exactly the planned tasks."""
    run, report, context = soak(PLAN_ARGS)
    plans = report["plans"]
    assert report["lost"] == 0, context
    assert plans["planners_run_again"] > 0, context
    assert plans["tasks_submitted"] == plans["tasks_expected"] == 1200, context
    assert plans["tasks_unfinished"] == 0, context
    assert plans["summaries_short_of_results"] == 0, context
    assert run.returncode == 0, context


@pytest.mark.chaos
def test_chained_tasks_run_only_after_the_one_before_and_a_failure_cuts_the_chain() -> None:
    """Chains of four tasks, each after the one before, through the same chaos; one attempt
    each, so a run lost to a kill dead-letters its task and cancels the rest of its chain."""
    run, report, context = soak(CHAIN_ARGS)
    chains = report["chains"]
    assert report["lost"] == 0, context
    assert report["zombie_completions_accepted"] == 0, context
    assert chains["runs_before_the_one_before_succeeded"] == 0, context
    assert chains["cancelled_otherwise"] == 0, context
    assert report["succeeded"] > 0 and report["dead_lettered"] > 0, context
    assert chains["cancelled_after_a_failed_one"] > 0, context
    assert (report["succeeded"] + report["dead_lettered"]
            + chains["cancelled_after_a_failed_one"]) == report["submitted"] == 800, context
    assert run.returncode == 0, context


@pytest.mark.chaos
def test_chains_cut_by_a_death_come_back_when_the_dead_letters_are_requeued() -> None:
    """The same chains and chaos, the dead letters requeued every 4 s while it lasts: the
    tasks a death cancelled wait again and run in order once the task before them succeeds,
    never before; none is lost."""
    run, report, context = soak([*CHAIN_ARGS, "--requeue-dead-every", "4"])
    chains = report["chains"]
    assert report["lost"] == 0, context
    assert report["zombie_completions_accepted"] == 0, context
    assert report["duplicate_executions"] <= report["duplicate_bound"], context
    assert chains["runs_before_the_one_before_succeeded"] == 0, context
    assert chains["cancelled_otherwise"] == 0, context
    assert chains["dead_letters_requeued"] > 0, context
    assert chains["cancelled_then_succeeded"] > 0, context
    assert chains["tasks_revived"] >= chains["cancelled_then_succeeded"], (
        "a task seen cancelled can only succeed once a requeue brought it back: each such "
        "task counts among the revivals at least once", context)
    assert (report["succeeded"] + report["dead_lettered"]
            + chains["cancelled_after_a_failed_one"]) == report["submitted"] == 800, context
    assert run.returncode == 0, context


@pytest.mark.chaos
@pytest.mark.parametrize("durability", ["none", "replicated"])
def test_sentinel_failovers_lose_no_task_and_replicated_loses_no_acknowledged_write(
    durability: str,
) -> None:
    run, report, context = soak([*SENTINEL_ARGS, "--durability", durability])
    assert report["lost"] == 0, context
    assert report["succeeded"] + report["dead_lettered"] == report["submitted"] == 1200, context
    assert report["zombie_completions_accepted"] == 0, context
    kinds = {f["kind"] for f in report["failovers"]}
    assert kinds == {"kill", "graceful"}, context
    busy = [f for f in report["failovers"] if f["in_flight"] + f["queued"]]
    assert len(busy) >= len(report["failovers"]) // 2, context
    assert all(f["work_resumed_seconds"] is not None for f in busy), context
    lost = report["lost_writes"]
    if durability == "replicated":
        assert lost["submits_acknowledged_then_lost"] == 0, context
        assert lost["completions_lost"] == 0, context
    assert run.returncode == 0, context


@pytest.mark.chaos
def test_cluster_failovers_lose_no_task_and_no_acknowledged_write() -> None:
    run, report, context = soak(["--cluster", *SENTINEL_ARGS[1:], "--durability", "replicated"])
    assert report["lost"] == 0, context
    assert report["succeeded"] + report["dead_lettered"] == report["submitted"] == 1200, context
    assert report["zombie_completions_accepted"] == 0, context
    assert {f["kind"] for f in report["failovers"]} == {"kill", "graceful"}, context
    assert report["handover"] == "CLUSTER FAILOVER", context
    busy = [f for f in report["failovers"] if f["in_flight"] + f["queued"]]
    assert len(busy) >= len(report["failovers"]) // 2, context
    assert all(f["work_resumed_seconds"] is not None for f in busy), context
    assert report["lost_writes"]["submits_acknowledged_then_lost"] == 0, context
    assert report["lost_writes"]["completions_lost"] == 0, context
    # A kill leaves the new primary without a replica until the old one is back: replicated
    # submits in that window must say they are not (a WAIT asked of another shard's primary
    # would say they are).
    assert report["lost_writes"]["submits_not_replicated_in_time"] > 0, context
    assert run.returncode == 0, context
