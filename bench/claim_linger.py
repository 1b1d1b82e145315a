"""What the worker's claim linger costs and saves under paced streams of single submits (a
benchmark, not a test).

    .venv/bin/python -m bench.claim_linger [--rates 100,500,2000] [--lingers 0,0.002]
                                           [--rounds 3] [--tasks 4000]

One ``agentpool-worker`` of concurrency 100 (handler ``bench.peers.drv_agentpool:stamp``, which
records each task's submit → start time) on a private redis-server; one producer submits the
tasks at the given rate, one at a time. For every rate, the lingers alternate within each
round (``AGENTPOOL_CLAIM_LINGER_SECONDS``, so 0 is the worker without it). Reported per run:
the rate reached, p50 and p99 submit → start, and the script calls Redis ran per task
(``INFO commandstats``: a submit, the claims, the completions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agentpool.redis_server import RedisServer
from bench.peers import common, run


def measure(env: run.Env, tasks: int, rate: float) -> tuple[float, float, float, float]:
    """(rate reached, p50 ms, p99 ms, script calls per task) of one run."""
    config = run.CONFIGS[0]
    with env.client(0) as r:
        r.flushdb()
        with run.workers(env, config, "latency", "throughput", 1, 0, "linger") as started:
            run.wait_ready(env, config.system, 0, started)
            time.sleep(0.5)
            r.config_resetstat()
            began = time.monotonic()
            run.drive(env, config.system, 0, "latency", n=tasks, interval=1 / rate)
            reached = tasks / (time.monotonic() - began)
            deadline = time.monotonic() + 30
            while r.llen(common.LATENCY_KEY) < tasks and time.monotonic() < deadline:
                time.sleep(0.05)
            samples = sorted(float(x) * 1000 for x in r.lrange(common.LATENCY_KEY, 0, -1))
            stats = r.info("commandstats")
    scripts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return reached, statistics.median(samples), cuts[98], scripts / tasks


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claim_linger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,500,2000", help="tasks/s the producer paces")
    parser.add_argument("--lingers", default="0,0.002", help="AGENTPOOL_CLAIM_LINGER_SECONDS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per run")
    args = parser.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    lingers = args.lingers.split(",")
    results: dict[tuple[float, str], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as logs, RedisServer() as server:
        env = run.Env(server, {"agentpool": Path(sys.executable)}, Path(logs))
        for round_no in range(1, args.rounds + 1):
            for rate in rates:
                for linger in lingers:
                    os.environ["AGENTPOOL_CLAIM_LINGER_SECONDS"] = linger
                    figures = measure(env, args.tasks, rate)
                    results.setdefault((rate, linger), []).append(figures)
                    print(f"round {round_no}, {rate:g} tasks/s, linger {linger}: reached "
                          f"{figures[0]:,.0f}/s, p50 {figures[1]:.2f} ms, p99 {figures[2]:.2f} "
                          f"ms, {figures[3]:.2f} script calls per task", flush=True)
    print("\n| stream (tasks/s asked, reached) | linger (s) | p50 submit → start (ms) "
          "| p99 (ms) | script calls per task |\n|---|---|---:|---:|---:|")
    for (rate, linger), runs in results.items():
        reached, p50, p99, scripts = (span([r[i] for r in runs]) for i in range(4))
        print(f"| {rate:g}, {reached} | {linger} | {p50} | {p99} | {scripts} |")


def span(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


if __name__ == "__main__":
    main()
