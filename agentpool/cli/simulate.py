"""`agentpool simulate`: replay an arrival trace through our scaling policy and through KEDA's
defaults over the HPA, and compare waits, cost and interrupted tasks; `--plot` draws both
runs' queue depth and replicas over time (needs matplotlib, the `bench` extra)."""

from __future__ import annotations

import argparse
import codecs
import json
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from agentpool.cli.common import number, plain_command
from agentpool.cli.simulate_plot import PlotUnavailable, require_matplotlib, write_plot
from agentpool.models import ScalingSpec, WorkerSpec
from agentpool.protocol import MAX_TASK_TIMEOUT_SECONDS
from agentpool.scaling.policy import ScalingPolicy
from agentpool.scaling.simulation import (
    GIVE_UP_AFTER_SECONDS,
    Cluster,
    Comparison,
    KedaSettings,
    RunResult,
    TraceTask,
    compare,
    parse_trace_with_warnings,
)

WAIT_ROWS = ("p50_wait_s", "p95_wait_s", "max_wait_s")
ROWS = [
    ("tasks", "tasks done"),
    ("tasks_per_minute", "throughput (tasks/min)"),
    ("unfinished", "tasks unfinished"),
    ("p50_wait_s", "p50 wait (s)"),
    ("p95_wait_s", "p95 wait (s)"),
    ("max_wait_s", "max wait (s)"),
    ("replica_seconds", "replica-seconds"),
    ("interrupted_tasks", "tasks interrupted by scale-down"),
    ("pod_starts", "pod starts"),
    ("scale_events", "scale events"),
]


DAY = 86400.0
MAX_CONCURRENCY = 1000
MAX_SAMPLES = 200_000
"""Samples of one run's timeline (--timeline, --plot) at most."""

COLUMN_TITLES = {
    "agentpool": "agentpool",
    "agentpool-unaware": "agentpool, blind to the limit",
    "keda": "KEDA defaults",
}
TRACE_HELP = (
    "TRACE.csv has one task per row: arrival_seconds,service_seconds (when the task arrives, "
    "counted from the start of the trace, at most 30 days, and how long it runs once a worker "
    "has it). A header row naming these two columns (in either order; arrival and service "
    "do too) says which is which; a header of other names is read by position, with a "
    "warning; blank lines and '#' comments are skipped; the file is UTF-8. Sample traces "
    "(steady, bursty, diurnal, the long agent runs of longrun, heavytail and mixed, and "
    "ratelimited, made for --rate-limit 120/min) are in the source tree: bench/traces/*.csv, "
    "made by bench/make_traces.py."
)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds % 3600 == 0 else f"{seconds:g} s"


STOP_HELP = (
    f"A run stops {_duration(GIVE_UP_AFTER_SECONDS)} after the last arrival even with tasks "
    "unfinished (a pool that cannot keep up would run for ever): a line of its own says how "
    "many, and their waits count up to the stop, so the waits printed are lower bounds "
    "(marked >=; waits_lower_bound in the JSON). The exit status is still 0: the figures are "
    "still a report, and that the pool falls behind is the finding. Tasks running longer than "
    "--task-timeout-seconds are counted in a line of their own too (a pool would stop them; "
    "the simulation lets them run)."
)


def _default(model: type[BaseModel], name: str) -> Any:
    """An AgentPool spec field's default, so the simulation starts from what a pool gets."""
    return model.model_fields[name].default


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="compare our autoscaling with KEDA's defaults on an arrival trace",
        description="Replay TRACE.csv through the pool's scaling policy and through KEDA's "
        "defaults over the HPA, on the same simulated cluster, and print waits, "
        "replica-seconds and tasks interrupted by scale-down. " + TRACE_HELP + " " + STOP_HELP,
    )
    parser.add_argument("trace", type=Path, metavar="TRACE.csv",
                        help="the arrival trace, e.g. bench/traces/bursty.csv")
    pool = parser.add_argument_group("pool (as in the AgentPool spec; defaults are the spec's)")
    pool.add_argument("--concurrency", type=number(int, low=1, high=MAX_CONCURRENCY),
                      default=_default(WorkerSpec, "concurrency"),
                      metavar="N",
                      help="tasks per pod (default %(default)s)")
    pool.add_argument("--task-timeout-seconds", metavar="SECONDS",
                      type=number(int, low=1, high=MAX_TASK_TIMEOUT_SECONDS),
                      default=_default(WorkerSpec, "task_timeout_seconds"),
                      help="the pool's taskTimeoutSeconds: tasks of the trace running longer "
                      "are counted, as a pool would stop them (default %(default)s)")
    pool.add_argument("--min-replicas", type=int, metavar="N",
                      default=_default(ScalingSpec, "min_replicas"),
                      help="fewest pods; 0 allows scaling to zero (default %(default)s)")
    pool.add_argument("--max-replicas", type=int, metavar="N",
                      default=_default(ScalingSpec, "max_replicas"),
                      help="most pods (default %(default)s)")
    pool.add_argument("--tasks-per-replica", type=int, metavar="N",
                      help="queued + in-flight tasks one pod carries (default: --concurrency)")
    pool.add_argument("--activation-depth", type=int, metavar="TASKS",
                      default=_default(ScalingSpec, "activation_depth"),
                      help="a pool at zero wakes when more tasks than this are queued "
                      "(default %(default)s)")
    pool.add_argument("--poll-seconds", type=number(float, above=0),
                      default=_default(ScalingSpec, "poll_seconds"), metavar="SECONDS",
                      help="how often the queue depth is measured (default %(default)s)")
    pool.add_argument("--scale-up-cooldown", type=int, metavar="SECONDS",
                      default=_default(ScalingSpec, "scale_up_cooldown_seconds"),
                      help="least time between two scale-ups (default %(default)s)")
    pool.add_argument("--scale-down-cooldown", type=int, metavar="SECONDS",
                      default=_default(ScalingSpec, "scale_down_cooldown_seconds"),
                      help="least time after a scale-up before a scale-down, and the "
                      "stabilisation window (default %(default)s)")
    pool.add_argument("--keep-drained-seconds", type=int, metavar="SECONDS",
                      default=_default(ScalingSpec, "keep_drained_seconds"),
                      help="how long a drained pod with no run left keeps its replica while "
                      "the recent need may call it back (default %(default)s)")
    pool.add_argument("--scale-up-step", type=int, metavar="PODS",
                      help="most pods added by one decision (default: unlimited)")
    pool.add_argument("--scale-down-step", type=int, metavar="PODS",
                      help="most pods removed by one decision (default: unlimited)")
    cluster = parser.add_argument_group("cluster and baseline")
    cluster.add_argument(
        "--startup-seconds", type=number(float, low=0, high=DAY), default=20,
        metavar="SECONDS",
        help="pod start to ready (default %(default)s)",
    )
    cluster.add_argument(
        "--rate-limit", type=_rate, metavar="N/min", default=None,
        help="a shared rate limit every task takes one grant of before its work starts, "
        "e.g. 600/min or 10/s; adds a run of our policy blind to it (default: none)",
    )
    cluster.add_argument(
        "--rate-limit-burst", type=number(float, low=1), metavar="GRANTS", default=None,
        help="grants the limit lets go at once after a quiet spell (default: one second of "
        "the rate, at least 1)",
    )
    cluster.add_argument(
        "--keda-metric",
        choices=["queued", "backlog"],
        default="queued",
        help="what KEDA measures: the queue length, as its Redis list scaler (queued), or "
        "queued + in-flight (backlog) (default %(default)s)",
    )
    cluster.add_argument(
        "--keda-grace-seconds",
        type=number(float, low=0, high=DAY),
        default=30,
        metavar="SECONDS",
        help="terminationGracePeriodSeconds of the baseline's pods (default %(default)s)",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table",
                        help="table for people, json for programs (default %(default)s)")
    parser.add_argument(
        "--timeline", action="store_true",
        help="with -o json: add the sampled time series (default: off)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="write a PNG of queue depth and replicas over time for both autoscalers "
        "(needs matplotlib: pip install 'agentpool[bench]'; default: no plot)",
    )
    parser.add_argument(
        "--sample-seconds",
        type=number(float, above=0),
        default=2,
        metavar="SECONDS",
        help="time between samples of --timeline and --plot (default %(default)s)",
    )
    parser.set_defaults(func=run)


@plain_command
def run(args: argparse.Namespace) -> int:
    """Exit 0 with a report, also when tasks were unfinished at the stop (the report says so in
    a line of its own and marks its waits as lower bounds: a pool that falls behind is a
    result, not a failure); 2 for a setting or trace refused; 1 when the plot cannot be
    written."""
    try:
        check_options(args)
        if args.plot is not None:
            require_matplotlib()
        trace, trace_warnings = parse_trace_with_warnings(read_trace(args.trace))
        timeline = args.plot is not None or args.timeline
        if timeline:
            check_samples(trace, args.sample_seconds)
        policy = ScalingPolicy.from_spec(_scaling_spec(args), args.concurrency)
        burst = args.rate_limit_burst
        if args.rate_limit is not None and burst is None:
            burst = max(1.0, args.rate_limit / 60)
        if burst is not None and not burst >= 1:
            raise ValueError("--rate-limit-burst must be at least 1")
        cluster = Cluster(
            concurrency=args.concurrency,
            startup_seconds=args.startup_seconds,
            sample_seconds=args.sample_seconds,
            rate_limit_per_minute=args.rate_limit,
            rate_limit_burst=burst or 1.0,
            timeline=timeline,
        )
        keda = KedaSettings(metric=args.keda_metric, grace_seconds=args.keda_grace_seconds)
    except (OSError, ValueError, PlotUnavailable) as error:
        print(f"agentpool simulate: {error}", file=sys.stderr)
        return 2
    result = compare(trace, policy, cluster, keda)
    notes = trace_warnings + report_notes(result, trace, args.task_timeout_seconds)
    if args.output == "json":
        print(json.dumps(_as_json(args, result, trace, notes), indent=2))
        for note in notes:
            print(f"agentpool simulate: {note}", file=sys.stderr)
    else:
        _print_table(args, result, notes)
    if args.plot is not None:
        try:
            write_plot(result, args.plot, trace=args.trace.name, caption=_model(args))
        except (OSError, PlotUnavailable) as error:
            print(f"agentpool simulate: cannot write the plot: {error}", file=sys.stderr)
            return 1
        print(f"agentpool simulate: plot written to {args.plot}", file=sys.stderr)
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that would be ignored."""
    if args.rate_limit_burst is not None and args.rate_limit is None:
        raise ValueError("--rate-limit-burst needs --rate-limit (the burst of which limit?)")
    if args.timeline and args.output != "json":
        raise ValueError("--timeline adds the sampled series to the JSON: add -o json "
                         "(--plot draws them)")


def read_trace(path: Path) -> list[str]:
    """The trace's lines; a file that is not UTF-8 is refused in one line naming it."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}: line {line} is not UTF-8 text (byte {data[error.start]:#04x}): "
            "save the trace as UTF-8"
        ) from None


def over_timeout(trace: list[TraceTask], task_timeout: float) -> int:
    """Tasks of the trace a pool would stop: their runs last longer than taskTimeoutSeconds."""
    return sum(1 for task in trace if task.service > task_timeout)


def report_notes(result: Comparison, trace: list[TraceTask], task_timeout: float) -> list[str]:
    """Lines the report adds when its waits are lower bounds or the trace has runs a pool
    would stop."""
    notes = []
    stopped = [run for run in result.runs if run.unfinished]
    if stopped:
        counts = ", ".join(
            f"{run.unfinished} under {COLUMN_TITLES[run.name]}" for run in stopped)
        notes.append(
            f"stopped {_duration(GIVE_UP_AFTER_SECONDS)} after the last arrival with tasks "
            f"unfinished (of {len(trace)}): {counts}; an unfinished task's wait counts up to "
            "the stop, so these runs' waits are lower bounds")
    over = over_timeout(trace, task_timeout)
    if over:
        notes.append(
            f"{over} of {len(trace)} tasks run longer than taskTimeoutSeconds "
            f"({task_timeout:g} s): a pool would stop them as failed attempts, the simulation "
            "lets them run (--task-timeout-seconds sets the pool's)")
    return notes


def check_samples(trace: list[TraceTask], sample_seconds: float) -> None:
    """Refuse a --sample-seconds that would take more samples than a timeline holds."""
    span = max((task.arrival + task.service for task in trace), default=0.0)
    if span / sample_seconds > MAX_SAMPLES:
        raise ValueError(
            f"--sample-seconds {sample_seconds:g} samples this {span:g} s trace more than "
            f"{MAX_SAMPLES} times: use at least {math.ceil(span / MAX_SAMPLES)}"
        )


def _rate(text: str) -> float:
    """`600/min`, `10/s` or `36000/h` as grants per minute."""
    number, _, unit = text.partition("/")
    per = {"s": 60.0, "sec": 60.0, "min": 1.0, "m": 1.0, "h": 1 / 60, "hour": 1 / 60}
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit.strip().lower() not in per or not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"expected a rate such as 600/min or 10/s, got {text!r}")
    return value * per[unit.strip().lower()]


SCALING_OPTIONS = {
    "minReplicas": "min_replicas",
    "maxReplicas": "max_replicas",
    "tasksPerReplica": "tasks_per_replica",
    "activationDepth": "activation_depth",
    "pollSeconds": "poll_seconds",
    "scaleUpCooldownSeconds": "scale_up_cooldown",
    "scaleDownCooldownSeconds": "scale_down_cooldown",
    "keepDrainedSeconds": "keep_drained_seconds",
    "scaleUpStep": "scale_up_step",
    "scaleDownStep": "scale_down_step",
}
"""The pool's scaling fields and the options (argparse names) that set them."""


def _scaling_spec(args: argparse.Namespace) -> ScalingSpec:
    fields = {field: getattr(args, option) for field, option in SCALING_OPTIONS.items()}
    try:
        return ScalingSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        raise ValueError("invalid scaling settings: " + "; ".join(
            _option_problem(e["loc"], e["msg"]) for e in error.errors())) from None


def _option_problem(loc: tuple[int | str, ...], message: str) -> str:
    option = SCALING_OPTIONS.get(str(loc[0])) if loc else None
    message = message.removeprefix("Value error, ")
    return f"--{option.replace('_', '-')}: {message}" if option else message


def _model(args: argparse.Namespace) -> str:
    metric = "queue length" if args.keda_metric == "queued" else "queued + in-flight"
    tpr = args.tasks_per_replica or args.concurrency
    limit = ""
    if args.rate_limit is not None:
        burst = args.rate_limit_burst or max(1.0, args.rate_limit / 60)
        limit = f", rate limit {args.rate_limit:g}/min (burst {burst:g})"
    return (
        f"{args.min_replicas}..{args.max_replicas} replicas, concurrency {args.concurrency}, "
        f"tasksPerReplica {tpr}, pods ready {args.startup_seconds:g}s after start, "
        f"scale-down drains until runs end; KEDA metric: {metric}, "
        f"grace {args.keda_grace_seconds:g}s{limit}"
    )


def _as_json(args: argparse.Namespace, result: Comparison, trace: list[TraceTask],
             notes: list[str]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "trace": str(args.trace),
        "model": _model(args),
        "results": [run.summary() for run in result.runs],
        "stop_after_last_arrival_s": GIVE_UP_AFTER_SECONDS,
        "task_timeout_seconds": args.task_timeout_seconds,
        "tasks_over_task_timeout": over_timeout(trace, args.task_timeout_seconds),
        "warnings": notes,
    }
    if args.timeline:
        document["timeline"] = {run.name: _series(run) for run in result.runs}
    return document


def _series(run: RunResult) -> dict[str, list[float]]:
    names = ("at", "replicas", "pods", "ready", "queued", "in_flight")
    return {name: [getattr(sample, name) for sample in run.timeline] for name in names}


def _print_table(args: argparse.Namespace, result: Comparison, notes: list[str]) -> None:
    summaries = [run.summary() for run in result.runs]
    table = Table(title=str(args.trace), caption=_model(args))
    table.add_column("")
    for run in result.runs:
        table.add_column(COLUMN_TITLES[run.name], justify="right")
    for key, label in ROWS:
        table.add_row(label, *(_cell(summary, key) for summary in summaries))
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)


def _cell(summary: dict[str, Any], key: str) -> str:
    """A figure as the table shows it: `-` for none, `>=` before a lower bound."""
    value = summary[key]
    if value is None:
        return "-"
    if key in WAIT_ROWS and summary["waits_lower_bound"]:
        return f">= {value}"
    return str(value)
