"""Exceptions a task handler may raise to steer what happens to its task."""

from __future__ import annotations

from agentpool.seconds import as_seconds, seconds_text, shown


class PermanentError(Exception):
    """The task can never succeed (bad input, a refused request): dead-letter it at once.

    Any other exception counts as a transient failure and the task is retried with backoff
    until it runs out of attempts.
    """


class LeaseLost(Exception):
    """This run no longer holds its task (another worker has it now): its checkpoint was
    refused. Stop; whatever the run returns or raises from here on is ignored."""


MAX_RETRY_DELAY_SECONDS = 86400


class Retry(Exception):
    """Run the task again in `delay` seconds rather than after the worker's backoff: a service
    said when to come back, a resource is not ready yet.

    The run counts as a failed attempt, as with Celery's ``retry``, Dramatiq's and arq's
    ``Retry``: on the task's last attempt it goes to the dead letters. For a provider's rate
    limit shared by every worker, ``ctx.throttled`` is the better tool.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        seconds = as_seconds(delay)
        if seconds is None or not 0 <= seconds <= MAX_RETRY_DELAY_SECONDS:
            raise ValueError("Retry needs a delay from 0 to "
                             f"{MAX_RETRY_DELAY_SECONDS} seconds (a day), got {shown(delay)}")
        super().__init__(seconds, reason)  # as args, so that it pickles (a process pool's)
        self.delay = seconds
        self.reason = reason

    def __str__(self) -> str:
        return self.reason or f"run again in {seconds_text(self.delay)} s"
