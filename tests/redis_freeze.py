"""Freezing a redis-server for a test, as a frozen node would be (shared by the test folders:
``tests/`` is on their import path, as for merge_patch)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from agentpool.redis_server import RedisServer


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """`server` stops answering until the block ends (SIGSTOP, as a frozen node would)."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)
