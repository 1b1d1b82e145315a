"""Shared rate limits: how fast one limiter grants, how closely a fleet keeps to its rate, and
what `ctx.limit` costs a task that does not wait.

    .venv/bin/python bench/limit_bench.py                 # all four, ~3 min
    .venv/bin/python bench/limit_bench.py --only grants   # or: rate, cost, slots
    .venv/bin/python bench/limit_bench.py --rate-seconds 20

- grants: 4 worker processes x 32 coroutines call `acquire()` on one limit declared so high
  that nobody waits, for 10 s: grants per second of the limiter itself, Redis scripts per
  grant (a process sends the calls that arrived while its previous round trip was on the wire
  in the next one) and Redis time per grant (INFO commandstats); next to it, the same
  processes sending plain INCRs, one per call: what the clients manage at all.
- rate: 4 processes x 25 tasks (100 concurrent) call `acquire(tokens=n)` with n between 500
  and 1,500 for 60 s on a limit of 600,000 tokens/min and 1,200 requests/min (burst 1 s): the
  token rate Redis granted against the declared one, the most granted in any window against
  rate x window + burst, and round trips per grant (a waiter sleeps until its reserved time).
- cost: one process, 5,000 `ctx.limit` calls through the worker's limit books (metrics
  included) on a limit nobody waits on: median and p99 latency.
- slots: 4 processes x 25 coroutines share a limit of `maxConcurrent` 20, each holding a slot
  for a call of 50 ms, then of 1 s, for 20 s: the share of slot-time in use, holds per second,
  waits, and Redis's cost per hold.

Grant times are Redis's own (the reservation the script computed), so the rate figures do not
depend on how promptly the processes woke up. Results go to bench/results/limits.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentpool.ratelimit import LimitConfig, RateLimiter  # noqa: E402
from agentpool.redis_server import RedisServer  # noqa: E402
from agentpool.slots import QUIET_SECONDS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROCESSES = 4


# -- the worker-process role ----------------------------------------------------------------


async def client(url: str, name: str, coroutines: int, seconds: float, tokens: str,
                 start: str) -> list[tuple[int, int]]:
    redis = aioredis.Redis.from_url(url, max_connections=coroutines + 2)
    limiter = RateLimiter(redis, name, caller=f"bench-{os.getpid()}")
    low, high = (int(x) for x in tokens.split("-"))
    rng = random.Random(os.getpid())
    grants: list[tuple[int, int]] = []
    await limiter.reserve(requests=0)  # load the script before the start
    await redis.rpush(start + ":ready", os.getpid())
    await redis.blpop([start], timeout=120)
    deadline = time.monotonic() + seconds

    async def user() -> None:
        while time.monotonic() < deadline:
            n = rng.randint(low, high) if high else 0
            reservation = await limiter.acquire(tokens=n)
            grants.append((reservation.grant_us, n))

    await asyncio.gather(*(user() for _ in range(coroutines)))
    await redis.aclose()
    return grants


async def slot_client(url: str, name: str, coroutines: int, seconds: float, hold: str,
                      start: str) -> list[tuple[float, float, float]]:
    """Each coroutine takes a slot, holds it `hold` seconds (a call in progress), gives it
    back, and asks again; returns (asked, entered, left) per hold, on this machine's clock."""
    redis = aioredis.Redis.from_url(url, max_connections=coroutines + 2)
    limiter = RateLimiter(redis, name, caller=f"bench-{os.getpid()}")
    held_for = float(hold)
    holds: list[tuple[float, float, float]] = []
    await redis.rpush(start + ":ready", os.getpid())
    await redis.blpop([start], timeout=120)
    deadline = time.monotonic() + seconds

    async def user() -> None:
        while time.monotonic() < deadline:
            asked = time.time()
            async with limiter.hold():
                entered = time.time()
                await asyncio.sleep(held_for)
                left = time.time()
            holds.append((asked, entered, left))

    await asyncio.gather(*(user() for _ in range(coroutines)))
    await redis.aclose()
    return holds


def run_clients(url: str, name: str, coroutines: int, seconds: float, tokens: str,
                tmp: Path, role: str = "client") -> list[Any]:
    start = f"bench-start-{time.time_ns()}"
    outs = [tmp / f"grants-{i}.json" for i in range(PROCESSES)]
    procs = [
        subprocess.Popen([sys.executable, __file__, role, url, name, str(coroutines),
                          str(seconds), tokens, start, str(out)])
        for out in outs
    ]

    async def go() -> None:
        redis = aioredis.Redis.from_url(url)
        while await redis.llen(start + ":ready") < PROCESSES:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await redis.rpush(start, *["go"] * PROCESSES)
        await redis.aclose()

    asyncio.run(go())
    codes = [p.wait(timeout=seconds + 120) for p in procs]
    assert codes == [0] * PROCESSES, codes
    if role == "baseline":
        return [json.loads(out.read_text()) for out in outs]
    if role == "slots":
        return [tuple(h) for out in outs for h in json.loads(out.read_text())]
    return [tuple(g) for out in outs for g in json.loads(out.read_text())]


async def evalsha_stats(url: str) -> tuple[int, float]:
    """EVALSHA calls so far and the microseconds Redis spent in them."""
    redis = aioredis.Redis.from_url(url)
    stats = await redis.info("commandstats")
    await redis.aclose()
    found = stats.get("cmdstat_evalsha", {})
    return int(found.get("calls", 0)), float(found.get("usec", 0))


async def evalsha_calls(url: str) -> int:
    return (await evalsha_stats(url))[0]


async def baseline_client(url: str, coroutines: int, seconds: float,
                          start: str) -> list[float]:
    """The same processes and coroutines sending INCR: what the client side can do at all."""
    redis = aioredis.Redis.from_url(url, max_connections=coroutines + 2)
    await redis.rpush(start + ":ready", os.getpid())
    await redis.blpop([start], timeout=120)
    deadline = time.monotonic() + seconds
    done = 0

    async def user() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await redis.incr("bench-baseline")
            done += 1

    began = time.monotonic()
    await asyncio.gather(*(user() for _ in range(coroutines)))
    elapsed = time.monotonic() - began
    await redis.aclose()
    return [done, elapsed]


async def declare(url: str, config: LimitConfig) -> None:
    redis = aioredis.Redis.from_url(url)
    await RateLimiter(redis, config.name).declare(config, "bench/limits")
    await redis.aclose()


# -- the three figures ----------------------------------------------------------------------


def grants_per_second(url: str, tmp: Path, seconds: float = 10.0) -> dict[str, Any]:
    config = LimitConfig("bench-grants", requests_per_minute=10**9, burst_seconds=60)
    asyncio.run(declare(url, config))
    calls0, usec0 = asyncio.run(evalsha_stats(url))
    grants = run_clients(url, config.name, 32, seconds, "0-0", tmp)
    calls1, usec1 = asyncio.run(evalsha_stats(url))
    calls, usec = calls1 - calls0, usec1 - usec0
    times = sorted(g for g, _ in grants)
    span = (times[-1] - times[0]) / 1e6
    baseline = run_clients(url, "-", 32, seconds, "0-0", tmp, role="baseline")
    incr_per_second = sum(done / elapsed for done, elapsed in baseline)
    return {
        "processes": PROCESSES, "coroutines_per_process": 32, "grants": len(grants),
        "seconds": round(span, 2), "grants_per_second": round(len(grants) / span),
        "redis_scripts_per_grant": round(calls / len(grants), 3),
        "redis_usec_per_script": round(usec / calls, 2),
        "redis_usec_per_grant": round(usec / len(grants), 2),
        "redis_side_ceiling_grants_per_second": round(1e6 * len(grants) / usec),
        "same_clients_incr_per_second": round(incr_per_second),
        "load_average_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def observed_rate(url: str, tmp: Path, seconds: float = 60.0) -> dict[str, Any]:
    tpm, rpm, burst = 600_000, 1_200, 1.0
    config = LimitConfig("bench-rate", requests_per_minute=rpm, tokens_per_minute=tpm,
                         burst_seconds=burst)
    asyncio.run(declare(url, config))
    before = asyncio.run(evalsha_calls(url))
    grants = sorted(run_clients(url, config.name, 25, seconds, "500-1500", tmp))
    calls = asyncio.run(evalsha_calls(url)) - before
    first = grants[0][0]
    inside = [(g, n) for g, n in grants if g - first < seconds * 1e6]
    tokens = sum(n for _, n in inside)
    per_second = tpm / 60
    burst_tokens = per_second * burst
    windows = {}
    for window in (1.0, 10.0, 60.0):
        most, j, running = 0, 0, 0
        for g, n in inside:
            running += n
            while g - inside[j][0] >= window * 1e6:
                running -= inside[j][1]
                j += 1
            most = max(most, running)
        windows[f"{window:g}s"] = {"most_granted": most,
                                   "allowed": round(per_second * window + burst_tokens)}
    sustained = (tokens - burst_tokens) / seconds
    return {
        "processes": PROCESSES, "concurrent_tasks": PROCESSES * 25, "seconds": seconds,
        "declared_tokens_per_second": per_second, "declared_burst_tokens": burst_tokens,
        "granted_tokens": tokens, "grants": len(inside),
        "observed_tokens_per_second": round(sustained, 1),
        "observed_over_declared": round(sustained / per_second, 4),
        "windows": windows,
        "redis_scripts_per_grant": round(calls / len(grants), 3),
    }


def slots_in_use(url: str, tmp: Path, hold: float, seconds: float = 20.0,
                 most: int = 20) -> dict[str, Any]:
    """4 processes x 25 coroutines share a limit of `most` calls at once, each call `hold`
    seconds: how full the slots were kept (slot-seconds held / (most x span)), the most
    holders at once, waits, and Redis's cost per hold."""
    config = LimitConfig(f"bench-slots-{hold:g}", max_concurrent=most)
    asyncio.run(declare(url, config))
    time.sleep(QUIET_SECONDS)  # a fresh declaration hands out no slot at first
    calls0, usec0 = asyncio.run(evalsha_stats(url))
    holds = run_clients(url, config.name, 25, seconds, str(hold), tmp, role="slots")
    calls1, usec1 = asyncio.run(evalsha_stats(url))
    start = min(entered for _, entered, _ in holds)
    end = max(left for _, _, left in holds)
    events = sorted([(entered, 1) for _, entered, _ in holds]
                    + [(left, -1) for _, _, left in holds])
    inside = peak = 0
    for _, step in events:
        inside += step
        peak = max(peak, inside)
    waits = sorted(entered - asked for asked, entered, _ in holds)
    busy = sum(left - entered for _, entered, left in holds)
    return {
        "processes": PROCESSES, "coroutines_per_process": 25, "max_concurrent": most,
        "hold_seconds": hold, "holds": len(holds), "seconds": round(end - start, 2),
        "holds_per_second": round(len(holds) / (end - start), 1),
        "ideal_holds_per_second": round(most / hold, 1),
        "slots_used": round(busy / (most * (end - start)), 4),
        "most_at_once_seen": peak,
        "wait_p50_ms": round(1000 * waits[len(waits) // 2], 1),
        "redis_scripts_per_hold": round((calls1 - calls0) / len(holds), 3),
        "redis_usec_per_hold": round((usec1 - usec0) / len(holds), 2),
        "note": "most_at_once_seen counts on this machine's clock across processes; the cap "
                "is Redis's",
    }


def limit_cost(url: str, calls: int = 5000) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "worker"))
    from agentpool_worker.limits import WorkerLimits

    async def measure() -> list[float]:
        redis = aioredis.Redis.from_url(url)
        config = LimitConfig("bench-cost", requests_per_minute=10**9, burst_seconds=60)
        limits = WorkerLimits(redis, {config.name: config}, caller="bench", queue="bench")
        await limits.limit(config.name, 0, 1)
        spent = []
        for _ in range(calls):
            began = time.perf_counter()
            await limits.limit(config.name, 100, 1)
            spent.append(time.perf_counter() - began)
        await redis.aclose()
        return spent

    spent = sorted(asyncio.run(measure()))
    return {
        "calls": calls,
        "median_us": round(statistics.median(spent) * 1e6, 1),
        "p99_us": round(spent[int(len(spent) * 0.99)] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("grants", "rate", "cost", "slots"))
    parser.add_argument("--rate-seconds", type=float, default=60.0)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "limits-tmp"
    tmp.mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    with RedisServer() as server:
        if args.only in (None, "grants"):
            results["grants"] = grants_per_second(server.url, tmp)
            print("grants:", json.dumps(results["grants"]))
        if args.only in (None, "rate"):
            results["rate"] = observed_rate(server.url, tmp, args.rate_seconds)
            print("rate:", json.dumps(results["rate"]))
        if args.only in (None, "cost"):
            results["cost"] = limit_cost(server.url)
            print("cost:", json.dumps(results["cost"]))
        if args.only in (None, "slots"):
            results["slots"] = [slots_in_use(server.url, tmp, hold) for hold in (0.05, 1.0)]
            for figures in results["slots"]:
                print("slots:", json.dumps(figures))
    (RESULTS / "limits.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        url, _, coroutines, seconds, _, start, out = sys.argv[2:9]
        counts = asyncio.run(baseline_client(url, int(coroutines), float(seconds), start))
        Path(out).write_text(json.dumps(counts))
    elif len(sys.argv) > 1 and sys.argv[1] == "slots":
        url, name, coroutines, seconds, hold, start, out = sys.argv[2:9]
        taken = asyncio.run(slot_client(url, name, int(coroutines), float(seconds), hold,
                                        start))
        Path(out).write_text(json.dumps(taken))
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        url, name, coroutines, seconds, tokens, start, out = sys.argv[2:9]
        taken = asyncio.run(client(url, name, int(coroutines), float(seconds), tokens, start))
        Path(out).write_text(json.dumps(taken))
    else:
        main()
