"""Tenants taking turns: how long a small tenant's task waits behind another tenant's flood,
with and without `tenant=`, the shares weighted tenants get, and what a tenant's submit
costs Redis.

    .venv/bin/python bench/fairness_bench.py [--flood 5000] [--small 10] [--calls 20000]

The queue is a private ``redis-server``; the worker is played by claims of one task at a
time, so waits are counted in tasks handed out before a task's own (no timing in the waits:
the same arguments give the same figures, but for ties between tenants, settled by task id).
A flood tenant submits `--flood` tasks at once; each of `--small` other tenants submits one
task every `--every` tasks handed out until the flood is half gone. The costs are Redis's own
time per submit script call (``INFO commandstats``) for a task without a tenant (on a queue
without tenants, and on one with them), one of a tenant among few (of weight 1 and of weight
3), and one among 10,000 tenants with tasks waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def waits(url: str, *, flood: int, small: int, every: int, tenants: bool) -> list[int]:
    """The small tenants' waits, in tasks handed out between each one's submit and its own."""
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    queue = TaskQueue(client, "fair")
    await queue.submit_many([{"n": n} for n in range(flood)],
                            tenant="flood" if tenants else None)
    handed_out = 0
    submitted_at: dict[str, int] = {}
    waited: list[int] = []
    while True:
        if handed_out % every == 0 and handed_out < flood // 2:
            for k in range(small):
                tenant = f"small-{k}" if tenants else None
                task_id = await queue.submit({"small": k}, tenant=tenant)
                submitted_at[task_id] = handed_out
        batch = await queue.claim("w", 1, 60)
        if not batch.tasks:
            break
        task = batch.tasks[0]
        if task.id in submitted_at:
            waited.append(handed_out - submitted_at.pop(task.id))
        handed_out += 1
    await client.aclose()
    return waited


async def shares(url: str, *, weights: dict[str, int], each: int, window: int) -> list[int]:
    """How many of the first `window` tasks handed out each tenant of `weights` got, every
    tenant having queued `each` tasks first."""
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    queue = TaskQueue(client, "weighted")
    await queue.set_tenant_weights({t: w for t, w in weights.items() if w != 1})
    for tenant in weights:
        await queue.submit_many([{"n": n} for n in range(each)], tenant=tenant)
    got = dict.fromkeys(weights, 0)
    for _ in range(window):
        [task] = (await queue.claim("w", 1, 60)).tasks
        got[task.tenant or ""] += 1
    await client.aclose()
    return list(got.values())


def submit_cost(url: str, *, tenant_of: list[str | None], waiting: int, calls: int,
                weight: int = 1) -> float:
    """Redis's time per submit script call (µs), `waiting` tasks of as many tenants queued
    first; each call's tenant is the next of `tenant_of`, each of weight `weight`."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    queue = TaskQueue(aioredis.Redis(), "cost")
    if weight != 1:
        client.hset(queue.prefix + "weights",
                    mapping={t: weight for t in tenant_of if t is not None})
    sha = client.script_load(queue._script("submit").script)
    keys = [queue.prefix + "queued"]
    for n in range(waiting):
        client.evalsha(sha, 1, *keys, queue.prefix,
                       *queue._submit_args(None, 0, 0, None, None, tenant=f"t{n}"))
    client.config_resetstat()
    for n in range(calls):
        client.evalsha(sha, 1, *keys, queue.prefix,
                       *queue._submit_args(None, 0, 0, None, None,
                                           tenant=tenant_of[n % len(tenant_of)]))
    line = client.info("commandstats")["cmdstat_evalsha"]
    client.close()
    return float(line["usec_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with RedisServer() as server:
        print(f"A flood of {args.flood} tasks, then {args.small} other tenants submitting one "
              f"task each every {args.every} tasks handed out; waits in tasks handed out "
              "before the task's own:")
        print("| submits | small tenants' tasks | p50 wait | p95 wait | max wait |")
        print("|---|---:|---:|---:|---:|")
        for tenants in (False, True):
            waited = asyncio.run(waits(server.url, flood=args.flood, small=args.small,
                                       every=args.every, tenants=tenants))
            label = "with `tenant=`" if tenants else "without tenants"
            print(f"| {label} | {len(waited)} | {percentile(waited, 0.5)} "
                  f"| {percentile(waited, 0.95)} | {max(waited)} |")
        print()
        weights = {"bronze": 1, "silver": 2, "gold": 5}
        got = asyncio.run(shares(server.url, weights=weights, each=2000, window=1600))
        print("Three tenants of weights 1, 2 and 5, 2,000 tasks queued each: the first 1,600 "
              "handed out")
        print("| tenant | weight | tasks | share | share by weight |")
        print("|---|---:|---:|---:|---:|")
        for (tenant, weight), count in zip(weights.items(), got, strict=True):
            print(f"| {tenant} | {weight} | {count} | {count / 1600:.1%} "
                  f"| {weight / sum(weights.values()):.1%} |")
        print()
        print("| submit | Redis time per call (commandstats) |")
        print("|---|---:|")
        rows = [("no tenant, on a queue without tenants", [None], 0),
                ("no tenant, on a queue with tenants (one more tenant)", [None], 10),
                ("a tenant among 10", [f"t{n}" for n in range(10)], 10),
                ("a tenant among 10,000 with tasks waiting",
                 [f"t{n}" for n in range(10_000)], 10_000)]
        rows.insert(3, ("a tenant of weight 3 among 10", [f"t{n}" for n in range(10)], 10, 3))
        for name, tenant_of, waiting, *weight in rows:
            costs = [submit_cost(server.url, tenant_of=tenant_of, waiting=waiting,
                                 calls=args.calls, weight=weight[0] if weight else 1)
                     for _ in range(3)]
            print(f"| {name} | {statistics.median(costs):.1f} µs |")


if __name__ == "__main__":
    main()
