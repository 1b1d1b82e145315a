"""A limit's calls while its Redis Cluster slot moves to another primary, as ``redis-cli
--cluster reshard`` moves it (SETSLOT IMPORTING and MIGRATING, MIGRATE, SETSLOT NODE): while
the slot is MIGRATING Redis refuses the limit's scripts before they run, and the calls wait
for the move to end instead of failing. Against a real 3-primary cluster of this module's own
(the moves change which primary serves a slot)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.cluster import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, ResponseError, TryAgainError

from agentpool import slots as slots_module
from agentpool.connection import redis_from_url
from agentpool.ratelimit import LimitConfig, RateLimiter, key_prefix
from agentpool.redis_server import RedisCluster, sentinel_admin
from agentpool.slots import SlotMoving, slot_moving

STILL_WAITING = 1.5
"""How long the calls are seen waiting: longer than a failing Redis keeps a waiter for a
slot in line here (FAILING_SECONDS, set below, then the next failed call: the pauses between
them grow 0.4 s, 0.8 s)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3) as started:
        yield started


@pytest.fixture(autouse=True)
def quick_to_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """No quiet time after a limit is declared (6 s); waiters for a slot give up after 0.1 s
    of Redis failing, so that only a move, not a failure, keeps them waiting."""
    monkeypatch.setattr(slots_module, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(slots_module, "FAILING_SECONDS", 0.1)


@pytest.fixture
def name() -> str:
    return f"mv-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(cluster: RedisCluster) -> AsyncIterator[aioredis.Redis]:
    client = redis_from_url(cluster.url)
    yield client
    await client.aclose()


@pytest.fixture
async def other(cluster: RedisCluster) -> AsyncIterator[aioredis.Redis]:
    """A second connection pool: another process as far as Redis can tell."""
    client = redis_from_url(cluster.url)
    yield client
    await client.aclose()


class Move:
    """The limit's slot moving from the primary that serves it to another, step by step."""

    def __init__(self, cluster: RedisCluster, name: str) -> None:
        self.slot = key_slot(f"{key_prefix(name)}state".encode())
        self.nodes = {port: sentinel_admin(port) for port in cluster.ports}
        self.ids = {port: node.execute_command("CLUSTER", "MYID")
                    for port, node in self.nodes.items()}
        self.source = next(int(first[2][1]) for first in
                           self.nodes[cluster.ports[0]].execute_command("CLUSTER", "SLOTS")
                           if first[0] <= self.slot <= first[1])
        self.target = next(port for port in cluster.ports if port != self.source)

    def begin(self) -> None:
        self.nodes[self.target].execute_command(
            "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.ids[self.source])
        self.nodes[self.source].execute_command(
            "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.ids[self.target])

    def keys(self, port: int) -> int:
        return int(self.nodes[port].execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot))

    def migrate(self, *keys: str) -> None:
        self.nodes[self.source].execute_command("MIGRATE", "127.0.0.1", self.target, "", 0,
                                                5000, "KEYS", *keys)

    def complete(self) -> None:
        source = self.nodes[self.source]
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100):
            self.migrate(*keys)
        for port in [self.target, self.source,
                     *(p for p in self.nodes if p not in (self.source, self.target))]:
            self.nodes[port].execute_command(
                "CLUSTER", "SETSLOT", self.slot, "NODE", self.ids[self.target])

    def abandon(self) -> None:
        for port in (self.source, self.target):
            self.nodes[port].execute_command("CLUSTER", "SETSLOT", self.slot, "STABLE")

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()


@pytest.fixture
def move(cluster: RedisCluster, name: str) -> Iterator[Move]:
    moving = Move(cluster, name)
    try:
        yield moving
    finally:
        moving.abandon()  # a test that failed half-way leaves no slot in motion
        moving.close()


async def declared(redis: aioredis.Redis, config: LimitConfig, caller: str) -> RateLimiter:
    limiter = RateLimiter(redis, config.name, config=config, caller=caller)
    await limiter.declare(config, "tests/pool")
    return limiter


def pause_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "slot is moving" in r.getMessage()]


async def test_an_acquire_and_a_hold_wait_for_the_move_then_go_on_the_new_primary(
        redis: aioredis.Redis, name: str, move: Move,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentpool.slots")
    config = LimitConfig(name, requests_per_minute=60000, max_concurrent=1)
    limiter = await declared(redis, config, "mover")
    await limiter.acquire()
    move.begin()
    acquiring = asyncio.ensure_future(limiter.acquire())
    holding = asyncio.ensure_future(limiter.slots.acquire())
    done, _ = await asyncio.wait([acquiring, holding], timeout=STILL_WAITING)
    assert not done
    assert limiter.slots.moves.pauses == 1
    assert move.keys(move.target) == 0  # nothing has moved yet: Redis refused every call

    move.complete()
    reservation, held = await asyncio.wait_for(asyncio.gather(acquiring, holding), 10)
    assert reservation.wait >= 0 and held.capped
    assert move.keys(move.source) == 0 and move.keys(move.target) > 0
    state = await limiter.state()
    assert (state.grants, state.held, state.holds) == (2, 1, 1)
    await limiter.slots.release(held)
    assert (await limiter.state()).held == 0
    assert len(pause_lines(caplog)) == 1, pause_lines(caplog)


async def test_calls_wait_while_the_keys_are_split_between_the_primaries(
        redis: aioredis.Redis, name: str, move: Move) -> None:
    config = LimitConfig(name, requests_per_minute=60000, max_concurrent=1)
    limiter = await declared(redis, config, "mover")
    await limiter.acquire()
    # Idle connections to the new primary, as a busy process has: the client then sends an
    # ASK's ASKING and the call on two of them, and the two primaries bounce the call
    # (MOVED, ASK) until the client gives up on it (ClusterError: TTL exhausted).
    assert isinstance(redis, aioredis.RedisCluster)
    target = redis.get_node(host="127.0.0.1", port=move.target)
    await asyncio.gather(*(redis.execute_command("PING", target_nodes=target)
                           for _ in range(4)))
    move.begin()
    move.migrate(f"{key_prefix(name)}state")  # the key that routes the rate calls, not the rest
    acquiring = asyncio.ensure_future(limiter.acquire())
    holding = asyncio.ensure_future(limiter.slots.acquire())
    done, _ = await asyncio.wait([acquiring, holding], timeout=STILL_WAITING)
    assert not done  # not run on the new primary without the declaration (still on the old)

    move.complete()  # MIGRATE refuses a key the new primary has already
    _, held = await asyncio.wait_for(asyncio.gather(acquiring, holding), 10)
    assert held.capped
    state = await limiter.state()
    assert (state.grants, state.held, state.holds) == (2, 1, 1)
    await limiter.slots.release(held)


async def test_give_backs_during_the_move_land_when_it_ends(
        redis: aioredis.Redis, other: aioredis.Redis, name: str, move: Move) -> None:
    config = LimitConfig(name, requests_per_minute=6, max_concurrent=1)
    limiter = await declared(redis, config, "mover")
    await limiter.reserve()
    unspent = await limiter.reserve()
    assert unspent.wait > 5  # still far off when given back: the give-back returns it
    held = await limiter.slots.acquire()
    next_in_line = RateLimiter(other, name, config=config, caller="other")
    move.begin()
    giving_back = asyncio.ensure_future(limiter.release(unspent))
    await asyncio.wait_for(limiter.slots.release(held), 1)  # its give-back waits in the ticker
    waiting = asyncio.ensure_future(next_in_line.slots.acquire())
    done, _ = await asyncio.wait([giving_back, waiting], timeout=STILL_WAITING)
    assert not done

    move.abandon()
    assert await asyncio.wait_for(giving_back, 10) is True
    # The slot given back during the move, not a hold that lapsed (HOLD_SECONDS, 15 s).
    taken = await asyncio.wait_for(waiting, 5)
    state = await limiter.state()
    assert (state.released, state.held, state.holds) == (1, 1, 2)
    await next_in_line.slots.release(taken)
    assert (await limiter.state()).held == 0


async def test_a_stalled_move_keeps_declarations_and_views_waiting_briefly(
        redis: aioredis.Redis, name: str, move: Move) -> None:
    """The operator declares every limit of every pool each round, and ``agentpool limits``
    reads every limit: a reshard that stalled holds each of them GLANCE_MOVING_SECONDS, not
    MOVING_SECONDS, while a run's calls go on waiting for the move."""
    config = LimitConfig(name, requests_per_minute=60000, max_concurrent=1)
    limiter = await declared(redis, config, "mover")
    await limiter.acquire()
    move.begin()  # and never ended
    acquiring = asyncio.ensure_future(limiter.acquire())
    holding = asyncio.ensure_future(limiter.slots.acquire())
    began = asyncio.get_running_loop().time()
    async with asyncio.timeout(3):
        declaring, reading = await asyncio.gather(
            RateLimiter(redis, name).declare(config, "tests/pool"),
            RateLimiter(redis, name).state(), return_exceptions=True)
    assert asyncio.get_running_loop().time() - began >= 1.5  # it rides out a short move
    for refused in (declaring, reading):
        assert isinstance(refused, SlotMoving), refused
        assert f"rate limit '{name}': its Redis Cluster slot has been moving" in str(refused)
    assert not acquiring.done() and not holding.done()

    move.abandon()
    _, held = await asyncio.wait_for(asyncio.gather(acquiring, holding), 10)
    assert held.capped
    await limiter.slots.release(held)


@pytest.mark.parametrize("error", [
    ResponseError("Script attempted to access a non local key in a cluster node script"),
    ResponseError("Unable to execute command 'exists' in script because undeclared keys "
                  "were accessed during rehashing of the slot 1234 (Redis 7.4, Valkey 8)"),
    ClusterError("TTL exhausted."),
    TryAgainError("Multiple keys request during rehashing of slot"),
    AskError("1234 127.0.0.1:7001"),
])
def test_refusals_while_the_slot_moves_are_sent_again(error: Exception) -> None:
    assert slot_moving(error)


@pytest.mark.parametrize("error", [
    MovedError("1234 127.0.0.1:7001"),
    ResponseError("ERR Error running script: attempt to compare nil with number"),
    ClusterError("Cluster is down"),
])
def test_other_errors_are_not_taken_for_a_moving_slot(error: Exception) -> None:
    assert not slot_moving(error)


async def test_a_move_that_never_ends_raises_after_moving_seconds(
        redis: aioredis.Redis, name: str, move: Move, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentpool.slots")
    monkeypatch.setattr(slots_module, "MOVING_SECONDS", 0.5)
    config = LimitConfig(name, requests_per_minute=60000, max_concurrent=1)
    limiter = await declared(redis, config, "mover")
    await limiter.acquire()  # the key that routes its calls exists: Redis refuses them
    move.begin()
    for call in (limiter.acquire, limiter.slots.acquire):
        with pytest.raises(SlotMoving, match=f"rate limit '{name}': its Redis Cluster slot "
                                             "has been moving to another primary for"):
            await asyncio.wait_for(call(), 10)
    assert len(pause_lines(caplog)) == 1, pause_lines(caplog)

    move.abandon()
    await asyncio.wait_for(limiter.acquire(), 5)
    async with asyncio.timeout(5), limiter.hold() as held:
        assert held.capped


async def test_a_client_that_does_not_follow_moved_is_not_kept_waiting(
        redis: aioredis.Redis, name: str, move: Move) -> None:
    config = LimitConfig(name, requests_per_minute=60000)
    await declared(redis, config, "mover")
    standalone = aioredis.Redis(port=move.target)  # a plain client of a node not serving it
    try:
        with pytest.raises(MovedError):
            await asyncio.wait_for(RateLimiter(standalone, name, config=config).acquire(), 1)
    finally:
        await standalone.aclose()
