"""`agentpool stats`: one queue's figures and counters; with --watch, also live rates."""

from __future__ import annotations

import argparse
import time
from typing import Any

from agentpool.cli.common import (
    add_output_option,
    add_queue_options,
    add_watch_options,
    command,
    connect,
    never_used,
    number,
    queue_name,
    show,
)
from agentpool.cli.fleet import MAX_WINDOW, CounterSample, Rates, RateTracker
from agentpool.cli.views import Grid, figures_grid, figures_json
from agentpool.data_loss import reading_of
from agentpool.protocol import QueueFigures


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="show a queue's figures",
        description="Show a queue's figures (queued per priority, delayed, in flight, dead, "
        "live workers) and its cumulative counters. With --watch the view refreshes and adds "
        "rates computed over the refreshes of the last --window seconds. Exit 1 if nothing was "
        "ever submitted to the queue and no worker serves it (with --watch: said once, and "
        "the watch goes on until it appears).",
    )
    add_queue_options(parser)
    add_output_option(parser)
    add_watch_options(parser)
    parser.add_argument("--window", type=number(float, above=0, high=MAX_WINDOW), default=300,
                        metavar="SECONDS",
                        help="with --watch: span of the rates (default 300)")
    parser.set_defaults(func=run)


@command
async def run(args: argparse.Namespace) -> int:
    name = queue_name(args)
    tracker = RateTracker(args.window)
    async with connect(args) as client:
        queue = client.queue(name)

        async def snapshot() -> tuple[QueueFigures, Rates | None]:
            figures = await queue.figures()
            tracker.add(CounterSample(time.monotonic(), figures.stats))
            return figures, tracker.rates()

        def grids(data: tuple[QueueFigures, Rates | None]) -> Grid:
            return figures_grid(name, *data)

        def to_json(data: tuple[QueueFigures, Rates | None]) -> Any:
            return figures_json(name, *data)

        async def unused(data: tuple[QueueFigures, Rates | None]) -> str | None:
            return None if data[0].used else await never_used(queue)

        return await show(args, snapshot, grids, to_json, unused,
                          lambda data: reading_of(name, data[0]))
