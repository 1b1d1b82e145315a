"""The rules for one run's end: how long it may last, and what is recorded when it fails,
its timeout stops it or it asks to run again later (`Retry`). Pure functions of plain data."""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agentpool.errors import PermanentError, Retry
from agentpool.protocol import MAX_ERROR_CHARS, ClaimedTask
from agentpool.seconds import seconds_text
from agentpool.urls import mask_urls


def own_timeout(task: ClaimedTask) -> float | None:
    """The task's own timeout in seconds (its submit's `task_timeout`), if it has one."""
    return task.timeout_ms / 1000 if task.timeout_ms is not None and task.timeout_ms > 0 \
        else None


def run_timeout(task: ClaimedTask, pool_timeout: float) -> float:
    """How long a run of `task` may last: its own timeout, when shorter than the pool's.
    Never longer than the pool's: drains and scale-down count on no run outlasting it."""
    own = own_timeout(task)
    return pool_timeout if own is None else min(own, pool_timeout)


def timeout_error(applied: float, task: ClaimedTask, pool_timeout: float) -> str:
    """The error of a run its timeout (`applied` seconds) stopped, saying whose it was."""
    error = f"timed out after {seconds_text(applied)}s"
    own = own_timeout(task)
    if own is None:
        return error
    if own <= pool_timeout:
        return error + " (the task's own timeout)"
    return error + f" (the pool's task timeout; the task's own is {seconds_text(own)}s)"


@dataclass(frozen=True)
class RunFailure:
    """How a failed run is recorded."""

    error: str
    retryable: bool
    retry_after: float | None = None
    """Seconds until its retry, as the run asked (`Retry`); None: the worker's backoff."""
    timed_out: bool = False


def run_failure(exc: BaseException | None, timed_out: bool, applied: float, task: ClaimedTask,
                pool_timeout: float) -> RunFailure:
    """A run that raised `exc` (None: it returned) after its timeout fired or not. Past its
    timeout it is a timeout, whatever the handler made of the cancel (raised Retry, returned);
    then `sys.exit`, a request to run again later, `PermanentError`, any other exception."""
    if timed_out:
        return RunFailure(timeout_error(applied, task, pool_timeout), True, timed_out=True)
    if isinstance(exc, SystemExit):
        return RunFailure(f"the handler called sys.exit({exc.code!r}); return or raise instead",
                          True)
    assert exc is not None
    request = retry_request(exc)
    if request is not None:
        return RunFailure(retry_error(request), True, retry_after=request.delay)
    return RunFailure(describe(exc), not isinstance(exc, PermanentError))


def retry_request(exc: BaseException) -> Retry | None:
    """The `Retry` a run raised: itself, or one made of a group's (an ``asyncio.TaskGroup``
    whose every failed child asked to run again later: the longest delay, each reason)."""
    if isinstance(exc, Retry):
        return exc
    if not isinstance(exc, BaseExceptionGroup):
        return None
    requests, rest = exc.split(Retry)
    if requests is None or rest is not None:
        return None
    leaves = list(_leaves(requests))
    reasons = [leaf.reason for leaf in leaves if leaf.reason]
    return Retry(max(leaf.delay for leaf in leaves), "; ".join(dict.fromkeys(reasons)))


def _leaves(group: BaseExceptionGroup[Retry]) -> Iterator[Retry]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def retry_error(request: Retry) -> str:
    """The error recorded for a run that asked to run again later (kept if it was the last)."""
    error = f"asked to run again in {seconds_text(request.delay)}s"
    return f"{error}: {request.reason}" if request.reason else error


def describe_briefly(exc: BaseException) -> str:
    """``Type: message``, whatever the exception's ``__str__`` does (it may raise itself)."""
    try:
        message = str(exc)
    except Exception:
        message = f"<its message could not be read: {type(exc).__name__}.__str__ failed>"
    return f"{type(exc).__name__}: {message}"


class Stated(Exception):
    """A failure its message says all of: recorded as that message alone, without a type or
    a traceback (a task program's own error, its exit status and stderr: the worker's frames
    that carried them say nothing about the program)."""


def describe(exc: BaseException) -> str:
    """``Type: message`` first, then as much of the traceback's end as fits; URLs' secrets
    masked before the cut, which could leave a password without the scheme that marks it.
    A `Stated` failure is its message alone (masked, cut where every error is)."""
    if isinstance(exc, Stated):
        return mask_urls(str(exc))
    head = mask_urls(describe_briefly(exc))
    try:
        tb = mask_urls("".join(traceback.format_exception(exc)))
    except Exception:
        tb = ""
    room = MAX_ERROR_CHARS - len(head) - 1
    return head if room <= 0 else f"{head}\n{tb[-room:]}"


def unstreamed(result: Any) -> Any:
    """A handler's result, refused when it is a generator: one returned by mistake (a wrapper
    of an async generator, a ``yield`` left in) is no result to store."""
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        kind = "an async generator" if inspect.isasyncgen(result) else "a generator"
        raise TypeError(f"the handler returned {kind}, not a result: return the value itself")
    return result
