"""What the CLI prints for people: text from Redis never drives the terminal (escape
sequences show as escapes), and tables stay readable on an 80-column terminal."""

from __future__ import annotations

import json
import re
from dataclasses import replace

from cli_helpers import Cli, with_queue
from rich.console import Console

from agentpool.cli.common import render
from agentpool.cli.terminal import printable
from agentpool.cli.views import task_list_grid
from agentpool.protocol import Progress, TaskInfo, TaskQueue, WorkerInfo

CLEAR = "\x1b[2J"
TITLE = "\x1b]0;owned\x07"
CLIPBOARD = "\x1b]52;c;ZXZpbA==\x07"
CSI_C1 = "\x9b31m"
HOSTILE = f"{CLEAR}{TITLE}{CLIPBOARD}{CSI_C1}"
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""Any control character but the newline that ends a line."""


async def hostile_dead_task(q: TaskQueue) -> str:
    """A task whose payload, progress message, error and worker hold escape sequences."""
    task_id = await q.submit({"prompt": f"hi {HOSTILE}"}, max_attempts=1)
    [task] = (await q.claim(f"pod{CLEAR}:inst", 1, 30)).tasks
    await q.emit(task_id, "progress", {"fraction": 0.5, "message": f"step {HOSTILE}"},
                 attempt=1)
    await q.fail(task, f"Boom{TITLE}: bad\nTraceback (most recent call last):\n  x",
                 retryable=False)
    await q.heartbeat(WorkerInfo(pod=f"pod{CLIPBOARD}", instance="i1", concurrency=1), {}, 30)
    return task_id


def assert_no_raw_control(text: str) -> None:
    assert not RAW_CONTROL.findall(text), repr(text)


def test_escape_sequences_from_redis_are_shown_not_sent_to_the_terminal(cli: Cli) -> None:
    task_id = with_queue(cli.redis_url, cli.queue, hostile_dead_task)
    results = [cli("tasks", "--state", "dead"), cli("dead", "list"), cli("get", task_id),
               cli("get", task_id, "--follow"), cli("workers")]
    for result in results:
        assert_no_raw_control(result.out)
        assert_no_raw_control(result.err)
    listed, dead, shown, followed, workers = results
    for out in (listed.out, dead.out, shown.out):
        assert "Boom\\x1b]0;owned\\x07: bad" in out
    assert "step \\x1b[2J\\x1b]0;owned\\x07\\x1b]52;c;ZXZpbA==\\x07\\x9b31m" in shown.out
    assert "step \\x1b[2J\\x1b]0;owned\\x07" in followed.out.splitlines()[0]
    assert followed.code == 1
    assert followed.err_lines == [f"agentpool: task {task_id} ended dead: Boom\\x1b]0;owned\\x07: "
                                  "bad"]
    assert "pod\\x1b]52;c;ZXZpbA==\\x07" in workers.out


def test_json_output_keeps_the_text_exactly(cli: Cli) -> None:
    task_id = with_queue(cli.redis_url, cli.queue, hostile_dead_task)
    result = cli("get", task_id, "-o", "json")
    assert_no_raw_control(result.out)
    doc = json.loads(result.out)
    assert doc["payload"] == {"prompt": f"hi {HOSTILE}"}
    assert doc["progress"]["message"] == f"step {HOSTILE}"
    assert doc["error"].startswith(f"Boom{TITLE}: bad\n")


def test_printable_keeps_only_what_it_is_told_to() -> None:
    assert printable("a\x1b[2Jb\x7f\x9b") == "a\\x1b[2Jb\\x7f\\x9b"
    assert printable("line\n\tnext\r", keep="\n\t") == "line\n\tnext\\x0d"
    assert printable("é 漢字 [bold]") == "é 漢字 [bold]"


NOW = 1_700_000_000.0


def running(n: int) -> TaskInfo:
    now_ms = int(NOW * 1000)
    return TaskInfo(
        id=f"{n:032x}", state="running", payload={"prompt": "summarise " * 20, "n": n},
        attempts=1, priority=5, created_ms=now_ms - 90_000, started_ms=now_ms - 60_000,
        finished_ms=None, result=None, error="TimeoutError: the model took too long " * 3,
        owner=f"agents-5f6d8c9b7-x2x4q:{n:08x}", max_attempts=3,
        progress=Progress(0.25, "step 1 of 4, reading the sources"), tenant="acme-corporation")


def rendered(width: int) -> list[str]:
    grid = task_list_grid([running(1), running(2)], NOW, "Running", progress=True)
    console = Console(width=width, highlight=False)
    with console.capture() as captured:
        console.print(render(grid))
    return captured.get().splitlines()


def test_an_80_column_table_keeps_ids_and_states_whole_on_one_line() -> None:
    for width in (80, 70):
        lines = rendered(width)
        assert all(len(line) <= width for line in lines)
        rows = [line for line in lines if line.startswith("0000")]
        assert len(rows) == 2, lines
        for n, row in enumerate(rows, start=1):
            assert row.split()[:3] == [f"{n:032x}", "running", "5"]
            assert row.endswith(" 1m30s")
        assert any(line.startswith("too narrow to show ") for line in lines)


def test_a_narrow_table_leaves_the_tenant_out_before_the_payload() -> None:
    header = next(line for line in rendered(110) if line.startswith("ID"))
    assert "PAYLOAD" in header.split() and "TENANT" not in header.split()


def test_a_table_too_narrow_for_its_ids_wraps_them_and_hides_no_column_unsaid() -> None:
    """At 45 columns not even the ids, states and figures fit: they wrap rather than being
    cut to "…" (an id cut short names no task), and every column left out is named."""
    lines = rendered(45)
    assert all(len(line) <= 45 for line in lines)
    text = "".join(line.split()[0] for line in lines if line and line[0] in "0123456789abcdef")
    assert f"{1:032x}" in text and f"{2:032x}" in text, lines
    assert not any("…" in line.split()[0] for line in lines if line.strip()), lines
    shown = {word for line in lines[:4] for word in line.split()}
    said = next(line for line in lines if line.startswith("too narrow to show "))
    for column in ("STATE", "PRIO", "ATTEMPTS", "AGE"):
        assert column in shown or column in said, (column, lines)


def test_a_wide_terminal_shows_every_column() -> None:
    lines = rendered(200)
    assert lines[1].split() == ["ID", "STATE", "PRIO", "TENANT", "ATTEMPTS", "PROGRESS",
                                "AGE", "OWNER", "ERROR", "PAYLOAD"]
    assert not any(line.startswith("too narrow") for line in lines)


def test_a_narrow_table_leaves_out_the_columns_with_nothing_to_show_first() -> None:
    """Queued tasks have no error yet: that column goes before the payload does."""
    queued = [replace(running(n), state="queued", owner=None, error=None, progress=None,
                      tenant=None, payload=n) for n in (1, 2)]
    console = Console(width=80, highlight=False)
    with console.capture() as captured:
        console.print(render(task_list_grid(queued, NOW, "Queued")))
    lines = captured.get().splitlines()
    assert lines[1].split() == ["ID", "STATE", "PRIO", "ATTEMPTS", "AGE", "OWNER", "PAYLOAD"]
    assert lines[3].split()[-1] == "1"
    assert not any("too narrow" in line for line in lines)
