"""A pool's Redis: its URL (literal or from a Secret), a shared client, its queue figures.

Every failure becomes a `QueueAccessError` whose reason and message go into the pool's
conditions and Events, so messages never carry the URL's credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from kubernetes.client.exceptions import ApiException
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool

from agentpool.acl import close_replica_clients
from agentpool.connection import (
    INVALID_URL_MESSAGE,
    RedisURLError,
    is_cluster,
    is_cluster_url,
    is_sentinel_url,
    redis_from_url,
)
from agentpool.models import RedisSpec
from agentpool.protocol import ProtocolError, QueueFigures, TaskQueue
from agentpool.redis_errors import (
    POOL_PASSWORD_PLACE,
    AuthProblem,
    auth_problem,
    describe_redis_error,
    sentinel_failure,
    without_object_reprs,
)
from agentpool.urls import URL_PREFIXES, URL_PREFIXES_TEXT, host_port

from .kube import api_error_message
from .status import Problem, sanitize

CONNECT_TIMEOUT = 3.0
COMMAND_TIMEOUT = 5.0
MAX_CONNECTIONS_PER_REDIS = 16
"""Connections one Redis's client may open. A pool's round uses one at a time, so when the
rounds of more pools meet, the others wait a moment for one."""


class QueueAccessError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(sanitize(message))
        self.reason = reason
        self.message = sanitize(message)

    @property
    def problem(self) -> Problem:
        return Problem(self.reason, self.message)


class SecretReader(Protocol):
    async def get_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


async def resolve_redis_url(secrets: SecretReader, namespace: str, spec: RedisSpec) -> str:
    """The pool's Redis URL: `spec.url`, or the value of `urlSecretRef` in the pool's namespace."""
    if spec.url is not None:
        return spec.url
    ref = spec.url_secret_ref
    if ref is None:
        raise QueueAccessError("RedisNotConfigured", "set redis.url or redis.urlSecretRef")
    where = f"Secret {namespace}/{ref.name}"
    try:
        secret = await secrets.get_secret(namespace, ref.name)
    except ApiException as error:
        if error.status == 403:
            raise QueueAccessError(
                "SecretForbidden", f"the operator may not read {where}: {api_error_message(error)}"
            ) from None
        raise QueueAccessError(
            "SecretUnreadable", f"cannot read {where}: {api_error_message(error)}"
        ) from None
    if secret is None:
        raise QueueAccessError("SecretNotFound", f"{where} not found")
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    if ref.key in data:
        try:
            url = base64.b64decode(data[ref.key], validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise QueueAccessError(
                "SecretInvalid", f"{where} key {ref.key!r} is not valid base64 text"
            ) from None
    elif ref.key in string_data:
        url = str(string_data[ref.key]).strip()
    else:
        raise QueueAccessError("SecretKeyMissing", f"{where} has no key {ref.key!r}")
    if not url.startswith(URL_PREFIXES):
        raise QueueAccessError(
            "SecretInvalid", f"{where} key {ref.key!r} does not hold a {URL_PREFIXES_TEXT} URL"
        )
    return url


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def rewrite_address(url: str, address_map: Mapping[str, str]) -> str:
    """Replace the URL's host:port when the map names it (an operator outside the cluster
    reaches an in-cluster Redis through a port-forward)."""
    parts = urlsplit(url)
    host_port = parts.netloc.rpartition("@")[2]
    target = address_map.get(host_port)
    if target is None and parts.port is None:
        target = address_map.get(f"{host_port}:6379")
    if target is None:
        return url
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{target}" if credentials else target
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class _SharedClient:
    client: aioredis.Redis
    pools: set[tuple[str, str]] = field(default_factory=set)


class RedisClients:
    """One `redis.asyncio.Redis`, and so one connection pool, per distinct Redis URL.

    Every pool whose URL (credentials included) is the same shares it; a pool whose URL
    changes moves to the client of its new URL, and a client is closed when its last pool
    goes. Clients are keyed by a digest: the URL itself is never a key, a label or a log field.
    A client opens at most MAX_CONNECTIONS_PER_REDIS connections, however many pools use it.
    """

    def __init__(self, address_map: Mapping[str, str] | None = None) -> None:
        self._shared: dict[str, _SharedClient] = {}
        self._pool_keys: dict[tuple[str, str], str] = {}
        self._address_map = dict(address_map or {})

    def __len__(self) -> int:
        """Distinct Redis connection pools open."""
        return len(self._shared)

    async def client(self, namespace: str, pool: str, url: str) -> aioredis.Redis:
        key = url_digest(url)
        previous = self._pool_keys.get((namespace, pool))
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = _SharedClient(_connect(url, self._address_map))
        shared.pools.add((namespace, pool))
        self._pool_keys[(namespace, pool)] = key
        if previous is not None and previous != key:
            await self._release(namespace, pool, previous)
        return shared.client

    @contextlib.asynccontextmanager
    async def own(self, url: str) -> AsyncIterator[aioredis.Redis]:
        """A client of its own for a one-off job, closed after it: a deleted pool's clean-up
        runs while the pool's loop ends and forgets the pool's shared client, which would
        close it under the job."""
        client = _connect(url, self._address_map)
        try:
            yield client
        finally:
            await _close(client)

    async def forget(self, namespace: str, pool: str) -> None:
        key = self._pool_keys.pop((namespace, pool), None)
        if key is not None:
            await self._release(namespace, pool, key)

    async def close(self) -> None:
        shared, self._shared, self._pool_keys = list(self._shared.values()), {}, {}
        for entry in shared:
            await _close(entry.client)

    async def _release(self, namespace: str, pool: str, key: str) -> None:
        shared = self._shared.get(key)
        if shared is None:
            return
        shared.pools.discard((namespace, pool))
        if not shared.pools:
            del self._shared[key]
            await _close(shared.client)


async def _close(client: aioredis.Redis) -> None:
    await close_replica_clients(client)
    await client.aclose()


def _connect(url: str, address_map: Mapping[str, str]) -> aioredis.Redis:
    try:
        if not (is_sentinel_url(url) or is_cluster_url(url)):
            url = rewrite_address(url, address_map)
        return redis_from_url(
            url,
            max_connections=MAX_CONNECTIONS_PER_REDIS,
            pool_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            health_check_interval=30,
        )
    except RedisURLError as error:
        raise QueueAccessError("InvalidRedisURL", str(error)) from None
    except ValueError:
        # The URL parser's message can quote part of the password: never pass it on.
        raise QueueAccessError("InvalidRedisURL", INVALID_URL_MESSAGE) from None


def url_origin(namespace: str, spec: RedisSpec) -> str | None:
    """Where the pool's URL comes from when a Secret holds it (its name and key, never its
    value), for messages that tell where to mend a password."""
    ref = spec.url_secret_ref
    if spec.url is not None or ref is None:
        return None
    return f"Secret {namespace}/{ref.name} key {ref.key!r}"


async def read_figures(queue: TaskQueue, *, origin: str | None = None) -> QueueFigures:
    """The queue's figures, with every Redis failure turned into a `QueueAccessError`.
    `origin` (see `url_origin`) names the Secret whose URL a refused password came in."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
            return await queue.figures()
    except redis.exceptions.AuthenticationError as error:
        raise QueueAccessError(
            "RedisAuthFailed", auth_message(error, redis_address(queue.redis), origin)
        ) from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
            TimeoutError, redis.exceptions.RedisClusterException) as error:
        raise QueueAccessError(
            "RedisUnreachable", f"cannot reach Redis: {unreachable(queue.redis, error)}"
        ) from None
    except (redis.exceptions.RedisError, ProtocolError) as error:
        raise QueueAccessError("RedisError", f"Redis answered with an error: {error}") from None


def auth_message(error: BaseException, address: str, origin: str | None) -> str:
    """A refused or missing password: which Redis (host:port), and which Secret's URL
    carries the password when one does."""
    where = f"Redis at {address}"
    if auth_problem(error) is AuthProblem.PASSWORD_REQUIRED:
        place = f"the URL in {origin}" if origin else POOL_PASSWORD_PLACE
        return f"{where} requires a password: put it in {place}"
    refused = f"{where} refused the password" + (f" of the URL in {origin}" if origin else "")
    if auth_problem(error) is AuthProblem.PASSWORD_REFUSED:
        return refused
    return f"{refused}: {describe_redis_error(error)}"


def unreachable(client: aioredis.Redis, error: BaseException) -> str:
    """Why Redis could not be reached, without the client reprs redis-py's errors may quote:
    through Sentinel, which primary was asked of which sentinels, and the last error."""
    pool = getattr(client, "connection_pool", None)
    if isinstance(error, MasterNotFoundError) and isinstance(pool, SentinelConnectionPool):
        return sentinel_failure(pool.service_name, _sentinel_addresses(pool), str(error))
    return without_object_reprs(str(error)) or type(error).__name__


def redis_address(client: aioredis.Redis) -> str:
    """Where a client connects, as host:port (never its credentials): through Sentinel, the
    primary it found last (else the service and its sentinels); of a cluster, the nodes it
    starts from."""
    if is_cluster(client):
        nodes = cast(Any, client).startup_nodes
        return ", ".join(host_port(node.host, node.port) for node in nodes)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        if pool.master_address is not None:
            return host_port(*pool.master_address)
        return (f"the primary of {pool.service_name!r} "
                f"(sentinels {', '.join(_sentinel_addresses(pool))})")
    options = pool.connection_kwargs
    if "path" in options:
        return str(options["path"])
    return host_port(str(options.get("host", "localhost")), int(options.get("port", 6379)))


def _sentinel_addresses(pool: SentinelConnectionPool) -> list[str]:
    addresses = []
    for sentinel in pool.sentinel_manager.sentinels:
        options = sentinel.connection_pool.connection_kwargs
        addresses.append(host_port(str(options.get("host")), int(options.get("port", 26379))))
    return addresses
