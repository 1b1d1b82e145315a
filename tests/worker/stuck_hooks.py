"""A handler module whose sync ``ready`` check can hang and whose runs wait for a gate, for the
tests of a worker stuck for good (test_worker_stuck_restart.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from agentpool_worker.handlers import TaskContext

STATE: dict[str, Any] = {"ready_hangs": False, "runs": 0, "run_gate": asyncio.Event()}
"""``run_gate`` lets the runs end: a new one for each test (an asyncio.Event belongs to the
loop it is first awaited in)."""
READY_GATE = threading.Event()
"""Lets a hung ready check return."""


async def run(payload: Any, ctx: TaskContext) -> str:
    """An agent's run: goes on until the gate opens."""
    STATE["runs"] += 1
    await STATE["run_gate"].wait()
    return "done"


def ready() -> None:
    if STATE["ready_hangs"]:
        READY_GATE.wait(60)  # a call to an API that accepts and never answers
