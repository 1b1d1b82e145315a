"""Fan-out of page snapshots: one refresher per page, however many browsers watch it.

A page is identified by a key (its API path and query). While at least one browser watches
it, its topic reloads it every `interval` seconds and hands the same encoded snapshot to
every watcher; the last watcher to leave stops the reloads. A plain GET of a watched page
is answered from the topic's latest snapshot.

A page may also have an event log (a task's events): each reload reads only the events after
the last one the topic has, in the same Redis round trip as the snapshot, and the topic keeps
them so every watcher gets each event once, in order, from the start or from the event id it
last saw (a reconnecting browser's Last-Event-ID).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Loader = Callable[[], Awaitable[dict[str, Any]]]


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
"""Events a topic keeps (a task's stream keeps about as many)."""


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


def _unstamped(snapshot: dict[str, Any]) -> str:
    """A snapshot without its reading time ("at"): what tells whether the page changed."""
    return encode({k: v for k, v in snapshot.items() if k != "at"})


def event_key(event_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) in its order; ValueError when it is not one."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


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
    watchers: int = 0
    version: int = 0
    """Goes up whenever the snapshot changes or events arrive."""
    snapshot_version: int = 0
    latest: str | None = None
    latest_status: int = 200
    compared: str | None = None
    """The latest snapshot without its time: a new one goes out only when this changes."""
    keys: list[tuple[int, int]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """The encoded events read so far (the last MAX_LOG_EVENTS), in order; `keys` are theirs."""
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
        compared = _unstamped(snapshot)
        async with self.changed:
            if compared != self.compared:
                self.latest, self.compared = encode(snapshot), compared
                self.latest_status = status_of(snapshot)
                self.snapshot_version += 1
            if new:
                self.last_event = str(new[-1]["id"])
                self.keys.extend(event_key(str(e["id"])) for e in new)
                self.events.extend(encode(e) for e in new)
                if len(self.events) > MAX_LOG_EVENTS:
                    del self.keys[:-MAX_LOG_EVENTS], self.events[:-MAX_LOG_EVENTS]
            if new or self.snapshot_version != self.version:
                self.version += 1
                self.changed.notify_all()
        return more

    async def run(self, loads: Counter[str]) -> None:
        while self.watchers > 0:
            loads[self.kind] += 1
            if not await self.refresh():
                await asyncio.sleep(self.interval)


class Hub:
    def __init__(self, on_error: Callable[[BaseException], dict[str, Any]]) -> None:
        self.on_error = on_error
        self.topics: dict[str, Topic] = {}
        self.loads: Counter[str] = Counter()
        """Page reloads by page kind: what the watchers cost, however many they are."""

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
        after the event id `after` (from the first when None), in batches."""
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(key, kind, load, interval, self.on_error)
        topic.watchers += 1
        if topic.task is None or topic.task.done():
            topic.task = asyncio.create_task(topic.run(self.loads), name=f"console:{key}")
        seen_version = seen_snapshot = 0
        sent = event_key(after) if after else (-1, -1)
        try:
            while True:
                async with topic.changed:
                    while topic.version <= seen_version:
                        await topic.changed.wait()
                    seen_version = topic.version
                    snapshot = None
                    if topic.snapshot_version > seen_snapshot:
                        seen_snapshot, snapshot = topic.snapshot_version, topic.latest
                    start = bisect.bisect_right(topic.keys, sent)
                    batch = topic.events[start:]
                    if batch:
                        sent, last = topic.keys[-1], topic.last_event
                if snapshot is not None:
                    yield Message(snapshot)
                if batch:
                    yield Message("[" + ",".join(batch) + "]", event_id=last, name="events")
        finally:
            topic.watchers -= 1
            if topic.watchers == 0:
                self.topics.pop(key, None)
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
