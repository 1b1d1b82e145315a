"""`agentpool demo` end to end: real redis-server, real agentpool-worker processes."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest

pytest.importorskip("agentpool_worker.main", reason="needs the agentpool-worker entrypoint")

DEMO = [sys.executable, "-c", "import sys; from agentpool.cli.main import main; sys.exit(main())",
        "demo"]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (tells a pid apart from a later reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _children(parent: int) -> dict[int, str]:
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent:
            found[int(entry.name)] = fields[19]
    return found


def _ignore_hangup() -> None:
    """What `nohup` does before it starts a command."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class DemoProcess:
    """The demo as a child process: its output read as it comes, and every process it starts
    recorded (pid and start time) while it runs."""

    def __init__(self, args: list[str], tmpdir: Path, *, nohup: bool = False) -> None:
        env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "100"}
        self.process = subprocess.Popen(
            DEMO + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=_ignore_hangup if nohup else None,
        )
        self.children: dict[int, str] = {}
        self.streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._lines: queue.Queue[str] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True),
        ]
        self._watcher = threading.Thread(target=self._watch_children, daemon=True)
        for thread in [*self._threads, self._watcher]:
            thread.start()

    def _read(self, stream: IO[str], name: str) -> None:
        for line in stream:
            self.streams[name].append(line)
            self._lines.put(line)

    def _watch_children(self) -> None:
        while self.process.poll() is None:
            self.children.update(_children(self.process.pid))
            time.sleep(0.02)

    def wait_for_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None and self._lines.empty():
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in the demo's output:\n{self.output()}")

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        for thread in [*self._threads, self._watcher]:
            thread.join(timeout=10)
        return code

    def output(self, name: str | None = None) -> str:
        names = [name] if name else ["stdout", "stderr"]
        return "".join(line for n in names for line in self.streams[n])

    def survivors(self) -> list[int]:
        """Processes the demo started that still exist (same pid and start time)."""
        return [pid for pid, started in self.children.items() if _start_time(pid) == started]


@pytest.fixture
def demo_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


@pytest.fixture
def spawn() -> Iterator[Callable[..., DemoProcess]]:
    started: list[DemoProcess] = []

    def start(args: list[str], tmpdir: Path, *, nohup: bool = False) -> DemoProcess:
        demo = DemoProcess(args, tmpdir, nohup=nohup)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.process.kill()
            demo.process.wait()


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


Spawn = Callable[..., DemoProcess]


def test_demo_finishes_every_task_and_leaves_nothing(demo_tmp: Path, spawn: Spawn) -> None:
    demo = spawn(["--tasks", "60", "--workers", "2", "--mean-seconds", "0.05", "--no-live",
                  "-o", "json"], demo_tmp)
    code = demo.finish(timeout=120)
    assert code == 0, demo.output()
    summary = json.loads(demo.output("stdout"))
    assert summary["submitted"] == 60
    assert summary["succeeded"] == 60
    assert summary["lost"] == 0
    assert summary["pending"] == 0
    assert summary["dead_lettered"] == 0
    assert summary["ok"] is True
    assert summary["requeued_after_kill"] >= 1
    assert summary["requeued_then_succeeded"] == summary["requeued_after_kill"]
    assert summary["killed_worker"] in summary["workers"]
    assert len(summary["workers"]) == 3
    assert summary["wait_p50_seconds"] <= summary["wait_p95_seconds"]
    assert summary["throughput_per_second"] > 0
    assert "half-way: kill -9" in demo.output("stderr")
    events = demo.output("stderr")
    # where its console is, or why it has none (a console slower than 15 s to start, on a
    # loaded machine: the demo goes on without it)
    assert re.search(r"\] (console: http://127\.0\.0\.1:\d+/|no console: )", events), events
    if "] console: " in events and "will resume from a checkpoint" in events:
        # its task page, to watch attempt 2 go on from the checkpoint
        assert re.search(r"watch it resume: http://127\.0\.0\.1:\d+/queues/[^/]+/tasks/"
                         r"[0-9a-f]{32}\n", events), events
    assert set(summary["pids"]) <= set(demo.children)
    assert demo.survivors() == []
    assert not _port_open(summary["redis_url"])
    assert list(demo_tmp.iterdir()) == []


def test_sigint_half_way_stops_everything(demo_tmp: Path, spawn: Spawn) -> None:
    demo = spawn(["--tasks", "400", "--workers", "2", "--concurrency", "4",
                  "--mean-seconds", "0.1", "--no-live"], demo_tmp)
    url = demo.wait_for_line("started redis-server on ").rsplit(" ", 1)[1].strip()
    demo.wait_for_line("to replace")
    time.sleep(0.2)
    assert len(demo.children) >= 4
    demo.process.send_signal(signal.SIGINT)
    assert demo.finish(timeout=60) == 128 + signal.SIGINT
    assert "interrupted by SIGINT" in demo.output("stdout")
    assert demo.survivors() == []
    assert not _port_open(url)
    assert list(demo_tmp.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stopping_signal_while_starting_stops_everything(
    demo_tmp: Path, spawn: Spawn, signum: signal.Signals,
) -> None:
    """SIGHUP: the demo's terminal closed; what it started runs in sessions of its own."""
    demo = spawn(["--tasks", "100", "--workers", "3", "--no-live"], demo_tmp)
    demo.wait_for_line("started demo-worker-2")
    demo.process.send_signal(signum)
    assert demo.finish(timeout=60) == 128 + signum
    assert demo.survivors() == []
    assert list(demo_tmp.iterdir()) == []


def test_a_demo_started_with_nohup_goes_on_when_its_terminal_closes(
    demo_tmp: Path, spawn: Spawn,
) -> None:
    demo = spawn(["--tasks", "20", "--workers", "2", "--mean-seconds", "0.05", "--no-live"],
                 demo_tmp, nohup=True)
    demo.wait_for_line("started demo-worker-1")
    demo.process.send_signal(signal.SIGHUP)
    assert demo.finish(timeout=120) == 0, demo.output()
    assert demo.survivors() == []
