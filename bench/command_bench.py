"""What a task run as a program (``spec.worker.taskCommand``) costs next to a Python handler
(a benchmark, not a test).

    .venv/bin/python bench/command_bench.py [--tasks 1000] [--concurrency 8] [--rounds 2]

For each case, one ``agentpool-worker`` on a private redis-server: once it is ready, N tasks
(``{"prompt": "..."}``) are submitted in one batch and the clock runs until the queue's
``succeeded`` counter reaches N (read every 20 ms). The cases: the built-in Python handler
``echo``; then, through ``agentpool_worker.command``, ``cat`` (the smallest program: its
output, the payload, is the result), a ``sh`` script that reads the payload and prints a
result line, and Python (this interpreter, ``-S``) doing the same. Reported per case
(medians of the rounds): tasks per second, the worker process's CPU per task, and the
programs' CPU per task (the worker's reaped children, from ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentpool.redis_server import RedisServer, free_port  # noqa: E402
from bench.readiness import wait_ready  # noqa: E402

QUEUE = "command-bench"
PYTHON_AGENT = ("import json, sys\n"
                "payload = json.load(sys.stdin)\n"
                "print(json.dumps({'result': {'answer': len(payload['prompt'])}}))\n")
CASES: dict[str, dict[str, str]] = {
    "Python handler (echo)": {"AGENTPOOL_HANDLER": "agentpool_worker.builtin:echo"},
    "program: cat": {"AGENTPOOL_TASK_COMMAND": json.dumps(["cat"])},
    "program: sh script": {"AGENTPOOL_TASK_COMMAND": json.dumps(
        ["sh", "-c", 'read -r payload; echo "{\\"result\\": ${#payload}}"'])},
    "program: python -c": {"AGENTPOOL_TASK_COMMAND": json.dumps(
        [sys.executable, "-S", "-c", PYTHON_AGENT])},
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU, its reaped children's), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    children = (int(fields[13]) + int(fields[14])) / TICKS
    return own, children


def one_run(case: dict[str, str], tasks: int, concurrency: int) -> dict[str, float]:
    with RedisServer() as server:
        port = free_port()
        env = {**os.environ, "AGENTPOOL_REDIS_URL": server.url, "AGENTPOOL_QUEUE": QUEUE,
               "AGENTPOOL_HANDLER": "agentpool_worker.command:run",
               "AGENTPOOL_PORT": str(port), "AGENTPOOL_POD_NAME": "command-bench",
               "AGENTPOOL_LOG_LEVEL": "warning", "AGENTPOOL_CONCURRENCY": str(concurrency),
               **case}
        worker = subprocess.Popen([sys.executable, "-m", "agentpool_worker.main"], env=env,
                                  stdout=subprocess.DEVNULL)
        try:
            wait_ready(worker, port)
            before = cpu_seconds(worker.pid)
            seconds = asyncio.run(drain(server.url, tasks))
            after = cpu_seconds(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    return {"per_second": tasks / seconds,
            "worker_us": (after[0] - before[0]) / tasks * 1e6,
            "programs_ms": (after[1] - before[1]) / tasks * 1e3}


async def drain(url: str, tasks: int) -> float:
    from agentpool.client import Client

    async with Client.from_url(url) as client:
        queue = client.queue(QUEUE)
        began = time.perf_counter()
        await queue.submit_many([{"prompt": f"task {i} " + "x" * 200} for i in range(tasks)])
        while True:
            figures = await queue.figures()
            if figures.stats.get("succeeded", 0) >= tasks:
                return time.perf_counter() - began
            await asyncio.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; {args.tasks:,} tasks per run, "
          f"concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, case in CASES.items():
            samples[name].append(one_run(case, args.tasks, args.concurrency))
    print("| case | tasks/s | worker CPU per task | programs' CPU per task |")
    print("|---|---:|---:|---:|")
    for name, runs in samples.items():
        rate, worker, programs = (statistics.median(r[key] for r in runs)
                                  for key in ("per_second", "worker_us", "programs_ms"))
        print(f"| {name} | {rate:,.0f} | {worker:,.0f} µs | {programs:.2f} ms |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
