"""The demo's web console: `agentpool console` on the demo's Redis and queue, up while the demo
runs, so the kill -9 and the requeue can be watched in a browser."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agentpool.redis_server import free_port

PREFERRED_PORT = 8080
START_SECONDS = 15.0


@dataclass
class DemoConsole:
    url: str
    process: subprocess.Popen[str]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _port() -> int:
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", PREFERRED_PORT))
        return PREFERRED_PORT
    return free_port()


def start_console(redis_url: str, queue: str, workdir: Path) -> DemoConsole | str:
    """The running console, or why it could not start (the demo goes on without it)."""
    command = [sys.executable, "-c", "from agentpool.cli.main import main; raise "
               "SystemExit(main())", "console", "--redis-only", "--queue", queue,
               "--port", str(_port())]
    env = {**os.environ, "AGENTPOOL_REDIS_URL": redis_url}  # not in argv: `ps` shows argv
    log = (workdir / "console.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log,
                               stdin=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("agentpool console: http"):
        DemoConsole("", process).stop()
        log.close()
        reason = (workdir / "console.log").read_text().strip().splitlines()
        return reason[-1] if reason else "it did not start"
    return DemoConsole(line.split()[2], process)
