"""A handler whose sync ``after_task`` hook hangs and whose ``shutdown`` hook notes when it
began and hangs until its time runs out, for the test of the exit's wait for after_task
hooks still running (test_shutdown_hook_deadline.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from agentpool_worker.handlers import TaskContext, TaskOutcome, WorkerContext

GATE = threading.Event()
"""Lets the hung after_task hook's thread return at the end of a test."""
STATE: dict[str, Any] = {"after_task_began": False, "shutdown_began": None}


async def run(payload: Any, ctx: TaskContext) -> str:
    return "done"


def after_task(ctx: TaskContext, outcome: TaskOutcome) -> None:
    STATE["after_task_began"] = True
    GATE.wait(60)  # a billing call to a service that never answers


async def shutdown(worker_ctx: WorkerContext) -> None:
    STATE["shutdown_began"] = time.monotonic()
    await asyncio.sleep(3600)  # a client's close that hangs: cut at the hook's deadline
