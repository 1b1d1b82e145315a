"""Garbage collection in a worker under load: how often Python collects each generation and how
long each collection stops the process (a benchmark, not a test).

    .venv/bin/python bench/worker_gc.py [--tasks 10000] [--runs 2] [--before DIR]

One ``agentpool-worker`` (concurrency 100, handler ``bench.peers.drv_agentpool:work``: one
``INCR`` of the task's own, as in the end-to-end peers bench) on a private redis-server; a
producer submits the tasks one at a time while the worker drains them. Inside the worker
process, ``gc.callbacks`` time every collection; those that began between the first submit and
the last completion are reported per generation: count, total and longest pause. With
``--before DIR`` an earlier checkout runs in alternation with this one (its code first on
``PYTHONPATH``, its directory the working directory).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def inside_worker(out: str) -> None:
    """Run ``agentpool_worker.main`` with every collection timed; write them at exit."""
    collections: list[tuple[int, float, float]] = []
    began = [0.0, 0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[:] = [time.time(), time.perf_counter()]
        else:
            collections.append((info["generation"], began[0], time.perf_counter() - began[1]))

    gc.callbacks.append(timed)
    atexit.register(lambda: Path(out).write_text(json.dumps(collections)))
    sys.argv = ["agentpool-worker"]
    runpy.run_module("agentpool_worker.main", run_name="__main__")


def one_run(code: Path, tasks: int) -> dict[str, dict[str, float]]:
    from agentpool.redis_server import RedisServer, free_port
    from bench.peers import common
    from bench.readiness import wait_ready

    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        out, port = Path(tmp) / "gc.json", free_port()
        env = {**os.environ, "PYTHONPATH": f"{code}:{code / 'worker'}",
               "AGENTPOOL_REDIS_URL": server.url, "AGENTPOOL_QUEUE": common.QUEUE,
               "AGENTPOOL_HANDLER": "bench.peers.drv_agentpool:work",
               "AGENTPOOL_PORT": str(port), "AGENTPOOL_POD_NAME": "gc-bench",
               "AGENTPOOL_LOG_LEVEL": "warning", "AGENTPOOL_CONCURRENCY": "100",
               common.URL_ENV: server.url, common.TOTAL_ENV: str(tasks)}
        worker = subprocess.Popen([sys.executable, __file__, "--inside", str(out)], env=env,
                                  cwd=code, stdout=subprocess.DEVNULL)
        try:
            wait_ready(worker, port)
            first, last = asyncio.run(produce(server.url, tasks))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        collections = json.loads(out.read_text())
    figures: dict[str, dict[str, float]] = {"drain": {"seconds": last - first}}
    for generation in (0, 1, 2):
        pauses = [p for g, at, p in collections if g == generation and first <= at <= last]
        figures[f"gen{generation}"] = {
            "count": len(pauses), "total_ms": sum(pauses) * 1e3,
            "longest_ms": max(pauses, default=0.0) * 1e3,
        }
    return figures


async def produce(url: str, tasks: int) -> tuple[float, float]:
    """Submit one at a time; the task that completes the count stamps the end (END_KEY)."""
    from agentpool.client import Client
    from bench.peers import common

    async with Client.from_url(url) as client:
        queue = client.queue(common.QUEUE)
        first = time.time()
        for _ in range(tasks):
            await queue.submit(None)
        _, end = await client.redis.blpop([common.END_KEY], timeout=600)
    return first, float(end)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--inside":
        sys.path[0] = os.getcwd()  # as `python -m agentpool_worker.main` run in the checkout
        inside_worker(sys.argv[2])
        return
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None)
    args = parser.parse_args()
    checkouts = [("before", args.before.resolve())] if args.before else []
    checkouts.append(("this checkout", ROOT))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.tasks:,} tasks per run")
    for run in range(1, args.runs + 1):
        for name, code in checkouts:
            f = one_run(code, args.tasks)
            rows = "; ".join(
                f"gen{g} {f[f'gen{g}']['count']:.0f}× {f[f'gen{g}']['total_ms']:.0f} ms "
                f"(longest {f[f'gen{g}']['longest_ms']:.1f} ms)" for g in (0, 1, 2))
            print(f"run {run}, {name}: drain {f['drain']['seconds']:.2f} s; {rows}", flush=True)


if __name__ == "__main__":
    main()
