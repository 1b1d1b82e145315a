"""The handler the worker metrics tests run: the payload says how the run ends."""

from __future__ import annotations

import asyncio
from typing import Any

from agentpool.errors import PermanentError
from agentpool_worker.handlers import TaskContext


async def scenario(payload: dict[str, Any], ctx: TaskContext) -> Any:
    kind = payload["kind"]
    await asyncio.sleep(float(payload.get("seconds", 0)))
    if kind == "flaky" and ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    if kind == "broken":
        raise RuntimeError("every attempt fails")
    if kind == "refused":
        raise PermanentError("this task can never succeed")
    return {"kind": kind, "attempt": ctx.attempt}
