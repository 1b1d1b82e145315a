"""What a worker logs and stores about a task never carries a URL's password, and still says
what failed; its debug lines follow each run; an unreachable Sentinel is one readable line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from masking_handlers import REDIS_PASSWORD, TOKEN
from worker_helpers import eventually, task_in, worker_env, worker_processes

from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool_worker import command as command_module

HANDLERS = "masking_handlers"
COMMAND_HANDLER = "agentpool_worker.command:run"
MASKED_REDIS_URL = "redis://admin:***@db.internal:6379/0"


def log_lines(logs: str, message: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, logs.splitlines()) if line.get("msg") == message]


async def test_a_failed_task_is_logged_and_dead_lettered_without_the_password(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:cannot_connect",
                                  max_attempts=2, retry_backoff_base_seconds=0.05))
        task_id = await queue.submit({})
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 20, "the dead letter")
        await eventually(lambda: len(log_lines(worker.logs(), "task failed")) == 2, 10,
                         "both failures logged")
        logs = worker.logs()
    expected = f"ConnectionError: could not connect to {MASKED_REDIS_URL}"
    assert dead.error.startswith(expected + "\n")  # then the end of its traceback
    [letter] = [info for info in await queue.dead_letters() if info.id == task_id]
    assert letter.error == dead.error
    assert [line["error"] for line in log_lines(logs, "task failed")] == [expected] * 2
    assert REDIS_PASSWORD not in logs and REDIS_PASSWORD not in dead.error


async def test_a_retry_reason_is_logged_and_stored_without_the_token(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:retries_with_a_token"))
        task_id = await queue.submit({})
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 20, "the task")
        logs = worker.logs()
    [failed] = log_lines(logs, "task failed")
    assert failed["error"] == ("asked to run again in 0.05s: rate limited by "
                               "https://x-access-token:***@api.github.com/x")
    assert done.result == "done" and TOKEN not in logs


PROGRAM = """
import json, sys
payload = json.load(sys.stdin)
url = "https://x-access-token:{token}@github.com/org/repo.git"
if payload["mode"] == "fail":
    print("Cloning into 'repo'...", file=sys.stderr)
    print(f"fatal: unable to access '{url}/': The requested URL returned error: 403",
          file=sys.stderr)
    sys.exit(128)
print(f"pushed to {url}")
""".replace("{token}", TOKEN)


async def test_a_programs_stderr_and_output_carry_no_token(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    masked = "https://x-access-token:***@github.com/org/repo.git"
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, COMMAND_HANDLER, max_attempts=1,
                                  task_command=json.dumps([sys.executable, "-c", PROGRAM])))
        failing = await queue.submit({"mode": "fail"})
        pushing = await queue.submit({"mode": "push"})
        dead = await eventually(lambda: task_in(queue, failing, "dead"), 20, "the failure")
        pushed = await eventually(lambda: task_in(queue, pushing, "succeeded"), 20, "the push")
        await eventually(lambda: log_lines(worker.logs(), "task failed"), 10, "the log line")
        logs = worker.logs()
    refused = f"fatal: unable to access '{masked}/': The requested URL returned error: 403"
    assert [line["line"] for line in log_lines(logs, "task stderr")] == [
        "Cloning into 'repo'...", refused]
    assert dead.error == f"command exited with status 128: Cloning into 'repo'...\n{refused}"
    assert pushed.result == f"pushed to {masked}\n"
    assert TOKEN not in logs and TOKEN not in dead.error


async def test_each_run_starts_and_ends_in_a_debug_line(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        debug = start(worker_env(redis_url, queue_name, "sample_handlers:pid",
                                 log_level="debug"))
        task_id = await queue.submit({})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 20, "the task")
        await eventually(lambda: log_lines(debug.logs(), "task ended"), 10, "its end")
        debug.close()
        info = start(worker_env(redis_url, queue_name, "sample_handlers:pid"))
        second = await queue.submit({})
        await eventually(lambda: task_in(queue, second, "succeeded"), 20, "the second task")
        info.close()
    [began] = log_lines(debug.logs(), "task started")
    [ended] = log_lines(debug.logs(), "task ended")
    assert (began["level"], began["task"], began["attempt"], began["queue"]) == (
        "debug", task_id, 1, queue_name)
    assert (ended["level"], ended["task"], ended["attempt"], ended["queue"],
            ended["outcome"]) == ("debug", task_id, 1, queue_name, "succeeded")
    assert 0 <= ended["duration_seconds"] < 10
    assert began["worker"] == ended["worker"]
    assert "worker started" in info.logs()
    assert not log_lines(info.logs(), "task started") + log_lines(info.logs(), "task ended")


async def test_an_unreachable_sentinel_is_one_readable_line(
    tmp_path: Path, queue_name: str,
) -> None:
    first, second = free_port(), free_port()
    url = f"redis+sentinel://agent:{REDIS_PASSWORD}@127.0.0.1:{first},localhost:{second}/mymaster"
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(url, queue_name))
        [line] = await eventually(lambda: log_lines(worker.logs(), "redis unreachable"), 20,
                                  "the unreachable line")
    assert line["error"] == (
        f"MasterNotFoundError: no sentinel named a primary for 'mymaster' (asked "
        f"127.0.0.1:{first}, localhost:{second}); last error: Error 111 connecting to "
        f"localhost:{second}: Connection refused")
    assert REDIS_PASSWORD not in worker.logs()


@pytest.mark.parametrize(("tail", "shown"), [
    ("Secret99@github.com/org/repo.git: denied", "***@github.com/org/repo.git: denied"),
    ("no password here, mail me at a@b", "no password here, mail me at a@b"),
])
def test_a_line_cut_to_its_end_masks_a_password_whose_scheme_was_cut_away(
    tail: str, shown: str,
) -> None:
    assert command_module._unmarked_secret_cut(tail) == shown
