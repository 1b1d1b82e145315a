"""A lock that survives `os.fork`: a forked child gets it unlocked."""

from __future__ import annotations

import os
import threading
from types import TracebackType


class ForkSafeLock:
    """A `threading.Lock` made anew in a forked child: one held by another thread when the
    process forked would stay held there for good (only the forking thread goes on). For
    module-level locks: each instance stays registered for the life of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()
