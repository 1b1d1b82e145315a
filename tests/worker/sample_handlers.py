"""Handlers the worker tests run (in-process, and in worker subprocesses via PYTHONPATH)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import gc
import os
import threading
import time
from typing import Any

import redis.asyncio as aioredis

from agentpool.errors import LeaseLost, PermanentError, Retry
from agentpool_worker.handlers import TaskContext, WaitCancelled


async def pid(payload: Any) -> dict[str, int]:
    return {"pid": os.getpid()}


async def collector(payload: Any) -> dict[str, int]:
    """What the cyclic garbage collector watches in this process, and what it was told to
    leave alone."""
    return {"frozen": gc.get_freeze_count(), "watched": len(gc.get_objects())}


async def recorded(payload: Any) -> dict[str, int]:
    """Notes the start of every run, by the pid running it, in the list payload["key"]."""
    client = aioredis.Redis.from_url(payload["url"])
    try:
        await client.rpush(payload["key"], os.getpid())
    finally:
        await client.aclose()
    return {"pid": os.getpid()}


async def sleep(payload: Any) -> dict[str, int]:
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return {"pid": os.getpid()}


async def sleeps_within_its_timeout(payload: Any, ctx: TaskContext) -> float:
    """Sleeps `seconds`; returns the run's timeout as the handler saw it."""
    await asyncio.sleep(payload["seconds"])
    return ctx.timeout_seconds


async def retries_later(payload: Any, ctx: TaskContext) -> dict[str, int]:
    """Asks for another run in `delay` seconds on its first attempt; succeeds on the next."""
    if ctx.attempt == 1:
        raise Retry(payload["delay"], payload.get("reason", ""))
    return {"attempt": ctx.attempt}


async def retries_from_a_task_group(payload: Any, ctx: TaskContext) -> dict[str, int]:
    """On its first attempt, two children of a TaskGroup each ask to run again later."""
    async def ask(delay: float, reason: str) -> None:
        raise Retry(delay, reason)

    if ctx.attempt == 1:
        async with asyncio.TaskGroup() as group:
            group.create_task(ask(0.1, "shard a not ready"))
            group.create_task(ask(0.5, "shard b not ready"))
    return {"attempt": ctx.attempt}


async def retries_when_its_timeout_cancels_it(payload: Any) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        raise Retry(50, "made of the timeout's cancel") from None


async def returns_when_its_timeout_cancels_it(payload: Any) -> dict[str, bool]:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return {"late": True}
    return {"late": False}


def sync_retries_later(payload: Any, ctx: TaskContext) -> dict[str, int]:
    if ctx.attempt == 1:
        raise Retry(payload["delay"], payload.get("reason", ""))
    return {"attempt": ctx.attempt}


async def first_attempt_sleeps(payload: Any, ctx: TaskContext) -> dict[str, int]:
    """Long on the first attempt only, so a task re-run after a crash finishes quickly."""
    if ctx.attempt == 1:
        await asyncio.sleep(float(payload["seconds"]))
    return {"pid": os.getpid(), "attempt": ctx.attempt}


class Gauge:
    """Counts simultaneous runs (shared by async and thread handlers)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.threads: set[str] = set()

    def enter(self) -> None:
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
            self.threads.add(threading.current_thread().name)

    def leave(self) -> None:
        with self.lock:
            self.current -= 1


GAUGE = Gauge()


TENANT_GAUGES: dict[str, Gauge] = {}
"""Simultaneous runs per tenant, as `tenant_counted` sees them (its payload's "of")."""


async def tenant_counted(payload: Any) -> None:
    gauge = TENANT_GAUGES.setdefault(payload["of"], Gauge())
    gauge.enter()
    try:
        await asyncio.sleep(float(payload["seconds"]))
    finally:
        gauge.leave()


async def counted(payload: Any) -> None:
    GAUGE.enter()
    try:
        await asyncio.sleep(float(payload["seconds"]))
    finally:
        GAUGE.leave()


def sync_counted(payload: Any, ctx: TaskContext) -> str:
    GAUGE.enter()
    try:
        time.sleep(float(payload["seconds"]))
    finally:
        GAUGE.leave()
    return threading.current_thread().name


async def block_loop(payload: Any) -> None:
    """A badly written handler: blocks the event loop."""
    time.sleep(float(payload["seconds"]))  # noqa: ASYNC251 - on purpose


def crash(payload: Any) -> None:
    """A poison task: takes its worker process down."""
    os._exit(17)


async def zombie(payload: Any) -> dict[str, int]:
    await asyncio.sleep(float(payload["seconds"]))
    if payload.get("fail"):
        raise RuntimeError("zombie failure")
    return {"pid": os.getpid()}


async def refuse(payload: Any) -> None:
    raise PermanentError("cannot ever work")


async def fails(payload: Any) -> None:
    """A failure worth retrying, as long as attempts are left."""
    raise RuntimeError("planned failure")


async def streamer(payload: Any, ctx: TaskContext) -> dict[str, int]:
    """Streams `tokens` token events and progress; fails while `ctx.attempt < fail_until`."""
    count = int(payload["tokens"])
    for i in range(count):
        await ctx.emit("token", {"i": i})
        await ctx.progress((i + 1) / count, f"token {i + 1} of {count}")
        if payload.get("pause"):
            await asyncio.sleep(float(payload["pause"]))
    if ctx.attempt < int(payload.get("fail_until", 0)):
        raise RuntimeError("flaky model")
    return {"tokens": count, "attempt": ctx.attempt}


def sync_streamer(payload: Any, ctx: TaskContext) -> dict[str, int]:
    count = int(payload["tokens"])
    for i in range(count):
        ctx.emit_sync("token", {"i": i})
    ctx.progress_sync(1.0, "all tokens")
    return {"tokens": count}


async def stepper(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """`steps` steps of `pause` seconds, a checkpoint every `every`; resumes from the last one.
    The result sums the step numbers, so a resumed run must equal an uninterrupted one."""
    state = ctx.checkpoint_state or {"step": 0, "total": 0}
    resumed_from = state["step"]
    every = int(payload.get("every", 1))
    for step in range(state["step"], int(payload["steps"])):
        await asyncio.sleep(float(payload.get("pause", 0)))
        state = {"step": step + 1, "total": state["total"] + step, "by": ctx.attempt}
        await ctx.progress(state["step"] / int(payload["steps"]))
        if state["step"] % every == 0:
            await ctx.checkpoint(state)
    return {"total": state["total"], "attempt": ctx.attempt, "resumed_from": resumed_from,
            "pid": os.getpid()}


def sync_stepper(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Checkpoints every step from its thread; the first attempt fails after `fail_at` steps."""
    state = ctx.checkpoint_state or {"step": 0}
    resumed_from = state["step"]
    for step in range(state["step"], int(payload["steps"])):
        if ctx.attempt == 1 and step == int(payload["fail_at"]):
            raise RuntimeError("tool crashed")
        ctx.checkpoint_sync({"step": step + 1})
        ctx.progress_sync((step + 1) / int(payload["steps"]))
    return {"resumed_from": resumed_from, "attempt": ctx.attempt}


async def deep_result(payload: Any) -> list[Any]:
    """A result nested deeper than Python's JSON encoder recurses."""
    nested: list[Any] = []
    for _ in range(int(payload.get("depth", 0))):
        nested = [nested]
    return nested


LONE_SURROGATE = "half a pair: \ud83d"
"""Text a Python string holds and UTF-8 cannot encode (a JSON "\\ud83d" decodes to it)."""


async def lone_surrogates(payload: Any, ctx: TaskContext) -> str:
    """Lone surrogates in an event, in a checkpoint and in the result or the error."""
    await ctx.emit("note", {"text": LONE_SURROGATE})
    await ctx.checkpoint({"text": LONE_SURROGATE})
    if payload.get("fail"):
        raise ValueError(LONE_SURROGATE)
    return LONE_SURROGATE


async def awaits_a_cancelled_call(payload: Any) -> None:
    """Awaits a future that something other than the worker cancels (a client closed under
    it): the CancelledError is the handler's own."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, future.cancel)
    await future


def calls_sys_exit(payload: Any) -> None:
    """A sync handler wrapping a command-line tool that ends with sys.exit()."""
    raise SystemExit(int(payload.get("code", 0)))


async def not_a_number(payload: Any) -> dict[str, float]:
    return {"score": float("nan")}


SLOW_TO_STOP: list[asyncio.Task[Any]] = []
"""Runs of slow_to_stop, for the test to end them."""


async def slow_to_stop(payload: Any) -> None:
    """Cleans up for payload["cleanup"] seconds when told to stop (an HTTP client's close, a
    "save partial work" call that hangs)."""
    task = asyncio.current_task()
    assert task is not None
    SLOW_TO_STOP.append(task)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(float(payload["cleanup"]))
        raise


STUCK = threading.Event()
"""Set to let the stuck runs return."""


def stuck(payload: Any) -> str:
    """A blocking call without a timeout: never looks at ctx.cancelled."""
    if payload.get("stuck"):
        STUCK.wait(60)
    return "returned"


async def fan_in(payload: Any, ctx: TaskContext) -> Any:
    """A part returns its word; a summary joins the results of the tasks it runs after."""
    if "word" in payload:
        return payload["word"]
    return " ".join((await ctx.results_before()).values())


def sync_fan_in(payload: Any, ctx: TaskContext) -> Any:
    if "word" in payload:
        return payload["word"].upper()
    return "+".join(ctx.results_before_sync().values())


async def planner(payload: Any, ctx: TaskContext) -> Any:
    """Submits a part per word and a summary after them (fan_in's payloads); its first
    attempt fails once it has submitted them all."""
    parts = [await ctx.submit({"word": w}) for w in payload["words"]]
    summary = await ctx.submit({"summarise": True}, after=parts)
    if ctx.attempt == 1:
        raise RuntimeError("planner crashed after submitting")
    return {"parts": parts, "summary": summary}


def sync_planner(payload: Any, ctx: TaskContext) -> Any:
    parts = [ctx.submit_sync({"word": w}, key=w) for w in payload["words"]]
    return {"parts": parts, "summary": ctx.submit_sync({"summarise": True}, after=parts)}


async def batch_planner(payload: Any, ctx: TaskContext) -> Any:
    """planner with its parts submitted in one call (ctx.submit_many)."""
    parts = await ctx.submit_many([{"word": w} for w in payload["words"]])
    summary = await ctx.submit({"summarise": True}, after=parts)
    if ctx.attempt == 1:
        raise RuntimeError("planner crashed after submitting")
    return {"parts": parts, "summary": summary}


def sync_batch_planner(payload: Any, ctx: TaskContext) -> Any:
    parts = ctx.submit_many_sync([{"word": w} for w in payload["words"]],
                                 keys=payload["words"])
    summary = ctx.submit_sync({"summarise": True}, after=parts)
    if ctx.attempt == 1:
        raise RuntimeError("planner crashed after submitting")
    return {"parts": parts, "summary": summary}


async def fan_out_in(payload: Any, ctx: TaskContext) -> Any:
    """The planner for a plan, fan_in for its parts and summary."""
    if "words" in payload:
        return await planner(payload, ctx)
    return await fan_in(payload, ctx)


def sync_fan_out_in(payload: Any, ctx: TaskContext) -> Any:
    if "words" in payload:
        return sync_planner(payload, ctx)
    return sync_fan_in(payload, ctx)


async def batch_fan_out_in(payload: Any, ctx: TaskContext) -> Any:
    if "words" in payload:
        return await batch_planner(payload, ctx)
    return await fan_in(payload, ctx)


def sync_batch_fan_out_in(payload: Any, ctx: TaskContext) -> Any:
    if "words" in payload:
        return sync_batch_planner(payload, ctx)
    return sync_fan_in(payload, ctx)


GATES: dict[str, asyncio.Event] = {}
"""In-process tests open a run's gate by its task id (gated_submit)."""


async def gated_submit(payload: Any, ctx: TaskContext) -> Any:
    """Waits for its gate, then submits a step and returns its id."""
    await GATES.setdefault(ctx.task_id, asyncio.Event()).wait()
    return await ctx.submit({"step": payload})


async def delegate(payload: Any, ctx: TaskContext) -> Any:
    """Hands its steps to another queue (ctx.submit_many with `queue`) and a review after
    them; its first attempt fails once it has submitted them all."""
    steps = await ctx.submit_many(payload["steps"], queue=payload["to"])
    review = await ctx.submit({"review": len(steps)}, queue=payload["to"], after=steps)
    if ctx.attempt == 1:
        raise RuntimeError("delegate crashed after submitting")
    return {"steps": steps, "review": review}


async def delegate_and_gather(payload: Any, ctx: TaskContext) -> Any:
    """Hands a word per step to another queue (fan_in's payloads) and waits for their results
    (ctx.wait_many), holding its slot."""
    steps = await ctx.submit_many([{"word": w} for w in payload["words"]], queue=payload["to"])
    done = await ctx.wait_many(steps, queue=payload["to"], timeout=payload.get("timeout"))
    return [info.result for info in done]


WAITS_CANCELLED: set[str] = set()
"""The runs (task ids) whose ctx.wait_many_sync ended with WaitCancelled."""


def sync_delegate_and_gather(payload: Any, ctx: TaskContext) -> Any:
    steps = ctx.submit_many_sync([{"word": w} for w in payload["words"]], queue=payload["to"])
    try:
        done = ctx.wait_many_sync(steps, queue=payload["to"], timeout=payload.get("timeout"))
    except WaitCancelled:
        WAITS_CANCELLED.add(ctx.task_id)
        raise
    return [info.result for info in done]


class UnreadableError(Exception):
    """An error whose message reads an argument it was not given, as API errors often do."""

    def __str__(self) -> str:
        return str(self.args[1])


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Interrupted(BaseException):
    """A BaseException of a library's own, outside Exception."""


async def misbehaves(payload: Any) -> Any:
    """Fails in the way the payload names, or returns a value no store can take."""
    kind = payload.get("kind")
    if kind == "unreadable":
        raise UnreadableError("rate limited")
    if kind == "unrepresentable":
        return Unrepresentable()
    if kind == "datetime":
        return {"answer": 42, "when": datetime.datetime(2024, 1, 2, 3, 4, 5)}
    if kind == "base":
        raise Interrupted
    if kind == "keyboard":
        raise KeyboardInterrupt
    return {"ok": kind}


async def _real_work(payload: Any) -> dict[str, Any]:
    return {"awaited": payload}


def wrapped_coroutine(payload: Any) -> Any:
    """A plain wrapper around an async function (a decorator without functools.wraps)."""
    return _real_work(payload)


async def async_generator(payload: Any) -> Any:
    yield payload


async def ignores_cancellation(payload: Any) -> None:
    """Swallows every cancellation and sleeps on, as careless agent code does."""
    deadline = asyncio.get_running_loop().time() + 120
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(deadline - asyncio.get_running_loop().time())


async def summariser(payload: Any, ctx: TaskContext) -> dict[str, str]:
    """Answers README's producer example: one event per word of the prompt, then a summary."""
    words = str(payload["prompt"]).split()
    for word in words:
        await ctx.emit("word", {"text": word})
    return {"summary": words[0]}


LATE_CALLS: dict[str, dict[str, str]] = {}
"""What each run's calls after its end or stop came to, by task id: "ok" or the error."""
LATE_CALLS_MADE = threading.Event()


def _late_call(task_id: str, name: str, call: Any) -> None:
    try:
        call()
    except LeaseLost as exc:
        LATE_CALLS.setdefault(task_id, {})[name] = f"LeaseLost: {exc}"
    else:
        LATE_CALLS.setdefault(task_id, {})[name] = "ok"


def plans_on_after_its_cancel(payload: Any, ctx: TaskContext) -> Any:
    """A sync planner that ignores ctx.cancelled: it submits a step, and once cancelled tries
    to submit more (one by one and in a batch) and read its inputs."""
    if "step" in payload:
        return payload["step"]
    ctx.submit_sync({"step": 0}, delay=3600)
    ctx.cancelled.wait(30)
    _late_call(ctx.task_id, "submit", lambda: ctx.submit_sync({"step": 1}, delay=3600))
    _late_call(ctx.task_id, "submit_many",
               lambda: ctx.submit_many_sync([{"step": 2}, {"step": 3}], delay=3600))
    LATE_CALLS_MADE.set()
    return {"planned": True}


BACKGROUND_GATES: dict[str, asyncio.Event] = {}
"""In-process tests open the gate of a run's background task by its task id."""


async def leaves_a_background_task(payload: Any, ctx: TaskContext) -> Any:
    """Returns at once, leaving a task behind that, once its gate opens (after the run's end),
    submits, fans out and waits for tasks of another queue."""
    gate = BACKGROUND_GATES.setdefault(ctx.task_id, asyncio.Event())

    async def later() -> None:
        await gate.wait()
        for name, call in (
                ("submit", lambda: ctx.submit({"late": True})),
                ("submit_many", lambda: ctx.submit_many([{"late": 1}, {"late": 2}])),
                ("wait_many", lambda: ctx.wait_many(["x" * 32], queue=payload["other"]))):
            try:
                await call()
            except LeaseLost as exc:
                LATE_CALLS.setdefault(ctx.task_id, {})[name] = f"LeaseLost: {exc}"
            else:
                LATE_CALLS.setdefault(ctx.task_id, {})[name] = "ok"
        LATE_CALLS_MADE.set()

    LEFT_BEHIND.append(asyncio.get_running_loop().create_task(later()))
    return {"returned": True}


LEFT_BEHIND: list[asyncio.Task[None]] = []

def holds_the_gil(payload: Any) -> Any:
    """A long call into C that holds the GIL (as a huge regex or sort would), `seconds` long
    each time, `times` times with a moment of Python between: the event loop cannot run."""
    libc = ctypes.PyDLL(None)  # a PyDLL call keeps the GIL
    for _ in range(int(payload.get("times", 1))):
        libc.sleep(int(payload["seconds"]))
        time.sleep(0.2)
    return {"held": True}
