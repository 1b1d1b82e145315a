"""A pool's ACL users while its queue's slot moves to another node of a Redis Cluster
(resharding): the client follows -ASK with ASKING, which the users must be allowed. Against
a real cluster of two primaries, one slot set migrating by hand."""

from __future__ import annotations

import redis

from agentpool.acl import Role, acl_rules, password_hash, set_user
from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisCluster
from agentpool.urls import with_credentials


async def test_a_worker_and_a_producer_follow_their_queue_while_its_slot_moves() -> None:
    with RedisCluster(primaries=2) as cluster:
        admin = redis_from_url(cluster.url)
        queue = TaskQueue(admin, "moving")
        moved_id, staying_id = await queue.submit({"n": 1}), await queue.submit({"n": 2})
        for role in Role:
            await set_user(admin, f"moving-{role.value}",
                           acl_rules("moving", role, [password_hash("pw")]))
        slot = redis.cluster.key_slot(queue.task_key(moved_id).encode())
        nodes = {port: redis.Redis(port=port) for port in cluster.ports}
        ids = {port: node.execute_command("CLUSTER", "MYID").decode()
               for port, node in nodes.items()}
        source = next(p for p, node in nodes.items()
                      if node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
        target = next(p for p in cluster.ports if p != source)
        nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        nodes[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS",
                                      queue.task_key(moved_id))
        users = [redis_from_url(with_credentials(cluster.url, f"moving-{role.value}", "pw"))
                 for role in Role]
        try:
            for client in users:
                seen = TaskQueue(client, "moving")
                moved, staying = await seen.get(moved_id), await seen.get(staying_id)
                assert moved is not None and staying is not None
                assert (moved.state, staying.state) == ("queued", "queued")
        finally:
            for client in users:
                await client.aclose()
            await admin.aclose()
            for node in nodes.values():
                node.close()
