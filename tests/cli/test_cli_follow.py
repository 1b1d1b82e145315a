"""Following a task's events: `agentpool get --follow`, the sync client, progress in `tasks`."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from cli_helpers import Cli, key_values, with_queue

from agentpool.cli.views import figures_grid
from agentpool.client import SyncClient
from agentpool.protocol import QueueFigures, TaskQueue


async def _followed(client: aioredis.Redis) -> bool:
    clients = await client.client_list()
    return any(c.get("cmd") == "xread" for c in clients)


@contextmanager
def live_task(redis_url: str, queue: str, task_id: str, *, succeed: bool = True,
              tokens: int = 3) -> Iterator[None]:
    """Once somebody blocks reading the task's events, run it: progress, tokens, outcome."""
    errors: list[BaseException] = []

    async def work() -> None:
        client = aioredis.Redis.from_url(redis_url)
        q = TaskQueue(client, queue)
        try:
            deadline = time.monotonic() + 10
            while not await _followed(client):
                assert time.monotonic() < deadline, "nobody followed the task"
                await asyncio.sleep(0.01)
            [task] = (await q.claim("pod-f:inst", 1, 30)).tasks
            await q.emit(task_id, "progress", {"fraction": 0.5, "message": "thinking"},
                         attempt=1)
            for i in range(tokens):
                await q.emit(task_id, "token", {"text": f"t{i}"}, attempt=1)
            if succeed:
                await q.complete(task, {"answer": 42})
            else:
                await q.fail(task, "model refused", retryable=False)
        finally:
            await client.aclose()

    def run() -> None:
        try:
            asyncio.run(work())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        thread.join(20)
    assert not errors, errors


def submit(cli: Cli) -> str:
    return with_queue(cli.redis_url, cli.queue, lambda q: q.submit({"prompt": "p"}))


def test_get_follow_prints_events_as_they_come_then_the_task(cli: Cli) -> None:
    task_id = submit(cli)
    with live_task(cli.redis_url, cli.queue, task_id):
        result = cli("get", task_id, "--follow")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}Z", line.split(" ", 1)[0])
               for line in lines[:4]), "times are UTC, and say so"
    events = [line.split(" ", 3)[1:] for line in lines[:4]]
    assert events == [["attempt", "1", "progress 50% thinking"],
                      ["attempt", "1", 'token {"text":"t0"}'],
                      ["attempt", "1", 'token {"text":"t1"}'],
                      ["attempt", "1", 'token {"text":"t2"}']]
    fields = key_values("\n".join(lines[4:]))
    assert (fields["State"], fields["Result"]) == ("succeeded", '{"answer":42}')
    assert fields["Progress"] == "50% thinking"


def test_get_follow_json_lines_and_a_failed_task_exits_1(cli: Cli) -> None:
    task_id = submit(cli)
    with live_task(cli.redis_url, cli.queue, task_id, succeed=False, tokens=1):
        result = cli("get", task_id, "--follow", "-o", "json")
    assert result.code == 1
    docs = [json.loads(line) for line in result.out.splitlines()]
    assert [(d["kind"], d["attempt"]) for d in docs[:3]] == [
        ("progress", 1), ("token", 1), ("final", 1)]
    assert docs[2]["data"] == {"state": "dead", "error": "model refused"}
    assert (docs[3]["id"], docs[3]["state"]) == (task_id, "dead")
    assert result.err_lines == [f"agentpool: task {task_id} ended dead: model refused"]

    after = cli("get", task_id, "--follow", "--after", docs[0]["id"], "-o", "json")
    assert [json.loads(line).get("kind") for line in after.out.splitlines()] == \
        ["token", "final", None]


def test_get_follow_of_an_unknown_task_exits_1(cli: Cli) -> None:
    unknown = "0" * 32
    result = cli("get", unknown, "--follow")
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [f"agentpool: no task {unknown} in queue {cli.queue}"]


def test_tasks_shows_the_progress_of_running_tasks(cli: Cli) -> None:
    async def start(q: TaskQueue) -> str:
        task_id = await q.submit({})
        await q.claim("pod-f:inst", 1, 30)
        await q.emit(task_id, "progress", {"fraction": 0.25, "message": "step 1 of 4"})
        return task_id

    task_id = with_queue(cli.redis_url, cli.queue, start)
    out = cli.ok("tasks", "--state", "running").out
    [header] = [line for line in out.splitlines() if "PROGRESS" in line]
    [row] = [line for line in out.splitlines() if task_id in line]
    assert "25% step 1 of 4" in row
    assert header.index("PROGRESS") == row.index("25%")


def test_the_sync_client_follows_events(redis_url: str, queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        task_id = queue.submit({})
        with live_task(redis_url, queue_name, task_id, tokens=2):
            events = list(queue.events(task_id))
        assert [e.kind for e in events] == ["progress", "token", "token", "final"]
        assert [e.data for e in queue.events(task_id, after=events[1].id, follow=False)] == [
            {"text": "t1"}, {"state": "succeeded"}]


def test_stats_name_the_refused_checkpoints_counter() -> None:
    figures = QueueFigures(queued_by_priority={0: 0}, due_delayed=0, delayed=0, in_flight=0,
                           dead=0, workers=0, stats={"checkpoints_refused": 2})
    rows = figures_grid("q", figures).rows
    assert ["Checkpoints refused (total)", "2"] in rows
