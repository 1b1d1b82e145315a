"""`agentpool-operator`: configure kopf from the environment and run it.

kopf logs in the way kubectl would: with the pod's service account in a cluster, with the
kubeconfig ($KUBECONFIG or ~/.kube/config) elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import sys
import threading
import typing
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes

from agentpool.entrypoint import take_no_arguments
from agentpool.models import GROUP

from . import handlers as _handlers  # noqa: F401  (registers the handlers with kopf)
from . import metrics
from . import pod_events as _pod_events  # noqa: F401  (registers the pod event handler)
from . import pool_deletion as _pool_deletion  # noqa: F401  (registers the delete handler)
from .context import OperatorContext
from .deployment import POOL_LABEL
from .installed_crd import CRD_NAME, CRD_PATH
from .kube import KubeApi, KubeconfigError
from .settings import ENV_PREFIX, OperatorSettings, load_settings

FINALIZER = f"{GROUP}/finalizer"
REPORTING_COMPONENT = "agentpool-operator"
KOPF_PATTERN = re.compile(r"[!*?,]")
"""What makes a kopf namespace entry a pattern (a glob, a negation, several in one) rather than
a name: kopf's own test (select_specific_namespaces, kopf/_cogs/structs/references.py)."""


def names_only(namespaces: Sequence[str]) -> bool:
    """Whether the operator serves a list of namespaces, all given by exact name."""
    return bool(namespaces) and not any(KOPF_PATTERN.search(name) for name in namespaces)


def kopf_settings(config: OperatorSettings) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Progress and diff-base in annotations: a structural CRD schema would prune them from status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.reporting_instance = socket.gethostname()  # the pod's name in a cluster
    settings.posting.event_name_prefix = f"{REPORTING_COMPONENT}-"
    # Only the pools' Deployments and pods are of interest: let the API server filter them.
    settings.watching.label_selectors["apps", "v1", "deployments"] = POOL_LABEL
    settings.watching.label_selectors["v1", "pods"] = POOL_LABEL
    # Listed names need no scanning: with it, kopf lists and watches namespaces cluster-wide (the
    # chart does not grant that) and backs off ~54 s on the 403 before serving. Without it, kopf
    # does not follow CRDs either: it serves the AgentPool CRD it finds at start.
    settings.scanning.disabled = names_only(config.namespaces)
    settings.peering.standalone = config.standalone
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        # Peers of equal priority all pause; a random one per process lets exactly one lead.
        settings.peering.priority = random.randint(1, 32767)
    return settings


class DebugLevel(logging.Filter):
    """Logs a library writes at INFO that are routine: kopf's "Handler 'pod_event' succeeded."
    after every watch event, the access line of every probe and scrape. They go out at DEBUG
    (and only when DEBUG is on), so the INFO log is what the operator did."""

    def __init__(self, logger: str, message: re.Pattern[str] | None = None) -> None:
        super().__init__(logger)
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if self.message is not None and not self.message.match(str(record.msg)):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


ROUTINE = (
    DebugLevel("kopf.objects", re.compile(r"Handler '[^']+' succeeded\.$")),
    DebugLevel("aiohttp.access"),
)


def configure_logging(level: str) -> None:
    kopf.configure(debug=level == "debug", log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(level.upper())
    for routine in ROUTINE:
        logger = logging.getLogger(routine.name)
        logger.removeFilter(routine)
        logger.addFilter(routine)


class PortUnavailable(Exception):
    """The operator cannot listen on its configured port."""


CRD_CHECK_SECONDS = 5.0
"""How long the start-up look for the CRD may take: the health port is not served yet, and
the client's own timeout and retries against a hung API server take two minutes, past what
the liveness probe allows."""


class CrdMissing(Exception):
    """The AgentPool CRD is not installed, and the operator would not notice it appear."""


async def require_crd(kube: KubeApi) -> None:
    """With listed namespaces kopf does not watch for CRDs (scanning is off, see
    kopf_settings): started before its CRD, the operator would run, ready, and serve nothing
    until restarted. It stops instead, so that Kubernetes restarts it once the CRD is there.
    A CRD it may not read is not judged here."""
    try:
        found = await asyncio.wait_for(kube.get(CRD_PATH), CRD_CHECK_SECONDS)
    except Exception:  # unreadable, or an API server that hangs: InstalledCrd's check later
        return
    if found is None:
        raise CrdMissing(
            f"the AgentPool CRD ({CRD_NAME}) is not installed: apply it first (kubectl apply "
            "-f charts/agentpool-operator/crds/); an operator serving listed namespaces does "
            "not watch for it to appear")


async def run(
    config: OperatorSettings,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until it is stopped (a signal, or `stop_flag`)."""
    kube = await asyncio.to_thread(KubeApi.from_environment)
    if names_only(config.namespaces):
        await require_crd(kube)
    ctx = OperatorContext(settings=config, kube=kube)
    metrics.count_redis_clients(ctx.redis)
    try:
        server = await metrics.serve(config.port)
    except OSError as error:
        await ctx.close()
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise PortUnavailable(
            f"cannot serve /healthz and /metrics on port {config.port} "
            f"({ENV_PREFIX}PORT): {reason}"
        ) from None
    try:
        await kopf.operator(
            settings=kopf_settings(config),
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            memo=kopf.Memo(context=ctx),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await server.cleanup()
        await ctx.close()


PROG = "agentpool-operator"
DESCRIPTION = (
    "Runs the AgentPool operator (kopf): for each AgentPool, its workers' Deployment, their "
    "scaling and the queue's recovery. It takes no arguments: the environment variables below "
    "configure it (the Helm chart sets them). It reaches Kubernetes as kubectl would: with "
    "the pod's service account in a cluster, else with $KUBECONFIG or ~/.kube/config."
)
EXIT_STATUS = (
    "exit status: 0 when stopped (SIGTERM/SIGINT); 2 on a bad configuration (an argument, a "
    "setting, an unreadable kubeconfig, a port in use: one line on stderr); 1 without "
    "Kubernetes credentials, without the AgentPool CRD when serving listed namespaces (one "
    "line), or on an unexpected error."
)


def parse_arguments(argv: Sequence[str]) -> None:
    """``--help`` prints the help and exits 0 (before anything connects); any argument exits
    2 with one line."""
    take_no_arguments(argv, prog=PROG, description=DESCRIPTION, variables=_variables(),
                      exit_status=EXIT_STATUS, env_prefix=ENV_PREFIX)


def _variables() -> list[tuple[str, str]]:
    """The environment variables, from the settings model's own fields (settings.py)."""
    out = []
    for name, field in OperatorSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        choices = typing.get_args(field.annotation) if typing.get_origin(
            field.annotation) is typing.Literal else ()
        rule = field.description or (f"one of {', '.join(map(str, choices))}"
                                     if choices else "")
        out.append((f"{ENV_PREFIX}{name.upper()} (default: {_shown(default)})", rule))
    return out


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    return str(default) if default or default == 0 else "empty"


def main(argv: Sequence[str] | None = None) -> None:
    parse_arguments(sys.argv[1:] if argv is None else argv)
    config = load_settings()
    configure_logging(config.log_level)
    try:
        asyncio.run(run(config))
    except (KubeconfigError, PortUnavailable) as error:
        print(f"agentpool-operator: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except CrdMissing as error:
        print(f"agentpool-operator: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except kubernetes.config.ConfigException as error:
        print(
            "agentpool-operator: no Kubernetes credentials: not in a cluster, and no usable "
            f"kubeconfig ($KUBECONFIG or ~/.kube/config): {error}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
