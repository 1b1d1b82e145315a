"""One virtual environment per peer, with the peer's latest release from PyPI.

The peers cannot share the product's environment or each other's: Celery 5.7 pins
``python-dateutil==2.9.0.post0`` (the ``kubernetes`` client the operator uses needs 3 or
later), and arq 0.28 requires ``redis<6`` while kombu's Redis transport requires ``redis>=6.4``.
So each peer gets its own environment under ``--venvs`` (default
``~/.cache/agentpool-bench/venvs``), made with this interpreter's ``venv`` and ``pip``.
An environment counts as installed once ``pip`` succeeded in it (``MARKER``); the peers are
not pinned, so every run records the versions it ran (``versions``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import IO

DEFAULT_ROOT = Path.home() / ".cache" / "agentpool-bench" / "venvs"

REQUIREMENTS: dict[str, list[str]] = {
    "celery": ["celery[redis]", "hiredis"],
    "rq": ["rq", "hiredis"],
    "arq": ["arq"],  # arq depends on redis[hiredis] itself
    "dramatiq": ["dramatiq[redis]", "hiredis"],
    "taskiq": ["taskiq", "taskiq-redis", "hiredis"],
}
DISTRIBUTIONS: dict[str, list[str]] = {
    "celery": ["celery", "kombu", "redis", "hiredis"],
    "rq": ["rq", "redis", "hiredis"],
    "arq": ["arq", "redis", "hiredis"],
    "dramatiq": ["dramatiq", "redis", "hiredis"],
    "taskiq": ["taskiq", "taskiq-redis", "redis", "hiredis"],
    "agentpool": ["agentpool", "redis", "hiredis"],
}
_VERSIONS = (
    "import importlib.metadata as m, json, sys\n"
    "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
)


def python_of(root: Path, peer: str) -> Path:
    return root / peer / "bin" / "python"


MARKER = "agentpool-bench-installed"
"""Written into a peer's environment once its install succeeded: an environment without it
(its interpreter made, then pip failed) is installed again on the next run."""


class InstallFailed(Exception):
    """A peer's environment could not be made; the message says where pip's output went."""


def installed(root: Path, peer: str) -> bool:
    return (root / peer / MARKER).exists()


def ensure(root: Path, peer: str, *, upgrade: bool = False, log: Path | None = None) -> Path:
    """The peer's interpreter, creating (or upgrading) its environment when asked, missing or
    left half-made by a failed install."""
    python = python_of(root, peer)
    if installed(root, peer) and python.exists() and not upgrade:
        return python
    root.mkdir(parents=True, exist_ok=True)
    (root / peer / MARKER).unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        out: IO[bytes] | int = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(root / peer)], check=True,
                               stdout=out, stderr=out)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                 *(["--upgrade"] if upgrade else []), *REQUIREMENTS[peer]],
                check=True, stdout=out, stderr=out,
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            raise InstallFailed(install_failure(peer, root, log, exc)) from exc
    (root / peer / MARKER).write_text(" ".join(REQUIREMENTS[peer]) + "\n")
    return python


def install_failure(peer: str, root: Path, log: Path | None, exc: Exception) -> str:
    """The one line a failed install prints."""
    why = (f"exit status {exc.returncode}" if isinstance(exc, subprocess.CalledProcessError)
           else str(exc))
    where = f"pip's output: {log}" if log else "pip's output was not kept"
    return (f"installing {peer} into {root / peer} failed ({why}); {where}; the next run "
            f"tries again, --upgrade-peers installs the latest releases")


def versions(python: Path | str, system: str) -> dict[str, str]:
    """The installed versions of the system's distributions (the peers are unpinned: each run
    records what it ran)."""
    try:
        reply = subprocess.run([str(python), "-c", _VERSIONS, *DISTRIBUTIONS[system]],
                               check=True, capture_output=True, text=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise InstallFailed(
            f"{system}'s environment ({python}) cannot report its versions: "
            f"{detail.strip().splitlines()[-1] if detail.strip() else exc}; "
            f"run with --upgrade-peers to install it again") from exc
    result: dict[str, str] = json.loads(reply.stdout)
    return result
