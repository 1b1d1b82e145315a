"""The demo's runner in-process: an external Redis, and a worker that cannot start."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from rich.console import Console

from agentpool.cli.demo.runner import (
    DemoConfig,
    DemoError,
    DemoOutcome,
    counted,
    handed_back,
    run_demo,
    task_payloads,
)
from agentpool.cli.demo.view import PlainReporter, try_commands
from agentpool.cli.main import main
from agentpool.redis_server import RedisServer, free_port

AGENTPOOL = [sys.executable, "-c", "import sys; from agentpool.cli.main import main; "
             "sys.exit(main())"]


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
     "its query names an option 'foo' that Redis connections do not take"),
    ("redis://127.0.0.1:{protected}/0?pasword=s3cret", 2,
     "agentpool demo failed: invalid Redis URL redis://127.0.0.1:{protected}/0?pasword=***: "
     "its query names an option 'pasword' that Redis connections do not take"),
    ("http://user:s3cret@127.0.0.1:{free}/0", 2,
     "agentpool demo failed: invalid Redis URL http://user:***@127.0.0.1:{free}/0: "
     "a Redis URL starts with redis://"),
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


@pytest.mark.parametrize("url", ["http://x", "localhost:6379"])
def test_a_url_that_is_no_redis_url_is_said_so_as_stats_says_it(
    capsys: pytest.CaptureFixture[str], private_tmp: Path, url: str,
) -> None:
    code, err = demo(capsys, "--redis-url", url)
    assert code == 2
    assert err == (f"agentpool demo failed: invalid Redis URL {url}: a Redis URL starts with "
                   "redis://, rediss://, redis+sentinel://, rediss+sentinel://, "
                   "redis+cluster://, rediss+cluster:// or unix://\n")
    capsys.readouterr()
    assert main(["stats", "--redis-url", url, "-q", "demo"]) == 2
    stats_err = capsys.readouterr().err
    assert stats_err.partition("invalid Redis URL")[2] == err.partition("invalid Redis URL")[2]
    assert list(private_tmp.iterdir()) == []


def test_what_the_killed_worker_held_on_its_last_attempt_is_not_said_to_resume(
    private_tmp: Path,
) -> None:
    """One attempt per task: what the kill interrupts is dead-lettered, not requeued, so no
    checkpoint of it will be resumed and no console link points at it."""
    pytest.importorskip("agentpool_worker.main", reason="needs the agentpool-worker entrypoint")
    config = DemoConfig(tasks=24, workers=2, concurrency=4, mean_seconds=0.6, fail_rate=0.0,
                        steps=6, max_attempts=1, console=True)
    view, out = reporter()
    outcome = run_demo(config, view)
    events = out.getvalue()
    held = re.search(r"kill -9 demo-worker-\d \(pid \d+\) while it runs (\d+) tasks?\n", events)
    assert held, events
    count = int(held[1])
    assert held[0].endswith(f" {counted(count, 'task')}\n")
    assert count >= 1
    assert f"requeued 0 of its tasks (requeue_pod, the operator's recovery path); {count} " \
        "dead-lettered (attempts used up)" in events
    assert "resume from a checkpoint" not in events and "watch it resume" not in events
    summary = outcome.summary
    assert (summary.requeued_after_kill, summary.dead_lettered_after_kill) == (0, count)
    assert summary.dead_lettered == count and summary.succeeded == 24 - count
    assert summary.ok
    assert outcome.example_note == "the first task submitted"


def test_handed_back_are_the_held_tasks_requeue_pod_did_not_end() -> None:
    before = {"a": 1, "b": 5, "c": 2, "d": 1, "e": 3}
    after = {"a": ("queued", 1), "b": ("dead", 5), "c": ("succeeded", 3),
             "d": ("cancelled", 1), "e": ("running", 4)}
    assert handed_back(before, after) == {"a", "c", "e"}
    assert handed_back({"gone": 1}, {}) == set()
    assert [counted(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]


def run_line(line: str, url: str) -> subprocess.CompletedProcess[str]:
    """A line of try_commands as a shell runs it, with AGENTPOOL_REDIS_URL set."""
    argv = shlex.split(line, comments=True)
    assert argv[0] == "agentpool"
    return subprocess.run([*AGENTPOOL, *argv[1:]], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AGENTPOOL_REDIS_URL": url})


def test_keep_on_a_redis_with_a_password_prints_working_commands_without_it(
    protected_redis: RedisServer, private_tmp: Path,
) -> None:
    """With --keep, everything runs on while `finished` runs (the printed commands work
    then), until a stopping signal; then the queue's keys go as without --keep."""
    pytest.importorskip("agentpool_worker.main", reason="needs the agentpool-worker entrypoint")
    url = protected_redis.url
    config = DemoConfig(tasks=20, workers=2, mean_seconds=0.1, fail_rate=0.0, redis_url=url,
                        keep=True)
    view, _ = reporter()
    checked: list[str] = []

    def finished(outcome: DemoOutcome) -> None:
        lines = try_commands(outcome.url, outcome.queue, task=outcome.example_task,
                             console_url=outcome.console_url)
        for line in lines:
            assert protected_redis.password not in line and "--redis-url" not in line
            if line.startswith("agentpool console "):
                port = str(free_port())
                argv = [*AGENTPOOL, *shlex.split(line, comments=True)[1:], "--port", port]
                with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "AGENTPOOL_REDIS_URL": url}) as console:
                    assert console.stdout is not None
                    assert console.stdout.readline().startswith(
                        f"agentpool console: http://127.0.0.1:{port}/")
                    console.terminate()
            else:
                done = run_line(line, url)
                assert done.returncode == 0, (line, done.stdout, done.stderr)
            checked.append(shlex.split(line, comments=True)[1])
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the demo stops and cleans up

    outcome = run_demo(config, view, finished)
    assert checked == ["status", "workers", "tasks", "dead", "get", "submit", "console"]
    assert outcome.summary.ok
    client = redis.Redis.from_url(url)
    try:
        assert client.keys(f"ap:{{{config.queue}}}:*") == []
    finally:
        client.close()
    assert list(private_tmp.iterdir()) == []
