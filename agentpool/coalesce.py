"""Concurrent single calls sent together once enough of them are in flight.

A web server's handlers each submit one task, many at once. Sent one by one, every submit is
a request of its own to Redis (about 30 µs of redis-server CPU each on a small machine before
any work) and, past the client's few direct connections, a trip through redis-py's pool. A
:class:`Coalescer` sends a call at once while fewer than `limit` calls are in flight, so a
lone caller waits for nothing; a call that arrives when `limit` are already in flight waits
for the first of them to finish and then goes out with every other call that gathered
meanwhile, as one request (bench/README.md, "Many producers at once").

Each caller gets its own reply or the group's error. A caller cancelled while it waits is
left out of its group; one cancelled after its group went out leaves the group be (as a
single call already written to Redis would be).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")

DEFAULT_MAX_GROUP = 100
DEFAULT_MAX_GROUP_BYTES = 1 << 20


@dataclass
class _Waiting(Generic[A, R]):
    args: A
    size: int
    reply: asyncio.Future[R]


@dataclass
class Coalescer(Generic[A, R]):
    """`send` makes one call for a group of argument sets and returns one reply per set, in
    order; at most `limit` calls are in flight (a task queue's is its script line's
    connections); `send_one`, when given, makes a lone call (the common case, spared the
    group's packing). A group holds at most `max_group` sets and, beyond its first, at most
    `max_group_bytes` by `size`."""

    send: Callable[[Sequence[A]], Awaitable[Sequence[R]]]
    limit: int
    send_one: Callable[[A], Awaitable[R]] | None = None
    max_group: int = DEFAULT_MAX_GROUP
    max_group_bytes: int = DEFAULT_MAX_GROUP_BYTES
    _in_flight: int = field(default=0, init=False)
    _waiting: deque[_Waiting[A, R]] = field(default_factory=deque, init=False)
    _groups: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)

    async def call(self, args: A, size: int = 0) -> R:
        self._follow_loop()
        if self._in_flight < self.limit and not self._waiting:
            self._in_flight += 1
            try:
                if self.send_one is not None:
                    return await self.send_one(args)
                return (await self.send([args]))[0]
            finally:
                self._finished()
        reply: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(args, size, reply))
        return await reply

    def _follow_loop(self) -> None:
        """Counts and waiters belong to one event loop; a new loop (a new ``asyncio.run``)
        starts afresh instead of waiting for calls of a loop that is gone."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._in_flight, self._waiting, self._groups = loop, 0, deque(), set()

    def _finished(self) -> None:
        self._in_flight -= 1
        while self._waiting and self._in_flight < self.limit:
            group = self._next_group()
            if not group:
                continue
            self._in_flight += 1
            task = asyncio.ensure_future(self._send_group(group))
            self._groups.add(task)
            task.add_done_callback(self._groups.discard)

    def _next_group(self) -> list[_Waiting[A, R]]:
        """The longest run of waiting calls, oldest first, that fits one group (callers that
        stopped waiting are dropped)."""
        group: list[_Waiting[A, R]] = []
        size = 0
        while self._waiting and len(group) < self.max_group:
            waiting = self._waiting[0]
            if waiting.reply.done():
                self._waiting.popleft()
                continue
            if group and size + waiting.size > self.max_group_bytes:
                break
            group.append(self._waiting.popleft())
            size += waiting.size
        return group

    async def _send_group(self, group: list[_Waiting[A, R]]) -> None:
        try:
            replies = await self.send([waiting.args for waiting in group])
        except BaseException as error:
            for waiting in group:
                if waiting.reply.done():
                    continue
                if isinstance(error, asyncio.CancelledError):
                    waiting.reply.cancel()
                else:
                    waiting.reply.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            for waiting, reply in zip(group, replies, strict=True):
                if not waiting.reply.done():
                    waiting.reply.set_result(reply)
        finally:
            self._finished()
