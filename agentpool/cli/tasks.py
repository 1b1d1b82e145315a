"""`agentpool tasks`: list a queue's tasks by state."""

from __future__ import annotations

import argparse
import time

from agentpool.cli.common import (
    EXIT_OK,
    CommandFailed,
    UsageError,
    add_output_option,
    add_queue_options,
    command,
    connect,
    never_used,
    print_view,
    queue_name,
)
from agentpool.cli.submit import tenant_name
from agentpool.cli.views import state_totals, tasks_grids, tasks_json
from agentpool.protocol import TASK_LIST_STATES, TaskInfo, TaskQueue, task_page

TENANT_LOOK = 10_000
"""With --tenant, the tasks of each state looked at for that tenant's."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tasks",
        help="list tasks by state",
        description="List a queue's tasks by state: queued (in claim order, then those that "
        "wait for their tenant's cap on runs at once, then the delayed ones already due, as "
        "`stats` counts them), delayed (not yet due, by due "
        "time), deferred (waiting for the tasks they run after, in submit order), running "
        "(by lease expiry), dead (newest first). Finished tasks are not "
        "listed; read one with `get`. Exit 1 if nothing was ever submitted to the queue and "
        "no worker serves it.",
    )
    add_queue_options(parser)
    parser.add_argument("-s", "--state", action="append", choices=TASK_LIST_STATES,
                        help="only this state (repeatable; default: all five)")
    parser.add_argument("--limit", type=int, default=20,
                        help="at most this many tasks per state (default 20)")
    whose = parser.add_mutually_exclusive_group()
    whose.add_argument("--tenant", type=tenant_name, metavar="NAME",
                       help="only this tenant's tasks, found among the first "
                       f"{TENANT_LOOK:,} tasks of each state")
    whose.add_argument("--no-tenant", action="store_true",
                       help="only the tasks without a tenant, found the same way")
    add_output_option(parser)
    parser.set_defaults(func=run)


async def listed(queue: TaskQueue, state: str, limit: int, due: int) -> list[TaskInfo]:
    """Up to `limit` tasks of `state`, a delayed task already due (`due` of them) listed as
    queued only, as `stats` counts it: `list_tasks` lists it with the queued ones and first
    among the delayed (by due time), where it is skipped."""
    if state != "delayed" or not due:
        return await queue.list_tasks(state, limit)
    _, rows = await task_page(queue, state, due, limit, preview_bytes=1)
    return await queue.get_many([row.info.id for row in rows])


async def tenant_listed(queue: TaskQueue, state: str, tenant: str | None, limit: int,
                        due: list[str]) -> tuple[list[str], int, bool]:
    """The ids of the first `limit` tasks of `tenant` (None: those without one) in `state`,
    how many it has among the first `TENANT_LOOK`, and whether the look stopped there; `due`:
    its delayed tasks already due, listed and counted as queued only, as `listed` does."""
    if state == "delayed" and due:
        ids, count, cut = await queue.tenant_task_ids(state, tenant, limit + len(due),
                                                      most=TENANT_LOOK)
        skip = set(due)
        return [i for i in ids if i not in skip][:limit], max(0, count - len(due)), cut
    ids, count, cut = await queue.tenant_task_ids(state, tenant, limit, most=TENANT_LOOK)
    if state == "queued":
        return [*ids, *due][:limit], count + len(due), cut
    return ids, count, cut


def listed_once(groups: dict[str, list[TaskInfo]]) -> None:
    """Drop from the delayed tasks those listed as queued: one that came due after the
    figures were read is listed in both."""
    queued = {info.id for info in groups.get("queued", [])}
    if "delayed" in groups and queued:
        groups["delayed"] = [info for info in groups["delayed"] if info.id not in queued]


@command
async def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    name = queue_name(args)
    states = list(dict.fromkeys(args.state or TASK_LIST_STATES))
    async with connect(args) as client:
        queue = client.queue(name)
        figures = await queue.figures()
        if not figures.used:
            raise CommandFailed(await never_used(queue))
        totals = state_totals(figures)
        groups: dict[str, list[TaskInfo]] = {}
        partial: list[str] = []
        filtered = args.tenant is not None or args.no_tenant
        due_count = figures.due_delayed
        due: list[str] = []
        if filtered and due_count and {"queued", "delayed"} & set(states):
            due, _, _ = await queue.tenant_task_ids("delayed", args.tenant, TENANT_LOOK,
                                                    most=min(due_count, TENANT_LOOK))
            due_count = len(due)
        for state in states:
            if not filtered:
                groups[state] = await listed(queue, state, args.limit, figures.due_delayed)
                continue
            ids, count, cut = await tenant_listed(queue, state, args.tenant, args.limit, due)
            groups[state] = [info for info in await queue.get_many(ids) if info is not None]
            totals[state] = max(count, len(groups[state]))
            if cut:
                partial.append(state)
        listed_once(groups)
    whose = f" of tenant {args.tenant}" if args.tenant is not None else \
        " without a tenant" if args.no_tenant else ""
    grids = tasks_grids(name, groups, totals, time.time(), whose=whose)
    for grid, state in zip(grids, groups, strict=True):
        if state in partial:
            grid.notes.append(f"counted among the first {TENANT_LOOK:,} {state} tasks only")
        if state == "queued" and figures.capped and not filtered:
            wait = "waits" if figures.capped == 1 else "wait"
            grid.notes.append(f"{figures.capped:,} of them {wait} for their tenant's cap on "
                              "runs at once (listed after the queue, marked capped)")
        if state == "queued" and due_count:
            which = "is a delayed task" if due_count == 1 else "are delayed tasks"
            grid.notes.append(f"{due_count:,} of them {which} now due "
                              "(listed last, marked due: the next claim queues them)")
    doc = tasks_json(name, groups, totals)
    if filtered:
        doc |= {"tenant": args.tenant, "lookedAtFirst": TENANT_LOOK, "cut": partial}
    print_view(args, grids, doc)
    return EXIT_OK
