"""Script calls on connections of their own, past redis-py's per-command layers.

redis-py's ``execute_command`` takes a connection from its pool and gives it back with
per-call bookkeeping (locks, observability counters, an event dispatch) inside a retry loop:
on a producer's single submit that is about half of the client's CPU (bench/README.md,
"Submits alone"). A script call is one command with one reply, so a line sends it on a
connection from a free list of its own (built from the client's pool options: the same TLS,
credentials, timeouts, retries and client name), reads the reply and puts the connection
back.

- A script Redis does not know yet goes through the client, which loads it.
- A connection Redis closed while it sat idle (a restart, its ``timeout`` setting, ``CLIENT
  KILL``) fails on its next call; the call is sent once more on a new connection.
- A call stopped half-way (cancelled, Ctrl-C) closes its connection: a reply left on the
  wire must never answer the next call.
- Callers beyond `limit` at once go through the client's pool.

Lines are for standalone Redis only: Sentinel and Cluster clients choose their server per
call.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import ScriptTextT

DEFAULT_LIMIT = 8
"""Connections a line keeps; callers beyond them share the client's pool."""


class ScriptLine:
    """Direct script calls for an asyncio client (one event loop, like the client)."""

    def __init__(self, client: aioredis.Redis, limit: int = DEFAULT_LIMIT) -> None:
        self._pool = client.connection_pool
        self._idle: list[AbstractConnection] = []
        self._opened = 0
        self.limit = limit

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        connection = self._take()
        if connection is None:
            return await script(keys=keys, args=args)
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            reply = await self._call(connection, command)
        except NoScriptError:
            self._idle.append(connection)
            return await script(keys=keys, args=args)
        except ResponseError:
            self._idle.append(connection)
            raise
        except BaseException:
            await self._drop(connection)
            raise
        self._idle.append(connection)
        return reply

    @staticmethod
    async def _call(connection: AbstractConnection, command: Sequence[Any]) -> Any:
        if connection.is_connected:
            try:
                await connection.send_command(*command)
                return await connection.read_response()
            except RedisConnectionError:
                pass  # closed while idle; redis-py has closed our end too
        await connection.connect()  # type: ignore[no-untyped-call]
        await connection.send_command(*command)
        return await connection.read_response()

    def _take(self) -> AbstractConnection | None:
        if self._idle:
            return self._idle.pop()
        if self._opened >= self.limit:
            return None
        self._opened += 1
        return self._pool.connection_class(**self._pool.connection_kwargs)

    async def _drop(self, connection: AbstractConnection) -> None:
        self._opened -= 1
        with contextlib.suppress(Exception):  # closing what is already broken
            await connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        self._opened -= len(idle)
        for connection in idle:
            await connection.disconnect()


class BlockingScriptLine:
    """Direct script calls for a blocking client; thread-safe, and safe across ``fork``
    (a child process opens connections of its own instead of sharing its parent's). With
    `limit` 0 every call goes through the client (a Cluster client, which has no one pool)."""

    def __init__(self, client: redis.Redis, limit: int = DEFAULT_LIMIT) -> None:
        self._client = client
        self._pool = client.connection_pool if limit else None
        self._idle: list[redis.Connection] = []
        self._opened = 0
        self._limit = limit
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def busy(self) -> bool:
        """Every connection of the line is in use (a call now would go through the client)."""
        return self._limit > 0 and not self._idle and self._opened >= self._limit

    def run(self, sha: str, source: ScriptTextT, keys: Sequence[Any],
            args: Sequence[Any]) -> Any:
        connection = self._take()
        if connection is None:
            return self._through_client(sha, source, keys, args)
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            reply = self._call(connection, command)
        except NoScriptError:
            self._idle.append(connection)
            return self._through_client(sha, source, keys, args)
        except ResponseError:
            self._idle.append(connection)
            raise
        except BaseException:
            self._drop(connection)
            raise
        self._idle.append(connection)
        return reply

    @staticmethod
    def _call(connection: redis.Connection, command: Sequence[Any]) -> Any:
        if connection.is_connected:
            try:
                connection.send_command(*command)  # type: ignore[no-untyped-call]
                return connection.read_response()
            except RedisConnectionError:
                pass  # closed while idle; redis-py has closed our end too
        connection.connect()  # type: ignore[no-untyped-call]
        connection.send_command(*command)  # type: ignore[no-untyped-call]
        return connection.read_response()

    def _through_client(self, sha: str, source: ScriptTextT, keys: Sequence[Any],
                        args: Sequence[Any]) -> Any:
        try:
            return self._client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            self._client.script_load(source)
            return self._client.evalsha(sha, len(keys), *keys, *args)

    def _take(self) -> redis.Connection | None:
        if self._pid != os.getpid():
            # A new process: the parent's connections and lock stay the parent's.
            self._lock = threading.Lock()
            self._idle, self._opened, self._pid = [], 0, os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        with self._lock:
            if self._opened >= self._limit:
                return None
            self._opened += 1
        assert self._pool is not None
        connection: redis.Connection = self._pool.connection_class(
            **self._pool.connection_kwargs)
        return connection

    def _drop(self, connection: redis.Connection) -> None:
        with self._lock:
            self._opened -= 1
        with contextlib.suppress(Exception):  # closing what is already broken
            connection.disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Close the line's idle connections, then the client."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
        for connection in idle:
            connection.disconnect()  # type: ignore[no-untyped-call]
        self._client.close()
