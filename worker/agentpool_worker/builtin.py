"""Built-in handlers for demos, end-to-end tests and benchmarks."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from agentpool.errors import PermanentError
from agentpool_worker.handlers import TaskContext

LATENCY_SIGMA = 0.6
"""Spread of the simulated latency: LLM calls have a long right tail."""
MAX_STEPS = 1000
MAX_MEAN_SECONDS = 3600.0
"""An hour: a simulated run is capped at ten times its mean."""


class SimulatedFailure(Exception):
    """The simulated agent failed this attempt (retryable)."""


async def noop(payload: Any) -> None:
    return None


async def echo(payload: Any) -> Any:
    return payload


async def simulated_agent(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Sleep an LLM-like latency, then maybe fail.

    Payload (all optional): ``mean_seconds`` (default 2.0), ``fail_rate`` (0..1, default 0),
    ``seed`` (makes every attempt's latency and outcome reproducible), ``steps`` (default 0),
    ``hold`` (a rate limit of the pool with ``maxConcurrent``: the work runs in one of its
    slots, and the result says when, ``held``: [start, end] in epoch seconds, and whether
    the serving declaration capped it, ``capped``) and ``then``
    (``{"queue": ..., "payload": ...}``: once the work is done, submit that task, once however
    often the run is retried, to a queue of ``spec.worker.submitsTo``; ``submitted`` is its
    id). The latency is log-normal with the given mean, capped at ten times the mean. With
    ``steps``, the work is that many equal steps, each followed by a ``progress`` event and a
    checkpoint (the last one excepted), and a run that was lost resumes after the last
    checkpointed step; the result then says where it resumed (``resumed_from_step``).
    """
    options = payload if payload is not None else {}
    if not isinstance(options, dict):
        raise PermanentError("simulated_agent needs a JSON object payload (or null)")
    try:
        mean = float(options.get("mean_seconds", 2.0))
        fail_rate = float(options.get("fail_rate", 0.0))
        steps = int(options.get("steps", 0))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"bad simulated_agent option: {exc}") from None
    if not 0 <= mean <= MAX_MEAN_SECONDS or not 0 <= fail_rate <= 1 \
            or not 0 <= steps <= MAX_STEPS:
        raise PermanentError(f"mean_seconds must be between 0 and {MAX_MEAN_SECONDS:g}, "
                             f"fail_rate between 0 and 1 and steps between 0 and {MAX_STEPS}")
    seed = options.get("seed")
    rng = random.Random(f"{seed}:{ctx.attempt}") if seed is not None else random.Random()
    latency = min(
        mean * 10, mean * math.exp(rng.gauss(0, LATENCY_SIGMA) - LATENCY_SIGMA**2 / 2)
    )
    result: dict[str, Any] = {"latency_seconds": round(latency, 4), "attempt": ctx.attempt}
    hold, then = options.get("hold"), options.get("then")
    if hold is not None and not isinstance(hold, str):
        raise PermanentError("hold names a rate limit of the pool")
    if then is not None and not (isinstance(then, dict) and isinstance(then.get("queue"), str)
                                 and "payload" in then):
        raise PermanentError('then must be {"queue": ..., "payload": ...}')
    if hold is None:
        await _work(ctx, latency, steps, result)
    else:
        async with ctx.hold(hold) as slot:
            started = time.time()
            await _work(ctx, latency, steps, result)
            result["held"] = [started, time.time()]
            result["capped"] = slot.capped
    if rng.random() < fail_rate:
        raise SimulatedFailure(f"simulated failure after {latency:.3f}s")
    if then is not None:
        result["submitted"] = await ctx.submit(then["payload"], queue=then["queue"])
    return result


async def _work(ctx: TaskContext, latency: float, steps: int, result: dict[str, Any]) -> None:
    """The simulated work: one sleep, or `steps` steps, each reported and checkpointed."""
    if steps:
        saved = ctx.checkpoint_state
        first = int(saved["step"]) if isinstance(saved, dict) and "step" in saved else 0
        for step in range(min(first, steps), steps):
            await asyncio.sleep(latency / steps)
            await ctx.progress((step + 1) / steps, f"step {step + 1} of {steps}")
            if step + 1 < steps:
                await ctx.checkpoint({"step": step + 1})
        result["resumed_from_step"] = first
    else:
        await asyncio.sleep(latency)
