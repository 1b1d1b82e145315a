"""Redis URLs: the Sentinel and cluster forms' parts, their errors, and that no message quotes
a password; the clients made from them pack commands in C, to the same bytes, and bound a
write by the socket timeout only when it has to wait."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

import pytest
import redis
from protocol_helpers import tls_cluster, tls_redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import DataError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentpool.client import Client, ClientConfigError, SyncClient
from agentpool.connection import (
    ClusterURL,
    LeanConnection,
    RedisURLError,
    SentinelURL,
    _lean,
    check_redis_url,
    is_cluster,
    is_cluster_url,
    is_sentinel_url,
    parse_cluster_url,
    parse_sentinel_url,
    redis_from_url,
    sync_redis_from_url,
)
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisCluster, RedisServer, SentinelGroup
from agentpool.urls import URL_PREFIXES, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://h1:26380,h2/agentpool",
            SentinelURL(sentinels=(("h1", 26380), ("h2", 26379)), service="agentpool"),
        ),
        (
            "rediss+sentinel://:s%40cret@h1:1,[::1]:2/svc/3",
            SentinelURL(sentinels=(("h1", 1), ("::1", 2)), service="svc", db=3,
                        password="s@cret", tls=True),
        ),
        (
            "redis+sentinel://agent:pw@h/svc/0?sentinel_password=sp&sentinel_username=mon",
            SentinelURL(sentinels=(("h", 26379),), service="svc", username="agent",
                        password="pw", sentinel_username="mon", sentinel_password="sp"),
        ),
    ],
)
def test_sentinel_urls_parse_into_their_parts(url: str, expected: SentinelURL) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:hunter2@/svc", "at least one sentinel"),
        ("redis+sentinel://:hunter2@h1:26379", "/<service>"),
        ("redis+sentinel://:hunter2@h1/svc/0/extra", "/<service>"),
        ("redis+sentinel://:hunter2@h1/svc/zero", "database"),
        ("redis+sentinel://:hunter2@h1:port/svc", "host:port"),
        ("redis+cluster://:hunter2@/", "at least one node"),
        ("redis+cluster://:hunter2@n1/3", "only database 0"),
        ("redis+cluster://:hunter2@n1:port", "host:port"),
        ("redis+sentinel://:hunter2@h1:99999/svc", "host:port"),
        ("redis+cluster://:hunter2@n1:0", "host:port"),
        ("redis://:hunter2@[::1/0", "percent-encoded"),
        ("redis://:hunter2@h:6379/abc", "database 'abc'"),
        ("redis://[::1/0", "does not parse"),
        ("rediss://:hunter2@h:6379/0?ssl_cert_reqs=bogus", "Certificate Requirements"),
    ],
)
def test_a_bad_sentinel_or_cluster_url_is_refused_without_quoting_its_password(
    url: str, problem: str
) -> None:
    with pytest.raises(RedisURLError) as caught:
        redis_from_url(url)
    assert problem in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_standalone_url_is_not_sentinel() -> None:
    assert not is_sentinel_url("redis://h:6379/0")
    assert not is_sentinel_url("rediss://h:6380")
    assert all(p.endswith("://") for p in URL_PREFIXES)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/agentpool/0",
         "redis+sentinel://:***@127.0.0.1:1,127.0.0.1:2/agentpool/0"),
        ("rediss+sentinel://u:pw@h1/svc/2?sentinel_password=sp",
         "rediss+sentinel://u:***@h1/svc/2?sentinel_password=***"),
        ("redis+sentinel://h1,h2/svc", "redis+sentinel://h1,h2/svc"),
    ],
)
def test_sentinel_urls_are_shown_with_hosts_and_without_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+cluster://n1:7000,n2,[::1]:7002/",
         ClusterURL(nodes=(("n1", 7000), ("n2", 6379), ("::1", 7002)))),
        ("rediss+cluster://agent:s%40cret@n1:7000/0",
         ClusterURL(nodes=(("n1", 7000),), username="agent", password="s@cret", tls=True)),
        ("redis+cluster://:pw@n1", ClusterURL(nodes=(("n1", 6379),), password="pw")),
    ],
)
def test_cluster_urls_parse_into_their_parts(url: str, expected: ClusterURL) -> None:
    assert is_cluster_url(url) and not is_sentinel_url(url)
    assert parse_cluster_url(url) == expected


def test_a_cluster_url_gives_a_cluster_client_without_connecting() -> None:
    client = redis_from_url("redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2/")
    assert is_cluster(client)
    assert not is_cluster(redis_from_url("redis://127.0.0.1:1/0"))


def test_cluster_urls_are_shown_with_hosts_and_without_secrets() -> None:
    assert (redact_url("rediss+cluster://u:pw@n1:7000,n2:7001/")
            == "rediss+cluster://u:***@n1:7000,n2:7001/")


COMMANDS = [
    ("EVALSHA", "a" * 40, 1, "ap:{q}:queued", "ap:{q}:", "ü", b"\x00\xff", 7, -1, 2**70),
    ("SET", "k", 0.1, "EX", 10),
    ("SET", "k", 1e20),
    ("SET", memoryview(b"view"), b"x" * 10_000),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "agentpool"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_commands_packed_in_c_are_the_bytes_redis_py_packs(command: tuple[object, ...]) -> None:
    python = b"".join(bytes(part) for part in Connection().pack_command(*command))
    packed_in_c = b"".join(_packing(Connection).pack_command(*command))
    assert packed_in_c == python


@pytest.mark.parametrize("value", [True, None, object()], ids=["bool", "none", "object"])
def test_a_value_redis_cannot_take_is_refused_as_redis_py_refuses_it(value: object) -> None:
    with pytest.raises(DataError) as by_redis_py:
        Connection().pack_command("SET", "k", value)
    with pytest.raises(DataError) as in_c:
        _packing(Connection).pack_command("SET", "k", value)
    assert str(in_c.value) == str(by_redis_py.value)


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0",
    "rediss://localhost:6380/0",
    "redis+sentinel://localhost:26379/agentpool",
])
@pytest.mark.parametrize("max_connections", [1, 100])
def test_clients_from_urls_pack_in_c(url: str, max_connections: int) -> None:
    client = redis_from_url(url, max_connections=max_connections)
    connection_class = client.connection_pool.connection_class
    assert issubclass(connection_class, LeanConnection)
    if url.startswith("rediss"):
        assert issubclass(connection_class, SSLConnection)


def test_a_sentinel_client_asks_the_sentinels_through_lean_connections() -> None:
    """redis-py's own connections write through `asyncio.wait_for`, which on Python 3.11 can
    drop the cancellation of a caller's timeout (see `TaskQueue.wait`)."""
    client = redis_from_url("redis+sentinel://localhost:26379,localhost:26380/agentpool")
    sentinels = client.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert len(sentinels) == 2
    assert all(issubclass(s.connection_pool.connection_class, LeanConnection) for s in sentinels)


def test_a_tls_cluster_client_packs_in_c() -> None:
    client = redis_from_url("rediss+cluster://127.0.0.1:1")
    node = client.startup_nodes[0]  # type: ignore[attr-defined]
    assert issubclass(node.connection_class, LeanConnection)
    assert issubclass(node.connection_class, SSLConnection)


async def test_a_cluster_client_packs_in_c_on_the_nodes_it_discovers(
    redis_cluster: RedisCluster,
) -> None:
    """Given one node, the client finds the others: their connections pack in C too."""
    one_node = redis_cluster.url.replace(
        ",".join(f"127.0.0.1:{port}" for port in redis_cluster.ports),
        f"127.0.0.1:{redis_cluster.ports[0]}")
    client = redis_from_url(one_node)
    try:
        for queue in ("a", "b", "c", "d", "e", "f"):
            await client.set(f"ap:{{{queue}}}:packed", "ü")
            assert await client.get(f"ap:{{{queue}}}:packed") == "ü".encode()
        nodes = client.get_nodes()  # type: ignore[attr-defined]
        assert len(nodes) == redis_cluster.primaries
        assert all(issubclass(node.connection_class, LeanConnection) for node in nodes)
    finally:
        await client.aclose()


async def test_a_new_cluster_clients_first_calls_at_once_are_not_redirected(
    redis_cluster: RedisCluster,
) -> None:
    """The slot map is read before the first call is routed: no call of a burst on a new
    client comes back MOVED (Redis counts redirected calls as rejected)."""
    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    for node in nodes:
        node.config_resetstat()
    client = redis_from_url(redis_cluster.url)
    try:
        queue = TaskQueue(client, "first-burst")
        await asyncio.gather(*(queue.figures() for _ in range(40)))
    finally:
        await client.aclose()
    stats = [node.info("commandstats") for node in nodes]
    assert sum(s["cmdstat_evalsha"]["calls"] for s in stats if "cmdstat_evalsha" in s) >= 40
    assert sum(entry["rejected_calls"] for s in stats for entry in s.values()) == 0


async def test_a_write_that_need_not_wait_runs_in_the_callers_task(redis_url: str) -> None:
    """redis-py's own connections start a task per write when a socket timeout is set (on
    Python 3.11); these do not, and still answer as usual. On Sentinel that holds for the
    once-a-second question to the sentinels too."""
    client = redis_from_url(redis_url, socket_timeout=5)
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def counting_factory(loop: asyncio.AbstractEventLoop,
                         coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
                         **kwargs: Any) -> asyncio.Future[Any]:
        frame = getattr(coro, "cr_frame", None)
        made.append(frame.f_locals.get("self") if frame is not None else coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await client.set("ap:{lean}:k", "v")
        loop.set_task_factory(counting_factory)
        for n in range(50):
            await client.set("ap:{lean}:k", n)
        assert await client.get("ap:{lean}:k") == b"49"
    finally:
        loop.set_task_factory(None)
        await client.aclose()
    assert made == []


async def test_a_queue_over_tls(tmp_path: Path) -> None:
    """rediss:// against a real TLS listener: a task near the payload limit goes through
    submit, claim and complete, and a command larger than the socket's buffers is sent whole."""
    with tls_redis(tmp_path) as (_, url):
        client = redis_from_url(url, socket_timeout=5)
        try:
            queue = TaskQueue(client, "tls")
            payload = "x" * 900_000
            task_id = await queue.submit(payload)
            [task] = (await queue.claim("w:1", 1, 30)).tasks
            assert (task.id, json.loads(task.payload_raw)) == (task_id, payload)
            assert await queue.complete(task, {"length": len(payload)})
            info = await queue.get(task_id)
            assert info is not None
            assert (info.state, info.result) == ("succeeded", {"length": 900_000})
            await client.set("big", b"y" * 8_000_000)
            assert await client.strlen("big") == 8_000_000
        finally:
            await client.aclose()


@pytest.mark.parametrize(("tls", "timed_out"), [
    (False, "Timeout writing to socket"),
    (True, "Timeout reading from"),
], ids=["plain", "tls"])
async def test_a_write_redis_does_not_read_times_out(tls: bool, timed_out: str,
                                                     tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) while a large command is sent: once the socket's buffers are
    full the write waits, and the socket timeout ends it. (asyncio's TLS layer takes the whole
    command into its own buffer without making the writer wait, redis-py's connections as
    these: there the read that follows times out.)"""
    with tls_redis(tmp_path) as (server, tls_url):
        # One attempt (no retry): the error is the write's own, not a retry's.
        client = redis_from_url(tls_url if tls else server.url, socket_timeout=0.5, retry=None)
        assert server.process is not None
        try:
            await client.ping()
            server.process.send_signal(signal.SIGSTOP)
            with pytest.raises(RedisTimeoutError, match=timed_out):
                async with asyncio.timeout(30):
                    await client.set("big", b"x" * 64 * 1024 * 1024)
        finally:
            server.process.send_signal(signal.SIGCONT)
            await client.aclose()


def _packing(connection_class: type[Connection]) -> LeanConnection:
    packing = type("Packing", (LeanConnection, connection_class), {})
    return packing()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("url", "options"), [
    ("rediss+sentinel://s1/svc?ssl_ca_certs=/etc/redis-tls/ca.crt",
     (("ssl_ca_certs", "/etc/redis-tls/ca.crt"),)),
    ("rediss+sentinel://s1/svc/2?sentinel_password=p&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
     "&ssl_cert_reqs=required&ssl_check_hostname=false",
     (("ssl_cert_reqs", "required"), ("ssl_certfile", "/c.pem"), ("ssl_check_hostname", False),
      ("ssl_keyfile", "/k.pem"))),
    ("rediss+cluster://n1,n2/?ssl_ca_certs=%2Fetc%2Fca.crt",
     (("ssl_ca_certs", "/etc/ca.crt"),)),
    ("rediss+cluster://n1/", ()),
])
def test_tls_options_of_sentinel_and_cluster_urls(url: str,
                                                  options: tuple[tuple[str, Any], ...]) -> None:
    parsed = parse_sentinel_url(url) if is_sentinel_url(url) else parse_cluster_url(url)
    assert parsed.tls and parsed.tls_options == options


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://s1/svc?ssl_ca_certs=/ca.crt",
     r"TLS options \(ssl_ca_certs\) need a TLS URL"),
    ("redis+cluster://n1/?ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
     r"TLS options \(ssl_certfile, ssl_keyfile\) need a TLS URL"),
    ("rediss+cluster://n1/?ssl_cert_reqs=always", "ssl_cert_reqs is none, optional or required"),
    ("rediss+sentinel://s1/svc?ssl_check_hostname=maybe", "ssl_check_hostname is true or false"),
    ("rediss+sentinel://s1/svc?ssl_ca_cert=/etc/ca.crt",
     "its query names an option 'ssl_ca_cert' that this URL does not take"),
    ("rediss+cluster://n1/?ssl_ca_certs=/ca.crt&socket_timeout=1",
     "its query names an option 'socket_timeout' that this URL does not take"),
])
def test_wrong_tls_options_are_refused_with_one_line(url: str, message: str) -> None:
    with pytest.raises(RedisURLError, match=message):
        redis_from_url(url)


def test_a_tls_option_on_a_plain_url_asks_for_rediss() -> None:
    with pytest.raises(RedisURLError, match=r"TLS options \(ssl_ca_certs\) need a TLS URL "
                                            r"\(rediss://\)"):
        check_redis_url("redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/redis-tls/ca.crt")
    with pytest.raises(RedisURLError, match=r"TLS options \(ssl\) need a TLS URL \(rediss://\)"):
        check_redis_url("redis://127.0.0.1:6379/0?ssl=true")
    for not_tls in ("ssl=false", "sslx=1"):
        with pytest.raises(RedisURLError, match="that Redis connections do not take"):
            check_redis_url(f"redis://127.0.0.1:6379/0?{not_tls}")
    with pytest.raises(RedisURLError, match=r"for TLS, the scheme says so: rediss\+sentinel://"):
        check_redis_url("redis+sentinel://127.0.0.1:26379/svc?ssl=true")
    with pytest.raises(RedisURLError, match="'bogus_option' that Redis connections do not take"):
        check_redis_url("redis://127.0.0.1:6379/0?bogus_option=1")


def test_a_sentinel_clients_data_connections_carry_the_tls_options() -> None:
    client = redis_from_url("rediss+sentinel://127.0.0.1:1/svc?ssl_ca_certs=/etc/ca.crt"
                            "&ssl_cert_reqs=optional")
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/etc/ca.crt", "optional")
    assert issubclass(client.connection_pool.connection_class, SSLConnection)


async def test_a_cluster_over_tls_with_a_private_authority(tmp_path: Path) -> None:
    """rediss+cluster:// to a TLS cluster whose certificate no system authority signed: with
    ?ssl_ca_certs the protocol runs (submit on the producer's script line, claim, complete),
    the blocking clients too; without it the certificate is refused."""
    with tls_cluster(tmp_path) as (port, cert):
        url = f"rediss+cluster://127.0.0.1:{port}/?ssl_ca_certs={cert}"
        async with Client.from_url(url) as client:
            queue = client.queue("tls")
            task_id = await queue.submit({"n": 1})
            [task] = (await queue.claim("w:1", 1, 30)).tasks
            assert task.id == task_id
            assert await queue.complete(task, "done")
        with SyncClient.from_url(url) as blocking:
            info = blocking.queue("tls").get(task_id)
            assert info is not None and info.state == "succeeded"
            assert blocking.queue("tls").submit({"n": 2})
        plain = sync_redis_from_url(url)
        try:
            assert plain.ping()
        finally:
            plain.close()
        untrusting = redis_from_url(f"rediss+cluster://127.0.0.1:{port}/")
        try:
            with pytest.raises(RedisClusterException, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.ping()
        finally:
            await untrusting.aclose()


async def test_a_connection_closed_under_a_command_fails_it_as_a_lost_connection() -> None:
    """Another task may disconnect a connection while its command waits (here: on the health
    check), as a client being closed does: the command fails as a lost connection, which
    every caller handles as a Redis failure, not with an assertion."""
    with RedisServer() as server:
        conn = _lean(Connection)(host="127.0.0.1", port=server.port, health_check_interval=1)
        await conn.connect()

        async def closed_meanwhile() -> None:
            await conn.disconnect()

        conn.check_health = closed_meanwhile  # type: ignore[method-assign]
        with pytest.raises(redis.exceptions.ConnectionError, match="closed while"):
            await conn.send_packed_command(conn.pack_command("PING"))
        await conn.disconnect()


def test_a_url_with_a_password_that_does_not_parse_is_masked_whole() -> None:
    assert redact_url("redis://:hunter2@[::1/0") == "***"


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://h:1/0?pasword=TopSecret1", "redis://h:1/0?pasword=***"),
    ("redis://h:1/0?Secret-Key=TopSecret1&db=2", "redis://h:1/0?Secret-Key=***&db=2"),
    ("redis://h:1/0?TopSecret1", "redis://h:1/0?***"),
    ("redis://h:1/0?password=Top#Secret1", "redis://h:1/0?password=***#***"),
    ("rediss+sentinel://h1/svc?sentinel_pasword=TopSecret1",
     "rediss+sentinel://h1/svc?sentinel_pasword=***"),
    ("redis://h:1/0?client_name=&db=1", "redis://h:1/0?client_name=&db=1"),
    ("redis://h:1/0?db=TopSecret1", "redis://h:1/0?db=***"),
])
def test_every_query_value_is_masked_whatever_its_option_is_called(url: str, shown: str) -> None:
    """A misspelled option is as secret as the password it was meant to be."""
    assert redact_url(url) == shown


def test_a_url_refused_for_a_misspelled_option_is_not_quoted_with_its_value() -> None:
    with pytest.raises(ClientConfigError) as caught:
        Client.from_url("redis://h:1/0?pasword=TopSecret1")
    assert "TopSecret1" not in str(caught.value)
    assert "'pasword'" in str(caught.value)


async def test_the_sentinel_that_answered_is_asked_first_next_time(
        redis_sentinel: SentinelGroup) -> None:
    """A sentinel that does not answer (here: nothing listens) comes first in the URL: once
    another one named the primary, it is asked first, so that a sentinel that accepts
    connections without answering costs one socket timeout, not one per check."""
    url = redis_sentinel.url.replace("redis+sentinel://", "redis+sentinel://127.0.0.1:1,", 1)

    def first_port(sentinels: list[Any]) -> int:
        return int(sentinels[0].connection_pool.connection_kwargs["port"])

    client = redis_from_url(url)
    try:
        await client.ping()
        assert first_port(client.connection_pool.sentinel_manager.sentinels) != 1
    finally:
        await client.aclose()
    blocking = sync_redis_from_url(url)
    try:
        blocking.ping()
        assert first_port(blocking.connection_pool.sentinel_manager.sentinels) != 1
    finally:
        blocking.close()
