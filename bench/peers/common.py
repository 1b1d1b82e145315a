"""What every driver shares. Runs inside each peer's environment: stdlib and redis-py only.

A driver is run as ``python -m bench.peers.drv_<system> <command> '<json options>'`` with the
Redis URL in ``BENCH_REDIS_URL`` and the configuration profile (``throughput``, ``default`` or
``reliable``) in ``BENCH_PROFILE`` — both read at import, because a system's app object is
configured when its module loads. It prints one JSON object on its last line. The commands:

- ``enqueue {n, mode}``: submit ``n`` no-op tasks one at a time (``single``) or with the
  system's batch API (``batch``); reply ``{n, seconds}``.
- ``fill {n}``: queue ``n`` no-op tasks the fastest way the system offers.
- ``latency {n, interval}``: submit ``n`` stamp tasks, one every ``interval`` seconds on
  a fixed schedule; each carries its submit time and records its start delay (``LATENCY_KEY``).
- ``long {seconds}``: submit one task that records its start (``STARTS_KEY``)
  and then sleeps ``seconds``.
- ``e2e {n, mode}``: submit ``n`` work tasks (each does one Redis write of its own:
  ``record_work``), one call at a time or with the batch API, while the workers drain them;
  reply ``{n, seconds, first, cpu}``: the wall-clock time of the first submit and the CPU
  seconds the producer spent submitting. ``fill_work {n}`` queues them the fastest way.

Workers also record their own readiness (``READY_KEY``) so that the orchestrator starts a
measurement only once every worker process is up.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

QUEUE = "bench"
LATENCY_KEY = "bench:latency"
STARTS_KEY = "bench:starts"
READY_KEY = "bench:ready"
WORK_KEY = "bench:done"
END_KEY = "bench:end"
TOTAL_ENV = "BENCH_TOTAL"
URL_ENV = "BENCH_REDIS_URL"
PROFILE_ENV = "BENCH_PROFILE"
BATCH_CHUNK = 500
"""Tasks per batch call, for every system with a batch API (agentpool's submit_many default)."""

_client: redis.Redis | None = None


def env_url() -> str:
    return os.environ[URL_ENV]


def env_profile() -> str:
    return os.environ.get(PROFILE_ENV, "throughput")


def recorder() -> redis.Redis:
    """A client of its own for the bench's records, apart from the system's broker client."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(env_url())
    return _client


def record_latency(sent: float) -> None:
    started = time.time()
    recorder().rpush(LATENCY_KEY, started - sent)


def record_start() -> None:
    recorder().rpush(STARTS_KEY, json.dumps({"pid": os.getpid(), "t": time.time()}))


def record_ready() -> None:
    recorder().incr(READY_KEY)


def total() -> int:
    return int(os.environ.get(TOTAL_ENV, "0"))


def record_work() -> None:
    """A work task's own Redis write; the last one also stamps the end of the run."""
    if recorder().incr(WORK_KEY) == total():
        recorder().rpush(END_KEY, time.time())


def timed_e2e(n: int, submit: Callable[[], Any]) -> dict[str, float]:
    """Time a producer run: wall-clock start, duration and the CPU it spent."""
    first = time.time()
    cpu = time.process_time()
    start = time.perf_counter()
    submit()
    return {"n": n, "seconds": time.perf_counter() - start, "first": first,
            "cpu": time.process_time() - cpu}


def timed(n: int, submit: Callable[[], Any]) -> dict[str, float]:
    start = time.perf_counter()
    submit()
    return {"n": n, "seconds": time.perf_counter() - start}


PRODUCERS = 64
"""Producers at once in the ``concurrent`` enqueue mode: a web server's handlers, each
submitting one task (threads for a blocking client, coroutines for an asyncio one)."""


def _shares(n: int) -> list[int]:
    return [n // PRODUCERS + (1 if i < n % PRODUCERS else 0) for i in range(PRODUCERS)]


def in_threads(n: int, send: Callable[[], Any]) -> Callable[[], None]:
    """n calls of ``send`` spread over PRODUCERS threads (a threaded web server's way)."""

    def one_producer(count: int) -> None:
        for _ in range(count):
            send()

    def run() -> None:
        with ThreadPoolExecutor(PRODUCERS) as pool:
            list(pool.map(one_producer, _shares(n)))

    return run


async def in_coroutines(n: int, send: Callable[[], Awaitable[Any]]) -> None:
    """n awaits of ``send()`` spread over PRODUCERS coroutines (an asyncio web server's way)."""

    async def one_producer(count: int) -> None:
        for _ in range(count):
            await send()

    await asyncio.gather(*(one_producer(count) for count in _shares(n)))


def paced(n: int, interval: float, send: Callable[[float], Any]) -> None:
    """Call ``send(now)`` n times on a fixed schedule (no drift from slow sends)."""
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(time.time())


def chunks(n: int, size: int = BATCH_CHUNK) -> list[int]:
    return [min(size, n - start) for start in range(0, n, size)]


def reply(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def command_line() -> tuple[str, dict[str, Any]]:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.peers.drv_<system> COMMAND 'JSON'")
    options: dict[str, Any] = json.loads(sys.argv[2])
    return sys.argv[1], options


def produce_one_at_a_time(
    noop: Callable[[], Any],
    stamp: Callable[[float], Any],
    long: Callable[[float], Any],
    work: Callable[[], Any] | None = None,
) -> None:
    """The producer side for a system with no batch enqueue, from its three submit calls.

    Reads the command line and replies; ``enqueue``/``fill`` submit ``noop()`` n times,
    ``latency`` submits ``stamp(sent)`` on a schedule, ``long`` submits ``long(seconds)``.
    """
    command, options = command_line()
    n = int(options.get("n", 0))
    if command in ("e2e", "fill_work") and work is not None:
        if options.get("mode") == "batch":
            reply({"unsupported": True})
            return

        def send_work() -> None:
            for _ in range(n):
                work()

        concurrent = options.get("mode") == "concurrent"
        reply(timed_e2e(n, in_threads(n, work) if concurrent else send_work))
    elif command in ("enqueue", "fill"):
        if options.get("mode") == "batch":
            reply({"unsupported": True})
            return

        def send() -> None:
            for _ in range(n):
                noop()

        concurrent = options.get("mode") == "concurrent"
        reply(timed(n, in_threads(n, noop) if concurrent else send))
    elif command == "latency":
        paced(n, float(options["interval"]), stamp)
        reply({})
    elif command == "long":
        long(float(options["seconds"]))
        reply({})
    else:
        raise SystemExit(f"unknown command {command!r}")
