"""Fixtures of the e2e suite's offline tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_stubs import Stubs, make_stubs


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    """kubectl and helm stand-ins (e2e_stubs.py), no rule yet."""
    return make_stubs(tmp_path)
