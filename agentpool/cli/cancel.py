"""`agentpool cancel TASK_ID`: remove a waiting task, or ask a running one to stop."""

from __future__ import annotations

import argparse

from agentpool.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_output_option,
    add_queue_options,
    command,
    connect,
    emit,
    error_line,
    print_json,
    queue_name,
    task_id,
)
from agentpool.cli.views import cancel_json, cancel_line
from agentpool.protocol import CancelOutcome


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a task",
        description="Cancel a task. A queued, delayed or dead task is cancelled at once; a "
        "running task is flagged and its worker stops it at its next heartbeat. Exit 1 if "
        "the task is unknown or already finished.",
    )
    add_queue_options(parser)
    parser.add_argument("task_id", metavar="TASK_ID", help="the id submit printed (32 hex digits)")
    add_output_option(parser)
    parser.set_defaults(func=run)


@command
async def run(args: argparse.Namespace) -> int:
    args.task_id = task_id(args.task_id)
    name = queue_name(args)
    async with connect(args) as client:
        outcome = await client.queue(name).cancel(args.task_id)
    ok = outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED)
    line = cancel_line(args.task_id, outcome)
    if args.output == "json":
        print_json(cancel_json(name, args.task_id, outcome))
    elif ok:
        emit(line)
    if not ok:
        error_line(line)
    return EXIT_OK if ok else EXIT_FAILED
