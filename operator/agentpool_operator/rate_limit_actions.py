"""A pool's rate limits, once per round: declared in Redis, and the workers' waits read.

Every round confirms the pool's declarations (the first declaration of a name serves; a pool
declaring other rates for it gets Degraded, and its workers use the serving one, so nothing
stalls) and sums what the workers' heartbeats report of their waits, which the scaling policy
reads (`agentpool.scaling.policy.rate_limit_cap`). A Redis error skips the limits for the
round: scaling then goes by the backlog alone, as it does for a pool without limits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agentpool.ratelimit import (
    Declaration,
    LimitConfig,
    LimitState,
    RateLimiter,
    limit_configs,
)
from agentpool.redis_errors import REDIS_FAILURES
from agentpool.scaling.policy import LimitWait, limit_waits

from . import metrics
from .observation import PoolObservation
from .status import Problem, sanitize

CONFLICT_REASON = "RateLimitConflict"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitsObserved:
    waits: tuple[LimitWait, ...] = ()
    problems: tuple[Problem, ...] = ()


def conflict_problem(mine: LimitConfig, declaration: Declaration) -> Problem:
    return Problem(CONFLICT_REASON, (
        f"rate limit {mine.name!r}: this pool declares {mine.describe()}, but pool "
        f"{declaration.owner or 'another pool'} declared {declaration.serving.describe()} "
        "first; that declaration serves every pool naming it"
    ))


def conflicts_problem(problems: list[Problem]) -> tuple[Problem, ...]:
    if not problems:
        return ()
    return (Problem(CONFLICT_REASON, "; ".join(p.message for p in problems)),)


async def observe_limits(observation: PoolObservation) -> LimitsObserved:
    spec, queue = observation.spec, observation.queue
    if not spec.rate_limits:
        metrics.record_limits(observation.namespace, observation.name, [])
    if not spec.rate_limits or queue is None:
        metrics.record_limit_waits(observation.namespace, observation.name, {})
        return LimitsObserved()
    owner = f"{observation.namespace}/{observation.name}"
    problems: list[Problem] = []
    states: list[LimitState] = []
    try:
        for config in limit_configs(spec.rate_limits):
            limiter = RateLimiter(queue.redis, config.name)
            declaration = await limiter.declare(config, owner)
            if declaration.conflict:
                problems.append(conflict_problem(config, declaration))
            states.append(await limiter.state())
        metrics.record_limits(observation.namespace, observation.name, states)
        workers = await queue.workers()
    except REDIS_FAILURES as error:
        log.warning(f"{owner}: cannot read its rate limits: {sanitize(str(error))}")
        return LimitsObserved()
    waits = limit_waits(worker.limit_window for worker in workers)
    metrics.record_limit_waits(observation.namespace, observation.name,
                               {wait.name: wait.share for wait in waits})
    return LimitsObserved(waits, conflicts_problem(problems))
