"""The worker's settings table: every kind of rule accepts what it should and refuses the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agentpool.durability import Durability
from agentpool_worker.settings import (
    DEFAULT_LEASE_SECONDS,
    ConfigError,
    WorkerSettings,
    load_settings,
    task_argv,
    variables,
)

REQUIRED = {"AGENTPOOL_REDIS_URL": "redis://r:6379/0", "AGENTPOOL_HANDLER": "m:f"}


def settings_from(**variables: str) -> object:
    return load_settings({**REQUIRED, **{f"AGENTPOOL_{k.upper()}": v
                                         for k, v in variables.items()}})


def test_defaults() -> None:
    settings = load_settings(REQUIRED)
    assert (settings.queue, settings.concurrency, settings.port, settings.log_level,
            settings.durability, settings.lease_seconds, settings.rate_limits,
            settings.limits) == ("default", 4, 8080, "info", Durability.NONE,
                                 DEFAULT_LEASE_SECONDS, "", {})
    assert settings.pod_name


@pytest.mark.parametrize(("name", "text", "value"), [
    ("concurrency", " 8 ", 8),
    ("concurrency", "1000", 1000),
    ("port", "0", 0),
    ("task_timeout_seconds", "604800", 604800.0),
    ("drain_seconds", "0", 0.0),
    ("lease_seconds", "0.3", 0.3),
    ("poll_seconds", "1e-3", 0.001),
    ("log_level", " WARNING ", "warning"),
    ("max_result_bytes", "1024", 1024),
    ("durability", "Replicated", Durability.REPLICATED),
    ("pod_name", "pool-7d9f-abcde", "pool-7d9f-abcde"),
    ("queue", "jobs.v2_x-y", "jobs.v2_x-y"),
    ("submits_to", " coder, review.v2 ", " coder, review.v2 "),
    ("redis_url", "rediss+sentinel://s:26379/mymaster", "rediss+sentinel://s:26379/mymaster"),
])
def test_accepted(name: str, text: str, value: object) -> None:
    assert getattr(settings_from(**{name: text}), name) == value


@pytest.mark.parametrize(("name", "text"), [
    ("concurrency", "1001"),
    ("concurrency", "2.5"),
    ("concurrency", ""),
    ("port", "-1"),
    ("port", "65536"),
    ("task_timeout_seconds", "0"),
    ("task_timeout_seconds", "inf"),
    ("drain_seconds", "nan"),
    ("lease_seconds", "0.29"),
    ("poll_seconds", "60.5"),
    ("result_ttl_seconds", "0"),
    ("max_result_bytes", "1023"),
    ("max_result_bytes", "1MiB"),
    ("pod_name", "pod:1"),
    ("pod_name", "pod 1"),
    ("pod_name", ""),
    ("queue", "-starts-with-dash"),
    ("handler", "module:not-an-identifier"),
    ("handler", ":f"),
    ("redis_url", "http://r:6379"),
    ("submits_to", "coder,a b"),
    ("submits_to", "coder;review"),
])
def test_refused_with_the_variable_and_the_value(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(**{name: text})
    assert str(caught.value).startswith(f"AGENTPOOL_{name.upper()} must be ")
    assert str(caught.value).endswith(f", got {text!r}")


@pytest.mark.parametrize(("text", "reason"), [
    ("[1]", "rate limits must be a JSON list of objects"),
    ('[{"name": "llm", "maxConcurrent": 0}]',
     "rate limit 'llm': rates and maxConcurrent must be at least 1"),
])
def test_refused_rate_limits_say_why(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(rate_limits=text)
    assert str(caught.value) == (
        "AGENTPOOL_RATE_LIMITS must be a JSON list of rate limits ({name, requestsPerMinute, "
        "tokensPerMinute, burstSeconds, maxConcurrent}), as the operator sets it from "
        f"spec.rateLimits: {reason}")


def test_the_other_queues_are_those_listed_besides_the_pools_own() -> None:
    settings = load_settings({**REQUIRED, "AGENTPOOL_QUEUE": "planner",
                              "AGENTPOOL_SUBMITS_TO": "coder, planner,review,coder,"})
    assert settings.other_queues == ("coder", "review")
    assert load_settings(REQUIRED).other_queues == ()


def test_every_problem_is_named_on_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(concurrency="0", port="x")
    assert str(caught.value) == (
        "AGENTPOOL_CONCURRENCY must be an integer between 1 and 1000, got '0'; "
        "AGENTPOOL_PORT must be a TCP port between 1 and 65535 (0 turns the HTTP server off), "
        "got 'x'")


def test_names_in_any_case_and_overrides_win() -> None:
    settings = load_settings({**REQUIRED, "agentpool_concurrency": "9",
                              "AGENTPOOL_QUEUE": "from-env"}, queue="from-call")
    assert (settings.concurrency, settings.queue) == (9, "from-call")


def test_typed_values_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="AGENTPOOL_CONCURRENCY must be"):
        load_settings(REQUIRED, concurrency=True)
    assert load_settings(REQUIRED, concurrency=4.0, lease_seconds=2).concurrency == 4


@pytest.mark.parametrize(("lease", "timeout"), [(7.0, 5.0), (0.3, 5.0), (30.0, 1.0), (3600, 300)])
def test_liveness_outlasts_the_longest_heartbeat_attempt(lease: float, timeout: float) -> None:
    """Between two attempts that end: a heartbeat interval, then a call to a frozen Redis and
    its one retry on a new connection, each cut at the Redis timeout. /livez must not call
    that stuck (lease + one timeout fell a few hundred milliseconds short by default)."""
    s = WorkerSettings(redis_url="redis://h:6379/0", handler="m:f", lease_seconds=lease,
                       redis_timeout_seconds=timeout)
    assert s.heartbeat_stall_seconds > s.heartbeat_seconds + 2 * s.redis_timeout_seconds


COMMAND = {**REQUIRED, "AGENTPOOL_HANDLER": "agentpool_worker.command:run"}


@pytest.mark.parametrize(("text", "words"), [
    ('["python3", "-c", "print(1)"]', ("python3", "-c", "print(1)")),
    ("python3 -c 'print(1)'", ("python3", "-c", "print(1)")),
    ("  ", ()),
])
def test_the_task_command_is_a_json_array_or_words(text: str, words: tuple[str, ...]) -> None:
    assert task_argv(text) == words
    assert load_settings({**REQUIRED, "AGENTPOOL_TASK_COMMAND": text}).task_command == text


@pytest.mark.parametrize(("environ", "problem"), [
    ({**REQUIRED, "AGENTPOOL_TASK_COMMAND": '["node", '},
     "AGENTPOOL_TASK_COMMAND is not a JSON array: Expecting value: line 1 column 9 (char 8)"),
    ({**REQUIRED, "AGENTPOOL_TASK_COMMAND": "node 'agent.js"},
     "AGENTPOOL_TASK_COMMAND cannot be split into words: No closing quotation"),
    ({**REQUIRED, "AGENTPOOL_TASK_COMMAND": "[]"},
     "AGENTPOOL_TASK_COMMAND must be a JSON array of non-empty strings"),
    ({**REQUIRED, "AGENTPOOL_TASK_COMMAND_GRACE_SECONDS": "11"},
     "AGENTPOOL_TASK_COMMAND_GRACE_SECONDS must be a number of seconds between 0 and 10 (how "
     "long a stopped command has between SIGTERM and SIGKILL), got '11'"),
    (COMMAND, "AGENTPOOL_TASK_COMMAND must name the command each task runs, "
              'e.g. ["node", "/app/agent.js"] (handler agentpool_worker.command:run)'),
    ({**COMMAND, "AGENTPOOL_TASK_COMMAND": "no-such-agent-xyz run"},
     "AGENTPOOL_TASK_COMMAND: 'no-such-agent-xyz' is not an executable found on PATH"),
    ({**COMMAND, "AGENTPOOL_TASK_COMMAND": "/opt/agent/missing"},
     "AGENTPOOL_TASK_COMMAND: '/opt/agent/missing' is not an executable file"),
])
def test_a_bad_task_command_is_refused_at_start(environ: dict[str, str], problem: str) -> None:
    """With the other settings (exit 2), not when the command handler's startup hook runs."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert str(caught.value) == problem


def test_the_command_handler_gets_a_command_found_on_path() -> None:
    settings = load_settings({**COMMAND, "AGENTPOOL_TASK_COMMAND": '["python3", "-V"]'})
    assert settings.runs_commands and task_argv(settings.task_command) == ("python3", "-V")
    assert settings.task_command_grace_seconds == 5.0


def test_help_shows_every_setting_with_its_default_and_rule() -> None:
    shown = {variable.name: (variable.default, variable.rule) for variable in variables()}
    assert len(shown) == len(WorkerSettings.__dataclass_fields__)
    assert shown["AGENTPOOL_REDIS_URL"][0] == "required"
    assert shown["AGENTPOOL_QUEUE"] == (
        "default", "a queue name of 1-100 letters, digits, '.', '_' or '-'")
    assert shown["AGENTPOOL_POD_NAME"][0] == "<host name>-<process id>"
    assert shown["AGENTPOOL_POD_NAMESPACE"][0] == "empty"
    assert shown["AGENTPOOL_DURABILITY"][0] == "none"
    assert shown["AGENTPOOL_CLAIM_LINGER_SECONDS"][0] == "0.002"
    assert shown["AGENTPOOL_TASK_COMMAND"][0] == (
        "required with handler agentpool_worker.command:run")


def script(path: Path, first_line: bytes) -> Path:
    path.write_bytes(first_line + b"\necho '{\"result\": 1}'\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("first_line", "problem"), [
    (b"#!/usr/bin/nonexistent-interp", "names '/usr/bin/nonexistent-interp', which does not exist"),
    (b"#!/bin/sh\r", "ends with a carriage return: the script has Windows line endings "
                     "(convert it: dos2unix, or sed -i 's/\\r$//')"),
    (b"#!/usr/bin/env bash\r", "ends with a carriage return: the script has Windows line endings"),
    (b"#!/usr/bin/env no-such-interp-xyz",
     "runs 'no-such-interp-xyz' (through /usr/bin/env), which is not an executable found on PATH"),
    (b"#!/usr/bin/env -S no-such-interp-xyz --flag",
     "runs 'no-such-interp-xyz' (through /usr/bin/env), which is not an executable found on PATH"),
    (b"#!/etc/passwd", "names '/etc/passwd', which is not an executable file"),
    (b"#!/tmp", "names '/tmp', which is not an executable file"),
    (b"#!  ", "names no interpreter"),
    (b"#!/usr/bin/env -S -u HOME no-such-interp-xyz", "runs 'no-such-interp-xyz'"),
    (b"#!/usr/bin/env -S -C /tmp no-such-interp-xyz", "runs 'no-such-interp-xyz'"),
    (b"#!/usr/bin/env -S --unset HOME A=1 no-such-interp-xyz -x", "runs 'no-such-interp-xyz'"),
    (b"#!/usr/bin/env -S --unset=HOME no-such-interp-xyz", "runs 'no-such-interp-xyz'"),
    (b"#!/usr/bin/env -S deno run", "runs 'deno' (through /usr/bin/env)"),
    (b"#!/usr/bin/env -S PATH=/nonexistent sh", "runs 'sh'"),
], ids=["missing", "crlf", "crlf-env", "env-missing", "env-S-missing", "not-executable",
        "directory", "none", "env-S-u-missing", "env-S-C-missing", "env-S-long-missing",
        "env-S-long-equals-missing", "env-S-deno", "env-S-PATH-without-it"])
def test_a_script_whose_interpreter_cannot_run_is_refused_at_start(
    tmp_path: Path, first_line: bytes, problem: str,
) -> None:
    """The file exists, its #! line does not work: each run would fail with a 'No such file
    or directory' naming the script."""
    if b"deno" in first_line and shutil.which("deno"):
        pytest.skip("deno is on PATH here")
    agent = script(tmp_path / "agent.sh", first_line)
    with pytest.raises(ConfigError) as caught:
        load_settings({**COMMAND, "AGENTPOOL_TASK_COMMAND": json.dumps([str(agent), "--fast"])})
    assert str(caught.value).startswith(f"AGENTPOOL_TASK_COMMAND: the #! line of {agent} ")
    assert problem in str(caught.value)


@pytest.mark.parametrize("first_line", [
    b"#!/bin/sh", b"#! /bin/sh -e", b"#!/usr/bin/env sh", b"#!/usr/bin/env -S sh -e",
    b"#!/usr/bin/env PATH=/bin sh",
])
def test_a_script_whose_interpreter_runs_is_taken(tmp_path: Path, first_line: bytes) -> None:
    agent = script(tmp_path / "agent.sh", first_line)
    command = json.dumps([str(agent)])
    assert load_settings({**COMMAND, "AGENTPOOL_TASK_COMMAND": command}).task_command == command


def taken_and_runs(agent: Path, path: str | None = None) -> str:
    """Taken by the worker's start-up check (with `path` as the worker's PATH), and what the
    script prints when run."""
    command = json.dumps([str(agent)])
    assert load_settings({**COMMAND, "AGENTPOOL_TASK_COMMAND": command}).task_command == command
    env = None if path is None else {"PATH": path}
    return subprocess.run([str(agent)], env=env, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, check=True).stdout


@pytest.mark.skipif(shutil.which("python3") is None, reason="no python3 on PATH")
@pytest.mark.parametrize("options", [
    "-S -u HOME", "-S -C /tmp", "-S --unset=HOME", "-S --unset HOME", "-vS", "-S -i",
    "-S -- A=1",
])
def test_a_script_run_through_env_with_options_is_taken(tmp_path: Path, options: str) -> None:
    """env's options and their values (-u NAME, -C DIR) come before the program; -S splits
    the one argument Linux gives env (the rest of the #! line) into words."""
    agent = tmp_path / "agent.py"
    agent.write_text(f"#!/usr/bin/env {options} python3\nimport os\nprint(os.getcwd())\n")
    agent.chmod(0o755)
    assert taken_and_runs(agent).strip() == ("/tmp" if "-C" in options else str(Path.cwd()))


@pytest.mark.parametrize("first_line", [
    b"#!/usr/bin/env -S -i sh", b"#!/usr/bin/env -S -u PATH sh",
    b"#!/usr/bin/env -S PATH=/usr/bin:/bin sh",
], ids=["cleared", "unset", "set"])
def test_a_script_whose_env_line_sets_path_is_judged_by_that_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_line: bytes,
) -> None:
    """sh is not on the worker's PATH (an empty directory), but env looks for it on the PATH
    the line sets, or (PATH cleared) on the C library's default path: not known for sure, so
    not refused."""
    agent = script(tmp_path / "agent.sh", first_line)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert taken_and_runs(agent, str(empty)) == '{"result": 1}\n'


@pytest.mark.skipif(shutil.which("python3") is None, reason="no python3 on PATH")
@pytest.mark.parametrize("options", ["-i", "-C /tmp", "-u HOME"])
def test_an_env_line_with_options_but_no_s_is_not_refused(tmp_path: Path, options: str) -> None:
    """Linux gives env "-i python3" as one argument: env refuses it (invalid option -- ' ') or
    takes it all as one option's value (-C ' /tmp python3') and names no program. What env
    runs is not sure, so the worker does not refuse it; env's error fails each run."""
    agent = tmp_path / "agent.py"
    agent.write_text(f"#!/usr/bin/env {options} no-such-interp-xyz\nprint('ran')\n")
    agent.chmod(0o755)
    command = json.dumps([str(agent)])
    assert load_settings({**COMMAND, "AGENTPOOL_TASK_COMMAND": command}).task_command == command
