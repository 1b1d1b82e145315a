"""The shell agents of docs/worker.md ("Agents that are programs"), run as written by a worker
of the command handler, with `my-agent-cli` a stand-in on PATH."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from worker_helpers import running, settings

from agentpool.protocol import TaskQueue, task_for_idempotency_key
from agentpool_worker.command import COMMAND_ENV

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "agentpool_worker.command:run"
AGENT_CLI = """#!/bin/sh
[ "$1" = --prompt ] || exit 2
echo "answer to: $2"
"""


def doc_script(after: str) -> str:
    """The first ```sh block of docs/worker.md after the line that begins with `after`."""
    docs = (ROOT / "docs" / "worker.md").read_text()
    start = docs.index("\n" + after)
    match = re.compile(r"```sh\n(.*?)```", re.S).search(docs, start)
    assert match is not None, f"no shell block after {after!r}"
    return match.group(1)


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where a shell agent goes, with `my-agent-cli` on the PATH its runs inherit."""
    tools = tmp_path / "bin"
    tools.mkdir()
    cli = tools / "my-agent-cli"
    cli.write_text(AGENT_CLI)
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    return tmp_path / "agent.sh"


def use(agent: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    agent.write_text(script)
    monkeypatch.setenv(COMMAND_ENV, json.dumps(["sh", str(agent)]))


async def test_the_shell_agent_answers_its_prompt(
    agent: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    use(agent, doc_script("A shell script agent, for instance:"), monkeypatch)
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER)):
        done = await queue.wait(await queue.submit({"prompt": "hello"}), timeout=20)
    assert (done.state, done.result) == ("succeeded", {"answer": "answer to: hello"})


async def test_the_shell_planner_submits_a_step_per_question_and_a_summary_after_them(
    agent: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    use(agent, doc_script("And one that plans:"), monkeypatch)
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER, concurrency=3)):
        planner = await queue.submit({"questions": ["Why?", "How?"]})
        planned = await queue.wait(planner, timeout=20)
        summary_id = await task_for_idempotency_key(queue, f"{planner}:k:summary")
        assert summary_id is not None
        summary = await queue.wait(summary_id, timeout=20)
    assert (planned.state, planned.result) == ("succeeded", "planned")
    assert summary.state == "succeeded", summary.error
    assert summary.result == {"summary": ["answer to: Why?", "answer to: How?"]}
    assert len(summary.after) == 2
