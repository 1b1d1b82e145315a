"""The worker: claims tasks from one queue and runs up to ``concurrency`` of them at once.

Six loops share one event loop:

- the fetcher claims ``min(free slots, claim_batch)`` tasks in one round trip; when a claim
  came back short (the queue is empty) it blocks on the queue's wake-up list on a connection
  of its own, for at most the poll interval or until the next delayed task is due; a reply
  read late is confirmed with a heartbeat before its runs start (see ``_confirm``);
- the flusher records successes and events: whatever completed or was emitted while the
  previous flush was on the wire goes out in the next one (group commit: one round trip for
  many tasks, no added delay);
- the heartbeat, every lease/3, extends the leases of every task the worker holds and learns
  which it lost (stop those runs, never report them), which were cancelled (stop them, record
  the cancel) and whether the operator asked the pod to drain; one that goes out more than a
  lease after the previous is logged (the process did not run: a handler held the GIL);
- the reaper requeues the queue's expired leases itself when no operator has for
  UNREAPED_SECONDS (see ``reap_due``);
- the ready check runs the handler's ``ready`` hook, when it has one, for ``/readyz``;
- a ticker that proves the loop is responsive to the probe thread, and logs a stall that
  ``/livez`` would report.

What a run emits waits for Redis in ``outbox.py``; how a run's end is recorded (its timeout,
a failure, a ``Retry``) is decided in ``run_rules.py``; when to claim again under a dense
stream, in ``claim_pace.py``; the handler and the ``TaskContext`` it is given, in
``handlers.py``.

States: ``starting`` → ``running``; a drain requested through Redis → ``draining`` (no more
claims, in-flight work finishes) → ``drained`` (idle, not ready, alive until SIGTERM; a
withdrawn request returns it to ``running``). SIGTERM/SIGINT → ``stopping``: no more claims,
in-flight work gets ``drain_seconds``, what is still running then is released back to the
queue without spending an attempt, and :meth:`Worker.run` returns.

A task is *held* from its claim until Redis has recorded its outcome; the heartbeat keeps the
leases of held tasks alive, so a success waiting for Redis to come back is not reaped.

A full Redis (maxmemory reached, ``noeviction``) is not an unreachable one. It answers, and
the scripts decide what it still takes (common.lua): no claim (each run adds a result), no
events, no checkpoints; but heartbeats and every outcome, so runs in progress go on and end.
The worker follows: a refused claim backs off as any failed claim and the next one that goes
through resumes the work; outcomes go to Redis alone while their events wait for room
(outbox.py: offered again every FULL_RETRY_SECONDS, at most MAX_PENDING_EVENTS of them:
beyond, new events are dropped rather than the run held up); a checkpoint is not saved and
the run goes on (see :meth:`Worker.checkpoint`). It logs the episode once when Redis first
refuses a write for being full and once when a write Redis would refuse then goes through,
and ``/readyz`` says "redis is full" meanwhile (probes.py: the operator leaves pods that
heartbeat alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from agentpool.connection import redis_from_url
from agentpool.durability import NotReplicated
from agentpool.errors import LeaseLost
from agentpool.protocol import (
    ClaimedTask,
    FailOutcome,
    PayloadTooLarge,
    TaskInfo,
    TaskQueue,
    WorkerInfo,
    encode_result,
    new_instance_id,
    retry_delay,
)
from agentpool.redis_errors import (
    REDIS_FAILURES,
    TRANSIENT_REFUSALS,
    URL_WITH_PASSWORD,
    auth_failure,
    redis_full,
)
from agentpool.seconds import seconds_text
from agentpool.urls import mask_urls
from agentpool_worker import metrics
from agentpool_worker.claim_pace import ArrivalRate, lingers, wait_before_next_claim
from agentpool_worker.handlers import (
    Handler,
    QueueNotListed,
    TaskContext,
    TaskOutcome,
    WorkerContext,
    call_hook,
    load_handler,
)
from agentpool_worker.limits import WorkerLimits
from agentpool_worker.logs import debug_enabled, redis_error
from agentpool_worker.outbox import MAX_PENDING_EVENTS, EventOutbox, PendingEvent, by_run
from agentpool_worker.probes import Health, ProbeServer
from agentpool_worker.run_rules import (
    RunFailure,
    describe_briefly,
    run_failure,
    run_timeout,
    unstreamed,
)
from agentpool_worker.settings import WorkerSettings, env_name
from agentpool_worker.threads import DaemonThreads

log = structlog.get_logger("agentpool.worker")
T = TypeVar("T")

MAX_FLUSH = 500
"""Completions per flush round trip."""
FULL_MESSAGE = ("Redis is full (maxmemory reached): new tasks are not claimed until memory is "
                "freed")
FULL_READY_REASON = ("redis is full (maxmemory reached): new tasks are not claimed until "
                     "memory is freed; runs in progress go on")
RESULT_TOO_LARGE_HINT = (". Store large output elsewhere and return where it is, or raise "
                         f"{env_name('max_result_bytes')}")
TICK_SECONDS = 0.25
AFTER_TASK_THREADS_PER_SLOT = 4
"""A sync ``after_task`` hook still running after AFTER_TASK_SECONDS keeps its thread while
another serves the next calls, up to this many threads per slot in all."""
AFTER_TASK_SECONDS = 30.0
"""Longest an ``after_task`` hook may hold a run's slot."""
READY_CHECK_SECONDS = 5.0
"""Longest a ``ready`` hook may take before it counts as failed."""
UNREAPED_SECONDS = 30.0
"""How long a lease may have run out before a worker requeues its task itself. The operator
reaps within seconds (and says so in the pool's Events and metrics); this is the fallback for
when no operator does, so that no task waits for one for ever."""

STOP_SECONDS = 11.0
"""How long runs still going at the end of the SIGTERM drain get to end once told to stop
(each hands its task back as it ends; those still going, then): a command's grace is at most
10 s, then SIGKILL."""
SHUTDOWN_GRACE_SECONDS = 14.0
"""How long after the stop request, beyond ``drain_seconds``, the ``shutdown`` hook may still
be running: the pod's termination grace is drainSeconds + 15 s (the operator's
GRACE_MARGIN_SECONDS), less a second to close the connections and exit before the SIGKILL."""
SHUTDOWN_FLOOR_SECONDS = 3.0
"""The least a ``shutdown`` hook gets, when the stop took the whole grace already."""
HOOK_FAILURES = (Exception, SystemExit, KeyboardInterrupt)
"""What a hook may raise that counts as the hook failing (sys.exit() in a library too)."""
PASSWORD_PLACE = f"AGENTPOOL_REDIS_URL ({URL_WITH_PASSWORD}), set from the pool's spec.redis"

RUNNING, STARTING, DRAINING, DRAINED, STOPPING = (
    "running", "starting", "draining", "drained", "stopping",
)
LOST, CANCELLED, RELEASE = "lost", "cancelled", "release"
FAILURE_RECORDED = frozenset({FailOutcome.RETRY, FailOutcome.DEAD, FailOutcome.EXPIRED})
"""What Redis answers to a failure it recorded (it may instead have ended the task
cancelled, on a cancel request, or refused the report: STALE)."""
STOPPED_STATUS = {LOST: "lost", CANCELLED: "cancelled", RELEASE: "released"}


def reap_due(overdue: float, reachable_for: float, lease_seconds: float) -> bool:
    """Whether a worker requeues expired leases itself: the queue's earliest has been out
    for UNREAPED_SECONDS (the operator reaps within seconds, with its Events), and Redis has
    answered this worker for a whole lease (after an outage every lease has run out; the
    other live workers renew theirs within a lease)."""
    return overdue >= UNREAPED_SECONDS and reachable_for >= lease_seconds


def shutdown_budget(drain_seconds: float, since_stop: float) -> float:
    """Seconds the ``shutdown`` hook gets, `since_stop` seconds after the stop request: what
    remains of ``drain_seconds`` + SHUTDOWN_GRACE_SECONDS, but at least SHUTDOWN_FLOOR_SECONDS
    (to the tenth of a second, as the log line says it)."""
    left = drain_seconds + SHUTDOWN_GRACE_SECONDS - since_stop
    return round(max(SHUTDOWN_FLOOR_SECONDS, left), 1)


def after_task_wait(drain_seconds: float, since_stop: float) -> float:
    """Seconds the exit waits for ``after_task`` hooks still running, `since_stop` seconds after
    the stop request: AFTER_TASK_SECONDS at most, and no later than leaves the ``shutdown``
    hook its SHUTDOWN_FLOOR_SECONDS within the grace (`shutdown_budget`)."""
    left = drain_seconds + SHUTDOWN_GRACE_SECONDS - SHUTDOWN_FLOOR_SECONDS - since_stop
    return min(AFTER_TASK_SECONDS, max(0.0, left))


def not_ready_reason(health: Health) -> str:
    """Why a ``running`` worker claims nothing, for its heartbeat record ("" while it claims,
    and in every other state, which says it itself): what ``/readyz`` answers, but an
    unreachable Redis (a heartbeat that gets through shows it reachable again)."""
    if health.state != RUNNING:
        return ""
    if health.check_error:
        return f"ready check failed: {health.check_error}"
    return health.slots_error or health.full_error


def heartbeat_late(late: float, interval: float, lease: float) -> bool:
    """Whether a heartbeat `late` seconds behind its time (one every `interval` seconds) went
    out too late for the leases it renews: more than a lease after the previous one ended,
    so that they may have run out (and their tasks gone to other workers). The process did
    not run meanwhile: a handler held the GIL (a long call into C) or blocked the loop."""
    return interval + late > lease


def another_attempt(retryable: bool, task: ClaimedTask) -> bool:
    """Whether a failed run's task may run again (``TaskOutcome.retryable``): its failure is
    retryable and attempts remain; the last attempt's goes to the dead letters."""
    return retryable and task.attempts < task.max_attempts


class StartupFailed(Exception):
    """The handler module's ``startup`` hook raised: the worker cannot serve."""


class _StillChecking(Exception):
    """The previous ``ready`` check is still running in its thread."""


class _Run:
    """One task's run in progress."""

    __slots__ = ("ctx", "reported", "stop_reason", "task", "thread", "unsaved", "worker_task")

    def __init__(self, task: ClaimedTask, ctx: TaskContext) -> None:
        self.task = task
        self.ctx = ctx
        self.stop_reason: str | None = None
        self.reported = False
        """Its stop (a cancel, a hand-back) was reported: at its end, or at the end of the
        SIGTERM drain when it had not ended by then."""
        self.worker_task: asyncio.Task[None] | None = None
        self.thread: Future[Any] | None = None
        self.unsaved = False
        """A checkpoint of this run was not saved because Redis was full (logged once)."""

    def stop(self, reason: str, *, interrupt: bool = True) -> None:
        """Ask the run to stop; `interrupt` cancels an async run (a run that learns it from a
        call it made, such as a refused checkpoint, stops by the exception instead)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.ctx.cancelled.set()
        if interrupt and self.worker_task is not None:
            self.worker_task.cancel()


def _may_checkpoint(run: _Run) -> bool:
    """The run holds its task still: not stopped, or stopped to be handed back (a draining
    worker) and not handed back yet, so what it saves on its way out reaches the next
    attempt."""
    return run.stop_reason is None or (run.stop_reason == RELEASE and not run.reported)


def _hook_error(exc: BaseException, deadline: asyncio.Timeout, budget: float) -> str:
    """A failed hook's error for the log: its own, or that its time ran out (a TimeoutError
    with no words of its own)."""
    if isinstance(exc, TimeoutError) and deadline.expired():
        return f"did not return within {seconds_text(budget)} s"
    return mask_urls(f"{type(exc).__name__}: {exc}")


@dataclass
class _FullEpisode:
    """Redis refusing writes for being full, from its first refusal to a write that went
    through: what it refused and what was lost, for the line that ends it."""

    since: float
    """monotonic"""
    refused: Counter[str] = field(default_factory=Counter)
    events_dropped: int = 0
    """Events that will never reach Redis."""
    checkpoints_not_saved: int = 0
    capped: bool = False
    """Events were dropped at ``ctx.emit`` (too many waiting): logged once."""


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until every task has ended. One ``cancel()`` is not a guarantee: a cancellation
    that meets a library's own timeout at the same moment can come out as a timeout error,
    which a loop that retries on Redis errors would survive."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    await asyncio.gather(*tasks, return_exceptions=True)


class _Backoff:
    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def reset(self) -> None:
        self.failures = 0

    async def sleep(self) -> None:
        self.failures += 1
        await asyncio.sleep(retry_delay(self.failures + 1, base=self.base, cap=self.cap))


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        handler: Handler | None = None,
        *,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler or load_handler(settings.handler)
        self.instance = instance or new_instance_id()
        self.info = WorkerInfo(
            pod=settings.pod_name, instance=self.instance,
            concurrency=settings.concurrency, state=STARTING,
        )
        self.worker_id = self.info.worker_id
        self.health = Health(settings.loop_stall_seconds, settings.heartbeat_stall_seconds,
                             stuck_restart_seconds=settings.stuck_restart_seconds)
        self._reachable_since: float | None = None
        """Since when (monotonic) every Redis request of this worker has succeeded."""
        self._reap_due = asyncio.Event()
        self._leases_overdue = 0.0
        self._restart_due = False
        """/livez fails because the worker is stuck for good (logged once)."""
        self.metrics = metrics.for_queue(settings.queue)
        metrics.start_at_zero(settings.queue, settings.other_queues, settings.limits)
        # read at each scrape, from what /readyz answers: the two cannot disagree
        self.metrics.ready.set_function(lambda: float(self.health.readiness()[0]))
        self.probe_port: int | None = None
        self._log = log.bind(worker=self.worker_id, queue=settings.queue)
        self._debug = debug_enabled(self._log)
        """Whether a run's start and end are logged (AGENTPOOL_LOG_LEVEL=debug)."""
        self.worker_ctx = WorkerContext(settings.queue, self.worker_id, settings.concurrency,
                                        max_result_bytes=settings.max_result_bytes)
        self._check_ok = True
        """The handler's ``ready`` hook passed its last check (or there is none)."""
        self._hook_threads = DaemonThreads(1, "agentpool-hook")
        """startup and shutdown, one after the other."""
        self._ready_threads = DaemonThreads(1, "agentpool-ready")
        self._after_task_threads = DaemonThreads(
            settings.concurrency, "agentpool-after-task",
            most=settings.concurrency * AFTER_TASK_THREADS_PER_SLOT)
        self._abandoned = 0
        """Slots held by sync runs that ended (timed out, stopped) while their thread did not
        return."""
        self._confirming: set[str] = set()
        """Tasks of a claim read late, whose leases a heartbeat confirms before they start."""

        self._held: dict[str, ClaimedTask] = {}
        self._runs: dict[str, _Run] = {}
        self._hooked: dict[str, TaskContext] = {}
        """Runs over on their own whose ``after_task`` hook is running: it may act for them."""
        self._reporting: set[str] = set()
        self._reports: set[asyncio.Task[None]] = set()
        self._completions: list[tuple[ClaimedTask, str]] = []
        self._full: _FullEpisode | None = None
        """While Redis refuses writes for being full (as far as the worker knows)."""
        self._configured = False
        """The queue's settings are written (at start, or before the first claim when Redis
        was full at start)."""
        self._threads: set[Future[Any]] = set()
        self._executing: set[asyncio.Task[None]] = set()
        """Runs not over yet, their after_task hook included."""
        self._free = settings.concurrency
        self._limits: WorkerLimits | None = None
        self._other_queues: dict[str, TaskQueue] = {}
        """The other queues runs submit to (settings.submits_to), made at their first submit."""
        self._other_waits: dict[str, TaskQueue] = {}
        """The same queues on the waiting client, for runs' ``ctx.wait_many``."""
        self._executor: ThreadPoolExecutor | None = None

        self._fetch_wake = asyncio.Event()
        """Set when a slot frees or the state changes: the fetcher may have work to do."""
        self._state_changed = asyncio.Event()
        """Set on state changes only: cuts a wait for new tasks short."""
        self._flush_wanted = asyncio.Event()
        self._outbox = EventOutbox(wake=self._flush_wanted)
        self._beat_now = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped_at: float | None = None
        """When the stop was requested (monotonic): the pod's termination grace began."""
        self._started = asyncio.Event()
        self._claim_uncertain = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.info.state

    def stop(self) -> None:
        """Begin the SIGTERM drain (safe to call more than once, from the loop's thread)."""
        if not self._stop_requested.is_set():
            self._log.info("stop requested", state=self.state, in_flight=len(self._runs))
            self._stop_requested.set()
            self._stopped_at = time.monotonic()

    @property
    def busy_threads(self) -> int:
        """Sync handler threads still running (abandoned ones included)."""
        return sum(1 for f in list(self._threads) if not f.done())

    @property
    def runs_left(self) -> int:
        """Runs (and their after_task hooks) still going once the worker stopped: handlers
        that ignored their cancellation; their tasks are back in the queue already."""
        return sum(1 for run in list(self._executing) if not run.done())

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run until stopped (SIGTERM/SIGINT or :meth:`stop`), then drain and return."""
        s = self.settings
        self._loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
        if not self.handler.is_async:
            self._executor = ThreadPoolExecutor(
                max_workers=s.concurrency, thread_name_prefix="agentpool-handler"
            )
        probes = ProbeServer(self.health, s.port).start() if s.port else None
        self.probe_port = probes.port if probes else None
        self._redis = _client(s.redis_url, s.redis_timeout_seconds)
        self._wait_redis = _client(s.redis_url, s.redis_timeout_seconds + s.poll_seconds)
        self.queue = TaskQueue(self._redis, s.queue, durability=s.durability,
                               replica_timeout=s.replica_timeout_seconds)
        if s.limits:
            self._limits = WorkerLimits(self._redis, s.limits, caller=self.worker_id,
                                        queue=s.queue)
        self._wait_queue = TaskQueue(self._wait_redis, s.queue)
        background = [asyncio.create_task(self._tick(), name="agentpool-ticker")]
        started_hooks = False
        try:
            if not await self._started_up_or_stopped():
                return
            started_hooks = True
            if self.handler.hooks.ready is not None:
                await self._check_ready()
                background.append(
                    asyncio.create_task(self._ready_loop(), name="agentpool-ready-check"))
            if await self._start_up():
                background += [
                    asyncio.create_task(self._heartbeat_loop(), name="agentpool-heartbeat"),
                    asyncio.create_task(self._flush_loop(), name="agentpool-flusher"),
                    asyncio.create_task(self._reap_loop(), name="agentpool-reaper"),
                ]
                fetcher = asyncio.create_task(self._fetch_loop(), name="agentpool-fetcher")
                stop = asyncio.create_task(self._stop_requested.wait())
                done, _ = await asyncio.wait(
                    [fetcher, stop, *background], return_when=asyncio.FIRST_COMPLETED
                )
                stop.cancel()
                for crashed in done - {stop}:
                    crashed.result()  # a loop that ends by itself is a bug: surface it
                await self._shut_down(fetcher)
        finally:
            await _cancel_all(background)
            for run in list(self._runs.values()):
                run.stop(RELEASE)
            if started_hooks:
                await self._shutdown_hook()
            await self._redis.aclose()
            await self._wait_redis.aclose()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            if probes is not None:
                probes.stop()
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)

    # -- handler hooks ---------------------------------------------------------------------

    async def _started_up_or_stopped(self) -> bool:
        """Run the startup hook; False when a stop came first (a pod deleted while it loads
        a model: nothing is claimed yet, so nothing waits for the hook; a sync one is left to
        its daemon thread)."""
        startup = asyncio.create_task(self._startup_hook(), name="agentpool-startup")
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait([startup, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if startup.done():
            startup.result()
            return True
        startup.cancel()
        self._log.info("stopped before the startup hook returned; no task was claimed")
        return False

    async def _startup_hook(self) -> None:
        hook = self.handler.hooks.startup
        if hook is None:
            return
        self.health.startup_hook(True)
        try:
            await call_hook(hook, self.worker_ctx, threads=self._hook_threads)
        except HOOK_FAILURES as exc:
            # one line, whatever the error's own text (pydantic's spans several)
            why = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
            raise StartupFailed(mask_urls(f"startup hook of {self.handler.name!r} failed: "
                                          f"{type(exc).__name__}: {why}")) from exc
        finally:
            self.health.startup_hook(False)

    async def _shutdown_hook(self) -> None:
        hook = self.handler.hooks.shutdown
        if hook is None:
            return
        now = time.monotonic()
        since_stop = 0.0 if self._stopped_at is None else now - self._stopped_at
        budget = shutdown_budget(self.settings.drain_seconds, since_stop)
        deadline = asyncio.timeout(budget)
        try:
            async with deadline:
                await call_hook(hook, self.worker_ctx, threads=self._hook_threads)
        except HOOK_FAILURES as exc:
            self._log.error("shutdown hook failed", error=_hook_error(exc, deadline, budget))

    async def _after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        """The ``after_task`` hook. After a run that ended on its own (succeeded, failed) the
        hook may still act for it (``ctx.submit`` a follow-up, say); after a stopped one
        (lost, cancelled, handed back) not."""
        hook = self.handler.hooks.after_task
        if hook is None:
            return
        acting = outcome.status not in STOPPED_STATUS.values()
        if acting:
            self._hooked[ctx.task_id] = ctx
        deadline = asyncio.timeout(AFTER_TASK_SECONDS)
        try:
            async with deadline:
                await call_hook(hook, ctx, outcome, threads=self._after_task_threads)
        except HOOK_FAILURES as exc:
            self._log.warning("after_task hook failed", task=ctx.task_id,
                              outcome=outcome.status,
                              error=_hook_error(exc, deadline, AFTER_TASK_SECONDS))
        finally:
            if acting and self._hooked.get(ctx.task_id) is ctx:
                del self._hooked[ctx.task_id]

    async def _ready_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self._check_ready()

    async def _check_ready(self) -> None:
        """Run the ``ready`` hook: None or True is ready; False, a reason (str) or an
        exception is not. Not ready stops claims; a failing check leaves ``/livez`` alone. A
        sync check that has not returned yet is not called again: it counts as failing until
        it returns (hung checks would pile up in threads otherwise), and once it has been
        running for ``stuck_restart_seconds`` while no run is in progress, ``/livez`` fails
        too, so that a worker that would claim nothing for good is restarted (probes.py)."""
        assert self.handler.hooks.ready is not None
        began = time.monotonic()
        hung_since: float | None = None
        try:
            if self._ready_threads.busy:
                raise _StillChecking
            async with asyncio.timeout(READY_CHECK_SECONDS):
                answer = await call_hook(self.handler.hooks.ready, threads=self._ready_threads)
        except TimeoutError:
            reason = f"no answer within {READY_CHECK_SECONDS:g}s"
            if self._ready_threads.busy:  # a sync check, still running in its thread
                hung_since = began
        except _StillChecking:
            reason = "the previous check has not returned yet"
            hung_since = self.health.ready_hung_since
            if hung_since is None:
                hung_since = began
        except HOOK_FAILURES as exc:
            reason = mask_urls(f"{type(exc).__name__}: {exc}")
        else:
            reason = "" if answer is None or answer is True else (
                "ready() returned False" if answer is False else mask_urls(str(answer)))
        ok = not reason
        if ok != self._check_ok:
            if ok:
                self._log.info("ready check passes again")
            else:
                self._log.warning("ready check failed; not claiming", reason=reason)
            self._beat_now.set()  # the listings say why it claims nothing, or no longer
        self._check_ok = ok
        self.health.check_failed(reason[:500])
        self.health.ready_check_hung(hung_since)
        self._fetch_wake.set()
        if not ok:
            self._state_changed.set()

    @property
    def _claiming(self) -> bool:
        """Whether the fetcher claims: a full Redis does not stop it (its claims are refused
        and back off; the first that goes through ends the episode)."""
        return self.state == RUNNING and self._check_ok

    # -- start and stop --------------------------------------------------------------------

    async def _start_up(self) -> bool:
        """Configure the queue, register, return what earlier instances of this pod held."""
        s = self.settings
        backoff = _Backoff()
        attempts = 0
        self.health.heartbeats_begin()  # the startup hook is behind: /livez watches them now
        while not self._stop_requested.is_set():
            attempts += 1
            try:
                try:
                    await self._configure()
                except REDIS_FAILURES as exc:
                    if not redis_full(exc):
                        raise
                    # Redis is full: start anyway (register, heartbeat, hand back what earlier
                    # instances held: Redis takes those), so that the pod is seen alive; the
                    # settings are written before the first claim, which Redis refuses too.
                    self._redis_failed(exc, "start")
                beat = await self._rt(self.queue.heartbeat(self.info, {}, s.lease_seconds))
                returned = await self._rt(self.queue.requeue_pod(
                    s.pod_name, keep_instance=self.instance, reason="worker restarted"))
            except REDIS_FAILURES as exc:
                self.health.heartbeat_attempted()
                self._redis_failed(exc, "start", log=attempts % 10 == 1)
                await _until(backoff.sleep(), self._stop_requested)
                continue
            self.health.heartbeat_attempted()
            self._redis_ok()
            self.metrics.requeued.inc(returned.requeued)
            self._set_state(DRAINED if beat.drain_requested else RUNNING)
            self._log.info(
                "worker started", pod=s.pod_name, namespace=s.pod_namespace,
                redis=s.safe_redis_url,
                handler=self.handler.name, concurrency=s.concurrency,
                lease_seconds=s.lease_seconds, probe_port=self.probe_port,
                returned_from_earlier_instances=returned.total,
                returned_requeued=returned.requeued,
                returned_dead_lettered=returned.dead_lettered,
                earlier_instances=returned.instances, state=self.state,
            )
            self._started.set()
            return True
        return False

    async def _shut_down(self, fetcher: asyncio.Task[None]) -> None:
        s = self.settings
        previous = self.state
        self._set_state(STOPPING)
        await fetcher
        if self._claim_uncertain:
            await self._release_orphans()
        self._log.info("draining", previous_state=previous, in_flight=len(self._runs),
                       drain_seconds=s.drain_seconds)
        runs = [r.worker_task for r in self._runs.values() if r.worker_task is not None]
        if runs:
            await asyncio.wait(runs, timeout=s.drain_seconds)
        unfinished = list(self._runs.values())
        for run in unfinished:
            run.stop(RELEASE)
        # Each run hands its task back as it ends (a program saves a checkpoint on SIGTERM
        # first); one still going after STOP_SECONDS is handed back then, not when the
        # container is killed and its lease expires (an attempt spent). Fenced by the claim's
        # token, so a run ending later is harmless.
        late: set[asyncio.Task[None]] = set()
        stopping = [r.worker_task for r in unfinished
                    if r.worker_task is not None and not r.worker_task.done()]
        if stopping:
            _, late = await asyncio.wait(stopping, timeout=STOP_SECONDS)
        for run in unfinished:
            self._stopped(run)
        if late:
            self._log.warning("runs did not stop in time; their tasks are back in the queue",
                              count=len(late), stop_seconds=STOP_SECONDS)
        grace = max(2 * s.redis_timeout_seconds, 1.0)
        if not await self._settled(grace):
            self._log.error(
                "could not record every outcome before exit; their leases will expire",
                unrecorded=len(self._held),
            )
        hooks = self._executing - late  # after_task hooks still running
        if hooks:
            now = time.monotonic()
            since_stop = 0.0 if self._stopped_at is None else now - self._stopped_at
            await asyncio.wait(hooks, timeout=after_task_wait(s.drain_seconds, since_stop))
        with contextlib.suppress(*REDIS_FAILURES, TimeoutError):
            async with asyncio.timeout(s.redis_timeout_seconds):
                await self._rt(self.queue.requeue_owner(self.worker_id, reason="worker stopped"))
        self._log.info("worker stopped", released=len(unfinished), done=self.info.done,
                       failed=self.info.failed)

    async def _settled(self, grace: float) -> bool:
        """Wait until Redis has recorded every outcome (flushes and reports)."""
        self._flush_wanted.set()
        deadline = time.monotonic() + grace
        while self._held or self._reports:
            if time.monotonic() > deadline:
                return False
            if self._reports:
                await asyncio.wait(list(self._reports), timeout=0.05)
            else:
                await asyncio.sleep(0.01)
        return True

    # -- state -----------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state == self.info.state:
            return
        self.info.state = state
        self.health.state = state
        self._fetch_wake.set()
        self._state_changed.set()
        self._beat_now.set()
        if state in (DRAINING, DRAINED, RUNNING) and self._started.is_set():
            self._log.info("state changed", state=state, in_flight=len(self._runs))

    def _on_drain_flag(self, requested: bool) -> None:
        if requested and self.state == RUNNING:
            self._set_state(DRAINING)
            self._maybe_drained()
        elif not requested and self.state in (DRAINING, DRAINED):
            self._set_state(RUNNING)

    def _maybe_drained(self) -> None:
        if self.state == DRAINING and not self._runs and not self._held:
            self._set_state(DRAINED)

    def _redis_ok(self) -> None:
        if not self.health.redis_ok and self._started.is_set():
            self._log.info("redis reachable again")
        self.health.redis_up()
        if self._reachable_since is None:
            self._reachable_since = time.monotonic()

    def _redis_failed(self, exc: BaseException, during: str, *, log: bool = False) -> None:
        """Count a failed request; log only when Redis was reachable until now (or `log`).
        A request refused because Redis is full is no sign of an unreachable Redis."""
        self.metrics.redis_errors.inc()
        if redis_full(exc):
            self._redis_full(exc, during)
            return
        self._reachable_since = None
        refused = auth_failure(exc, url=self.settings.redis_url,
                               password_place=PASSWORD_PLACE)
        error = refused or redis_error(exc, self.settings.redis_url)
        if self.health.redis_ok or log:
            self._log.warning("redis refused the worker" if refused else "redis unreachable",
                              during=during, redis=self.settings.safe_redis_url, error=error)
        self.health.redis_down(refused or f"redis unreachable: {error}")

    def _redis_full(self, exc: BaseException, during: str) -> None:
        """Redis refused a write for being full: it answered (reachable), and it will refuse
        claims, events and checkpoints until memory is freed. Logged once per episode."""
        self._redis_ok()
        if self._full is not None:
            self._full.refused[during] += 1
            return
        self._full = _FullEpisode(time.monotonic(), Counter({during: 1}))
        self._log.warning(FULL_MESSAGE, refused=during, runs_in_progress=len(self._runs),
                          redis=self.settings.safe_redis_url, error=str(exc).split(".")[0],
                          meanwhile="runs in progress go on and their outcomes are recorded; "
                          "their events wait, checkpoints are not saved")
        self.health.redis_full(FULL_READY_REASON)

    def _redis_room(self) -> None:
        """A write that a full Redis refuses went through: the episode is over."""
        full, self._full = self._full, None
        if full is None:
            return
        self._log.info("Redis has room again: claiming new tasks",
                       full_seconds=round(time.monotonic() - full.since, 1),
                       refused=dict(sorted(full.refused.items())),
                       events_dropped=full.events_dropped,
                       checkpoints_not_saved=full.checkpoints_not_saved)
        self.health.redis_full("")
        self._outbox.release_held()

    async def _configure(self) -> None:
        s = self.settings
        await self._rt(self.queue.configure(max_attempts=s.max_attempts,
                                            result_ttl=s.result_ttl_seconds))
        self._configured = True

    async def _rt(self, call: Awaitable[T]) -> T:
        """One counted round trip to Redis."""
        self.metrics.round_trips.inc()
        return await call

    # -- background loops ------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            self.health.tick()
            self._note_busy()
            self._watch_stuck()
            await asyncio.sleep(TICK_SECONDS)
            self._note_stall(time.monotonic() - self.health.last_tick)

    def _note_stall(self, stalled: float) -> None:
        """Log a stall of the event loop that /livez would report (one tick, one line): the
        kubelet may restart the container for it, and nothing else says why."""
        if stalled > self.settings.loop_stall_seconds:
            self._log.warning(
                f"event loop was blocked for {stalled:.1f} s (an async handler that blocks? "
                "a sync one holding the GIL?)", blocked_seconds=round(stalled, 1),
                loop_stall_seconds=self.settings.loop_stall_seconds, in_flight=len(self._runs))

    def _note_busy(self) -> None:
        """Tell the probes whether a restart would lose something: runs not over (abandoned
        threads are not runs any more) or outcomes Redis has not recorded. Kept current
        where either grows (a claim); the ticker catches up where they shrink."""
        self.health.busy = len(self._executing) + len(self._held)

    def _watch_stuck(self) -> None:
        """Log once when /livez starts failing because the worker is stuck for good."""
        reason = self.health.restart_due(time.monotonic())
        if bool(reason) == self._restart_due:
            return
        self._restart_due = bool(reason)
        if reason:
            self._log.warning("stuck for good; /livez fails so that the container is restarted",
                              reason=reason, in_flight=len(self._runs),
                              abandoned_threads=self._abandoned)
        else:
            self._log.info("no longer stuck; /livez passes again")

    async def _heartbeat_loop(self) -> None:
        s = self.settings
        while True:
            self._beat_now.clear()
            await self._beat()
            due = time.monotonic() + s.heartbeat_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.heartbeat_seconds):
                    await self._beat_now.wait()
            self._note_late_beat(time.monotonic() - due)

    def _note_late_beat(self, late: float) -> None:
        s = self.settings
        if heartbeat_late(late, s.heartbeat_seconds, s.lease_seconds):
            self._log.warning(
                f"heartbeat {late:.1f} s late (lease {s.lease_seconds:g} s): a handler held "
                "the GIL or blocked the event loop", late_seconds=round(late, 1),
                lease_seconds=s.lease_seconds, in_flight=len(self._runs),
                meanwhile="the leases of the runs in progress may have run out")

    async def _beat(self) -> None:
        held = {task_id: task.token for task_id, task in self._held.items()}
        self.info.runs_since = tuple(sorted(task.claimed_ms for task in self._held.values()))
        self.info.not_ready = not_ready_reason(self.health)
        if self._limits is not None:
            self.info.limit_window = self._limits.window()
            for name, count in self._limits.lapsed().items():
                self._log.warning(
                    "slots of a limit lapsed while held (this process was frozen longer than "
                    "a hold lasts, or Redis lost them); taken again, over the cap until one "
                    "ends", limit=name, count=count)
        try:
            beat = await self._rt(self.queue.heartbeat(
                self.info, held, self.settings.lease_seconds,
                settings=(self.settings.max_attempts, self.settings.result_ttl_seconds)))
        except REDIS_FAILURES as exc:
            self._redis_failed(exc, "heartbeat")
            return
        finally:
            self.health.heartbeat_attempted()
        self._redis_ok()
        if beat.settings_restored and not self._configured:
            self._configured = True  # Redis was full at start: the heartbeat wrote them
        elif beat.settings_restored:
            self._log.warning(
                "the queue's settings were missing in Redis and are written again: Redis lost "
                "its data (a restart without persistence, a FLUSHALL, a failover to a replica "
                "that had not synced)", max_attempts=self.settings.max_attempts,
                result_ttl=self.settings.result_ttl_seconds, runs_held=len(held))
        for task_id in beat.lost:
            self._lose(task_id, held.get(task_id, ""))
        for task_id in beat.cancel:
            run = self._runs.get(task_id)
            if run is not None:
                run.stop(CANCELLED)
        if self.state != STOPPING:
            self._on_drain_flag(beat.drain_requested)
        if reap_due(beat.leases_overdue, self._reachable_for(), self.settings.lease_seconds):
            self._leases_overdue = beat.leases_overdue
            self._reap_due.set()
        if self._full is not None and (self._free == 0 or not self._claiming):
            await self._ask_room()

    async def _ask_room(self) -> None:
        """While Redis was full and the fetcher sends nothing it would refuse (every slot busy,
        a drain), ask whether it has room again: otherwise the worker would say it is full
        until a run ends."""
        try:
            room = await self._rt(self.queue.has_room())
        except REDIS_FAILURES as exc:
            self._redis_failed(exc, "room")
            return
        if room:
            self._redis_room()

    def _reachable_for(self) -> float:
        """How long Redis has answered this worker without a failure (0 while it does not)."""
        since = self._reachable_since
        return 0.0 if since is None else time.monotonic() - since

    async def _reap_loop(self) -> None:
        """Requeue the tasks whose lease ran out long ago: nobody reaped them (no operator
        runs, or it cannot reach this Redis), and a task must not wait for one for ever.

        Only once Redis has answered this worker for a whole lease: after an outage every
        lease has run out, and a live worker whose first heartbeat comes a moment later than
        this one's must find its tasks still its own (its heartbeat renews a lease that ran
        out but was not reaped). Off the heartbeat's path, one reap at a time."""
        while True:
            await self._reap_due.wait()
            self._reap_due.clear()
            try:
                reaped = await self._rt(self.queue.reap_expired())
            except REDIS_FAILURES as exc:
                self._redis_failed(exc, "reap")
                continue
            if reaped.total:
                self.metrics.leases_reaped.inc(reaped.total)
                self._log.warning(
                    "requeued tasks whose lease ran out long ago; is the operator running?",
                    overdue_seconds=round(self._leases_overdue, 1), requeued=reaped.requeued,
                    dead_lettered=reaped.dead_lettered, cancelled=reaped.cancelled,
                    holders=sorted(reaped.by_worker))

    async def _fetch_loop(self) -> None:
        s = self.settings
        backoff = _Backoff()
        wait_first = False
        next_due: float | None = None
        arrivals = ArrivalRate()
        while True:
            if self.state == STOPPING:
                return
            if not self._claiming or self._free == 0:
                if self._claim_uncertain and self.health.redis_ok:
                    await self._release_orphans()
                self._fetch_wake.clear()
                await self._fetch_wake.wait()
                continue
            # A waiting claim asks for one task: a waiter frozen while Redis runs its claim
            # holds back one task at most (see wait_and_claim).
            want = 1 if wait_first else min(self._free, s.claim_batch)
            sent = time.monotonic()
            try:
                if not self._configured:
                    await self._configure()
                if wait_first:
                    block = s.poll_seconds if next_due is None else min(s.poll_seconds, next_due)
                    batch = await self._interruptible(self._wait_queue.wait_and_claim(
                        self.worker_id, want, s.lease_seconds, block))
                    if batch is None:  # cut short by a stop or a drain: it may have claimed
                        self._claim_uncertain = True
                        continue
                else:
                    batch = await self._rt(self.queue.claim(self.worker_id, want,
                                                            s.lease_seconds))
            except REDIS_FAILURES as exc:
                if not redis_full(exc):  # refused for being full: not run
                    self._claim_uncertain = True
                self._redis_failed(exc, "claim")
                await _until(backoff.sleep(), self._stop_requested)
                wait_first = False
                continue
            backoff.reset()
            self._redis_ok()
            self._redis_room()
            tasks = batch.tasks
            if tasks and time.monotonic() - sent > s.heartbeat_seconds:
                tasks = await self._confirm(tasks)
            for task in tasks:
                self._start(task)
            if self._claim_uncertain:
                await self._release_orphans()
            wait_first = wait_before_next_claim(batch, want)
            next_due = batch.next_due_in
            arrivals.claimed(len(batch.tasks), time.monotonic())
            if wait_first and lingers(arrivals, s.claim_linger_seconds, self._free):
                await asyncio.sleep(s.claim_linger_seconds)
                wait_first = False

    async def _confirm(self, tasks: list[ClaimedTask]) -> list[ClaimedTask]:
        """Of the tasks of a claim whose reply was read late, those whose leases still hold
        (now extended), asked with a heartbeat before any of their runs starts.

        Late is more than a heartbeat interval (a third of the lease) after the claim was
        sent: the worker was frozen, starved of CPU or its loop blocked by a handler while the
        claim stood in Redis (a waiting claim waits up to pollSeconds, 1 s by default, before
        Redis runs it). A lease may then have run out and the task been claimed elsewhere;
        starting its run would redo the work beside the new holder (an agent's model calls
        and tool actions, which no fence stops). Those are dropped as lost. When Redis cannot
        say, the runs start and their next heartbeat decides."""
        for task in tasks:
            self._held[task.id] = task
        self._note_busy()
        self._confirming = {task.id for task in tasks}
        try:
            await self._beat()
        finally:
            self._confirming = set()
        return [task for task in tasks if self._held.get(task.id) is task]

    async def _interruptible(self, call: Awaitable[T]) -> T | None:
        """A blocking wait that a state change (stop, drain) cuts short (then None)."""
        self._state_changed.clear()
        self.metrics.round_trips.inc()
        request = asyncio.ensure_future(call)
        nudged = asyncio.ensure_future(self._state_changed.wait())
        try:
            await asyncio.wait([request, nudged], return_when=asyncio.FIRST_COMPLETED)
        finally:
            nudged.cancel()
            if not request.done():
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, *REDIS_FAILURES):
                    await request
        return None if request.cancelled() else request.result()

    async def _release_orphans(self) -> None:
        """Hand back tasks Redis leased to this worker in a claim whose reply never came
        (connection lost, or the wait cut short), without spending an attempt."""
        try:
            owned = await self._rt(self.queue.held_by(self.worker_id))
            orphans = owned - self._held.keys()
            for task_id in orphans:
                token, owner = await self._rt(self._redis.hmget(
                    self.queue.task_key(task_id), ["token", "owner"]))
                if token is None or owner is None or _text(owner) != self.worker_id:
                    continue
                orphan = ClaimedTask(task_id, _text(token), 0, 0, "", 0, 0)
                await self._rt(self.queue.release(orphan, "claim reply lost"))
        except REDIS_FAILURES as exc:
            self._redis_failed(exc, "release orphans")
            return
        self._claim_uncertain = False
        if orphans:
            self._log.warning("released tasks whose claim reply was lost", count=len(orphans))

    async def _flush_loop(self) -> None:
        """Group commit: events and successes that arrived while the previous flush was on the
        wire go out together in the next one (events first, so a task's events are recorded
        before its outcome).

        When Redis refuses events for being full, the successes go alone (Redis takes them)
        and the events wait for room: offered again every FULL_RETRY_SECONDS (outbox.py), at
        once when a checkpoint or a report waits for them or another write shows Redis has
        room. A success's events that reach Redis after it are still put in its stream, ahead
        of its ``final`` event (events.lua)."""
        backoff = _Backoff()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._outbox.retry_in()):
                    await self._flush_wanted.wait()
            self._flush_wanted.clear()
            await self._flush(backoff)
            self._maybe_drained()

    async def _flush(self, backoff: _Backoff) -> None:
        """Send what may go now until nothing is left (events held back for a full Redis
        stay)."""
        while True:
            outbox = self._outbox
            with_events = outbox.may_go()
            if not with_events and not self._completions:
                return
            events: list[PendingEvent] = []
            call: str | None = None
            if with_events:
                sending = outbox.next_call()
                events, call = sending.events, sending.call
            batch: list[tuple[ClaimedTask, str]] = []
            # never a success ahead of its own events, unless Redis refuses those for being full
            if not with_events or not outbox.unsent or self._full is not None:
                batch = [c for c in self._completions[:MAX_FLUSH]
                         if self._held.get(c[0].id) is c[0]]
                del self._completions[:MAX_FLUSH]
            ids = [task.id for task, _ in batch]
            # The events of a run still held begin with a write that a full Redis refuses, so
            # their success shows it has room; those of a success recorded before them may go
            # through on a full Redis (events.lua), which shows nothing.
            room = any(self._held.get(task.id) is task for _, task, _, _ in events)
            self._reporting.update(ids)
            unreplicated = False
            try:
                recorded = await self._rt(self.queue.record(by_run(events), batch, call=call))
            except NotReplicated as exc:
                recorded, unreplicated = exc.result, True
            except REDIS_FAILURES as exc:
                # sent again (recording a success twice records it once)
                self._completions[:0] = batch
                if events and redis_full(exc):
                    self._redis_failed(exc, "events")
                    await outbox.refused()
                    continue  # the successes go alone now
                self._redis_failed(exc, "complete" if batch else "events")
                await backoff.sleep()
                continue
            finally:
                self._reporting.difference_update(ids)
            backoff.reset()
            self._redis_ok()
            if events:
                await outbox.taken()
                if room:
                    self._redis_room()
            if unreplicated:
                # on the primary only: sent again, still held, until a replica has it
                self._completions[:0] = batch
                self._log.warning("completions not yet on a replica; sending them again",
                                  count=len(batch), timeout=self.queue.replica_timeout)
                continue
            held = self._held
            for task, _ in batch:
                if held.get(task.id) is task:
                    del held[task.id]
            fenced = [i for i, ok in zip(ids, recorded, strict=True) if not ok]
            self.metrics.succeeded.inc(len(ids) - len(fenced))
            self.info.done += len(ids) - len(fenced)
            if fenced:
                self.metrics.lost.inc(len(fenced))
                self._log.warning(
                    "completion refused: the task is no longer held by this worker",
                    count=len(fenced), tasks=fenced[:10],
                )

    # -- what handlers call through their TaskContext ---------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def limits(self) -> WorkerLimits | None:
        return self._limits

    async def checkpoint(self, ctx: TaskContext, raw: str) -> None:
        """Save a run's checkpoint (ctx.checkpoint), after the events emitted so far.

        While Redis cannot be reached it waits for Redis, as the run's outcome would. When Redis
        refuses it for being full (or refuses the events before it), it is not saved and the
        call returns: the run goes on (Redis takes its outcome, and a later checkpoint once
        there is room); should the attempt be lost, the next one resumes from the last
        checkpoint Redis took. Logged once per run. Raises LeaseLost only, as ever, when the
        run is over or Redis says another run holds the task."""
        run = self._runs.get(ctx.task_id)
        if run is None or run.ctx is not ctx or not _may_checkpoint(run):
            raise LeaseLost(f"task {ctx.task_id}: this run is over; checkpoint not saved")
        task = run.task
        if not await self._outbox.wait_recorded():
            self._checkpoint_not_saved(run)
            return
        backoff = _Backoff()
        while True:
            try:
                saved = await self._rt(self.queue.checkpoint(task, raw))
                break
            except REDIS_FAILURES as exc:
                self._redis_failed(exc, "checkpoint")
                if redis_full(exc):
                    self._checkpoint_not_saved(run)
                    return
                if not _may_checkpoint(run):
                    raise LeaseLost(f"task {task.id}: run stopped; checkpoint not saved") from exc
                await backoff.sleep()
        self._redis_ok()
        self._redis_room()
        if saved:
            self.metrics.checkpoints.inc()
            return
        self.metrics.checkpoints_refused.inc()
        self._log.warning("checkpoint refused: the task is no longer held by this worker",
                          task=task.id, attempt=task.attempts)
        run.stop(LOST, interrupt=False)
        if self._held.get(task.id) is task and task.id not in self._reporting:
            del self._held[task.id]
            self.metrics.lost.inc()
        raise LeaseLost(f"task {task.id} is held by another run now; checkpoint refused")

    async def submit(self, ctx: TaskContext, payload: Any, *, queue: str | None = None,
                     **options: Any) -> str:
        """A run's ``ctx.submit``, on the pool's queue (or another it may submit to) and
        connections (sent again while Redis cannot be reached: the submit carries an
        idempotency key)."""
        target = self._queue_to_submit_to(queue)
        task_id = await self._for_run(ctx, "submit", lambda: target.submit(payload, **options))
        metrics.SUBMITTED.labels(self.settings.queue, target.name).inc()
        return task_id

    async def submit_many(self, ctx: TaskContext, payloads: list[Any], *,
                          queue: str | None = None, **options: Any) -> list[str]:
        """A run's ``ctx.submit_many`` (sent again while Redis cannot be reached: each task
        carries an idempotency key)."""
        target = self._queue_to_submit_to(queue)
        ids = await self._for_run(ctx, "submit_many",
                                  lambda: target.submit_many(payloads, **options))
        metrics.SUBMITTED.labels(self.settings.queue, target.name).inc(len(ids))
        return ids

    async def wait_many(self, ctx: TaskContext, task_ids: list[str], queue: str,
                        timeout: float | None) -> list[TaskInfo]:
        """A run's ``ctx.wait_many``: tasks of another queue the pool submits to, waited for on
        the worker's waiting client (its subscriptions take no connection the claims,
        heartbeats and completions share). The wait rides out lost connections itself; its
        TimeoutError (saying how many of the tasks were not final, and whether Redis stopped
        answering; redis-py's own when Redis stops answering before the wait's first read
        and its socket timeout comes first), TaskNotFound or a refusal
        is the run's to handle. LeaseLost once the run is over or told to stop."""
        self._run_going(ctx, "wait_many")
        name = self._queue_to_submit_to(queue).name
        waits = self._other_waits.get(name)
        if waits is None:
            waits = self._other_waits[name] = TaskQueue(self._wait_redis, name)
        self.metrics.round_trips.inc()
        ids = list(dict.fromkeys(task_ids))
        infos: dict[str, TaskInfo] = {}
        async with contextlib.aclosing(waits.as_finished(ids, timeout)) as finished:
            async for info in finished:
                infos[info.id] = info
        return [infos[task_id] for task_id in ids]

    def _queue_to_submit_to(self, name: str | None) -> TaskQueue:
        """The pool's queue, or one of the other queues its settings list (submits_to)."""
        s = self.settings
        if name is None or name == s.queue:
            return self.queue
        if name not in s.other_queues:
            listed = ", ".join(s.other_queues) or "none"
            raise QueueNotListed(
                f"queue {name!r} is not one this pool submits to (listed: {listed}): add it "
                "to the pool's spec.worker.submitsTo (AGENTPOOL_SUBMITS_TO)")
        queue = self._other_queues.get(name)
        if queue is None:
            queue = self._other_queues[name] = TaskQueue(
                self._redis, name, durability=s.durability,
                replica_timeout=s.replica_timeout_seconds)
        return queue

    async def results_before(self, ctx: TaskContext) -> dict[str, Any]:
        """A run's ``ctx.results_before()``."""
        return await self._for_run(ctx, "results_before",
                                   lambda: self.queue.results_of(ctx.after))

    def _run_going(self, ctx: TaskContext, what: str) -> None:
        """LeaseLost unless the run of `ctx` goes on (or its ``after_task`` hook runs, the run
        over on its own): once it is over (returned, failed, timed out, dead-lettered) or
        told to stop (cancelled, its lease lost, handed back), what it submits or waits for
        would outlive it (a sync planner that ignores ``ctx.cancelled``, a background task
        the handler left behind)."""
        if self._hooked.get(ctx.task_id) is ctx:
            return
        run = self._runs.get(ctx.task_id)
        if run is None or run.ctx is not ctx or run.stop_reason is not None:
            raise LeaseLost(f"task {ctx.task_id}: this run is over or stopping; "
                            f"ctx.{what} refused")

    async def _for_run(self, ctx: TaskContext, what: str,
                       call: Callable[[], Awaitable[T]]) -> T:
        """A call a run makes while it goes on (else LeaseLost), tried again while Redis cannot
        be reached (as the run's outcome would be) until it answers or the run is over
        (LeaseLost). Redis's refusals (a full Redis, a permission) are the run's to handle."""
        self._run_going(ctx, what)
        backoff = _Backoff()
        while True:
            try:
                result = await self._rt(call())
            except REDIS_FAILURES as exc:
                if isinstance(exc, ResponseError) and not isinstance(exc, TRANSIENT_REFUSALS):
                    raise
                self._redis_failed(exc, what)
                run = self._runs.get(ctx.task_id)
                if run is None or run.ctx is not ctx or run.stop_reason is not None:
                    raise LeaseLost(f"task {ctx.task_id}: this run is over") from exc
                await backoff.sleep()
                continue
            self._redis_ok()
            return result

    def _checkpoint_not_saved(self, run: _Run) -> None:
        if self._full is not None:
            self._full.checkpoints_not_saved += 1
        if not run.unsaved:
            run.unsaved = True
            self._log.warning("checkpoint not saved: Redis is full; the run goes on",
                              task=run.task.id, attempt=run.task.attempts)

    async def emit(self, ctx: TaskContext, kind: str, raw: str) -> None:
        outbox = self._outbox
        if len(outbox.unsent) >= MAX_PENDING_EVENTS and (
                self._full is not None or not await outbox.wait_recorded(
                    outbox.seq - MAX_PENDING_EVENTS // 2)):
            # Redis is full and refuses them: drop this one rather than hold the run up
            full = self._full
            if full is not None and not full.capped:
                full.capped = True
                self._log.warning("events dropped: Redis is full and too many wait for room",
                                  task=ctx.task_id, waiting=len(outbox.unsent))
            if full is not None:
                full.events_dropped += 1
            return
        run = self._runs.get(ctx.task_id)
        if run is None or run.ctx is not ctx:
            return  # the run is over (an abandoned thread): its events would be a zombie's
        outbox.add(run.task, kind, raw)
        self.metrics.events.inc()
        self._flush_wanted.set()

    # -- running tasks ---------------------------------------------------------------------

    def _start(self, task: ClaimedTask) -> None:
        ctx = TaskContext(task.id, task.attempts, task.max_attempts,
                          self.settings.queue, self.worker_id, state=self.worker_ctx.state,
                          checkpoint_state=_checkpoint(task),
                          timeout_seconds=run_timeout(task, self.settings.task_timeout_seconds),
                          channel=self, after=task.after, tenant=task.tenant)
        run = _Run(task, ctx)
        earlier = self._runs.get(task.id)
        if earlier is not None:
            # Claimed again after its lease was lost (a Redis outage, a stalled loop): the
            # earlier run's token is dead; stop it, and keep books by claim, not by id.
            earlier.stop(LOST)
        self._free -= 1
        if self._limits is not None:
            self._limits.runs_changed(+1)
        if self._held.get(task.id) not in (None, task) and task.id not in self._reporting:
            # the earlier claim's outcome will never be recorded (one on its way to Redis is
            # counted when Redis refuses it)
            self.metrics.lost.inc()
        self._held[task.id] = task
        self._runs[task.id] = run
        self.metrics.started.inc()
        self.metrics.in_flight.inc()
        self.metrics.wait.observe(task.wait_seconds)
        if self._debug:
            self._log.debug("task started", task=task.id, attempt=task.attempts,
                            waited_seconds=round(task.wait_seconds, 3))
        run.worker_task = asyncio.create_task(self._execute(run))
        self._executing.add(run.worker_task)
        run.worker_task.add_done_callback(self._executing.discard)
        self._note_busy()

    async def _execute(self, run: _Run) -> None:
        task = run.task
        began = time.monotonic()
        outcome: TaskOutcome | None = None

        def ended(status: str, *, retryable: bool = False, **details: Any) -> TaskOutcome:
            return TaskOutcome(status, time.monotonic() - began,
                               retryable=another_attempt(retryable, task), **details)

        try:
            try:
                payload = json.loads(task.payload_raw)
            except (ValueError, RecursionError) as exc:
                failure = self._report_failure(
                    run, RunFailure(f"malformed payload (not JSON): {exc}", False))
                outcome = ended("failed", error=failure.error)
                return
            try:
                async with asyncio.timeout(run.ctx.timeout_seconds) as deadline:
                    result = await self._call(run, payload)
                    if inspect.iscoroutine(result):  # a plain wrapper around an async function
                        result = await result
            except asyncio.CancelledError:
                this = asyncio.current_task()
                assert this is not None
                if run.stop_reason is None:
                    if this.cancelling():
                        raise  # the worker itself is being stopped
                    # the handler's own: a call it awaited was cancelled by someone else
                    error = "CancelledError: an operation the handler awaited was cancelled"
                    self._report_failure(run, RunFailure(error, True))
                    outcome = ended("failed", error=error, retryable=True)
                    return
                if this.cancelling():
                    this.uncancel()
                self._stopped(run)
                outcome = ended(STOPPED_STATUS[run.stop_reason])
                return
            except BaseException as exc:
                # A handler's own sys.exit(), KeyboardInterrupt or BaseException subclass ends
                # its run, not the worker: the worker's signals come through its event loop.
                if run.stop_reason is not None:
                    self._stopped(run)
                    outcome = ended(STOPPED_STATUS[run.stop_reason])
                    return
                failure = self._report_failure(run, run_failure(
                    exc, deadline.expired(), run.ctx.timeout_seconds, task,
                    self.settings.task_timeout_seconds))
                outcome = ended("failed", error=failure.error, retryable=failure.retryable)
                return
            if run.stop_reason is not None:  # e.g. it returned after a LeaseLost
                self._stopped(run)
                outcome = ended(STOPPED_STATUS[run.stop_reason])
                return
            if deadline.expired():  # it returned, but only once its timeout had cancelled it
                failure = self._report_failure(run, run_failure(
                    None, True, run.ctx.timeout_seconds, task,
                    self.settings.task_timeout_seconds))
                outcome = ended("failed", error=failure.error, retryable=failure.retryable)
                return
            try:
                encoded = encode_result(unstreamed(result), self.settings.max_result_bytes)
            except Exception as exc:  # not JSON, too large, a generator
                error = "result not stored: " + (
                    str(exc) if isinstance(exc, ValueError) else describe_briefly(exc))
                if isinstance(exc, PayloadTooLarge):
                    error += RESULT_TOO_LARGE_HINT
                failure = self._report_failure(run, RunFailure(error, False))
                outcome = ended("failed", error=failure.error, retryable=False)
                return
            self._completions.append((task, encoded))
            self._flush_wanted.set()
            outcome = ended("succeeded", result=result)
        finally:
            took = time.monotonic() - began
            self.metrics.duration.observe(took)
            if self._debug:
                self._log.debug("task ended", task=task.id, attempt=task.attempts,
                                outcome=outcome.status if outcome is not None else "interrupted",
                                duration_seconds=round(took, 3))
            if self._limits is not None:
                self._limits.runs_changed(-1)
            if self._runs.get(task.id) is run:
                del self._runs[task.id]
            if outcome is not None:
                await self._after_task(run.ctx, outcome)
            thread = run.thread
            if thread is not None and not thread.done():
                self._abandoned += 1
                self._slots_checked()
                thread.add_done_callback(self._thread_returned)
            else:
                self._release_slot()

    def _call(self, run: _Run, payload: Any) -> Awaitable[Any]:
        handler, ctx = self.handler, run.ctx
        args = (payload, ctx) if handler.wants_context else (payload,)
        if handler.is_async:
            coro: Awaitable[Any] = handler.func(*args)
            return coro
        assert self._executor is not None
        future = self._executor.submit(handler.func, *args)
        run.thread = future
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        return asyncio.wrap_future(future)

    def _thread_returned(self, _: Future[Any]) -> None:
        """An abandoned sync run's thread returned (called in that thread): free its slot."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed at exit
            self._loop.call_soon_threadsafe(self._abandoned_returned)

    def _abandoned_returned(self) -> None:
        self._abandoned -= 1
        self._release_slot()
        self._slots_checked()

    def _slots_checked(self) -> None:
        """Not ready while every slot is held by a thread that was given up on: such a worker
        can claim nothing, maybe for ever. It still heartbeats, so the operator's recovery
        leaves the pod alone; /readyz and the log say why, and once it has lasted
        ``stuck_restart_seconds`` /livez fails and the kubelet restarts the container (see
        :meth:`_watch_stuck`). Those runs were reported or handed back already: a restart
        loses nothing."""
        stuck = self._free == 0 and self._abandoned >= self.settings.concurrency
        if stuck == bool(self.health.slots_error):
            return
        if stuck:
            self._log.warning("every slot is held by a stopped run whose thread has not "
                              "returned; not ready", slots=self.settings.concurrency)
            self.health.slots_stuck(
                f"all {self.settings.concurrency} slots are held by stopped runs whose "
                "threads have not returned (a sync handler that ignores ctx.cancelled)")
        else:
            self._log.info("a stopped run's thread returned; a slot is free again")
            self.health.slots_stuck("")

    def _release_slot(self) -> None:
        self._free += 1
        self.metrics.in_flight.dec()
        self._fetch_wake.set()
        if self.state == DRAINING:
            self._maybe_drained()

    def _lose(self, task_id: str, token: str) -> None:
        """The lease of this claim is gone (reaped, requeued): stop the run, never report it."""
        task = self._held.get(task_id)
        if task is None or task.token != token or task_id in self._reporting:
            return
        del self._held[task_id]
        self.metrics.lost.inc()
        run = self._runs.get(task_id)
        if run is not None and run.task is not task:
            run = None
        self._log.warning("lease lost; abandoning the task", task=task_id,
                          run=self._lost_run(task, run))
        if run is not None:
            run.stop(LOST)
        self._maybe_drained()

    def _lost_run(self, task: ClaimedTask, run: _Run | None) -> str:
        """What becomes of the run of a task whose lease was lost, for the log line."""
        if run is not None:
            return "stopped"
        if task.id in self._confirming:
            return "not started"
        if any(done is task for done, _ in self._completions):
            return "had succeeded; its result is not recorded"
        return "had ended; its outcome is not recorded"

    def _report_failure(self, run: _Run, failure: RunFailure) -> RunFailure:
        """Report a failed run: retried after the delay its failure asked for (else the
        worker's backoff) while attempts remain. Its error is logged, stored and returned
        with the credentials of any URL in it masked (a connection error quoting the URL it
        failed on, a git command's stderr)."""
        failure = replace(failure, error=mask_urls(failure.error))
        task = run.task
        if failure.timed_out:
            run.ctx.cancelled.set()
        self._log.warning("task failed", task=task.id, attempt=task.attempts,
                          retryable=failure.retryable, error=failure.error.splitlines()[0][:500])
        delay = failure.retry_after
        if delay is None:
            s = self.settings
            delay = retry_delay(task.attempts, base=s.retry_backoff_base_seconds,
                                cap=s.retry_backoff_cap_seconds)
        self._report(task, lambda: self.queue.fail(task, failure.error,
                                                   retryable=failure.retryable, delay=delay),
                     failure)
        return failure

    def _stopped(self, run: _Run) -> None:
        task = run.task
        if run.reported:
            return
        if run.stop_reason == CANCELLED:
            run.reported = True
            self._report(task, lambda: self.queue.cancelled(task))
        elif run.stop_reason == RELEASE:
            run.reported = True
            self._report(task, lambda: self.queue.release(task, "worker shutting down"))

    def _report(self, task: ClaimedTask, send: Callable[[], Awaitable[FailOutcome]],
                failure: RunFailure | None = None) -> None:
        report = asyncio.create_task(self._send_report(task, send, failure))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)

    async def _send_report(self, task: ClaimedTask, send: Callable[[], Awaitable[FailOutcome]],
                           failure: RunFailure | None) -> None:
        """Record a failure, cancel or release once the events emitted so far are recorded;
        at once when Redis refuses those for being full (it takes the outcome): the run's own
        events are then lost, as Redis would refuse them after its outcome."""
        if not await self._outbox.wait_recorded():
            dropped = await self._outbox.drop(task)
            if dropped:
                if self._full is not None:
                    self._full.events_dropped += dropped
                self._log.warning("the run's events were not recorded: Redis is full",
                                  task=task.id, attempt=task.attempts, events=dropped)
        backoff = _Backoff()
        while self._held.get(task.id) is task:
            self._reporting.add(task.id)
            try:
                outcome = await self._rt(send())
            except REDIS_FAILURES as exc:
                self._redis_failed(exc, "report")
                await backoff.sleep()
                continue
            finally:
                self._reporting.discard(task.id)
            self._redis_ok()
            if self._held.get(task.id) is task:
                del self._held[task.id]
            self._count(task, outcome, failure)
            break
        self._maybe_drained()

    def _count(self, task: ClaimedTask, outcome: FailOutcome,
               failure: RunFailure | None) -> None:
        """Count what Redis recorded of a run's report (`failure`: the run failed)."""
        m = self.metrics
        if failure is not None and outcome in FAILURE_RECORDED:
            m.failed.inc()
            self.info.failed += 1
            if failure.timed_out:
                m.timed_out.inc()
        if outcome is FailOutcome.RETRY:
            m.retried.inc()
        elif outcome is FailOutcome.DEAD:
            m.dead_lettered.inc()
            self._log.warning("task dead-lettered", task=task.id, attempt=task.attempts)
        elif outcome is FailOutcome.REQUEUED:
            m.requeued.inc()
        elif outcome is FailOutcome.CANCELLED:
            m.cancelled.inc()
            self._log.info("task cancelled", task=task.id)
        elif outcome is FailOutcome.EXPIRED:
            self._log.info("task expired: no retry could start before its expiry", task=task.id)
        elif outcome is FailOutcome.STALE:
            m.lost.inc()
            self._log.warning("outcome refused: the task is no longer held by this worker",
                              task=task.id)


def _client(url: str, timeout: float) -> aioredis.Redis:
    return redis_from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
    )


def _checkpoint(task: ClaimedTask) -> Any:
    if task.checkpoint_raw is None:
        return None
    try:
        return json.loads(task.checkpoint_raw)
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _until(aw: Awaitable[Any], event: asyncio.Event) -> None:
    """Await `aw`, but give up early when `event` is set."""
    await _first(aw, event.wait())
