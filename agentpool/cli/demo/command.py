"""`agentpool demo`: the product end to end on one machine, no cluster needed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from agentpool.cli.demo.fleet import WorkerCommandNotFound
from agentpool.cli.demo.runner import DemoConfig, DemoError, DemoInterrupted, run_demo
from agentpool.cli.demo.view import LiveReporter, PlainReporter, summary_json, summary_table
from agentpool.redis_server import RedisServerError


def _bounded(kind: Callable[[str], float], low: float, high: float,
             *, open_high: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or value > high or (open_high and value == high):
            upper = f"below {high:g}" if open_high else f"at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be at least {low:g} and {upper}, got {text}")
        return value
    return parse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a local demo: workers, a batch of tasks, a worker killed half-way",
        description="Start a private redis-server (unless --redis-url is given) and a few "
        "agentpool-worker processes running the simulated-agent handler, submit a batch of "
        "tasks, kill one busy worker with SIGKILL half-way, requeue its tasks the way the "
        "operator does, and end with a summary. The web console serves the demo's queue "
        "while it runs (its URL is printed first). Exits 1 if any task was lost.",
    )
    parser.add_argument("--redis-url", metavar="URL",
                        help="use this Redis instead of starting a redis-server")
    parser.add_argument("--workers", type=_bounded(int, 1, 64), default=3, metavar="N",
                        help="worker processes to start (default: 3)")
    parser.add_argument("--tasks", type=_bounded(int, 1, 100_000), default=300, metavar="N",
                        help="tasks to submit (default: 300)")
    parser.add_argument("--concurrency", type=_bounded(int, 1, 1000), default=8, metavar="N",
                        help="tasks each worker runs at once (default: 8)")
    parser.add_argument("--mean-seconds", type=_bounded(float, 0, 60), default=2.0,
                        metavar="S", help="mean duration of a simulated task (default: 2.0)")
    parser.add_argument("--fail-rate", type=_bounded(float, 0, 1, open_high=True),
                        default=0.05, metavar="P",
                        help="chance that a run fails and is retried (default: 0.05)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed for the simulated tasks (task i gets N+i)")
    parser.add_argument("--no-console", action="store_true",
                        help="do not serve the web console while the demo runs")
    parser.add_argument("--no-live", action="store_true",
                        help="plain progress lines instead of the live view")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="summary format; with json, progress goes to stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        workers=int(args.workers),
        tasks=int(args.tasks),
        concurrency=int(args.concurrency),
        mean_seconds=float(args.mean_seconds),
        fail_rate=float(args.fail_rate),
        seed=args.seed,
        redis_url=args.redis_url,
        console=not args.no_console,
    )
    as_json = args.output == "json"
    out = Console(highlight=False)
    view = Console(stderr=True, highlight=False) if as_json else out
    title = (
        f"agentpool demo: {config.tasks} tasks, {config.workers} workers "
        f"({config.concurrency} slots each), runs of ~{config.mean_seconds:g} s, "
        f"{config.fail_rate * 100:g}% fail"
    )
    live = not args.no_live and view.is_terminal
    reporter = LiveReporter(view, title) if live else PlainReporter(view, title)
    try:
        with reporter:
            outcome = run_demo(config, reporter)
    except DemoInterrupted as exc:
        view.print(f"interrupted by {exc}: all demo processes stopped, temporary files removed")
        return 128 + exc.signum
    except (DemoError, WorkerCommandNotFound, RedisServerError) as exc:
        Console(stderr=True, highlight=False).print(f"[bold red]agentpool demo failed:[/] {exc}",
                                                    soft_wrap=True)
        return 1
    summary = outcome.summary
    if as_json:
        sys.stdout.write(summary_json(summary, queue=outcome.queue, redis_url=outcome.redis_url,
                                      workers=outcome.pods, pids=outcome.pids) + "\n")
    else:
        out.print()
        out.print(summary_table(summary))
        if summary.ok:
            out.print("[bold green]Nothing lost:[/] every task reached a final state, including "
                      "those the killed worker was running.")
        else:
            out.print(f"[bold red]{summary.lost} lost, {summary.pending} still pending.[/]")
    return 0 if summary.ok else 1
