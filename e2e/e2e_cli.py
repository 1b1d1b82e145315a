"""The `agentpool` command line, run the way a user runs it (a subprocess, JSON output)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_config import redacted_repr
from e2e_kube import CommandError, end_process, run, spawn


def agentpool_executable() -> str:
    """The console script next to the running interpreter (the project's .venv)."""
    beside = Path(sys.executable).with_name("agentpool")
    if beside.is_file():
        return str(beside)
    found = shutil.which("agentpool")
    if found is None:
        raise RuntimeError("the `agentpool` command is not installed: run `make setup`")
    return found


@dataclass
class Background:
    """A command left running while the test watches the cluster."""

    argv: list[str]
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    diagnose: Callable[[], str] | None = None
    """A picture of the cluster for the message of a command that did not finish in time."""

    def finish(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Its output once it exits 0; CommandError, with a picture of the cluster, when it
        exits otherwise (its own --timeout ran out) or is not done within `timeout`."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise CommandError(self.argv, None, self._read(self.stdout_path),
                               self._read(self.stderr_path)
                               + f"\n(not finished after {timeout:g}s)",
                               picture=self._picture()) from None
        done = subprocess.CompletedProcess(self.argv, self.process.returncode,
                                           self._read(self.stdout_path),
                                           self._read(self.stderr_path))
        if done.returncode != 0:
            raise CommandError(self.argv, done.returncode, done.stdout, done.stderr,
                               picture=self._picture())
        return done

    def _picture(self) -> str:
        return self.diagnose() if self.diagnose is not None else ""

    def stop(self) -> None:
        end_process(self.process)

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(encoding="utf-8", errors="replace")


@dataclass
class AgentpoolCli:
    """`agentpool` against one Redis URL, given through AGENTPOOL_REDIS_URL (not argv, so
    the password never shows in a process list or a failure message)."""

    redis_url: str
    workdir: Path
    diagnose: Callable[[], str] | None = None
    """A picture of the cluster for the message of a wait that ran out or failed."""
    running: list[Background] = field(default_factory=list)

    __repr__ = redacted_repr

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "AGENTPOOL_QUEUE"}
        env["AGENTPOOL_REDIS_URL"] = self.redis_url
        env["COLUMNS"] = "200"
        return env

    def argv(self, *args: str) -> list[str]:
        return [agentpool_executable(), *args]

    def run(self, *args: str, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), env=self.env(), timeout=timeout, check=check)

    def json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.run(*args, "--output", "json", timeout=timeout).stdout)

    def write_tasks(self, payloads: Sequence[Any]) -> Path:
        """A JSON-lines file, one payload per line, as `agentpool submit --file` reads it."""
        path = self.workdir / f"tasks-{uuid.uuid4().hex[:8]}.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in payloads), encoding="utf-8")
        return path

    def submit(self, queue: str, payloads: Sequence[Any]) -> list[str]:
        out = self.json("submit", "--queue", queue, "--file", str(self.write_tasks(payloads)))
        ids: list[str] = out["ids"]
        return ids

    def submit_and_wait(self, queue: str, payloads: Sequence[Any],
                        timeout: float) -> Background:
        """`agentpool submit --wait` in the background: its JSON lists every task's outcome."""
        argv = self.argv("submit", "--queue", queue, "--file", str(self.write_tasks(payloads)),
                         "--wait", "--timeout", f"{timeout:g}", "--output", "json")
        tag = uuid.uuid4().hex[:8]
        stdout_path = self.workdir / f"submit-{tag}.out"
        stderr_path = self.workdir / f"submit-{tag}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = spawn(argv, stdout=out, stderr=err, env=self.env())
        background = Background(argv, process, stdout_path, stderr_path, self.diagnose)
        self.running.append(background)
        return background

    def stats(self, queue: str) -> dict[str, Any]:
        figures: dict[str, Any] = self.json("stats", "--queue", queue, timeout=30)
        return figures

    def counters(self, queue: str) -> dict[str, int]:
        counters: dict[str, int] = self.stats(queue)["counters"]
        return counters

    def workers(self, queue: str) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self.json("workers", "--queue", queue,
                                                  timeout=30)["workers"]
        return workers

    def wait(self, queue: str, task_id: str, timeout: float) -> dict[str, Any]:
        """`agentpool wait`: exit 0 only if the task succeeded."""
        try:
            info: dict[str, Any] = self.json("wait", "--queue", queue, task_id,
                                             "--timeout", f"{timeout:g}", timeout=timeout + 30)
        except CommandError as exc:
            raise exc.with_picture(self.diagnose() if self.diagnose is not None else "") from None
        return info

    def stop_all(self) -> None:
        for background in self.running:
            background.stop()
