"""The Grafana dashboard: valid JSON, per-pool variables, every query on exported metrics,
shipped in the optional ConfigMap the Grafana sidecar picks up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chart_helpers import CHART, COMBINATIONS, Helm
from observability_helpers import exported_names, metric_names

DASHBOARD = CHART / "files" / "dashboard.json"
PER_POOL = ('namespace=~"$namespace"', 'pool=~"$pool"')


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


def test_every_query_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    found = list(queries(dashboard))
    assert len(found) >= 20
    for title, expr in found:
        used = metric_names(expr)
        assert used, f"{title}: {expr} selects no metric"
        assert used <= exported, f"{title}: {sorted(used - exported)} are not exported"


def test_every_query_is_scoped_to_the_selected_pools(dashboard: dict[str, Any]) -> None:
    for title, expr in queries(dashboard):
        selectors = expr.count("{")
        assert selectors, f"{title}: {expr}"
        for part in PER_POOL:
            assert expr.count(part) == selectors, f"{title}: not every selector has {part}"


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
        selector = query.removeprefix("label_values(").rsplit(",", 1)[0]
        assert metric_names(selector) == {"agentpool_pool_queued"}
    assert "$namespace" in variables["pool"]["query"]["query"]


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
