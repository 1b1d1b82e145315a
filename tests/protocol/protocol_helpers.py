"""Helpers shared by the task protocol tests."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from agentpool.connection import is_cluster, is_cluster_url, redis_from_url
from agentpool.protocol import ClaimedTask, FailOutcome, TaskQueue
from agentpool.redis_server import (
    RedisCluster,
    RedisServer,
    cluster_port,
    free_port,
    sentinel_admin,
)

ONE_SERVER = pytest.mark.parametrize("redis_mode", ["standalone"])
"""For what one server shows whatever the deployment (the commands and keys its ACL refuses,
databases, its script cache, its keyspace through KEYS): a cluster or Sentinel adds nothing."""


class RoundTrips:
    """Wraps a client's `execute_command`: every call is one request/reply with the server."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.commands: list[str] = []
        original = cast(Callable[..., Awaitable[Any]], client.execute_command)

        async def counting(*args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]).upper())
            return await original(*args, **options)

        client.execute_command = counting  # type: ignore[method-assign]

    @property
    def count(self) -> int:
        return len(self.commands)

    def reset(self) -> None:
        self.commands.clear()


async def claim_one(queue: TaskQueue, worker: str, lease: float = 30.0) -> ClaimedTask:
    batch = await queue.claim(worker, 1, lease)
    assert len(batch.tasks) == 1, f"{worker} expected one task, got {batch.tasks}"
    return batch.tasks[0]


async def claim_within(queue: TaskQueue, worker: str, *, within: float = 3.0,
                       lease: float = 30.0) -> ClaimedTask:
    """Claim one task, polling until one is claimable or the deadline passes."""
    deadline = time.monotonic() + within
    while True:
        batch = await queue.claim(worker, 1, lease)
        if batch.tasks:
            return batch.tasks[0]
        assert time.monotonic() < deadline, f"nothing claimable within {within}s"
        await asyncio.sleep(0.01)


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.01)


async def scan_keys(redis: aioredis.Redis, match: str = "*") -> set[str]:
    return {_text(k) async for k in redis.scan_iter(match=match, count=1000)}


async def drop_queue(redis: aioredis.Redis, queue: TaskQueue) -> None:
    """Delete every key of the queue: a test that leaves tens of thousands of tasks on the
    session's shared server would slow every later test that scans it."""
    keys = sorted(await queue_keys(redis, queue))
    for start in range(0, len(keys), 1000):
        await redis.unlink(*keys[start:start + 1000])


async def queue_keys(redis: aioredis.Redis, queue: TaskQueue) -> set[str]:
    return await scan_keys(redis, queue.prefix + "*")


async def task_keys(redis: aioredis.Redis, queue: TaskQueue) -> set[str]:
    return await scan_keys(redis, queue.prefix + "t:*")


async def queued_ids(redis: aioredis.Redis, queue: TaskQueue) -> list[str]:
    return [_text(i) for i in await redis.zrange(queue.prefix + "queued", 0, -1)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def fail_until_dead(queue: TaskQueue, worker: str, task_id: str) -> None:
    """Claim and fail `task_id` (retry delay 0) until it is dead-lettered."""
    for _ in range(100):
        task = await claim_within(queue, worker)
        assert task.id == task_id
        if await queue.fail(task, f"error {task.attempts}", delay=0) == FailOutcome.DEAD:
            return
    raise AssertionError("task never reached the dead-letter queue")


async def shard_subscribers(redis: aioredis.Redis, channel: str) -> int:
    """Subscribers of a shard channel, asked of the node that holds its slot."""
    target: dict[str, Any] = {}
    if is_cluster(redis):
        target["target_nodes"] = cast(Any, redis).get_node_from_key(channel)
    reply = await redis.pubsub_shardnumsub(channel, **target)
    return int(reply[0][1])


def database_of_its_own(redis_url: str, db: int) -> aioredis.Redis:
    """A client of database `db` of the test's Redis, for a test that flushes what it reads.
    A cluster has only database 0: the client is the cluster's (the session's other tests
    keep nothing there that a later test reads)."""
    if is_cluster_url(redis_url):
        return redis_from_url(redis_url)
    return redis_from_url(redis_url.rsplit("/", 1)[0] + f"/{db}")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1: the authority of its own, as a
    private CA's would be, that no client trusts unless told to."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


def _tls_args(port: int, key: Path, cert: Path) -> tuple[str, ...]:
    return ("--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")


@contextmanager
def tls_redis(directory: Path) -> Iterator[tuple[RedisServer, str]]:
    """A redis-server that also listens with TLS (a self-signed certificate for 127.0.0.1);
    yields it and the ``rediss://`` URL of its TLS port."""
    key, cert = self_signed(directory)
    tls_port = free_port()
    with RedisServer(extra_args=_tls_args(tls_port, key, cert)) as server:
        yield server, f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"


@contextmanager
def tls_cluster(directory: Path) -> Iterator[tuple[int, Path]]:
    """A one-node Redis Cluster holding every slot, whose clients and cluster bus speak TLS
    with a self-signed certificate; yields its TLS port and the certificate."""
    key, cert = self_signed(directory)
    workdir = directory / "node"
    workdir.mkdir()
    tls_port = cluster_port()
    with RedisServer(port=cluster_port(), workdir=workdir, extra_args=(
            "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
            "--tls-cluster", "yes", *_tls_args(tls_port, key, cert))) as server:
        with sentinel_admin(server.port, None) as node:
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 30
            while node.cluster("info")["cluster_state"] != "ok":
                if time.monotonic() > deadline:
                    raise AssertionError("the one-node TLS cluster never reached state ok")
                time.sleep(0.05)
        yield tls_port, cert


def replica_of(cluster: RedisCluster, port: int, within: float = 30.0) -> RedisServer:
    """The replica of the cluster's primary on `port`. After a failover the old primary turns
    into the new one's replica a moment after the new one took over: waited for."""
    deadline = time.monotonic() + within
    while True:
        for server in cluster.servers:
            with sentinel_admin(server.port, cluster.password) as node:
                replication = node.info("replication")
            if replication.get("role") == "slave" and int(replication["master_port"]) == port:
                return server
        if time.monotonic() > deadline:
            raise AssertionError(f"no replica of the primary on port {port}")
        time.sleep(0.05)


def promoted(port: int, within: float = 30.0) -> bool:
    """Whether the server on `port` is a primary within `within` seconds."""
    with sentinel_admin(port) as node:
        deadline = time.monotonic() + within
        while node.info("replication").get("role") != "master":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    return True
