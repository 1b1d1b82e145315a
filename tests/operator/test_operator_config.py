"""Operator settings from the environment, and how kopf is configured from them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import kopf
import pytest

from agentpool.redis_server import free_port
from agentpool_operator.main import FINALIZER, kopf_settings
from agentpool_operator.settings import OperatorSettings, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTPOOL_OPERATOR_"):
            monkeypatch.delenv(name)
    settings = OperatorSettings()
    assert (settings.namespaces, settings.peering, settings.port) == ((), "", 8080)
    assert (settings.log_level, settings.status_refresh_seconds) == ("info", 5.0)
    assert settings.clusterwide and settings.standalone


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPOOL_OPERATOR_NAMESPACES", " team-a, team-b ,,")
    monkeypatch.setenv("AGENTPOOL_OPERATOR_PEERING", "agentpool")
    monkeypatch.setenv("AGENTPOOL_OPERATOR_PORT", "9090")
    monkeypatch.setenv("AGENTPOOL_OPERATOR_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("AGENTPOOL_OPERATOR_STATUS_REFRESH_SECONDS", "2.5")
    monkeypatch.setenv("AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS", "ap/op, ap/console")
    settings = OperatorSettings()
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.protected_service_accounts == ("ap/op", "ap/console")
    assert not settings.clusterwide and not settings.standalone
    assert (settings.port, settings.log_level, settings.status_refresh_seconds) == (
        9090, "debug", 2.5)


def test_kopf_keeps_its_state_in_annotations_and_peers_when_asked() -> None:
    settings = kopf_settings(OperatorSettings(peering="agentpool"))
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.finalizer == FINALIZER
    assert (settings.peering.name, settings.peering.mandatory) == ("agentpool", True)
    assert not settings.peering.standalone
    assert kopf_settings(OperatorSettings()).peering.standalone


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("AGENTPOOL_OPERATOR_PORT", "eighty", "AGENTPOOL_OPERATOR_PORT: Input should be a valid"),
    ("AGENTPOOL_OPERATOR_PORT", "70000", "AGENTPOOL_OPERATOR_PORT: Input should be less"),
    ("AGENTPOOL_OPERATOR_LOG_LEVEL", "loud", "AGENTPOOL_OPERATOR_LOG_LEVEL: Input should be"),
    ("AGENTPOOL_OPERATOR_PEERING", "Not_A_Name", "AGENTPOOL_OPERATOR_PEERING: must be"),
    ("AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS", "ap/op,console",
     "AGENTPOOL_OPERATOR_PROTECTED_SERVICE_ACCOUNTS: expected namespace/name pairs, "
     "got 'console'"),
    ("AGENTPOOL_OPERATOR_STATUS_REFRESH_SECONDS", "0",
     "AGENTPOOL_OPERATOR_STATUS_REFRESH_SECONDS: Input should be greater than 0"),
])
def test_bad_value_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    name: str, value: str, expected: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        load_settings()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("agentpool-operator: invalid configuration: ")
    assert expected in lines[0]


def run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AGENTPOOL_OPERATOR_", "KUBERNETES_SERVICE_"))
    }
    return subprocess.run(
        [sys.executable, "-c", "from agentpool_operator.main import main; main()", *args],
        env={**clean, "AGENTPOOL_OPERATOR_PORT": str(free_port()), **env},
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(("env", "code", "expected"), [
    ({"AGENTPOOL_OPERATOR_PORT": "eighty"}, 2, "AGENTPOOL_OPERATOR_PORT"),
    ({"KUBECONFIG": "/nonexistent/kubeconfig"}, 1, "no Kubernetes credentials"),
])
def test_entrypoint_fails_with_one_line(env: dict[str, str], code: int, expected: str) -> None:
    result = run_entrypoint(env)
    assert result.returncode == code
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.mark.parametrize(("content", "expected"), [
    ("garbage: [\n", "is not valid YAML: expected the node content, but found '<stream end>' "
                     "(line 2, column 1)"),
    ("just a string\n", "is not a kubeconfig (a YAML mapping with clusters, contexts and "
                         "users)"),
])
def test_an_unreadable_kubeconfig_is_one_line_and_exit_2(
    tmp_path: Path, content: str, expected: str,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(content)
    result = run_entrypoint({"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == (
        f"agentpool-operator: the kubeconfig $KUBECONFIG ({kubeconfig}) {expected}\n")


def test_a_busy_port_is_one_line_naming_the_port_and_the_setting(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_entrypoint({"KUBECONFIG": str(kubeconfig),
                                 "AGENTPOOL_OPERATOR_PORT": str(port)})
    assert result.returncode == 2
    assert result.stderr == (
        f"agentpool-operator: cannot serve /healthz and /metrics on port {port} "
        "(AGENTPOOL_OPERATOR_PORT): Address already in use\n")


def test_help_lists_the_settings_and_connects_to_nothing(tmp_path: Path) -> None:
    """A kubeconfig whose API server cannot be reached: anything but the help would stop with
    another exit code (or wait for the server)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    result = run_entrypoint({"KUBECONFIG": str(kubeconfig)}, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("usage: agentpool-operator [-h]\n")
    names = [line.split()[0] for line in result.stdout.splitlines()
             if line.startswith("  AGENTPOOL_OPERATOR_")]
    assert names == [f"AGENTPOOL_OPERATOR_{name.upper()}"
                     for name in OperatorSettings.model_fields]
    assert "  AGENTPOOL_OPERATOR_PORT (default: 8080)\n" in result.stdout
    assert "  AGENTPOOL_OPERATOR_LOG_LEVEL (default: info)\n      one of debug, info, warning, " \
        "error\n" in result.stdout


def test_an_argument_is_one_line_and_exit_2() -> None:
    result = run_entrypoint({"KUBECONFIG": "/nonexistent/kubeconfig"}, "--namespace", "team-a")
    assert result.returncode == 2
    assert result.stderr == (
        "agentpool-operator takes no arguments (got '--namespace team-a'): configure it with "
        "AGENTPOOL_OPERATOR_* environment variables (see --help)\n")


def test_the_entry_point_registers_every_handler_of_the_operator() -> None:
    """In a process of its own: the test modules import handler modules themselves, which
    would hide one the entry point no longer imports (the pool's delete handler, say)."""
    script = (
        "import kopf, agentpool_operator.main\n"
        "registry = kopf.get_default_registry()\n"
        "for handler in registry._changing.get_all_handlers():\n"
        "    print('changing', handler.id, handler.reason)\n"
        "for handler in registry._spawning.get_all_handlers():\n"
        "    print('spawning', handler.id)\n"
        "for handler in registry._watching.get_all_handlers():\n"
        "    print('watching', handler.id)\n"
        "for handler in registry._indexing.get_all_handlers():\n"
        "    print('indexing', handler.id)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    found = set(run.stdout.splitlines())
    assert {"changing remove_credentials delete", "changing reconcile create",
            "spawning observe", "indexing pool_pods"} <= found, run.stdout
