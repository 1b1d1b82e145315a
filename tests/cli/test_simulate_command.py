from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentpool.cli import main


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "burst.csv"
    rows = [f"{index * 0.2:.1f},30" for index in range(40)]
    path.write_text("arrival_seconds,service_seconds\n" + "\n".join(rows) + "\n")
    return path


def test_simulate_prints_both_autoscalers_as_json(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(trace), "--max-replicas", "6", "-o", "json", "--timeline"]) == 0
    document = json.loads(capsys.readouterr().out)
    ours, keda = document["results"]
    assert (ours["autoscaler"], keda["autoscaler"]) == ("agentpool", "keda")
    assert ours["tasks"] == keda["tasks"] == 40
    assert ours["interrupted_tasks"] == 0
    assert max(document["timeline"]["agentpool"]["replicas"]) <= 6


def test_simulate_prints_a_table(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "p95 wait" in out
    assert "KEDA defaults" in out


def test_simulate_refuses_bad_settings_and_missing_files(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(trace), "--min-replicas", "5", "--max-replicas", "2"]) == 2
    assert "minReplicas must be less than or equal" in capsys.readouterr().err
    assert main(["simulate", str(trace.with_name("missing.csv"))]) == 2
    assert "missing.csv" in capsys.readouterr().err
