from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentpool.cli import simulate as simulate_command
from agentpool.cli.main import build_parser, main
from agentpool.models import ScalingSpec
from agentpool.scaling.policy import ScalingPolicy
from agentpool.scaling.simulation import (
    Cluster,
    Comparison,
    KedaAutoscaler,
    KedaSettings,
    OurAutoscaler,
    parse_trace,
    simulate,
)

REPO = Path(__file__).resolve().parents[2]


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
    assert main(["simulate", str(trace), "--max-replicas", "0"]) == 2
    assert capsys.readouterr().err == (
        "agentpool simulate: invalid scaling settings: "
        "--max-replicas: Input should be greater than or equal to 1\n")
    assert main(["simulate", str(trace.with_name("missing.csv"))]) == 2
    assert "missing.csv" in capsys.readouterr().err


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_simulate_plot_writes_a_png(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plot.png"
    assert main(["simulate", str(trace), "-o", "json", "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"]
    assert str(plot) in captured.err
    data = plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 700)
    assert len(data) > 20_000


def test_simulate_plot_without_matplotlib_says_how_to_install_it(
    trace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    plot = tmp_path / "plot.png"
    assert main(["simulate", str(trace), "--plot", str(plot)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "agentpool simulate: --plot needs matplotlib: pip install 'agentpool[bench]'"
    )
    assert not plot.exists()


def test_the_cli_does_not_import_matplotlib() -> None:
    check = "import sys, agentpool.cli.main; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--sample-seconds", "0", "must be more than 0, got 0"),
    ("--sample-seconds", "nan", "must be a finite number, got nan"),
    ("--startup-seconds", "-1", "must be at least 0 and at most 86400, got -1"),
    ("--startup-seconds", "nan", "must be a finite number, got nan"),
    ("--startup-seconds", "inf", "must be a finite number, got inf"),
    ("--keda-grace-seconds", "-5", "must be at least 0 and at most 86400, got -5"),
    ("--poll-seconds", "nan", "must be a finite number, got nan"),
    ("--rate-limit-burst", "inf", "must be a finite number, got inf"),
    ("--rate-limit", "inf/min", "expected a rate such as 600/min or 10/s, got 'inf/min'"),
    ("--concurrency", "0", "must be at least 1 and at most 1000, got 0"),
])
def test_simulate_refuses_nonsensical_numbers(
    trace: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", str(trace), f"{option}={value}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"agentpool simulate: argument {option}: {expected} (see agentpool simulate --help)\n")


@pytest.mark.parametrize("first", ["1700000000", "1e12"])
def test_simulate_refuses_clock_times_as_arrivals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str,
) -> None:
    path = tmp_path / "clock.csv"
    path.write_text(f"arrival_seconds,service_seconds\n{first},5\n")
    assert main(["simulate", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"agentpool simulate: line 2: arrival {float(first):g} s is more than 30 days after "
        "the trace's start: arrival_seconds counts from the trace's start, not a clock "
        "(subtract the first arrival from every arrival)"]


def test_simulate_refuses_more_timeline_samples_than_it_keeps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "month.csv"
    path.write_text("0,5\n2500000,5\n")
    argv = ["simulate", str(path), "-o", "json", "--timeline", "--sample-seconds", "2"]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "agentpool simulate: --sample-seconds 2 samples this 2.5e+06 s trace more than "
        "200000 times: use at least 13"]


@pytest.mark.parametrize(("extra", "kept"), [
    ([], False), (["-o", "json"], False), (["--timeline"], False),
    (["-o", "json", "--timeline"], True),
])
def test_simulate_samples_a_timeline_only_when_asked(
    trace: Path, capsys: pytest.CaptureFixture[str], extra: list[str], kept: bool,
) -> None:
    captured: list[Cluster] = []
    real_compare = simulate_command.compare

    def spy(*args: Any) -> Comparison:
        captured.append(args[2])
        return real_compare(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulate_command, "compare", spy)
        assert main(["simulate", str(trace), *extra]) == 0
    [cluster] = captured
    assert cluster.timeline is kept
    if not kept:
        assert simulate(parse_trace(trace.open()), KedaAutoscaler(
            ScalingPolicy.from_spec(ScalingSpec(), 4), KedaSettings()), cluster).timeline == ()


def simulate_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = subparsers.choices["simulate"]
    return parser


def test_simulate_help_shows_every_default() -> None:
    parser = simulate_parser()
    options = [a for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert options
    help_text = " ".join(parser.format_help().split())
    for action in options:
        assert action.help and "default" in action.help, action.option_strings
        if action.default not in (None, False):
            assert f"(default {action.default})" in help_text, action.option_strings
    spec = ScalingSpec()
    for option, value in (("--max-replicas", spec.max_replicas),
                          ("--min-replicas", spec.min_replicas),
                          ("--scale-down-cooldown", spec.scale_down_cooldown_seconds)):
        assert parser.get_default(option.lstrip("-").replace("-", "_")) == value
        assert re.search(rf"{option} \S+ .*?\(default {value:g}\)", help_text), option


def test_simulate_help_says_what_a_trace_is_and_where_samples_are() -> None:
    help_text = " ".join(simulate_parser().format_help().split())
    assert "one task per row: arrival_seconds,service_seconds" in help_text
    assert "bench/traces/*.csv" in help_text
    samples = sorted(REPO.glob("bench/traces/*.csv"))
    assert samples
    for sample in samples:
        assert sample.stem in help_text
        assert parse_trace(sample.read_text().splitlines())


def _cli(*argv: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    code = "import sys; from agentpool.cli.main import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


def test_simulate_to_a_reader_that_left_exits_141_quietly(trace: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = _cli("simulate", str(trace), "-o", "json", "--timeline", stdout=write_end)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, "")


def test_simulate_stopped_by_ctrl_c_exits_130_without_a_traceback(
        trace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Comparison:
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_command, "compare", interrupted)
    assert main(["simulate", str(trace)]) == 130
    assert capsys.readouterr().err == ""


def test_a_poll_below_a_second_polls_once_a_second_as_the_operator_does() -> None:
    scaler = OurAutoscaler(ScalingPolicy(poll_seconds=0.5))
    assert scaler.next_tick(0.0) == 1.0
    assert scaler.next_tick(1.0) == 2.0
