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
    once wait for a thread. A call given up on (`give_up`) keeps its thread while another
    serves the next calls (at most `most` threads in all); once it returns, its thread serves
    again and no further thread starts in its stead."""

    def __init__(self, size: int, name: str, most: int | None = None) -> None:
        self._size = size
        self._most = max(size, most or size)
        self._given_up: set[Future[Any]] = set()
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
            self._start_thread_locked()
        return future

    def _start_thread_locked(self) -> None:
        if self._threads < self._size:
            self._threads += 1
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}",
                             daemon=True).start()

    def give_up(self, future: Future[Any]) -> bool:
        """The caller no longer waits for this call. Running, it holds its thread, maybe for
        ever (a call without a timeout to a service that never answers): one thread more
        starts for the next calls, and the room goes again when the call returns. False when
        the call holds no thread, or `most` threads may run already."""
        with self._lock:
            if not future.running() or future in self._given_up or self._size >= self._most:
                return False
            self._given_up.add(future)
            self._size += 1
            self._start_thread_locked()
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
                with self._lock:
                    self._busy -= 1
                    if future in self._given_up:  # the room it was given goes again
                        self._given_up.discard(future)
                        self._size -= 1
                del future, func, args
            self._idle.release()
