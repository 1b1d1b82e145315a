"""The chart's PrometheusRule: valid for promtool, each alert fires when it should, every
expression names metrics the project exports, thresholds come from values."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import COMBINATIONS, Helm, HelmError
from observability_helpers import PROMETHEUS_OWN, exported_names, metric_names

HERE = Path(__file__).resolve().parent
MONITORING = COMBINATIONS["monitoring"]
OPERATOR_ALERTS = [
    "AgentPoolOperatorDown", "AgentPoolReconcileErrors", "AgentPoolNotObserved",
    "AgentPoolCRDOutdated",
]
POOL_ALERTS = [
    "AgentPoolQueueUnreachable", "AgentPoolQueueDataLost", "AgentPoolRedisFull",
    "AgentPoolDegraded", "AgentPoolQueueDepthHigh", "AgentPoolQueueDepthCritical",
    "AgentPoolTaskFailureRateHigh", "AgentPoolNoReadyWorkers", "AgentPoolWaitTimeHigh",
    "AgentPoolDeadLettersGrowing", "AgentPoolStuckAtMaxReplicas", "AgentPoolScheduleMissed",
]


def groups(helm: Helm, values: dict[str, Any] = MONITORING) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = helm.render(values).one("PrometheusRule")["spec"]["groups"]
    return found


def rules(helm: Helm, values: dict[str, Any] = MONITORING) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups(helm, values) for r in g["rules"]}


def with_rule(overrides: dict[str, Any]) -> dict[str, Any]:
    values = copy.deepcopy(MONITORING)
    values["monitoring"]["prometheusRule"].update(overrides)
    return values


def run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_the_rules_pass_promtool_check(helm: Helm, promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups(helm)}))
    out = run(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(OPERATOR_ALERTS) + len(POOL_ALERTS)} rules found" in out


def test_each_alert_fires_when_it_should_and_only_then(
    helm: Helm, promtool: str, tmp_path: Path,
) -> None:
    """promtool's rule unit tests (alert_cases.yaml) against the rendered rules.

    promtool compares annotations verbatim; the cases check labels, so annotations are left out
    of the copy they run against (`check rules` above validates their templates).
    """
    stripped = copy.deepcopy(groups(helm))
    for group in stripped:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": stripped}))
    cases = yaml.safe_load((HERE / "alert_cases.yaml").read_text())
    cases["rule_files"] = ["rules.yaml"]
    tested = {t["alertname"] for case in cases["tests"] for t in case["alert_rule_test"]}
    assert tested == set(OPERATOR_ALERTS + POOL_ALERTS), "every alert has a case"
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(cases))
    run(promtool, "test", "rules", str(tmp_path / "cases.yaml"))


def test_every_expression_names_only_metrics_the_project_exports(helm: Helm) -> None:
    exported = exported_names() | PROMETHEUS_OWN
    for name, rule in rules(helm).items():
        used = metric_names(rule["expr"])
        assert used, f"{name} selects no metric"
        assert used <= exported, f"{name} uses {sorted(used - exported)}, not exported"


def test_the_metric_name_extraction_itself() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (namespace, pool, le) '
        '(rate(agentpool_worker_task_wait_seconds_bucket{pool=~"$pool", le!="+Inf"}[5m]))) '
        '> 1e+06 and on(namespace) (time() - max without (instance) (a_b:c offset 5m)) '
        '> bool 3 unless absent(up{job="x"} == 1)'
    )
    assert metric_names(expr) == {"agentpool_worker_task_wait_seconds_bucket", "a_b:c", "up"}


def test_every_alert_is_documented_and_routable(helm: Helm) -> None:
    found = groups(helm)
    assert [g["name"] for g in found] == ["agentpool-operator", "agentpool-pools"]
    assert [r["alert"] for r in found[0]["rules"]] == OPERATOR_ALERTS
    assert [r["alert"] for r in found[1]["rules"]] == POOL_ALERTS
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for name, rule in rules(helm).items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        if name in POOL_ALERTS:
            assert "{{ $labels.namespace }}/{{ $labels.pool }}" in rule["annotations"]["summary"]
            assert "by (namespace, pool" in rule["expr"], f"{name} must aggregate per pool"
        assert f"`{name}`" in docs, f"{name} is not in docs/metrics.md"


def test_thresholds_labels_and_switches_come_from_values(helm: Helm) -> None:
    values = with_rule({
        "alertLabels": {"team": "ml-platform"},
        "alerts": {
            "queueDepthHigh": {"threshold": 250, "for": "3m", "severity": "info"},
            "failureRateHigh": {"threshold": 0.25, "window": "30m"},
            "waitTimeHigh": {"quantile": 0.99, "seconds": 90},
            "stuckAtMaxReplicas": {"enabled": False},
        },
    })
    found = rules(helm, values)
    assert "AgentPoolStuckAtMaxReplicas" not in found
    depth = found["AgentPoolQueueDepthHigh"]
    assert "(agentpool_pool_queued - agentpool_pool_capped) > 250)" in depth["expr"]
    assert depth["for"] == "3m"
    assert depth["labels"] == {"severity": "info", "team": "ml-platform"}
    assert found["AgentPoolQueueDepthCritical"]["labels"]["severity"] == "critical"
    failure = found["AgentPoolTaskFailureRateHigh"]["expr"]
    assert failure.count("[30m]") == 3 and failure.endswith("> 0.25")
    wait = found["AgentPoolWaitTimeHigh"]["expr"]
    assert wait.startswith("histogram_quantile(0.99,") and wait.endswith("> 90")


def test_a_group_whose_alerts_are_all_off_is_left_out(helm: Helm) -> None:
    off = {"enabled": False}
    values = with_rule({"alerts": {name: off for name in (
        "operatorDown", "reconcileErrors", "poolNotObserved", "crdOutdated")}})
    assert [g["name"] for g in groups(helm, values)] == ["agentpool-pools"]


def test_the_alerts_values_yaml_does_not_list_take_values_given_for_them(helm: Helm) -> None:
    values = with_rule({"alerts": {
        "queueDataLost": {"window": "6h", "severity": "page"},
        "redisFull": {"enabled": False},
    }})
    found = {r["alert"]: r for g in groups(helm, values) for r in g["rules"]}
    lost = found["AgentPoolQueueDataLost"]
    assert "[6h]" in lost["expr"] and lost["expr"].endswith("< 21600")
    assert (lost["for"], lost["labels"]["severity"]) == ("0m", "page")
    assert "AgentPoolRedisFull" not in found
    assert found["AgentPoolCRDOutdated"]["for"] == "15m"


@pytest.mark.parametrize(("window", "seconds"), [
    ("1h", "3600"), ("90s", "90"), ("1h30m", "5400"), ("2w1d", "1296000"), ("1y", "31536000"),
    ("1500ms", "1.5"),
])
def test_a_window_compared_with_a_timestamp_is_given_in_seconds(
    helm: Helm, window: str, seconds: str,
) -> None:
    """The loss and missed-schedule alerts compare the time since a timestamp with their
    window, which PromQL takes as a number only."""
    values = with_rule({"alerts": {"queueDataLost": {"window": window},
                                   "scheduleMissed": {"window": window}}})
    found = rules(helm, values)
    for name in ("AgentPoolQueueDataLost", "AgentPoolScheduleMissed"):
        expr = found[name]["expr"]
        assert f"_timestamp_seconds[{window}]))" in expr and expr.endswith(f"< {seconds}"), name


def test_degraded_leaves_out_only_the_reasons_alerted_on_their_own(helm: Helm) -> None:
    """A full Redis and an outdated CRD have alerts of their own; with one turned off, its
    reason is a Degraded pool like any other."""
    degraded = rules(helm)["AgentPoolDegraded"]["expr"]
    assert 'agentpool_pool_degraded_reason{reason!~"RedisFull|CRDOutdated"}' in degraded
    assert "by (namespace, pool, reason)" in degraded
    values = with_rule({"alerts": {"redisFull": {"enabled": False}}})
    found = {r["alert"]: r for g in groups(helm, values) for r in g["rules"]}
    assert 'agentpool_pool_degraded_reason{reason!~"CRDOutdated"}' in \
        found["AgentPoolDegraded"]["expr"]


def test_paused_pools_are_left_out_where_scaling_cannot_help(helm: Helm) -> None:
    found = rules(helm)
    paused = "unless on (namespace, pool) (max by (namespace, pool) (agentpool_pool_paused) == 1)"
    assert paused in found["AgentPoolStuckAtMaxReplicas"]["expr"]
    assert paused in found["AgentPoolQueueDepthHigh"]["expr"]
    assert "agentpool_pool_paused" not in found["AgentPoolQueueDepthCritical"]["expr"]
    assert "spec.paused" in found["AgentPoolQueueDepthCritical"]["annotations"]["description"]


def test_operator_down_is_left_out_without_the_charts_service_monitor(helm: Helm) -> None:
    """Its expression looks for the ServiceMonitor's job: scraped some other way, the operator
    would be reported down for ever."""
    values = copy.deepcopy(MONITORING)
    values["monitoring"]["serviceMonitor"]["enabled"] = False
    found = rules(helm, values)
    assert "AgentPoolOperatorDown" not in found
    assert {"AgentPoolReconcileErrors", "AgentPoolNotObserved"} <= set(found)
    assert "AgentPoolOperatorDown" in rules(helm)


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        ({"failureRateHigh": {"threshold": 5}}, "/failureRateHigh/threshold"),
        ({"waitTimeHigh": {"window": "ten minutes"}}, "/waitTimeHigh/window"),
        ({"queueDepthHigh": {"threshold": -1}}, "/queueDepthHigh/threshold"),
        ({"queueDepthHuge": {"enabled": True}}, "'queueDepthHuge' not allowed"),
        ({"noReadyWorkers": {"severity": "Page Me"}}, "/noReadyWorkers/severity"),
    ],
)
def test_bad_alert_values_are_refused(helm: Helm, alerts: dict[str, Any], expected: str) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(with_rule({"alerts": alerts}))
    assert expected in failure.value.stderr


def test_worker_series_get_the_pool_label_and_operator_series_keep_theirs(helm: Helm) -> None:
    """The alerts join worker and operator series on (namespace, pool)."""
    rendered = helm.render(MONITORING)
    endpoint = rendered.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_agentpool_dev_pool"],
            "targetLabel": "pool"} in endpoint["relabelings"]
    assert rendered.one("ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"] is True
