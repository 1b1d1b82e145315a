"""The command line against a Redis Cluster URL (``redis+cluster://``): submit, stats, wait
and the hint for a queue nobody used, which lists the queues of every shard."""

from __future__ import annotations

import uuid

import pytest
from cli_helpers import Cli, background_worker, key_values


@pytest.fixture
def redis_mode() -> str:
    return "cluster"


def test_the_cli_submits_reads_and_waits_on_a_cluster(cli: Cli) -> None:
    assert cli.redis_url.startswith("redis+cluster://")
    ids = cli.ok("submit", "--json", '{"n": 1}', "--json", '{"n": 2}', "-o", "json").json()["ids"]
    assert len(ids) == 2
    assert key_values(cli.ok("stats").out)["Queued"] == "2 (p0: 2)"
    with background_worker(cli.redis_url, cli.queue):
        doc = cli.ok("wait", ids[1], "--timeout", "10", "-o", "json").json()
    assert (doc["state"], doc["result"]) == ("succeeded", {"echo": {"n": 2}})


def test_a_never_used_queue_names_the_queues_of_every_shard(cli: Cli) -> None:
    others = [f"a-{uuid.uuid4().hex[:8]}" for _ in range(6)]  # sorted first
    for name in others:
        assert cli.raw("submit", "--json", "1", "--redis-url", cli.redis_url,
                       "--queue", name).code == 0
    result = cli("stats")
    assert result.code == 1
    assert all(name in result.err for name in others), result.err
