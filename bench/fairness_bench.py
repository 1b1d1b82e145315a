"""Tenants taking turns: how long a small tenant's task waits behind another tenant's flood,
with and without `tenant=`, the shares weighted tenants get, what a tenant's submit costs
Redis, the share of the slots a tenant of long runs holds with and without a cap on its runs
at once, and what a claim costs on a queue with caps.

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
from typing import Any

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


async def slot_shares(url: str, *, slots: int, cap: int | None, long_run: int,
                      short_run: int, horizon: int) -> tuple[float, int, int]:
    """Two tenants with work queued all along, one whose runs last `long_run` time units and
    one whose last `short_run`, on `slots` slots in virtual time (each unit: the runs due end,
    then claims fill the free slots): the long tenant's share of the slot-time, and how many
    tasks of each tenant finished within `horizon` units. `cap`: the long tenant's cap."""
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    queue = TaskQueue(client, "capped")
    if cap is not None:
        await queue.set_tenant_caps({"long": cap})
    await queue.submit_many([{"n": n} for n in range(horizon * slots // long_run + slots)],
                            tenant="long")
    await queue.submit_many([{"n": n} for n in range(horizon * slots // short_run + slots)],
                            tenant="short")
    running: list[tuple[int, Any]] = []
    held = dict.fromkeys(("long", "short"), 0)
    done = dict.fromkeys(("long", "short"), 0)
    for now in range(horizon):
        for _, task in [r for r in running if r[0] <= now]:
            await queue.complete(task, "ok")
            done[task.tenant] += 1
        running = [r for r in running if r[0] > now]
        if len(running) < slots:
            for task in (await queue.claim("w", slots - len(running), 3600)).tasks:
                running.append((now + (long_run if task.tenant == "long" else short_run), task))
        for _, task in running:
            held[task.tenant] += 1
    await client.aclose()
    return held["long"] / (slots * horizon), done["long"], done["short"]


def claim_cost(url: str, *, caps: dict[str, int] | None, ahead: int, calls: int) -> float:
    """Redis's time per claim of one task (µs): `calls` claims from a queue of `calls` tasks
    of ten tenants, behind `ahead` tasks (of a higher priority) of a tenant already at its
    cap of one run when `caps` has one for it."""
    client = redis.Redis.from_url(url)
    client.flushdb()

    async def fill() -> None:
        aclient = aioredis.Redis.from_url(url)
        queue = TaskQueue(aclient, "cost")
        if caps is not None:
            await queue.set_tenant_caps(caps)
        if ahead:
            await queue.submit_many([{"n": n} for n in range(ahead + 1)], tenant="big",
                                    priority=5)
            assert len((await queue.claim("w0", 1, 3600)).tasks) == 1
        for tenant in range(10):
            await queue.submit_many([{"n": n} for n in range(calls // 10)], tenant=f"t{tenant}")
        await aclient.aclose()

    asyncio.run(fill())
    queue = TaskQueue(aioredis.Redis(), "cost")
    sha = client.script_load(queue._script("claim").script)
    client.config_resetstat()
    for n in range(calls):
        taken = client.evalsha(sha, 1, queue.prefix + "queued", queue.prefix, f"w:{n}", 1,
                               60_000, 100, f"p{n}-")
        assert len(taken[0]) == 1
    line = client.info("commandstats")["cmdstat_evalsha"]
    client.close()
    return float(line["usec_per_call"])


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
        print()
        slots, long_run, short_run, horizon = 8, 60, 1, 600
        print(f"Two tenants on {slots} slots, runs of {long_run} and {short_run} time units, "
              f"both with work queued all along, {horizon} units:")
        print("| long tenant's cap | its share of the slot-time | long tasks done | "
              "short tasks done |")
        print("|---|---:|---:|---:|")
        for cap in (None, 4, 2):
            share, long_done, short_done = asyncio.run(slot_shares(
                server.url, slots=slots, cap=cap, long_run=long_run, short_run=short_run,
                horizon=horizon))
            print(f"| {cap or 'none'} | {share:.1%} | {long_done} | {short_done} |")
        print()
        print("| claim of one task | Redis time per call (commandstats) |")
        print("|---|---:|")
        for name, caps, ahead in (("queue without caps", None, 0),
                                  ("queue with caps, no tenant at its cap", {"big": 1000}, 0),
                                  ("100 tasks of a tenant at its cap queued ahead "
                                   "(the first claim parks them)", {"big": 1}, 100)):
            costs = [claim_cost(server.url, caps=caps, ahead=ahead, calls=2000)
                     for _ in range(3)]
            print(f"| {name} | {statistics.median(costs):.1f} µs |")


if __name__ == "__main__":
    main()
