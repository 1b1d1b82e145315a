"""The demo's worker processes: start, kill -9, stop; each logs to a file of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agentpool.redis_server import free_port


class WorkerCommandNotFound(RuntimeError):
    pass


def worker_command() -> list[str]:
    """`agentpool-worker` from the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / "agentpool-worker"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("agentpool-worker")
    if found is None:
        raise WorkerCommandNotFound(
            "agentpool-worker not found (run `make setup`, or install the worker package)"
        )
    return [found]


@dataclass
class WorkerProcess:
    pod: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class WorkerFleet:
    """Worker subprocesses, each in a session of its own so a terminal's Ctrl-C reaches only
    the demo, which then stops them in order."""

    command: Sequence[str]
    env: Mapping[str, str]
    log_dir: Path
    workers: dict[str, WorkerProcess] = field(default_factory=dict)

    def start(self, pod: str) -> WorkerProcess:
        port = free_port()
        env = {**os.environ, **self.env, "AGENTPOOL_POD_NAME": pod, "AGENTPOOL_PORT": str(port)}
        log_path = self.log_dir / f"{pod}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(self.command), env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        worker = self.workers[pod] = WorkerProcess(pod, port, process, log_path)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.exit_code is None]

    def kill(self, pod: str) -> None:
        """SIGKILL, as a node failure or the OOM killer would; returns once it is gone."""
        worker = self.workers[pod]
        worker.killed = True
        _kill_group(worker.process)
        worker.process.wait()

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every worker still running (they drain and exit), SIGKILL what outlives
        `grace` seconds, and reap them all."""
        running = self.alive()
        for worker in running:
            _signal(worker.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in running:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(worker.process)
                worker.process.wait()


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's whole process group (its session), children included.

    Only while the worker is not yet reaped: until then its pid, hence its group id, cannot
    have been reused by another process.
    """
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
