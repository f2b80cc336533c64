"""The suite's guard against connections off this machine (tests/loopback_only.py)."""

from __future__ import annotations

import socket

import pytest

from tests.loopback_only import OffMachineConnection


@pytest.mark.parametrize("address", [("169.254.169.254", 80), ("10.0.0.1", 80), ("::ffff:192.0.2.1", 80)])
def test_connections_off_the_machine_are_refused_before_a_packet(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(OffMachineConnection):
            sock.connect(address)
        with pytest.raises(OffMachineConnection):
            sock.connect_ex(address)


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
