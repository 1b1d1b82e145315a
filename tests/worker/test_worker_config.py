"""Configuration is checked at start: one readable line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from worker_helpers import HANDLERS, HERE, WorkerProcess, eventually, task_in, worker_env

from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool_worker.handlers import HandlerError, load_handler
from agentpool_worker.main import main
from agentpool_worker.settings import redact_url, variables


def run_worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentpool_worker.main", *args], env=env, capture_output=True,
        text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def console_script(tmp_path: Path) -> list[str]:
    """`agentpool-worker` as its console script starts it: the script's own directory first on
    sys.path, not the current directory (`python -m` and `python -c` put that first)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "agentpool-worker"
    script.write_text("import sys\nfrom agentpool_worker.main import main\nsys.exit(main())\n")
    return [sys.executable, str(script)]


def run_main(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """main() in this process: the same checks, without a process start per case."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the current directory in
    with pytest.raises(SystemExit) as exit_info:
        main([])
    code = exit_info.value.code
    return (code if isinstance(code, int) else -1), capsys.readouterr().err


def base_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env["PYTHONPATH"] = str(HERE)
    env.update({
        "AGENTPOOL_REDIS_URL": "redis://127.0.0.1:1/0",
        "AGENTPOOL_HANDLER": "agentpool_worker.builtin:noop",
        # not the default 8080, where a demo or a console of the same machine may serve
        "AGENTPOOL_PORT": str(free_port()),
    })
    env.update({f"AGENTPOOL_{k.upper()}": v for k, v in values.items()})
    return env


@pytest.mark.parametrize(("env", "line"), [
    ({"concurrency": "abc"},
     "agentpool-worker: AGENTPOOL_CONCURRENCY must be an integer between 1 and 1000, got 'abc'"),
    ({"concurrency": "0"},
     "agentpool-worker: AGENTPOOL_CONCURRENCY must be an integer between 1 and 1000, got '0'"),
    ({"task_timeout_seconds": "-5"},
     "agentpool-worker: AGENTPOOL_TASK_TIMEOUT_SECONDS must be a number of seconds above 0 "
     "(at most a week), got '-5'"),
    ({"claim_linger_seconds": "1"},
     "agentpool-worker: AGENTPOOL_CLAIM_LINGER_SECONDS must be a number of seconds between 0 "
     "and 0.1, got '1'"),
    ({"log_level": "loud"},
     "agentpool-worker: AGENTPOOL_LOG_LEVEL must be one of debug, info, warning, error, "
     "critical, got 'loud'"),
    ({"queue": "no spaces"},
     "agentpool-worker: AGENTPOOL_QUEUE must be a queue name of 1-100 letters, digits, "
     "'.', '_' or '-', got 'no spaces'"),
    ({"durability": "sync"},
     "agentpool-worker: AGENTPOOL_DURABILITY must be one of none, replicated (completions wait "
     "for a replica), got 'sync'"),
    ({"redis_url": "rediss+cluster://n1/?ssl_cert_reqs=always"},
     "agentpool-worker: AGENTPOOL_REDIS_URL: ssl_cert_reqs is none, optional or required"),
    ({"redis_url": "redis+sentinel://:pw@s1/svc?ssl_ca_certs=/etc/ca.crt"},
     "agentpool-worker: AGENTPOOL_REDIS_URL: TLS options (ssl_ca_certs) need a TLS URL "
     "(rediss+sentinel:// or rediss+cluster://)"),
    ({"redis_url": "redis+cluster://n1/3"},
     "agentpool-worker: AGENTPOOL_REDIS_URL: a Redis Cluster has only database 0: end the URL "
     "in / or /0"),
    ({"handler": "nocolon"},
     "agentpool-worker: AGENTPOOL_HANDLER must be a handler named as package.module:function, "
     "got 'nocolon'"),
    ({"handler": "no_such_module_xyz:run"},
     "agentpool-worker: cannot import handler 'no_such_module_xyz:run': "
     "ModuleNotFoundError: No module named 'no_such_module_xyz' (searched: PYTHONPATH, the "
     f"installed packages and the current directory {os.getcwd()})"),
    ({"handler": "agentpool_worker.command:run", "task_command": '["unterminated'},
     "agentpool-worker: AGENTPOOL_TASK_COMMAND is not a JSON array: Unterminated string "
     "starting at: line 1 column 2 (char 1)"),
    ({"handler": "agentpool_worker.command:run", "task_command": "no-such-agent-xyz --fast"},
     "agentpool-worker: AGENTPOOL_TASK_COMMAND: 'no-such-agent-xyz' is not an executable "
     "found on PATH"),
    ({"handler": "agentpool_worker.command:run"},
     "agentpool-worker: AGENTPOOL_TASK_COMMAND must name the command each task runs, "
     'e.g. ["node", "/app/agent.js"] (handler agentpool_worker.command:run)'),
    ({"handler": f"{HANDLERS}:missing"},
     f"agentpool-worker: cannot import handler '{HANDLERS}:missing': module "
     f"'{HANDLERS}' has no 'missing'"),
])
def test_bad_configuration_is_one_line_and_exit_2(
    env: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, stderr = run_main(base_env(**env), monkeypatch, capsys)
    assert code == 2
    assert stderr == line + "\n"


def test_a_worker_process_with_bad_configuration_prints_no_traceback() -> None:
    result = run_worker(base_env(concurrency="abc", handler="no_such_module_xyz:run"))
    assert result.returncode == 2
    assert result.stderr == (
        "agentpool-worker: AGENTPOOL_CONCURRENCY must be an integer between 1 and 1000, "
        "got 'abc'\n"
    )


def test_missing_redis_url_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    env = base_env()
    del env["AGENTPOOL_REDIS_URL"]
    code, stderr = run_main(env, monkeypatch, capsys)
    assert code == 2
    assert stderr.splitlines() == [
        "agentpool-worker: AGENTPOOL_REDIS_URL is required "
        "(a redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster://, "
        "rediss+cluster:// or unix:// URL)"
    ]


def test_a_password_in_a_bad_url_is_not_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    code, stderr = run_main(
        base_env(redis_url="http://user:s3cret@redis:6379/0"), monkeypatch, capsys)
    assert code == 2
    assert "s3cret" not in stderr
    assert "http://user:***@redis:6379/0" in stderr


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://:12#S3cr3t@127.0.0.1:6379/0", "must be percent-encoded"),
    ("redis://default:1234/S3cr3t@127.0.0.1:6379/0", "must be percent-encoded"),
    ("redis://:12?S3cr3t@127.0.0.1:6379/0", "must be percent-encoded"),
    ("redis://:S3cr3t@127.0.0.1:6379/0?foo=bar", "option 'foo' that Redis connections"),
    ("redis://:S3cr3t@127.0.0.1:6379/0?db=abc", "must be percent-encoded"),
])
def test_a_url_redis_py_would_misread_stops_the_worker_at_start(
    url: str, problem: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A password with '#', '?' or '/' as is reads as host, port and path (the client would
    go to localhost:12); an option redis-py does not take fails the first connection."""
    code, stderr = run_main(base_env(redis_url=url), monkeypatch, capsys)
    assert code == 2
    assert len(stderr.splitlines()) == 1 and problem in stderr
    assert "S3cr3t" not in stderr


@pytest.mark.parametrize("url", [
    "redis://:12#S3cr3t@h:6379/0",
    "redis://default:1234/S3cr3t@h:6379/0",
    "redis://:12?S3cr3t@h:6379/0",
    "redis+sentinel://:12#S3cr3t@s1:26379,s2:26379/mymaster",
    "redis://:a@b?S3cr3t@h/0?password=S3cr3t",
])
def test_a_password_written_without_percent_encoding_is_masked_too(url: str) -> None:
    shown = redact_url(url)
    assert "S3cr3t" not in shown
    assert shown.startswith(url.partition("://")[0] + "://***@")


def test_redact_url() -> None:
    assert redact_url("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact_url("rediss://u:pw@h/0") == "rediss://u:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


async def test_a_password_never_reaches_the_logs(tmp_path: Path, redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://:s3cret@")
    proc = WorkerProcess(worker_env(url, "q-secret"), tmp_path / "worker.log")
    try:
        await eventually(lambda: "worker started" in proc.logs(), 15, "the start log line")
        assert "s3cret" not in proc.logs()
        assert '"redis": "redis://***@127.0.0.1' in proc.logs()
    finally:
        proc.close()


def test_a_probe_port_in_use_is_one_line_and_exit_2() -> None:
    """The default 8080 is also where `agentpool demo` and the console serve."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_worker(base_env(port=str(port)))
    assert result.returncode == 2
    assert result.stderr == (
        f"agentpool-worker: AGENTPOOL_PORT {port} is in use (set another port, or 0 to run "
        "without the /livez, /readyz and /metrics server)\n")


CRASHING = """\
import agentpool_worker.main as entrypoint

async def run(self, **options):
    raise RuntimeError("a bug")

entrypoint.Worker.run = run
entrypoint.main([])
"""


def test_an_unexpected_crash_is_one_log_line_and_exit_1() -> None:
    result = subprocess.run([sys.executable, "-c", CRASHING], env=base_env(port="0"),
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["msg"] == "worker crashed" and line["level"] == "error"
    assert line["error"] == "RuntimeError: a bug"


async def test_help_lists_the_settings_and_starts_no_worker(redis_url: str) -> None:
    """A reachable Redis and a handler: without its own handling, --help would start a worker
    that claims tasks (and this call would time out)."""
    result = run_worker(base_env(redis_url=redis_url), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("usage: agentpool-worker [-h]\n")
    names = [line.split()[0] for line in result.stdout.splitlines()
             if line.startswith("  AGENTPOOL_")]
    assert names == [variable.name for variable in variables()]
    assert "AGENTPOOL_TASK_COMMAND" in names and "AGENTPOOL_REDIS_URL" in names
    assert "  AGENTPOOL_CONCURRENCY (default: 4)\n      an integer between 1 and 1000\n" \
        in result.stdout
    assert "  AGENTPOOL_HANDLER (required)\n" in result.stdout


@pytest.mark.parametrize(("args", "got"), [
    (["--concurrency", "2"], "'--concurrency 2'"),
    (["worker"], "'worker'"),
])
def test_an_argument_is_one_line_and_exit_2(args: list[str], got: str) -> None:
    result = run_worker(base_env(), *args)
    assert result.returncode == 2
    assert result.stderr == (
        f"agentpool-worker takes no arguments (got {got}): configure it with AGENTPOOL_* "
        "environment variables (see --help)\n")


async def test_a_handler_module_in_the_current_directory_is_found(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, queue_name: str,
) -> None:
    """As `cd examples && AGENTPOOL_HANDLER=llm_agent:run agentpool-worker` runs the example."""
    here = tmp_path / "project"
    here.mkdir()
    (here / "my_local_agent.py").write_text(textwrap.dedent("""\
        async def run(payload):
            return {"answer": payload["question"] * 2}
    """))
    env = base_env(redis_url=redis_url, queue=queue_name, handler="my_local_agent:run",
                   port="0")
    del env["PYTHONPATH"]
    queue = TaskQueue(redis, queue_name)
    proc = WorkerProcess(env, tmp_path / "worker.log", command=console_script(tmp_path),
                         cwd=here)
    try:
        task_id = await queue.submit({"question": 21})
        done = await eventually(
            lambda: not proc.alive() or task_in(queue, task_id, "succeeded"), 15, "the task")
        assert proc.alive(), proc.logs()
        assert done.result == {"answer": 42}
        proc.signal(signal.SIGTERM)
        assert await proc.exit_code(15) == 0
    finally:
        proc.close()


def test_a_handler_module_not_found_says_where_it_was_looked_for(tmp_path: Path) -> None:
    env = base_env(handler="llm_agent:run")
    del env["PYTHONPATH"]
    result = subprocess.run(console_script(tmp_path), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr == (
        "agentpool-worker: cannot import handler 'llm_agent:run': ModuleNotFoundError: No "
        "module named 'llm_agent' (searched: PYTHONPATH (not set), the installed packages "
        f"and the current directory {tmp_path.resolve()})\n")


def test_a_module_in_the_working_directory_shadows_nothing_the_worker_imports(
    tmp_path: Path,
) -> None:
    """A task program may write into a working directory that outlives a restart: a module
    planted there under the name of one the worker imports (ctypes, json) must not run in the
    worker, which holds the Redis password. The directory is searched only for a handler
    module found nowhere else, and last."""
    planted = "import os, sys; sys.stderr.write('PLANTED ' + os.environ['AGENTPOOL_REDIS_URL'])\n"
    for name in ("ctypes", "json", "structlog", "agentpool_worker"):
        (tmp_path / f"{name}.py").write_text(planted)
    env = base_env(handler="agentpool_worker.command:run", task_command='["cat"]')
    env["AGENTPOOL_REDIS_URL"] = "redis://:secret-password@127.0.0.1:1/0"
    del env["PYTHONPATH"]
    proc = subprocess.Popen(console_script(tmp_path), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "PLANTED" not in err and "secret-password" not in err, err


async def test_what_exists_at_start_is_left_out_of_garbage_collection(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis,
) -> None:
    """Modules and the handler live as long as the process: a worker process freezes them, so
    a full collection under load walks only what came later (docs/worker.md, Probes and states)."""
    queue = TaskQueue(redis, "q-gc")
    proc = WorkerProcess(worker_env(redis_url, "q-gc", f"{HANDLERS}:collector"),
                         tmp_path / "worker.log")
    try:
        task_id = await queue.submit({})
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 15, "the task")
    finally:
        proc.close()
    assert done.result["frozen"] > 2 * done.result["watched"] > 0


@pytest.mark.parametrize(("module", "reason"), [
    ("handler_exits_at_import", "module 'handler_exits_at_import' called sys.exit(3) while "
     "being imported"),
    ("handler_interrupted_at_import", "KeyboardInterrupt"),
])
def test_a_handler_module_that_stops_its_import_is_one_line_and_exit_2(
    module: str, reason: str,
) -> None:
    result = run_worker(base_env(handler=f"{module}:run"))
    assert result.returncode == 2
    assert result.stderr == f"agentpool-worker: cannot import handler '{module}:run': {reason}\n"


def test_a_handler_with_a_required_keyword_only_argument_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`def run(payload, *, ctx)` would start, then fail every task: no call gives it ctx."""
    (tmp_path / "kwonly_handlers.py").write_text(
        "def run(payload, *, ctx):\n    return payload\n"
        "def fine(payload, *, ctx=None):\n    return payload\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerError, match="required keyword-only argument 'ctx'"):
        load_handler("kwonly_handlers:run")
    assert not load_handler("kwonly_handlers:fine").wants_context
