"""The shared limiter on a real redis-server: the grant schedule Redis computes, reservations
given back, throttling, declarations, and round trips per grant.

Assertions are on grant times computed by Redis (µs), never on how long a test took.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from protocol_helpers import ONE_SERVER, RoundTrips, eventually
from redis.exceptions import NoPermissionError

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.errors import PermanentError
from agentpool.ratelimit import (
    MIN_FACTOR,
    RECOVERY_INTERVAL,
    RECOVERY_STEP,
    CallTooLarge,
    LimitConfig,
    RateLimiter,
    RateLimitError,
    UndeclaredLimit,
    key_prefix,
    limit_states,
)
from agentpool.redis_server import RedisServer
from agentpool.urls import with_credentials

US = 1_000_000


@pytest.fixture
def name() -> str:
    return f"l-{uuid.uuid4().hex[:10]}"


def limiter_for(redis: aioredis.Redis, name: str, **rates: float) -> RateLimiter:
    config = LimitConfig(name, **rates)  # type: ignore[arg-type]
    return RateLimiter(redis, name, config=config, caller="t")


def max_in_window(grants: list[int], window_us: float) -> int:
    """The most grants whose times fall in any half-open window of `window_us`."""
    grants = sorted(grants)
    most, start = 0, 0
    for end, at in enumerate(grants):
        while at - grants[start] >= window_us:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_a_full_bucket_grants_its_burst_at_once_then_one_grant_per_interval(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=600, burst_seconds=1)
    grants = [await limiter.reserve() for _ in range(15)]
    assert [g.wait for g in grants[:10]] == [0.0] * 10
    later = [g.grant_us for g in grants[10:]]
    assert all(g.wait > 0 for g in grants[10:])
    steps = [b - a for a, b in itertools.pairwise(later)]
    assert steps == [pytest.approx(100_000, abs=2)] * 4  # 600/min: one every 100 ms


async def test_tokens_and_requests_are_two_budgets_and_the_tighter_one_wins(
    redis: aioredis.Redis, name: str
) -> None:
    # 6000 requests/min is loose; 6000 tokens/min with a 1 s burst holds 100 tokens.
    limiter = limiter_for(redis, name, requests_per_minute=6000, tokens_per_minute=6000)
    first, second, third, fourth = [await limiter.reserve(tokens=50) for _ in range(4)]
    assert first.wait == second.wait == 0
    assert third.grant_us - first.grant_us == pytest.approx(US / 2, abs=US / 100)
    assert fourth.grant_us - third.grant_us == pytest.approx(US / 2, abs=2)


async def test_a_call_larger_than_the_burst_waits_for_a_full_bucket_and_leaves_a_debt(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, tokens_per_minute=6000)  # 100 tokens/s, burst 100
    big = await limiter.reserve(tokens=300)
    small = await limiter.reserve(tokens=10)
    assert big.wait == 0
    # the debt of 200 tokens plus 10 more: 2.1 s at 100 tokens/s
    assert small.grant_us - big.grant_us == pytest.approx(2.1 * US, abs=US / 100)


async def test_no_window_ever_grants_more_than_the_rate_plus_the_burst(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=60_000, burst_seconds=0.05)
    grants = [(await limiter.reserve()).grant_us for _ in range(400)]
    for window in (0.01, 0.1, 0.5):
        burst = 50  # 1000/s x 0.05 s
        assert max_in_window(grants, window * US) <= burst + 1000 * window + 1


async def test_one_round_trip_per_grant_at_most_and_waiters_never_poll(
    redis: aioredis.Redis, name: str
) -> None:
    slow = limiter_for(redis, name, requests_per_minute=60, burst_seconds=10)  # 1/s, burst 10
    await slow.reserve()  # loads the script
    trips = RoundTrips(redis)
    one_by_one = [await slow.reserve() for _ in range(20)]
    assert sum(r.wait > 0 for r in one_by_one) >= 10
    assert trips.commands == ["EVALSHA"] * 20
    fast = limiter_for(redis, f"{name}-fast", requests_per_minute=6000, burst_seconds=0.1)
    await fast.reserve()
    trips.reset()
    together = await asyncio.gather(*(fast.acquire() for _ in range(100)))
    waited = sorted(r.grant_us for r in together if r.wait > 0)
    assert len(waited) >= 80
    # the calls that arrive while a round trip is on the wire share the next one
    assert 1 <= trips.count <= 10 and set(trips.commands) == {"EVALSHA"}
    steps = [b - a for a, b in itertools.pairwise(waited)]
    assert steps == [pytest.approx(10_000, abs=2)] * len(steps)  # 100/s, in order


async def test_a_cancelled_wait_gives_its_reservation_back_to_the_next_caller(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=60, burst_seconds=1)
    await limiter.reserve()  # the bucket's one request is spent: the next waits ~1 s
    waiting = asyncio.create_task(limiter.acquire())
    await _until_reserved(limiter, 2)
    state_before = await limiter.state()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    after = await limiter.reserve()
    state = await limiter.state()
    assert state.released == 1
    assert state_before.waiting == 1
    # the next caller takes the slot the cancelled one gave back: about 1 s after the first,
    # where without the give-back it would be 2 s
    assert after.wait < 1.05
    assert after.wait > 0.5


async def test_a_caller_cancelled_before_its_reply_came_gives_the_grant_back(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=60, burst_seconds=1)
    await limiter.reserve()  # the bucket is empty: the next grant is a second away
    leaving = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)  # its request is queued for the next round trip
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving

    async def given_back() -> bool:
        state = await limiter.state()
        return state.grants == 2 and state.released == 1

    await eventually(given_back)
    assert (await limiter.reserve()).wait < 1.05  # the slot it left, not the one after


async def _until_reserved(limiter: RateLimiter, grants: int) -> None:
    async def reserved() -> bool:
        return (await limiter.state()).grants >= grants

    await eventually(reserved)


async def test_a_reservation_given_back_from_the_middle_of_the_line_stays_spent(
    redis: aioredis.Redis, name: str
) -> None:
    """Ten reservations at 1/s; the middle ones given back, then five more: no window grants
    more than the rate and the bucket allow, and only the last one handed out came back."""
    limiter = limiter_for(redis, name, requests_per_minute=60, burst_seconds=1)
    line = [await limiter.reserve() for _ in range(10)]
    given = [await limiter.release(r) for r in line[2:7]]
    assert given == [False] * 5
    assert await limiter.release(line[-1]) is True
    grants = [r.grant_us for r in line[:2] + line[7:9]]
    grants += [(await limiter.reserve()).grant_us for _ in range(6)]
    for seconds in (1, 2, 4):
        assert max_in_window(grants, seconds * US) <= seconds + 1


async def test_a_rate_of_millions_a_minute_still_moves_the_bucket_each_grant(
    redis: aioredis.Redis, name: str
) -> None:
    """At 1e9 requests a minute a grant is 0.06 µs of the bucket's time, below the spacing of
    doubles near the epoch's microseconds (0.25): each must move it by at least that, or the
    limit would hand out grants for nothing."""
    limiter = limiter_for(redis, name, requests_per_minute=1_000_000_000, burst_seconds=1)
    await limiter.reserve()
    state_key = key_prefix(name) + "state"
    seconds, micros = await redis.time()
    ahead = (seconds + 1000) * US + micros  # the bucket 1,000 s behind: every grant waits
    await redis.hset(state_key, "tat_r", str(ahead))
    for _ in range(400):
        await limiter.reserve()
    moved = float(await redis.hget(state_key, "tat_r")) - ahead
    assert moved >= 400 * 0.06


async def test_a_reservation_whose_time_came_is_not_given_back(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=600)
    reservation = await limiter.reserve()
    assert reservation.wait == 0
    assert await limiter.release(reservation) is False


async def test_a_throttle_pauses_every_caller_and_halves_the_rate_once_per_pause(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=600, burst_seconds=1)
    other = limiter_for(redis, name, requests_per_minute=600, burst_seconds=1)
    before = await limiter.reserve()
    throttle = await limiter.throttled(retry_after=2.0)
    again = await other.throttled(retry_after=1.0)
    after = await other.reserve()
    assert throttle.decreased and throttle.factor == 0.5
    assert not again.decreased and again.factor == 0.5
    assert again.pause == pytest.approx(throttle.pause, abs=0.05)  # not shortened
    # every caller waits for the pause, and the bucket starts empty at its end: one request
    # at half rate (200 ms) after it
    assert after.grant_us - before.grant_us >= 2.2 * US - 0.05 * US
    assert after.factor == 0.5
    state = await limiter.state()
    assert state.throttles == 2
    assert state.effective_rpm == 300


async def test_the_rate_recovers_by_steps_after_the_pause_and_never_drops_below_the_floor(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=600)
    await limiter.reserve()
    for _ in range(6):  # six 429s, each after the previous pause ended
        await limiter.throttled(retry_after=0)
    state = await limiter.state()
    assert state.factor == pytest.approx(MIN_FACTOR)
    # move the recovery start back by 2.5 intervals: two steps are due
    now_us = int((await redis.time())[0]) * US
    recover_at = now_us - 2.5 * RECOVERY_INTERVAL * US
    await redis.hset(key_prefix(name) + "state", "recover_at", repr(recover_at))
    state = await limiter.state()
    assert state.factor == pytest.approx(MIN_FACTOR + 2 * RECOVERY_STEP)
    await redis.hset(key_prefix(name) + "state", "recover_at", repr(now_us - 3600 * US))
    assert (await limiter.state()).factor == 1.0


async def test_a_call_larger_than_a_minute_of_the_rate_is_refused_and_costs_nobody(
    redis: aioredis.Redis, name: str
) -> None:
    """A token count of a whole payload's bytes, say: granting it would make every caller of
    the limit, in every pool, wait out its debt (a billion tokens at 6,000 a minute: 115
    days). It is refused; the budget stays as it was, and so do the calls batched with it."""
    limiter = limiter_for(redis, name, requests_per_minute=600, tokens_per_minute=6000)
    at_most = await limiter.reserve(tokens=6000)
    outcomes = await asyncio.gather(limiter.reserve(tokens=10**9), limiter.reserve(tokens=10),
                                    limiter.reserve(requests=601), return_exceptions=True)
    too_many_tokens, small, too_many_requests = outcomes
    assert isinstance(too_many_tokens, CallTooLarge)
    assert isinstance(too_many_tokens, PermanentError)
    assert str(too_many_tokens) == (
        f"one call of 1000000000 tokens is more than rate limit {name!r} allows in a minute "
        "(tokensPerMinute: 6000): split the call or raise tokensPerMinute")
    assert isinstance(too_many_requests, CallTooLarge)
    assert "601 requests" in str(too_many_requests) and "requestsPerMinute: 600" in str(
        too_many_requests)
    assert not isinstance(small, BaseException)
    # the debt is the first call's: 5,900 tokens beyond the burst of 100, at 100 a second
    assert small.grant_us - at_most.grant_us == pytest.approx(59.1 * US, abs=US / 100)


async def test_an_undeclared_limit_is_refused_with_a_clear_permanent_error(
    redis: aioredis.Redis, name: str
) -> None:
    with pytest.raises(UndeclaredLimit, match="not declared on this Redis") as caught:
        await RateLimiter(redis, name).reserve()
    assert isinstance(caught.value, PermanentError)


async def test_a_limit_with_a_configuration_declares_itself_when_redis_has_none(
    redis: aioredis.Redis, name: str
) -> None:
    await limiter_for(redis, name, requests_per_minute=120).reserve()
    state = await RateLimiter(redis, name).state()
    assert state.config == LimitConfig(name, requests_per_minute=120)
    assert state.owner == ""


async def test_the_first_declaration_serves_and_a_different_one_is_a_conflict(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = RateLimiter(redis, name)
    first = LimitConfig(name, requests_per_minute=600)
    other = LimitConfig(name, requests_per_minute=1000, burst_seconds=2)
    assert (await limiter.declare(first, "ns/a")).outcome == "declared"
    conflict = await limiter.declare(other, "ns/b")
    assert conflict.conflict and conflict.owner == "ns/a" and conflict.serving == first
    assert (await limiter.declare(first, "ns/b")).outcome == "same"
    # the conflicting pool's workers use the serving declaration: nothing stalls
    user = RateLimiter(redis, name, config=other, caller="w")
    grants = [await user.reserve() for _ in range(11)]
    assert sum(g.wait == 0 for g in grants) == 10  # first's burst: 600/min x 1 s
    # the owner may change its own declaration
    assert (await limiter.declare(other, "ns/a")).outcome == "updated"
    assert await redis.sismember("ap:ratelimits", name)  # type: ignore[misc]


async def test_a_declaration_its_owner_stopped_confirming_may_be_replaced(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = RateLimiter(redis, name)
    await limiter.declare(LimitConfig(name, requests_per_minute=600), "ns/gone")
    await redis.hset(key_prefix(name) + "config", "seen", 0)
    replaced = await limiter.declare(LimitConfig(name, requests_per_minute=60), "ns/b")
    assert replaced.outcome == "updated" and replaced.owner == "ns/b"


@ONE_SERVER  # KEYS sees one node of a cluster
async def test_every_key_of_a_limit_shares_its_hash_tag(
    redis: aioredis.Redis, name: str
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=60)
    await limiter.declare(LimitConfig(name, requests_per_minute=60), "ns/a")
    await limiter.reserve()
    await limiter.reserve()  # waits: the waiting set exists
    keys = {k.decode() for k in await redis.keys(f"*{name}*")}
    calls = {k for k in keys if k.startswith(f"ap:{{rl:{name}}}:call:")}
    assert keys - calls == {f"ap:{{rl:{name}}}:{k}" for k in ("config", "state", "waiting")}
    assert len(calls) == 2  # what each acquire handed out, for the same call sent again


async def test_the_states_of_declared_limits_are_listed(redis: aioredis.Redis, name: str) -> None:
    await RateLimiter(redis, name).declare(LimitConfig(name, tokens_per_minute=9000), "ns/a")
    states = {s.name: s for s in await limit_states(redis)}
    assert states[name].config == LimitConfig(name, tokens_per_minute=9000)
    assert states[name].effective_tpm == 9000


@pytest.mark.parametrize(
    ("tokens", "requests"), [(-1, 1), (1.5, 1), (True, 1), (0, -2)]
)
async def test_bad_amounts_are_refused_before_anything_is_spent(
    redis: aioredis.Redis, name: str, tokens: object, requests: object
) -> None:
    limiter = limiter_for(redis, name, requests_per_minute=60)
    with pytest.raises(RateLimitError):
        await limiter.reserve(tokens=tokens, requests=requests)  # type: ignore[arg-type]
    assert await redis.exists(key_prefix(name) + "state") == 0


async def test_a_wait_fails_fast_when_redis_is_unavailable(name: str) -> None:
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        limiter = limiter_for(client, name, requests_per_minute=60)
        await limiter.reserve()
        server.stop()
        async with asyncio.timeout(10):  # a guard against a hang, not a measurement
            with pytest.raises((redis.exceptions.ConnectionError, OSError)):
                await limiter.acquire()
        await client.aclose()


@ONE_SERVER
async def test_a_pools_worker_user_may_use_its_limits_and_no_other(
    redis: aioredis.Redis, redis_server: RedisServer, name: str, queue_name: str
) -> None:
    other = f"{name}-other"
    password = uuid.uuid4().hex
    username = f"agentpool:tests:{uuid.uuid4().hex[:8]}:worker"
    rules = acl_rules(queue_name, Role.WORKER, [password_hash(password)], [name])
    await set_user(redis, username, rules)
    client = aioredis.Redis.from_url(with_credentials(redis_server.url, username, password))
    try:
        await limiter_for(client, name, requests_per_minute=60, max_concurrent=1).acquire()
        async with limiter_for(client, name, requests_per_minute=60, max_concurrent=1).hold():
            assert (await RateLimiter(redis, name).state()).held == 1
        with pytest.raises(NoPermissionError):
            await limiter_for(client, other, requests_per_minute=60).acquire()
        with pytest.raises(NoPermissionError):
            async with limiter_for(client, other, max_concurrent=1).hold():
                pass
    finally:
        await client.aclose()
        await delete_user(redis, username)


async def test_a_reply_that_does_not_fit_the_batch_fails_its_callers_instead_of_hanging(
    redis: aioredis.Redis, name: str
) -> None:
    """Another call's answer under the same call id (a collision) is shorter than the batch:
    every caller of the batch gets an error, none waits for ever, and the limiter goes on."""
    limiter = limiter_for(redis, name, requests_per_minute=6000)
    await limiter.reserve()
    real_run = limiter._run
    calls = 0

    async def short_once(op: str, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        reply = await real_run(op, *args)
        return reply[:3] if op == "acquire" and calls == 1 else reply

    limiter._run = short_once  # type: ignore[method-assign]
    outcomes = await asyncio.wait_for(asyncio.gather(
        *(limiter.reserve() for _ in range(3)), return_exceptions=True), 5)
    assert any(isinstance(o, RateLimitError) for o in outcomes)
    assert (await asyncio.wait_for(limiter.reserve(), 5)).grant_us > 0
