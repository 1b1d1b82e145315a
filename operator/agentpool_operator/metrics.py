"""`/healthz` and `/metrics` on the operator's port.

Served from the operator's event loop on purpose: a loop too blocked to answer `/healthz` is an
operator that needs a restart. `/metrics` carries each pool's status figures (the same numbers
as `kubectl get agentpools`, for dashboards and alerts across pools) and counters of what the
operator did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp.web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

POOL_LABELS = ("namespace", "pool")
_FIGURES = {
    "queued": "Tasks waiting to be claimed",
    "delayed": "Tasks scheduled for later or awaiting a retry",
    "inFlight": "Tasks being run by a worker",
    "dead": "Tasks in the dead-letter list",
    "workers": "Worker processes with a live heartbeat",
    "replicas": "Worker pods that exist",
    "readyReplicas": "Worker pods that are ready",
    "desiredReplicas": "Worker pods the pool should have",
}


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


POOL_FIGURES = {
    field: Gauge(f"agentpool_pool_{_snake(field)}", help_text, POOL_LABELS)
    for field, help_text in _FIGURES.items()
}
POOL_CONDITION = Gauge(
    "agentpool_pool_condition", "1 when the pool's condition is True, else 0",
    [*POOL_LABELS, "type"],
)
DEPLOYMENT_WRITES = Counter(
    "agentpool_operator_deployment_writes",
    "Writes to worker Deployments (created, updated to a new spec, restored after drift)",
    ["action"],
)
STATUS_WRITES = Counter("agentpool_operator_status_writes", "Pool status patches")
PROBLEMS = Counter(
    "agentpool_operator_pool_problems",
    "Observations of a pool that found a problem (Secret missing, Redis unreachable, ...)",
    ["reason"],
)


def record_status(namespace: str, pool: str, status: Mapping[str, Any]) -> None:
    for field, gauge in POOL_FIGURES.items():
        value = status.get(field)
        if isinstance(value, int | float):
            gauge.labels(namespace, pool).set(value)
    for condition in status.get("conditions") or []:
        POOL_CONDITION.labels(namespace, pool, str(condition.get("type"))).set(
            1 if condition.get("status") == "True" else 0
        )


def forget_pool(namespace: str, pool: str) -> None:
    for gauge in POOL_FIGURES.values():
        _remove(gauge, namespace, pool)
    for condition_type in ("Ready", "QueueReachable", "Scaling", "Degraded"):
        _remove(POOL_CONDITION, namespace, pool, condition_type)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


async def _healthz(request: aiohttp.web.Request) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"status": "ok"})


async def _metrics(request: aiohttp.web.Request) -> aiohttp.web.Response:
    response = aiohttp.web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def serve(port: int, host: str = "0.0.0.0") -> aiohttp.web.AppRunner:
    """Start serving; the caller cleans the returned runner up."""
    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get("/healthz", _healthz), aiohttp.web.get("/metrics", _metrics)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
