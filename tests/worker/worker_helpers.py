"""Helpers for the worker tests: poll with deadlines, worker subprocesses, in-process workers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from agentpool.protocol import TaskInfo, TaskQueue
from agentpool.redis_server import SENTINEL_SERVICE, SentinelGroup, sentinel_admin
from agentpool_worker.settings import WorkerSettings
from agentpool_worker.worker import Worker

HERE = Path(__file__).resolve().parent
HANDLERS = "sample_handlers"


async def eventually(
    check: Callable[[], Any | Awaitable[Any]], within: float = 10.0, what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def task_in(queue: TaskQueue, task_id: str, *states: str) -> TaskInfo | None:
    info = await queue.get(task_id)
    return info if info is not None and info.state in states else None


async def retry_wait(queue: TaskQueue, task_id: str) -> float:
    """Once the task's first run failed and its retry waits: seconds from that run's start to
    when the retry is due (at least the delay it was given)."""
    await eventually(lambda: task_in(queue, task_id, "delayed"), 10, "the retry to wait")
    started, due = await queue.redis.hmget(queue.task_key(task_id), ["started", "due"])
    return (int(due) - int(started)) / 1000


def settings(redis_url: str, queue: str, handler: str = f"{HANDLERS}:pid",
             **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "queue": queue, "handler": handler, "pod_name": "pod-local",
        "port": 0, "lease_seconds": 1.5, "redis_timeout_seconds": 1.0, "poll_seconds": 0.5,
        "retry_backoff_base_seconds": 0.05, "retry_backoff_cap_seconds": 0.2,
        "drain_seconds": 2.0,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@contextlib.asynccontextmanager
async def running(worker_settings: WorkerSettings) -> AsyncIterator[Worker]:
    """An in-process Worker, started and registered; stopped (drained) on exit."""
    worker = Worker(worker_settings)
    run = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.wait_started())
    done, _ = await asyncio.wait([run, started], timeout=10,
                                 return_when=asyncio.FIRST_COMPLETED)
    if run in done:
        run.result()
    assert started in done, "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        try:
            async with asyncio.timeout(worker_settings.drain_seconds + 10):
                await run
        finally:
            if not run.done():
                run.cancel()


def worker_env(redis_url: str, queue: str, handler: str = f"{HANDLERS}:pid",
               **values: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    base: dict[str, Any] = {
        "redis_url": redis_url, "queue": queue, "handler": handler, "pod_name": "pod-sub",
        "port": 0, "lease_seconds": 1.5, "redis_timeout_seconds": 1.0, "poll_seconds": 0.5,
        "log_level": "info",
    }
    base.update(values)
    env.update({f"AGENTPOOL_{k.upper()}": str(v) for k, v in base.items()})
    return env


class WorkerProcess:
    """``python -m agentpool_worker.main`` with its stderr in a file."""

    def __init__(self, env: dict[str, str], log_path: Path,
                 prefix: list[str] | None = None, *, command: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        """`command` runs the worker another way than ``python -m`` (its console script)."""
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [*(prefix or []), *(command or [sys.executable, "-m", "agentpool_worker.main"])],
            env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def exit_code(self, within: float) -> int:
        await eventually(lambda: self.proc.poll() is not None, within,
                         "the worker process to exit")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def worker_processes(tmp_path: Path) -> Any:
    """Start worker subprocesses with ``start(env)`` (``prefix``: a command that runs the
    worker, such as setpriv); all are killed at the end."""
    procs: list[WorkerProcess] = []

    def start(env: dict[str, str], prefix: list[str] | None = None) -> WorkerProcess:
        proc = WorkerProcess(env, tmp_path / f"worker-{len(procs)}.log", prefix)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:  # not listening (yet), or no answer
        return 0, str(err)


async def probe(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, port, path)


STALL_PROOF_DOWN_AFTER_MS = 3000
"""Sentinel's down-after for the failover tests: long enough that a loaded machine stalling a
server for a second does not fail it over on its own in the middle of a test (the test's
writes would go to a primary about to be overwritten), short enough for quick kill -9 tests."""


def fail_over(group: SentinelGroup, *, kill: bool, restore: bool = False) -> tuple[int, int]:
    """Fail the primary over, by kill -9 or by SENTINEL FAILOVER: (old port, new port).

    After a kill, `restore` starts the old server again as a replica. After SENTINEL FAILOVER
    it returns once the old primary is demoted: the tests follow the new primary, while the
    writes the old one takes until then (lost, docs/redis.md) are the failover soak's to count.
    """
    group.wait_healthy()
    old = group.primary_port()
    assert old is not None
    if kill:
        group.server_on(old).kill()
    else:
        with sentinel_admin(group.sentinel_ports[0]) as sentinel:
            sentinel.sentinel_failover(SENTINEL_SERVICE)
    deadline = time.monotonic() + 30
    while (new := group.primary_port()) in (None, old):
        assert time.monotonic() < deadline, "the sentinels promoted no replica within 30 s"
        time.sleep(0.05)
    assert new is not None
    if not kill:
        group.wait_demoted(old)
    elif restore:
        group.restore(old, primary=new)
    return old, new
