"""RQ. Worker: ``rq worker --url URL bench`` (the forking ``Worker``, RQ's default) or with
``--worker-class rq.SimpleWorker`` (runs jobs in the worker process itself).

Profiles:
- ``throughput`` / ``default``: RQ's defaults (no retry; results kept 500 s).
- ``reliable``: jobs carry ``Retry(max=3)``, so an abandoned job (its worker died) is put
  back on the queue by the maintenance run instead of moved to the FailedJobRegistry; the
  worker runs maintenance every 10 s (``--maintenance-interval``, default 600 s), heart-beats
  a running job every 5 s (``--job-monitoring-interval``, default 30 s) and has a 25 s
  ``--worker-ttl`` (default 420 s): an idle worker blocks on the queue for the TTL less 15 s
  and runs maintenance only between two waits. The started-job registry entry of a job
  outlives its last heartbeat by 60 s (fixed in RQ).
"""

from __future__ import annotations

import time

import redis
from rq import Queue, Retry

from bench.peers import common

NOOP = "bench.peers.drv_rq.noop"
WORK = "bench.peers.drv_rq.work"


def noop() -> None:
    return None


def work() -> None:
    common.record_work()


def stamp(sent: float) -> None:
    common.record_latency(sent)


def long_task(seconds: float) -> None:
    common.record_start()
    time.sleep(seconds)


def main() -> None:
    command, options = common.command_line()
    n = int(options.get("n", 0))
    queue = Queue(common.QUEUE, connection=redis.Redis.from_url(common.env_url()))
    if command in ("e2e", "fill_work"):
        if options.get("mode") == "batch":
            common.reply({"unsupported": True})
            return

        def submit_work() -> None:
            for _ in range(n):
                queue.enqueue(WORK)

        concurrent = options.get("mode") == "concurrent"
        common.reply(common.timed_e2e(n, common.in_threads(n, lambda: queue.enqueue(WORK))
                                      if concurrent else submit_work))
    elif command in ("enqueue", "fill"):
        if options.get("mode") == "batch" or command == "fill":

            def send() -> None:
                for size in common.chunks(n):
                    queue.enqueue_many([Queue.prepare_data(NOOP) for _ in range(size)])

        elif options.get("mode") == "concurrent":
            send = common.in_threads(n, lambda: queue.enqueue(NOOP))
        else:

            def send() -> None:
                for _ in range(n):
                    queue.enqueue(NOOP)

        common.reply(common.timed(n, send))
    elif command == "latency":
        common.paced(n, float(options["interval"]),
                     lambda now: queue.enqueue("bench.peers.drv_rq.stamp", now))
        common.reply({})
    elif command == "long":
        retry = Retry(max=3) if common.env_profile() == "reliable" else None
        queue.enqueue("bench.peers.drv_rq.long_task", float(options["seconds"]), retry=retry)
        common.reply({})
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
