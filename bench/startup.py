"""Worker start-up: process start → ``/readyz`` answers 200, and resident memory when idle.

    .venv/bin/python bench/startup.py [--python PATH] [--runs 5] [--before DIR]

Starts ``python -m agentpool_worker.main`` (the built-in ``noop`` handler, a private
``redis-server``) and polls ``/readyz`` every 5 ms; after 2 s idle it reads the process's VmRSS.
``--python`` picks the interpreter, e.g. one of a virtual environment holding only what the
worker image installs (``pip install .``, no extras: no kopf, no Kubernetes client, no rich),
which is what a pod runs. With ``--before DIR`` an earlier checkout runs in alternation with
this one, on the same interpreter (its code first on ``PYTHONPATH`` and its directory the
working directory, which ``python -m`` puts first on the path).

Each checkout gets a bytecode cache of its own (``PYTHONPYCACHEPREFIX``), filled by one start
that is not counted: a pod runs from an installed package whose modules pip compiled at
install, so compiling the sources at every start would charge the worker for work a pod never
does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentpool.redis_server import RedisServer, free_port  # noqa: E402
from bench.readiness import wait_ready  # noqa: E402


def one(python: str, code: Path, url: str, cache: str) -> tuple[float, float, list[str]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{code}:{code / 'worker'}", "PYTHONPYCACHEPREFIX": cache,
           "AGENTPOOL_REDIS_URL": url, "AGENTPOOL_QUEUE": "startup",
           "AGENTPOOL_HANDLER": "agentpool_worker.builtin:noop", "AGENTPOOL_PORT": str(port),
           "AGENTPOOL_POD_NAME": "startup", "AGENTPOOL_LOG_LEVEL": "warning"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    process = subprocess.Popen([python, "-m", "agentpool_worker.main"], env=env, cwd=code,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(process, port, poll=0.005)
        ready = time.perf_counter() - start
        time.sleep(2.0)
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:")) / 1024
        modules = [m for m in ("kopf", "kubernetes", "rich", "aiohttp", "yaml")
                   if _imports(python, env, m)]
        return ready, rss, modules
    finally:
        process.terminate()
        process.wait(timeout=30)


def _imports(python: str, env: dict[str, str], module: str) -> bool:
    probe = (f"import sys, agentpool_worker.main, agentpool_worker.worker; "
             f"print('{module}' in sys.modules)")
    reply = subprocess.run([python, "-c", probe], env=env, cwd=env["PYTHONPATH"].split(":")[0],
                           capture_output=True, text=True)
    return reply.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", type=Path, default=None)
    args = parser.parse_args()
    codes = {"this checkout": ROOT}
    if args.before is not None:
        codes = {"before": args.before.resolve(), **codes}
    print(f"interpreter {args.python}; load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in codes}
    imported: dict[str, list[str]] = {}
    caches = {label: tempfile.mkdtemp(prefix="startup-pycache-") for label in codes}
    with RedisServer() as server:
        for label, code in codes.items():
            one(args.python, code, server.url, caches[label])
        for _ in range(args.runs):
            for label, code in codes.items():
                ready, rss, modules = one(args.python, code, server.url, caches[label])
                results[label].append((ready, rss))
                imported[label] = modules
    for label, runs in results.items():
        print(f"{label}: start → /readyz median {statistics.median(r for r, _ in runs):.3f} s "
              f"(min {min(r for r, _ in runs):.3f}), idle RSS median "
              f"{statistics.median(m for _, m in runs):.1f} MB over {len(runs)} runs; "
              f"imports of kopf/kubernetes/rich/aiohttp/yaml: {imported[label] or 'none'}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
