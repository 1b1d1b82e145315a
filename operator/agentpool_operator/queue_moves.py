"""A pool whose queue would move: to another queue name (refused), or to another Redis.

The queue name is fixed once the pool exists (the CRD's transition rule `QUEUE_FIXED`). A CRD
installed before that rule (Helm never upgrades a chart's `crds/`) lets a change through, so
the operator holds the line too: `status.queue` records the queue the pool serves, and a spec
naming another is refused as an invalid one (`queue_change_refused`), with the rule's message.

A pool may move to another Redis (`spec.redis`, or the value of its URL's Secret): the tasks
waiting on the old queue stay there, with no pool to run them or to requeue those of a dead
pod. The queues are compared by `queue_sharing.queue_address` (hosts, port, database and
queue name, never credentials). When the address the pool serves changes while the operator
runs, the old queue is followed (`follow`): read each round with a client of its own, it keeps
the pool `Degraded` with reason `QueueLeftBehind` while it holds tasks, says so once in a
Warning Event, and is let go once read empty (`judge_left_queue`), or once its Redis has not
answered for GIVE_UP_SECONDS (a Redis taken down after the move: another Warning Event says
the operator stopped looking). An operator that restarts knows only the address the pool has
now: it follows no queue left before. The same Redis reached under another name (an IP
address for a Service's name, a Sentinel URL for a direct one) counts as a move: its "old"
queue is the pool's own, read busy until its tasks are done.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from agentpool.models import QUEUE_FIXED
from agentpool.protocol import QueueFigures

from .status import Problem, StatusEvent

REASON = "QueueLeftBehind"
GIVE_UP_SECONDS = 600.0
"""How long a left queue's Redis may not answer before the operator stops following it."""


def queue_change_refused(status: Mapping[str, Any], wanted: str) -> str | None:
    """Why the spec is refused when it names a queue other than the one the pool serves
    (`status.queue`); None when they agree or the pool has served none yet."""
    served = status.get("queue")
    if not isinstance(served, str) or not served or served == wanted:
        return None
    return (f"{QUEUE_FIXED.message} (the pool serves queue {served!r}; the spec asks for "
            f"{wanted!r}: put it back)")


@dataclass(frozen=True)
class FollowPlan:
    start: str | None = None
    """The address the pool just left: its queue is to be followed from now on."""
    stop: frozenset[str] = frozenset()
    """Followed addresses the pool serves again: no longer left behind."""


def follow(previous: str | None, current: str | None, followed: Collection[str]) -> FollowPlan:
    """What changes in the queues followed, given the address the pool served at its last
    round that opened its queue (`previous`) and this round's (`current`; None when the queue
    cannot be opened, which decides nothing)."""
    if current is None:
        return FollowPlan()
    start = (previous if previous is not None and previous != current
             and previous not in followed else None)
    return FollowPlan(start, frozenset(a for a in followed if a == current))


@dataclass(frozen=True)
class LeftVerdict:
    problem: Problem | None = None
    """Why the pool stays Degraded for this queue; None once it is let go."""
    event: StatusEvent | None = None
    """The Warning Event to post: the first time the queue is read holding tasks."""
    done: bool = False
    """The queue was read empty: stop following it and close its client."""


def left_counts(figures: QueueFigures) -> str | None:
    """The tasks still on a left queue, for a person; None when it holds none (dead-lettered
    tasks run no more: they do not count)."""
    parts = [(figures.queued, "queued"), (figures.delayed, "delayed"),
             (figures.deferred, "deferred"), (figures.in_flight, "running")]
    held = [f"{count:,} {what}" for count, what in parts if count]
    if not held:
        return None
    listed = held[0] if len(held) == 1 else f"{', '.join(held[:-1])} and {held[-1]}"
    return f"{listed} task(s)"


def judge_left_queue(address: str, figures: QueueFigures | None, failure: str | None, *,
                     warned: bool, unreadable_for: float = 0.0) -> LeftVerdict:
    """A followed queue, as this round read it: `figures`, or `failure` (why it could not be
    read, safe to publish) and for how many seconds it has not been read (`unreadable_for`).
    `warned`: its Warning Event was posted already."""
    server, _, queue = address.rpartition(" ")
    old = f"the pool's old queue {queue!r} on {server}"
    if figures is None and unreadable_for >= GIVE_UP_SECONDS:
        return LeftVerdict(event=StatusEvent("Warning", REASON, (
            f"stopped following {old}: it could not be read for {unreadable_for / 60:.0f} "
            f"minutes ({failure or 'no answer'}); if its Redis comes back, see what waits there "
            "with agentpool status --queue NAME --redis-url OLD-URL")), done=True)
    if figures is None:
        return LeftVerdict(Problem(REASON, (
            f"{old} cannot be read ({failure or 'no answer'}): whether tasks were left there "
            "is not known; the operator reads it each round until it is empty (an operator "
            "restart stops that)")))
    counts = left_counts(figures)
    if counts is None:
        return LeftVerdict(done=True)
    message = (
        f"{old}, which the pool served before its Redis changed, still holds {counts}: no "
        "pool serves it now; waiting tasks stay there until moved to the new queue or the "
        "pool is moved back, and the old pods that drain end only the runs they hold")
    return LeftVerdict(Problem(REASON, message),
                       None if warned else StatusEvent("Warning", REASON, message))
