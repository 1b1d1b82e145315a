"""`agentpool wait TASK_ID`: block until a task finishes and show its outcome."""

from __future__ import annotations

import argparse

from agentpool.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    add_output_option,
    add_queue_options,
    command,
    connect,
    error_line,
    number,
    queue_name,
    task_id,
)
from agentpool.cli.get import print_task
from agentpool.cli.views import ended_line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "wait",
        help="wait for a task to finish",
        description="Wait until a task succeeds, dies or is cancelled, then show it like "
        "`get`. Exit 0 if it succeeded; 1 if it ended otherwise, is unknown, or the timeout "
        "passed.",
    )
    add_queue_options(parser)
    parser.add_argument("task_id", metavar="TASK_ID", help="the id submit printed (32 hex digits)")
    parser.add_argument("--timeout", type=number(float, low=0), metavar="SECONDS",
                        help="give up after this many seconds (default: wait forever)")
    add_output_option(parser)
    parser.set_defaults(func=run)


@command
async def run(args: argparse.Namespace) -> int:
    args.task_id = task_id(args.task_id)
    name = queue_name(args)
    async with connect(args) as client:
        try:
            info = await client.queue(name).wait(args.task_id, args.timeout)
        except TimeoutError:
            raise CommandFailed(
                f"task {args.task_id} not finished after {args.timeout:g}s"
            ) from None
    print_task(args, name, info)
    if info.state != "succeeded":
        error_line(ended_line(info))
        return EXIT_FAILED
    return EXIT_OK
