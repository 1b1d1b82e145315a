"""The Grafana dashboard: valid JSON, per-pool variables, every query on exported metrics,
the numbers the alerts page on, queries evaluated by promtool, shipped in the optional
ConfigMap the Grafana sidecar picks up."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, COMBINATIONS, Helm
from observability_helpers import exported_families, exported_names, metric_names
from prometheus_client import REGISTRY

from agentpool_operator import metrics
from agentpool_operator.status import invalid_spec_status

DASHBOARD = CHART / "files" / "dashboard.json"
PER_POOL = ('namespace=~"$namespace"', 'pool=~"$pool"')
LIMIT_SCOPED = {"agentpool_limit_max_concurrent"}
"""Series of a rate limit, shared by every pool naming it, with no pool label: a query may
select one only joined on its limit with a series of the selected pools."""

_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile)\s*"
    r"(?:(?:by|without)\s*\([^)]*\)\s*)?$"
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return parsed


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def panel(dashboard: dict[str, Any], panel_id: int) -> dict[str, Any]:
    (found,) = (p for p in panels(dashboard) if p["id"] == panel_id)
    return found


def expr(dashboard: dict[str, Any], panel_id: int, ref: str) -> str:
    (found,) = (t["expr"] for t in panel(dashboard, panel_id)["targets"] if t["refId"] == ref)
    return str(found)


def selectors(query: str) -> list[tuple[str, str, int]]:
    """Each series selector of a query: metric name, its matchers (`{...}`, or ""), offset."""
    names = metric_names(query)
    return [(m.group(1), m.group(2) or "", m.start())
            for m in _SELECTOR.finditer(query) if m.group(1) in names]


def aggregation_around(query: str, at: int) -> str | None:
    """The innermost aggregation operator (`sum`, `max`, ...) enclosing offset `at`."""
    depth = 0
    for i in range(at - 1, -1, -1):
        if query[i] == ")":
            depth += 1
        elif query[i] == "(":
            if depth:
                depth -= 1
            elif found := _AGGREGATION.search(query[:i]):
                return found.group(1)
    return None


def test_every_query_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    found = list(queries(dashboard))
    assert len(found) >= 20
    for title, expr in found:
        used = metric_names(expr)
        assert used, f"{title}: {expr} selects no metric"
        assert used <= exported, f"{title}: {sorted(used - exported)} are not exported"


def test_every_query_is_scoped_to_the_selected_pools(dashboard: dict[str, Any]) -> None:
    for title, query in queries(dashboard):
        found = [(name, all(p in matchers for p in PER_POOL)) for name, matchers, _ in
                 selectors(query)]
        assert any(scoped for _, scoped in found), f"{title}: {query} selects no pool's series"
        for name in (name for name, scoped in found if not scoped):
            assert name in LIMIT_SCOPED, f"{title}: {name} is not scoped to the selected pools"
            assert "and on (limit)" in query, f"{title}: {name} is not joined on its limit"


def test_operator_gauges_are_taken_with_max_like_the_alerts(dashboard: dict[str, Any]) -> None:
    """Two operator replicas exporting a pool (a hand-over) must not double its figures."""
    gauges = {name for name, kind in exported_families().items()
              if kind == "gauge" and name.startswith(("agentpool_pool_", "agentpool_operator_"))}
    checked = 0
    for title, query in queries(dashboard):
        for name, _, at in selectors(query):
            if name in gauges:
                checked += 1
                assert aggregation_around(query, at) == "max", f"{title}: {name} in {query}"
    assert checked >= 15


def test_namespace_and_pool_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pool"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] and variable["includeAll"]
        query = variable["query"]["query"]
        assert query.startswith("label_values(") and query.endswith(f", {name})")
        assert variable["definition"] == query
        selector = query.removeprefix("label_values(").rsplit(",", 1)[0]
        assert metric_names(selector) == {"agentpool_pool_condition"}
        assert 'type="Degraded"' in selector
    assert "$namespace" in variables["pool"]["query"]["query"]


def test_a_pool_in_trouble_stays_selectable(dashboard: dict[str, Any]) -> None:
    """The variables' series exists for a pool whose queue is unreachable and for one whose
    spec the operator refuses, whose figures the operator stops exporting."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    query = variables["pool"]["query"]["query"]
    selector = query.removeprefix("label_values(").rsplit(",", 1)[0]
    (name,) = metric_names(selector)
    matchers = dict(re.findall(r'(\w+)="([^"]*)"', selector))
    healthy: dict[str, Any] = {
        "queued": 3, "delayed": 0, "deferred": 0, "capped": 0, "inFlight": 1, "dead": 0,
        "workers": 1, "replicas": 1, "readyReplicas": 1, "desiredReplicas": 1,
        "drainingReplicas": 0,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready"},
            {"type": "QueueReachable", "status": "True", "reason": "Reachable"},
            {"type": "Degraded", "status": "False", "reason": "AsExpected"},
        ],
    }
    unreachable = {**healthy, "conditions": [
        {"type": "Ready", "status": "False", "reason": "QueueUnreachable"},
        {"type": "QueueReachable", "status": "False", "reason": "QueueUnreachable"},
        {"type": "Degraded", "status": "True", "reason": "QueueUnreachable"},
    ]}
    refused = invalid_spec_status(healthy, "spec.scaling: broken", now=datetime.now(UTC),
                                  generation=2)
    namespace = "dashboard-variables"
    statuses = {"healthy": healthy, "unreachable": unreachable, "refused": refused}
    try:
        for pool, status in statuses.items():
            metrics.record_status(namespace, pool, status)
        selectable = {
            s.labels["pool"]
            for family in REGISTRY.collect() for s in family.samples
            if s.name == name and s.labels.get("namespace") == namespace
            and all(s.labels.get(k) == v for k, v in matchers.items())
        }
        assert selectable == set(statuses)
    finally:
        for pool in statuses:
            metrics.forget_pool(namespace, pool)


def test_slots_held_are_shown_against_the_cap(dashboard: dict[str, Any]) -> None:
    slots = panel(dashboard, 29)
    caps = [t for t in slots["targets"]
            if metric_names(t["expr"]) >= {"agentpool_limit_max_concurrent"}]
    assert len(caps) == 1
    (cap,) = caps
    assert cap["legendFormat"] == "cap {{limit}}"
    assert cap["expr"].startswith("max by (limit) (agentpool_limit_max_concurrent)")
    assert "agentpool_worker_limit_held" in metric_names(cap["expr"])


def test_the_numbers_the_alerts_page_on_are_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    """QueueDepth* and StuckAtMaxReplicas page on queued - capped; draining pods explain
    replicas above ready."""
    depth = " ".join(t["expr"] for t in panel(dashboard, 9)["targets"])
    assert {"agentpool_pool_queued", "agentpool_pool_capped", "agentpool_pool_deferred",
            "agentpool_pool_delayed", "agentpool_pool_dead"} <= metric_names(depth)
    assert ("max by (namespace, pool) (agentpool_pool_queued{namespace=~\"$namespace\", "
            "pool=~\"$pool\"} - agentpool_pool_capped{") in depth
    replicas = " ".join(t["expr"] for t in panel(dashboard, 11)["targets"])
    assert "agentpool_pool_draining_replicas" in metric_names(replicas)


@pytest.mark.parametrize(("panel_id", "ref", "unit"), [(22, "C", "s"), (26, "B", "percentunit")])
def test_a_second_unit_goes_on_its_own_right_axis(
    dashboard: dict[str, Any], panel_id: int, ref: str, unit: str,
) -> None:
    mixed = panel(dashboard, panel_id)
    assert ref in {t["refId"] for t in mixed["targets"]}
    assert mixed["fieldConfig"]["defaults"]["unit"] == "short"
    (override,) = (o for o in mixed["fieldConfig"]["overrides"]
                   if o["matcher"] == {"id": "byFrameRefID", "options": ref})
    properties = {p["id"]: p["value"] for p in override["properties"]}
    assert properties["unit"] == unit
    assert properties["custom.axisPlacement"] == "right"


def test_idle_pools_show_zero_throughput_and_no_failure_rate(dashboard: dict[str, Any]) -> None:
    throughput = panel(dashboard, 5)
    assert (expr(dashboard, 5, "A").endswith(" or vector(0)")
            or throughput["fieldConfig"]["defaults"].get("noValue") == "0")
    assert panel(dashboard, 6)["fieldConfig"]["defaults"]["noValue"] == "–"


def grafana(query: str) -> str:
    """The query as Grafana sends it, with every namespace and pool selected."""
    return (query.replace("$__rate_interval", "2m").replace("$namespace", ".*")
            .replace("$pool", ".*"))


def test_the_queries_evaluate_to_what_they_show(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path,
) -> None:
    """promtool evaluates queries on series of a hand-over (two operator replicas exporting
    the same pool), an idle pool, a pool scaled to zero and a limit shared by two pools."""
    pool = '{namespace="team-a", pool="p1"}'

    def operator(name: str, value: int) -> list[dict[str, str]]:
        return [{"series": f'{name}{{namespace="team-a", pool="p1", instance="{i}"}}',
                 "values": f"{value}x10"} for i in ("op-0", "op-1")]

    def case(panel_id: int, ref: str, samples: list[tuple[str, float]]) -> dict[str, Any]:
        return {"expr": grafana(expr(dashboard, panel_id, ref)), "eval_time": "10m",
                "exp_samples": [{"labels": labels, "value": v} for labels, v in samples]}

    worker = '{namespace="team-a", pool="p1", queue="q", pod="w-0"}'
    tests = [
        {"interval": "1m", "input_series": [
            *operator("agentpool_pool_queued", 7), *operator("agentpool_pool_capped", 2),
            *operator("agentpool_pool_deferred", 1),
            *operator("agentpool_pool_draining_replicas", 1),
         ], "promql_expr_test": [
            case(2, "A", [("{}", 7)]),
            case(9, "A", [(pool, 7)]),
            case(9, "D", [(pool, 1)]),
            case(9, "E", [(pool, 2)]),
            case(9, "F", [(pool, 5)]),
            case(11, "E", [(pool, 1)]),
        ]},
        {"interval": "1m", "input_series": [
            {"series": f"agentpool_worker_tasks_succeeded_total{worker}", "values": "40x10"},
            {"series": f"agentpool_worker_tasks_failed_total{worker}", "values": "2x10"},
         ], "promql_expr_test": [
            case(5, "A", [("{}", 0)]), case(6, "A", []), case(15, "A", []),
        ]},
        {"interval": "1m", "input_series": operator("agentpool_pool_queued", 0),
         "promql_expr_test": [case(5, "A", [("{}", 0)]), case(6, "A", [])]},
        {"interval": "1m", "input_series": [
            *({"series": f'agentpool_limit_max_concurrent{{limit="llm", instance="{i}"}}',
               "values": "4x10"} for i in ("op-0", "op-1")),
            {"series": 'agentpool_limit_max_concurrent{limit="search", instance="op-0"}',
             "values": "2x10"},
            {"series": 'agentpool_worker_limit_held{namespace="team-a", pool="p1", queue="q", '
                       'pod="w-0", limit="llm"}', "values": "1x10"},
         ], "promql_expr_test": [case(29, "B", [('{limit="llm"}', 4)])]},
    ]
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m",
                                    "tests": tests}, allow_unicode=True))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_panels_an_operator_of_a_fleet_looks_for(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in panels(dashboard)}
    assert {
        "Queue depth", "In flight", "Replicas: desired vs ready", "Throughput",
        "Failure rate", "Wait for a worker (ready → start)", "Run duration", "Scale decisions",
        "Recovery",
    } <= titles
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    uses = " ".join(expr for _, expr in queries(dashboard))
    for histogram in ("task_wait_seconds", "task_duration_seconds"):
        for quantile in ("0.5", "0.95", "0.99"):
            percentile = (f"histogram_quantile({quantile}, sum by (namespace, pool, le) "
                          f"(rate(agentpool_worker_{histogram}_bucket{{")
            assert percentile in uses
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel.get("description"), panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_chart_ships_it_for_the_grafana_sidecar(helm: Helm) -> None:
    config_map = helm.render(COMBINATIONS["monitoring"]).one("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["agentpool.json"]) == json.loads(DASHBOARD.read_text())
    assert not helm.render({}).of_kind("ConfigMap")
