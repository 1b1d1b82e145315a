"""Whether the pool's Redis is full (agentpool_operator.redis_memory.full_problem): a pure
verdict on what INFO memory says of each node."""

from __future__ import annotations

import pytest

from agentpool_operator.redis_memory import (
    FULL_MARGIN_BYTES,
    FULL_REASON,
    NodeMemory,
    full_problem,
    is_full,
    memory_of,
    size_text,
)

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(("used", "maxmemory", "not_counted", "policy", "full"), [
    # No limit: never full, whatever is used.
    (50 * GIB, 0, 0, "noeviction", False),
    # Above the limit: Redis refuses writes that may grow memory.
    (4 * MIB + 1, 4 * MIB, 0, "noeviction", True),
    (4 * MIB, 4 * MIB, 0, "noeviction", True),
    # Within 1 % of a small limit (40 KiB of 4 MiB): full; just outside: not.
    (4 * MIB - 40 * KIB, 4 * MIB, 0, "noeviction", True),
    (4 * MIB - 42 * KIB, 4 * MIB, 0, "noeviction", False),
    # A large limit: the margin is capped at FULL_MARGIN_BYTES, not 1 % (100 MiB of 10 GiB).
    (10 * GIB - FULL_MARGIN_BYTES, 10 * GIB, 0, "noeviction", True),
    (10 * GIB - FULL_MARGIN_BYTES - 1, 10 * GIB, 0, "noeviction", False),
    (10 * GIB - 50 * MIB, 10 * GIB, 0, "noeviction", False),
    # Replication and AOF buffers do not count toward maxmemory (Redis leaves them out).
    (4 * MIB + 1, 4 * MIB, 2 * MIB, "noeviction", False),
    (6 * MIB, 4 * MIB, 2 * MIB, "noeviction", True),
    # A policy that evicts makes room instead of refusing: RedisEvictsKeys says that one.
    (5 * MIB, 4 * MIB, 0, "allkeys-lru", False),
    (5 * MIB, 4 * MIB, 0, "volatile-lru", False),
    # Well below the limit.
    (1 * MIB, 4 * MIB, 0, "noeviction", False),
])
def test_a_node_is_full_within_the_margin_of_a_limit_it_does_not_evict_under(
    used: int, maxmemory: int, not_counted: int, policy: str, full: bool,
) -> None:
    node = NodeMemory(used=used, maxmemory=maxmemory, not_counted=not_counted, policy=policy)
    assert is_full(node) is full
    assert (full_problem({"redis": node}) is not None) is full


def test_a_full_redis_says_what_is_refused_and_what_to_do() -> None:
    problem = full_problem({"redis": NodeMemory(used=4_100_000, maxmemory=4_000_000)})
    assert problem is not None and problem.reason == FULL_REASON == "RedisFull"
    assert problem.message == (
        "Redis is full: used memory 3.91 MiB of maxmemory 3.81 MiB: submits and new runs are "
        "refused, runs in progress go on; free memory (agentpool dead purge, a shorter "
        "AGENTPOOL_RESULT_TTL_SECONDS) or raise maxmemory")


def test_a_cluster_names_its_full_primaries() -> None:
    problem = full_problem({
        "10.0.0.1:7000": NodeMemory(used=1 * MIB, maxmemory=4 * MIB),
        "10.0.0.2:7001": NodeMemory(used=5 * MIB, maxmemory=4 * MIB),
        "10.0.0.3:7002": NodeMemory(used=4 * MIB, maxmemory=4 * MIB),
    })
    assert problem is not None
    assert problem.message.startswith(
        "Redis is full on 10.0.0.2:7001 (used memory 5.00 MiB of maxmemory 4.00 MiB; "
        "10.0.0.3:7002 full too): submits and new runs of the queues held there are refused")
    assert full_problem({"10.0.0.1:7000": NodeMemory(used=1 * MIB, maxmemory=4 * MIB),
                         "10.0.0.2:7001": NodeMemory(used=1 * MIB, maxmemory=0)}) is None


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (4_100_000, "3.91 MiB"),
    (40 * MIB, "40.0 MiB"), (512 * MIB, "512 MiB"), (10 * GIB, "10.0 GiB"),
])
def test_sizes_read_like_a_person_writes_them(size: int, text: str) -> None:
    assert size_text(size) == text


def test_the_figures_come_from_info_memory_and_a_reply_without_them_is_left_out() -> None:
    assert memory_of({
        "a": {"used_memory": 5, "maxmemory": 4, "mem_not_counted_for_evict": 1,
              "maxmemory_policy": "allkeys-lru"},
        "b": {"used_memory": 5, "maxmemory": 4},
        "c": {"maxmemory_policy": "noeviction"},
    }) == {
        "a": NodeMemory(used=5, maxmemory=4, not_counted=1, policy="allkeys-lru"),
        "b": NodeMemory(used=5, maxmemory=4, not_counted=0, policy="noeviction"),
    }
