"""`agentpool limits`: the shared rate limits declared on a Redis, and how they are used."""

from __future__ import annotations

import argparse
from typing import Any

from agentpool.cli.common import (
    add_output_option,
    add_redis_option,
    add_watch_options,
    command,
    connect,
    show,
)
from agentpool.cli.views import Grid, format_age
from agentpool.client import ENV_REDIS_URL
from agentpool.protocol import redis_seconds
from agentpool.ratelimit import LimitState, limit_states

Snapshot = tuple[list[LimitState], float]
"""The limits and Redis's time when read: a 429's age is on Redis's clock, which stamped it."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "limits",
        help="list the shared rate limits and how they are used",
        description="List the rate limits the pools on this Redis declare (spec.rateLimits): "
        "the declared rate, the effective rate now (lower after a 429 until it recovers) and "
        "the slots of maxConcurrent in use, workers holding a reservation in the future, "
        "grants and 429s so far, and when the last 429 was reported.",
    )
    add_redis_option(parser, help_text="the Redis the pools declare their rate limits on "
                     f"(default: ${ENV_REDIS_URL})")
    add_output_option(parser)
    add_watch_options(parser)
    parser.set_defaults(func=run)


def _rate(declared: int | None, effective: float | None, unit: str) -> tuple[str, str]:
    if declared is None or effective is None:
        return "", ""
    return f"{declared}/min {unit}", f"{effective:.0f}/min {unit}"


def limits_grid(states: list[LimitState], now: float) -> Grid:
    rows = []
    for s in states:
        config = s.config
        declared, effective = [], []
        for value, eff, unit in (
            (config.requests_per_minute if config else None, s.effective_rpm, "req"),
            (config.tokens_per_minute if config else None, s.effective_tpm, "tok"),
        ):
            d, e = _rate(value, eff, unit)
            if d:
                declared.append(d)
                effective.append(e)
        if s.paused_for > 0:
            effective.append(f"paused {s.paused_for:.0f}s")
        most = config.max_concurrent if config else None
        if most is not None:
            declared.append(f"{most} at once")
            effective.append(f"{s.held}/{most} at once"
                             + (f", {s.in_line} in line" if s.in_line else ""))
        last = format_age(now - s.last_throttle) + " ago" if s.last_throttle else "never"
        rows.append([
            s.name, ", ".join(declared) or "(not declared)", ", ".join(effective) or "-",
            str(s.waiting), str(s.grants), str(s.throttles), last, s.owner or "-",
        ])
    return Grid(
        headers=["LIMIT", "DECLARED", "EFFECTIVE", "WAITING", "GRANTS", "429S", "LAST 429",
                 "DECLARED BY"],
        rows=rows, title=f"Rate limits: {len(states)}",
        notes=[] if states else ["no rate limit is declared on this Redis"],
    )


def limits_json(states: list[LimitState], now: float) -> list[dict[str, Any]]:
    return [
        {
            "limit": s.name,
            "declared": s.config.to_json() if s.config else None,
            "declaredBy": s.owner or None,
            "factor": s.factor,
            "effectiveRequestsPerMinute": s.effective_rpm,
            "effectiveTokensPerMinute": s.effective_tpm,
            "pausedSeconds": round(s.paused_for, 3),
            "waitingWorkers": s.waiting,
            "grants": s.grants,
            "tokens": s.tokens,
            "throttles": s.throttles,
            "lastThrottle": s.last_throttle,
            "lastThrottleAgeSeconds": None if s.last_throttle is None
            else round(now - s.last_throttle, 3),
            "waitedSeconds": round(s.waited_seconds, 3),
            "released": s.released,
            "held": s.held,
            "inLine": s.in_line,
            "holds": s.holds,
        }
        for s in states
    ]


@command
async def run(args: argparse.Namespace) -> int:
    async with connect(args) as client:

        async def snapshot() -> Snapshot:
            states = await limit_states(client.redis)
            return states, redis_seconds(await client.redis.time())

        return await show(args, snapshot, lambda d: limits_grid(*d),
                          lambda d: {"limits": limits_json(*d)})
