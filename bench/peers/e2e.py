"""The headline method: cost per task end to end, every system side by side in one run.

For each system, worker count W (1 and 2 processes, as two pods would be) and submit mode
(single calls; 64 producers at once, each making single calls; and the batch API where the
system has one):

1. the worker processes are started and report ready; Redis's command statistics are reset;
2. a producer process submits N work tasks while the workers drain them (the producer runs
   during the drain, on the same two cores); each task does one Redis write of its own
   (``INCR``), as real tasks do; the task that makes the count reach N stamps the end;
3. the figure is N ÷ (last completion - first submit), both on this machine's clock.

The pre-filled variant (secondary row) queues the N tasks first, sets the queue aside,
starts the workers and times from putting the queue back to the last completion: the kind
method, without the producer.

Cost per task over the same window, for every system: CPU per process from ``/proc``
(producer: its own CPU while submitting; workers: the whole process tree; ``redis-server``),
Redis CPU from ``INFO commandstats`` (time spent executing commands, scripts' inner calls
included), and commands per task (every command Redis executed, including those a Lua
script called, the tasks' own writes included; the bench's own few are left out).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.peers import common

TICKS = os.sysconf("SC_CLK_TCK")
WRAPPERS = {"cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro",
            "cmdstat_fcall", "cmdstat_fcall_ro", "cmdstat_exec"}
"""Commands whose time holds the time of the commands they ran (a script's, a transaction's),
which Redis counts on those commands' own lines too."""
RESETSTAT = ("cmdstat_config|resetstat", "cmdstat_config")
"""The orchestrator's CONFIG RESETSTAT, as Redis 7 and Redis 6 name it."""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (the dead ones are left out)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def command_stats(r: redis.Redis, own: dict[str, int]) -> tuple[int, float]:
    """``count_commands`` of the server's ``INFO commandstats``."""
    return count_commands(r.info("commandstats"), own)


def count_commands(stats: dict[str, Any], own: dict[str, int]) -> tuple[int, float]:
    """(commands executed, microseconds spent in commands) in ``INFO commandstats`` since the
    last CONFIG RESETSTAT, less the orchestrator's own calls (`own`: command -> calls it made
    in that window; their time is taken off in proportion). A system's own EXISTS or BLPOP
    counts like any other.

    A script's EVALSHA counts as a command, and so does each command it calls; a
    transaction's EXEC and each command queued in it likewise. Redis counts an inner command's
    time both in its own entry and in the EVALSHA or EXEC that ran it, so the time here
    leaves those out (WRAPPERS): it is the time spent in data commands (direct, in a script or
    in a transaction), without the Lua interpreter's own share or the network I/O, which only
    the process's CPU (``/proc``) shows.
    """
    calls, usec = 0, 0.0
    for name, fig in stats.items():
        key = name if name.startswith("cmdstat_") else f"cmdstat_{name}"
        made, spent = int(fig["calls"]), float(fig["usec"])
        mine = min(made, own.get(key, 0))
        calls += made - mine
        if key not in WRAPPERS and made:
            usec += spent * (made - mine) / made
    return calls, usec


@dataclass(frozen=True)
class Case:
    system: str
    workers: int
    mode: str
    """single, batch or prefilled."""

    @property
    def label(self) -> str:
        return f"{self.system} W={self.workers} {self.mode}"


def _wait_end(r: redis.Redis, case: Case, deadline: float) -> tuple[float, int]:
    """The end stamp, and how many BLPOPs it took."""
    calls = 0
    while time.monotonic() < deadline:
        calls += 1
        reply = r.blpop([common.END_KEY], timeout=1)
        if reply is not None:
            return float(reply[1]), calls
    raise RuntimeError(f"{case.label}: the last task did not complete within 120 s")


def run_case(env: Any, case: Case, n: int, run: Any) -> dict[str, Any] | None:
    """One end-to-end run; ``run`` is bench.peers.run (its process helpers)."""
    system = run.SYSTEM_INFO[case.system]
    config = run.E2E_CONFIGS[case.system]
    with env.client(0) as r:
        r.flushdb()
        held: list[str] = []
        if case.mode == "prefilled":
            reply = run.drive(env, case.system, 0, "fill_work", n=n, mode="batch")
            if reply.get("unsupported"):
                run.drive(env, case.system, 0, "fill_work", n=n, mode="single")
            held = [k for k in system.hold_keys if r.exists(k)]
            for key in held:
                r.rename(key, key + ":hold")
        extra = {common.TOTAL_ENV: str(n)}
        with run.workers(env, config, "e2e", "throughput", case.workers, 0, "e2e",
                         extra) as started:
            run.wait_ready(env, case.system, 0, started)
            time.sleep(0.5)
            redis_pid = env.server.process.pid
            trees = [pid for w in started for pid in w.tree()]
            r.config_resetstat()
            worker_cpu0, redis_cpu0 = cpu_seconds(trees), cpu_seconds([redis_pid])
            producer: dict[str, Any] = {}
            if case.mode == "prefilled":
                first = time.time()
                for key in held:
                    r.rename(key + ":hold", key)
            else:
                producer = run.drive(env, case.system, 0, "e2e", n=n, mode=case.mode)
                if producer.get("unsupported"):
                    return None
                first = float(producer["first"])
            end, waits = _wait_end(r, case, time.monotonic() + 120)
            time.sleep(0.2)  # the last acknowledgements
            trees = [pid for w in started for pid in w.tree()]
            worker_cpu = cpu_seconds(trees) - worker_cpu0
            redis_cpu = cpu_seconds([redis_pid]) - redis_cpu0
            own = {**dict.fromkeys(RESETSTAT, 1), "cmdstat_blpop": waits,
                   "cmdstat_rename": len(held)}
            calls, usec = command_stats(r, own)
    out: dict[str, Any] = {
        "rate": n / (end - first),
        "worker_cpu_us": worker_cpu / n * 1e6,
        "redis_cpu_us": redis_cpu / n * 1e6,
        "redis_cmd_us": usec / n,
        "commands": calls / n,
    }
    if producer:
        out["submit_rate"] = n / float(producer["seconds"])
        out["producer_cpu_us"] = float(producer["cpu"]) / n * 1e6
    out["total_cpu_us"] = (out["worker_cpu_us"] + out["redis_cpu_us"]
                           + out.get("producer_cpu_us", 0.0))
    return out


def cases(systems: list[str], batch: dict[str, bool], turn: int = 0) -> list[Case]:
    """Every case of a round; `turn` rotates which system goes first (the round's number),
    so no system always runs on a machine fresh from a pause or warm from another's run."""
    shift = turn % len(systems) if systems else 0
    order = systems[shift:] + systems[:shift]
    out: list[Case] = []
    for workers in (1, 2):
        for system in order:
            out.append(Case(system, workers, "single"))
            if batch.get(system):
                out.append(Case(system, workers, "batch"))
            out.append(Case(system, workers, "concurrent"))
            out.append(Case(system, workers, "prefilled"))
    return out


def bench_e2e(env: Any, systems: list[str], n: int, rounds: int, run: Any,
              batch: dict[str, bool]) -> dict[str, Any]:
    """Every case once per round, the rounds one after the other (so each round compares the
    systems under the same machine load); medians over the rounds."""
    todo = cases(systems, batch)
    samples: dict[str, list[dict[str, Any]]] = {c.label: [] for c in todo}
    loads: list[float] = []
    for i in range(rounds):
        loads.append(os.getloadavg()[0])
        for case in cases(systems, batch, turn=i):
            try:
                fig = run_case(env, case, n, run)
            except RuntimeError as exc:
                run.log(f"e2e {case.label}: {exc}")
                continue
            if fig is None:
                continue
            samples[case.label].append(fig)
            run.log(f"e2e round {i + 1} {case.label}: {fig['rate']:,.0f} tasks/s, "
                    f"redis {fig['redis_cpu_us']:.0f} us/task "
                    f"({fig['redis_cmd_us']:.0f} in commands), "
                    f"{fig['commands']:.1f} commands/task, "
                    f"worker {fig['worker_cpu_us']:.0f} us/task")
    medians: dict[str, Any] = {}
    for case in todo:
        got = samples[case.label]
        if not got:
            continue
        medians[case.label] = {
            "system": case.system, "workers": case.workers, "mode": case.mode,
            "rounds": len(got),
            **{k: statistics.median(s[k] for s in got) for k in got[0]},
        }
    return {"n": n, "rounds": rounds, "load_per_round": loads, "cases": medians,
            "samples": samples}


def _f(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render(result: dict[str, Any], systems: list[str]) -> str:
    data: dict[str, Any] = result["cases"]

    def cell(system: str, workers: int, mode: str, key: str, digits: int) -> str:
        """The median, marked * when some rounds of the case failed."""
        fig = data.get(f"{system} W={workers} {mode}") or {}
        value = _f(fig.get(key), digits)
        short = fig.get(key) is not None and fig["rounds"] < result["rounds"]
        return value + "*" if short else value

    head = "| figure | " + " | ".join(systems) + " |"
    rule = "|---|" + "---:|" * len(systems)
    lines = [f"### End to end (N = {result['n']:,}, medians of {result['rounds']} rounds)", "",
             head, rule]

    def row(label: str, workers: int, mode: str, key: str, digits: int = 0) -> None:
        values = [cell(s, workers, mode, key, digits) for s in systems]
        if any(v != "—" for v in values):
            lines.append(f"| {label} | " + " | ".join(values) + " |")

    for w in (1, 2):
        row(f"drain with the producer running, single submits, W = {w} (tasks/s)", w,
            "single", "rate")
        row(f"drain with the producer running, batch submits, W = {w} (tasks/s)", w,
            "batch", "rate")
        row(f"drain with 64 producers at once, single submits each, W = {w} (tasks/s)", w,
            "concurrent", "rate")
    row("submit, single calls, during the drain (tasks/s)", 1, "single", "submit_rate")
    row("submit, batch, during the drain (tasks/s)", 1, "batch", "submit_rate")
    row("CPU per task, producer (µs, single)", 1, "single", "producer_cpu_us")
    row("CPU per task, worker process (µs, W = 1, single)", 1, "single", "worker_cpu_us")
    row("CPU per task, redis-server (µs, /proc, W = 1, single)", 1, "single", "redis_cpu_us")
    row("CPU per task, whole system (µs, W = 1, single)", 1, "single", "total_cpu_us")
    row("Redis time per task in data commands (µs, commandstats, W = 1, single)", 1, "single",
        "redis_cmd_us", 1)
    row("Redis commands per task, scripts' inner calls included (W = 1, single)", 1,
        "single", "commands", 1)
    row("Redis CPU per task (µs, /proc, W = 1, 64 producers at once)", 1, "concurrent",
        "redis_cpu_us")
    row("CPU per task, whole system (µs, W = 1, 64 producers at once)", 1, "concurrent",
        "total_cpu_us")
    row("CPU per task, worker processes (µs, W = 2, single)", 2, "single", "worker_cpu_us")
    row("Redis CPU per task (µs, /proc, W = 2, single)", 2, "single", "redis_cpu_us")
    row("Redis time per task in data commands (µs, W = 2, single)", 2, "single", "redis_cmd_us", 1)
    for w in (1, 2):
        row(f"pre-filled queue, no producer, W = {w} (tasks/s; secondary)", w, "prefilled",
            "rate")
    loads = ", ".join(f"{x:.1f}" for x in result["load_per_round"])
    lines += ["", f"Load average (1 min) at the start of each round: {loads}."]
    short = sorted(label for label, fig in data.items() if fig["rounds"] < result["rounds"])
    if short:
        lines.append("* median of fewer rounds: some failed (see the log): "
                     + "; ".join(f"{label} {data[label]['rounds']}" for label in short) + ".")
    return "\n".join(lines)


def dump(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2))
