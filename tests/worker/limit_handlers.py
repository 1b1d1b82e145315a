"""Handlers that use the pool's rate limits (in-process workers and worker subprocesses)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from agentpool.connection import redis_from_url, sync_redis_from_url
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


async def held(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Counts, in Redis, the runs inside the block at once (the count it saw on entering)."""
    async with ctx.hold(payload["limit"]):
        client = redis_from_url(payload["redis"])
        try:
            inside = await client.incr(payload["counter"])
            await asyncio.sleep(payload.get("seconds", 0.05))
            await client.decr(payload["counter"])
        finally:
            await client.aclose()
    return {"inside": inside, "pid": os.getpid()}


def held_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    with ctx.hold_sync(payload["limit"]):
        client = sync_redis_from_url(payload["redis"])
        try:
            inside = client.incr(payload["counter"])
            time.sleep(payload.get("seconds", 0.05))
            client.decr(payload["counter"])
        finally:
            client.close()
    return {"inside": inside, "pid": os.getpid()}
