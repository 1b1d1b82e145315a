"""The demo's runner in-process: an external Redis, and a worker that cannot start."""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from rich.console import Console

from agentpool.cli.demo.runner import DemoConfig, DemoError, run_demo, task_payloads
from agentpool.cli.demo.view import PlainReporter
from agentpool.cli.main import main
from agentpool.redis_server import RedisServer, free_port


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def reporter() -> tuple[PlainReporter, io.StringIO]:
    out = io.StringIO()
    return PlainReporter(Console(file=out, width=200), "test"), out


def test_payloads_follow_the_options() -> None:
    config = DemoConfig(tasks=3, mean_seconds=0.5, fail_rate=0.1, seed=7)
    assert task_payloads(config) == [
        {"mean_seconds": 0.5, "fail_rate": 0.1, "steps": 5, "seed": 7},
        {"mean_seconds": 0.5, "fail_rate": 0.1, "steps": 5, "seed": 8},
        {"mean_seconds": 0.5, "fail_rate": 0.1, "steps": 5, "seed": 9},
    ]
    assert "seed" not in task_payloads(DemoConfig(tasks=1))[0]
    assert "steps" not in task_payloads(DemoConfig(tasks=1, steps=0))[0]


def test_external_redis_is_used_and_left_clean(redis_url: str, private_tmp: Path) -> None:
    pytest.importorskip("agentpool_worker.main", reason="needs the agentpool-worker entrypoint")
    config = DemoConfig(tasks=40, workers=2, mean_seconds=0.05, fail_rate=0.0,
                        redis_url=redis_url)
    view, out = reporter()
    outcome = run_demo(config, view)
    assert outcome.summary.ok, out.getvalue()
    assert outcome.summary.succeeded == 40
    assert "started redis-server" not in out.getvalue()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"ap:{{{config.queue}}}:*") == []
    finally:
        client.close()
    assert list(private_tmp.iterdir()) == []


def test_a_worker_that_cannot_start_fails_the_demo_cleanly(private_tmp: Path) -> None:
    script = private_tmp.parent / "broken_worker.py"
    script.write_text("import sys\nprint('cannot start: bad configuration')\nsys.exit(2)\n")
    config = DemoConfig(tasks=5, workers=2, worker_command=[sys.executable, str(script)])
    view, _ = reporter()
    with pytest.raises(DemoError, match="exited with code 2") as caught:
        run_demo(config, view)
    assert "cannot start: bad configuration" in str(caught.value)
    assert list(private_tmp.iterdir()) == []


def demo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["demo", "--no-console", "--no-live", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("url", "code", "expected"), [
    ("redis://:wrong-pw@127.0.0.1:{protected}/0", 1,
     "agentpool demo failed: Redis at redis://:***@127.0.0.1:{protected}/0 refused the "
     "password"),
    ("redis://:s3cret@127.0.0.1:{free}/0", 1,
     "agentpool demo failed: cannot reach Redis at redis://:***@127.0.0.1:{free}/0: "
     "Connection refused"),
    ("redis://:s3cret@127.0.0.1:{protected}/0?foo=1", 2,
     "agentpool demo failed: invalid Redis URL redis://:***@127.0.0.1:{protected}/0?foo=***: "
     "unknown option 'foo'"),
    ("redis://127.0.0.1:{protected}/0?pasword=s3cret", 2,
     "agentpool demo failed: invalid Redis URL redis://127.0.0.1:{protected}/0?pasword=***: "
     "unknown option 'pasword'"),
    ("http://user:s3cret@127.0.0.1:{free}/0", 2,
     "agentpool demo failed: invalid Redis URL http://user:***@127.0.0.1:{free}/0"),
])
def test_an_unusable_redis_url_is_one_line_and_nothing_starts(
    capsys: pytest.CaptureFixture[str], protected_redis: RedisServer, private_tmp: Path,
    url: str, code: int, expected: str,
) -> None:
    ports = {"protected": protected_redis.port, "free": free_port()}
    got, err = demo(capsys, "--redis-url", url.format(**ports))
    lines = [line for line in err.splitlines() if line.startswith("agentpool demo failed")]
    assert got == code
    assert len(lines) == 1 and lines[0].startswith(expected.format(**ports)), err
    assert "Traceback" not in err and "s3cret" not in err and "wrong-pw" not in err
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("option", ["--mean-seconds", "--fail-rate"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_number_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], option: str, value: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", f"{option}={value}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"agentpool demo: argument {option}: must be a finite number, got {value} "
        "(see agentpool demo --help)\n")
