"""Stand-ins for kubectl and helm that answer from a list of rules and record every call, for
driving the e2e suite's set-up without a cluster (the fixture `stubs`, conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_kube import Kubectl

REPO = Path(__file__).resolve().parents[2]

STUB = """#!{python} -S
import fnmatch, json, os, signal, sys, time
line = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
with open({log!r}, "a") as log:
    log.write(line + "\\n")
with open({rules!r}) as f:
    rules = json.load(f)
rule = next((r for r in rules if fnmatch.fnmatchcase(line, r["match"])
             and not os.path.exists(r.get("unless", "/nonexistent"))), None)
if rule is None:
    sys.stderr.write(f"stub: unexpected: {{line}}\\n")
    sys.exit(1)
if "touch" in rule:
    open(rule["touch"], "a").close()
if "stdin_to" in rule:
    with open(rule["stdin_to"], "a") as f:
        f.write(sys.stdin.read())
if "pid_to" in rule:
    with open(rule["pid_to"], "w") as f:
        f.write(str(os.getpid()))
sys.stdout.write(rule.get("stdout", ""))
sys.stdout.flush()
sys.stderr.write(rule.get("stderr", ""))
sys.stderr.flush()
if rule.get("interrupt_parent"):
    os.kill(os.getppid(), signal.SIGINT)
time.sleep(rule.get("sleep", 0))
sys.exit(rule.get("rc", 0))
"""

Rule = dict[str, Any]

STUB_CONTEXT = "kind-stub"
STUB_SERVER = "https://127.0.0.1:6443"


def answer(match: str, stdout: str | dict[str, Any] = "", **more: Any) -> Rule:
    """A rule: a call whose line ("kubectl --namespace x get ...") matches the glob `match`
    prints `stdout` (a dict as JSON) and exits `rc` (0). `unless`: a path whose existence
    turns the rule off; `touch`: a path the call creates (a cluster whose answers change)."""
    text = stdout if isinstance(stdout, str) else json.dumps(stdout)
    return {"match": match, "stdout": text, **more}


def refuse(match: str, stderr: str, rc: int = 1) -> Rule:
    return {"match": match, "stderr": stderr, "rc": rc}


@dataclass
class Stubs:
    bin_dir: Path
    log: Path
    rules_file: Path

    def rules(self, *rules: Rule) -> None:
        """First match wins; a call no rule matches exits 1 ("stub: unexpected"). The
        cluster answers `kubectl version`, and kubectl names the kubeconfig's context
        (STUB_CONTEXT, STUB_SERVER), unless a rule says otherwise."""
        version = answer("kubectl version --output json",
                         {"serverVersion": {"gitVersion": "v1.36.0"}})
        view = answer("kubectl config view --minify --output json", {
            "current-context": STUB_CONTEXT,
            "clusters": [{"name": STUB_CONTEXT, "cluster": {"server": STUB_SERVER}}]})
        self.rules_file.write_text(json.dumps([*rules, version, view]))

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    @property
    def helm(self) -> str:
        return str(self.bin_dir / "helm")

    def kubectl(self, namespace: str | None = None) -> Kubectl:
        return Kubectl(namespace, binary=str(self.bin_dir / "kubectl"))

    @property
    def kubeconfig(self) -> Path:
        """A file the stub kubectl never reads; the suite checks that KUBECONFIG's exist."""
        return self.bin_dir.parent / "kubeconfig"

    def env(self, **settings: str) -> dict[str, str]:
        """For a pytest run of e2e/ in a subprocess: the stubs first on PATH, a KUBECONFIG,
        no E2E_* of this shell, the stub helm."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("E2E_")}
        env.update(PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
                   KUBECONFIG=str(self.kubeconfig), E2E_HELM=self.helm)
        env.update(settings)
        return env

    def run_e2e(self, test: str, *options: str, unset: tuple[str, ...] = (),
                **settings: str) -> subprocess.CompletedProcess[str]:
        """pytest -m e2e on e2e/`test`, quiet unless `options` say otherwise (-v cancels
        the -q: pytest's header shows again); `unset` leaves those variables out."""
        env = {k: v for k, v in self.env(**settings).items() if k not in unset}
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "e2e", *options,
             f"e2e/{test}"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def make_stubs(directory: Path) -> Stubs:
    bin_dir = directory / "stub-bin"
    bin_dir.mkdir()
    found = Stubs(bin_dir, directory / "calls.log", directory / "rules.json")
    for tool in ("kubectl", "helm"):
        path = bin_dir / tool
        path.write_text(STUB.format(python=sys.executable, log=str(found.log),
                                    rules=str(found.rules_file)))
        path.chmod(0o755)
    found.kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    found.rules()
    return found
