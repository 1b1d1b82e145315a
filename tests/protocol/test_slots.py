"""The slots of a limit's maxConcurrent on a real redis-server: never more holders than slots,
first come first served across processes, holds and places that lapse when their process
stops asking, callers that leave the line, and one call per process for all of its waiters.

Every wait is on a condition Redis reports; no assertion reads the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from protocol_helpers import ONE_SERVER, eventually

from agentpool import slots as slots_module
from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.client import SyncClient
from agentpool.connection import redis_from_url
from agentpool.errors import PermanentError
from agentpool.ratelimit import LimitConfig, RateLimiter, UndeclaredLimit, key_prefix
from agentpool.redis_server import RedisServer
from agentpool.slots import Held, NoConcurrencyLimit, _lua
from agentpool.urls import with_credentials


@pytest.fixture(autouse=True)
def no_quiet_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit declared afresh hands out no slot for QUIET_SECONDS (6 s); the tests of that
    pass their own."""
    monkeypatch.setattr(slots_module, "QUIET_SECONDS", 0.0)


@pytest.fixture
def name() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def other(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A second connection pool: another process as far as Redis can tell."""
    client = redis_from_url(redis_url)
    yield client
    await client.aclose()


async def capped(redis: aioredis.Redis, name: str, most: int, caller: str) -> RateLimiter:
    """A process's limiter of a limit the operator declared (a worker's, as it gets it)."""
    config = LimitConfig(name, max_concurrent=most)
    await RateLimiter(redis, name).declare(config, "tests/pool")
    return RateLimiter(redis, name, config=config, caller=caller)


async def in_line(redis: aioredis.Redis, name: str) -> int:
    return (await RateLimiter(redis, name).state()).in_line


async def held(redis: aioredis.Redis, name: str) -> int:
    return (await RateLimiter(redis, name).state()).held


NO_DECLARATION = ("", "", "", "")
"""The rates a raw poll would declare with: none (the operator declared the limit)."""


async def raw(redis: aioredis.Redis, name: str, *args: object) -> object:
    """The script called as a process that then stops asking would (a dead one)."""
    script = redis.register_script(_lua())
    prefix = key_prefix(name)
    return await script(keys=[prefix + "config"], args=[prefix, *args])


async def test_never_more_holders_than_slots_across_processes(
    redis: aioredis.Redis, other: aioredis.Redis, name: str
) -> None:
    limiters = [(await capped(redis, name, 3, "a")), (await capped(other, name, 3, "b"))]
    inside, most, finished = 0, 0, 0
    release = asyncio.Event()

    async def run(limiter: RateLimiter) -> None:
        nonlocal inside, most, finished
        async with limiter.hold():
            inside += 1
            most = max(most, inside)
            if inside == 3:
                release.set()
            await release.wait()
            inside -= 1
        finished += 1

    await asyncio.gather(*(run(limiters[i % 2]) for i in range(24)))
    assert (most, finished) == (3, 24)

    async def all_given_back() -> bool:
        """A hold given back while its renewal was on the wire is taken again by that
        renewal, then given back once more: none is left behind."""
        state = await RateLimiter(redis, name).state()
        return (state.held, state.in_line, state.holds) == (0, 0, 24)

    await eventually(all_given_back)


async def test_slots_go_in_the_order_they_were_asked_for(
    redis: aioredis.Redis, other: aioredis.Redis, name: str
) -> None:
    first = await capped(redis, name, 1, "first")
    holding = await first.slots.acquire()
    order: list[int] = []

    async def wait_then_note(limiter: RateLimiter, number: int) -> None:
        async with limiter.hold():
            order.append(number)

    waiters = []
    for number in range(6):  # alternate processes, each asking once the previous is in line
        limiter = await capped(other if number % 2 else redis, name, 1, f"w{number}")
        waiters.append(asyncio.ensure_future(wait_then_note(limiter, number)))
        await eventually(lambda n=number: _line_is(redis, name, n + 1))
    await first.slots.release(holding)
    await asyncio.gather(*waiters)
    assert order == list(range(6))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _line_is(redis: aioredis.Redis, name: str, count: int) -> bool:
    return await in_line(redis, name) == count


async def test_a_hold_its_process_stopped_renewing_lapses_and_the_next_caller_gets_it(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = await capped(redis, name, 1, "live")
    # a process took the only slot with a hold of 300 ms, then died
    assert await raw(redis, name, "poll", 300, 3000, 0, *NO_DECLARATION, 0,
                     "dead:1") == [1, 0]
    assert await held(redis, name) == 1
    async with limiter.hold() as slot:
        assert await held(redis, name) == 1
        assert slot.holder.startswith("live:")


async def test_a_place_its_process_stopped_asking_for_is_given_up(
    redis: aioredis.Redis, name: str
) -> None:
    first = await capped(redis, name, 1, "first")
    holding = await first.slots.acquire()
    assert await raw(redis, name, "poll", 15000, 200, 6000, *NO_DECLARATION, 0,
                     "ghost:1") \
        == [1, 1]  # first in line, then its process died
    later = asyncio.ensure_future((await capped(redis, name, 1, "later")).slots.acquire())

    async def only_later_in_line() -> bool:
        line = [_text(h) for h in await redis.zrange(key_prefix(name) + "line", 0, -1)]
        return len(line) == 1 and line[0].startswith("later:")

    await eventually(only_later_in_line)  # the ghost's place lapsed
    await first.slots.release(holding)
    got = await later
    assert got.holder.startswith("later:")
    assert await raw(redis, name, "leave", 15000, 3000, 6000, "ghost:1") == 0


async def test_a_caller_cancelled_while_it_waits_leaves_the_line_at_once(
    redis: aioredis.Redis, name: str
) -> None:
    first = await capped(redis, name, 1, "first")
    holding = await first.slots.acquire()
    waiting = asyncio.ensure_future((await capped(redis, name, 1, "quitter")).slots.acquire())
    await eventually(lambda: _line_is(redis, name, 1))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # A poll of the quitter's process on the wire meanwhile may reach Redis after its
    # give-back (another connection) and put it in line again, or be handed the slot freed
    # below: its reply finds the caller gone and gives that back at once. So at once is a
    # round trip or two here, far less than the place in line lasts unasked (GRACE_SECONDS)
    # and a hold unrenewed (HOLD_SECONDS), which a caller left behind would take.
    await eventually(lambda: _line_is(redis, name, 0), within=1.0)
    await first.slots.release(holding)

    async def free() -> bool:
        return await held(redis, name) == 0

    await eventually(free, within=1.0)


async def test_a_hold_that_lapsed_while_its_process_was_frozen_is_taken_again_and_counted(
    redis: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "RENEW_SECONDS", 0.1)
    limiter = await capped(redis, name, 2, "frozen")
    async with limiter.hold() as slot:
        await redis.zrem(key_prefix(name) + "held", slot.holder)  # as if it had lapsed
        assert await held(redis, name) == 0

        async def taken_again() -> bool:
            return limiter.slots.lapsed == 1 and await held(redis, name) == 1

        await eventually(taken_again)
    assert await held(redis, name) == 0


async def test_holds_are_renewed_while_the_block_runs(
    redis: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "RENEW_SECONDS", 0.05)
    limiter = await capped(redis, name, 1, "long")
    async with limiter.hold() as slot:
        key = key_prefix(name) + "held"
        first = await redis.zscore(key, slot.holder)

        async def renewed() -> bool:
            score = await redis.zscore(key, slot.holder)
            return score is not None and first is not None and score > first

        await eventually(renewed)
        assert limiter.slots.lapsed == 0


async def test_undeclared_and_uncapped_limits_are_refused_with_a_reason(
    redis: aioredis.Redis, name: str
) -> None:
    with pytest.raises(UndeclaredLimit, match="not declared"):
        async with RateLimiter(redis, name).hold():
            pass
    rated = RateLimiter(redis, name, config=LimitConfig(name, requests_per_minute=60))
    await rated.reserve()  # declares it, without maxConcurrent
    with pytest.raises(NoConcurrencyLimit, match="declares no maxConcurrent") as refused:
        async with rated.hold():
            pass
    assert isinstance(refused.value, PermanentError)
    assert await in_line(redis, name) == 0


async def test_an_emptied_redis_hands_out_no_slot_until_the_surviving_holders_are_counted(
    redis: aioredis.Redis, name: str
) -> None:
    """A caller declares the limit again (rates of its own config), then no slot goes out for
    `quiet`: a holder that survived renews within it and is counted, so the cap holds."""
    declaration = ("", "", "1.0", "1")
    await capped(redis, name, 1, "operator")

    async def a_holds() -> bool:
        return await raw(redis, name, "poll", 15000, 3000, 300, *NO_DECLARATION, 0,
                         "a") == [1, 0]

    await eventually(a_holds)  # once the operator's fresh declaration is 300 ms old
    await redis.delete(*[key_prefix(name) + k for k in ("config", "held", "line", "seen")])
    assert await raw(redis, name, "poll", 15000, 3000, 300, *declaration, 0, "b") == [1, 1]
    assert await raw(redis, name, "poll", 15000, 3000, 300, *declaration, 1, "a", "b") \
        == [1, 1, 1]  # a renews (its hold had gone: flagged), b still waits
    assert await raw(redis, name, "leave", 15000, 3000, 300, "a") == 1

    async def b_holds() -> bool:
        return await raw(redis, name, "poll", 15000, 3000, 300, *declaration, 0, "b") == [1, 0]

    await eventually(b_holds)  # once the quiet time is over
    state = await RateLimiter(redis, name).state()
    assert (state.config, state.held) == (LimitConfig(name, max_concurrent=1), 1)


async def test_a_holder_that_survived_an_emptied_redis_keeps_the_cap(
    redis: aioredis.Redis, other: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "RENEW_SECONDS", 0.1)
    monkeypatch.setattr(slots_module, "QUIET_SECONDS", 1.0)
    holder = await capped(redis, name, 1, "holder")
    waiter = await capped(other, name, 1, "waiter")
    holding = await holder.slots.acquire()
    waiting = asyncio.ensure_future(waiter.slots.acquire())
    await eventually(lambda: _line_is(redis, name, 1))
    await redis.delete(*[key_prefix(name) + k for k in ("config", "held", "line", "seen")])

    async def counted_again() -> bool:
        return holder.slots.lapsed == 1 and await held(redis, name) == 1

    await eventually(counted_again)
    assert not waiting.done()
    await holder.slots.release(holding)
    got = await waiting
    assert got.capped
    await waiter.slots.release(got)


@ONE_SERVER
async def test_a_declaration_compares_max_concurrent(redis: aioredis.Redis, name: str) -> None:
    limiter = RateLimiter(redis, name)
    mine = LimitConfig(name, requests_per_minute=60, max_concurrent=2)
    assert (await limiter.declare(mine, "ns/a")).outcome == "declared"
    assert (await limiter.declare(mine, "ns/b")).outcome == "same"
    other = LimitConfig(name, requests_per_minute=60, max_concurrent=3)
    refused = await limiter.declare(other, "ns/b")
    assert (refused.outcome, refused.serving) == ("conflict", mine)
    assert "at most 2 at once" in refused.serving.describe()


@ONE_SERVER
async def test_a_declaration_without_the_field_reads_as_uncapped(
    redis: aioredis.Redis, name: str
) -> None:
    """As an operator older than maxConcurrent wrote it."""
    await redis.hset(key_prefix(name) + "config", mapping={
        "rpm": "60", "tpm": "", "burst": "1.0", "owner": "ns/old", "seen": "0"})
    state = await RateLimiter(redis, name).state()
    assert state.config == LimitConfig(name, requests_per_minute=60)
    same = await RateLimiter(redis, name).declare(LimitConfig(name, requests_per_minute=60),
                                                  "ns/old")
    assert same.outcome == "same"


@ONE_SERVER
async def test_one_call_asks_for_every_waiter_of_a_process(
    redis: aioredis.Redis, other: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "POLL_SECONDS", 60.0)  # only a new waiter asks
    holder = await capped(other, name, 1, "holder")
    holding = await holder.slots.acquire()
    limiter = await capped(redis, name, 1, "many")
    asked: list[set[str]] = []  # the waiters each call to Redis asked for
    run = limiter.slots._run

    async def recorded(script: str, *args: Any) -> Any:
        asked.append({a for a in args if isinstance(a, str) and a.startswith("many:")})
        return await run(script, *args)

    monkeypatch.setattr(limiter.slots, "_run", recorded)
    waiters = [asyncio.ensure_future(limiter.slots.acquire()) for _ in range(20)]
    await eventually(lambda: _line_is(other, name, 20))
    holders = set(limiter.slots._waiting)
    # One call asked for all twenty. (When the process's subscription to its grants starts,
    # one more asks for every waiter again, grants made before it being untold.)
    assert asked[0] == holders
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await holder.slots.release(holding)


async def test_a_released_slot_goes_to_the_head_of_the_line_in_the_same_call(
    redis: aioredis.Redis, other: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handed over in Redis at once: the waiter (another process, asking rarely) finds it
    held for it when it next asks."""
    monkeypatch.setattr(slots_module, "POLL_SECONDS", 60.0)
    holder = await capped(redis, name, 1, "holder")
    holding = await holder.slots.acquire()
    waiter = await capped(other, name, 1, "waiter")
    waiting = asyncio.ensure_future(waiter.slots.acquire())
    await eventually(lambda: _line_is(redis, name, 1))
    await holder.slots.release(holding)
    state = await RateLimiter(redis, name).state()
    assert (state.held, state.in_line) == (1, 0)
    waiter.slots._kick()
    got: Held = await waiting
    assert got.holder.startswith("waiter:")
    await waiter.slots.release(got)


async def test_a_hold_given_back_while_its_renewal_is_on_the_wire_is_not_left_held(
    redis: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "RENEW_SECONDS", 0.05)
    limiter = await capped(redis, name, 2, "racer")
    slots = limiter.slots
    send = slots._run
    gate, renewal_waits, renewed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def late_renewal(*args: object) -> object:
        if args[0] != "poll" or not slots._holding:
            return await send(*args)
        renewal_waits.set()
        await gate.wait()  # Redis runs it after the give-back below
        try:
            return await send(*args)
        finally:
            renewed.set()

    monkeypatch.setattr(slots, "_run", late_renewal)
    held_slot = await slots.acquire()
    await renewal_waits.wait()
    await slots.release(held_slot)
    assert await held(redis, name) == 0
    gate.set()
    await renewed.wait()

    async def given_back_again() -> bool:
        return await held(redis, name) == 0 and not slots._leaving

    await eventually(given_back_again)
    assert slots.lapsed == 0


async def test_a_slot_handed_to_a_waiter_that_died_lasts_only_a_place_in_lines_time(
    redis: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "GRACE_SECONDS", 0.3)
    first = await capped(redis, name, 1, "first")
    holding = await first.slots.acquire()
    assert await raw(redis, name, "poll", 15000, 3000, 6000, *NO_DECLARATION, 0,
                     "ghost:1") == [1, 1]  # in line, then its process died
    later = asyncio.ensure_future((await capped(redis, name, 1, "later")).slots.acquire())
    await eventually(lambda: _line_is(redis, name, 2))
    await first.slots.release(holding)  # the ghost is at the head: the slot goes to it
    got = await later  # and comes back once the ghost does not ask for it
    assert got.holder.startswith("later:")


async def test_a_serving_declaration_without_the_cap_of_this_process_lets_blocks_run(
    redis: aioredis.Redis, name: str
) -> None:
    """Another pool declared the limit first without maxConcurrent (or the operator has not
    declared this pool's new cap yet): the serving declaration serves, nothing fails."""
    await RateLimiter(redis, name).declare(LimitConfig(name, requests_per_minute=60), "ns/a")
    mine = RateLimiter(redis, name, config=LimitConfig(name, requests_per_minute=60,
                                                       max_concurrent=1), caller="b")
    async with mine.hold() as first, mine.hold() as second:
        assert (first.capped, second.capped) == (False, False)
    state = await RateLimiter(redis, name).state()
    assert (state.held, state.in_line) == (0, 0)


@ONE_SERVER
async def test_waiters_ride_out_a_brief_failure_and_give_up_on_a_long_one(
    redis: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(slots_module, "FAILING_SECONDS", 0.5)
    limiter = await capped(redis, name, 1, "flaky")
    slots = limiter.slots
    send = slots._run
    failing = {"left": 2}
    calls: list[float] = []
    told: list[bool] = []

    async def flaky(*args: object) -> object:
        calls.append(time.monotonic())
        told.append(slots._told)
        if args[0] == "poll" and failing["left"]:
            failing["left"] -= 1
            raise redis_errors.ConnectionError("connection reset")
        return await send(*args)

    monkeypatch.setattr(slots, "_run", flaky)
    got = await slots.acquire()  # two failed polls, then the grant
    assert got.capped and len(calls) == 3
    await slots.release(got)
    failing["left"] = 1000
    calls.clear()
    told.clear()
    with pytest.raises(redis_errors.ConnectionError):
        await slots.acquire()
    # The pause after the n-th failed call is 0.01 * 2**n (backing off, never spinning).
    # One pause may be cut short by design: the listener's subscribing (`_told` turning
    # True) wakes the ticker to ask at once. It subscribed during the first acquire, and
    # stays, unless that took longer than the first acquire's pauses (a loaded machine):
    # then the grant stopped it, and this acquire's listener wakes the ticker in a pause.
    gaps = [(later - earlier, was_told == is_told) for (earlier, was_told), (later, is_told)
            in itertools.pairwise(zip(calls, told, strict=True))]
    judged = [(number, gap) for number, (gap, unwoken) in enumerate(gaps[:4], start=1)
              if unwoken]
    assert len(judged) >= 2
    for number, gap in judged:
        assert gap >= 0.01 * 2 ** number * 0.9, (number, gaps)


def test_a_process_waits_for_the_slots_of_a_limit_through_one_limiter(redis_url: str) -> None:
    """`Client.rate_limit(name)` is one limiter per name, so the waits of a process's
    threads go to Redis together."""
    with SyncClient.from_url(redis_url) as client:
        assert client.rate_limit("a").limiter is client.rate_limit("a").limiter
        assert client.rate_limit("a").limiter is not client.rate_limit("b").limiter


async def test_a_slot_freed_in_one_process_is_told_to_the_waiter_of_another(
    redis: aioredis.Redis, other: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter's process hears of its grant on the limit's channel: it does not wait for
    its next poll (a minute here)."""
    monkeypatch.setattr(slots_module, "POLL_SECONDS", 60.0)
    monkeypatch.setattr(slots_module, "TOLD_POLL_SECONDS", 60.0)
    holder = await capped(redis, name, 1, "holder")
    waiter = await capped(other, name, 1, "waiter")
    assert (await told_hand_over(redis, holder, waiter)).startswith("waiter:")


async def told_hand_over(redis: aioredis.Redis, holder: RateLimiter,
                         waiter: RateLimiter) -> str:
    """`holder` takes the only slot, `waiter` (subscribed) asks, `holder` gives it back: the
    name of the slot `waiter` got, told rather than polled (polls are a minute apart)."""
    holding = await holder.slots.acquire()
    waiting = asyncio.ensure_future(waiter.slots.acquire())

    async def listening_in_line() -> bool:
        return waiter.slots._told and await in_line(redis, holder.name) == 1

    await eventually(listening_in_line)
    await holder.slots.release(holding)
    async with asyncio.timeout(10):  # a guard: untold, the grant would wait a minute
        got = await waiting
    await waiter.slots.release(got)
    return got.holder


async def test_a_limit_declared_afresh_hands_out_its_first_slot_after_the_quiet_time(
    redis: aioredis.Redis, name: str
) -> None:
    """The operator may declare a limit again before any holder that survived an emptied
    Redis has renewed: the quiet time covers that too."""
    await RateLimiter(redis, name).declare(LimitConfig(name, max_concurrent=1), "ns/a")
    assert await raw(redis, name, "poll", 15000, 3000, 300, *NO_DECLARATION, 0, "a") == [1, 1]

    async def granted() -> bool:
        return await raw(redis, name, "poll", 15000, 3000, 300, *NO_DECLARATION, 0,
                         "a") == [1, 0]

    await eventually(granted)


async def test_an_acquire_while_the_ticker_winds_down_starts_a_ticker_of_its_own(
    redis: aioredis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = await capped(redis, name, 1, "holder")
    holding = await holder.slots.acquire()
    slots = (await capped(redis, name, 1, "quick")).slots
    wound_down = asyncio.Event()
    run_until_idle = slots._tick_until_idle

    async def then_signal() -> None:
        await run_until_idle()
        wound_down.set()

    monkeypatch.setattr(slots, "_tick_until_idle", then_signal)
    waiting = asyncio.ensure_future(slots.acquire())
    await eventually(lambda: _line_is(redis, name, 1))  # subscribed, in line
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await wound_down.wait()  # the old ticker now stops its listener
    again = asyncio.ensure_future(slots.acquire())
    await holder.slots.release(holding)
    async with asyncio.timeout(10):  # a guard: before, this waited forever
        got = await again
    await slots.release(got)


@ONE_SERVER
async def test_a_pools_worker_user_is_told_of_its_grants(
    redis: aioredis.Redis, redis_server: RedisServer, name: str, queue_name: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "POLL_SECONDS", 60.0)
    monkeypatch.setattr(slots_module, "TOLD_POLL_SECONDS", 60.0)
    password = uuid.uuid4().hex
    username = f"agentpool:tests:{uuid.uuid4().hex[:8]}:worker"
    await set_user(redis, username, acl_rules(queue_name, Role.WORKER,
                                              [password_hash(password)], [name]))
    url = with_credentials(redis_server.url, username, password)
    clients = [redis_from_url(url), redis_from_url(url)]
    try:
        await capped(redis, name, 1, "operator")
        config = LimitConfig(name, max_concurrent=1)
        holder = RateLimiter(clients[0], name, config=config, caller="holder")
        waiter = RateLimiter(clients[1], name, config=config, caller="waiter")
        assert (await told_hand_over(redis, holder, waiter)).startswith("waiter:")
    finally:
        for client in clients:
            await client.aclose()
        await delete_user(redis, username)


@ONE_SERVER
async def test_the_slot_of_a_process_killed_while_it_holds_goes_to_the_next_in_line(
    redis: aioredis.Redis, redis_url: str, name: str
) -> None:
    ready = f"ready-{name}"
    await capped(redis, name, 1, "operator")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("slot_holder.py")), redis_url, name, ready)
    try:
        assert await redis.blpop([ready], timeout=30) is not None
        waiting = asyncio.ensure_future((await capped(redis, name, 1, "next")).slots.acquire())
        await eventually(lambda: _line_is(redis, name, 1))
        assert not waiting.done()
        holder.kill()  # SIGKILL: nothing is given back
        await holder.wait()
        async with asyncio.timeout(10):  # a guard: its hold lasts a second
            got = await waiting
        assert got.holder.startswith("next:")
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_a_line_of_thousands_meeting_as_many_free_slots_is_served_in_calls_of_a_thousand(
    redis: aioredis.Redis, name: str
) -> None:
    """9,000 callers in line, the cap raised to 20,000: every call still answers (one call
    handing out 9,000 slots at once failed, and every later call with it), each hands out at
    most 1,000, in the order of the line."""
    await capped(redis, name, 10, "first")
    times = (15000, 3000, 0, *NO_DECLARATION, 0)
    await raw(redis, name, "poll", *times, *[f"held:{i}" for i in range(10)])
    waiters = [f"w:{i}" for i in range(9000)]
    for start in range(0, 9000, 1000):
        await raw(redis, name, "poll", *times, *waiters[start:start + 1000])
    assert await in_line(redis, name) == 9000
    await RateLimiter(redis, name).declare(LimitConfig(name, max_concurrent=20_000),
                                           "tests/pool")
    served = await raw(redis, name, "poll", *times, *waiters[:1000])
    assert served == [20_000] + [0] * 1000
    assert await held(redis, name) == 1010
    assert await raw(redis, name, "leave", *times[:3], "held:0") == 1
    assert await held(redis, name) == 2009


async def test_a_slot_given_back_while_redis_is_down_is_free_as_soon_as_redis_is_back() -> None:
    """The give-back fails (Redis restarting, its holds kept on disk): the process sends it
    again once Redis answers, instead of leaving the slot held until its hold lapses (15 s),
    and never renews it meanwhile."""
    name = f"s-{uuid.uuid4().hex[:10]}"
    with RedisServer(appendonly=True) as server:
        client = redis_from_url(server.url)
        try:
            limiter = await capped(client, name, 1, "restarted")
            holding = await limiter.slots.acquire()
            await asyncio.to_thread(server.stop)  # the AOF keeps the hold
            await limiter.slots.release(holding)  # refused: kept to be sent again
            await asyncio.to_thread(server.start)
            back = time.monotonic()

            async def free() -> bool:
                return await held(client, name) == 0

            await eventually(free, within=2.5)
            assert time.monotonic() - back < slots_module.HOLD_SECONDS / 3
            async with asyncio.timeout(5):
                async with limiter.hold() as again:
                    assert again.capped
            assert not limiter.slots._leaving
        finally:
            await client.aclose()
