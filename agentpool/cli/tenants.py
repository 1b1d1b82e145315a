"""`agentpool tenants`: who has tasks waiting and running on a queue, with what weight and cap
on runs at once."""

from __future__ import annotations

import argparse
import time
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
from agentpool.cli.views import Grid, format_age
from agentpool.data_loss import reading_of
from agentpool.protocol import QueueFigures, TenantLoads

Snapshot = tuple[TenantLoads, float, QueueFigures]
NO_TENANT = "(none)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tenants",
        help="list a queue's tenants: tasks queued, running and later, weights and caps",
        description="List the tenants with tasks on a queue (submit(..., tenant=name)), most "
        "queued first: their weight (spec.tenants; 1 unless set), their cap on runs at once "
        "(spec.tenants, spec.tenantMaxRunning; - for none), tasks queued, running and "
        "later (delayed or waiting for the tasks they run after), and how long the oldest "
        "queued one has waited; and how many queued tasks wait for their tenant's cap. Tasks "
        "without a tenant show as (none); tenants given a weight or a cap are listed even "
        "without tasks. Read in pages of 1,000 tasks while the queue moves, at "
        "most --most tasks of each of the queued, running, delayed and deferred sets. Exit 1 "
        "if nothing was ever submitted to the queue and no worker serves it.",
    )
    add_queue_options(parser)
    parser.add_argument("--most", type=int, default=100_000, metavar="N",
                        help="read at most this many tasks of each set (default 100000)")
    add_output_option(parser)
    add_watch_options(parser, interval=5.0)
    parser.set_defaults(func=run)


def tenants_grid(loads: TenantLoads, now: float, queue: str, capped: int = 0) -> Grid:
    rows = [[load.tenant if load.tenant is not None else NO_TENANT, str(load.weight),
             "-" if load.cap is None else str(load.cap),
             str(load.queued), str(load.running), str(load.later),
             format_age(None if load.oldest_queued is None else now - load.oldest_queued)]
            for load in loads.loads]
    notes = []
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
                rows=rows, title=f"Tenants of {queue}: {len(rows)}", notes=notes)


def tenants_json(loads: TenantLoads, now: float, queue: str, capped: int = 0
                 ) -> dict[str, Any]:
    return {
        "queue": queue,
        "counted": loads.counted,
        "total": loads.total,
        "capped": capped,
        "tenants": [
            {"tenant": load.tenant, "weight": load.weight, "maxRunning": load.cap,
             "queued": load.queued,
             "running": load.running, "later": load.later,
             "oldestQueuedWaitSeconds": None if load.oldest_queued is None
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
            figures = await queue.figures()
            return await queue.tenant_loads(most=args.most), time.time(), figures

        async def unused(data: Snapshot) -> str | None:
            return None if data[2].used else await never_used(queue)

        return await show(args, snapshot, lambda d: tenants_grid(d[0], d[1], name, d[2].capped),
                          lambda d: tenants_json(d[0], d[1], name, d[2].capped), unused,
                          lambda d: reading_of(name, d[2]))
