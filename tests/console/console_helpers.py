"""Shared by the console's tests: the write token and the real workers' environment."""

from __future__ import annotations

import os
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
