"""Every rendered manifest, for every values combination: valid Kubernetes objects, pods that meet
the "restricted" Pod Security Standard, and least-privilege RBAC."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import kubernetes_validate
import pytest
from chart_helpers import (
    COMBINATIONS,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Helm,
    Manifest,
    Rendered,
    pod_specs,
)

# Custom resources kubernetes_validate has no schema for: checked structurally below.
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
KOPF = "kopf.dev/v1"

CLUSTER_SCOPED_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "Namespace",
    "ClusterKopfPeering",
    "PriorityClass",
    "StorageClass",
}
CLUSTER_SCOPED_RESOURCES = {
    "customresourcedefinitions", "namespaces", "clusterkopfpeerings", "nodes",
}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(group: str, resource: str, *verbs: str) -> set[Grant]:
    return {(group, resource, verb) for verb in verbs}


POOL_GRANTS = (
    grants("agentpool.dev", "agentpools", "get", "list", "watch", "patch", "update")
    | grants("agentpool.dev", "agentpools/status", "get", "patch", "update")
    | grants("agentpool.dev", "agentpools/finalizers", "update")
    | grants("apps", "deployments", "get", "list", "watch", "create", "patch", "update", "delete")
    | grants("", "pods", "get", "list", "watch", "delete", "patch")
    | grants("", "events", "create", "patch")
    | grants("policy", "poddisruptionbudgets", "get", "create", "patch", "delete")
)
CRD_GRANTS = grants(
    "apiextensions.k8s.io", "customresourcedefinitions", "get", "list", "watch"
) | grants("", "nodes", "get")
NAMESPACE_GRANTS = grants("", "namespaces", "list", "watch")
CLUSTER_PEERING_GRANTS = grants("kopf.dev", "clusterkopfpeerings", "get", "list", "watch", "patch")
PEERING_GRANTS = grants("kopf.dev", "kopfpeerings", "get", "list", "watch", "patch")
SECRET_GRANTS = grants("", "secrets", "get")
WORKER_SECRET_GRANTS = grants("", "secrets", "create", "patch", "delete")


def test_every_manifest_is_a_valid_kubernetes_object(rendered: Rendered) -> None:
    problems: list[str] = []
    for m in rendered.manifests:
        name = f"{m.get('kind')}/{m.get('metadata', {}).get('name')}"
        if m.get("apiVersion") == PROMETHEUS_OPERATOR:
            problems += [f"{name}: {p}" for p in prometheus_operator_problems(m)]
        elif m.get("apiVersion") == KOPF:
            problems += [f"{name}: {p}" for p in kopf_peering_problems(m)]
        else:
            try:
                kubernetes_validate.validate(m, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{name}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name}: {e.message}")
    assert not problems, "\n".join(problems)


def test_namespaced_objects_name_their_namespace(rendered: Rendered) -> None:
    """So that `helm template | kubectl apply -f -` puts everything where `helm install` would."""
    missing = [
        f"{m['kind']}/{m['metadata']['name']}"
        for m in rendered.manifests
        if m["kind"] not in CLUSTER_SCOPED_KINDS and not m["metadata"].get("namespace")
    ]
    assert not missing


def prometheus_operator_problems(m: Manifest) -> list[str]:
    spec = m.get("spec", {})
    problems = [] if m["metadata"].get("name") else ["no metadata.name"]
    if m["kind"] == "ServiceMonitor":
        if not spec.get("selector") or not spec.get("endpoints"):
            problems.append("needs spec.selector and spec.endpoints")
        endpoints = spec.get("endpoints", [])
        problems += [f"endpoint {e} has no port" for e in endpoints if "port" not in e]
    elif m["kind"] == "PodMonitor":
        if not spec.get("selector") or not spec.get("podMetricsEndpoints"):
            problems.append("needs spec.selector and spec.podMetricsEndpoints")
    elif m["kind"] == "PrometheusRule":
        for group in spec.get("groups") or [None]:
            if not group or not group.get("name") or not group.get("rules"):
                problems.append(f"group {group} needs a name and rules")
                continue
            for rule in group["rules"]:
                named = rule.get("alert") or rule.get("record")
                if not isinstance(rule.get("expr"), str) or not named:
                    problems.append(f"rule {rule} needs expr and alert or record")
    else:
        problems.append("unexpected prometheus-operator kind")
    return problems


def kopf_peering_problems(m: Manifest) -> list[str]:
    if m["kind"] not in {"ClusterKopfPeering", "KopfPeering"}:
        return ["unexpected kopf.dev kind"]
    if (m["kind"] == "KopfPeering") != bool(m["metadata"].get("namespace")):
        return ["KopfPeering is namespaced, ClusterKopfPeering is not"]
    return []


# ---------------------------------------------------------------- Pod Security Standard


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Violations of the "restricted" Pod Security Standard (plus a read-only root filesystem)."""
    problems = []
    pod_sc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']} is of a disallowed type {kinds}")
    containers = pod.get("initContainers", []) + pod["containers"]
    for c in containers:
        sc = c.get("securityContext", {})

        def effective(key: str, sc: dict[str, Any] = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        where = f"container {c['name']}"
        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if not effective("runAsUser"):
            problems.append(f"{where}: runAsUser is not a non-zero uid")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {caps['add']}")
        if (effective("seccompProfile") or {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        if any("hostPort" in p for p in c.get("ports", [])):
            problems.append(f"{where}: uses a hostPort")
    return problems


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: Rendered) -> None:
    pods = dict(pod_specs(rendered.manifests))
    assert pods, "the chart renders no workload"
    problems = [f"{name}: {p}" for name, spec in pods.items() for p in restricted_violations(spec)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_root_pod() -> None:
    root_pod = {"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]}
    assert len(restricted_violations(root_pod)) >= 6


def test_writable_paths_are_volumes(rendered: Rendered) -> None:
    """Read-only root filesystems: /tmp (and Redis' /data) must be mounted volumes."""
    for name, pod in pod_specs(rendered.manifests):
        for c in pod["containers"]:
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}/{c['name']} has no /tmp volume"
            if c["name"] == "redis":
                assert "/data" in mounts


# ---------------------------------------------------------------- RBAC


def rules_of(m: Manifest) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = m.get("rules") or []
    return rules


def test_rbac_has_no_wildcards(rendered: Rendered) -> None:
    for role in rendered.of_kind("Role") + rendered.of_kind("ClusterRole"):
        for rule in rules_of(role):
            for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(key, [])), (
                    f"{role['kind']}/{role['metadata']['name']} has a wildcard in {key}: {rule}"
                )


def test_no_cluster_role_touches_secrets(rendered: Rendered) -> None:
    for role in rendered.of_kind("ClusterRole"):
        for rule in rules_of(role):
            assert "secrets" not in rule.get("resources", []), role["metadata"]["name"]


def operator_grants(rendered: Rendered) -> dict[str, set[Grant]]:
    """What the operator's ServiceAccount may do, by scope: "cluster" or a namespace name."""
    sa = f"{RELEASE}-operator"
    roles = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): rules_of(m)
        for m in rendered.of_kind("Role") + rendered.of_kind("ClusterRole")
    }
    result: dict[str, set[Grant]] = defaultdict(set)
    for binding in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding"):
        subjects = binding.get("subjects", [])
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE
            for s in subjects
        ):
            continue
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        key = (ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])
        assert key in roles, f"{binding['metadata']['name']} refers to a missing {key}"
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else namespace
        for rule in roles[key]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    result[scope] |= {(group, resource, verb) for verb in rule["verbs"]}
    return dict(result)


def expected_grants(values: dict[str, Any]) -> dict[str, set[Grant]]:
    watched: list[str] = values.get("watchNamespaces", [])
    peering = values.get("operator", {}).get("replicas", 1) > 1
    expected: dict[str, set[Grant]] = defaultdict(set)
    if watched:
        expected["cluster"] = set(CRD_GRANTS)
        for namespace in watched:
            expected[namespace] |= POOL_GRANTS | (PEERING_GRANTS if peering else set())
    else:
        expected["cluster"] = (
            POOL_GRANTS
            | CRD_GRANTS
            | NAMESPACE_GRANTS
            | (CLUSTER_PEERING_GRANTS if peering else set())
        )
    per_pool = values.get("operator", {}).get("perPoolCredentials", True)
    for namespace in values.get("secretNamespaces") or [NAMESPACE, *watched]:
        expected[namespace] |= SECRET_GRANTS | (WORKER_SECRET_GRANTS if per_pool else set())
    return dict(expected)


def test_operator_gets_exactly_the_permissions_it_needs(rendered: Rendered) -> None:
    assert operator_grants(rendered) == expected_grants(rendered.values)


@pytest.mark.parametrize(
    "combination", sorted(name for name, v in COMBINATIONS.items() if v.get("watchNamespaces"))
)
def test_namespaced_mode_grants_nothing_namespaced_cluster_wide(
    helm: Helm, combination: str
) -> None:
    for role in helm.render(COMBINATIONS[combination]).of_kind("ClusterRole"):
        for rule in rules_of(role):
            assert set(rule["resources"]) <= CLUSTER_SCOPED_RESOURCES - {"namespaces"}, rule


def test_secret_namespaces_can_be_chosen(helm: Helm) -> None:
    values = {"watchNamespaces": ["team-a"], "secretNamespaces": ["vault"]}
    got = operator_grants(helm.render(values))
    assert {scope for scope, g in got.items() if g & SECRET_GRANTS} == {"vault"}


def test_without_per_pool_credentials_the_operator_only_reads_secrets(helm: Helm) -> None:
    values = {"operator": {"perPoolCredentials": False}}
    got = operator_grants(helm.render(values))
    assert got[NAMESPACE] & (SECRET_GRANTS | WORKER_SECRET_GRANTS) == SECRET_GRANTS
    assert got == expected_grants(values)


def test_rbac_can_be_left_to_the_cluster_admin(helm: Helm) -> None:
    rendered = helm.render({"rbac": {"create": False}})
    kinds = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    assert not [m for m in rendered.manifests if m["kind"] in kinds]


def test_combinations_cover_both_modes() -> None:
    assert any(v.get("watchNamespaces") for v in COMBINATIONS.values())
    assert any(not v.get("watchNamespaces") for v in COMBINATIONS.values())
