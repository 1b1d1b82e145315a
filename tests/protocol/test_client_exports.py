"""What a web app's code meets of the Python client: the names it imports (as a type checker
reads them), what a missing URL and a payload nested too deeply say, and a client's repr."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import agentpool
import agentpool.client
from agentpool.client import Client, ClientConfigError, SyncClient
from agentpool.protocol import ProtocolError, encode_event, encode_payload
from agentpool.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXPORTED = ("Client", "ClientClosed", "RedisFull", "SyncClient", "TaskNotFound")

USER_CODE = """\
    from contextlib import closing

    from agentpool import Client, ClientClosed, RedisFull, SyncClient, TaskNotFound
    from agentpool.client import Client as AsyncClient
    from agentpool.client import ClientClosed as Closed
    from agentpool.client import RedisFull as Full
    from agentpool.client import SyncClient as Blocking
    from agentpool.client import TaskNotFound as NotFound


    def state(client: SyncClient, task_id: str) -> str:
        try:
            info = client.queue("web").get(task_id)
        except (ClientClosed, TaskNotFound, RedisFull):
            return "unknown"
        return "gone" if info is None else info.state


    def stream(client: Blocking, task_id: str) -> list[str]:
        lines: list[str] = []
        try:
            with closing(client.queue("web").events(task_id, idle=15.0)) as events:
                for event in events:
                    lines.append(": keep-alive" if event is None else f"data: {event.data}")
        except (Closed, NotFound, Full):
            pass
        return lines


    def url_of(client: Client | AsyncClient) -> str:
        return client.display_url
"""


def test_the_client_and_its_errors_import_from_both_places_under_mypy_strict(
    tmp_path: Path,
) -> None:
    """``from agentpool.client import ClientClosed`` failed ``mypy --strict`` (a name the module
    imported, not exported), and the package did not offer the client at all."""
    user = tmp_path / "user_app.py"
    user.write_text(textwrap.dedent(USER_CODE))
    config = tmp_path / "mypy.ini"
    config.write_text(textwrap.dedent(f"""\
        [mypy]
        strict = True
        mypy_path = {ROOT}

        [mypy-agentpool.*]
        follow_imports = silent
        """))  # the library as an installed package: its own findings are not the user's
    checked = subprocess.run(
        [str(Path(sys.executable).with_name("mypy")), "--config-file", str(config),
         "--cache-dir", str(tmp_path / "cache"), str(user)],
        capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in EXPORTED:
        assert name in agentpool.__all__ and name in agentpool.client.__all__
        assert getattr(agentpool, name) is getattr(agentpool.client, name)


def test_a_missing_url_names_what_a_python_caller_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library user has no ``--redis-url`` flag to pass."""
    monkeypatch.delenv("AGENTPOOL_REDIS_URL", raising=False)
    with pytest.raises(ClientConfigError) as async_error:
        Client.from_url()
    with pytest.raises(ClientConfigError) as sync_error:
        SyncClient()
    assert str(async_error.value) == (
        "no Redis URL: pass a Redis URL (Client.from_url(url)) or set AGENTPOOL_REDIS_URL")
    assert str(sync_error.value) == (
        "no Redis URL: pass a Redis URL (SyncClient(url)) or set AGENTPOOL_REDIS_URL")


def nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def test_a_payload_nested_too_deeply_is_a_protocol_error_and_nothing_is_stored(
    redis_server: RedisServer, queue_name: str,
) -> None:
    deep = nested(5000)
    with pytest.raises(ProtocolError, match="payload is nested too deeply"):
        encode_payload(deep, 1 << 20)
    with pytest.raises(ProtocolError, match="event data is nested too deeply"):
        encode_event("token", deep)
    with SyncClient(redis_server.url) as client:
        queue = client.queue(queue_name)
        with pytest.raises(ProtocolError, match="nested too deeply"):
            queue.submit(deep)
        with pytest.raises(ProtocolError, match="nested too deeply"):
            queue.submit_many([1, deep])
        assert not queue.figures().used


async def test_a_client_repr_masks_the_password(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis://:S3cret@", 1)
    client = Client.from_url(url)
    try:
        assert repr(client) == f"Client({client.display_url!r})"
        assert "S3cret" not in repr(client) and "***" in repr(client)
        assert client.url == url
    finally:
        await client.aclose()
    with SyncClient(url) as blocking:
        assert repr(blocking) == f"SyncClient({blocking.display_url!r})"
        assert "S3cret" not in repr(blocking)
