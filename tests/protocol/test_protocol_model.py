"""The task protocol against a plain Python model of it, step by step (hypothesis stateful).

Producers submit (priorities, delays, attempt limits, idempotency keys) and cancel; workers
claim, complete, fail, hand back, heartbeat and die (requeue by owner or pod, lease expiry and
the reaper); zombies report with stale tokens; an operator requeues and purges dead letters.
After every step Redis must agree with the model: each task in exactly one state and in the
one set of that state, the queue figures and counters, leases and owners of running tasks,
attempts within the limit, no task lost; claims take the model's next tasks (priority, then
submit order); a stale token's report is refused and changes nothing.

Runs on one real redis-server (the session's, standalone: the scripts are the same on every
deployment, which the other protocol tests cover). Nothing sleeps: a lease runs out and a
delayed task comes due by moving its score in Redis, as time would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agentpool.connection import redis_from_url
from agentpool.protocol import (
    CancelOutcome,
    ClaimedTask,
    FailOutcome,
    TaskQueue,
    WorkerInfo,
)
from agentpool.redis_server import RedisServer

DEFAULT_MAX_ATTEMPTS = 3
"""common.lua's default when neither the task nor the queue's config sets one."""
LEASE = 30.0
"""Long enough never to run out during an example: a lease runs out by hand (`expire_lease`)
or is of 0 ms from the start (`claim` with `no_lease`)."""
FAR = 3600.0
"""A delay that never comes due during an example (a delayed task comes due by `make_due`)."""
WORKERS = ("a:1", "a:2", "b:1")
"""Worker ids `<pod>:<instance>`: two instances of pod a, one of pod b."""
PODS = ("a", "b")
IDEM_KEYS = ("k0", "k1")
STATES = ("queued", "delayed", "running", "succeeded", "dead", "cancelled")
SUBMIT = st.tuples(
    st.sampled_from([0, 0, 1, 5, 9]),  # priority
    st.sampled_from([False, False, True]),  # delayed (FAR) rather than queued
    st.sampled_from([None, 1, 2, 3]),  # max_attempts (None: the queue's default)
    st.sampled_from([None, None, *IDEM_KEYS]),  # idempotency key
)
PICK = st.integers(0, 10_000)
"""An index into a list of candidates the model gives (taken modulo its length), so that a
failing example reads as steps on the n-th task, whatever its random id."""


@dataclass
class Task:
    """What the model knows of a task: the fields the protocol's scripts decide on."""

    id: str
    n: int
    """Submit order (the queue's `seq`): claims take priority first, then this."""
    priority: int
    max_attempts: int | None
    state: str
    """One of STATES, or "purged" (gone from Redis by purge_dead)."""
    attempts: int = 0
    due: bool = False
    """A delayed task that is due now (a claim promotes it) rather than in FAR seconds."""
    owner: str | None = None
    """The task's `owner` field: its holder while running, the run that completed it."""
    token: str | None = None
    """The task's `token` field: set by a claim, kept until a holder-lost requeue clears it."""
    retry_of: str | None = None
    cancel_flag: bool = False
    lease_expired: bool = False

    @property
    def limit(self) -> int:
        return self.max_attempts or DEFAULT_MAX_ATTEMPTS

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.n)


@dataclass(frozen=True)
class Handle:
    """One claim of a task by a worker: current while the task runs under its token."""

    task: Task
    worker: str
    claimed: ClaimedTask

    @property
    def current(self) -> bool:
        return self.task.state == "running" and self.task.token == self.claimed.token


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


class ProtocolModel(RuleBasedStateMachine):
    """One queue on a real Redis, driven on a private event loop, against the model."""

    url = ""
    """Set by the test: the Redis the examples run on."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = redis_from_url(self.url)
        self.queue = TaskQueue(self.redis, f"model-{uuid.uuid4().hex[:10]}")
        self.tasks: list[Task] = []
        self.handles: list[Handle] = []
        self.idem: dict[str, Task] = {}
        self.registered: set[str] = set()
        """Worker instances in the queue's `workers` set (a claim that took a task or a
        heartbeat adds one; requeue by owner or pod forgets it)."""
        self.stats: Counter[str] = Counter()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        async def clean() -> None:
            keys = [k async for k in self.redis.scan_iter(match=self.queue.prefix + "*")]
            if keys:
                await self.redis.unlink(*keys)
            await self.redis.aclose()

        try:
            self.run(clean())
        finally:
            self.loop.close()

    # -- what the model offers to pick from ----------------------------------------------

    def in_state(self, *states: str) -> list[Task]:
        return [t for t in self.tasks if t.state in states]

    def current_handles(self, worker: str | None = None) -> list[Handle]:
        return [h for h in self.handles if h.current and worker in (None, h.worker)]

    def stale_handles(self) -> list[Handle]:
        return [h for h in self.handles if not h.current]

    def claimable(self) -> list[Task]:
        """Queued tasks and due delayed ones (a claim promotes those first), in claim order."""
        return sorted((t for t in self.tasks
                       if t.state == "queued" or (t.state == "delayed" and t.due)),
                      key=lambda t: t.order)

    def known(self, task: Task) -> bool:
        return task.state != "purged"

    # -- model transitions shared by several rules ---------------------------------------

    def holder_lost(self, task: Task) -> int:
        """requeue_one (common.lua): 1 requeued, 2 dead-lettered, 3 cancelled."""
        assert task.state == "running"
        task.owner = task.token = None
        task.lease_expired = False
        if task.cancel_flag:
            task.state = "cancelled"
            self.stats["cancelled"] += 1
            return 3
        if task.attempts >= task.limit:  # the lost run counted as an attempt
            task.state = "dead"
            self.stats["dead"] += 1
            return 2
        task.state = "queued"
        self.stats["requeued"] += 1
        return 1

    def forget_worker(self, worker: str) -> tuple[int, int, int]:
        counts = [0, 0, 0]
        for handle in self.current_handles(worker):
            counts[self.holder_lost(handle.task) - 1] += 1
        self.registered.discard(worker)
        return counts[0], counts[1], counts[2]

    # -- producers ---------------------------------------------------------------------------

    @initialize(specs=st.lists(SUBMIT, max_size=6))
    def backlog(self, specs: list[tuple[int, bool, int | None, str | None]]) -> None:
        """What was submitted before the workers came."""
        self.submit(specs)

    @rule(specs=st.lists(SUBMIT, min_size=1, max_size=4))
    def submit(self, specs: list[tuple[int, bool, int | None, str | None]]) -> None:
        """Producers submit tasks one after the other."""
        for priority, delayed, max_attempts, idem in specs:
            self.submit_one(priority, delayed, max_attempts, idem)

    @rule(spec=SUBMIT, keys=st.lists(st.sampled_from([None, None, *IDEM_KEYS]), min_size=1,
                                      max_size=5))
    def submit_batch(self, spec: tuple[int, bool, int | None, str | None],
                     keys: list[str | None]) -> None:
        """A producer submits a batch in one call (submit_many, in chunks of two), the same
        options for all and an idempotency key, or none, for each."""
        priority, delayed, max_attempts, _ = spec
        ids = self.run(self.queue.submit_many(
            [{"n": len(self.tasks) + i} for i in range(len(keys))], priority=priority,
            delay=FAR if delayed else 0, max_attempts=max_attempts, idempotency_keys=keys,
            chunk=2))
        assert len(ids) == len(keys)
        for task_id, idem in zip(ids, keys, strict=True):
            self.submitted(task_id, priority, delayed, max_attempts, idem)

    def submit_one(self, priority: int, delayed: bool, max_attempts: int | None,
                   idem: str | None) -> None:
        task_id = self.run(self.queue.submit(
            {"n": len(self.tasks)}, priority=priority, delay=FAR if delayed else 0,
            idempotency_key=idem, max_attempts=max_attempts))
        self.submitted(task_id, priority, delayed, max_attempts, idem)

    def submitted(self, task_id: str, priority: int, delayed: bool, max_attempts: int | None,
                  idem: str | None) -> None:
        """The model's side of one submit that answered `task_id`."""
        first = self.idem.get(idem) if idem else None
        if first is not None and self.known(first):
            # the key still names a kept task: its id, and nothing is created
            assert task_id == first.id
            return
        assert task_id not in {t.id for t in self.tasks}
        task = Task(task_id, len(self.tasks), priority, max_attempts,
                    "delayed" if delayed else "queued")
        self.tasks.append(task)
        if idem:
            self.idem[idem] = task

    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        """A producer cancels a task in any state (or one the queue never knew)."""
        if not self.tasks or pick % (len(self.tasks) + 1) == len(self.tasks):
            assert self.run(self.queue.cancel(uuid.uuid4().hex)) == CancelOutcome.UNKNOWN
            return
        task = _pick(self.tasks, pick)
        outcome = self.run(self.queue.cancel(task.id))
        if task.state in ("queued", "delayed", "dead"):
            expected = CancelOutcome.CANCELLED
            task.state = "cancelled"
            self.stats["cancelled"] += 1
        elif task.state == "running":  # cooperative: its worker sees it at its heartbeat
            expected = CancelOutcome.REQUESTED
            task.cancel_flag = True
        elif task.state == "purged":
            expected = CancelOutcome.UNKNOWN
        else:
            expected = CancelOutcome.FINISHED
        assert outcome == expected, (task, outcome)

    # -- workers -------------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 3),
          no_lease=st.sampled_from([False, False, True]))
    def claim(self, worker: str, count: int, no_lease: bool) -> None:
        """A worker claims up to `count` tasks; with `no_lease`, a lease of 0 ms that has run
        out at once (a worker that never heart-beats)."""
        expected = self.claimable()[:count]
        batch = self.run(self.queue.claim(worker, count, 0 if no_lease else LEASE))
        # priority first, then submit order (a requeued or retried task keeps its place)
        assert [t.id for t in batch.tasks] == [t.id for t in expected], (
            [t.n for t in expected], batch.tasks)
        for task in self.tasks:  # the claim promoted every due delayed task
            if task.state == "delayed" and task.due:
                task.state, task.due = "queued", False
        tokens = {c.token for c in batch.tasks}
        assert len(tokens) == len(batch.tasks)
        assert not tokens & {h.claimed.token for h in self.handles}, "a token handed out twice"
        for task, claimed in zip(expected, batch.tasks, strict=True):
            task.state, task.owner, task.token = "running", worker, claimed.token
            task.attempts += 1
            task.lease_expired, task.cancel_flag = no_lease, False
            assert claimed.attempts == task.attempts
            assert claimed.max_attempts == task.limit
            assert claimed.attempts <= claimed.max_attempts
            self.handles.append(Handle(task, worker, claimed))
        if batch.tasks:
            self.registered.add(worker)
        assert batch.queued_left == len(self.in_state("queued"))
        far = [t for t in self.tasks if t.state == "delayed" and not t.due]
        assert (batch.next_due_in is None) == (not far)

    @precondition(lambda self: self.current_handles())
    @rule(pick=PICK)
    def complete(self, pick: int) -> None:
        """A holder reports success (a cancel request does not undo a finished run)."""
        handle = _pick(self.current_handles(), pick)
        task = handle.task
        assert self.run(self.queue.complete(handle.claimed, {"ok": task.n})) is True
        task.state, task.lease_expired = "succeeded", False  # its owner is kept
        self.stats["succeeded"] += 1

    @precondition(lambda self: self.current_handles())
    @rule(pick=PICK, retryable=st.booleans(), far=st.booleans())
    def fail(self, pick: int, retryable: bool, far: bool) -> None:
        """A holder reports a failure: a retry (due at once, or in FAR seconds) while
        attempts remain, else dead-lettered; cancelled when a cancel was requested."""
        handle = _pick(self.current_handles(), pick)
        reply = self.run(self.queue.fail(handle.claimed, "boom", retryable=retryable,
                                         delay=FAR if far else 0))
        task = self.ended(handle)
        if task.cancel_flag:
            expected = self.cancelled(task)
        else:
            self.stats["failed"] += 1
            if retryable and task.attempts < task.limit:
                expected, task.state, task.due = FailOutcome.RETRY, "delayed", not far
                task.retry_of = handle.claimed.token
                self.stats["retried"] += 1
            else:
                expected, task.state = FailOutcome.DEAD, "dead"
                self.stats["dead"] += 1
        assert reply == expected, (task, reply)

    @precondition(lambda self: self.current_handles())
    @rule(pick=PICK, release=st.booleans())
    def stop(self, pick: int, release: bool) -> None:
        """A holder stops a run unfinished: on its cancel request (cancelled), or handed
        back by a draining worker (queued again at its place, no attempt spent; cancelled
        when a cancel was requested)."""
        handle = _pick(self.current_handles(), pick)
        if release:
            reply = self.run(self.queue.release(handle.claimed, "draining"))
        else:
            reply = self.run(self.queue.cancelled(handle.claimed))
        task = self.ended(handle)
        if task.cancel_flag or not release:
            expected = self.cancelled(task)
        else:
            expected, task.state = FailOutcome.REQUEUED, "queued"
            task.attempts -= 1
            self.stats["requeued"] += 1
        assert reply == expected, (task, reply)

    def ended(self, handle: Handle) -> Task:
        """The run of `handle` ended with a report other than success: no owner, no lease."""
        handle.task.owner = None
        handle.task.lease_expired = False
        return handle.task

    def cancelled(self, task: Task) -> FailOutcome:
        task.state = "cancelled"
        self.stats["cancelled"] += 1
        return FailOutcome.CANCELLED

    @rule(worker=st.sampled_from(WORKERS), with_stale=st.booleans(), pick=PICK)
    def heartbeat(self, worker: str, with_stale: bool, pick: int) -> None:
        """A worker's heartbeat with what it holds, and perhaps a zombie's old claim too: its
        lease is not extended, it comes back as lost."""
        held = {h.task.id: h.claimed.token for h in self.current_handles(worker)}
        stale = [h for h in self.stale_handles() if h.task.id not in held]
        if with_stale and stale:
            old = _pick(stale, pick)
            held[old.task.id] = old.claimed.token
        pod, _, instance = worker.rpartition(":")
        beat = self.run(self.queue.heartbeat(WorkerInfo(pod, instance, 4), held, LEASE))
        current = {h.task.id: h.task for h in self.current_handles(worker)}
        assert sorted(beat.lost) == sorted(i for i in held if i not in current)
        assert sorted(beat.cancel) == sorted(i for i, t in current.items() if t.cancel_flag)
        assert beat.drain_requested is False
        for task in current.values():
            task.lease_expired = False
        self.registered.add(worker)

    # -- zombies: a worker that wakes up after its task moved on -------------------------

    def snapshot(self) -> Any:
        """Everything the protocol keeps of the queue's tasks, raw."""
        async def read() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                for task in self.tasks:
                    pipe.hgetall(self.queue.task_key(task.id))
                for name in ("queued", "delayed", "leases", "dead", "workers", "stats"):
                    key = self.queue.prefix + name
                    if name == "stats":
                        pipe.hgetall(key)
                    else:
                        pipe.zrange(key, 0, -1, withscores=True)
                for worker in WORKERS:
                    pipe.smembers(self.queue.prefix + "owner:" + worker)
                return await pipe.execute()
        return self.run(read())

    @precondition(lambda self: self.stale_handles())
    @rule(pick=PICK, result=st.sampled_from(["complete", "fail", "fail-final"]))
    def zombie_reports(self, pick: int, result: str) -> None:
        """Fencing: the holder of a stale token reports an outcome; it is refused and changes
        nothing. (The same report sent again, the token still on the task, gets the answer the
        state the task is in stands for, as a report sent twice would.)"""
        handle = _pick(self.stale_handles(), pick)
        task = handle.task
        before = self.snapshot()
        if result == "complete":
            recorded = self.run(self.queue.complete(handle.claimed, "late"))
            # True only for the completion this very claim recorded (the same one sent again)
            assert recorded is (task.state == "succeeded" and task.token == handle.claimed.token)
        else:
            outcome = self.run(self.queue.fail(handle.claimed, "late", delay=0,
                                               retryable=result == "fail"))
            expected = FailOutcome.STALE
            if task.token == handle.claimed.token and task.state != "running":
                if task.state == "queued" and task.retry_of == handle.claimed.token:
                    expected = FailOutcome.RETRY
                else:
                    expected = {"delayed": FailOutcome.RETRY, "dead": FailOutcome.DEAD,
                                "cancelled": FailOutcome.CANCELLED,
                                "queued": FailOutcome.REQUEUED}.get(task.state, expected)
            assert outcome == expected, (task, handle.claimed.token, outcome)
        assert self.snapshot() == before, f"a stale {result} changed the queue"

    # -- recovery: a worker died ----------------------------------------------------------

    @precondition(lambda self: self.registered)
    @rule(worker=st.sampled_from(WORKERS), whole_pod=st.booleans(), keep=st.booleans())
    def worker_dies(self, worker: str, whole_pod: bool, keep: bool) -> None:
        """The operator saw a worker instance die (requeue by owner), or a pod (requeue by
        pod, perhaps sparing the instance that runs now): what they held goes back to the
        queue, a lost run counted as an attempt."""
        pod, _, instance = worker.rpartition(":")
        if whole_pod:
            spared = worker if keep else None
            instances = sorted(w for w in self.registered
                               if w.startswith(pod + ":") and w != spared)
            result = self.run(self.queue.requeue_pod(
                pod, keep_instance=instance if keep else None))
        else:
            instances = [worker]
            result = self.run(self.queue.requeue_owner(worker))
        counts = [0, 0, 0]
        for dead in instances:
            for i, n in enumerate(self.forget_worker(dead)):
                counts[i] += n
        assert [result.requeued, result.dead_lettered, result.cancelled] == counts
        assert result.instances == len(instances)

    @precondition(lambda self: self.in_state("running"))
    @rule(pick=PICK)
    def expire_lease(self, pick: int) -> None:
        """The lease of a running task runs out (its holder stopped heart-beating)."""
        task = _pick(self.in_state("running"), pick)
        self.run(self.redis.zadd(self.queue.prefix + "leases", {task.id: 1}, xx=True))
        task.lease_expired = True

    @precondition(lambda self: any(t.lease_expired for t in self.in_state("running")))
    @rule()
    def reap_expired(self) -> None:
        expired = [t for t in self.tasks if t.state == "running" and t.lease_expired]
        by_worker: dict[str, list[int]] = {}
        for task in expired:
            holder = task.owner
            assert holder is not None
            by_worker.setdefault(holder, [0, 0, 0])[self.holder_lost(task) - 1] += 1
        result = self.run(self.queue.reap_expired())
        counts = [sum(c[i] for c in by_worker.values()) for i in range(3)]
        assert [result.requeued, result.dead_lettered, result.cancelled] == counts
        assert {w: (r.requeued, r.dead_lettered, r.cancelled)
                for w, r in result.by_worker.items()} == {
                    w: tuple(c) for w, c in by_worker.items()}

    @precondition(lambda self: any(t.state == "delayed" and not t.due for t in self.tasks))
    @rule(pick=PICK)
    def make_due(self, pick: int) -> None:
        """Time passes for one delayed task: it comes due (the next claim promotes it)."""
        task = _pick([t for t in self.tasks if t.state == "delayed" and not t.due], pick)
        self.run(self.redis.zadd(self.queue.prefix + "delayed", {task.id: 1}, xx=True))
        task.due = True

    # -- dead letters ---------------------------------------------------------------------

    @precondition(lambda self: self.in_state("dead"))
    @rule(purge=st.booleans(), pick=PICK, every=st.booleans())
    def dead_letters(self, purge: bool, pick: int, every: bool) -> None:
        """Requeue (from its place, every attempt again) or purge every dead task, or one
        task in any state: only dead ones are touched."""
        chosen = None if every else [_pick(self.tasks, pick)]
        ids = None if chosen is None else [t.id for t in chosen]
        n = self.run(self.queue.purge_dead(ids) if purge else self.queue.requeue_dead(ids))
        dead = [t for t in (self.tasks if chosen is None else chosen) if t.state == "dead"]
        for task in dead:
            if purge:
                task.state = "purged"
            else:
                task.state, task.attempts = "queued", 0
        assert n == len(dead)

    @invariant()
    def redis_agrees_with_the_model(self) -> None:
        async def read() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.time()
                for name in ("queued", "delayed", "leases", "dead"):
                    pipe.zrange(self.queue.prefix + name, 0, -1, withscores=True)
                pipe.zrange(self.queue.prefix + "workers", 0, -1)
                for worker in WORKERS:
                    pipe.smembers(self.queue.prefix + "owner:" + worker)
                for task in self.tasks:
                    pipe.hmget(self.queue.task_key(task.id), "token", "cancel")
                replies = await pipe.execute()
            figures = await self.queue.figures()
            infos = await self.queue.get_many([t.id for t in self.tasks])
            keys = {_text(k) async for k in self.redis.scan_iter(
                match=self.queue.prefix + "t:*", count=10_000)}
            purged = [await self.queue.get(t.id) for t in self.in_state("purged")]
            return replies, figures, infos, keys, purged

        replies, figures, infos, keys, purged = self.run(read())
        (seconds, micros), queued, delayed, leases, dead, workers = replies[:6]
        now = seconds * 1000 + micros // 1000
        owners = dict(zip(WORKERS, replies[6:6 + len(WORKERS)], strict=True))
        raw = replies[6 + len(WORKERS):]

        # no task lost, none made up: Redis keeps exactly the tasks submitted and not purged
        kept = [t for t in self.tasks if self.known(t)]
        assert keys == {self.queue.task_key(t.id) for t in kept}
        assert [i.id for i in infos] == [t.id for t in kept]
        assert purged == [None] * len(purged)

        # every task in exactly one state, the model's, and in the one set of that state
        sets = {"queued": queued, "delayed": delayed, "running": leases, "dead": dead}
        for state, members in sets.items():
            ids = [_text(m) for m, _ in members]
            assert len(ids) == len(set(ids))
            assert set(ids) == {t.id for t in self.tasks if t.state == state}, state
        # queued in claim order: priority first, then submit order
        assert [_text(m) for m, _ in queued] == [
            t.id for t in sorted(self.in_state("queued"), key=lambda t: t.order)]
        for member, score in delayed:
            task = next(t for t in self.tasks if t.id == _text(member))
            assert (score <= now) == task.due, task
        for member, score in leases:
            task = next(t for t in self.tasks if t.id == _text(member))
            assert (score <= now) == task.lease_expired, task

        by_id = {t.id: t for t in kept}
        for info in infos:
            task = by_id[info.id]
            assert info.state in STATES
            assert (info.state, info.attempts, info.priority, info.max_attempts, info.owner) \
                == (task.state, task.attempts, task.priority, task.max_attempts, task.owner), \
                (task, info)
            assert 0 <= info.attempts <= task.limit, "attempts beyond the limit"
        for task, (token, cancel) in zip(self.tasks, raw, strict=True):
            if self.known(task):
                assert (None if token is None else _text(token)) == task.token, task
                if task.state == "running":
                    assert (cancel is not None) == task.cancel_flag, task

        # a running task has a lease and an owner, and its owner's set holds it
        running_of = {w: {h.task.id for h in self.current_handles(w)} for w in WORKERS}
        for worker, members in owners.items():
            assert {_text(m) for m in members} == running_of[worker], worker
        for task in self.in_state("running"):
            assert task.owner in WORKERS and task.id in running_of[task.owner]
            assert task.attempts >= 1
        assert {_text(w) for w in workers} == self.registered

        # the figures, in one round trip
        assert figures.queued_by_priority == {
            p: sum(1 for t in self.in_state("queued") if t.priority == p) for p in range(10)}
        assert figures.due_delayed == sum(1 for t in self.in_state("delayed") if t.due)
        assert figures.delayed == sum(1 for t in self.in_state("delayed") if not t.due)
        assert figures.in_flight == len(self.in_state("running"))
        assert figures.dead == len(self.in_state("dead"))
        assert figures.workers == len(self.registered)
        expected_stats = {k: v for k, v in self.stats.items() if v}
        if self.tasks:
            expected_stats["submitted"] = len(self.tasks)
        assert figures.stats == expected_stats
        assert figures.used == bool(self.tasks or self.registered)


def test_the_protocol_behaves_as_its_model() -> None:
    """About 100 runs of up to 40 steps: a few seconds. A private event loop per run (the
    machine's), a queue of its own, its keys deleted at the end, on a redis-server of its own:
    each step scans the keys, and the session's shared server holds what every test left."""
    with RedisServer() as server:
        class OnThisServer(ProtocolModel):
            url = server.url

        run_state_machine_as_test(OnThisServer, settings=settings(
            max_examples=100, stateful_step_count=40, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
