"""What a spec the operator refuses does to the operator's /metrics."""

from __future__ import annotations

from operator_harness import Cluster, OperatorThread, eventually, pool_manifest
from test_operator_metrics import pool_labels, scraped_when


async def test_a_refused_spec_is_a_degraded_pool_not_a_reconcile_error(
    cluster: Cluster, operator: OperatorThread, redis_url: str, pool_name: str,
) -> None:
    """The pool's owner has something to fix, the operator nothing: AgentPoolDegraded
    (InvalidSpec) says so, and AgentPoolReconcileErrors, whose description sends the reader to
    the operator's log, stays quiet."""
    await cluster.create_pool(pool_manifest(pool_name, redis_url=redis_url))
    errors = [("agentpool_operator_reconcile_errors_total", pool_labels(pool_name, step=step))
              for step in ("observe", "deployment")]
    await eventually(scraped_when(operator, lambda m: all(e in m for e in errors)))
    await cluster.patch_pool(pool_name, {"spec": {"scaling": {"minReplicas": 5,
                                                              "maxReplicas": 3}}})
    invalid = ("agentpool_pool_degraded_reason", pool_labels(pool_name, reason="InvalidSpec"))
    found = await eventually(scraped_when(operator, lambda m: m.get(invalid) == 1))
    assert [found[e] for e in errors] == [0, 0]
