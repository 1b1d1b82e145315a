"""The side-by-side benchmark's report (bench/peers): counts, ratios and the summary table, on
hand-made results; and the peers' environments, on stand-in interpreters. No timings."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from bench.peers import e2e, run, venvs


def test_commands_leave_out_the_orchestrators_calls_and_the_wrappers_time() -> None:
    stats = {
        "cmdstat_evalsha": {"calls": 10, "usec": 500.0},
        "cmdstat_incr": {"calls": 20, "usec": 40.0},
        "blpop": {"calls": 4, "usec": 80.0},
        "cmdstat_config|resetstat": {"calls": 1, "usec": 7.0},
        "cmdstat_exec": {"calls": 0, "usec": 0.0},
    }
    own = {"cmdstat_blpop": 1, "cmdstat_config|resetstat": 1, "cmdstat_rename": 2}
    calls, usec = e2e.count_commands(stats, own)
    assert calls == 10 + 20 + 3
    assert usec == pytest.approx(40.0 + 80.0 * 3 / 4)


def test_ratios_round_to_two_decimals_or_two_significant_digits() -> None:
    assert run._ratio(3.0, 2.0) == "1.50×"
    assert run._ratio(0.03, 28.52) == "0.0011×"
    assert [run._ratio(None, 1.0), run._ratio(1.0, None), run._ratio(1.0, 0.0)] == ["—"] * 3


def case(system: str, workers: int, mode: str, **figures: float) -> tuple[str, dict[str, Any]]:
    return (f"{system} W={workers} {mode}",
            {"system": system, "workers": workers, "mode": mode, "rounds": 3, **figures})


def results() -> dict[str, Any]:
    cases = dict([
        case("agentpool", 1, "single", rate=6000.0, worker_cpu_us=100.0, redis_cpu_us=60.0),
        case("dramatiq", 1, "single", rate=3000.0, worker_cpu_us=250.0, redis_cpu_us=80.0),
        case("taskiq", 1, "single", rate=3100.0, worker_cpu_us=300.0, redis_cpu_us=66.0),
        case("agentpool", 2, "single", rate=7000.0),
        case("dramatiq", 2, "single", rate=3900.0),
    ])
    return {
        "versions": {"agentpool": {"agentpool": "0.1.0", "redis": "8.2.0"},
                     "dramatiq": {"dramatiq": "2.2.1", "redis": "8.2.0"},
                     "taskiq": {"taskiq": "0.13.0", "taskiq-redis": "1.1.0"}},
        "e2e": {"n": 10_000, "rounds": 3, "load_per_round": [1.0], "cases": cases},
        "enqueue": {},
        "workers": {
            "agentpool": {"drain_1": 16_000.0, "drain_2": 28_000.0},
            "dramatiq": {"drain_1": 2_000.0, "drain_2": 3_600.0},
            "taskiq": {"latency": {"p50_ms": 0.6, "p99_ms": 1.1}},
        },
        "recovery": [
            {"system": "agentpool", "profile": "default", "setting": "lease expiry",
             "seconds": 8.0, "outcome": "8.00 s", "error": ""},
            {"system": "dramatiq", "profile": "reliable", "setting": "heartbeat 15 s",
             "seconds": 28.0, "outcome": "28.00 s", "error": ""},
            {"system": "celery", "profile": "default", "setting": "early ack",
             "seconds": None, "outcome": "lost", "error": ""},
        ],
    }


def test_the_summary_puts_the_headline_first_and_marks_the_kinder_rows_secondary() -> None:
    rows = run.summary(results())
    kinds = [row.secondary for row in rows]
    assert kinds == sorted(kinds) and not kinds[0] and kinds[-1]
    assert rows[0].figure == "end to end, one producer of single submits, W = 1"
    assert (rows[0].best, rows[0].ratio) == ("3,100/s (taskiq)", "1.94×")
    drain = next(row for row in rows if row.figure == "no-op drain, 2 processes")
    assert drain.secondary and drain.best == "3,600/s (dramatiq)"
    recovery = next(row for row in rows if row.figure.startswith("recovery"))
    assert recovery.secondary
    assert recovery.missing == ("no recovery within the cap: celery default lost",)


def test_a_peer_missing_from_a_row_is_named_with_the_reason() -> None:
    rows = run.summary(results())
    w2 = next(row for row in rows if row.figure.endswith("single submits, W = 2"))
    assert (w2.best, w2.secondary) == ("3,900/s (dramatiq)", False)
    assert w2.missing == ("taskiq: no figure in this run (failed or skipped; see the log)",)
    drain = [row for row in rows if row.figure.startswith("no-op drain")]
    assert [row.missing for row in drain] == [(run.NO_DRAIN["taskiq"],)] * 2
    assert "XACK" in run.NO_DRAIN["taskiq"]
    text = "\n".join(run.summary_lines(rows))
    assert "| no-op drain, 2 processes (secondary) [2] |" in text
    assert "| end to end, one producer of single submits, W = 2 [1] |" in text
    assert "| no-op drain, 1 process (secondary) [2] |" in text
    assert f"\n[2] {run.NO_DRAIN['taskiq']}" in text
    assert "\n[3] dramatiq: no figure in this run" in text  # no latency in results()
    assert "\n[4] no recovery within the cap: celery default lost" in text
    assert "| end to end, one producer of single submits, W = 1 |" in text


def test_peers_missing_for_one_reason_share_one_note() -> None:
    assert run.missing_notes(["celery", "taskiq"], "batch") == (
        "celery, taskiq: no batch submit in the driver",)
    assert run.missing_notes(["arq", "taskiq"], "drain") == (
        run.NO_DRAIN["taskiq"], "arq: no figure in this run (failed or skipped; see the log)")
    assert run.missing_notes([], "drain") == ()


def test_the_report_prints_the_versions_and_the_end_to_end_table_once() -> None:
    text = run.render(results(), ["agentpool", "dramatiq", "taskiq"])
    assert text.count("### End to end") == 1
    assert text.index("Versions:") < text.index("### End to end") < text.index("best peer")
    assert "dramatiq 2.2.1 (redis 8.2.0)" in text
    assert "taskiq 0.13.0 (taskiq-redis 1.1.0)" in text


def test_dramatiq_runs_end_to_end_with_its_tuned_threads_and_keeps_a_default_column() -> None:
    env = run.Env(server=None, pythons={"dramatiq": Path("/v/bin/python")},  # type: ignore[arg-type]
                  logs=Path("/tmp"))

    def threads(config: run.Config) -> str:
        argv = config.spec(env, "e2e", "throughput", "w").argv
        return argv[argv.index("--threads") + 1]

    assert run.DRAMATIQ_THREADS > 8
    assert threads(run.E2E_CONFIGS["dramatiq"]) == str(run.DRAMATIQ_THREADS)
    defaults = [c for c in run.CONFIGS if c.system == "dramatiq" and threads(c) == "8"]
    assert [c.label for c in defaults] == ["dramatiq 8 threads"]


def interpreter(root: Path, peer: str, code: int, calls: Path) -> Path:
    """A stand-in for the peer's interpreter: counts its calls, exits with ``code``."""
    python = venvs.python_of(root, peer)
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit {code}\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python


def test_a_failed_install_is_installed_again_on_the_next_run(tmp_path: Path) -> None:
    calls, log = tmp_path / "calls", tmp_path / "pip.log"
    python = interpreter(tmp_path / "venvs", "dramatiq", 1, calls)
    for attempt in (1, 2):
        with pytest.raises(venvs.InstallFailed) as failed:
            venvs.ensure(tmp_path / "venvs", "dramatiq", log=log)
        message = str(failed.value)
        assert "\n" not in message and str(log) in message and "--upgrade-peers" in message
        assert len(calls.read_text().splitlines()) == attempt
    python.write_text(python.read_text().replace("exit 1", "exit 0"))
    assert venvs.ensure(tmp_path / "venvs", "dramatiq", log=log) == python
    assert venvs.ensure(tmp_path / "venvs", "dramatiq", log=log) == python
    assert len(calls.read_text().splitlines()) == 3, "installed once it succeeded"
    assert "--upgrade" not in calls.read_text()


def test_an_environment_that_cannot_report_its_versions_says_so_in_one_line(
        tmp_path: Path) -> None:
    python = interpreter(tmp_path, "rq", 1, tmp_path / "calls")
    with pytest.raises(venvs.InstallFailed) as failed:
        venvs.versions(python, "rq")
    assert "\n" not in str(failed.value) and "--upgrade-peers" in str(failed.value)


def test_dramatiqs_threads_can_be_set_for_a_sweep() -> None:
    configs = run.with_dramatiq_threads(run.CONFIGS, 64)
    assert [c.label for c in configs] == [c.label for c in run.CONFIGS]
    tuned = next(c for c in configs if c.label == "dramatiq")
    assert "64 threads" in tuned.describe
    assert [c for c in configs if c.system != "dramatiq"] == [
        c for c in run.CONFIGS if c.system != "dramatiq"]
