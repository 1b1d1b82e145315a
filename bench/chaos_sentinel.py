"""The chaos soak against Sentinel: ``python -m bench.chaos --sentinel [--durability replicated]``.

A primary, one replica and three sentinels on loopback (agentpool.redis_server.SentinelGroup,
``down-after-milliseconds`` 1000). The workers, the producer (a ``Client``: without replication
its submits go on its script line) and the stand-in for the operator (its shared Redis client,
reading figures and reaping expired leases every 2 s) all connect with the
``redis+sentinel://`` URL. The producer submits all along the run, each task with an
idempotency key of its own. Every few seconds the primary is failed over, in turn by kill -9
and by ``SENTINEL FAILOVER``; the old primary comes back as a replica (started again after a
kill, reconfigured by the sentinels after a graceful failover) before the next one.

Measured per failover, from the promotion (the sentinels name the new primary, as
``SENTINEL GET-MASTER-ADDR-BY-NAME`` answers; polled every 20 ms):

- work resumed: the first completion counted on the new primary;
- every worker back: each worker instance has sent a heartbeat to the new primary;
- operator back: the operator's shared client reads the queue's figures again (polled every
  0.1 s here; the operator's own loop adds up to its ``pollSeconds``).

What the failovers cost in acknowledged writes (replication is asynchronous):

- acknowledged submits lost: tasks whose submit the producer saw succeed and that the new
  primary does not have. The producer looks for them after every failover and submits them
  again (their idempotency key vanished with them), so no task is lost for good;
- submits with no answer: the call failed (its connection broke); the producer submits again
  with the same key, which is harmless if the first one happened;
- completions lost: a task ran again after a run of it had finished, with a later attempt
  (inferred from the handler's run records: with no worker killed or stopped, a finished run
  is followed by another only when its completion was lost, or its lease ran out before the
  worker reached the new primary: run with ``--lease-seconds`` well above the failover time,
  10 s here, so that only the first remains);
- claims lost: a task ran twice under the same attempt number (the claim vanished, so the
  task was queued again on the new primary); claims never wait for a replica;
- not replicated in time: replicated writes that no replica acknowledged within the timeout
  (a kill -9 leaves the new primary without a replica until the old one is back).

The run records live on a separate standalone redis-server, so a failover cannot touch them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentpool.acl import Role
from agentpool.client import Client
from agentpool.connection import redis_from_url
from agentpool.durability import Durability, NotReplicated
from agentpool.protocol import FINAL_STATES, TaskQueue
from agentpool.redis_server import SENTINEL_SERVICE, RedisServer, SentinelGroup, sentinel_admin
from agentpool_operator.redis_access import QueueAccessError, RedisClients, read_figures
from bench.chaos import QUEUE, REAP_EVERY, Options, Soak
from bench.chaos_handler import FINISHED_KEY, RUNS_KEY

FAILOVER_KINDS = ("kill", "graceful")
RESUME_GOAL = 10.0
"""Seconds from promotion within which work must resume."""
MEASURE_PATIENCE = 30.0
PRODUCER_TICK = 0.1


@dataclass
class Failover:
    kind: str
    in_flight: int = 0
    queued: int = 0
    """Work waiting when the primary went: with none (a lull), "work resumed" is not measured."""
    detection_seconds: float | None = None
    """kill: from the kill to the promotion; graceful: from the command to the promotion."""
    work_resumed_seconds: float | None = None
    workers_back_seconds: float | None = None
    operator_back_seconds: float | None = None
    submits_lost: int = 0


def plan_failovers(opts: Options) -> list[tuple[float, str]]:
    """(seconds after the start, kind): kinds alternate, starting with a kill."""
    rng = random.Random(f"failovers:{opts.seed}")
    at, plan = opts.event_gap, []
    for index in range(max(2, int(opts.timeout / opts.event_gap))):
        plan.append((round(at, 3), FAILOVER_KINDS[index % 2]))
        at += rng.uniform(0.8, 1.2) * opts.event_gap
    return plan


class SentinelSoak(Soak):
    handover_name = "SENTINEL FAILOVER"
    """How a graceful failover is asked for (the report's wording)."""

    def __init__(self, opts: Options, logs: Path) -> None:
        super().__init__(opts, logs)
        self.group: Any = SentinelGroup(failover_timeout_ms=2000, replicas=opts.replicas)
        """A SentinelGroup, or what stands for one (bench/chaos_cluster.py)."""
        self.server = RedisServer()
        """The run records only (CHAOS_RECORD_URL)."""
        self.durability = Durability(opts.durability)
        self.acked: dict[int, str] = {}
        """Logical task -> id of the task the producer was told it submitted (with durability
        replicated: that a replica has)."""
        self.retry: set[int] = set()
        """Logical tasks whose submit failed or was not replicated: submitted again."""
        self.counts: Counter[str] = Counter()
        self.failovers: list[Failover] = []
        self.operator = RedisClients()
        self.operator_queue: TaskQueue
        self.payloads: list[dict[str, Any]] = []

    def url_of(self, role: Role) -> str:
        return self.group.url

    def extra_env(self) -> dict[str, str]:
        return {"AGENTPOOL_DURABILITY": self.durability.value}

    def key_of(self, index: int) -> str:
        return f"chaos-{self.opts.seed}-{index}"

    # -- the producer ----------------------------------------------------------------------

    async def submit_one(self, queue: TaskQueue, index: int) -> None:
        try:
            self.acked[index] = await queue.submit(self.payloads[index],
                                                   idempotency_key=self.key_of(index))
            self.retry.discard(index)
        except NotReplicated:
            self.counts["submits_not_replicated"] += 1
            self.retry.add(index)
        except (RedisError, OSError):
            self.counts["submits_unanswered"] += 1
            self.retry.add(index)

    async def produce(self, queue: TaskQueue) -> None:
        """Submit at a steady rate; then keep submitting again what needs it (a submit that
        failed, was not replicated in time, or was found lost after a failover)."""
        opts = self.opts
        rate = opts.submit_rate or 0.8 * opts.workers * opts.concurrency / opts.mean_seconds
        per_tick = max(1, round(rate * PRODUCER_TICK))
        index = 0
        reported = False
        while True:
            if index == len(self.payloads) and not self.retry and not reported:
                reported = True
                self.note(f"producer: every task acknowledged "
                          f"({self.counts['submits_unanswered']} submits unanswered, "
                          f"{self.counts['submits_not_replicated']} not replicated in time, "
                          "each submitted again)")
            began = time.monotonic()
            batch = list(range(index, min(index + per_tick, len(self.payloads))))
            index += len(batch)
            batch += sorted(self.retry)[:per_tick]
            await asyncio.gather(*(self.submit_one(queue, i) for i in batch))
            await asyncio.sleep(max(0.0, PRODUCER_TICK - (time.monotonic() - began)))

    async def find_lost_submits(self, queue: TaskQueue) -> int:
        """What a producer that must not lose a task does after a failover: look for the
        tasks it was told it submitted, and submit again those the new primary lacks."""
        known = dict(self.acked)
        missing: list[int] = []
        indexes = list(known)
        for start in range(0, len(indexes), 1000):
            chunk = indexes[start:start + 1000]
            async with queue.redis.pipeline(transaction=False) as pipe:
                for index in chunk:
                    pipe.exists(queue.task_key(known[index]))
                found = await pipe.execute()
            missing += [index for index, there in zip(chunk, found, strict=True) if not there]
        for index in missing:
            if self.acked.get(index) == known[index]:
                del self.acked[index]
                self.retry.add(index)
        self.counts["submits_lost"] += len(missing)
        return len(missing)

    # -- failovers -------------------------------------------------------------------------

    def wait_promotion(self, old: int) -> tuple[float, float, int]:
        """Until the sentinels name another primary (SENTINEL GET-MASTER-ADDR-BY-NAME, what
        the components ask): (monotonic, wall clock, new port)."""
        deadline = time.monotonic() + MEASURE_PATIENCE
        while time.monotonic() < deadline:
            port = self.group.primary_port()
            if port is not None and port != old:
                return time.monotonic(), time.time(), port
            time.sleep(0.02)
        raise RuntimeError(f"no replica promoted within {MEASURE_PATIENCE:g}s")

    async def fail_over(self, kind: str) -> None:
        group = self.group
        await asyncio.to_thread(lambda: group.wait_healthy(60, synced=False))
        old = group.primary_port()
        assert old is not None
        record = Failover(kind)
        record.in_flight = await self.patient(
            lambda: self.redis.zcard(self.queue.prefix + "leases"))
        record.queued = await self.patient(
            lambda: self.redis.zcard(self.queue.prefix + "queued"))
        self.tally.bound += record.in_flight
        began = time.monotonic()
        if kind == "kill":
            group.server_on(old).kill()
        else:
            await asyncio.to_thread(self.hand_over)
        promoted, wall, new = await asyncio.to_thread(self.wait_promotion, old)
        record.detection_seconds = round(promoted - began, 3)
        await self.measure_recovery(record, promoted, wall, new)
        if kind == "kill":
            await asyncio.to_thread(lambda: group.restore(old, primary=new, synced=False))
        else:
            await asyncio.to_thread(lambda: group.wait_healthy(60, synced=False))
        record.submits_lost = await self.patient(lambda: self.find_lost_submits(self.queue))
        self.failovers.append(record)
        self.tally.events[f"failover-{kind}"] += 1
        self.note(f"failover by {kind}: {old} -> {new}; promoted after "
                  f"{record.detection_seconds}s; work resumed after "
                  f"{record.work_resumed_seconds}s, every worker after "
                  f"{record.workers_back_seconds}s, operator after "
                  f"{record.operator_back_seconds}s; {record.in_flight} in flight, "
                  f"{record.queued} queued, "
                  f"{record.submits_lost} acknowledged submits lost")

    def hand_over(self) -> None:
        """A graceful failover: ``SENTINEL FAILOVER``."""
        with sentinel_admin(self.group.sentinel_ports[0]) as sentinel:
            sentinel.sentinel_failover(SENTINEL_SERVICE)

    async def measure_recovery(self, record: Failover, promoted: float, wall: float,
                               port: int) -> None:
        """Poll the new primary directly, and the operator's client, until each is back."""
        primary = aioredis.Redis(port=port, socket_timeout=2)
        prefix = self.queue.prefix
        workers = {slot.pod for slot in self.slots}
        baseline: int | None = None
        deadline = promoted + MEASURE_PATIENCE
        try:
            while time.monotonic() < deadline and (
                record.work_resumed_seconds is None or record.workers_back_seconds is None
                or record.operator_back_seconds is None
            ):
                now = time.monotonic()
                with contextlib.suppress(RedisError, OSError):
                    done = int(await primary.hget(prefix + "stats", "succeeded") or 0)
                    if baseline is None:
                        baseline = done
                    elif done > baseline and record.work_resumed_seconds is None:
                        record.work_resumed_seconds = round(now - promoted, 3)
                    seen = await primary.zrangebyscore(prefix + "workers", wall * 1000, "+inf")
                    pods = {_text(w).rpartition(":")[0] for w in seen}
                    if workers <= pods and record.workers_back_seconds is None:
                        record.workers_back_seconds = round(now - promoted, 3)
                if record.operator_back_seconds is None:
                    with contextlib.suppress(QueueAccessError, RedisError, OSError):
                        await read_figures(self.operator_queue)
                        record.operator_back_seconds = round(time.monotonic() - promoted, 3)
                await asyncio.sleep(0.05)
        finally:
            await primary.aclose()

    async def reaper(self) -> None:
        """The operator's loop: figures and the lease reaper through its shared client."""
        while True:
            with contextlib.suppress(QueueAccessError, RedisError, OSError):
                await read_figures(self.operator_queue)
                result = await self.operator_queue.reap_expired()
                if result.total:
                    self.note(f"reap_expired: {result.requeued} requeued, "
                              f"{result.dead_lettered} dead-lettered")
            await asyncio.sleep(REAP_EVERY)

    # -- the run ---------------------------------------------------------------------------

    async def unfinished(self) -> int:
        ids = list(self.acked.values())
        states: list[Any] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.queue.task_key(task_id), "state")
            states = await pipe.execute()
        final = sum(1 for state in states if state and _text(state) in FINAL_STATES)
        return len(self.payloads) - final

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        await asyncio.to_thread(self.group.start)
        self.server.start()
        self.records = aioredis.Redis.from_url(self.server.url, socket_timeout=5)
        self.redis = redis_from_url(self.group.url, socket_timeout=5)
        self.queue = TaskQueue(self.redis, QUEUE)
        operator_redis = await self.operator.client("default", "chaos", self.group.url)
        self.operator_queue = TaskQueue(operator_redis, QUEUE)
        producer = Client.from_url(self.group.url, connect_timeout=5, socket_timeout=5,
                                   durability=self.durability)
        producer_queue = producer.queue(QUEUE)
        rng = random.Random(f"tasks:{opts.seed}")
        self.payloads = [{"mean_seconds": opts.mean_seconds, "seed": rng.randrange(1 << 30)}
                         for _ in range(opts.tasks)]
        background: list[asyncio.Task[Any]] = []
        try:
            await self.queue.configure(max_attempts=opts.max_attempts)
            for slot in self.slots:
                self.spawn(slot)
            chaos_start = time.monotonic()
            producing = asyncio.create_task(self.produce(producer_queue))
            background += [producing, asyncio.create_task(self.reaper())]
            plan = plan_failovers(opts)
            deadline = self.started + opts.timeout
            left = len(self.payloads)
            next_progress = time.monotonic() + 5
            while time.monotonic() < deadline:
                with contextlib.suppress(RedisError, OSError):
                    left = await self.unfinished()
                if left == 0:
                    break
                if time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + 5
                    self.note(f"progress: {len(self.payloads) - left} of {len(self.payloads)} "
                              f"finished, {len(self.failovers)} failovers")
                due = plan and time.monotonic() - chaos_start >= plan[0][0]
                if due and left > (1 - opts.stop_at) * len(self.payloads):
                    await self.fail_over(plan.pop(0)[1])
                    continue
                await asyncio.sleep(0.2)
            await self.patient(lambda: self.find_lost_submits(self.queue))
            elapsed = time.monotonic() - self.started
            self.note(f"{len(self.payloads) - left} of {len(self.payloads)} finished; stopping")
            ids = [self.acked.get(i, f"never-acknowledged-{i}") for i in range(opts.tasks)]
            report = await self.account(ids, elapsed)
            return await self.sentinel_account(report)
        finally:
            for task in background:
                task.cancel()
            await self.stop_workers()
            await producer.aclose()
            await self.operator.close()
            await self.redis.aclose()
            await self.records.aclose()
            self.server.close()
            await asyncio.to_thread(self.group.close)

    def logged(self, text: str) -> int:
        return sum(line.count(text) for path in self.logs.glob("*.log")
                   for line in path.read_text(errors="replace").splitlines())

    async def sentinel_account(self, report: dict[str, Any]) -> dict[str, Any]:
        runs = [_text(m).split("|") for m in await self.records.smembers(RUNS_KEY)]
        finished = [_text(m).split("|") for m in await self.records.smembers(FINISHED_KEY)]
        attempts: dict[str, list[int]] = {}
        for task_id, _, attempt in runs:
            attempts.setdefault(task_id, []).append(int(attempt))
        first_finish: dict[str, int] = {}
        for task_id, _, attempt in finished:
            first_finish[task_id] = min(int(attempt), first_finish.get(task_id, 1 << 30))
        completions_lost = sum(
            1 for task_id, done in first_finish.items()
            if any(a > done for a in attempts.get(task_id, []))
        )
        claims_lost = sum(len(a) - len(set(a)) for a in attempts.values())
        resumed = [f.work_resumed_seconds for f in self.failovers if f.in_flight + f.queued]
        measured = [x for x in resumed if x is not None]
        report.update(
            durability=self.durability.value,
            handover=self.handover_name,
            failovers=[asdict(f) for f in self.failovers],
            failover_summary={
                "count": len(self.failovers),
                "with_work_waiting": len(resumed),
                "work_resumed_max": max(measured, default=None),
                "work_resumed_median": statistics.median(measured) if measured else None,
                "workers_back_max": _max(f.workers_back_seconds for f in self.failovers),
                "operator_back_max": _max(f.operator_back_seconds for f in self.failovers),
                "goal_met": bool(measured) and len(measured) == len(resumed)
                and max(measured) <= RESUME_GOAL,
            },
            lost_writes={
                "submits_acknowledged_then_lost": self.counts["submits_lost"],
                "completions_lost": completions_lost,
                "claims_lost": claims_lost,
                "submits_unanswered": self.counts["submits_unanswered"],
                "submits_not_replicated_in_time": self.counts["submits_not_replicated"],
                "completion_batches_not_replicated_in_time":
                    self.logged("completions not yet on a replica"),
            },
        )
        # Duplicate runs have no fixed bound here: every claim the old primary acknowledged
        # in its last moments may be lost; they are reported above, as lost claims.
        acknowledged_lost = self.counts["submits_lost"] + completions_lost
        report["duplicate_bound"] = None
        report["ok"] = (report["lost"] == 0 and report["zombie_completions_accepted"] == 0
                        and len(self.failovers) >= 2)
        if self.durability is Durability.REPLICATED:
            report["ok"] = report["ok"] and acknowledged_lost == 0
        return report


def _max(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def render_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    summary, lost = report["failover_summary"], report["lost_writes"]
    kinds = Counter(f["kind"] for f in report["failovers"])
    rows: list[tuple[str, Any]] = [
        ("durability", report["durability"]),
        ("failovers", f"{summary['count']} ({kinds['kill']} kill -9, "
                      f"{kinds['graceful']} {report['handover']})"),
        ("work resumed after promotion", f"max {summary['work_resumed_max']} s, median "
                                         f"{summary['work_resumed_median']} s (goal "
                                         f"{RESUME_GOAL:g} s: "
                                         f"{'met' if summary['goal_met'] else 'missed'})"),
        ("every worker back / operator back", f"max {summary['workers_back_max']} s / "
                                              f"max {summary['operator_back_max']} s"),
        ("acknowledged submits lost (found, resubmitted)",
         lost["submits_acknowledged_then_lost"]),
        ("completions lost (task ran again)", lost["completions_lost"]),
        ("claims lost (task ran twice)", lost["claims_lost"]),
        ("submits unanswered (retried)", lost["submits_unanswered"]),
        ("not replicated in time: submits / completion batches",
         f"{lost['submits_not_replicated_in_time']} / "
         f"{lost['completion_batches_not_replicated_in_time']}"),
    ]
    rows += [(f"  failover {i + 1} ({f['kind']})",
              f"promoted {f['detection_seconds']} s; resumed {f['work_resumed_seconds']} s; "
              f"workers {f['workers_back_seconds']} s; operator {f['operator_back_seconds']} s;"
              f" in flight {f['in_flight']}; submits lost {f['submits_lost']}")
             for i, f in enumerate(report["failovers"])]
    return rows

