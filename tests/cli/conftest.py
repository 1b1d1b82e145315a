from __future__ import annotations

import pytest
from cli_helpers import Cli


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads these; tests pass what they mean explicitly."""
    for name in ("AGENTPOOL_REDIS_URL", "AGENTPOOL_QUEUE", "KUBECONFIG", "AGENTPOOL_DEBUG",
                 "KUBERNETES_SERVICE_HOST", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], redis_url: str, queue_name: str) -> Cli:
    return Cli(capsys, redis_url, queue_name)
