"""The upstream's HTTP/1.1 client (pypicache.providers.upstream.http) on the wire.

A scripted TCP server on 127.0.0.1 answers each request with exact bytes,
so the tests can send what Twisted's own server never would: close-delimited
bodies, broken chunking, junk status lines, 100 Continue, bytes nobody asked
for, a connection closed while idle in the pool.
"""

from __future__ import annotations

import gzip
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss

from pypicache.providers.upstream.http import BadResponse, ConnectionPool, ResponseDone


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Scripted(protocol.Protocol):
    """Reads one request head at a time and answers with ``factory.answer(head)``."""

    gone = False

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self._buffer = b""

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            self.factory.requests.append((self, head))
            answer = self.factory.answer(head)
            if answer is None:
                continue  # say nothing (the test acts on the connection itself)
            if callable(answer):
                answer(self.transport)
            else:
                self.transport.write(answer)


class _Server(protocol.Factory):
    protocol = _Scripted

    def __init__(self) -> None:
        self.answer: Callable[[bytes], Any] = lambda head: None
        self.requests: list[tuple[_Scripted, bytes]] = []
        self.connections: list[_Scripted] = []


@pytest.fixture
def server():
    factory = _Server()
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    factory.url = f"http://127.0.0.1:{port.getHost().port}".encode()
    yield factory
    for connection in factory.connections:
        if not connection.gone:
            connection.transport.abortConnection()
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def pool():
    made = ConnectionPool(_reactor(), connect_timeout=2.0)
    yield made
    pytest_twisted.blockon(made.close())


class _Reader(protocol.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended: defer.Deferred[list[Failure]] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback([reason])  # a Failure passed to callback() would become an errback

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


async def _within(d: defer.Deferred, seconds: float = 5.0) -> Any:
    return await d.addTimeout(seconds, _reactor())


async def _ended(reader: _Reader) -> Failure:
    """How the reader's body ended (a Failure: ResponseDone when whole)."""
    return (await _within(reader.ended))[0]


async def _get(pool: ConnectionPool, url: bytes, **kw: Any) -> tuple[Any, _Reader, Failure]:
    response = await _within(pool.request(url, [(b"user-agent", b"test")], **kw))
    reader = _Reader()
    response.deliverBody(reader)
    reason = await _ended(reader)
    return response, reader, reason


def _ok(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest_twisted.ensureDeferred
async def test_request_line_and_headers(server, pool):
    server.answer = lambda head: _ok(b"hi")
    response, reader, reason = await _get(pool, server.url + b"/simple/a/?x=1")
    assert response.code == 200 and reader.body == b"hi" and reason.check(ResponseDone)
    assert response.length == 2
    head = server.requests[0][1].split(b"\r\n")
    assert head[0] == b"GET /simple/a/?x=1 HTTP/1.1"
    assert head[1] == b"Host: " + server.url.split(b"//")[1]
    assert b"user-agent: test" in head


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_one_connection(server, pool):
    server.answer = lambda head: _ok(b"x" * 100)
    for _ in range(3):
        _, reader, _ = await _get(pool, server.url + b"/f")
        assert reader.body == b"x" * 100
    assert len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_connection_close_and_http10_are_not_reused(server, pool):
    answers = iter([_ok(b"a", b"Connection: close"), b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb",
                    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nc", _ok(b"d")])
    server.answer = lambda head: next(answers)
    bodies = [(await _get(pool, server.url + b"/f"))[1].body for _ in range(4)]
    assert bodies == [b"a", b"b", b"c", b"d"]
    # HTTP/1.0 is never kept, whatever its Connection header says (as h11 has it).
    assert len(server.connections) == 4


@pytest_twisted.ensureDeferred
async def test_chunked_body_with_extensions_and_trailers(server, pool):
    server.answer = lambda head: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n")
    response, reader, reason = await _get(pool, server.url + b"/f")
    assert reader.body == b"hello0123456789" and reason.check(ResponseDone)
    assert response.length is not None and not isinstance(response.length, int)
    server.answer = lambda head: _ok(b"next")
    assert (await _get(pool, server.url + b"/f"))[1].body == b"next"
    assert len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_body_split_across_many_packets(server, pool):
    body = bytes(range(256)) * 40

    def dribble(transport):
        whole = _ok(body)
        for i in range(0, len(whole), 7):
            _reactor().callLater(0, transport.write, whole[i:i + 7])

    server.answer = lambda head: dribble
    _, reader, reason = await _get(pool, server.url + b"/f")
    assert reader.body == body and reason.check(ResponseDone)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,
])
@pytest_twisted.ensureDeferred
async def test_broken_chunking_fails_the_body(server, pool, answer):
    server.answer = lambda head: answer
    _, _, reason = await _get(pool, server.url + b"/f")
    assert reason.check(BadResponse)


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
])
@pytest_twisted.ensureDeferred
async def test_malformed_heads_fail_the_request(server, pool, answer):
    server.answer = lambda head: answer
    with pytest.raises(BadResponse):
        await _within(pool.request(server.url + b"/f", []))


@pytest_twisted.ensureDeferred
async def test_100_continue_is_skipped(server, pool):
    server.answer = lambda head: b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(b"real")
    response, reader, _ = await _get(pool, server.url + b"/f")
    assert response.code == 200 and reader.body == b"real"


@pytest_twisted.ensureDeferred
async def test_close_delimited_body_ends_with_potential_data_loss(server, pool):
    def answer(transport):
        transport.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        transport.loseConnection()

    server.answer = lambda head: answer
    _, reader, reason = await _get(pool, server.url + b"/f")
    assert reader.body == b"all of it" and reason.check(PotentialDataLoss)


@pytest_twisted.ensureDeferred
async def test_no_body_statuses(server, pool):
    server.answer = lambda head: b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
    response, reader, reason = await _get(pool, server.url + b"/f")
    assert response.code == 304 and reader.body == b"" and reason.check(ResponseDone)
    assert response.headers.getRawHeaders(b"ETag") == [b'"x"']


@pytest_twisted.ensureDeferred
async def test_bytes_past_the_body_are_never_read_as_the_next_answer(server, pool):
    answers = iter([_ok(b"x" * 10) + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL", _ok(b"good")])
    server.answer = lambda head: next(answers)
    assert (await _get(pool, server.url + b"/f"))[1].body == b"x" * 10
    assert (await _get(pool, server.url + b"/f"))[1].body == b"good"
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_unasked_bytes_on_an_idle_connection_drop_it(server, pool):
    server.answer = lambda head: _ok(b"a")
    await _get(pool, server.url + b"/f")
    server.connections[0].transport.write(_ok(b"EVIL"))
    await _within(defer.Deferred().addTimeout(0.1, _reactor()).addErrback(lambda _: None))
    assert (await _get(pool, server.url + b"/f"))[1].body == b"a"
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_idle_connection_closed_by_the_upstream_costs_a_retry(server, pool):
    server.answer = lambda head: _ok(b"a")
    await _get(pool, server.url + b"/f")
    # The close and the next request cross: the request goes out on a
    # connection whose FIN the client has not seen yet.
    answers = iter([lambda transport: transport.loseConnection(), _ok(b"b")])
    server.answer = lambda head: next(answers)
    assert (await _get(pool, server.url + b"/f"))[1].body == b"b"
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_fresh_connection_closed_before_answering_is_an_error(server, pool):
    server.answer = lambda head: (lambda transport: transport.loseConnection())
    with pytest.raises(Exception) as caught:
        await _within(pool.request(server.url + b"/f", []))
    assert not isinstance(caught.value, defer.TimeoutError)
    assert len(server.requests) == 1  # no retry on a new connection


@pytest_twisted.ensureDeferred
async def test_body_arriving_before_the_reader_is_kept_and_the_socket_paused(server, pool):
    body = b"z" * 300_000
    server.answer = lambda head: _ok(body)
    response = await _within(pool.request(server.url + b"/f", []))
    await _within(defer.Deferred().addTimeout(0.1, _reactor()).addErrback(lambda _: None))
    reader = _Reader()
    response.deliverBody(reader)
    await _ended(reader)
    assert reader.body == body


@pytest_twisted.ensureDeferred
async def test_stopping_a_finished_body_leaves_the_reused_connection_alone(server, pool):
    """A reader may stop its transport after the body ended (an abandoned
    small body); by then the connection serves someone else."""
    server.answer = lambda head: _ok(b"a")
    response = await _within(pool.request(server.url + b"/f", []))
    late = _Reader()
    response.deliverBody(late)
    await _ended(late)
    second = await _within(pool.request(server.url + b"/f", []))
    late.transport.stopProducing()
    reader = _Reader()
    second.deliverBody(reader)
    assert (await _ended(reader)).check(ResponseDone) and reader.body == b"a"
    assert len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_cancel_before_the_answer_aborts_the_connection(server, pool):
    server.answer = lambda head: None  # never answers
    d = pool.request(server.url + b"/f", [])
    await _within(defer.Deferred().addTimeout(0.05, _reactor()).addErrback(lambda _: None))
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    connection = server.connections[0]
    for _ in range(50):
        if connection.transport is None or connection.transport.disconnected:
            break
        await _within(defer.Deferred().addTimeout(0.02, _reactor()).addErrback(lambda _: None))
    assert connection.transport.disconnected


@pytest_twisted.ensureDeferred
async def test_stop_producing_mid_body_drops_the_connection(server, pool):
    server.answer = lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    response = await _within(pool.request(server.url + b"/f", []))
    reader = _Reader()
    response.deliverBody(reader)
    reader.transport.stopProducing()
    reason = await _ended(reader)
    assert not reason.check(ResponseDone)
    server.answer = lambda head: _ok(b"fresh")
    assert (await _get(pool, server.url + b"/f"))[1].body == b"fresh"
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_gzip_decoded_only_when_asked(server, pool):
    packed = gzip.compress(b"page " * 1000)
    server.answer = lambda head: _ok(packed, b"Content-Encoding: gzip")
    response, reader, reason = await _get(pool, server.url + b"/p/", decode_gzip=True)
    assert reader.body == b"page " * 1000 and reason.check(ResponseDone)
    assert not isinstance(response.length, int)
    assert b"Accept-Encoding: gzip" in server.requests[0][1]
    _, reader, _ = await _get(pool, server.url + b"/f")
    assert reader.body == packed
    assert b"gzip" not in server.requests[1][1]


@pytest.mark.parametrize("body", [b"not gzip at all", gzip.compress(b"x" * 1000)[:-12]])
@pytest_twisted.ensureDeferred
async def test_broken_gzip_fails_the_body(server, pool, body):
    server.answer = lambda head: _ok(body, b"Content-Encoding: gzip")
    _, _, reason = await _get(pool, server.url + b"/p/", decode_gzip=True)
    assert reason.check(BadResponse)


@pytest_twisted.ensureDeferred
async def test_gzip_bomb_is_decoded_in_slices(server, pool):
    """A reader that stops after its cap stops the decoding too."""
    packed = gzip.compress(b"\0" * 50_000_000)
    server.answer = lambda head: _ok(packed, b"Content-Encoding: gzip")
    response = await _within(pool.request(server.url + b"/p/", [], decode_gzip=True))

    class Capped(_Reader):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            assert len(data) <= 256 * 1024
            if len(self.body) > 1_000_000:
                self.transport.stopProducing()

    reader = Capped()
    response.deliverBody(reader)
    await _ended(reader)
    assert 1_000_000 < len(reader.body) < 2_000_000


@pytest.mark.parametrize("url", [b"ftp://h/x", b"http:///x", b"http://h/a b", b"http://h/a\r\nX: y"])
@pytest_twisted.ensureDeferred
async def test_unusable_urls_fail_without_a_connection(pool, url):
    with pytest.raises(ValueError):
        await pool.request(url, [])


@pytest_twisted.ensureDeferred
async def test_connection_refused(pool):
    port = _reactor().listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(Exception) as caught:
        await _within(pool.request(b"http://127.0.0.1:%d/f" % number, []))
    assert "refused" in str(caught.value).lower()


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_bounded_and_expire(server):
    clock = [0.0]
    pool = ConnectionPool(_reactor(), connect_timeout=2.0, idle_per_host=2, idle_timeout=10,
                          clock=lambda: clock[0])
    try:
        server.answer = lambda head: _ok(b"a")
        await _within(defer.gatherResults([defer.ensureDeferred(_get(pool, server.url + b"/f"))
                                           for _ in range(4)]))
        assert len(server.connections) == 4
        assert sum(len(v) for v in pool._idle.values()) == 2
        clock[0] = 11.0  # both idle ones are too old now
        await _get(pool, server.url + b"/f")
        assert len(server.connections) == 5
    finally:
        await pool.close()


def _self_signed(host: str) -> tuple[bytes, bytes]:
    """A certificate for ``host`` and its key, PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pyOpenSSL objects in Twisted's own helpers
@pytest_twisted.ensureDeferred
async def test_https_checks_the_certificate_and_keeps_the_connection():
    """The real upstream is https: TLS through Twisted's endpoint wrapper,
    the host name checked against the certificate, keep-alive as over TCP."""
    from twisted.internet import ssl

    cert_pem, key_pem = _self_signed("localhost")
    server = _Server()
    server.answer = lambda head: _ok(b"secret")
    certificate = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    port = _reactor().listenSSL(0, server, certificate.options(), interface="127.0.0.1")
    url = b"https://localhost:%d/f" % port.getHost().port
    trusted = ConnectionPool(_reactor(), connect_timeout=2.0, tls=lambda host: ssl.optionsForClientTLS(
        host, trustRoot=ssl.Certificate.loadPEM(cert_pem)))
    untrusted = ConnectionPool(_reactor(), connect_timeout=2.0)  # the platform's roots
    try:
        for _ in range(2):
            _, reader, reason = await _get(trusted, url)
            assert reader.body == b"secret" and reason.check(ResponseDone)
        assert len(server.connections) == 1
        with pytest.raises(Exception) as caught:
            await _get(untrusted, url)
        assert "certificate" in str(caught.value).lower() or "ssl" in repr(caught.value).lower()
        assert len(server.requests) == 2  # nothing was sent over the untrusted connection
    finally:
        await trusted.close()
        await untrusted.close()
        for connection in server.connections:
            if not connection.gone:
                connection.transport.abortConnection()
        await port.stopListening()


# ----------------------------------------------- as strict as h11, byte for byte

_HEADER_ATTACKS = [
    # A value carrying a bare LF (or CR, or NUL) would be stored as the ETag
    # and sent back verbatim in the next If-None-Match: a header injection.
    b'HTTP/1.1 200 OK\r\nETag: "x"\nX-Injected: yes\r\nContent-Length: 0\r\n\r\n',
    b'HTTP/1.1 200 OK\r\nETag: "x"\rX-Injected: yes\r\nContent-Length: 0\r\n\r\n',
    b'HTTP/1.1 200 OK\r\nETag: "x\x00"\r\nContent-Length: 0\r\n\r\n',
    b'HTTP/1.1 302 Found\r\nLocation: /a\nSet-Cookie: x\r\nContent-Length: 0\r\n\r\n',
    b"HTTP/1.1 200 OK\r\nX-Ctl: a\x7fb\r\nContent-Length: 0\r\n\r\n",
    # header names are tokens
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX(y): z\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX\x00: z\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nETag\n: z\r\nContent-Length: 0\r\n\r\n",
    # status codes: 100-599 only, and no unasked-for protocol switch
    b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 999 High\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n" + _ok(b"smuggled"),
    b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nX: y\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
    # a Content-Length no int() should be asked to read
    b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa3\r\n\r\n",
    # a head over the limit is refused even when its end arrives with it
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("answer", _HEADER_ATTACKS)
@pytest_twisted.ensureDeferred
async def test_heads_h11_refuses_are_bad_responses(server, pool, answer):
    server.answer = lambda head: answer
    with pytest.raises(BadResponse):
        await _within(pool.request(server.url + b"/f", []))


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nETag:  \"v 1\"\t \r\nX-Empty:\r\nX-Obs: caf\xe9\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200\r\nETag: \"v 1\"\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 599 Whatever\r\nETag: \"v 1\"\r\nContent-Length: 2\r\n\r\nhi",
])
@pytest_twisted.ensureDeferred
async def test_lawful_heads_still_pass(server, pool, answer):
    server.answer = lambda head: answer
    response, reader, reason = await _get(pool, server.url + b"/f")
    assert reader.body == b"hi" and reason.check(ResponseDone)
    assert response.headers.getRawHeaders(b"etag") == [b'"v 1"']


@pytest.mark.parametrize("chunks", [
    b" 5\r\nhello\r\n0\r\n\r\n",             # whitespace before the size
    b"\x0b5\r\nhello\r\n0\r\n\r\n",
    b"5\x0b\r\nhello\r\n0\r\n\r\n",
    b"5;a\x00b\r\nhello\r\n0\r\n\r\n",       # NUL in an extension
    b"5;a\nb\r\nhello\r\n0\r\n\r\n",         # bare LF in an extension
    b"5\r\nhello\r\n0\r\nBad Trailer: x\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: a\nInjected: b\r\n\r\n",
    b"5\r\nhello\r\n0\r\n" + b"X-T: a\r\n" * 1000 + b"\r\n",  # endless trailers
])
@pytest_twisted.ensureDeferred
async def test_malformed_chunk_lines_and_trailers_fail_the_body(server, pool, chunks):
    server.answer = lambda head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    _, _, reason = await _get(pool, server.url + b"/f")
    assert reason.check(BadResponse)


@pytest_twisted.ensureDeferred
async def test_lawful_chunk_lines_still_pass(server, pool):
    server.answer = lambda head: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"5 ;name=\"v\"\r\nhello\r\n000A\t\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n")
    _, reader, reason = await _get(pool, server.url + b"/f")
    assert reader.body == b"hello0123456789" and reason.check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_content_length_with_transfer_encoding_is_chunked_and_not_reused(server, pool):
    """RFC 9112 6.3: Transfer-Encoding wins, and the connection is closed
    afterwards (the pair is what request smuggling is made of)."""
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n", _ok(b"next")])
    server.answer = lambda head: next(answers)
    response, reader, reason = await _get(pool, server.url + b"/f")
    assert reader.body == b"hello" and reason.check(ResponseDone)
    assert not isinstance(response.length, int)
    assert (await _get(pool, server.url + b"/f"))[1].body == b"next"
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_every_gzip_member_is_decoded(server, pool):
    packed = gzip.compress(b"first " * 100) + gzip.compress(b"second " * 100)
    server.answer = lambda head: _ok(packed, b"Content-Encoding: gzip")
    _, reader, reason = await _get(pool, server.url + b"/p/", decode_gzip=True)
    assert reader.body == b"first " * 100 + b"second " * 100 and reason.check(ResponseDone)


@pytest.mark.parametrize("tail", [b"junk after the member", b"\0" * 64, gzip.compress(b"cut")[:-3]])
@pytest_twisted.ensureDeferred
async def test_bytes_after_a_gzip_member_that_are_no_member_fail_the_body(server, pool, tail):
    server.answer = lambda head: _ok(gzip.compress(b"page") + tail, b"Content-Encoding: gzip")
    _, _, reason = await _get(pool, server.url + b"/p/", decode_gzip=True)
    assert reason.check(BadResponse)


@pytest_twisted.ensureDeferred
async def test_gzip_wire_bytes_count_against_the_limit(server, pool):
    """Empty gzip members decode to nothing: the reader's own count never
    moves, so the encoded bytes are what must be bounded."""
    empty = gzip.compress(b"")
    packed = gzip.compress(b"page") + empty * (200_000 // len(empty))
    server.answer = lambda head: _ok(packed, b"Content-Encoding: gzip")
    _, reader, reason = await _get(pool, server.url + b"/p/", decode_gzip=True, max_wire_bytes=100_000)
    assert reason.check(BadResponse) and "100000" in str(reason.value)
    assert reader.body == b"page"
    _, reader, reason = await _get(pool, server.url + b"/p/", decode_gzip=True, max_wire_bytes=len(packed))
    assert reason.check(ResponseDone) and reader.body == b"page"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pyOpenSSL objects in Twisted's own helpers
@pytest_twisted.ensureDeferred
async def test_close_does_not_wait_for_a_tls_peer_that_never_answers_the_close():
    """Closing an idle TLS connection sends close_notify and waits for the
    peer's: an upstream that stops reading would hold a shutdown forever, so
    the pool's close gives up after ``close_timeout`` and aborts."""
    import time

    from twisted.internet import ssl

    cert_pem, key_pem = _self_signed("localhost")
    server = _Server()

    def answer_then_stop_reading(transport):
        transport.write(_ok(b"x"))
        transport.pauseProducing()

    server.answer = lambda head: answer_then_stop_reading
    certificate = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    port = _reactor().listenSSL(0, server, certificate.options(), interface="127.0.0.1")
    pool = ConnectionPool(_reactor(), connect_timeout=2.0, close_timeout=0.5, tls=lambda host: ssl.optionsForClientTLS(
        host, trustRoot=ssl.Certificate.loadPEM(cert_pem)))
    try:
        _, reader, _ = await _get(pool, b"https://localhost:%d/f" % port.getHost().port)
        assert reader.body == b"x"
        started = time.monotonic()
        await _within(pool.close(), 3)
        assert time.monotonic() - started < 2
    finally:
        for connection in server.connections:
            if not connection.gone:
                connection.transport.abortConnection()
        await port.stopListening()
