"""The handler the console's tests run in real worker processes (via PYTHONPATH).

Payload: ``{"gate": PATH}`` runs until PATH exists; ``{"fail_unless": PATH}`` fails for good
(dead letter) until PATH exists; anything else is echoed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agentpool.errors import PermanentError


def handle(payload: Any) -> Any:
    if isinstance(payload, dict) and "gate" in payload:
        while not os.path.exists(payload["gate"]):
            time.sleep(0.05)
        return {"gate": "opened"}
    if isinstance(payload, dict) and "fail_unless" in payload:
        if not os.path.exists(payload["fail_unless"]):
            raise PermanentError(payload.get("error", "not yet"))
        return {"fixed": True}
    return payload
