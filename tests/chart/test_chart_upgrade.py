"""`helm upgrade --reuse-values` of a release installed from an earlier chart.

With --reuse-values, Helm (action.Upgrade.reuseValues) renders the new chart's templates with the
values of the release it upgrades: it replaces the new chart's values.yaml by the release's own
(the earlier chart's values.yaml with the user's values over it) and takes the user's values of
that release, plus any new --set, as the user's values. So a copy of this chart whose values.yaml
is an earlier chart's, rendered with the user's values, is what such an upgrade renders; no
cluster is needed. earlier_values/ holds the values.yaml of earlier charts, named by the date and
commit they are from (the chart's version was 0.1.0 throughout).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_helpers import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Helm,
    Manifest,
    Rendered,
    pod_specs,
)
from test_chart_manifests import (
    KOPF,
    PROMETHEUS_OPERATOR,
    expected_grants,
    kopf_peering_problems,
    operator_grants,
    prometheus_operator_problems,
    restricted_violations,
)

EARLIER = sorted((Path(__file__).parent / "earlier_values").glob("values-*.yaml"))
FIRST = EARLIER[0]
DEFAULTS_TEMPLATE = CHART / "templates" / "_defaults.tpl"

# What users of those charts had set, or set at the upgrade to turn on what is new since.
USER_VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "console": {
        "console": {"enabled": True, "writeActions": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "operator": {"replicas": 2},
    },
    "external-redis-namespaced": {
        "redis": {"enabled": False, "external": {"url": "redis://:pw@redis.example.com:6379/0"}},
        "watchNamespaces": ["team-a"],
    },
}
# Objects each of them must bring, whatever the chart the release came from.
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "defaults": {("Deployment", f"{RELEASE}-operator"), ("StatefulSet", f"{RELEASE}-redis")},
    "monitoring": {("PrometheusRule", RELEASE), ("ServiceMonitor", f"{RELEASE}-operator"),
                   ("PodMonitor", f"{RELEASE}-workers"), ("ConfigMap", f"{RELEASE}-dashboard")},
    "console": {("Deployment", f"{RELEASE}-console"), ("Secret", f"{RELEASE}-console-token"),
                ("NetworkPolicy", f"{RELEASE}-redis")},
    "external-redis-namespaced": {("Role", f"{RELEASE}-operator"),
                                  ("Secret", "agentpool-redis")},
}


@pytest.fixture(scope="module", params=EARLIER, ids=lambda path: path.stem)
def earlier_chart(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This chart with the values.yaml of an earlier one, as --reuse-values renders it."""
    chart = tmp_path_factory.mktemp("chart") / CHART.name
    shutil.copytree(CHART, chart)
    shutil.copyfile(request.param, chart / "values.yaml")
    return chart


RENDERED: dict[tuple[Path, str], tuple[list[Manifest], str]] = {}


def render(helm: Helm, chart: Path, *values: str) -> tuple[list[Manifest], str]:
    """The manifests (hooks included) and the NOTES of `helm install`, cached."""
    key = (chart, " ".join(values))
    if key not in RENDERED:
        args = [arg for path in values for arg in ("--values", path)]
        out = helm.run("install", RELEASE, str(chart), "--namespace", NAMESPACE,
                       "--dry-run=client", *args)
        text, notes = out.split("\nNOTES:\n", 1)
        docs = re.sub(r"^(HOOKS|MANIFEST):$", "", text.split("\n---\n", 1)[1], flags=re.M)
        RENDERED[key] = [m for m in yaml.safe_load_all(docs) if m], notes
    return RENDERED[key]


def without_random_data(manifests: list[Manifest]) -> list[Manifest]:
    """Generated passwords and tokens differ at each render: their Secrets keep their keys."""
    return [
        {**m, "data": sorted(m.get("data", {}))} if m["kind"] == "Secret" else m
        for m in manifests
    ]


def problems_of(manifest: Manifest) -> list[str]:
    """As test_chart_manifests checks every manifest."""
    if manifest.get("apiVersion") == PROMETHEUS_OPERATOR:
        return prometheus_operator_problems(manifest)
    if manifest.get("apiVersion") == KOPF:
        return kopf_peering_problems(manifest)
    try:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
    return []


@pytest.mark.parametrize("user", sorted(USER_VALUES))
def test_an_earlier_release_upgrades_to_valid_objects(
    helm: Helm, earlier_chart: Path, user: str
) -> None:
    manifests, notes = render(helm, earlier_chart, helm.values_file(USER_VALUES[user]))
    problems = [f"{m['kind']}/{m['metadata']['name']}: {p}"
                for m in manifests for p in problems_of(m)]
    problems += [f"{name}: {p}" for name, spec in pod_specs(manifests)
                 for p in restricted_violations(spec)]
    assert not problems, "\n".join(problems)
    assert EXPECTED[user] <= {(m["kind"], m["metadata"]["name"]) for m in manifests}
    rendered = Rendered(values=USER_VALUES[user], manifests=manifests)
    assert operator_grants(rendered) == expected_grants(USER_VALUES[user])
    assert "Next steps:" in notes


@pytest.mark.parametrize("user", sorted(USER_VALUES))
def test_an_earlier_release_renders_its_values_over_this_charts_defaults(
    helm: Helm, earlier_chart: Path, user: str
) -> None:
    """A key the earlier chart did not have takes this chart's default, and every value the
    release has (the earlier chart's defaults too) stays: the same objects as this chart
    installed with the earlier values.yaml as the user's values."""
    user_values = helm.values_file(USER_VALUES[user])
    upgraded, upgraded_notes = render(helm, earlier_chart, user_values)
    installed, installed_notes = render(
        helm, CHART, str(earlier_chart / "values.yaml"), user_values)
    assert without_random_data(upgraded) == without_random_data(installed)
    assert upgraded_notes == installed_notes


def added_defaults() -> dict[str, Any]:
    """The YAML of templates/_defaults.tpl's "agentpool.addedDefaults"."""
    text = DEFAULTS_TEMPLATE.read_text()
    start = '{{- define "agentpool.addedDefaults" -}}\n'
    body = text.split(start, 1)[1].split("{{- end -}}", 1)[0]
    parsed: dict[str, Any] = yaml.safe_load(body)
    return parsed


def leaves(values: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every value by its path; an empty map is a value of its own."""
    if isinstance(values, dict) and values:
        return {p: v for key, sub in values.items() for p, v in leaves(sub, (*path, key)).items()}
    return {path: values}


def test_the_added_defaults_are_those_of_values_yaml() -> None:
    current = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    added = leaves(added_defaults())
    differ = {".".join(p): (v, current.get(p, "missing")) for p, v in added.items()
              if current.get(p, "missing") != v}
    assert not differ, f"templates/_defaults.tpl differs from values.yaml: {differ}"


def test_every_key_added_since_the_first_chart_has_an_added_default() -> None:
    """A release of the first chart lacks every key added since: each needs its default in
    templates/_defaults.tpl, or a template reading it fails on such a release's upgrade."""
    current = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    first = leaves(yaml.safe_load(FIRST.read_text()))
    added = leaves(added_defaults())
    missing = [".".join(p) for p in current if p not in first and p not in added]
    assert not missing, f"add to templates/_defaults.tpl (agentpool.addedDefaults): {missing}"
