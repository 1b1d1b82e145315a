"""Threads the worker owns, for the handler module's sync hooks.

They are daemon threads: a hook that never returns (an HTTP call without a timeout, a blocked
close) cannot keep the process from exiting, as a thread of asyncio's default executor would
(``asyncio.run`` waits for that executor at exit). Each kind of hook has threads of its own,
so hung ``after_task`` calls cannot starve the ``ready`` check, and the reverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonThreads:
    """Up to `size` daemon threads, started when needed and reused; calls beyond `size` at
    once wait for a thread. `most` bounds the threads `make_room` may add."""

    def __init__(self, size: int, name: str, most: int | None = None) -> None:
        self._size = size
        self._most = max(size, most or size)
        self._name = name
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0

    @property
    def busy(self) -> int:
        """Calls submitted and not over yet (waiting for a thread or running)."""
        return self._busy

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._busy += 1
        self._jobs.put((future, func, args))
        if self._idle.acquire(blocking=False):
            return future  # an idle thread takes it
        with self._lock:
            if self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}",
                                 daemon=True).start()
        return future

    def make_room(self) -> bool:
        """One thread more may start: a call given up on holds its thread, maybe for ever,
        and must not leave the calls after it waiting for that thread. False once `most`
        threads may start."""
        with self._lock:
            if self._size >= self._most:
                return False
            self._size += 1
            return True

    def _work(self) -> None:
        while True:
            future, func, args = self._jobs.get()
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = func(*args)
                    except BaseException as exc:  # SystemExit too: the caller decides
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                del future, func, args
                with self._lock:
                    self._busy -= 1
            self._idle.release()
