"""Handlers used only by the benchmarks (loaded by worker processes from bench/)."""

from __future__ import annotations

import time
from typing import Any


async def stamp(payload: Any) -> float:
    """Return the wall-clock time the run started (for submit→start latency)."""
    return time.time()


async def emitter(payload: Any, ctx: Any) -> None:
    """Emit `events` token-sized events (for bench/events_bench.py)."""
    for i in range(int(payload["events"])):
        await ctx.emit("token", {"i": i, "text": " token"})


async def reply(payload: Any) -> dict[str, str]:
    """A result of about 100 bytes of JSON (for the sizing figures of bench/durability_bench.py)."""
    return {"reply": "Thanks for the report: the fix ships in the next release."}
