"""Plumbing shared by the `agentpool` subcommands: options, connection, output, exit codes.

Exit codes: 0 ok, 1 the operation failed (unknown task, a queue never used, timeout, Redis
unreachable or refusing the password), 2 usage error (bad arguments or input), 130
interrupted. Errors are one line on stderr; set ``AGENTPOOL_DEBUG=1`` to get the traceback
of an unexpected error instead.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import re
import select
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis.exceptions
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from agentpool import redis_errors
from agentpool.cli.terminal import printable
from agentpool.cli.views import Grid, to_table
from agentpool.client import ENV_REDIS_URL, Client, ClientConfigError
from agentpool.connection import RedisURLError, is_cluster_url, parse_cluster_url
from agentpool.data_loss import CAUSES, QueueReading, data_loss
from agentpool.protocol import (
    TASK_ID,
    ProtocolError,
    TaskNotFound,
    TaskQueue,
    known_queues,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141
"""What a shell reports for a command killed by SIGPIPE: its reader (`head`) went away."""
ENV_QUEUE = "AGENTPOOL_QUEUE"
CLI_CONNECT_TIMEOUT = 5.0
PIPE_WIDTH = 200
MAX_INTERVAL = 3600.0
CLI_CLIENT_NAME = "agentpool-cli"

T = TypeVar("T")
N = TypeVar("N", int, float)


class UsageError(Exception):
    """Bad arguments or input: exit 2."""


class CommandFailed(Exception):
    """The operation could not be done: exit 1."""


# -- options -------------------------------------------------------------------------------


def add_redis_option(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument(
        "--redis-url", metavar="URL", default=None,
        help=help_text or f"Redis holding the queue (default: ${ENV_REDIS_URL})",
    )


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    add_redis_option(parser)
    parser.add_argument(
        "-q", "--queue", metavar="NAME", default=None,
        help=f"queue name (default: ${ENV_QUEUE}); an AgentPool's queue is its name "
        "unless its spec says otherwise",
    )


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table",
        help="table for people (default), json for programs",
    )


def number(kind: Callable[[str], N], *, low: float | None = None, high: float | None = None,
           above: float | None = None, below: float | None = None) -> Callable[[str], N]:
    """An argparse type for a finite number within bounds: `low`/`high` are inclusive,
    `above`/`below` exclusive. NaN and infinity are refused, since every comparison with NaN
    is false and would let it through."""
    limits = []
    if low is not None:
        limits.append(f"at least {low:g}")
    if above is not None:
        limits.append(f"more than {above:g}")
    if high is not None:
        limits.append(f"at most {high:g}")
    if below is not None:
        limits.append(f"less than {below:g}")
    wanted = " and ".join(limits)

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if ((low is not None and value < low) or (high is not None and value > high)
                or (above is not None and value <= above)
                or (below is not None and value >= below)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return parse


def add_watch_options(parser: argparse.ArgumentParser, interval: float = 2.0) -> None:
    parser.add_argument(
        "-w", "--watch", action="store_true",
        help="refresh in place until Ctrl-C (with -o json: one JSON document per line)",
    )
    parser.add_argument(
        "--interval", type=number(float, above=0, high=MAX_INTERVAL), default=interval,
        metavar="SECONDS",
        help=f"seconds between refreshes with --watch (default {interval:g})",
    )


def redis_url(args: argparse.Namespace) -> str | None:
    url: str | None = getattr(args, "redis_url", None) or os.environ.get(ENV_REDIS_URL)
    return url


def queue_name(args: argparse.Namespace) -> str:
    name: str | None = getattr(args, "queue", None) or os.environ.get(ENV_QUEUE)
    if not name:
        raise UsageError(f"no queue: pass --queue or set {ENV_QUEUE}")
    return name


def task_id(text: str) -> str:
    """A task id as given on the command line, checked before anything else: an empty or cut
    id would otherwise read as an unknown task (or a missing queue)."""
    given = text.strip().lower()
    if not given:
        raise UsageError("empty task id: give the id that submit printed "
                         "(32 hexadecimal digits)")
    if not TASK_ID.match(given):
        raise UsageError(f"invalid task id {text!r}: a task id is 32 hexadecimal digits, "
                         "as submit prints it")
    return given


def connect(args: argparse.Namespace) -> Client:
    """The client of a queue verb; its connections are named so CLIENT LIST shows them."""
    url = redis_url(args)
    if not url:
        raise UsageError(f"no Redis URL: pass --redis-url or set {ENV_REDIS_URL}")
    return Client.from_url(url, connect_timeout=CLI_CONNECT_TIMEOUT,
                           client_name=CLI_CLIENT_NAME)


# -- errors --------------------------------------------------------------------------------

PASSWORD_PLACE = (f"the URL ({redis_errors.URL_WITH_PASSWORD}) of --redis-url or "
                  f"{ENV_REDIS_URL}")


def redis_failure(url: str | None, exc: BaseException) -> str:
    cluster = cluster_failure(url, exc)
    if cluster is not None:
        return cluster
    return redis_errors.redis_failure(url, exc, password_place=PASSWORD_PLACE)


NOT_A_CLUSTER = "Cluster mode is not enabled on this node"
"""redis-py's words when a ``redis+cluster://`` URL names a server that is not in a cluster."""


def cluster_failure(url: str | None, exc: BaseException) -> str | None:
    """One line for redis-py's cluster client failing to start, None for any other error.

    Its RedisClusterException wraps what went wrong in a paragraph ("Redis Cluster cannot be
    connected. Please provide at least one reachable node: ..."): a server that is not a
    cluster is named as such, with the URL to use instead; an unreachable node or a refused
    password reads as it does on a single server.
    """
    if not isinstance(exc, redis.exceptions.RedisClusterException):
        return None
    causes = redis_errors.error_chain(exc)
    if any(NOT_A_CLUSTER in str(cause) for cause in causes):
        nodes, single = "Redis", "redis://"
        if url is not None and is_cluster_url(url):
            try:
                parsed = parse_cluster_url(url)
            except RedisURLError:
                pass
            else:
                nodes = "Redis at " + ", ".join(
                    f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    for host, port in parsed.nodes)
                single = "rediss://" if parsed.tls else "redis://"
        return f"{nodes} is not a cluster (use {single} for a single server)"
    for cause in causes[1:]:
        if isinstance(cause, redis.exceptions.RedisError | OSError) \
                and not isinstance(cause, redis.exceptions.RedisClusterException):
            return redis_errors.redis_failure(url, cause, password_place=PASSWORD_PLACE)
    return None


# -- queues nobody used ---------------------------------------------------------------------

LISTED_QUEUES = 10


def never_used_message(name: str, known: list[str], complete: bool) -> str:
    """Why a view of queue `name` shows nothing: nobody used that name (a typo, often)."""
    others = [q for q in known if q != name]
    shown = ", ".join(others[:LISTED_QUEUES])
    if len(others) > LISTED_QUEUES:
        shown += f" and {len(others) - LISTED_QUEUES} more"
    if others and complete:
        hint = f" (queues here: {shown})"
    elif others:
        hint = f" (queues here include: {shown})"
    elif complete:
        hint = " (this Redis database has no queues yet)"
    else:
        hint = ""
    return (f'queue "{name}" has never been used: nothing was submitted to it and no worker '
            f"serves it{hint}")


async def never_used(queue: TaskQueue) -> str:
    """The never-used message of `queue`, with the queues this Redis has when it can tell."""
    try:
        known, complete = await known_queues(queue.redis)
    except redis.exceptions.ResponseError:
        known, complete = [], False
    return never_used_message(queue.name, known, complete)


# -- queues that lost their data ------------------------------------------------------------

def data_lost(before: QueueReading | None, now: QueueReading) -> str | None:
    """What to say when the queue lost its data between two refreshes of a watch, else None.

    The rule is agentpool.data_loss's (the operator's `QueueDataLost` Event says the same).
    Nothing to compare on the first refresh (`before` None) nor with another queue; a
    refresh that could not read Redis gives no reading.
    """
    how = data_loss(before, now)
    if how is None:
        return None
    return f'queue "{now.queue}" lost its data: {how} ({CAUSES}); still watching'


def error_line(message: str) -> None:
    """`message` on stderr as one line, its control characters shown as escapes (it may
    quote a task's error or a name read from Redis)."""
    first = printable(" ".join(message.split()))
    sys.stderr.write(f"agentpool: {first}\n")
    sys.stderr.flush()


def print_line(text: str) -> None:
    """One line for people on stdout, its control characters shown as escapes."""
    sys.stdout.write(printable(text) + "\n")
    sys.stdout.flush()


INTERRUPT_RETRY_SECONDS = 0.2


async def interruptible(coro: Coroutine[Any, Any, int]) -> int:
    """Run `coro`; Ctrl-C cancels it and raises KeyboardInterrupt.

    The cancel is repeated until the command stops: a cancel that lands while redis-py waits
    under a timeout can be swallowed (Python 3.11's timeouts turn it into a TimeoutError),
    which would leave `wait` or `--watch` running after Ctrl-C.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def cancel_until_done() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(INTERRUPT_RETRY_SECONDS, cancel_until_done)

    def on_interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        cancel_until_done()

    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    except (NotImplementedError, RuntimeError):
        return await coro
    try:
        return await coro
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def command(
    fn: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """Run an async subcommand and turn every error into one stderr line and an exit code."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        return _guarded(args, lambda: asyncio.run(interruptible(fn(args))))

    return run


def plain_command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand without an event loop (`simulate`, `crd`): the same exit codes as
    `command` for Ctrl-C, a reader that left the pipe and an unexpected error."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        return _guarded(args, lambda: fn(args))

    return run


def _guarded(args: argparse.Namespace, call: Callable[[], int]) -> int:
    try:
        return call()
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "watch", False) else EXIT_INTERRUPTED
    except (UsageError, ClientConfigError) as exc:
        error_line(str(exc))
        return EXIT_USAGE
    except (CommandFailed, TaskNotFound) as exc:
        error_line(str(exc))
        return EXIT_FAILED
    except ProtocolError as exc:
        error_line(str(exc))
        return EXIT_USAGE
    except BrokenPipeError as exc:
        if not stdout_closed():
            error_line(redis_failure(redis_url(args), exc))
            return EXIT_FAILED
        # Nothing to say to a reader that left; the interpreter's last flush must not fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
            ConnectionError) as exc:
        error_line(redis_failure(redis_url(args), exc))
        return EXIT_FAILED
    except Exception as exc:
        if os.environ.get("AGENTPOOL_DEBUG"):
            raise
        error_line(f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader closed it: a broken pipe there is not Redis's."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


# -- output --------------------------------------------------------------------------------


def stdout_console() -> Console:
    """Rich console on stdout; wide when piped so that ids and errors are not cut."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


C1_AND_DEL = re.compile(r"[\x7f-\x9f]")


def print_json(data: Any, *, one_line: bool = False) -> None:
    """`data` as JSON. JSON escapes the C0 control characters; DEL and the C1 ones (which
    only a string can hold) are written as their ``\\u`` escapes too: the same document,
    nothing a terminal acts on."""
    text = json.dumps(data, ensure_ascii=False, default=str,
                      indent=None if one_line else 2)
    text = C1_AND_DEL.sub(lambda found: f"\\u{ord(found[0]):04x}", text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def emit(renderable: RenderableType) -> None:
    """Print to stdout; when piped, without the trailing blanks rich pads table cells with.
    A plain string is text (never markup), its control characters shown as escapes."""
    if isinstance(renderable, str):
        renderable = Text(printable(renderable))
    console = stdout_console()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def print_view(args: argparse.Namespace, grids: Grid | list[Grid], doc: Any) -> None:
    """Print one view: `doc` as JSON with ``-o json``, else the tables."""
    if args.output == "json":
        print_json(doc)
    else:
        emit(render(grids))


def render(grids: Grid | list[Grid]) -> RenderableType:
    """Tables with their notes; a table without rows shows only its title."""
    items: list[RenderableType] = []
    for grid in grids if isinstance(grids, list) else [grids]:
        if grid.title:
            items.append(Text(printable(grid.title), style="bold"))
        if grid.rows or not grid.headers:
            items.append(to_table(grid))
        if grid.notes:
            items.append(Text(""))
            items.extend(Text(printable(note), style="dim") for note in grid.notes)
    return items[0] if len(items) == 1 else Group(*items)


UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               redis.exceptions.RedisClusterUnreachableError, ConnectionError, TimeoutError)
"""What a watch view rides out: Redis (or every node of a Cluster) not answering. Not a
refused password nor a server that is not what the URL says: those end the view."""


class Outage:
    """A --watch view's Redis going away and coming back: the view stays and retries every
    refresh; with `say`, what is wrong goes to stderr once per outage (JSON lines, where the
    view has no place for it)."""

    def __init__(self, url: str | None, interval: float, *, say: bool) -> None:
        self.url = url
        self.interval = interval
        self.say = say
        self.problem: str | None = None

    async def take(self, take: Callable[[], Awaitable[T]]) -> tuple[T | None, str | None]:
        """A snapshot, or None and what is wrong while Redis cannot be reached."""
        try:
            data = await take()
        except UNREACHABLE as exc:
            problem = (f"{redis_failure(self.url, exc)}; still watching, retrying every "
                       f"{self.interval:g}s")
            if self.say and problem != self.problem:
                error_line(problem)
            self.problem = problem
            return None, problem
        if self.say and self.problem is not None:
            error_line("Redis answers again")
            self.problem = None
        return data, None


async def show(
    args: argparse.Namespace,
    snapshot: Callable[[], Awaitable[T]],
    grids: Callable[[T], Grid | list[Grid]],
    to_json: Callable[[T], Any],
    unused: Callable[[T], Awaitable[str | None]] | None = None,
    reading: Callable[[T], QueueReading] | None = None,
) -> int:
    """Print one snapshot, or with --watch keep refreshing it until Ctrl-C.

    `unused` tells from a snapshot whether its queue was never used (the message, or None).
    Then a single snapshot fails (exit 1, nothing on stdout); --watch says it once on stderr
    and keeps watching for the queue to appear.

    `reading` tells what a snapshot read of its queue: --watch compares each refresh with the
    one before and says once on stderr when the queue lost its data (`data_lost`); a queue
    this watch saw in use is not called never used.
    """
    watch = bool(getattr(args, "watch", False))
    interval = max(0.1, float(getattr(args, "interval", 2.0)))
    said = False
    last: QueueReading | None = None
    outage = Outage(redis_url(args), interval, say=args.output == "json")

    async def take() -> T:
        nonlocal said, last
        data = await snapshot()
        if reading is not None and watch:
            now = reading(data)
            lost = data_lost(last, now)
            if lost:
                error_line(lost)
            said = said or now.used  # seen in use: never "never used" from now on
            last = now
        if unused is not None and not said:
            message = await unused(data)
            if message and not watch:
                raise CommandFailed(message)
            if message:
                error_line(f"{message}; watching for it")
                said = True
        return data

    if args.output == "json":
        if not watch:
            print_json(to_json(await take()))
            return EXIT_OK
        latest: T | None = await take()
        while True:
            if latest is not None:
                print_json(to_json(latest), one_line=True)
            await asyncio.sleep(interval)
            latest, _ = await outage.take(take)
    first = render(grids(await take()))
    if not watch:
        emit(first)
        return EXIT_OK
    shown = first
    with Live(first, console=stdout_console(), auto_refresh=False, transient=False) as live:
        while True:
            await asyncio.sleep(interval)
            fresh, problem = await outage.take(take)
            if fresh is not None:
                shown = render(grids(fresh))
                live.update(shown, refresh=True)
            else:
                live.update(Group(shown, Text(""),
                                  Text(printable(problem or ""), style="bold red")),
                            refresh=True)
