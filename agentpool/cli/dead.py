"""`agentpool dead list|requeue|purge`: inspect and act on a queue's dead-letter queue."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

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
    print_view,
    queue_name,
    redis_failure,
    task_id,
)
from agentpool.cli.views import dead_grid, task_json
from agentpool.protocol import DeadLettersCut, TaskQueue


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dead",
        help="list, requeue or purge dead-lettered tasks",
        description="The dead-letter queue: tasks that used up their attempts or could not "
        "run, each with its last error.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="list dead tasks, newest first",
        description="List dead tasks, newest first, each with its last error, and how many "
        "the queue holds. Exit 1 if nothing was ever submitted to the queue and no worker "
        "serves it.",
    )
    add_queue_options(listing)
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    add_output_option(listing)
    listing.set_defaults(func=run_list)
    for action, summary, func in (
        ("requeue", "Requeue dead tasks; their attempts start again from 0, and the tasks "
         "after them that their deaths cancelled wait for them again.", run_requeue),
        ("purge", "Delete dead tasks for good.", run_purge),
    ):
        sub = actions.add_parser(
            action, help=f"{action} the given dead tasks, or --all",
            description=f"{summary} Exit 1 if some of the given ids were not in the "
            "dead-letter queue, or if nothing was ever submitted to the queue and no worker "
            "serves it.",
        )
        add_queue_options(sub)
        sub.add_argument("task_ids", nargs="*", metavar="TASK_ID")
        sub.add_argument("--all", action="store_true", help="every dead task of the queue")
        add_output_option(sub)
        sub.set_defaults(func=func)


@command
async def run_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    name = queue_name(args)
    async with connect(args) as client:
        queue = client.queue(name)
        tasks = await queue.dead_letters(args.limit)
        figures = await queue.figures()
        if not tasks and not figures.used:
            raise CommandFailed(await never_used(queue))
        after_each = await queue.next_counts([t.id for t in tasks])
    total = max(figures.dead, len(tasks))
    print_view(args, dead_grid(tasks, after_each, time.time(), name, total),
               {"queue": name, "total": total,
                "tasks": [{**task_json(name, t), "next_count": n}
                          for t, n in zip(tasks, after_each, strict=True)]})
    return EXIT_OK


def selected_ids(args: argparse.Namespace) -> list[str] | None:
    """The ids to act on; None means every dead task."""
    if args.all and args.task_ids:
        raise UsageError("give task ids or --all, not both")
    if not args.all and not args.task_ids:
        raise UsageError(f"give the task ids to {args.action}, or --all")
    return None if args.all else list(dict.fromkeys(task_id(t) for t in args.task_ids))


async def _act(args: argparse.Namespace, past: str,
               operation: Callable[[TaskQueue, list[str] | None],
                                   Awaitable[tuple[int, int | None]]]) -> int:
    """`operation` answers how many dead tasks it acted on and, for a requeue, how many tasks
    after them came back (None for a purge)."""
    name = queue_name(args)
    ids = selected_ids(args)
    async with connect(args) as client:
        queue = client.queue(name)
        try:
            count, revived = await operation(queue, ids)
        except DeadLettersCut as cut:
            raise CommandFailed(
                f"{past} {cut.handled} dead tasks of queue {name}, then "
                f"{redis_failure(client.url, cut.__cause__ or cut)}; run it again for the "
                "rest") from None
        if not count and not await queue.used():
            raise CommandFailed(await never_used(queue))
    if args.output == "json":
        print_json({"queue": name, past: count,
                    **({"revived": revived} if revived is not None else {})})
    else:
        noun = "task" if count == 1 else "tasks"
        emit(f"{past.capitalize()} {count} dead {noun} of queue {name}"
             + (f"; {_came_back(revived, count)}" if revived else ""))
    if ids is not None and count < len(ids):
        error_line(f"{len(ids) - count} of {len(ids)} given tasks were not in the "
                   "dead-letter queue")
        return EXIT_FAILED
    return EXIT_OK


def _came_back(revived: int, dead: int) -> str:
    tasks = "1 task" if revived == 1 else f"{revived} tasks"
    death, them = ("its death", "it") if dead == 1 else ("their deaths", "them")
    return f"{tasks} {death} had cancelled {'waits' if revived == 1 else 'wait'} for {them} again"


async def _requeue(queue: TaskQueue, ids: list[str] | None) -> tuple[int, int | None]:
    outcome = await queue.requeue_dead_counted(ids)
    return outcome.requeued, outcome.revived


async def _purge(queue: TaskQueue, ids: list[str] | None) -> tuple[int, int | None]:
    return await queue.purge_dead(ids), None


@command
async def run_requeue(args: argparse.Namespace) -> int:
    return await _act(args, "requeued", _requeue)


@command
async def run_purge(args: argparse.Namespace) -> int:
    return await _act(args, "purged", _purge)
