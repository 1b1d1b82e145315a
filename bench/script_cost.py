"""Redis's own time per call of the submit script, as Redis runs it and with the whole shared
prelude prepended (as before each script carried only what it uses), against a script that
only returns and a plain ``INCR``.

    .venv/bin/python bench/script_cost.py [--calls 20000] [--rounds 5]

One blocking client makes sequential calls on a private ``redis-server``; Redis's time per
call is read from ``INFO commandstats`` (a script's line includes its inner commands) and
its CPU per call from ``/proc``. Medians over the rounds; the variants alternate each round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from importlib import resources
from pathlib import Path

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentpool.lua_source import script_source
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer

LUA = resources.files("agentpool") / "lua"
VARIANTS: dict[str, str | None] = {
    "submit, as Redis runs it": script_source("submit"),
    "submit with the whole prelude": (LUA / "common.lua").read_text() + "\n"
    + (LUA / "submit.lua").read_text(),
    "a script that only returns": "return {1, ARGV[2]}",
    "INCR": None,
}


QUEUE = TaskQueue(aioredis.Redis(), "bench")
"""Only for the submit script's arguments: it never connects."""


def submit_args() -> list[object]:
    """One plain submit's arguments (a null payload), as the client builds them."""
    return QUEUE._submit_args(None, 0, 0, None, None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(client: redis.Redis, pid: int, source: str | None, calls: int) -> tuple[float, float]:
    client.flushdb()
    client.config_resetstat()
    sha = client.script_load(source) if source else None
    before = cpu_seconds(pid)
    for _ in range(calls):
        if sha:
            client.evalsha(sha, 1, QUEUE.prefix + "queued", QUEUE.prefix, *submit_args())
        else:
            client.execute_command("INCR", "counter")
    used = cpu_seconds(pid) - before
    stats = client.info("commandstats")
    line = stats["cmdstat_evalsha" if sha else "cmdstat_incr"]
    return float(line["usec_per_call"]), used / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        pid = int(client.info("server")["process_id"])
        names = list(VARIANTS)
        for i in range(args.rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                results[name].append(one(client, pid, VARIANTS[name], args.calls))
        client.close()
    print("| call | Redis time per call (commandstats) | redis-server CPU per call (/proc) |")
    print("|---|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.1f} µs "
              f"| {statistics.median(r[1] for r in rows):.0f} µs |")


if __name__ == "__main__":
    main()
