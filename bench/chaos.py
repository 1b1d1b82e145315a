"""Chaos soak: many tasks through real worker processes while workers and Redis misbehave.

    .venv/bin/python -m bench.chaos [--seed 1] [--tasks 20000] [--json]
    .venv/bin/python -m bench.chaos --sentinel [--durability replicated]  (bench/chaos_sentinel.py)
    .venv/bin/python -m bench.chaos --cluster [--durability replicated]   (bench/chaos_cluster.py)

N ``agentpool-worker`` processes (handler ``bench.chaos_handler:run``: the simulated agent
with every run on record) serve one queue on a private ``redis-server`` with AOF on. The
tasks are submitted at the start; meanwhile, on a schedule drawn from the seed:

- ``kill``: kill -9 a worker, then either the operator's path (after a short delay,
  ``TaskQueue.requeue_pod`` and a replacement pod of a new name) or a container restart (a new
  process under the same pod name, which returns its earlier instance's tasks itself);
- ``stop``: SIGSTOP a worker for longer than its lease, then SIGCONT: a zombie that wakes up
  after its tasks were reaped and claimed again. Besides these, ``--freezes`` tasks stop
  their own worker right after their work is done and before it is reported (see
  bench/chaos_handler.py); the soak resumes such a worker the same way, so its completion
  reaches Redis after the task was claimed again;
- ``drain``: SIGTERM a worker (a scale-down) and start a replacement;
- ``redis``: restart redis-server (SIGTERM, start again on the same AOF).

All along, ``reap_expired`` runs every 2 s (the operator's lease-expiry fallback, on every pass
of a pool's loop). The run
ends when every task is finished or ``--timeout`` passes. Printed, and checked:

- lost: tasks not finished (neither succeeded nor dead-lettered) at the end. Must be 0.
- zombie completions accepted: succeeded tasks whose result was written by a run other than
  the task's last claim (the result names its worker and attempt; the task keeps the last
  claimant's worker and attempt count). Must be 0.
- duplicate executions: runs beyond the first per task (from the handler's run records).
  Bound: a second run needs the first run's lease to be lost, which only happens to tasks
  held by a worker killed, stopped (or frozen) or drained, or in flight at a Redis restart;
  the soak adds up those holdings at each event (a killed or stopped worker's set is read
  once it is frozen; a drained worker counts its full concurrency). Must stay within it.
- late finishes fenced off: runs that finished after their task had been claimed again,
  outside killed workers (their completion was refused, or never sent); and the completions
  the fence refused, counted from the workers' own log lines.

With ``--plans K`` each task is a planner: its run submits K steps, a pause before each (so
that a kill can land between two submits), and a summary after them (``ctx.submit``). Then
also checked: the queue's submit counter holds exactly the planners and K + 1 tasks each
(another attempt of a planner got its earlier steps back), every task finished, and every
summary found all its steps' results.

With ``--chains L`` the tasks are submitted as chains of L, each task after the one before
(``submit(after=...)``); each run reads the results of the task it runs after
(``ctx.results_before()``). Then also checked: runs that started without that task's result
(released before it succeeded), and tasks cancelled though the one before them did not end
dead or cancelled. Both must be 0; a task left deferred counts as lost. With
``--requeue-dead-every S`` the dead letters are requeued every S seconds while the chaos lasts,
bringing back the tasks their deaths cancelled: the same checks hold, each requeued task may
run once more (the bound on runs beyond the first grows by as many), and the report counts
the tasks once cancelled that ended succeeded.

With ``--checkpoint-every K`` the handler is ``bench.chaos_handler:stepped`` instead: each task
runs ``--steps`` steps (``--mean-seconds`` in all) and checkpoints every K steps, resuming from
its last checkpoint after a lost run. Then also checked:

- wrong results: succeeded tasks whose result differs from an uninterrupted run's. Must be 0.
- work redone: steps executed beyond each task's own steps (every step is counted). Bound:
  K per lost run (runs of the task beyond the first), reported as total and worst per task.
- zombie checkpoints accepted: checkpoints accepted from a run although they were sent after
  the run of a later claim of the same task had started (claims ordered by attempt; the
  host's monotonic clock orders run starts and checkpoint sends; see ``zombie_checkpoints``
  and bench/chaos_handler.py). Here the ``--freezes`` tasks stop their
  worker right before their second checkpoint, so that it is sent by a zombie. Must be 0.
  Refused: Redis's counter.

The schedule, targets and task latencies come from ``--seed``; process timing does not, so
two runs of one seed meet the same events, not the same interleavings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentpool.acl import Role, acl_rules, password_hash, set_user
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer
from agentpool.urls import with_credentials
from bench.chaos_handler import (
    EARLY_KEY,
    FINISHED_KEY,
    RESUMED_KEY,
    RUNS_KEY,
    SAVED_KEY,
    SHORT_KEY,
    STEPS_KEY,
    expected_total,
    run_key,
)

ROOT = Path(__file__).resolve().parent.parent
HANDLER = "bench.chaos_handler:run"
STEPPED_HANDLER = "bench.chaos_handler:stepped"
QUEUE = "chaos"
KINDS = ("kill", "stop", "drain", "redis")
WEIGHTS = (0.4, 0.25, 0.2, 0.15)
REAP_EVERY = 2.0
"""The operator reaps expired leases on every pass of a pool's loop (pollSeconds, 2 s)."""
T = TypeVar("T")


PROGRESS_SECONDS = 5.0
"""How often the soak says how far it is (on stderr, with the events)."""


@dataclass(frozen=True)
class Options:
    tasks: int = 20_000
    workers: int = 4
    concurrency: int = 20
    mean_seconds: float = 0.4
    lease_seconds: float = 4.0
    max_attempts: int = 10
    event_gap: float = 3.0
    """Mean seconds between chaos events."""
    stop_at: float = 0.9
    """No new events once this fraction of the tasks has finished."""
    timeout: float = 1200.0
    seed: int = 1
    freezes: int = 6
    """Tasks that stop their own worker between finishing and reporting (first attempt)."""
    checkpoint_every: int = 0
    """0: the simulated agent; K: the stepped handler, checkpointing every K steps."""
    steps: int = 20
    chains: int = 0
    """0: independent tasks; L: chains of L tasks, each submitted to run after the one before
    (``submit(after=...)``)."""
    requeue_dead_every: float = 0.0
    """With --chains: every this many seconds while the chaos lasts, requeue every dead letter
    (as a person who mended the cause would), bringing back the tasks their deaths cancelled
    (0: never)."""
    plans: int = 0
    """0: tasks that work; K: planners, each submitting K steps and a summary after them from
    its run (``ctx.submit``)."""
    acl: bool = False
    """Workers and the producer connect as Redis ACL users confined to the queue (the rules
    the operator gives a pool's users); the reaper, standing for the operator, applies them
    again on every pass, as Redis forgets them on a restart."""
    sentinel: bool = False
    """Against a primary, a replica and three sentinels, with failovers as the only events
    (bench/chaos_sentinel.py)."""
    durability: str = "none"
    """With --sentinel: the producer's and the workers' durability (none or replicated)."""
    submit_rate: float = 0.0
    """With --sentinel: tasks submitted per second all along the run (0: 80% of capacity)."""
    replicas: int = 1
    """With --sentinel: replicas of the primary."""
    cluster: bool = False
    """Against three primaries with a replica each, failing the queue's primary over
    (bench/chaos_cluster.py); --durability and --submit-rate as with --sentinel."""
    tenants: int = 0
    """0: tasks without a tenant; N: task i is tenant ``t<i mod N>``'s."""
    tenant_cap: int = 0
    """With --tenants: every tenant's cap on runs at once (0: none), set before the submits;
    the soak samples each tenant's leased runs and the tasks parked for a cap."""


@dataclass(frozen=True)
class Event:
    at: float
    """Seconds after the submission finished."""
    kind: str
    target: int
    """Picks the worker slot (modulo the slots that can take this event)."""
    delay: float
    """kill: the operator's reaction time; stop: how long past the lease the worker sleeps."""
    same_pod: bool
    """kill: restart the container under the same pod name instead of replacing the pod."""


def plan_events(opts: Options) -> list[Event]:
    """The chaos schedule: every kind once in the first four events, then drawn by weight."""
    rng = random.Random(f"events:{opts.seed}")
    count = max(4, int(opts.timeout / opts.event_gap))
    kinds = rng.sample(KINDS, len(KINDS)) + rng.choices(KINDS, WEIGHTS, k=count - len(KINDS))
    events, at = [], 1.0
    for kind in kinds:
        events.append(Event(at=round(at, 3), kind=kind, target=rng.randrange(1 << 16),
                            delay=round(rng.uniform(0, 1), 3), same_pod=rng.random() < 0.5))
        at += rng.uniform(0.5, 1.5) * opts.event_gap
    return events


@dataclass
class Slot:
    index: int
    generation: int = 0
    pod: str = ""
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False


@dataclass
class Tally:
    events: Counter[str] = field(default_factory=Counter)
    bound: int = 0
    killed: set[str] = field(default_factory=set)
    """Worker instances killed with kill -9."""
    log: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, opts: Options, logs: Path) -> None:
        self.opts = opts
        self.logs = logs
        self.server = RedisServer(appendonly=True)
        self.slots = [Slot(i) for i in range(opts.workers)]
        self.tally = Tally()
        self.started = time.monotonic()
        self.children: list[subprocess.Popen[bytes]] = []
        self.pods: dict[int, str] = {}
        self.paused: set[int] = set()
        """Worker pids stopped now, with a SIGCONT scheduled."""
        self.redis: aioredis.Redis
        self.records: aioredis.Redis
        """Where the handler keeps its run records (bench/chaos_handler.py)."""
        self.queue: TaskQueue
        self.once_cancelled: set[str] = set()
        """With requeues of the dead letters: the tasks seen cancelled before one."""
        self.requeued = 0
        self.revived = 0
        self.most_leased = 0
        """With --tenants: the most runs of one tenant holding a lease at one sample."""
        self.most_capped = 0
        """With --tenants: the most tasks the figures said were parked for a cap."""
        self.passwords = {role: f"chaos-{role.value}-{random.Random(opts.seed).getrandbits(64):x}"
                          for role in Role}

    def note(self, message: str) -> None:
        line = f"{time.monotonic() - self.started:7.2f}s {message}"
        self.tally.log.append(line)
        print(line, file=sys.stderr, flush=True)

    # -- workers ---------------------------------------------------------------------------

    def spawn(self, slot: Slot, *, new_pod: bool = True) -> None:
        if new_pod or not slot.pod:
            slot.generation += 1
            slot.pod = f"chaos-{slot.index}-{slot.generation}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                        str(ROOT)])),
            "AGENTPOOL_REDIS_URL": self.url_of(Role.WORKER), "AGENTPOOL_QUEUE": QUEUE,
            "CHAOS_RECORD_URL": self.server.url,
            "AGENTPOOL_HANDLER": STEPPED_HANDLER if self.opts.checkpoint_every else HANDLER,
            "AGENTPOOL_CONCURRENCY": str(self.opts.concurrency),
            "AGENTPOOL_POD_NAME": slot.pod, "AGENTPOOL_PORT": "0",
            "AGENTPOOL_LEASE_SECONDS": str(self.opts.lease_seconds),
            "AGENTPOOL_MAX_ATTEMPTS": str(self.opts.max_attempts),
            "AGENTPOOL_DRAIN_SECONDS": "1", "AGENTPOOL_LOG_LEVEL": "warning",
            **self.extra_env(),
        }
        script = Path(sys.executable).parent / "agentpool-worker"
        argv = [str(script)] if script.exists() else [sys.executable, "-m",
                                                       "agentpool_worker.main"]
        with (self.logs / f"{slot.pod}.log").open("ab") as out:
            slot.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT)
        slot.stopped = False
        self.children.append(slot.process)
        self.pods[slot.process.pid] = slot.pod

    def extra_env(self) -> dict[str, str]:
        return {}

    async def sample_tenants(self) -> None:
        """Each tenant's runs that hold a lease now, and the tasks parked for a cap: a lease is
        taken only by a claim that found room under the cap, so no sample may exceed it."""
        leased = await self.redis.zrange(self.queue.prefix + "leases", 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in leased:
                pipe.hget(self.queue.task_key(_text(task_id)), "tenant")
            tenants = Counter(await pipe.execute())
        self.most_leased = max(self.most_leased, *tenants.values(), 0)
        self.most_capped = max(self.most_capped, (await self.queue.figures()).capped)

    async def held_by_pod(self, pod: str) -> tuple[int, list[str]]:
        """Tasks held by the pod's registered instances, and those instances."""
        async def count() -> tuple[int, list[str]]:
            total, instances = 0, []
            for member in await self.redis.zrange(self.queue.prefix + "workers", 0, -1):
                wid = _text(member)
                if wid.rpartition(":")[0] == pod:
                    instances.append(wid)
                    total += len(await self.queue.held_by(wid))
            return total, instances

        return await self.patient(count)

    async def patient(self, call: Callable[[], Awaitable[T]], patience: float = 60.0) -> T:
        """Retry a Redis call while the server is away (it restarts during the soak)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return await call()
            except (RedisError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    # -- events ----------------------------------------------------------------------------

    def pick(self, event: Event) -> Slot | None:
        ready = [s for s in self.slots if not s.stopped and s.process is not None]
        return ready[event.target % len(ready)] if ready else None

    async def apply(self, event: Event, background: set[asyncio.Task[Any]]) -> None:
        if event.kind == "redis":
            in_flight = await self.patient(lambda: self.redis.zcard(self.queue.prefix + "leases"))
            self.tally.bound += in_flight
            self.note(f"redis restart ({in_flight} tasks in flight)")
            await asyncio.to_thread(self.server.restart)
            self.tally.events["redis"] += 1
            return
        slot = self.pick(event)
        if slot is None or slot.process is None:
            return
        pod, process = slot.pod, slot.process
        if event.kind == "kill":
            process.kill()
            await asyncio.to_thread(process.wait)
            held, instances = await self.held_by_pod(pod)
            self.tally.bound += held
            self.tally.killed.update(instances)
            if event.same_pod:
                self.note(f"kill -9 {pod} ({held} held); container restart, same pod")
                self.spawn(slot, new_pod=False)
            else:
                self.note(f"kill -9 {pod} ({held} held); operator requeues after "
                          f"{event.delay:.2f}s, new pod")
                await asyncio.sleep(event.delay)
                result = await self.patient(lambda: self.queue.requeue_pod(pod,
                                                                           reason="pod killed"))
                self.note(f"requeue_pod({pod}): {result.requeued} requeued, "
                          f"{result.dead_lettered} dead-lettered")
                self.spawn(slot)
        elif event.kind == "stop":
            process.send_signal(signal.SIGSTOP)
            await self.pause(process, background, "SIGSTOP", event.delay)
        elif event.kind == "drain":
            process.send_signal(signal.SIGTERM)
            self.tally.bound += self.opts.concurrency
            self.note(f"SIGTERM {pod} (drain); replacement pod")
            background.add(asyncio.create_task(asyncio.to_thread(process.wait)))
            self.spawn(slot)
        self.tally.events[event.kind] += 1

    async def pause(self, process: subprocess.Popen[bytes], background: set[asyncio.Task[Any]],
                    how: str, extra: float = 0.0) -> None:
        """A stopped worker: count what it holds, resume it once its leases are gone."""
        self.paused.add(process.pid)
        slot = next((s for s in self.slots if s.process is process), None)
        if slot is not None:
            slot.stopped = True
        pod = self.pods[process.pid]
        held, _ = await self.held_by_pod(pod)
        self.tally.bound += held
        pause = self.opts.lease_seconds * 1.5 + 2 * REAP_EVERY + extra * 3
        self.note(f"{how} {pod} ({held} held) for {pause:.1f}s")
        background.add(asyncio.create_task(self.resume(process, pause)))

    async def resume(self, process: subprocess.Popen[bytes], pause: float) -> None:
        await asyncio.sleep(pause)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        self.paused.discard(process.pid)
        for slot in self.slots:
            if slot.process is process:
                slot.stopped = False
        self.note(f"SIGCONT {self.pods[process.pid]}")

    async def thaw_watch(self, background: set[asyncio.Task[Any]]) -> None:
        """Find workers a freezing task stopped, and treat them like a SIGSTOP event."""
        for child in self.children:
            if child.pid in self.paused or child.poll() is not None:
                continue
            if _proc_state(child.pid) == "T":
                self.tally.events["freeze"] += 1
                await self.pause(child, background, "frozen by its task:")

    def url_of(self, role: Role) -> str:
        if not self.opts.acl:
            return self.server.url
        return with_credentials(self.server.url, f"chaos-{role.value}", self.passwords[role])

    async def apply_users(self) -> None:
        if self.opts.acl:
            for role in Role:
                await set_user(self.redis, f"chaos-{role.value}",
                               acl_rules(QUEUE, role, [password_hash(self.passwords[role])]))

    async def reaper(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                await self.apply_users()
                result = await self.queue.reap_expired()
                if result.total:
                    self.note(f"reap_expired: {result.requeued} requeued, "
                              f"{result.dead_lettered} dead-lettered")
            await asyncio.sleep(REAP_EVERY)

    async def finished(self) -> int:
        if self.opts.requeue_dead_every:
            # the counters keep the ends a requeue undid: count what still waits or runs
            figures = await self.queue.figures()
            return (figures.stats.get("submitted", 0) - figures.queued - figures.delayed
                    - figures.in_flight - figures.deferred)
        stats = await self.redis.hmget(self.queue.prefix + "stats",
                                       ["succeeded", "dead", "cancelled"])
        return sum(int(x or 0) for x in stats)

    async def requeue_dead_letters(self, ids: list[str]) -> None:
        """Requeue every dead letter; each may run once more (the bound on runs beyond the
        first grows by as many)."""
        states = await self.states(ids)
        self.once_cancelled.update(i for i, s in zip(ids, states, strict=True)
                                   if s == "cancelled")
        outcome = await self.queue.requeue_dead_counted()
        n = outcome.requeued
        self.requeued += n
        self.revived += outcome.revived
        self.tally.bound += n
        self.note(f"requeued {n} dead letters, {outcome.revived} tasks after them came back")

    async def states(self, ids: list[str]) -> list[str]:
        states: list[str] = []
        for start in range(0, len(ids), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids[start:start + 1000]:
                    pipe.hget(self.queue.task_key(task_id), "state")
                states += [_text(s) if s else "missing" for s in await pipe.execute()]
        return states

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        self.server.start()
        self.redis = aioredis.Redis.from_url(self.server.url, socket_timeout=5)
        self.records = self.redis
        self.queue = TaskQueue(self.redis, QUEUE)
        background: set[asyncio.Task[Any]] = set()
        producer = aioredis.Redis.from_url(self.url_of(Role.PRODUCER), socket_timeout=5)
        try:
            await self.apply_users()
            await self.queue.configure(max_attempts=opts.max_attempts)
            for slot in self.slots:
                self.spawn(slot)
            rng = random.Random(f"tasks:{opts.seed}")
            payloads: list[dict[str, Any]] = [
                {"mean_seconds": opts.mean_seconds, "seed": rng.randrange(1 << 30)}
                for _ in range(opts.tasks)
            ]
            if opts.checkpoint_every:
                payloads = [{"steps": opts.steps, "every": opts.checkpoint_every,
                             "step_seconds": opts.mean_seconds / opts.steps, "seed": p["seed"]}
                            for p in payloads]
            if opts.plans:
                payloads = [{**p, "plan": opts.plans} for p in payloads]
            for index in rng.sample(range(opts.tasks), min(opts.freezes, opts.tasks)):
                payloads[index]["freeze"] = True
            if opts.tenant_cap:
                await self.queue.set_tenant_caps({}, default=opts.tenant_cap)
            if opts.tenants:
                ids = await submit_as_tenants(TaskQueue(producer, QUEUE), payloads,
                                              opts.tenants)
            else:
                ids = await submit_chains(TaskQueue(producer, QUEUE), payloads, opts.chains)
            self.note(f"submitted {len(ids)} tasks")
            total = len(ids) * (opts.plans + 2 if opts.plans else 1)
            chaos_start = time.monotonic()
            reaper = asyncio.create_task(self.reaper())
            events = plan_events(opts)
            deadline = self.started + opts.timeout
            pending = list(events)
            done = 0
            next_progress = time.monotonic() + PROGRESS_SECONDS
            next_requeue = time.monotonic() + opts.requeue_dead_every
            while time.monotonic() < deadline:
                with contextlib.suppress(RedisError, OSError):
                    done = await self.finished()
                if done >= total:
                    break
                if time.monotonic() >= next_progress:
                    next_progress += PROGRESS_SECONDS
                    self.note(f"progress: {done} of {total} finished, "
                              f"{len(events) - len(pending)} of {len(events)} events applied")
                await self.thaw_watch(background)
                if opts.tenants:
                    with contextlib.suppress(RedisError, OSError):
                        await self.sample_tenants()
                chaos_lasts = bool(pending) and done < opts.stop_at * total
                if opts.requeue_dead_every and chaos_lasts and time.monotonic() >= next_requeue:
                    next_requeue += opts.requeue_dead_every
                    with contextlib.suppress(RedisError, OSError):
                        await self.requeue_dead_letters(ids)
                due = bool(pending) and time.monotonic() - chaos_start >= pending[0].at
                if due and chaos_lasts:
                    await self.apply(pending.pop(0), background)
                    continue
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - self.started
            self.note(f"{done} of {total} finished; stopping")
            reaper.cancel()
            # Every zombie has its say before the verdict: a paused worker is resumed and
            # stopped, and it has sent what it had (a late completion the fence must refuse)
            # once it has exited.
            await self.stop_workers()
            return await self.account(ids, elapsed)
        finally:
            for task in background:
                task.cancel()
            await self.stop_workers()
            await producer.aclose()
            await self.redis.aclose()
            self.server.close()

    async def stop_workers(self) -> None:
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGCONT)
                    child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                await asyncio.to_thread(child.wait, 15)
            except subprocess.TimeoutExpired:
                child.kill()
                await asyncio.to_thread(child.wait)

    def denied_in_logs(self) -> int:
        """Lines where Redis refused a worker a command or key (its ACL was too narrow)."""
        return sum(
            line.count("NOPERM") + line.count("no permissions")
            for path in self.logs.glob("*.log")
            for line in path.read_text(errors="replace").splitlines()
        )

    def refused_in_logs(self) -> int:
        """Completions the fence refused, as the workers logged them."""
        total = 0
        for path in self.logs.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "completion refused" in line:
                    with contextlib.suppress(ValueError, TypeError):
                        total += int(json.loads(line).get("count", 0))
        return total

    async def account(self, ids: list[str], elapsed: float) -> dict[str, Any]:
        states: Counter[str] = Counter()
        zombies: list[str] = []
        # Dead letters with attempts left: the handler never fails, so only a fault of the
        # system (attempts burnt by a requeue or a reap) can put them there.
        premature: list[str] = []
        writers: dict[str, str] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.hmget(self.queue.task_key(task_id), ["state", "owner", "attempts",
                                                              "result"])
                rows = await pipe.execute()
            for task_id, (state, owner, attempts, result) in zip(chunk, rows, strict=True):
                name = state.decode() if state else "missing"
                states[name] += 1
                if name == "dead" and int(attempts or 0) < self.opts.max_attempts:
                    premature.append(task_id)
                if name != "succeeded":
                    continue
                body = json.loads(result) if result else {}
                writer = run_key(task_id, str(body.get("worker")), int(body.get("attempt", -1)))
                last = run_key(task_id, owner.decode() if owner else "?", int(attempts or -1))
                writers[task_id] = writer
                if writer != last:
                    zombies.append(f"{task_id}: result by {writer}, last claim {last}")
        runs = [_text(m) for m in await self.records.smembers(RUNS_KEY)]
        finishes = [_text(m) for m in await self.records.smembers(FINISHED_KEY)]
        per_task = Counter(m.split("|", 1)[0] for m in runs)
        duplicates = sum(n - 1 for n in per_task.values() if n > 1)
        killed = self.tally.killed
        submitted_ids = set(ids)  # with --plans, the steps and summaries are counted apart
        fenced = sum(
            1 for m in finishes
            if m.split("|", 1)[0] in submitted_ids
            and writers.get(m.split("|", 1)[0]) != m and m.split("|")[1] not in killed
        )
        submitted = len(ids)
        lost = submitted - states["succeeded"] - states["dead"] - states["cancelled"]
        report: dict[str, Any] = {
            "seed": self.opts.seed,
            "options": asdict(self.opts),
            "submitted": submitted,
            "succeeded": states["succeeded"],
            "dead_lettered": states["dead"],
            "dead_with_attempts_left": len(premature),
            "lost": lost,
            "unfinished_states": {k: v for k, v in states.items()
                                  if k not in ("succeeded", "dead", "cancelled")},
            "executions": len(runs),
            "duplicate_executions": duplicates,
            "duplicate_bound": self.tally.bound,
            "zombie_completions_accepted": len(zombies),
            "zombie_examples": zombies[:5],
            "late_finishes_fenced": fenced,
            "completions_refused": self.refused_in_logs(),
            "acl": self.opts.acl,
            "permission_denials": self.denied_in_logs(),
            "events": dict(self.tally.events),
            "total_seconds": round(elapsed, 2),
        }
        report["ok"] = bool(lost == 0 and not zombies and not premature
                            and duplicates <= self.tally.bound
                            and report["permission_denials"] == 0)
        if self.opts.tenants:
            cap = self.opts.tenant_cap
            over = bool(cap) and self.most_leased > cap
            report["tenants"] = {"count": self.opts.tenants, "cap": cap,
                                 "most_leased_at_once": self.most_leased,
                                 "most_capped": self.most_capped, "ok": not over}
            report["ok"] = report["ok"] and not over
        if self.opts.chains:
            chains = await self.chain_account(ids)
            report["chains"] = chains
            report["ok"] = report["ok"] and chains["ok"]
        if self.opts.plans:
            plans = await self.plan_account(ids)
            report["plans"] = plans
            report["ok"] = report["ok"] and plans["ok"]
        if self.opts.checkpoint_every:
            checks = await self.checkpoint_account(ids, per_task)
            report["checkpoints"] = checks
            report["ok"] = report["ok"] and checks["ok"]
        return report

    async def plan_account(self, ids: list[str]) -> dict[str, Any]:
        """Every planner's steps and summary exist once, however often it ran: the queue's
        submit counter holds the planners and K + 1 tasks each, no more; every task it ever
        had finished; each summary found all its steps' results."""
        stats = await self.redis.hgetall(self.queue.prefix + "stats")
        counts = {_text(k): int(v) for k, v in stats.items()}
        submitted = int(await self.redis.get(self.queue.prefix + "seq") or 0)
        expected = len(ids) * (self.opts.plans + 2)
        finished = sum(counts.get(k, 0) for k in ("succeeded", "dead", "cancelled"))
        short = await self.records.scard(SHORT_KEY)
        planner_runs = Counter(m.split("|", 1)[0] for m in
                               (_text(r) for r in await self.records.smembers(RUNS_KEY)))
        return {
            "steps_per_plan": self.opts.plans,
            "tasks_expected": expected,
            "tasks_submitted": submitted,
            "tasks_unfinished": submitted - finished,
            "planners_run_again": sum(1 for i in ids if planner_runs[i] > 1),
            "summaries_short_of_results": short,
            "ok": submitted == expected and finished == submitted and short == 0,
        }

    async def chain_account(self, ids: list[str]) -> dict[str, Any]:
        """Each task of a chain runs only after the one before it succeeded (its runs found
        that one's result), and one cancelled was cut off by the one before it ending dead
        or cancelled."""
        length = self.opts.chains
        states = await self.states(ids)
        cut_wrongly = sum(
            1 for i, state in enumerate(states)
            if state == "cancelled" and (i % length == 0
                                          or states[i - 1] not in ("dead", "cancelled")))
        early = await self.records.scard(EARLY_KEY)
        return {
            "length": length,
            "chains": -(-len(ids) // length),
            "cancelled_after_a_failed_one": states.count("cancelled") - cut_wrongly,
            "cancelled_otherwise": cut_wrongly,
            "runs_before_the_one_before_succeeded": early,
            "dead_letters_requeued": self.requeued,
            "tasks_revived": self.revived,
            "cancelled_then_succeeded": sum(
                1 for task_id, state in zip(ids, states, strict=True)
                if state == "succeeded" and task_id in self.once_cancelled),
            "ok": cut_wrongly == 0 and early == 0,
        }

    async def checkpoint_account(self, ids: list[str], runs: Counter[str]) -> dict[str, Any]:
        opts = self.opts
        wrong = 0
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.hmget(self.queue.task_key(task_id), ["state", "result", "payload"])
                rows = await pipe.execute()
            for state, result, payload in rows:
                if state == b"succeeded":
                    seed = json.loads(payload)["seed"]
                    if json.loads(result).get("acc") != expected_total(seed, opts.steps):
                        wrong += 1
        executed = Counter(_text(m).split("|", 1)[0]
                           for m in await self.records.smembers(STEPS_KEY))
        starts: dict[str, dict[str, float]] = {}
        for member, value in (await self.records.hgetall(RESUMED_KEY)).items():
            run = _text(member)
            starts.setdefault(run.split("|", 1)[0], {})[run] = float(_text(value).split("|")[0])
        redone_total, lost_runs, worst, over_bound = 0, 0, 0.0, 0
        over_examples: list[str] = []
        for task_id in ids:
            lost = max(0, runs.get(task_id, 1) - 1)
            redone = max(0, executed.get(task_id, 0) - opts.steps)
            redone_total += redone
            lost_runs += lost
            if lost:
                worst = max(worst, redone / lost)
            if redone > opts.checkpoint_every * lost:
                over_bound += 1
                over_examples.append(f"{task_id}: {redone} steps redone over {lost} lost runs")
        zombie_examples = zombie_checkpoints(
            [_text(saved) for saved in await self.records.smembers(SAVED_KEY)], starts)
        zombie_accepted = len(zombie_examples)
        refused = int(await self.redis.hget(self.queue.prefix + "stats",
                                            "checkpoints_refused") or 0)
        return {
            "every": opts.checkpoint_every, "steps": opts.steps, "wrong_results": wrong,
            "lost_runs": lost_runs, "steps_redone": redone_total,
            "worst_redone_per_lost_run": round(worst, 2),
            "tasks_over_bound": over_bound,
            "over_bound_examples": over_examples[:5],
            "zombie_checkpoints_accepted": zombie_accepted,
            "zombie_checkpoint_examples": zombie_examples[:5],
            "zombie_checkpoints_refused": refused,
            "ok": wrong == 0 and over_bound == 0 and zombie_accepted == 0,
        }


async def submit_as_tenants(queue: TaskQueue, payloads: list[dict[str, Any]],
                            tenants: int) -> list[str]:
    """The payloads submitted as tenants' tasks, payload i as tenant ``t<i mod tenants>``'s
    (one call per tenant); their ids in payload order."""
    ids: list[str] = [""] * len(payloads)
    for tenant in range(tenants):
        mine = range(tenant, len(payloads), tenants)
        added = await queue.submit_many([payloads[i] for i in mine], tenant=f"t{tenant}")
        for i, task_id in zip(mine, added, strict=True):
            ids[i] = task_id
    return ids


async def submit_chains(queue: TaskQueue, payloads: list[dict[str, Any]],
                        length: int) -> list[str]:
    """The payloads as submitted, in their order; with a `length`, as chains: payload i runs
    after payload i - 1 unless i is a multiple of `length` (each link of all chains submitted
    at once, gathered into few calls)."""
    if not length:
        return await queue.submit_many(payloads)
    ids = await queue.submit_many(payloads[::length])
    chains = [[head] for head in ids]
    for link in range(1, length):
        starts = range(link, len(payloads), length)
        before = [chains[i // length][-1] for i in starts]
        added = await asyncio.gather(*(
            queue.submit({**payloads[i], "after": prior}, after=[prior])
            for i, prior in zip(starts, before, strict=True)))
        for i, task_id in zip(starts, added, strict=True):
            chains[i // length].append(task_id)
    return [task_id for chain in chains for task_id in chain]


def zombie_checkpoints(saved: list[str], starts: dict[str, dict[str, float]]) -> list[str]:
    """The accepted checkpoints (``run|sent``) that a sound fence must have refused: sent after
    a later claim of the same task had started its run. ``starts`` maps each task to its runs
    (``task|worker|attempt``) and the time each began.

    Runs are ordered by claim, which is the attempt number and, between two runs of the same
    attempt (a run handed back without spending one, then claimed again), the time each began.
    Not by start alone: a worker frozen between its claim's reply and the start of the run
    begins that run late, after the task was claimed again; that run is the zombie, and the
    checkpoints the current holder sends meanwhile are not."""
    def claimed(run: str) -> tuple[int, float]:
        return int(run.rsplit("|", 1)[1]), starts.get(run.split("|", 1)[0], {})[run]

    found = []
    for record in saved:
        run, _, sent = record.rpartition("|")
        task_runs = starts.get(run.split("|", 1)[0], {})
        if run not in task_runs:
            continue
        began = task_runs[run]
        later = [other for other, at in task_runs.items()
                 if claimed(other) > claimed(run) and at < float(sent)]
        if later:
            found.append(f"{run} (began {began:.3f}) saved at {float(sent):.3f}, "
                         f"after {', '.join(later)} began")
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


def parse(argv: list[str] | None) -> tuple[Options, bool]:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tasks", type=int, default=d.tasks)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--mean-seconds", type=float, default=d.mean_seconds,
                   help="mean simulated task latency (log-normal)")
    p.add_argument("--lease-seconds", type=float, default=d.lease_seconds)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts)
    p.add_argument("--event-gap", type=float, default=d.event_gap,
                   help="mean seconds between chaos events")
    p.add_argument("--freezes", type=int, default=d.freezes,
                   help="tasks that stop their worker between finishing and reporting")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="K",
                   help="run the checkpointing handler: a checkpoint every K steps")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="with --checkpoint-every: steps per task")
    p.add_argument("--timeout", type=float, default=d.timeout)
    p.add_argument("--plans", type=int, default=d.plans, metavar="K",
                   help="the tasks are planners submitting K steps and a summary each (0: off)")
    p.add_argument("--chains", type=int, default=d.chains, metavar="L",
                   help="submit the tasks as chains of L, each after the one before (0: off)")
    p.add_argument("--requeue-dead-every", type=float, default=d.requeue_dead_every,
                   metavar="S", help="with --chains: requeue the dead letters every S seconds "
                   "while the chaos lasts (0: never)")
    p.add_argument("--acl", action="store_true",
                   help="workers and producer as Redis ACL users confined to the queue")
    p.add_argument("--sentinel", action="store_true",
                   help="a primary, a replica and three sentinels; fail the primary over "
                        "(kill -9 and SENTINEL FAILOVER) instead of the other events")
    p.add_argument("--durability", choices=("none", "replicated"), default=d.durability,
                   help="with --sentinel or --cluster: submits and completions wait for a replica")
    p.add_argument("--submit-rate", type=float, default=d.submit_rate,
                   help="with --sentinel or --cluster: tasks per second submitted during the run "
                        "(default: 80%% of the workers' capacity)")
    p.add_argument("--replicas", type=int, default=d.replicas,
                   help="with --sentinel: replicas of the primary")
    p.add_argument("--cluster", action="store_true",
                   help="three primaries with a replica each; fail the queue's primary over "
                        "(kill -9 and CLUSTER FAILOVER) instead of the other events")
    p.add_argument("--tenants", type=int, default=d.tenants, metavar="N",
                   help="submit the tasks as N tenants' (0: without a tenant)")
    p.add_argument("--tenant-cap", type=int, default=d.tenant_cap, metavar="C",
                   help="with --tenants: every tenant's cap on runs at once (0: none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    if (a.sentinel or a.cluster) and (a.acl or a.checkpoint_every):
        p.error("--sentinel and --cluster run the plain soak: without --acl and "
                "--checkpoint-every")
    if a.sentinel and a.cluster:
        p.error("--sentinel or --cluster, not both")
    if a.chains < 0 or a.plans < 0:
        p.error("--chains and --plans must be 0 (off) or a length")
    if (a.chains or a.plans) and (a.sentinel or a.cluster or a.checkpoint_every):
        p.error("--chains and --plans run the plain soak: without --sentinel, --cluster and "
                "--checkpoint-every")
    if a.chains and a.plans:
        p.error("--chains or --plans, not both")
    if a.requeue_dead_every and not a.chains:
        p.error("--requeue-dead-every goes with --chains")
    if a.tenants < 0 or a.tenant_cap < 0 or (a.tenant_cap and not a.tenants):
        p.error("--tenants must be 0 (off) or a count, --tenant-cap 0 or a cap with --tenants")
    if a.tenants and (a.chains or a.sentinel or a.cluster):
        p.error("--tenants runs the plain soak: without --chains, --sentinel and --cluster")
    opts = Options(tasks=a.tasks, workers=a.workers, concurrency=a.concurrency,
                   mean_seconds=a.mean_seconds, lease_seconds=a.lease_seconds,
                   max_attempts=a.max_attempts, event_gap=a.event_gap, timeout=a.timeout,
                   seed=a.seed, freezes=a.freezes, checkpoint_every=a.checkpoint_every,
                   steps=a.steps, chains=a.chains, plans=a.plans, acl=a.acl,
                   requeue_dead_every=a.requeue_dead_every,
                   sentinel=a.sentinel,
                   durability=a.durability, submit_rate=a.submit_rate, replicas=a.replicas,
                   cluster=a.cluster, tenants=a.tenants, tenant_cap=a.tenant_cap)
    return opts, a.json


def render(report: dict[str, Any]) -> str:
    rows = [
        ("seed", report["seed"]),
        ("submitted", report["submitted"]),
        ("succeeded", report["succeeded"]),
        ("dead-lettered", report["dead_lettered"]),
        ("lost (must be 0)", report["lost"]),
        ("runs recorded", report["executions"]),
        ("duplicate executions", f"{report['duplicate_executions']} "
                                 + (f"(bound {report['duplicate_bound']})"
                                    if report["duplicate_bound"] is not None
                                    else "(no bound: lost claims, see below)")),
        ("zombie completions accepted (must be 0)", report["zombie_completions_accepted"]),
        ("late finishes fenced off", report["late_finishes_fenced"]),
        ("completions refused (worker logs)", report["completions_refused"]),
        ("ACL users / permission denials (must be 0)",
         f"{'yes' if report['acl'] else 'no'} / {report['permission_denials']}"),
        ("events", ", ".join(f"{k} {v}" for k, v in sorted(report["events"].items()))),
    ]
    checks = report.get("checkpoints")
    if checks:
        k = checks["every"]
        rows += [
            ("checkpoint every", f"{k} of {checks['steps']} steps"),
            ("wrong results (must be 0)", checks["wrong_results"]),
            ("steps redone", f"{checks['steps_redone']} over {checks['lost_runs']} lost runs "
                             f"(worst {checks['worst_redone_per_lost_run']} per lost run; "
                             f"bound {k}; tasks over it: {checks['tasks_over_bound']})"),
            ("zombie checkpoints accepted (must be 0)", checks["zombie_checkpoints_accepted"]),
            ("zombie checkpoints refused", checks["zombie_checkpoints_refused"]),
        ]
    chains = report.get("chains")
    if chains:
        rows += [
            ("chains", f"{chains['chains']} of {chains['length']} tasks, each after the one "
                       "before"),
            ("runs before the one before succeeded (must be 0)",
             chains["runs_before_the_one_before_succeeded"]),
            ("cancelled after a dead or cancelled one", chains["cancelled_after_a_failed_one"]),
            ("cancelled otherwise (must be 0)", chains["cancelled_otherwise"]),
            ("dead letters requeued", chains["dead_letters_requeued"]),
            ("tasks after them brought back by those requeues (once each time)",
             chains["tasks_revived"]),
            ("cancelled, brought back by a requeue, then succeeded",
             chains["cancelled_then_succeeded"]),
        ]
    plans = report.get("plans")
    if plans:
        rows += [
            ("planners", f"{report['submitted']}, {plans['steps_per_plan']} steps and a summary "
                         f"each; {plans['planners_run_again']} ran more than once"),
            ("tasks in the queue (must be as planned)",
             f"{plans['tasks_submitted']} of {plans['tasks_expected']} planned"),
            ("tasks unfinished (must be 0)", plans["tasks_unfinished"]),
            ("summaries short of results (must be 0)", plans["summaries_short_of_results"]),
        ]
    if "failovers" in report:
        from bench.chaos_sentinel import render_rows
        rows += render_rows(report)
    rows += [
        ("total time", f"{report['total_seconds']:.1f} s"),
        ("verdict", "OK" if report["ok"] else "FAILED"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    opts, as_json = parse(argv)
    logs = ROOT / "bench" / "results" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}-seed{opts.seed}"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {opts.tasks} tasks, {opts.workers} workers, seed {opts.seed}; "
          f"worker logs and the report go to {logs}", file=sys.stderr, flush=True)
    if opts.sentinel:
        from bench.chaos_sentinel import SentinelSoak
        soak: Soak = SentinelSoak(opts, logs)
    elif opts.cluster:
        from bench.chaos_cluster import ClusterSoak
        soak = ClusterSoak(opts, logs)
    else:
        soak = Soak(opts, logs)
    report = asyncio.run(soak.run())
    (logs / "report.json").write_text(json.dumps({**report, "log": soak.tally.log}, indent=2))
    print(f"chaos: report in {logs / 'report.json'}", file=sys.stderr, flush=True)
    print(json.dumps(report) if as_json else render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
