"""`agentpool get TASK_ID`: a task's state, attempts, error, payload and result; with
``--follow``, its events as they come, then the task, exiting with its outcome."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from agentpool.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    UsageError,
    add_output_option,
    add_queue_options,
    command,
    connect,
    error_line,
    print_json,
    print_line,
    print_view,
    queue_name,
    task_id,
)
from agentpool.cli.views import ended_line, event_json, event_line, task_detail_grid, task_json
from agentpool.protocol import TaskInfo, TaskNotFound, TaskQueue

EVENT_ID = re.compile(r"(\d+)-(\d+)")


def event_id(text: str) -> str:
    """An event id as --follow prints them: `<milliseconds>-<sequence>`."""
    match = EVENT_ID.fullmatch(text.strip())
    if match is None or max(int(match[1]), int(match[2])) >= 1 << 64:
        raise argparse.ArgumentTypeError(
            f"invalid event id {text!r}: an event id is <milliseconds>-<sequence>, as "
            "--follow -o json prints it (e.g. 1700000000000-0)")
    return match[0]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "get",
        help="show one task",
        description="Show one task: state, attempts, owner, last error, payload and result. "
        "Exit 1 if the queue has no such task (results expire after their TTL). With "
        "--follow, print its events (every attempt's) as they come until it is final, then "
        "the task; exit 0 if it succeeded, 1 otherwise.",
    )
    add_queue_options(parser)
    parser.add_argument("task_id", metavar="TASK_ID", help="the id submit printed (32 hex digits)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="print the task's events live until it is final")
    parser.add_argument("--after", metavar="EVENT_ID", type=event_id,
                        help="with --follow: start after this event id (default: the first)")
    add_output_option(parser)
    parser.set_defaults(func=run)


def print_task(args: argparse.Namespace, queue: str, info: TaskInfo,
               next_ids: list[str] | None = None) -> None:
    """The task as `get` shows it; with `next_ids` (the tasks submitted to run after it, when
    read), those too."""
    print_view(args, task_detail_grid(queue, info, time.time(), next_ids or ()),
               task_doc(queue, info, next_ids))


def task_doc(queue: str, info: TaskInfo, next_ids: list[str] | None) -> dict[str, Any]:
    """The task's JSON as `get` prints it (with ``next`` when it was read)."""
    doc = task_json(queue, info)
    return doc if next_ids is None else {**doc, "next": next_ids}


@command
async def run(args: argparse.Namespace) -> int:
    args.task_id = task_id(args.task_id)
    if args.after is not None and not args.follow:
        raise UsageError("--after applies to --follow")
    name = queue_name(args)
    async with connect(args) as client:
        if args.follow:
            return await follow(args, client.queue(name))
        queue = client.queue(name)
        info = await queue.get(args.task_id)
        if info is None:
            raise CommandFailed(f"no task {args.task_id} in queue {name}")
        next_ids = await queue.tasks_after(args.task_id)
    print_task(args, name, info, next_ids)
    return EXIT_OK


async def follow(args: argparse.Namespace, queue: TaskQueue) -> int:
    """Events as JSON lines (``-o json``) or one line each; then the task as `get` shows it."""
    async for event in queue.events(args.task_id, after=args.after):
        if args.output == "json":
            print_json(event_json(event), one_line=True)
        elif not event.final:
            print_line(event_line(event))
    info = await queue.get(args.task_id)
    if info is None:
        raise TaskNotFound(f"task {args.task_id} in queue {queue.name} is gone")
    next_ids = await queue.tasks_after(args.task_id)
    if args.output == "json":
        print_json(task_doc(queue.name, info, next_ids), one_line=True)
    else:
        print_task(args, queue.name, info, next_ids)
    if info.state != "succeeded":
        error_line(ended_line(info))
        return EXIT_FAILED
    return EXIT_OK
