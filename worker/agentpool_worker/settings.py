"""Worker configuration from the environment (prefix ``AGENTPOOL_``), checked at start.

The operator sets these from the pool spec. A bad value stops the worker before it touches
Redis, with one line that names the variable, what it must be and what it got.

The rules are a table of plain converters rather than a pydantic-settings model, so that the
worker imports nothing of pydantic: importing pydantic-settings took about 0.1 s and 10 MB of
the worker's start-up here, and a worker's start-up is part of how fast a pool reacts to a
burst (bench/README.md, "Idle fleet and start-up").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shlex
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agentpool import urls
from agentpool.connection import RedisURLError, check_redis_url
from agentpool.durability import DEFAULT_REPLICA_TIMEOUT, Durability
from agentpool.protocol import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_TASK_TIMEOUT_SECONDS,
    MAX_ATTEMPTS_LIMIT,
    MAX_RESULT_BYTES_LIMIT,
    MAX_TASK_TIMEOUT_SECONDS,
    QUEUE_NAME,
)
from agentpool.ratelimit import LimitConfig, RateLimitError, decode_limits
from agentpool.urls import URL_PREFIXES

ENV_PREFIX = "AGENTPOOL_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error", "critical")


DEFAULT_LEASE_SECONDS = 7.0
"""A worker that dies unseen (its node lost, a partition) holds its tasks at most this long after
its last heartbeat; with the operator's reaper every 2 s they are claimable again within 10 s.
Heartbeats every lease/3 keep a live worker's leases; fencing keeps a late zombie's writes out."""


COMMAND_HANDLER = "agentpool_worker.command:run"
"""The built-in handler that runs ``AGENTPOOL_TASK_COMMAND`` for each task."""
DEFAULT_GRACE_SECONDS = 5.0
MAX_GRACE_SECONDS = 10.0
"""Below the 15 s the pod's termination grace adds to drainSeconds, so that a command stopped
at the end of a drain is gone before the container is killed."""


class ConfigError(Exception):
    """A configuration problem, already phrased for a person."""


class SettingError(ValueError):
    """A value its rule refuses, with a message that says what is wrong with it: the error
    line is the variable's name followed by the message."""


def redact_url(url: str) -> str:
    """:func:`agentpool.urls.redact_url`, with an empty user name left out
    (``redis://***@host`` rather than ``redis://:***@host``)."""
    return urls.redact_url(url).replace(f"://:{urls.MASK}@", f"://{urls.MASK}@", 1)


Convert = Callable[[Any], Any]
"""Turns a value from the environment (or a typed one) into the setting, or raises ValueError."""


def _integer(low: int, high: int) -> Convert:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(value)
        number = int(value.strip()) if isinstance(value, str) else value
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not isinstance(number, int) or not low <= number <= high:
            raise ValueError(value)
        return number
    return convert


def seconds(low: float, high: float, *, above: bool = False) -> Convert:
    """A finite number within [low, high], or (low, high] when ``above``."""
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(value)
        number = float(value)
        if not math.isfinite(number) or number > high or number < low or (
                above and number == low):
            raise ValueError(value)
        return number
    return convert


def _text(valid: Callable[[str], bool]) -> Convert:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not valid(value):
            raise ValueError(value)
        return value
    return convert


def _one_of(make: Callable[[str], Any], names: tuple[str, ...]) -> Convert:
    def convert(value: Any) -> Any:
        name = value.strip().lower() if isinstance(value, str) else value
        if name not in names:
            raise ValueError(value)
        return make(name)
    return convert


def _handler_name(value: str) -> bool:
    module, sep, func = value.partition(":")
    return bool(sep and module and func.isidentifier())


def _process_name() -> str:
    """The pod name outside Kubernetes: one per process on a host. A worker returns at start
    what earlier instances of its pod held, so processes sharing a host name must not share
    a pod name; a container's restart keeps its host name and, under the same entrypoint,
    its process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _pod_name(value: str) -> bool:
    return 0 < len(value) <= 253 and not any(c == ":" or c.isspace() for c in value)


def _redis_url(url: str) -> bool:
    if not url.startswith((*URL_PREFIXES, "unix://")):
        return False
    check_redis_url(url)
    return True


def _queue_list(value: str) -> bool:
    return all(QUEUE_NAME.match(name) for name in queue_list(value))


def queue_list(value: str) -> tuple[str, ...]:
    """``AGENTPOOL_SUBMITS_TO``: queue names, comma-separated (spaces around them ignored)."""
    return tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))


RATE_LIMITS_RULE = ("a JSON list of rate limits ({name, requestsPerMinute, tokensPerMinute, "
                    "burstSeconds, maxConcurrent}), as the operator sets it from "
                    "spec.rateLimits")


def _rate_limits(value: str) -> bool:
    try:
        decode_limits(value)
    except RateLimitError as error:
        raise SettingError(f"must be {RATE_LIMITS_RULE}: {error}") from None
    return True


def task_argv(value: str) -> tuple[str, ...]:
    """``AGENTPOOL_TASK_COMMAND`` as the words of a program's command line (none when empty):
    a JSON array of non-empty strings, or a line split into words the way a shell splits them
    (no shell runs it). The one parser of the setting; SettingError when it cannot be read."""
    raw = value.strip()
    if not raw:
        return ()
    if raw.startswith("["):
        try:
            words = json.loads(raw)
        except ValueError as exc:
            raise SettingError(f"is not a JSON array: {exc}") from None
        if not words or not all(isinstance(word, str) and word for word in words):
            raise SettingError("must be a JSON array of non-empty strings")
        return tuple(words)
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise SettingError(f"cannot be split into words: {exc}") from None


def _task_command(value: str) -> bool:
    task_argv(value)
    return True


def task_program(command: str) -> tuple[str, ...]:
    """The words of ``AGENTPOOL_TASK_COMMAND`` as the command handler needs them: given, and
    naming an executable that exists and can start (`program_problem`) now, not at the first
    task. ConfigError otherwise."""
    name = _variable("task_command")
    try:
        argv = task_argv(command)
    except SettingError as error:
        raise ConfigError(f"{name} {error}") from None
    if not argv:
        raise ConfigError(f"{name} must name the command each task runs, "
                          f'e.g. ["node", "/app/agent.js"] (handler {COMMAND_HANDLER})')
    path = shutil.which(argv[0])
    if path is None:
        what = "an executable file" if os.sep in argv[0] else "an executable found on PATH"
        raise ConfigError(f"{name}: {argv[0]!r} is not {what}")
    problem = program_problem(path)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return argv


ELF_MAGIC = b"\x7fELF"
ELF_PROGRAMS = (2, 3)
"""The ELF file types Linux runs: an executable, a position-independent one (or a shared
library that runs, as the C library does). An object file or a core dump does not."""
ELF_MACHINES = {3: "x86 (32-bit)", 8: "MIPS", 20: "PowerPC", 21: "PowerPC 64", 22: "s390",
                40: "ARM (32-bit)", 62: "x86-64 (amd64)", 183: "AArch64 (arm64)",
                243: "RISC-V", 258: "LoongArch"}
ALSO_RUNS = {62: {3}, 183: {40}}
"""Machines whose kernels commonly run another's binaries too: x86-64 runs x86, AArch64 (most
of it) 32-bit ARM."""
UTF8_BOM = b"\xef\xbb\xbf"


def program_problem(path: str, *, machine: bool = False) -> str:
    """Why the executable file at `path` cannot start ("" when nothing that can be seen is
    wrong, or it cannot be read): a script whose ``#!`` interpreter cannot run
    (`interpreter_problem`); a file that is neither a ``#!`` script nor an ELF program, which
    Linux refuses on every run (``Exec format error``). With `machine` (once Linux refused
    it), also an ELF program for another machine than the worker's: not at start, where a
    kernel that runs other machines' binaries too (a 32-bit image on a 64-bit kernel,
    binfmt_misc and qemu) would be refused a program it runs."""
    try:
        with open(path, "rb") as file:
            start = file.read(20)
    except OSError:
        return ""
    if start.startswith(b"#!"):
        return interpreter_problem(path)
    if start.startswith(UTF8_BOM + b"#!"):
        return (f"{path} begins with a byte-order mark before its #! line, which Linux cannot "
                f"run: save it as UTF-8 without a BOM")
    if not start.startswith(ELF_MAGIC):
        return (f"{path} is neither a binary nor a script with a #! line, which Linux cannot "
                f"run: begin it with one (#!/bin/sh, #!/usr/bin/env python3)")
    if len(start) < 20 or _elf_field(start, 16) not in ELF_PROGRAMS:
        return f"{path} is an ELF file but no program Linux can run (an object file?)"
    if not machine:
        return ""
    elf_machine, own = _elf_field(start, 18), _own_machine()
    if own is None or elf_machine == own or elf_machine in ALSO_RUNS.get(own, ()):
        return ""
    return (f"{path} is a binary for {_machine_name(elf_machine)}, which this machine "
            f"({_machine_name(own)}) cannot run: build it, or take the image, for "
            f"{_machine_name(own)}")


def _elf_field(header: bytes, offset: int) -> int:
    """A 16-bit field of an ELF header, in the file's byte order."""
    return int.from_bytes(header[offset:offset + 2], "big" if header[5] == 2 else "little")


@functools.cache
def _own_machine() -> int | None:
    """The ELF machine of the worker's own interpreter (None when it cannot be told)."""
    try:
        with open(os.path.realpath(sys.executable), "rb") as file:
            header = file.read(20)
    except OSError:
        return None
    return _elf_field(header, 18) if header.startswith(ELF_MAGIC) and len(header) == 20 \
        else None


def _machine_name(machine: int) -> str:
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")


SHEBANG_BYTES = 4096
"""How much of a script's first line is read for its ``#!`` line (Linux reads 256 bytes)."""


def interpreter_problem(path: str) -> str:
    """Why the script at `path` cannot start, by the interpreter its ``#!`` line names ("" when
    nothing is wrong that can be seen, or it is no script, or it cannot be read): the file
    exists, so the ``No such file or directory`` its start fails with would mislead.
    ``#!/usr/bin/env prog`` names ``prog``, looked for on PATH (after env's options and
    ``NAME=value`` words, as `env_program` tells)."""
    try:
        with open(path, "rb") as file:
            first = file.readline(SHEBANG_BYTES)
    except OSError:
        return ""
    if not first.startswith(b"#!"):
        return ""
    line = first[2:].rstrip(b"\n")
    if line.endswith(b"\r"):
        return (f"the #! line of {path} ends with a carriage return: the script has Windows "
                f"line endings (convert it: dos2unix, or sed -i 's/\\r$//')")
    # Linux: the interpreter ends at a blank; the rest of the line is one argument
    interpreter, *rest = re.split(r"[ \t]+", line.decode(errors="replace").strip(" \t"),
                                   maxsplit=1)
    if not interpreter:
        return f"the #! line of {path} names no interpreter"
    if not os.path.exists(interpreter):
        return f"the #! line of {path} names {interpreter!r}, which does not exist"
    if not os.path.isfile(interpreter) or not os.access(interpreter, os.X_OK):
        return f"the #! line of {path} names {interpreter!r}, which is not an executable file"
    if os.path.basename(interpreter) == "env":
        run = env_program(rest[0] if rest else "")
        if run is not None and shutil.which(run[0], path=run[1]) is None:
            return (f"the #! line of {path} runs {run[0]!r} (through {interpreter}), which is "
                    f"not an executable found on PATH")
    return ""


ENV_SHORT_OPTIONS = {"i": False, "0": False, "v": False, "u": True, "C": True, "S": True}
"""GNU env's short options (coreutils 9), and whether each takes a value."""
ENV_LONG_OPTIONS: dict[str, str | None] = {
    "ignore-environment": "i", "null": "0", "debug": "v", "unset": "u", "chdir": "C",
    "split-string": "S", "block-signal": "", "default-signal": "", "ignore-signal": "",
    "list-signal-handling": "", "help": None, "version": None,
}
"""GNU env's long options, as their short one ("": none, with no value or an optional
``=value``; None: env exits without running anything)."""


def env_program(argument: str) -> tuple[str, str | None] | None:
    """The program ``#!/usr/bin/env <argument>`` runs with the PATH it is looked for on (None:
    the worker's), or None when that is not sure. Linux hands env the rest of the ``#!`` line
    as one argument, in which env takes options (their values too: ``-u NAME``, ``-C DIR``,
    ``--unset=NAME``) and ``-S`` splits the rest into words, as GNU env does; then come
    ``NAME=value`` words, then the program. Not sure: env refuses an option (``-i python3`` as
    one word: ``invalid option -- ' '``), no program follows (``-C /tmp python3`` as one word:
    env runs the script itself), ``-S`` holds what env splits otherwise than a shell (``$``,
    ``\\``, ``#``), PATH is unset (``-i``, ``-u PATH``: the C library's default path); env's own
    error says why at run time. An argument with no option is taken by its first word (env
    looks for all of it)."""
    words = [argument] if argument else []
    index = 0
    chdir = path_unset = False
    while index < len(words) and words[index].startswith("-"):
        word = words[index]
        index += 1
        if word == "--":
            break
        option = _env_option(word)
        if option is None:
            return None
        clears, letter, value = option
        path_unset = path_unset or clears
        if not letter:
            continue
        if value is None:
            if index == len(words):
                return None
            value = words[index]
            index += 1
        if letter == "C":
            chdir = True
        elif letter == "u":
            path_unset = path_unset or value == "PATH"
        elif any(character in value for character in "$\\#"):  # -S
            return None
        else:
            try:
                words[index:index] = shlex.split(value)
            except ValueError:
                return None
    search: str | None = None
    while index < len(words) and "=" in words[index]:
        name, _, value = words[index].partition("=")
        if name == "PATH":
            search = value
        index += 1
    if index == len(words):
        return None
    program = words[index] if index else words[index].split()[0]
    if os.sep in program:
        return None if chdir and not os.path.isabs(program) else (program, None)
    if search == "" or (search is None and path_unset):
        return None
    return program, search


def _env_option(word: str) -> tuple[bool, str, str | None] | None:
    """An env option word (``-iu NAME``, ``--chdir=DIR``): whether it clears the environment,
    the option in it that takes a value ("" when none does) and that value when the word
    holds it; None when env refuses the word or stops at it (``--help``)."""
    if word.startswith("--"):
        name, equals, given = word[2:].partition("=")
        matches = [name] if name in ENV_LONG_OPTIONS else [
            option for option in ENV_LONG_OPTIONS if option.startswith(name)]
        if len(matches) != 1:
            return None
        letter = ENV_LONG_OPTIONS[matches[0]]
        if letter is None:
            return None
        if letter and ENV_SHORT_OPTIONS[letter]:
            return False, letter, given if equals else None
        if equals and letter:  # a flag given a value
            return None
        return letter == "i", "", None
    clears = word == "-"  # "-" alone is -i
    for position, letter in enumerate(word[1:], start=2):
        if letter not in ENV_SHORT_OPTIONS:
            return None
        if ENV_SHORT_OPTIONS[letter]:
            return clears, letter, word[position:] or None
        clears = clears or letter == "i"
    return clears, "", None


def _setting(rule: str, convert: Convert, default: Any = dataclasses.MISSING, *,
             default_factory: Any = dataclasses.MISSING, shown: str = "") -> Any:
    """A field with its rule: ``rule`` is what the error line says the value must be (and
    ``--help`` what the variable takes); ``shown`` is how ``--help`` shows the default when
    the default itself does not say it."""
    return field(default=default, default_factory=default_factory,
                 metadata={"rule": rule, "convert": convert, "shown": shown})


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Every knob of a worker process. Values are converted and checked on construction."""

    redis_url: str = _setting(
        f"a {', '.join(URL_PREFIXES)} or unix:// URL",
        _text(_redis_url))
    queue: str = _setting(
        "a queue name of 1-100 letters, digits, '.', '_' or '-'",
        _text(lambda name: QUEUE_NAME.match(name) is not None), "default")
    handler: str = _setting("a handler named as package.module:function", _text(_handler_name))
    concurrency: int = _setting("an integer between 1 and 1000", _integer(1, 1000), 4)
    task_timeout_seconds: float = _setting(
        "a number of seconds above 0 (at most a week)",
        seconds(0, MAX_TASK_TIMEOUT_SECONDS, above=True), float(DEFAULT_TASK_TIMEOUT_SECONDS))
    max_attempts: int = _setting(f"an integer between 1 and {MAX_ATTEMPTS_LIMIT}",
                                 _integer(1, MAX_ATTEMPTS_LIMIT), 3)
    drain_seconds: float = _setting(
        "a number of seconds between 0 and 604800 (a week, the longest task timeout)",
        seconds(0, MAX_TASK_TIMEOUT_SECONDS), 60.0)
    pod_name: str = _setting("a pod name without ':' or spaces", _text(_pod_name),
                             default_factory=_process_name, shown="<host name>-<process id>")
    pod_namespace: str = _setting("a namespace name", _text(lambda _: True), "")
    port: int = _setting(
        "a TCP port between 1 and 65535 (0 turns the HTTP server off)", _integer(0, 65535), 8080)
    log_level: LogLevel = _setting(
        "one of debug, info, warning, error, critical", _one_of(str, LOG_LEVELS), "info")
    lease_seconds: float = _setting(
        "a number of seconds between 0.3 and 3600", seconds(0.3, 3600), DEFAULT_LEASE_SECONDS)
    claim_batch: int = _setting("an integer between 1 and 1000", _integer(1, 1000), 100)
    claim_linger_seconds: float = _setting(
        "a number of seconds between 0 and 0.1", seconds(0, 0.1), 0.002)
    poll_seconds: float = _setting(
        "a number of seconds above 0 (at most 60)", seconds(0, 60, above=True), 1.0)
    retry_backoff_base_seconds: float = _setting(
        "a number of seconds above 0 (at most 3600)", seconds(0, 3600, above=True), 1.0)
    retry_backoff_cap_seconds: float = _setting(
        "a number of seconds above 0 (at most 86400)", seconds(0, 86400, above=True), 300.0)
    result_ttl_seconds: int = _setting(
        "a whole number of seconds of at least 1", _integer(1, 365 * 86400), 86400)
    max_result_bytes: int = _setting(
        f"a number of bytes between 1024 and {MAX_RESULT_BYTES_LIMIT} (512 MiB)",
        _integer(1024, MAX_RESULT_BYTES_LIMIT), DEFAULT_MAX_RESULT_BYTES)
    """A larger result is not stored: the run fails for good with the reason (dead letters
    keep its payload, to run again once the handler or this limit changed)."""
    redis_timeout_seconds: float = _setting(
        "a number of seconds above 0 (at most 300)", seconds(0, 300, above=True), 5.0)
    durability: Durability = _setting(
        "one of none, replicated (completions wait for a replica)",
        _one_of(Durability, tuple(Durability)), Durability.NONE)
    loop_stall_seconds: float = _setting(
        "a number of seconds above 0 (at most 3600)", seconds(0, 3600, above=True), 10.0)
    stuck_restart_seconds: float = _setting(
        "a number of seconds between 0 and 86400 (0: never restart a stuck worker)",
        seconds(0, 86400), 300.0)
    """How long every slot may be held by stopped runs whose threads have not returned, or a
    sync ``ready`` check stay hung while no run is in progress, before ``/livez`` fails so
    that the kubelet restarts the container (probes.py)."""
    rate_limits: str = _setting(RATE_LIMITS_RULE, _text(_rate_limits), "")
    submits_to: str = _setting(
        "queue names, comma-separated: the other queues handlers submit to (ctx.submit's "
        "queue=), as the operator sets it from spec.worker.submitsTo", _text(_queue_list), "")
    task_command: str = _setting(
        "the program each task runs: a JSON array of strings, or a command line split into "
        "words as a shell would", _text(_task_command), "",
        shown=f"required with handler {COMMAND_HANDLER}")
    """Read with :func:`task_argv`; checked for the command handler (given, and found) by
    :func:`load_settings` and by the handler's ``startup`` hook."""
    task_command_grace_seconds: float = _setting(
        f"a number of seconds between 0 and {MAX_GRACE_SECONDS:g} (how long a stopped command "
        "has between SIGTERM and SIGKILL)",
        seconds(0, MAX_GRACE_SECONDS), DEFAULT_GRACE_SECONDS)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for setting in dataclasses.fields(self):
            try:
                value = _convert(setting, getattr(self, setting.name))
            except ConfigError as error:
                problems.append(str(error))
            else:
                object.__setattr__(self, setting.name, value)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def runs_commands(self) -> bool:
        """The handler is the command handler, which runs ``task_command`` for each task."""
        return self.handler == COMMAND_HANDLER

    @property
    def other_queues(self) -> tuple[str, ...]:
        """The queues of ``submits_to``, besides the pool's own."""
        return tuple(name for name in queue_list(self.submits_to) if name != self.queue)

    @property
    def limits(self) -> dict[str, LimitConfig]:
        return decode_limits(self.rate_limits)

    @property
    def heartbeat_seconds(self) -> float:
        """Three heartbeats per lease: one lost beat never costs a lease."""
        return self.lease_seconds / 3

    @property
    def heartbeat_stall_seconds(self) -> float:
        """No heartbeat attempt finished for this long: the heartbeat is stuck (liveness). An
        attempt against a frozen Redis ends after two timeouts (the call and its one retry on a
        new connection), a heartbeat interval after the last: lease + Redis timeout alone left
        a few hundred milliseconds and failed probes now and then."""
        return self.lease_seconds + 2 * self.redis_timeout_seconds

    @property
    def replica_timeout_seconds(self) -> float:
        """How long a replicated completion waits for a replica: within the Redis timeout."""
        return min(DEFAULT_REPLICA_TIMEOUT, self.redis_timeout_seconds / 2)

    @property
    def safe_redis_url(self) -> str:
        return redact_url(self.redis_url)


def _variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


def env_name(setting: str) -> str:
    """The environment variable of a setting (``task_command``: ``AGENTPOOL_TASK_COMMAND``)."""
    return _variable(setting)


def _convert(setting: dataclasses.Field[Any], value: Any) -> Any:
    """The setting's value converted and checked by its rule; ConfigError naming it."""
    try:
        return setting.metadata["convert"](value)
    except (RedisURLError, SettingError) as error:
        separator = ": " if isinstance(error, RedisURLError) else " "
        raise ConfigError(f"{_variable(setting.name)}{separator}{error}") from None
    except (ValueError, TypeError):
        if setting.name == "redis_url" and isinstance(value, str):
            value = redact_url(value)
        raise ConfigError(f"{_variable(setting.name)} must be {setting.metadata['rule']}, "
                          f"got {value!r}") from None


_FIELDS = {setting.name: setting for setting in dataclasses.fields(WorkerSettings)}


def read_setting(name: str, environ: Mapping[str, str]) -> Any:
    """One setting from `environ` (its variable in any case), or its default, checked by its
    rule as :func:`load_settings` checks it; ConfigError on a bad or missing value."""
    setting = _FIELDS[name]
    found = {key.upper(): value for key, value in environ.items()}
    if _variable(name) in found:
        return _convert(setting, found[_variable(name)])
    if setting.default is not dataclasses.MISSING:
        return setting.default
    if setting.default_factory is not dataclasses.MISSING:
        return setting.default_factory()
    raise ConfigError(f"{_variable(name)} is required ({setting.metadata['rule']})")


@dataclass(frozen=True)
class Variable:
    """An environment variable the worker reads, as ``agentpool-worker --help`` lists it."""

    name: str
    default: str
    """How the default reads ("required" when there is none)."""
    rule: str


def variables() -> list[Variable]:
    """Every variable of :class:`WorkerSettings`, in its order, with its default and rule."""
    return [Variable(_variable(setting.name), _shown_default(setting), setting.metadata["rule"])
            for setting in dataclasses.fields(WorkerSettings)]


def _shown_default(setting: dataclasses.Field[Any]) -> str:
    if setting.metadata["shown"]:
        return str(setting.metadata["shown"])
    default = setting.default
    if default is dataclasses.MISSING:
        return "required"
    if isinstance(default, str):  # a StrEnum too
        return str(default) if default else "empty"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
    """Read the environment (variable names in any case; keyword arguments win) and check it;
    ConfigError on a bad or missing value. With the command handler, the command must be
    given and found too."""
    found = {name.upper(): value for name, value in (
        os.environ if environ is None else environ).items()}
    values: dict[str, Any] = {}
    missing: list[str] = []
    for setting in dataclasses.fields(WorkerSettings):
        if setting.name in overrides:
            values[setting.name] = overrides[setting.name]
        elif _variable(setting.name) in found:
            values[setting.name] = found[_variable(setting.name)]
        elif (setting.default is dataclasses.MISSING
              and setting.default_factory is dataclasses.MISSING):
            missing.append(f"{_variable(setting.name)} is required ({setting.metadata['rule']})")
    if missing:
        raise ConfigError("; ".join(missing))
    settings = WorkerSettings(**values)
    if settings.runs_commands:
        task_program(settings.task_command)
    return settings
