"""Which pools serve the same queue on the same Redis (agentpool_operator.queue_sharing)."""

from __future__ import annotations

from agentpool_operator.queue_sharing import REASON, queue_address, sharing_problem


def test_the_address_leaves_out_credentials_and_options_and_defaults_the_database() -> None:
    assert queue_address("redis://u:secret@Redis.ns:6379/0?socket_timeout=2", "q") == \
        queue_address("redis://redis.ns:6379", "q") == "redis://redis.ns:6379/0 q"
    assert "secret" not in queue_address("redis://:secret@redis:6379/2", "q")


def test_another_queue_database_or_server_is_not_the_same_address() -> None:
    one = queue_address("redis://redis:6379/0", "q")
    assert one != queue_address("redis://redis:6379/0", "other")
    assert one != queue_address("redis://redis:6379/1", "q")
    assert one != queue_address("redis://redis-b:6379/0", "q")


def test_every_pool_on_a_shared_queue_names_the_others() -> None:
    shared = queue_address("redis://redis:6379/0", "agents")
    addresses = {("team-a", "agents"): shared, ("team-b", "agents"): shared,
                 ("team-c", "bots"): shared, ("team-d", "x"): queue_address("redis://r", "x"),
                 ("team-e", "down"): None}
    problem = sharing_problem(("team-b", "agents"), addresses)
    assert problem is not None and problem.reason == REASON
    assert problem.message.startswith(
        "queue 'agents' on redis://redis:6379/0 is also served by team-a/agents, team-c/bots:")
    assert sharing_problem(("team-d", "x"), addresses) is None
    assert sharing_problem(("team-e", "down"), addresses) is None
    assert sharing_problem(("team-z", "unknown"), addresses) is None
