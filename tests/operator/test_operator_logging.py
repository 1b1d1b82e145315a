"""The operator's own log, as `configure_logging` sets it up: what a person reads at INFO.

The flow runs the real operator against kmock and a real redis-server: pod events, a pod
drained and replaced, tasks requeued, expired leases, a probe and a scrape of its HTTP port.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually
from test_recovery_loop import (
    PODS,
    fall_silent,
    lease,
    pod_manifest,
    pod_status,
    posted,
    start_pool,
)

from agentpool.protocol import TaskQueue
from agentpool_operator.main import REPORTING_COMPONENT, ROUTINE, configure_logging
from agentpool_operator.settings import OperatorSettings

RECOVERY_REASONS = ("DrainRequested", "PodReplaced", "TasksRequeued", "LeasesExpired")


class OperatorLog:
    """What the operator's log handler writes, one JSON object per line."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines() if line]

    def at(self, severity: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["severity"] == severity]


@pytest.fixture
def operator_log() -> Iterator[Any]:
    """`configure_logging(level)` with its stream handler writing here; undone afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    quiet = logging.getLogger("asyncio")
    saved_asyncio = (list(quiet.handlers), quiet.propagate)
    log = OperatorLog()

    def configure(level: str) -> OperatorLog:
        before = set(root.handlers)
        configure_logging(level)
        [handler] = [h for h in root.handlers if h not in before]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(log.buffer)
        return log

    yield configure
    root.handlers[:], root.level = saved
    quiet.handlers[:], quiet.propagate = saved_asyncio
    for routine in ROUTINE:
        logging.getLogger(routine.name).removeFilter(routine)


def http_get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status)


async def recovery_flow(cluster: Cluster, redis_url: str, redis: aioredis.Redis,
                        port: int) -> None:
    """A pod unready past its grace whose worker went silent (drained, replaced, its tasks
    requeued), a pod whose worker died unseen (leases expired), a probe and a scrape."""
    await start_pool(
        cluster, redis_url, "logs", pods=2,
        worker={"image": "w:1", "handler": "m:f", "drainSeconds": 1},
        recovery={"unreadyGraceSeconds": 5, "maxUnavailable": 1},
    )
    queue = TaskQueue(redis, "logs")
    await lease(queue, "logs-a", "i1", 2)
    await fall_silent(queue, "logs-a", "i1")
    await lease(queue, "logs-b", "i1", 1, lease_seconds=1)
    await cluster.create(PODS, pod_manifest("logs", "logs-a", pod_status(
        ready=False, ready_since=time.time() - 60)))
    await cluster.create(PODS, pod_manifest("logs", "logs-b"))
    for reason in RECOVERY_REASONS:
        await posted(cluster, reason)
    assert http_get(port, "/healthz") == 200
    assert http_get(port, "/metrics") == 200


def routine(line: dict[str, Any]) -> bool:
    message = str(line.get("message", ""))
    return bool(re.match(r"Handler '.*' succeeded", message)) or any(
        f'"GET {path} HTTP' in message for path in ("/healthz", "/metrics"))


async def test_info_log_has_what_the_operator_did_and_no_routine_lines(
    operator_log: Any, cluster: Cluster, operator_settings: OperatorSettings,
    redis_url: str, redis: aioredis.Redis,
) -> None:
    log = operator_log("info")
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await recovery_flow(cluster, redis_url, redis, operator_settings.port)
        await eventually(lambda: {"logs-a", "logs-b"} <= {
            line.get("pod") for line in log.lines()})
    finally:
        await operator.stop()
    assert operator.error is None, operator.error

    assert not log.at("debug")
    assert [line["message"] for line in log.lines() if routine(line)] == []
    recovery = [line for line in log.lines() if line.get("reason") in RECOVERY_REASONS]
    assert {line["reason"] for line in recovery} == set(RECOVERY_REASONS)
    for line in recovery:
        assert (line["severity"], line["namespace"], line["pool"]) == ("info", NAMESPACE, "logs")
        assert line["message"].startswith(f"{NAMESPACE}/logs: {line['reason']}: ")
        assert f"pod {line['pod']}" in line["message"]
    pods = {(line["reason"], line["pod"]) for line in recovery}
    assert {("DrainRequested", "logs-a"), ("PodReplaced", "logs-a"),
            ("TasksRequeued", "logs-a"), ("LeasesExpired", "logs-b")} <= pods


async def test_events_name_the_operator_as_their_reporter(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    operator_settings: OperatorSettings,
) -> None:
    await recovery_flow(cluster, redis_url, redis, operator_settings.port)
    posts = [r.data for r in cluster.requests("POST", "/events")]
    assert {e["reason"] for e in posts} >= set(RECOVERY_REASONS)
    for event in posts:
        assert event["reportingComponent"] == REPORTING_COMPONENT
        assert event["source"] == {"component": REPORTING_COMPONENT}
        assert event["reportingInstance"] == socket.gethostname()
        assert event["metadata"]["generateName"] == f"{REPORTING_COMPONENT}-"


ACCESS_LINE = '127.0.0.1 [02/Dec/2026:10:00:00 +0000] "GET /healthz HTTP/1.1" 200 162 "-" "kube"'


@pytest.mark.parametrize(("logger", "routine_line", "kept"), [
    ("kopf.objects", "Handler 'pod_event' succeeded.", "Creation is processed: 1 succeeded."),
    ("kopf.objects", "Handler 'deployment_event' succeeded.", "Handler 'reconcile' failed."),
    ("aiohttp.access", ACCESS_LINE, None),
])
def test_routine_lines_are_debug_lines(
    operator_log: Any, logger: str, routine_line: str, kept: str | None
) -> None:
    log = operator_log("info")
    logging.getLogger(logger).info(routine_line)
    if kept is not None:
        logging.getLogger(logger).info(kept)
    assert [(line["message"], line["severity"]) for line in log.lines()] == (
        [] if kept is None else [(kept, "info")])

    log = operator_log("debug")
    logging.getLogger(logger).info(routine_line)
    [line] = [line for line in log.lines() if line["message"] == routine_line]
    assert line["severity"] == "debug"
