"""Fan-out of page snapshots: one refresher per page, however many browsers watch it.

A page is identified by a key (its API path and query). While at least one browser watches
it, its topic reloads it every `interval` seconds and hands the same encoded snapshot to
every watcher; the last watcher to leave stops the reloads. A plain GET of a watched page
is answered from the topic's latest snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Loader = Callable[[], Awaitable[dict[str, Any]]]


def encode(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass
class Topic:
    key: str
    kind: str
    load: Loader
    interval: float
    on_error: Callable[[BaseException], dict[str, Any]]
    watchers: int = 0
    version: int = 0
    latest: str | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        try:
            snapshot = await self.load()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            snapshot = self.on_error(exc)
        text = encode(snapshot)
        async with self.changed:
            if text != self.latest:
                self.latest = text
                self.version += 1
                self.changed.notify_all()

    async def run(self, loads: Counter[str]) -> None:
        while self.watchers > 0:
            loads[self.kind] += 1
            await self.refresh()
            await asyncio.sleep(self.interval)


class Hub:
    def __init__(self, on_error: Callable[[BaseException], dict[str, Any]]) -> None:
        self.on_error = on_error
        self.topics: dict[str, Topic] = {}
        self.loads: Counter[str] = Counter()
        """Page reloads by page kind: what the watchers cost, however many they are."""

    async def get(self, key: str, kind: str, load: Loader) -> str:
        topic = self.topics.get(key)
        if topic is not None and topic.latest is not None:
            return topic.latest
        self.loads[kind] += 1
        try:
            return encode(await load())
        except Exception as exc:
            return encode(self.on_error(exc))

    async def watch(self, key: str, kind: str, load: Loader,
                    interval: float) -> AsyncGenerator[str, None]:
        """Every new snapshot of the page, starting with the current one."""
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(key, kind, load, interval, self.on_error)
        topic.watchers += 1
        if topic.task is None or topic.task.done():
            topic.task = asyncio.create_task(topic.run(self.loads), name=f"console:{key}")
        seen = 0
        try:
            while True:
                async with topic.changed:
                    while topic.version <= seen:
                        await topic.changed.wait()
                    seen, text = topic.version, topic.latest
                assert text is not None
                yield text
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
