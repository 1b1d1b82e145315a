"""A client's script calls go on connections of their own (agentpool.direct), past redis-py's
pool, and whatever goes wrong on them is finished the usual way: a script Redis forgot, a
connection Redis closed, a call cancelled half-way, more callers than the line keeps, a
process forked with the line open. Against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from protocol_helpers import tls_redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_freeze import frozen

from agentpool.acl import Role
from agentpool.client import Client, SyncClient
from agentpool.connection import DEFAULT_MAX_CONNECTIONS, pack_command, redis_from_url
from agentpool.direct import DEFAULT_LIMIT, BlockingScriptLine, ScriptLine, _AsyncWire, _Wire
from agentpool.lua_source import script_source
from agentpool.protocol import CancelOutcome
from agentpool.redis_server import RedisServer

AclUrl = Callable[[str, Role], Awaitable[str]]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own: these tests kill clients, flush scripts and freeze it."""
    with RedisServer() as own:
        yield own


def _line_clients(server: RedisServer) -> int:
    """Connections to `server` other than the caller's own, by CLIENT LIST."""
    admin = redis.Redis.from_url(server.url)
    try:
        return len(admin.client_list()) - 1
    finally:
        admin.close()


def _payload(client: redis.Redis, queue: str, task_id: str) -> Any:
    raw = client.hget(f"ap:{{{queue}}}:t:{task_id}", "payload")
    assert isinstance(raw, bytes)
    return raw.decode()


async def test_submits_take_no_connection_from_the_clients_pool(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once Redis knows the script (its first call loads it through the client)."""
    taken: list[object] = []
    async with Client.from_url(server.url) as client:
        await client.queue("direct").submit("loads the script")
        pool = client.redis.connection_pool
        original: Callable[..., Awaitable[Any]] = pool.get_connection

        async def counting(*args: Any, **kwargs: Any) -> Any:
            taken.append(args)
            return await original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counting)
        queue = client.queue("direct")
        ids = [await queue.submit(i) for i in range(20)]
        taken_by_submits = len(taken)
        info = await queue.get(ids[-1])
    assert len(set(ids)) == 20
    assert info is not None and info.payload == 19
    assert taken_by_submits == 0


def _flush_scripts(admin: redis.Redis) -> None:
    admin.script_flush()


def _close_connections(admin: redis.Redis) -> None:
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1


@pytest.mark.parametrize("forget", [_flush_scripts, _close_connections],
                         ids=["scripts", "connections"])
async def test_what_redis_forgot_between_two_submits_is_made_again(
        server: RedisServer, forget: Callable[[redis.Redis], None]) -> None:
    """The script (loaded again through the client) or the line's connection (replaced, the
    call sent once more); the submit after it, and the one after that, go through."""
    admin = redis.Redis.from_url(server.url)
    async with Client.from_url(server.url) as client:
        queue = client.queue("forgot")
        await queue.submit("first")
        forget(admin)
        second = await queue.submit("second")
        third = await queue.submit("third")
    payloads = [_payload(admin, "forgot", task_id) for task_id in (second, third)]
    admin.close()
    assert payloads == ['"second"', '"third"']


async def test_a_cancelled_submit_never_answers_the_next_one(server: RedisServer) -> None:
    """Redis frozen while a submit waits for its reply; the submit is cancelled, Redis thaws
    and runs it. The next submit must get its own reply, not the one left on the wire."""
    async with Client.from_url(server.url) as client:
        queue = client.queue("cancelled")
        await queue.submit("warm")
        with frozen(server), pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await queue.submit("cancelled")
        task_id = await queue.submit("next")
        info = await queue.get(task_id)
    assert info is not None and info.payload == "next"


async def test_callers_beyond_the_lines_connections_share_the_pool(server: RedisServer) -> None:
    """200 script calls at once (cancels: each its own call): 8 on the line, the rest on the
    pool, whose callers beyond its 100 connections wait for one instead of failing; neither
    opens more than its cap."""
    async with Client.from_url(server.url) as client:
        queue = client.queue("many")
        ids = await queue.submit_many(range(200))
        await queue.cancel(ids[0])  # Redis learns the script
        outcomes = await asyncio.gather(*(queue.cancel(task_id) for task_id in ids[1:]))
        opened = _line_clients(server)
    assert set(outcomes) == {CancelOutcome.CANCELLED}
    assert DEFAULT_LIMIT < opened <= DEFAULT_LIMIT + DEFAULT_MAX_CONNECTIONS


async def test_submits_beyond_the_lines_connections_go_together_on_the_line(
        server: RedisServer) -> None:
    """200 submits at once: 8 go alone, the rest gather into a few script calls on the same
    8 connections (agentpool.coalesce); each caller gets its own task."""
    admin = redis.Redis.from_url(server.url)
    admin.script_load(script_source("submit"))
    async with Client.from_url(server.url) as client:
        queue = client.queue("many")
        ids = await asyncio.gather(*(queue.submit(i) for i in range(200)))
        opened = _line_clients(server) - 1  # less `admin`
        infos = [await queue.get(task_id) for task_id in ids]
    calls = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
    admin.close()
    assert [info.payload for info in infos if info is not None] == list(range(200))
    assert opened == DEFAULT_LIMIT
    assert DEFAULT_LIMIT < calls <= 2 * DEFAULT_LIMIT


@pytest.mark.parametrize(("threads", "each"), [(12, 200), (40, 50)],
                         ids=["fewer-threads-than-connections", "more-threads-than-connections"])
def test_blocking_submits_from_many_threads_get_their_own_replies(
        server: RedisServer, threads: int, each: int) -> None:
    """With more threads than the line has connections, the submits that find it busy go
    through the loop."""
    admin = redis.Redis.from_url(server.url)
    wrong: list[str] = []
    with SyncClient.from_url(server.url) as client:
        queue = client.queue("threads")

        def submit_all(thread: int) -> None:
            for i in range(each):
                payload = f"{thread}-{i}"
                task_id = queue.submit(payload)
                if _payload(admin, "threads", task_id) != f'"{payload}"':
                    wrong.append(payload)

        started = [threading.Thread(target=submit_all, args=(t,)) for t in range(threads)]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
        queued = admin.zcard("ap:{threads}:queued")
    admin.close()
    assert wrong == []
    assert queued == threads * each


def test_blocking_submits_that_find_the_line_busy_go_to_the_loop(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every connection of the line in use, a submit goes to the client's event loop
    (where concurrent submits gather) instead of the blocking client's pool."""
    with SyncClient.from_url(server.url) as client:
        queue = client.queue("busy")
        queue.submit("opens a connection of the line")
        line = client._blocking
        key = "ap:{busy}:queued"
        assert line is not None and not line.busy(key)
        through_pool: list[object] = []
        monkeypatch.setattr(line, "_through_client", lambda *args: through_pool.append(args))
        server_of_queue = line._server_of(key)
        taken = [line._take(server_of_queue) for _ in range(DEFAULT_LIMIT)]
        assert line.busy(key)
        ids = [queue.submit(i) for i in range(5)]
        infos = [queue.get(task_id) for task_id in ids]
        assert [info.payload for info in infos if info is not None] == list(range(5))
        assert through_pool == []
        server_of_queue.idle.extend(c for c in taken if c is not None)
        assert not line.busy(key)


def test_a_forked_child_submits_on_connections_of_its_own(server: RedisServer) -> None:
    """Parent and child submit at the same moment after a fork. A child writing on its
    parent's socket would read replies meant for the parent (and the parent the child's)."""
    admin = redis.Redis.from_url(server.url)
    with SyncClient.from_url(server.url) as client:
        queue = client.queue("forked")
        queue.submit("before the fork")
        start_reading, start_writing = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 when every reply was its own
            os.read(start_reading, 1)
            status = 0
            try:
                for i in range(2_000):
                    task_id = queue.submit(f"child-{i}")
                    if _payload(admin, "forked", task_id) != f'"child-{i}"':
                        status = 1
            except BaseException:  # the child reports through its status
                status = 2
            os._exit(status)
        os.write(start_writing, b"go")
        wrong = 0
        for i in range(2_000):
            task_id = queue.submit(f"parent-{i}")
            if _payload(admin, "forked", task_id) != f'"parent-{i}"':
                wrong += 1
        _, status = os.waitpid(pid, 0)
    admin.close()
    assert wrong == 0
    assert os.waitstatus_to_exitcode(status) == 0


async def test_a_line_closes_its_connections_with_the_client(server: RedisServer) -> None:
    client = Client.from_url(server.url)
    queue = client.queue("closing")
    await asyncio.gather(*(queue.submit(i) for i in range(4)))
    assert _line_clients(server) >= 1
    await client.aclose()
    assert _line_clients(server) == 0


def test_a_blocking_connection_redis_closed_is_reopened(server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    with SyncClient.from_url(server.url) as client:
        queue = client.queue("closed-blocking")
        queue.submit("first")
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        task_id = queue.submit("second")
        assert _payload(admin, "closed-blocking", task_id) == '"second"'
    admin.close()


def test_a_blocking_line_opens_connections_beyond_the_pools_limit() -> None:
    """The line's connections are its own: replacing them, however often (here each call
    while Redis is down), takes nothing of the client's pool, which counts every connection
    it makes against its limit for good."""
    with RedisServer() as own:
        client = redis.Redis.from_url(own.url, max_connections=2, retry=Retry(NoBackoff(), 0))
        sha = client.script_load(ECHO)
        line = BlockingScriptLine(client)
        own.stop()
        for _ in range(4):
            with pytest.raises(redis.ConnectionError):
                line.run(sha, ECHO, ["k"], ["word", 42, "x"])
        own.start()
        assert line.run(sha, ECHO, ["k"], ["word", 42, "x"]) == [b"word", 42, [b"x"]]
        line.close()


async def test_every_call_of_a_client_survives_connections_redis_closed(
        server: RedisServer) -> None:
    """Not only the line's: the pool's connections, which reads and other calls use, are
    made again too."""
    admin = redis.Redis.from_url(server.url)
    async with Client.from_url(server.url) as client:
        queue = client.queue("closed-pool")
        task_id = await queue.submit("kept")
        assert (await queue.figures()).queued == 1
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 2
        info = await queue.get(task_id)
        assert (await queue.figures()).queued == 1
    admin.close()
    assert info is not None and info.payload == "kept"


async def test_producers_submit_across_a_redis_restart() -> None:
    """Redis restarts (same port, AOF on) between two submits of each client: the second is
    made on new connections, after the script is loaded again, and raises nothing."""
    with RedisServer(appendonly=True) as restarting:
        admin = redis.Redis.from_url(restarting.url)
        async with Client.from_url(restarting.url) as client:
            queue = client.queue("restart")
            with SyncClient.from_url(restarting.url) as blocking_client:
                blocking = blocking_client.queue("restart")
                before = [await queue.submit("async, before"), blocking.submit("sync, before")]
                restarting.restart()
                after = [await queue.submit("async, after"), blocking.submit("sync, after")]
        payloads = [_payload(admin, "restart", task_id) for task_id in before + after]
        admin.close()
    assert payloads == ['"async, before"', '"sync, before"', '"async, after"', '"sync, after"']


async def test_a_producer_credential_submits_through_both_clients(
        acl_url: AclUrl, queue_name: str, redis_mode: str) -> None:
    """The lines' connections authenticate as the URL says, and the producer's ACL user (no
    CLIENT, no SCRIPT LOAD beyond its own scripts) is enough for them; on every deployment."""
    url = await acl_url(queue_name, Role.PRODUCER)
    async with Client.from_url(url) as client:
        queue = client.queue(queue_name)
        first = await queue.submit("async")
        with SyncClient.from_url(url) as blocking_client:
            second = blocking_client.queue(queue_name).submit("sync")
        infos = [await queue.get(task_id) for task_id in (first, second)]
    assert [info.payload for info in infos if info is not None] == ["async", "sync"]


async def test_producers_submit_over_tls_on_their_lines(tmp_path: Path) -> None:
    """rediss:// against a real TLS listener: the lines' connections are TLS connections as
    the pool's are (a line that opened plain ones would get no reply from the TLS port)."""
    with tls_redis(tmp_path) as (plain, tls_url):
        admin = redis.Redis.from_url(plain.url)
        async with Client.from_url(tls_url) as client:
            queue = client.queue("tls")
            ids = [await queue.submit(f"async {i}") for i in range(3)]
            with SyncClient.from_url(tls_url) as blocking_client:
                blocking = blocking_client.queue("tls")
                ids += [blocking.submit(f"sync {i}") for i in range(3)]
        payloads = [_payload(admin, "tls", task_id) for task_id in ids]
        admin.close()
    assert payloads == [f'"{kind} {i}"' for kind in ("async", "sync") for i in range(3)]


@pytest.mark.parametrize("redis_mode", ["standalone", "sentinel"])
async def test_a_client_from_a_url_survives_connections_redis_closed(
        redis_url: str, redis_mode: str) -> None:
    """Every client the project makes from a URL (worker, operator, console, producer): a call
    on a pooled connection Redis closed while it sat idle is made once more on a new one."""
    client = redis_from_url(redis_url)
    admin = redis_from_url(redis_url)
    try:
        await client.set("survivor", "before")
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
        assert await client.get("survivor") == b"before"
    finally:
        await client.aclose()
        await admin.aclose()


ECHO = "if ARGV[1] == 'fail' then return redis.error_reply('BADNESS ' .. KEYS[1]) end\n" \
       "return {ARGV[1], tonumber(ARGV[2]), {ARGV[3]}}"


@pytest.mark.parametrize("decode", [False, True])
async def test_a_line_reads_replies_as_the_clients_own_parser_does(
        server: RedisServer, decode: bool) -> None:
    """Replies decoded (or not) as the client's option says, nested replies intact, an error
    reply raised as the exception class redis-py gives it, and the line still usable."""
    client = redis_from_url(server.url, decode_responses=decode)
    line = ScriptLine(client)
    script = client.register_script(ECHO)
    direct = await line.run(script, ["k"], ["word", 42, "é"])
    assert direct == await script(keys=["k"], args=["word", 42, "é"])
    assert direct == (["word", 42, ["é"]] if decode else [b"word", 42, ["é".encode()]])
    with pytest.raises(redis.exceptions.ResponseError, match="BADNESS k"):
        await line.run(script, ["k"], ["fail", 0, ""])
    again = await line.run(script, ["k"], ["again", 1, "x"])
    assert again == (["again", 1, ["x"]] if decode else [b"again", 1, [b"x"]])
    await line.aclose()
    await client.aclose()


def test_a_blocking_line_reads_replies_as_the_clients_own_parser_does(
        server: RedisServer) -> None:
    plain = redis.Redis.from_url(server.url)
    decoding = redis.Redis.from_url(server.url, decode_responses=True)
    sha = plain.script_load(ECHO)
    for client, expected in ((plain, [b"word", 42, [b"x"]]), (decoding, ["word", 42, ["x"]])):
        line = BlockingScriptLine(client)
        assert line.run(sha, ECHO, ["k"], ["word", 42, "x"]) == expected
        with pytest.raises(redis.exceptions.ResponseError, match="BADNESS k"):
            line.run(sha, ECHO, ["k"], ["fail", 0, ""])
        assert line.run(sha, ECHO, ["k"], ["word", 42, "x"]) == expected
        line.close()
    plain.close()


async def test_a_line_call_that_times_out_never_answers_the_next_one(
        server: RedisServer) -> None:
    """The reply a timed-out call left on the wire must not answer the call after it: the
    connection is closed and the next call gets its own task's id."""
    admin = redis.Redis.from_url(server.url)
    async with Client.from_url(server.url, socket_timeout=0.5) as client:
        queue = client.queue("timeouts")
        await queue.submit("warm")
        with frozen(server), \
                pytest.raises(redis.exceptions.TimeoutError):
            await queue.submit("lost in the freeze")
        later = await queue.submit("after")
    assert _payload(admin, "timeouts", later) == '"after"'
    admin.close()


def test_a_line_call_times_out_on_the_next_event_loop_too(server: RedisServer) -> None:
    """A client kept from one ``asyncio.run`` to the next: the first loop ends with the
    call timer of its connections pending, and the calls on the next loop keep their
    timeout."""
    client = Client.from_url(server.url, socket_timeout=0.5)
    queue = client.queue("timeouts-loops")

    async def first() -> None:
        await queue.submit("on the first loop")

    async def second() -> None:
        await queue.submit("on the second loop")  # its connection made before the freeze
        with frozen(server), pytest.raises(redis.exceptions.TimeoutError):
            await queue.submit("lost in the freeze")
        await client.aclose()

    asyncio.run(first())
    asyncio.run(second())


def test_a_blocking_line_call_that_times_out_never_answers_the_next_one(
        server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    with SyncClient.from_url(server.url, socket_timeout=0.5) as client:
        queue = client.queue("timeouts-blocking")
        queue.submit("warm")
        with frozen(server), \
                pytest.raises(redis.exceptions.TimeoutError):
            queue.submit("lost in the freeze")
        later = queue.submit("after")
    assert _payload(admin, "timeouts-blocking", later) == '"after"'
    admin.close()


def test_a_push_message_is_not_taken_for_a_reply(server: RedisServer) -> None:
    """On RESP3 Redis may push a message nobody asked for on a line's connection (here a
    client-tracking invalidation, written before the reply that follows it)."""
    admin = redis.Redis.from_url(server.url)
    client = redis.Redis.from_url(server.url, protocol=3)
    pool = client.connection_pool
    wire = _Wire(pool.connection_class(**pool.connection_kwargs))
    assert wire.call(pack_command(("CLIENT", "TRACKING", "ON"))) == b"OK"
    assert wire.call(pack_command(("GET", "watched"))) is None
    admin.set("watched", "changed")
    assert wire.call(pack_command(("PING",))) == b"PONG"
    wire.close()
    admin.close()


async def test_a_push_message_is_not_taken_for_a_reply_on_an_asyncio_line(
        server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    client = redis_from_url(server.url, protocol=3)
    pool = client.connection_pool
    wire = _AsyncWire(pool.connection_class(**pool.connection_kwargs))
    assert await wire.call(pack_command(("CLIENT", "TRACKING", "ON"))) == b"OK"
    assert await wire.call(pack_command(("GET", "watched"))) is None
    admin.set("watched", "changed")
    assert await wire.call(pack_command(("PING",))) == b"PONG"
    await wire.close()
    await client.aclose()
    admin.close()
