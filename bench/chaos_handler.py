"""Task handler of the chaos soak (bench/chaos.py): the simulated agent, with every run on record.

Each run adds ``task|worker|attempt`` to a Redis set when it starts (``RUNS_KEY``) and when its
simulated work is over (``FINISHED_KEY``), on the same server as the queue. A set makes the
record idempotent: a write retried across a Redis restart is still one run. The result names
its writer (worker instance and attempt), which the soak compares with the task's last
claimant to catch a zombie's completion.

A task whose payload says ``"freeze": true`` stops its own worker process (SIGSTOP) on its
first attempt (once: not again after a requeue), right after its work is done and before the
worker can report it: the worst moment to become a zombie. The soak notices the stopped
process and resumes it (SIGCONT) once its leases have expired and its tasks have been claimed
again, so the completion the worker then sends is exactly the one the fencing token must
refuse.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentpool_worker.builtin import simulated_agent
from agentpool_worker.handlers import TaskContext

RUNS_KEY = "chaos:runs"
FINISHED_KEY = "chaos:finished"
SHORT_KEY = "chaos:short"
"""Set of summary runs (``--plans``) that found fewer results than their plan has steps."""
EARLY_KEY = "chaos:early"
"""Set of runs of a task (``--chains``) that started without the result of the task it runs
after: a release before that task succeeded."""
FROZEN_KEY = "chaos:frozen"
"""Set of tasks that stopped their worker: a task freezes once, on its first attempt, and not
again when requeued from the dead letters (its attempts start again from 0)."""
RECORD_PATIENCE = 60.0
"""Seconds a record keeps retrying while Redis is away (a restart takes about one)."""

_client: aioredis.Redis | None = None


def run_key(task_id: str, worker: str, attempt: int) -> str:
    return f"{task_id}|{worker}|{attempt}"


async def _record(key: str, member: str) -> None:
    await _patiently(lambda client: client.sadd(key, member))


async def run(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    member = run_key(ctx.task_id, ctx.worker_id, ctx.attempt)
    await _record(RUNS_KEY, member)
    if isinstance(payload, dict) and payload.get("plan"):
        return await _plan(payload, ctx)
    if (isinstance(payload, dict) and payload.get("summary")
            and len(await ctx.results_before()) != payload["summary"]):
        await _record(SHORT_KEY, member)
    if isinstance(payload, dict) and payload.get("after"):
        before = await ctx.results_before()
        if not isinstance(before.get(payload["after"]), dict):
            await _record(EARLY_KEY, member)
    result = await simulated_agent(payload, ctx)
    await _record(FINISHED_KEY, member)
    if (isinstance(payload, dict) and payload.get("freeze") and ctx.attempt == 1
            and await _patiently(lambda client: client.sadd(FROZEN_KEY, ctx.task_id))):
        os.kill(os.getpid(), signal.SIGSTOP)
    return {**result, "worker": ctx.worker_id}


async def _plan(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """A planner (``--plans K``): K steps, each submitted after a pause (so that a kill can
    land between two submits), then a summary after them all. Another attempt submits the
    same and must get the same tasks back: the soak counts every task the queue ever had."""
    steps, pause = int(payload["plan"]), float(payload["mean_seconds"]) / int(payload["plan"])
    ids = []
    for step in range(steps):
        await asyncio.sleep(pause)
        ids.append(await ctx.submit({"mean_seconds": payload["mean_seconds"],
                                     "seed": payload["seed"] + step + 1}))
    summary = await ctx.submit({"mean_seconds": payload["mean_seconds"], "seed": payload["seed"],
                                "summary": steps}, after=ids)
    return {"steps": ids, "summary": summary, "attempt": ctx.attempt, "worker": ctx.worker_id}


# -- the checkpointing variant (python -m bench.chaos --checkpoint-every K) -------------------

STEPS_KEY = "chaos:steps"
"""Set of "<run>|<step>" per step executed (a set: a write retried across a Redis restart
still counts once)."""
SAVED_KEY = "chaos:saved"
"""Set of "<run>|<time just before the checkpoint was sent>" per accepted checkpoint."""
RESUMED_KEY = "chaos:resumed"
"""Hash: run -> "<start time>|<run whose checkpoint it resumed from, or ''>"."""


def step_value(acc: int, step: int) -> int:
    return (acc * 1_000_003 + step) % (1 << 61)


def expected_total(seed: int, steps: int) -> int:
    """What an uninterrupted run returns."""
    acc = seed
    for step in range(steps):
        acc = step_value(acc, step)
    return acc


async def _patiently(call: Any) -> Any:
    global _client
    if _client is None:
        # the soak's own record, outside the queue: with ACL users it needs its own URL
        url = os.environ.get("CHAOS_RECORD_URL") or os.environ["AGENTPOOL_REDIS_URL"]
        _client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORD_PATIENCE
    delay = 0.05
    while True:
        try:
            return await call(_client)
        except (RedisError, OSError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def stepped(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """`steps` steps of `step_seconds`, a checkpoint every `every` steps, resuming from the
    last one. Every step executed is counted (STEPS_KEY), every accepted checkpoint recorded
    (SAVED_KEY), and each run notes its start order and the run it resumed from.

    Times are this host's monotonic clock, shared by every process of the soak: a run's start
    is taken after its claim, a checkpoint's time before it is sent, so an accepted checkpoint
    sent after the run of a later claim of the same task started reached Redis after that
    claim: a sound fence must have refused it. A task with ``"freeze": true`` stops its worker
    (SIGSTOP) on its first attempt right before its second checkpoint: the soak resumes it
    once the task has been claimed again, so that checkpoint is a zombie's."""
    member = run_key(ctx.task_id, ctx.worker_id, ctx.attempt)
    await _record(RUNS_KEY, member)
    began = time.monotonic()
    state = ctx.checkpoint_state or {"step": 0, "acc": int(payload["seed"]), "by": ""}
    await _patiently(lambda c: c.hset(RESUMED_KEY, member, f"{began}|{state['by']}"))
    steps, every = int(payload["steps"]), int(payload["every"])
    for step in range(int(state["step"]), steps):
        await asyncio.sleep(float(payload["step_seconds"]))
        state = {"step": step + 1, "acc": step_value(int(state["acc"]), step), "by": member}
        await _record(STEPS_KEY, f"{member}|{step}")
        if state["step"] % every == 0 and state["step"] < steps:
            if payload.get("freeze") and ctx.attempt == 1 and state["step"] == 2 * every:
                os.kill(os.getpid(), signal.SIGSTOP)
            sent = time.monotonic()
            await ctx.checkpoint(state)
            # recorded even if the run is being cancelled (a zombie told by its heartbeat)
            await asyncio.shield(_record(SAVED_KEY, f"{member}|{sent}"))
    await _record(FINISHED_KEY, member)
    return {"acc": state["acc"], "attempt": ctx.attempt, "worker": ctx.worker_id}
