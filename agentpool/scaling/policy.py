"""Desired replicas of a pool from its queue: the scaling policy as a pure function.

The operator's loop gathers plain data (queue figures, current replicas, the history it
persisted after the previous decision, the clock) and applies the `Decision`; everything that
decides lives here, so every rule can be tested without a cluster, a Redis or a clock.

Rules, in the order `decide` applies them:
- a time in the history later than `now` counts as `now`: the times are wall-clock times
  kept across operators, and a clock stepped back (or an operator whose clock is behind the
  previous one's) must not hold scale-ups or scale-downs until it passes them;
- missing figures (Redis unreachable): hold the current size, only clamped into the bounds —
  a blind controller must neither shed workers nor scale to zero;
- need = ceil((in-flight + queued - absorbed) / tasksPerReplica), so pods busy with long
  tasks are never counted as spare. `current` and the in-flight count are those of the
  serving pods: pods draining after a scale-down are neither capacity nor backlog (the
  simulator counts them with `scaledown.serving_view`, the operator with
  `scaling_plan.serving_replicas` and `serving_load`, which also leave out the pods a
  rollout is stopping: keep the two in step). `absorbed` is the number of runs expected to
  end within the start-up of a new pod (`start_seconds`): a task they will take starts no
  pod, as the pod would come too late for it. A run's remaining time is estimated by the mean
  age of the running runs (for runs arriving steadily, the mean age equals the mean remaining
  time), remembered with a slow decay (`run_memory_seconds`) so that the young runs of a burst
  do not pass for short ones; without reported run ages, or within ABSORB_AFTER_SECONDS of a
  fresh history, nothing is absorbed;
- activation: a pool at zero stays there until the backlog exceeds activationDepth. A pool
  is at zero when its last decision was zero (kept in the history), not whenever no pod
  serves: a pool whose only pods leave with their node, or were taken off by hand, is awake
  with no serving pod, and starts one for its backlog at once, or for a whole window after it
  served its last task (zero comes only after a whole idle window). A history that does not
  know its last decision (an older operator's) takes no serving pod for zero;
- bounds [minReplicas, maxReplicas]; minReplicas == maxReplicas is a fixed-size pool;
- scale-up: at once (no stabilisation), unless inside scaleUpCooldownSeconds of the previous
  scale-up; waking from zero ignores that cooldown, as no worker at all serves the queue;
- scale-down: to the highest need recommended within the last scaleDownCooldownSeconds (the
  HPA's stabilisation window), and never within that cooldown after a scale-up, so capacity
  just added is not taken away at once. A scale-down does not hold the next one: as the high
  recommendations of a burst age out of the window, the pool follows them down poll by poll.
  A scale-down only drains (the pods stop taking work, which is cheap to undo); `keep` adds
  one drained pod (KEPT_SPARE) to the serving ones while the need within keepDrainedSeconds
  rose above them, so a load that comes and goes takes it back instead of starting a pod
  (nothing is kept by a scale to zero);
- a fresh history (see `ScalingHistory`) holds scale-downs for one window;
- scale to zero only after the queue held nothing queued or in flight for a whole cooldown;
- step limits cap the change of one decision;
- rate limits: when the pool's runs (those of every pod, draining ones included) spend at
  least RATE_LIMITED_SHARE of their time waiting for one rate limit's grants (the share their
  heartbeats report over the last minute), more pods cannot add throughput, only more
  waiting. The limit then *holds* the pool and caps its need at the size it can feed,
  ceil(current * (1 - share) / (1 - RATE_LIMIT_TARGET_SHARE)): the pods that would be busy
  if the waits shrank to the target share, which keeps the limit fully used. A pool above
  the cap scales down to it through the usual stabilisation window and cooldown. While held:
  within RATE_LIMIT_SETTLE_SECONDS of a change of size the cap is the current size (the share
  still describes the old size); a share between RATE_LIMIT_RELEASE_SHARE and RATE_LIMITED_SHARE
  keeps the size; a share below RATE_LIMIT_RELEASE_SHARE (the limit got faster, the tasks
  slower) lets the pool grow by RATE_LIMIT_PROBE_FACTOR per settle period. The pool remembers
  the size the limit last capped it at (it can feed that many), so when the backlog comes
  back it scales up to that size at once and no further: the next burst does not scale into
  the limit again. A limit only holds a pool whose runs waited on it; the memory is in the
  scaling history. A limit gone from the pool's spec lets go of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from agentpool.models import ScalingSpec

TIMES = "\N{MULTIPLICATION SIGN}"
MAX_RECOMMENDATIONS = 32
"""Bound on remembered recommendations, so the history fits an annotation."""
MIN_POLL_SECONDS = 1.0
"""A pool's scaling round runs at most this often, whatever its pollSeconds says."""
RATE_LIMITED_SHARE = 0.25
"""A rate limit holds the pool when its runs spend at least this share of their run time
waiting for its grants."""
RATE_LIMIT_RELEASE_SHARE = 0.05
"""A limit that held the pool lets go only when the waiting share falls below this."""
RATE_LIMIT_TARGET_SHARE = 0.10
"""The waiting share a rate-limited pool is sized for: a little waiting keeps the limit full."""
RATE_LIMIT_SETTLE_SECONDS = 60.0
"""The waiting share covers the last minute of run time, so after a change of size it takes a
minute to describe the new size: a held pool makes no new rate-limit move within it."""
RATE_LIMIT_PROBE_FACTOR = 1.25
"""A held pool that hardly waits grows by this factor per settle period (at least one pod)."""
KEPT_SPARE = 1
"""Drained pods without runs kept beyond the serving count. One spare takes back the load that
comes and goes around a pod's worth; keeping a burst's pods would cost keepDrainedSeconds each
for a burst that seldom returns within it (measured in bench/simulate.md)."""
ABSORB_AFTER_SECONDS = 120.0
"""A history younger than this absorbs nothing: the runs it sees may all have just begun (a
burst on a fresh pool), and their young ages would pass for short runs."""


@dataclass(frozen=True)
class ScalingPolicy:
    """The pool's scaling parameters, resolved (tasksPerReplica defaults to concurrency)."""

    min_replicas: int = 1
    max_replicas: int = 10
    tasks_per_replica: int = 4
    activation_depth: int = 0
    poll_seconds: float = 2.0
    scale_up_cooldown_seconds: float = 0.0
    scale_down_cooldown_seconds: float = 20.0
    scale_up_step: int | None = None
    scale_down_step: int | None = None
    keep_drained_seconds: float = 600.0
    start_seconds: float = 10.0
    """Expected time from a new pod's creation to serving: runs ending sooner than that serve
    the queue before a new pod could."""
    run_memory_seconds: float = 600.0
    """How slowly the estimate of a run's remaining time forgets longer runs seen before."""
    declared_limits: frozenset[str] | None = None
    """The rate limits the pool declares (None: any its workers report). A limit that held
    the pool and is no longer declared holds it no more."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.tasks_per_replica < 1:
            raise ValueError("tasks_per_replica must be at least 1")
        if self.activation_depth < 0 or self.poll_seconds <= 0:
            raise ValueError("activation_depth must be >= 0 and poll_seconds > 0")
        if self.scale_up_cooldown_seconds < 0 or self.scale_down_cooldown_seconds < 0:
            raise ValueError("cooldowns must not be negative")
        if min(self.keep_drained_seconds, self.start_seconds, self.run_memory_seconds) < 0:
            raise ValueError("keep, start and memory times must not be negative")
        for step in (self.scale_up_step, self.scale_down_step):
            if step is not None and step < 1:
                raise ValueError("step limits must be at least 1 when set")

    @classmethod
    def from_spec(cls, scaling: ScalingSpec, concurrency: int,
                  declared_limits: Iterable[str] | None = None) -> ScalingPolicy:
        return cls(
            declared_limits=None if declared_limits is None else frozenset(declared_limits),
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            tasks_per_replica=scaling.target_per_replica(concurrency),
            activation_depth=scaling.activation_depth,
            poll_seconds=scaling.poll_seconds,
            scale_up_cooldown_seconds=scaling.scale_up_cooldown_seconds,
            scale_down_cooldown_seconds=scaling.scale_down_cooldown_seconds,
            scale_up_step=scaling.scale_up_step,
            scale_down_step=scaling.scale_down_step,
            keep_drained_seconds=scaling.keep_drained_seconds,
        )

    @property
    def fixed(self) -> bool:
        return self.min_replicas == self.max_replicas

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class LimitWait:
    """Share of the pool's run time (draining pods' runs included) spent waiting for one
    rate limit's grants."""

    name: str
    share: float


@dataclass(frozen=True)
class QueueLoad:
    """The queue at one poll. `queued` counts ready-to-run tasks only (delayed ones wait for
    their time, not for a worker). `figures_ok` is False when Redis could not be read.
    `limit_waits`: what the workers report of their rate-limit waits (none without limits)."""

    queued: int = 0
    in_flight: int = 0
    figures_ok: bool = True
    limit_waits: tuple[LimitWait, ...] = ()
    run_ages: tuple[float, ...] = ()
    """Seconds each in-flight run has been going, as the workers report them (may be fewer
    than `in_flight`)."""
    capped: int = 0
    """Ready tasks left out of `queued`: parked for their tenant's cap on runs at once, so no
    worker may take them until one of its runs ends, and more pods would not start them."""
    draining_runs: int = 0
    """Runs of draining or stopping pods: they are in `limit_waits` (the share covers every
    pod's runs), so the size a limit can feed counts them, as pods' worth of runs, with the
    serving pods."""

    @classmethod
    def unavailable(cls) -> QueueLoad:
        return cls(figures_ok=False)

    @property
    def backlog(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class ScalingHistory:
    """What a decision needs to remember until the next one; plain data, JSON round-trip.

    `since` is when this history began. A fresh history (after an operator restart, or a
    damaged annotation) holds scale-downs for one window, because the recommendations that
    would justify one are unknown; so replacing a lost history by `ScalingHistory()` is safe.
    """

    recommendations: tuple[Recommendation, ...] = ()
    since: float | None = None
    last_scale_up: float | None = None
    last_scale_down: float | None = None
    idle_since: float | None = None
    rate_limited: str | None = None
    """The rate limit that holds the pool (it capped a decision), if any."""
    rate_limited_size: int | None = None
    """The size that limit last capped the pool at: what it can feed, as far as is known."""
    run_seconds: float | None = None
    """The estimate of a run's remaining time, as of `run_seconds_at`."""
    run_seconds_at: float | None = None
    replicas: int | None = None
    """The serving replicas the last decision with figures set (None: not known). Zero means
    the pool is asleep."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "recommendations": [[r.at, r.replicas] for r in self.recommendations],
            "since": self.since,
            "lastScaleUp": self.last_scale_up,
            "lastScaleDown": self.last_scale_down,
            "idleSince": self.idle_since,
            "runSeconds": self.run_seconds,
            "runSecondsAt": self.run_seconds_at,
            "replicas": self.replicas,
        }
        if self.rate_limited is not None:
            data["rateLimited"] = self.rate_limited
            data["rateLimitedSize"] = self.rate_limited_size
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalingHistory:
        """Inverse of `to_json`; raises ValueError on anything else."""
        try:
            recommendations = tuple(
                Recommendation(_number(at), _count(replicas))
                for at, replicas in data.get("recommendations", [])
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"malformed scaling history: {error}") from error
        return cls(
            recommendations=recommendations[-MAX_RECOMMENDATIONS:],
            since=_optional_number(data.get("since")),
            last_scale_up=_optional_number(data.get("lastScaleUp")),
            last_scale_down=_optional_number(data.get("lastScaleDown")),
            idle_since=_optional_number(data.get("idleSince")),
            rate_limited=_optional_text(data.get("rateLimited")),
            rate_limited_size=_optional_count(data.get("rateLimitedSize")),
            run_seconds=_optional_number(data.get("runSeconds")),
            run_seconds_at=_optional_number(data.get("runSecondsAt")),
            replicas=_optional_count(data.get("replicas")),
        )


@dataclass(frozen=True)
class RateLimitCap:
    """A rate limit holding the pool: its waiting share and the size it can feed."""

    limit: str
    share: float
    cap: int
    need: int
    """What the backlog alone would ask for."""

    def describe(self) -> str:
        return (f"rate limit {self.limit}: runs wait {self.share:.0%} of their time, "
                f"{_replicas(self.cap)} can feed it")


MIN_BUSY_SECONDS = 5.0
"""Run-seconds a pool must have been busy within the window before its waiting share counts."""


def limit_waits(reports: Iterable[Mapping[str, Any] | None]) -> tuple[LimitWait, ...]:
    """The pool's waiting share per limit from its workers' heartbeat reports
    (``{"busy": s, "waited": {limit: s}}``): waited run-seconds over busy run-seconds, summed
    over the workers. Malformed reports are skipped."""
    busy = 0.0
    waited: dict[str, float] = {}
    for report in reports:
        if not isinstance(report, Mapping):
            continue
        spent, waits = report.get("busy"), report.get("waited")
        if not isinstance(spent, int | float) or isinstance(spent, bool):
            continue
        if not isinstance(waits, Mapping):
            continue
        busy += max(0.0, float(spent))
        for name, seconds in waits.items():
            if isinstance(name, str) and _is_number(seconds):
                waited[name] = waited.get(name, 0.0) + max(0.0, float(seconds))
    if busy < MIN_BUSY_SECONDS:
        return ()
    return tuple(LimitWait(name, min(1.0, total / busy)) for name, total in sorted(waited.items()))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rate_limit_cap(
    policy: ScalingPolicy,
    waits: tuple[LimitWait, ...],
    current: int,
    history: ScalingHistory,
    now: float,
    draining_runs: int = 0,
) -> RateLimitCap | None:
    """The size a rate limit lets the pool have now, or None when no limit holds it (`need`
    is filled in by `decide`). The `draining_runs` of draining pods are in the share too, so
    they count (as pods' worth of runs) in the size the limit feeds. Limits the pool no longer
    declares hold it no more (old pods may still report waits on them). See the module
    docstring for the rules."""
    declared = policy.declared_limits
    if declared is not None:
        waits = tuple(wait for wait in waits if wait.name in declared)
    held, fed = history.rate_limited, history.rate_limited_size or 0
    if held is not None and declared is not None and held not in declared:
        held, fed = None, 0
    shares = {wait.name: min(1.0, wait.share) for wait in waits}
    top = max(waits, key=lambda w: (w.share, w.name)) if waits else None
    if top is not None and top.share >= RATE_LIMITED_SHARE and (
        held is None or top.share > shares.get(held, 0.0)
    ):
        name = top.name
    elif held is not None:
        name = held
    else:
        return None
    if name != held:
        fed = 0
    share = shares.get(name, 0.0)
    changes = [t for t in (history.last_scale_up, history.last_scale_down) if t is not None]
    settling = name == held and bool(changes) and now - max(changes) < RATE_LIMIT_SETTLE_SECONDS
    if share >= RATE_LIMITED_SHARE and not settling:
        waiting = current + draining_runs / policy.tasks_per_replica
        cap = math.ceil(waiting * (1 - share) / (1 - RATE_LIMIT_TARGET_SHARE) - 1e-9)
    elif settling or share >= RATE_LIMIT_RELEASE_SHARE or current < fed:
        cap = max(current, fed)
    else:
        cap = max(current + 1, math.ceil(current * RATE_LIMIT_PROBE_FACTOR))
    return RateLimitCap(name, share, policy.clamp(max(1, cap)), 0)


@dataclass(frozen=True)
class Decision:
    """The outcome of one poll: replicas to set, why (for status and Events), what to keep."""

    replicas: int
    reason: str
    history: ScalingHistory
    current: int
    limited: RateLimitCap | None = None
    """Set when a rate limit capped the need below what the backlog asked for."""
    keep: int = -1
    """Replicas to keep, draining ones included (at least `replicas`); -1 means `replicas`."""
    need: int | None = None
    """The need this poll, within the bounds, the absorbed tasks left out; None when the
    figures were not read or the pool has a fixed size."""
    asleep: bool = False
    """The decision is zero (with the figures read): the pool sleeps, and wakes only when the
    backlog exceeds activationDepth, whatever pods still finish their runs."""

    def __post_init__(self) -> None:
        if self.keep < self.replicas:
            object.__setattr__(self, "keep", self.replicas)

    @property
    def changed(self) -> bool:
        return self.replicas != self.current


def decide(
    policy: ScalingPolicy,
    load: QueueLoad,
    current: int,
    history: ScalingHistory,
    now: float,
) -> Decision:
    """Desired replicas for a pool running `current` replicas, observed at `now` (seconds)."""
    history = _not_after(history, now)
    since = history.since if history.since is not None else now
    history = replace(history, since=since)
    if not load.figures_ok:
        held = replace(history, idle_since=None)
        blind = _settle(policy, current, current, "queue figures unavailable", held, now)
        return replace(blind, history=replace(blind.history, replicas=history.replicas))
    backlog = load.backlog
    idle_since = history.idle_since if history.idle_since is not None else now
    history = replace(history, idle_since=None if backlog else idle_since)
    if policy.fixed:
        return _settle(policy, current, policy.min_replicas, "fixed-size pool", history, now)

    previous = history.replicas if history.replicas is not None else current
    asleep = current == 0 and previous == 0 and backlog <= policy.activation_depth
    run_seconds = _run_estimate(policy, load.run_ages, history, now)
    history = replace(history, run_seconds=run_seconds,
                      run_seconds_at=now if run_seconds is not None else None)
    absorbed = 0.0
    if now - since >= ABSORB_AFTER_SECONDS:
        ending = _ending_soon(policy, load.run_ages, run_seconds)
        absorbed = min(load.queued, load.in_flight, ending)
    raw = 0 if asleep else math.ceil(round((backlog - absorbed) / policy.tasks_per_replica, 6))
    need = policy.clamp(raw)
    limited = rate_limit_cap(policy, load.limit_waits, current, history, now,
                             load.draining_runs)
    if limited is None:
        history = replace(history, rate_limited=None, rate_limited_size=None)
    else:
        fed = history.rate_limited_size if history.rate_limited == limited.limit else None
        if need > limited.cap:
            fed = limited.cap
            limited = replace(limited, need=need)
            need = limited.cap
        else:
            limited = None
        history = replace(history, rate_limited=limited.limit if limited else history.rate_limited,
                          rate_limited_size=fed)
    window = policy.scale_down_cooldown_seconds
    memory = max(window, policy.keep_drained_seconds)
    history = replace(
        history,
        recommendations=_remember(history.recommendations, Recommendation(now, need), memory),
    )
    decision = _decide_serving(policy, load, current, history, now, need, raw, absorbed,
                               limited, asleep)
    decision = replace(decision, need=need, asleep=decision.replicas == 0)
    if decision.replicas == 0:
        return decision
    since_keep = now - policy.keep_drained_seconds
    recent = [r.replicas for r in history.recommendations if r.at > since_keep]
    keep = min(max([decision.replicas, *recent]), decision.replicas + KEPT_SPARE)
    return replace(decision, keep=policy.clamp(keep))


def _decide_serving(
    policy: ScalingPolicy,
    load: QueueLoad,
    current: int,
    history: ScalingHistory,
    now: float,
    need: int,
    raw: int,
    absorbed: float,
    limited: RateLimitCap | None,
    asleep: bool,
) -> Decision:
    backlog = load.backlog
    tpr = policy.tasks_per_replica
    window = policy.scale_down_cooldown_seconds
    if need > current and raw < need:
        explain = f"below minReplicas {policy.min_replicas}"
        return replace(_scale_up(policy, current, need, explain, history, now), limited=limited)
    if need > current:
        explain = f"backlog {backlog} > {_replicas(current)} {TIMES} {tpr} tasks"
        if absorbed:
            explain += (f", {absorbed:.1f} of them taken by runs ending within "
                        f"{policy.start_seconds:g}s")
        if raw > policy.max_replicas:
            explain += f", capped at maxReplicas {policy.max_replicas}"
        if limited is not None:
            explain += f"; {limited.describe()}"
        return replace(_scale_up(policy, current, need, explain, history, now), limited=limited)
    if current == 0 and not asleep and need == 0:
        idle_for = now - history.idle_since if history.idle_since is not None else 0.0
        if idle_for < window:
            explain = (f"no pod serves and the queue was busy {_ago(idle_for)} ago: keeping "
                       f"one pod for the {window:g}s window")
            return _scale_up(policy, current, 1, explain, history, now)
    highest = max([need, *(r.replicas for r in history.recommendations if r.at > now - window)])
    if highest < current:
        decision = _scale_down(policy, current, highest, backlog, history, now)
        if limited is not None:
            decision = replace(decision, limited=limited,
                               reason=f"{limited.describe()}; {decision.reason}")
        return decision
    if limited is not None:
        explain = f"backlog {backlog} needs {_replicas(limited.need)}; {limited.describe()}"
        if need < current:
            explain += f"; scale-down waits for the {window:g}s window"
        return replace(_settle(policy, current, current, explain, history, now),
                       limited=limited)
    if asleep and not backlog:
        explain = "nothing queued or in flight"
    elif asleep:
        explain = f"backlog {backlog} ≤ activationDepth {policy.activation_depth}"
    elif need < current:
        explain = f"backlog {backlog} needs {need}, but {highest} were needed within {window:g}s"
    elif absorbed and backlog > current * tpr:
        explain = (f"backlog {backlog} fits {_replicas(current)} {TIMES} {tpr} tasks: runs "
                   f"ending within {policy.start_seconds:g}s take {absorbed:.1f} of the queued")
    else:
        explain = f"backlog {backlog} fits {_replicas(current)} {TIMES} {tpr} tasks"
    return _settle(policy, current, current, explain, history, now)


def _run_estimate(
    policy: ScalingPolicy, ages: tuple[float, ...], history: ScalingHistory, now: float
) -> float | None:
    """A run's expected remaining time: the mean age of the running runs, or the previous
    estimate decayed by exp(-elapsed / run_memory_seconds) when that is longer."""
    current = sum(ages) / len(ages) if ages else None
    previous = history.run_seconds
    if previous is not None and history.run_seconds_at is not None:
        elapsed = max(0.0, now - history.run_seconds_at)
        memory = policy.run_memory_seconds
        previous = previous * math.exp(-elapsed / memory) if memory > 0 else None
    known = [v for v in (current, previous) if v is not None]
    return max(known) if known else None


def _ending_soon(
    policy: ScalingPolicy, ages: tuple[float, ...], run_seconds: float | None
) -> float:
    """Runs expected to end within start_seconds, each with an exponential remaining time
    of mean `run_seconds` (at least a second)."""
    if not ages or run_seconds is None or policy.start_seconds <= 0:
        return 0.0
    return len(ages) * -math.expm1(-policy.start_seconds / max(1.0, run_seconds))


def _scale_up(
    policy: ScalingPolicy,
    current: int,
    need: int,
    explain: str,
    history: ScalingHistory,
    now: float,
) -> Decision:
    last_up = history.last_scale_up
    cooldown = policy.scale_up_cooldown_seconds
    awake_in_bounds = current >= max(policy.min_replicas, 1)
    if awake_in_bounds and last_up is not None and now - last_up < cooldown:
        explain += (
            f"; scale-up held: last scale-up {_ago(now - last_up)} ago, cooldown {cooldown:g}s"
        )
        return _settle(policy, current, current, explain, history, now)
    target = need
    if policy.scale_up_step is not None and target > current + policy.scale_up_step:
        target = current + policy.scale_up_step
        explain += f", limited by scaleUpStep {policy.scale_up_step}"
    return _settle(policy, current, target, explain, history, now)


def _scale_down(
    policy: ScalingPolicy,
    current: int,
    highest: int,
    backlog: int,
    history: ScalingHistory,
    now: float,
) -> Decision:
    window = policy.scale_down_cooldown_seconds
    held = _scale_down_held(history, now, window)
    if current <= policy.max_replicas and held:
        explain = f"backlog {backlog} needs {highest}; scale-down held: {held}"
        return _settle(policy, current, current, explain, history, now)
    target = highest
    limited = ""
    if policy.scale_down_step is not None and target < current - policy.scale_down_step:
        target = current - policy.scale_down_step
        limited = f", limited by scaleDownStep {policy.scale_down_step}"
    if target == 0:
        idle_for = now - history.idle_since if history.idle_since is not None else 0.0
        if idle_for < window:
            explain = f"queue idle for {_ago(idle_for)} < {window:g}s before scaling to zero"
            return _settle(policy, current, min(1, current), explain, history, now)
        explain = f"nothing queued or in flight for {_ago(idle_for)}"
    else:
        explain = (
            f"backlog ≤ {_replicas(target)} {TIMES} {policy.tasks_per_replica} tasks "
            f"for {window:g}s (now {backlog})"
        )
    return _settle(policy, current, target, explain + limited, history, now)


def _scale_down_held(history: ScalingHistory, now: float, window: float) -> str | None:
    """Why no scale-down may happen now, or None. A scale-up within the window holds one (a
    scale-down does not hold the next: the stabilisation window paces them), and so does a
    history younger than a window, whose recommendations before it began are unknown."""
    last_up = history.last_scale_up
    if last_up is not None and now - last_up < window:
        return f"last scale-up {_ago(now - last_up)} ago, cooldown {window:g}s"
    if history.since is not None and now - history.since < window:
        return f"history begun {_ago(now - history.since)} ago, window {window:g}s"
    return None


def _not_after(history: ScalingHistory, now: float) -> ScalingHistory:
    """The history with every time it holds moved back to `now` at the latest. The times are
    wall-clock times, kept across operators in an annotation: a clock stepped back, or a new
    operator whose clock is behind the last one's, would otherwise hold scale-ups and
    scale-downs until it passed them; clamped, they hold for at most their cooldown from now."""

    def clamp(at: float | None) -> float | None:
        return None if at is None else min(at, now)

    return replace(
        history,
        recommendations=tuple(
            Recommendation(min(r.at, now), r.replicas) for r in history.recommendations
        ),
        since=clamp(history.since),
        last_scale_up=clamp(history.last_scale_up),
        last_scale_down=clamp(history.last_scale_down),
        idle_since=clamp(history.idle_since),
        run_seconds_at=clamp(history.run_seconds_at),
    )


def _settle(
    policy: ScalingPolicy,
    current: int,
    target: int,
    explain: str,
    history: ScalingHistory,
    now: float,
) -> Decision:
    """Clamp into the bounds (always, whatever held the decision) and record scale times."""
    replicas = policy.clamp(target)
    if replicas != target:
        explain += f"; {_replicas(target)} outside [{policy.min_replicas}, {policy.max_replicas}]"
    if replicas == current:
        reason = f"{explain}: holding {_replicas(current)}"
    else:
        reason = f"{explain}: scaling {current} → {replicas}"
    history = replace(history, replicas=replicas)
    if replicas > current:
        history = replace(history, last_scale_up=now)
    elif replicas < current:
        history = replace(history, last_scale_down=now)
    return Decision(replicas=replicas, reason=reason, history=history, current=current)


def _remember(
    kept: tuple[Recommendation, ...], new: Recommendation, window: float
) -> tuple[Recommendation, ...]:
    """Recommendations that can still be the window's highest, oldest first.

    An older recommendation no higher than the new one never wins again (the new one stays in
    the window longer), so the kept ones strictly decrease and there are few. If they still
    exceed the bound, the two oldest merge into the higher value at the later time, which
    only ever delays a scale-down.
    """
    cutoff = new.at - window
    result = [r for r in kept if r.at > cutoff and r.replicas > new.replicas]
    result.append(new)
    while len(result) > MAX_RECOMMENDATIONS:
        oldest, second = result[0], result[1]
        result[:2] = [Recommendation(second.at, oldest.replicas)]
    return tuple(result)


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


def _ago(seconds: float) -> str:
    return f"{round(seconds, 1):g}s"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a replica count, got {value!r}")
    return value


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _optional_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a limit name, got {value!r}")
    return value
