"""A handler module with every hook, for the worker hook tests (in-process and subprocess)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from agentpool.errors import PermanentError
from agentpool_worker.handlers import TaskContext, TaskOutcome, WorkerContext

CALLS: list[str] = []
OUTCOMES: dict[str, list[TaskOutcome]] = {}
READY: dict[str, Any] = {"answer": True, "checks": 0}
AFTER_TASK: dict[str, Any] = {"delay": 0.0, "finished": []}


def startup(worker_ctx: WorkerContext) -> None:
    if os.environ.get("HOOKS_STARTUP_FAILS") == "lines":  # as pydantic's errors read
        raise ValueError("2 validation errors for Settings\napi_key\n  Field required")
    if os.environ.get("HOOKS_STARTUP_FAILS"):
        raise RuntimeError("OPENAI_API_KEY is not set")
    CALLS.append("startup")
    worker_ctx.state["client"] = f"client-of-{worker_ctx.worker_id}"


async def shutdown(worker_ctx: WorkerContext) -> None:
    CALLS.append("shutdown")
    AFTER_TASK["at_shutdown"] = list(AFTER_TASK["finished"])
    worker_ctx.state.pop("client", None)


async def run(payload: dict[str, Any], ctx: TaskContext) -> Any:
    mode = payload.get("mode", "ok")
    if mode == "fail":
        raise PermanentError("bad prompt")
    if mode == "error":
        raise RuntimeError("the LLM API answered 500")
    if mode == "sleep":
        await asyncio.sleep(float(payload["seconds"]))
    return {"client": ctx.state["client"]}


FOLLOW_UPS: dict[str, str] = {}
"""Per task the test named in AFTER_TASK["follow_up_for"]: the follow-up after_task submitted
for it, or the name of the error that refused it."""


def after_task(ctx: TaskContext, outcome: TaskOutcome) -> None:
    OUTCOMES.setdefault(ctx.task_id, []).append(outcome)
    if ctx.task_id in AFTER_TASK.get("follow_up_for", ()):
        try:
            FOLLOW_UPS[ctx.task_id] = ctx.submit_sync({"follow_up_of": ctx.task_id})
        except Exception as exc:
            FOLLOW_UPS[ctx.task_id] = type(exc).__name__
    time.sleep(AFTER_TASK["delay"])
    AFTER_TASK["finished"].append(ctx.task_id)
    raise RuntimeError("billing service down")


async def ready() -> Any:
    READY["checks"] += 1
    answer = READY["answer"]
    if isinstance(answer, Exception):
        raise answer
    return answer
