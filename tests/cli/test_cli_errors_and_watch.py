from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import Cli, wait_until, with_queue

from agentpool.cli.common import CLI_CLIENT_NAME, EXIT_PIPE_CLOSED, data_lost
from agentpool.cli.get import event_id
from agentpool.cli.main import interrupted
from agentpool.data_loss import QueueReading
from agentpool.protocol import TaskQueue, key_prefix
from agentpool.redis_server import RedisCluster, RedisServer, free_port

SOME_ID = "0123456789abcdef0123456789abcdef"
VERBS = [
    ["submit", "--json", "1"],
    ["get", SOME_ID],
    ["wait", SOME_ID],
    ["cancel", SOME_ID],
    ["stats"],
    ["dead", "list"],
    ["dead", "purge", "--all"],
    ["tasks"],
    ["workers"],
]


@pytest.mark.parametrize("argv", VERBS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("output", ["table", "json"])
def test_unreachable_redis_is_one_line_and_exit_1(cli: Cli, argv: list[str],
                                                  output: str) -> None:
    port = free_port()
    cli.redis_url = f"redis://:s3cret@127.0.0.1:{port}/0"
    result = cli(*argv, "-o", output)
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: Connection refused"
    ]


@pytest.mark.parametrize("argv", VERBS, ids=lambda a: " ".join(a[:2]))
def test_a_password_protected_redis_without_the_password_says_where_to_put_it(
    cli: Cli, protected_redis: RedisServer, argv: list[str],
) -> None:
    url = f"redis://127.0.0.1:{protected_redis.port}/0"
    cli.redis_url = url
    result = cli(*argv)
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: Redis at {url} requires a password: put it in the URL "
        "(redis://:PASSWORD@host:port/db) of --redis-url or AGENTPOOL_REDIS_URL"]


@pytest.mark.parametrize("argv", [["submit", "--json", "1"], ["stats"]],
                         ids=lambda a: a[0])
def test_a_wrong_password_is_refused_in_one_line_without_echoing_it(
    cli: Cli, protected_redis: RedisServer, argv: list[str],
) -> None:
    cli.redis_url = f"redis://:wrong-pw@127.0.0.1:{protected_redis.port}/0"
    result = cli(*argv, "-o", "json")
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: Redis at redis://:***@127.0.0.1:{protected_redis.port}/0 refused the "
        "password"]


def test_the_password_from_the_environment_is_used(
    cli: Cli, protected_redis: RedisServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTPOOL_REDIS_URL", protected_redis.url)
    submitted = cli.raw("submit", "-q", cli.queue, "--json", '"hello"', "-o", "json")
    assert submitted.code == 0, submitted
    assert cli.raw("stats", "-q", cli.queue, "-o", "json").json()["queued"] == 1


def test_status_queue_mode_unreachable(cli: Cli) -> None:
    port = free_port()
    result = cli.raw("status", "--queue", "q", "--redis-url", f"redis://127.0.0.1:{port}/0")
    assert result.code == 1
    assert result.err_lines == [
        f"agentpool: cannot reach Redis at redis://127.0.0.1:{port}/0: Connection refused"]


@pytest.mark.parametrize("argv", VERBS, ids=lambda a: " ".join(a[:2]))
def test_a_cluster_url_naming_a_single_server_says_it_is_not_a_cluster(
    cli: Cli, redis_server: RedisServer, argv: list[str],
) -> None:
    cli.redis_url = f"redis+cluster://127.0.0.1:{redis_server.port}/"
    result = cli(*argv)
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: Redis at 127.0.0.1:{redis_server.port} is not a cluster "
        "(use redis:// for a single server)"]


def test_a_cluster_url_that_cannot_be_reached_or_lacks_the_password_is_one_line(
    cli: Cli, protected_redis: RedisServer,
) -> None:
    port = free_port()
    cli.redis_url = f"redis+cluster://:s3cret@127.0.0.1:{port}/"
    result = cli("stats")
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: cannot reach Redis at redis+cluster://:***@127.0.0.1:{port}/: "
        "Connection refused"]
    cli.redis_url = f"redis+cluster://127.0.0.1:{protected_redis.port}/"
    result = cli("stats")
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [
        f"agentpool: Redis at {cli.redis_url} requires a password: put it in the URL "
        "(redis://:PASSWORD@host:port/db) of --redis-url or AGENTPOOL_REDIS_URL"]


def test_unknown_host_and_bad_scheme(cli: Cli) -> None:
    cli.redis_url = "redis://user:pw@no-such-host.invalid:6379/0"
    result = cli("stats")
    assert result.code == 1
    [line] = result.err_lines
    assert line.startswith("agentpool: cannot reach Redis at redis://user:***@no-such-host"
                           ".invalid:6379/0: ")
    assert "pw" not in line.split("***")[1]
    cli.redis_url = "http://user:pw@host/0"
    result = cli("stats")
    assert result.code == 2
    [line] = result.err_lines
    assert line.startswith("agentpool: invalid Redis URL http://user:***@host/0: ")


def test_invalid_queue_name_is_a_usage_error(cli: Cli) -> None:
    cli.queue = "bad name!"
    result = cli("stats")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err.startswith("agentpool: invalid queue name 'bad name!'")


@pytest.mark.parametrize(("argv", "message"), [
    (["submit", "--json", "1", "--delay=nan"], "argument --delay: must be a finite number, "
     "got nan"),
    (["submit", "--json", "1", "--delay=inf"], "argument --delay: must be a finite number, "
     "got inf"),
    (["submit", "--json", "1", "--delay=-5"], "argument --delay: must be at least 0, got -5"),
    (["submit", "--json", "1", "--expires=0"], "argument --expires: must be more than 0, got 0"),
    (["submit", "--json", "1", "--task-timeout=0"],
     "argument --task-timeout: must be at least 0.001 and at most 604800, got 0"),
    (["submit", "--json", "1", "--task-timeout=604801"],
     "argument --task-timeout: must be at least 0.001 and at most 604800, got 604801"),
    (["submit", "--json", "1", "--tenant="],
     "argument --tenant: tenant must be a name of 1 to 128 characters, none a control "
     "character, got ''"),
    (["submit", "--json", "1", "--tenant", "a\tb"],
     "argument --tenant: tenant must be a name of 1 to 128 characters, none a control "
     "character, got 'a\\tb'"),
    (["submit", "--json", "1", "--idempotency-key="],
     "argument --idempotency-key: an idempotency key must not be empty or blank, got ''"),
    (["submit", "--json", "1", "--idempotency-key", " \t"],
     "argument --idempotency-key: an idempotency key must not be empty or blank, got ' \\t'"),
    (["tasks", "--tenant=a\nb"],
     "argument --tenant: tenant must be a name of 1 to 128 characters, none a control "
     "character, got 'a\\nb'"),
    (["submit", "--json", "1", "--wait", "--timeout=-1"],
     "argument --timeout: must be at least 0, got -1"),
    (["submit", "--json", "1", "--wait", "--timeout=nan"],
     "argument --timeout: must be a finite number, got nan"),
    (["wait", SOME_ID, "--timeout=nan"], "argument --timeout: must be a finite number, got nan"),
    (["get", SOME_ID, "--follow", "--after", "bogus"],
     "argument --after: invalid event id 'bogus': an event id is <milliseconds>-<sequence>, "
     "as --follow -o json prints it (e.g. 1700000000000-0)"),
    (["get", SOME_ID, "--follow", "--after", "1-99999999999999999999"],
     "argument --after: invalid event id '1-99999999999999999999': an event id is "
     "<milliseconds>-<sequence>, as --follow -o json prints it (e.g. 1700000000000-0)"),
    (["stats", "--watch", "--interval=inf"], "argument --interval: must be a finite number, "
     "got inf"),
    (["stats", "--watch", "--window=nan"], "argument --window: must be a finite number, "
     "got nan"),
    (["status", "--sample=nan"], "argument --sample: must be a finite number, got nan"),
    (["tasks", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_bad_number_or_event_id_is_refused_before_anything_is_sent(
    cli: Cli, argv: list[str], message: str,
) -> None:
    cli.capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.raw(*argv[:1], "--redis-url", cli.redis_url, "--queue", cli.queue, *argv[1:])
    assert exited.value.code == 2
    assert cli.capsys.readouterr().err == (
        f"agentpool {argv[0]}: {message} (see agentpool {argv[0]} --help)\n")
    assert not with_queue(cli.redis_url, cli.queue, TaskQueue.used)


def test_an_event_id_as_follow_prints_it_is_accepted() -> None:
    assert event_id("1700000000000-0") == "1700000000000-0"
    assert event_id(" 0-0 ") == "0-0"


def spawn(*argv: str) -> subprocess.Popen[str]:
    code = "import sys; from agentpool.cli.main import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def scripts_run(url: str, queue: str) -> int:
    """The scripts Redis at `url` ran to the end (EVALSHA calls; those refused with NOSCRIPT,
    which the client loads and sends again, are failed calls and do not count)."""

    async def read(q: TaskQueue) -> int:
        stats = (await q.redis.info("commandstats")).get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))

    return with_queue(url, queue, read)


def wait_for_a_refresh(url: str, queue: str, before: int, per_view: int) -> None:
    """Until a table --watch started when Redis had run `before` scripts has taken its first
    view and begun the next (each view runs `per_view` scripts): only then is the first on
    show, and Ctrl-C or an outage met by the live view. Its connection being open says less:
    Redis going away during the first view ends the command (exit 1), and Ctrl-C before the
    view is on show leaves nothing on stdout."""

    async def cli_connections(q: TaskQueue) -> int:
        clients = await q.redis.client_list()
        return sum(c.get("name") == CLI_CLIENT_NAME for c in clients)

    wait_until(lambda: with_queue(url, queue, cli_connections) > 0
               and scripts_run(url, queue) > before + per_view, within=20)


def test_watch_json_streams_lines_until_ctrl_c(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, lambda q: q.submit(1))
    proc = spawn("stats", "--redis-url", cli.redis_url, "--queue", cli.queue, "--watch",
                 "--interval", "0.1", "-o", "json")
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    docs = [json.loads(line) for line in lines]
    assert all(d["queue"] == cli.queue for d in docs)
    assert "rates" in docs[-1]


@pytest.mark.parametrize("verb", ["stats", "workers"])
def test_watch_keeps_going_while_redis_is_down_and_says_so(cli: Cli, verb: str) -> None:
    server = RedisServer().start()
    url = server.url
    try:
        with_queue(url, cli.queue, lambda q: q.submit(1))
        proc = spawn(verb, "--redis-url", url, "--queue", cli.queue, "--watch",
                     "--interval", "0.1", "-o", "json")
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())
        server.close()
        assert proc.stderr.readline() == (
            f"agentpool: cannot reach Redis at {url}: Connection refused; still watching, "
            "retrying every 0.1s\n")
        server = RedisServer(port=server.port).start()  # back empty: no persistence
        assert [proc.stderr.readline() for _ in range(2)] == [
            lost_line(cli.queue, "the submit counter went back from 1 to 0") + "\n",
            "agentpool: Redis answers again\n"]
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
        assert proc.returncode == 0
    finally:
        server.close()


def test_watch_keeps_going_while_every_node_of_a_cluster_is_down(cli: Cli) -> None:
    cluster = RedisCluster().start()
    try:
        with_queue(cluster.url, cli.queue, lambda q: q.submit(1))
        proc = spawn("stats", "--redis-url", cluster.url, "--queue", cli.queue, "--watch",
                     "--interval", "0.2", "-o", "json")
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())
        cluster.close()
        line = proc.stderr.readline()
        assert line.startswith("agentpool: cannot reach Redis at redis+cluster://"), line
        assert line.endswith("; still watching, retrying every 0.2s\n"), line
        time.sleep(1.0)  # a few refreshes against the dead cluster: the view must stay
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "Topology refresh" not in err and "Traceback" not in err, err
    finally:
        cluster.close()


def test_watch_table_shows_that_redis_is_down_under_the_last_view(cli: Cli) -> None:
    with RedisServer() as server:
        url = server.url
        with_queue(url, cli.queue, lambda q: q.submit(1))
        before = scripts_run(url, cli.queue)
        proc = spawn("stats", "--redis-url", url, "--queue", cli.queue, "--watch",
                     "--interval", "0.1")
        wait_for_a_refresh(url, cli.queue, before, per_view=1)  # the figures
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    assert f"Queue {cli.queue}" in out
    assert out.rstrip().endswith(f"cannot reach Redis at {url}: Connection refused; still "
                                 "watching, retrying every 0.1s")


def test_watch_table_refreshes_until_ctrl_c(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, lambda q: q.submit(1))
    before = scripts_run(cli.redis_url, cli.queue)
    proc = spawn("workers", "--redis-url", cli.redis_url, "--queue", cli.queue, "-w",
                 "--interval", "0.1")
    wait_for_a_refresh(cli.redis_url, cli.queue, before, per_view=2)  # figures, workers
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    assert f"Workers of queue {cli.queue}: 0" in out


def never_used_line(queue: str) -> str:
    return (f'agentpool: queue "{queue}" has never been used: nothing was submitted to it and '
            "no worker serves it")


def test_watch_of_a_never_used_queue_says_so_once_then_shows_it_when_it_appears(
    cli: Cli,
) -> None:
    proc = spawn("stats", "--redis-url", cli.redis_url, "--queue", cli.queue, "--watch",
                 "--interval", "0.1", "-o", "json")
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["queued"] == 0
    with_queue(cli.redis_url, cli.queue, lambda q: q.submit({"n": 1}))
    queued = [json.loads(proc.stdout.readline())["queued"] for _ in range(3)]
    for _ in range(100):
        if queued[-1] == 1:
            break
        queued.append(json.loads(proc.stdout.readline())["queued"])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert queued[-1] == 1
    assert proc.returncode == 0
    [line] = err.splitlines()
    assert line.startswith(never_used_line(cli.queue))
    assert line.endswith("; watching for it")


def test_watch_table_of_a_never_used_queue_says_so_once(cli: Cli) -> None:
    before = scripts_run(cli.redis_url, cli.queue)
    proc = spawn("workers", "--redis-url", cli.redis_url, "--queue", cli.queue, "-w",
                 "--interval", "0.1")
    wait_for_a_refresh(cli.redis_url, cli.queue, before, per_view=2)  # figures, workers
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    [line] = err.splitlines()
    assert line.startswith(never_used_line(cli.queue))
    assert f"Workers of queue {cli.queue}: 0" in out


def lost_line(queue: str, how: str) -> str:
    return (f'agentpool: queue "{queue}" lost its data: {how} (a Redis without persistence '
            "restarted, a FLUSHALL, or a failover to a replica that had not synced); still "
            "watching")


Q = "q4"
LOST = f'queue "{Q}" lost its data: '
CAUSES = ("(a Redis without persistence restarted, a FLUSHALL, or a failover to a replica "
          "that had not synced); still watching")


@pytest.mark.parametrize(("before", "now", "said"), [
    (None, QueueReading(Q, used=True, submitted=3), None),
    (None, QueueReading(Q, used=False, submitted=None), None),
    (QueueReading(Q, used=True, submitted=3), QueueReading(Q, used=True, submitted=3), None),
    (QueueReading(Q, used=True, submitted=3), QueueReading(Q, used=True, submitted=5), None),
    (QueueReading(Q, used=False, submitted=None), QueueReading(Q, used=False, submitted=None),
     None),
    (QueueReading(Q, used=False, submitted=None), QueueReading(Q, used=True, submitted=1),
     None),
    (QueueReading(Q, used=True, submitted=None), QueueReading(Q, used=True, submitted=None),
     None),
    (QueueReading("other", used=True, submitted=3), QueueReading(Q, used=False,
                                                                  submitted=None), None),
    # Redis came back empty, nothing of the queue left
    (QueueReading(Q, used=True, submitted=3), QueueReading(Q, used=False, submitted=None),
     f"{LOST}the submit counter went back from 3 to 0 {CAUSES}"),
    # ... and a live worker registered again: the queue is used, its counter is gone
    (QueueReading(Q, used=True, submitted=3), QueueReading(Q, used=True, submitted=None),
     f"{LOST}the submit counter went back from 3 to 0 {CAUSES}"),
    # ... and submits since started the counter again from 1
    (QueueReading(Q, used=True, submitted=1234), QueueReading(Q, used=True, submitted=2),
     f"{LOST}the submit counter went back from 1,234 to 2 {CAUSES}"),
    # a queue a worker served but nobody submitted to
    (QueueReading(Q, used=True, submitted=None), QueueReading(Q, used=False, submitted=None),
     f"{LOST}every key of the queue is gone, though it had been used {CAUSES}"),
])
def test_data_lost_between_two_refreshes(before: QueueReading | None, now: QueueReading,
                                         said: str | None) -> None:
    assert data_lost(before, now) == said


@pytest.mark.parametrize("verb", ["stats", "status", "tenants"])
def test_watch_of_a_queue_whose_data_is_lost_says_so_once_and_goes_on(
    cli: Cli, verb: str,
) -> None:
    async def submit(q: TaskQueue, n: int) -> None:
        for i in range(n):
            await q.submit({"n": i})

    async def empty(q: TaskQueue) -> None:
        """What Redis coming back empty leaves of the queue: none of its keys (in one DEL, all
        at once; the session's server is shared, so no FLUSHDB)."""
        keys = [key async for key in q.redis.scan_iter(match=key_prefix(q.name) + "*")]
        assert keys
        await q.redis.delete(*keys)

    with_queue(cli.redis_url, cli.queue, lambda q: submit(q, 3))
    argv = [verb, "--redis-url", cli.redis_url, "--queue", cli.queue, "--watch",
            "--interval", "0.1", "-o", "json"]
    proc = spawn(*argv, *(["--sample", "0"] if verb == "status" else []))
    assert proc.stdout is not None
    stdout = proc.stdout

    def queued() -> int:
        doc = json.loads(stdout.readline())
        if verb == "tenants":
            return sum(int(t["queued"]) for t in doc["tenants"])
        return int(doc["queued"] if verb == "stats" else doc["pools"][0]["queued"])

    def refreshes_until(n: int) -> None:
        for _ in range(200):
            if queued() == n:
                return
        raise AssertionError(f"the watch never showed {n} queued")

    try:
        assert queued() == 3
        with_queue(cli.redis_url, cli.queue, empty)
        refreshes_until(0)
        with_queue(cli.redis_url, cli.queue, lambda q: submit(q, 1))
        refreshes_until(1)
        assert [queued() for _ in range(3)] == [1, 1, 1]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err.splitlines() == [lost_line(cli.queue, "the submit counter went back from 3 to 0")]


def test_ctrl_c_while_waiting_exits_130_quietly(cli: Cli) -> None:
    task_id = with_queue(cli.redis_url, cli.queue, lambda q: q.submit(1))
    proc = spawn("wait", task_id, "--redis-url", cli.redis_url, "--queue", cli.queue)
    done_channel = key_prefix(cli.queue) + "done"

    async def subscribers(q: TaskQueue) -> int:
        [(_, count)] = await q.redis.pubsub_shardnumsub(done_channel)
        return int(count)

    wait_until(lambda: with_queue(cli.redis_url, cli.queue, subscribers) == 1, within=20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (130, "", "")


EARLY_CTRL_C_DELAYS = (0.02, 0.05, 0.08, 0.12, 0.16, 0.2, 0.3, 0.5)
"""Seconds after `main` is imported, as it is called: while it imports the subcommands (about
a quarter of a second), and once `wait` waits."""


def test_ctrl_c_while_the_command_loads_exits_130_quietly(cli: Cli) -> None:
    """As the console script runs main, from the moment it is called (the interpreter and
    the imports of `agentpool` and of `main` before it are outside the CLI's reach)."""
    task_id = with_queue(cli.redis_url, cli.queue, lambda q: q.submit(1))
    # Ctrl-C as a terminal sends it to a command in the foreground, whose Python handles
    # SIGINT from the start. A child inherits an ignored SIGINT (pytest run as a background
    # job, until a test in it has added and removed an asyncio handler for SIGINT, which
    # leaves Python's own): it would ignore the signal while it loads, and wait for ever.
    # 'loaded' once main is imported too: a Ctrl-C before main() runs is outside the CLI's
    # reach (a traceback), and on a loaded machine that import alone outlasts 20 ms.
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "import sys, agentpool; from agentpool.cli.main import main; "
            "print('loaded', flush=True); sys.exit(main())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    for delay in EARLY_CTRL_C_DELAYS:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "wait", task_id, "--redis-url", cli.redis_url,
             "--queue", cli.queue], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "loaded\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert (delay, proc.returncode, out, err) == (delay, 130, "", "")


def test_a_ctrl_c_python_wrapped_in_another_error_is_still_an_interrupt() -> None:
    class Described:
        def __set_name__(self, owner: type, name: str) -> None:
            raise KeyboardInterrupt

    with pytest.raises(RuntimeError) as wrapped:
        type("Loading", (), {"field": Described()})
    assert interrupted(wrapped.value)
    assert interrupted(KeyboardInterrupt())
    looped = ValueError("bad")
    looped.__context__ = TypeError("worse")
    looped.__context__.__context__ = looped
    assert not interrupted(looped)


def test_a_reader_that_left_is_not_blamed_on_redis(cli: Cli) -> None:
    """`agentpool submit ... | head -c0`: the task is queued, stdout is gone. Saying Redis
    could not be reached would make a script submit it again."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    code = "import sys; from agentpool.cli.main import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, "submit", "--redis-url", cli.redis_url, "--queue",
             cli.queue, "--json", "{}", "-o", "json"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (EXIT_PIPE_CLOSED, "")
    figures = with_queue(cli.redis_url, cli.queue, TaskQueue.figures)
    assert figures.queued == 1
