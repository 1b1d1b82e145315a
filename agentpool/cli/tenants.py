"""`agentpool tenants`: who has tasks waiting and running on a queue, with what weight and cap
on runs at once."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from agentpool.cli.common import (
    UsageError,
    add_output_option,
    add_queue_options,
    add_watch_options,
    command,
    connect,
    never_used,
    queue_name,
    show,
)
from agentpool.cli.views import Grid, format_age, shown_tenant
from agentpool.data_loss import reading_of
from agentpool.protocol import QueueFigures, TaskQueue, TenantLoad, TenantLoads

Snapshot = tuple[TenantLoads, float, QueueFigures]
NO_TENANT = "(none)"
DUE_PAGE = 1_000
"""Due delayed tasks read per round trip to count them as their tenants' queued ones."""
TABLE_ROWS = 50
"""The most tenants the table shows (the first, most queued): a table of thousands takes
seconds to lay out, near a watch's refresh; `-o json` lists them all."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tenants",
        help="list a queue's tenants: tasks queued, running and later, weights and caps",
        description="List the tenants with tasks on a queue (submit(..., tenant=name)), most "
        "queued first: their weight (spec.tenants; 1 unless set), their cap on runs at once "
        "(spec.tenants, spec.tenantMaxRunning; - for none), tasks queued (with their delayed "
        "tasks already due, as stats and tasks count them), running and later (delayed not "
        "yet due, or waiting for the tasks they run after), and how long the oldest "
        "queued one has waited since it was ready to run (submitted, or come due after a "
        "delay, a backoff or a requeue); and how many queued tasks wait for their tenant's "
        f"cap. Tasks without a tenant show as {NO_TENANT}, a tenant named so in quotes; "
        "tenants given a weight or a cap are listed even without tasks. The table shows the "
        f"first {TABLE_ROWS} (-o json lists all). Read in pages of 1,000 tasks while the "
        "queue moves, at most --most tasks of each of the queued, running, delayed and "
        "deferred sets. Exit 1 if nothing was ever submitted to the queue and no worker "
        "serves it.",
    )
    add_queue_options(parser)
    parser.add_argument("--most", type=int, default=100_000, metavar="N",
                        help="read at most this many tasks of each set (default 100000)")
    add_output_option(parser)
    add_watch_options(parser, interval=5.0)
    parser.set_defaults(func=run)


def due_as_queued(loads: Sequence[TenantLoad],
                  due: Sequence[tuple[str | None, float | None]]) -> list[TenantLoad]:
    """Tenants' loads with their delayed tasks already due (tenant, ready since) counted as
    queued, not later, as the figures and the task lists count them (the next claim queues
    them); most queued first, then most running, then by name."""
    by_tenant = {load.tenant: load for load in loads}
    for tenant, ready in due:
        load = by_tenant.get(tenant) or TenantLoad(tenant, 1)
        oldest = load.oldest_queued
        if ready is not None:
            oldest = ready if oldest is None else min(oldest, ready)
        by_tenant[tenant] = replace(load, queued=load.queued + 1,
                                    later=max(0, load.later - 1), oldest_queued=oldest)
    return sorted(by_tenant.values(),
                  key=lambda load: (-load.queued, -load.running, load.tenant or ""))


async def read_tenant_loads(queue: TaskQueue, most: int) -> tuple[TenantLoads, QueueFigures]:
    """Each tenant's load, its delayed tasks already due counted as queued (the one count of
    `agentpool tenants` and the console's tenants page), and the queue's figures: at most
    `most` tasks of each set, read `DUE_PAGE` at a time."""
    loads = await queue.tenant_loads(most=most)
    figures = await queue.figures()
    due: list[tuple[str | None, float | None]] = []
    if figures.due_delayed:
        # the first of the delayed set, by due time; each ready since it came due
        async for _, rows in queue._tenant_pages("delayed", min(figures.due_delayed, most),
                                                 DUE_PAGE):
            due += [(tenant, ready) for _, tenant, ready in rows]
    return replace(loads, loads=due_as_queued(loads.loads, due)), figures


def tenants_grid(loads: TenantLoads, now: float, queue: str, capped: int = 0) -> Grid:
    rows = [[shown_tenant(load.tenant, NO_TENANT), str(load.weight),
             "-" if load.cap is None else str(load.cap),
             str(load.queued), str(load.running), str(load.later),
             format_age(None if load.oldest_queued is None else now - load.oldest_queued)]
            for load in loads.loads[:TABLE_ROWS]]
    notes = []
    if len(loads.loads) > TABLE_ROWS:
        more = len(loads.loads) - TABLE_ROWS
        notes.append(f"… and {more:,} more tenant{'s' if more != 1 else ''} (-o json lists "
                     "all; tasks --tenant NAME lists one's tasks)")
    if loads.counted < loads.total:
        notes.append(f"counted the first {loads.counted:,} of {loads.total:,} tasks "
                     "(raise --most to count more)")
    if capped:
        notes.append(f"{capped:,} queued task{'s wait' if capped != 1 else ' waits'} for "
                     "their tenant's cap on runs at once")
    if not rows:
        notes.append("no task is queued, running or waiting, and no tenant has a weight "
                     "or a cap")
    return Grid(headers=["TENANT", "WEIGHT", "CAP", "QUEUED", "RUNNING", "LATER",
                         "OLDEST WAIT"],
                rows=rows, title=f"Tenants of {queue}: {len(loads.loads)}", notes=notes)


def tenants_json(loads: TenantLoads, now: float, queue: str, capped: int = 0
                 ) -> dict[str, Any]:
    return {
        "queue": queue,
        "counted": loads.counted,
        "total": loads.total,
        "capped": capped,
        "tenants": [
            {"tenant": load.tenant, "weight": load.weight, "max_running": load.cap,
             "queued": load.queued,
             "running": load.running, "later": load.later,
             "oldest_queued_wait_seconds": None if load.oldest_queued is None
             else round(max(0.0, now - load.oldest_queued), 3)}
            for load in loads.loads
        ],
    }


@command
async def run(args: argparse.Namespace) -> int:
    if args.most < 1:
        raise UsageError("--most must be at least 1")
    name = queue_name(args)
    async with connect(args) as client:
        queue = client.queue(name)

        async def snapshot() -> Snapshot:
            loads, figures = await read_tenant_loads(queue, args.most)
            return loads, time.time(), figures

        async def unused(data: Snapshot) -> str | None:
            return None if data[2].used else await never_used(queue)

        return await show(args, snapshot, lambda d: tenants_grid(d[0], d[1], name, d[2].capped),
                          lambda d: tenants_json(d[0], d[1], name, d[2].capped), unused,
                          lambda d: reading_of(name, d[2]))
