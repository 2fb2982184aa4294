"""The suite's own helpers, where a fault would show as a rare flake elsewhere."""

from __future__ import annotations

import socket

from conftest import free_port, free_ports


def test_free_ports_are_never_handed_out_twice_in_a_session():
    first = free_ports(40)
    later = [free_port() for _ in range(40)]
    assert len(set(first + later)) == 80
    with socket.socket() as probe:  # and free: each can be bound
        probe.bind(("127.0.0.1", later[-1]))
