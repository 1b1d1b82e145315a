"""Where the demo prints: stdout or stderr, guarded against a reader that is gone.

A closed terminal (its pty hung up: EIO) or a pipe whose reader left (`| head`: EPIPE) is not
the demo's failure, let alone Redis's: the first write that finds it raises OutputGone, which
unwinds the demo through its clean-up and ends it with the exit code a shell expects (129 as
for SIGHUP, 141 as for SIGPIPE), without a word, since nobody is there to read one. A stream
that only carries progress (stderr under `-o json`, whose result goes to stdout) is muted
instead: its reader leaving ends nothing.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import TextIO, cast

from rich.console import Console

from agentpool.cli.common import EXIT_PIPE_CLOSED

EXIT_HANGUP = 128 + signal.SIGHUP
GONE = {errno.EIO: EXIT_HANGUP, errno.EPIPE: EXIT_PIPE_CLOSED}
"""The errors of a write that say its reader is gone, and the exit code each ends with."""


class OutputGone(Exception):
    """Not an OSError, so that neither rich nor the demo's Redis error handling takes it."""

    def __init__(self, error: int) -> None:
        super().__init__(os.strerror(error))
        self.errno = error

    @property
    def exit_code(self) -> int:
        return GONE[self.errno]


class GuardedStream:
    """A text stream that raises OutputGone at the first write its reader is not there for
    (unless `mute`: then it raises nothing), then drops what follows. Its file descriptor then
    points to /dev/null, so that no later write to it fails, the interpreter's last flush
    included."""

    def __init__(self, stream: TextIO, *, mute: bool = False) -> None:
        self.stream = stream
        self.mute = mute
        self.gone: int | None = None

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if self.gone is None:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._fail(exc)
        return len(text)

    def flush(self) -> None:
        if self.gone is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if exc.errno not in GONE:
            raise exc
        self.gone = exc.errno
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)
        if not self.mute:
            raise OutputGone(exc.errno) from None


def guarded_console(stream: TextIO, *, mute: bool = False) -> Console:
    """A console on `stream`: its reader gone ends the demo, or with `mute` only silences
    it."""
    return Console(file=cast(TextIO, GuardedStream(stream, mute=mute)), highlight=False)
