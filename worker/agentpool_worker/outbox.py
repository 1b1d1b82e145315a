"""The events runs emit, in order, until Redis has recorded them.

The worker's flusher takes them out in calls (:meth:`EventOutbox.next_call`). A call keeps
its id until Redis takes it: sent again after an error that may have come after Redis
appended the events, it appends nothing a second time, and it goes ahead of any later
events. While Redis refuses events for being full they are held back (:meth:`refused`) and
offered again every FULL_RETRY_SECONDS, at once when someone waits for them
(:meth:`wait_recorded`) or when another write shows Redis has room (:meth:`release_held`).

Events carry sequence numbers: a checkpoint, and the report of a failure, cancel or release,
waits until every event emitted before it is recorded, so that a task's stream never shows
a later step before an earlier one; ``ctx.emit`` waits the same way when too many are
unsent (back-pressure). A wait ends early, answering False, when Redis refuses the events
for being full.
"""

from __future__ import annotations

import asyncio
import time

from agentpool.protocol import ClaimedTask, RunEvents, call_id

MAX_CALL_EVENTS = 2000
"""Events per flush round trip."""
MAX_PENDING_EVENTS = 20_000
"""Events unsent before ``ctx.emit`` waits for a flush (back-pressure, Worker.emit); while
Redis is full, events beyond it are dropped instead (the run goes on)."""
FULL_RETRY_SECONDS = 2.0
"""While Redis refuses events for being full, how often they are offered again (outcomes go
on meanwhile; a checkpoint or a report that waits for them has them offered at once)."""

PendingEvent = tuple[int, ClaimedTask, str, str]
"""(sequence number, the run's claim, kind, data JSON)"""


class EventCall:
    """Events sent in one call that Redis has not taken yet."""

    __slots__ = ("call", "events")

    def __init__(self, call: str, events: list[PendingEvent]) -> None:
        self.call = call
        self.events = events


def by_run(events: list[PendingEvent]) -> list[RunEvents]:
    """One script call per run, its events in the order they were emitted."""
    groups: dict[ClaimedTask, list[tuple[str, str]]] = {}
    for _, task, kind, raw in events:
        groups.setdefault(task, []).append((kind, raw))
    return [RunEvents(task.id, task.attempts, items, task.token)
            for task, items in groups.items()]


class EventOutbox:
    """Events emitted and not recorded yet: `unsent`, and the call `untaken` that was sent
    and not taken by Redis yet (it goes first)."""

    def __init__(self, wake: asyncio.Event) -> None:
        """`wake`: set to have the flusher send events now."""
        self._wake = wake
        self.unsent: list[PendingEvent] = []
        """Emitted and not sent yet."""
        self.untaken: EventCall | None = None
        """Sent, and not taken by Redis yet (it goes before `unsent`)."""
        self.seq = 0
        """Sequence number of the last event emitted; events go to Redis in this order."""
        self._recorded_seq = 0
        """Every event up to this one is recorded (or was dropped)."""
        self._changed = asyncio.Condition()
        self._refusals = 0
        """How many times Redis refused events for being full (ends the waits for them)."""
        self.held_until: float | None = None
        """While Redis refuses events for being full: when they are offered again."""
        self._asked = False
        """Someone waits for the events: offer them now, not at the retry."""

    def add(self, task: ClaimedTask, kind: str, raw: str) -> None:
        self.seq += 1
        self.unsent.append((self.seq, task, kind, raw))

    @property
    def pending(self) -> bool:
        return self.untaken is not None or bool(self.unsent)

    def may_go(self) -> bool:
        """Events wait, and are not held back for a full Redis (or someone asked for them)."""
        return self.pending and (
            self.held_until is None or self._asked or time.monotonic() >= self.held_until)

    def retry_in(self) -> float | None:
        """Seconds until held-back events are offered again; None when none are held."""
        if self.held_until is None or not self.pending:
            return None
        return max(0.0, self.held_until - time.monotonic())

    def next_call(self) -> EventCall:
        """The call to send now, when `may_go`: the one Redis has not taken yet, else a new
        one of the first unsent events. Those who asked for the events are answered by it."""
        if self.untaken is None:
            self.untaken = EventCall(call_id(), self.unsent[:MAX_CALL_EVENTS])
            del self.unsent[:MAX_CALL_EVENTS]
        self._asked = False
        return self.untaken

    async def taken(self) -> None:
        """Redis took the call (with replicated durability, at least its primary did): the
        next one is new, nothing is held back, and those waiting for its events are told."""
        self.untaken = None
        self.held_until = None
        await self._settle()

    async def refused(self) -> None:
        """Redis refused the events for being full: hold them back, tell those waiting."""
        self.held_until = time.monotonic() + FULL_RETRY_SECONDS
        self._asked = False
        async with self._changed:
            self._refusals += 1
            self._changed.notify_all()

    def release_held(self) -> None:
        """Redis has room again: events held back go now."""
        if self.held_until is not None:
            self.held_until = None
            self._wake.set()

    async def wait_recorded(self, seq: int | None = None) -> bool:
        """Wait until every event up to `seq` (None: every one emitted so far) is recorded
        (True), or Redis refuses them for being full (False: they stay pending); the flusher
        is asked to send them now. While Redis cannot be reached it waits, as everything
        else does."""
        seq = self.seq if seq is None else seq
        if self._recorded_seq >= seq:
            return True
        refusals = self._refusals
        self._asked = True
        self._wake.set()
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._recorded_seq >= seq or self._refusals != refusals)
        return self._recorded_seq >= seq

    async def drop(self, task: ClaimedTask) -> int:
        """Take a run's events off those waiting for Redis; how many. For a run whose outcome
        goes to Redis before them (a failure, a cancel, a release while Redis is full): Redis
        would refuse them once the outcome is recorded (events.lua takes no events of a run
        whose task moved on, a success's excepted)."""
        dropped = len(self.unsent)
        self.unsent = [e for e in self.unsent if e[1] is not task]
        dropped -= len(self.unsent)
        if self.untaken is not None:
            kept = [e for e in self.untaken.events if e[1] is not task]
            dropped += len(self.untaken.events) - len(kept)
            self.untaken = EventCall(self.untaken.call, kept) if kept else None
        if dropped:
            await self._settle()
        return dropped

    async def _settle(self) -> None:
        """Every event before the first one not recorded yet is recorded (or was dropped):
        wake those waiting for it."""
        ahead = self.untaken.events if self.untaken is not None else self.unsent
        seq = ahead[0][0] - 1 if ahead else self.seq
        async with self._changed:
            self._recorded_seq = max(self._recorded_seq, seq)
            self._changed.notify_all()
