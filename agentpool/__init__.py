"""agentpool: run AI-agent tasks from a Redis queue on Kubernetes."""

from agentpool.protocol import (
    CancelOutcome,
    ClaimedTask,
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
    "FailOutcome",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueFigures",
    "TaskInfo",
    "TaskQueue",
]
__version__ = "0.1.0"
