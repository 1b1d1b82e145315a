"""`agentpool workers`: every live worker instance of a queue."""

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
    queue_name,
    show,
)
from agentpool.cli.views import Grid, workers_grid, workers_json
from agentpool.data_loss import reading_of
from agentpool.protocol import (
    WORKER_LIVENESS_WINDOW,
    QueueFigures,
    WorkerState,
    figures_and_workers,
)

Snapshot = tuple[list[WorkerState], float, QueueFigures]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "workers",
        help="list the worker instances of a queue",
        description="List worker instances (pod + per-process instance id) that heart-beat "
        f"within the last {WORKER_LIVENESS_WINDOW:g}s: state, tasks leased to it now / "
        "concurrency (the tasks `tasks -s running` lists as its own), tasks done and failed "
        "(as of its last heartbeat), time since the last heartbeat, uptime. Exit 1 if "
        "nothing was ever submitted to the queue and no worker serves it (with --watch: said "
        "once, and the watch goes on).",
    )
    add_queue_options(parser)
    add_output_option(parser)
    add_watch_options(parser)
    parser.set_defaults(func=run)


@command
async def run(args: argparse.Namespace) -> int:
    name = queue_name(args)
    async with connect(args) as client:
        queue = client.queue(name)

        async def snapshot() -> Snapshot:
            figures, workers = await figures_and_workers(queue)
            return workers, time.time(), figures

        def grids(data: Snapshot) -> Grid:
            workers, now, _ = data
            return workers_grid(workers, now, name)

        def to_json(data: Snapshot) -> Any:
            workers, now, _ = data
            return {"queue": name, "workers": workers_json(workers, now)}

        async def unused(data: Snapshot) -> str | None:
            return None if data[2].used else await never_used(queue)

        return await show(args, snapshot, grids, to_json, unused,
                          lambda data: reading_of(name, data[2]))
