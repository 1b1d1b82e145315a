from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import subprocess
import sys
from typing import Any

import pytest
from cli_helpers import Cli, background_worker, key_values, make_dead, with_queue
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.cli import submit as submit_command
from agentpool.cli.submit import WaitProgress
from agentpool.protocol import DeadLettersCut, TaskInfo, TaskQueue, WorkerInfo

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def submit(cli: Cli, payload: Any = None, **options: Any) -> str:
    async def go(q: TaskQueue) -> str:
        return await q.submit(payload if payload is not None else {"n": 1}, **options)

    return with_queue(cli.redis_url, cli.queue, go)


def test_get_table_shows_the_task(cli: Cli) -> None:
    task_id = submit(cli, {"prompt": "summarise"}, priority=3)
    fields = key_values(cli.ok("get", task_id).out)
    assert fields["ID"] == task_id
    assert fields["Queue"] == cli.queue
    assert fields["State"] == "queued"
    assert fields["Priority"] == "3"
    assert fields["Payload"] == '{"prompt":"summarise"}'
    assert fields["Result"] == "-"


def test_get_json_has_every_field(cli: Cli) -> None:
    task_id = submit(cli, {"prompt": "x"})
    doc = cli.ok("get", task_id, "-o", "json").json()
    assert doc["id"] == task_id
    assert doc["state"] == "queued"
    assert doc["payload"] == {"prompt": "x"}
    assert set(doc) == {"id", "queue", "state", "priority", "attempts", "max_attempts",
                        "created", "started", "finished", "expires", "timeout_seconds",
                        "after", "tenant", "capped", "next", "owner", "error",
                        "payload", "result", "progress"}


ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
"""How every time the CLI prints reads: UTC, marked Z, as `get --follow` prints its clock."""


async def ran_once(q: TaskQueue) -> str:
    task_id = await q.submit({"n": 1})
    await q.heartbeat(WorkerInfo(pod="pod-z", instance="i1", concurrency=1), {}, 30)
    [task] = (await q.claim("pod-z:i1", 1, 30)).tasks
    await q.emit(task_id, "token", {"text": "t"}, attempt=1)
    await q.complete(task, {"ok": True})
    return task_id


def test_every_time_the_cli_prints_is_utc_marked_z(cli: Cli) -> None:
    task_id = with_queue(cli.redis_url, cli.queue, ran_once)
    fields = key_values(cli.ok("get", task_id).out)
    for name in ("Created", "Started", "Finished"):
        stamp, ago = fields[name].split(" ", 1)
        assert ISO_Z.fullmatch(stamp) and ago.endswith(" ago)"), fields[name]
    doc = cli.ok("get", task_id, "-o", "json").json()
    assert all(ISO_Z.fullmatch(doc[key]) for key in ("created", "started", "finished")), doc
    lines = cli.ok("get", task_id, "--follow", "-o", "json").out.splitlines()
    event = json.loads(lines[0])
    assert ISO_Z.fullmatch(event["time"]) and event["kind"] == "token"
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3}Z attempt 1 token ",
                    cli.ok("get", task_id, "--follow").out)
    [worker] = cli.ok("workers", "-o", "json").json()["workers"]
    assert ISO_Z.fullmatch(worker["last_heartbeat"]) and ISO_Z.fullmatch(worker["started"])


def test_get_after_without_follow_is_refused(cli: Cli) -> None:
    task = cli.ok("submit", "--json", "1", "-o", "json").json()["ids"][0]
    result = cli("get", task, "--after", "0-0")
    assert (result.code, result.err_lines) == (2, ["agentpool: --after applies to --follow"])


def test_get_names_the_tasks_submitted_after_the_task(cli: Cli) -> None:
    """The first five in submit order, and how many more; all of them in JSON."""
    first = submit(cli)
    assert "Next" not in key_values(cli.ok("get", first).out)
    steps = [submit(cli, {"step": n}, after=[first]) for n in range(7)]
    shown = " ".join(cli.ok("get", first).out.split())  # a long value wraps
    assert f"Next {', '.join(steps[:5])} and 2 more (submitted to run after it)" in shown
    assert cli.ok("get", first, "-o", "json").json()["next"] == steps
    assert key_values(cli.ok("get", steps[0]).out)["After"] == (
        f"{first} (runs once they have all succeeded)")


def test_get_unknown_task_exits_1_with_one_line(cli: Cli) -> None:
    for output in ("table", "json"):
        result = cli("get", UNKNOWN_ID, "-o", output)
        assert (result.code, result.out) == (1, "")
        assert result.err_lines == [f"agentpool: no task {UNKNOWN_ID} in queue {cli.queue}"]


@pytest.mark.parametrize("verb", ["get", "wait", "cancel"])
def test_an_empty_task_id_is_named_as_the_problem(cli: Cli, verb: str) -> None:
    for argv in ([verb, ""], [verb, "  ", "--redis-url", cli.redis_url, "-q", cli.queue]):
        result = cli.raw(*argv)
        assert (result.code, result.out) == (2, "")
        assert result.err_lines == [
            "agentpool: empty task id: give the id that submit printed (32 hexadecimal digits)"]


@pytest.mark.parametrize("verb", ["get", "wait", "cancel"])
def test_a_malformed_task_id_is_named_as_the_problem(cli: Cli, verb: str) -> None:
    task_id = submit(cli)
    for bad in ("nope", task_id[:-1], task_id + "0", f"{task_id[:8]}-{task_id[8:]}"):
        result = cli(verb, bad)
        assert (result.code, result.out) == (2, "")
        assert result.err_lines == [
            f"agentpool: invalid task id {bad!r}: a task id is 32 hexadecimal digits, as "
            "submit prints it"]
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(task_id))
    assert info is not None and info.state == "queued"


def test_a_task_id_pasted_with_blanks_or_in_capitals_is_found(cli: Cli) -> None:
    task_id = submit(cli)
    assert cli.ok("get", f" {task_id.upper()}\n", "-o", "json").json()["id"] == task_id


def test_dead_requeue_checks_every_id(cli: Cli) -> None:
    result = cli("dead", "requeue", UNKNOWN_ID, "")
    assert (result.code, result.out) == (2, "")
    assert result.err_lines[0].startswith("agentpool: empty task id")


def test_a_dead_requeue_cut_short_by_redis_says_how_many_it_requeued(
    cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages done before Redis failed stay done: the person learns how many, and to run it
    again, not only that Redis failed."""
    async def cut_short(self: TaskQueue, ids: list[str] | None) -> Any:
        raise DeadLettersCut(1000, 0) from RedisConnectionError(
            "Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(TaskQueue, "requeue_dead_counted", cut_short)
    result = cli("dead", "requeue", "--all")
    assert result.code == 1
    assert result.err_lines == [
        f"agentpool: requeued 1000 dead tasks of queue {cli.queue}, then cannot reach Redis "
        f"at {cli.redis_url}: Connection refused; run it again for the rest"]


def test_wait_returns_the_result(cli: Cli) -> None:
    task_id = submit(cli, "hi")
    with background_worker(cli.redis_url, cli.queue, start_after=0.2):
        doc = cli.ok("wait", task_id, "--timeout", "10", "-o", "json").json()
    assert (doc["state"], doc["result"]) == ("succeeded", {"echo": "hi"})


def test_wait_table_for_a_dead_task_exits_1(cli: Cli) -> None:
    [task_id] = with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, ["x"], "kaput"))
    result = cli("wait", task_id, "--timeout", "5")
    assert result.code == 1
    assert key_values(result.out)["State"] == "dead"
    assert result.err_lines == [f"agentpool: task {task_id} ended dead: kaput"]


def test_wait_timeout_exits_1(cli: Cli) -> None:
    task_id = submit(cli)
    result = cli("wait", task_id, "--timeout", "0.2")
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [f"agentpool: task {task_id} not finished after 0.2s"]


def test_wait_for_several_tasks_shows_each_and_exits_1_unless_all_succeeded(cli: Cli) -> None:
    [dead] = with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, ["x"], "kaput"))
    ok = [submit(cli, "a"), submit(cli, "b")]
    with background_worker(cli.redis_url, cli.queue):
        good = cli.ok("wait", *ok, ok[0], "--timeout", "10", "-o", "json").json()
        mixed = cli("wait", *ok, dead, "--timeout", "10")
    assert [(t["id"], t["state"], t["result"]) for t in good["tasks"]] == [
        (ok[0], "succeeded", {"echo": "a"}), (ok[1], "succeeded", {"echo": "b"})]
    assert good["pending"] == []
    assert mixed.code == 1
    rows = [line.split()[:2] for line in mixed.out.splitlines()]
    assert [row for row in rows if len(row[0]) == 32] == [
        [ok[0], "succeeded"], [ok[1], "succeeded"], [dead, "dead"]]
    assert mixed.err_lines == ["agentpool: 1 dead"]


def test_wait_for_several_reports_those_not_finished_in_time(cli: Cli) -> None:
    ids = [submit(cli, "a"), submit(cli, "b")]
    result = cli("wait", *ids, "--timeout", "0.2", "-o", "json")
    assert result.code == 1
    assert result.json() == {"queue": cli.queue, "tasks": [], "pending": ids}
    assert result.err_lines == ["agentpool: 2 of 2 tasks not finished after 0.2s"]


def test_wait_unknown_task_exits_1(cli: Cli) -> None:
    result = cli("wait", UNKNOWN_ID, "--timeout", "1")
    assert result.code == 1
    assert result.err_lines == [f"agentpool: no task {UNKNOWN_ID} in queue {cli.queue}"]


def test_text_with_a_lone_surrogate_prints_escaped(cli: Cli) -> None:
    """A payload may hold text UTF-8 cannot encode (JSON's "\\ud83d" decodes to it): it is
    printed as a backslash escape, in the table and in JSON, not an error."""
    task_id = with_queue(cli.redis_url, cli.queue, lambda q: q.submit({"text": "half \ud83d"}))
    assert "half \\ud83d" in cli.ok("get", task_id).out
    assert '"half \\ud83d"' in cli.ok("get", task_id, "-o", "json").out


def test_cancel_a_queued_task(cli: Cli) -> None:
    task_id = submit(cli)
    result = cli.ok("cancel", task_id)
    assert result.out.strip() == f"{task_id}: cancelled"
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(task_id))
    assert info is not None and info.state == "cancelled"


def test_cancel_a_running_task_requests_it_json(cli: Cli) -> None:
    task_id = submit(cli)
    with_queue(cli.redis_url, cli.queue, lambda q: q.claim("pod-a:i1", 1, 30))
    doc = cli.ok("cancel", task_id, "-o", "json").json()
    assert doc == {"id": task_id, "queue": cli.queue, "outcome": "requested"}


def test_cancel_waiting_cancels_every_waiting_task_and_leaves_the_running_one(cli: Cli) -> None:
    running = submit(cli)
    with_queue(cli.redis_url, cli.queue, lambda q: q.claim("pod-a:i1", 1, 30))
    waiting = [submit(cli) for _ in range(3)]
    result = cli.ok("cancel", "--waiting")
    assert result.out.strip() == (f"Cancelled 3 waiting tasks of queue {cli.queue}; running "
                                  "tasks go on")
    infos = [with_queue(cli.redis_url, cli.queue, lambda q, i=i: q.get(i))
             for i in [running, *waiting]]
    assert [i.state for i in infos if i] == ["running", "cancelled", "cancelled", "cancelled"]
    assert cli.ok("cancel", "--waiting", "-o", "json").json() == {"queue": cli.queue,
                                                                  "cancelled": 0}


def test_cancel_waiting_of_one_tenant_leaves_the_others(cli: Cli) -> None:
    ids = with_queue(cli.redis_url, cli.queue, lambda q: asyncio.gather(
        *(q.submit({"n": n}, tenant=tenant) for n, tenant in enumerate(["gone", "stays",
                                                                         "gone", None]))))
    result = cli.ok("cancel", "--waiting", "--tenant", "gone")
    assert result.out.strip() == (f"Cancelled 2 waiting tasks of tenant gone of queue "
                                  f"{cli.queue}; running tasks go on")
    infos = with_queue(cli.redis_url, cli.queue, lambda q: q.get_many(ids))
    assert [i.state for i in infos] == ["cancelled", "queued", "cancelled", "queued"]
    assert cli.ok("cancel", "--waiting", "--tenant", "stays", "-o", "json").json() == {
        "queue": cli.queue, "tenant": "stays", "cancelled": 1}
    alone = cli("cancel", ids[3], "--tenant", "stays")
    assert alone.code == 2
    assert alone.err_lines == ["agentpool: --tenant goes with --waiting (a tenant's tasks "
                               "waiting to run)"]


@pytest.mark.parametrize(("argv", "which"), [(["--waiting", UNKNOWN_ID], "both"), ([], "neither")])
def test_cancel_takes_a_task_id_or_waiting(cli: Cli, argv: list[str], which: str) -> None:
    result = cli("cancel", *argv)
    assert result.code == 2
    assert result.err_lines == ["agentpool: give a TASK_ID or --waiting (every task waiting to "
                                f"run), not {which}"]


def test_cancel_finished_or_unknown_exits_1(cli: Cli) -> None:
    task_id = submit(cli)
    cli.ok("cancel", task_id)
    again = cli("cancel", task_id, "-o", "json")
    assert again.code == 1
    assert again.json()["outcome"] == "finished"
    assert again.err_lines == [f"agentpool: {task_id}: not cancelled: the task already finished"]
    unknown = cli("cancel", UNKNOWN_ID)
    assert (unknown.code, unknown.out) == (1, "")
    assert unknown.err_lines == [f"agentpool: {UNKNOWN_ID}: not cancelled: no such task"]


def test_a_wait_for_several_draws_its_progress_on_a_terminal_and_erases_it(cli: Cli) -> None:
    """stderr a terminal (a pty): one line rewritten as the tasks finish ("2 of 3 finished:
    1 dead, 1 succeeded"), erased before the outcomes are printed; stdout keeps the table."""
    [dead] = with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, ["x"], "kaput"))
    ok = submit(cli, "a")
    queued = submit(cli, "b")
    with background_worker(cli.redis_url, cli.queue, start_after=1.0):
        code, out, screen = on_terminal("wait", dead, ok, queued, "--redis-url", cli.redis_url,
                                        "--queue", cli.queue, "--timeout", "20")
    assert code == 1, screen
    drawn = [part for part in screen.split("\r\x1b[K") if part]
    assert drawn[0] == "0 of 3 finished"
    assert "3 of 3 finished: 1 dead, 2 succeeded" in drawn
    assert drawn[drawn.index("3 of 3 finished: 1 dead, 2 succeeded") + 1:] == [
        "agentpool: 1 dead\r\n"], "erased, then the outcome's complaint on a fresh line"
    rows = [line.split()[:2] for line in out.splitlines()]
    assert [row for row in rows if row and len(row[0]) == 32] == [
        [dead, "dead"], [ok, "succeeded"], [queued, "succeeded"]]


def test_progress_is_drawn_at_most_every_tenth_of_a_second_but_always_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([100.0, 100.05, 100.06, 100.3])
    monkeypatch.setattr(submit_command.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = WaitProgress(4, stream)
    progress.start()
    for state in ("succeeded", "dead", "succeeded", "cancelled"):
        progress.finished(finished_info(state))
    progress.close()
    assert stream.getvalue().split("\r\x1b[K")[1:] == [
        "0 of 4 finished", "1 of 4 finished: 1 succeeded",
        "4 of 4 finished: 1 cancelled, 1 dead, 2 succeeded", ""], \
        "the 2nd and 3rd within 0.1 s of a drawing; the 4th is the last"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_line_only_on_a_terminal_and_for_several_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert WaitProgress.on_terminal(5) is None
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert WaitProgress.on_terminal(5) is not None
    assert WaitProgress.on_terminal(1) is None


def finished_info(state: str) -> TaskInfo:
    return TaskInfo(id="0" * 32, state=state, payload=None, attempts=1, priority=0,
                    created_ms=0, started_ms=0, finished_ms=1, result=None, error=None,
                    owner=None, max_attempts=None)


def on_terminal(*argv: str) -> tuple[int, str, str]:
    """Runs `agentpool` with stderr on a pseudo-terminal: its exit code, stdout, and all it
    wrote to the terminal."""
    code = "import sys; from agentpool.cli.main import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                            stderr=follower, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the program closed the terminal's last follower
            break
        if not chunk:
            break
        screen += chunk
    out, _ = proc.communicate(timeout=30)
    os.close(leader)
    return proc.returncode, out.decode(), screen.decode()
