"""Shared rate limits on Redis: one budget per name, for every worker and producer using it.

A limit is declared by the pools that name it (``spec.rateLimits``; the operator writes the
declaration, the workers receive it in ``AGENTPOOL_RATE_LIMITS``). :meth:`RateLimiter.acquire`
makes one round trip to `agentpool/lua/rate_limit.lua`, which hands out a *reservation*: the
time, on Redis's clock, at which the call may go. The caller sleeps until then, so waiters
never poll, and a caller cancelled while it sleeps gives its reservation back (taken back
when it is the last one handed out; one from the middle of the line stays spent).

After a provider's 429, :meth:`RateLimiter.throttled` pauses the budget for every user and
lowers the effective rate, which then recovers step by step (AIMD: constants below, and in
the script, which is what applies them).

Keys: ``ap:{rl:<name>}:config|state|waiting|call:<id>``, one hash tag per limit (one Redis
Cluster slot), plus the set ``ap:ratelimits`` of declared names, which the ``agentpool limits``
view reads. While that slot moves to another primary (a reshard), the calls wait for the move
to end (`agentpool.slots.SlotMoves`): Redis refuses them before they run.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from agentpool.errors import PermanentError
from agentpool.slots import GLANCE_MOVING_SECONDS, Held, Slots

if TYPE_CHECKING:  # the worker reads limits from its environment and never loads the models
    from agentpool.models import RateLimitSpec

NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\Z")
REGISTRY_KEY = "ap:ratelimits"
DECREASE = 0.5
"""Factor applied to the effective rate by a 429 (once per pause)."""
MIN_FACTOR = 0.1
"""The effective rate never drops below this share of the declared rate."""
RECOVERY_STEP = 0.1
"""Share of the declared rate given back every RECOVERY_INTERVAL after a pause."""
RECOVERY_INTERVAL = 6.0
"""Seconds between two recovery steps."""
OWNER_STALE_SECONDS = 300.0
"""A declaration its pool has not confirmed for this long may be replaced by another pool's."""
MAX_RETRY_AFTER = 3600.0
MAX_BATCH = 500
"""Most grants one round trip asks for."""


def limit_call_id() -> str:
    """A random id per grant, give-back or 429 report: the script keeps what each did for a
    minute, so that one sent again gets the same answer. 128 bits: one limit serves every
    pool, and at a million calls a minute a shorter id would meet another within a day."""
    return os.urandom(16).hex()


class RateLimitError(ValueError):
    """A limit that cannot be used as asked (undeclared, malformed); phrased for a person."""


class UndeclaredLimit(RateLimitError, PermanentError):
    """A handler asked for a limit its pool does not declare: a configuration error that no
    retry mends, so its task is dead-lettered at once with this message."""


class CallTooLarge(RateLimitError, PermanentError):
    """A call asked for more requests or tokens than its limit's declared rate gives in a
    minute. Granting it would leave every caller of the limit, in every pool, a debt of more
    than a minute to wait out; no retry mends it."""


_DIMENSIONS = {1: ("requests", "requestsPerMinute"), 2: ("tokens", "tokensPerMinute")}


@dataclass(frozen=True)
class LimitConfig:
    """A declared limit: requests and/or tokens per minute, and the burst in seconds of rate."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    burst_seconds: float = 1.0
    max_concurrent: int | None = None
    """Most calls in progress at once (``ctx.hold``), None for no such bound."""

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise RateLimitError(
                f"invalid rate limit name {self.name!r}: use 1-63 lowercase letters, digits, "
                "'.', '_' or '-'"
            )
        if (self.requests_per_minute is None and self.tokens_per_minute is None
                and self.max_concurrent is None):
            raise RateLimitError(
                f"rate limit {self.name!r} needs requests or tokens per minute, or "
                "maxConcurrent")
        for rate in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent):
            if rate is not None and rate < 1:
                raise RateLimitError(f"rate limit {self.name!r}: rates and maxConcurrent must "
                                     "be at least 1")
        if not 0 < self.burst_seconds <= 60:
            raise RateLimitError(f"rate limit {self.name!r}: burstSeconds must be in (0, 60]")

    @property
    def wire(self) -> tuple[str, str, str, str]:
        """(rpm, tpm, burst, max concurrent) as the script stores and compares them."""
        return (
            "" if self.requests_per_minute is None else str(self.requests_per_minute),
            "" if self.tokens_per_minute is None else str(self.tokens_per_minute),
            repr(float(self.burst_seconds)),
            "" if self.max_concurrent is None else str(self.max_concurrent),
        )

    def describe(self) -> str:
        rates = []
        if self.requests_per_minute is not None:
            rates.append(f"{self.requests_per_minute} requests/min")
        if self.tokens_per_minute is not None:
            rates.append(f"{self.tokens_per_minute} tokens/min")
        if rates:
            rates.append(f"burst {self.burst_seconds:g}s")
        if self.max_concurrent is not None:
            rates.append(f"at most {self.max_concurrent} at once")
        return ", ".join(rates)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "burstSeconds": self.burst_seconds}
        if self.requests_per_minute is not None:
            data["requestsPerMinute"] = self.requests_per_minute
        if self.tokens_per_minute is not None:
            data["tokensPerMinute"] = self.tokens_per_minute
        if self.max_concurrent is not None:
            data["maxConcurrent"] = self.max_concurrent
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LimitConfig:
        try:
            rpm, tpm = data.get("requestsPerMinute"), data.get("tokensPerMinute")
            most = data.get("maxConcurrent")
            return cls(
                name=str(data["name"]),
                requests_per_minute=None if rpm is None else int(rpm),
                tokens_per_minute=None if tpm is None else int(tpm),
                burst_seconds=float(data.get("burstSeconds", 1.0)),
                max_concurrent=None if most is None else int(most),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, RateLimitError):
                raise
            raise RateLimitError(f"malformed rate limit {dict(data)!r}: {error}") from None

    @classmethod
    def from_wire(cls, name: str, rpm: str, tpm: str, burst: str,
                  most: str = "") -> LimitConfig:
        return cls(name, int(rpm) if rpm else None, int(tpm) if tpm else None, float(burst),
                   int(most) if most else None)


def limit_configs(limits: Iterable[RateLimitSpec] | None) -> list[LimitConfig]:
    """The limits of a pool's spec.rateLimits."""
    return [
        LimitConfig(spec.name, spec.requests_per_minute, spec.tokens_per_minute,
                    spec.burst_seconds, spec.max_concurrent)
        for spec in limits or ()
    ]


def encode_limits(limits: Iterable[LimitConfig]) -> str:
    """The value of ``AGENTPOOL_RATE_LIMITS``."""
    return json.dumps([limit.to_json() for limit in limits], separators=(",", ":"))


def decode_limits(text: str) -> dict[str, LimitConfig]:
    """Inverse of `encode_limits`; raises RateLimitError with a readable reason."""
    if not text.strip():
        return {}
    try:
        items = json.loads(text)
    except ValueError as error:
        raise RateLimitError(f"rate limits are not JSON: {error}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise RateLimitError("rate limits must be a JSON list of objects")
    limits = [LimitConfig.from_json(item) for item in items]
    names = [limit.name for limit in limits]
    if len(names) != len(set(names)):
        raise RateLimitError("rate limit names must be unique")
    return {limit.name: limit for limit in limits}


def key_prefix(name: str) -> str:
    return f"ap:{{rl:{name}}}:"


@cache
def _lua() -> str:
    return (resources.files("agentpool") / "lua" / "rate_limit.lua").read_text()


@dataclass(frozen=True)
class Reservation:
    """A grant: the call may go `wait` seconds after Redis handed it out."""

    limit: str
    requests: int
    tokens: int
    wait: float
    grant_us: int
    factor: float


_Pending = tuple[int, int, "asyncio.Future[Reservation]"]


@dataclass(frozen=True)
class Throttle:
    pause: float
    factor: float
    decreased: bool


@dataclass(frozen=True)
class Declaration:
    """What `declare` found: ``declared``, ``same``, ``updated`` or ``conflict``; `serving` is
    the configuration in force afterwards and `owner` the pool that declared it."""

    outcome: str
    owner: str
    serving: LimitConfig

    @property
    def conflict(self) -> bool:
        return self.outcome == "conflict"


@dataclass(frozen=True)
class LimitState:
    """A limit as ``agentpool limits`` shows it."""

    name: str
    config: LimitConfig | None
    owner: str
    factor: float
    paused_for: float
    grants: int
    tokens: int
    throttles: int
    last_throttle: float | None
    """Epoch seconds of the last 429 reported, None if never."""
    waited_seconds: float
    released: int
    waiting: int
    """Callers holding a reservation still in the future."""
    held: int = 0
    """Calls in progress under ``maxConcurrent`` (``hold``)."""
    in_line: int = 0
    """Callers waiting for one of those slots."""
    holds: int = 0
    """Slots handed out so far."""

    @property
    def effective_rpm(self) -> float | None:
        rpm = self.config.requests_per_minute if self.config else None
        return None if rpm is None else rpm * self.factor

    @property
    def effective_tpm(self) -> float | None:
        tpm = self.config.tokens_per_minute if self.config else None
        return None if tpm is None else tpm * self.factor


class RateLimiter:
    """One named limit on one Redis. Cheap to create; the script loads on first use.

    `config`, when given, declares the limit on the first call if Redis has no declaration
    (an emptied Redis heals itself); the declaration in Redis is what serves.
    """

    def __init__(self, redis: aioredis.Redis, name: str, *, config: LimitConfig | None = None,
                 caller: str = "") -> None:
        if not NAME.match(name):
            raise RateLimitError(f"invalid rate limit name {name!r}")
        self.redis = redis
        self.name = name
        self.config = config
        self.caller = caller or "client"
        self.prefix = key_prefix(name)
        self._script: AsyncScript | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Future[None] | None = None
        self._orphans: set[asyncio.Future[bool]] = set()
        self.slots = Slots(
            redis, name, self.prefix, undeclared=self._undeclared, caller=self.caller,
            declaration=config.wire if config is not None else ("", "", "", ""),
            capped=config is not None and config.max_concurrent is not None)
        """The limit's ``maxConcurrent`` slots as this process holds them."""

    @property
    def slots_lapsed(self) -> int:
        """Holds of this process found lapsed when renewed."""
        return self.slots.lapsed

    def hold(self) -> AbstractAsyncContextManager[Held]:
        """``async with limiter.hold():`` waits for one of the limit's ``maxConcurrent``
        slots, shared with every process naming the limit, and gives it back after the block.
        A limit declared without ``maxConcurrent`` raises NoConcurrencyLimit."""
        return self.slots.hold()

    async def _run(self, *args: Any, within: float | None = None) -> Any:
        """One script call, sent again while the limit's slot moves (Redis refused it before
        it ran; a call id in `args` would make it do its work once anyway), for at most
        `within` seconds (`SlotMoves.wait_out`)."""
        if self._script is None:
            self._script = self.redis.register_script(_lua())
        script = self._script
        return await self.slots.moves.wait_out(
            lambda: script(keys=[self.prefix + "state"], args=[self.prefix, *args]), within)

    async def reserve(self, *, tokens: int = 0, requests: int = 1) -> Reservation:
        """Take a reservation; the caller must wait `wait` seconds. One round trip, shared
        with the calls of this limiter that arrive while the previous one is on the wire
        (group commit: no added delay, fewer round trips under contention)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise RateLimitError(f"tokens must be a non-negative integer, got {tokens!r}")
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
            raise RateLimitError(f"requests must be a non-negative integer, got {requests!r}")
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self._pending.append((requests, tokens, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            args = [x for requests, tokens, _ in batch for x in (requests, tokens)]
            declare = list(self.config.wire) if self.config is not None else []
            try:
                reply = await self._run("acquire", limit_call_id(), self.caller, len(batch), *args,
                                        *declare)
            except asyncio.CancelledError:
                for _, _, future in batch + self._pending:
                    future.cancel()
                self._pending = []
                raise
            except Exception as error:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            try:
                self._settle(batch, [int(x) for x in reply])
            except (ValueError, TypeError, IndexError) as error:  # not the reply it asked for
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(RateLimitError(
                            f"rate limit {self.name!r}: unexpected reply from Redis ({error})"))

    def _undeclared(self) -> UndeclaredLimit:
        return UndeclaredLimit(f"rate limit {self.name!r} is not declared on this Redis: name "
                               "it in an AgentPool's spec.rateLimits")

    def _settle(self, batch: list[_Pending], reply: list[int]) -> None:
        if reply[0] < 0:
            error = self._undeclared()
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        factor = reply[0] / 1e6
        for index, (requests, tokens, future) in enumerate(batch):
            wait_us, grant_us = reply[1 + 2 * index], reply[2 + 2 * index]
            if wait_us < 0:
                if not future.done():
                    asked, rate = _DIMENSIONS[-wait_us]
                    cost = requests if wait_us == -1 else tokens
                    future.set_exception(CallTooLarge(
                        f"one call of {cost} {asked} is more than rate limit {self.name!r} "
                        f"allows in a minute ({rate}: {grant_us}): split the call or raise "
                        f"{rate}"))
                continue
            reservation = Reservation(self.name, requests, tokens, wait_us / 1e6, grant_us,
                                      factor)
            if future.cancelled():
                if wait_us > 0:  # granted to a caller that left: give it back
                    self._orphans.add(asyncio.ensure_future(self.release(reservation)))
                    for orphan in [o for o in self._orphans if o.done()]:
                        self._orphans.discard(orphan)
                continue
            future.set_result(reservation)

    async def release(self, reservation: Reservation) -> bool:
        """Give back a reservation whose time has not come (the call will not be made)."""
        return bool(await self._run(
            "release", limit_call_id(), reservation.requests, reservation.tokens,
            reservation.grant_us,
        ))

    async def acquire(self, *, tokens: int = 0, requests: int = 1) -> Reservation:
        """Wait until the budget allows the call, then return. Cancelled while waiting, it
        gives its reservation back (best effort: a lost connection keeps it spent)."""
        reservation = await self.reserve(tokens=tokens, requests=requests)
        if reservation.wait > 0:
            try:
                await asyncio.sleep(reservation.wait)
            except asyncio.CancelledError:
                await give_back(self, reservation)
                raise
        return reservation

    async def throttled(self, retry_after: float | None = None) -> Throttle:
        """The provider answered 429: pause the budget for `retry_after` seconds for every
        user (default: one recovery interval) and lower the effective rate."""
        pause = RECOVERY_INTERVAL if retry_after is None else float(retry_after)
        if not math.isfinite(pause) or pause < 0:
            raise RateLimitError(f"retry_after must be a non-negative number, got {retry_after!r}")
        pause = min(pause, MAX_RETRY_AFTER)
        pause_us, factor_ppm, decreased = (int(x) for x in await self._run(
            "throttle", limit_call_id(), int(pause * 1e6)))
        return Throttle(pause_us / 1e6, factor_ppm / 1e6, bool(decreased))

    async def declare(self, config: LimitConfig, owner: str) -> Declaration:
        """Declare (or confirm) the limit for pool `owner`. The first declaration serves; a
        different one is refused as a conflict unless the serving one is `owner`'s own or
        has not been confirmed for OWNER_STALE_SECONDS. Waits for the limit's slot to move
        at most GLANCE_MOVING_SECONDS (the operator declares again next round)."""
        outcome, holder, rpm, tpm, burst, most = (_s(x) for x in await self._run(
            "declare", *config.wire, owner, int(OWNER_STALE_SECONDS * 1000),
            within=GLANCE_MOVING_SECONDS))
        await self.redis.sadd(REGISTRY_KEY, self.name)
        return Declaration(outcome, holder,
                           LimitConfig.from_wire(self.name, rpm, tpm, burst, most))

    async def state(self) -> LimitState:
        """The limit as ``agentpool limits`` shows it; waits for the limit's slot to move at
        most GLANCE_MOVING_SECONDS (a view reads it again)."""
        (rpm, tpm, burst, owner, factor, now, pause_until, grants, tokens, throttles, last,
         waited, released, waiting, most, held, in_line, holds) = (
            _s(x) for x in await self._run("read", within=GLANCE_MOVING_SECONDS))
        config = LimitConfig.from_wire(self.name, rpm, tpm, burst, most) if burst else None
        return LimitState(
            name=self.name, config=config, owner=owner, factor=float(factor),
            paused_for=max(0.0, (float(pause_until) - float(now)) / 1e6),
            grants=int(grants), tokens=int(tokens), throttles=int(throttles),
            last_throttle=float(last) / 1e6 if last else None,
            waited_seconds=int(waited) / 1e6, released=int(released), waiting=int(waiting),
            held=int(held), in_line=int(in_line), holds=int(holds),
        )


async def give_back(limiter: RateLimiter, reservation: Reservation) -> None:
    """Release `reservation` even while the caller is being cancelled."""
    release = asyncio.ensure_future(limiter.release(reservation))
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        await asyncio.wait([release], timeout=5.0)
    except Exception:  # a failed give-back only leaves the slot spent
        return


async def declared_limits(redis: aioredis.Redis) -> list[str]:
    names = await redis.smembers(REGISTRY_KEY)
    return sorted(_s(n) for n in names)


async def limit_states(redis: aioredis.Redis) -> list[LimitState]:
    """Every declared limit's state, one script call each."""
    return [await RateLimiter(redis, name).state() for name in await declared_limits(redis)]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
