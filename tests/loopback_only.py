"""A guard under the whole suite: no socket of the test process connects
anywhere but this machine's loopback.

The tests never need the network (the fake upstream listens on loopback),
and some of them name outside addresses on purpose: the fetch-policy tests
check that the server refuses to connect to 169.254.169.254 or to a name
that resolves to it.  The policy refuses before connecting, and the tests
check that; this guard makes sure a regression there fails the test with a
clear error instead of sending a packet off the machine.  It covers this
process only: pip, uv and twistd subprocesses are pointed at loopback URLs.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class OffMachineConnection(OSError):
    """A test tried to connect somewhere other than loopback."""


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # Unix sockets, socket pairs: nothing leaves the machine
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%", 1)[0]
    if host == "localhost":
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise OffMachineConnection(f"test connection to an unresolved name {host!r} refused") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_loopback:
        raise OffMachineConnection(f"test connection to {ip} refused: tests only talk to loopback")


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
