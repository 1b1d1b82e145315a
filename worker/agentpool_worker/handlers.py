"""Task handlers: how a pool's ``package.module:function`` is found and what it is given.

A handler takes the task's payload (decoded JSON) and, if it accepts a second positional
argument, a :class:`TaskContext`. Its return value (JSON-encodable) is the task's result.

- ``async def`` handlers run on the worker's event loop. They must not block it: a handler
  that does blocks heartbeats too, and ``/livez`` reports it.
- plain functions run in a thread pool sized to the worker's concurrency.

Raising :class:`agentpool.errors.PermanentError` dead-letters the task at once; any other
exception is retried with backoff until the task runs out of attempts. A run that exceeds
the task timeout counts as a retryable failure.

Cancellation: async handlers receive ``asyncio.CancelledError`` when their task is cancelled,
times out, or its lease is lost. Threads cannot be interrupted, so sync handlers should look at
``ctx.cancelled`` (a ``threading.Event``; ``ctx.cancelled.wait(n)`` is an interruptible sleep).
A sync run that is abandoned keeps its thread, and its concurrency slot, until it returns.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HandlerError(Exception):
    """The handler named in the configuration cannot be used (phrased for a person)."""


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about the run it is doing."""

    task_id: str
    attempt: int
    """1 for the first run; a run lost with its worker counts too."""
    max_attempts: int
    queue: str
    worker_id: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the run should stop: cancel requested, timeout, lease lost, or shutdown."""

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


@dataclass(frozen=True)
class Handler:
    name: str
    func: Callable[..., Any]
    is_async: bool
    wants_context: bool


def load_handler(name: str) -> Handler:
    """Import ``package.module:function`` and work out how to call it."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler {name!r} must be written as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerError(
            f"cannot import handler {name!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerError(
                f"cannot import handler {name!r}: module {module_name!r} has no {attr!r}"
            ) from None
    if not callable(obj):
        raise HandlerError(f"handler {name!r} is not callable")
    return Handler(name, obj, _is_async(obj), _wants_context(name, obj))


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - an async __call__ on an object
    return call is not None and inspect.iscoroutinefunction(call)


def _wants_context(name: str, func: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        raise HandlerError(f"handler {name!r} must accept the payload as its first argument")
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2:
        raise HandlerError(
            f"handler {name!r} must take (payload) or (payload, ctx), "
            f"not {len(required)} required arguments"
        )
    return len(positional) >= 2
