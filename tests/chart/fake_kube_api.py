"""A read-only stand-in for the Kubernetes API, enough for `helm template --dry-run=server`.

Helm then runs the chart's `lookup` calls against it: discovery for the kinds the default chart
renders, and GET for the objects it is given. Anything else is 404; writes are refused.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("configmaps", "ConfigMap", True),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
}
KOPF_PEERING = {
    "kopf.dev/v1": [
        ("clusterkopfpeerings", "ClusterKopfPeering", False),
        ("kopfpeerings", "KopfPeering", True),
    ]
}


Resources = dict[str, list[tuple[str, str, bool]]]


def _resource_list(resources: Resources, group_version: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": group_version,
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": ["get", "list"],
            }
            for plural, kind, namespaced in resources[group_version]
        ],
    }


def _group_list(resources: Resources) -> dict[str, Any]:
    groups = []
    for group_version in resources:
        if "/" in group_version:
            ref = {"groupVersion": group_version, "version": group_version.split("/")[1]}
            groups.append(
                {"name": group_version.split("/")[0], "versions": [ref], "preferredVersion": ref}
            )
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _prefix(group_version: str) -> str:
    return "/api/v1" if group_version == "v1" else f"/apis/{group_version}"


def _object_path(resources: Resources, obj: dict[str, Any]) -> str:
    group_version: str = obj["apiVersion"]
    (plural,) = [p for p, kind, _ in resources[group_version] if kind == obj["kind"]]
    meta = obj["metadata"]
    where = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{_prefix(group_version)}{where}/{plural}/{meta['name']}"


def _handler(routes: dict[str, dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path.split("?", 1)[0])
            if body is None:
                self._reply(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                    },
                )
            else:
                self._reply(200, body)

        def _refuse(self) -> None:
            self._reply(
                405,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "MethodNotAllowed",
                    "code": 405,
                },
            )

        do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_kube_api(
    objects: list[dict[str, Any]], workdir: Path, extra_resources: Resources | None = None
) -> Iterator[Path]:
    """Serves discovery and `objects`; yields the path of a kubeconfig pointing at it."""
    resources = RESOURCES | (extra_resources or {})
    routes: dict[str, dict[str, Any]] = {
        "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"]},
        "/apis": _group_list(resources),
        **{_prefix(gv): _resource_list(resources, gv) for gv in resources},
        **{_object_path(resources, obj): obj for obj in objects},
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    kubeconfig = workdir / "kubeconfig-fake"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
