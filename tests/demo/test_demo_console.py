"""The demo serves the web console on its own Redis and queue while it runs."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from agentpool.cli.demo.console import DemoConsole, start_console
from agentpool.client import SyncClient


def test_demo_console_serves_the_demo_queue_and_stops(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    with SyncClient.from_url(redis_url) as client:
        client.queue(queue_name).submit({"demo": True})
    console = start_console(redis_url, queue_name, tmp_path)
    assert isinstance(console, DemoConsole), console
    try:
        assert console.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(console.url + "api/fleet", timeout=10) as response:
            fleet = json.load(response)
        assert [(p["queue"], p["queued"]) for p in fleet["pools"]] == [(queue_name, 1)]
        assert redis_url not in " ".join(console.process.args)  # type: ignore[arg-type]
    finally:
        console.stop()
    assert console.process.returncode == 0


def test_demo_goes_on_without_a_console_that_cannot_start(tmp_path: Path) -> None:
    reason = start_console("not-a-url", "demo-q", tmp_path)
    assert isinstance(reason, str) and reason
