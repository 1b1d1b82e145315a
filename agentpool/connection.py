"""Redis from a URL, the same way for the client, the CLI, the worker and the operator.

Three kinds of URL:

- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS): one server, as
  redis-py reads them.
- ``redis+sentinel://[[user]:password@]host1[:26379],host2[:26379]/<service>[/<db>]`` and
  ``rediss+sentinel://`` (TLS to the data nodes): the sentinels are asked for the primary
  of `<service>`, and every new connection asks again, so after a failover each component
  follows the new primary without a restart. A client also asks again at most once a
  second while it is in use (:data:`PRIMARY_CHECK_SECONDS`): after a graceful failover the
  old primary keeps accepting writes until the sentinels turn it into a replica (about ten
  seconds), and writes sent to it there are lost. The user and password are those of the data
  nodes; sentinels that need a password of their own take ``?sentinel_password=...`` (and
  ``sentinel_username``).
- ``redis+cluster://[[user]:password@]host1[:6379],host2[:6379][/]`` and ``rediss+cluster://``
  (TLS): a Redis Cluster. The nodes named are where the client starts: it reads the slot map
  from the first that answers and routes every command, script and pipeline to the node of
  its key's slot (all of a queue's keys share one slot, see `agentpool.protocol`). A cluster
  has no database other than 0.

Over TLS the server's certificate is checked against the system's authorities; a server
whose certificate a private authority signed (cert-manager, a self-signed one) takes
``?ssl_ca_certs=/path/ca.crt``, and a server that asks for a client certificate takes
``ssl_certfile`` and ``ssl_keyfile`` (also ``ssl_cert_reqs``, ``ssl_check_hostname``), in every
kind of URL: redis-py reads them from a one-server URL, and this module from the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
import re
import socket
import time
import weakref
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
import redis
import redis.asyncio as aioredis
import redis.cluster
import redis.sentinel
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentpool.urls import URL_PREFIXES, after_host

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
PRIMARY_CHECK_SECONDS = 1.0
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_CLUSTER_PORT = 6379
INVALID_URL_MESSAGE = (
    "invalid Redis URL (a password with '/', '#', '?' or '@' must be percent-encoded)"
)


class RedisURLError(ValueError):
    """A URL that names no Redis; the message never quotes the URL's credentials."""


class ClientClosed(RuntimeError):
    """The client was closed (a call made after, or still waiting when it closed)."""


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    tls_options: tuple[tuple[str, Any], ...] = ()
    """redis-py's ssl_* connection options, from the URL's query."""


@dataclass(frozen=True)
class ClusterURL:
    """The parts of a ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_options: tuple[tuple[str, Any], ...] = ()
    """redis-py's ssl_* connection options, from the URL's query."""


TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
               "ssl_check_hostname")
_CERT_REQS = ("none", "optional", "required")
_FLAGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _tls_options(query: str, tls: bool, others: tuple[str, ...] = ()
                 ) -> tuple[tuple[str, Any], ...]:
    """The ssl_* options of a Sentinel or Cluster URL's query, checked and typed. Any option
    but those and `others` is refused: a misspelled one would be ignored without a word."""
    unknown = sorted({k for k, _ in parse_qsl(query)} - {*TLS_OPTIONS, *others})
    if unknown:
        tls_scheme = ("; for TLS, the scheme says so: rediss+sentinel:// or rediss+cluster://"
                      if unknown[0] == "ssl" else "")
        raise RedisURLError(
            f"its query names an option {unknown[0]!r} that this URL does not take (it takes "
            f"{', '.join((*others, *TLS_OPTIONS))}){tls_scheme}")
    options: dict[str, Any] = {k: v for k, v in parse_qsl(query) if k in TLS_OPTIONS}
    if options and not tls:
        raise RedisURLError(
            f"TLS options ({', '.join(sorted(options))}) need a TLS URL (rediss+sentinel:// or "
            "rediss+cluster://)")
    if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
        raise RedisURLError("ssl_cert_reqs is none, optional or required")
    if "ssl_check_hostname" in options:
        flag = _FLAGS.get(str(options["ssl_check_hostname"]).lower())
        if flag is None:
            raise RedisURLError("ssl_check_hostname is true or false")
        options["ssl_check_hostname"] = flag
    return tuple(sorted(options.items()))


DEFAULT_MAX_CONNECTIONS = 100
"""Per client on one server or through Sentinel, redis-py's own default (a Cluster client's
per-node pools are not capped: see `cluster_from_url`)."""


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def check_redis_url(url: str) -> None:
    """Raise RedisURLError, saying what is wrong, for a URL that cannot be used (a process
    checks its URL at start, before it connects)."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
    elif is_cluster_url(url):
        parse_cluster_url(url)
    else:
        _check_server_url(url)


def _check_server_url(url: str) -> None:
    """A one-server URL as redis-py reads it, down to the options of its query."""
    if not url.startswith((*URL_PREFIXES, "unix://")):
        raise RedisURLError(f"a Redis URL starts with {', '.join(URL_PREFIXES)} or unix://")
    if has_unencoded_userinfo(url):
        raise RedisURLError("a password with '/', '#', '?' or '@' must be percent-encoded")
    try:
        database = urlsplit(url).path.strip("/") if not url.startswith("unix://") else ""
    except ValueError:
        raise RedisURLError("its host does not parse (an IPv6 address goes in brackets: "
                            "redis://[::1]:6379/0)") from None
    if database and not database.isdigit():
        # redis-py reads a path it cannot parse as database 0, without a word
        raise RedisURLError(f"its path names database {database!r}: a database is a number "
                            "(redis://host:6379/0)")
    try:
        cast(Any, ConnectionPool.from_url(url)).make_connection()
    except TypeError as error:
        option = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        name = f" {option.group(1)!r}" if option else ""
        if option and asks_for_tls(option.group(1), url):
            raise RedisURLError(f"TLS options ({option.group(1)}) need a TLS URL (rediss://)"
                                ) from None
        raise RedisURLError(
            f"its query names an option{name} that Redis connections do not take") from None
    except ValueError:
        raise RedisURLError(
            "its port, database or options do not parse (a password with '/', '#', '?' or '@' "
            "must be percent-encoded)") from None
    except redis.exceptions.RedisError as error:  # e.g. ssl_cert_reqs=bogus
        raise RedisURLError(f"its query's options do not parse: {error}") from None


SERVER_TLS_OPTIONS = frozenset(
    name for name in inspect.signature(redis.connection.SSLConnection.__init__).parameters
    if name.startswith("ssl_"))
"""The options of a TLS connection to one server, as redis-py names them."""


def asks_for_tls(option: str, url: str) -> bool:
    """Whether an option a ``redis://`` URL's connections refused is one of TLS (a TLS option,
    or ``ssl`` set true), which the ``rediss://`` scheme takes."""
    if option == "ssl":
        values = [v for k, v in parse_qsl(urlsplit(url).query) if k == "ssl"]
        return any(_FLAGS.get(v.lower()) for v in values)
    return option in SERVER_TLS_OPTIONS


def has_unencoded_userinfo(url: str) -> bool:
    """Whether an '@' comes after the URL's host part ends: a password with '/', '?' or '#'
    written as is, which would be read as the host, port and path instead."""
    return "@" in after_host(url)


def is_cluster(redis: Any) -> bool:
    """Whether a client from `redis_from_url` talks to a Redis Cluster."""
    return isinstance(redis, RedisCluster)


def _userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, hosts) of a URL's network location."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None, hosts


def parse_cluster_url(url: str) -> ClusterURL:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise RedisURLError("a cluster URL starts with redis+cluster:// or rediss+cluster://")
    try:
        parts = urlsplit(f"cluster://{rest}")
    except ValueError:
        raise RedisURLError(INVALID_URL_MESSAGE) from None
    username, password, hosts = _userinfo(parts.netloc)
    nodes = tuple(
        _host_port(item, DEFAULT_CLUSTER_PORT, "each cluster node is host or host:port")
        for item in hosts.split(",") if item
    )
    if not nodes:
        raise RedisURLError("a cluster URL names at least one node host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise RedisURLError("a Redis Cluster has only database 0: end the URL in / or /0")
    tls = scheme.lower() == "rediss+cluster"
    return ClusterURL(nodes=nodes, username=username, password=password, tls=tls,
                      tls_options=_tls_options(parts.query, tls))


def parse_sentinel_url(url: str) -> SentinelURL:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise RedisURLError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    parts = urlsplit(f"sentinel://{rest}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", parts.netloc
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item)
    if not sentinels:
        raise RedisURLError("a Sentinel URL names at least one sentinel host:port")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise RedisURLError("a Sentinel URL ends in /<service> or /<service>/<db>")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise RedisURLError("the database of a Sentinel URL is a number")
        db = int(path[1])
    query = dict(parse_qsl(parts.query))
    tls = scheme.lower() == "rediss+sentinel"
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
        tls=tls,
        tls_options=_tls_options(parts.query, tls, ("sentinel_username", "sentinel_password")),
    )


def _host_port(item: str, default_port: int = DEFAULT_SENTINEL_PORT,
               message: str = "each sentinel is host or host:port") -> tuple[str, int]:
    if item.startswith("["):
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    port = port or str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisURLError(message)
    return host, int(port)


class _ClosableForGood:
    """A pool that `refuse_calls` can close for good: redis-py's pools open connections again
    for any call after they were closed."""

    refusing = False

    def check_open(self) -> None:
        if self.refusing:
            raise ClientClosed("the client is closed")


class WaitingPool(_ClosableForGood, BlockingConnectionPool):
    """redis-py's pool that makes callers beyond `max_connections` wait, usable from one
    event loop after another: its lock and condition bind to the loop where they are first
    contended, so a new loop gets new ones (the connections follow by themselves, see
    `LeanConnection`). In a process forked from the one that used it, it starts empty: the
    connections the parent's calls held at the fork would never come back, and with as many
    as `max_connections` of them every call of the child would wait for ever."""

    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.check_open()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._pid not in (None, os.getpid()):
                self.reset()  # type: ignore[no-untyped-call]
            self._loop, self._lock, self._condition = loop, asyncio.Lock(), asyncio.Condition()
            self._pid = os.getpid()
        _ALL_BUSY_SINCE.set(None)
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    def can_get_connection(self) -> bool:
        if super().can_get_connection():
            _ALL_BUSY_SINCE.set(None)
            return True
        if _ALL_BUSY_SINCE.get() is None:
            _ALL_BUSY_SINCE.set((self, time.monotonic()))
        return False


_ALL_BUSY_SINCE: contextvars.ContextVar[tuple[WaitingPool, float] | None] = (
    contextvars.ContextVar("agentpool_all_busy_since", default=None))
"""In a task whose last call on a `WaitingPool` is waiting, or was cut off waiting, for one of
its connections: that pool, and since when (monotonic) all were in use."""


def connections_busy_for(redis: Any, since: float) -> float | None:
    """How long the current task's last call on `redis` (a client of `redis_from_url`) had
    waited for a pooled connection, every one in use, when it was cut off (a timeout): so
    that a wait does not blame Redis for the client's own connections. None when that call
    was not waiting for one, or began waiting before `since` (monotonic)."""
    busy = _ALL_BUSY_SINCE.get()
    pool = getattr(redis, "connection_pool", None)
    if busy is None or busy[0] is not pool or busy[1] < since:
        return None
    return time.monotonic() - busy[1]


def _address(reply: Any) -> tuple[str, int]:
    """A sentinel's answer to SENTINEL GET-MASTER-ADDR-BY-NAME, as (host, port)."""
    host, port = (x.decode() if isinstance(x, bytes) else str(x) for x in reply)
    return host, int(port)


class FollowingSentinelConnectionPool(_ClosableForGood, SentinelConnectionPool):
    """Connections to the Sentinel primary that leave a primary the sentinels no longer name.

    Taking a connection asks the sentinels for the primary when the last answer is older than
    PRIMARY_CHECK_SECONDS (as does `follow_primary`, for connections held outside the pool).
    Whenever an answer names another server, every connection made by the pool to any other
    server is closed, those in use and those held outside included (their call fails, as on a
    lost connection)."""

    _checked_at = float("-inf")

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._made: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()

    def make_connection(self) -> Any:
        connection = super().make_connection()  # type: ignore[no-untyped-call]
        self._made.add(connection)
        return connection

    async def get_master_address(self) -> Any:
        # SENTINEL GET-MASTER-ADDR-BY-NAME names the promoted replica as soon as it is a
        # primary; redis-py's own lookup (SENTINEL MASTERS) only once the failover is over.
        address = await self._named_primary()
        if address is None:
            return await super().get_master_address()  # type: ignore[no-untyped-call]
        if self.is_master and address != self.master_address:
            self.master_address = address
        if self.is_master:
            stale = [c for c in self._made
                     if c.is_connected and (getattr(c, "host", None), getattr(c, "port", None))
                     != tuple(address)]
            await asyncio.gather(*(c.disconnect() for c in stale), return_exceptions=True)
        return address

    async def _named_primary(self) -> tuple[str, int] | None:
        sentinels = self.sentinel_manager.sentinels
        for sentinel in list(sentinels):
            try:
                reply = await sentinel.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                continue
            if reply:
                _answered_first(sentinels, sentinel)
                return _address(reply)
        return None

    async def follow_primary(self) -> None:
        """Ask the sentinels for the primary if the last answer is older than
        PRIMARY_CHECK_SECONDS."""
        self.check_open()
        now = time.monotonic()
        if self.is_master and self.master_address is not None and (
            now - self._checked_at >= PRIMARY_CHECK_SECONDS
        ):
            self._checked_at = now
            with contextlib.suppress(MasterNotFoundError):
                await self.get_master_address()

    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> Any:
        await self.follow_primary()
        # redis-py ignores the command name since 5.3 and warns when it is passed on
        return await super().get_connection()  # type: ignore[no-untyped-call]


class BlockingSentinelConnectionPool(FollowingSentinelConnectionPool, WaitingPool):
    """Connections to the Sentinel primary, at most `max_connections`; callers wait for one."""


def pack_command(words: tuple[Any, ...]) -> bytes:
    """A command in RESP, packed by hiredis; a value redis-py would refuse (a bool, None, an
    object) raises redis-py's DataError."""
    try:
        packed: bytes = hiredis.pack_command(words)
        return packed
    except TypeError:
        wrong = next((a for a in words if isinstance(a, bool)
                      or not isinstance(a, str | bytes | int | float | memoryview)), None)
        raise DataError(f"Invalid input of type: '{type(wrong).__name__}'. "
                        "Convert to a bytes, string, int or float first.") from None


class LeanConnection(AbstractConnection):
    """A redis-py asyncio connection that costs its caller less CPU per command, sending the
    same bytes with the same timeouts (bench/README.md, "Submits alone"):

    - commands are packed with hiredis's C packer, as redis-py's blocking client packs them
      (its asyncio connections pack in Python);
    - a write is bounded by the socket timeout only when it has to wait. redis-py wraps every
      write in ``asyncio.wait_for``, which on Python 3.11 runs it in a task of its own (a
      quarter of a single submit's client CPU) and drops a cancellation that arrives as the
      write finishes (a caller's ``asyncio.timeout`` then never fires); a write waits only
      when the transport's buffer is over its limit (Redis stopped reading), and exactly then
      the timeout applies, through ``asyncio.timeout``.

    The clients that ask the sentinels for the primary use it too, for the same reasons.

    A connection belongs to the event loop that opened it. Used from another one (a client
    kept across two ``asyncio.run`` calls, as a test suite or a framework that runs a loop per
    request does), it counts as not connected: its socket is shut down and let go, and it
    opens a new one on the loop at hand instead of failing the call.

    A connection belongs to the process that opened it, too: a child forked while it was open
    (a module-level client used by a forked worker process) lets go of its copy at once,
    without a word to Redis or to the parent's event loop (see `_leave_to_parent`), and opens
    connections of its own.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @property
    def is_connected(self) -> bool:
        return self._reader is not None and self._writer is not None and self._on_this_loop()

    async def connect(self) -> None:
        self._on_this_loop()  # a Sentinel connection checks only its reader before connecting
        await super().connect()  # type: ignore[no-untyped-call]

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[safe-super,no-untyped-call]
        self._loop = asyncio.get_running_loop()
        self._pid = os.getpid()
        _OPEN.add(self)

    def _on_this_loop(self) -> bool:
        """False for a connection opened on another event loop, after letting it go: only that
        loop could close it, so its socket is shut down (Redis sees it end at once) and its
        file descriptor closes with its transport."""
        loop = asyncio._get_running_loop()
        writer = self._writer
        if writer is None or loop is None or loop is self._loop:
            return True
        if self._pid != os.getpid():  # forked by a way that ran no fork handler
            self._leave_to_parent()
            return False
        self._reader = self._writer = None
        self._parser.on_disconnect()  # type: ignore[no-untyped-call]
        transport = writer.transport
        socket_ = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            socket_.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(RuntimeError):  # that loop is closed
            transport.abort()
        return False

    def _leave_to_parent(self) -> None:
        """Let go of a connection inherited from the parent process, which still uses it.

        The socket's shutdown would end the parent's connection too, and closing the transport
        would take the socket off the parent's event loop: the epoll instance is shared after
        a fork, and a socket taken off it never wakes the parent's calls on it again (they
        wait for their timeout, or for ever). So neither happens: this process's descriptor
        is pointed at /dev/null instead, which drops this process's hold on the connection
        and keeps the number taken, so that whatever the stale transport does later (a
        finalizer closing it, the inherited loop unregistering it) acts on /dev/null, never
        on the parent's connection nor on a connection of this process given that number."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        self._parser.on_disconnect()  # type: ignore[no-untyped-call]
        socket_ = writer.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            _point_at_devnull(socket_.fileno())

    def pack_command(self, *args: Any) -> list[bytes]:
        name, rest = args[0], args[1:]
        words = name.encode().split() if isinstance(name, str) else name.split()
        return [pack_command((*words, *rest))]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        writer = self._writer
        if writer is None:  # disconnected by another task meanwhile (a client closing)
            raise RedisConnectionError("Connection closed while a command was being sent")
        try:
            writer.writelines(command)
            transport = writer.transport
            if self.socket_timeout and (transport.get_write_buffer_size()
                                        > transport.get_write_buffer_limits()[0]):
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
            else:
                await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as error:
            await self.disconnect(nowait=True)
            number, text = error.args if len(error.args) == 2 else ("UNKNOWN", error)
            raise RedisConnectionError(
                f"Error {number} while writing to socket. {text}.") from error
        except BaseException:
            await self.disconnect(nowait=True)  # a half-sent command leaves it unusable
            raise


_OPEN: weakref.WeakSet[LeanConnection] = weakref.WeakSet()
"""The connections this process opened: a forked child lets go of its copies at once."""


def _point_at_devnull(descriptor: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, descriptor, inheritable=False)
    finally:
        os.close(null)


def _leave_inherited_connections() -> None:
    """In a forked child, before anything can close them the usual way: a parent's
    connection dropped by the child (a client replaced, garbage collected) would otherwise be
    closed by redis-py's finalizer, which takes it off the parent's event loop."""
    for connection in list(_OPEN):
        connection._leave_to_parent()
    _OPEN.clear()


os.register_at_fork(after_in_child=_leave_inherited_connections)


_LEAN: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _lean(base: type[Any]) -> type[Any]:
    """`base` (a plain, TLS or Sentinel-managed connection) as a LeanConnection."""
    if base not in _LEAN:
        _LEAN[base] = type(base.__name__, (LeanConnection, base), {})
    return _LEAN[base]


def _make_lean(pool: ConnectionPool) -> None:
    pool.connection_class = _lean(pool.connection_class)


def _make_cluster_lean(cluster: RedisCluster) -> None:
    """A Cluster client builds its nodes' connections itself, from the connection options it
    keeps (nodes it discovers) or those of the nodes it was given (where it starts)."""
    options = cluster.connection_kwargs
    options["connection_class"] = _lean(options["connection_class"])
    for node in cluster.startup_nodes:
        node.connection_class = _lean(node.connection_class)


def redis_from_url(
    url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float | None = None, **kwargs: Any
) -> aioredis.Redis:
    """A client for `url`; `kwargs` are redis-py connection options (timeouts, retry, name).

    Callers beyond `max_connections` at once wait up to `pool_timeout` (None: as long as it
    takes) for a connection instead of failing, as redis-py's own pool does beyond its 100:
    a worker of concurrency 400 whose runs checkpoint at the same moment, or a producer's
    ``asyncio.gather`` over a few hundred submits, is normal use (on a cluster: see
    `cluster_from_url`). Unless `kwargs` say otherwise, a call on a connection Redis closed
    while it sat idle (a restart, its ``timeout`` setting) is made once more on a new one: a
    pool built from a URL gets no retry from redis-py, so the first call on each pooled
    connection after a restart would fail.
    """
    if is_cluster_url(url):
        return cluster_from_url(url, **kwargs)
    kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.2, base=0.02), 1))
    if not is_sentinel_url(url):
        _check_server_url(url)
        try:
            pool = WaitingPool.from_url(
                url, max_connections=max_connections, timeout=pool_timeout, **kwargs
            )
        except ValueError:
            raise RedisURLError(INVALID_URL_MESSAGE) from None
        _make_lean(pool)
        return aioredis.Redis.from_pool(pool)
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = {
        key: value
        for key, value in kwargs.items()
        if key in ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
    }
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.sentinel_username is not None:
        sentinel_kwargs["username"] = parsed.sentinel_username
    sentinel_type: Any = Sentinel  # typed from redis-py 8.2 on, untyped before
    sentinel = sentinel_type(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    for sentinel_client in sentinel.sentinels:
        _make_lean(sentinel_client.connection_pool)
    node_kwargs: dict[str, Any] = dict(kwargs, db=parsed.db)
    if parsed.password is not None:
        node_kwargs["password"] = parsed.password
    if parsed.username is not None:
        node_kwargs["username"] = parsed.username
    if parsed.tls:
        node_kwargs.update(ssl=True, **dict(parsed.tls_options))
    node_kwargs.update(max_connections=max_connections, timeout=pool_timeout)
    client: aioredis.Redis = sentinel.master_for(
        parsed.service, connection_pool_class=BlockingSentinelConnectionPool, **node_kwargs
    )
    _make_lean(client.connection_pool)
    return client


class _SlotMapFirst(RedisCluster):
    """A Cluster client that reads the slot map before it routes its first command.

    redis-py resolves a command's routing before it reads the map of a new client, so the
    first commands of one sent at once go to any node and come back MOVED (120 concurrent
    submits on a new client: about 160 redirected calls); reading the map first routes them
    right the first time."""

    refusing = False
    """Set by `refuse_calls`: a closed Cluster client would read the slot map again and open
    connections for the next call."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        if self.refusing:
            raise ClientClosed("the client is closed")
        return await super().initialize(*args, **kwargs)


def refuse_calls(redis: Any) -> None:
    """Make every later call on a client of `redis_from_url` raise ClientClosed instead of
    opening connections again, as redis-py's clients do after they were closed."""
    if isinstance(redis, _SlotMapFirst):
        redis.refusing = True
    elif isinstance(getattr(redis, "connection_pool", None), _ClosableForGood):
        redis.connection_pool.refusing = True


async def node_of_key(redis: aioredis.Redis, key: str) -> ClusterNode:
    """The node of a Cluster client that holds `key`'s slot, by the client's slot map (read
    first if the client has not read it yet)."""
    cluster = cast(RedisCluster, redis)
    if cluster._initialize:
        await cluster.initialize()
    node = cluster.get_node_from_key(key)
    if node is None:
        raise RedisClusterException(f"no node holds the slot of {key}")
    return node


UNCAPPED = 2**31
"""A cluster node's connections: a bound no burst of calls reaches (redis-py's default, 100,
fails the call beyond it instead of waiting)."""


def cluster_from_url(url: str, **kwargs: Any) -> aioredis.Redis:
    """A Redis Cluster client, typed as a `Redis`: it offers the same commands, scripts and
    pipelines (a pipeline sends each slot's commands to that slot's node).

    Connections are not capped per node: redis-py's cluster client fails a call beyond its
    cap instead of waiting for a connection, which would turn a busy moment into errors.
    """
    parsed = parse_cluster_url(url)
    options = dict(kwargs)
    options.setdefault("max_connections", UNCAPPED)
    if parsed.tls:
        options.update(ssl=True, **dict(parsed.tls_options))
    client = _SlotMapFirst(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username, password=parsed.password, **options,
    )
    _make_cluster_lean(client)
    return client  # type: ignore[return-value]


class _NamingSentinel(redis.sentinel.Sentinel):
    """Blocking Sentinel clients ask for the primary as `FollowingSentinelConnectionPool`
    does: SENTINEL GET-MASTER-ADDR-BY-NAME names the promoted replica as soon as it is the
    primary, redis-py's SENTINEL MASTERS only once the failover is over."""

    def discover_master(self, service_name: str) -> Any:
        for sentinel in list(self.sentinels):
            try:
                reply = sentinel.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", service_name)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                continue
            if reply:
                _answered_first(self.sentinels, sentinel)
                return _address(reply)
        return super().discover_master(service_name)


def _answered_first(sentinels: list[Any], answered: Any) -> None:
    """The sentinel that answered is asked first next time (as redis-py's own discovery
    does): one that accepts connections but does not answer would otherwise cost every check
    a whole socket timeout. Moved by identity, not place: lookups running at once would
    undo each other's swaps."""
    if sentinels and sentinels[0] is not answered and answered in sentinels:
        sentinels.remove(answered)
        sentinels.insert(0, answered)


def sync_redis_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client for `url`, for set-up and clean-up outside an event loop."""
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        cluster = redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                           for host, port in parsed.nodes],
            username=parsed.username, password=parsed.password, ssl=parsed.tls,
            **dict(parsed.tls_options), **kwargs)
        return cluster  # type: ignore[return-value]
    if is_sentinel_url(url):
        sentinel_url = parse_sentinel_url(url)
        sentinel = _NamingSentinel(list(sentinel_url.sentinels), sentinel_kwargs={
            "username": sentinel_url.sentinel_username,
            "password": sentinel_url.sentinel_password})
        client: redis.Redis = sentinel.master_for(
            sentinel_url.service, db=sentinel_url.db, username=sentinel_url.username,
            password=sentinel_url.password, ssl=sentinel_url.tls,
            **dict(sentinel_url.tls_options), **kwargs)
        return client
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError:
        raise RedisURLError(INVALID_URL_MESSAGE) from None
