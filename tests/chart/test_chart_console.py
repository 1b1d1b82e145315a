"""The optional console: off by default; when on, a Deployment and a Service run
`agentpool console` with its own ServiceAccount that can only read pools and their Events where
the operator watches (all it shows), and the write token comes from a Secret. Its reads take no
token: a NetworkPolicy admits to its port only the peers given, none by default."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from chart_helpers import COMBINATIONS, INGRESS_PEERS, NAMESPACE, RELEASE, Helm, Rendered

CONSOLE = f"{RELEASE}-console"
CONSOLE_GRANTS = {("agentpool.dev", "agentpools", "list"), ("", "events", "list")}
"""What the console calls: `status.list_pools` and `sources` (a pool's Events)."""


def console_grants(rendered: Rendered) -> dict[str, set[tuple[str, str, str]]]:
    roles = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m["rules"]
             for m in rendered.of_kind("Role") + rendered.of_kind("ClusterRole")}
    found: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for binding in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding"):
        if not any(s["name"] == CONSOLE and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else namespace
        for rule in roles[(ref["kind"], namespace if ref["kind"] == "Role" else None,
                           ref["name"])]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    found[scope] |= {(group, resource, verb) for verb in rule["verbs"]}
    return dict(found)


def console_container(rendered: Rendered) -> dict[str, Any]:
    deployment = rendered.one("Deployment", CONSOLE)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_no_console_by_default(helm: Helm) -> None:
    names = {m["metadata"]["name"] for m in helm.render({}).manifests}
    assert not {n for n in names if "console" in n}


def test_console_reads_only_pools_and_events_cluster_wide(helm: Helm) -> None:
    rendered = helm.render(COMBINATIONS["console"])
    assert console_grants(rendered) == {"cluster": CONSOLE_GRANTS}
    spec = rendered.one("Deployment", CONSOLE)["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == CONSOLE
    assert "--all-namespaces" in console_container(rendered)["command"]


def test_console_reads_only_the_watched_namespaces(helm: Helm) -> None:
    rendered = helm.render(COMBINATIONS["console-namespaced"])
    assert console_grants(rendered) == {"team-a": CONSOLE_GRANTS, "team-b": CONSOLE_GRANTS}
    command = console_container(rendered)["command"]
    assert command[command.index("--namespace") + 1] == "team-a"
    assert "--all-namespaces" not in command


def test_read_only_console_has_no_token_and_no_write_flag(helm: Helm) -> None:
    rendered = helm.render(COMBINATIONS["console-namespaced"])
    container = console_container(rendered)
    assert "--allow-writes" not in container["command"]
    assert {e["name"] for e in container["env"]} == {"AGENTPOOL_REDIS_URL"}
    assert not [m for m in rendered.of_kind("Secret") if m["metadata"]["name"].endswith(
        "-console-token")]


def test_write_actions_take_their_token_from_a_secret(helm: Helm) -> None:
    rendered = helm.render(COMBINATIONS["console"])
    container = console_container(rendered)
    env = {e["name"]: e for e in container["env"]}
    assert "--allow-writes" in container["command"]
    ref = env["AGENTPOOL_CONSOLE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{CONSOLE}-token", "key": "token"}
    secret = rendered.one("Secret", f"{CONSOLE}-token")
    assert len(secret["data"]["token"]) >= 40
    redis_ref = env["AGENTPOOL_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert redis_ref == {"name": "agentpool-redis", "key": "url"}

    own = helm.render({"console": {"enabled": True, "writeActions": {
        "enabled": True, "existingSecret": "my-console-token"}}})
    own_env = {e["name"]: e for e in console_container(own)["env"]}
    assert own_env["AGENTPOOL_CONSOLE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == \
        "my-console-token"
    assert not [m for m in own.of_kind("Secret") if "console" in m["metadata"]["name"]]


def test_console_service_and_network_policy(helm: Helm) -> None:
    rendered = helm.render(COMBINATIONS["console"])
    service = rendered.one("Service", CONSOLE)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    policy = rendered.one("NetworkPolicy", f"{RELEASE}-redis")
    clients = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    assert "agentpool-console" in clients["values"]


def console_policy(rendered: Rendered) -> dict[str, Any]:
    """The console's NetworkPolicy, checked to select exactly the console's pods."""
    policy = rendered.one("NetworkPolicy", CONSOLE)
    assert policy["metadata"]["namespace"] == NAMESPACE
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}
    selected = {(m["kind"], m["metadata"]["name"]) for m in rendered.manifests
                if m["kind"] in {"Deployment", "StatefulSet"}
                and selector["matchLabels"].items()
                <= m["spec"]["template"]["metadata"]["labels"].items()}
    assert selected == {("Deployment", CONSOLE)}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return dict(policy)


def test_no_pod_reaches_the_console_by_default(helm: Helm) -> None:
    """Its reads take no token: no ingress rule at all (a rule without `from` would admit
    every source), whatever networkPolicy.enabled, which is the bundled Redis's."""
    for values in (COMBINATIONS["console"], COMBINATIONS["console-namespaced"]):
        assert console_policy(helm.render(values))["spec"]["ingress"] == []


def test_only_the_peers_given_reach_the_consoles_port(helm: Helm) -> None:
    rendered = helm.render(COMBINATIONS["console-ingress"])
    (rule,) = console_policy(rendered)["spec"]["ingress"]
    assert rule == {"ports": [{"port": "http", "protocol": "TCP"}], "from": INGRESS_PEERS}
    [port] = console_container(rendered)["ports"]
    assert port["name"] == "http"


def test_the_notes_warn_a_console_behind_an_ingress_that_the_policy_keeps_it_out(
    helm: Helm,
) -> None:
    """An upgrade turns the policy on: a release whose console has host names of an ingress
    is told at once, not when the ingress answers 504."""
    behind = helm.notes({"console": {"enabled": True, "allowedHosts": ["console.example.com"]}})
    assert "WARNING: console.allowedHosts names console.example.com, but no ingress" in behind
    let_in = helm.notes({"console": {"enabled": True, "allowedHosts": ["console.example.com"],
                                     "networkPolicy": {"from": INGRESS_PEERS}}})
    plain = helm.notes({"console": {"enabled": True}})
    for notes in (let_in, plain):
        assert "WARNING" not in notes
        assert f"port-forward svc/{RELEASE}-console 8080:80" in notes


def test_no_console_policy_without_the_console_or_when_turned_off(helm: Helm) -> None:
    without = helm.render({"networkPolicy": {"enabled": True}})
    assert [m["metadata"]["name"] for m in without.of_kind("NetworkPolicy")] == [
        f"{RELEASE}-redis"]
    off = helm.render({"console": {"enabled": True, "networkPolicy": {"enabled": False}}})
    assert not off.of_kind("NetworkPolicy")


def test_console_uses_the_external_redis_secret(helm: Helm) -> None:
    rendered = helm.render({"console": {"enabled": True},
                            "redis": {"enabled": False, "external": {"existingSecret": "mine"}}})
    env = {e["name"]: e for e in console_container(rendered)["env"]}
    assert env["AGENTPOOL_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


def allowed_hosts(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--allowed-host"]


def test_console_answers_to_port_forward_its_service_and_the_hosts_given_only(
        helm: Helm) -> None:
    """Listening on 0.0.0.0, the console still refuses other Host headers (DNS rebinding):
    the chart names the hosts a browser reaches it by, and its probes send one of them."""
    container = console_container(helm.render(COMBINATIONS["console"]))
    service = f"{CONSOLE}.{NAMESPACE}"
    assert allowed_hosts(container["command"]) == [
        "localhost", "127.0.0.1", CONSOLE, service, f"{service}.svc",
        f"{service}.svc.cluster.local"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["httpHeaders"] == [
            {"name": "Host", "value": "localhost"}]
    more = helm.render({"console": {"enabled": True,
                                    "allowedHosts": ["console.example.com"]}})
    assert allowed_hosts(console_container(more)["command"])[-1] == "console.example.com"


def test_the_console_runs_the_operator_image_unless_given_its_own(helm: Helm) -> None:
    """The console ships in the operator image: a registry set for the operator serves it."""
    mirrored = {"operator": {"image": {"repository": "reg.example/op", "tag": "1.2.3",
                                       "pullPolicy": "Always"}}}
    container = console_container(helm.render({**COMBINATIONS["console"], **mirrored}))
    assert (container["image"], container["imagePullPolicy"]) == ("reg.example/op:1.2.3",
                                                                  "Always")
    own = {**COMBINATIONS["console"], **mirrored}
    own["console"] = {**own["console"], "image": {"repository": "reg.example/console"}}
    assert console_container(helm.render(own))["image"] == "reg.example/console:1.2.3"
