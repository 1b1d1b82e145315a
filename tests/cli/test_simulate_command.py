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
from agentpool.cli import simulate_plot
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
    ([], False), (["-o", "json"], False), (["-o", "json", "--timeline"], True),
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


STOP_LINE = (
    "stopped 6 h after the last arrival with tasks unfinished (of 2): 2 under agentpool, "
    "2 under KEDA defaults; an unfinished task's wait counts up to the stop, so these runs' "
    "waits are lower bounds")
TIMEOUT_LINE = (
    "1 of 2 tasks run longer than taskTimeoutSeconds (600 s): a pool would stop them as "
    "failed attempts, the simulation lets them run (--task-timeout-seconds sets the pool's)")


@pytest.fixture
def endless(tmp_path: Path) -> Path:
    """On one slot, a task that outlasts the simulation, and one queued behind it all along."""
    path = tmp_path / "endless.csv"
    path.write_text("arrival_seconds,service_seconds\n0,99999999\n1,5\n")
    return path


ONE_SLOT = ["--max-replicas", "1", "--concurrency", "1"]


def test_simulate_says_in_a_line_of_its_own_that_it_stopped_with_tasks_unfinished(
    endless: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(endless), *ONE_SLOT]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[-2:] == [STOP_LINE, TIMEOUT_LINE]
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in lines if line.count("│") == 4}
    assert rows["tasks done"] == ["0", "0"]
    assert rows["throughput (tasks/min)"] == ["-", "-"]
    assert rows["tasks unfinished"] == ["2", "2"]
    assert rows["max wait (s)"] == [">= 21600.0", ">= 21600.0"]
    assert rows["p50 wait (s)"] == [">= 10800.0", ">= 10800.0"]
    assert captured.err == ""


def test_simulate_json_says_it_stopped_with_tasks_unfinished(
    endless: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(endless), *ONE_SLOT, "-o", "json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    for result in document["results"]:
        assert (result["tasks"], result["unfinished"], result["tasks_per_minute"]) == (0, 2, None)
        assert (result["max_wait_s"], result["waits_lower_bound"]) == (21600.0, True)
    assert document["stop_after_last_arrival_s"] == 21600
    assert document["warnings"] == [STOP_LINE, TIMEOUT_LINE]
    assert captured.err.splitlines() == [
        f"agentpool simulate: {STOP_LINE}", f"agentpool simulate: {TIMEOUT_LINE}"]


def test_a_finished_run_has_exact_waits_and_no_warning(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(trace), "-o", "json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [result["waits_lower_bound"] for result in document["results"]] == [False, False]
    assert (document["warnings"], document["tasks_over_task_timeout"]) == ([], 0)
    assert captured.err == ""
    assert main(["simulate", str(trace)]) == 0
    assert ">=" not in capsys.readouterr().out


@pytest.mark.parametrize(("timeout", "over"), [(None, 2), ("899", 1), ("900", 0)])
def test_simulate_counts_the_runs_a_pool_would_stop_at_its_task_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str | None, over: int,
) -> None:
    path = tmp_path / "long.csv"
    path.write_text("0,30\n1,600\n2,601\n3,900\n")
    extra = [] if timeout is None else ["--task-timeout-seconds", timeout]
    assert main(["simulate", str(path), "-o", "json", *extra]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert (document["task_timeout_seconds"], document["tasks_over_task_timeout"]) == (
        int(timeout or 600), over)
    expected = [] if not over else [
        f"{over} of 4 tasks run longer than taskTimeoutSeconds ({timeout or 600} s): a pool "
        "would stop them as failed attempts, the simulation lets them run "
        "(--task-timeout-seconds sets the pool's)"]
    assert document["warnings"] == expected
    assert captured.err.splitlines() == [f"agentpool simulate: {line}" for line in expected]


@pytest.mark.parametrize(("extra", "error"), [
    (["--rate-limit-burst", "5"], "--rate-limit-burst needs --rate-limit (the burst of which "
     "limit?)"),
    (["--timeline"], "--timeline adds the sampled series to the JSON: add -o json (--plot "
     "draws them)"),
    (["--timeline", "-o", "table"], "--timeline adds the sampled series to the JSON: add -o "
     "json (--plot draws them)"),
])
def test_simulate_refuses_options_it_would_ignore(
    trace: Path, capsys: pytest.CaptureFixture[str], extra: list[str], error: str,
) -> None:
    assert main(["simulate", str(trace), *extra]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"agentpool simulate: {error}\n")


def test_simulate_reads_the_columns_by_the_header_s_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Swapped columns: read by position, each task would arrive after 600 s and run 1 s."""
    path = tmp_path / "swapped.csv"
    path.write_text("\ufeffservice_seconds,arrival_seconds\n600,0\n600,1\n")
    assert main(["simulate", str(path), "-o", "json", "--task-timeout-seconds", "599"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["tasks_over_task_timeout"] == 2
    path.write_text("service,arrival\n600,0\n600,1\n")
    assert main(["simulate", str(path), "-o", "json", "--task-timeout-seconds", "599"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["tasks_over_task_timeout"] == 2
    assert [line.startswith("2 of 2 tasks run longer") for line in document["warnings"]] == [
        True]
    assert captured.err.splitlines() == [
        f"agentpool simulate: {line}" for line in document["warnings"]]


BY_POSITION = ("line 1: the header names the columns 'start', 'duration': took 'start', "
               "'duration' as arrival_seconds, service_seconds by position; name them "
               "arrival_seconds,service_seconds (in either order) to say which is which")


def test_simulate_reads_a_header_of_other_names_by_position_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "named.csv"
    path.write_text("start,duration\n0,600\n1,30\n")
    assert main(["simulate", str(path), "-o", "json", "--task-timeout-seconds", "599"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["tasks_over_task_timeout"] == 1
    assert document["warnings"][0] == BY_POSITION
    assert document["warnings"][1].startswith("1 of 2 tasks run longer")
    assert captured.err.splitlines() == [
        f"agentpool simulate: {line}" for line in document["warnings"]]
    assert main(["simulate", str(path)]) == 0
    assert BY_POSITION in " ".join(capsys.readouterr().out.split())


def test_simulate_names_the_columns_of_a_bad_data_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("service_seconds,arrival_seconds\n30,0\n30,soon\n")
    assert main(["simulate", str(path)]) == 2
    assert capsys.readouterr().err == (
        "agentpool simulate: line 3: expected service_seconds,arrival_seconds (two numbers of "
        "seconds): '30,soon'\n")


def test_simulate_refuses_a_trace_that_is_not_utf8_in_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("# a trace\n# caf\u00e9\narrival_seconds,service_seconds\n1,2\n".encode(
        "latin-1"))
    assert main(["simulate", str(path)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", (
        f"agentpool simulate: {path}: line 2 is not UTF-8 text (byte 0xe9): "
        "save the trace as UTF-8\n"))


def test_the_plot_title_marks_a_lower_bound(endless: Path) -> None:
    policy = ScalingPolicy(min_replicas=1, max_replicas=1)
    cluster = Cluster(concurrency=1, startup_seconds=0.0, give_up_after_seconds=100.0)
    trace = parse_trace(endless.read_text().splitlines())
    result = Comparison(simulate(trace, OurAutoscaler(policy), cluster),
                        simulate(trace, KedaAutoscaler(policy, KedaSettings()), cluster))
    assert simulate_plot._p95_line(result.runs) == "agentpool \u2265 95 s, KEDA \u2265 95 s"


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
    assert "A run stops 6 h after the last arrival even with tasks unfinished" in help_text
    assert "The exit status is still 0" in help_text
    assert "--task-timeout-seconds SECONDS the pool's taskTimeoutSeconds" in help_text
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
