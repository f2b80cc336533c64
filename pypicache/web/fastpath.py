"""A fast path for the hottest request: a fresh, already rendered index page.

pip revalidates every page on every install and CI fans out, so
``GET /simple/<project>/`` dominates a busy server's load.  twisted.web spends
most of its time per request on generic work (parsing each header line into
objects, building a Request, copying large bodies into its write buffer).
This protocol sits in front of it on every connection:

* it parses requests itself, and answers only a request whose every line one
  precompiled regex validates (see ``_HEAD``): anything twisted.web would
  read differently or refuse is handed over untouched;
* a ``GET``/``HEAD`` of ``/simple/<name>/`` or ``/local/simple/<name>/`` that
  memory can answer right now (fresh record, rendered page, see
  ``SimpleIndex.fast_page``) is answered directly, headers and body in one
  ``sendmsg`` without copying the body;
* anything else — another route, a body, a query string, an odd header, a page
  that needs the upstream — hands the connection over to the ordinary
  twisted.web channel, with the bytes received so far, for good.

So the fast path can only ever answer what the ordinary route would answer
from the same state (tests/test_fastpath.py compares them), and everything it
does not understand gets the full, strict twisted.web treatment.  Reading a
request differently from twisted.web would be request smuggling (a body run as
a second request), so tests/test_fastpath_differential.py sends a corpus of odd
requests to both routes and checks they see the same requests.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from typing import Any, Callable

from twisted.internet import protocol
from twisted.logger import Logger

from pypicache import _twisted
from pypicache.services.traffic import Traffic

log = Logger()

#: twisted.web's limits (HTTPChannel.totalHeadersSize, maxHeaders): a request
#: beyond either is twisted.web's to refuse, never the fast path's to answer.
MAX_HEAD = 16 * 1024
MAX_HEADERS = 500
_TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"  # RFC 9110 5.6.2
_FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"  # no NUL, CR, LF or other control bytes
#: The whole head of a request the fast path may answer, request line to last
#: header line: a ``GET``/``HEAD`` of a normalised page URL over HTTP/1.1, then
#: at most MAX_HEADERS lines each ``token ":" value`` ending in CRLF.  Matched
#: against the head as a whole, so a bare CR or LF, a NUL, a space or control
#: byte in a name, an empty name, obs-fold or one line too many is a mismatch:
#: the request goes to twisted.web with every byte as received.  No two
#: alternatives overlap (a value never holds CR, a name never holds ":"), so
#: matching is linear in the head's length.
_HEAD = re.compile(rb"(GET|HEAD) /(local/)?simple/([a-z0-9]+(?:-[a-z0-9]+)*)/ HTTP/1\.1"
                   rb"(?:\r\n" + _TCHAR + rb"+:" + _FIELD_VALUE + rb"){0,%d}" % MAX_HEADERS)
#: Headers the fast path reads, or which (repeated) make it hand over.
_WANTED = {b"accept", b"accept-encoding", b"if-none-match", b"connection", b"content-length",
           b"transfer-encoding", b"expect", b"upgrade", b"authorization", b"host"}
#: Connection values whose meaning is plain (twisted.web reads a list oddly).
_CONNECTION = {b"": False, b"keep-alive": False, b"close": True}
_REASONS = {200: b"OK", 304: b"Not Modified", 404: b"Not Found"}


class _DateCache:
    """The Date header, formatted once per second (it costs more than the rest).

    Reads ``clock`` (an IReactorTime: the reactor, or a ``task.Clock`` in
    tests), so the fast path's Date agrees with twisted.web's, which reads
    the reactor's time too.
    """

    def __init__(self, clock: Any) -> None:
        self._seconds = clock.seconds
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(self._seconds())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


class FastHTTP(protocol.Protocol):
    """Answers fast-path requests; hands everything else to twisted.web."""

    def __init__(self, factory: "FastPathFactory", addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self._buffer = b""
        self._handed_over = False

    def connectionMade(self) -> None:
        # Nagle's algorithm would hold a response's last partial segment (a
        # METADATA body sent with sendfile after its headers, say) until the
        # client ACKs the headers, and clients delay that ACK by up to 40 ms.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:  # not a TCP socket after all (or already gone)
                pass
        self.factory.connections += 1
        self.factory.live.add(self)
        self.last_activity = time.monotonic()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.live.discard(self)

    def dataReceived(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        buf = self._buffer + data if self._buffer else data
        while buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # A request line the fast path will not answer goes over now:
                # twisted.web may refuse it without waiting for the headers.
                if len(buf) > MAX_HEAD or (b"\r\n" in buf and _HEAD.match(buf) is None):
                    return self._hand_over(buf)
                self._buffer = buf
                return
            answer = self._answer(buf[:end]) if end <= MAX_HEAD else None
            if answer is None:
                return self._hand_over(buf)
            keep_alive, parts = answer
            self._send(parts)
            buf = buf[end + 4:]
            if not keep_alive:
                self._buffer = b""
                self.transport.loseConnection()
                return
        self._buffer = b""

    def _answer(self, head: bytes) -> tuple[bool, list[bytes]] | None:
        """The answer to the request whose head (without its final CRLFCRLF)
        is ``head``, or None to hand it to twisted.web."""
        m = _HEAD.fullmatch(head)
        if m is None:
            return None
        method = m.group(1)
        headers: dict[bytes, bytes] = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name in _WANTED:
                if name in headers:
                    return None  # repeated: let the strict parser decide
                headers[name] = value.strip()
        if (b"content-length" in headers and headers[b"content-length"] != b"0") or b"transfer-encoding" in headers \
                or b"expect" in headers or b"upgrade" in headers:
            return None
        if b"authorization" in headers or self.factory.read_gate_on():
            return None
        close = _CONNECTION.get(headers.get(b"connection", b"").lower())
        if close is None:
            return None
        close = close or self.factory.draining  # shutting down: this answer is the connection's last
        local = m.group(2) is not None
        view = self.factory.views[1 if local else 0]
        found = view.fast_page(m.group(3).decode("ascii"), headers.get(b"accept"), headers.get(b"accept-encoding"),
                               headers.get(b"if-none-match"))
        if found is None:
            return None
        status, response_headers, body = found
        out = [b"HTTP/1.1 ", str(status).encode(), b" ", _REASONS[status], b"\r\nServer: pypicache\r\nDate: ",
               self.factory.dates.get(), b"\r\n"]
        for name, value in response_headers:
            out += (name, b": ", value, b"\r\n")
        if status != 304:
            out += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        if close:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        parts = [b"".join(out)]
        if status != 304 and method == b"GET" and body:
            parts.append(body)
        # A dict increment and a bisect (pypicache.services.traffic), read at scrape time.
        self.factory.traffic.request("local_page" if local else "simple_page", status,
                                     time.monotonic() - self.last_activity)
        return not close, parts

    def _send(self, parts: list[bytes]) -> None:
        t = self.transport
        sock = _twisted.idle_socket(t)
        if sock is not None:
            try:
                sent = sock.sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                t.abortConnection()
                return
            for part in parts:
                if sent >= len(part):
                    sent -= len(part)
                    continue
                t.write(part[sent:] if sent else part)
                sent = 0
            return
        for part in parts:
            t.write(part)

    def _hand_over(self, buf: bytes) -> None:
        """Give the connection (and what was read) to twisted.web for good."""
        self._handed_over = True
        self._buffer = b""
        self.factory.live.discard(self)
        channel = self.factory.site.buildProtocol(self.addr)
        transport = self.transport
        _twisted.hand_over(transport, channel)
        channel.makeConnection(transport)
        if buf:
            channel.dataReceived(buf)


class FastPathFactory(protocol.Factory):
    """Wraps a twisted.web Site: its connections start on the fast path.

    ``clock`` (the reactor) dates the answers; ``traffic`` counts them
    (the Site's, so ``/metrics`` shows both paths as one).
    """

    def __init__(self, site: Any, views: tuple[Any, Any], read_gate_on: Callable[[], bool], *,
                 clock: Any, idle_timeout: float = 120.0, traffic: Traffic | None = None) -> None:
        self.site = site
        self.traffic = traffic if traffic is not None else Traffic()
        self.dates = _DateCache(clock)
        self.views = views  # (proxy view, local view): SimpleIndex resources
        self.read_gate_on = read_gate_on
        self.idle_timeout = idle_timeout
        self.connections = 0
        self.live: set[FastHTTP] = set()
        #: Set when the server shuts down (pypicache.web.draining): answers close their connection.
        self.draining = False

    def buildProtocol(self, addr: Any) -> FastHTTP:
        return FastHTTP(self, addr)

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def reap_idle(self) -> None:
        """Close fast-path connections idle for longer than ``idle_timeout``
        (handed-over ones are twisted.web's, which times them out itself)."""
        limit = time.monotonic() - self.idle_timeout
        for proto in [p for p in self.live if p.last_activity < limit]:
            proto.transport.loseConnection()

