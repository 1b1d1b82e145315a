"""``agentpool-worker``: the worker image's entrypoint.

It takes no arguments (``--help`` lists the environment variables it reads). Exit codes: 0
after a drain (SIGTERM/SIGINT), 2 on a configuration error (an argument, a bad setting, a
handler that cannot be imported, a probe port in use: one line on stderr, before anything
else happens), 3 when the handler module's ``startup`` hook fails (one line on stderr), 1 on
an unexpected crash (one JSON log line).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import sys
from collections.abc import Sequence

import structlog
from prometheus_client import disable_created_metrics

from agentpool.entrypoint import refuse, take_no_arguments
from agentpool.urls import mask_urls
from agentpool_worker.handlers import HandlerError, load_handler
from agentpool_worker.logs import configure_logging
from agentpool_worker.probes import PROBE_HOST
from agentpool_worker.settings import (
    ENV_PREFIX,
    ConfigError,
    env_name,
    load_settings,
    task_program,
    variables,
)
from agentpool_worker.worker import StartupFailed, Worker

PROG = "agentpool-worker"
EXIT_STARTUP_FAILED = 3

DESCRIPTION = (
    "Claims tasks from a Redis queue and runs them with a handler, AGENTPOOL_HANDLER="
    "package.module:function, whose module is looked for on PYTHONPATH, among the installed "
    "packages, then in the current directory. It takes no arguments: the environment "
    "variables below configure it (names "
    "in any case; in a cluster the operator sets them). What each one does: docs/worker.md, "
    "Configuration."
)
EXIT_STATUS = (
    "exit status: 0 after a drain (SIGTERM/SIGINT); 2 on a bad configuration (an argument, a "
    "setting, a handler that cannot be imported, a port in use: one line on stderr); 3 when "
    "the handler module's startup hook fails; 1 on an unexpected crash (one JSON log line)."
)


def main(argv: Sequence[str] | None = None) -> None:
    take_no_arguments(sys.argv[1:] if argv is None else argv, prog=PROG,
                      description=DESCRIPTION, variables=_variables(),
                      exit_status=EXIT_STATUS, env_prefix=ENV_PREFIX)
    try:
        settings = load_settings()
        _check_port(settings.port)
        handler = load_handler(settings.handler)
        if handler.runs_commands and not settings.runs_commands:
            # the command handler in a module of one's own: its command checked as for the
            # handler itself, so a wrong one stops the worker rather than fail every task
            task_program(settings.task_command)
    except (ConfigError, HandlerError) as exc:
        refuse(f"{PROG}: {exc}")
    configure_logging(settings.log_level)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    _exempt_from_collection()
    worker = Worker(settings, handler)
    code = 0
    runner = asyncio.Runner()
    try:
        runner.run(worker.run(install_signal_handlers=True))
    except StartupFailed as exc:
        print(f"{PROG}: {mask_urls(str(exc))}", file=sys.stderr, flush=True)
        code = EXIT_STARTUP_FAILED
    except Exception as exc:
        structlog.get_logger("agentpool.worker").error(
            "worker crashed", worker=worker.worker_id,
            error=mask_urls(f"{type(exc).__name__}: {exc}")
        )
        code = 1
    if worker.busy_threads or worker.runs_left:
        # Handler threads cannot be interrupted, and closing the loop would wait for runs that
        # ignore their cancellation: their tasks are back in the queue, nothing is owed them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    runner.close()
    sys.exit(code)


def _variables() -> list[tuple[str, str]]:
    """The environment variables, from the settings' own table (settings.py)."""
    return [(f"{v.name} ({_default(v.default)})", v.rule) for v in variables()]


def _default(default: str) -> str:
    return default if default.startswith("required") else f"default: {default}"


def _check_port(port: int) -> None:
    """A probe port that cannot be listened on is a configuration error, found before the
    worker starts: bound as the probe server binds it (SO_REUSEADDR), then let go."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((PROBE_HOST, port))
            probe.listen()
        except OSError as error:
            name = env_name("port")
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{name} {port} is in use (set another port, or 0 to run without the "
                    "/livez, /readyz and /metrics server)") from None
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise ConfigError(f"{name} {port} cannot be listened on: {reason}") from None


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
