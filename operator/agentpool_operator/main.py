"""`agentpool-operator`: configure kopf from the environment and run it.

kopf logs in the way kubectl would: with the pod's service account in a cluster, with the
kubeconfig ($KUBECONFIG or ~/.kube/config) elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading

import kopf
import kubernetes

from agentpool.models import GROUP

from . import handlers as _handlers  # noqa: F401  (registers the handlers with kopf)
from . import metrics
from . import pod_events as _pod_events  # noqa: F401  (registers the pod event handler)
from .context import OperatorContext
from .deployment import POOL_LABEL
from .kube import KubeApi
from .settings import OperatorSettings, load_settings

FINALIZER = f"{GROUP}/finalizer"


def kopf_settings(config: OperatorSettings) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Progress and diff-base in annotations: a structural CRD schema would prune them from status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    # Only the pools' Deployments and pods are of interest: let the API server filter them.
    settings.watching.label_selectors["apps", "v1", "deployments"] = POOL_LABEL
    settings.watching.label_selectors["v1", "pods"] = POOL_LABEL
    settings.peering.standalone = config.standalone
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        # Peers of equal priority all pause; a random one per process lets exactly one lead.
        settings.peering.priority = random.randint(1, 32767)
    return settings


def configure_logging(level: str) -> None:
    kopf.configure(debug=level == "debug", log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(level.upper())


async def run(
    config: OperatorSettings,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until it is stopped (a signal, or `stop_flag`)."""
    kube = await asyncio.to_thread(KubeApi.from_environment)
    ctx = OperatorContext(settings=config, kube=kube)
    metrics.count_redis_clients(ctx.redis)
    server = await metrics.serve(config.port)
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


def main() -> None:
    config = load_settings()
    configure_logging(config.log_level)
    try:
        asyncio.run(run(config))
    except kubernetes.config.ConfigException as error:
        print(
            "agentpool-operator: no Kubernetes credentials: not in a cluster, and no usable "
            f"kubeconfig ($KUBECONFIG or ~/.kube/config): {error}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
