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
  connection; gzip-encoded pages are decoded when asked for, with the
  reader's size cap applying to the decoded bytes.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from pypicache.upstream.connect import connect_checked

__all__ = ["BadResponse", "ConnectionPool", "Headers", "Response"]

#: Limits on what the upstream may send before the body.
MAX_HEAD = 64 * 1024
MAX_HEADERS = 256
MAX_CHUNK_LINE = 4096
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
                 "_ended", "_decode")

    def __init__(self, connection: "_Connection", code: int, phrase: bytes, headers: Headers,
                 length: int | Any, decode: bool) -> None:
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

    def deliverBody(self, protocol: Any) -> None:
        if self._protocol is not None:
            raise RuntimeError("body already delivered")
        if self._decode:
            protocol = _GzipDecoder(protocol)
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
    """Decodes a gzip body for the protocol it wraps (Content-Encoding: gzip)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._transport: Any = None
        self._stopped = False

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
        try:
            out = self._zlib.decompress(data, _GZIP_SLICE)
            while True:
                if out:
                    self._inner.dataReceived(out)
                if self._stopped or not self._zlib.unconsumed_tail:
                    return
                out = self._zlib.decompress(self._zlib.unconsumed_tail, _GZIP_SLICE)
        except zlib.error as e:
            self.stopProducing()
            self._inner.connectionLost(Failure(BadResponse(f"bad gzip body: {e}")))

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

    __slots__ = ("key", "head", "decode", "d", "connection", "connecting", "retried")

    def __init__(self, key: tuple[str, str, int], head: bytes, decode: bool) -> None:
        self.key = key
        self.head = head
        self.decode = decode
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
                if end < 0:
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
                size = line.split(b";", 1)[0].strip()
                if not size or size.strip(b"0123456789abcdefABCDEF") or len(size) > 16:
                    raise BadResponse(f"bad chunk size {size[:40]!r}")
                self._remaining = int(size, 16)
                self.state = _CHUNK_DATA if self._remaining else _TRAILER
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
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not status[1].isdigit() \
                or len(status[1]) != 3:
            raise BadResponse(f"bad status line {lines[0][:80]!r}")
        code = int(status[1])
        if len(lines) > MAX_HEADERS + 1:
            raise BadResponse("too many headers")
        values: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise BadResponse(f"bad header line {line[:80]!r}")
            values.setdefault(name.lower(), []).append(value.strip())
        if 100 <= code < 200:  # 100 Continue and friends: the real answer follows
            return
        connection = b",".join(values.get(b"connection", ())).lower()
        if status[0] == b"HTTP/1.1":
            self._persistent = b"close" not in connection
        else:
            self._persistent = b"keep-alive" in connection
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
        elif lengths is not None:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise BadResponse(f"bad content-length {lengths!r}")
            length = self._remaining = int(lengths[0])
            self.state = _LENGTH
        else:
            self.state = _UNTIL_CLOSE
            self._persistent = False
        self.response = Response(self, code, status[2] if len(status) > 2 else b"", Headers(values),
                                 UNKNOWN_LENGTH if decode else length, decode)
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
    connections.
    """

    def __init__(self, reactor: Any, *, connect_timeout: float, idle_per_host: int = 32,
                 idle_timeout: float = 60.0, tls: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 guard: Callable[[tuple[str, str, int], str], None] | None = None,
                 resolver: Any = None) -> None:
        self._reactor = reactor
        self._guard = guard
        self._resolver = resolver
        self._connect_timeout = connect_timeout
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
                method: bytes = b"GET") -> Deferred[Response]:
        """Send ``method url`` (an absolute http(s) URL, already percent-encoded);
        fires with the :class:`Response` once its head has arrived."""
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
        exchange = _Exchange(key, b"".join(lines), decode_gzip)
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
        """Close the idle connections; fires once they are closed."""
        from twisted.internet.defer import gatherResults

        waiting = []
        for idle in self._idle.values():
            for connection in list(idle):
                connection.lost = Deferred()
                waiting.append(connection.lost)
                connection.state = _DEAD
                connection.transport.loseConnection()
        self._idle.clear()
        return gatherResults(waiting) if waiting else succeed(None)
