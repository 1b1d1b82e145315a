"""The chart as a user meets it: lint, values checked by values.schema.json with readable
messages, NOTES.txt, and the CRD shipped in step with crds/."""

from __future__ import annotations

import json
import os
import re
import typing
from typing import Any

import annotated_types
import pytest
import yaml
from chart_helpers import CHART, COMBINATIONS, NAMESPACE, RELEASE, ROOT, Helm, HelmError

from agentpool_operator.settings import ENV_PREFIX, OperatorSettings

CRD_NAME = "agentpool.dev_agentpools.yaml"


def test_chart_crd_is_a_copy_of_the_generated_crd() -> None:
    source = ROOT / "crds" / CRD_NAME
    copy = CHART / "crds" / CRD_NAME
    assert copy.is_file() and copy.read_bytes() == source.read_bytes(), (
        f"charts/agentpool-operator/crds/{CRD_NAME} differs from crds/{CRD_NAME}: run `make crds`"
    )


def test_chart_installs_the_agentpool_crd(helm: Helm) -> None:
    crds = helm.render({}).of_kind("CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in crds] == ["agentpools.agentpool.dev"]


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_helm_lint_is_clean(helm: Helm, combination: str) -> None:
    out = helm.run(
        "lint",
        "--strict",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--values",
        helm.values_file(COMBINATIONS[combination]),
    )
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


BAD_VALUES: list[tuple[dict[str, Any], list[str]]] = [
    ({"operator": {"replicas": -1}}, ["/operator/replicas", "minimum"]),
    ({"operator": {"replicas": "2"}}, ["/operator/replicas", "want integer"]),
    ({"redis": {"enabled": "yes"}}, ["/redis/enabled", "want boolean"]),
    ({"redis": {"enabeld": False}}, ["/redis", "'enabeld' not allowed"]),
    ({"operator": {"logLevel": "verbose"}}, ["/operator/logLevel", "'info'"]),
    ({"watchNamespaces": ["Team_A"]}, ["/watchNamespaces/0"]),
    ({"watchNamespaces": "team-a"}, ["/watchNamespaces", "want array"]),
    ({"redis": {"enabled": False, "external": {"url": "http://redis:6379"}}},
     ["redis.external.mode=standalone takes a URL starting with redis:// or rediss://"]),
    ({"redis": {"persistence": {"size": "lots"}}}, ["/redis/persistence/size"]),
    ({"redis": {"persistence": {"size": "8g"}}}, ["/redis/persistence/size"]),
    ({"redis": {"external": {"mode": "replicated"}}}, ["/redis/external/mode"]),
    ({"redis": {"enabled": False, "external": {"mode": "sentinel", "url": "sentinel://s1/m"}}},
     ["redis.external.mode=sentinel takes a URL starting with redis+sentinel://"]),
    ({"monitoring": {"serviceMonitor": {"enabled": 1}}}, ["/monitoring/serviceMonitor/enabled"]),
    # Keys no template reads, refused rather than ignored:
    ({"monitoring": {"serviceMonitor": {"enabled": True, "namespace": "monitoring"}}},
     ["/monitoring/serviceMonitor", "'namespace' not allowed"]),
    ({"monitoring": {"podMonitor": {"enabled": True, "namespace": "monitoring"}}},
     ["/monitoring/podMonitor", "'namespace' not allowed"]),
    ({"monitoring": {"grafanaDashboard": {"enabled": True, "interval": "1m"}}},
     ["/monitoring/grafanaDashboard", "'interval' not allowed"]),
    ({"worker": {"image": {"repository": "w", "pullPolicy": "Always"}}},
     ["/worker/image", "'pullPolicy' not allowed"]),
    # Rules across values, checked by the templates:
    ({"redis": {"external": {"url": "redis://r:6379/0"}}}, ["need redis.enabled=false"]),
    ({"redis": {"enabled": False}}, ["needs redis.external.url or redis.external.existingSecret"]),
    (
        {"redis": {"enabled": False, "external": {"url": "redis://r:6379", "existingSecret": "s"}}},
        ["only one of redis.external.url and redis.external.existingSecret"],
    ),
    (
        {"redis": {"external": {"mode": "cluster"}}},
        ["redis.external.mode=cluster needs redis.enabled=false"],
    ),
    (
        {"redis": {"enabled": False,
                   "external": {"mode": "sentinel", "url": "redis://r:6379/0"}}},
        ["redis.external.mode=sentinel takes a URL starting with redis+sentinel:// or "
         "rediss+sentinel://"],
    ),
    (
        {"redis": {"enabled": False,
                   "external": {"url": "redis+sentinel://s1:26379/mymaster"}}},
        ["redis.external.mode=standalone takes a URL starting with redis:// or rediss://"],
    ),
    (
        {"redis": {"enabled": False,
                   "external": {"mode": "cluster", "url": "rediss+sentinel://s1/m"}}},
        ["redis.external.mode=cluster takes a URL starting with redis+cluster://"],
    ),
    (
        {
            "networkPolicy": {"enabled": True},
            "redis": {"enabled": False, "external": {"url": "redis://r"}},
        },
        ["networkPolicy.enabled protects the bundled Redis"],
    ),
    ({"operator": {"statusRefreshSeconds": 3601}}, ["/operator/statusRefreshSeconds", "maximum"]),
    ({"fullnameOverride": "f" * 47}, ["/fullnameOverride", "maxLength"]),
    # Set by the chart: one above the chart's would have a release's upgrade skip keys it lacks.
    ({"valuesVersion": 4}, ["/valuesVersion", "maximum"]),
    ({"fullnameOverride": "1st"}, ["/fullnameOverride", "does not match pattern"]),
    (
        {"operator": {"extraVolumes": [{"name": "docker", "hostPath": {"path": "/run"}}]}},
        ["/operator/extraVolumes/0", "'hostPath' not allowed"],
    ),
    (
        {"console": {"extraVolumes": [{"name": "x", "secret": {}, "emptyDir": {}}]}},
        ["/console/extraVolumes/0", "maxProperties"],
    ),
    (
        {"serviceAccount": {"create": False}},
        ["serviceAccount.create=false needs serviceAccount.name"],
    ),
    # A NetworkPolicyPeer that is empty or has a misspelt key: refused here, not by the API server.
    ({"console": {"networkPolicy": {"from": [{}]}}},
     ["/console/networkPolicy/from/0", "minProperties"]),
    ({"console": {"networkPolicy": {"from": [{"podSelecter": {}}]}}},
     ["/console/networkPolicy/from/0", "'podSelecter' not allowed"]),
]

PASSWORD = "hunter2"
# A URL of the wrong scheme is refused by the templates (`agentpool.validate`), which name the
# problem, not the URL: a schema pattern would echo the URL, password and all.
BAD_URLS: list[tuple[dict[str, Any], str]] = [
    ({"redis": {"enabled": False, "external": {"url": f"http://:{PASSWORD}@r.example:6379/0"}}},
     "redis.external.mode=standalone takes a URL starting with redis:// or rediss://"),
    ({"redis": {"enabled": False, "external": {
        "mode": "sentinel", "url": f"redis://:{PASSWORD}@r.example:6379/0"}}},
     "redis.external.mode=sentinel takes a URL starting with redis+sentinel://"),
    ({"redis": {"external": {"url": f"http://:{PASSWORD}@r.example:6379/0"}}},
     "need redis.enabled=false"),
    ({"redis": {"enabled": False, "external": {"url": f"redis://:{PASSWORD}@"}}},
     "redis.external.url names no host"),
    ({"redis": {"enabled": False, "external": {"url": f"redis://:{PASSWORD}@:6379/0"}}},
     "redis.external.url names no host"),
]


@pytest.mark.parametrize(("values", "expected"), BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_bad_values_fail_with_a_readable_message(
    helm: Helm, values: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(values)
    message = failure.value.stderr
    for part in expected:
        assert part in message, message
    assert len(message.splitlines()) <= 6, f"not a short message:\n{message}"


@pytest.mark.parametrize(("values", "expected"), BAD_URLS,
                         ids=["standalone", "sentinel", "bundled", "no-host", "port-only"])
def test_a_bad_redis_url_is_refused_without_its_password(
    helm: Helm, values: dict[str, Any], expected: str
) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(values)
    message = failure.value.stderr
    assert expected in message, message
    assert PASSWORD not in message, message
    assert len([line for line in message.splitlines() if line.strip()]) <= 2, message


def test_an_existing_service_account_gets_the_operators_rights(helm: Helm) -> None:
    rendered = helm.render({"serviceAccount": {"create": False, "name": "ops"}})
    assert not rendered.of_kind("ServiceAccount")
    subjects = [s for b in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding")
                for s in b["subjects"]]
    assert subjects and {s["name"] for s in subjects} == {"ops"}


# ---------------------------------------------------------------- the operator's settings

# Values the chart hands the operator as environment variables (templates/operator-deployment.yaml),
# by the variable; the operator's settings (agentpool_operator.settings) must take every value
# values.schema.json lets through, or the operator refuses to start and crash-loops.
SETTING_VALUES: dict[str, tuple[str, ...]] = {
    "AGENTPOOL_OPERATOR_NAMESPACES": ("watchNamespaces",),
    "AGENTPOOL_OPERATOR_PEERING": ("operator", "peering", "name"),
    "AGENTPOOL_OPERATOR_PORT": ("operator", "port"),
    "AGENTPOOL_OPERATOR_LOG_LEVEL": ("operator", "logLevel"),
    "AGENTPOOL_OPERATOR_STATUS_REFRESH_SECONDS": ("operator", "statusRefreshSeconds"),
    "AGENTPOOL_OPERATOR_PER_POOL_CREDENTIALS": ("operator", "perPoolCredentials"),
}
# Settings the chart derives from its own objects rather than from one value.
DERIVED_SETTINGS = {"AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS"}


def schema_of(path: tuple[str, ...]) -> dict[str, Any]:
    node = json.loads((CHART / "values.schema.json").read_text())
    for key in path:
        node = node["properties"][key]
    return node  # type: ignore[no-any-return]


def field_of(env: str) -> Any:
    return OperatorSettings.model_fields[env.removeprefix(ENV_PREFIX).lower()]


def bounds(constraints: list[Any]) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """(lower, upper) of annotated_types-style constraints, each (value, inclusive) or None."""
    lower = upper = None
    for c in constraints:
        if isinstance(c, annotated_types.Ge):
            lower = (float(c.ge), True)
        elif isinstance(c, annotated_types.Gt):
            lower = (float(c.gt), False)
        elif isinstance(c, annotated_types.Le):
            upper = (float(c.le), True)
        elif isinstance(c, annotated_types.Lt):
            upper = (float(c.lt), False)
    return lower, upper


def within(ours: tuple[float, bool], theirs: tuple[float, bool], side: str) -> bool:
    """Whether a bound (value, inclusive) lets through no value beyond another."""
    if ours[0] != theirs[0]:
        return ours[0] > theirs[0] if side == "lower" else ours[0] < theirs[0]
    return theirs[1] or not ours[1]


def schema_bounds(schema: dict[str, Any]) -> list[Any]:
    found: list[Any] = []
    for key, kind in (("minimum", annotated_types.Ge), ("exclusiveMinimum", annotated_types.Gt),
                      ("maximum", annotated_types.Le), ("exclusiveMaximum", annotated_types.Lt)):
        if key in schema:
            found.append(kind(schema[key]))
    return found


def test_every_operator_setting_the_chart_passes_is_mapped_to_its_value(helm: Helm) -> None:
    for values in ({}, {"operator": {"replicas": 2}, "watchNamespaces": ["team-a"]}):
        deployment = helm.render(values).one("Deployment", f"{RELEASE}-operator")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        passed = {e["name"] for e in container["env"] if e["name"].startswith(ENV_PREFIX)}
        assert passed == set(SETTING_VALUES) | DERIVED_SETTINGS
    for env in (*SETTING_VALUES, *DERIVED_SETTINGS):
        assert field_of(env) is not None


@pytest.mark.parametrize("env", sorted(SETTING_VALUES))
def test_the_schema_accepts_no_value_the_operator_refuses(env: str) -> None:
    field, schema = field_of(env), schema_of(SETTING_VALUES[env])
    (op_lower, op_upper), (lower, upper) = bounds(field.metadata), bounds(schema_bounds(schema))
    where = f"{'.'.join(SETTING_VALUES[env])} ({env})"
    for side, ours, theirs in (("lower", lower, op_lower), ("upper", upper, op_upper)):
        if theirs is not None:
            assert ours is not None, f"{where}: no {side} bound, the operator's is {theirs}"
            assert within(ours, theirs, side), (
                f"{where}: {side} bound {ours} is outside the operator's {theirs}")
    if typing.get_origin(field.annotation) is typing.Literal:
        assert set(schema["enum"]) <= set(typing.get_args(field.annotation)), where


def edge(schema: dict[str, Any], side: str) -> Any:
    """The schema's most extreme accepted value on one side (None: unbounded there)."""
    step = 1 if schema.get("type") == "integer" else 0.001
    if side == "upper":
        if "maximum" in schema:
            return schema["maximum"]
        return schema["exclusiveMaximum"] - step if "exclusiveMaximum" in schema else None
    if "minimum" in schema:
        return schema["minimum"]
    return schema["exclusiveMinimum"] + step if "exclusiveMinimum" in schema else None


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_the_operator_starts_with_the_schemas_extreme_values(
    helm: Helm, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    values: dict[str, Any] = {"operator": {"replicas": 2, "peering": {"name": "p" * 63}},
                              "watchNamespaces": ["n" * 63, "team-a"]}
    for path in SETTING_VALUES.values():
        value = edge(schema_of(path), side)
        if value is not None:
            node = values
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    deployment = helm.render(values).one("Deployment", f"{RELEASE}-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for e in container["env"]:
        if e["name"].startswith(ENV_PREFIX):
            monkeypatch.setenv(e["name"], e["value"])
    OperatorSettings()  # raises ValidationError on a value the operator refuses


def test_notes_tell_the_next_three_commands(helm: Helm) -> None:
    notes = helm.notes({})
    steps = [
        f"examples/agentpool.yaml \\\n         | kubectl apply -n {NAMESPACE} -f -",
        "agentpool submit --queue demo",
        f"kubectl get agentpools -n {NAMESPACE}",
    ]
    positions = [notes.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), notes
    assert f"port-forward svc/{NAMESPACE}-redis 6379:6379" in notes
    assert "agentpool-redis" in notes


def test_the_notes_example_pool_runs_the_worker_image_the_chart_names(helm: Helm) -> None:
    """examples/agentpool.yaml names an image nobody has pushed: the step swaps in the one
    the chart was told of (worker.image)."""
    example = (ROOT / "examples" / "agentpool.yaml").read_text()
    assert re.search(r"image: ghcr.io/agentpool/worker:\S+\n", example)
    notes = helm.notes({"worker": {"image": {"repository": "reg.example/agentpool-worker",
                                             "tag": "1.2"}}})
    assert ("sed -e 's|image: ghcr.io/agentpool/worker:.*|image: "
            "reg.example/agentpool-worker:1.2|'") in notes
    swapped = re.sub(r"image: ghcr.io/agentpool/worker:.*", "image: reg.example/w:1", example)
    assert yaml.safe_load(swapped)["spec"]["worker"]["image"] == "reg.example/w:1"


def test_notes_tell_how_to_upgrade_the_crd(helm: Helm) -> None:
    """Helm never upgrades crds/: the one step of an upgrade that Helm leaves to the user."""
    notes = helm.notes({})
    assert "kubectl apply -f charts/agentpool-operator/crds/" in notes
    assert "CRDOutdated" in notes


@pytest.mark.parametrize(("mode", "says"), [
    ("standalone", "Redis: external, one server."),
    ("sentinel", "follow a failover without a restart"),
    ("cluster", "Redis: external, Redis Cluster."),
])
def test_notes_name_the_external_redis_mode(helm: Helm, mode: str, says: str) -> None:
    notes = helm.notes({"redis": {"enabled": False,
                                  "external": {"mode": mode, "existingSecret": "my-redis"}}})
    assert says in notes, notes
    if mode == "sentinel":
        assert "spec.redis.durability: replicated" in notes


def test_notes_for_an_external_redis_and_watched_namespaces(helm: Helm) -> None:
    notes = helm.notes(
        {
            "watchNamespaces": ["team-a"],
            "redis": {"enabled": False, "external": {"existingSecret": "my-redis"}},
        }
    )
    assert "watching team-a" in notes
    assert "port-forward" not in notes
    assert "kubectl -n team-a create secret generic my-redis" in notes
    # examples/agentpool.yaml names the Secret agentpool-redis: the command renames it.
    assert ("-e 's/name: agentpool-redis$/name: my-redis/' examples/agentpool.yaml \\\n"
            "         | kubectl apply -n team-a -f -") in notes
    assert "kubectl get agentpools -n team-a" in notes


def test_the_notes_example_pool_names_the_secret_the_chart_uses(helm: Helm) -> None:
    example = (ROOT / "examples" / "agentpool.yaml").read_text()
    assert "name: agentpool-redis\n" in example  # what the NOTES' sed command rewrites
    notes = helm.notes({"redis": {"urlSecretName": "queue-url"}})
    assert "-e 's/name: agentpool-redis$/name: queue-url/' examples/agentpool.yaml" in notes
    assert "-f examples/agentpool.yaml\n" not in notes
    renamed = re.sub(r"name: agentpool-redis$", "name: queue-url", example, flags=re.M)
    assert yaml.safe_load(renamed)["spec"]["redis"]["urlSecretRef"]["name"] == "queue-url"


@pytest.mark.parametrize(("values", "readable"), [
    ({}, "agentpool"),
    ({"watchNamespaces": ["team-a"]}, "agentpool, team-a"),
    ({"secretNamespaces": ["vault", "agentpool"]}, "vault, agentpool"),
])
def test_notes_say_where_pools_may_read_their_secret(
    helm: Helm, values: dict[str, Any], readable: str
) -> None:
    """Cluster-wide too: the Secrets Role is only bound in secretNamespaces."""
    notes = " ".join(helm.notes(values).split())
    assert "reads Secrets only in secretNamespaces" in notes
    assert f": {readable}." in notes
    assert ("A pool in any other namespace needs a copy of the Secret there and its namespace "
            "added to secretNamespaces") in notes
    assert "SecretForbidden" in notes
