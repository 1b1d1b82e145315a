"""The chaos soak against Redis Cluster:
``python -m bench.chaos --cluster [--durability replicated]``.

Three primaries with a replica each on loopback (agentpool.redis_server.RedisCluster,
``cluster-node-timeout`` 1000 ms). Everything else is the Sentinel soak's
(bench/chaos_sentinel.py: the producer with an idempotency key per task, the workers, the
operator's shared client reading figures and reaping, what is measured and counted), with the
``redis+cluster://`` URL. The failovers are of the primary that holds the queue's slot, in turn
by kill -9 (its replica takes the slots once the other primaries count the node failed) and by
``CLUSTER FAILOVER`` sent to its replica (a handover: the replica catches up, then the old
primary stops taking writes); the old primary comes back as the new one's replica (started
again after a kill, on its own data directory and ``nodes.conf``) before the next one.
Promotion is when the replica's own ``CLUSTER NODES`` line says it is a primary holding the
queue's slot.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from agentpool.acl import Role
from agentpool.redis_server import RedisCluster, RedisServer, RedisServerError, sentinel_admin
from bench.chaos import QUEUE, Options
from bench.chaos_sentinel import SentinelSoak

NODE_TIMEOUT_MS = 1000


class ClusterFailovers:
    """What the soak asks of its Redis, for a cluster: its URL, which server holds the queue,
    failing that server over, and bringing it back."""

    def __init__(self) -> None:
        self.cluster = RedisCluster(primaries=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS)
        self.slot = key_slot(f"ap:{{{QUEUE}}}:queued".encode())

    @property
    def url(self) -> str:
        return self.cluster.url

    def start(self) -> None:
        self.cluster.start()

    def close(self) -> None:
        self.cluster.close()

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.cluster.servers if server.port == port)

    def primary_port(self) -> int | None:
        """The running server that says, in its own ``CLUSTER NODES`` line, that it is a
        primary holding the queue's slot."""
        for server in self.cluster.servers:
            if server.process is None:
                continue
            with contextlib.suppress(redis.RedisError), sentinel_admin(server.port) as node:
                for line in str(node.execute_command("CLUSTER", "NODES")).splitlines():
                    fields = line.split()
                    flags = fields[2].split(",") if len(fields) > 2 else []
                    if "myself" in flags and "master" in flags and self._holds(fields[8:]):
                        return server.port
        return None

    def _holds(self, ranges: list[str]) -> bool:
        for part in ranges:
            if part.startswith("["):  # a slot being migrated
                continue
            first, _, last = part.partition("-")
            if int(first) <= self.slot <= int(last or first):
                return True
        return False

    def replica_of(self, port: int) -> RedisServer:
        for server in self.cluster.servers:
            if server.process is None or server.port == port:
                continue
            with contextlib.suppress(redis.RedisError), sentinel_admin(server.port) as node:
                replication = node.info("replication")
                if (replication.get("role") == "slave"
                        and int(replication.get("master_port", 0)) == port):
                    return server
        raise RedisServerError(f"no replica of the primary on {port}")

    def hand_over(self) -> None:
        """A graceful failover: ``CLUSTER FAILOVER`` on the replica of the queue's primary."""
        primary = self.primary_port()
        if primary is None:
            raise RedisServerError("no primary holds the queue's slot")
        with sentinel_admin(self.replica_of(primary).port) as replica:
            replica.execute_command("CLUSTER", "FAILOVER")

    def wait_healthy(self, timeout: float = 60.0, *, synced: bool = False) -> None:
        """Every node up, seeing the whole cluster, every replica linked to its primary."""
        self.cluster.wait_ok(timeout)

    def restore(self, port: int, *, primary: int, synced: bool = False) -> None:
        """Start a killed primary again: it learns from the others that its replica took its
        slots and becomes that one's replica."""
        self.server_on(port).start()
        self.wait_healthy()
        deadline = time.monotonic() + 60
        with sentinel_admin(port) as node:
            while node.info("replication").get("role") != "slave":
                if time.monotonic() > deadline:
                    raise RedisServerError(f"the server on {port} did not rejoin as a replica")
                time.sleep(0.05)


class ClusterSoak(SentinelSoak):
    handover_name = "CLUSTER FAILOVER"

    def __init__(self, opts: Options, logs: Path) -> None:
        super().__init__(opts, logs)
        self.group = ClusterFailovers()

    def url_of(self, role: Role) -> str:
        return self.group.url

    def hand_over(self) -> None:
        self.group.hand_over()
