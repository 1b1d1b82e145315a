"""`agentpool demo`: the product end to end on one machine, no cluster needed."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import redis
from rich.console import Console
from rich.markup import escape

from agentpool.cli.common import number, plain_command
from agentpool.cli.demo.fleet import WorkerCommandNotFound
from agentpool.cli.demo.output import OutputGone, guarded_console
from agentpool.cli.demo.runner import (
    DemoConfig,
    DemoConfigError,
    DemoError,
    DemoInterrupted,
    DemoOutcome,
    run_demo,
)
from agentpool.cli.demo.view import (
    LiveReporter,
    PlainReporter,
    summary_json,
    summary_table,
    try_commands,
)
from agentpool.redis_errors import redis_failure
from agentpool.redis_server import RedisServerError
from agentpool.urls import redact_url


def _fail(message: str) -> None:
    guarded_console(sys.stderr).print(
        f"[bold red]agentpool demo failed:[/] {escape(message)}", soft_wrap=True)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a local demo: workers, a batch of tasks, a worker killed half-way",
        description="Start a private redis-server (unless --redis-url is given) and a few "
        "agentpool-worker processes running the simulated-agent handler, submit a batch of "
        "tasks, kill one busy worker with SIGKILL half-way, requeue its tasks the way the "
        "operator does, and end with a summary. The web console serves the demo's queue "
        "while it runs (its URL is printed first). Exits 1 if any task was lost; 129 if its "
        "terminal closed, 141 if the reader of its output left.",
    )
    parser.add_argument("--redis-url", metavar="URL",
                        help="use this Redis instead of starting a redis-server")
    parser.add_argument("--workers", type=number(int, low=1, high=64), default=3, metavar="N",
                        help="worker processes to start (default: 3)")
    parser.add_argument("--tasks", type=number(int, low=1, high=100_000), default=300, metavar="N",
                        help="tasks to submit (default: 300)")
    parser.add_argument("--concurrency", type=number(int, low=1, high=1000), default=8, metavar="N",
                        help="tasks each worker runs at once (default: 8)")
    parser.add_argument("--mean-seconds", type=number(float, low=0, high=60), default=2.0,
                        metavar="S", help="mean duration of a simulated task (default: 2.0)")
    parser.add_argument("--fail-rate", type=number(float, low=0, below=1),
                        default=0.05, metavar="P",
                        help="chance that a run fails and is retried (default: 0.05)")
    parser.add_argument("--steps", type=number(int, low=0, high=1000), default=5, metavar="N",
                        help="steps per task, each reporting progress and checkpointed, so a "
                        "task the kill interrupts resumes (default: 5; 0: one step, no "
                        "checkpoint)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed for the simulated tasks (task i gets N+i)")
    parser.add_argument("--no-console", action="store_true",
                        help="do not serve the web console while the demo runs")
    parser.add_argument("--no-live", action="store_true",
                        help="plain progress lines instead of the live view")
    parser.add_argument("--keep", action="store_true",
                        help="after the summary, keep Redis, the workers and the console up "
                        "until Ctrl-C (then exit as without --keep; SIGTERM or SIGHUP exit "
                        "128+signal as during the run), and print commands to look at them "
                        "with (status, tasks, workers, dead, get, submit)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="summary format; with json, progress goes to stderr (a reader "
                        "of stderr that leaves only silences it)")
    parser.set_defaults(func=run)


@plain_command
def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        workers=int(args.workers),
        tasks=int(args.tasks),
        concurrency=int(args.concurrency),
        mean_seconds=float(args.mean_seconds),
        fail_rate=float(args.fail_rate),
        steps=int(args.steps),
        seed=args.seed,
        redis_url=args.redis_url,
        console=not args.no_console,
        keep=bool(args.keep),
    )
    if config.redis_url is None:  # a Redis of its own holds no other queue
        config = dataclasses.replace(config, queue="demo")
    as_json = args.output == "json"
    out = guarded_console(sys.stdout)
    view = guarded_console(sys.stderr, mute=True) if as_json else out
    try:
        return _run(config, out, view, as_json=as_json, live=not args.no_live)
    except OutputGone as exc:
        return exc.exit_code


def _run(config: DemoConfig, out: Console, view: Console, *, as_json: bool, live: bool) -> int:
    title = (
        f"agentpool demo: {config.tasks} tasks, {config.workers} workers "
        f"({config.concurrency} slots each), runs of ~{config.mean_seconds:g} s, "
        f"{config.fail_rate * 100:g}% fail"
    )
    reporter: LiveReporter | PlainReporter = (
        LiveReporter(view, title) if live and view.is_terminal else PlainReporter(view, title))

    def finished(outcome: DemoOutcome) -> None:
        reporter.stop()
        _print_summary(outcome, out, as_json=as_json)
        if config.keep:
            _print_keep(outcome, view, own_redis=config.redis_url is None)

    try:
        with reporter:
            outcome = run_demo(config, reporter, finished)
    except DemoInterrupted as exc:
        view.print(f"interrupted by {exc}: all demo processes stopped, temporary files removed")
        return 128 + exc.signum
    except DemoConfigError as exc:
        _fail(str(exc))
        return 2
    except (DemoError, WorkerCommandNotFound, RedisServerError) as exc:
        _fail(str(exc))
        return 1
    except (redis.RedisError, OSError) as exc:
        url = redact_url(config.redis_url) if config.redis_url else None
        _fail(redis_failure(url, exc))
        return 1
    if config.keep:
        view.print("stopped: all demo processes stopped, temporary files removed")
    return 0 if outcome.summary.ok else 1


def _print_summary(outcome: DemoOutcome, out: Console, *, as_json: bool) -> None:
    summary = outcome.summary
    if as_json:
        out.file.write(summary_json(summary, queue=outcome.queue, redis_url=outcome.redis_url,
                                    workers=outcome.pods, pids=outcome.pids) + "\n")
        out.file.flush()
        return
    out.print()
    out.print(summary_table(summary))
    if summary.ok:
        out.print("[bold green]Nothing lost:[/] every task reached a final state, including "
                  "those the killed worker was running.")
    else:
        out.print(f"[bold red]{summary.lost} lost, {summary.pending} still pending.[/]")


def _print_keep(outcome: DemoOutcome, view: Console, *, own_redis: bool) -> None:
    parts = ["Redis"] * own_redis + ["workers"] + ["console"] * bool(outcome.console_url)
    what = "its " + (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") + parts[-1]
    view.print()
    view.print(f"[bold]The demo keeps running[/] ({what}, queue {escape(outcome.queue)}) "
               "until Ctrl-C, which stops it all. Try, in another terminal:", soft_wrap=True)
    if outcome.redis_url != outcome.url:
        view.print("  (set AGENTPOOL_REDIS_URL to the URL of --redis-url first: it is not "
                   "printed, since it holds a secret)", soft_wrap=True)
    for line in try_commands(outcome.url, outcome.queue, task=outcome.example_task,
                             task_note=outcome.example_note, console_url=outcome.console_url):
        view.print(f"  {line}", markup=False, soft_wrap=True)
    if outcome.console_url:
        view.print(f"  console: {outcome.console_url}", markup=False, soft_wrap=True)
