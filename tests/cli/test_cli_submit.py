from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_helpers import Cli, background_worker, table_rows, wait_until, with_queue

from agentpool.cli.main import main
from agentpool.protocol import DEFAULT_MAX_PAYLOAD_BYTES, TaskQueue, key_prefix, task_queue
from agentpool.redis_server import RedisServer

HERE = Path(__file__).resolve().parent


def test_submit_one_payload_prints_its_id(cli: Cli) -> None:
    result = cli.ok("submit", "--json", '{"prompt": "hello"}')
    assert result.out.splitlines()[0] == f"Submitted 1 task to queue {cli.queue}"
    [[task_id]] = table_rows(result.out)
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(task_id))
    assert info is not None
    assert (info.state, info.payload) == ("queued", {"prompt": "hello"})
    assert result.err == ""


def test_submit_json_output_lists_ids_in_order(cli: Cli) -> None:
    doc = cli.ok("submit", "--json", "1", "--json", '"two"', "--json", "[3]", "-o", "json").json()
    assert doc["queue"] == cli.queue
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i)) for i in doc["ids"]]
    assert [i.payload for i in infos if i] == [1, "two", [3]]


def test_submit_options_reach_the_task(cli: Cli) -> None:
    doc = cli.ok("submit", "--json", "{}", "--priority", "7", "--delay", "60",
                 "--max-attempts", "2", "-o", "json").json()
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(doc["ids"][0]))
    assert info is not None
    assert (info.state, info.priority, info.max_attempts) == ("delayed", 7, 2)


def test_submit_with_an_expiry_stores_it_on_each_task(cli: Cli) -> None:
    doc = cli.ok("submit", "--json", "1", "--json", "2", "--expires", "90", "-o", "json").json()
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i)) for i in doc["ids"]]
    assert [i.expires_ms - i.created_ms for i in infos if i and i.expires_ms] == [90_000] * 2


def test_submit_with_a_task_timeout_stores_it_and_get_shows_it(cli: Cli) -> None:
    doc = cli.ok("submit", "--json", "1", "--json", "2", "--task-timeout", "90",
                 "-o", "json").json()
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i)) for i in doc["ids"]]
    assert [i.timeout_ms for i in infos if i] == [90_000] * 2
    shown = cli.ok("get", doc["ids"][0]).out
    assert "Timeout   90 s per run (or the pool's task timeout, if shorter)" in shown
    assert cli.ok("get", doc["ids"][1], "-o", "json").json()["timeout_seconds"] == 90


def test_submit_with_a_tenant_stores_it_and_get_shows_it(cli: Cli) -> None:
    doc = cli.ok("submit", "--json", "1", "--json", "2", "--tenant", "acme",
                 "-o", "json").json()
    one = cli.ok("submit", "--json", "3", "--tenant", "globex", "-o", "json").json()
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i))
             for i in [*doc["ids"], *one["ids"]]]
    assert [i.tenant for i in infos if i] == ["acme", "acme", "globex"]
    assert "Tenant    acme" in cli.ok("get", doc["ids"][0]).out
    assert cli.ok("get", one["ids"][0], "-o", "json").json()["tenant"] == "globex"


def test_an_expiry_not_after_the_delay_is_refused_in_one_line(cli: Cli) -> None:
    result = cli("submit", "--json", "1", "--delay", "60", "--expires", "30")
    assert result.code == 2
    assert result.err_lines == ["agentpool: expires must be after the delay (60 s): from "
                                "60.001 to 31536000 seconds (a year), got 30"]
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).used is False


def test_submit_json_lines_file_in_one_batch(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"n": 1}\n\n{"n": 2}\n   \n{"n": 3}\n')
    doc = cli.ok("submit", "--file", str(path), "-p", "4", "-o", "json").json()
    assert len(doc["ids"]) == 3
    figures = with_queue(cli.redis_url, cli.queue, TaskQueue.figures)
    assert figures.queued_by_priority[4] == 3


def test_submit_json_lines_from_stdin_with_table(cli: Cli,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"a": 1}\n{"a": 2}\n'))
    result = cli.ok("submit", "-f", "-")
    assert result.out.splitlines()[0] == f"Submitted 2 tasks to queue {cli.queue}"
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).queued == 2


def test_submit_file_with_a_delay_submits_each_task_with_it(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("1\n2\n")
    cli.ok("submit", "-f", str(path), "--delay", "30")
    figures = with_queue(cli.redis_url, cli.queue, TaskQueue.figures)
    assert (figures.queued, figures.delayed) == (0, 2)


def test_idempotency_key_returns_the_same_task(cli: Cli) -> None:
    first = cli.ok("submit", "--json", '{"x": 1}', "--idempotency-key", "order-42", "-o", "json")
    again = cli.ok("submit", "--json", '{"x": 1}', "--idempotency-key", "order-42", "-o", "json")
    assert first.json()["ids"] == again.json()["ids"]
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).queued == 1


def test_a_file_submitted_again_under_one_key_queues_only_its_new_lines(
    cli: Cli, tmp_path: Path,
) -> None:
    """The N-th payload gets KEY:N (blank lines do not count; a file of one line too), so a
    command run again after a failure, or on a file with lines appended, queues only what it
    did not queue before."""
    path = tmp_path / "tasks.jsonl"
    path.write_text('"a"\n')
    first = cli.ok("submit", "-f", str(path), "--idempotency-key", "import", "-o", "json")
    path.write_text('"a"\n\n"b"\n"c"\n')
    again = cli.ok("submit", "-f", str(path), "--idempotency-key", "import", "-o", "json")
    ids = again.json()["ids"]
    assert ids[0] == first.json()["ids"][0] and len(set(ids)) == 3
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).queued == 3
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i)) for i in ids]
    assert [i.payload for i in infos if i] == ["a", "b", "c"]
    for n, task_id in enumerate(ids, start=1):
        key = with_queue(cli.redis_url, cli.queue,
                         lambda q, t=task_id: q.redis.hget(q.task_key(t), "idem"))
        assert key in (f"import:{n}", f"import:{n}".encode())
    twice = cli.ok("submit", "--json", '"a"', "--json", '"d"', "--idempotency-key", "import",
                   "-o", "json")
    assert twice.json()["ids"][0] == ids[0]


def test_a_keyed_submit_does_not_count_tasks_queued_before_as_new(cli: Cli,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('"a"\n"b"\n')
    plain = cli.ok("submit", "-f", str(path))
    assert plain.out.splitlines()[0] == f"Submitted 2 tasks to queue {cli.queue}"
    cli.ok("submit", "-f", str(path), "--idempotency-key", "batch")
    again = cli.ok("submit", "-f", str(path), "--idempotency-key", "batch")
    assert again.out.splitlines()[0] == (
        f"Submitted 2 tasks to queue {cli.queue} (under an idempotency key: tasks queued "
        "before under it keep their ids)")


def test_bad_json_payload_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli("submit", "--json", "{bad")
    assert result.code == 2
    assert result.err_lines == [
        "agentpool: --json is not valid JSON: Expecting property name enclosed in double "
        "quotes (line 1 column 2)"
    ]
    assert result.out == ""
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).stats.get("submitted") is None


def test_bad_line_in_a_file_names_the_line_and_stores_nothing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"ok": 1}\nnot json\n')
    result = cli("submit", "-f", str(path))
    assert result.code == 2
    assert result.err_lines == [f"agentpool: line 2 of {path} is not valid JSON: Expecting "
                                "value (line 1 column 1)"]
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).queued == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to submit: give --json PAYLOAD or --file FILE"),
        (["-f", "/nonexistent/t.jsonl"], "cannot read /nonexistent/t.jsonl: No such file or "
         "directory"),
        (["--json", "1", "--timeout", "3"], "--timeout applies to --wait"),
    ],
)
def test_submit_usage_errors(cli: Cli, argv: list[str], message: str) -> None:
    result = cli("submit", *argv)
    assert (result.code, result.err_lines) == (2, [f"agentpool: {message}"])


def test_protocol_refusal_is_a_usage_error(cli: Cli) -> None:
    result = cli("submit", "--json", "1", "--priority", "12")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err.startswith("agentpool: priority must be")


def test_queue_and_url_are_required(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    no_queue = cli.raw("submit", "--redis-url", cli.redis_url, "--json", "1")
    assert (no_queue.code, no_queue.err_lines) == (
        2, ["agentpool: no queue: pass --queue or set AGENTPOOL_QUEUE"])
    no_url = cli.raw("submit", "--queue", cli.queue, "--json", "1")
    assert (no_url.code, no_url.err_lines) == (
        2, ["agentpool: no Redis URL: pass --redis-url or set AGENTPOOL_REDIS_URL"])


def test_environment_supplies_url_and_queue(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPOOL_REDIS_URL", cli.redis_url)
    monkeypatch.setenv("AGENTPOOL_QUEUE", cli.queue)
    assert cli.raw("submit", "--json", "1").code == 0
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).queued == 1


def test_submit_wait_prints_results(cli: Cli) -> None:
    with background_worker(cli.redis_url, cli.queue):
        doc = cli.ok("submit", "--json", '"a"', "--json", '"b"', "--wait", "--timeout", "10",
                     "-o", "json").json()
    assert [(t["state"], t["result"]) for t in doc["tasks"]] == [
        ("succeeded", {"echo": "a"}), ("succeeded", {"echo": "b"})]
    assert doc["pending"] == []


def test_submit_wait_table_and_a_failed_task_exit_1(cli: Cli) -> None:
    with background_worker(cli.redis_url, cli.queue, fail_payloads=("bad",)):
        result = cli("submit", "--json", '"good"', "--json", '"bad"', "--wait",
                     "--timeout", "10")
    assert result.code == 1
    assert result.err_lines == ["agentpool: 1 dead"]
    rows = {row[1]: row for row in table_rows(result.out)}
    assert rows["succeeded"][3] == '{"echo":"good"}'
    assert rows["dead"][3] == "handler raised"


def test_submit_wait_timeout_lists_pending_and_exits_1(cli: Cli) -> None:
    result = cli("submit", "--json", "1", "--wait", "--timeout", "0.3", "-o", "json")
    assert result.code == 1
    assert result.err_lines == ["agentpool: 1 of 1 tasks not finished after 0.3s"]
    assert len(result.json()["pending"]) == 1


@pytest.fixture
def describing_worker(cli: Cli, tmp_path: Path) -> Iterator[None]:
    """A real `agentpool-worker` on the CLI's queue whose handler returns the type and value
    of the payload it received."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env.update(AGENTPOOL_REDIS_URL=cli.redis_url, AGENTPOOL_QUEUE=cli.queue,
               AGENTPOOL_HANDLER="payload_handlers:describe", AGENTPOOL_POD_NAME="pod-p",
               AGENTPOOL_PORT="0",
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]))
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "agentpool_worker.main"], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield
    finally:
        process.kill()
        process.wait(timeout=10)


def test_any_json_value_reaches_the_handler_as_given(cli: Cli, describing_worker: None,
                                                     tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('"Summarise the attached report."\n[1, "two", {"three": 3}]\n')
    doc = cli.ok("submit", "--file", str(path), "--json", "null", "--wait", "--timeout", "60",
                 "-o", "json").json()
    assert [t["state"] for t in doc["tasks"]] == ["succeeded"] * 3
    assert [t["result"] for t in doc["tasks"]] == [
        {"type": "NoneType", "payload": None},
        {"type": "str", "payload": "Summarise the attached report."},
        {"type": "list", "payload": [1, "two", {"three": 3}]},
    ]


def test_a_payload_over_the_limit_is_refused_in_one_line(cli: Cli, tmp_path: Path) -> None:
    big = "x" * DEFAULT_MAX_PAYLOAD_BYTES
    path = tmp_path / "tasks.jsonl"
    path.write_text(f'{{"n": 1}}\n{json.dumps(big)}\n')
    result = cli("submit", "--file", str(path))
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == [
        f"agentpool: line 2 of {path}: payload is {DEFAULT_MAX_PAYLOAD_BYTES + 2} bytes "
        "encoded as JSON; the limit is 1048576 bytes (1 MiB)"]
    single = cli("submit", "--json", json.dumps([big]))
    assert single.err_lines == [
        f"agentpool: --json: payload is {DEFAULT_MAX_PAYLOAD_BYTES + 4} bytes encoded as JSON; "
        "the limit is 1048576 bytes (1 MiB)"]
    assert not with_queue(cli.redis_url, cli.queue, TaskQueue.used)


def test_submit_help_states_what_a_payload_may_be(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A payload is any JSON value: an object, a list, a string (a prompt)" in text
    assert "at most 1 MiB (1048576 bytes) encoded as JSON" in text


def test_submit_after_other_tasks_defers_each_payload_and_get_shows_it(cli: Cli) -> None:
    first, second = cli.ok("submit", "--json", "1", "--json", "2", "-o", "json").json()["ids"]
    doc = cli.ok("submit", "--json", '"a"', "--json", '"b"', "--after", first,
                 "--after", second, "-o", "json").json()
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i)) for i in doc["ids"]]
    assert [(i.payload, i.state, i.after) for i in infos if i] == [
        ("a", "deferred", (first, second)), ("b", "deferred", (first, second))]
    shown = cli.ok("get", doc["ids"][0]).out
    assert f"After     {first}, {second} (runs once they have all succeeded)" in shown
    assert cli.ok("get", doc["ids"][0], "-o", "json").json()["after"] == [first, second]


@pytest.mark.parametrize("payloads", [["--json", "2"], ["--json", "2", "--json", "3"]],
                         ids=["one", "many"])
def test_submit_after_an_unknown_task_fails_in_one_line(cli: Cli, payloads: list[str]) -> None:
    cli.ok("submit", "--json", "1")
    unknown = "feedbeef" * 4
    result = cli("submit", *payloads, "--after", unknown)
    assert result.code == 1
    assert result.err_lines == [
        f"agentpool: after: no task {unknown} in queue {cli.queue} (never submitted, or "
        "finished longer ago than the result TTL); nothing was submitted"]
    assert with_queue(cli.redis_url, cli.queue, TaskQueue.figures).stats["submitted"] == 1


def test_submit_after_reads_a_task_id_as_get_does(cli: Cli) -> None:
    first = cli.ok("submit", "--json", "1", "-o", "json").json()["ids"][0]
    doc = cli.ok("submit", "--json", "2", "--after", f" {first.upper()} ", "-o", "json").json()
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(doc["ids"][0]))
    assert info is not None and info.after == (first,)
    malformed = cli("submit", "--json", "3", "--after", "0123")
    assert malformed.code == 2
    assert "invalid task id '0123'" in malformed.err


def test_a_task_to_run_after_gone_midway_through_a_file_lists_the_tasks_that_went_in(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """600 payloads go in two chunks; the task they run after expires (its result TTL)
    between them: the ids of the first 500 are printed, and why the rest were not sent."""
    [first] = cli.ok("submit", "--json", "1", "-o", "json").json()["ids"]
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(600)))
    calls = 0
    in_one_trip = task_queue.scripts_in_one_trip

    async def first_gone_after_one_call(redis: Any, calls_of: Any, **options: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            await redis.delete(calls_of[0][0].task_key(first))
        return await in_one_trip(redis, calls_of, **options)

    monkeypatch.setattr(task_queue, "scripts_in_one_trip", first_gone_after_one_call)
    result = cli("submit", "-f", str(lines), "--after", first, "-o", "json")
    assert result.code == 1
    ids = json.loads(result.out)["ids"]
    assert len(ids) == 500
    assert result.err_lines == [
        f"agentpool: after: no task {first} in queue {cli.queue} (never submitted, or finished "
        "longer ago than the result TTL); 500 of 600 tasks queued before the error (their ids "
        "are on stdout)"]
    infos = with_queue(cli.redis_url, cli.queue, lambda q: q.get_many([ids[0], ids[-1]]))
    assert [(i.payload, i.state) for i in infos] == [({"n": 0}, "deferred"),
                                                      ({"n": 499}, "deferred")]


def test_redis_gone_midway_through_a_file_lists_the_tasks_that_went_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stops between the two batches of 600 payloads: the ids of the first 500 are
    printed, and the line says the batch in flight may be in too, not knowing its fate."""
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(600)))
    calls = 0
    in_one_trip = task_queue.scripts_in_one_trip
    with RedisServer() as server:

        async def redis_stops_after_one_call(redis: Any, calls_of: Any, **options: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                server.stop()
            return await in_one_trip(redis, calls_of, **options)

        monkeypatch.setattr(task_queue, "scripts_in_one_trip", redis_stops_after_one_call)
        result = Cli(capsys, server.url, "gone")("submit", "-f", str(lines))
    assert result.code == 1
    assert result.out.splitlines()[0] == "Submitted 500 tasks to queue gone"
    [line] = result.err_lines
    assert line.startswith(f"agentpool: cannot reach Redis at {server.url}")
    assert line.endswith("; 500 of 600 tasks queued before the error (their ids are on stdout), "
                         "and maybe the batch being sent when it came; a rerun would queue them "
                         "again: submit the payloads after the first 500 (with "
                         "--idempotency-key, a command run again queues only the tasks it did "
                         "not queue before)")


def test_submit_wait_stopped_by_ctrl_c_still_says_which_tasks_went_in(cli: Cli) -> None:
    """The tasks are queued before the wait: a wait given up (Ctrl-C) must not leave the
    caller without their ids."""
    code = "import sys; from agentpool.cli.main import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "submit", "--redis-url", cli.redis_url, "--queue",
         cli.queue, "--json", "1", "--wait", "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    admin = redis.Redis.from_url(cli.redis_url)
    try:
        done_channel = key_prefix(cli.queue) + "done"
        wait_until(lambda: admin.execute_command(
            "PUBSUB", "SHARDNUMSUB", done_channel)[1] > 0, within=20)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        admin.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    ids = json.loads(out)["ids"]
    assert len(ids) == 1
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(ids[0]))
    assert info is not None and info.state == "queued"
