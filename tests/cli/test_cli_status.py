from __future__ import annotations

import asyncio
import base64
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import Cli, background_worker, table_rows, with_queue

from agentpool.redis_server import free_port

RESOURCE = "agentpool.dev/v1alpha1/agentpools"


def pool(namespace: str, name: str, redis: dict[str, Any], *, queue: str | None = None,
         status: dict[str, Any] | None = None, paused: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"redis": redis, "paused": paused,
                            "worker": {"image": "w:1", "handler": "m:f"}}
    if queue:
        spec["queue"] = queue
    return {
        "apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": namespace,
                     "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": spec, "status": status or {},
    }


@pytest.fixture
def kubeconfig(kmock: Any, tmp_path: Path) -> Path:
    """A kubeconfig pointing at kmock, current namespace team-a."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "test",
                      "context": {"cluster": "kmock", "user": "me", "namespace": "team-a"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def fleet(kmock: Any, redis_url: str, queue_name: str) -> dict[str, str]:
    """alpha (team-a, URL in spec), beta (team-a, URL in a Secret), gamma (team-b,
    unreachable Redis)."""
    kmock.resources[RESOURCE] = {
        "namespaced": True, "kind": "AgentPool", "singular": "agentpool",
        "verbs": ["get", "list", "watch", "patch"], "shortnames": ["ap"], "categories": [],
        "subresources": ["status"],
    }
    status = {
        "replicas": 3, "readyReplicas": 2, "desiredReplicas": 3, "queued": 5, "inFlight": 2,
        "dead": 1, "workers": 2, "conditions": [{"type": "Ready", "status": "True"}],
    }
    kmock.objects[RESOURCE, "team-a", "alpha"] = pool(
        "team-a", "alpha", {"url": redis_url}, queue=queue_name, status=status)
    kmock.objects[RESOURCE, "team-a", "beta"] = pool(
        "team-a", "beta", {"urlSecretRef": {"name": "redis"}}, paused=True)
    kmock.objects["v1/secrets", "team-a", "redis"] = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "team-a"},
        "data": {"url": base64.b64encode(redis_url.encode()).decode()},
    }
    dead_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    failing = {"conditions": [
        {"type": "Ready", "status": "True", "reason": "ReplicasReady"},
        {"type": "Degraded", "status": "True", "reason": "PodsFailing",
         "message": '1 pod ImagePullBackOff: Back-off pulling image "w:2"'}]}
    kmock.objects[RESOURCE, "team-b", "gamma"] = pool("team-b", "gamma", {"url": dead_url},
                                                      status=failing)
    return {"dead_url": dead_url.replace("hunter2", "***")}


async def run(cli: Cli, *argv: str) -> Any:
    return await asyncio.to_thread(cli.raw, *argv)


async def test_status_of_the_context_namespace(cli: Cli, kubeconfig: Path,
                                               fleet: dict[str, str]) -> None:
    result = await run(cli, "status", "--kubeconfig", str(kubeconfig), "--sample", "0.2")
    assert result.code == 0, result
    rows = table_rows(result.out)
    assert [r[:7] for r in rows] == [
        ["alpha", cli.queue, "2/3", "5", "2", "1", "2"],
        ["beta", "beta", "0/0", "0", "0", "0", "0"],
    ]
    assert [r[7:10] for r in rows] == [["0.0/s", "-", "Ready"], ["0.0/s", "-", "Paused"]]
    assert re.fullmatch(r"\d+d(\d+h)?", rows[0][10])
    assert "DONE/S and FAILED over the last 0.2s" in result.out


async def test_status_all_namespaces_json(cli: Cli, kubeconfig: Path,
                                          fleet: dict[str, str]) -> None:
    result = await run(cli, "status", "-A", "--kubeconfig", str(kubeconfig), "--sample", "0.2",
                       "-o", "json")
    assert result.code == 0, result
    doc = result.json()
    assert doc["namespace"] is None
    pools = {(p["namespace"], p["name"]): p for p in doc["pools"]}
    assert list(pools) == [("team-a", "alpha"), ("team-a", "beta"), ("team-b", "gamma")]
    alpha = pools["team-a", "alpha"]
    assert (alpha["ready_replicas"], alpha["desired_replicas"], alpha["queued"]) == (2, 3, 5)
    assert alpha["rates"]["succeeded_per_second"] == 0.0
    assert alpha["created"] == "2024-05-01T10:00:00Z"
    assert pools["team-a", "beta"]["rates"] is not None
    gamma = pools["team-b", "gamma"]
    assert (gamma["health"], gamma["problem"]) == (
        "Degraded", 'PodsFailing: 1 pod ImagePullBackOff: Back-off pulling image "w:2"')
    assert alpha["problem"] is None
    assert gamma["rates"] is None
    assert gamma["rates_error"] == (
        f"cannot reach Redis at {fleet['dead_url']}: Connection refused")
    assert "hunter2" not in result.out + result.err


async def test_status_all_namespaces_table_notes_unreachable_redis(
    cli: Cli, kubeconfig: Path, fleet: dict[str, str]
) -> None:
    result = await run(cli, "status", "-A", "--kubeconfig", str(kubeconfig), "--sample", "0")
    assert result.code == 0, result
    assert [r[0] for r in table_rows(result.out)] == ["team-a", "team-a", "team-b"]
    assert (f"team-b/gamma: no rates: cannot reach Redis at {fleet['dead_url']}: "
            "Connection refused") in result.out
    assert "hunter2" not in result.out
    assert ('team-b/gamma: Degraded: PodsFailing: 1 pod ImagePullBackOff: Back-off pulling '
            'image "w:2"') in result.out
    assert "team-a/alpha:" not in result.out and "team-a/beta:" not in result.out, \
        "a Ready or paused pool has no note"


async def test_a_pool_whose_cluster_is_down_is_noted_and_the_others_still_shown(
    cli: Cli, kubeconfig: Path, fleet: dict[str, str], kmock: Any
) -> None:
    """redis-py's cluster client fails with its own error, no RedisError: one such pool must
    not take the whole fleet's view down with it."""
    down = f"redis+cluster://127.0.0.1:{free_port()}"
    kmock.objects[RESOURCE, "team-b", "delta"] = pool("team-b", "delta", {"url": down})
    result = await run(cli, "status", "-A", "--kubeconfig", str(kubeconfig), "--sample", "0")
    assert result.code == 0, result
    assert [r[1] for r in table_rows(result.out)] == ["alpha", "beta", "delta", "gamma"]
    assert f"team-b/delta: no rates: cannot reach Redis at {down}" in result.out


async def test_status_measures_throughput(cli: Cli, kubeconfig: Path,
                                          fleet: dict[str, str]) -> None:
    async def fill(q: Any) -> None:
        await q.submit_many(list(range(50)))

    await asyncio.to_thread(with_queue, cli.redis_url, cli.queue, fill)
    with background_worker(cli.redis_url, cli.queue, start_after=0.1):
        result = await run(cli, "status", "--kubeconfig", str(kubeconfig), "-n", "team-a",
                           "--sample", "0.6", "-o", "json")
    alpha = result.json()["pools"][0]
    assert alpha["rates"]["succeeded_per_second"] > 0
    assert alpha["rates"]["failure_rate"] == 0.0


async def test_status_of_an_empty_namespace(cli: Cli, kubeconfig: Path,
                                            fleet: dict[str, str]) -> None:
    result = await run(cli, "status", "--kubeconfig", str(kubeconfig), "-n", "nobody")
    assert result.code == 0
    assert result.out.strip().splitlines()[-1] == "No AgentPools in namespace nobody."


async def test_status_without_the_crd_exits_1(cli: Cli, kubeconfig: Path, kmock: Any) -> None:
    result = await run(cli, "status", "--kubeconfig", str(kubeconfig))
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert "is the AgentPool CRD installed?" in result.err


def test_status_without_any_cluster_configuration(cli: Cli, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = cli.raw("status")
    assert result.code == 1
    assert result.err_lines == [
        "agentpool: no Kubernetes configuration (no kubeconfig, not in a cluster): pass "
        "--kubeconfig, or --queue with --redis-url to read one queue without a cluster"
    ]


def test_status_names_the_kubeconfig_that_kubeconfig_names_when_it_is_not_there(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nonexistent"))
    result = cli.raw("status")
    assert (result.code, result.err_lines) == (
        1, [f"agentpool: kubeconfig {tmp_path / 'nonexistent'} (from $KUBECONFIG) not found"])


def test_status_without_the_kubernetes_client(cli: Cli,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """As installed for the demo (`agentpool[demo]`): no Kubernetes client."""
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    result = cli.raw("status")
    assert result.code == 1
    assert result.err_lines == [
        "agentpool: reading AgentPools needs the Kubernetes client: pip install "
        "'agentpool[cli]' (or --queue NAME with --redis-url to read one queue without a "
        "cluster)"
    ]


def test_status_of_one_queue_without_a_cluster(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, lambda q: q.submit_many([1, 2, 3]))
    result = cli.ok("status", "--redis-url", cli.redis_url, "--queue", cli.queue,
                    "--sample", "0.1")
    [row] = table_rows(result.out)
    assert row == [cli.queue, cli.queue, "-", "3", "0", "0", "0", "0.0/s", "-", "NoWorkers", "-"]
    doc = cli.ok("status", "--redis-url", cli.redis_url, "--queue", cli.queue,
                 "--sample", "0", "-o", "json").json()
    [entry] = doc["pools"]
    assert (entry["queue"], entry["queued"], entry["replicas"], entry["rates"]) == (
        cli.queue, 3, None, None)


def test_status_queue_mode_usage_errors(cli: Cli) -> None:
    no_url = cli.raw("status", "--queue", "q")
    assert no_url.code == 2
    assert no_url.err_lines == ["agentpool: --queue reads the queue from Redis: pass "
                                "--redis-url or set AGENTPOOL_REDIS_URL"]
    mixed = cli.raw("status", "--queue", "q", "--redis-url", cli.redis_url, "-A")
    assert mixed.code == 2
    assert len(mixed.err_lines) == 1


def test_status_with_an_unreachable_api_server(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    result = cli.raw("status", "--kubeconfig", str(path))
    assert result.code == 1
    [line] = result.err_lines
    assert line.startswith(f"agentpool: cannot reach the Kubernetes API at http://127.0.0.1:{port}")
    assert line.endswith("Connection refused")
    missing = cli.raw("status", "--kubeconfig", str(tmp_path / "nope"))
    assert (missing.code, missing.err_lines) == (
        1, [f"agentpool: kubeconfig {tmp_path / 'nope'} not found"])


@pytest.mark.parametrize(("content", "problem"), [
    ("garbage: [\n", "is not valid YAML: expected the node content, but found '<stream end>' "
                     "(line 2, column 1)"),
    ("just a string\n", "is not a kubeconfig (a YAML mapping with clusters, contexts and "
                        "users)"),
])
@pytest.mark.parametrize("verb", ["status", "console"])
def test_an_unreadable_kubeconfig_is_a_usage_error(cli: Cli, tmp_path: Path, verb: str,
                                                   content: str, problem: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    console_port = ["--port", "0"] if verb == "console" else []
    result = cli.raw(verb, "--kubeconfig", str(path), "--redis-url", cli.redis_url,
                     *console_port)
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == [f"agentpool: the kubeconfig {path} {problem}"]
