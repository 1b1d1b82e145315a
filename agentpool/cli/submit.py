"""`agentpool submit`: queue tasks from arguments or a JSON-lines file, and optionally wait."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import redis.exceptions

from agentpool.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_output_option,
    add_queue_options,
    command,
    connect,
    error_line,
    number,
    print_view,
    queue_name,
    redis_failure,
    redis_url,
    task_id,
)
from agentpool.cli.terminal import printable
from agentpool.cli.views import submitted_grid, submitted_json, waited_grid, waited_json
from agentpool.protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_TASK_TIMEOUT_SECONDS,
    PayloadTooLarge,
    ProtocolError,
    TaskInfo,
    TaskNotFound,
    TaskQueue,
    encode_payload,
    tenant_arg,
)
from agentpool.redis_errors import REDIS_FAILURES


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="queue tasks",
        description="Queue tasks. Payloads come from --json (repeat it for several tasks) or "
        "from a JSON-lines file (one payload per line, '-' reads stdin); a file is sent in "
        "pipelined batches. A payload is any JSON value: an object, a list, a string (a "
        "prompt), a number or null, of at most "
        f"{DEFAULT_MAX_PAYLOAD_BYTES // (1 << 20)} MiB ({DEFAULT_MAX_PAYLOAD_BYTES} bytes) "
        "encoded as JSON; the handler receives it decoded. Prints the task ids, or with "
        "--wait the outcomes.",
    )
    add_queue_options(parser)
    parser.add_argument("--json", dest="payloads", action="append", default=None,
                        metavar="PAYLOAD",
                        help="a task payload: any JSON value, e.g. '{\"prompt\": \"hi\"}', "
                        "'\"hi\"' or '[1, 2]' (repeatable)")
    parser.add_argument("-f", "--file", metavar="FILE",
                        help="JSON lines, one payload per line; '-' reads stdin")
    parser.add_argument("-p", "--priority", type=int, default=0,
                        help="0-9, higher runs first (default 0)")
    parser.add_argument("--delay", type=number(float, low=0), default=0, metavar="SECONDS",
                        help="run no earlier than this many seconds from now")
    parser.add_argument("--expires", type=number(float, above=0), metavar="SECONDS",
                        help="a task not started within this many seconds of its submit "
                        "is not run: it ends cancelled, as expired (retries included)")
    parser.add_argument("--task-timeout", metavar="SECONDS",
                        type=number(float, low=0.001, high=MAX_TASK_TIMEOUT_SECONDS),
                        help="a run lasting longer is stopped and fails, as one past the "
                        "pool's taskTimeoutSeconds does (which still applies when shorter)")
    parser.add_argument("--idempotency-key", metavar="KEY", type=idempotency_key,
                        help="a key seen before returns the existing task's id instead of "
                        "queueing another; the payloads of a file, or of several --json, "
                        "each get KEY:N, N counting payloads from 1 (--json first; blank "
                        "lines do not count), so the same command run again, or on a file "
                        "with lines appended, queues only the tasks it did not queue before "
                        "(while those are kept: a day, or the result TTL once finished)")
    parser.add_argument("--after", action="append", metavar="TASK_ID",
                        help="run only once this task of the queue has succeeded; the task "
                        "ends cancelled if it ends otherwise (repeatable: after all of them)")
    parser.add_argument("--tenant", type=tenant_name, metavar="NAME",
                        help="whose tasks these are (a customer, a user, a project): tenants "
                        "take turns, one task each, so another tenant's next task waits "
                        "behind at most one of these per tenant with tasks waiting")
    parser.add_argument("--max-attempts", type=int, metavar="N",
                        help="attempts before dead-lettering (default: the pool's setting)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the tasks to finish; exit 1 unless all succeeded")
    parser.add_argument("--timeout", type=number(float, low=0), metavar="SECONDS",
                        help="with --wait: give up after this many seconds (exit 1)")
    add_output_option(parser)
    parser.set_defaults(func=run)


def tenant_name(text: str) -> str:
    try:
        return tenant_arg(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def idempotency_key(text: str) -> str:
    """An --idempotency-key as given: an empty or blank one would turn deduplication off
    without a word (no key), so it is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"an idempotency key must not be empty or blank, got {text!r}")
    return text


def parse_json_payload(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{where} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None


def parse_json_lines(lines: Iterable[str], source: str) -> list[tuple[str, Any]]:
    """Payloads of a JSON-lines text, each with where it came from; blank lines are skipped."""
    payloads = []
    for line_number, line in enumerate(lines, start=1):
        if line.strip():
            where = f"line {line_number} of {source}"
            payloads.append((where, parse_json_payload(line, where)))
    return payloads


def read_payloads(args: argparse.Namespace) -> list[Any]:
    """Every payload given, each checked against the size limit before anything is sent."""
    texts: list[str] = args.payloads or []
    payloads: list[tuple[str, Any]] = []
    for i, text in enumerate(texts, start=1):
        where = "--json" if len(texts) == 1 else f"--json #{i}"
        payloads.append((where, parse_json_payload(text, where)))
    if args.file == "-":
        payloads += parse_json_lines(sys.stdin, "stdin")
    elif args.file:
        try:
            with open(args.file, encoding="utf-8") as handle:
                payloads += parse_json_lines(handle, args.file)
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"cannot read {args.file}: not UTF-8 text ({exc.reason})") from None
    if not payloads:
        raise UsageError("nothing to submit: give --json PAYLOAD or --file FILE")
    for where, payload in payloads:
        try:
            encode_payload(payload, DEFAULT_MAX_PAYLOAD_BYTES)
        except PayloadTooLarge as exc:
            raise UsageError(f"{where}: {exc}") from None
    return [payload for _, payload in payloads]


SUBMIT_CHUNK = 500
"""Payloads sent per call: when a call fails (Redis full, gone), the ids of the calls before
it are known and printed."""


class PartlySubmitted(Exception):
    """Submitting stopped at `error` after the tasks `ids` (of `total`) were stored."""

    def __init__(self, ids: list[str], total: int, error: Exception) -> None:
        super().__init__(str(error))
        self.ids = ids
        self.total = total
        self.error = error


async def submit_all(queue: TaskQueue, payloads: Sequence[Any],
                     args: argparse.Namespace) -> list[str]:
    """One submit with every option, or calls of SUBMIT_CHUNK payloads in order; a call
    failing after others stored their tasks raises PartlySubmitted."""
    keys = idempotency_keys(args, len(payloads))
    if len(payloads) == 1:
        return [await queue.submit(
            payloads[0], priority=args.priority, delay=args.delay,
            idempotency_key=keys[0], max_attempts=args.max_attempts,
            expires=args.expires, task_timeout=args.task_timeout, after=args.after,
            tenant=args.tenant)]
    ids: list[str] = []
    for start in range(0, len(payloads), SUBMIT_CHUNK):
        end = start + SUBMIT_CHUNK
        try:
            ids += await queue.submit_many(
                payloads[start:end], priority=args.priority, delay=args.delay,
                max_attempts=args.max_attempts, expires=args.expires,
                task_timeout=args.task_timeout, after=args.after,
                idempotency_keys=keys[start:end], tenant=args.tenant, chunk=SUBMIT_CHUNK)
        except (TaskNotFound, *REDIS_FAILURES) as error:
            stored = ids + (error.submitted if isinstance(error, TaskNotFound) else [])
            if not stored:
                raise
            raise PartlySubmitted(stored, len(payloads), error) from error
    return ids


def show_submitted(args: argparse.Namespace, queue: str, ids: Sequence[str]) -> None:
    print_view(args, submitted_grid(queue, ids, keyed=bool(args.idempotency_key)),
               submitted_json(queue, ids))


def partly_submitted(args: argparse.Namespace, partial: PartlySubmitted) -> str:
    """The one line for payloads submitted in part: why it stopped, how many tasks went in,
    and, when Redis failed, how to queue the rest without queueing those again."""
    error, count = partial.error, len(partial.ids)
    went_in = (f"{count:,} of {partial.total:,} tasks queued before the error (their ids are "
               "on stdout)")
    if isinstance(error, TaskNotFound):
        reason = str(error).partition("; ")[0]  # its own count is of the failed call only
        return f"{reason}; {went_in}"
    if not isinstance(error, redis.exceptions.ResponseError):  # not refused: maybe done
        went_in += ", and maybe the batch being sent when it came"
    if args.idempotency_key:
        retry = ("the same command run again queues only the rest (its --idempotency-key "
                 "names the tasks queued)")
    else:
        retry = (f"a rerun would queue them again: submit the payloads after the first "
                 f"{count:,} (with --idempotency-key, a command run again queues only the "
                 "tasks it did not queue before)")
    return f"{redis_failure(redis_url(args), error)}; {went_in}; {retry}"


def idempotency_keys(args: argparse.Namespace, count: int) -> list[str | None]:
    """A key per payload: --idempotency-key itself for one --json; KEY:1 to KEY:count for a
    file or several --json (a file of one line too, so that it may grow)."""
    key: str | None = args.idempotency_key
    if not key:
        return [None] * count
    if count == 1 and not args.file:
        return [key]
    return [f"{key}:{n}" for n in range(1, count + 1)]


class WaitProgress:
    """How far a wait for several tasks has come, on one line of a terminal (stderr),
    rewritten as they finish and erased at the end: "12 of 40 finished: 11 succeeded,
    1 dead". At most ten drawings a second; a wait's last finish is always drawn."""

    EVERY = 0.1

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.states: Counter[str] = Counter()
        self._drawn_at = -float("inf")

    @classmethod
    def on_terminal(cls, total: int) -> WaitProgress | None:
        """A progress line for a wait of several tasks when stderr is a terminal."""
        return cls(total, sys.stderr) if total > 1 and sys.stderr.isatty() else None

    def finished(self, info: TaskInfo) -> None:
        self.states[info.state] += 1
        now = time.monotonic()
        if now - self._drawn_at >= self.EVERY or self.states.total() == self.total:
            self._drawn_at = now
            self._draw(self.line())

    def line(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.states.items()))
        return f"{self.states.total()} of {self.total} finished" + (
            f": {counts}" if counts else "")

    def start(self) -> None:
        self._draw(self.line())

    def close(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def _draw(self, line: str) -> None:
        self.stream.write(f"\r\x1b[K{printable(line)}")
        self.stream.flush()


async def wait_all(queue: TaskQueue, ids: Sequence[str], seconds: float | None,
                   progress: WaitProgress | None = None) -> tuple[list[TaskInfo], list[str]]:
    """Final infos in the order of the ids, and the ids still pending when `seconds` ran out
    (one subscription for them all: TaskQueue.as_finished); `progress` told of each."""
    done: dict[str, TaskInfo] = {}
    if progress is not None:
        progress.start()
    try:
        with contextlib.suppress(TimeoutError):
            async with contextlib.aclosing(queue.as_finished(ids, seconds)) as finishes:
                async for info in finishes:
                    done[info.id] = info
                    if progress is not None:
                        progress.finished(info)
    finally:
        if progress is not None:
            progress.close()
    return [done[i] for i in ids if i in done], [i for i in ids if i not in done]


def wait_failure(tasks: Sequence[TaskInfo], pending: Sequence[str],
                 timeout: float | None) -> str | None:
    """The one-line complaint for a --wait that did not end in success, if any."""
    parts = []
    if pending:
        parts.append(f"{len(pending)} of {len(tasks) + len(pending)} tasks not finished"
                     + (f" after {timeout:g}s" if timeout is not None else ""))
    unhappy = Counter(t.state for t in tasks if t.state != "succeeded")
    if unhappy:
        parts.append(", ".join(f"{n} {state}" for state, n in sorted(unhappy.items())))
    return "; ".join(parts) or None


def show_waited(args: argparse.Namespace, queue: str, tasks: Sequence[TaskInfo],
                pending: Sequence[str]) -> int:
    """Print the outcomes of a wait for several tasks; the exit status: 0 only if every one
    succeeded."""
    print_view(args, waited_grid(queue, tasks, pending), waited_json(queue, tasks, pending))
    problem = wait_failure(tasks, pending, args.timeout)
    if problem:
        error_line(problem)
        return EXIT_FAILED
    return EXIT_OK


@command
async def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout applies to --wait")
    if args.after:
        args.after = [task_id(given) for given in args.after]
    name = queue_name(args)
    payloads = read_payloads(args)
    async with connect(args) as client:
        queue = client.queue(name)
        try:
            ids = await submit_all(queue, payloads, args)
        except PartlySubmitted as partial:
            show_submitted(args, name, partial.ids)
            error_line(partly_submitted(args, partial))
            return EXIT_FAILED
        if not args.wait:
            show_submitted(args, name, ids)
            return EXIT_OK
        try:
            tasks, pending = await wait_all(queue, ids, args.timeout,
                                            WaitProgress.on_terminal(len(ids)))
        except (asyncio.CancelledError, *REDIS_FAILURES):
            # Ctrl-C or Redis gone during the wait: the tasks are in; say which they are.
            show_submitted(args, name, ids)
            raise
    return show_waited(args, name, tasks, pending)
