"""A handler function of one's own that calls the command handler's ``run`` (docs/worker.md,
Hooks of a pool of programs): not the command handler to the worker, so nothing reads its
command at start; its first run does (agentpool_worker.command._settings)."""

from typing import Any

from agentpool_worker import command
from agentpool_worker.handlers import TaskContext


async def run(payload: Any, ctx: TaskContext) -> Any:
    return await command.run(payload, ctx)
