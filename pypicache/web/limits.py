"""Connection limits: what a slow or greedy client can hold of the server.

* Connections are capped in total and per client address
  (``[server] max_connections``, ``max_connections_per_client``): one over
  the cap is answered ``503`` with ``Retry-After`` and closed at once.
* A request's headers must be complete within ``[server] header_timeout``
  seconds of their first byte, however steadily they trickle in (a client
  sending one byte every few seconds defeats an idle timeout); then ``408``
  and the connection is closed.
* A request body must keep up ``[server] min_body_rate`` bytes per second,
  measured over windows of ``header_timeout`` seconds; then ``408``.

:class:`ConnectionLimits` wraps whatever the listeners serve (the fast path
in front of the Site, or the Site) without getting between the inner protocol
and its transport: the fast path still writes to the socket itself.  It
follows the fast path's hand-over of a connection to twisted.web, and times
the headers while the fast path reads them; once twisted.web has a
connection, :class:`LimitedChannel` (the Site's protocol) times them.

None of these answers reaches the Site's access log or request counters, so
each is counted here by reason into the app's Traffic
(:data:`pypicache.services.traffic.REFUSALS`, ``pypicache_http_refused_total``),
as are the ``400`` answers twisted.web gives heads it cannot parse.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from pypicache import _twisted

log = Logger()

HEAD_END = b"\r\n\r\n"


def _answer(transport: Any, status: bytes, message: bytes, extra: bytes = b"") -> None:
    """A whole plain-text answer, then hang up (nothing more is read)."""
    body = message + b"\n"
    transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n" + extra
                    + b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    transport.loseConnection()


def _too_slow(transport: Any, what: bytes) -> None:
    _answer(transport, b"408 Request Timeout", what)


def _count(traffic: Any, reason: str) -> None:
    """One refusal for ``/metrics`` (a dict increment), if the app counts."""
    if traffic is not None:
        traffic.refused(reason)


class _Refuse(protocol.Protocol):
    """A connection over the caps: 503 at once, and closed."""

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        _answer(self.transport, b"503 Service Unavailable", self.message, b"Retry-After: 5\r\n")


class _Guard(protocol.Protocol):
    """One counted connection: passes everything to the inner protocol, with
    the transport handed to it directly."""

    def __init__(self, factory: ConnectionLimits, inner: Any, host: str | None) -> None:
        self.factory = factory
        self.inner = inner
        self.host = host
        # Timing heads here only while the fast path reads the connection:
        # it never takes a body, so a head is whatever follows the last blank line.
        self._fast = factory.fast_path
        self._tail = b""  # the end of an unfinished head (a terminator may straddle two reads)
        self._deadline: Any = None
        #: Has a byte arrived?  A connection that has not sent its first
        #: request yet is not idle for the shutdown drain (pypicache.web.draining).
        self.used = False

    def connectionMade(self) -> None:
        self.factory._opened(self)
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.used = True
        self.inner.dataReceived(data)
        transport = self.transport
        if not self._fast:
            return
        handed = _twisted.protocol_of(transport, self)  # (a TLS transport has none until the hand-over)
        if handed is not self:
            # The fast path gave the connection to twisted.web, whose channel
            # times its own headers: keep counting, stop timing.
            self.inner = handed
            _twisted.hand_over(transport, self)
            self._fast = False
            self._cancel()
            return
        if not self._tail and data.endswith(HEAD_END):  # the usual case: whole requests
            self._cancel()
            return
        joined = self._tail + data if self._tail else data
        end = joined.rfind(HEAD_END)
        pending = end < 0 or end + 4 < len(joined)
        self._tail = joined[-3:] if pending else b""
        if pending and self._deadline is None:
            self._deadline = self.factory.clock.callLater(self.factory.header_timeout, self._head_too_slow)
        elif not pending:
            self._cancel()

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._fast and self.transport is not None:
            log.info("closing a connection from {client}: headers not complete after {timeout} s",
                     client=self.host, timeout=self.factory.header_timeout)
            _count(self.factory.traffic, "header_timeout")
            _too_slow(self.transport, b"request headers too slow")

    def _cancel(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel()
        self.factory._closed(self)
        self.inner.connectionLost(reason)


class ConnectionLimits(protocol.Factory):
    """Wraps the factory listeners serve; see the module docstring.

    ``live`` holds every open connection; ``reap_idle`` is the inner
    factory's, if it has one.  ``traffic`` (a
    :class:`~pypicache.services.traffic.Traffic`, or None) counts refusals.
    """

    noisy = False

    def __init__(self, inner: Any, clock: Any, *, max_connections: int, max_per_client: int,
                 header_timeout: float, fast_path: bool, traffic: Any = None) -> None:
        self.inner = inner
        self.traffic = traffic
        self.fast_path = fast_path  # inner is the fast path (else the Site, which times its own heads)
        self.clock = clock
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.header_timeout = header_timeout
        self.live: set[_Guard] = set()
        self.per_client: dict[str | None, int] = {}
        if hasattr(inner, "reap_idle"):
            self.reap_idle = inner.reap_idle

    def __getattr__(self, name: str) -> Any:
        # What callers read from the inner factory (site, views, connections...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", None)
        if len(self.live) >= self.max_connections:
            log.warn("refusing a connection from {client}: {n} connections open (server.max_connections)",
                     client=host, n=len(self.live))
            _count(self.traffic, "connection_cap")
            return _Refuse(b"too many connections to this server: retry shortly")
        if host is not None and self.per_client.get(host, 0) >= self.max_per_client:
            _count(self.traffic, "client_cap")
            return _Refuse(b"too many connections from your address: retry shortly")
        inner = self.inner.buildProtocol(addr)
        if inner is None:
            return None
        return _Guard(self, inner, host)

    def _opened(self, guard: _Guard) -> None:
        self.live.add(guard)
        self.per_client[guard.host] = self.per_client.get(guard.host, 0) + 1

    def _closed(self, guard: _Guard) -> None:
        if guard not in self.live:
            return
        self.live.discard(guard)
        left = self.per_client.get(guard.host, 1) - 1
        if left:
            self.per_client[guard.host] = left
        else:
            self.per_client.pop(guard.host, None)

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()


class LimitedChannel(_twisted.BadRequestHook, HTTPChannel):
    """twisted.web's channel with a deadline for each request's headers and
    a minimum body rate (the Site's ``header_timeout`` and ``min_body_rate``;
    either None turns its check off).

    The idle timeout (``timeOut``) is reset by every byte, so alone it lets
    a client hold a connection forever with one header byte a minute.
    Both checks read the channel's progress through pypicache._twisted and
    are off on a Twisted without it (``support.head_progress``).
    """

    _deadline: Any = None
    _body_watch: Any = None
    _body_bytes = 0

    def _limits(self) -> tuple[float | None, float | None]:
        site = getattr(self, "site", None)
        return getattr(site, "header_timeout", None), getattr(site, "min_body_rate", None)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # Still reading a head (a line begun, or lines of it received) when
        # not busy answering one: the deadline runs from this first byte.
        if self._deadline is None and _twisted.support.head_progress and _twisted.reading_head(self) \
                and self.transport is not None and not self.transport.disconnecting:
            timeout = self._limits()[0]
            if timeout:
                self._deadline = self.callLater(timeout, self._head_too_slow)

    def allHeadersReceived(self) -> None:
        self._cancel_deadline()
        super().allHeadersReceived()
        timeout, rate = self._limits()
        if self.length != 0 and timeout and rate and self._body_watch is None and _twisted.support.head_progress:
            self._body_bytes = 0
            self._body_watch = self.callLater(timeout, self._check_body_rate, timeout, rate)

    def rawDataReceived(self, data: bytes) -> None:
        if self._body_watch is not None and not _twisted.handling_request(self):
            self._body_bytes += len(data)
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_body_watch()
        super().allContentReceived()

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None and not _twisted.handling_request(self):
            log.info("closing a connection from {client}: headers not complete in time",
                     client=str(self.transport.getPeer()))
            _count(getattr(self.site, "traffic", None), "header_timeout")
            _too_slow(self.transport, b"request headers too slow")

    def _check_body_rate(self, window: float, rate: float) -> None:
        self._body_watch = None
        if self.transport is None or _twisted.handling_request(self):
            return
        received, self._body_bytes = self._body_bytes, 0
        # An upload whose credentials are being checked is paused by us.
        paused = self.requests and getattr(self.requests[-1], "_checking", False)
        if received < rate * window and not paused:
            log.info("closing a connection from {client}: request body slower than {rate} bytes/s",
                     client=str(self.transport.getPeer()), rate=rate)
            _count(getattr(self.site, "traffic", None), "body_rate")
            _too_slow(self.transport, b"request body too slow")
            return
        self._body_watch = self.callLater(window, self._check_body_rate, window, rate)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _cancel_body_watch(self) -> None:
        if self._body_watch is not None:
            if self._body_watch.active():
                self._body_watch.cancel()
            self._body_watch = None

    def bad_request(self) -> None:
        """twisted.web's ``400`` for a head it cannot parse, counted
        (the hook is in pypicache._twisted: the method it wraps is private)."""
        _count(getattr(getattr(self, "site", None), "traffic", None), "bad_request")

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """Also no keep-alive once the server shuts down (pypicache.web.draining)."""
        if getattr(self.site, "draining", False):
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        self._cancel_body_watch()
        super().connectionLost(reason)
