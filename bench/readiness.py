"""Waiting for a worker process started by a bench script to answer ``/readyz``."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def ready(port: int) -> bool:
    """Whether the worker on `port` answers ``/readyz`` with 200 now."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def wait_ready(process: subprocess.Popen[bytes], port: int, poll: float = 0.02) -> None:
    """Return once the worker is ready; raise if its process exits first."""
    while not ready(port):
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}")
        time.sleep(poll)
