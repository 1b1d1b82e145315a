"""Handlers that use the pool's rate limits (in-process workers and worker subprocesses)."""

from __future__ import annotations

import os
from typing import Any

from agentpool_worker.handlers import TaskContext


async def limited(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    granted = await ctx.limit(payload["limit"], tokens=int(payload.get("tokens", 0)))
    return {"grant": granted.grant_us, "wait": granted.wait, "pid": os.getpid()}


def limited_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    granted = ctx.limit_sync(payload["limit"], tokens=int(payload.get("tokens", 0)))
    return {"grant": granted.grant_us, "wait": granted.wait, "pid": os.getpid()}


async def throttled(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    throttle = await ctx.throttled(payload["limit"], retry_after=float(payload["retryAfter"]))
    return {"pause": throttle.pause, "factor": throttle.factor}
