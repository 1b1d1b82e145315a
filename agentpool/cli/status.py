"""`agentpool status`: the fleet view.

With a cluster, it lists AgentPools (one namespace, or all with ``-A``) and shows their status
figures as the operator last wrote them (the ``kubectl get agentpools`` columns and a few more).
Throughput and failure rate are not in the status, so they come from each pool's queue: the
queue's cumulative counters are sampled twice, ``--sample`` seconds apart (with ``--watch``,
over the refreshes of the last ``--window`` seconds). That needs the pool's Redis to be
reachable from where the CLI runs: the URL comes from ``spec.redis.url``, from the Secret
named by ``spec.redis.urlSecretRef`` (read with the caller's Kubernetes credentials), or from
``--redis-url`` (e.g. through ``kubectl port-forward``); when it is not reachable the rates
show ``-`` with the reason under the table.

Without a cluster, ``--queue NAME`` (with ``--redis-url`` or ``$AGENTPOOL_REDIS_URL``) shows
the same figures for one queue, read live from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from agentpool.cli.common import (
    CommandFailed,
    UsageError,
    add_output_option,
    add_redis_option,
    add_watch_options,
    command,
    connect,
    never_used,
    number,
    redis_failure,
    redis_url,
)
from agentpool.cli.common import show as show_view
from agentpool.cli.fleet import (
    MAX_WINDOW,
    CounterSample,
    PoolSummary,
    RateTracker,
    pool_summary,
    queue_summary,
)
from agentpool.cli.views import FleetRow, Grid, fleet_grid, fleet_json
from agentpool.client import ENV_REDIS_URL, Client, ClientConfigError
from agentpool.data_loss import QueueReading, reading_of
from agentpool.kubeconfig import kubeconfig_problem
from agentpool.models import GROUP, PLURAL, VERSION
from agentpool.protocol import TaskQueue, full_among
from agentpool.redis_errors import REDIS_FAILURES
from agentpool.urls import redact_url

REQUEST_TIMEOUT = 15.0
POOL_REDIS_TIMEOUT = 3.0
MAX_SAMPLE = 3600.0
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

Snapshot = tuple[list[FleetRow], float]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="fleet view: every AgentPool with queue figures, throughput and failure rate",
        description="List AgentPools with the figures the operator reports (ready/desired "
        "replicas, queued, in flight, dead, live workers, health) plus throughput and failure "
        "rate, measured by sampling each pool's queue counters --sample seconds apart (with "
        "--watch: over the last --window seconds). Rates need the pool's Redis to be reachable "
        "from here: spec.redis.url, the Secret of spec.redis.urlSecretRef, or --redis-url "
        "(e.g. through kubectl port-forward). Without a cluster, --queue NAME shows one "
        "queue read from --redis-url.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    where.add_argument("-A", "--all-namespaces", action="store_true",
                       help="pools of every namespace")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, "
                        "or the in-cluster service account)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("-q", "--queue", metavar="NAME",
                        help="no cluster: show this queue, read from --redis-url")
    add_redis_option(parser, help_text="with --queue: the Redis to read (default: "
                     "$AGENTPOOL_REDIS_URL); with a cluster: read every pool's counters from "
                     "this Redis instead of the pool's own (e.g. a port-forward)")
    parser.add_argument("--sample", type=number(float, low=0, high=MAX_SAMPLE), default=3.0,
                        metavar="SECONDS",
                        help="seconds between the two counter samples behind the rates "
                        "(default 3; 0 = no rates unless --watch)")
    parser.add_argument("--window", type=number(float, above=0, high=MAX_WINDOW),
                        default=300.0, metavar="SECONDS",
                        help="with --watch: span of the rates (default 300)")
    add_output_option(parser)
    add_watch_options(parser)
    parser.set_defaults(func=run)


# -- Kubernetes ------------------------------------------------------------------------------


def _kube() -> Any:
    """The official client, imported on first use: it is slow to import and only `status`
    needs it."""
    try:
        import kubernetes
    except ImportError:
        raise CommandFailed(
            "reading AgentPools needs the Kubernetes client: pip install 'agentpool[cli]' "
            "(or --queue NAME with --redis-url to read one queue without a cluster)"
        ) from None
    return kubernetes


def _kubeconfig_paths(explicit: str | None) -> str | None:
    """The kubeconfig path list to use, or None when there is no file to read (in a cluster:
    its service account is used). A $KUBECONFIG naming no file that exists is named, out of a
    cluster, rather than taken for no configuration at all."""
    from_env = os.environ.get("KUBECONFIG")
    value = explicit or from_env or os.path.expanduser("~/.kube/config")
    paths = [p for p in value.split(os.pathsep) if p]
    if explicit and not all(os.path.exists(p) for p in paths):
        raise CommandFailed(f"kubeconfig {explicit} not found")
    if any(os.path.exists(p) for p in paths):
        return value
    if not explicit and from_env and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise CommandFailed(f"kubeconfig {from_env} (from $KUBECONFIG) not found")
    return None


@dataclass
class KubeReader:
    """The two reads the fleet view needs, through the official client (blocking calls)."""

    api_client: Any
    default_namespace: str

    @classmethod
    def from_config(cls, kubeconfig: str | None, context: str | None) -> KubeReader:
        kube = _kube()
        configuration = kube.client.Configuration()
        path = _kubeconfig_paths(kubeconfig)
        try:
            if path is None:
                if not os.environ.get("KUBERNETES_SERVICE_HOST"):
                    raise CommandFailed(
                        "no Kubernetes configuration (no kubeconfig, not in a cluster): pass "
                        "--kubeconfig, or --queue with --redis-url to read one queue without "
                        "a cluster"
                    )
                kube.config.load_incluster_config(client_configuration=configuration)
                namespace = "default"
                with contextlib.suppress(OSError), open(IN_CLUSTER_NAMESPACE) as handle:
                    namespace = handle.read().strip() or namespace
            else:
                kube.config.load_kube_config(
                    config_file=path, context=context, client_configuration=configuration,
                    persist_config=False,
                )
                contexts, active = kube.config.list_kube_config_contexts(path)
                chosen = next((c for c in contexts if c.get("name") == context), active)
                namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        except kube.config.ConfigException as exc:
            raise CommandFailed(f"unusable Kubernetes configuration: {exc}") from None
        except Exception as exc:
            problem = kubeconfig_problem(exc)
            if problem is None:
                raise
            raise UsageError(f"the kubeconfig {path} is {problem}") from None
        return cls(kube.client.ApiClient(configuration=configuration), namespace)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def list_pools(self, namespace: str | None) -> list[dict[str, Any]]:
        kube = _kube()
        api = kube.client.CustomObjectsApi(self.api_client)
        body: Any
        try:
            if namespace is None:
                body = api.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _request_timeout=REQUEST_TIMEOUT)
            else:
                body = api.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT)
        except kube.client.ApiException as exc:
            raise CommandFailed(self._api_failure(exc, namespace)) from None
        except Exception as exc:
            raise CommandFailed(
                f"cannot reach the Kubernetes API at {self.host}: {_short_reason(exc)}"
            ) from None
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    def read_secret(self, namespace: str, name: str, key: str) -> str:
        kube = _kube()
        api = kube.client.CoreV1Api(self.api_client)
        try:
            secret = api.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except kube.client.ApiException as exc:
            raise LookupError(f"cannot read Secret {namespace}/{name}: "
                              f"{_api_message(exc)}") from None
        data = secret.data or {}
        if key not in data:
            raise LookupError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode().strip()

    def _api_failure(self, exc: Any, namespace: str | None) -> str:
        where = "in all namespaces" if namespace is None else f"in namespace {namespace}"
        if exc.status == 404:
            return (f"the Kubernetes API at {self.host} does not know {PLURAL}.{GROUP}: "
                    "is the AgentPool CRD installed?")
        if exc.status == 401:
            return f"the Kubernetes API at {self.host} refused the credentials"
        if exc.status == 403:
            return f"not allowed to list {PLURAL} {where}: {_api_message(exc)}"
        return f"listing {PLURAL} {where} failed: {_api_message(exc)}"

    def close(self) -> None:
        self.api_client.close()


def _api_message(exc: Any) -> str:
    with contextlib.suppress(ValueError, TypeError):
        message = json.loads(exc.body or "").get("message")
        if message:
            return str(message)
    return f"{exc.status} {exc.reason}"


def _short_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc)
    if ">: " in text:
        text = text.rsplit(">: ", 1)[1]
    return text.strip().rstrip(".)'\"") or type(exc).__name__


# -- rates -----------------------------------------------------------------------------------


@dataclass
class PoolRates:
    """Counter samples of one pool's queue, or why there are none."""

    tracker: RateTracker
    client: Client | None = None
    queue: TaskQueue | None = None
    error: str | None = None

    async def sample(self) -> None:
        if self.queue is None or self.client is None:
            return
        try:
            async with asyncio.timeout(POOL_REDIS_TIMEOUT + 2):
                figures = await self.queue.figures()
        except REDIS_FAILURES as exc:
            self.error = redis_failure(self.client.url, exc)
            return
        self.error = None
        self.tracker.add(CounterSample(time.monotonic(), figures.stats))


@dataclass
class Fleet:
    """State kept across refreshes: the reader, and the rate samples of every pool seen."""

    args: argparse.Namespace
    reader: KubeReader
    namespace: str | None
    rates: dict[tuple[str, str], PoolRates] = field(default_factory=dict)

    async def pool_rates(self, pool: PoolSummary) -> PoolRates:
        key = (pool.namespace or "", pool.name)
        if key not in self.rates:
            self.rates[key] = await self._open(pool)
        return self.rates[key]

    async def _open(self, pool: PoolSummary) -> PoolRates:
        tracker = RateTracker(self.args.window)
        url = self.args.redis_url or pool.redis_url
        if url is None and pool.redis_secret is not None:
            ref = pool.redis_secret
            try:
                url = await asyncio.to_thread(
                    self.reader.read_secret, pool.namespace or "", ref.name, ref.key)
            except LookupError as exc:
                return PoolRates(tracker, error=str(exc))
            except Exception as exc:
                return PoolRates(tracker, error=f"cannot read Secret {ref.name}: "
                                 f"{_short_reason(exc)}")
        if not url:
            return PoolRates(tracker, error="the pool names no Redis URL")
        try:
            client = Client.from_url(url, connect_timeout=POOL_REDIS_TIMEOUT,
                                     socket_timeout=POOL_REDIS_TIMEOUT)
            queue = client.queue(pool.queue)
        except (ClientConfigError, ValueError) as exc:
            return PoolRates(tracker, error=f"unusable Redis URL {redact_url(url)}: {exc}")
        return PoolRates(tracker, client=client, queue=queue)

    async def snapshot(self) -> Snapshot:
        objects = await asyncio.to_thread(self.reader.list_pools, self.namespace)
        pools = sorted((pool_summary(o) for o in objects),
                       key=lambda p: (p.namespace or "", p.name))
        sampling = [await self.pool_rates(p) for p in pools]
        await asyncio.gather(*(r.sample() for r in sampling))
        if self.args.sample > 0 and any(
            r.queue is not None and r.tracker.rates() is None for r in sampling
        ):
            await asyncio.sleep(self.args.sample)
            await asyncio.gather(*(r.sample() for r in sampling))
        rows = [FleetRow(p, r.tracker.rates(), r.error) for p, r in zip(pools, sampling,
                                                                         strict=True)]
        return rows, time.time()

    async def aclose(self) -> None:
        for pool in self.rates.values():
            if pool.client is not None:
                await pool.client.aclose()
        self.reader.close()


# -- command ---------------------------------------------------------------------------------


def _fleet_json(namespace: str | None, snapshot: Snapshot) -> dict[str, Any]:
    rows, now = snapshot
    return {"namespace": namespace, "pools": fleet_json(rows, now)}


def _fleet_grid(namespace: str | None, snapshot: Snapshot) -> Grid:
    rows, now = snapshot
    grid = fleet_grid(rows, now, all_namespaces=namespace is None)
    if not rows:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        grid.notes.append(f"No AgentPools in {where}.")
    return grid


async def show_cluster(args: argparse.Namespace) -> int:
    reader = await asyncio.to_thread(KubeReader.from_config, args.kubeconfig, args.context)
    namespace = None if args.all_namespaces else (args.namespace or reader.default_namespace)
    fleet = Fleet(args, reader, namespace)
    try:
        return await show_view(
            args, fleet.snapshot,
            lambda snap: _fleet_grid(namespace, snap),
            lambda snap: _fleet_json(namespace, snap),
        )
    finally:
        await fleet.aclose()


async def show_queue(args: argparse.Namespace) -> int:
    if redis_url(args) is None:
        raise UsageError("--queue reads the queue from Redis: pass --redis-url or set "
                         f"{ENV_REDIS_URL}")
    name: str = args.queue
    tracker = RateTracker(args.window)
    marks = QueueReading(name, used=True, submitted=None)  # what the last snapshot read
    async with connect(args) as client:
        queue = client.queue(name)

        async def snapshot() -> Snapshot:
            nonlocal marks
            figures = await queue.figures()
            tracker.add(CounterSample(time.monotonic(), figures.stats))
            if figures.used and args.sample > 0 and tracker.rates() is None:
                await asyncio.sleep(args.sample)
                figures = await queue.figures()
                tracker.add(CounterSample(time.monotonic(), figures.stats))
            marks = reading_of(name, figures)
            full = name in await full_among([queue])
            return ([FleetRow(queue_summary(name, figures, full=full), tracker.rates())],
                    time.time())

        async def unused(_: Snapshot) -> str | None:
            return None if marks.used else await never_used(queue)

        return await show_view(
            args, snapshot,
            lambda snap: fleet_grid(snap[0], snap[1], all_namespaces=False),
            lambda snap: {"namespace": None, "pools": fleet_json(*snap)},
            unused,
            lambda _: marks,
        )


def check_args(args: argparse.Namespace) -> None:
    if args.sample < 0 or args.window <= 0:
        raise UsageError("--sample must be 0 or more and --window more than 0")
    if args.queue and (args.namespace or args.all_namespaces or args.kubeconfig
                       or args.context):
        raise UsageError("--queue reads one queue from Redis; it takes no cluster options")


@command
async def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.queue:
        return await show_queue(args)
    return await show_cluster(args)

