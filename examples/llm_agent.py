"""An agent handler: streams an OpenAI-style chat model's text as task events, runs the tools
it asks for, checkpoints after each tool call, and resumes from there after a lost run; and a
planner that fans questions out to agent runs and a summary of their answers.

    AGENTPOOL_HANDLER=llm_agent:run  LLM_BASE_URL=https://api.example.com  LLM_API_KEY=...
    AGENTPOOL_HANDLER=llm_agent:research  (the same, plus {"questions": [...]} payloads)
"""

from __future__ import annotations

import json
import math
import os
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog

from agentpool.errors import PermanentError, Retry
from agentpool_worker.handlers import TaskContext, TaskOutcome, WorkerContext

MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
MAX_TURNS = 8
CHUNK_CHARS, CHUNK_SECONDS = 200, 0.5  # a task's stream keeps ~10,000 events: not one a token
TOOLS: dict[str, Any] = {
    "add": lambda a, b: a + b,
    "word_count": lambda text: len(text.split()),
}
TOOL_SPECS = [
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}},
    {"type": "function", "function": {"name": "word_count", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}}}},
]
log = structlog.get_logger("llm_agent")
_session: aiohttp.ClientSession | None = None


async def startup(worker_ctx: WorkerContext) -> None:
    """One HTTP session per worker process, shared by every task."""
    global _session
    base_url = os.environ.get("LLM_BASE_URL")
    if not base_url:
        raise RuntimeError("LLM_BASE_URL is not set")
    key = os.environ.get("LLM_API_KEY")
    if not key:
        raise RuntimeError("LLM_API_KEY is not set")
    _session = aiohttp.ClientSession(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=aiohttp.ClientTimeout(total=300, sock_read=60),
    )
    worker_ctx.state["llm"] = _session


async def shutdown(worker_ctx: WorkerContext) -> None:
    await worker_ctx.state["llm"].close()


async def ready() -> str | None:
    """Not ready (no claims, /readyz 503) while the API cannot be reached or refuses the key:
    a revoked key takes the pod out of service rather than failing every task."""
    assert _session is not None
    try:
        async with _session.get("/v1/models", timeout=aiohttp.ClientTimeout(total=3)) as resp:
            if resp.status in (401, 403):
                return f"LLM API refuses the key: {resp.status}"
            return None if resp.status < 500 else f"LLM API answers {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"LLM API unreachable: {type(exc).__name__}"


async def after_task(ctx: TaskContext, outcome: TaskOutcome) -> None:
    log.info("agent run ended", task=ctx.task_id, attempt=ctx.attempt, status=outcome.status,
             seconds=round(outcome.duration_seconds, 3))


async def run(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
        raise PermanentError("payload needs a 'prompt' string")
    state = ctx.checkpoint_state or {
        "messages": [{"role": "user", "content": payload["prompt"]}], "tool_calls": 0,
    }
    if ctx.checkpoint_state:
        await ctx.emit("resumed", {"tool_calls": state["tool_calls"]})
    messages = state["messages"]
    for turn in range(MAX_TURNS):
        await ctx.progress(turn / MAX_TURNS, f"turn {turn + 1}")
        reply = await chat(ctx.state["llm"], messages, ctx)
        messages.append(reply)
        if not reply.get("tool_calls"):
            await ctx.progress(1.0, "answered")
            return {"answer": reply["content"], "tool_calls": state["tool_calls"]}
        for call in reply["tool_calls"]:
            result = run_tool(call["function"]["name"], call["function"]["arguments"])
            await ctx.emit("tool", {"name": call["function"]["name"], "result": result})
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": json.dumps(result)})
            state["tool_calls"] += 1
        await ctx.checkpoint(state)
    raise PermanentError(f"no answer after {MAX_TURNS} turns")


async def research(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """{"questions": [...]}: one agent run per question, and one that summarises their answers
    once they have all succeeded, on this pool's queue or, with "to", on another pool's (one
    its spec.worker.submitsTo lists: examples/pipeline.yaml). The planner returns at once
    instead of holding its slot; a retried planner submits the same runs and gets the same
    tasks back (ctx.submit_many, ctx.submit)."""
    if not isinstance(payload, dict) or not ("questions" in payload or "summarise" in payload):
        return await run(payload, ctx)
    if "summarise" in payload:
        answers = [r["answer"] for r in (await ctx.results_before()).values()]
        prompt = payload["summarise"] + "\n" + "\n".join(f"- {a}" for a in answers)
        return await run({"prompt": prompt}, ctx)
    to = payload.get("to")
    steps = await ctx.submit_many([{"prompt": str(q)} for q in payload["questions"]], queue=to)
    summary = await ctx.submit({"summarise": "Summarise these answers:"}, after=steps, queue=to)
    return {"steps": steps, "summary": summary}


def run_tool(name: str, arguments: str) -> Any:
    tool = TOOLS.get(name)
    if tool is None:
        return {"error": f"no tool {name!r}"}
    try:
        return tool(**json.loads(arguments or "{}"))
    except (TypeError, ValueError) as exc:
        return {"error": str(exc)}


async def chat(session: aiohttp.ClientSession, messages: list[dict[str, Any]],
               ctx: TaskContext) -> dict[str, Any]:
    """One streamed completion: its text goes out as events; returns the assistant message.
    Retried by the worker from the last checkpoint after a 5xx, a 429 (when the API says: with
    a limit in spec.rateLimits, ctx.throttled pauses every worker instead) or a refused key
    (while ready() takes the pod out of service); dead-lettered after another 4xx."""
    body = {"model": MODEL, "messages": messages, "tools": TOOL_SPECS, "stream": True}
    async with session.post("/v1/chat/completions", json=body) as resp:
        if resp.status == 429:
            wait = retry_after(resp.headers.get("Retry-After"))
            await ctx.emit("rate_limited", {"retry_after": wait})
            raise Retry(wait, "LLM API rate limit")
        if resp.status in (401, 403):
            raise Retry(60, f"LLM API refuses the key: {resp.status}")
        if 400 <= resp.status < 500:
            raise PermanentError(f"LLM API refused the request: {resp.status} "
                                 f"{(await resp.text())[:200]}")
        resp.raise_for_status()
        return await read_stream(resp, ctx)


def retry_after(header: str | None, default: float = 10.0) -> float:
    """An HTTP Retry-After in seconds (0 to a day): a number, or a date (RFC 9110)."""
    if not header:
        return default
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 0.0), 86400.0) if math.isfinite(seconds) else default


async def read_stream(resp: aiohttp.ClientResponse, ctx: TaskContext) -> dict[str, Any]:
    """The streamed reply; its text goes out as `token` events of CHUNK_CHARS characters, or
    of what came within CHUNK_SECONDS."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    unsent, sent_at = "", time.monotonic()
    async for raw in resp.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            break
        delta = json.loads(data)["choices"][0]["delta"]
        if delta.get("content"):
            content.append(delta["content"])
            unsent += delta["content"]
            if len(unsent) >= CHUNK_CHARS or time.monotonic() - sent_at >= CHUNK_SECONDS:
                await ctx.emit("token", {"text": unsent})
                unsent, sent_at = "", time.monotonic()
        for part in delta.get("tool_calls") or []:
            call = calls.setdefault(part["index"], {
                "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = part.get("id") or call["id"]
            function = part.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
    if unsent:
        await ctx.emit("token", {"text": unsent})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message
