"""Durability of a queue's writes across a failover.

Redis replicates asynchronously: a write the primary acknowledged but had not yet sent to a
replica is gone once that replica is promoted. With ``replicated`` durability, submits and
completions are followed, on the same connection and in the same round trip, by an INCR of
the queue's ``durable`` key (durable.lua, which runs when Redis is full, as the completions it
follows do) and ``WAIT 1 <timeout>``: the call returns only once one replica
has everything the primary had written until then, so a failover that promotes that replica
loses nothing the caller was told about.

When no replica acknowledges within the timeout, the write stays done on the primary and the
call raises :class:`NotReplicated` carrying what it would have returned (the task ids of a
submit, the per-task verdicts of a completion): the caller learns that this write is on one
server only, and would be lost if that server failed before a replica caught up.
"""

from __future__ import annotations

import enum
from typing import Any

DEFAULT_REPLICA_TIMEOUT = 1.0
"""Seconds a replicated write waits for a replica's acknowledgement (on one host a replica
answers within a millisecond; the margin covers a busy replica)."""


class Durability(enum.StrEnum):
    NONE = "none"
    """Acknowledged by the primary (asynchronous replication)."""
    REPLICATED = "replicated"
    """Acknowledged by the primary and at least one replica."""


class NotReplicated(Exception):
    """No replica acknowledged a replicated write in time; the write is on the primary.

    ``result`` is what the call would have returned. Submitting the same task again with
    the same idempotency key is harmless and waits for a replica once more."""

    def __init__(self, what: str, result: Any, timeout: float) -> None:
        super().__init__(f"{what} not acknowledged by a replica within {timeout:g}s; it is "
                         "on the primary only until a replica catches up")
        self.result = result


def parse_durability(value: str | Durability) -> Durability:
    try:
        return Durability(str(value).lower())
    except ValueError:
        raise ValueError(f"durability must be one of {', '.join(d.value for d in Durability)}, "
                         f"got {value!r}") from None


def wait_command(timeout: float) -> tuple[str, int, int]:
    """The command to queue behind a replicated write on its own connection."""
    return ("WAIT", 1, max(1, int(timeout * 1000)))
