"""``/livez``, ``/readyz`` and ``/metrics`` on one port, served from a thread of their own.

The probes must answer when the event loop cannot: a handler that blocks the loop is exactly
what liveness has to catch, so the server runs in a daemon thread (stdlib ``http.server``)
and only reads the :class:`Health` record the loop keeps up to date.

- ``/livez`` fails (503, with the reason) when the event loop has not ticked for
  ``loop_stall_seconds`` or, once the handler's ``startup`` hook is over, no heartbeat attempt
  has finished for ``heartbeat_stall_seconds`` (lease + twice the Redis timeout). A heartbeat
  that fails because Redis is down still counts as an attempt: an unreachable Redis is a readiness
  problem, and restarting the pod would not fix it. A slow ``startup`` hook (loading a model)
  is the startup probe's to judge, not liveness.
  It also fails when the worker is stuck for good, although its loop and heartbeats are fine,
  for longer than ``stuck_restart_seconds`` (0: never), since only a restart frees it:
  every slot held by stopped runs whose threads have not returned (a sync handler that
  ignores ``ctx.cancelled``; those runs were already reported or handed back), or a sync
  ``ready`` check that has not returned (the same call still running in its thread). Neither
  while a run is in progress or an outcome waits for Redis (``busy``): a restart would lose
  them, and a worker that is not ready claims nothing, so its runs end and liveness fails then.
- ``/readyz`` fails when the last Redis request failed, or the worker is not claiming work
  (starting, the body saying so while the ``startup`` hook runs; draining, drained,
  stopping), or the handler's ``ready`` hook failed its last
  check, or every slot is held by a stopped run whose thread has not returned, or Redis is
  full (maxmemory reached: it refuses claims, so no new task starts). A full Redis is not an
  unreachable one: Redis answers, heartbeats and outcomes go on, and the body says so rather
  than "redis unreachable". Every pod sees a full Redis at once and none is to blame; the
  operator leaves unready pods alone while their worker heartbeats (it replaces only pods
  that are unready *and* silent), so runs in progress keep going, and the pool's status says
  Redis is full.
Both recover by themselves when the cause goes away.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

PROBE_HOST = "0.0.0.0"
"""Where the probe server listens: every interface, as the kubelet probes the pod's IP."""

CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""A client that went away before its reply (a probe or scrape that timed out): no error."""

log = structlog.get_logger("agentpool.worker")


@dataclass
class Health:
    """Written by the event loop, read by the probe thread (plain attribute reads and writes,
    atomic under the GIL)."""

    loop_stall_seconds: float
    heartbeat_stall_seconds: float
    state: str = "starting"
    redis_ok: bool = False
    redis_error: str = "redis not connected yet"
    last_tick: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    check_error: str = ""
    """Why the handler's ``ready`` hook failed its last check ("" when it passed)."""
    slots_error: str = ""
    """Why no slot can free up ("" while one can)."""
    full_error: str = ""
    """Why Redis refuses new work: it is full ("" while it is not, as far as the worker
    knows)."""
    heartbeating: bool = False
    """Heartbeats are due: the worker is past its ``startup`` hook."""
    startup_hook_since: float | None = None
    """Since when (monotonic) the handler's ``startup`` hook has been running; None when it
    is not."""
    stuck_restart_seconds: float = 0.0
    """How long the worker may be stuck for good (see :meth:`restart_due`) before ``/livez``
    fails; 0 never."""
    slots_stuck_since: float | None = None
    """Since when every slot has been held by stopped runs whose threads have not returned."""
    ready_hung_since: float | None = None
    """Since when the ``ready`` check still running in its thread was started."""
    busy: int = 0
    """Runs in progress (their ``after_task`` hook included, abandoned threads not) plus
    outcomes Redis has not recorded yet; 0 when a restart would lose nothing. Not an exact
    count: only 0 matters."""

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def heartbeats_begin(self) -> None:
        self.last_heartbeat = time.monotonic()
        self.heartbeating = True

    def heartbeat_attempted(self) -> None:
        self.last_heartbeat = time.monotonic()

    def slots_stuck(self, reason: str, now: float | None = None) -> None:
        """Every slot is held by a stopped run's thread (`reason`), or no longer ("")."""
        self.slots_error = reason
        if not reason:
            self.slots_stuck_since = None
        elif self.slots_stuck_since is None:
            self.slots_stuck_since = time.monotonic() if now is None else now

    def ready_check_hung(self, since: float | None) -> None:
        """The ``ready`` check started at `since` is still running in its thread, or None."""
        self.ready_hung_since = since

    def redis_up(self) -> None:
        self.redis_ok = True
        self.redis_error = ""

    def redis_down(self, error: BaseException | str) -> None:
        """Not ready; a string is a complete sentence (a refused password), an exception is
        shown as why Redis is unreachable."""
        self.redis_ok = False
        self.redis_error = error if isinstance(error, str) else (
            f"redis unreachable: {type(error).__name__}: {error}"
        )

    def check_failed(self, reason: str) -> None:
        self.check_error = reason

    def redis_full(self, reason: str) -> None:
        """Redis refuses new work for being full (`reason`), or no longer ("")."""
        self.full_error = reason

    def liveness(self, now: float | None = None) -> tuple[bool, str]:
        now = time.monotonic() if now is None else now
        stalled = now - self.last_tick
        if stalled > self.loop_stall_seconds:
            return False, f"event loop blocked for {stalled:.1f}s"
        silent = now - self.last_heartbeat
        if self.heartbeating and silent > self.heartbeat_stall_seconds:
            return False, f"no heartbeat attempt for {silent:.1f}s"
        stuck = self.restart_due(now)
        if stuck:
            return False, stuck
        return True, "ok"

    def restart_due(self, now: float) -> str:
        """Why the worker, its loop and heartbeats fine, is stuck for good and only a restart
        frees it ("" when it is not, or not for longer than ``stuck_restart_seconds``).
        Never while it is ``busy``: a restart would cost a run in progress or an outcome not
        recorded yet."""
        grace = self.stuck_restart_seconds
        if grace <= 0 or self.busy:
            return ""
        if self.slots_stuck_since is not None and now - self.slots_stuck_since > grace:
            return (f"every slot has been held by stopped runs whose threads have not "
                    f"returned for {now - self.slots_stuck_since:.1f}s (a sync handler that "
                    "ignores ctx.cancelled); a restart frees them")
        if self.ready_hung_since is not None and now - self.ready_hung_since > grace:
            return (f"the ready check has not returned for {now - self.ready_hung_since:.1f}s "
                    "and no run is in progress; a restart starts it afresh")
        return ""

    def startup_hook(self, running: bool) -> None:
        self.startup_hook_since = time.monotonic() if running else None

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        since = self.startup_hook_since
        if since is not None:
            now = time.monotonic() if now is None else now
            return False, (f"the startup hook has been running for {now - since:.1f}s; the "
                           "worker connects to Redis once it returns")
        if not self.redis_ok:
            return False, self.redis_error
        if self.state != "running":
            return False, f"worker is {self.state}"
        if self.check_error:
            return False, f"ready check failed: {self.check_error}"
        if self.slots_error:
            return False, self.slots_error
        if self.full_error:
            return False, self.full_error
        return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    server: _ProbeServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            return
        check = {"/livez": self.server.health.liveness,
                 "/readyz": self.server.health.readiness}.get(path)
        if check is None:
            self._send(404, b"not found\n")
            return
        ok, reason = check()
        self._send(200 if ok else 503, f"{reason}\n".encode())

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ProbeServer(ThreadingHTTPServer):
    daemon_threads = True
    health: Health

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Instead of the stdlib's traceback on stderr (not a JSON line): nothing for a client
        that went away, one log line for anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, CLIENT_GONE):
            return
        log.error("probe request failed", client=client_address[0],
                  error=f"{type(exc).__name__}: {exc}")


class ProbeServer:
    """The HTTP endpoint in a daemon thread; ``port`` is the bound port (useful with 0)."""

    def __init__(self, health: Health, port: int, host: str = PROBE_HOST) -> None:
        self._server = _ProbeServer((host, port), _Handler)
        self._server.health = health
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="agentpool-probes", daemon=True,
        )

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
