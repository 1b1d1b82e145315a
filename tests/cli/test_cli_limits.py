"""`agentpool limits` and the client's rate limiter, on a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest
from cli_helpers import Cli, table_rows

from agentpool.cli.main import main
from agentpool.client import Client, SyncClient
from agentpool.ratelimit import LimitConfig, RateLimiter, UndeclaredLimit, key_prefix


async def declare(url: str, config: LimitConfig, owner: str) -> None:
    """As the operator declares it, without a fresh declaration's quiet time for slots (6 s,
    tested in tests/protocol/test_slots.py)."""
    async with Client.from_url(url) as client:
        await RateLimiter(client.redis, config.name).declare(config, owner)
        await client.redis.hdel(key_prefix(config.name) + "config", "since")


def test_limits_table_and_json(cli: Cli) -> None:
    name = f"l-{uuid.uuid4().hex[:8]}"
    config = LimitConfig(name, requests_per_minute=600, tokens_per_minute=90000)
    asyncio.run(declare(cli.redis_url, config, "team-a/agents"))
    with SyncClient.from_url(cli.redis_url) as client:
        limit = client.rate_limit(name)
        limit.acquire(tokens=100)
        limit.throttled(retry_after=30)
    rows = {row[0]: row for row in table_rows(
        cli.raw("limits", "--redis-url", cli.redis_url).out)}
    assert rows[name][1] == "600/min req, 90000/min tok"
    assert rows[name][2].startswith("300/min req, 45000/min tok, paused ")
    assert rows[name][4:6] == ["1", "1"]
    assert rows[name][7] == "team-a/agents"
    doc = cli.raw("limits", "--redis-url", cli.redis_url, "-o", "json").json()
    (found,) = [item for item in doc["limits"] if item["limit"] == name]
    assert found["declared"] == config.to_json()
    assert (found["effectiveRequestsPerMinute"], found["effectiveTokensPerMinute"]) == (
        300, 45000)
    assert (found["grants"], found["tokens"], found["throttles"]) == (1, 100, 1)
    assert found["pausedSeconds"] > 25


async def test_a_producer_waits_on_the_same_budget_as_the_workers(redis_url: str) -> None:
    name = f"l-{uuid.uuid4().hex[:8]}"
    await declare(redis_url, LimitConfig(name, requests_per_minute=60), "ns/p")
    async with Client.from_url(redis_url) as client:
        limit = client.rate_limit(name)
        first = await limit.acquire()
        second = await limit.reserve()
        assert first.wait == 0 and second.wait == pytest.approx(1.0, abs=0.05)
        with pytest.raises(UndeclaredLimit, match="not declared"):
            await client.rate_limit(f"{name}-nope").acquire()


def test_limits_show_the_slots_of_max_concurrent_in_use(cli: Cli) -> None:
    name = f"l-{uuid.uuid4().hex[:8]}"
    config = LimitConfig(name, max_concurrent=2)
    asyncio.run(declare(cli.redis_url, config, "team-a/browsers"))
    with SyncClient.from_url(cli.redis_url) as client, client.rate_limit(name).hold():
        rows = {row[0]: row for row in table_rows(
            cli.raw("limits", "--redis-url", cli.redis_url).out)}
        doc = cli.raw("limits", "--redis-url", cli.redis_url, "-o", "json").json()
    assert rows[name][1:3] == ["2 at once", "1/2 at once"]
    (found,) = [item for item in doc["limits"] if item["limit"] == name]
    assert found["declared"] == {"name": name, "burstSeconds": 1.0, "maxConcurrent": 2}
    assert (found["held"], found["inLine"], found["holds"]) == (1, 0, 1)


def test_a_sync_producer_holds_a_slot_and_one_interrupted_while_waiting_leaves_the_line(
    redis_url: str
) -> None:
    name = f"l-{uuid.uuid4().hex[:8]}"
    asyncio.run(declare(redis_url, LimitConfig(name, max_concurrent=1), "ns/p"))

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with SyncClient.from_url(redis_url) as client:
        limit = client.rate_limit(name)
        with limit.hold() as slot:
            assert slot.holder.startswith("client:")
            previous = signal.signal(signal.SIGALRM, interrupt)
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                with pytest.raises(Interrupted), limit.hold():
                    pytest.fail("two holds of a limit of one at once")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            state = limit.state()
            assert (state.held, state.in_line) == (1, 0)
        state = limit.state()
        assert (state.held, state.in_line, state.holds) == (0, 0, 1)


def test_the_age_of_the_last_429_is_on_redis_clock_not_this_machines(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stamps a 429 with its own time: read from a machine whose clock runs an hour
    ahead, it is still seconds old."""
    name = f"l-{uuid.uuid4().hex[:8]}"
    asyncio.run(declare(cli.redis_url, LimitConfig(name, requests_per_minute=600), "ns/p"))
    with SyncClient.from_url(cli.redis_url) as client:
        client.rate_limit(name).throttled(retry_after=1)
    local = time.time
    monkeypatch.setattr(time, "time", lambda: local() + 3600)
    rows = {row[0]: row for row in table_rows(
        cli.raw("limits", "--redis-url", cli.redis_url).out)}
    doc = cli.raw("limits", "--redis-url", cli.redis_url, "-o", "json").json()
    assert rows[name][6].endswith("s ago") and "m" not in rows[name][6], rows[name][6]
    (found,) = [item for item in doc["limits"] if item["limit"] == name]
    assert 0 <= found["lastThrottleAgeSeconds"] < 60


def test_limits_help_says_which_redis_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    """Rate limits are shared by the pools of a Redis: no queue is involved."""
    with pytest.raises(SystemExit):
        main(["limits", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--redis-url URL the Redis the pools declare their rate limits on (default: " \
        "$AGENTPOOL_REDIS_URL)" in text
    assert "queue" not in text
