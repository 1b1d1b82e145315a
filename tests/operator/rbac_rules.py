"""Kubernetes RBAC as the API server applies it, for the rendered chart's manifests: what a
ServiceAccount is granted (rules → grants) and what one request needs (request → need).

Enough for the chart's Roles and ClusterRoles: rules on resources (with resourceNames and the
"*" wildcard), bound by RoleBindings and ClusterRoleBindings. Non-resource URLs (discovery,
/version) are open to every authenticated user (system:discovery), so requests for them need
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

READ_VERBS = {"GET": "get", "HEAD": "get"}
WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
NAMESPACE_SUBRESOURCES = {"status", "finalize"}
"""/api/v1/namespaces/<name>/<these> are subresources of the namespace, not a namespaced list."""


@dataclass(frozen=True)
class Need:
    """The attributes the API server authorizes a resource request by."""

    verb: str
    group: str
    resource: str
    """With its subresource, as rules name it: "agentpools/status"."""
    namespace: str | None = None
    """None for a cluster-scoped resource, or a request across all namespaces."""
    name: str | None = None

    def __str__(self) -> str:
        where = f"in {self.namespace}" if self.namespace else "cluster-wide"
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{named} {where}"


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a Role or ClusterRole."""

    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str] = frozenset()
    """resourceNames: empty allows every name (and requests without one: list, create)."""

    @classmethod
    def parse(cls, rule: Mapping[str, Any]) -> Rule:
        return cls(
            groups=frozenset(rule.get("apiGroups") or ()),
            resources=frozenset(rule.get("resources") or ()),
            verbs=frozenset(rule.get("verbs") or ()),
            names=frozenset(rule.get("resourceNames") or ()),
        )

    def allows(self, need: Need) -> bool:
        return (
            _covers(self.verbs, need.verb)
            and _covers(self.groups, need.group)
            and _covers(self.resources, need.resource)
            and (not self.names or need.name in self.names)
        )


def _covers(allowed: frozenset[str], value: str) -> bool:
    return "*" in allowed or value in allowed


@dataclass(frozen=True)
class Grants:
    """What one subject may do: rules bound cluster-wide, and rules bound in one namespace."""

    cluster: tuple[Rule, ...] = ()
    namespaced: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)

    def allow(self, need: Need) -> bool:
        rules = self.cluster
        if need.namespace is not None:
            rules += tuple(self.namespaced.get(need.namespace, ()))
        return any(rule.allows(need) for rule in rules)


def service_account_grants(
    manifests: Iterable[Mapping[str, Any]], namespace: str, name: str
) -> Grants:
    """The grants of ServiceAccount `namespace/name` from the manifests' roles and bindings."""
    manifests = list(manifests)
    roles = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]):
            tuple(Rule.parse(rule) for rule in m.get("rules") or ())
        for m in manifests if m["kind"] in ("Role", "ClusterRole")
    }
    cluster: list[Rule] = []
    namespaced: dict[str, list[Rule]] = {}
    for binding in manifests:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or not any(
            s.get("kind") == "ServiceAccount" and s.get("namespace") == namespace
            and s.get("name") == name for s in binding.get("subjects") or ()
        ):
            continue
        ref = binding["roleRef"]
        bound_in = binding["metadata"].get("namespace")
        rules = roles[ref["kind"], bound_in if ref["kind"] == "Role" else None, ref["name"]]
        if binding["kind"] == "ClusterRoleBinding":
            cluster += rules
        else:
            namespaced.setdefault(bound_in, []).extend(rules)
    return Grants(tuple(cluster), {ns: tuple(rules) for ns, rules in namespaced.items()})


def request_need(method: str, path: str, query: Mapping[str, str]) -> Need | None:
    """What a request needs, read from its URL as the API server does
    (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go); None for a non-resource URL."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = "/".join(rest[0:1] + rest[2:3])
    name = rest[1] if len(rest) > 1 else None
    method = method.upper()
    if method in READ_VERBS:
        verb = "get" if name else "list"
        if query.get("watch") in ("true", "1"):
            verb = "watch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = WRITE_VERBS[method]
    return Need(verb, group, resource, namespace, name)
