"""`agentpool workers` shows a running worker that claims nothing as not ready, and why (its
heartbeat record says, as its /readyz does); a record without the reason (an older worker)
shows as before."""

from __future__ import annotations

from cli_helpers import Cli, table_rows, with_queue

from agentpool.cli.views import NOT_READY_NAMED, not_ready_notes
from agentpool.protocol import TaskQueue, WorkerInfo, WorkerState

REASON = "ready check failed: ready() returned False"


async def three_workers(q: TaskQueue) -> None:
    """pod-a's ready hook fails, pod-b's worker says nothing of it, pod-c is draining."""
    await q.heartbeat(WorkerInfo(pod="pod-a", instance="i1", concurrency=4,
                                 not_ready=REASON), {}, 30)
    await q.heartbeat(WorkerInfo(pod="pod-b", instance="i2", concurrency=4), {}, 30)
    await q.heartbeat(WorkerInfo(pod="pod-c", instance="i3", concurrency=4, state="draining",
                                 not_ready=""), {}, 30)
    await q.submit({})


def test_the_table_says_not_ready_and_why_under_it(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, three_workers)
    out = cli.ok("workers").out
    assert [r[:4] for r in table_rows(out)] == [
        ["pod-a", "i1", "running (not ready)", "0/4"],
        ["pod-b", "i2", "running", "0/4"],
        ["pod-c", "i3", "draining", "0/4"],
    ]
    assert f"not ready (pod-a:i1): {REASON}" in out.splitlines()


def test_the_json_has_the_reason_beside_the_state(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, three_workers)
    by_pod = {w["pod"]: w for w in cli.ok("workers", "-o", "json").json()["workers"]}
    assert (by_pod["pod-a"]["state"], by_pod["pod-a"]["not_ready"]) == ("running", REASON)
    assert (by_pod["pod-b"]["state"], by_pod["pod-b"]["not_ready"]) == ("running", None)


def test_workers_sharing_a_reason_share_a_note() -> None:
    def worker(n: int, reason: str) -> WorkerState:
        return WorkerState(worker_id=f"pod-{n}:i", pod=f"pod-{n}", instance="i",
                           state="running", in_flight=0, done=0, failed=0, concurrency=1,
                           last_heartbeat=0.0, started=0.0, not_ready=reason)

    many = NOT_READY_NAMED + 2
    workers = [worker(n, REASON) for n in range(many)] + [worker(9, "redis is full")]
    assert not_ready_notes(workers) == [
        f"not ready (pod-0:i, pod-1:i, pod-2:i and 2 more): {REASON}",
        "not ready (pod-9:i): redis is full",
    ]
