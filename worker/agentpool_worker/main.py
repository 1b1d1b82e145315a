"""``agentpool-worker``: the worker image's entrypoint.

Exit codes: 0 after a drain (SIGTERM/SIGINT), 2 on a configuration error (one line on stderr,
before anything else happens), 3 when the handler module's ``startup`` hook fails (one line on
stderr), 1 on an unexpected crash (one JSON log line).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys

import structlog
from prometheus_client import disable_created_metrics

from agentpool_worker.handlers import HandlerError, load_handler
from agentpool_worker.logs import configure_logging
from agentpool_worker.settings import ConfigError, load_settings
from agentpool_worker.worker import StartupFailed, Worker

PROG = "agentpool-worker"
EXIT_STARTUP_FAILED = 3


def main() -> None:
    try:
        settings = load_settings()
        handler = load_handler(settings.handler)
    except (ConfigError, HandlerError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    configure_logging(settings.log_level)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    _exempt_from_collection()
    worker = Worker(settings, handler)
    code = 0
    try:
        asyncio.run(worker.run(install_signal_handlers=True))
    except StartupFailed as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        code = EXIT_STARTUP_FAILED
    except Exception as exc:
        structlog.get_logger("agentpool.worker").error(
            "worker crashed", worker=worker.worker_id, error=f"{type(exc).__name__}: {exc}"
        )
        code = 1
    if worker.busy_threads:
        # Handler threads cannot be interrupted and the interpreter would wait for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _exempt_from_collection() -> None:
    """Take what exists now (modules, the handler and what it imported) out of the cyclic
    collector's care: it lives as long as the process. Left in, it is walked by every full
    collection, which a worker under load ran about every 0.7 s, stopping the event loop
    (claims, heartbeats, completions) for about 30 ms each time; frozen, a full collection
    walks only what came later (3-8 ms at most; bench/worker_gc.py)."""
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    main()
