"""A pool whose queue would move (agentpool_operator.queue_moves): another queue name is
refused, the queue left on another Redis is followed until it is empty."""

from __future__ import annotations

from agentpool.models.rules import QUEUE_FIXED
from agentpool.protocol import QueueFigures
from agentpool_operator.queue_moves import (
    GIVE_UP_SECONDS,
    REASON,
    FollowPlan,
    follow,
    judge_left_queue,
    left_counts,
    queue_change_refused,
)
from agentpool_operator.queue_sharing import queue_address

OLD = queue_address("redis://:s3cret@old-redis:6379/0", "jobs", "team")
NEW = queue_address("redis://:s3cret@new-redis:6379/0", "jobs", "team")


def figures(*, queued: int = 0, due: int = 0, capped: int = 0, delayed: int = 0,
            deferred: int = 0, in_flight: int = 0, dead: int = 0) -> QueueFigures:
    return QueueFigures(queued_by_priority={5: queued}, due_delayed=due, delayed=delayed,
                        in_flight=in_flight, dead=dead, workers=0, deferred=deferred,
                        capped=capped)


def test_a_spec_naming_another_queue_than_the_served_one_is_refused_with_the_rules_message(
) -> None:
    refused = queue_change_refused({"queue": "jobs"}, "other")
    assert refused is not None
    assert refused.startswith(QUEUE_FIXED.message)
    assert "'jobs'" in refused and "'other'" in refused


def test_the_served_queue_or_none_served_yet_is_not_refused() -> None:
    assert queue_change_refused({"queue": "jobs"}, "jobs") is None
    assert queue_change_refused({}, "jobs") is None
    assert queue_change_refused({"queue": None}, "jobs") is None
    assert queue_change_refused({"queue": ""}, "jobs") is None


def test_a_move_starts_following_the_address_left() -> None:
    assert follow(OLD, NEW, set()) == FollowPlan(start=OLD)


def test_no_move_or_no_queue_opened_decides_nothing() -> None:
    assert follow(OLD, OLD, set()) == FollowPlan()
    assert follow(None, NEW, set()) == FollowPlan()  # a loop's first round: nothing known before
    assert follow(OLD, None, set()) == FollowPlan()  # the new queue cannot be opened this round
    assert follow(OLD, None, {NEW}) == FollowPlan()


def test_moving_back_stops_following_the_queue_served_again() -> None:
    assert follow(NEW, OLD, {OLD}) == FollowPlan(start=NEW, stop=frozenset({OLD}))


def test_a_second_move_follows_both_queues_left() -> None:
    third = queue_address("redis://third:6379/0", "jobs", "team")
    assert follow(NEW, third, {OLD}) == FollowPlan(start=NEW)


def test_the_address_names_the_server_and_queue_never_the_password() -> None:
    assert OLD == "redis://old-redis.team.svc:6379/0 jobs"
    assert "s3cret" not in OLD


def test_a_left_queue_holding_tasks_keeps_the_pool_degraded_and_is_warned_of_once() -> None:
    held = figures(queued=2, due=1, delayed=3, deferred=1, in_flight=4, dead=7)
    first = judge_left_queue(OLD, held, None, warned=False)
    assert not first.done
    assert first.problem is not None and first.problem.reason == REASON
    assert first.problem.message.startswith(
        "the pool's old queue 'jobs' on redis://old-redis.team.svc:6379/0, which the pool "
        "served before its Redis changed, still holds 3 queued, 3 delayed, 1 deferred and 4 "
        "running task(s): no pool serves it now")
    assert first.event is not None
    assert (first.event.type, first.event.reason) == ("Warning", REASON)
    assert first.event.message == first.problem.message

    again = judge_left_queue(OLD, held, None, warned=True)
    assert again.problem == first.problem
    assert again.event is None and not again.done


def test_running_tasks_alone_keep_it_followed() -> None:
    verdict = judge_left_queue(OLD, figures(in_flight=1), None, warned=True)
    assert verdict.problem is not None and "still holds 1 running task(s)" in \
        verdict.problem.message
    assert not verdict.done


def test_an_empty_left_queue_is_let_go_without_a_word() -> None:
    verdict = judge_left_queue(OLD, figures(dead=5), None, warned=True)
    assert verdict.done
    assert verdict.problem is None and verdict.event is None
    assert left_counts(figures()) is None


def test_tenant_capped_tasks_count_as_queued() -> None:
    assert left_counts(figures(capped=2)) == "2 queued task(s)"


def test_an_unreadable_left_queue_says_so_instead_of_guessing() -> None:
    verdict = judge_left_queue(OLD, None, "cannot reach Redis: connection refused",
                               warned=False)
    assert not verdict.done and verdict.event is None
    assert verdict.problem is not None and verdict.problem.reason == REASON
    assert verdict.problem.message.startswith(
        "the pool's old queue 'jobs' on redis://old-redis.team.svc:6379/0 cannot be read "
        "(cannot reach Redis: connection refused): whether tasks were left there is not known")


def test_a_left_queue_whose_redis_stays_silent_is_given_up_with_a_warning() -> None:
    """A Redis taken down after the move would keep the pool Degraded for good."""
    before = judge_left_queue(OLD, None, "no answer within 2 s", warned=True,
                              unreadable_for=GIVE_UP_SECONDS - 1)
    assert not before.done and before.problem is not None
    verdict = judge_left_queue(OLD, None, "no answer within 2 s", warned=True,
                               unreadable_for=GIVE_UP_SECONDS)
    assert verdict.done and verdict.problem is None
    assert verdict.event is not None and verdict.event.type == "Warning"
    assert verdict.event.message.startswith(
        "stopped following the pool's old queue 'jobs' on redis://old-redis.team.svc:6379/0: "
        "it could not be read for 10 minutes (no answer within 2 s)")
