"""Redis ACL rules that confine a credential to one queue.

A queue's keys and its pub/sub channels all live under ``ap:{<queue>}:`` (see
`agentpool.protocol.key_prefix`), and the protocol's Lua scripts touch nothing else, so one key
pattern and one channel pattern confine a user to one queue. Scripts run with the caller's ACL:
every command a script calls must be allowed here too.

Roles:
- ``worker``: the whole worker protocol (claim, heartbeat, complete, fail, release, requeue of
  its own pod's earlier instances, queue defaults) on its queue's keys and channels;
- ``producer``: submit, read tasks and results, wait for them, cancel, read the queue's figures.
  It reads every key of its queue but writes only the keys a submit or a cancel writes, and has
  none of the commands a claim or a delete needs (ZPOPMIN, SADD, SREM, DEL, BLPOP), so a claim
  or a purge with it fails before it changes anything.

Neither role has a command that reaches beyond its keys (KEYS, SCAN, FLUSHALL, FLUSHDB,
CONFIG, ACL, SCRIPT FLUSH, DEBUG, MONITOR, CLIENT KILL...).

Adding a command to the protocol is one entry in `SCRIPT_COMMANDS` (called inside a script) or
in a role's direct list; the tests check every script's commands against these lists.
"""

from __future__ import annotations

import enum
import hashlib
import weakref
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.cluster import REPLICA
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import is_cluster
from .protocol import QUEUE_NAME, ProtocolError, key_prefix
from .ratelimit import NAME as LIMIT_NAME
from .ratelimit import key_prefix as limit_prefix

ACL_USER_PREFIX = "agentpool"


class Role(enum.StrEnum):
    WORKER = "worker"
    PRODUCER = "producer"


CONNECTION_COMMANDS = (
    "ping", "select", "client|setname", "hello", "cluster|slots", "command", "asking",
)
"""What a client sends on connecting or to check a connection: SELECT for a URL's database
other than 0, CLIENT SETNAME for a named client, HELLO for RESP3, CLUSTER SLOTS and COMMAND
for a cluster client to learn which node holds which slot and where each command's keys are,
ASKING before a command on a key whose slot is being moved to another node (resharding; the
command after it is checked against the rules as any other).
Key patterns hold in every database. (redis-py also tries CLIENT SETINFO, which Redis 7.0
does not know and which a refusal does not disturb: it is left out so that the rules load on
Redis 6 and 7.0.)"""

SCRIPTING_COMMANDS = ("evalsha", "script|load", "script|exists")
"""How redis-py runs a registered script: EVALSHA, loading it on NOSCRIPT (SCRIPT EXISTS and
SCRIPT LOAD before a pipeline). Not EVAL, not SCRIPT FLUSH/KILL."""

SCRIPT_COMMANDS = (
    "time", "exists", "get", "set", "incr", "incrby", "expire", "persist",
    "hget", "hmget", "hgetall", "hset", "hdel", "hexists", "hincrby",
    "zadd", "zrem", "zscore", "zrank", "zpopmin", "zcard", "zcount", "zrange",
    "zrangebyscore", "zrevrange", "zrevrangebyscore", "zremrangebyscore",
    "sadd", "srem", "smembers", "scard",
    "llen", "rpush", "del", "publish", "spublish", "xadd", "xrevrange", "xdel", "pttl",
    "pexpire", "append", "strlen",
)
"""Every command the protocol's Lua scripts (agentpool/lua/*.lua) call (PUBLISH on Redis 6,
SPUBLISH on 7 and later)."""

WORKER_DIRECT_COMMANDS = (
    "hset", "hget", "hmget", "hgetall", "smembers", "scard", "zrange", "zrevrange", "blpop",
    "wait", "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe",
)
"""Outside scripts: queue defaults, a task's hash, orphaned claims, the wake-up list, the
WAIT of replicated durability, and the subscription that tells a waiter for a slot of a
rate limit's ``maxConcurrent`` of its grant (on the channels the user may use)."""

PRODUCER_COMMANDS = (
    "time", "exists", "get", "set", "incr", "incrby", "expire", "persist", "append", "strlen",
    "hget", "hmget", "hgetall", "hset", "hincrby",
    "zadd", "zrem", "zscore", "zrank", "zcard", "zcount", "zrange", "zrevrange",
    "zrangebyscore", "zrevrangebyscore", "scard", "smembers", "llen", "rpush", "publish",
    "spublish",
    "getrange", "xadd", "xread", "xrange",
    "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "wait",
)
"""What submit, get, wait, cancel, following a task's events, the figures and the console's
task lists and task pages (the start of a checkpoint, of the tasks after it: GETRANGE) call,
in scripts and outside them."""

PRODUCER_WRITABLE_KEYS = ("t:*", "ev:*", "cp:*", "queued", "delayed", "dead", "stats", "wake",
                          "seq", "idem:*", "durable", "listening", "full", "deferred",
                          "deferred_expiry", "next:*", "fair", "parked:*", "parked_expiry")
"""The keys a submit or a cancel writes (a submit `after` other tasks appends its id to their
``next:`` keys and waits in ``deferred``, and in ``deferred_expiry`` when it expires; a
tenant's submit notes its place in ``fair``; a cancel takes a task parked for its tenant's cap
out of ``parked:<tenant>`` and ``parked_expiry``, and ``cancel_waiting`` puts those back in
the queue first; a
cancel closes the task's event stream and sets the result TTL on the checkpoint of a task
that was waiting for its next attempt, and first touches ``full``, a key that never exists,
so that it runs when Redis is full: see ``run_when_full`` in common.lua), and the flag a
producer waiting for results sets; every other key of the queue is read-only to a producer
(leases, owner sets, the worker registry, the fence counter, config, drain)."""


def _commands(role: Role) -> tuple[str, ...]:
    if role is Role.WORKER:
        wanted: Iterable[str] = (*SCRIPT_COMMANDS, *WORKER_DIRECT_COMMANDS)
    else:
        wanted = PRODUCER_COMMANDS
    return tuple(dict.fromkeys((*CONNECTION_COMMANDS, *SCRIPTING_COMMANDS, *wanted)))


def acl_rules(queue: str, role: Role, password_hashes: Iterable[str] = (),
              rate_limits: Iterable[str] = (), submits_to: Iterable[str] = ()) -> list[str]:
    """The ``ACL SETUSER <user>`` rules that confine `role` to `queue`.

    A worker also gets the keys and channels of the pool's `rate_limits` (``ap:{rl:<name>}:*``,
    see `agentpool.ratelimit`), and a producer's rights on each queue of `submits_to` (the other
    queues its handlers submit to), each as a selector of its own: on those queues it may do
    what a producer may (submit, read, cancel, and the writes those need: see
    docs/security.md) and nothing a worker does (claim, complete, delete). Selectors are
    Redis 7's; each starts with ``resetchannels``, as a selector starts with the server's
    ``acl-pubsub-default``.

    `password_hashes` are SHA-256 hex digests (see `password_hash`): the password itself is
    never sent in the command, so it cannot show in SLOWLOG, MONITOR or ACL LOG. Several
    hashes are allowed at once (a rotation adds the new one before removing the old). The
    rules start with ``reset``: applying them again replaces whatever the user had.
    """
    if not QUEUE_NAME.match(queue):
        raise ProtocolError(f"invalid queue name {queue!r}")
    hashes = list(password_hashes)
    for digest in hashes:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("a password hash is 64 lowercase hexadecimal digits (SHA-256)")
    others = list(dict.fromkeys(submits_to))
    for other in others:
        if not QUEUE_NAME.match(other):
            raise ProtocolError(f"invalid queue name {other!r}")
    if others and role is not Role.WORKER:
        raise ValueError("only a worker submits to other queues")
    prefix = key_prefix(queue)
    rules = ["reset", "resetchannels", "on" if hashes else "off"]
    rules += [f"#{digest}" for digest in hashes]
    if role is Role.WORKER:
        rules.append(f"~{prefix}*")
        for name in sorted(set(rate_limits)):
            if not LIMIT_NAME.match(name):
                raise ProtocolError(f"invalid rate limit name {name!r}")
            rules += [f"~{limit_prefix(name)}*", f"&{limit_prefix(name)}*"]
        rules.append(f"&{prefix}*")
        rules += [f"+{command}" for command in _commands(role)]
    else:
        rules += _producer_permissions(prefix)
    rules += [f"({' '.join(['resetchannels', *_producer_permissions(key_prefix(other))])})"
              for other in others if other != queue]
    return rules


def _producer_permissions(prefix: str) -> list[str]:
    """A producer's keys, channels and commands on the queue of `prefix`."""
    return [f"%R~{prefix}*", *(f"~{prefix}{key}" for key in PRODUCER_WRITABLE_KEYS),
            f"&{prefix}*", *(f"+{command}" for command in _commands(Role.PRODUCER))]


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_username(namespace: str, pool: str, role: Role) -> str:
    """One user per pool and role: ``agentpool:<namespace>:<pool>:<role>`` (names and
    namespaces hold no ':', so two pools never share a user)."""
    return f"{ACL_USER_PREFIX}:{namespace}:{pool}:{role.value}"


SHARDED_PUBSUB_COMMANDS = frozenset({"spublish", "ssubscribe", "sunsubscribe"})
"""Redis 7's sharded pub/sub, which Redis 6 does not know (its scripts PUBLISH instead)."""


UNUSABLE_NODE_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


async def _on_every_node(admin: aioredis.Redis, *command: Any) -> Any:
    """`command` on the server, on the primary and every replica the sentinels name, or on
    every node of a cluster: Redis keeps ACL users per node and does not replicate them, and
    a replica that lacks a pool's user would refuse its workers the moment it is promoted
    (a replica this client cannot reach is left to the next round).
    On a cluster redis-py knows the nodes that ``CLUSTER SLOTS`` lists,
    which leaves out a replica that has no data yet and one added since the client read the
    map; ``CLUSTER NODES`` names them, and they get the command too. On a cluster the reply
    is one per node; otherwise the primary's."""
    if not is_cluster(admin):
        reply = await admin.execute_command(*command)  # type: ignore[no-untyped-call]
        if isinstance(admin.connection_pool, SentinelConnectionPool):
            await _on_sentinel_replicas(admin.connection_pool, *command)
        return reply
    cluster: Any = admin
    replies: dict[str, Any] = await cluster.execute_command(
        *command, target_nodes=RedisCluster.ALL_NODES)
    for node in await _nodes_off_the_map(cluster):
        try:
            replies[node.name] = await cluster.execute_command(*command, target_nodes=node)
        except (RedisConnectionError, RedisTimeoutError):
            pass
        finally:
            await node.disconnect()
    return replies


_replica_clients: weakref.WeakKeyDictionary[SentinelConnectionPool, dict[
    tuple[str, int], aioredis.Redis]] = weakref.WeakKeyDictionary()
"""Per Sentinel client, a client of each replica it has reached: the operator applies users
every round, and a new connection per replica and round would be churn for nothing."""


async def _on_sentinel_replicas(pool: SentinelConnectionPool, *command: Any) -> None:
    clients = _replica_clients.setdefault(pool, {})
    replicas = set(await pool.sentinel_manager.discover_slaves(pool.service_name))
    for gone in set(clients) - replicas:
        await clients.pop(gone).aclose()
    for host, port in replicas:
        replica = clients.get((host, port))
        if replica is None:
            options = {key: value for key, value in pool.connection_kwargs.items()
                       if key not in ("connection_pool", "himport_registry")}
            if issubclass(pool.connection_class, SSLConnection):
                options["ssl"] = True
            replica = clients[(host, port)] = aioredis.Redis(host=host, port=port, **options)
        try:
            await replica.execute_command(*command)  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError):
            await clients.pop((host, port)).aclose()


async def close_replica_clients(admin: aioredis.Redis) -> None:
    """Close the clients of Sentinel replicas that applying users to `admin` opened (call it
    when closing `admin`)."""
    pool = getattr(admin, "connection_pool", None)
    clients = _replica_clients.pop(pool, {}) if isinstance(pool, SentinelConnectionPool) else {}
    for client in clients.values():
        await client.aclose()


async def _nodes_off_the_map(cluster: Any) -> list[ClusterNode]:
    try:
        nodes = await cluster.execute_command("CLUSTER NODES", target_nodes=RedisCluster.RANDOM)
    except ResponseError:  # a user that may not read the topology: the map is all there is
        return []
    known = {node.name for node in cluster.get_nodes()}
    missing = []
    for address, about in nodes.items():
        host, _, port = str(address).rpartition(":")
        if (address in known or not host or not port.isdigit()
                or UNUSABLE_NODE_FLAGS & set(str(about.get("flags", "")).split(","))):
            continue
        missing.append(ClusterNode(host, int(port), REPLICA,
                                   **cluster.nodes_manager.connection_kwargs))
    return missing


async def set_user(admin: aioredis.Redis, username: str, rules: Iterable[str]) -> None:
    """Create or replace the user (the rules start with ``reset``)."""
    rules = list(rules)
    try:
        await _on_every_node(admin, "ACL SETUSER", username, *rules)
    except ResponseError as error:
        if "unknown command" not in str(error).lower():
            raise
        known = [r for r in rules if r.removeprefix("+") not in SHARDED_PUBSUB_COMMANDS]
        if known == rules:
            raise
        await _on_every_node(admin, "ACL SETUSER", username, *known)


async def delete_user(admin: aioredis.Redis, username: str) -> bool:
    """Remove the user; its open connections are closed by Redis. False when it did not exist."""
    reply = await _on_every_node(admin, "ACL DELUSER", username)
    if isinstance(reply, dict):  # a cluster answers per node
        return any(bool(r) for r in reply.values())
    return bool(reply)


async def disconnect_user(admin: aioredis.Redis, username: str) -> None:
    """Close the user's open connections (``CLIENT KILL USER``) on every node, as `set_user`:
    Redis checks a password only when a connection authenticates, so one opened with a
    password the user no longer has stays open until closed."""
    await _on_every_node(admin, "CLIENT KILL", "USER", username)
