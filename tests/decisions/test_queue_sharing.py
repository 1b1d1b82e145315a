"""Which pools serve the same queue on the same Redis (agentpool_operator.queue_sharing)."""

from __future__ import annotations

import pytest

from agentpool_operator.queue_sharing import (
    REASON,
    UNSERVED,
    queue_address,
    sharing_problem,
    unserved_problem,
)


def test_the_address_leaves_out_credentials_and_options_and_defaults_the_database() -> None:
    assert queue_address("redis://u:secret@Redis.ns:6379/0?socket_timeout=2", "q", "a") == \
        queue_address("redis://redis.ns:6379", "q", "b") == "redis://redis.ns.svc:6379/0 q"
    assert "secret" not in queue_address("redis://:secret@redis:6379/2", "q", "a")


def test_another_queue_database_or_server_is_not_the_same_address() -> None:
    one = queue_address("redis://redis:6379/0", "q", "a")
    assert one != queue_address("redis://redis:6379/0", "other", "a")
    assert one != queue_address("redis://redis:6379/1", "q", "a")
    assert one != queue_address("redis://redis-b:6379/0", "q", "a")


@pytest.mark.parametrize("url, namespace", [
    ("redis://redis:6379/0", "shared"),
    ("redis://redis.shared:6379/0", "team-a"),
    ("redis://redis.shared.svc:6379/0", "team-b"),
    ("redis://REDIS.shared.svc.cluster.local.:6379/0", "team-c"),
])
def test_a_services_names_are_one_server(url: str, namespace: str) -> None:
    assert queue_address(url, "q", namespace) == "redis://redis.shared.svc:6379/0 q"


def test_the_same_short_name_in_two_namespaces_is_two_services() -> None:
    assert queue_address("redis://redis:6379/0", "q", "team-a") != \
        queue_address("redis://redis:6379/0", "q", "team-b")


@pytest.mark.parametrize("url", [
    "redis://10.0.0.7:6379/0", "redis://[fd00::7]:6379/0", "redis://localhost:6379/0",
    "redis://redis.example.com:6379/0",
])
def test_addresses_and_other_names_stay_as_written(url: str) -> None:
    assert queue_address(url, "q", "team-a") == queue_address(url, "q", "team-b") == f"{url} q"


def test_every_host_of_a_sentinel_url_is_written_out() -> None:
    assert queue_address("redis+sentinel://s-0.sentinel:26379,s-1.sentinel.svc:26379/mymaster/0",
                         "q", "a") == (
        "redis+sentinel://s-0.sentinel.svc:26379,s-1.sentinel.svc:26379/mymaster/0 q")


def test_every_pool_on_a_shared_queue_names_the_others() -> None:
    shared = queue_address("redis://redis.db:6379/0", "agents", "team-a")
    addresses = {("team-a", "agents"): shared, ("team-b", "agents"): shared,
                 ("team-c", "bots"): shared, ("team-d", "x"): queue_address("redis://r", "x", "d"),
                 ("team-e", "down"): None}
    problem = sharing_problem(("team-b", "agents"), addresses)
    assert problem is not None and problem.reason == REASON
    assert problem.message.startswith(
        "queue 'agents' on redis://redis.db.svc:6379/0 is also served by team-a/agents, "
        "team-c/bots:")
    assert sharing_problem(("team-d", "x"), addresses) is None
    assert sharing_problem(("team-e", "down"), addresses) is None
    assert sharing_problem(("team-z", "unknown"), addresses) is None


def test_a_queue_handed_tasks_that_no_pool_serves_is_named() -> None:
    def at(queue: str) -> str:
        return queue_address("redis://redis.db:6379/0", queue, "team-a")

    addresses = {("team-a", "planners"): at("plan"), ("team-b", "coders"): at("code"),
                 ("team-c", "elsewhere"): queue_address("redis://other:6379/0", "review", "c"),
                 ("team-d", "broken"): None}
    problem = unserved_problem(("team-a", "planners"), addresses,
                               ["code", "review", "plan", "review", "tests"],
                               every_pool_seen=True)
    assert problem is not None and problem.reason == UNSERVED
    assert problem.message.startswith(
        "spec.worker.submitsTo names 'review', 'tests', served by no pool on "
        "redis://redis.db.svc:6379/0 that this operator watches:"), \
        "a pool of the same queue on another Redis does not serve it; its own queue does"
    assert unserved_problem(("team-a", "planners"), addresses, ["code"],
                            every_pool_seen=True) is None
    assert unserved_problem(("team-a", "planners"), addresses, [], every_pool_seen=True) is None
    assert unserved_problem(("team-a", "planners"), addresses, ["tests"],
                            every_pool_seen=False) is None, "judged once every pool had a round"
    assert unserved_problem(("team-d", "broken"), addresses, ["tests"],
                            every_pool_seen=True) is None, "its own Redis unknown"


@pytest.mark.parametrize(("one", "other"), [
    ("redis://redis:6379/0", "redis://redis/0"),
    ("rediss://redis.db.svc", "rediss://redis.db:6379"),
    ("redis+sentinel://s-1:26379,s-0/mymaster/0", "redis+sentinel://s-0:26379,s-1/mymaster/0"),
    ("redis://[::1]/0", "redis://[::1]:6379/0"),
])
def test_one_server_written_two_ways_is_one_address(one: str, other: str) -> None:
    """The default port filled in and several hosts put in order: a pool's submitsTo is not
    reported unserved because its URL leaves out what another pool's writes."""
    assert queue_address(one, "q", "db") == queue_address(other, "q", "db")
