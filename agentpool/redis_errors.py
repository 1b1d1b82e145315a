"""Redis failures in one line a person can act on, shared by the CLI, the worker and the operator.

redis-py passes on the server's own wording, which for a missing password is a paragraph about
``HELLO AUTH`` and for a wrong one names neither the server nor what to change. The functions
here say which Redis (its URL without the password), what is wrong and where to fix it.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import redis.exceptions

from agentpool.urls import host_port, redact_url

TRANSIENT_REFUSALS = (
    redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError, redis.exceptions.MasterDownError,
    redis.exceptions.BusyLoadingError)
"""Refusals that pass by themselves: a failover under way, a server loading its data."""

URL_WITH_PASSWORD = "redis://:PASSWORD@host:port/db"
DEFAULT_PASSWORD_PLACE = f"the Redis URL ({URL_WITH_PASSWORD})"
POOL_PASSWORD_PLACE = ("the pool's Redis URL: spec.redis.url, or the Secret named by "
                       "spec.redis.urlSecretRef")
"""Without the URL form: status messages mask anything that looks like a URL with a password."""

REDIS_FAILURES = (
    redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError, TimeoutError)
"""What a call to Redis raises when Redis is down, unreachable or refusing: a loop that meets
one retries. redis-py's cluster client raises RedisClusterException, not a RedisError, when
no node answers."""

_CONNECT_ERROR = re.compile(r"^Error (-?\d+) connecting to \S+\.\s+(.*)$", re.S)


class AuthProblem(enum.Enum):
    PASSWORD_REQUIRED = "password required"
    PASSWORD_REFUSED = "password refused"
    OTHER = "other"


def auth_problem(exc: BaseException) -> AuthProblem | None:
    """What kind of authentication failure `exc` is; None when it is none."""
    if not isinstance(exc, redis.exceptions.AuthenticationError):
        return None
    text = str(exc)
    code = getattr(exc, "status_code", None)
    if code == "NOAUTH" or text.startswith(("HELLO must be called", "Authentication required")):
        return AuthProblem.PASSWORD_REQUIRED
    if code == "WRONGPASS" or "invalid username-password pair" in text \
            or text.startswith("invalid password"):
        return AuthProblem.PASSWORD_REFUSED
    return AuthProblem.OTHER


REDIS_FULL = ("Redis is full (used memory reached maxmemory): it refuses new tasks and new "
              "runs until memory is freed (results expire, dead letters purged) or maxmemory "
              "is raised")
"""What a refusal for memory means here (see run_when_full in common.lua): what a person can
do about it, instead of Redis's wording, which names the script that was refused."""


TASK_NOT_STORED = "Redis is full (maxmemory): the task was not stored"
TASKS_NOT_STORED = "Redis is full (maxmemory): the tasks were not stored"


class RedisFull(redis.exceptions.OutOfMemoryError):
    """A submit Redis refused for being full (maxmemory reached), in a line that names no
    script (Redis's own wording names the refused script and the line of it). It is redis-py's
    OutOfMemoryError, and so a ResponseError, whichever Redis refused: what callers caught
    before still catches it. `submitted`: the ids of the tasks a ``submit_many`` in several
    chunks stored before the refused chunk (as TaskNotFound's)."""

    def __init__(self, message: str = TASK_NOT_STORED, submitted: list[str] | None = None
                 ) -> None:
        super().__init__(message)
        self.submitted = submitted or []


def redis_full(exc: BaseException) -> bool:
    """Whether Redis refused a write for being full (maxmemory reached): redis-py's
    OutOfMemoryError, or on Redis 6 the error of a script refused there, which wraps Redis's
    own reply (``ERR Error running script ...: -OOM command not allowed ...``)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError)
        and "OOM command not allowed" in str(exc))


def error_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_redis_error(exc: BaseException) -> str:
    """The reason in a redis-py error, without its boilerplate (``Error 111 connecting to``)."""
    if redis_full(exc):
        return REDIS_FULL
    text = str(exc).strip()
    match = _CONNECT_ERROR.match(text)
    if match:
        errno = int(match[1])
        if errno > 0:
            return os.strerror(errno)
        return match[2].rstrip(".") or text
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError) and not text:
        return "timed out"
    asked_sentinels = _NO_PRIMARY.match(text)
    if asked_sentinels is not None:
        addresses = dict.fromkeys(a for _, _, a in _reprs(text) if not a.startswith("<"))
        return sentinel_failure(asked_sentinels[1], list(addresses), text)
    return " ".join(without_object_reprs(text).rstrip(".").split()) or type(exc).__name__


_NO_PRIMARY = re.compile(r"^No master found for '([^']*)'")
"""redis-py's MasterNotFoundError, which names each sentinel it asked by its client's repr."""


def _has_user(url: str | None) -> bool:
    try:
        return bool(url and urlsplit(url).username)
    except ValueError:
        return False


def auth_failure(exc: BaseException, *, url: str | None = None,
                 password_place: str = DEFAULT_PASSWORD_PLACE) -> str | None:
    """One line for an authentication failure, None when `exc` is not one.

    `url` (shown without its password) names the server; `password_place` says where the
    reader puts a password (a CLI option, an environment variable, a Secret) and how.
    """
    problem = auth_problem(exc)
    if problem is None:
        return None
    where = f"Redis at {redact_url(url)}" if url else "Redis"
    credentials = "user name and password" if _has_user(url) else "password"
    if problem is AuthProblem.PASSWORD_REQUIRED:
        return f"{where} requires a password: put it in {password_place}"
    if problem is AuthProblem.PASSWORD_REFUSED:
        return f"{where} refused the {credentials}"
    return f"{where} refused the {credentials}: {describe_redis_error(exc)}"


def redis_failure(url: str | None, exc: BaseException, *,
                  password_place: str = DEFAULT_PASSWORD_PLACE) -> str:
    """One line for any failed Redis request: authentication, reachability or an error reply."""
    auth = auth_failure(exc, url=url, password_place=password_place)
    if auth is not None:
        return auth
    where = f"Redis at {redact_url(url)}" if url else "Redis"
    if redis_full(exc):
        return f"{where}: {REDIS_FULL}"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"{where} refused a command to this user: {describe_redis_error(exc)}"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                  | ConnectionError | TimeoutError):
        return f"cannot reach {where}: {describe_redis_error(exc)}"
    return f"{where} answered with an error: {describe_redis_error(exc)}"


_REPR_START = re.compile(r"<(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*[( ]")
"""Where an object's repr begins: ``<redis.asyncio.client.Redis(...)>``."""
_REPR_HOST = re.compile(r"\bhost=([^,()<>\s]+)")
_REPR_PORT = re.compile(r"\bport=(\d+)")


def without_object_reprs(text: str) -> str:
    """`text` with each object's repr in it (redis-py's errors quote whole clients, a
    kilobyte each) cut to the address it names (``host:port``), or to its class's name."""
    shown: list[str] = []
    start = 0
    for begin, end, shown_as in _reprs(text):
        shown += [text[start:begin], shown_as]
        start = end
    return "".join(shown) + text[start:]


def _reprs(text: str) -> list[tuple[int, int, str]]:
    """Where each outermost object's repr in `text` begins and ends, and what it names: its
    address (``host:port``), else its class (``<Retry>``)."""
    found: list[tuple[int, int, str]] = []
    start = 0
    while (opening := _REPR_START.search(text, start)) is not None:
        end = _repr_end(text, opening.start())
        inner = text[opening.start():end]
        host, port = _REPR_HOST.search(inner), _REPR_PORT.search(inner)
        name = opening.group(0)[1:-1].rpartition(".")[2]
        found.append((opening.start(), end,
                      host_port(host[1], int(port[1])) if host and port else f"<{name}>"))
        start = end
    return found


def _repr_end(text: str, begin: int) -> int:
    """Where the repr that opens at `begin` ends: after its matching '>' (the end of the text
    when there is none: cut off)."""
    depth = 0
    for index in range(begin, len(text)):
        if text[index] == "<":
            depth += 1
        elif text[index] == ">" and text[index - 1] != "-":  # not an arrow in the text
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


_SENTINEL_CAUSE = re.compile(
    r"^(?:\w+:)?\w+\((['\"])(?P<quoted>.*)\1\)$|^(?:\w+:)?\w+: (?P<text>.*)$", re.S)
"""How redis-py quotes the error a sentinel gave: ``ConnectionError('...')``, or in 8.x
``network:ConnectionError: ...`` (its category, its class, its text)."""
_CONNECT_FAILED = re.compile(r"^Error (\d+) connecting to (\S+?)\.(?:\s|$)")


def sentinel_failure(service: str, sentinels: Sequence[str], error: str) -> str:
    """What a ``MasterNotFoundError`` (its text: `error`) means, in one line: which primary
    was asked for, of which sentinels (host:port), and the last error one of them gave.
    redis-py's own text names each sentinel by its client's whole repr, a kilobyte each,
    followed by `` - `` and that sentinel's error."""
    asked = f"asked {', '.join(sentinels)}" if sentinels else "asked every sentinel"
    reprs = _reprs(error)
    if not reprs:
        return (f"no sentinel named a primary for {service!r} that is up ({asked}; they "
                f"answered: is {service!r} the name they monitor?)")
    cause = _sentinel_cause(error[reprs[-1][1]:].removeprefix(" - "))
    return f"no sentinel named a primary for {service!r} ({asked}); last error: {cause}"


def _sentinel_cause(text: str) -> str:
    quoted = _SENTINEL_CAUSE.match(text.strip())
    if quoted is not None:
        text = quoted["quoted"] if quoted["quoted"] is not None else quoted["text"]
    text = " ".join(without_object_reprs(text).split()).rstrip(".")
    failed = _CONNECT_FAILED.match(text)
    if failed is not None and int(failed[1]) > 0:
        return f"Error {failed[1]} connecting to {failed[2]}: {os.strerror(int(failed[1]))}"
    return text
