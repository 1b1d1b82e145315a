"""Run the same workloads through agentpool, Celery, RQ, arq, Dramatiq and taskiq; print the
tables.

    .venv/bin/python -m bench.peers [--quick] [--only agentpool,celery,...] [--json FILE]

Everything runs against one private ``redis-server`` (no persistence, like a default
redis.conf), each workload on a flushed database. Workloads, in order:

1. enqueue: one producer submits no-op tasks one at a time, then 64 producers at once (threads
   or coroutines, as the system's client is blocking or asyncio), then with its batch API.
2. drain: the queue is filled, set aside (``RENAME``), the worker processes are started and
   reported ready, then the queue is put back; the rate is read from the queue depth between
   90 % and 10 % of the fill (or over a capped window), so start-up and the tail do not count.
3. latency: one worker process; one stamp task every 10 ms; the task records how long after
   its submit it started (both clocks are this machine's).
4. recovery: two worker processes; one 20 s task; kill -9 of the process tree running it (as
   when a container dies); time until the other worker starts it. All recovery scenarios run
   at once (each on its own database): they spend their time waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, free_port
from bench import readiness
from bench.peers import common, e2e, venvs

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("celery", "rq", "arq", "dramatiq", "taskiq")
SYSTEMS = ("agentpool", *PEERS)
LONG_TASK_SECONDS = 20.0
BEFORE = "before"
"""agentpool from another checkout (``--before DIR``), run side by side with this one."""
_before_root: Path | None = None
REAP_EVERY = 2.0
"""How often the lease-expiry-only scenarios run ``reap_expired``: the operator does it on
every pass of a pool's loop, every ``scaling.pollSeconds`` (default 2 s)."""


@dataclass(frozen=True)
class Plan:
    enqueue_single: int
    enqueue_batch: int
    drain_window: float
    latency_tasks: int
    recovery_cap: float

    @staticmethod
    def full() -> Plan:
        return Plan(enqueue_single=5_000, enqueue_batch=20_000, drain_window=8.0,
                    latency_tasks=1_000, recovery_cap=120.0)

    @staticmethod
    def quick() -> Plan:
        return Plan(enqueue_single=1_000, enqueue_batch=5_000, drain_window=2.0,
                    latency_tasks=200, recovery_cap=45.0)


# -- systems --------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    depth_key: str
    depth_is_list: bool
    hold_keys: tuple[str, ...]
    """Keys renamed away while workers start, so a drain starts with every worker ready."""

    @property
    def driver(self) -> str:
        return f"bench.peers.drv_{'agentpool' if self.name == BEFORE else self.name}"


SYSTEM_INFO = {
    "agentpool": System("agentpool", "ap:{bench}:queued", False,
                        ("ap:{bench}:queued", "ap:{bench}:wake")),
    "celery": System("celery", common.QUEUE, True, (common.QUEUE,)),
    "rq": System("rq", f"rq:queue:{common.QUEUE}", True, (f"rq:queue:{common.QUEUE}",)),
    "arq": System("arq", common.QUEUE, False, (common.QUEUE,)),
    "dramatiq": System("dramatiq", f"dramatiq:{common.QUEUE}", True,
                       (f"dramatiq:{common.QUEUE}",)),
    "taskiq": System("taskiq", common.QUEUE, False, (common.QUEUE,)),
    BEFORE: System(BEFORE, "ap:{bench}:queued", False, ("ap:{bench}:queued", "ap:{bench}:wake")),
}


def code_root(system: str) -> Path:
    """The checkout a system's agentpool code comes from. Its processes also start there:
    ``python -m`` puts the working directory first on the path."""
    return _before_root if system == BEFORE and _before_root is not None else ROOT


def pythonpath(system: str) -> str:
    root = code_root(system)
    return f"{root}:{root / 'worker'}"


@dataclass
class Env:
    """Where things are: the Redis server, each system's interpreter, the log folder."""

    server: RedisServer
    pythons: dict[str, Path]
    logs: Path

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def bin(self, system: str, script: str) -> str:
        return str(self.pythons[system].parent / script)


@dataclass(frozen=True)
class WorkerSpec:
    """How one worker process of a configuration is started (argv and extra environment)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    pod: str = ""


@dataclass(frozen=True)
class Config:
    """A worker configuration of one system: a column of the worker tables."""

    label: str
    system: str
    describe: str
    spec: Callable[[Env, str, str, str], WorkerSpec]
    """(env, phase, profile, name) -> how to start one worker process."""


def _agentpool(concurrency: int | None) -> Callable[[Env, str, str, str], WorkerSpec]:
    handlers = {"drain": "agentpool_worker.builtin:noop",
                "e2e": "bench.peers.drv_agentpool:work",
                "latency": "bench.peers.drv_agentpool:stamp",
                "recovery": "bench.peers.drv_agentpool:long_task"}

    def spec(env: Env, phase: str, profile: str, name: str) -> WorkerSpec:
        port = free_port()
        script = Path(sys.executable).parent / "agentpool-worker"
        argv = [str(script)] if script.exists() else [sys.executable, "-m",
                                                       "agentpool_worker.main"]
        extra = {"AGENTPOOL_QUEUE": common.QUEUE, "AGENTPOOL_HANDLER": handlers[phase],
                 "AGENTPOOL_POD_NAME": name, "AGENTPOOL_PORT": str(port),
                 "AGENTPOOL_LOG_LEVEL": "warning", "AGENTPOOL_DRAIN_SECONDS": "1"}
        if concurrency is not None and profile == "throughput":
            extra["AGENTPOOL_CONCURRENCY"] = str(concurrency)
        return WorkerSpec(argv, extra, port=port, pod=name)

    return spec


def _celery(pool: str | None, concurrency: int | None) -> Callable[[Env, str, str, str],
                                                                    WorkerSpec]:
    def spec(env: Env, phase: str, profile: str, name: str) -> WorkerSpec:
        argv = [env.bin("celery", "celery"), "-A", "bench.peers.drv_celery", "worker",
                "-Q", common.QUEUE, "-l", "warning", "-n", f"{name}@%h"]
        if profile == "throughput":
            argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            if pool:
                argv += ["--pool", pool]
            if concurrency:
                argv += ["--concurrency", str(concurrency)]
        return WorkerSpec(argv)

    return spec


def _rq(worker_class: str | None) -> Callable[[Env, str, str, str], WorkerSpec]:
    def spec(env: Env, phase: str, profile: str, name: str) -> WorkerSpec:
        argv = [env.bin("rq", "rq"), "worker", "--url", env_url_placeholder, "--name", name,
                "--logging_level", "WARNING"]
        if worker_class and profile == "throughput":
            argv += ["--worker-class", worker_class]
        if profile == "reliable":
            argv += ["--maintenance-interval", "10", "--job-monitoring-interval", "5",
                     "--worker-ttl", "25"]
        return WorkerSpec([*argv, common.QUEUE])

    return spec


def _arq(env: Env, phase: str, profile: str, name: str) -> WorkerSpec:
    return WorkerSpec([str(env.pythons["arq"]), "-m", "bench.peers.drv_arq", "worker", "{}"])


def _dramatiq(threads: int) -> Callable[[Env, str, str, str], WorkerSpec]:
    def spec(env: Env, phase: str, profile: str, name: str) -> WorkerSpec:
        return WorkerSpec([env.bin("dramatiq", "dramatiq"), "bench.peers.drv_dramatiq",
                           "--processes", "1", "--threads", str(threads),
                           "--queues", common.QUEUE])

    return spec


DRAMATIQ_THREADS = 32
"""Dramatiq's threads per process in its high-throughput configuration (its default is 8):
the best of 8, 32, 64 and 100 on the end-to-end workload (bench/README.md, Configurations).
Its prefetch follows: twice the threads."""


def _taskiq(env: Env, phase: str, profile: str, name: str) -> WorkerSpec:
    return WorkerSpec([env.bin("taskiq", "taskiq"), "worker", "bench.peers.drv_taskiq:broker",
                       "--workers", "1", "--log-level", "WARNING"])


env_url_placeholder = "{url}"
"""Replaced by the database's URL when a worker starts."""

CONFIGS = [
    Config("agentpool", "agentpool", "agentpool-worker, concurrency 100", _agentpool(100)),
    Config("agentpool concurrency 8", "agentpool", "agentpool-worker, concurrency 8",
           _agentpool(8)),
    Config("celery prefork", "celery", "prefork pool, 1 child per worker, prefetch x64, "
           "without gossip/mingle/heartbeat, early ack", _celery("prefork", 1)),
    Config("celery threads", "celery", "threads pool, 8 threads, prefetch x64, "
           "without gossip/mingle/heartbeat, early ack", _celery("threads", 8)),
    Config("rq SimpleWorker", "rq", "rq worker --worker-class rq.SimpleWorker",
           _rq("rq.SimpleWorker")),
    Config("rq Worker", "rq", "rq worker (forks a work horse per job; RQ's default)", _rq(None)),
    Config("arq", "arq", "max_jobs 100, poll_delay 0.05 s", _arq),
    Config("dramatiq", "dramatiq", f"1 process x {DRAMATIQ_THREADS} threads (tuned; default 8), "
           f"prefetch {2 * DRAMATIQ_THREADS}", _dramatiq(DRAMATIQ_THREADS)),
    Config("dramatiq 8 threads", "dramatiq", "1 process x 8 threads (defaults), prefetch 16",
           _dramatiq(8)),
    Config("taskiq", "taskiq", "stream broker, 1 process, 100 async tasks (defaults)", _taskiq),
]


def with_dramatiq_threads(configs: list[Config], threads: int) -> list[Config]:
    """``configs`` with Dramatiq's high-throughput configuration at ``threads`` threads."""
    tuned = Config("dramatiq", "dramatiq", f"1 process x {threads} threads, prefetch "
                   f"{2 * threads}", _dramatiq(threads))
    return [tuned if c.label == "dramatiq" else c for c in configs]


E2E_CONFIGS = {
    "agentpool": CONFIGS[0],
    **{c.system: c for c in CONFIGS if c.label in (
        "celery threads", "rq SimpleWorker", "arq", "dramatiq", "taskiq")},
}
"""The configuration of each system in the end-to-end runs: its high-throughput one."""
E2E_CONFIGS[BEFORE] = Config(BEFORE, BEFORE, "agentpool-worker of --before, concurrency 100",
                             _agentpool(100))
E2E_BATCH = {"agentpool": True, BEFORE: True}
"""Systems with a batch submit in the end-to-end producer (RQ's enqueue_many is not wired)."""


@dataclass(frozen=True)
class Scenario:
    label: str
    config: Config
    profile: str
    setting: str
    requeue_on_kill: bool = False
    reaper: bool = False
    env: tuple[tuple[str, str], ...] = ()
    """Extra worker environment."""


RECOVERY_CONFIG = {
    "agentpool": Config("agentpool", "agentpool", "", _agentpool(None)),
    "celery": Config("celery", "celery", "", _celery(None, None)),
    "rq": Config("rq", "rq", "", _rq(None)),
    "arq": Config("arq", "arq", "", _arq),
    "dramatiq": Config("dramatiq", "dramatiq", "", _dramatiq(8)),
    "taskiq": Config("taskiq", "taskiq", "", _taskiq),
}
SCENARIOS = [
    Scenario("agentpool", RECOVERY_CONFIG["agentpool"], "default",
             "requeue-by-owner on the pod event (TaskQueue.requeue_pod called at the kill: "
             "the data plane alone, without Kubernetes' delay in reporting the pod)",
             requeue_on_kill=True),
    Scenario("agentpool", RECOVERY_CONFIG["agentpool"], "default",
             f"lease expiry only (default 7 s lease, reaper every {REAP_EVERY:g} s)",
             reaper=True),
    Scenario("agentpool", RECOVERY_CONFIG["agentpool"], "default",
             f"lease expiry only (30 s lease, the earlier default; reaper every "
             f"{REAP_EVERY:g} s)", reaper=True, env=(("AGENTPOOL_LEASE_SECONDS", "30"),)),
    Scenario("celery", RECOVERY_CONFIG["celery"], "default", "defaults (early ack)"),
    Scenario("celery", RECOVERY_CONFIG["celery"], "reliable",
             "acks_late + reject_on_worker_lost, visibility_timeout 60 s, restore sweep 10 s"),
    Scenario("rq", RECOVERY_CONFIG["rq"], "default", "defaults (no retry)"),
    Scenario("rq", RECOVERY_CONFIG["rq"], "reliable",
             "Retry(max=3), maintenance every 10 s, job heartbeat every 5 s, worker TTL 25 s"),
    Scenario("arq", RECOVERY_CONFIG["arq"], "default", "defaults (job_timeout 300 s)"),
    Scenario("arq", RECOVERY_CONFIG["arq"], "reliable", "job_timeout 30 s"),
    Scenario("dramatiq", RECOVERY_CONFIG["dramatiq"], "default",
             "defaults (heartbeat timeout 60 s, maintenance chance 0.1 %)"),
    Scenario("dramatiq", RECOVERY_CONFIG["dramatiq"], "reliable",
             "heartbeat timeout 15 s, maintenance chance 10 %"),
    Scenario("taskiq", RECOVERY_CONFIG["taskiq"], "default",
             "defaults (XAUTOCLAIM of messages idle for 10 min)"),
]


# -- processes ------------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    spec: WorkerSpec

    def tree(self) -> list[int]:
        return process_tree(self.process.pid)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_worker(env: Env, config: Config, phase: str, profile: str, name: str,
                 db: int, extra: dict[str, str] | None = None) -> Worker:
    spec = config.spec(env, phase, profile, name)
    url = env.url(db)
    argv = [a.replace(env_url_placeholder, url) for a in spec.argv]
    environ = {**os.environ, **spec.env, **(extra or {}),
               "PYTHONPATH": pythonpath(config.system),
               common.URL_ENV: url, common.PROFILE_ENV: profile, "AGENTPOOL_REDIS_URL": url}
    log = (env.logs / f"{name}.log").open("ab")
    process = subprocess.Popen(argv, env=environ, cwd=code_root(config.system),
                               stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return Worker(process, spec)


@contextlib.contextmanager
def workers(env: Env, config: Config, phase: str, profile: str, count: int, db: int,
            tag: str, extra: dict[str, str] | None = None) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for i in range(count):
            started.append(start_worker(env, config, phase, profile,
                                        f"{tag}-{config.system}-{i}", db, extra))
        yield started
    finally:
        for w in started:
            kill_tree(w.tree())
        for w in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(timeout=10)


def ready_count(env: Env, system: str, db: int, started: list[Worker]) -> int:
    if system in ("agentpool", BEFORE):
        return sum(readiness.ready(w.spec.port) for w in started)
    with env.client(db) as r:
        if system == "rq":
            return int(r.scard(f"rq:workers:{common.QUEUE}"))
        return int(r.get(common.READY_KEY) or 0)


def wait_ready(env: Env, system: str, db: int, started: list[Worker],
               timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while ready_count(env, system, db, started) < len(started):
        for w in started:
            if w.process.poll() is not None:
                raise RuntimeError(f"{w.spec.argv[0]} exited with {w.process.returncode}; "
                                   f"see {env.logs}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system} workers not ready after {timeout:g} s; see {env.logs}")
        time.sleep(0.1)


def drive(env: Env, system: str, db: int, command: str, profile: str = "throughput",
          **options: Any) -> dict[str, Any]:
    url = env.url(db)
    environ = {**os.environ, "PYTHONPATH": pythonpath(system), common.URL_ENV: url,
               common.PROFILE_ENV: profile}
    reply = subprocess.run(
        [str(env.pythons[system]), "-m", SYSTEM_INFO[system].driver, command,
         json.dumps(options)],
        env=environ, cwd=code_root(system), capture_output=True, text=True, check=False,
    )
    if reply.returncode != 0:
        raise RuntimeError(f"{system} {command} failed:\n{reply.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(reply.stdout.strip().splitlines()[-1])
    return result


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- workloads ------------------------------------------------------------------------------


def bench_enqueue(env: Env, plan: Plan, systems: list[str],
                  rounds: int) -> dict[str, dict[str, Any]]:
    """Each system's submit rates, in rounds that interleave the systems (the order turns
    by one each round, so a slow spell of the machine does not fall on one system): the
    figures are medians over the rounds, and each round is kept, so the ratio between two
    systems can be read within a round."""
    samples: dict[str, dict[str, list[float | None]]] = {s: {} for s in systems}
    redis_cpu: dict[str, dict[str, list[float | None]]] = {s: {} for s in systems}
    redis_pid = env.server.process.pid if env.server.process else 0
    for i in range(rounds):
        for system in systems[i % len(systems):] + systems[:i % len(systems)]:
            modes = [("single", plan.enqueue_single), ("concurrent", plan.enqueue_single),
                     ("batch", plan.enqueue_batch)]
            if system in ("agentpool", BEFORE):
                modes[1:1] = [("sync", plan.enqueue_single),
                              ("sync_concurrent", plan.enqueue_single)]
            figures: dict[str, float | None] = {}
            for mode, n in modes:
                with env.client(0) as r:
                    r.flushdb()
                cpu = e2e.cpu_seconds([redis_pid])
                reply = drive(env, system, 0, "enqueue", n=n, mode=mode)
                supported = not reply.get("unsupported")
                figures[mode] = n / float(reply["seconds"]) if supported else None
                samples[system].setdefault(mode, []).append(figures[mode])
                spent = (e2e.cpu_seconds([redis_pid]) - cpu) / n * 1e6 if supported else None
                redis_cpu[system].setdefault(mode, []).append(spent)
            log(f"enqueue {system} (round {i + 1} of {rounds}): {_fmt_rates(figures)}")
    out: dict[str, dict[str, Any]] = {}
    for system, modes_seen in samples.items():
        out[system] = {mode: _median(values) for mode, values in modes_seen.items()}
        out[system]["rounds"] = modes_seen
        out[system]["redis_cpu_us"] = {
            mode: _median(values) for mode, values in redis_cpu[system].items()}
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _fmt_rates(figures: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:,.0f}/s" if v else f"{k} -" for k, v in figures.items())


FILL = {"agentpool": 40_000, "celery": 12_000, "rq": 6_000, "arq": 8_000,
        "dramatiq": 20_000}
FILL_RQ_FORK = 3_000


def depth(r: redis.Redis, system: System) -> int:
    key = system.depth_key
    return int(r.llen(key) if system.depth_is_list else r.zcard(key))


def bench_drain(env: Env, plan: Plan, config: Config, procs: int, quick: bool) -> float | None:
    system = SYSTEM_INFO[config.system]
    total = FILL_RQ_FORK if config.label == "rq Worker" else FILL[config.system]
    if quick:
        total //= 4
    with env.client(0) as r:
        r.flushdb()
        drive(env, config.system, 0, "fill", n=total)
        held = [k for k in system.hold_keys if r.exists(k)]
        for key in held:
            r.rename(key, key + ":hold")
        with workers(env, config, "drain", "throughput", procs, 0, "drain") as started:
            wait_ready(env, config.system, 0, started)
            time.sleep(1.0)
            for key in held:
                r.rename(key + ":hold", key)
            return _measure_drain(r, system, total, plan.drain_window)


def _measure_drain(r: redis.Redis, system: System, total: int, window: float) -> float | None:
    first = last_seen = time.monotonic()
    start: tuple[float, int] | None = None
    previous = total
    while True:
        d = depth(r, system)
        now = time.monotonic()
        if d < previous:
            last_seen, previous = now, d
        if start is None:
            if d <= 0.9 * total:
                start = (now, d)
            elif now - first > 60:
                return None
        elif d <= 0.1 * total or now - start[0] >= window:
            return (start[1] - d) / (now - start[0])
        if now - last_seen > 30:
            return None
        time.sleep(0.002)


def bench_latency(env: Env, plan: Plan, config: Config) -> dict[str, float] | None:
    with env.client(0) as r:
        r.flushdb()
        with workers(env, config, "latency", "throughput", 1, 0, "latency") as started:
            wait_ready(env, config.system, 0, started)
            time.sleep(1.0)
            n = plan.latency_tasks
            drive(env, config.system, 0, "latency", n=n, interval=0.01)
            deadline = time.monotonic() + 30
            while r.llen(common.LATENCY_KEY) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            samples = sorted(float(x) * 1000 for x in r.lrange(common.LATENCY_KEY, 0, -1))
    if len(samples) < n:
        log(f"latency {config.label}: only {len(samples)} of {n} tasks started")
    if len(samples) < 2:
        return None
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": statistics.median(samples), "p99_ms": cuts[98], "samples": len(samples)}


@dataclass
class RecoveryResult:
    seconds: float | None = None
    outcome: str = ""
    error: str = ""


def bench_recovery(env: Env, plan: Plan, scenarios: list[Scenario]) -> list[RecoveryResult]:
    results = [RecoveryResult() for _ in scenarios]
    barrier = threading.Barrier(len(scenarios))
    threads = [
        threading.Thread(target=_recovery_one,
                         args=(env, plan, scn, db, barrier, results[db - 1]), daemon=True)
        for db, scn in enumerate(scenarios, start=1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=plan.recovery_cap + 300)
    return results


def _recovery_one(env: Env, plan: Plan, scn: Scenario, db: int, barrier: threading.Barrier,
                  result: RecoveryResult) -> None:
    tag = f"recovery{db}"
    try:
        with env.client(db) as r:
            r.flushdb()
            with workers(env, scn.config, "recovery", scn.profile, 2, db, tag,
                         dict(scn.env)) as started:
                try:
                    wait_ready(env, scn.config.system, db, started)
                finally:
                    barrier.wait(timeout=300)
                time.sleep(1.0)
                drive(env, scn.config.system, db, "long", scn.profile,
                      seconds=LONG_TASK_SECONDS)
                first = _wait_start(r, 1, time.monotonic() + 60)
                if first is None:
                    raise RuntimeError("the long task never started")
                victim = next(w for w in started if first["pid"] in w.tree())
                doomed = victim.tree()
                killed_at = time.time()
                kill_tree(doomed)
                stop = threading.Event()
                if scn.requeue_on_kill:
                    asyncio.run(_requeue_pod(env.url(db), victim.spec.pod))
                if scn.reaper:
                    threading.Thread(target=_reaper, args=(env.url(db), stop),
                                     daemon=True).start()
                try:
                    second = _wait_start(r, 2, time.monotonic() + plan.recovery_cap,
                                         lost=lambda: _lost(r, scn.config.system))
                finally:
                    stop.set()
                if second is None:
                    lost = _lost(r, scn.config.system)
                    result.outcome = "lost" if lost else f">{plan.recovery_cap:g} s"
                elif second.get("lost"):
                    result.outcome = "lost"
                else:
                    if second["pid"] in doomed:
                        raise RuntimeError("the killed worker started the task again")
                    result.seconds = float(second["t"]) - killed_at
                    result.outcome = f"{result.seconds:.2f} s"
    except Exception as exc:  # one scenario's failure must not end the others
        result.error = f"{type(exc).__name__}: {exc}"
        result.outcome = "error"
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.abort()
    log(f"recovery {scn.label} [{scn.setting}]: {result.outcome} {result.error}")


def _wait_start(r: redis.Redis, count: int, deadline: float,
                lost: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    next_check = time.monotonic() + 1
    while time.monotonic() < deadline:
        starts = r.lrange(common.STARTS_KEY, 0, -1)
        if len(starts) >= count:
            parsed: dict[str, Any] = json.loads(starts[count - 1])
            return parsed
        if lost is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + 1
            if lost():
                return {"lost": True}
        time.sleep(0.01)
    return None


def _lost(r: redis.Redis, system: str) -> bool:
    """The task is provably gone: nothing left in Redis could ever deliver it again."""
    if system == "celery":
        return int(r.llen(common.QUEUE)) == 0 and int(r.hlen("unacked")) == 0
    return False


async def _requeue_pod(url: str, pod: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await TaskQueue(client, common.QUEUE).requeue_pod(pod, reason="pod killed")
    finally:
        await client.aclose()


def _reaper(url: str, stop: threading.Event) -> None:
    async def loop() -> None:
        client = aioredis.Redis.from_url(url)
        queue = TaskQueue(client, common.QUEUE)
        try:
            while not stop.is_set():
                await queue.reap_expired()
                await asyncio.sleep(REAP_EVERY)
        finally:
            await client.aclose()

    asyncio.run(loop())


# -- report ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True)
    return {"cores": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "redis_server": server.stdout.strip(),
            "commit": commit.stdout.strip()}


def _num(value: float | None, unit: str = "/s", digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _ratio(ours: float | None, best: float | None) -> str:
    if ours is None or best is None or best == 0:
        return "—"
    ratio = ours / best
    return f"{ratio:.2g}×" if ratio < 0.1 else f"{ratio:.2f}×"


def versions_line(versions: dict[str, dict[str, str]]) -> str:
    """``celery 5.7.0 (kombu 5.7.0, redis 6.4.0, hiredis 3.5.0); ...``: the peers are not
    pinned, so every run says what it ran."""
    parts = []
    for system, found in versions.items():
        own = found.get(system)
        rest = ", ".join(f"{d} {v}" for d, v in found.items() if d != system)
        parts.append(f"{system} {own or '?'}" + (f" ({rest})" if rest else ""))
    return "; ".join(parts)


def render(results: dict[str, Any], e2e_systems: list[str] | None = None) -> str:
    """Every table of a run: the versions, the end-to-end table (the headline; its columns
    ``e2e_systems``), the secondary workloads' tables, agentpool against the best peer."""
    lines: list[str] = []
    if results.get("versions"):
        lines += [f"Versions: {versions_line(results['versions'])}.", ""]
    if results.get("e2e") and e2e_systems:
        lines += [e2e.render(results["e2e"], e2e_systems), ""]
    enqueue: dict[str, dict[str, Any]] = results["enqueue"]
    if enqueue:
        lines += [f"### Enqueue (no-op tasks: one producer, or {common.PRODUCERS} at once)", "",
                  f"| system | single (tasks/s) | {common.PRODUCERS} producers at once "
                  "(tasks/s) | batch (tasks/s) | Redis CPU per task: single / at once / "
                  "batch |", "|---|---:|---:|---:|---|"]
        for system, fig in enqueue.items():
            cpu = fig.get("redis_cpu_us", {})
            spent = " / ".join(_num(cpu.get(mode), " µs") for mode in
                               ("single", "concurrent", "batch"))
            lines.append(f"| {system} | {_num(fig['single'])} | {_num(fig.get('concurrent'))} "
                         f"| {_num(fig['batch'])} | {spent} |")
            if fig.get("sync") is not None:
                lines.append(f"| {system}, blocking client (`SyncClient`) "
                             f"| {_num(fig['sync'])} | {_num(fig.get('sync_concurrent'))} | — | "
                             f"{_num(cpu.get('sync'), ' µs')} / "
                             f"{_num(cpu.get('sync_concurrent'), ' µs')} / — |")
        lines += ["", *_enqueue_round_ratios(enqueue), ""]
    if any(len(fig) > 1 for fig in results["workers"].values()):
        lines += ["### Workers (no-op drain; submit→start latency at one task per 10 ms)", "",
                  "| configuration | drain, 1 process | drain, 2 processes | p50 latency "
                  "| p99 latency |", "|---|---:|---:|---:|---:|"]
        overloaded = False
        for label, fig in results["workers"].items():
            lat = fig.get("latency") or {}
            mark = ""
            if fig.get("drain_1") is not None and fig["drain_1"] < 100:
                mark, overloaded = " *", True
            lines.append(
                f"| {label} | {_num(fig.get('drain_1'))} | {_num(fig.get('drain_2'))} "
                f"| {_num(lat.get('p50_ms'), ' ms', 2)}{mark} "
                f"| {_num(lat.get('p99_ms'), ' ms', 2)}{mark} |"
            )
        if overloaded:
            lines += ["", "\\* drains fewer than 100 tasks/s with one process: one task per "
                      "10 ms overloads it, so its latency is mostly queueing."]
        lines.append("")
    if results["recovery"]:
        lines += [f"### Recovery after kill -9 of the worker running a "
                  f"{LONG_TASK_SECONDS:g} s task (time until another worker starts it)", "",
                  "| system | setting | recovery |", "|---|---|---:|"]
        for item in results["recovery"]:
            text = item["outcome"] + (f" ({item['error']})" if item["error"] else "")
            lines.append(f"| {item['system']} | {item['setting']} | {text} |")
        lines.append("")
    lines += summary_lines(summary(results))
    return "\n".join(lines)


def summary_lines(rows: list[SummaryRow]) -> list[str]:
    """The table of ``summary``; the peers a row lacks, and why, in numbered notes below it."""
    if not rows:  # every workload that has a row was skipped
        return []
    lines = ["### agentpool against the best peer", "",
             "End-to-end rows (the headline) first; rows marked (secondary) come from the "
             "secondary workloads (submits alone, the pre-filled no-op drain, latency, recovery).",
             "", "| figure | agentpool | best peer | agentpool ÷ best peer | better |",
             "|---|---:|---:|---:|---|"]
    notes: list[str] = []
    for row in rows:
        marks = []
        for note in row.missing:
            if note not in notes:
                notes.append(note)
            marks.append(f"[{notes.index(note) + 1}]")
        figure = row.figure + (" (secondary)" if row.secondary else "")
        figure += " " + "".join(marks) if marks else ""
        lines.append(f"| {figure} | {row.ours} | {row.best} | {row.ratio} | {row.better} |")
    if notes:
        lines += ["", *(f"[{i}] {note}" for i, note in enumerate(notes, start=1))]
    return lines


def _enqueue_round_ratios(enqueue: dict[str, dict[str, Any]]) -> list[str]:
    """agentpool's submits (both clients, one producer and many) against each peer's (a
    blocking client against the peer's one call), and against --before's same mode, round
    by round."""
    ours = enqueue.get("agentpool", {}).get("rounds")
    if not ours:
        return []
    lines = []
    for peer, fig in enqueue.items():
        if peer == "agentpool" or not fig.get("rounds", {}).get("single"):
            continue
        for mode, peer_mode, what in (
                ("single", "single", "single submits, agentpool `Client`"),
                ("sync", "single", "single submits, agentpool `SyncClient`"),
                ("concurrent", "concurrent", f"{common.PRODUCERS} producers at once, agentpool"),
                ("sync_concurrent", "concurrent",
                 f"{common.PRODUCERS} producers at once, agentpool `SyncClient`")):
            theirs = fig.get("rounds", {}).get(mode if peer == BEFORE else peer_mode, [])
            pairs = zip(ours.get(mode, []), theirs, strict=False)
            ratios = [f"{a / b:.2f}×" for a, b in pairs if a and b]
            if ratios:
                lines.append(f"- {what} ÷ {peer}, round by round: " + ", ".join(ratios))
    return lines


@dataclass(frozen=True)
class SummaryRow:
    figure: str
    ours: str
    best: str
    ratio: str
    better: str
    secondary: bool
    """From a secondary workload (a kinder method, or not a throughput figure at all)."""
    missing: tuple[str, ...] = ()
    """Why a peer that ran has no figure in this row, one note per peer."""


NO_DRAIN = {
    "taskiq": "taskiq: no pre-filled no-op drain figure: the drain is read from the queue's "
              "depth, and taskiq-redis's stream keeps every entry after XACK (nothing trims "
              "it), so its length never shrinks; the end-to-end pre-filled row, timed by the "
              "tasks' own writes, has taskiq",
}
"""Peers the no-op drain cannot measure, and why."""


def missing_notes(peers: list[str], workload: str,
                  outcomes: dict[str, str] | None = None) -> tuple[str, ...]:
    """Why ``peers``, which ran, have no figure in a row of ``workload``: one note per reason.
    ``outcomes``: a recovery scenario's outcome (lost, over the cap, error) by peer."""
    if not peers:
        return ()
    if outcomes is not None:
        return ("no recovery within the cap: "
                + "; ".join(f"{p} {outcomes.get(p, '—')}" for p in peers),)
    notes = [NO_DRAIN[p] for p in peers if workload == "drain" and p in NO_DRAIN]
    rest = [p for p in peers if not (workload == "drain" and p in NO_DRAIN)]
    if rest and workload == "batch":
        notes.append(f"{', '.join(rest)}: no batch submit in the driver")
    elif rest:
        notes.append(f"{', '.join(rest)}: no figure in this run (failed or skipped; see the "
                     f"log)")
    return tuple(notes)


def summary(results: dict[str, Any]) -> list[SummaryRow]:
    """agentpool against the best peer, figure by figure: the end-to-end rows first, then the
    secondary workloads' rows, marked so; a peer that ran but has no figure in a row is named
    in the row's notes, with the reason where it is known."""
    rows: list[SummaryRow] = []
    enqueue: dict[str, dict[str, Any]] = results["enqueue"]
    work: dict[str, dict[str, Any]] = results["workers"]

    def best(values: dict[str, float | None], higher: bool) -> tuple[str, float | None]:
        known = {k: v for k, v in values.items() if v is not None}
        if not known:
            return "—", None
        name = (max if higher else min)(known, key=lambda k: known[k])
        return name, known[name]

    def add(figure: str, ours: float | None, peers: dict[str, float | None], higher: bool,
            unit: str, digits: int, secondary: bool, workload: str = "",
            outcomes: dict[str, str] | None = None) -> None:
        name, value = best(peers, higher)
        if ours is None and value is None:
            return
        missing = missing_notes([k for k, v in peers.items() if v is None], workload, outcomes)
        rows.append(SummaryRow(figure, _num(ours, unit, digits),
                               f"{_num(value, unit, digits)} ({name})" if value is not None
                               else "—", _ratio(ours, value), "higher" if higher else "lower",
                               secondary, missing))

    e2e_cases: dict[str, dict[str, Any]] = (results.get("e2e") or {}).get("cases", {})
    e2e_peers = sorted(({c["system"] for c in e2e_cases.values()}
                        | set(results.get("versions") or {})) - {"agentpool", BEFORE})

    def e2e_row(figure: str, workers: int, mode: str, key: str, higher: bool,
                unit: str) -> None:
        def of(system: str) -> float | None:
            return e2e_cases.get(f"{system} W={workers} {mode}", {}).get(key)

        add(figure, of("agentpool"), {p: of(p) for p in e2e_peers}, higher, unit, 0, False)

    if "agentpool W=1 single" in e2e_cases:
        for w in (1, 2):
            e2e_row(f"end to end, one producer of single submits, W = {w}", w, "single",
                    "rate", True, "/s")
        e2e_row(f"end to end, {common.PRODUCERS} producers at once, W = 2", 2, "concurrent",
                "rate", True, "/s")
        e2e_row("Redis CPU per task, end to end (W = 1, single)", 1, "single",
                "redis_cpu_us", False, " µs")
        e2e_row("Redis CPU per task, end to end (W = 2, single)", 2, "single",
                "redis_cpu_us", False, " µs")
        e2e_row("worker CPU per task, end to end (W = 1, single)", 1, "single",
                "worker_cpu_us", False, " µs")
        e2e_row("producer CPU per task, end to end (single)", 1, "single",
                "producer_cpu_us", False, " µs")
    if "agentpool" in enqueue:
        peers = {k: v for k, v in enqueue.items() if k not in ("agentpool", BEFORE)}
        for mode, label in (("single", "single"), ("concurrent",
                                                   f"{common.PRODUCERS} producers at once"),
                            ("batch", "batch")):
            add(f"enqueue, {label}", enqueue["agentpool"].get(mode),
                {k: v.get(mode) for k, v in peers.items()}, True, "/s", 0, True, mode)
            add(f"Redis CPU per submitted task, {label}",
                enqueue["agentpool"].get("redis_cpu_us", {}).get(mode),
                {k: v.get("redis_cpu_us", {}).get(mode) for k, v in peers.items()},
                False, " µs", 0, True, mode)
        if enqueue["agentpool"].get("sync") is not None:
            add("enqueue, single, blocking client", enqueue["agentpool"]["sync"],
                {k: v.get("single") for k, v in peers.items()}, True, "/s", 0, True)
            add(f"enqueue, {common.PRODUCERS} producers at once, blocking client",
                enqueue["agentpool"].get("sync_concurrent"),
                {k: v.get("concurrent") for k, v in peers.items()}, True, "/s", 0, True)
    if "agentpool" in work:
        peer_work = {k: v for k, v in work.items() if not k.startswith("agentpool")}
        for key, figure in (("drain_1", "no-op drain, 1 process"),
                            ("drain_2", "no-op drain, 2 processes")):
            add(figure, work["agentpool"].get(key),
                {k: v.get(key) for k, v in peer_work.items()}, True, "/s", 0, True, "drain")
        for label in ("agentpool", "agentpool concurrency 8"):
            if label not in work:
                continue
            suffix = "" if label == "agentpool" else ", concurrency 8"
            for key, figure in (("p50_ms", "p50 submit→start"),
                                ("p99_ms", "p99 submit→start")):
                add(figure + suffix, (work[label].get("latency") or {}).get(key),
                    {k: (v.get("latency") or {}).get(key) for k, v in peer_work.items()},
                    False, " ms", 2, True)
    recovery: list[dict[str, Any]] = results["recovery"]
    ours = [r for r in recovery if r["system"] == "agentpool"]
    others = [r for r in recovery if r["system"] != "agentpool"]
    seconds = {f"{r['system']} {r['profile']}": r["seconds"] for r in others}
    outcomes = {f"{r['system']} {r['profile']}": r["outcome"] for r in others}
    for item in ours:
        add(f"recovery, {item['setting']}", item["seconds"], seconds, False, " s", 2, True,
            outcomes=outcomes)
    return rows


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer tasks, shorter windows, 45 s recovery cap (~9 min for all "
                             "six systems)")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help="comma-separated systems to run (default: all)")
    parser.add_argument("--skip", default="",
                        help="comma-separated workloads to skip: "
                             "e2e,enqueue,drain,latency,recovery")
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks per end-to-end run (default 10,000; 2,000 with --quick)")
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout of an earlier agentpool, run side by side in the "
                             "end-to-end runs (as 'before')")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the end-to-end runs (default 3; medians)")
    parser.add_argument("--venvs", type=Path, default=venvs.DEFAULT_ROOT,
                        help="where the peers' environments live (default: %(default)s)")
    parser.add_argument("--upgrade-peers", action="store_true",
                        help="reinstall the peers' latest releases before running")
    parser.add_argument("--dramatiq-threads", type=int, default=DRAMATIQ_THREADS,
                        help="Dramatiq's threads per process in its high-throughput "
                             "configuration (default %(default)s; bench/README.md says why)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the raw results here (default: bench/results/)")
    args = parser.parse_args(argv)
    if args.dramatiq_threads != DRAMATIQ_THREADS:
        CONFIGS[:] = with_dramatiq_threads(CONFIGS, args.dramatiq_threads)
        E2E_CONFIGS["dramatiq"] = next(c for c in CONFIGS if c.label == "dramatiq")
    plan = Plan.quick() if args.quick else Plan.full()
    systems = [s for s in SYSTEMS if s in args.only.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = ROOT / "bench" / "results"
    logs = out_dir / f"peers-{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)

    pythons: dict[str, Path] = {"agentpool": Path(sys.executable), BEFORE: Path(sys.executable)}
    if args.before is not None:
        global _before_root
        _before_root = args.before.resolve()
    try:
        for peer in (s for s in systems if s != "agentpool"):
            log(f"environment for {peer} ({args.venvs / peer})")
            pythons[peer] = venvs.ensure(args.venvs, peer, upgrade=args.upgrade_peers,
                                         log=logs / "pip.log")
        versions = {s: venvs.versions(pythons[s], s) for s in systems}
    except venvs.InstallFailed as exc:
        raise SystemExit(str(exc)) from None
    log("versions: " + versions_line(versions))
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.peers", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "versions": versions,
        "before": str(_before_root) if _before_root else None,
        "plan": plan.__dict__, "e2e": {}, "enqueue": {}, "workers": {}, "recovery": [],
        "e2e_configs": {s: E2E_CONFIGS[s].describe for s in systems},
    }
    e2e_systems = [BEFORE, *systems] if _before_root else systems
    started = time.monotonic()
    results["machine"]["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with RedisServer() as server:
        env = Env(server, pythons, logs)
        if "e2e" not in skip:
            n = args.tasks or (2_000 if args.quick else 10_000)
            results["e2e"] = e2e.bench_e2e(env, e2e_systems, n, args.rounds,
                                           sys.modules[__name__], E2E_BATCH)
        if "enqueue" not in skip:
            results["enqueue"] = bench_enqueue(env, plan, e2e_systems, args.rounds)
        configs = [c for c in CONFIGS if c.system in systems]
        if _before_root is not None and "agentpool" in systems:
            configs[:0] = [Config(f"agentpool before, concurrency {n}", BEFORE,
                                  f"agentpool-worker of --before, concurrency {n}",
                                  _agentpool(n)) for n in (100, 8)]
        for config in configs:
            fig: dict[str, Any] = results["workers"].setdefault(config.label, {
                "describe": config.describe})
            if "drain" not in skip and config.system not in ("taskiq", BEFORE):
                for procs in (1, 2):
                    fig[f"drain_{procs}"] = bench_drain(env, plan, config, procs, args.quick)
                log(f"drain {config.label}: 1 process {_num(fig['drain_1'])}, "
                    f"2 processes {_num(fig['drain_2'])}")
            if "latency" not in skip:
                fig["latency"] = bench_latency(env, plan, config)
                lat = fig["latency"] or {}
                log(f"latency {config.label}: p50 {_num(lat.get('p50_ms'), ' ms', 2)}, "
                    f"p99 {_num(lat.get('p99_ms'), ' ms', 2)}")
        if "recovery" not in skip:
            scenarios = [s for s in SCENARIOS if s.config.system in systems]
            log(f"recovery: {len(scenarios)} scenarios at once, cap {plan.recovery_cap:g} s")
            outcomes = bench_recovery(env, plan, scenarios)
            results["recovery"] = [
                {"system": s.config.system, "profile": s.profile, "setting": s.setting,
                 "seconds": o.seconds, "outcome": o.outcome, "error": o.error}
                for s, o in zip(scenarios, outcomes, strict=True)
            ]
    results["total_seconds"] = time.monotonic() - started
    results["machine"]["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    path = args.json or out_dir / f"peers-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(render(results, e2e_systems))
    print(f"\n{results['total_seconds']:.0f} s; raw results: {path}; worker logs: {logs}")


if __name__ == "__main__":
    main()
