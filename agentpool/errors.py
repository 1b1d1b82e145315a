"""Exceptions a task handler may raise to steer what happens to its task."""

from __future__ import annotations

from typing import SupportsFloat

from agentpool.seconds import as_seconds, seconds_text, short_repr


class PermanentError(Exception):
    """The task can never succeed (bad input, a refused request): dead-letter it at once.

    Any other exception counts as a transient failure and the task is retried with backoff
    until it runs out of attempts.
    """


class LeaseLost(Exception):
    """This run no longer holds its task (another worker has it now): its checkpoint was
    refused. Stop; whatever the run returns or raises from here on is ignored."""


MAX_RETRY_DELAY_SECONDS = 86400


def retry_delay_seconds(value: object) -> float | None:
    """`value` as the delay of a request to run again later (seconds, 0 to a day), or None
    when it is none: `Retry`'s and a task program's ``retry_after`` alike."""
    seconds = as_seconds(value)
    return seconds if seconds is not None and 0 <= seconds <= MAX_RETRY_DELAY_SECONDS else None


class Retry(Exception):
    """Run the task again in `delay` seconds rather than after the worker's backoff: a service
    said when to come back, a resource is not ready yet.

    The run counts as a failed attempt, as with Celery's ``retry``, Dramatiq's and arq's
    ``Retry``: on the task's last attempt it goes to the dead letters. For a provider's rate
    limit shared by every worker, ``ctx.throttled`` is the better tool.
    """

    def __init__(self, delay: SupportsFloat, reason: str = "") -> None:
        seconds = retry_delay_seconds(delay)
        if seconds is None:
            raise ValueError("Retry needs a delay from 0 to "
                             f"{MAX_RETRY_DELAY_SECONDS} seconds (a day), got {short_repr(delay)}")
        super().__init__(seconds, reason)  # as args, so that it pickles (a process pool's)
        self.delay = seconds
        self.reason = reason

    def __str__(self) -> str:
        return self.reason or f"run again in {seconds_text(self.delay)} s"
