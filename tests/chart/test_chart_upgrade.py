"""`helm upgrade --reuse-values` of a release installed from an earlier chart.

With --reuse-values, Helm (action.Upgrade.reuseValues) renders the new chart's templates with the
values of the release it upgrades: it replaces the new chart's values.yaml by the release's own
(the earlier chart's values.yaml with the user's values over it) and takes the user's values of
that release, plus any new --set, as the user's values. So a copy of this chart whose values.yaml
is an earlier chart's, rendered with the user's values, is what such an upgrade renders; no
cluster is needed (test_the_copy_renders_what_helm_upgrade_reuse_values_renders holds the copy to
a real `helm upgrade --reuse-values`). earlier_values/ holds the values.yaml of earlier charts,
named by the date and commit they are from (the chart's version was 0.1.0 throughout).

values.yaml's valuesVersion tells this chart's own values from an earlier chart's: only the
latter get the added keys filled in (templates/_defaults.tpl), so that a value a user sets to null
stays removed everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_helpers import (
    CHART,
    HELM,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Helm,
    Manifest,
    Rendered,
    pod_specs,
)
from fake_kube_api import fake_kube_api
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
DEFAULTS_TEMPLATE = CHART / "templates" / "_defaults.tpl"
SCHEMA = CHART / "values.schema.json"

# The keys listed under each valuesVersion in templates/_defaults.tpl, by digest (keys_digest). A
# chart with that valuesVersion may have been installed: a key added to its list later would be
# missing from such a release's values and, the release carrying that valuesVersion, not filled in.
ADDED_KEYS = {2: "58f0930c38d2", 3: "f1f68e915d9e"}

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
                ("NetworkPolicy", f"{RELEASE}-redis"), ("NetworkPolicy", f"{RELEASE}-console")},
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


def added_defaults() -> dict[int, dict[str, Any]]:
    """The YAML of templates/_defaults.tpl's "agentpool.addedDefaults": by valuesVersion, the
    keys values.yaml gained with it and their defaults."""
    text = DEFAULTS_TEMPLATE.read_text()
    start = '{{- define "agentpool.addedDefaults" -}}\n'
    body = text.split(start, 1)[1].split("{{- end -}}", 1)[0]
    parsed: dict[int, dict[str, Any]] = yaml.safe_load(body)
    return parsed


def leaves(values: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every value by its path; an empty map is a value of its own."""
    if isinstance(values, dict) and values:
        return {p: v for key, sub in values.items() for p, v in leaves(sub, (*path, key)).items()}
    return {path: values}


def values_version(values: dict[str, Any]) -> int:
    """Values of a chart from before valuesVersion are 1."""
    return int(values.get("valuesVersion", 1))


def keys_digest(keys: dict[tuple[str, ...], Any]) -> str:
    text = "\n".join(sorted(".".join(path) for path in keys))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_the_added_defaults_are_those_of_values_yaml() -> None:
    current = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    added = {p: v for defaults in added_defaults().values() for p, v in leaves(defaults).items()}
    differ = {".".join(p): (v, current.get(p, "missing")) for p, v in added.items()
              if current.get(p, "missing") != v}
    assert not differ, f"templates/_defaults.tpl differs from values.yaml: {differ}"


@pytest.mark.parametrize("earlier", EARLIER, ids=lambda path: path.stem)
def test_every_key_added_since_the_first_chart_has_an_added_default(earlier: Path) -> None:
    """A release of an earlier chart lacks every key added since: each needs its default in
    templates/_defaults.tpl, under a valuesVersion above the earlier chart's (the first chart's
    and the others' before valuesVersion: 1), or a template reading it fails on such a release's
    upgrade."""
    current = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    earlier_values = yaml.safe_load(earlier.read_text())
    had = leaves(earlier_values)
    filled = {p for version, defaults in added_defaults().items()
              if version > values_version(earlier_values) for p in leaves(defaults)}
    missing = [".".join(p) for p in current
               if p not in had and p not in filled and p != ("valuesVersion",)]
    assert not missing, (
        f"add to templates/_defaults.tpl (agentpool.addedDefaults) under a new valuesVersion, "
        f"values.yaml's raised by one: {missing}")


def test_values_yaml_has_the_newest_values_version() -> None:
    """The filling goes by values.yaml's valuesVersion: it is the newest one keys were added
    with, and the schema accepts it and every earlier one, which a release may carry."""
    versions = sorted(added_defaults())
    newest = values_version(yaml.safe_load((CHART / "values.yaml").read_text()))
    schema = json.loads(SCHEMA.read_text())["properties"]["valuesVersion"]
    assert versions == list(range(2, newest + 1))
    assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", 2, newest)


def test_no_key_is_added_to_a_values_version_a_chart_was_installed_with() -> None:
    listed = {version: keys_digest(leaves(defaults))
              for version, defaults in added_defaults().items()}
    changed = {version: digest for version, digest in listed.items()
               if ADDED_KEYS.get(version) != digest}
    assert not changed, (
        f"the keys listed under valuesVersion {sorted(changed)} in templates/_defaults.tpl are not "
        f"those recorded in ADDED_KEYS: a new key goes under a new valuesVersion (values.yaml's "
        f"raised by one). Then, or when keys were only removed, record {changed} in ADDED_KEYS.")


# Helm's way to drop a default: runAsUser, say, for OpenShift's restricted SCC, which assigns one.
NULLED_RUN_AS_USER = {
    "console": {
        "enabled": True,
        "podSecurityContext": {"runAsUser": None},
        "securityContext": {"runAsUser": None},
    }
}
NULLED = {"console": {**NULLED_RUN_AS_USER["console"], "resources": {"limits": None}}}


def release_of(helm: Helm, chart: Path, values: str) -> dict[str, Any]:
    """The release `helm install` records (as Helm stores it), deployed."""
    out = helm.run("install", RELEASE, str(chart), "--namespace", NAMESPACE,
                   "--dry-run=client", "--output", "json", "--values", values)
    release: dict[str, Any] = json.loads(out)
    release["info"]["status"] = "deployed"
    release["version"] = 1
    return release


def upgraded(helm: Helm, release: dict[str, Any], chart: Path, workdir: Path,
             *args: str) -> tuple[list[Manifest], str]:
    """The manifests (hooks included) and NOTES of a real `helm upgrade` of `release`: Helm's
    memory storage driver holds the release, and a fake API server answers Helm's version
    check (with the memory driver Helm applies nothing)."""
    store = workdir / "releases.json"
    store.write_text(json.dumps([release]))
    with fake_kube_api([], workdir) as kubeconfig:
        env = {**helm.env, "KUBECONFIG": str(kubeconfig), "HELM_DRIVER": "memory",
               "HELM_MEMORY_DRIVER_DATA": str(store)}
        proc = subprocess.run(
            [str(HELM), "upgrade", RELEASE, str(chart), "--namespace", NAMESPACE,
             "--output", "json", *args],
            env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    text = "\n---\n".join([result["manifest"], *(h["manifest"] for h in result.get("hooks", []))])
    return [m for m in yaml.safe_load_all(text) if m], result["info"]["notes"]


def console_pod(manifests: list[Manifest]) -> dict[str, Any]:
    (spec,) = [spec for name, spec in pod_specs(manifests)
               if name == f"Deployment/{RELEASE}-console"]
    return spec


def sorted_without_random_data(manifests: list[Manifest]) -> list[str]:
    return sorted(json.dumps(m, sort_keys=True) for m in without_random_data(manifests))


@pytest.mark.parametrize("user", ["defaults", "console"])
def test_the_copy_renders_what_helm_upgrade_reuse_values_renders(
    helm: Helm, earlier_chart: Path, user: str, tmp_path: Path
) -> None:
    """The release upgraded is installed from the copy: for --reuse-values only its values
    count, which are the earlier chart's."""
    user_values = helm.values_file(USER_VALUES[user])
    release = release_of(helm, earlier_chart, user_values)
    upgraded_manifests, upgraded_notes = upgraded(helm, release, CHART, tmp_path, "--reuse-values")
    copy_manifests, copy_notes = render(helm, earlier_chart, user_values)
    assert (sorted_without_random_data(upgraded_manifests)
            == sorted_without_random_data(copy_manifests))
    assert upgraded_notes.strip() == copy_notes.strip()


def nulled_values_removed(manifests: list[Manifest], limits_nulled: bool = True) -> None:
    """As the chart rendered them before agentpool.withDefaults: no runAsUser (and no limits);
    null, which --reuse-values renders, is none to the API server."""
    pod = console_pod(manifests)
    (container,) = pod["containers"]
    assert pod["securityContext"].get("runAsUser") is None
    assert container["securityContext"].get("runAsUser") is None
    assert (container["resources"].get("limits") is None) == limits_nulled


def test_a_value_set_to_null_stays_removed_on_install(helm: Helm) -> None:
    nulled_values_removed(render(helm, CHART, helm.values_file(NULLED))[0])


@pytest.mark.parametrize("how", ["--reset-then-reuse-values", "--values", "--reuse-values"])
def test_a_value_set_to_null_stays_removed_on_upgrades(
    helm: Helm, how: str, tmp_path: Path
) -> None:
    """Whenever the values are this chart's own: --reset-then-reuse-values or a plain upgrade of
    a release of an earlier chart, --reuse-values of a release of this chart (whose schema
    check fails on a null `limits`: Helm keeps the null of a key its reused values lack)."""
    if how == "--reuse-values":
        release = release_of(helm, CHART, helm.values_file(NULLED_RUN_AS_USER))
        manifests, _ = upgraded(helm, release, CHART, tmp_path, how)
        nulled_values_removed(manifests, limits_nulled=False)
        return
    nulled = helm.values_file(NULLED)
    chart = tmp_path / "earlier" / CHART.name
    shutil.copytree(CHART, chart)
    shutil.copyfile(EARLIER[-1], chart / "values.yaml")
    release = release_of(helm, chart, nulled)
    args = [how, nulled] if how == "--values" else [how]
    nulled_values_removed(upgraded(helm, release, CHART, tmp_path, *args)[0])
