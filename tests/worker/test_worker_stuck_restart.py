"""A worker stuck for good fails /livez after AGENTPOOL_STUCK_RESTART_SECONDS, so that the
kubelet restarts it: every slot held by stopped runs whose threads never return, or a sync
ready check that never returns while no run is in progress. Never while a run is in
progress."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sample_handlers
import stuck_hooks
from worker_helpers import (
    HANDLERS,
    eventually,
    probe,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool_worker import worker as worker_module
from agentpool_worker.probes import Health
from agentpool_worker.settings import ConfigError, load_settings

GRACE = 0.5
"""AGENTPOOL_STUCK_RESTART_SECONDS in the end-to-end tests."""
SLOTS_REASON = "every slot has been held by stopped runs whose threads have not returned for"
READY_REASON = "and no run is in progress; a restart starts it afresh"
STUCK_LOG = "stuck for good; /livez fails so that the container is restarted"


# -- the decision, with times given -------------------------------------------------------

def health(grace: float = 300.0) -> Health:
    return Health(10.0, 10.0, stuck_restart_seconds=grace, heartbeating=True)


def live_at(h: Health, now: float) -> tuple[bool, str]:
    """/livez at `now`, with the loop ticking and heartbeats going."""
    h.last_tick = h.last_heartbeat = now
    return h.liveness(now)


def test_every_slot_stuck_fails_liveness_only_past_the_grace() -> None:
    h = health()
    h.slots_stuck("all 2 slots are held", now=1000.0)
    h.slots_stuck("all 2 slots are held", now=1200.0)  # still stuck: the clock keeps running
    assert live_at(h, 1300.0) == (True, "ok")
    ok, reason = live_at(h, 1312.0)
    assert not ok
    assert reason == (f"{SLOTS_REASON} 312.0s (a sync handler that ignores ctx.cancelled); "
                      "a restart frees them")
    assert h.readiness()[1] != "ok"


def test_a_returned_thread_ends_the_episode_and_the_next_one_starts_its_own_clock() -> None:
    h = health()
    h.slots_stuck("all 2 slots are held", now=1000.0)
    h.slots_stuck("", now=1100.0)
    assert h.slots_stuck_since is None
    assert live_at(h, 5000.0) == (True, "ok")
    h.slots_stuck("all 2 slots are held", now=5000.0)
    assert live_at(h, 5300.0) == (True, "ok")
    assert not live_at(h, 5301.0)[0]


def test_a_hung_ready_check_fails_liveness_only_while_nothing_is_busy() -> None:
    h = health()
    h.ready_check_hung(1000.0)
    assert live_at(h, 1300.0) == (True, "ok")
    h.busy = 1  # a run in progress, or an outcome Redis has not recorded
    assert live_at(h, 2000.0) == (True, "ok")
    h.busy = 0
    assert live_at(h, 2000.0) == (
        False, "the ready check has not returned for 1000.0s " + READY_REASON)
    h.ready_check_hung(None)
    assert live_at(h, 2000.0) == (True, "ok")


def test_nothing_is_lost_by_a_restart_for_stuck_slots_either() -> None:
    """Outcomes of those runs still on their way to Redis (an outage) hold the restart off."""
    h = health()
    h.slots_stuck("all 1 slots are held", now=0.0)
    h.busy = 1
    assert live_at(h, 1000.0) == (True, "ok")
    h.busy = 0
    assert not live_at(h, 1000.0)[0]


def test_zero_never_restarts() -> None:
    h = health(grace=0.0)
    h.slots_stuck("all 1 slots are held", now=0.0)
    h.ready_check_hung(0.0)
    assert live_at(h, 1e9) == (True, "ok")
    assert h.restart_due(1e9) == ""


def test_a_blocked_loop_is_named_first() -> None:
    h = health()
    h.ready_check_hung(0.0)
    h.last_tick = h.last_heartbeat = 0.0
    assert h.liveness(1000.0) == (False, "event loop blocked for 1000.0s")


# -- the setting --------------------------------------------------------------------------

REQUIRED = {"AGENTPOOL_REDIS_URL": "redis://r:6379/0", "AGENTPOOL_HANDLER": "m:f"}
RULE = ("AGENTPOOL_STUCK_RESTART_SECONDS must be a number of seconds between 0 and 86400 "
        "(0: never restart a stuck worker)")


def test_the_setting_defaults_to_five_minutes() -> None:
    assert load_settings(REQUIRED).stuck_restart_seconds == 300.0


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), (" 0.5 ", 0.5), ("86400", 86400.0)])
def test_the_setting_accepts(text: str, value: float) -> None:
    loaded = load_settings({**REQUIRED, "AGENTPOOL_STUCK_RESTART_SECONDS": text})
    assert loaded.stuck_restart_seconds == value


@pytest.mark.parametrize("text", ["-1", "86401", "nan", "inf", "", "5m"])
def test_the_setting_refuses_with_one_readable_line(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**REQUIRED, "AGENTPOOL_STUCK_RESTART_SECONDS": text})
    assert str(caught.value) == f"{RULE}, got {text!r}"


def test_a_bad_value_stops_the_worker_at_start(redis_url: str, queue_name: str) -> None:
    env = worker_env(redis_url, queue_name, stuck_restart_seconds="-5")
    result = subprocess.run([sys.executable, "-m", "agentpool_worker.main"], env=env,
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr == f"agentpool-worker: {RULE}, got '-5'\n"


# -- end to end ---------------------------------------------------------------------------

async def status_is(port: int, path: str, code: int, *texts: str) -> bool:
    status, body = await probe(port, path)
    return status == code and all(text in body for text in texts)


def stuck_logs(logs: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == STUCK_LOG]


async def test_livez_fails_once_every_slot_is_held_by_a_thread_past_the_grace(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A sync handler that ignores ctx.cancelled holds the only slot after its run timed out:
    the worker heartbeats, claims nothing, and /livez says so (logged once)."""
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:stuck", port=port,
                                  concurrency=1, task_timeout_seconds=0.3,
                                  stuck_restart_seconds=GRACE))
        await eventually(lambda: status_is(port, "/livez", 200, "ok"), 15, "a live worker")
        task_id = await queue.submit({"stuck": True}, max_attempts=1)
        await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the run to time out")
        await eventually(lambda: status_is(port, "/livez", 503, SLOTS_REASON,
                                           "a restart frees them"), 10, "liveness to fail")
        assert await status_is(port, "/readyz", 503, "all 1 slots are held")
        await eventually(lambda: stuck_logs(worker.logs()), 5, "the warning")
        await asyncio.sleep(1.0)  # four more ticks, still stuck: no second warning
        assert await status_is(port, "/livez", 503, SLOTS_REASON)
        assert worker.alive()
    [line] = stuck_logs(worker.logs())
    assert line["level"] == "warning"
    assert SLOTS_REASON in line["reason"]
    assert line["abandoned_threads"] == 1 and line["in_flight"] == 0


@pytest.fixture
def stuck_slots() -> Iterator[None]:
    sample_handlers.STUCK.clear()
    yield
    sample_handlers.STUCK.set()


async def test_livez_recovers_when_a_stuck_thread_returns(
    stuck_slots: None, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:stuck", port=port,
                                concurrency=2, task_timeout_seconds=0.3,
                                stuck_restart_seconds=GRACE)):
        first = await queue.submit({"stuck": True}, max_attempts=1)
        await eventually(lambda: task_in(queue, first, "dead"), 10, "the first run to time out")
        await queue.submit({"stuck": True}, max_attempts=1)
        await eventually(lambda: status_is(port, "/livez", 503, SLOTS_REASON), 10,
                         "liveness to fail")
        sample_handlers.STUCK.set()
        await eventually(lambda: status_is(port, "/livez", 200, "ok"), 5, "liveness back")
        await eventually(lambda: status_is(port, "/readyz", 200, "ok"), 5, "readiness back")


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """stuck_hooks' state, reset, with its gates opened at the end; ready checks time out
    after 0.3 s."""
    monkeypatch.setattr(worker_module, "READY_CHECK_SECONDS", 0.3)
    stuck_hooks.STATE.update(ready_hangs=False, runs=0, run_gate=asyncio.Event())
    stuck_hooks.READY_GATE.clear()
    yield stuck_hooks.STATE
    stuck_hooks.READY_GATE.set()


async def test_livez_fails_when_the_ready_check_hangs_while_nothing_runs(
    hooks: dict[str, Any], redis_url: str, queue_name: str,
) -> None:
    port = free_port()
    async with running(settings(redis_url, queue_name, "stuck_hooks:run", port=port,
                                lease_seconds=0.6, stuck_restart_seconds=GRACE)):
        assert await status_is(port, "/livez", 200, "ok")
        hooks["ready_hangs"] = True
        await eventually(lambda: status_is(port, "/livez", 503, "the ready check has not "
                                           "returned for", READY_REASON), 10, "liveness to fail")
        assert await status_is(port, "/readyz", 503, "ready check failed")
        hooks["ready_hangs"] = False
        stuck_hooks.READY_GATE.set()
        await eventually(lambda: status_is(port, "/livez", 200, "ok"), 5, "liveness back")
        await eventually(lambda: status_is(port, "/readyz", 200, "ok"), 5, "readiness back")


async def test_a_hung_ready_check_fails_livez_only_once_the_run_in_progress_ended(
    hooks: dict[str, Any], redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A restart would kill the run: the worker, not ready, claims nothing more, and liveness
    fails once its run is over."""
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, "stuck_hooks:run", port=port,
                                lease_seconds=0.6, stuck_restart_seconds=GRACE)) as worker:
        task_id = await queue.submit({})
        await eventually(lambda: task_in(queue, task_id, "running"), 10, "a run in progress")
        hooks["ready_hangs"] = True

        async def hung_long_and_still_live() -> bool:
            assert await probe(port, "/livez") == (200, "ok\n"), "a busy worker failed /livez"
            since = worker.health.ready_hung_since
            return since is not None and time.monotonic() - since > 3 * GRACE

        await eventually(hung_long_and_still_live, 10, "the check to hang for three graces")
        assert await task_in(queue, task_id, "running")
        hooks["run_gate"].set()
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the run to end")
        await eventually(lambda: status_is(port, "/livez", 503, READY_REASON), 5,
                         "liveness to fail")
        assert hooks["runs"] == 1
