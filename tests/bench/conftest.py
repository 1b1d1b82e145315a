"""The benchmarks live in bench/, which is not installed: their modules are imported from the
checkout. Only their pure parts are tested here: no timings, no workers."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
