"""Helpers shared by the CLI tests: run `agentpool` in-process, drive the protocol directly."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from agentpool.cli.main import main
from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue

T = TypeVar("T")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


class Cli:
    """Runs `agentpool` in this process against one Redis and one queue."""

    def __init__(self, capsys: pytest.CaptureFixture[str], redis_url: str, queue: str) -> None:
        self.capsys = capsys
        self.redis_url = redis_url
        self.queue = queue

    def raw(self, *argv: str) -> Result:
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def __call__(self, *argv: str) -> Result:
        """A queue verb with --redis-url and --queue filled in (after the verb's words)."""
        words = [a for a in argv if not a.startswith("-")]
        verb_words = 2 if words[:1] == ["dead"] else 1
        return self.raw(*argv[:verb_words], "--redis-url", self.redis_url,
                        "--queue", self.queue, *argv[verb_words:])

    def ok(self, *argv: str) -> Result:
        result = self(*argv)
        assert result.code == 0, result
        return result


def with_queue(redis_url: str, queue: str, fn: Callable[[TaskQueue], Awaitable[T]]) -> T:
    """Run `fn(queue)` on a fresh connection, from synchronous test code."""

    async def go() -> T:
        client = redis_from_url(redis_url)
        try:
            return await fn(TaskQueue(client, queue))
        finally:
            await client.aclose()

    return asyncio.run(go())


async def make_dead(queue: TaskQueue, payloads: list[Any], error: str = "boom") -> list[str]:
    """Submit tasks and fail each one for good: they end in the dead-letter queue.
    Call it while nothing else is queued (it claims whatever comes first)."""
    ids = [await queue.submit(p, max_attempts=1) for p in payloads]
    batch = await queue.claim("pod-x:inst", len(ids), 30)
    for task in batch.tasks:
        await queue.fail(task, error, retryable=False)
    return ids


@contextmanager
def background_worker(redis_url: str, queue: str, *, fail_payloads: tuple[Any, ...] = (),
                      start_after: float = 0.0) -> Iterator[None]:
    """A thread that claims tasks and completes them with {"echo": payload} (or fails the
    payloads listed in `fail_payloads` for good) until the block exits."""
    stop = threading.Event()

    async def work() -> None:
        client = redis_from_url(redis_url)
        q = TaskQueue(client, queue)
        try:
            await asyncio.sleep(start_after)
            while not stop.is_set():
                batch = await q.claim("pod-bg:inst", 10, 30)
                for task in batch.tasks:
                    payload = json.loads(task.payload_raw)
                    if payload in fail_payloads:
                        await q.fail(task, "handler raised", retryable=False)
                    else:
                        await q.complete(task, {"echo": payload})
                if not batch.tasks:
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(work()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def wait_until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        time.sleep(0.02)


def table_rows(out: str) -> list[list[str]]:
    """Cells of the rows of the first table in `out` (the lines after its header rule)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("─")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(("─", " ")):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def key_values(out: str) -> dict[str, str]:
    """A key/value table as a dict (keys and values are separated by two or more spaces)."""
    pairs = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()]
    return {p[0]: p[1] for p in pairs if len(p) == 2}
