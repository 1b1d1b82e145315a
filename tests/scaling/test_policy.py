from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentpool.models import ScalingSpec
from agentpool.scaling.policy import (
    MAX_RECOMMENDATIONS,
    QueueLoad,
    Recommendation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)

NOW = 10_000.0
LONG_AGO = NOW - 3600


def settled(
    *,
    recommendations: tuple[Recommendation, ...] = (),
    last_scale_up: float | None = None,
    last_scale_down: float | None = None,
    idle_since: float | None = None,
) -> ScalingHistory:
    """A history begun long ago: only the scale times given here are recent."""
    return ScalingHistory(
        recommendations=recommendations,
        since=LONG_AGO,
        last_scale_up=last_scale_up,
        last_scale_down=last_scale_down,
        idle_since=idle_since,
    )


def load(queued: int = 0, in_flight: int = 0) -> QueueLoad:
    return QueueLoad(queued=queued, in_flight=in_flight)


# --- target and bounds -------------------------------------------------------------------


def test_backlog_over_capacity_scales_up_to_ceil_of_backlog_per_replica() -> None:
    decision = decide(ScalingPolicy(), load(queued=37), 3, settled(), NOW)
    assert decision.replicas == math.ceil(37 / 4)
    assert decision.changed
    assert decision.reason.startswith("backlog 37 > 3 replicas \N{MULTIPLICATION SIGN} 4 tasks")


def test_in_flight_tasks_count_as_backlog() -> None:
    decision = decide(ScalingPolicy(), load(queued=1, in_flight=11), 2, settled(), NOW)
    assert decision.replicas == 3


def test_tasks_per_replica_is_the_target() -> None:
    policy = ScalingPolicy(tasks_per_replica=10)
    assert decide(policy, load(queued=25), 1, settled(), NOW).replicas == 3


def test_never_above_max_replicas_and_reason_says_capped() -> None:
    decision = decide(ScalingPolicy(max_replicas=5), load(queued=1000), 1, settled(), NOW)
    assert decision.replicas == 5
    assert "capped at maxReplicas 5" in decision.reason


def test_never_below_min_replicas() -> None:
    decision = decide(ScalingPolicy(min_replicas=2), load(), 2, settled(), NOW)
    assert decision.replicas == 2
    assert not decision.changed


def test_a_raised_min_replicas_says_so_not_a_backlog() -> None:
    decision = decide(ScalingPolicy(min_replicas=3), load(), 1, settled(), NOW)
    assert decision.replicas == 3
    assert decision.reason.startswith("below minReplicas 3")
    assert "backlog" not in decision.reason


def test_current_above_max_is_clamped_at_once_despite_cooldown() -> None:
    history = settled(last_scale_up=NOW - 1)
    decision = decide(ScalingPolicy(max_replicas=4), load(queued=100), 9, history, NOW)
    assert decision.replicas == 4


def test_steady_backlog_holds_and_says_it_fits() -> None:
    decision = decide(ScalingPolicy(), load(queued=3, in_flight=8), 3, settled(), NOW)
    assert decision.replicas == 3
    assert "fits 3 replicas" in decision.reason


# --- activation and scale to zero --------------------------------------------------------


def test_pool_at_zero_stays_there_until_backlog_exceeds_activation_depth() -> None:
    policy = ScalingPolicy(min_replicas=0, activation_depth=5)
    asleep = decide(policy, load(queued=5), 0, settled(), NOW)
    assert asleep.replicas == 0
    assert "activationDepth 5" in asleep.reason
    assert decide(policy, load(queued=6), 0, settled(), NOW).replicas == 2


def test_activation_depth_does_not_apply_to_an_awake_pool() -> None:
    policy = ScalingPolicy(min_replicas=0, activation_depth=5)
    assert decide(policy, load(queued=3), 1, settled(), NOW).replicas == 1


def test_wakes_from_zero_despite_scale_up_cooldown() -> None:
    policy = ScalingPolicy(min_replicas=0, scale_up_cooldown_seconds=600)
    history = settled(last_scale_up=NOW - 1)
    assert decide(policy, load(queued=1), 0, history, NOW).replicas == 1


def test_scales_to_zero_only_after_idle_for_the_whole_cooldown() -> None:
    policy = ScalingPolicy(min_replicas=0, scale_down_cooldown_seconds=60)
    early = decide(policy, load(), 1, settled(idle_since=NOW - 59), NOW)
    assert early.replicas == 1
    assert "before scaling to zero" in early.reason
    late = decide(policy, load(), 1, settled(idle_since=NOW - 60), NOW)
    assert late.replicas == 0
    assert "nothing queued or in flight for 60s" in late.reason


def test_work_in_flight_blocks_scale_to_zero_and_restarts_the_idle_clock() -> None:
    policy = ScalingPolicy(min_replicas=0)
    decision = decide(policy, load(in_flight=1), 1, settled(idle_since=LONG_AGO), NOW)
    assert decision.replicas == 1
    assert decision.history.idle_since is None


def test_idle_clock_starts_at_first_empty_poll() -> None:
    decision = decide(ScalingPolicy(min_replicas=0), load(), 1, settled(), NOW)
    assert decision.history.idle_since == NOW
    assert decision.replicas == 1


# --- cooldowns and stabilisation ---------------------------------------------------------


def test_scale_up_cooldown_holds_a_second_scale_up() -> None:
    policy = ScalingPolicy(scale_up_cooldown_seconds=30)
    held = decide(policy, load(queued=40), 2, settled(last_scale_up=NOW - 10), NOW)
    assert held.replicas == 2
    assert "scale-up held" in held.reason
    free = decide(policy, load(queued=40), 2, settled(last_scale_up=NOW - 30), NOW)
    assert free.replicas == 10


def test_scale_up_cooldown_does_not_follow_a_scale_down() -> None:
    policy = ScalingPolicy(scale_up_cooldown_seconds=30)
    history = settled(last_scale_down=NOW - 1)
    assert decide(policy, load(queued=40), 2, history, NOW).replicas == 10


def test_scale_down_uses_highest_recommendation_within_the_window() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60)
    history = settled(
        recommendations=(Recommendation(NOW - 90, 9), Recommendation(NOW - 50, 6)),
    )
    decision = decide(policy, load(queued=4), 8, history, NOW)
    assert decision.replicas == 6
    assert "for 60s" in decision.reason


def test_recommendations_older_than_the_window_are_forgotten() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60)
    history = settled(recommendations=(Recommendation(NOW - 61, 9),))
    assert decide(policy, load(queued=4), 8, history, NOW).replicas == 1


def test_no_scale_down_within_cooldown_after_a_scale_up() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60)
    held = decide(policy, load(), 5, settled(last_scale_up=NOW - 59), NOW)
    assert held.replicas == 5
    assert "scale-down held: last scale-up 59s ago, cooldown 60s" in held.reason
    assert decide(policy, load(), 5, settled(last_scale_up=NOW - 60), NOW).replicas == 1


def test_a_scale_down_does_not_hold_the_next_one() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60)
    history = settled(last_scale_up=NOW - 120, last_scale_down=NOW - 1)
    assert decide(policy, load(), 5, history, NOW).replicas == 1


def test_consecutive_scale_downs_follow_the_window() -> None:
    """After a burst the pool steps down as each high recommendation ages out of the window,
    not one step per cooldown."""
    policy = ScalingPolicy(max_replicas=20, scale_down_cooldown_seconds=60)
    history = settled(
        recommendations=(
            Recommendation(NOW - 50, 20),
            Recommendation(NOW - 40, 12),
            Recommendation(NOW - 30, 6),
        ),
        last_scale_up=NOW - 70,
    )
    current, steps = 20, []
    for at in range(0, 40, 2):
        decision = decide(policy, load(queued=1), current, history, NOW + at)
        if decision.changed:
            steps.append((at, current, decision.replicas))
        current, history = decision.replicas, decision.history
    assert steps == [(10, 20, 12), (20, 12, 6), (30, 6, 1)]


def test_consecutive_scale_downs_respect_the_step_limit() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60, scale_down_step=3)
    current, history = 10, settled()
    sizes = []
    for at in range(0, 10, 2):
        decision = decide(policy, load(), current, history, NOW + at)
        current, history = decision.replicas, decision.history
        sizes.append(current)
    assert sizes == [7, 4, 1, 1, 1]


def test_fresh_history_holds_scale_down_for_one_window() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60)
    first = decide(policy, load(), 5, ScalingHistory(), NOW)
    assert first.replicas == 5
    assert "scale-down held: history begun 0s ago, window 60s" in first.reason
    later = decide(policy, load(), 5, first.history, NOW + 60)
    assert later.replicas == 1


def test_zero_cooldown_scales_down_at_once() -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=0)
    history = settled(last_scale_up=NOW, recommendations=(Recommendation(NOW, 9),))
    assert decide(policy, load(queued=4), 9, history, NOW).replicas == 1


# --- a clock behind the stored times ------------------------------------------------------
# The history keeps wall-clock times across operators (an annotation): a clock stepped back,
# or a new operator whose clock is behind the last one's, reads times ahead of its `now`.


def test_a_scale_up_ahead_of_the_clock_does_not_hold_the_next_without_a_cooldown() -> None:
    history = settled(last_scale_up=NOW + 55)
    decision = decide(ScalingPolicy(), load(queued=40), 2, history, NOW)
    assert decision.replicas == 10
    assert "held" not in decision.reason


def test_a_scale_up_ahead_of_the_clock_holds_the_next_for_one_cooldown_from_now() -> None:
    policy = ScalingPolicy(scale_up_cooldown_seconds=30)
    held = decide(policy, load(queued=40), 2, settled(last_scale_up=NOW + 600), NOW)
    assert held.replicas == 2
    assert "last scale-up 0s ago, cooldown 30s" in held.reason
    assert decide(policy, load(queued=40), 2, held.history, NOW + 30).replicas == 10


@pytest.mark.parametrize("history", [
    settled(last_scale_up=NOW + 600),
    replace(settled(), since=NOW + 600),
    settled(recommendations=(Recommendation(NOW + 600, 9),)),
], ids=["last scale-up", "history begun", "recommendation"])
def test_times_ahead_of_the_clock_hold_a_scale_down_for_one_window_from_now(
    history: ScalingHistory,
) -> None:
    policy = ScalingPolicy(scale_down_cooldown_seconds=60)
    held = decide(policy, load(queued=4), 9, history, NOW)
    assert held.replicas == 9
    for at in (NOW + 59, NOW + 60):
        held = decide(policy, load(queued=4), held.replicas, held.history, at)
    assert held.replicas == 1


def test_an_idle_time_ahead_of_the_clock_counts_from_now() -> None:
    policy = ScalingPolicy(min_replicas=0, scale_down_cooldown_seconds=60)
    early = decide(policy, load(), 1, settled(idle_since=NOW + 600), NOW)
    assert early.replicas == 1
    assert early.history.idle_since == NOW
    assert decide(policy, load(), 1, early.history, NOW + 60).replicas == 0


def test_a_decision_records_no_time_ahead_of_its_clock() -> None:
    ahead = NOW + 600
    history = ScalingHistory(
        recommendations=(Recommendation(ahead, 3),), since=ahead, last_scale_up=ahead,
        last_scale_down=ahead, idle_since=ahead, run_seconds=30.0, run_seconds_at=ahead,
    )
    kept = decide(ScalingPolicy(), load(), 3, history, NOW).history
    times = [kept.since, kept.last_scale_up, kept.last_scale_down, kept.idle_since,
             kept.run_seconds_at, *(r.at for r in kept.recommendations)]
    assert max(t for t in times if t is not None) == NOW


# --- steps, fixed pools, missing figures -------------------------------------------------


def test_scale_up_step_limits_pods_added_per_decision() -> None:
    decision = decide(ScalingPolicy(scale_up_step=2), load(queued=40), 3, settled(), NOW)
    assert decision.replicas == 5
    assert "scaleUpStep 2" in decision.reason


def test_scale_down_step_limits_pods_removed_per_decision() -> None:
    decision = decide(ScalingPolicy(scale_down_step=3), load(), 9, settled(), NOW)
    assert decision.replicas == 6
    assert "scaleDownStep 3" in decision.reason


def test_step_limit_never_keeps_a_pool_below_min() -> None:
    policy = ScalingPolicy(min_replicas=5, scale_up_step=1)
    assert decide(policy, load(), 1, settled(), NOW).replicas == 5


def test_fixed_size_pool_ignores_the_queue() -> None:
    policy = ScalingPolicy(min_replicas=3, max_replicas=3)
    for queued in (0, 3, 1000):
        decision = decide(policy, load(queued=queued), 3, settled(), NOW)
        assert decision.replicas == 3
        assert decision.reason.startswith("fixed-size pool")
    assert decide(policy, load(), 7, settled(), NOW).replicas == 3


def test_missing_figures_hold_the_current_size() -> None:
    policy = ScalingPolicy(min_replicas=0)
    decision = decide(policy, QueueLoad.unavailable(), 4, settled(idle_since=LONG_AGO), NOW)
    assert decision.replicas == 4
    assert decision.reason.startswith("queue figures unavailable")
    assert decision.history.idle_since is None


def test_missing_figures_still_clamp_into_bounds() -> None:
    policy = ScalingPolicy(min_replicas=2, max_replicas=6)
    assert decide(policy, QueueLoad.unavailable(), 9, settled(), NOW).replicas == 6
    assert decide(policy, QueueLoad.unavailable(), 0, settled(), NOW).replicas == 2


def test_scale_times_are_recorded() -> None:
    up = decide(ScalingPolicy(), load(queued=20), 1, settled(), NOW)
    assert up.history.last_scale_up == NOW
    down = decide(ScalingPolicy(), load(), 5, settled(), NOW)
    assert down.history.last_scale_down == NOW


# --- policy from the spec, history as data -----------------------------------------------


def test_policy_from_spec_defaults_tasks_per_replica_to_concurrency() -> None:
    spec = ScalingSpec.model_validate({"minReplicas": 0, "maxReplicas": 20, "scaleUpStep": 3})
    policy = ScalingPolicy.from_spec(spec, concurrency=8)
    assert policy.tasks_per_replica == 8
    assert (policy.min_replicas, policy.max_replicas, policy.scale_up_step) == (0, 20, 3)
    explicit = ScalingSpec.model_validate({"tasksPerReplica": 2})
    assert ScalingPolicy.from_spec(explicit, concurrency=8).tasks_per_replica == 2


def test_policy_refuses_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        ScalingPolicy(min_replicas=5, max_replicas=2)


def test_history_round_trips_through_json() -> None:
    policy = ScalingPolicy(min_replicas=0)
    history = ScalingHistory()
    for step, queued in enumerate([40, 30, 0, 0, 12]):
        ages = (float(step), 20.0)
        decision = decide(policy, QueueLoad(queued, 2, run_ages=ages), 3, history, NOW + step)
        history = decision.history
    assert history.run_seconds is not None
    restored = ScalingHistory.from_json(json.loads(json.dumps(history.to_json())))
    assert restored == history


# --- runs about to end, drained pods kept --------------------------------------------------


def test_runs_about_to_end_absorb_a_short_queue_and_long_runs_do_not() -> None:
    short = decide(ScalingPolicy(), QueueLoad(1, 4, run_ages=(6.0,) * 4), 1, settled(), NOW)
    assert short.replicas == 1
    assert "runs ending within 10s take 1.0 of the queued" in short.reason
    long = decide(ScalingPolicy(), QueueLoad(1, 4, run_ages=(300.0,) * 4), 1, settled(), NOW)
    assert long.replicas == 2


def test_a_burst_beyond_what_ends_soon_still_scales_up() -> None:
    decision = decide(ScalingPolicy(max_replicas=20), QueueLoad(40, 4, run_ages=(6.0,) * 4), 1,
                      settled(), NOW)
    assert decision.replicas == math.ceil((44 - 4 * -math.expm1(-10 / 6)) / 4)
    assert "runs ending within 10s" in decision.reason


def test_a_fresh_history_or_unreported_ages_absorb_nothing() -> None:
    fresh = ScalingHistory(since=NOW - 10)
    young = decide(ScalingPolicy(), QueueLoad(1, 4, run_ages=(6.0,) * 4), 1, fresh, NOW)
    assert young.replicas == 2
    assert decide(ScalingPolicy(), QueueLoad(1, 4), 1, settled(), NOW).replicas == 2


def test_ages_reported_for_runs_no_longer_in_flight_never_empty_the_need() -> None:
    policy = ScalingPolicy(min_replicas=0, scale_down_cooldown_seconds=0)
    history = settled(idle_since=LONG_AGO)
    decision = decide(policy, QueueLoad(1, 0, run_ages=(5.0,) * 3), 1, history, NOW)
    assert decision.replicas == 1


def test_young_runs_do_not_pass_for_short_ones_after_long_runs_were_seen() -> None:
    history = replace(settled(), run_seconds=400.0, run_seconds_at=NOW - 20)
    decision = decide(ScalingPolicy(), QueueLoad(1, 4, run_ages=(2.0,) * 4), 1, history, NOW)
    assert decision.replicas == 2
    assert decision.history.run_seconds == pytest.approx(400.0 * math.exp(-20 / 600))


def test_a_scale_down_keeps_one_spare_while_more_was_needed_within_keep_drained_seconds(
) -> None:
    policy = ScalingPolicy(keep_drained_seconds=120)
    history = settled(recommendations=(Recommendation(NOW - 100, 5),))
    decision = decide(policy, load(in_flight=4), 5, history, NOW)
    assert (decision.replicas, decision.keep) == (1, 2)
    history = settled(recommendations=(Recommendation(NOW - 130, 5),))
    decision = decide(policy, load(in_flight=4), 5, history, NOW)
    assert (decision.replicas, decision.keep) == (1, 1)


def test_a_scale_to_zero_keeps_no_drained_pod() -> None:
    policy = ScalingPolicy(min_replicas=0)
    history = settled(recommendations=(Recommendation(NOW - 60, 3),), idle_since=NOW - 100)
    decision = decide(policy, load(), 3, history, NOW)
    assert (decision.replicas, decision.keep) == (0, 0)


def test_history_stays_bounded() -> None:
    policy = ScalingPolicy(max_replicas=1000, tasks_per_replica=1, scale_down_cooldown_seconds=3600)
    history = ScalingHistory()
    for step in range(500):
        history = decide(policy, load(queued=1000 - step), 1000, history, NOW + step).history
    assert len(history.recommendations) <= MAX_RECOMMENDATIONS
    assert history.recommendations[0].replicas == 1000


def test_malformed_history_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        ScalingHistory.from_json({"recommendations": [["soon", 3]]})
    with pytest.raises(ValueError):
        ScalingHistory.from_json({"lastScaleUp": "yesterday"})


# --- properties --------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> ScalingPolicy:
    low = draw(st.integers(0, 5))
    return ScalingPolicy(
        min_replicas=low,
        max_replicas=draw(st.integers(max(low, 1), 12)),
        tasks_per_replica=draw(st.integers(1, 8)),
        activation_depth=draw(st.integers(0, 10)),
        scale_up_cooldown_seconds=draw(st.sampled_from([0, 15, 60])),
        scale_down_cooldown_seconds=draw(st.sampled_from([0, 30, 60, 300])),
        scale_up_step=draw(st.none() | st.integers(1, 4)),
        scale_down_step=draw(st.none() | st.integers(1, 4)),
    )


times = st.none() | st.floats(NOW - 400, NOW)


@st.composite
def histories(draw: st.DrawFn) -> ScalingHistory:
    at = sorted(draw(st.lists(st.floats(NOW - 400, NOW), max_size=6)))
    return ScalingHistory(
        recommendations=tuple(Recommendation(t, draw(st.integers(0, 15))) for t in at),
        since=draw(times),
        last_scale_up=draw(times),
        last_scale_down=draw(times),
        idle_since=draw(times),
    )


loads = st.builds(QueueLoad, st.integers(0, 100), st.integers(0, 100), st.booleans())
currents = st.integers(0, 15)
quick = settings(max_examples=200, deadline=None)


@quick
@given(policies(), loads, currents, histories())
def test_property_never_outside_bounds(
    policy: ScalingPolicy, queue: QueueLoad, current: int, history: ScalingHistory
) -> None:
    replicas = decide(policy, queue, current, history, NOW).replicas
    assert policy.min_replicas <= replicas <= policy.max_replicas


Case = tuple[ScalingPolicy, QueueLoad, int, ScalingHistory]


@st.composite
def awake_pools(draw: st.DrawFn, *, free: bool = False) -> Case:
    """An awake pool within its bounds, a backlog up to about its capacity and a history whose
    times fall on either side of the window: the cases where a scale-down is in question.

    `free`: figures readable, an autoscaled pool, and a history that allows a scale-down
    (begun before the window, no scale-up within it); recommendations, recent scale-downs
    and the idle clock stay arbitrary.
    """
    policy = draw(policies().filter(lambda p: not p.fixed) if free else policies())
    window = policy.scale_down_cooldown_seconds
    current = draw(st.integers(max(policy.min_replicas, 1), policy.max_replicas))
    capacity = current * policy.tasks_per_replica
    ok = free or draw(st.sampled_from([True, True, True, False]))
    in_flight = draw(st.integers(0, capacity))
    queue = QueueLoad(draw(st.integers(0, capacity - in_flight + 1)), in_flight, ok)

    def moment(*ages: str) -> float | None:
        """None ("never"), within the window ("recent") or one to three windows ago ("old")."""
        age = draw(st.sampled_from(ages))
        if age == "never":
            return None
        recent = age == "recent"
        return NOW - window * draw(st.floats(0, 1, exclude_max=True) if recent else st.floats(1, 3))

    at = sorted(NOW - window * f for f in draw(st.lists(st.floats(0, 2), min_size=1, max_size=6)))
    return policy, queue, current, ScalingHistory(
        recommendations=tuple(Recommendation(t, draw(st.integers(0, current))) for t in at),
        since=moment("old") if free else moment("old", "old", "recent", "never"),
        last_scale_up=moment("never", "old") if free else moment("never", "old", "recent"),
        last_scale_down=moment("never", "old", "recent"),
        idle_since=moment("never", "old", "recent"),
    )


def highest_in_window(policy: ScalingPolicy, queue: QueueLoad, history: ScalingHistory) -> int:
    """The highest need recommended within the window ending at NOW, this poll's included,
    for an awake pool with readable figures."""
    window = policy.scale_down_cooldown_seconds
    need = policy.clamp(math.ceil(queue.backlog / policy.tasks_per_replica))
    recent = [r.replicas for r in history.recommendations if r.at > NOW - window]
    return max([need, *recent])


@settings(max_examples=500, deadline=None)
@given(awake_pools())
def test_property_never_down_after_a_scale_up_nor_below_the_window(case: Case) -> None:
    policy, queue, current, history = case
    replicas = decide(policy, queue, current, history, NOW).replicas
    if replicas < current <= policy.max_replicas:
        for event in (history.since, history.last_scale_up):
            assert event is None or NOW - event >= policy.scale_down_cooldown_seconds
        assert replicas >= highest_in_window(policy, queue, history)


@quick
@given(awake_pools(free=True))
def test_property_otherwise_down_to_the_window_within_the_step(case: Case) -> None:
    """Outside the cooldown of a scale-up, only the window and the step limit (and the idle
    time before zero) bound a scale-down; a recent scale-down does not."""
    policy, queue, current, history = case
    highest = highest_in_window(policy, queue, history)
    assume(highest < current)
    expected = highest
    if policy.scale_down_step is not None:
        expected = max(expected, current - policy.scale_down_step)
    idle_for = NOW - history.idle_since if history.idle_since is not None else 0.0
    if expected == 0 and idle_for < policy.scale_down_cooldown_seconds:
        expected = 1
    assert decide(policy, queue, current, history, NOW).replicas == expected


@quick
@given(policies(), loads, st.integers(1, 15), histories())
def test_property_never_to_zero_with_work_queued_or_in_flight(
    policy: ScalingPolicy, queue: QueueLoad, current: int, history: ScalingHistory
) -> None:
    if decide(policy, queue, current, history, NOW).replicas == 0:
        assert queue.figures_ok
        assert queue.queued == queue.in_flight == 0


@quick
@given(
    policies(),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 50),
    currents,
    histories(),
)
def test_property_monotone_in_the_backlog(
    policy: ScalingPolicy,
    queued: int,
    in_flight: int,
    more: int,
    current: int,
    history: ScalingHistory,
) -> None:
    fewer = decide(policy, load(queued, in_flight), current, history, NOW).replicas
    assert decide(policy, load(queued + more, in_flight), current, history, NOW).replicas >= fewer
    assert decide(policy, load(queued, in_flight + more), current, history, NOW).replicas >= fewer


@quick
@given(policies(), currents, histories())
def test_property_holds_on_missing_figures(
    policy: ScalingPolicy, current: int, history: ScalingHistory
) -> None:
    decision = decide(policy, QueueLoad.unavailable(), current, history, NOW)
    assert decision.replicas == policy.clamp(current)


@quick
@given(policies(), st.integers(0, 100), histories())
def test_property_activation_from_zero(
    policy: ScalingPolicy, backlog: int, history: ScalingHistory
) -> None:
    replicas = decide(policy, load(queued=backlog), 0, history, NOW).replicas
    if backlog > policy.activation_depth:
        assert replicas >= 1
    elif policy.min_replicas == 0:
        assert replicas == 0


@settings(max_examples=100, deadline=None)
@given(
    policies(),
    st.lists(
        st.tuples(st.sampled_from([1.0, 2.0, 5.0, 30.0]), loads),
        min_size=1,
        max_size=60,
    ),
)
def test_property_a_run_of_decisions_respects_cooldowns_and_idle_time(
    policy: ScalingPolicy, polls: list[tuple[float, QueueLoad]]
) -> None:
    """Checked against what the test itself observed, not against the history's bookkeeping."""
    now, current, history = NOW, policy.min_replicas, ScalingHistory()
    start = NOW + polls[0][0]
    last_up: float | None = None
    cooldown = policy.scale_down_cooldown_seconds
    seen: list[tuple[float, QueueLoad]] = []
    needs: list[tuple[float, int]] = []
    for gap, queue in polls:
        now += gap
        seen.append((now, queue))
        if queue.figures_ok and not policy.fixed:
            asleep = current == 0 and queue.backlog <= policy.activation_depth
            need = policy.clamp(math.ceil(queue.backlog / policy.tasks_per_replica))
            needs.append((now, 0 if asleep else need))
        decision = decide(policy, queue, current, history, now)
        if decision.replicas < current:
            assert last_up is None or now - last_up >= cooldown
            assert now - start >= cooldown
            assert decision.replicas >= max((n for t, n in needs if t > now - cooldown), default=0)
        if decision.replicas == 0 and current > 0:
            window = [q for t, q in seen if t >= now - cooldown]
            assert all(q.figures_ok and q.backlog == 0 for q in window)
            assert now - start >= cooldown
        if decision.replicas > current:
            last_up = now
        current, history = decision.replicas, decision.history
        assert len(history.recommendations) <= MAX_RECOMMENDATIONS


ages = st.lists(st.floats(0, 900), max_size=12).map(tuple)


@quick
@given(policies(), loads, ages, currents, histories(), st.one_of(st.none(), st.floats(1, 900)))
def test_property_runs_ending_soon_only_ever_lower_the_replicas(
    policy: ScalingPolicy, queue: QueueLoad, run_ages: tuple[float, ...], current: int,
    history: ScalingHistory, estimate: float | None,
) -> None:
    """Absorbed tasks lower the need, never raise it, and change nothing without a queue;
    the decision stays within its bounds and never scales a live pool to zero with work."""
    history = replace(history, run_seconds=estimate,
                      run_seconds_at=None if estimate is None else NOW - 30)
    plain = decide(policy, queue, current, history, NOW)
    aged = decide(policy, replace(queue, run_ages=run_ages), current, history, NOW)
    assert aged.replicas <= plain.replicas
    if queue.queued == 0:
        assert aged.replicas == plain.replicas
    assert policy.min_replicas <= aged.replicas <= policy.max_replicas
    if aged.replicas == 0 and current > 0:
        assert queue.figures_ok and queue.queued == queue.in_flight == 0


@quick
@given(policies(), loads, ages, currents, histories())
def test_property_keep_is_the_replicas_and_at_most_one_spare(
    policy: ScalingPolicy, queue: QueueLoad, run_ages: tuple[float, ...], current: int,
    history: ScalingHistory,
) -> None:
    decision = decide(policy, replace(queue, run_ages=run_ages), current, history, NOW)
    assert decision.replicas <= decision.keep <= decision.replicas + 1
    assert decision.keep <= policy.max_replicas
    if decision.replicas == 0:
        assert decision.keep == 0
