"""The handler the console's tests run in real worker processes (via PYTHONPATH).

Payload: ``{"gate": PATH}`` runs until PATH exists; ``{"fail_unless": PATH}`` fails for good
(dead letter) until PATH exists; ``{"steps": N, "gates": PREFIX, "note": TEXT}`` runs N steps,
step i once PREFIX-i exists, each emitting a ``note`` event, its progress and a checkpoint;
anything else is echoed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agentpool.errors import PermanentError
from agentpool_worker.handlers import TaskContext


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.05)


def handle(payload: Any, ctx: TaskContext) -> Any:
    if isinstance(payload, dict) and "gate" in payload:
        wait_for(payload["gate"])
        return {"gate": "opened"}
    if isinstance(payload, dict) and "fail_unless" in payload:
        if not os.path.exists(payload["fail_unless"]):
            raise PermanentError(payload.get("error", "not yet"))
        return {"fixed": True}
    if isinstance(payload, dict) and "steps" in payload:
        steps = int(payload["steps"])
        for step in range(1, steps + 1):
            wait_for(f"{payload['gates']}-{step}")
            ctx.emit_sync("note", {"step": step, "text": payload.get("note")})
            ctx.progress_sync(step / steps, f"step {step} of {steps}")
            ctx.checkpoint_sync({"step": step})
        return {"steps": steps}
    return payload
