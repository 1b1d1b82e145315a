"""The chart as a user meets it: lint, values checked by values.schema.json with readable
messages, NOTES.txt, and the CRD shipped in step with crds/."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import CHART, COMBINATIONS, NAMESPACE, ROOT, Helm, HelmError

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
    ({"redis": {"external": {"url": "http://redis:6379"}}}, ["/redis/external/url"]),
    ({"redis": {"persistence": {"size": "lots"}}}, ["/redis/persistence/size"]),
    ({"redis": {"external": {"mode": "replicated"}}}, ["/redis/external/mode"]),
    ({"redis": {"external": {"url": "sentinel://s1:26379/m"}}}, ["/redis/external/url"]),
    ({"monitoring": {"serviceMonitor": {"enabled": 1}}}, ["/monitoring/serviceMonitor/enabled"]),
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


def test_notes_tell_the_next_three_commands(helm: Helm) -> None:
    notes = helm.notes({})
    steps = [
        f"kubectl apply -n {NAMESPACE} -f examples/agentpool.yaml",
        "agentpool submit --queue demo",
        f"kubectl get agentpools -n {NAMESPACE}",
    ]
    positions = [notes.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), notes
    assert f"port-forward svc/{NAMESPACE}-redis 6379:6379" in notes
    assert "agentpool-redis" in notes


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
    assert "kubectl apply -n team-a -f examples/agentpool.yaml" in notes
    assert "kubectl get agentpools -n team-a" in notes
