"""Dramatiq with its Redis broker. Worker: ``dramatiq bench.peers.drv_dramatiq --processes 1
--threads T --queues bench`` (Dramatiq's CLI forks the worker processes from a supervisor);
T is 32 in the high-throughput configuration (``run.DRAMATIQ_THREADS``) and Dramatiq's
default 8 otherwise.

Profiles:
- ``throughput`` / ``default``: Dramatiq's defaults but for the threads (prefetch 2 per
  thread, default middleware).
- ``reliable``: the Redis broker's recovery knobs: a broker process whose heartbeat is older
  than ``heartbeat_timeout`` (default 60 s; here 15 s) is dead, and its unacknowledged
  messages go back on the queue at the next maintenance run, which each broker command
  triggers with probability ``maintenance_chance`` per million (default 1,000; here 100,000).
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from bench.peers import common

PROFILE = common.env_profile()


class _Ready(Middleware):
    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        common.record_ready()


_options: dict[str, Any] = {}
if PROFILE == "reliable":
    _options = {"heartbeat_timeout": 15_000, "maintenance_chance": 100_000}
broker = RedisBroker(url=common.env_url(), **_options)  # type: ignore[no-untyped-call]
broker.add_middleware(_Ready())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=common.QUEUE)
def noop() -> None:
    return None


@dramatiq.actor(queue_name=common.QUEUE)
def work() -> None:
    common.record_work()


@dramatiq.actor(queue_name=common.QUEUE)
def stamp(sent: float) -> None:
    common.record_latency(sent)


@dramatiq.actor(queue_name=common.QUEUE)
def long_task(seconds: float) -> None:
    common.record_start()
    time.sleep(seconds)


def main() -> None:
    common.produce_one_at_a_time(noop.send, stamp.send, long_task.send, work.send)


if __name__ == "__main__":
    main()
