"""Fan-out and history: what many watchers cost, what the chart keeps."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from agentpool.cli.main import main
from agentpool.console.history import History, Point
from agentpool.console.hub import Hub


async def test_many_watchers_of_a_page_share_one_reload_per_refresh() -> None:
    hub = Hub(lambda exc: {"error": str(exc)})
    reloads = 0

    async def load() -> dict[str, Any]:
        nonlocal reloads
        reloads += 1
        return {"n": reloads}

    watchers = [hub.watch("/api/x", "x", load, 0.01) for _ in range(50)]
    for _ in range(5):
        seen = await asyncio.gather(*(anext(w) for w in watchers))
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

    watcher = hub.watch("/api/y", "y", load, 0.01)
    assert await anext(watcher) == '{"error":"down"}'
    assert await anext(watcher) == '{"ok":true}'
    await watcher.aclose()


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
