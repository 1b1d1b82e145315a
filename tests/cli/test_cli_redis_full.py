"""A full Redis (maxmemory reached, noeviction) seen from the command line: one line that says
what is wrong and what to do, not the refused script's name; reads still work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from cli_helpers import Cli

from agentpool.redis_errors import REDIS_FULL
from agentpool.redis_server import RedisServer


@pytest.fixture
def redis_url() -> Iterator[str]:
    with RedisServer(extra_args=("--maxmemory-policy", "noeviction")) as server:
        yield server.url


def test_a_submit_to_a_full_redis_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], redis_url: str,
) -> None:
    cli = Cli(capsys, redis_url, "full")
    assert cli("submit", "--json", '{"first": 1}').code == 0
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) - 200_000))
    admin.close()
    result = cli("submit", "--json", '{"x": 1}')
    assert result.code == 1
    assert result.err_lines == [f"agentpool: Redis at {redis_url}: {REDIS_FULL}"]
    assert "script" not in result.err
    assert cli("stats").code == 0, "reading the queue works on a full Redis"
