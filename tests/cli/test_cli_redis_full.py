"""A full Redis (maxmemory reached, noeviction) seen from the command line: one line that says
what is wrong and what to do, not the refused script's name; reads still work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cli_helpers import Cli, with_queue

from agentpool.protocol import TaskQueue
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


def full_after_a_batch_or_so(redis_url: str) -> redis.Redis:
    """An admin connection to a Redis whose maxmemory leaves room for about two batches of
    500 tasks of 1 kB (a batch's request counts as used memory while it is read)."""
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) + 1_500_000))
    return admin


def test_a_file_that_fills_redis_part_way_prints_the_tasks_it_queued(
    capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path,
) -> None:
    """Redis fills after the first batches of a file: their ids are printed (in the chosen
    format), and the error line says how many went in and how to go on without doubles."""
    cli = Cli(capsys, redis_url, "full")
    assert cli("submit", "--json", '{"first": 1}').code == 0
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("".join(json.dumps({"n": n, "text": "x" * 1000}) + "\n"
                             for n in range(2000)))
    admin = full_after_a_batch_or_so(redis_url)
    result = cli("submit", "-f", str(lines), "-o", "json")
    admin.config_set("maxmemory", "0")
    admin.close()
    assert result.code == 1
    ids = result.json()["ids"]
    queued = with_queue(redis_url, "full", TaskQueue.figures).queued
    assert 0 < len(ids) == queued - 1 < 2000
    assert [info.payload["n"] for info in with_queue(
        redis_url, "full", lambda q: q.get_many([ids[0], ids[-1]]))] == [0, len(ids) - 1]
    assert result.err_lines == [
        f"agentpool: Redis at {redis_url}: {REDIS_FULL}; {len(ids):,} of 2,000 tasks queued "
        "before the error (their ids are on stdout); a rerun would queue them again: submit "
        f"the payloads after the first {len(ids):,} (with --idempotency-key, a command run "
        "again queues only the tasks it did not queue before)"]


def test_a_file_under_a_key_that_fills_redis_queues_the_rest_when_run_again(
    capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path,
) -> None:
    cli = Cli(capsys, redis_url, "full")
    assert cli("submit", "--json", '{"first": 1}').code == 0
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("".join(json.dumps({"n": n, "text": "x" * 1000}) + "\n"
                             for n in range(1200)))
    argv = ("submit", "-f", str(lines), "--idempotency-key", "batch-7")
    admin = full_after_a_batch_or_so(redis_url)
    result = cli(*argv)
    assert result.code == 1
    [title, *_] = result.out.splitlines()
    went_in = int(title.split()[1])
    assert 0 < went_in < 1200
    assert result.err.rstrip().endswith(
        f"{went_in:,} of 1,200 tasks queued before the error (their ids are on stdout); the "
        "same command run again queues only the rest (its --idempotency-key names the tasks "
        "queued)")
    admin.config_set("maxmemory", "0")
    admin.close()
    assert cli(*argv).code == 0
    assert with_queue(redis_url, "full", TaskQueue.figures).queued == 1 + 1200


def test_the_status_of_a_queue_on_a_full_redis_says_degraded_and_why(
    capsys: pytest.CaptureFixture[str], redis_url: str,
) -> None:
    """Without a cluster no operator says RedisFull: the view asks Redis itself (a queue
    with no workers is not merely NoWorkers when nothing can be submitted to it)."""
    cli = Cli(capsys, redis_url, "full")
    assert cli("submit", "--json", '{"first": 1}').code == 0
    argv = ("status", "--redis-url", redis_url, "--queue", "full", "--sample", "0")
    [before] = cli(*argv, "-o", "json").json()["pools"]
    assert (before["health"], before["problem"]) == ("NoWorkers", None)
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) - 200_000))
    try:
        full = cli(*argv)
        [entry] = cli(*argv, "-o", "json").json()["pools"]
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
    assert full.code == 0
    assert f"full: Degraded: RedisFull: {REDIS_FULL}" in full.out
    assert (entry["health"], entry["queued"]) == ("Degraded", 1)
    assert entry["problem"] == f"RedisFull: {REDIS_FULL}"
