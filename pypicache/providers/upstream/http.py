"""A lean HTTP/1.1 client for talking to the upstream: GET, keep-alive, a pool.

Why not ``twisted.web.client.Agent`` (with treq on top)?  A cold install asks
the upstream for about 90 pages, METADATA files and wheels within half a
second, and the reactor thread is the bottleneck: profiles of a cold ``uv pip
install`` put a quarter of its busy time in *issuing* requests through
treq's cookie agent, the content-decoder agent, ``URI.fromBytes``, the pool
and endpoint lookups, and another quarter in Twisted's line-based response
parser (docs/performance.md).  The upstream needs none of that generality:
one method, no request bodies, no cookies, responses framed by
Content-Length, chunking or close.

What this keeps from Twisted's client, because the callers rely on it:

* a response object with ``code``, ``headers.getRawHeaders(name)``,
  ``length`` (``UNKNOWN_LENGTH`` when not announced) and ``deliverBody(p)``,
  whose protocol sees ``makeConnection(t)`` (``t.stopProducing()`` drops the
  connection), ``dataReceived`` and ``connectionLost`` with ``ResponseDone``
  for a complete body, ``PotentialDataLoss`` for a close-delimited one, and
  the connection's own reason when a framed body breaks off;
* bytes past a response's end never reach its reader nor the next response
  (the connection is dropped instead of reused);
* a pooled connection that the upstream closed while idle costs a retry on a
  new connection, not an error (only when no byte of the answer came back:
  every request here is a GET, so sending it again is safe);
* cancelling the Deferred of a request aborts its connection attempt or its
  connection; gzip-encoded pages are decoded when asked for (every member),
  with the reader's size cap applying to the decoded bytes and
  ``max_wire_bytes`` to the encoded ones.

What it refuses, at least as strictly as h11 (a :class:`BadResponse`, the
connection dropped): a status line other than ``HTTP/1.[01] NNN reason``, a
status outside 100-599 or an unasked-for 101, a header name that is no token,
a header or trailer value with a control character (CR, LF, NUL: what would
otherwise travel back to the upstream in ``If-None-Match``), a Content-Length
that is no number of at most 18 digits, a malformed chunk line.  A response
that is HTTP/1.0, or carries both Content-Length and Transfer-Encoding (RFC
9112 6.3: the chunking wins), is read and its connection closed, never
pooled.  Checks are precompiled regexes over whole lines: no per-byte Python.
"""

from __future__ import annotations

import re
import time
import zlib
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from pypicache._twisted import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from pypicache.providers.upstream.connect import connect_checked

__all__ = ["BadResponse", "ConnectionPool", "Headers", "Response"]

#: Limits on what the upstream may send before the body.
MAX_HEAD = 64 * 1024
MAX_HEADERS = 256
MAX_CHUNK_LINE = 4096
#: Content-Length digits: 10**18 bytes is more than any body; int() of a
#: 5,000-digit number raises (and would cost quadratic time before that).
MAX_LENGTH_DIGITS = 18
#: ``HTTP/1.x NNN reason``; the reason may be empty, with or without its space.
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
#: ``name: value``: a token (RFC 9110 5.1), then visible characters, spaces,
#: tabs and obs-text; never CR, LF, NUL or another control character.
_FIELD = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*"
_FIELD_LINE = re.compile(_FIELD)
#: Every field line of a head, each after its CRLF: one match for the block.
_FIELD_LINES = re.compile(rb"(?:\r\n" + _FIELD + rb")*")
#: A chunk-size line: hex digits, optional whitespace, optional extensions.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
#: Slices of decoded gzip handed to the reader at a time (memory per step).
_GZIP_SLICE = 256 * 1024
_NO_BODY = frozenset({204, 304})


class BadResponse(Exception):
    """The upstream's answer is not HTTP/1.x as we can read it."""


class Headers:
    """Response headers by lower-case name, in the order received."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[bytes, list[bytes]]) -> None:
        self._values = values

    def getRawHeaders(self, name: bytes, default: Any = None) -> list[bytes] | Any:
        return self._values.get(name.lower(), default)

    def hasHeader(self, name: bytes) -> bool:
        return name.lower() in self._values


class _BodyTransport:
    """What a body's protocol sees as its transport."""

    __slots__ = ("_connection", "_response")

    def __init__(self, connection: "_Connection", response: "Response") -> None:
        self._connection = connection
        self._response = response

    def stopProducing(self) -> None:
        # Once the body is complete the connection may already serve the
        # next request: dropping it then would break someone else's answer.
        if not self._response.complete:
            self._connection.drop()

    def pauseProducing(self) -> None:
        if self._connection.transport is not None:
            self._connection.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._connection.transport is not None:
            self._connection.transport.resumeProducing()


class Response:
    """Status and headers of one answer; the body follows via :meth:`deliverBody`."""

    __slots__ = ("code", "phrase", "headers", "length", "complete", "_connection", "_protocol", "_pending",
                 "_ended", "_decode", "_max_wire")

    def __init__(self, connection: "_Connection", code: int, phrase: bytes, headers: Headers,
                 length: int | Any, decode: bool, max_wire: int | None = None) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        #: The connection is done with this body (whole, broken or dropped).
        self.complete = False
        self._connection = connection
        self._protocol: Any = None
        self._pending: list[bytes] = []
        self._ended: Failure | None = None
        self._decode = decode
        self._max_wire = max_wire

    def deliverBody(self, protocol: Any) -> None:
        if self._protocol is not None:
            raise RuntimeError("body already delivered")
        if self._decode:
            protocol = _GzipDecoder(protocol, self._max_wire)
        self._protocol = protocol
        protocol.makeConnection(_BodyTransport(self._connection, self))
        pending, self._pending = self._pending, []
        for data in pending:
            if self._protocol is None:
                break
            protocol.dataReceived(data)
        if self._ended is not None:
            self._end(self._ended)
        else:
            self._connection.resume_after_buffering()

    # -- for the connection
    def _data(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            # Nobody reads yet: keep it, and stop reading the socket so an
            # unread body cannot fill memory.
            self._pending.append(data)
            self._connection.pause_for_buffering()

    def _end(self, reason: Failure) -> None:
        self.complete = True
        if self._protocol is None:
            self._ended = reason
            return
        protocol, self._protocol = self._protocol, None
        protocol.connectionLost(reason)


class _GzipDecoder:
    """Decodes a gzip body for the protocol it wraps (Content-Encoding: gzip).

    Every member is decoded (RFC 1952 2.2: a gzip file is a series of them);
    anything after a member that is not another member fails the body, rather
    than piling up in zlib's ``unused_data`` (copied on every call) or being
    dropped while the page is taken as whole.  The encoded bytes are counted
    against ``max_wire``: members that decode to nothing never reach the
    reader's own count.
    """

    def __init__(self, inner: Any, max_wire: int | None = None) -> None:
        self._inner = inner
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._transport: Any = None
        self._stopped = False
        self._max_wire = max_wire
        self._wire = 0

    def makeConnection(self, transport: Any) -> None:
        self._transport = transport
        self._inner.makeConnection(self)

    # the inner protocol's transport
    def stopProducing(self) -> None:
        self._stopped = True
        self._transport.stopProducing()

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        self._wire += len(data)
        if self._max_wire is not None and self._wire > self._max_wire:
            self._fail(f"gzip body larger than {self._max_wire} bytes on the wire")
            return
        try:
            z = self._zlib
            out = z.decompress(data, _GZIP_SLICE)
            while True:
                if out:
                    self._inner.dataReceived(out)
                if self._stopped:
                    return
                if z.unconsumed_tail:
                    out = z.decompress(z.unconsumed_tail, _GZIP_SLICE)
                elif z.eof and z.unused_data:  # the next member
                    rest = z.unused_data
                    z = self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    out = z.decompress(rest, _GZIP_SLICE)
                else:
                    return
        except zlib.error as e:
            self._fail(f"bad gzip body: {e}")

    def _fail(self, why: str) -> None:
        self.stopProducing()
        self._inner.connectionLost(Failure(BadResponse(why)))

    def connectionLost(self, reason: Failure) -> None:
        if self._stopped:
            self._inner.connectionLost(reason)
            return
        if reason.check(ResponseDone):
            try:
                rest = self._zlib.flush()
            except zlib.error as e:
                reason = Failure(BadResponse(f"bad gzip body: {e}"))
            else:
                if rest:
                    self._inner.dataReceived(rest)
                if not self._zlib.eof:
                    reason = Failure(BadResponse("gzip body ends early"))
        self._inner.connectionLost(reason)


class _Exchange:
    """One request, across at most two connection attempts."""

    __slots__ = ("key", "head", "decode", "max_wire", "d", "connection", "connecting", "retried")

    def __init__(self, key: tuple[str, str, int], head: bytes, decode: bool,
                 max_wire: int | None = None) -> None:
        self.key = key
        self.head = head
        self.decode = decode
        self.max_wire = max_wire
        self.d: Deferred[Response] = Deferred(self._cancel)
        self.connection: _Connection | None = None
        self.connecting: Deferred[Any] | None = None
        self.retried = False

    def _cancel(self, _: Deferred) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.connection is not None:
            self.connection.drop()

    def fail(self, reason: Any) -> None:
        if not self.d.called:
            self.d.errback(reason)


# Parser states
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DEAD = range(9)


class _Connection(Protocol):
    """One upstream connection: one request at a time, kept alive when it can."""

    def __init__(self, pool: "ConnectionPool", key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.state = _IDLE
        self.exchange: _Exchange | None = None
        self.response: Response | None = None
        self.idle_since = 0.0
        self._buffer = b""
        self._remaining = 0
        self._trailers = 0
        self._persistent = False
        self._got_bytes = False
        self._reused = False
        self._paused = False
        self.lost: Deferred[None] | None = None

    # -- requests
    def send(self, exchange: _Exchange, reused: bool) -> None:
        self.exchange = exchange
        exchange.connection = self
        exchange.connecting = None
        self.state = _HEAD
        self._reused = reused
        self._got_bytes = False
        self._buffer = b""
        self.transport.write(exchange.head)

    def drop(self) -> None:
        """Abort: the connection is never reused."""
        if self.state != _DEAD:
            self.state = _DEAD
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.abortConnection()

    def pause_for_buffering(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()

    def resume_after_buffering(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()

    # -- parsing
    def dataReceived(self, data: bytes) -> None:
        self._got_bytes = True
        state = self.state
        if state == _LENGTH and not self._buffer:
            # The common case, a chunk of a framed body: no copies.
            n = len(data)
            if n < self._remaining:
                self._remaining -= n
                self.response._data(data)  # type: ignore[union-attr]
                return
        elif state == _UNTIL_CLOSE:
            self.response._data(data)  # type: ignore[union-attr]
            return
        elif state == _IDLE or state == _DEAD:
            if state == _IDLE:  # nobody asked: not HTTP as we know it
                self.drop()
            return
        self._buffer = self._buffer + data if self._buffer else data
        try:
            self._parse()
        except BadResponse as e:
            self._broken(e)

    def _parse(self) -> None:
        while self._buffer and self.state not in (_IDLE, _DEAD):
            state = self.state
            buf = self._buffer
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0 or end > MAX_HEAD:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("response head too large")
                    return
                self._buffer = buf[end + 4:]
                self._head(buf[:end])
            elif state == _LENGTH:
                n = min(len(buf), self._remaining)
                self._remaining -= n
                self._buffer = buf[n:]
                self.response._data(buf[:n] if n < len(buf) else buf)  # type: ignore[union-attr]
                if self._remaining == 0:
                    self._body_done()
            elif state == _CHUNK_SIZE or state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise BadResponse("chunk size line too long")
                    return
                line, self._buffer = buf[:end], buf[end + 2:]
                if state == _TRAILER:
                    if not line:
                        self._body_done()
                        continue
                    self._trailers += 1
                    if self._trailers > MAX_HEADERS or _FIELD_LINE.fullmatch(line) is None:
                        raise BadResponse(f"bad trailer line {line[:80]!r}")
                    continue
                chunk = _CHUNK_LINE.fullmatch(line)
                if chunk is None:
                    raise BadResponse(f"bad chunk size line {line[:40]!r}")
                self._remaining = int(chunk[1], 16)
                if self._remaining:
                    self.state = _CHUNK_DATA
                else:
                    self.state = _TRAILER
                    self._trailers = 0
            elif state == _CHUNK_DATA:
                n = min(len(buf), self._remaining)
                self._remaining -= n
                self._buffer = buf[n:]
                self.response._data(buf[:n] if n < len(buf) else buf)  # type: ignore[union-attr]
                if self._remaining == 0:
                    self.state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                self._buffer = buf[2:]
                self.state = _CHUNK_SIZE
            else:  # _UNTIL_CLOSE
                self._buffer = b""
                self.response._data(buf)  # type: ignore[union-attr]

    def _head(self, head: bytes) -> None:
        first = head.find(b"\r\n")
        if first < 0:
            first = len(head)
        status = _STATUS_LINE.fullmatch(head, 0, first)
        if status is None:
            raise BadResponse(f"bad status line {head[:min(first, 80)]!r}")
        code = int(status[2])
        if code < 100 or code > 599 or code == 101:  # we never ask to switch protocols
            raise BadResponse(f"unexpected status {code}")
        lines = head.split(b"\r\n")
        if len(lines) > MAX_HEADERS + 1:
            raise BadResponse("too many headers")
        if _FIELD_LINES.fullmatch(head, first) is None:
            bad = next(line for line in lines[1:] if _FIELD_LINE.fullmatch(line) is None)
            raise BadResponse(f"bad header line {bad[:80]!r}")
        values: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            values.setdefault(name.lower(), []).append(value.strip(b" \t"))
        if code < 200:  # 100 Continue and friends: the real answer follows
            return
        # HTTP/1.0 keep-alive is a pre-standard extension h11 does not keep either.
        self._persistent = status[1] == b"1" and b"close" not in b",".join(values.get(b"connection", ())).lower()
        exchange = self.exchange
        decode = exchange is not None and exchange.decode and \
            b",".join(values.get(b"content-encoding", ())).strip().lower() == b"gzip"
        encoding = b",".join(values.get(b"transfer-encoding", ())).lower()
        lengths = values.get(b"content-length")
        length: Any = UNKNOWN_LENGTH
        if code in _NO_BODY:
            self.state = _LENGTH
            self._remaining = 0
            length = 0
        elif encoding:
            if encoding.strip() != b"chunked":
                raise BadResponse(f"unsupported transfer-encoding {encoding[:40]!r}")
            self.state = _CHUNK_SIZE
            if lengths is not None:  # RFC 9112 6.3: chunking wins, then close
                self._persistent = False
        elif lengths is not None:
            if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > MAX_LENGTH_DIGITS:
                raise BadResponse(f"bad content-length {lengths[0][:40]!r}")
            length = self._remaining = int(lengths[0])
            self.state = _LENGTH
        else:
            self.state = _UNTIL_CLOSE
            self._persistent = False
        self.response = Response(self, code, status[3] or b"", Headers(values),
                                 UNKNOWN_LENGTH if decode else length, decode,
                                 exchange.max_wire if exchange is not None else None)
        if exchange is not None:
            self.exchange = None
            if not exchange.d.called:
                exchange.d.callback(self.response)
        if self.state == _LENGTH and self._remaining == 0:
            self._body_done()

    def _body_done(self) -> None:
        response, self.response = self.response, None
        keep = self._persistent and not self._buffer and self.state != _DEAD
        self.resume_after_buffering()
        if response is not None:
            response.complete = True  # from now on its reader cannot drop us
        # Back to the pool before the reader hears of the end: what its
        # callbacks ask for next may then reuse this very connection.
        if keep:
            self.state = _IDLE
            self._buffer = b""
            self.pool._release(self)
        else:
            self.state = _DEAD
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.loseConnection()
        if response is not None:
            response._end(Failure(ResponseDone()))

    def _broken(self, error: Exception) -> None:
        response, exchange = self.response, self.exchange
        self.response = self.exchange = None
        self.drop()
        if exchange is not None:
            exchange.fail(error)
        if response is not None:
            response._end(Failure(error))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        state, self.state = self.state, _DEAD
        self.pool._forget(self)
        response, exchange = self.response, self.exchange
        self.response = self.exchange = None
        if exchange is not None and not exchange.d.called:
            if self._reused and not self._got_bytes and not exchange.retried:
                exchange.retried = True  # the upstream closed an idle connection as we used it
                self.pool._connect(exchange)
            else:
                exchange.fail(reason)
        if response is not None:
            if state == _UNTIL_CLOSE and reason.check(ConnectionDone):
                response._end(Failure(PotentialDataLoss()))
            else:
                response._end(reason)
        if self.lost is not None:
            lost, self.lost = self.lost, None
            lost.callback(None)


class _ConnectionFactory(Factory):
    noisy = False  # no "Starting factory" log line per upstream connection

    def __init__(self, pool: "ConnectionPool", key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.pool, self.key)


class ConnectionPool:
    """Keep-alive connections per (scheme, host, port); see the module docstring.

    ``idle_per_host`` connections are kept after a burst, each for at most
    ``idle_timeout`` seconds; ``tls`` makes the client TLS options for a host
    (by default Twisted's ``optionsForClientTLS``: the platform's trust roots
    and the host name checked).  ``guard`` (``guard((scheme, host, port),
    address)`` raising to refuse) is asked about every address a host
    resolves to and about the peer before a request is written (connect.py);
    ``resolver`` replaces the reactor's ``nameResolver`` for guarded
    connections.  :meth:`close` waits at most ``close_timeout`` seconds for
    the idle connections to close cleanly, then aborts them.
    """

    def __init__(self, reactor: Any, *, connect_timeout: float, idle_per_host: int = 32,
                 idle_timeout: float = 60.0, tls: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 guard: Callable[[tuple[str, str, int], str], None] | None = None,
                 resolver: Any = None, close_timeout: float = 2.0) -> None:
        self._reactor = reactor
        self._guard = guard
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._idle_per_host = idle_per_host
        self._idle_timeout = idle_timeout
        self._tls = tls
        self._clock = clock
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._endpoints: dict[tuple[str, str, int], tuple[Any, Factory]] = {}
        self._factories: dict[tuple[str, str, int], Factory] = {}
        self._targets: dict[str, tuple[tuple[str, str, int], bytes, bytes]] = {}

    # -- requests
    def request(self, url: bytes, headers: list[tuple[bytes, bytes]], *, decode_gzip: bool = False,
                max_wire_bytes: int | None = None, method: bytes = b"GET") -> Deferred[Response]:
        """Send ``method url`` (an absolute http(s) URL, already percent-encoded);
        fires with the :class:`Response` once its head has arrived.

        ``max_wire_bytes`` bounds the encoded bytes of a gzip body decoded
        for the reader (the reader counts the decoded ones; an undecoded
        body's reader counts its wire bytes itself)."""
        try:
            key, host, target = self._split(url)
        except ValueError as e:
            return fail(e)
        lines = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if decode_gzip:
            lines.append(b"Accept-Encoding: gzip\r\n")
        lines.append(b"\r\n")
        exchange = _Exchange(key, b"".join(lines), decode_gzip, max_wire_bytes)
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.state == _IDLE and connection.transport is not None \
                    and self._clock() - connection.idle_since < self._idle_timeout:
                connection.send(exchange, reused=True)
                return exchange.d
            connection.drop()
        self._connect(exchange)
        return exchange.d

    def _split(self, url: bytes) -> tuple[tuple[str, str, int], bytes, bytes]:
        text = url.decode("ascii")
        found = self._targets.get(text)
        if found is not None:
            return found
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {text!r}")
        default = 443 if parts.scheme == "https" else 80
        if parts.port == 0:  # not "the default port": no port at all
            raise ValueError(f"port 0 in URL: {text!r}")
        port = parts.port or default
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c <= " " or c == "\x7f" for c in target):
            raise ValueError(f"request target with spaces or control characters: {target!r}")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        if port != default:
            shown += f":{port}"
        found = ((parts.scheme, host, port), shown.encode("ascii"), target.encode("ascii"))
        if len(self._targets) < 4096:  # the index's own page URLs repeat; file URLs mostly do not
            if parts.path.endswith("/"):
                self._targets[text] = found
        return found

    def _connect(self, exchange: _Exchange) -> None:
        key = exchange.key
        if self._guard is not None:
            connecting = connect_checked(self._reactor, key, self._factory(key), guard=self._guard,
                                         timeout=self._connect_timeout, tls=self._tls_options,
                                         resolver=self._resolver)
            self._connecting(exchange, connecting)
            return
        made = self._endpoints.get(key)
        if made is None:
            scheme, host, port = key
            endpoint: Any = HostnameEndpoint(self._reactor, host, port, timeout=self._connect_timeout)
            if scheme == "https":
                endpoint = wrapClientTLS(self._tls_options(host), endpoint)
            made = self._endpoints[key] = (endpoint, _ConnectionFactory(self, key))
        endpoint, factory = made
        self._connecting(exchange, endpoint.connect(factory))

    def _factory(self, key: tuple[str, str, int]) -> Factory:
        factory = self._factories.get(key)
        if factory is None:
            factory = self._factories[key] = _ConnectionFactory(self, key)
        return factory

    def _connecting(self, exchange: _Exchange, connecting: Deferred[Any]) -> None:
        exchange.connecting = connecting

        def connected(connection: _Connection) -> None:
            if exchange.d.called:  # cancelled meanwhile
                connection.drop()
                return
            connection.send(exchange, reused=False)

        connecting.addCallbacks(connected, exchange.fail)

    def _tls_options(self, host: str) -> Any:
        if self._tls is not None:
            return self._tls(host)
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(host)

    # -- connections
    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self._idle_per_host:
            connection.state = _DEAD
            connection.transport.loseConnection()
            return
        connection.idle_since = self._clock()
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> Deferred[Any]:
        """Close the idle connections; fires once they are closed.

        A clean TLS close waits for the peer's close_notify, which an upstream
        that stopped reading never sends: after ``close_timeout`` the
        connections still open are aborted, so a shutdown never hangs here.
        """
        from twisted.internet.defer import gatherResults

        waiting = []
        closing = []
        for idle in self._idle.values():
            for connection in list(idle):
                connection.lost = Deferred()
                waiting.append(connection.lost)
                closing.append(connection)
                connection.state = _DEAD
                connection.transport.loseConnection()
        self._idle.clear()
        if not waiting:
            return succeed(None)

        def abort() -> None:
            for connection in closing:
                if connection.lost is not None and connection.transport is not None:
                    connection.transport.abortConnection()

        timer = self._reactor.callLater(self._close_timeout, abort)
        done = gatherResults(waiting)
        done.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return done
