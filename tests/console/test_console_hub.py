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
from agentpool.console.hub import (
    EVENT_OVERHEAD_BYTES,
    MESSAGE_BYTES,
    Feed,
    Hub,
    Message,
    event_key,
    keep_level,
    plain,
)


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


async def test_an_error_says_as_of_when_the_page_was_last_read_and_the_latest_is_current(
) -> None:
    """A page that cannot be read keeps what it showed: its error carries the time of the
    last read that worked ("as_of", the same while the error lasts). An unchanged snapshot
    is not sent, but a new browser gets it with its latest time (its clock is set by it)."""
    hub = Hub(lambda exc: {"error": str(exc)})
    reads: list[float] = []
    failing = False

    async def load() -> dict[str, Any]:
        if failing:
            raise ConnectionError("down")
        reads.append(time.time())
        return {"at": reads[-1], "value": 1}

    watcher = hub.watch("/api/a", "a", plain(load), 0.001)
    first = json.loads((await anext(watcher)).text)
    await eventually(lambda: len(reads) >= 5)
    text, status = await hub.get("/api/a", "a", load)
    assert status == 200 and json.loads(text)["at"] > first["at"]
    failing = True
    failed = json.loads((await anext(watcher)).text)
    assert failed == {"error": "down", "as_of": reads[-1]}
    following = asyncio.ensure_future(anext(watcher))
    loads = hub.loads["a"]
    await eventually(lambda: hub.loads["a"] >= loads + 5)
    assert not following.done()  # the same error, as of the same time: nothing new to send
    failing = False
    assert json.loads((await asyncio.wait_for(following, 10)).text)["value"] == 1
    await watcher.aclose()


class EventSource:
    """A task page's data: its events grow while the test runs; every read is counted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.reads = 0
        self.ms = 1_700_000_000_000

    def emit(self, n: int, pad: int = 0) -> None:
        for _ in range(n):
            self.ms += 1
            self.events.append({"id": f"{self.ms}-0", "kind": "step", "n": len(self.events),
                                **({"pad": "x" * pad} if pad else {})})

    async def load(self, after: str | None) -> Feed:
        self.reads += 1
        new = [e for e in self.events if after is None or event_key(e["id"]) > event_key(after)]
        return Feed({"events": len(self.events)}, new[:5], more=len(new) > 5)


async def collect(watcher: AsyncGenerator[Message, None], until: int,
                  got: list[dict[str, Any]], sizes: list[int] | None = None) -> str | None:
    """Events from a watcher until `until` were seen; returns the last batch's event id.
    `sizes`: gets the length of each batch's message."""
    last = None
    while len(got) < until:
        message = await anext(watcher)
        if message.name == "events":
            if sizes is not None:
                sizes.append(len(message.text))
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


async def test_topics_keep_at_most_their_budget_of_events_taken_from_the_largest() -> None:
    """A chatty task and a quiet one: the chatty one drops its oldest events so that both keep
    at most the budget together, the quiet one keeps all of its; a page opened later still
    gets every event of each, in order, the dropped ones read again from Redis."""
    budget = 40_000
    hub = Hub(lambda exc: {"error": str(exc)}, max_event_bytes=budget)
    chatty, quiet = EventSource(), EventSource()
    chatty.emit(100, pad=1000)
    quiet.emit(10, pad=10)
    watchers = {"chatty": hub.watch("/api/c", "task", chatty.load, 0.01),
                "quiet": hub.watch("/api/q", "task", quiet.load, 0.01)}
    await asyncio.wait_for(asyncio.gather(collect(watchers["chatty"], 100, []),
                                          collect(watchers["quiet"], 10, [])), 10)
    topics = hub.topics
    assert hub.event_bytes == sum(t.event_bytes for t in topics.values()) <= budget
    assert topics["/api/c"].dropped is not None and topics["/api/c"].event_bytes > budget / 2
    assert topics["/api/q"].dropped is None and len(topics["/api/q"].events) == 10
    reads = chatty.reads
    late: list[dict[str, Any]] = []
    opened_later = hub.watch("/api/c", "task", chatty.load, 0.01)
    await asyncio.wait_for(collect(opened_later, 100, late), 10)
    await opened_later.aclose()
    assert [e["n"] for e in late] == list(range(100))
    assert chatty.reads > reads  # what was dropped came from the loader again
    chatty.emit(50, pad=1000)
    await asyncio.wait_for(collect(watchers["chatty"], 50, []), 10)
    assert hub.event_bytes <= budget
    for watcher in watchers.values():
        await watcher.aclose()
    assert hub.topics == {} and hub.event_bytes == 0


def test_the_level_topics_are_cut_to_takes_only_from_the_largest() -> None:
    assert keep_level([100, 50, 10], 200) is None
    assert keep_level([100, 50, 10], 120) == 60  # 60 + 50 + 10
    assert keep_level([100, 50, 10], 100) == 45  # 45 + 45 + 10
    assert keep_level([100, 50, 10], 5) == 1


async def test_a_new_watcher_of_a_long_log_gets_it_in_messages_of_bounded_size() -> None:
    """Not the whole log in one message (which the stream copies twice more on its way)."""
    hub = Hub(lambda exc: {"error": str(exc)})
    source = EventSource()
    source.emit(200, pad=10_000)
    keeper = hub.watch("/api/t", "task", source.load, 0.01)
    await collect(keeper, 200, [])
    sizes: list[int] = []
    got: list[dict[str, Any]] = []
    new = hub.watch("/api/t", "task", source.load, 0.01)
    await asyncio.wait_for(collect(new, 200, got, sizes), 10)
    await new.aclose()
    assert [e["n"] for e in got] == list(range(200))
    assert len(sizes) >= 200 * 10_000 // MESSAGE_BYTES
    assert max(sizes) <= MESSAGE_BYTES + 200
    assert hub.event_bytes == sum(len(json.dumps(e, separators=(",", ":"))) + EVENT_OVERHEAD_BYTES
                                  for e in source.events)
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
