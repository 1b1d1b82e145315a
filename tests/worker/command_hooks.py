"""A module of one's own that adds a hook to the command handler (docs/worker.md, Hooks of a
pool of programs): ``run`` taken from agentpool_worker.command without its ``startup`` (the
worker gives the module the command's own, so the command is checked at start), and an
``after_task`` hook."""

from agentpool_worker.command import run
from agentpool_worker.handlers import TaskContext, TaskOutcome

__all__ = ["after_task", "run"]

BILLED: list[tuple[str, str, str | None]] = []


async def after_task(ctx: TaskContext, outcome: TaskOutcome) -> None:
    BILLED.append((ctx.task_id, outcome.status, outcome.error))
