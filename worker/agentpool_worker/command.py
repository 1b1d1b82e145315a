"""Tasks run as a command: agents written in any language, and agent command-line tools.

Handler ``agentpool_worker.command:run``. The command is ``AGENTPOOL_TASK_COMMAND``: a JSON
array of strings (``["node", "/app/agent.js"]``) or a line split the way a shell splits
words (``node /app/agent.js``; no shell runs it). Each run starts it in a process group of
its own, with:

- **stdin**: the task's payload as JSON, then end of file;
- **environment**: the worker's without its own ``AGENTPOOL_`` settings (the Redis URL
  among them), plus ``AGENTPOOL_TASK_ID``, ``AGENTPOOL_TASK_ATTEMPT``,
  ``AGENTPOOL_TASK_MAX_ATTEMPTS`` and ``AGENTPOOL_QUEUE``; ``AGENTPOOL_TASK_DIR``, an empty
  directory of the run's own, removed when the run ends (also ``TMPDIR``, and ``HOME`` when
  the worker's home is missing or not writable, as in a pod whose root filesystem is
  read-only: tools such as git, npm and most agent CLIs write there); and
  ``AGENTPOOL_CHECKPOINT_FILE``, a file holding the JSON state an earlier attempt
  checkpointed, when one did.

Each line of **stdout** that is a JSON object with one of these keys is a message:

- ``{"result": value}``: the run's result (the last one counts);
- ``{"event": "kind", "data": value}``: a task event, as ``ctx.emit``;
- ``{"progress": 0.5, "message": "..."}``: a progress event, as ``ctx.progress``;
- ``{"checkpoint": state}``: saved for the next attempt, as ``ctx.checkpoint``, before the
  next line is read;
- ``{"error": "text", "retry": false}``: the run fails with this error whatever the exit
  status; ``"retry": false`` dead-letters the task at once.

Every other line is output. A run that sent no result has its output as result (text: its
last lines, up to 1 MiB), or null when there was none. Each line of **stderr** goes to the
worker's log with the task's id; the last of them are the error of a run that exits with a
status other than 0. Such a run is retried with backoff like any failed attempt.

A run that is cancelled, times out, loses its lease or is handed back by a stopping worker
stops its command: SIGTERM to the process group, SIGKILL after
``AGENTPOOL_TASK_COMMAND_GRACE_SECONDS`` (default 5). Whatever the command left running in its
group when it exits is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from agentpool.errors import PermanentError
from agentpool_worker.handlers import TaskContext, WorkerContext
from agentpool_worker.settings import seconds

COMMAND_ENV = "AGENTPOOL_TASK_COMMAND"
GRACE_ENV = "AGENTPOOL_TASK_COMMAND_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 5.0
MAX_GRACE_SECONDS = 10.0
"""Below the 15 s the pod's termination grace adds to drainSeconds, so that a command stopped
at the end of a drain is gone before the container is killed."""
MAX_LINE_BYTES = 8 * 1024 * 1024
"""A message line may carry a checkpoint or a result of up to the payload limit (1 MiB)."""
MAX_OUTPUT_CHARS = 1024 * 1024
ERROR_LINES = 20
PIPE_DRAIN_SECONDS = 2.0
"""After the program exited, how long its output is read until end of file."""
STATE_KEY = "agentpool.command"

_log = structlog.get_logger("agentpool.task")


class CommandConfigError(Exception):
    """The command settings cannot be used (phrased for a person)."""


@dataclass(frozen=True)
class CommandSettings:
    argv: tuple[str, ...]
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    home_writable: bool = True
    """Whether the worker's HOME is a directory the programs can write; if not, each run's
    HOME is its own directory."""


def command_settings(environ: Mapping[str, str]) -> CommandSettings:
    """Read and check the command settings; the executable must be found now, not at the
    first task."""
    raw = environ.get(COMMAND_ENV, "").strip()
    if not raw:
        raise CommandConfigError(f"{COMMAND_ENV} must name the command each task runs, "
                                 'e.g. ["node", "/app/agent.js"]')
    argv = _argv(raw)
    if shutil.which(argv[0]) is None:
        raise CommandConfigError(f"{COMMAND_ENV}: {argv[0]!r} is not an executable found on "
                                 "PATH")
    home = environ.get("HOME", "")
    home_writable = bool(home) and os.path.isdir(home) and os.access(home, os.W_OK)
    grace_raw = environ.get(GRACE_ENV, "").strip()
    if not grace_raw:
        return CommandSettings(argv, home_writable=home_writable)
    try:
        grace = seconds(0, MAX_GRACE_SECONDS)(grace_raw)
    except ValueError:
        raise CommandConfigError(f"{GRACE_ENV} must be seconds between 0 and "
                                 f"{MAX_GRACE_SECONDS:g}, got {grace_raw!r}") from None
    return CommandSettings(argv, grace, home_writable)


def _argv(raw: str) -> tuple[str, ...]:
    if raw.startswith("["):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise CommandConfigError(f"{COMMAND_ENV} is not a JSON array: {exc}") from None
        if not value or not all(isinstance(word, str) and word for word in value):
            raise CommandConfigError(f"{COMMAND_ENV} must be a JSON array of non-empty "
                                     "strings")
        return tuple(value)
    try:
        words = shlex.split(raw)
    except ValueError as exc:
        raise CommandConfigError(f"{COMMAND_ENV} cannot be split into words: {exc}") from None
    return tuple(words)


def startup(worker: WorkerContext) -> None:
    worker.state[STATE_KEY] = command_settings(os.environ)


@dataclass
class _Outcome:
    """What the command's stdout said."""

    result: Any = None
    has_result: bool = False
    error: str | None = None
    retry: bool = True


async def run(payload: Any, ctx: TaskContext) -> Any:
    settings: CommandSettings = ctx.state[STATE_KEY]
    scratch = tempfile.mkdtemp(prefix="agentpool-run-")
    try:
        env = {**_inherited(os.environ), "AGENTPOOL_TASK_ID": ctx.task_id,
               "AGENTPOOL_TASK_ATTEMPT": str(ctx.attempt),
               "AGENTPOOL_TASK_MAX_ATTEMPTS": str(ctx.max_attempts),
               "AGENTPOOL_QUEUE": ctx.queue, "AGENTPOOL_TASK_DIR": scratch, "TMPDIR": scratch}
        if not settings.home_writable:
            env["HOME"] = scratch
        if ctx.checkpoint_state is not None:
            env["AGENTPOOL_CHECKPOINT_FILE"] = _write_checkpoint(scratch, ctx.checkpoint_state)
        command = await _Command.start(settings.argv, env)
        try:
            return await _converse(command, payload, ctx)
        finally:
            await command.stop(settings.grace_seconds)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)


def _inherited(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment less its own settings: the Redis URL carries the queue's
    password, which a program (maybe an agent running tools an LLM chose) has no use for."""
    return {name: value for name, value in environ.items() if not name.startswith("AGENTPOOL_")}


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Tells when the process exits. ``Process.wait()`` also waits for its pipes to close,
    which a process the command left behind can hold open for ever."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit, loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


@dataclass
class _Command:
    """A started command: its process (leader of a process group of its own) and pipes."""

    process: asyncio.subprocess.Process
    transport: asyncio.SubprocessTransport
    exited: asyncio.Event

    @classmethod
    async def start(cls, argv: tuple[str, ...], env: dict[str, str]) -> _Command:
        loop = asyncio.get_running_loop()
        pipe = asyncio.subprocess.PIPE
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitProtocol(MAX_LINE_BYTES, loop), *argv, stdin=pipe, stdout=pipe,
            stderr=pipe, env=env, start_new_session=True)
        return cls(asyncio.subprocess.Process(transport, protocol, loop), transport,
                   protocol.exited)

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


async def _converse(command: _Command, payload: Any, ctx: TaskContext) -> Any:
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
        # A process that left the group (setsid) may still hold them: read what is there.
        done, _ = await asyncio.wait((reading, logging), timeout=PIPE_DRAIN_SECONDS)
        if reading in done:
            reading.result()
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    if outcome.error is not None:
        if outcome.retry:
            raise RuntimeError(outcome.error)
        raise PermanentError(outcome.error)
    if status != 0:
        why = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        tail = "\n".join(errors)
        raise RuntimeError(f"command {why}" + (f": {tail}" if tail else ""))
    if outcome.has_result:
        return outcome.result
    return "".join(output)[-MAX_OUTPUT_CHARS:] if output else None


async def _feed(stdin: asyncio.StreamWriter, payload: Any) -> None:
    with contextlib.suppress(ConnectionError):  # a command that never reads its input
        stdin.write(json.dumps(payload, ensure_ascii=False).encode() + b"\n")
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


async def _log_stderr(stderr: asyncio.StreamReader, task_id: str, errors: deque[str]) -> None:
    while True:
        try:
            raw = await stderr.readline()
        except ValueError:  # one line over the limit: skip what the buffer holds
            continue
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip("\n")
        errors.append(line)
        _log.info("task stderr", task=task_id, line=line)


async def _read_stdout(stdout: asyncio.StreamReader, ctx: TaskContext, outcome: _Outcome,
                       output: deque[str]) -> None:
    """Read the messages into `outcome` and the rest into `output`, until end of file."""
    kept = 0
    number = 0
    while True:
        try:
            raw = await stdout.readline()
        except ValueError:
            raise PermanentError(f"a line of the command's output is over "
                                 f"{MAX_LINE_BYTES} bytes") from None
        if not raw:
            return
        number += 1
        text = raw.decode(errors="replace")
        message = _message(text)
        if message is None:
            output.append(text)
            kept += len(text)
            while kept > MAX_OUTPUT_CHARS and len(output) > 1:
                kept -= len(output.popleft())
            continue
        try:
            await _act(message, outcome, ctx)
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"the command's output line {number}: {exc}") from None


def _message(text: str) -> dict[str, Any] | None:
    """The line as a message, or None when it is output."""
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and value.keys() & {"result", "event", "progress",
                                                   "checkpoint", "error"}:
        return value
    return None


async def _act(message: dict[str, Any], outcome: _Outcome, ctx: TaskContext) -> None:
    if "result" in message:
        outcome.result, outcome.has_result = message["result"], True
    elif "event" in message:
        kind = message["event"]
        if not isinstance(kind, str):
            raise TypeError('"event" must be a string, the event\'s kind')
        await ctx.emit(kind, message.get("data"))
    elif "progress" in message:
        fraction, text = message["progress"], message.get("message")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError('"progress" must be a number between 0 and 1')
        if text is not None and not isinstance(text, str):
            raise TypeError('"message" must be a string')
        await ctx.progress(float(fraction), text)
    elif "checkpoint" in message:
        await ctx.checkpoint(message["checkpoint"])
    else:
        error, retry = message["error"], message.get("retry", True)
        if not isinstance(error, str) or not isinstance(retry, bool):
            raise TypeError('"error" must be a string and "retry" true or false')
        outcome.error, outcome.retry = error, retry


def _write_checkpoint(directory: str, state: Any) -> str:
    path = os.path.join(directory, "checkpoint.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(state, file, ensure_ascii=False)
    return path
