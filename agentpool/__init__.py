"""agentpool: run AI-agent tasks from a Redis queue on Kubernetes."""

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
    TaskQueue,
)

__all__ = [
    "CancelOutcome",
    "ClaimedTask",
    "DeadRequeued",
    "Durability",
    "FailOutcome",
    "NotReplicated",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueFigures",
    "TaskInfo",
    "TaskQueue",
]
__version__ = "0.1.0"
