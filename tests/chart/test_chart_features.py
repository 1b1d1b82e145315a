"""What the chart's switches do: operator modes and peering, the bundled or an external Redis,
the NetworkPolicy and the monitoring objects."""

from __future__ import annotations

import base64
import getpass
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_helpers import NAMESPACE, RELEASE, Helm, Manifest, Rendered
from fake_kube_api import KOPF_PEERING, fake_kube_api
from kopf._core.engines.peering import detect_own_id

from agentpool_operator.settings import OperatorSettings

OPERATOR = f"{RELEASE}-operator"
REDIS = f"{RELEASE}-redis"
URL_SECRET = "agentpool-redis"
HOOK = "helm.sh/hook"


def container(workload: Manifest, name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return dict(found)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def operator_env(rendered: Rendered) -> dict[str, Any]:
    return env_of(container(rendered.one("Deployment", OPERATOR), "operator"))


def secret_data(secret: Manifest) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


# ---------------------------------------------------------------- operator


def test_operator_defaults(helm: Helm) -> None:
    rendered = helm.render({})
    deployment = rendered.one("Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    operator = container(deployment, "operator")
    assert operator["image"] == "ghcr.io/agentpool/operator:0.1.0"
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert operator_env(rendered) == {
        "AGENTPOOL_OPERATOR_NAMESPACES": "",
        "AGENTPOOL_OPERATOR_PEERING": "",
        "AGENTPOOL_OPERATOR_PORT": "8080",
        "AGENTPOOL_OPERATOR_LOG_LEVEL": "info",
        "AGENTPOOL_OPERATOR_STATUS_REFRESH_SECONDS": "5",
        "AGENTPOOL_OPERATOR_PER_POOL_CREDENTIALS": "true",
        "AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS": f"{NAMESPACE}/{OPERATOR}",
        "POD_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == rendered.one("ServiceAccount")["metadata"]["name"]
    assert not rendered.of_kind("PodDisruptionBudget")
    assert not [m for m in rendered.manifests if m["apiVersion"].startswith("kopf.dev")]


def test_no_pool_may_run_as_the_operators_or_the_consoles_service_account(
    helm: Helm, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = helm.render({"console": {"enabled": True},
                            "serviceAccount": {"name": "ops-robot"}})
    accounts = operator_env(rendered)["AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS"]
    console = rendered.one("Deployment", f"{RELEASE}-console")
    console_account = console["spec"]["template"]["spec"]["serviceAccountName"]
    assert accounts == f"{NAMESPACE}/ops-robot,{NAMESPACE}/{console_account}"
    monkeypatch.setenv("AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS", accounts)
    assert OperatorSettings().protected_service_accounts == (
        f"{NAMESPACE}/ops-robot", f"{NAMESPACE}/{console_account}")


def test_the_operators_pod_labels_cannot_replace_the_charts_own(helm: Helm) -> None:
    """The Deployment's selector and the NetworkPolicy match the chart's labels: a pod label
    of the same key would break both (a duplicate key, or a selector that no longer matches)."""
    rendered = helm.render({"operator": {"podLabels": {
        "app.kubernetes.io/name": "mine", "team": "agents"}}})
    deployment = rendered.one("Deployment", OPERATOR)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "agents"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert {key: labels[key] for key in selector} == selector


def test_operator_has_an_identity_under_any_uid(rendered: Rendered) -> None:
    """kopf names itself by POD_ID, else by getpass.getuser(), which fails under a UID with no
    user entry (OpenShift's restricted-v2 runs pods under an arbitrary one)."""
    assert operator_env(rendered)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_kopf_takes_its_identity_from_pod_id(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 1000680000")

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.setenv("POD_ID", "agentpool-operator-7d9f-x2x")
    assert detect_own_id(manual=False) == "agentpool-operator-7d9f-x2x"
    monkeypatch.delenv("POD_ID")
    with pytest.raises(KeyError):
        detect_own_id(manual=False)


def test_namespaced_operator_watches_its_namespaces(helm: Helm) -> None:
    rendered = helm.render({"watchNamespaces": ["team-a", "team-b"]})
    assert operator_env(rendered)["AGENTPOOL_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_one_replica_runs_standalone_without_peering_objects(helm: Helm) -> None:
    rendered = helm.render({})
    crd_names = {c["metadata"]["name"] for c in rendered.of_kind("CustomResourceDefinition")}
    assert not crd_names & {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_replicas_elect_a_leader_through_cluster_peering(helm: Helm) -> None:
    rendered = helm.render({"operator": {"replicas": 2}})
    deployment = rendered.one("Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert operator_env(rendered)["AGENTPOOL_OPERATOR_PEERING"] == "agentpool"
    crds = {c["spec"]["names"]["kind"]: c for c in rendered.of_kind("CustomResourceDefinition")}
    assert crds["ClusterKopfPeering"]["spec"]["scope"] == "Cluster"
    assert crds["KopfPeering"]["spec"]["scope"] == "Namespaced"
    for kind in ("ClusterKopfPeering", "KopfPeering"):
        assert crds[kind]["spec"]["group"] == "kopf.dev"
        assert crds[kind]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    peering = rendered.one("ClusterKopfPeering", "agentpool")
    # A hook: created after its CRD exists, which Helm cannot do within one manifest.
    assert "post-install" in peering["metadata"]["annotations"][HOOK]
    assert not rendered.of_kind("KopfPeering")
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_namespaced_replicas_peer_in_each_watched_namespace(helm: Helm) -> None:
    rendered = helm.render(
        {"operator": {"replicas": 2, "peering": {"name": "ap"}}, "watchNamespaces": ["a", "b"]}
    )
    assert operator_env(rendered)["AGENTPOOL_OPERATOR_PEERING"] == "ap"
    peerings = rendered.of_kind("KopfPeering")
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings} == {
        ("a", "ap"),
        ("b", "ap"),
    }
    assert not rendered.of_kind("ClusterKopfPeering")


def test_peering_crds_can_be_left_to_another_operator(helm: Helm) -> None:
    rendered = helm.render({"operator": {"replicas": 2, "peering": {"installCRDs": False}}})
    kinds = {c["spec"]["names"]["kind"] for c in rendered.of_kind("CustomResourceDefinition")}
    assert kinds == {"AgentPool"}
    assert rendered.of_kind("ClusterKopfPeering")


def test_peering_objects_are_created_once_and_never_replaced(helm: Helm, tmp_path: Path) -> None:
    """Created while missing (first install: kopf.dev not even known), left alone on upgrade."""

    def peering_hooks(
        values: dict[str, Any], existing: list[Manifest], cluster_knows_kopf: bool
    ) -> list[tuple[str | None, str]]:
        extra = KOPF_PEERING if cluster_knows_kopf else None
        with fake_kube_api(existing, tmp_path, extra) as kubeconfig:
            text = helm.template(
                values,
                "--dry-run=server",
                "--disable-openapi-validation",
                "--show-only",
                "templates/peering.yaml",
                kubeconfig=kubeconfig,
            )
        docs = [d for d in yaml.safe_load_all(text) if d and d["apiVersion"] == "kopf.dev/v1"]
        return [(d["metadata"].get("namespace"), d["kind"]) for d in docs]

    def peering(kind: str, namespace: str | None = None) -> Manifest:
        meta = {"name": "agentpool"} | ({"namespace": namespace} if namespace else {})
        return {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta}

    cluster_wide = {"operator": {"replicas": 2}}
    created = [(None, "ClusterKopfPeering")]
    assert peering_hooks(cluster_wide, [], cluster_knows_kopf=False) == created
    assert peering_hooks(cluster_wide, [], cluster_knows_kopf=True) == created
    existing = [peering("ClusterKopfPeering")]
    assert peering_hooks(cluster_wide, existing, cluster_knows_kopf=True) == []

    namespaced = cluster_wide | {"watchNamespaces": ["team-a", "team-b"]}
    existing = [peering("KopfPeering", "team-a")]
    assert peering_hooks(namespaced, existing, cluster_knows_kopf=True) == [
        ("team-b", "KopfPeering")
    ]


# ---------------------------------------------------------------- Redis


def test_bundled_redis(helm: Helm) -> None:
    rendered = helm.render({})
    statefulset = rendered.one("StatefulSet", REDIS)
    redis = container(statefulset, "redis")
    assert redis["image"] == "redis:7"
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert env_of(redis)["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": URL_SECRET, "key": "password"}
    }
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"

    service = rendered.one("Service", REDIS)
    assert service["spec"]["ports"][0]["port"] == 6379
    assert (
        service["spec"]["selector"].items()
        <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_url_secret_holds_the_bundled_redis_url(helm: Helm) -> None:
    data = secret_data(helm.render({}).one("Secret", URL_SECRET))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["password"])
    assert data["url"] == f"redis://:{data['password']}@{REDIS}.{NAMESPACE}.svc:6379/0"


def test_redis_password_is_kept_across_upgrades(helm: Helm, tmp_path: Path) -> None:
    """A fresh install generates a password; an upgrade reads it back from the cluster."""

    def render_secret(existing: list[Manifest]) -> dict[str, str]:
        with fake_kube_api(existing, tmp_path) as kubeconfig:
            text = helm.template(
                {},
                "--dry-run=server",
                "--disable-openapi-validation",
                "--show-only",
                "templates/redis-secret.yaml",
                kubeconfig=kubeconfig,
            )
        return secret_data(yaml.safe_load(text))

    first_install = render_secret([])
    assert render_secret([])["password"] != first_install["password"]

    installed = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": URL_SECRET,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {
                "meta.helm.sh/release-name": RELEASE,
                "meta.helm.sh/release-namespace": NAMESPACE,
            },
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in first_install.items()},
    }
    assert render_secret([installed]) == first_install


def test_a_redis_secret_of_your_own_is_left_to_you(helm: Helm) -> None:
    """Rendered without a cluster (`helm template`, Argo CD), the chart would draw a new
    password each time while Redis keeps the first: there the Secret is the user's."""
    rendered = helm.render({"redis": {"createUrlSecret": False}})
    assert not [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == URL_SECRET]
    redis = container(rendered.one("StatefulSet", REDIS), "redis")
    assert env_of(redis)["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": URL_SECRET, "key": "password"}}
    # Values without the key (reused from a release of before it) keep the Secret.
    unset = helm.render({"redis": {"createUrlSecret": None}})
    assert [s for s in unset.of_kind("Secret") if s["metadata"]["name"] == URL_SECRET]


def test_redis_without_persistence_uses_an_empty_dir(helm: Helm) -> None:
    statefulset = helm.render({"redis": {"persistence": {"enabled": False}}}).one("StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"]


def test_external_redis_url(helm: Helm) -> None:
    url = "rediss://:s3cret@redis.example.com:6380/2"
    rendered = helm.render({"redis": {"enabled": False, "external": {"url": url}}})
    assert not rendered.of_kind("StatefulSet")
    assert not [s for s in rendered.of_kind("Service") if s["metadata"]["name"] == REDIS]
    assert secret_data(rendered.one("Secret", URL_SECRET)) == {"url": url}


@pytest.mark.parametrize("url", [
    "redis+sentinel://:s3cret@s1.example.com:26379,s2.example.com:26379/mymaster/0",
    "rediss+sentinel://:s3cret@s1.example.com:26379/mymaster?sentinel_password=s3ntinel",
])
def test_an_external_sentinel_url_reaches_components_only_through_the_secret(
    helm: Helm, url: str
) -> None:
    rendered = helm.render({
        "redis": {"enabled": False, "external": {"mode": "sentinel", "url": url}},
        "console": {"enabled": True},
    })
    assert not rendered.of_kind("StatefulSet")
    assert secret_data(rendered.one("Secret", URL_SECRET)) == {"url": url}
    for manifest in rendered.manifests:
        if manifest["kind"] != "Secret":
            assert "s3cret" not in json.dumps(manifest), manifest["metadata"]["name"]
    console = rendered.one("Deployment", f"{RELEASE}-console")
    env = {e["name"]: e for e in console["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTPOOL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": URL_SECRET, "key": "url"}


def test_an_external_cluster_secret(helm: Helm) -> None:
    rendered = helm.render({"redis": {"enabled": False, "external": {
        "mode": "cluster", "existingSecret": "my-cluster"}}})
    assert not rendered.of_kind("StatefulSet")
    assert not rendered.of_kind("Secret")


def test_external_redis_secret(helm: Helm) -> None:
    rendered = helm.render({"redis": {"enabled": False, "external": {"existingSecret": "mine"}}})
    assert not rendered.of_kind("StatefulSet")
    assert not rendered.of_kind("Secret")


# ---------------------------------------------------------------- NetworkPolicy


def test_redis_is_only_reachable_from_workers_and_operators(helm: Helm) -> None:
    rendered = helm.render({"networkPolicy": {"enabled": True}})
    policy = rendered.one("NetworkPolicy")
    statefulset = rendered.one("StatefulSet", REDIS)
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchExpressions"] == [
        {
            "key": "app.kubernetes.io/name",
            "operator": "In",
            "values": ["agentpool-worker", "agentpool-operator"],
        }
    ]
    assert peer["namespaceSelector"] == {}
    operator_labels = rendered.one("Deployment", OPERATOR)["spec"]["template"]["metadata"]
    assert operator_labels["labels"]["app.kubernetes.io/name"] == "agentpool-operator"


def test_network_policy_in_namespaced_mode_admits_only_watched_namespaces(helm: Helm) -> None:
    policy = helm.render(
        {
            "networkPolicy": {"enabled": True, "extraFrom": [{"podSelector": {}}]},
            "watchNamespaces": ["team-a"],
        }
    ).one("NetworkPolicy")
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0]["namespaceSelector"]["matchExpressions"][0]["values"] == [NAMESPACE, "team-a"]
    assert peers[1] == {"podSelector": {}}


def test_no_network_policy_by_default(helm: Helm) -> None:
    assert not helm.render({}).of_kind("NetworkPolicy")


# ---------------------------------------------------------------- monitoring


MONITORING = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    }
}


def test_monitoring_is_off_by_default(helm: Helm) -> None:
    rendered = helm.render({})
    assert not [m for m in rendered.manifests if "monitoring.coreos.com" in m["apiVersion"]]
    assert not rendered.of_kind("ConfigMap")


def test_service_monitor_scrapes_the_operator_service(helm: Helm) -> None:
    rendered = helm.render(MONITORING)
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = rendered.one("Service", OPERATOR)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


def test_pod_monitor_scrapes_the_workers(helm: Helm) -> None:
    monitor = helm.render(MONITORING).one("PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/name"] == "agentpool-worker"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_prometheus_rule_and_dashboard(helm: Helm) -> None:
    rendered = helm.render(MONITORING)
    rule = rendered.one("PrometheusRule")
    assert rule["spec"]["groups"][0]["rules"][0]["alert"] == "AgentPoolOperatorDown"
    dashboard = rendered.one("ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = dashboard["data"].values()
    assert json.loads(content)["title"] == "AgentPool"


def test_rendered_output_is_plain_yaml(helm: Helm) -> None:
    """No Go template residue or `<no value>` anywhere, in any object."""
    text = helm.template(MONITORING | {"operator": {"replicas": 2}}, "--include-crds")
    assert "<no value>" not in text
    assert all(isinstance(d, dict) for d in yaml.safe_load_all(text) if d is not None)


def test_image_tags_may_be_numbers(helm: Helm) -> None:
    """A number in a values file arrives as a float: a whole one is written out in full (not
    2.0240101123456e+13), a fraction as it reads (`tag: 7.2`; `tag: 1.10` is YAML's 1.1,
    which is why values.yaml quotes its tags)."""
    rendered = helm.render({"operator": {"image": {"tag": 20240101123456}},
                            "redis": {"image": {"tag": 7.2}}})
    assert container(rendered.one("Deployment"), "operator")["image"].endswith(
        ":20240101123456")
    assert container(rendered.one("StatefulSet"), "redis")["image"] == "redis:7.2"


def test_operator_and_console_mount_extra_volumes(helm: Helm) -> None:
    """A Redis CA for rediss://...?ssl_ca_certs=: the same volume on the operator and the
    console, after their own /tmp, and still a valid Deployment."""
    ca = {"name": "redis-ca", "secret": {"secretName": "redis-ca"}}
    mount = {"name": "redis-ca", "mountPath": "/etc/redis-tls", "readOnly": True}
    extra = {"extraVolumes": [ca], "extraVolumeMounts": [mount]}
    rendered = helm.render({"operator": extra, "console": {"enabled": True, **extra}})
    for name, container_name in ((OPERATOR, "operator"), (f"{RELEASE}-console", "console")):
        deployment = rendered.one("Deployment", name)
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert [v["name"] for v in volumes] == ["tmp", "redis-ca"]
        assert volumes[1] == ca
        mounts = container(deployment, container_name)["volumeMounts"]
        assert mounts == [{"name": "tmp", "mountPath": "/tmp"}, mount]
        kubernetes_validate.validate(deployment, "1.30", strict=True)
    plain = helm.render({})
    assert [v["name"] for v in plain.one("Deployment", OPERATOR)["spec"]["template"]["spec"][
        "volumes"]] == ["tmp"]
