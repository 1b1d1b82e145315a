"""Renders the Helm chart with the real helm binary (installed by `make setup` into .tools/bin)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "agentpool-operator"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE = "agentpool"
NAMESPACE = "agentpool"
KUBE_VERSION = "1.33.0"

Manifest = dict[str, Any]

# An ingress controller's pods, and a proxy outside the cluster: peers admitted to the console.
INGRESS_PEERS: list[dict[str, Any]] = [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}},
    {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}},
]

# Named values combinations; every rendering test runs against each of them.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "external-redis-url": {
        "redis": {
            "enabled": False,
            "external": {"url": "rediss://:s3cret@redis.example.com:6380/2"},
        }
    },
    "external-redis-secret": {
        "redis": {"enabled": False, "external": {"existingSecret": "my-redis"}}
    },
    "external-redis-sentinel": {
        "redis": {
            "enabled": False,
            "external": {
                "mode": "sentinel",
                "url": "redis+sentinel://:s3cret@s1.example.com:26379,s2.example.com:26379"
                       "/mymaster/0",
            },
        }
    },
    "external-redis-cluster": {
        "redis": {"enabled": False,
                  "external": {"mode": "cluster", "existingSecret": "my-cluster"}}
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "peering": {"operator": {"replicas": 2}},
    "peering-namespaced": {"operator": {"replicas": 3}, "watchNamespaces": ["team-a"]},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy-namespaced": {
        "networkPolicy": {"enabled": True},
        "watchNamespaces": ["team-a"],
    },
    "no-persistence": {"redis": {"persistence": {"enabled": False}}},
    "console": {"console": {"enabled": True, "writeActions": {"enabled": True}},
                "networkPolicy": {"enabled": True}},
    "console-namespaced": {"console": {"enabled": True}, "watchNamespaces": ["team-a", "team-b"]},
    "console-ingress": {"console": {"enabled": True, "allowedHosts": ["console.example.com"],
                                    "networkPolicy": {"from": INGRESS_PEERS}}},
}


class HelmError(Exception):
    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


@dataclass
class Rendered:
    """The manifests of one `helm template` run."""

    values: dict[str, Any]
    manifests: list[Manifest] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


class Helm:
    """Runs helm with its caches and configuration kept out of the user's home."""

    def __init__(self, home: Path) -> None:
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            # No cluster is ever contacted: an empty kubeconfig makes sure of it.
            "KUBECONFIG": str(home / "kubeconfig"),
        }
        (home / "kubeconfig").write_text("")
        self.values_dir = home / "values"
        self.values_dir.mkdir()
        self._cache: dict[str, Rendered] = {}

    def run(self, *args: str, kubeconfig: Path | None = None) -> str:
        env = self.env if kubeconfig is None else {**self.env, "KUBECONFIG": str(kubeconfig)}
        proc = subprocess.run(
            [str(HELM), *args], env=env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise HelmError(list(args), proc.stderr)
        return proc.stdout

    def values_file(self, values: dict[str, Any]) -> str:
        text = json.dumps(values, sort_keys=True)
        path = self.values_dir / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
        path.write_text(text)
        return str(path)

    def template(self, values: dict[str, Any], *extra: str, kubeconfig: Path | None = None,
                 release: str = RELEASE, namespace: str = NAMESPACE) -> str:
        return self.run(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            self.values_file(values),
            *extra,
            kubeconfig=kubeconfig,
        )

    def render(self, values: dict[str, Any], release: str = RELEASE,
               namespace: str = NAMESPACE) -> Rendered:
        """All manifests, CRDs and hooks included; cached per values, release and namespace."""
        key = json.dumps([values, release, namespace], sort_keys=True)
        if key not in self._cache:
            text = self.template(
                values, "--include-crds", release=release, namespace=namespace
            )
            docs = [d for d in yaml.safe_load_all(text) if d]
            self._cache[key] = Rendered(values=values, manifests=docs)
        return self._cache[key]

    def notes(self, values: dict[str, Any]) -> str:
        """NOTES.txt as `helm install` prints it (client-side dry run, no cluster)."""
        out = self.run(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            "--values",
            self.values_file(values),
        )
        assert "NOTES:" in out, out
        return out.split("NOTES:", 1)[1]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload."""
    for m in manifests:
        name = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] == "Pod":
            yield name, m["spec"]
        elif m["kind"] == "CronJob":
            yield name, m["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif m["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield name, m["spec"]["template"]["spec"]
