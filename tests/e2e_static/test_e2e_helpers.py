"""Helpers of the e2e suite that can be exercised without a cluster: kubectl's output
formats, Redis URL rewriting for a port-forward, deadline-bound waits, the self-healing
port-forward (against a stand-in kubectl that only prints what the real one prints)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from e2e_cli import AgentpoolCli
from e2e_install import RedisAccess, serves
from e2e_kube import (
    KUBECTL_AGE,
    CommandError,
    Kubectl,
    PortForward,
    Waiter,
    missing_rights,
    parse_table,
    termination_as_interrupt,
    uncordoned_afterwards,
)
from e2e_pools import Pools
from e2e_stubs import Stubs, answer, refuse

from agentpool.redis_server import RedisServer
from agentpool_operator.redis_access import rewrite_address
from agentpool_operator.settings import OperatorSettings

# -- kubectl's formats -----------------------------------------------------------------------

AGENTPOOLS_TABLE = """\
NAME          QUEUE         READY   DESIRED   QUEUED   IN-FLIGHT   AGE
demo          demo          2       3         17       8           4m12s
e2e-scale-1                                                        3s
"""
"""As kubectl prints it: cells aligned under their headers, a missing value left blank."""


def test_parse_table_keys_cells_by_header() -> None:
    rows = parse_table(AGENTPOOLS_TABLE)
    assert rows[0] == {"NAME": "demo", "QUEUE": "demo", "READY": "2", "DESIRED": "3",
                       "QUEUED": "17", "IN-FLIGHT": "8", "AGE": "4m12s"}
    assert rows[1] == {"NAME": "e2e-scale-1", "QUEUE": "", "READY": "", "DESIRED": "",
                       "QUEUED": "", "IN-FLIGHT": "", "AGE": "3s"}
    assert parse_table("") == []
    with pytest.raises(ValueError, match="not aligned"):
        parse_table("NAME   AGE\nlong-name-x  3s\n")


@pytest.mark.parametrize("age", ["3s", "4m12s", "5h", "2d3h", "400d", "3y20d"])
def test_kubectl_ages(age: str) -> None:
    assert KUBECTL_AGE.match(age)


@pytest.mark.parametrize("age", ["<none>", "", "4 m", "-3s"])
def test_not_kubectl_ages(age: str) -> None:
    assert not KUBECTL_AGE.match(age)


def test_redis_url_rewritten_for_a_port_forward() -> None:
    access = RedisAccess("redis://:p%40ss%3Aw0rd@agentpool-redis.e2e.svc:6379/0")
    assert access.host_port() == "agentpool-redis.e2e.svc:6379"
    assert access.via("127.0.0.1", 40123) == "redis://:p%40ss%3Aw0rd@127.0.0.1:40123/0"
    assert access.address_map("127.0.0.1", 40123) == (
        "agentpool-redis.e2e.svc:6379=127.0.0.1:40123,"
        "agentpool-redis.e2e.svc.cluster.local:6379=127.0.0.1:40123")
    assert RedisAccess("redis://redis.example/2").via("localhost", 7000) == (
        "redis://localhost:7000/2")


def test_operator_namespaces_decide_who_serves_a_namespace() -> None:
    def deployment(namespaces: str | None) -> dict[str, Any]:
        env = [] if namespaces is None else [
            {"name": "AGENTPOOL_OPERATOR_NAMESPACES", "value": namespaces}]
        return {"spec": {"template": {"spec": {"containers": [{"name": "op", "env": env}]}}}}

    assert serves(deployment(None), "e2e")
    assert serves(deployment(""), "e2e")
    assert serves(deployment("a, e2e"), "e2e")
    assert serves(deployment("agentpool-e2e-*"), "agentpool-e2e-1a2b3c")
    assert not serves(deployment("prod,staging"), "e2e")


def test_the_operator_reads_the_address_map_the_suite_gives_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_cluster = "redis://:secret@agentpool-redis.e2e.svc:6379/0"
    access = RedisAccess(in_cluster)
    monkeypatch.setenv("AGENTPOOL_OPERATOR_REDIS_ADDRESS_MAP",
                       access.address_map("127.0.0.1", 40123))
    settings = OperatorSettings()
    assert rewrite_address(in_cluster, settings.redis_address_map) == access.via(
        "127.0.0.1", 40123)


# -- waiting ----------------------------------------------------------------------------------


def test_waiter_returns_the_first_value_that_satisfies() -> None:
    values = iter([1, 2, 3, 4])
    assert Waiter().until(lambda: next(values), lambda v: v >= 3, timeout=5, what="3",
                          interval=0.01) == 3


def test_waiter_timeout_names_what_it_waited_for_and_what_it_saw() -> None:
    waiter = Waiter(scale=0.5, diagnose=lambda: "--- cluster ---\npods: none")
    started = time.monotonic()
    with pytest.raises(AssertionError) as error:
        waiter.until(lambda: {"ready": 0}, lambda v: v["ready"] > 0, timeout=0.2,
                     what="a ready pod", interval=0.02)
    assert time.monotonic() - started < 2
    message = str(error.value)
    assert message.startswith("timed out after 0.1s waiting for a ready pod")
    assert "last seen: {'ready': 0}" in message
    assert "pods: none" in message


# -- port-forward -----------------------------------------------------------------------------

FAKE_KUBECTL = """#!{bash}
# Prints what kubectl port-forward prints; the first run dies after a moment.
echo "$*" >> "{calls}"
ports="${{@: -1}}"
local="${{ports%%:*}}"
echo "Forwarding from 127.0.0.1:${{local:-41234}} -> ${{ports##*:}}"
[ "$(wc -l < "{calls}")" -le 1 ] && {{ sleep 0.5; exit 1; }}
exec sleep 60
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> Path:
    path = tmp_path / "kubectl"
    path.write_text(FAKE_KUBECTL.format(bash=shutil.which("bash") or "/bin/bash",
                                        calls=tmp_path / "calls"))
    path.chmod(0o755)
    return path


def test_port_forward_restarts_on_the_same_local_port(fake_kubectl: Path) -> None:
    forward = PortForward(Kubectl("e2e", binary=str(fake_kubectl)), "svc/agentpool-redis",
                          6379, fake_kubectl.parent / "forward.log")
    try:
        assert forward.start() == 41234
        Waiter().true(lambda: forward.restarts >= 1 and forward.alive, timeout=10,
                      what="the port-forward to restart", interval=0.05)
    finally:
        forward.stop()
    assert not forward.alive
    calls = (fake_kubectl.parent / "calls").read_text().splitlines()
    assert calls[0] == "--namespace e2e port-forward --address 127.0.0.1 svc/agentpool-redis :6379"
    assert calls[1].endswith("svc/agentpool-redis 41234:6379")


def test_port_forward_that_never_forwards_fails_readably(tmp_path: Path) -> None:
    silent = tmp_path / "kubectl"
    silent.write_text(f"#!{shutil.which('bash')}\necho 'error: no pods' >&2\nexit 1\n")
    silent.chmod(0o755)
    forward = PortForward(Kubectl("e2e", binary=str(silent)), "svc/x", 6379,
                          tmp_path / "forward.log", start_timeout=5)
    with pytest.raises(CommandError, match="no port forwarded") as error:
        forward.start()
    assert "error: no pods" in str(error.value)
    assert os.path.exists(tmp_path / "forward.log")




class _Item:
    """What the collection hook reads and writes of a collected test."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [mark.mark for mark in marks]

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((mark for mark in reversed(self.marks) if mark.name == name), None)

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.marks.append(marker.mark)


def _e2e_conftest() -> Any:
    spec = importlib.util.spec_from_file_location(
        "e2e_conftest", Path(__file__).resolve().parents[2] / "e2e" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("scale", "seconds"), [("", 1800), ("2", 3600)])
def test_e2e_tests_get_a_timeout_of_their_own_not_the_unit_suites(
    monkeypatch: pytest.MonkeyPatch, scale: str, seconds: float,
) -> None:
    """The unit suite gives every test 300 s, fixtures included: the first e2e test installs
    the chart, the last removes it, and the scaling test alone may take longer."""
    monkeypatch.setenv("E2E_TIMEOUT_SCALE", scale)
    conftest = _e2e_conftest()
    e2e, unit = _Item(pytest.mark.e2e), _Item()
    conftest.pytest_collection_modifyitems(None, [e2e, unit])
    timeout = e2e.get_closest_marker("timeout")
    assert timeout is not None and timeout.args == (seconds,)
    assert unit.get_closest_marker("timeout") is None


# -- processes the suite leaves running -------------------------------------------------------


def test_a_port_forward_runs_in_a_session_of_its_own(stubs: Stubs, tmp_path: Path) -> None:
    """A Ctrl-C at the terminal reaches pytest only: the teardown still has the Redis it
    needs, and stops the port-forward itself."""
    stubs.rules({**answer("kubectl --namespace e2e port-forward *",
                          "Forwarding from 127.0.0.1:41234 -> 6379\n"), "sleep": 60})
    forward = PortForward(stubs.kubectl("e2e"), "svc/agentpool-redis", 6379,
                          tmp_path / "forward.log")
    try:
        forward.start()
        process = forward._process
        assert process is not None
        assert os.getsid(process.pid) == process.pid
    finally:
        forward.stop()
    assert process.poll() is not None


CHILD_LEFT_RUNNING = """
import os, sys
sys.path.insert(0, {e2e!r})
from e2e_kube import spawn
child = spawn(["sleep", "60"])
print(child.pid, os.getsid(child.pid), flush=True)
"""


def test_processes_left_running_end_when_the_interpreter_exits() -> None:
    """Pytest stopped (Ctrl-C after its teardown, or SIGTERM, which the suite turns into
    one) before a fixture could stop what it started: nothing outlives it."""
    e2e = str(Path(__file__).resolve().parents[2] / "e2e")
    done = subprocess.run([sys.executable, "-c", CHILD_LEFT_RUNNING.format(e2e=e2e)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid, session = (int(word) for word in done.stdout.split())
    assert session == pid, "in a session of its own"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_sigterm_stops_pytest_the_way_ctrl_c_does() -> None:
    with termination_as_interrupt(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -- what a wait that runs out shows ------------------------------------------------------------

PICTURE = "--- cluster ---\npods: e2e-scale-1 Pending"


def test_a_background_submit_runs_apart_and_ends_with_a_picture(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    cli = AgentpoolCli(redis_server.url, tmp_path, diagnose=lambda: PICTURE)
    submission = cli.submit_and_wait(f"e2e-static-{uuid.uuid4().hex[:8]}",
                                     [{"prompt": "nobody serves this queue"}], timeout=60)
    try:
        assert os.getsid(submission.process.pid) == submission.process.pid
        with pytest.raises(CommandError) as error:
            submission.finish(timeout=0.5)
    finally:
        cli.stop_all()
    assert submission.process.poll() is not None
    assert "(not finished after 0.5s)" in str(error.value)
    assert str(error.value).endswith(PICTURE)


def test_a_background_submit_that_gives_up_ends_with_a_picture(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    """Its own --timeout ran out: it exits 1."""
    cli = AgentpoolCli(redis_server.url, tmp_path, diagnose=lambda: PICTURE)
    submission = cli.submit_and_wait(f"e2e-static-{uuid.uuid4().hex[:8]}",
                                     [{"prompt": "nobody serves this queue"}], timeout=0.5)
    with pytest.raises(CommandError) as error:
        submission.finish(timeout=60)
    assert error.value.returncode == 1
    assert str(error.value).endswith(PICTURE)


def test_agentpool_wait_that_fails_ends_with_a_picture(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    cli = AgentpoolCli(redis_server.url, tmp_path, diagnose=lambda: PICTURE)
    queue = f"e2e-static-{uuid.uuid4().hex[:8]}"
    (task_id,) = cli.submit(queue, [{"prompt": "nobody serves this queue"}])
    with pytest.raises(CommandError) as error:
        cli.wait(queue, task_id, timeout=0.5)
    assert error.value.returncode == 1
    assert str(error.value).endswith(PICTURE)


def test_a_pool_deletion_that_times_out_ends_with_a_picture(stubs: Stubs) -> None:
    stubs.rules(refuse("kubectl --namespace e2e delete agentpool e2e-scale-1 *",
                       "error: timed out waiting for the condition on agentpools/e2e-scale-1\n"))
    pools = Pools(stubs.kubectl("e2e"), Waiter(diagnose=lambda: PICTURE), "abc123")
    with pytest.raises(CommandError) as error:
        pools.delete("e2e-scale-1", timeout=1)
    assert "timed out waiting for the condition" in str(error.value)
    assert str(error.value).endswith(PICTURE)


# -- nodes --------------------------------------------------------------------------------------


def test_missing_rights_are_the_questions_not_answered_yes(stubs: Stubs) -> None:
    stubs.rules(answer("kubectl --namespace e2e auth can-i list nodes", "yes\n"),
                refuse("kubectl --namespace e2e auth can-i patch nodes", "", rc=1),
                answer("kubectl --namespace e2e auth can-i create pods/eviction", "yes\n"))
    assert missing_rights(stubs.kubectl("e2e"), ("list", "nodes"), ("patch", "nodes"),
                          ("create", "pods/eviction")) == ["patch nodes"]


def node(unschedulable: bool) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": "w1"}, "spec": {"unschedulable": unschedulable}}


def test_a_node_cordoned_before_the_drain_stays_cordoned(stubs: Stubs) -> None:
    stubs.rules(answer("kubectl get node w1 *", node(True)))
    with uncordoned_afterwards(stubs.kubectl("e2e"), "w1"):
        pass
    assert not [c for c in stubs.calls() if "uncordon" in c]


def test_the_node_the_test_cordoned_is_uncordoned(stubs: Stubs) -> None:
    stubs.rules(answer("kubectl get node w1 *", node(False)), answer("kubectl uncordon w1"))
    with uncordoned_afterwards(stubs.kubectl("e2e"), "w1"):
        pass
    assert stubs.calls()[-1] == "kubectl uncordon w1"


def test_an_uncordon_that_fails_does_not_hide_the_tests_failure(stubs: Stubs) -> None:
    stubs.rules(answer("kubectl get node w1 *", node(False)),
                refuse("kubectl uncordon w1", 'Error from server (Forbidden): nodes "w1"\n'))
    with pytest.warns(UserWarning, match="node w1 is left cordoned"), \
            pytest.raises(AssertionError, match="the task was requeued"), \
            uncordoned_afterwards(stubs.kubectl("e2e"), "w1"):
        raise AssertionError("the task was requeued")
    with pytest.raises(CommandError, match="Forbidden"), \
            uncordoned_afterwards(stubs.kubectl("e2e"), "w1"):
        pass
