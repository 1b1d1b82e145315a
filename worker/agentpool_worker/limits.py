"""The worker's side of shared rate limits: ``ctx.limit``, ``ctx.throttled``, ``ctx.hold``,
and the waiting share its heartbeat reports.

The limits come from ``AGENTPOOL_RATE_LIMITS`` (set by the operator from ``spec.rateLimits``).
The waiting share over the last WINDOW_SECONDS is the time runs spent waiting for a grant
divided by the time runs were in progress (both in run-seconds, so 4 runs waiting for 10 s is
40): the operator sums both over the pool's workers to decide whether a limit, rather than
the number of pods, is what holds the pool back. A wait for a slot counts as it goes (its
end is not known in advance, unlike a reservation's).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import redis.asyncio as aioredis

from agentpool.ratelimit import (
    LimitConfig,
    RateLimiter,
    Reservation,
    Throttle,
    UndeclaredLimit,
    give_back,
)
from agentpool.slots import Held, NoConcurrencyLimit, Slots
from agentpool_worker import metrics

WINDOW_SECONDS = 60.0
"""How far back the reported waiting share looks."""

_HOLDING: ContextVar[Mapping[Slots, Held]] = ContextVar(
    "agentpool_holding", default=MappingProxyType({}))
"""The slots the current task holds (``ctx.hold``); a task it starts inherits them."""


def _sync_thread() -> int | None:
    """The calling thread when no event loop runs in it (a sync handler's), else None."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return threading.get_ident()
    return None


@dataclass
class _Sample:
    at: float
    busy: float
    waited: dict[str, float] = field(default_factory=dict)


class WorkerLimits:
    """The limits one worker process may use, and its books of time spent waiting on them."""

    def __init__(self, redis: aioredis.Redis, limits: Mapping[str, LimitConfig], *,
                 caller: str, queue: str) -> None:
        self.configs = dict(limits)
        self._limiters = {
            name: RateLimiter(redis, name, config=config, caller=caller)
            for name, config in self.configs.items()
        }
        self._queue = queue
        self.waited: dict[str, float] = dict.fromkeys(self.configs, 0.0)
        """Run-seconds spent waiting per limit since start (reservation waits, counted when
        granted; a wait given back counts only what was waited)."""
        self._busy = 0.0
        self._active = 0
        self._changed = time.monotonic()
        self._samples: deque[_Sample] = deque()
        self._slot_waits: dict[int, tuple[str, float]] = {}
        """Waits for a slot in progress: limit and when each began (monotonic)."""
        self._slot_wait_ids = itertools.count()
        self._lapsed_seen: dict[str, int] = {}
        self._thread_holds: dict[tuple[int, Slots], Held] = {}
        self._live_holds: set[int] = set()
        """The ids of the holds whose outer block is still open: a task that outlives the
        block still carries the hold in its context, and must take a slot of its own."""
        """The slots sync handlers' threads hold (``hold_sync``)."""

    def limiter(self, name: str) -> RateLimiter:
        found = self._limiters.get(name)
        if found is None:
            declared = ", ".join(sorted(self._limiters)) or "none"
            raise UndeclaredLimit(
                f"rate limit {name!r} is not declared for this pool: add it to the pool's "
                f"spec.rateLimits (declared: {declared})"
            )
        return found

    # -- books -------------------------------------------------------------------------------

    def runs_changed(self, delta: int) -> None:
        now = time.monotonic()
        self._busy += self._active * (now - self._changed)
        self._active = max(0, self._active + delta)
        self._changed = now

    def busy(self) -> float:
        return self._busy + self._active * (time.monotonic() - self._changed)

    def window(self) -> dict[str, Any]:
        """Run-seconds busy and waited per limit over the last WINDOW_SECONDS (heartbeat)."""
        now = time.monotonic()
        waited = dict(self.waited)
        for name, began in self._slot_waits.values():
            waited[name] += now - began
        sample = _Sample(now, self.busy(), waited)
        self._samples.append(sample)
        while len(self._samples) > 1 and now - self._samples[1].at >= WINDOW_SECONDS:
            self._samples.popleft()
        first = self._samples[0]
        return {
            "busy": round(sample.busy - first.busy, 3),
            "waited": {
                name: round(total - first.waited.get(name, 0.0), 3)
                for name, total in sample.waited.items()
            },
        }

    def _granted(self, reservation: Reservation) -> None:
        self.waited[reservation.limit] += reservation.wait
        bound = metrics.for_limit(self._queue, reservation.limit)
        bound.grants.inc()
        bound.waited.inc(reservation.wait)
        bound.factor.set(reservation.factor)
        if reservation.tokens:
            bound.tokens.inc(reservation.tokens)

    def _unwaited(self, reservation: Reservation, remaining: float) -> None:
        self.waited[reservation.limit] -= max(0.0, remaining)
        metrics.for_limit(self._queue, reservation.limit).released.inc()

    # -- for handlers -------------------------------------------------------------------------

    async def limit(self, name: str, tokens: int, requests: int) -> Reservation:
        limiter = self.limiter(name)
        reservation = await limiter.reserve(tokens=tokens, requests=requests)
        self._granted(reservation)
        if reservation.wait <= 0:
            return reservation
        until = time.monotonic() + reservation.wait
        try:
            await asyncio.sleep(reservation.wait)
        except asyncio.CancelledError:
            self._unwaited(reservation, until - time.monotonic())
            await give_back(limiter, reservation)
            raise
        return reservation

    async def reserve(self, name: str, tokens: int, requests: int) -> Reservation:
        reservation = await self.limiter(name).reserve(tokens=tokens, requests=requests)
        self._granted(reservation)
        return reservation

    async def release(self, reservation: Reservation, remaining: float) -> None:
        self._unwaited(reservation, remaining)
        await give_back(self.limiter(reservation.limit), reservation)

    def lapsed(self) -> dict[str, int]:
        """Holds found lapsed since the last call, per limit (counted in the metrics)."""
        found: dict[str, int] = {}
        for name, limiter in self._limiters.items():
            total = limiter.slots_lapsed
            new = total - self._lapsed_seen.get(name, 0)
            if new > 0:
                found[name] = new
                self._lapsed_seen[name] = total
                metrics.for_limit(self._queue, name).lapsed.inc(new)
        return found

    def hold(self, name: str) -> AbstractAsyncContextManager[Held]:
        """A slot of `name` for the block. Re-entrant: a hold nested in a hold of the same
        name (in the same task, a task started inside the outer block, or the same sync
        handler's thread) takes no second slot, which it could wait for forever under a cap
        its own run fills; the slot goes back when the outer block ends."""
        return self._hold(name, _HOLDING.get(), _sync_thread())

    @asynccontextmanager
    async def _hold(self, name: str, holding: Mapping[Slots, Held],
                    thread: int | None) -> AsyncIterator[Held]:
        """`holding`: the slots the caller's task holds; `thread`: the caller's thread when
        it is a sync handler's (``hold_sync`` enters and exits on the worker's loop, in tasks
        of their own, so a thread's holds are kept in `_thread_holds` instead)."""
        limiter = self.limiter(name)
        if limiter.config is not None and limiter.config.max_concurrent is None:
            raise NoConcurrencyLimit(
                f"rate limit {name!r} declares no maxConcurrent for this pool: add "
                "maxConcurrent to its entry in spec.rateLimits to hold slots of it")
        slots = limiter.slots
        outer = holding.get(slots)
        if outer is None and thread is not None:
            outer = self._thread_holds.get((thread, slots))
        if outer is not None and id(outer) in self._live_holds:
            yield outer
            return
        async with self._slot(name, slots) as held, self._live(held):
            if thread is not None:
                self._thread_holds[thread, slots] = held
                try:
                    yield held
                finally:
                    del self._thread_holds[thread, slots]
                return
            _HOLDING.set({**holding, slots: held})
            try:
                yield held
            finally:
                _HOLDING.set(holding)

    @asynccontextmanager
    async def _live(self, held: Held) -> AsyncIterator[None]:
        self._live_holds.add(id(held))
        try:
            yield
        finally:
            self._live_holds.discard(id(held))

    @asynccontextmanager
    async def _slot(self, name: str, slots: Slots) -> AsyncIterator[Held]:
        bound = metrics.for_limit(self._queue, name)
        wait_id = next(self._slot_wait_ids)
        began = time.monotonic()
        self._slot_waits[wait_id] = (name, began)
        try:
            held = await slots.acquire()
        finally:
            del self._slot_waits[wait_id]
            waited = time.monotonic() - began
            self.waited[name] += waited
            bound.waited.inc(waited)
        bound.holds.inc()
        bound.held.inc()
        try:
            yield held
        finally:
            bound.held.dec()
            await slots.release(held)

    async def throttled(self, name: str, retry_after: float | None) -> Throttle:
        throttle = await self.limiter(name).throttled(retry_after)
        bound = metrics.for_limit(self._queue, name)
        bound.throttles.inc()
        bound.factor.set(throttle.factor)
        return throttle
