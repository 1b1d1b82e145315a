"""Fan-out of page snapshots: one refresher per page, however many browsers watch it.

A page is identified by a key (its API path and query). While at least one browser watches
it, its topic reloads it every `interval` seconds and hands the same encoded snapshot to
every watcher; the last watcher to leave stops the reloads. A plain GET of a watched page
is answered from the topic's latest snapshot.

A page may also have an event log (a task's events): each reload reads only the events after
the last one the topic has, in the same Redis round trip as the snapshot, and the topic keeps
them so every watcher gets each event once, in order, from the start or from the event id it
last saw (a reconnecting browser's Last-Event-ID). The topics together keep at most
MAX_EVENT_BYTES of events: past it, the largest drop their oldest, and a watcher that still
needs those reads them from Redis (through the page's loader) in batches.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Loader = Callable[[], Awaitable[dict[str, Any]]]
EventKey = tuple[int, int]


@dataclass(frozen=True)
class Feed:
    snapshot: dict[str, Any]
    events: list[dict[str, Any]]
    """New events after the id the loader was given, oldest first, each with an "id"."""
    more: bool = False
    """More events are waiting: reload at once rather than after the interval."""


FeedLoader = Callable[[str | None], Awaitable[Feed]]
"""Loads a page and its events after the given event id (None: from the first)."""

MAX_LOG_EVENTS = 10_000
"""Events a topic keeps at most (a task's stream keeps about as many)."""
MAX_EVENT_BYTES = 48 * 1024 * 1024
"""Bytes of events all topics keep together, EVENT_OVERHEAD_BYTES counted for each besides
its text: past it, the topics that keep the most drop their oldest events."""
EVENT_OVERHEAD_BYTES = 160
"""What keeping one event costs besides its text: its string's header, its key (a tuple of
two ints) and two list slots."""
MESSAGE_BYTES = 256 * 1024
"""The most event text one live message carries (one event more when a single event is
bigger): a new watcher of a long log gets it in messages of this size, never as one copy of
the whole log."""
MAX_DROPPED_READS = 4
"""Reads of dropped events (for watchers that need them) under way at once, whatever the
number of watchers: each holds a batch of events in memory while it is sent."""
BEFORE_FIRST: EventKey = (-1, -1)


AGE_SUFFIX = "_age_seconds"
"""What ends the name of an age a snapshot gives (it changes on every read)."""


@dataclass(frozen=True)
class Message:
    text: str
    event_id: str | None = None
    """Set on a batch of events: the id of its last event."""
    name: str | None = None


def encode(snapshot: Any) -> str:
    """JSON in ASCII: a string read from Redis may hold a lone surrogate (JSON allows
    "\\ud800"), which has no UTF-8; escaped, it reaches the page as the producer wrote it."""
    return json.dumps(snapshot, separators=(",", ":"), default=str)


def status_of(snapshot: dict[str, Any]) -> int:
    """The HTTP status of a page's snapshot: 404 for what is not there, 502 when it could not
    be read (an "error"), else 200."""
    if "error" not in snapshot:
        return 200
    return 404 if snapshot.get("not_found") else 502


def _ageless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ageless(v) for k, v in value.items() if not k.endswith(AGE_SUFFIX)}
    if isinstance(value, list):
        return [_ageless(v) for v in value]
    return value


def _unstamped(snapshot: dict[str, Any]) -> str:
    """A snapshot without its reading time ("at") and the ages it gives for scripts
    ("heartbeat_age_seconds", which the pages compute from the time beside it): what tells
    whether the page changed."""
    return encode(_ageless({k: v for k, v in snapshot.items() if k != "at"}))


def event_key(event_id: str) -> EventKey:
    """A stream entry id (``<ms>-<seq>``) in its order; ValueError when it is not one."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def event_id(key: EventKey) -> str | None:
    """The stream entry id of a key (None before the first)."""
    return None if key == BEFORE_FIRST else f"{key[0]}-{key[1]}"


def event_bytes(text: str) -> int:
    return len(text) + EVENT_OVERHEAD_BYTES


def keep_level(sizes: Iterable[int], budget: int) -> int | None:
    """The most bytes any topic may keep so that all keep at most `budget` together, taking
    only from those that keep the most; None when they fit already."""
    ordered = sorted(sizes, reverse=True)
    rest = sum(ordered)
    if rest <= budget:
        return None
    for cut, size in enumerate(ordered, start=1):
        rest -= size
        level = (budget - rest) // cut
        if level >= (ordered[cut] if cut < len(ordered) else 0):
            return level
    return 0  # pragma: no cover - the last round always returns


def message_end(texts: list[str], start: int, most: int = MESSAGE_BYTES) -> int:
    """Where a message of `texts` from `start` ends: at most `most` characters (one text
    more when the first alone is bigger)."""
    end, size = start, 0
    while end < len(texts) and (end == start or size + len(texts[end]) <= most):
        size += len(texts[end])
        end += 1
    return end


def plain(load: Loader) -> FeedLoader:
    async def feed(after: str | None) -> Feed:
        return Feed(await load(), [])

    return feed


@dataclass
class Topic:
    key: str
    kind: str
    load: FeedLoader
    interval: float
    on_error: Callable[[BaseException], dict[str, Any]]
    on_kept: Callable[[int], None] = lambda change: None
    """Told how many bytes of events the topic keeps more (or fewer)."""
    watchers: int = 0
    version: int = 0
    """Goes up whenever the snapshot changes or events arrive."""
    snapshot_version: int = 0
    latest: str | None = None
    latest_status: int = 200
    compared: str | None = None
    """The latest snapshot without its time: a new one goes out only when this changes."""
    good_at: float | None = None
    """The time ("at") of the latest snapshot read without an error: a page that cannot be
    read now shows what it showed then, and its error says so ("as_of")."""
    keys: list[EventKey] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """The encoded events kept (the latest read, at most MAX_LOG_EVENTS), in order; `keys`
    are theirs."""
    event_bytes: int = 0
    """What `events` cost (event_bytes of each)."""
    dropped: EventKey | None = None
    """The key of the last event read that the topic no longer keeps (None: it keeps every
    event it read)."""
    last_event: str | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Reload once; True when more events are waiting."""
        more = False
        try:
            feed = await self.load(self.last_event)
            snapshot, new, more = feed.snapshot, feed.events, feed.more
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            snapshot, new = self.on_error(exc), []
        snapshot = self.dated(snapshot)
        compared = _unstamped(snapshot)
        async with self.changed:
            # an unchanged snapshot is not sent again, but the latest keeps its new time: a
            # browser that opens the page now sets its clock by it
            self.latest = encode(snapshot)
            if compared != self.compared:
                self.compared = compared
                self.latest_status = status_of(snapshot)
                self.snapshot_version += 1
            if new:
                self.last_event = str(new[-1]["id"])
                texts = [encode(e) for e in new]
                self.keys.extend(event_key(str(e["id"])) for e in new)
                self.events.extend(texts)
                added = sum(event_bytes(t) for t in texts)
                self.event_bytes += added
                if len(self.events) > MAX_LOG_EVENTS:
                    added -= self.drop(len(self.events) - MAX_LOG_EVENTS)
                self.on_kept(added)
            if new or self.snapshot_version != self.version:
                self.version += 1
                self.changed.notify_all()
        return more

    def dated(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The snapshot; an error of a page that was read before with the time of that read
        ("as_of"), which stays the same while the error does."""
        if "error" not in snapshot:
            at = snapshot.get("at")
            if isinstance(at, int | float):
                self.good_at = float(at)
            return snapshot
        if snapshot.get("not_found") or self.good_at is None or "as_of" in snapshot:
            return snapshot
        return {**snapshot, "as_of": self.good_at}

    def drop(self, count: int) -> int:
        """Stop keeping the `count` oldest events; the bytes that frees."""
        if count <= 0:
            return 0
        freed = sum(event_bytes(t) for t in self.events[:count])
        self.dropped = self.keys[count - 1]
        del self.keys[:count], self.events[:count]
        self.event_bytes -= freed
        return freed

    def drop_to(self, most: int) -> int:
        """Drop the oldest events until the rest cost at most `most` bytes; the bytes freed."""
        count, left = 0, self.event_bytes
        while left > most and count < len(self.events):
            left -= event_bytes(self.events[count])
            count += 1
        return self.drop(count)

    def missing(self, sent: EventKey) -> bool:
        """Whether events after `sent` were dropped (a watcher reads them from Redis)."""
        return self.dropped is not None and sent < self.dropped

    def batch_after(self, sent: EventKey) -> tuple[list[str], EventKey]:
        """The kept events after `sent`, one message's worth, and the key of its last."""
        start = bisect.bisect_right(self.keys, sent)
        end = message_end(self.events, start)
        return self.events[start:end], self.keys[end - 1] if end > start else sent

    def has_after(self, sent: EventKey) -> bool:
        return bool(self.keys) and self.keys[-1] > sent

    async def run(self, loads: Counter[str]) -> None:
        while self.watchers > 0:
            loads[self.kind] += 1
            if not await self.refresh():
                await asyncio.sleep(self.interval)


class Hub:
    def __init__(self, on_error: Callable[[BaseException], dict[str, Any]],
                 max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.on_error = on_error
        self.max_event_bytes = max_event_bytes
        self.event_bytes = 0
        """What the events of all topics cost together (at most `max_event_bytes` once a
        refresh has kept its new ones)."""
        self.topics: dict[str, Topic] = {}
        self.dropped_reads = asyncio.Semaphore(MAX_DROPPED_READS)
        self.loads: Counter[str] = Counter()
        """Page reloads by page kind: what the watchers cost, however many they are."""

    def _kept(self, change: int) -> None:
        self.event_bytes += change
        if self.event_bytes <= self.max_event_bytes:
            return
        topics = list(self.topics.values())
        level = keep_level((t.event_bytes for t in topics), self.max_event_bytes)
        if level is not None:
            for topic in topics:
                if topic.event_bytes > level:
                    self.event_bytes -= topic.drop_to(level)

    async def get(self, key: str, kind: str, load: Loader) -> tuple[str, int]:
        """The page's snapshot (a watched page's latest) and its HTTP status."""
        topic = self.topics.get(key)
        if topic is not None and topic.latest is not None:
            return topic.latest, topic.latest_status
        self.loads[kind] += 1
        try:
            snapshot = await load()
        except Exception as exc:
            snapshot = self.on_error(exc)
        return encode(snapshot), status_of(snapshot)

    async def watch(self, key: str, kind: str, load: FeedLoader, interval: float,
                    after: str | None = None) -> AsyncGenerator[Message, None]:
        """Every new snapshot of the page, starting with the current one, and its events
        after the event id `after` (from the first when None), in batches of at most
        MESSAGE_BYTES; the events the topic dropped are read from Redis."""
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(key, kind, load, interval, self.on_error,
                                             self._kept)
        topic.watchers += 1
        if topic.task is None or topic.task.done():
            topic.task = asyncio.create_task(topic.run(self.loads), name=f"console:{key}")
        seen_version = seen_snapshot = 0
        sent = event_key(after) if after else BEFORE_FIRST
        read_dropped = True
        """Whether to read dropped events from Redis now: not again after a failed read
        until the page next changes."""
        try:
            while True:
                async with topic.changed:
                    while topic.version <= seen_version and not (
                            read_dropped if topic.missing(sent) else topic.has_after(sent)):
                        await topic.changed.wait()
                    if topic.version > seen_version:
                        seen_version, read_dropped = topic.version, True
                    snapshot = None
                    if topic.snapshot_version > seen_snapshot:
                        seen_snapshot, snapshot = topic.snapshot_version, topic.latest
                    missing = topic.missing(sent)
                    batch: list[str] = []
                    if not missing:
                        batch, last = topic.batch_after(sent)
                if snapshot is not None:
                    yield Message(snapshot)
                if batch:
                    sent = last
                    yield Message("[" + ",".join(batch) + "]", event_id=event_id(last),
                                  name="events")
                if missing and read_dropped:
                    try:
                        async with self.dropped_reads:
                            texts, keys = await _dropped_events(topic, sent)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        read_dropped = False
                        continue
                    if not texts:
                        sent = max(sent, topic.dropped or sent)  # Redis no longer has them
                        continue
                    start = 0
                    while start < len(texts):
                        end = message_end(texts, start)
                        sent = keys[end - 1]
                        yield Message("[" + ",".join(texts[start:end]) + "]",
                                      event_id=event_id(sent), name="events")
                        start = end
        finally:
            topic.watchers -= 1
            if topic.watchers == 0:
                if self.topics.get(key) is topic:
                    del self.topics[key]
                    self.event_bytes -= topic.event_bytes
                topic.on_kept = lambda change: None
                if topic.task is not None:
                    topic.task.cancel()

    async def aclose(self) -> None:
        tasks = [t.task for t in self.topics.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.topics.clear()
        self.event_bytes = 0


async def _dropped_events(topic: Topic, sent: EventKey) -> tuple[list[str], list[EventKey]]:
    """The events after `sent` that the topic dropped, one read of its loader's worth, as
    Redis still has them."""
    feed = await topic.load(event_id(sent))
    through = topic.dropped or sent
    kept = [e for e in feed.events if event_key(str(e["id"])) <= through]
    return [encode(e) for e in kept], [event_key(str(e["id"])) for e in kept]
