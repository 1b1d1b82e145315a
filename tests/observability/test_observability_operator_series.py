"""The series names the operator's /metrics serves."""

from __future__ import annotations

import asyncio
import uuid

from observability_helpers import exported_names, samples, scrape
from prometheus_client import enable_created_metrics

from agentpool.models import AgentPoolSpec
from agentpool.redis_server import free_port
from agentpool_operator import metrics


async def test_the_operator_serves_no_created_series() -> None:
    """prometheus_client adds a `_created` series to every counter series (one per label set
    of every pool), which nothing reads and docs/metrics.md does not list: the worker leaves
    them out, and so does the operator. On at first, whatever ran before in this process."""
    enable_created_metrics()  # type: ignore[no-untyped-call]
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    metrics.record_spec("team-a", pool, AgentPoolSpec.model_validate({
        "redis": {"url": "redis://redis:6379/0"},
        "worker": {"image": "worker:1", "handler": "app.tasks:run"},
    }))
    metrics.record_reconcile_error("team-a", pool, "act")
    port = free_port()
    runner = await metrics.serve(port, host="127.0.0.1")
    try:
        text = await asyncio.to_thread(scrape, port)
    finally:
        await runner.cleanup()
        metrics.forget_pool("team-a", pool)
    names = {s.name for s in samples(text)}
    assert "agentpool_operator_reconcile_errors_total" in names
    assert sorted(n for n in names if n.endswith("_created")) == []
    assert names <= exported_names()
