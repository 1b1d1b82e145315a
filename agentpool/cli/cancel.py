"""`agentpool cancel TASK_ID`: remove a waiting task, or ask a running one to stop;
`agentpool cancel --waiting`: remove every task waiting to run (`--tenant NAME`: of one
tenant)."""

from __future__ import annotations

import argparse

from agentpool.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    UsageError,
    add_output_option,
    add_queue_options,
    command,
    connect,
    emit,
    error_line,
    never_used,
    print_json,
    queue_name,
    task_id,
)
from agentpool.cli.submit import tenant_name
from agentpool.cli.views import cancel_json, cancel_line
from agentpool.protocol import CancelOutcome


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a task",
        description="Cancel a task. A queued, delayed, deferred or dead task is cancelled at "
        "once; a running task is flagged and its worker stops it at its next heartbeat. The "
        "tasks submitted to run after a cancelled one end cancelled too. Exit 1 if the task "
        "is unknown or already finished. With --waiting instead of a task id, cancel every "
        "task of the queue waiting to run (queued, delayed, deferred or waiting to be "
        "retried) that was submitted before the command; running tasks go on (exit 1 if "
        "nothing was ever submitted to the queue and no worker serves it). With --tenant, "
        "only that tenant's (a customer gone, a runaway producer); the count then leaves out "
        "the tasks that end with them (submitted to run after one of them).",
    )
    add_queue_options(parser)
    parser.add_argument("task_id", metavar="TASK_ID", nargs="?",
                        help="the id submit printed (32 hex digits)")
    parser.add_argument("--waiting", action="store_true",
                        help="cancel every task waiting to run instead of one task")
    parser.add_argument("--tenant", type=tenant_name, metavar="NAME",
                        help="with --waiting: only this tenant's tasks")
    add_output_option(parser)
    parser.set_defaults(func=run)


@command
async def run(args: argparse.Namespace) -> int:
    if args.waiting == (args.task_id is not None):
        raise UsageError("give a TASK_ID or --waiting (every task waiting to run), not "
                         + ("both" if args.waiting else "neither"))
    if args.tenant is not None and not args.waiting:
        raise UsageError("--tenant goes with --waiting (a tenant's tasks waiting to run)")
    if not args.waiting:
        args.task_id = task_id(args.task_id)
    name = queue_name(args)
    if args.waiting:
        async with connect(args) as client:
            queue = client.queue(name)
            count = await (queue.cancel_waiting() if args.tenant is None
                           else queue.cancel_waiting_of(args.tenant))
            if not count and not await queue.used():
                raise CommandFailed(await never_used(queue))
        whose = "" if args.tenant is None else f" of tenant {args.tenant}"
        if args.output == "json":
            print_json({"queue": name, "cancelled": count}
                       | ({} if args.tenant is None else {"tenant": args.tenant}))
        else:
            emit(f"Cancelled {count} waiting task{'' if count == 1 else 's'}{whose} of queue "
                 f"{name}; running tasks go on")
        return EXIT_OK
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
