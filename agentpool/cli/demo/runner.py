"""The demo's orchestration: a private redis-server, worker processes, a batch of tasks, one
worker killed half-way and its tasks requeued the way the operator does it.

Everything the demo starts is stopped on the way out, whether it finished, failed, or was
interrupted by SIGINT, SIGTERM or SIGHUP (its terminal closed); a second signal during that
clean-up does not cut it short. With `keep`, the way out waits for one of those signals once
the run is over, so its Redis, workers and console can be looked at: Ctrl-C (SIGINT) is how
a kept demo is meant to end, so it ends it as the run ended; SIGTERM or SIGHUP interrupt it
as they interrupt a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import redis

from agentpool.cli.demo.console import DemoConsole, start_console
from agentpool.cli.demo.fleet import WorkerFleet, WorkerProcess, worker_command
from agentpool.cli.demo.summary import FINAL_STATES, Summary, TaskRecord, summarize
from agentpool.cli.demo.view import Reporter, RunningRow, Snapshot, WorkerRow
from agentpool.connection import (
    RedisURLError,
    check_redis_url,
    redis_from_url,
    sync_redis_from_url,
)
from agentpool.protocol import (
    LISTEN_SECONDS,
    DoneSignal,
    QueueFigures,
    RequeueResult,
    TaskInfo,
    TaskQueue,
    WorkerState,
    key_prefix,
)
from agentpool.redis_errors import redis_failure
from agentpool.redis_server import RedisServer
from agentpool.urls import redact_url

HANDLER = "agentpool_worker.builtin:simulated_agent"
RUNNING_ROWS = 6
"""Running tasks the live view shows with their progress."""


class DemoError(RuntimeError):
    """The demo could not run to the end (a worker failed to start, nothing progressed)."""


class DemoConfigError(DemoError):
    """The demo was given something it cannot use (a Redis URL): nothing was started."""


class DemoInterrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class DemoConfig:
    workers: int = 3
    tasks: int = 300
    concurrency: int = 8
    mean_seconds: float = 2.0
    fail_rate: float = 0.05
    steps: int = 5
    """Each task's work in steps, each reporting progress and checkpointed."""
    seed: int | None = None
    redis_url: str | None = None
    queue: str = field(default_factory=lambda: f"demo-{uuid.uuid4().hex[:8]}")
    max_attempts: int = 5
    kill_at: float = 0.5
    drain_seconds: int = 2
    ready_timeout: float = 30.0
    stall_timeout: float = 60.0
    poll_seconds: float = 0.25
    worker_command: Sequence[str] | None = None
    console: bool = False
    keep: bool = False
    """Once the run is over, keep Redis, the workers and the console up until a stopping
    signal."""


@dataclass(frozen=True)
class DemoOutcome:
    summary: Summary
    queue: str
    redis_url: str
    """Without its password, for messages."""
    pods: list[str]
    pids: list[int]
    url: str = ""
    """The URL the workers use, the password included."""
    console_url: str | None = None
    example_task: str | None = None
    """A task to look at afterwards: one that resumed from its checkpoint after the kill,
    else one the kill requeued, else the first submitted."""
    example_note: str = ""
    """Which of those it is."""


def task_payloads(config: DemoConfig) -> list[dict[str, Any]]:
    """The simulated-agent handler's payloads; with a seed, each task gets its own."""
    payloads: list[dict[str, Any]] = []
    for index in range(config.tasks):
        payload: dict[str, Any] = {
            "mean_seconds": config.mean_seconds,
            "fail_rate": config.fail_rate,
        }
        if config.steps:
            payload["steps"] = config.steps
        if config.seed is not None:
            payload["seed"] = config.seed + index
        payloads.append(payload)
    return payloads


def worker_env(config: DemoConfig, redis_url: str) -> dict[str, str]:
    """The worker settings the operator would set from a pool spec, plus a short lease so
    heartbeats (every third of a lease) keep the view's done counts fresh."""
    return {
        "AGENTPOOL_REDIS_URL": redis_url,
        "AGENTPOOL_QUEUE": config.queue,
        "AGENTPOOL_HANDLER": HANDLER,
        "AGENTPOOL_CONCURRENCY": str(config.concurrency),
        "AGENTPOOL_MAX_ATTEMPTS": str(config.max_attempts),
        "AGENTPOOL_DRAIN_SECONDS": str(config.drain_seconds),
        "AGENTPOOL_POD_NAMESPACE": "demo",
        "AGENTPOOL_LOG_LEVEL": "info",
        "AGENTPOOL_LEASE_SECONDS": "3",
        "PYTHONUNBUFFERED": "1",
    }


CHECK_TIMEOUT = 5.0
PASSWORD_PLACE = "the URL of --redis-url (redis://:PASSWORD@host:port/db)"
_UNKNOWN_OPTION = re.compile(r"unexpected keyword argument '([^']+)'")


def check_redis(url: str) -> None:
    """Reach the Redis given on the command line once, before anything is started.

    Raises DemoConfigError for a URL that cannot be used (in the words every other command
    uses), DemoError for a Redis that cannot be reached or refuses the password; neither
    message shows the password.
    """
    try:
        check_redis_url(url)
    except RedisURLError as exc:
        raise DemoConfigError(f"invalid Redis URL {redact_url(url)}: {exc}") from None
    try:
        client = sync_redis_from_url(url, socket_connect_timeout=CHECK_TIMEOUT,
                                     socket_timeout=CHECK_TIMEOUT)
    except (TypeError, ValueError) as exc:
        raise DemoConfigError(_url_problem(url, exc)) from None
    try:
        client.ping()
    except (TypeError, ValueError) as exc:
        raise DemoConfigError(_url_problem(url, exc)) from None
    except (redis.RedisError, OSError) as exc:
        raise DemoError(redis_failure(url, exc, password_place=PASSWORD_PLACE)) from None
    finally:
        client.close()


def _url_problem(url: str, exc: BaseException) -> str:
    unknown = _UNKNOWN_OPTION.search(str(exc)) if isinstance(exc, TypeError) else None
    reason = (f"unknown option {unknown[1]!r}" if unknown
              else str(exc).removeprefix("invalid Redis URL").strip(" :"))
    return f"invalid Redis URL {redact_url(url)}" + (f": {reason}" if reason else "")


STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a kill, and the demo's terminal closed (an ssh session dropped): the workers and
the redis-server run in sessions of their own, which none of them reaches."""


class Interrupts:
    """SIGINT/SIGTERM/SIGHUP recorded rather than raised, so no step is cut in half.

    The demo checks `check()` between steps and waits on `stopped` instead of sleeping, so it
    notices a signal at once. (Cancelling the demo's task is no substitute: a Redis client
    caught mid-command may swallow the cancellation.)
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped = asyncio.Event()
        self.received = threading.Event()
        """`stopped` for code outside the event loop."""
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        for signum in STOPPING_SIGNALS:
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # started with nohup: the terminal may go, the demo goes on
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.signum is not None:
            self.stopped.set()

    def detach(self) -> None:
        self._loop = None

    def check(self) -> None:
        if self.signum is not None:
            raise DemoInterrupted(self.signum)

    async def pause(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Sleep up to `seconds`, less if a signal arrives or `until` is set."""
        events = [self.stopped] if until is None else [self.stopped, until]
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.check()

    def wait(self) -> int:
        """Block until a stopping signal arrives (or arrived); its number."""
        while not self.received.wait(timeout=1.0):
            pass
        assert self.signum is not None
        return self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        self.received.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stopped.set)


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start


def run_demo(config: DemoConfig, reporter: Reporter,
             finished: Callable[[DemoOutcome], None] | None = None) -> DemoOutcome:
    """Run the whole demo; raises DemoInterrupted on a stopping signal, DemoError on failure.

    `finished` gets the outcome while everything still runs; with `config.keep`, it all runs
    on until a stopping signal: SIGINT then ends the demo as it would have ended anyway, any
    other raises DemoInterrupted.
    Whatever happens, on return every worker and the private redis-server have exited and the
    demo's temporary directory (worker logs, Redis data) is gone.
    """
    if config.redis_url is not None:
        check_redis(config.redis_url)
    clock = Clock()
    interrupts = Interrupts()
    command = list(config.worker_command or worker_command())
    with contextlib.ExitStack() as stack:
        interrupts.install()
        stack.callback(interrupts.restore)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentpool-demo-")))
        if config.redis_url is None:
            (workdir / "redis").mkdir()
            server = RedisServer(workdir=workdir / "redis")
            stack.callback(server.close)
            server.start()
            url = server.url
            reporter.event(clock(), f"started redis-server on {url}")
        else:
            url = config.redis_url
            stack.callback(delete_queue_keys, url, config.queue)
        console_url = None
        if config.console:
            console = start_console(url, config.queue, workdir)
            if isinstance(console, DemoConsole):
                console_url = console.url
                stack.callback(console.stop)
                reporter.event(clock(), f"console: {console.url} (open it to watch the fleet, "
                               "the kill -9 and the requeue live)")
            else:
                reporter.event(clock(), f"no console: {console}")
        fleet = WorkerFleet(command, worker_env(config, url), workdir)
        stack.callback(fleet.stop_all)
        interrupts.check()
        demo = DemoRun(config, fleet, reporter, clock, interrupts, console_url)
        summary = asyncio.run(demo.main(url))
        outcome = DemoOutcome(
            summary=summary,
            queue=config.queue,
            redis_url=redact_url(url),
            pods=list(fleet.workers),
            pids=[w.pid for w in fleet.workers.values()],
            url=url,
            console_url=console_url,
            example_task=demo.example_task,
            example_note=demo.example_note,
        )
        if finished is not None:
            finished(outcome)
        if config.keep and (signum := interrupts.wait()) != signal.SIGINT:
            raise DemoInterrupted(signum)
        return outcome
    raise AssertionError("unreachable")  # pragma: no cover


def delete_queue_keys(url: str, queue: str) -> None:
    """Remove the demo queue's keys from a Redis the demo did not start itself."""
    client = sync_redis_from_url(url)
    try:
        keys = list(client.scan_iter(match=key_prefix(queue) + "*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    except redis.RedisError:
        pass
    finally:
        client.close()


class DemoRun:
    def __init__(self, config: DemoConfig, fleet: WorkerFleet, reporter: Reporter,
                 clock: Clock, interrupts: Interrupts, console_url: str | None = None) -> None:
        self.config = config
        self.console_url = console_url
        self.interrupts = interrupts
        self.fleet = fleet
        self.reporter = reporter
        self.clock = clock
        self.killed_pod: str | None = None
        self.requeued_after_kill = 0
        self.dead_lettered_after_kill = 0
        self.requeued_ids: set[str] = set()
        """What the killed worker held when it died and requeue_pod handed back (not those it
        dead-lettered or cancelled)."""
        self.example_task: str | None = None
        self.example_note = ""
        self._done_seen: dict[str, int] = {}
        self._reported_exits: set[str] = set()

    def event(self, message: str) -> None:
        self.reporter.event(self.clock(), message)

    async def main(self, url: str) -> Summary:
        self.interrupts.attach()
        client = redis_from_url(url)
        try:
            self.interrupts.check()
            return await self.run(TaskQueue(client, self.config.queue))
        finally:
            self.interrupts.detach()
            await client.aclose()

    async def run(self, queue: TaskQueue) -> Summary:
        config = self.config
        await queue.configure(max_attempts=config.max_attempts)
        for _ in range(config.workers):
            self.start_worker()
        await self.wait_ready(queue)
        half_way = FinishCounter(queue, math.ceil(config.tasks * config.kill_at))
        await half_way.start()
        try:
            ids = await queue.submit_many(task_payloads(config))
            self.example_task, self.example_note = ids[0], "the first task submitted"
            self.interrupts.check()
            self.event(f"submitted {len(ids)} tasks to queue {queue.name}")
            await self.watch(queue, len(ids), half_way)
        finally:
            await half_way.stop()
        records = await read_records(queue, ids)
        self.interrupts.check()
        figures = await queue.figures()
        return summarize(
            records,
            retried=figures.stats.get("retried", 0),
            requeued_after_kill=self.requeued_after_kill,
            requeued_ids=self.requeued_ids,
            killed_worker=self.killed_pod,
            dead_lettered_after_kill=self.dead_lettered_after_kill,
        )

    def start_worker(self, replacing: str | None = None) -> WorkerProcess:
        pod = f"demo-worker-{len(self.fleet.workers) + 1}"
        worker = self.fleet.start(pod)
        if replacing:
            self.event(f"started {pod} (pid {worker.pid}) to replace {replacing}")
        else:
            self.event(f"started {pod} (pid {worker.pid}, port {worker.port})")
        return worker

    async def wait_ready(self, queue: TaskQueue) -> None:
        """Until every worker has sent its first heartbeat, so waits measure the queue only."""
        deadline = self.clock() + self.config.ready_timeout
        expected = set(self.fleet.workers)
        while True:
            self.check_processes(fatal=True)
            seen = {state.pod for state in await queue.workers()}
            self.reporter.update(self.snapshot(self.config.tasks, 0, [], {}, None))
            if expected <= seen:
                return
            if self.clock() > deadline:
                missing = ", ".join(sorted(expected - seen))
                raise DemoError(
                    f"{missing} did not start within {self.config.ready_timeout:.0f} s"
                    + self.log_tails(expected - seen)
                )
            await self.interrupts.pause(self.config.poll_seconds)

    async def watch(self, queue: TaskQueue, total: int, half_way: FinishCounter) -> None:
        """Refresh the view until every task finished; kill a busy worker once half are done.

        The kill is triggered by the finish notifications rather than by the next refresh, so
        it lands half-way even in a run shorter than a refresh interval.
        """
        last_finished, last_change = -1, self.clock()
        while True:
            figures = await queue.figures()
            stats = figures.stats
            finished = sum(stats.get(state, 0) for state in ("succeeded", "dead", "cancelled"))
            states = await queue.workers()
            held = await self.held_by_pod(queue, states)
            running = await queue.list_tasks("running", RUNNING_ROWS)
            self.reporter.update(self.snapshot(total, finished, states, held, figures, running))
            if finished >= total:
                return
            past_half = half_way.reached.is_set() or finished >= half_way.threshold
            if past_half and self.killed_pod is None:
                await self.kill_busy_worker(queue, states, held)
            self.check_processes(fatal=False)
            if finished != last_finished:
                last_finished, last_change = finished, self.clock()
            elif self.clock() - last_change > self.config.stall_timeout:
                raise DemoError(
                    f"no task finished in {self.config.stall_timeout:.0f} s "
                    f"({finished}/{total} finished)" + self.log_tails(self.fleet.workers)
                )
            if self.killed_pod is not None:
                await self.interrupts.pause(self.config.poll_seconds)
            elif past_half:
                await self.interrupts.pause(0.02)
            else:
                await self.interrupts.pause(self.config.poll_seconds, until=half_way.reached)

    async def held_by_pod(self, queue: TaskQueue, states: list[WorkerState]) -> dict[str, int]:
        """Tasks each running worker holds right now (its heartbeat may be seconds old)."""
        alive = {w.pod for w in self.fleet.alive() if not w.killed}
        held: dict[str, int] = {}
        for state in states:
            if state.pod in alive:
                held[state.pod] = held.get(state.pod, 0) + len(
                    await queue.held_by(state.worker_id))
        return held

    async def kill_busy_worker(self, queue: TaskQueue, states: list[WorkerState],
                               held: dict[str, int]) -> None:
        """SIGKILL the worker holding the most tasks, requeue them, start a replacement.

        A worker holding nothing at this instant is not busy; the caller tries again shortly.
        """
        if not held or max(held.values()) == 0:
            return
        pod = max(held, key=lambda p: held[p])
        victim = self.fleet.workers[pod]
        self.killed_pod = pod
        self.fleet.kill(pod)
        held_ids: set[str] = set()
        for state in states:
            if state.pod == pod:
                held_ids |= await queue.held_by(state.worker_id)
        self.event(f"half-way: kill -9 {pod} (pid {victim.pid}) while it runs "
                   f"{counted(len(held_ids), 'task')}")
        before = {info.id: info.attempts for info in await queue.get_many(sorted(held_ids))}
        result = await queue.requeue_pod(pod, reason="pod killed by the demo")
        after = {info.id: (info.state, info.attempts)
                 for info in await queue.get_many(sorted(held_ids))}
        self.requeued_ids = handed_back(before, after)
        self.requeued_after_kill = result.requeued
        self.dead_lettered_after_kill = result.dead_lettered
        self.event(requeue_message(result))
        saved = {task_id: await queue.checkpoint_state(task_id)
                 for task_id in sorted(self.requeued_ids)}
        steps = checkpointed_steps(saved)
        if steps:
            example = max(steps, key=lambda t: steps[t])
            self.example_task = example
            self.example_note = "a task that resumed from its checkpoint after the kill"
            self.event(f"{len(steps)} of the requeued tasks will resume from a checkpoint, "
                       f"e.g. task {example[:8]} after step {steps[example]} of "
                       f"{self.config.steps}")
            if self.console_url:
                self.event(f"watch it resume: {self.console_url}queues/"
                           f"{quote(queue.name, safe='')}/tasks/{example}")
        elif self.requeued_ids:
            self.example_task = min(self.requeued_ids)
            self.example_note = "a task the kill interrupted and requeue_pod handed back"
        self.start_worker(replacing=pod)

    def check_processes(self, *, fatal: bool) -> None:
        """Report workers that exited on their own; fail when none is left to do the work."""
        for worker in self.fleet.workers.values():
            code = worker.exit_code
            if worker.killed or code is None or worker.pod in self._reported_exits:
                continue
            self._reported_exits.add(worker.pod)
            if fatal:
                raise DemoError(f"{worker.pod} exited with code {code}"
                                + self.log_tails([worker.pod]))
            self.event(f"{worker.pod} exited with code {code}")
        if not self.fleet.alive():
            raise DemoError("no worker is running any more" + self.log_tails(self.fleet.workers))

    def log_tails(self, pods: Iterable[str]) -> str:
        parts = []
        for pod in sorted(pods):
            tail = self.fleet.workers[pod].log_tail()
            if tail:
                parts.append(f"\n--- last lines of {pod}'s log ---\n{tail}")
        return "".join(parts)

    def snapshot(self, total: int, finished: int, states: list[WorkerState],
                 held: dict[str, int], figures: QueueFigures | None,
                 running: Sequence[TaskInfo] = ()) -> Snapshot:
        latest: dict[str, WorkerState] = {}
        for beat in states:
            if beat.pod not in latest or beat.last_heartbeat > latest[beat.pod].last_heartbeat:
                latest[beat.pod] = beat
        rows = []
        for pod, worker in self.fleet.workers.items():
            state = latest.get(pod)
            if state is not None and not worker.killed:
                self._done_seen[pod] = state.done
            done = self._done_seen.get(pod, 0)
            if worker.killed:
                rows.append(WorkerRow(pod, "killed", None, done))
            elif worker.exit_code is not None:
                rows.append(WorkerRow(pod, f"exited {worker.exit_code}", None, done))
            elif state is None:
                rows.append(WorkerRow(pod, "starting", 0, done))
            else:
                rows.append(WorkerRow(pod, state.state, held.get(pod, state.in_flight), done))
        return Snapshot(
            total=total,
            finished=finished,
            elapsed=self.clock(),
            queued=figures.queued if figures else 0,
            in_flight=figures.in_flight if figures else 0,
            retrying=figures.delayed if figures else 0,
            dead=figures.dead if figures else 0,
            workers=rows,
            running=[RunningRow(t.id[:8], t.attempts, t.progress.fraction if t.progress else 0.0,
                                t.progress.message if t.progress and t.progress.message
                                else "") for t in running],
        )


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def handed_back(before: Mapping[str, int], after: Mapping[str, tuple[str, int]]) -> set[str]:
    """Of the tasks a killed worker held (their attempts when it died), those requeue_pod
    returned to the queue: all but those it ended, dead-lettered (attempts used up) or
    cancelled. Such a task is final and still on the same attempt; a requeued one is
    pending, or was claimed again since and so is on a later attempt."""
    handed = set()
    for task_id, attempts in before.items():
        found = after.get(task_id)
        if found is not None and (found[0] not in FINAL_STATES or found[1] > attempts):
            handed.add(task_id)
    return handed


def requeue_message(result: RequeueResult) -> str:
    message = (f"requeued {result.requeued} of its tasks (requeue_pod, the operator's "
               "recovery path)")
    if result.dead_lettered:
        message += f"; {result.dead_lettered} dead-lettered (attempts used up)"
    if result.cancelled:
        message += f"; {result.cancelled} cancelled (a cancel was pending)"
    return message


def checkpointed_steps(saved: Mapping[str, Any]) -> dict[str, int]:
    """The step each task's checkpoint saved, for the tasks that saved one past step 0."""
    return {task_id: state["step"] for task_id, state in saved.items()
            if isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] > 0}


class FinishCounter:
    """Counts the queue's finish notifications and sets `reached` at `threshold`."""

    def __init__(self, queue: TaskQueue, threshold: int) -> None:
        self.queue = queue
        self.threshold = threshold
        self.reached = asyncio.Event()
        self.count = 0
        self._done = DoneSignal(queue.redis, queue.prefix + "done")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._done.subscribe()
        await self.queue.listen_for_finishes()
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        listened = time.monotonic()
        while self.count < self.threshold:
            if time.monotonic() - listened > LISTEN_SECONDS / 3:
                listened = time.monotonic()
                await self.queue.listen_for_finishes()
            if await self._done.next(timeout=1.0) is not None:
                self.count += 1
        self.reached.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._done.aclose()


async def read_records(queue: TaskQueue, ids: Sequence[str], batch: int = 500) -> list[TaskRecord]:
    """Every task's state as stored now, one round trip per batch; a missing task has none."""
    records: list[TaskRecord] = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        found = {info.id: info for info in await queue.get_many(chunk)}
        records += [record_of(task_id, found.get(task_id)) for task_id in chunk]
    return records


def record_of(task_id: str, info: TaskInfo | None) -> TaskRecord:
    if info is None:
        return TaskRecord(id=task_id, state=None)
    return TaskRecord(
        id=task_id,
        state=info.state,
        attempts=info.attempts,
        created_ms=info.created_ms,
        started_ms=info.started_ms,
        finished_ms=info.finished_ms,
        resumed_from_step=int(info.result.get("resumed_from_step") or 0)
        if isinstance(info.result, dict) else 0,
    )
