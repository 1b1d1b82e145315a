"""The scaling policy with rate limits: scale-up stops at the size a binding limit can feed,
a pool above it comes down after the cooldown, and the cap holds until the waiting stops."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from agentpool.scaling.policy import (
    RATE_LIMIT_RELEASE_SHARE,
    RATE_LIMITED_SHARE,
    LimitWait,
    QueueLoad,
    Recommendation,
    ScalingHistory,
    ScalingPolicy,
    decide,
    limit_waits,
)

NOW = 10_000.0
POLICY = ScalingPolicy(min_replicas=1, max_replicas=20, tasks_per_replica=4,
                       scale_down_cooldown_seconds=60)
SETTLED = ScalingHistory(since=NOW - 3600)


def waiting(share: float, name: str = "openai", queued: int = 200) -> QueueLoad:
    return QueueLoad(queued=queued, in_flight=0, limit_waits=(LimitWait(name, share),))


def test_a_pool_that_mostly_waits_on_a_limit_does_not_scale_up() -> None:
    recent = replace(SETTLED, recommendations=(Recommendation(NOW - 10, 5),))
    decision = decide(POLICY, waiting(0.6), 5, recent, NOW)
    # 5 pods waiting 60 % of their run time: 5 x 0.4 / 0.9 = 2.2 -> 3 pods can feed the limit
    assert decision.replicas == 5
    assert decision.limited is not None
    assert (decision.limited.limit, decision.limited.cap, decision.limited.need) == (
        "openai", 3, 20)
    assert "rate limit openai" in decision.reason
    assert decision.history.rate_limited == "openai"


def test_without_waiting_the_same_backlog_scales_up_to_the_maximum() -> None:
    decision = decide(POLICY, waiting(0.0), 5, SETTLED, NOW)
    assert decision.replicas == 20
    assert decision.limited is None


def test_the_pool_scales_down_to_what_the_limit_can_feed_after_the_cooldown() -> None:
    history = replace(SETTLED, last_scale_up=NOW - 30)
    held = decide(POLICY, waiting(0.6), 10, history, NOW)
    assert held.replicas == 10  # inside the cooldown of the last scale-up
    later = decide(POLICY, waiting(0.6), 10, held.history, NOW + 61)
    assert later.replicas == 5  # 10 x 0.4 / 0.9 = 4.4 -> 5
    assert later.limited is not None and later.limited.cap == 5


def test_below_the_threshold_the_limit_does_not_hold_a_new_pool() -> None:
    decision = decide(POLICY, waiting(RATE_LIMITED_SHARE - 0.01), 5, SETTLED, NOW)
    assert decision.limited is None and decision.replicas == 20


def test_a_held_pool_keeps_its_size_then_probes_upwards_when_the_waiting_stops() -> None:
    recent = replace(SETTLED, recommendations=(Recommendation(NOW - 10, 4),))
    first = decide(POLICY, waiting(0.5), 4, recent, NOW)
    assert first.limited is not None and first.replicas == 4
    # sized for the limit, the pool waits ~10 %: held, no scale-up
    steady = decide(POLICY, waiting(0.1), 4, first.history, NOW + 100)
    assert steady.limited is not None and steady.replicas == 4
    # the limit was raised: nobody waits any more; the pool grows by a quarter per minute
    probe = decide(POLICY, waiting(RATE_LIMIT_RELEASE_SHARE / 2), 4, steady.history, NOW + 200)
    assert probe.limited is not None and probe.replicas == 5
    settling = decide(POLICY, waiting(0.0), 5, probe.history, NOW + 230)
    assert settling.replicas == 5  # the share still describes the old size
    again = decide(POLICY, waiting(0.0), 5, settling.history, NOW + 261)
    assert again.replicas == 7


def test_a_size_change_ahead_of_the_clock_settles_for_one_settle_period_from_now() -> None:
    """A held pool makes no rate-limit move within RATE_LIMIT_SETTLE_SECONDS of a change of
    size; a change recorded ahead of the clock (a clock stepped back) counts as now."""
    history = replace(SETTLED, rate_limited="openai", rate_limited_size=4,
                      last_scale_down=NOW + 3600)
    settling = decide(POLICY, waiting(0.0), 4, history, NOW)
    assert settling.limited is not None and settling.replicas == 4
    probe = decide(POLICY, waiting(0.0), 4, settling.history, NOW + 61)
    assert probe.limited is not None and probe.replicas == 5


def test_the_next_burst_scales_at_once_to_the_size_the_limit_fed_and_no_further() -> None:
    held = replace(SETTLED, rate_limited="openai", rate_limited_size=6)
    decision = decide(POLICY, waiting(0.0), 2, held, NOW)
    assert decision.replicas == 6
    assert decision.limited is not None and decision.limited.cap == 6


def test_a_backlog_below_the_fed_size_is_not_rate_limited_and_the_memory_stays() -> None:
    held = replace(SETTLED, rate_limited="openai", rate_limited_size=6)
    decision = decide(POLICY, waiting(0.0, queued=12), 2, held, NOW)
    assert decision.replicas == 3 and decision.limited is None
    assert (decision.history.rate_limited, decision.history.rate_limited_size) == ("openai", 6)


def test_a_backlog_the_limit_can_feed_is_not_rate_limited_even_when_runs_wait() -> None:
    # 4 pods waiting 30 %: 4 x 0.7 / 0.9 = 3.1 -> 4 can feed the limit; the backlog needs 2
    decision = decide(POLICY, waiting(0.3, queued=8), 4, SETTLED, NOW)
    assert decision.limited is None


def test_a_limit_gone_from_the_spec_holds_the_pool_no_more() -> None:
    held = replace(SETTLED, rate_limited="openai", rate_limited_size=6)
    declared = replace(POLICY, declared_limits=frozenset({"openai"}))
    assert decide(declared, waiting(0.0), 2, held, NOW).replicas == 6
    dropped = replace(POLICY, declared_limits=frozenset({"anthropic"}))
    decision = decide(dropped, waiting(0.0, name="anthropic"), 2, held, NOW)
    assert (decision.replicas, decision.limited) == (20, None)
    assert (decision.history.rate_limited, decision.history.rate_limited_size) == (None, None)
    none_left = decide(replace(POLICY, declared_limits=frozenset()), QueueLoad(queued=200), 2,
                       held, NOW)
    assert none_left.replicas == 20 and none_left.history.rate_limited is None
    # old pods still report long waits on it during the rollout that removed it
    rolling = decide(dropped, waiting(0.9), 2, held, NOW)
    assert (rolling.replicas, rolling.limited, rolling.history.rate_limited) == (20, None, None)


def test_the_size_a_limit_feeds_counts_the_runs_of_draining_pods() -> None:
    """The share covers every pod's runs: 2 serving pods and 32 runs on draining pods (8 pods'
    worth at 4 a pod), waiting half their time, feed 10 x 0.5 / 0.9 -> 6 pods, not
    2 x 0.5 / 0.9 -> 2; the same draining pods with a run each are 2 pods' worth -> 3."""
    decision = decide(POLICY, replace(waiting(0.5), draining_runs=32), 2, SETTLED, NOW)
    assert decision.limited is not None and decision.limited.cap == 6
    assert decision.replicas == 6
    assert decide(POLICY, replace(waiting(0.5), draining_runs=8), 2, SETTLED, NOW).replicas == 3
    assert decide(POLICY, waiting(0.5), 2, SETTLED, NOW).replicas == 2


def test_the_limit_the_pool_waits_on_most_is_the_one_named() -> None:
    load = QueueLoad(queued=200, limit_waits=(LimitWait("a", 0.3), LimitWait("b", 0.7)))
    decision = decide(POLICY, load, 6, SETTLED, NOW)
    assert decision.limited is not None and decision.limited.limit == "b"


def test_the_history_keeps_the_holding_limit_through_json() -> None:
    decision = decide(POLICY, waiting(0.6), 5, SETTLED, NOW)
    again = ScalingHistory.from_json(decision.history.to_json())
    assert (again.rate_limited, again.rate_limited_size) == ("openai", 3)
    assert ScalingHistory.from_json({}).rate_limited is None


def test_the_waiting_share_sums_the_workers_reports() -> None:
    waits = limit_waits([
        {"busy": 40.0, "waited": {"openai": 30.0}},
        {"busy": 20.0, "waited": {"openai": 0.0, "anthropic": 6.0}},
        None,
        {"busy": "x", "waited": {"openai": 99}},
        {"busy": 10.0, "waited": "nope"},
    ])
    assert waits == (LimitWait("anthropic", 0.1), LimitWait("openai", 0.5))


def test_too_little_run_time_gives_no_share() -> None:
    assert limit_waits([{"busy": 1.0, "waited": {"openai": 1.0}}]) == ()


@given(
    share=st.floats(0, 1),
    current=st.integers(0, 20),
    queued=st.integers(0, 500),
    held=st.sampled_from([None, "openai"]),
)
def test_a_rate_limited_decision_never_scales_up_past_the_cap_nor_leaves_the_bounds(
    share: float, current: int, queued: int, held: str | None
) -> None:
    history = replace(SETTLED, rate_limited=held)
    decision = decide(POLICY, waiting(share, queued=queued), current, history, NOW)
    assert POLICY.min_replicas <= decision.replicas <= POLICY.max_replicas
    if decision.limited is not None:
        assert decision.replicas <= max(current, decision.limited.cap)
        assert decision.limited.cap < decision.limited.need
