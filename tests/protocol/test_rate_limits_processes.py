"""Several processes share one limit on a real redis-server: together they stay inside it, and
each gets its fair share. Grant times are Redis's; no assertion reads the wall clock."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from protocol_helpers import eventually
from test_rate_limits import max_in_window

from agentpool.ratelimit import LimitConfig, RateLimiter

HERE = Path(__file__).resolve().parent
US = 1_000_000
PROCESSES = 4
PER_PROCESS = 5
RATE = 6000  # per minute: 100 grants/s
BURST = 0.1  # seconds: 10 grants
TOTAL = 300


async def run_processes(redis: aioredis.Redis, redis_url: str, name: str,
                        tmp_path: Path) -> list[list[int]]:
    start = f"start-{uuid.uuid4().hex[:8]}"
    outs = [tmp_path / f"grants-{i}.txt" for i in range(PROCESSES)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "limit_clients.py"), redis_url, name, str(TOTAL),
            str(PER_PROCESS), start, str(out))
        for out in outs
    ]

    async def all_ready() -> bool:
        return int(await redis.llen(start + ":ready")) == PROCESSES

    try:
        await eventually(all_ready, within=30)
        await redis.rpush(start, *["go"] * PROCESSES)
        async with asyncio.timeout(60):
            codes = [await p.wait() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    assert codes == [0] * PROCESSES
    return [[int(x) for x in out.read_text().split()] for out in outs]


async def test_processes_sharing_a_limit_stay_inside_it_and_share_it_fairly(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    name = f"l-{uuid.uuid4().hex[:10]}"
    config = LimitConfig(name, requests_per_minute=RATE, burst_seconds=BURST)
    await RateLimiter(redis, name).declare(config, "ns/pool")
    per_process = await run_processes(redis, redis_url, name, tmp_path)
    grants = sorted(g for grants in per_process for g in grants)

    assert len(grants) == TOTAL
    per_second = RATE / 60
    for window in (0.05, 0.2, 1.0):
        assert max_in_window(grants, window * US) <= per_second * BURST + per_second * window + 1
    # the schedule is as tight as the limit allows: the burst, then one grant per interval
    span = (grants[-1] - grants[0]) / US
    assert span >= (TOTAL - per_second * BURST - 1) / per_second
    # first come, first served: every process gets about a quarter of the grants
    shares = [len(g) / TOTAL for g in per_process]
    assert all(0.15 <= share <= 0.35 for share in shares), shares
    state = await RateLimiter(redis, name).state()
    assert state.grants == TOTAL
