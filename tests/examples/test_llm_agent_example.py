"""The documented agent handler (examples/llm_agent.py) against a fake OpenAI-style server:
streamed text as events, a tool call, a 429 (Retry-After in seconds or as a date), progress up
to 100 %, a resumed attempt after a 5xx, a refused key taking the worker out of service, and
a worker started without the API's settings."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from agentpool.protocol import Progress, TaskEvent, TaskQueue
from agentpool.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests" / "worker"))

import llm_agent  # noqa: E402
from worker_helpers import (  # noqa: E402
    eventually,
    probe,
    retry_wait,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

KEY = "test-key"


@dataclass
class FakeLLM:
    """Answers a prompt with a tool call to `add`, then, given the tool's result, the answer
    (`answer_words` words, when given). The first completion request gets a 429 with
    `retry_after` as its Retry-After (None: no 429); `fail_after_tool` makes the first request
    that carries a tool result fail with a 500. A request with another key gets a 401."""

    fail_after_tool: bool = False
    retry_after: str | None = "0.05"
    answer_words: int = 0
    requests: list[list[dict[str, Any]]] = field(default_factory=list)
    rate_limited: int = 0
    model_checks: int = 0

    async def models(self, request: web.Request) -> web.Response:
        self.model_checks += 1
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        return web.json_response({"data": [{"id": "fake"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        if not self.rate_limited and self.retry_after is not None:
            self.rate_limited += 1
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": self.retry_after})
        messages = (await request.json())["messages"]
        self.requests.append(messages)
        if messages[-1]["role"] == "tool":
            if self.fail_after_tool:
                self.fail_after_tool = False
                return web.json_response({"error": "overloaded"}, status=500)
            words = [f" w{i}" for i in range(self.answer_words)] or [" answer", " is", " 5"]
            deltas = [{"content": piece} for piece in ("The", *words)]
        else:
            deltas = [
                {"content": "Adding."},
                {"tool_calls": [{"index": 0, "id": "call-1", "function": {
                    "name": "add", "arguments": '{"a": 2,'}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": ' "b": 3}'}}]},
            ]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in deltas:
            chunk = {"choices": [{"index": 0, "delta": delta}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def fake_llm(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLLM]:
    llm = FakeLLM()
    app = web.Application()
    app.router.add_get("/v1/models", llm.models)
    app.router.add_post("/v1/chat/completions", llm.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("LLM_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LLM_API_KEY", KEY)
    yield llm
    await runner.cleanup()


async def follow(queue: TaskQueue, task_id: str) -> list[TaskEvent]:
    async with asyncio.timeout(20):
        return [event async for event in queue.events(task_id, block_seconds=0.2)]


async def test_the_agent_streams_text_calls_a_tool_and_runs_again_after_a_429(
    fake_llm: FakeLLM, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "llm_agent:run")):
        task_id = await queue.submit({"prompt": "What is 2 + 3?"})
        events = await follow(queue, task_id)
    kinds = [e.kind for e in events]
    assert kinds == ["progress", "rate_limited", "progress", "token", "tool", "progress",
                     "token", "progress", "final"]
    assert [e.attempt for e in events[:3]] == [1, 1, 2]
    assert events[-2].data == {"fraction": 1.0, "message": "answered"}
    assert events[1].data == {"retry_after": 0.05}
    assert events[4].data == {"name": "add", "result": 5}
    assert [e.data["text"] for e in events if e.kind == "token"] == [
        "Adding.", "The answer is 5"]
    assert events[-1].data == {"state": "succeeded"}
    info = await queue.get(task_id)
    assert info is not None and info.result == {"answer": "The answer is 5", "tool_calls": 1}
    assert info.progress == Progress(1.0, "answered")
    assert info.attempts == 2


async def test_a_long_answer_goes_out_in_chunks_not_an_event_a_token(
    fake_llm: FakeLLM, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """docs/worker.md: a task's stream keeps ~10,000 events."""
    fake_llm.retry_after, fake_llm.answer_words = None, 2000
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "llm_agent:run")):
        task_id = await queue.submit({"prompt": "What is 2 + 3?"})
        events = await follow(queue, task_id)
    answer = "The" + "".join(f" w{i}" for i in range(2000))
    chunks = [e.data["text"] for e in events if e.kind == "token"]
    assert "".join(chunks) == "Adding." + answer
    assert len(chunks) <= 2 + len(answer) // llm_agent.CHUNK_CHARS, "an event a token or so"


async def test_a_429_whose_retry_after_is_a_date_runs_the_task_again_then(
    fake_llm: FakeLLM, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Retry-After as an HTTP date (RFC 9110), to the second: the retry is due then, not
    after the worker's backoff (0.05 s here)."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "llm_agent:run")):
        # dated once the worker is up: the date drops the second's fraction, which leaves the
        # run (2, 3] s from here, and a worker's start on a loaded machine would eat into that
        fake_llm.retry_after = formatdate(time.time() + 3, usegmt=True)
        task_id = await queue.submit({"prompt": "What is 2 + 3?"})
        waited = await retry_wait(queue, task_id)
        done = await queue.wait(task_id, timeout=20)
    assert 1.5 < waited <= 3.5
    assert (done.state, done.attempts) == ("succeeded", 2)
    [limited] = [e for e in await follow(queue, task_id) if e.kind == "rate_limited"]
    assert 1 < limited.data["retry_after"] <= 3


@pytest.mark.parametrize(("header", "seconds"), [
    (None, 10.0), ("", 10.0), ("7", 7.0), ("1.5", 1.5), ("-5", 0.0), ("nan", 10.0),
    ("inf", 10.0), ("tomorrow", 10.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ("1e9", 86400.0),
])
def test_retry_after_reads_seconds_or_a_date(header: str | None, seconds: float) -> None:
    assert llm_agent.retry_after(header) == seconds


async def test_a_refused_key_takes_the_worker_out_of_service_not_the_tasks(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    """A revoked key: the tasks wait in the queue for a worker whose key works, instead of
    dead-lettering the backlog as refused requests."""
    monkeypatch.setenv("LLM_API_KEY", "revoked")
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, "llm_agent:run", port=port,
                                lease_seconds=0.6)):
        status, body = await probe(port, "/readyz")
        assert (status, body.strip()) == (503, "ready check failed: LLM API refuses the key: 401")
        task_id = await queue.submit({"prompt": "What is 2 + 3?"})
        checks = fake_llm.model_checks
        await eventually(lambda: fake_llm.model_checks >= checks + 3, 10, "more ready checks")
        assert await task_in(queue, task_id, "queued"), "a worker with a refused key claimed"
    assert fake_llm.requests == []


async def test_after_a_failed_turn_the_next_attempt_resumes_after_the_tool_call(
    fake_llm: FakeLLM, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    fake_llm.fail_after_tool, fake_llm.retry_after = True, None
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "llm_agent:run")):
        task_id = await queue.submit({"prompt": "What is 2 + 3?"})
        events = await follow(queue, task_id)
    assert [e.data for e in events if e.kind == "resumed"] == [{"tool_calls": 1}]
    assert [e.attempt for e in events if e.kind == "tool"] == [1]
    asked_for_tools = [m for m in fake_llm.requests if m[-1]["role"] == "user"]
    assert len(asked_for_tools) == 1, "the second attempt repeated the tool call"
    info = await queue.get(task_id)
    assert info is not None and info.attempts == 2
    assert info.result == {"answer": "The answer is 5", "tool_calls": 1}


@pytest.mark.parametrize("missing", ["LLM_BASE_URL", "LLM_API_KEY"])
async def test_a_worker_without_the_api_settings_stops_at_start_with_one_line(
    tmp_path: Path, redis_url: str, queue_name: str, missing: str,
) -> None:
    env = worker_env(redis_url, queue_name, "llm_agent:run")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples"), env["PYTHONPATH"]])
    env.update({"LLM_BASE_URL": "http://127.0.0.1:1", "LLM_API_KEY": KEY})
    del env[missing]
    with worker_processes(tmp_path) as start:
        worker = start(env)
        assert await worker.exit_code(20) == 3
        lines = worker.logs().strip().splitlines()
    assert lines == [f"agentpool-worker: startup hook of 'llm_agent:run' failed: "
                     f"RuntimeError: {missing} is not set"]


def test_the_worker_docs_show_this_example_verbatim() -> None:
    code = (ROOT / "examples" / "llm_agent.py").read_text()
    docs = (ROOT / "docs" / "worker.md").read_text()
    assert f"```python\n{code}```" in docs


async def test_the_planner_fans_questions_out_and_summarises_their_answers(
    fake_llm: FakeLLM, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "llm_agent:research", concurrency=4)):
        plan = await queue.submit({"questions": ["What is 2 + 3?", "And 3 + 2?"]})
        planned = await queue.wait(plan, timeout=20)
        summary = await queue.wait(planned.result["summary"], timeout=20)
    assert planned.state == "succeeded" and len(planned.result["steps"]) == 2
    assert summary.after == tuple(planned.result["steps"])
    assert (summary.state, summary.result["answer"]) == ("succeeded", "The answer is 5")
    asked = [m[0]["content"] for m in fake_llm.requests if len(m) == 1]
    assert sorted(asked) == sorted([
        "What is 2 + 3?", "And 3 + 2?",
        "Summarise these answers:\n- The answer is 5\n- The answer is 5"])


async def test_the_pipeline_planner_hands_the_questions_to_the_researchers_pool(
    fake_llm: FakeLLM, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """examples/pipeline.yaml in two workers: the planners' pool submits to the researchers'
    queue (submitsTo), where the runs and the summary after them go."""
    research = f"{queue_name}-research"
    plans, runs = TaskQueue(redis, queue_name), TaskQueue(redis, research)
    async with (running(settings(redis_url, queue_name, "llm_agent:research",
                                 submits_to=research)),
                running(settings(redis_url, research, "llm_agent:research", concurrency=4))):
        plan = await plans.submit({"questions": ["What is 2 + 3?", "And 3 + 2?"],
                                   "to": research})
        planned = await plans.wait(plan, timeout=20)
        summary = await runs.wait(planned.result["summary"], timeout=20)
    assert [i.payload for i in await runs.get_many(planned.result["steps"])] == [
        {"prompt": "What is 2 + 3?"}, {"prompt": "And 3 + 2?"}]
    assert (summary.state, summary.result["answer"]) == ("succeeded", "The answer is 5")
    assert (await plans.figures()).stats["submitted"] == 1, "nothing else on the plan queue"


def test_the_pipeline_example_declares_what_the_planner_needs() -> None:
    planners, researchers = yaml.safe_load_all((ROOT / "examples" / "pipeline.yaml").read_text())
    assert planners["spec"]["worker"]["submitsTo"] == [researchers["spec"]["queue"]]
    assert planners["spec"]["worker"]["handler"] == "llm_agent:research"
