"""`agentpool demo` end to end: real redis-server, real agentpool-worker processes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
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


def _take_terminal() -> None:
    """Make stdin, a pty, the controlling terminal of the new session, as a terminal
    emulator does for its shell: closing the pty then hangs up the session (SIGHUP)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class DemoProcess:
    """The demo as a child process: its output read as it comes, and every process it starts
    recorded (pid and start time) while it runs.

    A `stdout` other than a pipe (a pty) is the caller's to read; with `controlling`, it is
    also stdin and the controlling terminal of a session of the demo's own. With
    `close_after`, the pipe of `closing` (stdout or stderr) is closed after that many lines,
    as `| head -N` does.
    """

    def __init__(self, args: list[str], tmpdir: Path, *, nohup: bool = False,
                 stdout: int = subprocess.PIPE, controlling: bool = False,
                 close_after: int | None = None, closing: str = "stdout") -> None:
        env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "100"}
        self.process = subprocess.Popen(
            DEMO + args, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
            stdin=stdout if controlling else None, start_new_session=controlling,
            preexec_fn=_ignore_hangup if nohup else _take_terminal if controlling else None,
        )
        self.close_after = close_after
        self.closing = closing
        self.children: dict[int, str] = {}
        self.streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._lines: queue.Queue[str] = queue.Queue()
        pipes = [(self.process.stdout, "stdout"), (self.process.stderr, "stderr")]
        self._threads = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in pipes if stream is not None]
        self._watcher = threading.Thread(target=self._watch_children, daemon=True)
        for thread in [*self._threads, self._watcher]:
            thread.start()

    def _read(self, stream: IO[str], name: str) -> None:
        for line in stream:
            self.streams[name].append(line)
            self._lines.put(line)
            if name == self.closing and len(self.streams[name]) == self.close_after:
                stream.close()
                return

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

    def start(args: list[str], tmpdir: Path, **options: Any) -> DemoProcess:
        demo = DemoProcess(args, tmpdir, **options)
        started.append(demo)
        return demo

    yield start
    for demo in started:  # a test that failed half-way: stop the demo as Ctrl-C does
        if demo.process.poll() is None:
            demo.process.send_signal(signal.SIGINT)
            try:
                demo.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                demo.process.kill()
                demo.process.wait()
        for pid in demo.survivors():  # its workers and Redis run in sessions of their own
            os.kill(pid, signal.SIGKILL)


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


def test_a_reader_that_leaves_the_pipe_ends_the_demo_with_141_quietly(
    demo_tmp: Path, spawn: Spawn,
) -> None:
    """`agentpool demo | head -3`: no word on stderr (Redis is not to blame), 141 as for
    SIGPIPE, and nothing left behind."""
    demo = spawn(["--tasks", "200", "--workers", "2", "--mean-seconds", "0.1", "--no-console"],
                 demo_tmp, close_after=3)
    assert demo.finish(timeout=60) == 141, demo.output()
    assert len(demo.streams["stdout"]) == 3
    assert demo.output("stderr") == ""
    assert demo.survivors() == []
    assert list(demo_tmp.iterdir()) == []


def test_a_reader_of_progress_that_leaves_does_not_end_a_json_demo(
    demo_tmp: Path, spawn: Spawn,
) -> None:
    """`agentpool demo -o json 2> >(head -1)`: progress goes quiet, the summary still comes."""
    demo = spawn(["--tasks", "30", "--workers", "2", "--mean-seconds", "0.3", "--no-console",
                  "--no-live", "-o", "json"], demo_tmp, close_after=1, closing="stderr")
    assert demo.finish(timeout=120) == 0, demo.output()
    assert len(demo.streams["stderr"]) == 1
    summary = json.loads(demo.output("stdout"))
    assert (summary["submitted"], summary["ok"]) == (30, True)
    assert demo.survivors() == []
    assert list(demo_tmp.iterdir()) == []


def test_a_json_demo_whose_summary_reader_left_ends_with_141(
    demo_tmp: Path, spawn: Spawn,
) -> None:
    """`agentpool demo -o json | true`: the summary cannot be written; 141, nothing left."""
    read, write = os.pipe()
    os.close(read)
    try:
        demo = spawn(["--tasks", "20", "--workers", "2", "--mean-seconds", "0.05",
                      "--no-console", "--no-live", "-o", "json"], demo_tmp, stdout=write)
    finally:
        os.close(write)
    assert demo.finish(timeout=120) == 141, demo.output()
    assert "half-way: kill -9" in demo.output("stderr")
    assert "failed" not in demo.output("stderr")
    assert demo.survivors() == []
    assert list(demo_tmp.iterdir()) == []


class Terminal:
    """A real pty, read as a terminal emulator reads it until it closes its end."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.text = ""
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    return

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal:\n{self.text}"
            time.sleep(0.05)

    def close(self) -> None:
        """The window closed: the pty's master end goes, the demo's end hangs up."""
        self._closing.set()
        self._reader.join(timeout=10)
        os.close(self.master)


@pytest.mark.parametrize("controlling", [True, False], ids=["session", "output-only"])
def test_a_terminal_that_hangs_up_ends_the_demo_with_129_quietly(
    demo_tmp: Path, spawn: Spawn, controlling: bool,
) -> None:
    """The demo's terminal closed: as the controlling terminal of its session (SIGHUP, then
    writes fail with EIO) or as its output only (EIO alone). Either way the terminal's
    error is not Redis's, the demo ends as a hang-up does (129), and nothing is left."""
    terminal = Terminal()
    demo = spawn(["--tasks", "400", "--workers", "2", "--mean-seconds", "0.2",
                  "--no-console"], demo_tmp, stdout=terminal.slave, controlling=controlling)
    os.close(terminal.slave)
    terminal.wait_for("submitted 400 tasks")
    terminal.close()
    assert demo.finish(timeout=60) == 128 + signal.SIGHUP, demo.output()
    assert demo.output("stderr") == ""
    assert demo.survivors() == []
    assert list(demo_tmp.iterdir()) == []


def run_printed(line: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command line the demo printed, run as a shell would (its `# ...` a comment)."""
    argv = shlex.split(line, comments=True)
    assert argv[0] == "agentpool", line
    return subprocess.run([*DEMO[:-1], *argv[1:]], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_keep_serves_until_ctrl_c_and_every_printed_command_works(
    demo_tmp: Path, spawn: Spawn,
) -> None:
    demo = spawn(["--tasks", "30", "--workers", "2", "--mean-seconds", "0.2", "--no-live",
                  "--keep"], demo_tmp)
    url = demo.wait_for_line("started redis-server on ").rsplit(" ", 1)[1].strip()
    kept = demo.wait_for_line("The demo keeps running")
    lines = []
    while not lines or "agentpool submit " not in lines[-1]:
        lines.append(demo.wait_for_line("  agentpool ").strip())
    console = demo.wait_for_line("  console: ").split()[-1] if "console" in kept else None
    assert "Nothing lost" in demo.output("stdout")
    assert [shlex.split(line, comments=True)[1] for line in lines] == [
        "status", "workers", "tasks", "dead", "get", "submit"]
    for line in lines:
        assert f"--redis-url {url} --queue demo" in line, line
        done = run_printed(line)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        shown = done.stdout
        argv = shlex.split(line, comments=True)
        if argv[1] == "status":
            assert re.search(r"^demo +demo ", shown, re.MULTILINE), shown
        elif argv[1] == "workers":
            assert "Workers of queue demo: 2" in shown, shown
        elif argv[1] == "get":
            assert "succeeded" in shown and argv[-1] in shown, shown
        elif argv[1] == "submit":
            assert re.search(r"[0-9a-f]{32} +succeeded", shown), shown
        elif argv[1] == "tasks":  # every task finished: it lists none, as its note says
            assert "tasks not finished yet" in line and "submit below" in line, line
            assert "Running in demo: 0" in shown and not re.search(r"[0-9a-f]{32}", shown), shown
    if console is not None:
        with urllib.request.urlopen(console + "api/fleet", timeout=10) as response:
            fleet = json.load(response)
        assert [pool["queue"] for pool in fleet["pools"]] == ["demo"]
    assert demo.process.poll() is None
    demo.process.send_signal(signal.SIGINT)
    assert demo.finish(timeout=60) == 0, demo.output()
    assert "stopped: all demo processes stopped" in demo.output("stdout")
    assert demo.survivors() == []
    assert not _port_open(url)
    assert list(demo_tmp.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_kept_demo_stopped_by_sigterm_or_sighup_exits_as_a_run_would(
    demo_tmp: Path, spawn: Spawn, signum: signal.Signals,
) -> None:
    """Ctrl-C is how a kept demo ends (0, as above); another stopping signal interrupts it."""
    demo = spawn(["--tasks", "10", "--workers", "2", "--mean-seconds", "0.05", "--no-live",
                  "--no-console", "--keep"], demo_tmp)
    url = demo.wait_for_line("started redis-server on ").rsplit(" ", 1)[1].strip()
    demo.wait_for_line("  agentpool submit ")
    demo.process.send_signal(signum)
    assert demo.finish(timeout=60) == 128 + signum, demo.output()
    stdout = demo.output("stdout")
    assert "Nothing lost" in stdout
    assert f"interrupted by {signum.name}: all demo processes stopped" in stdout
    assert demo.survivors() == []
    assert not _port_open(url)
    assert list(demo_tmp.iterdir()) == []
