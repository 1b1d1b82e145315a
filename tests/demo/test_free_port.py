"""``free_port`` chooses ports that outgoing connections cannot take in the meantime."""

from __future__ import annotations

import socket

from agentpool.redis_server import (
    CLUSTER_BUS_OFFSET,
    _bindable,
    _ephemeral_range,
    cluster_port,
    free_port,
)


def test_free_ports_lie_below_the_kernels_ephemeral_range_and_are_never_repeated() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert all(port < low for port in ports)
    assert len(set(ports)) == len(ports)


def test_a_port_listened_on_at_another_loopback_address_is_not_counted_free() -> None:
    """The operator's probe server listens on 0.0.0.0: a port taken on any one address will
    not do, though 127.0.0.1 alone would bind."""
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", port))
        listener.listen()
        assert not _bindable(port)


def test_a_port_someone_listens_on_is_not_counted_free() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not _bindable(port)
    assert _bindable(port)


def test_a_cluster_nodes_bus_port_is_below_the_range_too_and_never_handed_out() -> None:
    low, _ = _ephemeral_range()
    nodes = [cluster_port() for _ in range(20)]
    buses = {port + CLUSTER_BUS_OFFSET for port in nodes}
    assert all(bus < low for bus in buses)
    assert not buses & {free_port() for _ in range(500)}
