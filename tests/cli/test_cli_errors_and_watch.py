from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis.exceptions
from cli_helpers import Cli, wait_until, with_queue

from agentpool.cli.common import CLI_CLIENT_NAME, describe_redis_error, redis_failure
from agentpool.protocol import TaskQueue, key_prefix
from agentpool.redis_server import free_port

VERBS = [
    ["submit", "--json", "1"],
    ["get", "abc"],
    ["wait", "abc"],
    ["cancel", "abc"],
    ["stats"],
    ["dead", "list"],
    ["dead", "purge", "--all"],
    ["tasks"],
    ["workers"],
]


@pytest.mark.parametrize("argv", VERBS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("output", ["table", "json"])
def test_unreachable_redis_is_one_line_and_exit_1(cli: Cli, argv: list[str],
                                                  output: str) -> None:
    port = free_port()
    cli.redis_url = f"redis://:s3cret@127.0.0.1:{port}/0"
    result = cli(*argv, "-o", output)
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: Connection refused"
    ]


def test_status_queue_mode_unreachable(cli: Cli) -> None:
    port = free_port()
    result = cli.raw("status", "--queue", "q", "--redis-url", f"redis://127.0.0.1:{port}/0")
    assert result.code == 1
    assert result.err_lines == [
        f"agentpool: cannot reach Redis at redis://127.0.0.1:{port}/0: Connection refused"]


def test_unknown_host_and_bad_scheme(cli: Cli) -> None:
    cli.redis_url = "redis://user:pw@no-such-host.invalid:6379/0"
    result = cli("stats")
    assert result.code == 1
    [line] = result.err_lines
    assert line.startswith("agentpool: cannot reach Redis at redis://user:***@no-such-host"
                           ".invalid:6379/0: ")
    assert "pw" not in line.split("***")[1]
    cli.redis_url = "http://user:pw@host/0"
    result = cli("stats")
    assert result.code == 2
    [line] = result.err_lines
    assert line.startswith("agentpool: invalid Redis URL http://user:***@host/0: ")


def test_invalid_queue_name_is_a_usage_error(cli: Cli) -> None:
    cli.queue = "bad name!"
    result = cli("stats")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err.startswith("agentpool: invalid queue name 'bad name!'")


def test_describe_redis_error() -> None:
    assert describe_redis_error(redis.exceptions.ConnectionError(
        "Error 111 connecting to 127.0.0.1:1. Connect call failed ('127.0.0.1', 1).")
    ) == "Connection refused"
    assert describe_redis_error(redis.exceptions.ConnectionError(
        "Error -2 connecting to a.example.invalid:6379. Name or service not known.")
    ) == "Name or service not known"
    assert describe_redis_error(redis.exceptions.TimeoutError("Timeout connecting to server")
                                ) == "Timeout connecting to server"
    assert redis_failure("redis://:pw@h:1/0", redis.exceptions.AuthenticationError(
        "invalid password")) == "Redis at redis://:***@h:1/0 refused the credentials: " \
                                "invalid password"


def spawn(*argv: str) -> subprocess.Popen[str]:
    code = "import sys; from agentpool.cli.main import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_watch_json_streams_lines_until_ctrl_c(cli: Cli) -> None:
    proc = spawn("stats", "--redis-url", cli.redis_url, "--queue", cli.queue, "--watch",
                 "--interval", "0.1", "-o", "json")
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    docs = [json.loads(line) for line in lines]
    assert all(d["queue"] == cli.queue for d in docs)
    assert "rates" in docs[-1]


def test_watch_table_refreshes_until_ctrl_c(cli: Cli) -> None:
    proc = spawn("workers", "--redis-url", cli.redis_url, "--queue", cli.queue, "-w",
                 "--interval", "0.1")

    async def cli_connections(q: TaskQueue) -> int:
        clients = await q.redis.client_list()
        return sum(c.get("name") == CLI_CLIENT_NAME for c in clients)

    wait_until(lambda: with_queue(cli.redis_url, cli.queue, cli_connections) > 0, within=20)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    assert f"Workers of queue {cli.queue}: 0" in out


def test_ctrl_c_while_waiting_exits_130_quietly(cli: Cli) -> None:
    task_id = with_queue(cli.redis_url, cli.queue, lambda q: q.submit(1))
    proc = spawn("wait", task_id, "--redis-url", cli.redis_url, "--queue", cli.queue)
    done_channel = key_prefix(cli.queue) + "done"

    async def subscribers(q: TaskQueue) -> int:
        [(_, count)] = await q.redis.pubsub_numsub(done_channel)
        return int(count)

    wait_until(lambda: with_queue(cli.redis_url, cli.queue, subscribers) == 1, within=20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (130, "", "")
