"""A pool's health in one word, from its conditions: `status.health` (the Health column of
`kubectl get agentpools`), written by the operator, and the HEALTH of `agentpool status` and of
the console, which read it from the conditions so that a status written by an older operator
reads the same."""

from __future__ import annotations

from collections.abc import Sequence

from agentpool.models import Condition

_BAD_WHEN = (("Degraded", "True", "Degraded"), ("QueueReachable", "False", "QueueUnreachable"),
             ("Ready", "False", "NotReady"), ("Ready", "Unknown", "NotReady"))
"""A condition in such a state gives the pool's health word, the first one found winning."""


def _deciding(conditions: Sequence[Condition]) -> tuple[str, Condition | None]:
    """The pool's health word and the condition that made it a problem (None if none did)."""
    by_type = {c.type: c for c in conditions}
    for kind, status, word in _BAD_WHEN:
        condition = by_type.get(kind)
        if condition is not None and condition.status == status:
            return word, condition
    return ("Ready" if "Ready" in by_type else "Pending"), None


def pool_health(conditions: Sequence[Condition], paused: bool) -> str:
    """One word for a pool's state, from its conditions (Degraded outranks Ready)."""
    return "Paused" if paused else _deciding(conditions)[0]


def pool_problem(conditions: Sequence[Condition], paused: bool) -> str | None:
    """"Reason: message" of the condition behind a health other than Ready, Paused or
    Pending."""
    condition = None if paused else _deciding(conditions)[1]
    if condition is None:
        return None
    return f"{condition.reason or condition.type}: {condition.message or 'no message'}"
