"""Exceptions a task handler may raise to steer what happens to its task."""

from __future__ import annotations


class PermanentError(Exception):
    """The task can never succeed (bad input, a refused request): dead-letter it at once.

    Any other exception counts as a transient failure and the task is retried with backoff
    until it runs out of attempts.
    """


class LeaseLost(Exception):
    """This run no longer holds its task (another worker has it now): its checkpoint was
    refused. Stop; whatever the run returns or raises from here on is ignored."""
