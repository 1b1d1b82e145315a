"""Fixtures of the observability tests: helm (through the chart tests' helpers) and promtool."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))

from chart_helpers import HELM, Helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm is missing at {HELM}: run `make setup` (scripts/install-helm.sh)")
    return Helm(tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from the Debian package `prometheus` (installed by `make setup`)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run `make setup` (installs the Debian package "
                    "`prometheus`, which ships promtool)")
    return path
