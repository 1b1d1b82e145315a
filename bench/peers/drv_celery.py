# Celery ships no type information: its decorators and signals are untyped.
# mypy: disable-error-code="import-untyped,untyped-decorator"
"""Celery with its Redis broker (kombu). Worker: ``celery -A bench.peers.drv_celery worker``.

Profiles:
- ``throughput``: no result backend (Celery's default), prefetch multiplier 64 (Celery's
  advice for many short tasks), pool and concurrency chosen on the worker's command line.
- ``default``: Celery's defaults: early acknowledgement (a message is acknowledged when the
  worker receives it, before the task runs).
- ``reliable``: ``task_acks_late`` with ``task_reject_on_worker_lost``, so a task is
  acknowledged only after it ran, plus a 60 s ``visibility_timeout`` (it must exceed the
  longest task, or running tasks are delivered twice; the default is one hour) and
  ``unacked_restore_throttle=1`` so the restore sweep runs every ``unacked_restore_interval``
  (10 s) instead of every tenth one.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from bench.peers import common

PROFILE = common.env_profile()

app = Celery("bench", broker=common.env_url())
app.conf.update(
    task_default_queue=common.QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if PROFILE == "throughput":
    app.conf.update(worker_prefetch_multiplier=64)
elif PROFILE == "reliable":
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": 60, "unacked_restore_throttle": 1},
    )


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="work")
def work() -> None:
    common.record_work()


@app.task(name="stamp")
def stamp(sent: float) -> None:
    common.record_latency(sent)


@app.task(name="long")
def long_task(seconds: float) -> None:
    common.record_start()
    time.sleep(seconds)


@worker_ready.connect
def _ready(**_: Any) -> None:
    common.record_ready()


def main() -> None:
    common.produce_one_at_a_time(noop.delay, stamp.delay, long_task.delay, work.delay)


if __name__ == "__main__":
    main()
