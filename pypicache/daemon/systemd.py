"""Telling systemd how the server is doing: the ``sd_notify`` protocol.

A ``Type=notify`` service sends its state as newline-separated
``KEY=value`` lines in one datagram to the Unix socket named by
``$NOTIFY_SOCKET`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``; see
sd_notify(3)).  The protocol is that one datagram, so it is written here
rather than taken from a package: libsystemd's Python binding needs the C
library and headers to build, and the small pure-Python ``sdnotify``
package is unmaintained and swallows every error.

Without ``$NOTIFY_SOCKET`` (not run by systemd, or ``Type=simple``) every
call is a no-op.  A name starting with ``@`` is in Linux's abstract
namespace.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger()


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=serving"``) to systemd.

    True if sent; False without ``$NOTIFY_SOCKET`` or when the send failed
    (logged: systemd's service state is then wrong, the server still works).
    The datagram is small and the socket local, so the send does not block.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as e:
        log.warn("cannot tell systemd {lines!r} through NOTIFY_SOCKET: {error}", lines=lines, error=e)
        return False
    return True
