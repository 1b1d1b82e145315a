"""One virtual environment per peer, with the peer's latest release from PyPI.

The peers cannot share the product's environment or each other's: Celery 5.7 pins
``python-dateutil==2.9.0.post0`` (the ``kubernetes`` client the operator uses needs 3 or
later), and arq 0.28 requires ``redis<6`` while kombu's Redis transport requires ``redis>=6.4``.
So each peer gets its own environment under ``--venvs`` (default
``~/.cache/agentpool-bench/venvs``), made with this interpreter's ``venv`` and ``pip``.
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


def ensure(root: Path, peer: str, *, upgrade: bool = False, log: Path | None = None) -> Path:
    """The peer's interpreter, creating (or upgrading) its environment when asked or missing."""
    python = python_of(root, peer)
    if python.exists() and not upgrade:
        return python
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        out: IO[bytes] | int = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(root / peer)], check=True,
                           stdout=out, stderr=out)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
             "--upgrade", *REQUIREMENTS[peer]],
            check=True, stdout=out, stderr=out,
        )
    return python


def versions(python: Path | str, system: str) -> dict[str, str]:
    reply = subprocess.run([str(python), "-c", _VERSIONS, *DISTRIBUTIONS[system]],
                           check=True, capture_output=True, text=True)
    result: dict[str, str] = json.loads(reply.stdout)
    return result
