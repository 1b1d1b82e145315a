"""Tasks run as a command (agentpool_worker.command): the payload on stdin, messages on stdout
(result, events, progress, checkpoints, errors), stderr in the error of a failed run, and a
stopped run leaving no process behind."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import command_hooks
import pytest
import redis.asyncio as aioredis
import structlog
from redis_freeze import frozen
from worker_helpers import (
    HERE,
    eventually,
    retry_wait,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_RESULT_BYTES_LIMIT,
    TaskEvent,
    TaskQueue,
    task_for_idempotency_key,
)
from agentpool.redis_server import RedisServer, free_port
from agentpool_worker import command
from agentpool_worker.command import (
    COMMAND_ENV,
    GRACE_ENV,
    MAX_OUTPUT_CHARS,
    PIPE_DRAIN_SECONDS,
    CommandConfigError,
    CommandSettings,
    command_settings,
    output_result,
)
from agentpool_worker.settings import ELF_MACHINES

HANDLER = "agentpool_worker.command:run"
AGENT = [sys.executable, str(HERE / "command_agent.py")]


async def refused_at_start(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """The lines of a worker process that stops at start for its configuration (exit 2)."""
    with worker_processes(tmp_path) as start:
        worker = start(env)
        assert await worker.exit_code(20) == 2
        return worker.logs().strip().splitlines()


@pytest.fixture(autouse=True)
def agent_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMMAND_ENV, json.dumps(AGENT))
    monkeypatch.setenv(GRACE_ENV, "0.5")


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def exists(path: str) -> bool:
    return Path(path).exists()


async def finished(queue: TaskQueue, task_id: str, state: str) -> Any:
    return await eventually(lambda: task_in(queue, task_id, state), 20, f"the task {state}")


async def outcome(redis: aioredis.Redis, redis_url: str, queue_name: str, payload: Any,
                  state: str, **overrides: Any) -> Any:
    """The task of `payload`, once in `state`, run by a worker of the command handler."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER, **overrides)):
        task_id = await queue.submit(payload)
        return await finished(queue, task_id, state)


async def test_the_payload_goes_in_and_the_result_message_comes_back(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER)):
        task_id = await queue.submit({"mode": "result", "prompt": "héllo"})
        done = await finished(queue, task_id, "succeeded")
    assert done.result == {"payload": {"mode": "result", "prompt": "héllo"}, "attempt": 1,
                           "task": task_id, "queue": queue_name}


async def test_the_program_gets_the_task_and_a_directory_not_the_workers_settings(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    monkeypatch.setenv("AGENTPOOL_REDIS_URL", "redis://:secret-password@redis:6379/0")
    monkeypatch.setenv("agentpool_redis_url", "redis://:secret-password@redis:6379/0")
    monkeypatch.setenv("AGENT_MARKER", "from spec.worker.env")
    done = await outcome(redis, redis_url, queue_name, {"mode": "env"}, "succeeded")
    directory = done.result.pop("dir")
    assert done.result == {
        "agentpool": ["AGENTPOOL_QUEUE", "AGENTPOOL_TASK_ATTEMPT", "AGENTPOOL_TASK_DEADLINE",
                      "AGENTPOOL_TASK_DIR", "AGENTPOOL_TASK_ID", "AGENTPOOL_TASK_MAX_ATTEMPTS"],
        "marker": "from spec.worker.env", "found": [], "tmpdir": directory,
    }
    assert not exists(directory), "the run's directory outlived it"


async def test_a_program_knows_when_its_run_will_be_stopped(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """AGENTPOOL_TASK_DEADLINE: the run's start plus its timeout, the task's own when shorter
    than the pool's."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER, task_timeout_seconds=600)):
        own = await queue.submit({"mode": "deadline"}, task_timeout=30)
        pools = await queue.submit({"mode": "deadline"})
        own_left = (await finished(queue, own, "succeeded")).result["left"]
        pools_left = (await finished(queue, pools, "succeeded")).result["left"]
    assert 25 < own_left <= 30
    assert 595 < pools_left <= 600


async def test_a_program_reads_the_results_of_the_tasks_it_runs_after_from_a_file(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER, concurrency=2)):
        first = await queue.submit({"mode": "before", "step": 1})
        second = await queue.submit({"mode": "before", "step": 2}, after=[first])
        done = await finished(queue, second, "succeeded")
        alone = await finished(queue, first, "succeeded")
    assert alone.result == {"step": 1, "before": None}, "no file without after"
    assert done.result == {"step": 2, "before": {first: {"step": 1, "before": None}}}


async def test_a_program_submitted_after_others_gets_the_file_even_when_their_records_are_gone(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """An empty object then (their results passed the result TTL): the file's presence says
    the task ran after others."""
    queue = TaskQueue(redis, queue_name)
    first = await queue.submit({"mode": "before", "step": 1})
    second = await queue.submit({"mode": "before", "step": 2}, after=[first])
    [claimed] = (await queue.claim("pod-x:i1", 1, 30)).tasks
    assert await queue.complete(claimed, "done")
    await redis.delete(queue.task_key(first))
    async with running(settings(redis_url, queue_name, HANDLER)):
        done = await finished(queue, second, "succeeded")
    assert done.result == {"step": 2, "before": {}}


async def test_a_program_submits_steps_and_a_summary_after_them_once_per_task(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Named steps, the summary after them by name; the first attempt fails after its
    submits, the second sends the same and gets the same tasks."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER, concurrency=2,
                                retry_backoff_base_seconds=0.05)):
        planner = await queue.submit({"mode": "plan", "fail_attempts": 1})
        done = await finished(queue, planner, "succeeded")
        assert (done.result, done.attempts) == ("planned", 2)
        named = [await task_for_idempotency_key(queue, f"{planner}:k:{name}")
                 for name in ("step-1", "step-2", "summary")]
        assert None not in named
        summary = await finished(queue, str(named[2]), "succeeded")
    assert summary.priority == 5 and summary.after == tuple(named[:2])
    assert summary.result == {"step": "summary", "before": {
        named[0]: {"step": 1, "before": None}, named[1]: {"step": 2, "before": None}}}
    assert (await queue.figures()).stats["submitted"] == 4, "the same tasks, not new ones"


@pytest.mark.parametrize(("message", "error"), [
    ({"submit": {}, "after": ["nobody"]},
     "\"after\" names 'nobody': no step this run submitted has that name, and it is not a "
     "task id (send that step again first)"),
    ({"submit": {}, "after": ["0" * 32]}, f"after: no task {'0' * 32} in queue"),
    ({"submit": {}, "priority": 12}, "priority must be an integer between 0 and 9, got 12"),
    ({"submit": {}, "queue": 5}, '"queue" is not a string (the name of a queue the pool'),
    ([{"submit": {}, "name": "s", "queue": "elsewhere"}, {"submit": {}, "after": ["s"]}],
     "\"after\" names 's', a step sent to queue 'elsewhere': a task runs after tasks of its "
     "own queue only"),
    ({"submit": {}, "priority": True}, "priority must be an integer between 0 and 9, got True"),
    ({"submit": {}, "expires": 1e308}, "expires must be from 0.001 to 31536000 seconds"),
    ({"submit": {}, "name": 7}, '"name" is not a string of 1 to 200 characters'),
    ({"submit": {}, "after": "step-0"},
     '"after" is not a list of strings (names or task ids)'),
])
async def test_a_submit_the_queue_refuses_dead_letters_the_task_with_why(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
    message: dict[str, Any] | list[dict[str, Any]], error: str,
) -> None:
    messages = message if isinstance(message, list) else [message]
    done = await outcome(redis, redis_url, queue_name, {"mode": "submit", "messages": messages},
                         "dead", submits_to="elsewhere")
    line = len(messages)
    assert done.error.startswith(f"the command's output line {line}: {error}"), done.error
    assert "Traceback" not in done.error
    assert done.attempts == 1, "a program's malformed line is final"
    assert (await TaskQueue(redis, queue_name).figures()).stats["submitted"] == 1


async def test_a_submit_to_a_queue_the_pool_does_not_list_is_retried(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Unlike a malformed line: the pool's list may come with its next rollout."""
    message = {"submit": {}, "queue": "elsewhere"}
    done = await outcome(redis, redis_url, queue_name, {"mode": "submit", "message": message},
                         "dead", max_attempts=2)
    assert done.attempts == 2
    assert done.error.startswith(
        "the command's output line 1: queue 'elsewhere' is not one this pool submits to "
        "(listed: none): add it to the pool's spec.worker.submitsTo"), done.error
    assert "Traceback" not in done.error and "\n" not in done.error, (
        "the program's words, no traceback of the worker's")


async def test_a_program_submits_to_another_queue_its_pool_lists(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    other = f"{queue_name}-next"
    message = {"submit": {"step": 1}, "name": "s", "queue": other}
    done = await outcome(redis, redis_url, queue_name, {"mode": "submit", "message": message},
                         "succeeded", submits_to=other)
    assert done.result == "submitted"
    assert (await TaskQueue(redis, queue_name).figures()).stats["submitted"] == 1
    delegated = TaskQueue(redis, other)
    queued = await redis.zrange(delegated.prefix + "queued", 0, -1)
    assert [i.payload for i in await delegated.get_many([i.decode() for i in queued])] == [
        {"step": 1}]


async def test_a_program_knows_its_tenant_and_its_submits_are_the_tenants_unless_named(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER)):
        task_id = await queue.submit({"mode": "tenant"}, tenant="acme")
        done = await finished(queue, task_id, "succeeded")
        plain_id = await queue.submit({"mode": "tenant"})
        plain = await finished(queue, plain_id, "succeeded")
    assert (done.result, plain.result) == ("acme", None)
    steps: dict[tuple[str, str], str | None] = {}
    for run, name in ((task_id, "mine"), (task_id, "theirs"), (plain_id, "mine")):
        step_id = await task_for_idempotency_key(queue, f"{run}:k:{name}")
        step = None if step_id is None else await queue.get(step_id)
        assert step is not None
        steps[(run, name)] = step.tenant
    assert steps == {(task_id, "mine"): "acme", (task_id, "theirs"): "globex",
                     (plain_id, "mine"): None}


async def test_a_submit_line_whose_payload_is_no_object_is_output(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """As any JSON line that is not a message: a form logged as it was sent may look so."""
    message = {"name": "q", "submit": "Search"}
    done = await outcome(redis, redis_url, queue_name, {"mode": "submit", "message": message},
                         "succeeded")
    assert done.result == "submitted"
    assert (await TaskQueue(redis, queue_name).figures()).stats["submitted"] == 1


async def test_submits_sent_before_the_program_exits_are_all_carried_out(
    tmp_path: Path, queue_name: str,
) -> None:
    """However long they wait for Redis: the program prints its steps and its result and
    exits while Redis is frozen, longer than the drain's wait for more lines."""
    server = RedisServer(port=free_port()).start()
    client = aioredis.Redis.from_url(server.url)
    queue = TaskQueue(client, queue_name)
    gate, exited, started = tmp_path / "gate", tmp_path / "exited", tmp_path / "started"
    try:
        async with running(settings(server.url, queue_name, HANDLER, lease_seconds=10.0)):
            task_id = await queue.submit({"mode": "gated-plan", "gate": str(gate),
                                          "exited": str(exited), "started": str(started)})
            await finished(queue, task_id, "running")
            # the run is claimed before its program starts: freeze Redis once it has
            deadline = time.monotonic() + 30
            while not started.exists():
                assert time.monotonic() < deadline, "the program did not start"
                await asyncio.sleep(0.01)
            with frozen(server):
                gate.touch()
                deadline = time.monotonic() + 10
                while not exited.exists():
                    assert time.monotonic() < deadline, "the program did not exit"
                    await asyncio.sleep(0.01)
                await asyncio.sleep(PIPE_DRAIN_SECONDS + 1)
            done = await finished(queue, task_id, "succeeded")
        assert done.result == "planned"
        assert (await queue.figures()).stats["submitted"] == 4
    finally:
        await client.aclose()
        server.close()


async def test_every_line_written_before_the_exit_is_carried_out_however_long_it_takes(
    redis: aioredis.Redis, redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Megabytes of submits wait in the pipe when the program exits: they and the result after
    them are carried out, with no time given for lines that come after the exit (a process
    that left the group may write on), not cut off between two of them."""
    monkeypatch.setattr(command, "PIPE_DRAIN_SECONDS", 0.0)
    monkeypatch.setattr(command, "READ_CHUNK", 256)  # many turns between two messages
    steps = 1500
    # one slot: the steps it submits wait for the run to end, instead of running a program
    # each beside it (1,500 of them, starving it of CPU on a loaded machine)
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "big-plan", "steps": steps, "pad": 2500}, "succeeded",
                         task_timeout_seconds=120, concurrency=1)
    assert done.result == "planned"
    assert (await TaskQueue(redis, queue_name).figures()).stats["submitted"] == steps + 1


@pytest.mark.parametrize("writable", [True, False], ids=["writable-home", "no-home"])
async def test_a_program_gets_a_writable_home(
    writable: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str,
    queue_name: str, redis: aioredis.Redis,
) -> None:
    """A worker whose HOME cannot be written (the image's /nonexistent under a read-only root
    filesystem) gives each run its own directory as HOME; a writable HOME is left as it is."""
    home = tmp_path if writable else tmp_path / "nonexistent"
    monkeypatch.setenv("HOME", str(home))
    done = await outcome(redis, redis_url, queue_name, {"mode": "home"}, "succeeded")
    if writable:
        assert done.result["home"] == str(tmp_path)
        assert (tmp_path / ".agentrc").exists()
    else:
        assert done.result["home"] == done.result["dir"]
        assert not home.exists()


async def test_output_without_a_result_message_is_the_result(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    done = await outcome(redis, redis_url, queue_name, {"mode": "text"}, "succeeded")
    assert done.result == "line one\nline two\n"


async def test_of_a_long_output_the_result_keeps_the_last_lines_the_result_limit_holds(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """3,000 lines of 501 characters: as JSON each is 502 bytes (its newline is two)."""
    done = await outcome(redis, redis_url, queue_name, {"mode": "long-output"}, "succeeded")
    line = 501
    stored = len(json.dumps(done.result, ensure_ascii=False).encode())
    assert DEFAULT_MAX_RESULT_BYTES - 502 < stored <= DEFAULT_MAX_RESULT_BYTES
    assert len(done.result) % line == 0, "the output was cut inside a line"
    assert done.result.endswith("2999 " + "x" * 495 + "\n")


async def test_output_kept_as_a_result_follows_a_lower_result_limit(
    redis_url: str, queue_name: str, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The output is cut to what the worker stores (its settings, not the environment), not
    refused for being over it: the last eight lines of 502 bytes each as JSON."""
    monkeypatch.delenv("AGENTPOOL_MAX_RESULT_BYTES", raising=False)
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "long-output"}, "succeeded", max_result_bytes=4096)
    assert done.result == "".join(f"{n} " + "x" * 495 + "\n" for n in range(2992, 3000))


async def test_a_payload_with_a_lone_surrogate_reaches_the_program_and_comes_back(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Text UTF-8 cannot encode goes to the program as JSON's escape (it hung on its stdin)."""
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "result", "text": "half \ud83d"}, "succeeded",
                         task_timeout_seconds=20)
    assert done.result["payload"]["text"] == "half \ud83d"


@pytest.mark.parametrize("mode", ["huge-result", "huge-error", "huge-named-submit"])
async def test_a_message_over_the_line_limit_dead_letters_the_task(
    redis_url: str, queue_name: str, redis: aioredis.Redis, mode: str,
) -> None:
    """A 9 MiB result, error or submit message is not taken for output (whose end would be
    the result of a run that succeeded)."""
    dead = await outcome(redis, redis_url, queue_name,
                         {"mode": mode}, "dead", max_attempts=3)
    assert dead.attempts == 1
    assert dead.error is not None
    assert dead.error.startswith("the command's output line 1: a message over 8388608 bytes")


CUT_OFF = ("looks like a cut-off \"{}\" message (a program that exits before its output is "
           "flushed, e.g. Node's process.exit)")
BIG_RESULT = json.dumps({"result": "x" * 900_000})


@pytest.mark.parametrize(("raw", "error"), [
    ('working\n{"result": {"a": 1, ', "line 2 " + CUT_OFF.format("result")),
    (BIG_RESULT[:65536], "line 1 " + CUT_OFF.format("result")),  # what a full pipe held
    ('{"error": "the prompt is', "line 1 " + CUT_OFF.format("error")),
    ('{"name": "s1", "submit": {"q":', "line 1 " + CUT_OFF.format("submit")),
    ('{"result": 1}\n{"result": "x', "line 2 " + CUT_OFF.format("result")),
    ('{"error": None, "status":', "line 1 " + CUT_OFF.format("error")),
], ids=["after-output", "at-64-KiB", "error", "submit", "after-a-result", "dict-cut"])
async def test_a_message_cut_off_dead_letters_the_task_not_its_output_as_result(
    redis_url: str, queue_name: str, redis: aioredis.Redis, raw: str, error: str,
) -> None:
    """The program exited (status 0) before its last message was written whole: its output
    ends in a line that begins as a message, is no JSON and has no newline. Its broken text is
    no result. For good: such a program cuts off again (where the pipe fills)."""
    dead = await outcome(redis, redis_url, queue_name, {"mode": "raw", "raw": raw}, "dead",
                         max_attempts=3)
    assert dead.attempts == 1
    assert dead.error.startswith(f"the command's output {error}"), dead.error


@pytest.mark.parametrize(("raw", "result"), [
    ('{"result": "x\n{"result": 2}\n', 2),
    ('{"level": 30, "msg": "a log line cut', '{"level": 30, "msg": "a log line cut'),
    ('{"result": 1, "usage": {"tokens": 5}}\n', '{"result": 1, "usage": {"tokens": 5}}\n'),
    ('{"result": {"a": 1,}\n', '{"result": {"a": 1,}\n'),
    ('{"error":"rate limited"} -- giving up', '{"error":"rate limited"} -- giving up'),
], ids=["then-a-result", "log-line", "other-key", "malformed-last", "whole-then-text"])
async def test_a_broken_line_before_a_result_or_not_meant_as_a_message_is_output(
    redis_url: str, queue_name: str, redis: aioredis.Redis, raw: str, result: Any,
) -> None:
    """A line that ends with a newline was flushed whole, even the last: it is what the
    program meant to print, malformed or not, not a message cut off by its exit. Nor is one
    that holds a whole JSON object followed by more text, newline or not: no cut makes it."""
    done = await outcome(redis, redis_url, queue_name, {"mode": "raw", "raw": raw},
                         "succeeded", max_attempts=1)
    assert done.result == result


PROSE = ('Here is the configuration you asked for:\n{"result": true, "items": [\n  1, 2]}\n'
         "Done.\n")


@pytest.mark.parametrize(("raw", "result"), [
    (PROSE, PROSE),
    ('{"result": true, "items": [\n  1, 2]}\n', '{"result": true, "items": [\n  1, 2]}\n'),
    ('{"error":"rate limited"} -- will retry later; final answer: 42\n',
     '{"error":"rate limited"} -- will retry later; final answer: 42\n'),
    ('{"error": None, "status": 200}\nanswer: 42\n',
     '{"error": None, "status": 200}\nanswer: 42\n'),
    ('{"error": None, "status": 200}\n', '{"error": None, "status": 200}\n'),
    ('{"result": "a\tb"}\n', "a\tb"),
], ids=["prose-snippet", "snippet-first", "api-body-then-text", "dict-log-line", "dict-log-last",
        "literal-tab"])
async def test_ordinary_output_that_begins_like_a_message_succeeds(
    redis_url: str, queue_name: str, redis: aioredis.Redis, raw: str, result: Any,
) -> None:
    """An agent's prose quoting JSON over two lines, an API body printed before more words, a
    Python dict logged: output, as the run's result. A result message written by hand with a
    literal tab in a string is a result (JSON's strict rule on control characters aside)."""
    done = await outcome(redis, redis_url, queue_name, {"mode": "raw", "raw": raw},
                         "succeeded", max_attempts=1)
    assert done.result == result


async def test_a_line_that_begins_like_a_message_and_is_no_json_is_noted_in_the_log(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    raw = '{"result": true, "items": [\n  1, 2]}\n'
    with structlog.testing.capture_logs() as logs:
        await outcome(redis, redis_url, queue_name, {"mode": "raw", "raw": raw}, "succeeded",
                      max_attempts=1)
    notes = [(entry["line"], entry["why"]) for entry in logs
             if entry["event"] == command.NOT_JSON_NOTE]
    assert notes == [(1, 'begins as a "result" message but is not JSON: Expecting value: line 1 '
                         "column 28 (char 27)")]


async def test_a_result_with_another_key_is_output_and_the_log_says_which_key(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Noted in a line of its own, though the run's JSON log lines had their note already."""
    raw = '{"level": 30, "msg": "calling"}\n{"result": 1, "usage": {"tokens": 5}}\n'
    with structlog.testing.capture_logs() as logs:
        done = await outcome(redis, redis_url, queue_name, {"mode": "raw", "raw": raw},
                             "succeeded", max_attempts=1)
    assert done.result == raw
    notes = [(entry["line"], entry["why"]) for entry in logs
             if entry["event"].startswith("a JSON line of the command's output is not")]
    assert notes == [(1, "no message key"), (2, "'result' with other keys: usage")]


NODE_AGENT = """
let input = '';
process.stdin.on('data', chunk => input += chunk);
process.stdin.on('end', () => {
  console.log(JSON.stringify({result: 'x'.repeat(900000)}));
  if (JSON.parse(input).exit) process.exit(0);
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="no node on this machine")
@pytest.mark.parametrize("exits", [True, False], ids=["process.exit", "ends-by-itself"])
async def test_a_node_agent_that_calls_process_exit_loses_its_result_and_is_told_so(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str, redis: aioredis.Redis,
    exits: bool,
) -> None:
    """Node writes to a pipe what fits (64 KiB) and leaves the rest to its event loop, which
    process.exit() ends; a program that ends by itself writes it all (docs/worker.md)."""
    monkeypatch.setenv(COMMAND_ENV, json.dumps(["node", "-e", NODE_AGENT]))
    done = await outcome(redis, redis_url, queue_name, {"exit": exits},
                         "dead" if exits else "succeeded", max_attempts=2)
    if exits:
        assert (done.attempts, done.error) == (1, "the command's output line 1 "
                                                  + CUT_OFF.format("result"))
    else:
        assert done.result == "x" * 900_000


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("yes", "yes")],
                         ids=["default", "the-pools-own"])
async def test_a_python_program_printing_without_flush_gets_its_checkpoint_through(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str, redis: aioredis.Redis,
    given: str | None, seen: str,
) -> None:
    """Its first attempt prints a checkpoint and hangs until its timeout kills it: block-
    buffered, the checkpoint would die with it and every attempt start over. The worker sets
    PYTHONUNBUFFERED, unless the pool's environment does."""
    if given is None:
        monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    else:
        monkeypatch.setenv("PYTHONUNBUFFERED", given)
    monkeypatch.setenv(COMMAND_ENV, json.dumps([sys.executable,
                                                str(HERE / "unflushed_agent.py")]))
    done = await outcome(redis, redis_url, queue_name, {}, "succeeded",
                         task_timeout_seconds=2, max_attempts=2)
    assert done.result == {"resumed": {"step": 5}, "unbuffered": seen}


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


async def test_a_module_of_ones_own_adds_hooks_to_the_command_handler(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """It takes run without startup: the worker runs the command's own at start all the
    same."""
    command_hooks.BILLED.clear()
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "command_hooks:run")):
        task_id = await queue.submit({"mode": "result"})
        done = await finished(queue, task_id, "succeeded")
        billed = await eventually(lambda: command_hooks.BILLED, 5, "the after_task hook")
    assert done.result["task"] == task_id
    assert billed == [(task_id, "succeeded", None)]


async def test_a_module_of_ones_own_with_a_bad_command_stops_at_start_like_the_handler(
    tmp_path: Path, redis_url: str, queue_name: str,
) -> None:
    """The command handler taken into a module of one's own still has its command checked at
    start: a wrong one stops the worker, rather than fail every task of the queue."""
    env = worker_env(redis_url, queue_name, "command_hooks:run")
    env[COMMAND_ENV] = "/opt/agent/missing --fast"
    assert await refused_at_start(tmp_path, env) == [
        "agentpool-worker: AGENTPOOL_TASK_COMMAND: '/opt/agent/missing' is not an executable file"]


async def test_a_handler_of_ones_own_calling_run_without_a_command_fails_its_run_saying_so(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A function of one's own that calls run is not the command handler to the worker: its
    command is read at its first run, and one that is not set fails the run with the start-up
    check's line (no traceback) and how to have it checked at start."""
    monkeypatch.delenv(COMMAND_ENV)
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "command_own_handler:run",
                                max_attempts=1)):
        done = await finished(queue, await queue.submit({}), "dead")
    assert done.error == (
        f"{COMMAND_ENV} must name the command each task runs, e.g. "
        f'["node", "/app/agent.js"] (handler {HANDLER}) (to have it checked at start '
        "instead, the handler's module imports startup from agentpool_worker.command too)")


def elf_header(machine: int) -> bytes:
    """The start of a 64-bit little-endian ELF executable for `machine`."""
    return b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (2).to_bytes(2, "little") + \
        machine.to_bytes(2, "little") + bytes(44)


def own_machine() -> int:
    return int.from_bytes(Path(os.path.realpath(sys.executable)).read_bytes()[18:20], "little")


def other_machine() -> int:
    """An ELF machine this one does not run: AArch64, or x86-64 on an AArch64 machine."""
    return 62 if own_machine() == 183 else 183


async def test_a_program_that_cannot_start_fails_its_run_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    """The start-up checks passed, then the program's #! interpreter went away (retried: it
    may come back)."""
    interpreter = executable(tmp_path / "interp", "#!/bin/sh\nexec /bin/sh \"$@\"\n")
    script = executable(tmp_path / "agent.sh", f"#!{interpreter}\necho '{{\"result\": 1}}'\n")
    queue = TaskQueue(redis, queue_name)
    monkeypatch.setenv(COMMAND_ENV, json.dumps([str(script)]))
    async with running(settings(redis_url, queue_name, HANDLER, max_attempts=2)):
        assert (await finished(queue, await queue.submit({}), "succeeded")).result == 1
        interpreter.unlink()
        gone = await finished(queue, await queue.submit({}), "dead")
    assert gone.error == (f"cannot start {str(script)!r}: the #! line of {script} names "
                          f"{str(interpreter)!r}, which does not exist")
    assert gone.attempts == 2


@pytest.mark.parametrize(("content", "why"), [
    (b"echo '{\"result\": 1}'\n", "{path} is neither a binary nor a script with a #! line, "
     "which Linux cannot run: begin it with one (#!/bin/sh, #!/usr/bin/env python3)"),
    (None, "{path} is a binary for {machine}, which this machine ({own}) cannot run: build "
     "it, or take the image, for {own}"),
], ids=["no-shebang", "other-machine"])
async def test_a_program_linux_cannot_run_dead_letters_its_task_at_once_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str,
    redis: aioredis.Redis, content: bytes | None, why: str,
) -> None:
    """Replaced after the start-up check: every attempt would fail with the same Exec format
    error."""
    agent = executable(tmp_path / "agent", "#!/bin/sh\necho '{\"result\": 1}'\n")
    queue = TaskQueue(redis, queue_name)
    monkeypatch.setenv(COMMAND_ENV, json.dumps([str(agent)]))
    async with running(settings(redis_url, queue_name, HANDLER, max_attempts=3)):
        assert (await finished(queue, await queue.submit({}), "succeeded")).result == 1
        agent.write_bytes(content or elf_header(other_machine()))
        dead = await finished(queue, await queue.submit({}), "dead")
    assert dead.error == f"cannot start {str(agent)!r}: " + why.format(
        path=agent, machine=ELF_MACHINES[other_machine()], own=ELF_MACHINES[own_machine()])
    assert dead.attempts == 1, "no retry: the next attempt would fail the same"


@pytest.mark.parametrize(("lines", "limit", "kept"), [
    (["a\n", "b\n", "c\n"], 2 + 6, ["b\n", "c\n"]),  # each line is 3 bytes as JSON
    (["a\n", "b\n", "c\n"], 2 + 9, ["a\n", "b\n", "c\n"]),
    (["a\n", "é\n"], 2 + 7, ["a\n", "é\n"]),  # é is 2 bytes
    (["a\n", "é\n"], 2 + 6, ["é\n"]),
    (["\x01" * 10 + "\n"], 2 + 14, ["\x01\x01\n"]),  # a control character is 6 bytes
    (["long line\n"], 2 + 5, ["ine\n"]),
])
def test_output_kept_as_a_result_is_its_last_lines_whose_json_fits_the_limit(
    lines: list[str], limit: int, kept: list[str],
) -> None:
    result = output_result(lines, limit)
    assert result == "".join(kept)
    assert len(json.dumps(result, ensure_ascii=False).encode()) <= limit


def test_output_kept_as_a_result_is_at_most_a_mebibyte_of_whole_lines() -> None:
    lines = ["y" * 999 + "\n"] * 2000
    result = output_result(lines, MAX_RESULT_BYTES_LIMIT)
    assert len(result) == 1000 * (MAX_OUTPUT_CHARS // 1000)


async def test_event_and_progress_messages_become_task_events(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER)):
        task_id = await queue.submit({"mode": "events"})
        done = await finished(queue, task_id, "succeeded")
    events: list[TaskEvent] = [e async for e in queue.events(task_id, follow=False)]
    assert [(e.kind, e.data) for e in events] == [
        ("token", {"text": "Hel"}),
        ("progress", {"fraction": 0.5, "message": "half way"}),
        ("token", {"text": "lo"}),
        ("final", {"state": "succeeded"}),
    ]
    assert done.result == "done"
    assert done.progress is not None and done.progress.message == "half way"


async def test_a_checkpoint_reaches_the_next_attempt_through_a_file(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    done = await outcome(redis, redis_url, queue_name, {"mode": "checkpoint"}, "succeeded")
    file = done.result.pop("file")
    assert done.result == {"resumed": {"step": 3}, "attempt": 2}
    assert not exists(file), "the checkpoint file outlived the run"


async def test_a_checkpoint_saved_on_sigterm_reaches_the_next_attempt(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Its run timed out: the program's grace after SIGTERM is for wrapping up, and a
    checkpoint it writes then is saved (a submit or a result then is not: the run is over)."""
    done = await outcome(redis, redis_url, queue_name, {"mode": "checkpoint-on-term"},
                         "succeeded", task_timeout_seconds=1)
    assert done.result == {"resumed": {"step": 7}, "attempt": 2}
    figures = await TaskQueue(redis, queue_name).figures()
    assert figures.stats["submitted"] == 1, "a stopped run's submit is not carried out"


async def test_a_checkpoint_saved_on_sigterm_by_a_run_handed_back_reaches_the_next_attempt(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A rollout or a scale-down: the draining worker hands the run back once its program
    has had its grace, not before (the checkpoint would be refused, the run no longer
    holding its task)."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"mode": "checkpoint-on-term"})
    async with running(settings(redis_url, queue_name, HANDLER, drain_seconds=0.3)):
        async def program_started() -> bool:
            info = await queue.get(task_id)
            return info is not None and info.progress is not None

        await eventually(program_started, 20, "the program to start")
    handed_back = await queue.get(task_id)
    assert handed_back is not None and handed_back.state == "queued"
    async with running(settings(redis_url, queue_name, HANDLER)):
        done = await finished(queue, task_id, "succeeded")
    assert done.result == {"resumed": {"step": 7}, "attempt": 1}


async def test_a_failing_command_is_retried_and_its_stderr_is_the_error(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    dead = await outcome(redis, redis_url, queue_name, {"mode": "fail"}, "dead", max_attempts=2)
    assert dead.attempts == 2
    assert dead.error == "command exited with status 3: warming up\nboom on attempt 2", (
        "the program's words, no traceback of the worker's")


async def test_a_long_stderr_keeps_its_last_lines_in_the_error(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    dead = await outcome(redis, redis_url, queue_name, {"mode": "fail_loudly"}, "dead",
                         max_attempts=1)
    assert dead.error is not None
    assert dead.error.startswith("command exited with status 3: …")
    assert dead.error.endswith("the last line says why")


async def test_an_error_message_without_retry_dead_letters_at_once(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    dead = await outcome(redis, redis_url, queue_name,
                         {"mode": "permanent"}, "dead", max_attempts=3)
    assert dead.attempts == 1
    assert dead.error == "the prompt is empty", "the program's words, no traceback of the worker's"


@pytest.mark.parametrize("retry_after", [0.5, "0.5"], ids=["number", "text"])
async def test_an_error_message_with_retry_after_runs_again_after_it_not_the_backoff(
    redis_url: str, queue_name: str, redis: aioredis.Redis, retry_after: float | str,
) -> None:
    """The worker's backoff here would hold the retry for at least 500 s; a delay written as
    text is read as an HTTP Retry-After header carries it."""
    queue = TaskQueue(redis, queue_name)
    message = {"error": "429 from upstream", "retry_after": retry_after}
    async with running(settings(redis_url, queue_name, HANDLER, retry_backoff_base_seconds=1000,
                                retry_backoff_cap_seconds=1000)):
        task_id = await queue.submit({"mode": "retry-after", "message": message})
        assert 0.5 <= await retry_wait(queue, task_id) < 5
        done = await finished(queue, task_id, "succeeded")
    assert (done.attempts, done.result) == (2, {"attempt": 2})


@pytest.mark.parametrize(("retry_after", "why"), [
    (-1, "-1 is not a number of seconds from 0 to 86400"),
    ("soon", "'soon' is not a number of seconds from 0 to 86400"),
    (86401, "86401 is not a number of seconds from 0 to 86400"),
    (None, "None is not a number of seconds from 0 to 86400"),
    (True, "True is not a number of seconds from 0 to 86400"),
    (10**400, "1" + "0" * 36 + "... is not a number of seconds from 0 to 86400"),
], ids=["negative", "text", "over-a-day", "null", "bool", "huge"])
@pytest.mark.parametrize("status", [0, 1], ids=["exit-0", "exit-1"])
async def test_an_error_message_with_a_bad_retry_after_still_fails_the_run(
    redis_url: str, queue_name: str, redis: aioredis.Redis, retry_after: Any, why: str,
    status: int,
) -> None:
    """Whatever the exit status: the program meant to fail; the error says why its delay was
    not taken."""
    dead = await outcome(redis, redis_url, queue_name, {
        "mode": "retry-after", "status": status,
        "message": {"error": "upstream busy", "retry_after": retry_after},
    }, "dead", max_attempts=1)
    assert dead.error == f'upstream busy ("retry_after" ignored: {why})'


async def test_retry_after_with_retry_false_dead_letters_and_says_so(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    dead = await outcome(redis, redis_url, queue_name, {
        "mode": "retry-after",
        "message": {"error": "bad input", "retry": False, "retry_after": 5},
    }, "dead", max_attempts=3)
    assert dead.attempts == 1
    assert dead.error == 'bad input ("retry_after" ignored: "retry" is false)'


async def test_a_message_a_limit_refuses_names_its_line_and_stops_the_command(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    dead = await outcome(redis, redis_url, queue_name,
                         {"mode": "bad-message"}, "dead", task_timeout_seconds=30)
    assert dead.attempts == 1
    assert dead.error is not None
    assert "output line 1: event data is over the 65536-byte limit" in dead.error


@pytest.mark.parametrize("result", [True, False], ids=["then-a-result", "output-only"])
async def test_json_lines_that_are_not_messages_are_output(
    result: bool, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A program's JSON log lines (structlog's "event", pino's "error"), and objects that are
    not quite messages, neither fail the run nor become events."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER, max_attempts=1)):
        task_id = await queue.submit({"mode": "json-logs", "result": result})
        done = await finished(queue, task_id, "succeeded")
    events = [e.kind async for e in queue.events(task_id, follow=False)]
    assert set(events) <= {"final"}, events  # no event from the log lines
    if result:
        assert done.result == 42
    else:
        assert [json.loads(line) for line in done.result.splitlines()] == [
            {"event": "fetching repo", "level": "info"},
            {"level": 30, "msg": "retrying", "error": "ECONNRESET"},
            {"progress": "half"},
            {"progress": 50, "message": "percent"},
            {"event": "token", "data": 1, "extra": True},
        ]


@pytest.mark.parametrize("result", [True, False], ids=["then-a-result", "output-only"])
async def test_a_line_over_the_message_limit_is_output(
    result: bool, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A progress bar drawn with carriage returns is one line of 9 MiB: output, of which the
    result keeps the end when the program sent no result."""
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "progress-bar", "result": result}, "succeeded", max_attempts=1)
    if result:
        assert done.result == "done"
    else:
        stored = len(json.dumps(done.result, ensure_ascii=False).encode())
        assert DEFAULT_MAX_RESULT_BYTES - 2 < stored <= DEFAULT_MAX_RESULT_BYTES  # \r is 2
        assert done.result.endswith("\rstep 0699999\n")


async def test_a_program_cannot_read_the_workers_environment(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """The Redis URL is not in the program's environment, nor readable in the worker's
    /proc/<pid>/environ by a program running as the same user. Root's capabilities would
    read it anyway: run as root, the worker runs in a user namespace of its own, without
    them (as the same user still, for the files it reads)."""
    queue = TaskQueue(redis, queue_name)
    env = worker_env(redis_url, queue_name, HANDLER)
    env[COMMAND_ENV] = json.dumps(AGENT)
    prefix = ["unshare", "--user"] if os.geteuid() == 0 else []
    if prefix and shutil.which("unshare") is None:
        pytest.skip("running as root without unshare to drop root's capabilities")
    with worker_processes(tmp_path) as start:
        start(env, prefix=prefix)
        task_id = await queue.submit({"mode": "parent-environ"})
        done = await asyncio.wait_for(finished(queue, task_id, "succeeded"), 30)
    assert done.result == {"read": False, "error": "PermissionError"}


def test_a_run_directory_with_read_only_directories_is_removed(tmp_path: Path) -> None:
    """What `go mod download` leaves under HOME (the run's directory in a pod), and a
    directory that cannot be listed. Run as root, the removal runs without the capabilities
    that let root ignore permissions."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    if os.geteuid() != 0:
        prefix = []
    elif shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
    scratch = tmp_path / "agentpool-run-x"
    module = scratch / "go" / "pkg" / "mod" / "example.com" / "x@v1"
    module.mkdir(parents=True)
    (module / "x.go").write_text("package x\n")
    (scratch / "unlistable").mkdir()
    (scratch / "unlistable" / "file").write_text("")
    for directory in [module, *module.parents]:
        if directory == scratch:
            break
        directory.chmod(0o555)
    (scratch / "unlistable").chmod(0)
    code = "import sys; from agentpool_worker.command import _remove_tree as rm; rm(sys.argv[1])"
    removed = subprocess.run([*prefix, sys.executable, "-c", code, str(scratch)],
                             capture_output=True, text=True, timeout=30)
    assert removed.returncode == 0, removed.stderr
    assert not scratch.exists()


async def pids_of(path: Path) -> list[int]:
    text = await eventually(lambda: path.exists() and path.read_text(), 20,
                            "the command to start")
    return [int(pid) for pid in text.split()]


@pytest.mark.parametrize("mode", ["sleep", "ignore-term"])
async def test_a_cancelled_run_leaves_no_process_behind(
    mode: str, tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    pids_file = tmp_path / "pids"
    async with running(settings(redis_url, queue_name, HANDLER, lease_seconds=0.6)):
        task_id = await queue.submit({"mode": mode, "pids": str(pids_file)})
        command, grandchild = await pids_of(pids_file)
        assert alive(command) and alive(grandchild)
        await queue.cancel(task_id)
        await finished(queue, task_id, "cancelled")
        await eventually(lambda: not alive(command) and not alive(grandchild), 10,
                         "the command and what it started to end")


async def test_a_run_that_times_out_leaves_no_process_behind(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    pids_file = tmp_path / "pids"
    async with running(settings(redis_url, queue_name, HANDLER, task_timeout_seconds=2,
                                max_attempts=1)):
        task_id = await queue.submit({"mode": "sleep", "pids": str(pids_file)})
        command, grandchild = await pids_of(pids_file)
        dead = await finished(queue, task_id, "dead")
        assert dead.error is not None and "timed out after 2s" in dead.error
        await eventually(lambda: not alive(command) and not alive(grandchild), 10,
                         "the command and what it started to end")


async def test_a_process_left_behind_neither_holds_the_run_nor_outlives_it(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "leftover"}, "succeeded", task_timeout_seconds=60)
    left_behind = done.result["left_behind"]
    await eventually(lambda: not alive(left_behind), 10, "the process left behind to end")


async def test_a_process_that_left_the_group_does_not_hold_the_run(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """It keeps the program's output open and cannot be killed with the group: the run ends
    once the program exited and what it wrote was read (PIPE_DRAIN_SECONDS later)."""
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "escape"}, "succeeded", task_timeout_seconds=60)
    escaped = done.result["escaped"]
    try:
        assert alive(escaped)
    finally:
        os.kill(escaped, signal.SIGKILL)


async def test_a_process_that_left_the_group_and_writes_on_does_not_hold_the_run(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Lines that keep coming from it after the program exited are not the program's: the
    run ends PIPE_DRAIN_SECONDS after the exit, not at its timeout."""
    done = await outcome(redis, redis_url, queue_name,
                         {"mode": "escape_chatty"}, "succeeded", task_timeout_seconds=20)
    escaped = done.result["escaped"]
    try:
        assert alive(escaped), "still writing: it was not waited for"
    finally:
        os.kill(escaped, signal.SIGKILL)


def test_the_command_is_a_json_array_or_words(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert command_settings({COMMAND_ENV: '["python3", "-c", "print(1)"]', **home}) == \
        CommandSettings(("python3", "-c", "print(1)"))
    assert command_settings({COMMAND_ENV: "python3 -c 'print(1)'", GRACE_ENV: "2"}) == \
        CommandSettings(("python3", "-c", "print(1)"), 2.0, home_writable=False)


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "AGENTPOOL_TASK_COMMAND must name the command each task runs"),
    ({COMMAND_ENV: "   "}, "AGENTPOOL_TASK_COMMAND must name the command each task runs"),
    ({COMMAND_ENV: '["node", '}, "AGENTPOOL_TASK_COMMAND is not a JSON array"),
    ({COMMAND_ENV: '["node", 3]'}, "must be a JSON array of non-empty strings"),
    ({COMMAND_ENV: "node 'agent.js"}, "cannot be split into words: No closing quotation"),
    ({COMMAND_ENV: "no-such-agent-binary run"},
     "'no-such-agent-binary' is not an executable found on PATH"),
    ({COMMAND_ENV: "/opt/agent/missing"}, "'/opt/agent/missing' is not an executable file"),
    ({COMMAND_ENV: "python3", GRACE_ENV: "60"},
     "AGENTPOOL_TASK_COMMAND_GRACE_SECONDS must be a number of seconds between 0 and 10"),
    ({COMMAND_ENV: "python3", GRACE_ENV: "soon"}, "got 'soon'"),
])
def test_bad_command_settings_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(CommandConfigError) as refused:
        command_settings(environ)
    assert message in str(refused.value)


@pytest.mark.parametrize(("command", "line"), [
    ("/opt/agent/missing --fast",
     "AGENTPOOL_TASK_COMMAND: '/opt/agent/missing' is not an executable file"),
    ("no-such-agent-binary run",
     "AGENTPOOL_TASK_COMMAND: 'no-such-agent-binary' is not an executable found on PATH"),
    ('["unterminated', "AGENTPOOL_TASK_COMMAND is not a JSON array: Unterminated string "
     "starting at: line 1 column 2 (char 1)"),
])
async def test_a_worker_with_a_bad_command_stops_at_start_with_one_line_and_exit_2(
    tmp_path: Path, redis_url: str, queue_name: str, command: str, line: str,
) -> None:
    """A bad setting like any other (docs/worker.md, Configuration), not a failing startup
    hook of the user's code (exit 3)."""
    env = worker_env(redis_url, queue_name, HANDLER)
    env[COMMAND_ENV] = command
    lines = await refused_at_start(tmp_path, env)
    assert lines == [f"agentpool-worker: {line}"]


async def test_a_worker_whose_script_has_windows_line_endings_stops_at_start_and_says_so(
    tmp_path: Path, redis_url: str, queue_name: str,
) -> None:
    agent = tmp_path / "agent.sh"
    agent.write_bytes(b'#!/bin/bash\r\necho \'{"result": 1}\'\r\n')
    agent.chmod(0o755)
    env = worker_env(redis_url, queue_name, HANDLER)
    env[COMMAND_ENV] = str(agent)
    lines = await refused_at_start(tmp_path, env)
    assert lines == [f"agentpool-worker: AGENTPOOL_TASK_COMMAND: the #! line of {agent} ends "
                     "with a carriage return: the script has Windows line endings (convert it: "
                     "dos2unix, or sed -i 's/\\r$//')"]


ELF_OBJECT = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (1).to_bytes(2, "little") + bytes(46)


@pytest.mark.parametrize(("content", "why"), [
    (b"echo '{\"result\": 1}'\n", "is neither a binary nor a script with a #! line, which "
     "Linux cannot run: begin it with one (#!/bin/sh, #!/usr/bin/env python3)"),
    (b"", "is neither a binary nor a script with a #! line"),
    (b"\xef\xbb\xbf#!/bin/sh\necho\n", "begins with a byte-order mark before its #! line, "
     "which Linux cannot run: save it as UTF-8 without a BOM"),
    (ELF_OBJECT, "is an ELF file but no program Linux can run (an object file?)"),
], ids=["no-shebang", "empty", "bom", "object-file"])
def test_a_file_linux_cannot_run_is_refused_at_start(
    tmp_path: Path, content: bytes | None, why: str,
) -> None:
    agent = tmp_path / "agent"
    agent.write_bytes(elf_header(other_machine()) if content is None else content)
    agent.chmod(0o755)
    with pytest.raises(OSError) as run:
        subprocess.run([str(agent)], check=False)
    assert run.value.errno == errno.ENOEXEC, "Linux runs it: no reason to refuse it"
    with pytest.raises(CommandConfigError) as refused:
        command_settings({COMMAND_ENV: json.dumps([str(agent)])})
    assert str(refused.value).startswith(f"AGENTPOOL_TASK_COMMAND: {agent} " + why.format(
        machine=ELF_MACHINES[other_machine()], own=ELF_MACHINES[own_machine()]))


def test_another_machines_binary_is_left_to_the_kernel_at_start(tmp_path: Path) -> None:
    """A kernel may run other machines' binaries (a 32-bit image on a 64-bit kernel,
    binfmt_misc and qemu): at start only what no Linux runs is refused; a binary this one
    does not run dead-letters its task, saying why (above)."""
    agent = tmp_path / "agent"
    agent.write_bytes(elf_header(other_machine()))
    agent.chmod(0o755)
    assert command_settings({COMMAND_ENV: json.dumps([str(agent)])}).argv == (str(agent),)


async def test_a_worker_whose_script_has_no_shebang_stops_at_start_and_says_so(
    tmp_path: Path, redis_url: str, queue_name: str,
) -> None:
    agent = executable(tmp_path / "agent.sh", "echo '{\"result\": 1}'\n")
    env = worker_env(redis_url, queue_name, HANDLER)
    env[COMMAND_ENV] = str(agent)
    lines = await refused_at_start(tmp_path, env)
    assert lines == [f"agentpool-worker: AGENTPOOL_TASK_COMMAND: {agent} is neither a binary "
                     "nor a script with a #! line, which Linux cannot run: begin it with one "
                     "(#!/bin/sh, #!/usr/bin/env python3)"]


LONG_STDERR = """
import sys
head = "h" * (7648 - 20)
line = head + "https://user:hunter2secretpw@example.com/repo.git " + "m" * 5_000_000 + " the end"
print("before", file=sys.stderr)
print(line, file=sys.stderr)
sys.exit(1)
"""


async def test_a_long_stderr_line_is_logged_as_its_start_and_end_with_its_secrets_masked(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """5 MB on one line: its log line stays under the 16 KiB at which container runtimes
    split a line. A URL's password where the start is cut is masked all the same."""
    queue = TaskQueue(redis, queue_name)
    env = worker_env(redis_url, queue_name, HANDLER, max_attempts=1)
    env[COMMAND_ENV] = json.dumps([sys.executable, "-c", LONG_STDERR])
    with worker_processes(tmp_path) as start:
        worker = start(env)
        dead = await asyncio.wait_for(finished(queue, await queue.submit({}), "dead"), 60)
        logs = worker.logs()
    [before, long] = [line for line in logs.splitlines() if '"task stderr"' in line]
    assert json.loads(before)["line"] == "before"
    assert len(long.encode()) < 16 * 1024
    logged = json.loads(long)["line"]
    masked = "h" * 7628 + "https://user:***@example.com/repo.git " + "m" * 5_000_000 + " the end"
    head, _, tail = logged.partition("… ")
    cut_bytes, _, tail = tail.partition(" bytes cut …")
    assert masked.startswith(head) and masked.endswith(tail)
    assert len(head) == len(tail) == (command.STDERR_LINE_BYTES - 64) // 2
    assert int(cut_bytes) == len(masked) - len(head) - len(tail)
    assert "hunter2" not in logs
    assert dead.error.startswith("command exited with status 1: …mmm")  # its end says most
    assert dead.error.endswith("m the end")


@pytest.mark.parametrize("line", ["é" * 20_000, "\x01" * 20_000, "😀" * 20_000, "a" * 15360])
def test_a_stderr_line_is_cut_to_fit_the_log_as_json_writes_it(line: str) -> None:
    logged = command.logged_line(line)
    size = len(json.dumps(logged).encode()) - 2
    assert size <= command.STDERR_LINE_BYTES
    if len(line) <= command.STDERR_LINE_BYTES:
        assert logged == line
    else:
        assert size > command.STDERR_LINE_BYTES - 100, "no room left unused"


async def test_a_worker_process_runs_a_command_task(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    env = worker_env(redis_url, queue_name, HANDLER, retry_backoff_base_seconds=0.05,
                     retry_backoff_cap_seconds=0.2)
    env[COMMAND_ENV] = json.dumps(AGENT)
    with worker_processes(tmp_path) as start:
        start(env)
        task_id = await queue.submit({"mode": "fail"})
        dead = await asyncio.wait_for(finished(queue, task_id, "dead"), 60)
        logs = (tmp_path / "worker-0.log").read_text()
    assert dead.error is not None and "boom on attempt 3" in dead.error
    stderr_lines = [json.loads(line) for line in logs.splitlines()
                    if line.startswith("{") and '"task stderr"' in line]
    assert {(entry["task"], entry["line"]) for entry in stderr_lines} >= {
        (task_id, "boom on attempt 1"), (task_id, "boom on attempt 3")}
