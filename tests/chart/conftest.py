"""Chart fixtures: each values combination is rendered once per session and shared."""

from __future__ import annotations

import os

import pytest
from chart_helpers import COMBINATIONS, HELM, Helm, Rendered


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm is missing at {HELM}: run `make setup` (scripts/install-helm.sh)")
    return Helm(tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module", params=sorted(COMBINATIONS))
def rendered(request: pytest.FixtureRequest, helm: Helm) -> Rendered:
    """The chart rendered with one named values combination."""
    return helm.render(COMBINATIONS[request.param])
