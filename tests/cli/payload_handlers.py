"""A handler for the CLI tests' real worker processes: it reports what it was given."""

from __future__ import annotations

from typing import Any


async def describe(payload: Any) -> dict[str, Any]:
    return {"type": type(payload).__name__, "payload": payload}
