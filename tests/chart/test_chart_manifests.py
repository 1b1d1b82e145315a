"""Every rendered manifest, for every values combination: valid Kubernetes objects, pods that meet
the "restricted" Pod Security Standard, and least-privilege RBAC."""

from __future__ import annotations

import inspect
import json
import re
from collections import defaultdict
from typing import Any

import kopf
import kubernetes_validate
import pytest
from chart_helpers import (
    CHART,
    COMBINATIONS,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Helm,
    HelmError,
    Manifest,
    Rendered,
    pod_specs,
)

import agentpool_operator.main  # noqa: F401  (registers the operator's handlers with kopf)
from agentpool_operator.installed_crd import CRD_NAME, InstalledCrd
from agentpool_operator.kube import KubeApi

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

# Why the operator holds each grant, one or more reasons each:
# - "KubeApi.<method>" (or "InstalledCrd.check"): a call of the operator's own
#   (operator/agentpool_operator/kube.py). The tests below drive that method and check that it
#   makes that very request: a grant whose call is gone fails them, as does a call without grant.
# - KOPF_HANDLERS: kopf lists and watches every resource the operator's handlers serve, and
#   patches (finalizers, progress annotations) those of its changing handlers and daemons.
#   Derived below from kopf's registry of the operator's handlers.
# - the other kopf reasons are requests kopf makes on its own: cluster-wide, it follows the CRDs
#   it serves; it posts Events (kopf.info, kopf.warn) and, with peering, follows and patches the
#   peering object (kopf/_core/engines/peering.py). kopf never reads one object by name and never
#   PUTs (kopf/_cogs/clients). Serving a list of namespaces, it would list and watch namespaces
#   and CRDs cluster-wide, which the operator stops by turning kopf's scanning off
#   (kopf_settings in agentpool_operator/main.py; kopf/_core/reactor/observation.py).
# - OWNER_REFERENCES: what the OwnerReferencesPermissionEnforcement admission plugin asks of who
#   sets an owner reference.
KOPF_HANDLERS = "kopf: the operator's handlers"
KOPF_EVENTS = "kopf: posts Events (kopf.info, kopf.warn)"
KOPF_CRDS = "kopf: follows the CRDs it serves (cluster-wide only)"
KOPF_PEERING_WATCH = "kopf: follows the peering object"
KOPF_PEERING_PATCH = "kopf: writes its own entry in the peering object (touch, clean)"
OWNER_REFERENCES = (
    "OwnerReferencesPermissionEnforcement: the pool's Deployment, budget and credential Secrets "
    "carry an owner reference to the pool with blockOwnerDeletion (needs update on the pool's "
    "finalizers), and only who may delete an object may set its owner references"
)
DOCUMENTED_REASONS = {
    KOPF_EVENTS, KOPF_CRDS, KOPF_PEERING_WATCH, KOPF_PEERING_PATCH, OWNER_REFERENCES,
}
POOL_GRANT_REASONS: dict[Grant, tuple[str, ...]] = {
    ("agentpool.dev", "agentpools", "list"): (KOPF_HANDLERS,),
    ("agentpool.dev", "agentpools", "watch"): (KOPF_HANDLERS,),
    ("agentpool.dev", "agentpools", "patch"): ("KubeApi.patch_pool", KOPF_HANDLERS),
    ("agentpool.dev", "agentpools/status", "patch"): ("KubeApi.patch_pool_status",),
    ("agentpool.dev", "agentpools/finalizers", "update"): (OWNER_REFERENCES,),
    ("apps", "deployments", "get"): ("KubeApi.get_deployment",),
    ("apps", "deployments", "list"): (KOPF_HANDLERS,),
    ("apps", "deployments", "watch"): (KOPF_HANDLERS,),
    ("apps", "deployments", "create"): ("KubeApi.create_deployment",),
    ("apps", "deployments", "patch"): ("KubeApi.patch_deployment",),
    ("apps", "deployments", "delete"): (OWNER_REFERENCES,),
    ("", "pods", "get"): ("KubeApi.get_pod",),
    ("", "pods", "list"): ("KubeApi.list_pods", KOPF_HANDLERS),
    ("", "pods", "watch"): (KOPF_HANDLERS,),
    ("", "pods", "patch"): ("KubeApi.patch_pod",),
    ("", "pods", "delete"): ("KubeApi.delete_pod",),
    ("", "events", "create"): (KOPF_EVENTS,),
    ("policy", "poddisruptionbudgets", "get"): ("KubeApi.get_budget",),
    ("policy", "poddisruptionbudgets", "create"): ("KubeApi.create_budget",),
    ("policy", "poddisruptionbudgets", "patch"): ("KubeApi.patch_budget",),
    ("policy", "poddisruptionbudgets", "delete"): ("KubeApi.delete_budget",),
}
CRD_GRANT_REASONS: dict[Grant, tuple[str, ...]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"): ("InstalledCrd.check",),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): (KOPF_CRDS,),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): (KOPF_CRDS,),
    ("", "nodes", "get"): ("KubeApi.get_node",),
}
PEERING_GRANT_REASONS: dict[Grant, tuple[str, ...]] = {
    ("kopf.dev", resource, verb): (reason,)
    for resource in ("clusterkopfpeerings", "kopfpeerings")
    for verb, reason in (
        ("list", KOPF_PEERING_WATCH), ("watch", KOPF_PEERING_WATCH), ("patch", KOPF_PEERING_PATCH),
    )
}
SECRET_GRANT_REASONS: dict[Grant, tuple[str, ...]] = {
    ("", "secrets", "get"): ("KubeApi.get_secret",),
}
WORKER_SECRET_GRANT_REASONS: dict[Grant, tuple[str, ...]] = {
    ("", "secrets", "create"): ("KubeApi.create_secret",),
    ("", "secrets", "patch"): ("KubeApi.patch_secret",),
    ("", "secrets", "delete"): ("KubeApi.delete_secret", OWNER_REFERENCES),
}
GRANT_REASONS = (
    POOL_GRANT_REASONS | CRD_GRANT_REASONS | PEERING_GRANT_REASONS | SECRET_GRANT_REASONS
    | WORKER_SECRET_GRANT_REASONS
)
POOL_GRANTS = set(POOL_GRANT_REASONS)
CRD_GRANTS = set(CRD_GRANT_REASONS)
NAMESPACED_CRD_GRANTS = {g for g, reasons in CRD_GRANT_REASONS.items() if KOPF_CRDS not in reasons}
CLUSTER_PEERING_GRANTS = {g for g in PEERING_GRANT_REASONS if g[1] == "clusterkopfpeerings"}
PEERING_GRANTS = {g for g in PEERING_GRANT_REASONS if g[1] == "kopfpeerings"}
SECRET_GRANTS = set(SECRET_GRANT_REASONS)
WORKER_SECRET_GRANTS = set(WORKER_SECRET_GRANT_REASONS)


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


# ---------------------------------------------------------------- names

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# The longest name each kind takes, where it is not a DNS subdomain's 253 (kubernetes_validate
# checks no length). StatefulSet: its pods carry the label controller-revision-hash, the name
# plus 11 characters, which must fit a label value's 63. CronJob: its Jobs' names add 11.
NAME_LIMITS: dict[str, tuple[re.Pattern[str], int]] = {
    "Service": (DNS_1035_LABEL, 63),
    "Namespace": (DNS_LABEL, 63),
    "StatefulSet": (DNS_LABEL, 52),
    "CronJob": (DNS_LABEL, 52),
    "Job": (DNS_LABEL, 63),
}
LONGEST_RELEASE = "r" * 53  # Helm refuses longer release names
LONGEST_NAMESPACE = "n" * 63
LONGEST_FULLNAME = "f" * json.loads((CHART / "values.schema.json").read_text())[
    "properties"]["fullnameOverride"]["maxLength"]
EVERYTHING_ON: dict[str, Any] = {
    "operator": {"replicas": 2},
    "console": {"enabled": True, "writeActions": {"enabled": True}},
    "networkPolicy": {"enabled": True},
    "monitoring": {
        "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True},
    },
}


def name_problems(m: Manifest) -> list[str]:
    name = m["metadata"]["name"]
    pattern, limit = NAME_LIMITS.get(m["kind"], (DNS_SUBDOMAIN, 253))
    where = f"{m['kind']}/{name}"
    problems = [] if pattern.match(name) else [f"{where}: not a valid {m['kind']} name"]
    if len(name) > limit:
        problems.append(f"{where}: {len(name)} characters, more than {limit}")
    templates = [m.get("spec", {}).get("template", {}).get("metadata", {})]
    for meta in [m["metadata"], *templates]:
        for key, value in (meta.get("labels") or {}).items():
            if len(str(value)) > 63 or not LABEL_VALUE.match(str(value)):
                problems.append(f"{where}: label {key}={value} is not a valid label value")
    return problems


@pytest.mark.parametrize("values", [
    {},
    {"fullnameOverride": LONGEST_FULLNAME},
    {"watchNamespaces": [LONGEST_NAMESPACE]},
    {"fullnameOverride": LONGEST_FULLNAME, "watchNamespaces": [LONGEST_NAMESPACE]},
], ids=["release", "fullnameOverride", "release-namespaced", "fullnameOverride-namespaced"])
def test_every_name_fits_its_kind_with_the_longest_names(
    helm: Helm, values: dict[str, Any]
) -> None:
    rendered = helm.render(EVERYTHING_ON | values, release=LONGEST_RELEASE,
                           namespace=LONGEST_NAMESPACE)
    kinds = {m["kind"] for m in rendered.manifests}
    assert {"Service", "StatefulSet", "Deployment", "ClusterRole"} <= kinds
    problems = [p for m in rendered.manifests for p in name_problems(m)]
    assert not problems, "\n".join(problems)
    names = [(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"])
             for m in rendered.manifests]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


def test_the_name_check_catches_a_redis_statefulset_too_long_for_its_pods() -> None:
    sts = {"kind": "StatefulSet", "metadata": {"name": "a" * 47 + "-redis"}}
    assert name_problems(sts) == [f"StatefulSet/{'a' * 47}-redis: 53 characters, more than 52"]


def test_release_names_that_make_no_service_name_are_refused(helm: Helm) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template({}, release="1st")
    assert 'the name prefix "1st" must start with a letter' in failure.value.stderr
    dotted = helm.render({}, release="team.a")
    assert {s["metadata"]["name"] for s in dotted.of_kind("Service")} >= {"team-a-operator"}


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
        expected["cluster"] = set(NAMESPACED_CRD_GRANTS)
        for namespace in watched:
            expected[namespace] |= POOL_GRANTS | (PEERING_GRANTS if peering else set())
    else:
        expected["cluster"] = (
            POOL_GRANTS | CRD_GRANTS | (CLUSTER_PEERING_GRANTS if peering else set())
        )
    per_pool = values.get("operator", {}).get("perPoolCredentials", True)
    for namespace in values.get("secretNamespaces") or [NAMESPACE, *watched]:
        expected[namespace] |= SECRET_GRANTS | (WORKER_SECRET_GRANTS if per_pool else set())
    return dict(expected)


def test_operator_gets_exactly_the_permissions_it_needs(rendered: Rendered) -> None:
    assert operator_grants(rendered) == expected_grants(rendered.values)


def grant_of(method: str, url: str) -> Grant:
    """The grant a request needs: /api/v1/... or /apis/<group>/<version>/..., by HTTP method."""
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource, named = "/".join([rest[0], *rest[2:3]]), len(rest) > 1
    if method == "GET":
        verb = "get" if named else "watch" if "watch=" in query else "list"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if named else "deletecollection"}[method]
    return group, resource, verb


def test_grant_of_reads_requests_as_the_api_server_does() -> None:
    assert grant_of("GET", "/api/v1/namespaces/a/pods?labelSelector=x") == ("", "pods", "list")
    assert grant_of("GET", "/api/v1/nodes/n1") == ("", "nodes", "get")
    assert grant_of("PATCH", "/apis/agentpool.dev/v1alpha1/namespaces/a/agentpools/p/status") == (
        "agentpool.dev", "agentpools/status", "patch")
    assert grant_of("GET", "/apis/apps/v1/deployments?watch=true") == ("apps", "deployments",
                                                                         "watch")
    assert grant_of("PUT", "/api/v1/namespaces/a") == ("", "namespaces", "update")


class RecordingKube(KubeApi):
    """The operator's KubeApi with every request recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(api_client=None)
        self.requests: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        self.requests.append((method, path))
        return {}


CALL = re.compile(r"^(KubeApi\.\w+|InstalledCrd\.check)$")
ARGUMENTS: dict[str, Any] = {
    "namespace": "team-a", "name": "demo", "labels": {"agentpool.dev/pool": "demo"},
    "body": {}, "patch": {}, "status": {},
}


def operator_calls() -> list[str]:
    """Every KubeApi method for one kind of request (not the generic request and get), and the
    operator's one use of the generic get."""
    methods = inspect.getmembers(KubeApi, inspect.iscoroutinefunction)
    return [f"KubeApi.{name}" for name, _ in methods if name not in {"request", "get"}] + [
        "InstalledCrd.check"
    ]


async def grants_of_call(call: str) -> set[Grant]:
    kube = RecordingKube()
    if call == "InstalledCrd.check":
        await InstalledCrd().check(kube, now=0.0)
    else:
        method = getattr(kube, call.removeprefix("KubeApi."))
        required = [p.name for p in inspect.signature(method).parameters.values()
                    if p.default is inspect.Parameter.empty]
        await method(*(ARGUMENTS[name] for name in required))
    assert kube.requests, f"{call} made no request"
    return {grant_of(method, path) for method, path in kube.requests}


def kopf_handler_grants() -> set[Grant]:
    """What kopf needs for the handlers the operator registers (agentpool_operator.main)."""
    registry = kopf.get_default_registry()
    needed: set[Grant] = set()
    for handlers, patches in (
        (registry._indexing, False), (registry._watching, False),
        (registry._spawning, True), (registry._changing, True),
    ):
        for handler in handlers.get_all_handlers():
            selector = handler.selector
            assert selector is not None
            group = "" if selector.group in (None, "v1") else selector.group
            resource = selector.plural or selector.any_name
            needed |= {(group, resource, "list"), (group, resource, "watch")}
            if patches:
                needed.add((group, resource, "patch"))
    return needed


@pytest.mark.parametrize("call", operator_calls())
async def test_every_request_of_the_operator_is_granted(call: str) -> None:
    for grant in await grants_of_call(call):
        assert grant in GRANT_REASONS, (
            f"{call} needs {grant}: grant it in templates/_rbac.tpl and give the reason here"
        )
        assert call in GRANT_REASONS[grant], (
            f"{grant} does not name {call} among its reasons"
        )


def test_kopf_gets_what_the_operators_handlers_need() -> None:
    needed = kopf_handler_grants()
    assert needed, "no handler registered: agentpool_operator.main not imported?"
    for grant in needed:
        assert KOPF_HANDLERS in GRANT_REASONS.get(grant, ()), f"kopf needs {grant}"
    for grant, reasons in GRANT_REASONS.items():
        if KOPF_HANDLERS in reasons:
            assert grant in needed, f"no handler of the operator needs {grant}"


@pytest.mark.parametrize(
    ("grant", "call"),
    [(g, r) for g, reasons in GRANT_REASONS.items() for r in reasons if CALL.match(r)],
    ids=str,
)
async def test_every_grant_for_a_call_is_what_that_call_requests(grant: Grant, call: str) -> None:
    assert grant in await grants_of_call(call), f"{call} never needs {grant}: remove the grant"


def test_every_grant_has_a_known_reason() -> None:
    for grant, reasons in GRANT_REASONS.items():
        assert reasons, grant
        for reason in reasons:
            assert CALL.match(reason) or reason in DOCUMENTED_REASONS | {KOPF_HANDLERS}, (
                grant, reason)


@pytest.mark.parametrize(
    "combination", sorted(name for name, v in COMBINATIONS.items() if v.get("watchNamespaces"))
)
def test_namespaced_mode_grants_nothing_namespaced_cluster_wide(
    helm: Helm, combination: str
) -> None:
    for role in helm.render(COMBINATIONS[combination]).of_kind("ClusterRole"):
        for rule in rules_of(role):
            assert set(rule["resources"]) <= CLUSTER_SCOPED_RESOURCES - {"namespaces"}, rule


@pytest.mark.parametrize(
    "combination", sorted(name for name, v in COMBINATIONS.items() if v.get("watchNamespaces"))
)
def test_namespaced_mode_reads_the_agentpool_crd_alone(helm: Helm, combination: str) -> None:
    crd_rules = [rule for role in helm.render(COMBINATIONS[combination]).of_kind("ClusterRole")
                 for rule in rules_of(role) if "customresourcedefinitions" in rule["resources"]]
    assert crd_rules and all(rule.get("resourceNames") == [CRD_NAME] for rule in crd_rules)


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
