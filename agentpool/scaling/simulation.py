"""Replays a task arrival trace through an autoscaler: waits, cost, interrupted tasks.

A pure discrete-event simulation (no clock, no threads, no I/O), so a trace gives the same
figures on every machine and a policy change can be judged before it reaches a cluster. It
runs the same trace through two autoscalers on the same simulated cluster:

- ours: `policy.decide` every pollSeconds on the serving pods (live, not draining), the
  tasks queued or running on them and the ages of those runs; `scaledown.plan_drains`
  applies the decision. A scale-down drains the pods `scaledown.choose_pods_to_remove` picks
  (idle first, then the fewest runs, then the oldest run): an idle one leaves at once
  (unless it is the spare the decision keeps), a busy one claims nothing new and keeps its
  replica until its runs end, then leaves at the next poll, so no run is ever interrupted.
  A scale-up takes draining pods back into service before it starts new ones;
- KEDA's defaults over the HPA: the KEDA operator polls every pollingInterval (30 s) and
  alone moves 0 -> 1 and, after cooldownPeriod (300 s) without activity, 1 -> 0; between 1
  and max the HPA syncs every 15 s on a fresh metric (KEDA's default, no metric caching) with
  an AverageValue target of tasksPerReplica, tolerance 0.1, a 300 s scale-down stabilisation
  window, no scale-up window, and its default scale-up limit (the larger of +4 pods and
  +100 % per 15 s). Its metric is the queue length by default, as KEDA's Redis list scaler
  reads it (LLEN: tasks a worker already holds are not counted); `metric="backlog"` gives it
  queued + in-flight instead. On scale-down the ReplicaSet removes pods blindly (not-ready
  ones first, then the newest); each removed pod gets terminationGracePeriodSeconds (30 s)
  to finish before its tasks are interrupted.

Shared model: each replica runs `concurrency` tasks; a new pod serves after
`startup_seconds`; a queued task goes at once to the serving pod with the most free slots
(the oldest pod among equals); an interrupted task goes back to the head of the
queue (its place: ahead of every task that arrived after it, as the task protocol requeues)
and runs again from the start (the kindest case for the baseline: no visibility
timeout, no lost task). A task's wait is from its arrival to the start of the run that
completed it.

The real system differs in two ways left out here: a worker waits on one blocking claim, the
worker waiting longest is woken first and then claims the rest of its free slots at once; and
the operator sees run ages as of each pod's last heartbeat (every lease/3 s, 2.3 s by
default), where the simulation gives the policy each run's exact age. Modelling both moves
the figures little (bench/simulate.md, Robustness).

A rate limit (`Cluster.rate_limit_per_minute`) is the shared limiter of the product: every
run takes one grant from a GCRA bucket of `rate_limit_burst` grants before its work starts,
holding its slot while it waits for the reserved time (the grant time is then the run's start
for its wait; an interrupted run gives back a grant it had not reached). Our autoscaler reads
the share of run time spent waiting over the last minute, as the workers' heartbeats report
it; `rate_aware=False` runs the same policy blind to it, as a comparison.

The run ends once every task is done and the pool is back at its minimum, or at the latest
`give_up_after_seconds` (6 h) after the last arrival: a pool that cannot keep up would
otherwise run for ever. The tasks unfinished then count in the waits with what they had
waited at the stop (a queued one up to the stop, a running one up to the start of its run),
so the waits of such a run are lower bounds (`waits_lower_bound` in its summary).
Replica-seconds count every pod from creation to exit, draining ones included; pod starts
count every pod created after the warm start.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Literal, Protocol

from agentpool.scaling.policy import (
    MIN_POLL_SECONDS,
    LimitWait,
    QueueLoad,
    ScalingHistory,
    ScalingPolicy,
    decide,
    limit_waits,
)
from agentpool.scaling.scaledown import PodLoad, plan_drains, serving_view

WAIT_WINDOW = 60.0
"""Seconds of run time the waiting share covers (as agentpool_worker.limits reports it)."""
LIMIT_NAME = "llm"
MAX_TRACE_DAYS = 30
MAX_ARRIVAL_SECONDS = MAX_TRACE_DAYS * 86400.0
"""The latest arrival a trace may have: both autoscalers tick from 0 to the last arrival."""
GIVE_UP_AFTER_SECONDS = 6 * 3600.0


@dataclass(frozen=True)
class TraceTask:
    arrival: float
    service: float


COLUMNS = ("arrival_seconds", "service_seconds")
"""The trace's columns; a header row may name them in either order."""
ALIASES = {"arrival": COLUMNS[0], "service": COLUMNS[1]}
"""Shorter names a header row may give the columns (traces written before the names were
checked use them)."""


def parse_trace(lines: Iterable[str]) -> list[TraceTask]:
    """`parse_trace_with_warnings` without its warnings."""
    return parse_trace_with_warnings(lines)[0]


def parse_trace_with_warnings(lines: Iterable[str]) -> tuple[list[TraceTask], list[str]]:
    """CSV rows `arrival_seconds,service_seconds`, sorted by arrival, and the warnings the
    reading gave. Blank lines and `#` comments are skipped; a first row whose first cell
    starts with a letter is a header (see `_column_order`). Anything else, and a trace without
    a task, is refused with its line number."""
    tasks: list[TraceTask] = []
    warnings: list[str] = []
    header_allowed = True
    order = (0, 1)
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        cells = [cell.strip() for cell in text.split(",")]
        if header_allowed and _is_header(cells[0]):
            order, warning = _column_order(cells, number)
            warnings.extend([warning] if warning else [])
            header_allowed = False
            continue
        header_allowed = False
        try:
            if len(cells) != 2:
                raise ValueError
            arrival, service = float(cells[order[0]]), float(cells[order[1]])
        except ValueError:
            expected = ",".join(COLUMNS[order.index(cell)] for cell in range(2))
            message = f"line {number}: expected {expected} (two numbers of seconds): {text!r}"
            raise ValueError(message) from None
        if not (math.isfinite(arrival) and math.isfinite(service)) or min(arrival, service) < 0:
            raise ValueError(f"line {number}: times must be finite and non-negative")
        if arrival > MAX_ARRIVAL_SECONDS:
            raise ValueError(
                f"line {number}: arrival {arrival:g} s is more than {MAX_TRACE_DAYS} days after "
                "the trace's start: arrival_seconds counts from the trace's start, not a "
                "clock (subtract the first arrival from every arrival)"
            )
        tasks.append(TraceTask(arrival, service))
    if not tasks:
        raise ValueError(f"the trace holds no task (rows of {','.join(COLUMNS)} in seconds)")
    return sorted(tasks, key=lambda task: task.arrival), warnings


def _is_header(cell: str) -> bool:
    name = cell.strip('"')
    return not _is_number(name) and (name[:1].isalpha() or name[:1] == "_")


def _column_order(cells: Sequence[str], number: int) -> tuple[tuple[int, int], str | None]:
    """Which cells of a row are arrival_seconds and service_seconds, as a header row says, and
    a warning when it says so only in part. A cell naming a column (or its alias) is that
    column; the cells of other names take the columns left, in order, so a header of two
    other names is read by position, as every header was before names were read. Two cells
    naming one column, or other than two cells, are refused."""
    names = [cell.strip('"') for cell in cells]
    quoted = ", ".join(map(repr, names))
    columns = [_column_named(name) for name in names]
    if len(names) != 2 or (columns[0] is not None and columns[0] == columns[1]):
        raise ValueError(
            f"line {number}: the header names the columns {quoted}: expected the two "
            f"columns {COLUMNS[0]} and {COLUMNS[1]} (in either order; or arrival and service)"
        )
    left = [column for column in COLUMNS if column not in columns]
    taken = [column or left.pop(0) for column in columns]
    order = (taken.index(COLUMNS[0]), taken.index(COLUMNS[1]))
    guessed = [index for index, column in enumerate(columns) if column is None]
    if not guessed:
        return order, None
    if len(guessed) == 2:
        took = f"{quoted} as {COLUMNS[0]}, {COLUMNS[1]} by position"
    else:
        took = f"{names[guessed[0]]!r} as {taken[guessed[0]]}, the column the other does not name"
    return order, (
        f"line {number}: the header names the columns {quoted}: took {took}; name them "
        f"{COLUMNS[0]},{COLUMNS[1]} (in either order) to say which is which"
    )


def _column_named(name: str) -> str | None:
    column = ALIASES.get(name.lower(), name.lower())
    return column if column in COLUMNS else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Cluster:
    """What both autoscalers run on."""

    concurrency: int = 4
    startup_seconds: float = 20.0
    sample_seconds: float = 10.0
    give_up_after_seconds: float = GIVE_UP_AFTER_SECONDS
    """How long after the last arrival a run that never settles is stopped."""
    rate_limit_per_minute: float | None = None
    """Grants per minute of a shared rate limit every run waits on; None: no limit."""
    rate_limit_burst: float = 1.0
    """Grants the limit's bucket holds (its burst)."""
    timeline: bool = True
    """Sample the run every `sample_seconds` into `RunResult.timeline` (else it stays empty)."""


@dataclass(frozen=True)
class KedaSettings:
    """KEDA's and the HPA's defaults; bounds and target come from the pool's policy."""

    polling_interval: float = 30.0
    cooldown_period: float = 300.0
    activation_value: float = 0.0
    hpa_sync_seconds: float = 15.0
    tolerance: float = 0.1
    scale_down_stabilization: float = 300.0
    scale_up_pods: int = 4
    scale_up_percent: int = 100
    scale_up_period: float = 15.0
    grace_seconds: float = 30.0
    metric: Literal["queued", "backlog"] = "queued"


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    before: int
    after: int
    reason: str


@dataclass(frozen=True)
class Sample:
    at: float
    replicas: int
    pods: int
    ready: int
    queued: int
    in_flight: int


@dataclass(frozen=True)
class RunResult:
    name: str
    waits: tuple[float, ...]
    replica_seconds: float
    interrupted: int
    pod_starts: int
    scale_events: tuple[ScaleEvent, ...]
    timeline: tuple[Sample, ...]
    end: float
    final_pods: int
    unfinished: int
    last_done: float = 0.0
    """When the last task completed."""
    open_waits: tuple[float, ...] = ()
    """What each unfinished task had waited when the run was stopped: a queued one up to the
    stop, a running one up to the start of its run (longer if that run is interrupted)."""

    def extended_to(self, horizon: float) -> RunResult:
        """The same run kept idle until `horizon`, so runs of one trace compare in cost."""
        extra = self.final_pods * max(0.0, horizon - self.end)
        return replace(
            self, replica_seconds=self.replica_seconds + extra, end=max(horizon, self.end)
        )

    def summary(self) -> dict[str, float | int | str | bool | None]:
        """The run's figures. Waits cover every task, an unfinished one with what it had
        waited at the stop, so with tasks unfinished they are lower bounds
        (`waits_lower_bound`); None when there is no task, as is the throughput when no task
        finished."""
        waits = sorted(self.waits + self.open_waits)
        per_minute = 60 * len(self.waits) / self.last_done if self.last_done > 0 else 0.0
        return {
            "autoscaler": self.name,
            "tasks": len(self.waits),
            "tasks_per_minute": round(per_minute, 2) if self.waits else None,
            "unfinished": self.unfinished,
            "p50_wait_s": round(percentile(waits, 50), 2) if waits else None,
            "p95_wait_s": round(percentile(waits, 95), 2) if waits else None,
            "max_wait_s": round(waits[-1], 2) if waits else None,
            "waits_lower_bound": self.unfinished > 0,
            "replica_seconds": round(self.replica_seconds, 1),
            "interrupted_tasks": self.interrupted,
            "pod_starts": self.pod_starts,
            "scale_events": len(self.scale_events),
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks of an ascending sequence (numpy default)."""
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class SimPod:
    ident: int
    created: float
    ready_at: float
    running: dict[int, int] = field(default_factory=dict)
    """Task index -> run number, to tell a live completion from one of an interrupted run."""
    since: dict[int, float] = field(default_factory=dict)
    """Task index -> when its run began."""
    granted: dict[int, float] = field(default_factory=dict)
    """Task index -> when its rate-limit grant comes (its work starts)."""
    leaving: bool = False
    """Removed from the Deployment: its tasks get the grace period, then are interrupted."""
    draining: bool = False
    """Chosen by our scale-down: claims nothing, keeps its replica until its runs end."""
    exited_at: float | None = None

    def ready(self, now: float) -> bool:
        return self.ready_at <= now

    def serving(self, now: float) -> bool:
        return not self.leaving and not self.draining and self.ready(now)


@dataclass(frozen=True)
class Step:
    """What one evaluation does to the simulated cluster."""

    event: ScaleEvent | None = None
    start: int = 0
    stop: tuple[SimPod, ...] = ()
    """Removed by the ReplicaSet: they get the grace period, then their tasks are interrupted."""
    drain: tuple[SimPod, ...] = ()
    withdraw: tuple[SimPod, ...] = ()
    release: tuple[SimPod, ...] = ()
    """Draining pods with no run left: they exit now."""


class Autoscaler(Protocol):
    name: str
    policy: ScalingPolicy
    grace_seconds: float
    """How long a stopped busy pod may finish its tasks before they are interrupted."""

    def next_tick(self, now: float) -> float:
        """The first evaluation time strictly after `now`."""

    def step(self, now: float, queued: int, pods: Sequence[SimPod],
             limit_waits: tuple[LimitWait, ...] = ()) -> Step:
        """What to do now, given the queue, the live pods and the runs' rate-limit waits."""


class OurAutoscaler:
    """`scaling.decide` in a loop over the serving pods; `scaledown.plan_drains` applies it.
    `rate_aware=False` hides the rate-limit waits from the policy."""

    grace_seconds = math.inf

    def __init__(self, policy: ScalingPolicy, *, rate_aware: bool = True) -> None:
        self.policy = policy
        self.history = ScalingHistory()
        self.rate_aware = rate_aware
        self.name = "agentpool" if rate_aware else "agentpool-unaware"

    def next_tick(self, now: float) -> float:
        return _next_multiple(now, max(MIN_POLL_SECONDS, self.policy.poll_seconds))

    def step(self, now: float, queued: int, pods: Sequence[SimPod],
             limit_waits: tuple[LimitWait, ...] = ()) -> Step:
        by_name = {f"{pod.ident:09d}": pod for pod in pods}
        loads = [
            PodLoad(name, len(pod.running), pod.ready(now), draining=pod.draining,
                    run_ages=tuple(now - at for at in pod.since.values()))
            for name, pod in by_name.items()
        ]
        view = serving_view(loads)
        ages = tuple(age for load in loads if not load.draining for age in load.run_ages)
        waits = limit_waits if self.rate_aware else ()
        load = QueueLoad(queued, view.in_flight, limit_waits=waits, run_ages=ages,
                         draining_runs=view.draining_runs)
        decision = decide(self.policy, load, view.serving, self.history, now)
        self.history = decision.history
        plan = plan_drains(loads, decision.replicas, decision.keep)
        event = None
        if decision.changed:
            event = ScaleEvent(now, decision.current, decision.replicas, decision.reason)
        return Step(
            event=event,
            start=plan.start,
            drain=tuple(by_name[name] for name in plan.drain),
            withdraw=tuple(by_name[name] for name in plan.withdraw),
            release=tuple(by_name[name] for name in plan.release),
        )


class KedaAutoscaler:
    """KEDA's operator loop (0 <-> 1) and the HPA (1 <-> max) with their default behaviour."""

    name = "keda"

    def __init__(self, policy: ScalingPolicy, settings: KedaSettings) -> None:
        self.policy = policy
        self.settings = settings
        self.grace_seconds = settings.grace_seconds
        self.hpa_min = max(1, policy.min_replicas)
        self.last_active: float | None = None
        self.recommendations: list[tuple[float, int]] = []
        self.changes: list[tuple[float, int]] = []

    def next_tick(self, now: float) -> float:
        return min(
            _next_multiple(now, self.settings.polling_interval),
            _next_multiple(now, self.settings.hpa_sync_seconds),
        )

    def step(self, now: float, queued: int, pods: Sequence[SimPod],
             limit_waits: tuple[LimitWait, ...] = ()) -> Step:
        """The HPA's replica count; the ReplicaSet stops pods blindly to meet it."""
        serving = [pod for pod in pods if not pod.leaving]
        in_flight = sum(len(pod.running) for pod in pods)
        event = self.evaluate(now, queued, in_flight, len(serving))
        if event.after == event.before:
            return Step()
        if event.after > event.before:
            return Step(event=event, start=event.after - event.before)
        count = event.before - event.after
        return Step(event=event, stop=tuple(self.choose_removals(serving, count, now)))

    def evaluate(self, now: float, queued: int, in_flight: int, replicas: int) -> ScaleEvent:
        metric = queued if self.settings.metric == "queued" else queued + in_flight
        if _on_multiple(now, self.settings.polling_interval):
            event = self._keda_poll(now, metric, replicas)
            if event.after != replicas:
                return event
        if replicas > 0 and _on_multiple(now, self.settings.hpa_sync_seconds):
            return self._hpa_sync(now, metric, replicas)
        return ScaleEvent(now, replicas, replicas, "")

    def choose_removals(self, pods: Sequence[SimPod], count: int, now: float) -> list[SimPod]:
        """The ReplicaSet's blind choice: pods not ready yet, then the newest."""
        return sorted(pods, key=lambda pod: (pod.ready(now), -pod.created))[:count]

    def _keda_poll(self, now: float, metric: int, replicas: int) -> ScaleEvent:
        if metric > self.settings.activation_value:
            self.last_active = now
            if replicas == 0:
                return ScaleEvent(now, 0, self.hpa_min, f"KEDA activation: metric {metric}")
        elif replicas > 0 and self.policy.min_replicas == 0:
            idle_since = self.last_active if self.last_active is not None else 0.0
            if now - idle_since >= self.settings.cooldown_period:
                return ScaleEvent(now, replicas, 0, "KEDA cooldownPeriod passed")
        return ScaleEvent(now, replicas, replicas, "")

    def _hpa_sync(self, now: float, metric: int, replicas: int) -> ScaleEvent:
        s = self.settings
        target = self.policy.tasks_per_replica
        ratio = metric / (target * replicas)
        recommended = replicas if abs(ratio - 1) <= s.tolerance else math.ceil(metric / target)
        window_start = now - s.scale_down_stabilization
        self.recommendations = [r for r in self.recommendations if r[0] > window_start]
        stabilized = recommended
        if recommended < replicas:
            highest = max([recommended, *(r for _, r in self.recommendations)])
            stabilized = min(replicas, highest)
        self.recommendations.append((now, recommended))
        desired = stabilized
        self.changes = [c for c in self.changes if c[0] > now - s.scale_up_period]
        if desired > replicas:
            base = replicas - sum(delta for _, delta in self.changes)
            limit = max(base + s.scale_up_pods, math.ceil(base * (1 + s.scale_up_percent / 100)))
            desired = min(desired, max(limit, replicas))
        desired = max(self.hpa_min, min(self.policy.max_replicas, desired))
        if desired != replicas:
            self.changes.append((now, desired - replicas))
        reason = f"HPA: metric {metric}, target {target}/pod, recommended {recommended}"
        return ScaleEvent(now, replicas, desired, reason)


class _Kind(IntEnum):
    """Same-time events run in this order: capacity first, then work, then decisions."""

    READY = 0
    DONE = 1
    DEADLINE = 2
    ARRIVAL = 3
    TICK = 4
    SAMPLE = 5


@dataclass
class _Run:
    """Mutable state of one simulation; `simulate` drives it event by event."""

    trace: Sequence[TraceTask]
    scaler: Autoscaler
    cluster: Cluster
    replicas: int
    pods: list[SimPod] = field(default_factory=list)
    live: list[SimPod] = field(default_factory=list)
    queue: deque[int] = field(default_factory=deque)
    events: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    waits: dict[int, float] = field(default_factory=dict)
    interrupted: int = 0
    starts: int = 0
    arrived: int = 0
    scale_events: list[ScaleEvent] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)
    seq: int = 0
    tat: float = 0.0
    """The rate limit's theoretical arrival time (GCRA)."""
    granted: list[float] = field(default_factory=list)
    ended: deque[tuple[float, float, float]] = field(default_factory=deque)
    """(run start, grant, end) of runs that ended within the last WAIT_WINDOW."""
    last_done: float = 0.0

    def reserve(self, now: float) -> float:
        """One grant of the rate limit for a run starting at `now`: when its work may start."""
        rate = self.cluster.rate_limit_per_minute
        if rate is None:
            return now
        per = 60.0 / rate
        grant = max(now, self.tat - max(0.0, self.cluster.rate_limit_burst - 1) * per)
        self.tat = max(self.tat, grant) + per
        return grant

    def give_back(self, now: float, grant: float) -> None:
        rate = self.cluster.rate_limit_per_minute
        if rate is not None and grant > now:
            self.tat -= 60.0 / rate

    def limit_waits(self, now: float) -> tuple[LimitWait, ...]:
        """The runs' waiting share over the last WAIT_WINDOW, as the heartbeats report it."""
        if self.cluster.rate_limit_per_minute is None:
            return ()
        start = now - WAIT_WINDOW
        while self.ended and self.ended[0][2] <= start:
            self.ended.popleft()
        spans = list(self.ended) + [
            (pod.since[task], pod.granted[task], now) for pod in self.live for task in pod.running
        ]
        busy = sum(max(0.0, end - max(begin, start)) for begin, _, end in spans)
        waited = sum(
            max(0.0, min(grant, end) - max(begin, start)) for begin, grant, end in spans
        )
        return limit_waits([{"busy": busy, "waited": {LIMIT_NAME: waited}}])

    def push(self, at: float, kind: _Kind, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, a, b))

    def in_flight(self) -> int:
        return sum(len(pod.running) for pod in self.live)

    def add_pods(self, count: int, now: float, startup: float) -> None:
        for _ in range(count):
            pod = SimPod(ident=len(self.pods), created=now, ready_at=now + startup)
            self.pods.append(pod)
            self.live.append(pod)
            if startup > 0:
                self.push(pod.ready_at, _Kind.READY, pod.ident)

    def apply(self, step: Step, now: float) -> None:
        for pod in step.withdraw:
            pod.draining = False
        for pod in step.drain:
            pod.draining = True
        for pod in step.release:
            self.exit(pod, now)
        for pod in step.stop:
            pod.leaving = True
            if pod.running:
                self.push(now + self.scaler.grace_seconds, _Kind.DEADLINE, pod.ident)
            else:
                self.exit(pod, now)
        self.add_pods(step.start, now, self.cluster.startup_seconds)
        self.starts += step.start
        self.replicas = sum(1 for pod in self.live if not pod.leaving)

    def exit(self, pod: SimPod, now: float) -> None:
        pod.exited_at = now
        self.live.remove(pod)

    def dispatch(self, now: float) -> None:
        while self.queue:
            free = [
                pod
                for pod in self.live
                if pod.serving(now) and len(pod.running) < self.cluster.concurrency
            ]
            if not free:
                return
            pod = min(free, key=lambda p: (len(p.running), p.ident))
            task = self.queue.popleft()
            self.runs[task] += 1
            grant = self.reserve(now)
            self.started[task] = grant
            pod.running[task] = self.runs[task]
            pod.since[task] = now
            pod.granted[task] = grant
            self.push(grant + self.trace[task].service, _Kind.DONE, pod.ident, task)

    def finish(self, now: float, pod: SimPod, task: int) -> None:
        if pod.exited_at is not None or pod.running.get(task) != self.runs[task]:
            return
        del pod.running[task]
        self.ended.append((pod.since.pop(task), pod.granted.pop(task), now))
        self.waits[task] = self.started[task] - self.trace[task].arrival
        self.last_done = now
        if pod.leaving and not pod.running:
            self.exit(pod, now)

    def interrupt(self, now: float, pod: SimPod) -> None:
        if pod.exited_at is not None:
            return
        stopped = sorted(pod.running, reverse=True)
        self.interrupted += len(stopped)
        self.queue.extendleft(stopped)
        for task in stopped:
            self.give_back(now, pod.granted[task])
            self.ended.append((pod.since[task], pod.granted[task], now))
        pod.running.clear()
        pod.since.clear()
        pod.granted.clear()
        self.exit(pod, now)

    def open_waits(self, stop: float) -> tuple[float, ...]:
        """What each unfinished task has waited at `stop` (see `RunResult.open_waits`)."""
        starts = {task: grant for pod in self.live for task, grant in pod.granted.items()}
        return tuple(
            max(0.0, min(starts.get(task, stop), stop) - self.trace[task].arrival)
            for task in range(len(self.trace))
            if task not in self.waits
        )

    def settled(self) -> bool:
        return (
            self.arrived == len(self.trace)
            and not self.queue
            and all(
                not pod.leaving and not pod.draining and not pod.running for pod in self.live
            )
            and self.replicas == self.scaler.policy.min_replicas
        )


def simulate(
    trace: Sequence[TraceTask], scaler: Autoscaler, cluster: Cluster = Cluster()
) -> RunResult:
    """Run `trace` through `scaler`, starting from a warm pool at its minimum size."""
    trace = sorted(trace, key=lambda task: task.arrival)
    run = _Run(trace=trace, scaler=scaler, cluster=cluster, replicas=scaler.policy.min_replicas)
    run.runs = [0] * len(trace)
    run.started = [0.0] * len(trace)
    run.add_pods(run.replicas, 0.0, 0.0)
    for index, task in enumerate(trace):
        run.push(task.arrival, _Kind.ARRIVAL, index)
    run.push(0.0, _Kind.TICK)
    if cluster.timeline:
        run.push(0.0, _Kind.SAMPLE)
    give_up = (trace[-1].arrival if trace else 0.0) + cluster.give_up_after_seconds
    now = 0.0
    while run.events and not run.settled():
        now, kind, _, a, b = heapq.heappop(run.events)
        if now > give_up:
            break
        if kind == _Kind.ARRIVAL:
            run.arrived += 1
            run.queue.append(a)
        elif kind == _Kind.DONE:
            run.finish(now, run.pods[a], b)
        elif kind == _Kind.DEADLINE:
            run.interrupt(now, run.pods[a])
        elif kind == _Kind.TICK:
            _tick(run, now)
            run.push(scaler.next_tick(now), _Kind.TICK)
        elif kind == _Kind.SAMPLE:
            run.timeline.append(_sample(run, now))
            run.push(now + cluster.sample_seconds, _Kind.SAMPLE)
        run.dispatch(now)
    if cluster.timeline:
        run.timeline.append(_sample(run, now))
    return RunResult(
        name=scaler.name,
        waits=tuple(run.waits[task] for task in sorted(run.waits)),
        replica_seconds=sum(
            (pod.exited_at if pod.exited_at is not None else now) - pod.created for pod in run.pods
        ),
        interrupted=run.interrupted,
        pod_starts=run.starts,
        scale_events=tuple(run.scale_events),
        timeline=tuple(run.timeline),
        end=now,
        final_pods=len(run.live),
        unfinished=len(trace) - len(run.waits),
        last_done=run.last_done,
        open_waits=run.open_waits(min(now, give_up)),
    )


def _tick(run: _Run, now: float) -> None:
    step = run.scaler.step(now, len(run.queue), list(run.live), run.limit_waits(now))
    if step.event is not None:
        run.scale_events.append(step.event)
    run.apply(step, now)


def _sample(run: _Run, now: float) -> Sample:
    live = run.live
    return Sample(
        at=now,
        replicas=run.replicas,
        pods=len(live),
        ready=sum(1 for pod in live if pod.serving(now)),
        queued=len(run.queue),
        in_flight=run.in_flight(),
    )


@dataclass(frozen=True)
class Comparison:
    ours: RunResult
    keda: RunResult
    unaware: RunResult | None = None
    """Our policy blind to rate-limit waits (only when the cluster has a rate limit)."""

    @property
    def runs(self) -> tuple[RunResult, ...]:
        return (self.ours, *((self.unaware,) if self.unaware else ()), self.keda)


def compare(
    trace: Sequence[TraceTask],
    policy: ScalingPolicy,
    cluster: Cluster = Cluster(),
    keda: KedaSettings = KedaSettings(),
) -> Comparison:
    """Both autoscalers on one trace, costs counted up to the same moment; with a rate limit,
    also our policy blind to it."""
    ours = simulate(trace, OurAutoscaler(policy), cluster)
    baseline = simulate(trace, KedaAutoscaler(policy, keda), cluster)
    unaware = None
    if cluster.rate_limit_per_minute is not None:
        unaware = simulate(trace, OurAutoscaler(policy, rate_aware=False), cluster)
    horizon = max(ours.end, baseline.end, unaware.end if unaware else 0.0)
    return Comparison(
        ours.extended_to(horizon), baseline.extended_to(horizon),
        unaware.extended_to(horizon) if unaware else None,
    )


def _next_multiple(now: float, period: float) -> float:
    """Ticks fall on multiples of the period, so no floating-point drift accumulates."""
    step = math.floor(now / period + 1e-9) + 1
    return step * period


def _on_multiple(now: float, period: float) -> bool:
    ratio = now / period
    return abs(ratio - round(ratio)) < 1e-9
