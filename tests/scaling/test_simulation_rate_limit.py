"""The simulator with a shared rate limit: grants never exceed the limit, and the autoscaler
that reads the waits keeps the throughput and waits of the blind one at a lower cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentpool.cli.main import main
from agentpool.scaling.policy import ScalingPolicy
from agentpool.scaling.simulation import Cluster, TraceTask, compare, parse_trace

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"
LIMITED = Cluster(concurrency=4, startup_seconds=20.0, rate_limit_per_minute=120,
                  rate_limit_burst=2)


def flood(count: int, service: float = 20.0) -> list[TraceTask]:
    return [TraceTask(index * 0.05, service) for index in range(count)]


def test_work_starts_no_faster_than_the_limit_allows_whatever_the_pool_size() -> None:
    trace = flood(300)
    result = compare(trace, ScalingPolicy(min_replicas=1, max_replicas=50), LIMITED)
    for run in result.runs:
        starts = sorted(task.arrival + wait for task, wait in zip(trace, run.waits, strict=True))
        for first in range(len(starts)):
            within = [s for s in starts[first:] if s - starts[first] < 10.0]
            assert len(within) <= 2 + 120 / 60 * 10 + 1e-9
        assert run.unfinished == 0


def test_the_limit_aware_pool_matches_the_blind_one_at_a_fraction_of_the_cost() -> None:
    trace = parse_trace((TRACES / "ratelimited.csv").read_text().splitlines())
    result = compare(trace, ScalingPolicy(min_replicas=1, max_replicas=50, tasks_per_replica=4),
                     LIMITED)
    assert result.unaware is not None
    ours, blind, keda = (r.summary() for r in result.runs)
    assert ours["tasks_per_minute"] >= 0.99 * float(blind["tasks_per_minute"])
    assert float(ours["p95_wait_s"]) <= 1.10 * float(blind["p95_wait_s"])
    assert float(ours["replica_seconds"]) <= 0.5 * float(keda["replica_seconds"])
    assert ours["interrupted_tasks"] == 0


def test_simulate_takes_a_rate_limit_and_adds_the_blind_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\n".join(f"{i * 0.1:.1f},5" for i in range(30)) + "\n")
    assert main(["simulate", str(path), "--rate-limit", "2/s", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [r["autoscaler"] for r in document["results"]] == [
        "agentpool", "agentpool-unaware", "keda"]
    assert "rate limit 120/min (burst 2)" in document["model"]
    with pytest.raises(SystemExit) as refused:
        main(["simulate", str(path), "--rate-limit", "fast"])
    assert refused.value.code == 2
    assert "expected a rate such as 600/min or 10/s, got 'fast'" in capsys.readouterr().err
