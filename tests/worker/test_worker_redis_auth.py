"""A worker pointed at a password-protected Redis without the right password says so plainly,
in its log and in /readyz, and keeps trying."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from worker_helpers import eventually, probe, worker_env, worker_processes

from agentpool.redis_server import RedisServer, free_port


@pytest.mark.parametrize(("userinfo", "shown", "said"), [
    ("", "", "requires a password: put it in AGENTPOOL_REDIS_URL "
             "(redis://:PASSWORD@host:port/db), set from the pool's spec.redis"),
    (":not-it@", ":***@", "refused the password"),
], ids=["no-password", "wrong-password"])
async def test_a_refused_password_is_one_plain_line_in_log_and_readyz(
    tmp_path: Path, protected_redis: RedisServer, queue_name: str,
    userinfo: str, shown: str, said: str,
) -> None:
    url = f"redis://{userinfo}127.0.0.1:{protected_redis.port}/0"
    expected = f"Redis at redis://{shown}127.0.0.1:{protected_redis.port}/0 {said}"
    port = free_port()
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(url, queue_name, port=port))

        async def not_ready_for_the_password() -> bool:
            try:
                status, body = await probe(port, "/readyz")
            except OSError:
                return False
            return status == 503 and expected in body

        await eventually(not_ready_for_the_password, 20, "/readyz to name the password")
        assert worker.alive()
        await eventually(lambda: "redis refused the worker" in worker.logs(), 10, "the log")
        [line] = [json.loads(line) for line in worker.logs().splitlines()
                  if "redis refused the worker" in line]
        assert line["error"] == expected
        assert "HELLO" not in worker.logs()
        assert "not-it" not in worker.logs()
