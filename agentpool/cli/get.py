"""`agentpool get TASK_ID`: a task's state, attempts, error, payload and result."""

from __future__ import annotations

import argparse
import time

from agentpool.cli.common import (
    EXIT_OK,
    CommandFailed,
    add_output_option,
    add_queue_options,
    command,
    connect,
    print_view,
    queue_name,
    task_id,
)
from agentpool.cli.views import task_detail_grid, task_json
from agentpool.protocol import TaskInfo


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "get",
        help="show one task",
        description="Show one task: state, attempts, owner, last error, payload and result. "
        "Exit 1 if the queue has no such task (results expire after their TTL).",
    )
    add_queue_options(parser)
    parser.add_argument("task_id", metavar="TASK_ID", help="the id submit printed (32 hex digits)")
    add_output_option(parser)
    parser.set_defaults(func=run)


def print_task(args: argparse.Namespace, queue: str, info: TaskInfo) -> None:
    print_view(args, task_detail_grid(queue, info, time.time()), task_json(queue, info))


@command
async def run(args: argparse.Namespace) -> int:
    args.task_id = task_id(args.task_id)
    name = queue_name(args)
    async with connect(args) as client:
        info = await client.queue(name).get(args.task_id)
    if info is None:
        raise CommandFailed(f"no task {args.task_id} in queue {name}")
    print_task(args, name, info)
    return EXIT_OK
