"""Handlers whose errors quote URLs with credentials (tests/worker/test_worker_masking.py)."""

from __future__ import annotations

from typing import Any

from agentpool.errors import Retry
from agentpool_worker.handlers import TaskContext

REDIS_PASSWORD = "TopSecret99"
TOKEN = "ghp_0123456789abcdefSECRET"


async def cannot_connect(payload: Any) -> None:
    raise ConnectionError(
        f"could not connect to redis://admin:{REDIS_PASSWORD}@db.internal:6379/0")


async def retries_with_a_token(payload: Any, ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        raise Retry(0.05, f"rate limited by https://x-access-token:{TOKEN}@api.github.com/x")
    return "done"
