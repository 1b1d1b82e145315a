"""Client CPU per single ``submit``: the producer's cost of one task, as a web handler pays it.

    .venv/bin/python bench/submit_cpu.py [--n 5000] [--rounds 5] [--before DIR]
                                         [--sentinel | --cluster]

Each round starts a fresh process that opens ``Client.from_url`` on a private redis-server
and awaits ``submit(None)`` N times, one after the other, then one that does the same with
the blocking ``SyncClient``; each reports the process's CPU time and the wall time per
submit. With ``--before DIR`` an earlier checkout runs in alternation with this one (its
directory first on the path). With ``--sentinel`` the clients reach a private Sentinel group
(a primary, a replica, three sentinels) through a ``redis+sentinel://`` URL instead, with
``--cluster`` a private Redis Cluster of three primaries through a ``redis+cluster://`` URL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentpool.redis_server import RedisCluster, RedisServer, SentinelGroup  # noqa: E402

ROUND = """
import asyncio, json, sys, time
from agentpool.client import Client

async def main(url, n):
    async with Client.from_url(url) as client:
        queue = client.queue("submit-cpu")
        await queue.submit(None)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await queue.submit(None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await client.redis.delete("ap:{submit-cpu}:queued")
    print(json.dumps({"cpu_us": cpu / n * 1e6, "per_second": n / wall}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

BLOCKING_ROUND = """
import json, sys, time
from agentpool.client import SyncClient

def main(url, n):
    with SyncClient.from_url(url) as client:
        queue = client.queue("submit-cpu")
        queue.submit(None)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            queue.submit(None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"cpu_us": cpu / n * 1e6, "per_second": n / wall}))

main(sys.argv[1], int(sys.argv[2]))
"""

CLIENTS = {"Client": ROUND, "SyncClient": BLOCKING_ROUND}


def one(code: Path, program: str, url: str, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    reply = subprocess.run([sys.executable, "-c", program, url, str(n)], env=env, cwd=code,
                           capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(reply.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, default=None)
    deployment = parser.add_mutually_exclusive_group()
    deployment.add_argument("--sentinel", action="store_true")
    deployment.add_argument("--cluster", action="store_true")
    args = parser.parse_args()
    codes = {"this checkout": ROOT}
    if args.before is not None:
        codes = {"before": args.before.resolve(), **codes}
    print(f"{sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}")
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (label, kind): [] for kind in CLIENTS for label in codes}
    servers: RedisServer | SentinelGroup | RedisCluster = (
        SentinelGroup() if args.sentinel else RedisCluster() if args.cluster else RedisServer())
    with servers as server:
        for _ in range(args.rounds):
            for (label, kind), rounds in results.items():
                rounds.append(one(codes[label], CLIENTS[kind], server.url, args.n))
    for (label, kind), rounds in results.items():
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        rate = statistics.median(r["per_second"] for r in rounds)
        print(f"{label}, {kind}: client CPU per submit median {cpu:.0f} µs, {rate:,.0f} "
              f"submits/s ({args.rounds} rounds of {args.n:,}"
              f"{', Sentinel' if args.sentinel else ', Cluster' if args.cluster else ''})")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
