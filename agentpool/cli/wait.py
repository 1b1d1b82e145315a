"""`agentpool wait TASK_ID...`: block until tasks finish and show their outcomes."""

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
from agentpool.cli.submit import WaitProgress, show_waited, wait_all
from agentpool.cli.views import ended_line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "wait",
        help="wait for tasks to finish",
        description="Wait until a task succeeds, dies or is cancelled, then show it like "
        "`get`; given several ids (a fan-out's), wait for them all and show one line each, as "
        "`submit --wait` does. Exit 0 if every one succeeded; 1 if one ended otherwise, is "
        "unknown, or the timeout passed.",
    )
    add_queue_options(parser)
    parser.add_argument("task_ids", metavar="TASK_ID", nargs="+",
                        help="an id submit printed (32 hex digits)")
    parser.add_argument("--timeout", type=number(float, low=0), metavar="SECONDS",
                        help="give up after this many seconds, for all of them (default: wait "
                        "forever)")
    add_output_option(parser)
    parser.set_defaults(func=run)


@command
async def run(args: argparse.Namespace) -> int:
    ids = list(dict.fromkeys(task_id(text) for text in args.task_ids))
    name = queue_name(args)
    if len(ids) > 1:
        async with connect(args) as client:
            tasks, pending = await wait_all(client.queue(name), ids, args.timeout,
                                            WaitProgress.on_terminal(len(ids)))
        return show_waited(args, name, tasks, pending)
    async with connect(args) as client:
        try:
            info = await client.queue(name).wait(ids[0], args.timeout)
        except TimeoutError:
            raise CommandFailed(f"task {ids[0]} not finished after {args.timeout:g}s") from None
    print_task(args, name, info)
    if info.state != "succeeded":
        error_line(ended_line(info))
        return EXIT_FAILED
    return EXIT_OK
