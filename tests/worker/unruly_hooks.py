"""Sync hooks that hang, are slow or call sys.exit(), for the worker hook tests. In a worker
subprocess, UNRULY_HOOKS (comma-separated) says which misbehave: ``hang-shutdown``,
``exit`` (sys.exit in ready's first check, every after_task and shutdown); ``short-grace``
gives the shutdown hook 2 s past the drain rather than the pod's 14 s."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from agentpool_worker.handlers import TaskContext, TaskOutcome, WorkerContext

MODES = set(filter(None, os.environ.get("UNRULY_HOOKS", "").split(",")))
if "short-grace" in MODES:
    from agentpool_worker import worker

    worker.SHUTDOWN_GRACE_SECONDS = 2.0
STATE: dict[str, Any] = {"startup_seconds": 0.0, "ready_hangs": False, "ready_checks": 0,
                         "after_task_gated": False, "after_task_hang_first": 0,
                         "after_task_done": [], "startup_began": False}
GATE = threading.Event()
"""Opens what the hooks wait for (a hung ready check, gated after_task hooks)."""
LOCK = threading.Lock()
RUNNING = {"ready": 0, "ready_peak": 0, "after_task": 0, "after_task_peak": 0}


def _enter(hook: str) -> None:
    with LOCK:
        RUNNING[hook] += 1
        RUNNING[f"{hook}_peak"] = max(RUNNING[f"{hook}_peak"], RUNNING[hook])


def _leave(hook: str) -> None:
    with LOCK:
        RUNNING[hook] -= 1


def startup(worker_ctx: WorkerContext) -> None:
    STATE["startup_began"] = True
    time.sleep(STATE["startup_seconds"])  # loading a model


def shutdown(worker_ctx: WorkerContext) -> None:
    if "hang-shutdown" in MODES:
        time.sleep(3600)  # a close that blocks
    if "exit" in MODES:
        sys.exit("the client library gave up")


async def run(payload: Any, ctx: TaskContext) -> str:
    return "done"


def after_task(ctx: TaskContext, outcome: TaskOutcome) -> None:
    if "exit" in MODES:
        sys.exit("billing client gave up")
    with LOCK:
        hangs = STATE["after_task_hang_first"] > 0
        STATE["after_task_hang_first"] -= hangs
    if hangs:
        GATE.wait(20)  # a billing call without a timeout to a service that never answers
        return
    STATE["after_task_done"].append(ctx.task_id)
    if STATE["after_task_gated"]:
        _enter("after_task")
        try:
            GATE.wait(20)  # a billing call
        finally:
            _leave("after_task")


def ready() -> None:
    STATE["ready_checks"] += 1
    if "exit" in MODES and STATE["ready_checks"] == 1:
        raise KeyboardInterrupt
    _enter("ready")
    try:
        if STATE["ready_hangs"]:
            GATE.wait(60)  # a call to an API that accepts and never answers
    finally:
        _leave("ready")
