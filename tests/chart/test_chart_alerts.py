"""The PrometheusRule's values: how thresholds print, which labels an alert gets, which alerts
stay quiet where another one says it already (their firing: tests/observability)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from chart_helpers import COMBINATIONS, Helm, HelmError

MONITORING = COMBINATIONS["monitoring"]


def rules(helm: Helm, alerts: dict[str, Any] | None = None,
          **rule: Any) -> dict[str, dict[str, Any]]:
    values = copy.deepcopy(MONITORING)
    values["monitoring"]["prometheusRule"].update(rule, alerts=alerts or {})
    groups = helm.render(values).one("PrometheusRule")["spec"]["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def test_a_large_whole_threshold_prints_in_full(helm: Helm) -> None:
    """Read from a values file, 1000000 is a float to Helm, which prints it as 1e+06."""
    found = rules(helm, {
        "queueDepthHigh": {"threshold": 1000000},
        "queueDepthCritical": {"threshold": 25000000},
        "deadLettersGrowing": {"threshold": 2000000},
        "poolNotObserved": {"seconds": 3000000},
        "waitTimeHigh": {"seconds": 4000000},
        "failureRateHigh": {"threshold": 0.25},
    })
    high, critical = found["AgentPoolQueueDepthHigh"], found["AgentPoolQueueDepthCritical"]
    assert "agentpool_pool_capped) > 1000000)" in high["expr"]
    assert "(more than 1000000 for 15m;" in high["annotations"]["description"]
    assert critical["expr"].endswith("agentpool_pool_capped) > 25000000")
    assert "(more than 25000000 for 10m;" in critical["annotations"]["description"]
    assert "[30m])) > 2000000)" in found["AgentPoolDeadLettersGrowing"]["expr"]
    assert "(agentpool_pool_poll_seconds) + 3000000)" in found["AgentPoolNotObserved"]["expr"]
    wait = found["AgentPoolWaitTimeHigh"]
    assert wait["expr"].endswith("> 4000000")
    assert "(threshold 4000000s)" in wait["annotations"]["description"]
    failure = found["AgentPoolTaskFailureRateHigh"]
    assert failure["expr"].endswith("> 0.25")
    assert "(threshold 0.25)" in failure["annotations"]["description"]
    for name, rule in found.items():
        assert "e+" not in rule["expr"] + rule["annotations"]["description"], name


def test_alert_labels_reach_every_alert_but_a_severity_there_is_refused(helm: Helm) -> None:
    """Each alert has its own severity: a chart-wide one would be either ignored or override
    them all. The schema says where it goes instead."""
    found = rules(helm, alertLabels={"team": "ml-platform"})
    assert {r["labels"]["team"] for r in found.values()} == {"ml-platform"}
    with pytest.raises(HelmError) as failure:
        rules(helm, alertLabels={"team": "ml-platform", "severity": "page"})
    assert "/alertLabels/severity" in failure.value.stderr
    assert "monitoring.prometheusRule.alerts.<alert>.severity" in failure.value.stderr


def test_not_observed_stays_quiet_where_the_operator_does_not_observe_on_purpose(
    helm: Helm,
) -> None:
    """A refused spec (AgentPoolDegraded, InvalidSpec) and an unreachable queue
    (AgentPoolQueueUnreachable) freeze the last clean observation; the alert that says why
    is enough."""
    expr = rules(helm)["AgentPoolNotObserved"]["expr"]
    assert ('unless on (namespace, pool) (max by (namespace, pool) '
            '(agentpool_pool_degraded_reason{reason="InvalidSpec"}) == 1)') in expr
    assert ('unless on (namespace, pool) (max by (namespace, pool) '
            '(agentpool_pool_condition{type="QueueReachable"}) == 0)') in expr

