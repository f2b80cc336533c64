"""Every use of Twisted's private internals, in one place, checked at start-up.

The fast path and zero-copy file sends go around twisted.web for speed, and
the header deadline and the upload gate look at a request before twisted.web
has built it; all four touch attributes Twisted does not promise to keep.
They are read and written only through the functions here, so a Twisted
upgrade that renames one is found in this file, and :func:`self_check` (run
once when the app is built, by ``pypicache.daemon.app.build``) probes the
running Twisted's own objects.  When something is missing it switches off the
feature that needs it and logs that once: an upgrade costs speed, never
correctness.

What each feature needs, and what happens without it:

``direct_writes``
    A TCP connection's ``socket``, ``dataBuffer``, ``offset`` and
    ``_tempDataLen``: the fast path writes a page with one ``sendmsg`` and
    sendfile waits for the headers to leave Twisted's buffer.
``producer_swap``
    A TCP connection's ``producer``, ``streamingProducer`` and
    ``producerPaused``: sendfile takes the channel's place as the producer.
``hand_over``
    A TCP connection's ``protocol``: the fast path gives a connection to
    twisted.web by replacing it.
``request_line``
    An HTTP channel's ``_command``, ``_path`` and ``_version`` while a head is
    read: uploads are recognised (bounded, credentials checked) before their
    body.  Without it every body gets the upload bound and the upload route
    checks credentials after the body.
``head_progress``
    An HTTP channel's ``_receivedHeaderSize``, ``_handlingRequest`` and its
    line buffer: the deadline for slowly trickling headers.  Without it only
    Twisted's idle timeout is left.

The fast path needs ``direct_writes`` and ``hand_over``; sendfile needs
``direct_writes`` and ``producer_swap``; the chunked copy and the ordinary
route need none of them.  The accessors read the attributes directly (one
function call on the hot paths, nothing looked up per request).
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import attrs
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

# Twisted's client module re-exports it publicly; importing that module would
# add its Agent, cookie and proxy machinery to start-up for one exception class.
try:
    from twisted.web._newclient import ResponseDone
except ImportError:  # pragma: no cover - a Twisted that moved it
    from twisted.web.client import ResponseDone

__all__ = ["ResponseDone", "Support", "support", "self_check", "BadRequestHook"]

log = Logger()


@attrs.define
class Support:
    """Which of Twisted's internals the running Twisted has (see the module docstring)."""

    direct_writes: bool = True
    producer_swap: bool = True
    hand_over: bool = True
    request_line: bool = True
    head_progress: bool = True

    @property
    def fast_path(self) -> bool:
        return self.direct_writes and self.hand_over

    @property
    def sendfile(self) -> bool:
        return self.direct_writes and self.producer_swap


#: What the accessors below may use; all on until :func:`self_check` says otherwise.
support = Support()

_TRANSPORT_NEEDS = {
    "direct_writes": ("socket", "dataBuffer", "offset", "_tempDataLen"),
    "producer_swap": ("producer", "streamingProducer", "producerPaused"),
    "hand_over": ("protocol",),
}
_logged: set[str] = set()


def _tcp_connection() -> Any:
    """A TCP connection object of the running Twisted, over a socket pair
    (never added to a reactor)."""
    ours, theirs = socket.socketpair()
    theirs.close()
    return tcp.Connection(ours, Protocol(), reactor=object())


def _probe_transport(make: Callable[[], Any]) -> dict[str, list[str]]:
    transport = make()
    try:
        return {feature: [name for name in names if not hasattr(transport, name)]
                for feature, names in _TRANSPORT_NEEDS.items()}
    finally:
        sock = getattr(transport, "socket", None)
        if sock is not None:
            sock.close()


def _http_channel_class() -> Any:
    from twisted.web.http import HTTPChannel

    return HTTPChannel


class _ProbeTransport:
    """Just enough of a transport for a channel to read a head into a request."""

    disconnecting = False

    def getPeer(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 1)

    getHost = getPeer

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Any) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    abortConnection = loseConnection


def _probe_channel(channel_class: Any) -> dict[str, list[str]]:
    """Feed a channel the start of a head and look at what it made of it."""
    channel = channel_class()
    channel.transport = _ProbeTransport()  # not connected: no timeout, no producer
    missing: dict[str, list[str]] = {"request_line": [], "head_progress": []}
    try:
        channel.dataReceived(b"POST /legacy/?probe HTTP/1.1\r\nHost: probe\r\nX-Pa")
    except Exception as e:  # a channel that cannot even be fed this way
        return {"request_line": [f"reading a head ({e!r})"], "head_progress": [f"reading a head ({e!r})"]}
    try:
        if request_line(channel) != (b"POST", b"/legacy/?probe", b"HTTP/1.1"):
            missing["request_line"].append("_command/_path/_version")
    except AttributeError as e:
        missing["request_line"].append(str(e))
    try:
        if not reading_head(channel) or handling_request(channel) or channel._buffer != b"X-Pa":
            missing["head_progress"].append("_receivedHeaderSize/_handlingRequest/_buffer")
    except AttributeError as e:
        missing["head_progress"].append(str(e))
    return missing


def self_check(transport_factory: Callable[[], Any] | None = None, channel_class: Any = None) -> Support:
    """Probe the running Twisted and set :data:`support`; log once what is off.

    ``transport_factory`` (a TCP connection by default) and ``channel_class``
    (twisted.web's HTTPChannel by default) are parameters so a test can run
    the check against objects without the attributes.
    """
    missing = _probe_transport(transport_factory or _tcp_connection)
    missing.update(_probe_channel(channel_class or _http_channel_class()))
    found = Support(**{feature: not names for feature, names in missing.items()})
    support.direct_writes = found.direct_writes
    support.producer_swap = found.producer_swap
    support.hand_over = found.hand_over
    support.request_line = found.request_line
    support.head_progress = found.head_progress
    for feature, names in missing.items():
        if names and feature not in _logged:
            _logged.add(feature)
            log.warn("this Twisted lacks {names} ({feature}): {effect}", names=", ".join(names),
                     feature=feature, effect=_EFFECT[feature])
    return found


_EFFECT = {
    "direct_writes": "the fast path and sendfile are off",
    "producer_swap": "sendfile is off; files are copied in chunks",
    "hand_over": "the fast path is off",
    "request_line": "uploads are recognised only after their body; every body gets the upload size limit",
    "head_progress": "no deadline for slow request headers beyond the idle timeout",
}


class BadRequestHook:
    """Mixin for an HTTPChannel subclass: ``bad_request()`` runs just before
    twisted.web answers ``400`` to a head (or chunked body) it cannot parse.

    Twisted does that in a private method, ``_respondToBadRequestAndDisconnect``;
    were it renamed, the hook would go uncalled and nothing else would change
    (the 400 would go uncounted in ``/metrics``)."""

    def bad_request(self) -> None:
        """Override: called once per 400 for an unparsable request."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request()
        super()._respondToBadRequestAndDisconnect()  # type: ignore[misc]


# ------------------------------------------------------------ TCP transports


def plain_tcp(transport: Any) -> Any:
    """``transport`` if it is a plain TCP connection whose socket we may use, else None."""
    if isinstance(transport, tcp.Connection) and hasattr(transport, "socket"):
        return transport
    return None


def idle_socket(transport: Any) -> Any:
    """The socket of a plain TCP connection with nothing in Twisted's write
    buffer (so bytes written to it directly keep their order), else None."""
    if isinstance(transport, tcp.Connection) and not transport.dataBuffer and not transport._tempDataLen:
        return transport.socket
    return None


def socket_of(transport: Any) -> Any:
    """A plain TCP connection's socket (see :func:`plain_tcp`)."""
    return transport.socket


def write_buffered(transport: Any) -> bool:
    """Bytes written to the connection that Twisted has not sent yet?"""
    return (len(transport.dataBuffer) - transport.offset) > 0 or transport._tempDataLen > 0


def take_producer(transport: Any) -> tuple[Any, bool]:
    """Unregister the connection's producer without telling it (it is given
    back by :func:`give_back_producer`); returns what to give back."""
    saved = (transport.producer, transport.streamingProducer)
    transport.producer = None
    return saved


def holds_producer(transport: Any, producer: Any) -> bool:
    return transport.producer is producer


def give_back_producer(transport: Any, saved: tuple[Any, bool]) -> None:
    """Undo :func:`take_producer`, once our own producer is done."""
    transport.producer = None
    producer, streaming = saved
    if producer is not None and not transport.disconnected:
        transport.registerProducer(producer, streaming)
        transport.producerPaused = False


def hand_over(transport: Any, protocol: Any) -> None:
    """Make ``protocol`` receive the connection's bytes from now on."""
    transport.protocol = protocol


def protocol_of(transport: Any, default: Any) -> Any:
    """Who receives the connection's bytes (``default`` for a transport,
    such as TLS, that does not say)."""
    return getattr(transport, "protocol", default)


# ------------------------------------------------------------ HTTP channels


def request_line(channel: Any) -> tuple[bytes, bytes, bytes] | None:
    """``(method, target, version)`` of the request whose head the channel
    is reading, or None when it cannot tell (see ``support.request_line``)."""
    if not support.request_line:
        return None
    return channel._command, channel._path, channel._version


def handling_request(channel: Any) -> bool:
    """Is the channel answering a request (rather than reading one)?"""
    return channel._handlingRequest


def reading_head(channel: Any) -> bool:
    """Has the channel received part of a request's head, and not all of it?"""
    return bool(channel.line_mode and not channel._handlingRequest and (channel._receivedHeaderSize or channel._buffer))


# ------------------------------------------------------------ systemd


def systemd_sockets() -> dict[str, int]:
    """The sockets (name -> descriptor) that Twisted's ``systemd:`` endpoint
    found inherited when it was imported (it reads and removes ``LISTEN_*``)."""
    from twisted.internet import endpoints

    return endpoints._SystemdParser._sddaemon.inheritedNamedDescriptors()
