"""A handler whose runs last until stopped and whose sync ``shutdown`` hook hangs, for the
test of the hook's deadline (test_shutdown_hook_deadline.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from agentpool_worker.handlers import TaskContext, WorkerContext

GATE = threading.Event()
"""Lets the hung shutdown hook's thread return at the end of a test."""
STATE: dict[str, Any] = {"shutdown_began": None}


async def run(payload: Any, ctx: TaskContext) -> str:
    await asyncio.sleep(3600)  # an agent's run that the drain's end stops
    return "done"


def shutdown(worker_ctx: WorkerContext) -> None:
    STATE["shutdown_began"] = True
    GATE.wait(60)  # a client's close that blocks
