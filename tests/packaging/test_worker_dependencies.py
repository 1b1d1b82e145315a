"""The worker image installs only what the worker runs.

The project is installed without extras into a fresh virtualenv, from the same files the
worker's Dockerfile copies; the worker then runs a task there. Nothing of the operator's or the
command line's dependencies may be installed, so an import of them anywhere on the worker's
path fails here instead of in a cluster.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from import_graph import ROOT

from agentpool.protocol import TaskQueue

NOT_FOR_THE_WORKER = ["kopf", "kubernetes", "aiohttp", "rich", "yaml", "matplotlib", "playwright",
                      "pydantic_settings"]


def image_files() -> list[Path]:
    """What Dockerfile.worker copies from the repository into its build stage."""
    files: list[Path] = []
    for line in (ROOT / "Dockerfile.worker").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for pattern in words[1:-1]:
                files.extend(sorted(ROOT.glob(pattern)))
    return files


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv holding `pip install .` of the worker image's files, nothing else."""
    base = tmp_path_factory.mktemp("worker-image")
    source = base / "src"
    source.mkdir()
    copied = image_files()
    assert {path.name for path in copied} >= {"pyproject.toml", "agentpool", "worker"}
    for path in copied:
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(path, source / path.name, ignore=ignore)
        else:
            shutil.copy2(path, source / path.name)
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-compile", str(source)],
        capture_output=True, text=True, env=clean_env(), cwd=base, timeout=300,
    )
    assert install.returncode == 0, f"pip install failed:\n{install.stdout}\n{install.stderr}"
    yield env_dir


def test_worker_env_has_no_operator_or_cli_dependency(worker_env: Path) -> None:
    probe = (
        "import importlib.util, json;"
        f"print(json.dumps([m for m in {NOT_FOR_THE_WORKER!r} "
        "if importlib.util.find_spec(m) is not None]))"
    )
    found = subprocess.run(
        [str(worker_env / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, env=clean_env(), cwd=worker_env, check=True,
    )
    assert found.stdout.strip() == "[]"


def test_worker_entry_point_and_client_import_with_base_dependencies(worker_env: Path) -> None:
    imports = "import agentpool_worker.main, agentpool_worker.builtin, agentpool.client"
    result = subprocess.run(
        [str(worker_env / "bin" / "python"), "-c", imports],
        capture_output=True, text=True, env=clean_env(), cwd=worker_env,
    )
    assert result.returncode == 0, result.stderr


def test_the_worker_imports_nothing_of_pydantic(worker_env: Path) -> None:
    """pydantic is installed (the shared models use it) but the worker's start does not load
    it: about 0.1 s and 10 MB of every worker start (bench/README.md, start-up)."""
    probe = ("import sys, agentpool_worker.main, agentpool_worker.worker;"
             "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('pydantic')))")
    result = subprocess.run(
        [str(worker_env / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, env=clean_env(), cwd=worker_env, check=True,
    )
    assert result.stdout.strip() == "[]"


async def test_worker_runs_a_task_with_only_its_own_dependencies(
    worker_env: Path, redis: aioredis.Redis, redis_url: str, queue_name: str
) -> None:
    env = clean_env() | {
        "AGENTPOOL_REDIS_URL": redis_url,
        "AGENTPOOL_QUEUE": queue_name,
        "AGENTPOOL_HANDLER": "agentpool_worker.builtin:echo",
        "AGENTPOOL_PORT": "0",
        "AGENTPOOL_POD_NAME": "base-only",
    }
    worker = await asyncio.create_subprocess_exec(
        str(worker_env / "bin" / "agentpool-worker"),
        env=env, cwd=worker_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"hello": "worker"})
    finished = asyncio.ensure_future(queue.wait(task_id, timeout=30))
    exited = asyncio.ensure_future(worker.wait())
    try:
        await asyncio.wait([finished, exited], return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            assert worker.stdout is not None
            pytest.fail(f"the worker exited: {(await worker.stdout.read()).decode()}")
        info = finished.result()
        assert (info.state, info.result) == ("succeeded", {"hello": "worker"})
    finally:
        finished.cancel()
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(worker.communicate(), timeout=30)
    assert worker.returncode == 0, output.decode()
