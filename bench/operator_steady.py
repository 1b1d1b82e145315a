"""The operator at steady state: resident memory, Redis connections and API requests per minute
(a benchmark, not a test).

    .venv/bin/python bench/operator_steady.py [--pools 1,200] [--window 60] [--busy 10]
    .venv/bin/python bench/operator_steady.py --quick      # 20 s windows: may miss what
                                                           # happens once a minute

Targets: at most 150 MB resident with 200 pools, and no API request at all for a pool whose
spec, Deployment and queue figures do not change.

For each pool count, a fresh emulated cluster (kmock with the operator tests'
`ClusterEmulator`), one private redis-server for all scenarios, and:

- the operator runs as in production, `python -m agentpool_operator.main` (`main.run`), in a
  process of its own, so its resident set (VmRSS in /proc) is the operator's alone: the
  interpreter, its imports, kopf, the clients and the per-pool state;
- the bench plays the cluster's controllers: three Nodes; for each Deployment, Running and
  Ready Pods on those nodes (named like a ReplicaSet's) and the Deployment's status. Half the
  pools take their Redis URL from a Secret of their own (like `examples/agentpool.yaml`), half
  from `spec.redis.url`;
- the pools are created, then the bench waits until the pools are steady: every pool has its
  Deployment with ready pods, a status for its generation, and neither the operator nor the
  bench wrote anything for `--settle` seconds;
- then, for `--window` seconds, it samples the operator's VmRSS, CPU time and Redis
  connections (every pool uses the same redis-server: its CLIENT LIST, less the bench's own
  connections, which carry a client name of their own), and counts the API requests the
  operator makes, by verb and path kind, attributed to a pool where the path, label selector,
  event or Secret names one. `--busy` pools (at most half of them) see their
  queue figures change every second during the window (one more delayed task);
  the other pools change in nothing, and their requests are the "unchanged" column.

Requests the operator cannot avoid whatever the pool count are "cluster": kopf re-opens a watch
that saw no event for 70 s (its inactivity timeout; a real API server also ends watches every
few minutes), and the node list for recovery's "node is gone" check is read every 30 s.
kmock replays every object when a watch re-opens (a real API server resumes from the
resourceVersion); the operator ignores replayed Deployments it already has.

kmock checks every request against its whole request log, so it slows down as the log grows
(~100 ms a request after a few hundred). `MeteredEmulator` counts each request on arrival and
drops it from kmock's log once answered: the log holds only the requests in progress (the
open watches), and kmock answers as fast at the end of a run as at its start. It also applies
a list's labelSelector, as an API server does (kmock returns every object of the kind), so a
pod list costs what it would cost in a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import redis.asyncio as aioredis

from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, free_port
from agentpool.scaling.scaledown import CHOSEN_COST, DELETION_COST_ANNOTATION, RELEASED_COST
from agentpool_operator.deployment import POOL_LABEL, WORKER_CONTAINER

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "operator")]

from operator_harness import (  # noqa: E402
    NAMESPACE,
    Cluster,
    ClusterEmulator,
    pool_manifest,
    seed_resources,
    write_kubeconfig,
)

RESULTS = ROOT / "bench" / "results"
NODES = ("node-a", "node-b", "node-c")
POLL_SECONDS = 2.0
"""The pools' pollSeconds (the product's default)."""
RSS_TARGET_MB = 150.0
BENCH_CLIENT = "agentpool-bench"
"""The client name of the bench's own Redis connections."""
CONTROLLER_PERIOD = 0.5
STEADY_TIMEOUT = 900.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# -- the emulated API server, metered -------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One API request as the benchmark counts it."""

    at: float
    operator: bool
    """Sent by the operator (not by the bench acting as the cluster's controllers)."""
    method: str
    kind: str
    """What was asked for, e.g. `pods (list)`, `agentpools/{name}/status`."""
    pool: str | None


@attrs.define(kw_only=True)
class MeteredEmulator(ClusterEmulator):
    """`ClusterEmulator` that counts requests and keeps kmock's request log short."""

    calls: list[Call] = attrs.field(factory=list, init=False)
    pod_pools: dict[str, str] = attrs.field(factory=dict, init=False)
    """Pod name -> pool, for the pods the bench created."""
    _replaced: dict[int, kmock.Request] = attrs.field(factory=dict, init=False)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self.calls.append(self._call(request))
        try:
            return await super()._handle(request)
        finally:
            self._forget(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        """Lists honour labelSelector, as an API server's do (kmock returns every object)."""
        listing = await super()._serve_list(request)
        selector = str((request.params or {}).get("labelSelector") or "")
        if selector and isinstance(listing, dict):
            listing["items"] = [item for item in listing.get("items") or []
                                if selected(item, selector)]
        return listing

    def _replace(self, request: kmock.Request, data: Any) -> kmock.Request:
        new = super()._replace(request, data)
        self._replaced[id(request)] = new
        return new

    def _forget(self, request: kmock.Request) -> None:
        logged = (self._replaced.pop(id(request), request), request)
        for index in range(len(self._requests) - 1, -1, -1):
            if any(self._requests[index] is entry for entry in logged):
                del self._requests[index]
                return

    def _call(self, request: kmock.Request) -> Call:
        agent = str(request.headers.get("User-Agent", ""))
        kind, pool = describe(request, self.pod_pools)
        return Call(time.monotonic(), not agent.startswith("kmock/"), request.method.value,
                    kind, pool)


def selected(item: Mapping[str, Any], selector: str) -> bool:
    """Whether the object's labels satisfy an equality-based label selector."""
    labels = (item.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, _, value = term.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def describe(request: kmock.Request, pod_pools: Mapping[str, str]) -> tuple[str, str | None]:
    """The request's path kind and the pool it concerns, if any."""
    resource = request.resource
    if resource is None:
        return "discovery", None
    plural = resource.plural or "?"
    params = request.params or {}
    if request.action == kmock.action.WATCH or params.get("watch") in ("true", "1"):
        return f"{plural} (watch)", None
    name = request.name
    suffix = f"/{request.subresource}" if request.subresource else ""
    if name is None:
        kind = f"{plural} (list)" if request.method.value == "GET" else plural
        selector = str(params.get("labelSelector") or "")
        prefix = f"{POOL_LABEL}="
        pool = next((part[len(prefix):] for part in selector.split(",")
                     if part.startswith(prefix)), None)
        if plural == "events" and isinstance(request.data, dict):
            involved = request.data.get("involvedObject") or {}
            if involved.get("kind") == "AgentPool":
                pool = involved.get("name")
        return kind, pool
    kind = f"{plural}/{{name}}{suffix}"
    if plural in ("agentpools", "deployments"):
        return kind, name
    if plural == "pods":
        return kind, pod_pools.get(name)
    if plural == "secrets":
        return kind, name.removesuffix("-redis")
    return kind, None


# -- the cluster's controllers, played by the bench ----------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_body(name: str, template: Mapping[str, Any], template_hash: str, node: str
             ) -> dict[str, Any]:
    labels = {**((template.get("metadata") or {}).get("labels") or {}),
              "pod-template-hash": template_hash}
    started = now_rfc3339()
    containers = [{"name": c.get("name", WORKER_CONTAINER), "image": c.get("image", "")}
                  for c in (template.get("spec") or {}).get("containers") or []]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"nodeName": node, "containers": containers},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [{
                "name": WORKER_CONTAINER, "ready": True, "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }],
        },
    }


class Controllers:
    """What the ReplicaSet controller and the kubelets would do: keep each Deployment's
    Running, Ready pods at its replica count and report them in its status."""

    def __init__(self, emulator: MeteredEmulator, cluster: Cluster) -> None:
        self.emulator = emulator
        self.cluster = cluster
        self.serial = 0
        self.last_write = time.monotonic()

    def _objects(self, plural: str) -> Iterator[dict[str, Any]]:
        for (resource, _, _), obj in list(self.emulator.objects.items()):
            if resource.plural == plural and not obj.deleted:
                yield obj.raw

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except (AssertionError, aiohttp.ClientError) as error:
                print(f"controllers: {error!r}", file=sys.stderr)
            await asyncio.sleep(CONTROLLER_PERIOD)

    async def sync(self) -> None:
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in self._objects("pods"):
            meta = pod.get("metadata") or {}
            pool = (meta.get("labels") or {}).get(POOL_LABEL)
            if pool is not None and not meta.get("deletionTimestamp"):
                pods.setdefault(pool, []).append(pod)
        for deployment in self._objects("deployments"):
            await self._sync_deployment(deployment, pods.get(deployment["metadata"]["name"], []))

    async def _sync_deployment(self, deployment: Mapping[str, Any],
                               pods: list[dict[str, Any]]) -> None:
        name = deployment["metadata"]["name"]
        spec = deployment.get("spec") or {}
        template = spec.get("template") or {}
        wanted = int(spec.get("replicas", 1))
        template_hash = hashlib.sha256(
            json.dumps(template, sort_keys=True).encode()
        ).hexdigest()[:10]
        while len(pods) < wanted:
            self.serial += 1
            pod_name = f"{name}-{template_hash}-{self.serial:05x}"
            self.emulator.pod_pools[pod_name] = name
            node = NODES[self.serial % len(NODES)]
            pods.append(await self.cluster.create(
                f"/api/v1/namespaces/{NAMESPACE}/pods",
                pod_body(pod_name, template, template_hash, node),
            ))
            self.last_write = time.monotonic()
        if len(pods) > wanted:
            def cost(pod: Mapping[str, Any]) -> int:
                annotations = (pod.get("metadata") or {}).get("annotations") or {}
                value = annotations.get(DELETION_COST_ANNOTATION)
                return int(value) if value in (CHOSEN_COST, RELEASED_COST) else 0
            for pod in sorted(pods, key=cost)[: len(pods) - wanted]:
                await self.cluster._send(
                    "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}"
                )
                self.last_write = time.monotonic()
        status = deployment.get("status") or {}
        generation = int(deployment["metadata"].get("generation") or 1)
        desired_status = {
            "observedGeneration": generation, "replicas": wanted, "readyReplicas": wanted,
            "updatedReplicas": wanted, "availableReplicas": wanted,
        }
        if any(status.get(key) != value for key, value in desired_status.items()):
            await self.cluster.patch_deployment(name, {"status": desired_status}, "status")
            self.last_write = time.monotonic()


# -- the operator in its own process ----------------------------------------------------------


class OperatorProcess:
    """`python -m agentpool_operator.main` against the emulated cluster."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.log_path = log
        self.port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "AGENTPOOL_OPERATOR_PORT": str(self.port),
            "AGENTPOOL_OPERATOR_NAMESPACES": "",
            "AGENTPOOL_OPERATOR_PEERING": "",
        }
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentpool_operator.main"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def proc_status(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        return fields

    def rss_mb(self) -> float:
        return int(self.proc_status()["VmRSS"].split()[0]) / 1024

    def peak_rss_mb(self) -> float:
        return int(self.proc_status()["VmHWM"].split()[0]) / 1024

    def threads(self) -> int:
        return int(self.proc_status()["Threads"])

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as stat:
            parts = stat.read().rpartition(")")[2].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the operator exited with {self.process.returncode}; see {self.log_path}"
            )

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        self._log.close()


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class Result:
    pools: int
    busy: int
    window: float
    setup_seconds: float
    rss_start_mb: float
    rss_mean_mb: float
    rss_max_mb: float
    rss_end_mb: float
    peak_rss_mb: float
    threads: int
    cpu_percent: float
    redis_connections_max: int
    redis_connections_end: int
    calls: list[Call] = field(default_factory=list)
    busy_pools: frozenset[str] = frozenset()

    def per_minute(self, calls: Sequence[Call]) -> float:
        return len(calls) * 60.0 / self.window

    @property
    def unchanged(self) -> list[Call]:
        return [c for c in self.calls if c.pool is not None and c.pool not in self.busy_pools]

    @property
    def changing(self) -> list[Call]:
        return [c for c in self.calls if c.pool in self.busy_pools]

    @property
    def cluster_wide(self) -> list[Call]:
        return [c for c in self.calls if c.pool is None]


def pool_names(count: int) -> list[str]:
    return [f"pool-{index:03d}" for index in range(count)]


def secret_body(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {"url": base64.b64encode(url.encode()).decode()},
    }


def pool_steady(cluster: Cluster, name: str) -> bool:
    try:
        pool = cluster.pool(name)
        deployment = cluster.deployment(name)
    except KeyError:
        return False
    status = pool.get("status") or {}
    ready = (deployment.get("status") or {}).get("readyReplicas")
    return (
        status.get("observedGeneration") == pool["metadata"].get("generation")
        and bool(status.get("conditions"))
        and ready == (deployment.get("spec") or {}).get("replicas")
        and status.get("readyReplicas") == ready
    )


async def wait_steady(emulator: MeteredEmulator, cluster: Cluster, controllers: Controllers,
                      operator: OperatorProcess, names: Sequence[str], settle: float) -> None:
    deadline = time.monotonic() + STEADY_TIMEOUT
    reported = 0.0
    while True:
        operator.check_alive()
        moment = time.monotonic()
        waiting = [name for name in names if not pool_steady(cluster, name)]
        last_write = max(
            [controllers.last_write]
            + [c.at for c in emulator.calls[-5000:] if c.operator and c.method in WRITE_METHODS]
        )
        quiet = moment - last_write
        if not waiting and quiet >= settle:
            return
        if moment > deadline:
            raise TimeoutError(f"not steady after {STEADY_TIMEOUT:.0f} s: "
                               f"{len(waiting)} pools waiting, quiet for {quiet:.1f} s")
        if moment - reported >= 10:
            reported = moment
            print(f"  waiting: {len(waiting)} pools not reconciled, no writes for {quiet:.1f} s "
                  f"(need {settle:.0f} s), operator RSS {operator.rss_mb():.0f} MB", flush=True)
        await asyncio.sleep(0.5)


async def operator_connections(redis: aioredis.Redis) -> int:
    """Connections to the bench's redis-server other than the bench's own."""
    clients = await redis.client_list()
    return sum(1 for c in clients if _text(c.get("name")) != BENCH_CLIENT)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


async def churn(queues: Sequence[TaskQueue]) -> None:
    """Change the busy pools' queue figures every second: one more delayed task (due after the
    run, so the backlog the scaling policy sees stays empty)."""
    while True:
        for queue in queues:
            await queue.submit({"bench": "steady"}, delay=3600)
        await asyncio.sleep(1.0)


async def scenario(count: int, busy: int, args: argparse.Namespace, redis_url: str,
                   redis: aioredis.Redis, workdir: Path) -> Result:
    names = pool_names(count)
    started = time.monotonic()
    async with MeteredEmulator() as emulator, kmock.Server(emulator):
        seed_resources(emulator)
        kubeconfig = write_kubeconfig(workdir / f"kubeconfig-{count}",
                                      str(emulator.url).rstrip("/"))
        cluster = Cluster(emulator)
        for node in NODES:
            await cluster.create("/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            })
        controllers = Controllers(emulator, cluster)
        controller_task = asyncio.create_task(controllers.run())
        log = workdir / f"operator-{count}.log"
        operator = OperatorProcess(kubeconfig, log)
        churn_task: asyncio.Task[None] | None = None
        try:
            for index, name in enumerate(names):
                if index % 2 == 0:
                    await cluster.create_secret(f"{name}-redis", {"url": redis_url})
                    manifest = pool_manifest(name, secret=f"{name}-redis",
                                             poll_seconds=POLL_SECONDS)
                else:
                    manifest = pool_manifest(name, redis_url=redis_url,
                                             poll_seconds=POLL_SECONDS)
                await cluster.create_pool(manifest)
            await wait_steady(emulator, cluster, controllers, operator, names, args.settle)
            setup = time.monotonic() - started
            print(f"  steady after {setup:.0f} s", flush=True)

            busy_pools = names[-busy:] if busy else []
            queues = [TaskQueue(redis, name) for name in busy_pools]
            if queues:
                churn_task = asyncio.create_task(churn(queues))
            window_start = time.monotonic()
            cpu_start = operator.cpu_seconds()
            samples = [operator.rss_mb()]
            connections = [await operator_connections(redis)]
            while time.monotonic() - window_start < args.window:
                await asyncio.sleep(1.0)
                operator.check_alive()
                samples.append(operator.rss_mb())
                connections.append(await operator_connections(redis))
            window_end = time.monotonic()
            elapsed = window_end - window_start
            cpu = operator.cpu_seconds() - cpu_start
            calls = [c for c in emulator.calls
                     if c.operator and window_start <= c.at < window_end]
            result = Result(
                pools=count, busy=len(busy_pools), window=elapsed, setup_seconds=setup,
                rss_start_mb=samples[0], rss_mean_mb=sum(samples) / len(samples),
                rss_max_mb=max(samples), rss_end_mb=samples[-1],
                peak_rss_mb=operator.peak_rss_mb(), threads=operator.threads(),
                cpu_percent=100.0 * cpu / elapsed,
                redis_connections_max=max(connections),
                redis_connections_end=connections[-1], calls=calls,
                busy_pools=frozenset(busy_pools),
            )
        finally:
            if churn_task is not None:
                churn_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await churn_task
            await operator.stop()
            controller_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller_task
    await redis.flushdb()
    return result


# -- report -----------------------------------------------------------------------------------


def summary_table(results: Sequence[Result]) -> str:
    header = (f"{'pools':>5} {'busy':>4} {'RSS MB mean/max':>16} {'peak':>6} {'CPU %':>6} "
              f"{'Redis conns max/end':>19} "
              f"{'req/min':>8} {'unchanged':>10} {'busy':>8} {'cluster':>8}  targets")
    lines = [header, "-" * len(header)]
    for r in results:
        unchanged = r.per_minute(r.unchanged)
        rss_ok = r.pools < 200 or r.rss_max_mb <= RSS_TARGET_MB
        kinds = sorted({f"{c.method} {c.kind}" for c in r.unchanged})
        verdict = ("RSS ok" if rss_ok else "RSS OVER") + (
            ", unchanged ok" if not kinds else f", unchanged MISSED: {', '.join(kinds)}")
        lines.append(
            f"{r.pools:>5} {r.busy:>4} {r.rss_mean_mb:>8.1f}/{r.rss_max_mb:<7.1f} "
            f"{r.peak_rss_mb:>6.1f} {r.cpu_percent:>6.1f} "
            f"{f'{r.redis_connections_max}/{r.redis_connections_end}':>19} "
            f"{r.per_minute(r.calls):>8.1f} "
            f"{unchanged:>10.1f} {r.per_minute(r.changing):>8.1f} "
            f"{r.per_minute(r.cluster_wide):>8.1f}  {verdict}"
        )
    return "\n".join(lines)


def breakdown_table(results: Sequence[Result]) -> str:
    """Requests per minute by verb and path kind: unchanged pools / busy pools / cluster."""
    kinds = sorted({(c.method, c.kind) for r in results for c in r.calls})
    header = f"{'request':<44}" + "".join(
        f"{f'{r.pools} pools: unch/busy/cluster':>34}" for r in results
    )
    lines = [header, "-" * len(header)]
    for method, kind in kinds:
        cells = []
        for r in results:
            groups = (r.unchanged, r.changing, r.cluster_wide)
            counts = [sum(1 for c in g if (c.method, c.kind) == (method, kind)) for g in groups]
            cells.append("/".join(f"{n * 60.0 / r.window:.1f}" for n in counts))
        lines.append(f"{method + ' ' + kind:<44}" + "".join(f"{cell:>34}" for cell in cells))
    return "\n".join(lines)


def to_json(result: Result) -> dict[str, Any]:
    by_kind: Counter[str] = Counter(f"{c.method} {c.kind}" for c in result.calls)
    unchanged: Counter[str] = Counter(f"{c.method} {c.kind}" for c in result.unchanged)
    return {
        "pools": result.pools, "busy": result.busy, "window_seconds": result.window,
        "setup_seconds": result.setup_seconds,
        "rss_mb": {"start": result.rss_start_mb, "mean": result.rss_mean_mb,
                   "max": result.rss_max_mb, "end": result.rss_end_mb,
                   "peak_since_start": result.peak_rss_mb},
        "threads": result.threads, "cpu_percent": result.cpu_percent,
        "redis_connections": {"max": result.redis_connections_max,
                              "end": result.redis_connections_end},
        "requests_per_minute": {
            "total": result.per_minute(result.calls),
            "unchanged_pools": result.per_minute(result.unchanged),
            "busy_pools": result.per_minute(result.changing),
            "cluster_wide": result.per_minute(result.cluster_wide),
        },
        "requests_by_kind": dict(by_kind),
        "unchanged_requests_by_kind": dict(unchanged),
    }


async def main(args: argparse.Namespace) -> int:
    counts = [int(part) for part in args.pools.split(",") if part.strip()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results: list[Result] = []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # One connection, named from the start: a second one, opened while CLIENT LIST runs,
        # would be listed before it is named and counted as the operator's.
        redis = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            server.url, client_name=BENCH_CLIENT, max_connections=1))
        try:
            for count in counts:
                busy = min(args.busy, count // 2)
                print(f"{count} pools ({busy} busy): creating, waiting for steady state",
                      flush=True)
                try:
                    results.append(await scenario(count, busy, args, server.url, redis, workdir))
                finally:
                    log = workdir / f"operator-{count}.log"
                    if log.exists():
                        (RESULTS / f"operator-steady-{stamp}-{count}.log").write_bytes(
                            log.read_bytes())
        finally:
            await redis.aclose()
    window = results[0].window if results else args.window
    print()
    print(f"window {window:.0f} s, pollSeconds {POLL_SECONDS:g}, statusRefreshSeconds 5 "
          "(default); requests per minute made by the operator")
    print(summary_table(results))
    print()
    print(breakdown_table(results))
    output = RESULTS / f"operator-steady-{stamp}.json"
    output.write_text(json.dumps([to_json(r) for r in results], indent=2))
    print(f"\nraw figures: {output.relative_to(ROOT)}; operator logs next to it")
    missed = any(r.unchanged for r in results) or any(
        r.pools >= 200 and r.rss_max_mb > RSS_TARGET_MB for r in results)
    return 1 if missed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pools", default="1,200", help="pool counts, comma-separated")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--quick", action="store_true", help="20 s windows, 10 s settle")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds without writes before the window starts")
    parser.add_argument("--busy", type=int, default=10,
                        help="pools whose queue figures change during the window "
                             "(at most half of the pools)")
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.settle = 20.0, 10.0
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
