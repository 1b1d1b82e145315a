"""Shared by the console's tests: the write token and the real workers' environment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKEN = "console-test-token-0123456789"


def worker_env(redis_url: str, queue: str, pod: str) -> dict[str, str]:
    """A real `agentpool-worker` running console_handlers:handle, one attempt per task."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env.update(AGENTPOOL_REDIS_URL=redis_url, AGENTPOOL_QUEUE=queue,
               AGENTPOOL_HANDLER="console_handlers:handle", AGENTPOOL_CONCURRENCY="2",
               AGENTPOOL_POD_NAME=pod, AGENTPOOL_PORT="0", AGENTPOOL_MAX_ATTEMPTS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]))
    return env


async def eventually(check: Callable[[], bool], *, within: float = 20.0) -> None:
    """Wait until `check()` holds (it reads state that no event announces)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.01)
