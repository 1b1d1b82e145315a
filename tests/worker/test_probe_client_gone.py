"""A probe or scrape client that goes away before its reply costs the worker no stderr
traceback (its log is JSON lines only); any other error in the probe server is one log line."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from agentpool_worker.probes import Health, ProbeServer


class SlowHealth(Health):
    """Liveness that waits for the test to let it answer, or fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(loop_stall_seconds=60, heartbeat_stall_seconds=60)
        self.asked = threading.Event()
        self.answer = threading.Event()
        self.fail = fail

    def liveness(self, now: float | None = None) -> tuple[bool, str]:
        self.asked.set()
        assert self.answer.wait(10)
        if self.fail:
            raise RuntimeError("liveness broke")
        return super().liveness(now)


@pytest.fixture
def health(request: pytest.FixtureRequest) -> SlowHealth:
    return SlowHealth(fail=getattr(request, "param", False))


@pytest.fixture
def served(health: SlowHealth) -> Iterator[tuple[ProbeServer, threading.Event]]:
    """The server, and an event set once it is done with a request (its error handled)."""
    server = ProbeServer(health, 0, host="127.0.0.1")
    handled = threading.Event()
    close = server._server.shutdown_request

    def shutdown_request(request: socket.socket) -> None:
        close(request)
        handled.set()

    server._server.shutdown_request = shutdown_request  # type: ignore[method-assign]
    server.start()
    yield server, handled
    health.answer.set()
    server.stop()


@pytest.mark.parametrize("how", ["closed", "reset"])
def test_a_client_gone_before_its_reply_writes_nothing(
    served: tuple[ProbeServer, threading.Event], health: SlowHealth, how: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """"closed": the reply's first write meets the closed socket, the next one a broken pipe;
    "reset": the client reset the connection (a timed-out kubelet probe), the write fails."""
    server, handled = served
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /livez HTTP/1.1\r\nHost: probe\r\n\r\n")
    assert health.asked.wait(10)
    if how == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    health.answer.set()
    assert handled.wait(10)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("health", [True], indirect=True, ids=["failing"])
def test_any_other_error_is_one_log_line_without_a_traceback(
    served: tuple[ProbeServer, threading.Event], health: SlowHealth,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server, handled = served
    health.answer.set()
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"GET /livez HTTP/1.1\r\nHost: probe\r\n\r\n")
        assert client.recv(1024) == b"", "no reply: the connection is closed"
    assert handled.wait(10)
    out, err = capfd.readouterr()
    lines = (out + err).splitlines()
    assert "Traceback" not in out + err
    assert len(lines) == 1 and "probe request failed" in lines[0], lines
    assert "RuntimeError: liveness broke" in lines[0]
