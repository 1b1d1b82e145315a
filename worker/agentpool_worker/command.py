"""Tasks run as a command: agents written in any language, and agent command-line tools.

Handler ``agentpool_worker.command:run``. The command is ``AGENTPOOL_TASK_COMMAND``: a JSON
array of strings (``["node", "/app/agent.js"]``) or a line split the way a shell splits
words (``node /app/agent.js``; no shell runs it). Each run starts it in a process group of
its own, with:

- **stdin**: the task's payload as JSON, then end of file;
- **environment**: the worker's without its own ``AGENTPOOL_`` settings (the Redis URL
  among them; the worker process is made non-dumpable, so that a program running as the same
  user cannot read them from ``/proc/<worker>/environ``, though the container's init process,
  started with the same environment, can be read: per-pool Redis users bound what the
  credential reaches), plus ``AGENTPOOL_TASK_ID``,
  ``AGENTPOOL_TASK_ATTEMPT``, ``AGENTPOOL_TASK_MAX_ATTEMPTS``, ``AGENTPOOL_QUEUE`` and
  ``AGENTPOOL_TASK_DEADLINE`` (Unix time, when the run's timeout stops it),
  ``AGENTPOOL_TASK_TENANT`` when the task has a tenant; ``PYTHONUNBUFFERED=1`` unless the
  worker's environment sets it (a Python program's output is block-buffered on a pipe
  otherwise: its progress and checkpoints would die with it when its timeout stops it);
  ``AGENTPOOL_TASK_DIR``, an empty directory of the run's own, removed when the run ends
  (also ``TMPDIR``, and ``HOME`` when the worker's home is missing or not writable, as in a
  pod whose root filesystem is read-only: tools such as git, npm and most agent CLIs write
  there); and
  ``AGENTPOOL_CHECKPOINT_FILE``, a file holding the JSON state an earlier attempt
  checkpointed, when one did; ``AGENTPOOL_RESULTS_BEFORE_FILE``, a file holding the results of
  the tasks this one was submitted to run after (a JSON object by task id, as
  ``ctx.results_before()`` gives them), when it was (its claim says so: a run of a task
  without ``after`` reads nothing more of Redis).

Each line of **stdout** that is a JSON object of one of these forms, with no other key, is a
message:

- ``{"result": value}``: the run's result (the last one counts);
- ``{"event": "kind", "data": value}``: a task event, as ``ctx.emit`` (``data`` optional;
  the kind is 1-64 letters, digits, ``.``, ``_``, ``:`` or ``-``, starting with a letter or
  digit);
- ``{"progress": 0.5, "message": "..."}``: a progress event, as ``ctx.progress`` (a number
  from 0 to 1; ``message`` optional);
- ``{"checkpoint": state}``: saved for the next attempt, as ``ctx.checkpoint``, before the
  next line is read;
- ``{"submit": {...}, "name": "step-1", "after": ["step-0"]}``: a task (its payload a JSON
  object) submitted to the pool's queue, as ``ctx.submit``, before the next line is read
  (``name`` and ``after`` optional, as are ``priority``, ``delay``, ``max_attempts``,
  ``expires`` and ``task_timeout``, as ``submit`` takes them, and ``queue``: another queue
  the pool lists in ``spec.worker.submitsTo``, and ``tenant`` (the run's own by default), as
  ``ctx.submit`` takes them). Once per task,
  not per attempt: a submit with a ``name`` is that step of this task however often the
  program sends it (the name is its idempotency key under this task), one without is named
  by what it submits.
  ``after`` holds names the run gave earlier submits (send a step again on a later attempt to
  refer to it: it is the same task) or task ids: the task runs once they have all succeeded
  and reads their results from its own ``AGENTPOOL_RESULTS_BEFORE_FILE``. A submit that fails
  (a name or ``after`` of the wrong kind, an unknown name or task, an ``after`` naming a step
  sent to another queue, a bad option) fails the run for good, but one to a queue the pool
  does not list fails it as any failure (retried: the list may come with a rollout); the
  steps submitted before it stay submitted;
- ``{"error": "text", "retry": false}``: the run fails with this error whatever the exit
  status; ``"retry": false`` dead-letters the task at once (``retry`` optional);
  ``{"error": "text", "retry_after": 30}`` runs it again in that many seconds (0 to a day;
  a number or a string holding one, as an HTTP Retry-After header) instead of after the
  worker's backoff, as a handler's ``Retry`` does; the run fails whatever ``retry_after``
  holds (one not taken is named in the error, and the backoff applies).

Every other line is output, JSON lines that are not messages too (the JSON log lines of
structlog, pino or zap: ``{"event": "fetching", "level": "info"}``, ``{"msg": "retrying",
"error": "ECONNRESET"}``), as is a line over ``MAX_LINE_BYTES`` (binary output, a progress
bar drawn with carriage returns), cut to its last ``MAX_OUTPUT_CHARS``; but one that begins
as a result, a checkpoint or a submit message fails the run for good (a message is at most
``MAX_LINE_BYTES``, so a command's result is too, whatever the worker's result limit). So
does a cut-off message: the last line of the output, with no newline after it, that begins as
a result, an error, a checkpoint or a submit message and is no JSON (a program that exits
before its output is flushed, as Node's ``process.exit`` does): its text is not the result
the program meant. For good: such a program cuts off its output again on the next attempt.
A line that begins so, is no JSON and ends with a newline was written whole: it is output
(prose quoting a JSON snippet over lines, a log line in Python's dict notation).

A run that sent no result has its output as result (text: its last lines, as many as fit in
``AGENTPOOL_MAX_RESULT_BYTES`` once encoded as JSON, at most ``MAX_OUTPUT_CHARS``), or null
when there was none. Each line of **stderr** goes to the worker's log with the task's
id (a line over ``STDERR_LINE_BYTES``: its start and its end); the last of them are the error
of a run that exits with a status other than 0. Such a run is retried with backoff like any
failed attempt. In both, and in the output kept as a result, the secrets of any URL are masked
(``https://user:***@host``, ``?token=***``: a ``git clone`` with a token in its URL prints
it); a ``result`` message is kept as sent. A failed run's error is the program's words (its
error message, or its exit status and stderr), without the worker's traceback; a program that
cannot be started fails its run with ``cannot start '<program>': <why>``, for good when Linux
cannot run it (``Exec format error``: no ``#!`` line, another machine's binary).

A run that is cancelled, times out, loses its lease or is handed back by a stopping worker
stops its command: SIGTERM to the process group, SIGKILL after
``AGENTPOOL_TASK_COMMAND_GRACE_SECONDS`` (default 5). Whatever the command left running in its
group when it exits is killed too.

A module of one's own adds hooks to it (``after_task`` to bill each run, ``ready``): it
imports ``run`` from here and is the handler (``hooks:run``). Its command is still checked at
start: without a ``startup`` of its own the module is given this one's, and one of its own
calls this one's. A handler function of one's own that calls ``run`` is not the command
handler to the worker: its command is read and checked at its first run (`_settings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import termios
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from agentpool.errors import (
    MAX_RETRY_DELAY_SECONDS,
    PermanentError,
    Retry,
    retry_delay_seconds,
)
from agentpool.protocol import (
    DEFAULT_MAX_RESULT_BYTES,
    EVENT_KIND,
    FINAL_EVENT,
    MAX_ERROR_CHARS,
    TASK_ID,
    compact_json,
)
from agentpool.seconds import short_repr
from agentpool.urls import mask_urls
from agentpool_worker.handlers import QueueNotListed, TaskContext, WorkerContext
from agentpool_worker.run_rules import Stated
from agentpool_worker.settings import (
    DEFAULT_GRACE_SECONDS,
    ConfigError,
    env_name,
    program_problem,
    read_setting,
    task_program,
)

COMMAND_ENV = env_name("task_command")
GRACE_ENV = env_name("task_command_grace_seconds")
MAX_LINE_BYTES = 8 * 1024 * 1024
"""The longest line read as a message: a checkpoint (up to the payload limit, 1 MiB) or a
result (up to the result limit, 1 MiB by default, and never more than this). A longer line is
output, unless it begins as a result, a checkpoint or a submit (the run then fails for
good)."""
MAX_OUTPUT_CHARS = 1024 * 1024
READ_CHUNK = 64 * 1024
ERROR_LINES = 20
STDERR_LINE_BYTES = 15 * 1024
"""The most of a stderr line one log line carries: with the task's id and the log's own fields
it stays under the 16 KiB at which container runtimes split a log line."""
PIPE_DRAIN_SECONDS = 2.0
"""After the program exited, how long its output is still read until end of file (a process
it left outside its group may hold the pipe open, and write on); a line being carried out
when it passes is carried out to its end, however long its submit takes."""
STATE_KEY = "agentpool.command"

_log = structlog.get_logger("agentpool.task")


class CommandConfigError(ConfigError):
    """The command settings cannot be used (phrased for a person)."""


class CommandFailed(Stated):
    """A run that failed by what its program did or said: recorded as the program's words
    (its error message, its exit status and stderr), without the worker's traceback."""


class CommandFailedForGood(CommandFailed, PermanentError):
    """A run that failed by what its program did or said, for good (dead-lettered at once)."""


@dataclass(frozen=True)
class CommandSettings:
    argv: tuple[str, ...]
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    home_writable: bool = True
    """Whether the worker's HOME is a directory the programs can write; if not, each run's
    HOME is its own directory."""
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """The worker's result limit (from its settings), which output kept as a result must
    fit."""


def command_settings(environ: Mapping[str, str]) -> CommandSettings:
    """Read and check the command settings by the worker's own rules (settings.py, which
    ``agentpool-worker`` applies at start); the executable must be found now, not at the
    first task."""
    try:
        argv = task_program(read_setting("task_command", environ))
        grace = read_setting("task_command_grace_seconds", environ)
    except ConfigError as exc:
        raise CommandConfigError(str(exc)) from None
    home = environ.get("HOME", "")
    home_writable = bool(home) and os.path.isdir(home) and os.access(home, os.W_OK)
    return CommandSettings(argv, grace, home_writable)


def startup(worker: WorkerContext) -> None:
    worker.state[STATE_KEY] = replace(
        command_settings(os.environ), max_result_bytes=worker.max_result_bytes)
    _not_dumpable()


def _settings(state: dict[str, Any]) -> CommandSettings:
    """The settings `startup` left in the worker's state; read, checked and kept now when it
    did not run (a handler function of one's own that calls `run`, a module's own `startup`
    that does not call this one's): a command that is not set or cannot start fails the run
    with the line the start-up check gives."""
    settings: CommandSettings | None = state.get(STATE_KEY)
    if settings is None:
        try:
            settings = replace(command_settings(os.environ), max_result_bytes=read_setting(
                "max_result_bytes", os.environ))
        except ConfigError as exc:
            raise CommandFailed(f"{exc} (to have it checked at start instead, the handler's "
                                f"module imports startup from {__name__} too)") from None
        state[STATE_KEY] = settings
        _not_dumpable()
    return settings


PR_SET_DUMPABLE = 4


def _not_dumpable() -> None:
    """Keep the programs, which run as the worker's user, out of the worker's memory and
    ``/proc/<pid>/environ``, where the Redis URL and its password are: a non-dumpable
    process's ``/proc`` files are for root with CAP_SYS_PTRACE only (and it leaves no core
    dump). The programs themselves are dumpable again: ``execve`` resets it."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        _log.warning("could not make the worker non-dumpable; task programs can read its "
                     "environment", error=os.strerror(error))


@dataclass
class _ReadProgress:
    """How far the reading of the command's stdout got."""

    bytes_read: int = 0
    """Bytes taken from the stream (their lines are carried out before more are taken)."""
    waiting: bool = False
    """Every line taken was carried out; the reader waits for more bytes."""


@dataclass
class _Outcome:
    """What the command's stdout said."""

    result: Any = None
    has_result: bool = False
    error: str | None = None
    retry: bool = True
    retry_after: float | None = None
    steps: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """The task id of each step the run submitted with a name."""
    stopping: bool = False
    """The run was stopped: of what the program still writes, only a checkpoint counts."""
    read: _ReadProgress = field(default_factory=_ReadProgress)
    """How far the reading of stdout got (after the exit: whether lines written before it
    remain)."""
    cut_off: str | None = None
    """Why the run fails for good, its output's last line being a cut-off message: the output
    that would be the result instead is not what the program meant."""


async def run(payload: Any, ctx: TaskContext) -> Any:
    settings = _settings(ctx.state)
    scratch = tempfile.mkdtemp(prefix="agentpool-run-")
    try:
        env = {**_inherited(os.environ), "AGENTPOOL_TASK_ID": ctx.task_id,
               "AGENTPOOL_TASK_ATTEMPT": str(ctx.attempt),
               "AGENTPOOL_TASK_MAX_ATTEMPTS": str(ctx.max_attempts),
               "AGENTPOOL_TASK_DEADLINE": f"{time.time() + ctx.timeout_seconds:.3f}",
               "AGENTPOOL_QUEUE": ctx.queue, "AGENTPOOL_TASK_DIR": scratch, "TMPDIR": scratch}
        env.setdefault("PYTHONUNBUFFERED", "1")
        if ctx.tenant is not None:
            env["AGENTPOOL_TASK_TENANT"] = ctx.tenant
        if not settings.home_writable:
            env["HOME"] = scratch
        if ctx.checkpoint_state is not None:
            env["AGENTPOOL_CHECKPOINT_FILE"] = _write_json(
                scratch, "checkpoint.json", ctx.checkpoint_state)
        if ctx.after:
            env["AGENTPOOL_RESULTS_BEFORE_FILE"] = _write_json(
                scratch, "results-before.json", await ctx.results_before())
        try:
            command = await _Command.start(settings.argv, env)
        except OSError as exc:
            # Exec format error: not a program Linux runs (no #! line, another machine's
            # binary), which no later attempt changes
            failed = CommandFailedForGood if exc.errno == errno.ENOEXEC else CommandFailed
            raise failed(cannot_start(settings.argv[0], exc)) from None
        try:
            return await _converse(command, payload, ctx, settings.max_result_bytes,
                                   settings.grace_seconds)
        finally:
            await command.stop(settings.grace_seconds)
    finally:
        try:
            await asyncio.to_thread(_remove_tree, scratch)
        except OSError as exc:
            _log.warning("the run's directory could not be removed", task=ctx.task_id,
                         directory=scratch, error=f"{type(exc).__name__}: {exc}")


def cannot_start(program: str, exc: OSError) -> str:
    """Why `program` did not start, in one line: what `program_problem` sees when it sees
    something (the ``#!`` interpreter that is missing: the file itself exists, whatever ``No
    such file or directory`` says; what makes an ``Exec format error``)."""
    path = shutil.which(program)
    why = (program_problem(path, machine=True) if path is not None else "") \
        or exc.strerror or str(exc) or type(exc).__name__
    return f"cannot start {program!r}: {why}"


def _inherited(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment less its own settings (any case: the settings are read so):
    the Redis URL carries the queue's password, which a program (maybe an agent running tools
    an LLM chose) has no use for."""
    return {name: value for name, value in environ.items()
            if not name.upper().startswith("AGENTPOOL_")}


def _remove_tree(path: str) -> None:
    """Remove a run's directory, with what the program made read-only in it (Go's module
    cache under HOME is): a directory that refuses a removal is made writable first."""

    def retry(function: Callable[..., Any], failed: str, _: Any) -> None:
        if not os.path.lexists(failed):
            return
        _make_writable(os.path.dirname(failed))
        if os.path.isdir(failed) and not os.path.islink(failed):
            _make_writable(failed)  # it may also be one that cannot be listed
            shutil.rmtree(failed, onerror=retry)
        else:
            function(failed)

    shutil.rmtree(path, onerror=retry)


def _make_writable(directory: str) -> None:
    with contextlib.suppress(OSError):
        mode = os.lstat(directory).st_mode
        if stat.S_ISDIR(mode):
            os.chmod(directory, stat.S_IMODE(mode) | stat.S_IRWXU)


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Tells when the process exits, and how many bytes of stdout it had written by then.
    ``Process.wait()`` also waits for its pipes to close, which a process the command left
    behind can hold open for ever."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit, loop)
        self.exited = asyncio.Event()
        self.stdout_received = 0
        self.stdout_at_exit = 0
        self.pipes: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.pipes = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd == 1:
            self.stdout_received += len(data)
        super().pipe_data_received(fd, data)

    def process_exited(self) -> None:
        self.stdout_at_exit = self.stdout_received + self._stdout_unread()
        super().process_exited()
        self.exited.set()

    def _stdout_unread(self) -> int:
        """Bytes still in the stdout pipe (written, not yet received)."""
        pipe = self.pipes.get_pipe_transport(1) if self.pipes is not None else None
        handle = pipe.get_extra_info("pipe") if pipe is not None else None
        if handle is None:
            return 0
        size = bytearray(4)
        try:
            fcntl.ioctl(handle.fileno(), termios.FIONREAD, size)
        except (OSError, ValueError):
            return 0
        return int.from_bytes(size, sys.byteorder)


@dataclass
class _Command:
    """A started command: its process (leader of a process group of its own) and pipes."""

    process: asyncio.subprocess.Process
    transport: asyncio.SubprocessTransport
    protocol: _ExitProtocol

    @property
    def exited(self) -> asyncio.Event:
        return self.protocol.exited

    @classmethod
    async def start(cls, argv: tuple[str, ...], env: dict[str, str]) -> _Command:
        loop = asyncio.get_running_loop()
        pipe = asyncio.subprocess.PIPE
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitProtocol(MAX_LINE_BYTES, loop), *argv, stdin=pipe, stdout=pipe,
            stderr=pipe, env=env, start_new_session=True)
        return cls(asyncio.subprocess.Process(transport, protocol, loop), transport, protocol)

    def signal_group(self, sig: signal.Signals = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, grace: float) -> None:
        """End the command and whatever it started: SIGTERM, SIGKILL after `grace`. Runs
        however the run ended; a second cancellation meanwhile goes straight to SIGKILL."""
        if not self.exited.is_set():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(grace):
                    await self.exited.wait()
        self.signal_group()
        with contextlib.suppress(asyncio.CancelledError):
            await self.exited.wait()
        self.transport.close()


async def _converse(command: _Command, payload: Any, ctx: TaskContext,
                    max_result_bytes: int, grace: float) -> Any:
    process = command.process
    assert process.stdin and process.stdout and process.stderr
    errors: deque[str] = deque(maxlen=ERROR_LINES)
    outcome, output = _Outcome(), deque[str]()
    helpers = (
        asyncio.create_task(_feed(process.stdin, payload)),
        logging := asyncio.create_task(_log_stderr(process.stderr, ctx.task_id, errors)),
        reading := asyncio.create_task(_read_stdout(process.stdout, ctx, outcome, output)),
        exiting := asyncio.create_task(command.exited.wait()),
    )
    try:
        done, _ = await asyncio.wait((reading, exiting), return_when=asyncio.FIRST_COMPLETED)
        if reading in done:
            reading.result()  # a bad message stops the command now
        await exiting
        status = process.returncode
        assert status is not None
        command.signal_group()  # what it left running would hold its pipes open
        # Every line it wrote before it exited is carried out, however long that takes. A
        # process that left the group (setsid) may still hold the pipes and write on: what
        # comes after is read for PIPE_DRAIN_SECONDS from the exit, and longer only while a
        # line read is being carried out (the reader does not wait for bytes).
        stderr_read = asyncio.ensure_future(asyncio.wait((logging,), timeout=PIPE_DRAIN_SECONDS))
        loop = asyncio.get_running_loop()
        until = loop.time() + PIPE_DRAIN_SECONDS
        written, read = command.protocol.stdout_at_exit, outcome.read
        while not reading.done() and (read.bytes_read < written or not read.waiting
                                      or loop.time() < until):
            await asyncio.wait((reading,), timeout=max(0.05, until - loop.time()))
        await stderr_read
        if reading.done():
            reading.result()
    except asyncio.CancelledError:
        # Stopped (timeout, cancel, lease lost, handed back): the program gets SIGTERM and
        # its grace with its output still read, so that a checkpoint it saves on SIGTERM
        # reaches the next attempt (its submits, events and result no longer count).
        outcome.stopping = True
        await command.stop(grace)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((reading,), timeout=PIPE_DRAIN_SECONDS)
        raise
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    if outcome.error is not None:
        if outcome.retry_after is not None:
            raise Retry(outcome.retry_after, outcome.error)
        if outcome.retry:
            raise CommandFailed(outcome.error)
        raise CommandFailedForGood(outcome.error)
    if status != 0:
        why = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        tail = "\n".join(errors)
        room = MAX_ERROR_CHARS - 200  # the error's own words around it
        if len(tail) > room:  # its last lines say most: keep the end
            tail = "…" + tail[-room:]
        raise CommandFailed(f"command {why}" + (f": {tail}" if tail else ""))
    if outcome.cut_off is not None:
        raise CommandFailedForGood(outcome.cut_off)
    if outcome.has_result:
        return outcome.result
    return output_result(output, max_result_bytes) if output else None


def output_result(lines: Iterable[str], limit: int) -> str:
    """The end of a run's output that its result can hold: its last lines, as many as fit in
    MAX_OUTPUT_CHARS characters and in `limit` bytes once encoded as JSON (escapes count: a
    newline is two bytes, a control character six); when the last line alone does not fit,
    an end of it that does."""
    budget, room = limit - 2, MAX_OUTPUT_CHARS  # 2: the string's quotes
    lines = list(lines)
    whole = "".join(lines)
    if len(whole) <= room and _json_size(whole) <= budget:
        return whole
    kept: list[str] = []
    for line in reversed(lines):
        size = _json_size(line)
        if size > budget or len(line) > room:
            if not kept:
                kept.append(_end_that_fits(line[-room:], budget))
            break
        kept.append(line)
        budget, room = budget - size, room - len(line)
    return "".join(reversed(kept))


def _json_size(text: str) -> int:
    """Bytes of `text` as stored in a JSON string, without its quotes."""
    return compact_json(text)[1] - 2


def _end_that_fits(text: str, budget: int) -> str:
    """The longest end of `text` within `budget` bytes of JSON (a binary search over where it
    starts: its size only shrinks as it starts later)."""
    low, high = max(0, len(text) - budget), len(text)  # each character is at least a byte
    while low < high:
        middle = (low + high) // 2
        if _json_size(text[middle:]) <= budget:
            high = middle
        else:
            low = middle + 1
    return text[low:]


async def _feed(stdin: asyncio.StreamWriter, payload: Any) -> None:
    with contextlib.suppress(ConnectionError):  # a command that never reads its input
        stdin.write(compact_json(payload)[0].encode() + b"\n")
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


async def _log_stderr(stderr: asyncio.StreamReader, task_id: str, errors: deque[str]) -> None:
    cut = False
    while True:
        try:
            raw = await stderr.readline()
        except ValueError:  # one line over the limit: skip what the buffer holds
            cut = True
            continue
        if not raw:
            return
        text = raw.decode(errors="replace").rstrip("\n")
        line = logged_line(mask_urls(_unmarked_secret_cut(text) if cut else text))
        cut = False
        errors.append(line)
        _log.info("task stderr", task=task_id, line=line)


def logged_line(line: str, limit: int = STDERR_LINE_BYTES) -> str:
    """`line` as a log line carries it: whole when it is at most `limit` bytes as the log's
    JSON writes it (non-ASCII and control characters escaped), else its start and its end
    around ``… N bytes cut …``. Cut after masking, which needs the whole of a URL."""
    if len(line) <= limit and _logged_size(line) <= limit:
        return line
    half = (limit - 64) // 2  # 64: room for the marker (its "…" is 6 bytes in the log)
    head = line[:_longest(lambda n: _logged_size(line[:n]) <= half, min(len(line), half))]
    rest = line[len(head):]
    tail_length = _longest(lambda n: _logged_size(rest[len(rest) - n:]) <= half,
                           min(len(rest), half))
    tail = rest[len(rest) - tail_length:]
    cut = len(rest[:len(rest) - tail_length].encode())
    return f"{head}… {cut} bytes cut …{tail}"


def _logged_size(text: str) -> int:
    """Bytes of `text` in a JSON log line (json.dumps' escapes), without its quotes."""
    return len(json.dumps(text)) - 2


def _longest(fits: Callable[[int], bool], most: int) -> int:
    """The largest n from 0 to `most` that `fits` (which holds up to some n, then no more)."""
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


async def _read_stdout(stdout: asyncio.StreamReader, ctx: TaskContext, outcome: _Outcome,
                       output: deque[str]) -> None:
    """Read the messages into `outcome` and the rest into `output`, until end of file."""
    kept = 0
    number = 0
    noted: set[str] = set()
    async for line in _lines(stdout, outcome.read):
        number += 1
        if line.cut and MESSAGE_START.match(line.head):
            raise CommandFailedForGood(
                f"the command's output line {number}: a message over {MAX_LINE_BYTES} bytes "
                f"(the longest line read as one); write large output to a file or a store and "
                f"send where it is")
        text = line.text.decode(errors="replace")
        message = _NotMessage() if line.cut else _message(text)
        if isinstance(message, _NotMessage):
            if message.cut_off:
                outcome.cut_off = f"the command's output line {number} {message.why}"
            elif message.why and message.meant not in noted:
                # once per run, and once for each message a line seems meant as: a program
                # that logs JSON logs a lot
                noted.add(message.meant)
                _log.info(NOT_JSON_NOTE if message.not_json else NOT_A_MESSAGE_NOTE,
                          task=ctx.task_id, line=number, why=message.why)
            text = mask_urls(_unmarked_secret_cut(text) if line.cut else text)
            output.append(text)
            kept += len(text)
            while kept > MAX_OUTPUT_CHARS and len(output) > 1:
                kept -= len(output.popleft())
            continue
        try:
            await _act(message, outcome, ctx)
        except QueueNotListed as exc:  # the pool's list may come with a rollout: retried
            raise CommandFailed(f"the command's output line {number}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CommandFailedForGood(f"the command's output line {number}: {exc}") from None


_CUT_USERINFO = re.compile(r"^\S*?@")


def _unmarked_secret_cut(tail: str) -> str:
    """The end of a line cut to fit: what precedes its first ``@`` (before any blank) may be
    the rest of a URL's password whose ``scheme://`` was cut away, so it is masked."""
    return _CUT_USERINFO.sub("***@", tail, count=1)


@dataclass(frozen=True)
class _Line:
    text: bytes
    cut: bool = False
    """Over MAX_LINE_BYTES: only its last MAX_OUTPUT_CHARS bytes are kept."""
    head: bytes = b""
    """Of a cut line, how it began (HEAD_BYTES)."""


HEAD_BYTES = 64
MESSAGE_START = re.compile(rb'\{.*"(result|checkpoint|submit|error)"\s*:', re.DOTALL)
"""How a line meant as a result, a checkpoint, a submit or an error begins (its key first, or
after a short one such as a submit's name): such a line over MAX_LINE_BYTES, or that is not
JSON and is the last of the output with no newline, is no output."""
RETRY_AFTER_TEXT = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*\Z")
"""A retry_after given as text: plain decimal seconds (what an HTTP Retry-After carries)."""


async def _lines(stream: asyncio.StreamReader, progress: _ReadProgress) -> AsyncIterator[_Line]:
    """The stream's lines; one over MAX_LINE_BYTES is cut to its last MAX_OUTPUT_CHARS bytes
    and keeps how it began. The loop gets a turn after every chunk read, however fast the
    program writes. `progress` counts the bytes taken and tells when every line yielded was
    handled and the next read waits."""
    pending = bytearray()
    head: bytes | None = None
    while True:
        progress.waiting = True
        chunk = await stream.read(READ_CHUNK)
        progress.waiting = False
        progress.bytes_read += len(chunk)
        if not chunk:
            break
        *ends, rest = chunk.split(b"\n")
        for end in ends:
            if pending:
                pending += end
                pending += b"\n"
                yield _line(pending, head)
                pending.clear()
                head = None
            else:
                yield _Line(end + b"\n")
        pending += rest
        if len(pending) > MAX_LINE_BYTES or (head is not None
                                             and len(pending) > 2 * MAX_OUTPUT_CHARS):
            if head is None:
                head = bytes(pending[:HEAD_BYTES])
            del pending[:-MAX_OUTPUT_CHARS]
        await asyncio.sleep(0)
    if pending:
        yield _line(pending, head)


def _line(line: bytearray, head: bytes | None) -> _Line:
    if head is not None or len(line) > MAX_LINE_BYTES:
        return _Line(bytes(line[-MAX_OUTPUT_CHARS:]), True,
                     bytes(line[:HEAD_BYTES]) if head is None else head)
    return _Line(bytes(line))


MESSAGE_KEYS = {
    "result": {"result"},
    "event": {"event", "data"},
    "progress": {"progress", "message"},
    "checkpoint": {"checkpoint"},
    "error": {"error", "retry", "retry_after"},
    "submit": {"submit", "name", "after", "priority", "delay", "max_attempts", "expires",
               "task_timeout", "queue", "tenant"},
}
"""Each message's key, and the keys it may have."""


@dataclass(frozen=True)
class _NotMessage:
    """A line of output, with why a line that looks like a message is not one."""

    why: str = ""
    meant: str = ""
    """The message it seems meant as (a result with a key too many, a cut-off checkpoint),
    noted in a log line of its own; "" for the rest (JSON log lines)."""
    not_json: bool = False
    """It begins as a message, and is no JSON."""
    cut_off: bool = False
    """It begins as a message, is no JSON, and is the output's last line with no newline: the
    program ended before it was written whole."""


NOT_A_MESSAGE_NOTE = "a JSON line of the command's output is not a message; kept as output"
NOT_JSON_NOTE = "a line of the command's output begins as a message and is no JSON; kept as output"
MEANT = frozenset({"result", "checkpoint", "submit"})
"""Messages whose key a JSON log line does not have: a line with one that is no message was
meant as one."""


def _message(text: str) -> dict[str, Any] | _NotMessage:
    """The line as a message, or output, with why a JSON object is not a message. A message
    has one message key and no other key than its own, with values of the right kind: any
    other line is output, not a failure (a program's JSON log lines). Control characters in
    its strings are taken (a literal tab): a program may print JSON it wrote by hand."""
    if not text.startswith("{"):
        return _NotMessage()
    try:
        value = json.loads(text.removesuffix("\n"), strict=False)  # its error: "line 1"
    except (ValueError, RecursionError) as exc:
        return _not_json(text, exc)
    if not isinstance(value, dict):
        return _NotMessage()
    kinds = value.keys() & MESSAGE_KEYS.keys()
    if len(kinds) != 1:
        return _NotMessage("no message key" if not kinds else
                           f"more than one message key: {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    extra = value.keys() - MESSAGE_KEYS[kind]
    if extra:
        return _NotMessage(f"{kind!r} with other keys: {', '.join(sorted(extra))}"[:200],
                           kind if kind in MEANT else "")
    why = _malformed(kind, value)
    return _NotMessage(why) if why else value


def _not_json(text: str, exc: Exception) -> _NotMessage:
    """A line that is no JSON. One that begins as a message is cut off when no newline ends
    it (only the last line of the output can lack one: the program ended before it was
    written whole) and it is not a whole JSON object followed by more text (an API's body
    printed before other words, which no cutting makes); else it is output, written whole
    as the program meant it (prose quoting a JSON snippet over lines, a Python dict)."""
    start = MESSAGE_START.match(text[:HEAD_BYTES].encode())
    if start is None:
        return _NotMessage()
    kind = start.group(1).decode()
    whole_then_more = isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data"
    if not text.endswith("\n") and not whole_then_more:
        return _NotMessage(f'looks like a cut-off "{kind}" message (a program that exits '
                           "before its output is flushed, e.g. Node's process.exit)",
                           kind, not_json=True, cut_off=True)
    return _NotMessage(f'begins as a "{kind}" message but is not JSON: {exc}'[:300], kind,
                       not_json=True)


def _malformed(kind: str, message: dict[str, Any]) -> str:
    """Why the message's values are not of the right kind ("" when they are)."""
    if kind == "event":
        name = message["event"]
        if not isinstance(name, str) or not EVENT_KIND.match(name) or name == FINAL_EVENT:
            return ('"event" is not an event kind (1-64 letters, digits, ".", "_", ":" '
                    'or "-", starting with a letter or digit, and not "final")')
    elif kind == "progress":
        fraction, text = message["progress"], message.get("message")
        if (isinstance(fraction, bool) or not isinstance(fraction, int | float)
                or not math.isfinite(fraction) or not 0 <= fraction <= 1):
            return '"progress" is not a number between 0 and 1'
        if text is not None and not isinstance(text, str):
            return '"message" is not a string'
    elif kind == "error":
        if not isinstance(message["error"], str):
            return '"error" is not a string'
        if not isinstance(message.get("retry", True), bool):
            return '"retry" is not true or false'
    elif kind == "submit" and not isinstance(message["submit"], dict):
        return '"submit" is not a JSON object (a task\'s payload, as a program submits it)'
    return ""


def read_retry_after(message: dict[str, Any]) -> tuple[float | None, str]:
    """An error message's ``retry_after`` in seconds (None: the worker's backoff), with why a
    value given was not taken. A bad value leaves the message an error, which still fails the
    run: a program that meant to fail must not succeed over a malformed delay."""
    if "retry_after" not in message:
        return None, ""
    value = message["retry_after"]
    if message.get("retry") is False:
        return None, '"retry_after" ignored: "retry" is false'
    seconds = retry_delay_seconds(
        float(value) if isinstance(value, str) and RETRY_AFTER_TEXT.match(value) else value)
    if seconds is None:
        return None, (f'"retry_after" ignored: {short_repr(value)} is not a number of '
                      f"seconds from 0 to {MAX_RETRY_DELAY_SECONDS}")
    return seconds, ""


async def _act(message: dict[str, Any], outcome: _Outcome, ctx: TaskContext) -> None:
    """Carry out a well-formed message; what a limit refuses (an event over 64 KiB, a
    checkpoint over the payload limit) and a submit the queue refuses (an unknown task to run
    after, a bad option) raise ValueError."""
    if outcome.stopping and "checkpoint" not in message:
        return
    if "result" in message:
        outcome.result, outcome.has_result = message["result"], True
    elif "event" in message:
        await ctx.emit(message["event"], message.get("data"))
    elif "progress" in message:
        await ctx.progress(float(message["progress"]), message.get("message"))
    elif "checkpoint" in message:
        await ctx.checkpoint(message["checkpoint"])
    elif "submit" in message:
        await _submit(message, ctx, outcome.steps)
    else:
        outcome.error, outcome.retry = message["error"], message.get("retry", True)
        outcome.retry_after, why_not = read_retry_after(message)
        if why_not:
            outcome.error += f" ({why_not})"
            _log.warning("a task program's error message has a bad retry_after",
                         task=ctx.task_id, why=why_not)


SUBMIT_OPTIONS = ("priority", "delay", "max_attempts", "expires", "task_timeout", "queue",
                  "tenant")


async def _submit(message: dict[str, Any], ctx: TaskContext,
                  steps: dict[str, tuple[str, str | None]]) -> None:
    """A submit message: its ``after`` names resolved to the ids of the steps this run
    submitted under them (or taken as task ids), submitted as ``ctx.submit`` does. `steps`
    holds each named step's id and queue (None: the pool's own)."""
    name, given_after = message.get("name"), message.get("after", [])
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        raise ValueError('"name" is not a string of 1 to 200 characters')
    if "queue" in message and not isinstance(message["queue"], str):
        raise ValueError('"queue" is not a string (the name of a queue the pool submits to)')
    if (not isinstance(given_after, list)
            or not all(isinstance(given, str) for given in given_after)):
        raise ValueError('"after" is not a list of strings (names or task ids)')
    queue = message.get("queue")
    queue = None if queue == ctx.queue else queue
    after: list[str] = []
    for given in given_after:
        if given in steps:
            step_id, step_queue = steps[given]
            if step_queue != queue:
                raise ValueError(
                    f'"after" names {given!r}, a step sent to queue '
                    f"{step_queue or ctx.queue!r}: a task runs after tasks of its own queue "
                    f"only (this one goes to {queue or ctx.queue!r})")
            after.append(step_id)
        elif TASK_ID.match(given):
            after.append(given)
        else:
            raise ValueError(f'"after" names {given!r}: no step this run submitted has that '
                             "name, and it is not a task id (send that step again first)")
    options = {key: message[key] for key in SUBMIT_OPTIONS if key in message}
    task_id = await ctx.submit(message["submit"], after=after or None, key=name, **options)
    if name is not None:
        steps[name] = (task_id, queue)


def _write_json(directory: str, name: str, value: Any) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as file:
        file.write(compact_json(value)[0])
    return path
