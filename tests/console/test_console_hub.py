"""Fan-out and history: what many watchers cost, what the chart keeps."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from console_helpers import eventually

from agentpool.cli.main import main
from agentpool.console.history import History, Point
from agentpool.console.hub import Feed, Hub, Message, event_key, plain


async def test_many_watchers_of_a_page_share_one_reload_per_refresh() -> None:
    hub = Hub(lambda exc: {"error": str(exc)})
    reloads = 0

    async def load() -> dict[str, Any]:
        nonlocal reloads
        reloads += 1
        return {"n": reloads}

    watchers = [hub.watch("/api/x", "x", plain(load), 0.01) for _ in range(50)]
    for _ in range(5):
        seen = [m.text for m in await asyncio.gather(*(anext(w) for w in watchers))]
        assert len(set(seen)) == 1  # every watcher got the same snapshot
    assert reloads <= 6  # five snapshots (one more may be in flight), not 5 x 50
    assert hub.loads["x"] == reloads
    for watcher in watchers:
        await watcher.aclose()
    assert hub.topics == {}


async def test_a_failing_page_shows_its_error_and_recovers() -> None:
    hub = Hub(lambda exc: {"error": str(exc)})
    calls = 0

    async def load() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return {"ok": True}

    watcher = hub.watch("/api/y", "y", plain(load), 0.01)
    assert (await anext(watcher)).text == '{"error":"down"}'
    assert (await anext(watcher)).text == '{"ok":true}'
    await watcher.aclose()


async def test_a_snapshot_goes_out_only_when_more_than_its_time_changed() -> None:
    """Every snapshot carries the time it was read ("at"); a page whose data stays the same
    is not sent again for that alone."""
    hub = Hub(lambda exc: {"error": str(exc)})
    value = 1

    async def load() -> dict[str, Any]:
        return {"at": time.time(), "value": value}

    watcher = hub.watch("/api/z", "z", plain(load), 0.001)
    assert json.loads((await anext(watcher)).text)["value"] == 1
    following = asyncio.ensure_future(anext(watcher))
    await eventually(lambda: hub.loads["z"] >= 20)  # reloads go on, each with a new time
    assert not following.done()
    value = 2
    assert json.loads((await asyncio.wait_for(following, 10)).text)["value"] == 2
    await watcher.aclose()


class EventSource:
    """A task page's data: its events grow while the test runs; every read is counted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.reads = 0
        self.ms = 1_700_000_000_000

    def emit(self, n: int) -> None:
        for _ in range(n):
            self.ms += 1
            self.events.append({"id": f"{self.ms}-0", "kind": "step", "n": len(self.events)})

    async def load(self, after: str | None) -> Feed:
        self.reads += 1
        new = [e for e in self.events if after is None or event_key(e["id"]) > event_key(after)]
        return Feed({"events": len(self.events)}, new[:5], more=len(new) > 5)


async def collect(watcher: AsyncGenerator[Message, None], until: int,
                  got: list[dict[str, Any]]) -> str | None:
    """Events from a watcher until `until` were seen; returns the last batch's event id."""
    last = None
    while len(got) < until:
        message = await anext(watcher)
        if message.name == "events":
            batch = json.loads(message.text)
            assert message.event_id == batch[-1]["id"]
            got.extend(batch)
            last = message.event_id
    return last


async def test_watchers_of_a_task_share_each_read_and_get_every_event_once_in_order() -> None:
    hub = Hub(lambda exc: {"error": str(exc)})
    source = EventSource()
    source.emit(3)
    early = [hub.watch("/api/t", "task", source.load, 0.01) for _ in range(20)]
    got: list[list[dict[str, Any]]] = [[] for _ in early]
    await asyncio.gather(*(collect(w, 3, g) for w, g in zip(early, got, strict=True)))
    source.emit(12)  # more than one read's worth: read again at once
    late = hub.watch("/api/t", "task", source.load, 0.01)
    late_got: list[dict[str, Any]] = []
    await asyncio.gather(*(collect(w, 15, g) for w, g in zip(early, got, strict=True)),
                         collect(late, 15, late_got))
    expected = list(range(15))
    assert all([e["n"] for e in g] == expected for g in got)
    assert [e["n"] for e in late_got] == expected  # a late watcher starts from the first
    reads = source.reads
    await asyncio.sleep(0.1)  # ~10 refreshes, whatever the number of watchers
    assert source.reads - reads <= 15
    for watcher in [*early, late]:
        await watcher.aclose()
    assert hub.topics == {}


async def test_a_reconnecting_watcher_resumes_after_its_last_event() -> None:
    hub = Hub(lambda exc: {"error": str(exc)})
    source = EventSource()
    keeper = hub.watch("/api/t", "task", source.load, 0.01)  # keeps the topic alive
    source.emit(4)
    first = hub.watch("/api/t", "task", source.load, 0.01)
    before: list[dict[str, Any]] = []
    last = await collect(first, 4, before)
    await first.aclose()  # the browser lost its connection
    source.emit(3)
    await collect(keeper, 7, [])
    again = hub.watch("/api/t", "task", source.load, 0.01, after=last)
    after: list[dict[str, Any]] = []
    await collect(again, 3, after)
    assert [e["n"] for e in before + after] == list(range(7))
    source.emit(1)
    await collect(again, 4, after)
    assert [e["n"] for e in after] == [4, 5, 6, 7]
    await again.aclose()
    await keeper.aclose()


def test_history_keeps_one_point_per_step_and_the_latest_sample() -> None:
    history = History(span=60, step=10)
    for second in range(0, 125):
        history.add(Point(1000.0 + second, second, 0, 1, 1))
    points = history.points()
    assert points[-1].queued == 124
    assert all(b.at - a.at >= 10 for a, b in itertools.pairwise(points[:-1]))
    assert points[0].at >= 1124 - 60
    assert len(points) <= 8


@pytest.mark.parametrize(("argv", "message"), [
    (["--allow-writes"], "needs a token of at least 16 characters"),
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["-q", "bad name"], "invalid queue name"),
])
def test_console_refuses_bad_options_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTPOOL_CONSOLE_TOKEN", raising=False)
    assert main(["console", "--redis-url", "redis://127.0.0.1:1/0", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
