"""When the worker's next claim goes: at once, after a short linger, or on a wake-up signal.

Pure rules of plain numbers; the fetch loop in worker.py applies them.
"""

from __future__ import annotations

from agentpool.protocol import ClaimBatch

LINGER_GATHERS = 2.0
"""A linger must be expected to gather at least this many tasks: below it, a linger's claim
often finds one task or none, and saves no round trip for the latency it costs."""
SMOOTHING = 0.25
"""Weight of the newest claim in the arrival rate: about the last four claims count."""


def wait_before_next_claim(batch: ClaimBatch, asked: int) -> bool:
    """Whether the next claim waits for a wake-up signal: unless the claim got all it asked
    for and tasks are still queued. A claim refused for a drain gets nothing with tasks left,
    and waits rather than spins."""
    return len(batch.tasks) < asked or batch.queued_left == 0


class ArrivalRate:
    """Tasks per second reaching this worker's claims, smoothed over the last few claims.

    Each claim is a sample: the tasks it brought over the time since the previous claim. A
    worker that keeps up claims each task soon after it is submitted, so that is the rate at
    which its share of the queue's tasks arrives. A claim that found nothing sets it to 0:
    the stream paused, and its next task should not wait out a linger."""

    def __init__(self) -> None:
        self.per_second = 0.0
        self._last: float | None = None

    def claimed(self, count: int, now: float) -> None:
        if count == 0:
            self.per_second = 0.0
        elif self._last is not None:
            gap = max(now - self._last, 1e-4)
            self.per_second += SMOOTHING * (count / gap - self.per_second)
        self._last = now


def lingers(rate: ArrivalRate, linger: float, free: int) -> bool:
    """Whether a worker about to wait for its next task, with `free` slots, should instead
    sleep `linger` seconds and claim what gathered meanwhile in one claim.

    Every wake-up is a round trip and a claim script, for Redis (which the whole fleet
    shares) and for the worker, and its task's completion usually goes alone too. Under a
    dense stream of single submits a short linger turns several of those into one, at the
    price of at most `linger` of start latency; so only when the recent arrival rate says it
    will gather at least LINGER_GATHERS tasks and there are slots to take them. A sparse
    stream never lingers, nor does a worker with one slot free (it would claim one anyway)."""
    return (linger > 0 and free >= LINGER_GATHERS
            and rate.per_second * linger >= LINGER_GATHERS)
