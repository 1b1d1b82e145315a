"""Offline checks of e2e/: its modules are imported from that folder, as its own conftest does."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = REPO / "e2e"

if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))
