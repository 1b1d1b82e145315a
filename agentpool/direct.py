"""Script calls on connections of their own, past redis-py's per-command layers.

redis-py's ``execute_command`` takes a connection from its pool and gives it back with
per-call bookkeeping (locks, observability counters, an event dispatch) inside a retry loop,
and its connections read a reply through several layers of their own: on a producer's single
submit that is most of the client's CPU (bench/README.md, "Submits alone" and "Straight on
the socket"). A script call is one command with one reply, so a line keeps connections of
its own (built from the client's pool options: the same TLS, credentials, timeouts and client
name). redis-py opens each one (the handshake: TLS, AUTH, HELLO, SELECT, CLIENT SETNAME);
after that a call writes the command, packed by hiredis, straight on the connection's socket
(or asyncio stream) and reads the reply with a hiredis reader of the line's, which decodes and
raises as redis-py's own parser does.

- A script Redis does not know yet goes through the client, which loads it.
- A connection Redis closed while it sat idle (a restart, its ``timeout`` setting, ``CLIENT
  KILL``) fails on its next call; the call is sent once more on a new connection.
- A call that times out (the client's ``socket_timeout``) or stops half-way (cancelled,
  Ctrl-C) closes its connection: a reply left on the wire must never answer the next call.
- Callers beyond `limit` at once go through the client's pool (a blocking line's wait there
  for a connection: see `BlockingScriptLine`).
- On a RESP3 connection a push message the server sends unasked (a client-tracking
  invalidation, a maintenance notice) is not a reply: it is skipped.
- The client's ``health_check_interval`` does not apply to a line's connections: the call
  sent again on a new connection covers what a health check would catch.

On Sentinel a line follows the primary as the client's pool does: a call asks the sentinels
again when their last answer is more than a second old, the pool closes the line's
connections with its own when the answer names another server, and a call that finds its
server turned into a replica (``READONLY``) goes through the client, which asks again.

On a Cluster a line keeps connections to each primary it calls and sends a call to
the primary of its first key's slot, as the client's slot map has it (a queue's keys share
one slot). A redirection (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) or a primary
that cannot be reached sends the call through the client, which follows it and reads the
map again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import hiredis
import redis
import redis.asyncio as aioredis
import redis.cluster
from redis._parsers import BaseParser
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    InvalidResponse,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import SentinelConnectionPool
from redis.typing import ScriptTextT

from agentpool.connection import (
    PRIMARY_CHECK_SECONDS,
    ClientClosed,
    FollowingSentinelConnectionPool,
    node_of_key,
    pack_command,
)

DEFAULT_LIMIT = 8
"""Connections a line keeps; callers beyond them share the client's pool."""

_READ_SIZE = 65536
_MORE = object()
"""What a reply reader gives while its buffer holds no whole reply yet."""
_CLOSED = "Connection closed by server."


def _reply_reader(connection: redis.Connection | AbstractConnection) -> hiredis.Reader:
    """A reader configured as redis-py's hiredis parser configures its own for `connection`:
    the same decoding, the same exception for each error reply."""
    encoder = connection.encoder
    decoding = ({"encoding": encoder.encoding, "errors": encoder.encoding_errors}
                if encoder.decode_responses else {})
    return hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error,
                          notEnoughData=_MORE, **decoding)


def _next_reply(replies: hiredis.Reader) -> Any:
    """The next reply in the reader's buffer, or _MORE; push messages are not replies."""
    reply = replies.gets()
    while isinstance(reply, hiredis.PushNotification):
        reply = replies.gets()
    return reply


def _checked(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply


class _AsyncWire:
    """One connection of an asyncio line.

    A call's timeout (the client's ``socket_timeout``) is kept by a watchdog timer rather than
    an ``asyncio.timeout`` around each call, which costs a timer scheduled and cancelled per
    call, a good part of a single submit's own CPU. The call notes its deadline; the watchdog,
    armed when a call finds none pending, fires at most once per timeout while calls go on and
    aborts the connection of a call past its deadline, whose read then ends and raises
    ``TimeoutError``."""

    __slots__ = ("_deadline", "_replies", "_stream", "_timed_out", "_watch_loop", "_watchdog",
                 "_writer", "connection")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self._stream: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: hiredis.Reader | None = None
        self._deadline = 0.0
        """Loop time by which the call in flight must have its reply; 0 between calls."""
        self._timed_out = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_loop: asyncio.AbstractEventLoop | None = None

    async def call(self, packed: bytes) -> Any:
        if self._stream is not None and self.connection.is_connected:  # on this event loop
            try:
                return await self._exchange(packed)
            except RedisConnectionError:
                await self.close(nowait=True)  # closed while idle: once more on a new one
        await self.connection.connect()  # type: ignore[no-untyped-call]
        self._stream = self.connection._reader  # opened by redis-py
        self._writer = self.connection._writer
        self._replies = _reply_reader(self.connection)
        return await self._exchange(packed)

    async def _exchange(self, packed: bytes) -> Any:
        timeout = self.connection.socket_timeout
        try:
            if not timeout:
                return _checked(await self._request(packed))
            self._arm(timeout)
            try:
                return _checked(await self._request(packed))
            finally:
                self._deadline = 0.0
        except RedisConnectionError:
            if self._timed_out:
                raise RedisTimeoutError("Timeout reading from socket") from None
            raise
        except OSError as error:
            if self._timed_out:
                raise RedisTimeoutError("Timeout reading from socket") from None
            raise RedisConnectionError(f"Error while talking to Redis: {error}") from error

    def _arm(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._timed_out = False
        self._deadline = loop.time() + timeout
        if self._watchdog is None or self._watch_loop is not loop:
            self._watch_loop = loop
            self._watchdog = loop.call_at(self._deadline, self._watch)

    def _watch(self) -> None:
        loop, self._watchdog = self._watch_loop, None
        if not self._deadline or loop is None:
            return
        if loop.time() < self._deadline:
            self._watchdog = loop.call_at(self._deadline, self._watch)
            return
        self._timed_out = True
        if self._writer is not None:
            self._writer.transport.abort()

    async def _request(self, packed: bytes) -> Any:
        stream, replies = self._stream, self._replies
        assert stream is not None and replies is not None and self._writer is not None
        self._writer.write(packed)
        reply = _next_reply(replies)
        while reply is _MORE:
            data = await stream.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError(_CLOSED)
            replies.feed(data)
            reply = _next_reply(replies)
        return reply

    async def close(self, nowait: bool = False) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._stream = self._writer = self._replies = None
        await self.connection.disconnect(nowait=nowait)


W = TypeVar("W")


class _Server(Generic[W]):
    """A line's connections to one server: those idle, how many are open, how to open one."""

    __slots__ = ("idle", "make", "opened")

    def __init__(self, make: Callable[[], Any]) -> None:
        self.idle: list[W] = []
        self.opened = 0
        self.make = make


_REDIRECTED = (AskError, ClusterDownError, MovedError, TryAgainError)
"""Cluster replies that the client's own way handles: it follows the redirection and reads
the slot map again."""


class ScriptLine:
    """Direct script calls for an asyncio client (one event loop at a time, like the client;
    its connections follow the loop in use). On a Cluster the line keeps connections to each
    primary it calls, and sends a call to the primary of its first key's slot."""

    def __init__(self, client: aioredis.Redis | RedisCluster, limit: int = DEFAULT_LIMIT) -> None:
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._sentinel: FollowingSentinelConnectionPool | None = None
        self._one: _Server[_AsyncWire] | None = None
        if isinstance(client, aioredis.Redis):
            pool = client.connection_pool
            self._one = _Server[_AsyncWire](pool.make_connection)
            if isinstance(pool, FollowingSentinelConnectionPool):
                self._sentinel = pool
        self._nodes: dict[str, _Server[_AsyncWire]] = {}
        self.limit = limit
        self._closed = False

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._sentinel is not None:
            await self._sentinel.follow_primary()
        server = self._one or await self._primary_of(keys[0])
        wire = self._take(server)
        if wire is None:
            return await script(keys=keys, args=args)
        try:
            reply = await wire.call(pack_command((b"EVALSHA", script.sha, len(keys), *keys,
                                                  *args)))
        except (NoScriptError, *_REDIRECTED):
            await self._keep(server, wire)
            return await script(keys=keys, args=args)
        except ReadOnlyError:
            if self._sentinel is None:
                await self._keep(server, wire)
                raise
            await self._drop(server, wire)
            return await script(keys=keys, args=args)
        except ResponseError:
            await self._keep(server, wire)
            raise
        except RedisConnectionError:
            await self._drop(server, wire)
            if self._cluster is None:
                raise
            return await script(keys=keys, args=args)  # a primary lost: the client finds the next
        except BaseException:
            await self._drop(server, wire)
            raise
        await self._keep(server, wire)
        return reply

    async def _primary_of(self, key: Any) -> _Server[_AsyncWire]:
        assert self._cluster is not None
        node = await node_of_key(cast(aioredis.Redis, self._cluster), key)
        server = self._nodes.get(node.name)
        if server is None:
            server = self._nodes[node.name] = _Server[_AsyncWire](
                lambda: node.connection_class(**node.connection_kwargs))
        return server

    def _take(self, server: _Server[_AsyncWire]) -> _AsyncWire | None:
        if self._closed:
            return None  # closed: calls go the client's way, the line opens nothing more
        if server.idle:
            return server.idle.pop()
        if server.opened >= self.limit:
            return None
        server.opened += 1
        return _AsyncWire(server.make())

    async def _keep(self, server: _Server[_AsyncWire], wire: _AsyncWire) -> None:
        """A call is over: its connection serves the next one, unless the line closed
        meanwhile."""
        if self._closed:
            await self._drop(server, wire)
        else:
            server.idle.append(wire)

    async def _drop(self, server: _Server[_AsyncWire], wire: _AsyncWire) -> None:
        server.opened -= 1
        with contextlib.suppress(Exception):  # closing what is already broken
            await wire.close(nowait=True)

    async def aclose(self) -> None:
        """Close the idle connections; those of calls in flight close as the calls end."""
        self._closed = True
        for server in (*([self._one] if self._one else []), *self._nodes.values()):
            idle, server.idle = server.idle, []
            server.opened -= len(idle)
            for wire in idle:
                await wire.close()


class _Wire:
    """One connection of a blocking line."""

    __slots__ = ("__weakref__", "_replies", "_sock", "connection")

    def __init__(self, connection: redis.Connection) -> None:
        self.connection = connection
        self._sock: Any = None
        self._replies: hiredis.Reader | None = None

    def call(self, packed: bytes) -> Any:
        if self._sock is not None:
            try:
                return self._exchange(packed)
            except RedisConnectionError:
                self.close()  # closed while idle: once more on a new connection
        self.connection.connect()  # type: ignore[no-untyped-call]
        self._sock = self.connection._sock  # opened by redis-py
        self._replies = _reply_reader(self.connection)
        return self._exchange(packed)

    def _exchange(self, packed: bytes) -> Any:
        sock, replies = self._sock, self._replies
        assert replies is not None
        try:
            sock.sendall(packed)
            reply = _next_reply(replies)
            while reply is _MORE:
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise RedisConnectionError(_CLOSED)
                replies.feed(data)
                reply = _next_reply(replies)
        except TimeoutError:
            raise RedisTimeoutError("Timeout reading from socket") from None
        except OSError as error:
            raise RedisConnectionError(f"Error while talking to Redis: {error}") from error
        return _checked(reply)

    def close(self) -> None:
        self._sock = self._replies = None
        self.connection.disconnect()  # type: ignore[no-untyped-call]

    def leave_unless(self, address: tuple[str, int]) -> None:
        """Shut the socket down if it leads elsewhere than `address`. Safe from any thread:
        a call in flight on it fails as on a lost connection; an idle one reconnects on its
        next call."""
        sock = self._sock
        if sock is not None and (self.connection.host, self.connection.port) != address:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _maker(pool: redis.ConnectionPool) -> Callable[[], redis.Connection]:
    """Connections made with `pool`'s options but outside its count: the pool's own
    ``make_connection`` counts every connection it makes against its ``max_connections``
    for good, and a line replaces its connections as often as Redis closes them."""
    return lambda: pool.connection_class(**pool.connection_kwargs)


def _pool_cap(client: redis.Redis | redis.cluster.RedisCluster) -> int:
    """The most connections `client`'s pool (a Cluster client's: each node's) opens."""
    if isinstance(client, redis.cluster.RedisCluster):
        cap = client.nodes_manager.connection_kwargs.get("max_connections")
    else:
        cap = client.connection_pool.max_connections
    return int(cap or 2**31)


class BlockingScriptLine:
    """Direct script calls for a blocking client; thread-safe, and safe across ``fork``
    (a child process opens connections of its own instead of sharing its parent's). On
    Sentinel, one call a second asks the sentinels for the primary, and the line's
    connections to any other server are shut down. On a Cluster, as an asyncio line does.

    Calls that go through the client wait for one of its pool's connections, up to
    `pool_timeout` seconds (None: as long as it takes), as an asyncio client's waiting pool
    makes them. redis-py's pool raises at its ``max_connections`` instead (a SyncClient made
    with ``max_connections=20``, whose line's connections were all in use, lost submits from
    threads beyond that), and its waiting pool has no Sentinel or Cluster kind."""

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster,
                 limit: int = DEFAULT_LIMIT, pool_timeout: float | None = None) -> None:
        self._client = client
        self._pool_cap = _pool_cap(client)
        self._pool_timeout = pool_timeout
        self._cluster = client if isinstance(client, redis.cluster.RedisCluster) else None
        self._sentinel: SentinelConnectionPool | None = None
        self._make_one: Callable[[], Any] | None = None
        if isinstance(client, redis.Redis):
            self._make_one = _maker(client.connection_pool)
            if isinstance(client.connection_pool, SentinelConnectionPool):
                self._sentinel = client.connection_pool
        self._primary_asked_at = float("-inf")
        self._limit = limit
        self._lock = threading.Lock()
        self._closed = False
        self._forget_connections()

    def _forget_connections(self) -> None:
        self._pid = os.getpid()
        self._one = _Server[_Wire](self._make_one) if self._make_one else None
        self._nodes: dict[str, _Server[_Wire]] = {}
        self._wires: weakref.WeakSet[_Wire] = weakref.WeakSet()
        self._through = threading.Semaphore(self._pool_cap)

    def busy(self, key: str) -> bool:
        """Every connection of the line to `key`'s server is in use (a call for it now would
        go through the client)."""
        server = self._server_of(key)
        return not server.idle and server.opened >= self._limit

    def run(self, sha: str, source: ScriptTextT, keys: Sequence[Any],
            args: Sequence[Any]) -> Any:
        if self._sentinel is not None:
            self._follow_primary(self._sentinel)
        server = self._server_of(keys[0])
        wire = self._take(server)
        if wire is None:
            return self._through_client(sha, source, keys, args)
        try:
            reply = wire.call(pack_command((b"EVALSHA", sha, len(keys), *keys, *args)))
        except (NoScriptError, *_REDIRECTED):
            self._keep(server, wire)
            return self._through_client(sha, source, keys, args)
        except ReadOnlyError:
            if self._sentinel is None:
                self._keep(server, wire)
                raise
            self._drop(server, wire)
            return self._through_client(sha, source, keys, args)
        except ResponseError:
            self._keep(server, wire)
            raise
        except RedisConnectionError:
            self._drop(server, wire)
            if self._cluster is None:
                raise
            return self._through_client(sha, source, keys, args)
        except BaseException:
            self._drop(server, wire)
            raise
        self._keep(server, wire)
        return reply

    def _through_client(self, sha: str, source: ScriptTextT, keys: Sequence[Any],
                        args: Sequence[Any]) -> Any:
        through = self._through
        if not through.acquire(timeout=self._pool_timeout):
            raise RedisConnectionError("No connection available.")
        try:
            if self._closed:  # closed while this call waited for a connection
                raise ClientClosed("the client closed while this call waited")
            return self._client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            self._client.script_load(source)
            return self._client.evalsha(sha, len(keys), *keys, *args)
        finally:
            through.release()

    def _follow_primary(self, pool: SentinelConnectionPool) -> None:
        now = time.monotonic()
        if now - self._primary_asked_at < PRIMARY_CHECK_SECONDS:
            return
        with self._lock:  # one caller asks; the others go on
            if now - self._primary_asked_at < PRIMARY_CHECK_SECONDS:
                return
            self._primary_asked_at = now
        try:
            address = pool.get_master_address()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return  # no sentinel answers: the calls find out for themselves
        with self._lock:
            wires = list(self._wires)
        for wire in wires:
            wire.leave_unless((address[0], int(address[1])))

    def _server_of(self, key: Any) -> _Server[_Wire]:
        if self._pid != os.getpid():
            # A new process: the parent's connections and lock stay the parent's.
            self._lock = threading.Lock()
            self._forget_connections()
        if self._one is not None:
            return self._one
        assert self._cluster is not None
        node = self._cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
        server = self._nodes.get(node.name)
        if server is None:
            with self._lock:
                server = self._nodes.setdefault(node.name, _Server[_Wire](
                    _maker(node.redis_connection.connection_pool)))
        return server

    def _take(self, server: _Server[_Wire]) -> _Wire | None:
        if self._closed:
            return None  # closed: calls go the client's way, the line opens nothing more
        try:
            return server.idle.pop()
        except IndexError:
            pass
        with self._lock:
            if server.opened >= self._limit:
                return None
            server.opened += 1
        try:
            wire = _Wire(server.make())
        except BaseException:
            with self._lock:
                server.opened -= 1
            raise
        with self._lock:
            self._wires.add(wire)
        return wire

    def _keep(self, server: _Server[_Wire], wire: _Wire) -> None:
        """A call is over: its connection serves the next one, unless the line closed
        meanwhile."""
        if self._closed:
            self._drop(server, wire)
        else:
            server.idle.append(wire)

    def _drop(self, server: _Server[_Wire], wire: _Wire) -> None:
        with self._lock:
            server.opened -= 1
        with contextlib.suppress(Exception):  # closing what is already broken
            wire.close()

    def close(self) -> None:
        """Close the line's idle connections (those of calls in flight close as the calls
        end), then the client."""
        self._closed = True
        for server in (*([self._one] if self._one else []), *self._nodes.values()):
            with self._lock:
                idle, server.idle = server.idle, []
                server.opened -= len(idle)
            for wire in idle:
                wire.close()
        self._client.close()
