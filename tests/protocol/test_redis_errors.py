"""Redis failures in one line: what a real password-protected redis-server makes redis-py
raise, as the CLI, the worker and the operator describe it."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from agentpool.connection import redis_from_url
from agentpool.redis_errors import (
    REDIS_FULL,
    AuthProblem,
    auth_failure,
    auth_problem,
    describe_redis_error,
    redis_failure,
    redis_full,
)
from agentpool.redis_server import RedisServer, free_port


async def failure_of(url: str) -> BaseException:
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
    except redis.exceptions.RedisError as exc:
        return exc
    finally:
        await client.aclose()
    raise AssertionError(f"{url} accepted the connection")


def plain_url(server: RedisServer, userinfo: str = "") -> str:
    return f"redis://{userinfo}127.0.0.1:{server.port}/0"


async def test_no_password_says_where_to_put_one(protected_redis: RedisServer) -> None:
    url = plain_url(protected_redis)
    exc = await failure_of(url)
    assert auth_problem(exc) is AuthProblem.PASSWORD_REQUIRED
    assert redis_failure(url, exc) == (
        f"Redis at {url} requires a password: put it in the Redis URL "
        "(redis://:PASSWORD@host:port/db)")
    assert auth_failure(exc, password_place="AGENTPOOL_REDIS_URL") == (
        "Redis requires a password: put it in AGENTPOOL_REDIS_URL")


@pytest.mark.parametrize(("userinfo", "shown", "refused"), [
    (":not-it@", ":***@", "password"),
    ("default:not-it@", "default:***@", "user name and password"),
], ids=["password", "user-and-password"])
async def test_a_wrong_password_is_refused_without_echoing_it(
    protected_redis: RedisServer, userinfo: str, shown: str, refused: str,
) -> None:
    url = plain_url(protected_redis, userinfo)
    exc = await failure_of(url)
    assert auth_problem(exc) is AuthProblem.PASSWORD_REFUSED
    message = redis_failure(url, exc)
    assert message == f"Redis at {plain_url(protected_redis, shown)} refused the {refused}"
    assert "not-it" not in message


async def test_the_right_password_connects(protected_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(protected_redis.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_other_failures_keep_their_reason(redis_server: RedisServer) -> None:
    url = plain_url(redis_server)
    client = aioredis.Redis.from_url(url)
    try:
        with pytest.raises(redis.exceptions.ResponseError) as excinfo:
            await client.execute_command("NO-SUCH-COMMAND")
    finally:
        await client.aclose()
    assert auth_problem(excinfo.value) is None
    assert redis_failure(url, excinfo.value).startswith(
        f"Redis at {url} answered with an error: unknown command 'NO-SUCH-COMMAND'")


def test_connection_errors_lose_their_boilerplate() -> None:
    assert describe_redis_error(redis.exceptions.ConnectionError(
        "Error 111 connecting to 127.0.0.1:1. Connect call failed ('127.0.0.1', 1).")
    ) == "Connection refused"
    assert describe_redis_error(redis.exceptions.ConnectionError(
        "Error -2 connecting to a.example.invalid:6379. Name or service not known.")
    ) == "Name or service not known"
    assert describe_redis_error(redis.exceptions.TimeoutError("Timeout connecting to server")
                                ) == "Timeout connecting to server"
    assert redis_failure("redis://:pw@h:1/0", redis.exceptions.ConnectionError(
        "Error 111 connecting to h:1. Connection refused.")
    ) == "cannot reach Redis at redis://:***@h:1/0: Connection refused"


def test_a_full_redis_is_recognised_as_redis_7_and_redis_6_word_it() -> None:
    """Redis 7 answers a refused script with OOM (redis-py's OutOfMemoryError); Redis 6 wraps
    the refusal in the script's error."""
    seven = redis.exceptions.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'. script: 0123abcd, on "
        "@user_script:12.")
    six = redis.exceptions.ResponseError(
        "Error running script (call to f_0123abcd): @user_script:12: -OOM command not allowed "
        "when used memory > 'maxmemory'.")
    for error in (seven, six):
        assert redis_full(error)
        assert describe_redis_error(error) == REDIS_FULL
        assert redis_failure("redis://h:6379/0", error) == (
            f"Redis at redis://h:6379/0: {REDIS_FULL}")
    assert not redis_full(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    assert not redis_full(redis.exceptions.ConnectionError("OOM command not allowed"))


async def test_no_sentinel_answering_is_said_in_a_line_not_a_client_repr() -> None:
    """redis-py's Sentinel error carries the whole repr of the client it asked."""
    port = free_port()
    client = redis_from_url(f"redis+sentinel://127.0.0.1:{port}/mymaster/0",
                            socket_connect_timeout=2)
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
    line = redis_failure("redis+sentinel://h/mymaster/0", caught.value)
    assert line == ("cannot reach Redis at redis+sentinel://h/mymaster/0: no sentinel named a "
                    f"primary for 'mymaster' (asked 127.0.0.1:{port}); last error: Error 111 "
                    f"connecting to 127.0.0.1:{port}: Connection refused")
