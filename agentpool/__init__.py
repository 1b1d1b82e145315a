"""agentpool: run AI-agent tasks from a Redis queue on Kubernetes.

The names below are imported on first use (PEP 562), so that `import agentpool.<module>`
(the CLI's entry point, whose Ctrl-C guard starts once it runs) does not load the protocol and
redis-py first."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentpool.client import Client, ClientClosed, SyncClient
    from agentpool.durability import Durability, NotReplicated
    from agentpool.protocol import (
        CancelOutcome,
        ClaimedTask,
        DeadRequeued,
        FailOutcome,
        PayloadTooLarge,
        ProtocolError,
        QueueFigures,
        TaskInfo,
        TaskNotFound,
        TaskQueue,
    )
    from agentpool.redis_errors import RedisFull

_HOMES = {
    **dict.fromkeys(("Client", "ClientClosed", "SyncClient"), "agentpool.client"),
    "Durability": "agentpool.durability",
    "NotReplicated": "agentpool.durability",
    **dict.fromkeys(("CancelOutcome", "ClaimedTask", "DeadRequeued", "FailOutcome",
                     "PayloadTooLarge", "ProtocolError", "QueueFigures", "TaskInfo",
                     "TaskNotFound", "TaskQueue"), "agentpool.protocol"),
    "RedisFull": "agentpool.redis_errors",
}

_SUBMODULES = frozenset({"protocol", "durability"})
"""Reached as attributes before (the package imported them): `agentpool.protocol.X`."""

__all__ = [
    "CancelOutcome",
    "ClaimedTask",
    "Client",
    "ClientClosed",
    "DeadRequeued",
    "Durability",
    "FailOutcome",
    "NotReplicated",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueFigures",
    "RedisFull",
    "SyncClient",
    "TaskInfo",
    "TaskNotFound",
    "TaskQueue",
]
__version__ = "0.1.0"


if not TYPE_CHECKING:  # a type checker sees the imports above, and a misspelt name fails

    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES:
            return importlib.import_module(f"agentpool.{name}")
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'agentpool' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_HOMES})
