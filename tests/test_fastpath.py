"""The fast path answers exactly what the ordinary route answers, and hands the rest over.

Raw sockets, so that keep-alive, pipelining and odd requests are under the
test's control.
"""

from __future__ import annotations

import socket

import attrs
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.server import make_config, start_server

PIP_ACCEPT = b"application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send ``payload`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def split_responses(raw: bytes, heads: tuple[int, ...] = ()) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Responses in order; ``heads`` are the positions of HEAD requests (no body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get(b"content-length", b"0"))
        if status == 304 or len(out) in heads:
            length = 0
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


def get(path: str, *headers: bytes, method: bytes = b"GET", close: bool = False) -> bytes:
    lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


COMPARED = (b"content-type", b"vary", b"cache-control", b"etag", b"content-encoding", b"content-length",
            b"x-pypicache-stale")


@pytest.fixture
def port_of():
    return lambda server: server.port.getHost().port


async def slow_and_fast(server, request_headers: tuple[bytes, ...], path: str = "/simple/tinyproj/"):
    port = server.port.getHost().port
    before = server.app.stats.pages
    # The first request renders the page (ordinary route, which then keeps the
    # connection); the second, on a new connection, is the fast path.
    first, = split_responses(await deferToThread(exchange, port, get(path, *request_headers, close=True)))
    second, = split_responses(await deferToThread(exchange, port, get(path, *request_headers, close=True)))
    return first, second, server.app.stats.pages - before


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("headers", [
    (b"Accept: text/html",),
    (b"Accept: " + PIP_ACCEPT,),
    (b"Accept: " + PIP_ACCEPT, b"Accept-Encoding: gzip"),
    (),
])
async def test_fast_answer_equals_ordinary_answer(tmp_path, fake_upstream, headers):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        first, second, pages = await slow_and_fast(server, headers)
        assert first[0] == second[0] == 200
        assert {k: first[1].get(k) for k in COMPARED} == {k: second[1].get(k) for k in COMPARED}
        assert first[2] == second[2]
        assert second[1][b"server"] == b"pypicache"  # it really was the fast path
        assert pages == 2
        # Revalidation: 304 from the fast path too.
        etag = first[1][b"etag"]
        raw = await deferToThread(exchange, server.port.getHost().port,
                                  get("/simple/tinyproj/", *headers, b"If-None-Match: " + etag, close=True))
        (status, h, body), = split_responses(raw)
        assert status == 304 and body == b"" and h[b"etag"] == etag
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_and_handover_to_twisted_web(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        port = server.port.getHost().port
        await deferToThread(exchange, port, get("/simple/tinyproj/", close=True))
        wheel = "tinyproj-1.0-py3-none-any.whl"
        payload = (get("/simple/tinyproj/") + get("/simple/tinyproj/", method=b"HEAD")
                   + get(f"/files/tinyproj/{wheel}") + get("/simple/tinyproj/", close=True))
        responses = split_responses(await deferToThread(exchange, port, payload), heads=(1,))
        assert [r[0] for r in responses] == [200, 200, 200, 200]
        assert responses[0][1][b"server"] == b"pypicache"
        assert responses[1][2] == b""  # HEAD: no body
        assert responses[2][2] == fake_upstream.files[wheel].read_bytes()
        assert responses[3][2] == responses[0][2]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_what_the_fast_path_does_not_take(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        port = server.port.getHost().port
        await deferToThread(exchange, port, get("/simple/tinyproj/", close=True))
        cases = {
            "query string": get("/simple/tinyproj/?format=text/html", close=True),
            "unnormalised": get("/simple/TinyProj/", close=True),
            "http/1.0": b"GET /simple/tinyproj/ HTTP/1.0\r\n\r\n",
            "not acceptable": get("/simple/tinyproj/", b"Accept: application/json", close=True),
            "unknown project": get("/simple/nope/", close=True),
            "obs-fold header": get("/simple/tinyproj/", b"X-A: 1", b" folded", close=True),
            "body": get("/simple/tinyproj/", b"Content-Length: 2", close=True)[:-4] + b"\r\n\r\nab",
        }
        for why, payload in cases.items():
            responses = split_responses(await deferToThread(exchange, port, payload))
            assert responses, why
            assert responses[0][1].get(b"server") != b"pypicache", why
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_stale_record_goes_the_ordinary_way(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        port = server.port.getHost().port
        await deferToThread(exchange, port, get("/simple/tinyproj/", close=True))
        fake_upstream.reset_log()
        (status, h, _), = split_responses(await deferToThread(exchange, port, get("/simple/tinyproj/", close=True)))
        assert status == 200 and h[b"server"] != b"pypicache"
        assert fake_upstream.count("/simple/tinyproj/") == 1  # revalidated upstream
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_fast_path_can_be_switched_off(tmp_path, fake_upstream):
    config = make_config(tmp_path, fake_upstream.url)
    server = await start_server(attrs.evolve(config, fast_path=False))
    try:
        _, second, _ = await slow_and_fast(server, ())
        assert second[1][b"server"] != b"pypicache"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_storing_a_file_keeps_the_proxy_page_but_not_the_local_one(tmp_path, fake_upstream, monkeypatch):
    """After a cold install stores what it fetched, the proxy page is the same
    bytes: it stays rendered (no re-render of a large page) and on the fast
    path.  The local page lists stored files, so it changes."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from pypicache.web import simple

    renders: list[str] = []
    real_render = simple.render_project

    def counting_render(fmt, name, *args, **kwargs):
        renders.append(name)
        return real_render(fmt, name, *args, **kwargs)

    monkeypatch.setattr(simple, "render_project", counting_render)
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        port = server.port.getHost().port
        wheel = "tinyproj-1.0-py3-none-any.whl"
        (status, _, before), = split_responses(await deferToThread(exchange, port, get("/simple/tinyproj/", close=True)))
        assert status == 200 and renders == ["tinyproj"]
        (status, _, body), = split_responses(await deferToThread(exchange, port, get(f"/files/tinyproj/{wheel}", close=True)))
        assert status == 200
        for _ in range(200):
            if server.app.mirror.cached("tinyproj").file(wheel).stored:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert server.app.mirror.cached("tinyproj").file(wheel).stored
        (status, h, after), = split_responses(await deferToThread(exchange, port, get("/simple/tinyproj/", close=True)))
        assert status == 200 and after == before
        assert h[b"server"] == b"pypicache"  # the fast path answered
        assert renders == ["tinyproj"]  # not rendered again
        (status, _, local), = split_responses(await deferToThread(exchange, port, get("/local/simple/tinyproj/", close=True)))
        assert status == 200 and wheel.encode() in local
        assert renders == ["tinyproj", "tinyproj"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_client_connections_send_without_nagle_delay(tmp_path, fake_upstream):
    """TCP_NODELAY on every client connection: with Nagle's algorithm a small
    body sent after its headers (a METADATA file through sendfile) waits for
    the client's delayed ACK of the headers, up to 40 ms per response."""
    config = make_config(tmp_path, fake_upstream.url)
    server = await start_server(config)
    try:
        with socket.create_connection(("127.0.0.1", server.port.getHost().port), timeout=5) as s:
            from twisted.internet import reactor
            from twisted.internet.task import deferLater

            for _ in range(100):  # accepted on the reactor's next turn
                if server.app.factory.live:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            (proto,) = server.app.factory.live
            handle = proto.transport.getHandle()
            assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        await server.stop()


SMUGGLED = get("/simple/tinyproj/", close=True)
SMUGGLING = {
    "bare LF, then Content-Length": b"X: y\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "bare CR, then Content-Length": b"X: y\rContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "bare LF, then Transfer-Encoding": b"X: y\nTransfer-Encoding: chunked\r\n\r\n"
                                       + b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
    "NUL in a name": b"X\x00Content-Length: 1\r\n\r\n",
    "space in a name": b"X Y: z\r\n\r\n",
    "control byte in a name": b"X\x7f: z\r\n\r\n",
    "501 header lines": b"X-N: v\r\n" * 500 + b"\r\n",
}


@pytest_twisted.ensureDeferred
async def test_requests_twisted_web_refuses_are_not_answered_on_the_fast_path(tmp_path, fake_upstream):
    """A request line the fast path would answer, followed by headers twisted.web
    refuses: the answer is twisted.web's 400 and a closed connection, never a 200
    followed by an answer to the body run as a second request."""
    from tests.rawhttp import Verdict, verdict

    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        port = server.port.getHost().port
        await deferToThread(exchange, port, get("/simple/tinyproj/", close=True))
        start = b"GET /simple/tinyproj/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        got = {why: await deferToThread(verdict, port, start + rest) for why, rest in SMUGGLING.items()}
        # The Host line itself ending in a bare LF: the next request line (with a
        # colon in its absolute-form target) would be read as a header.
        got["bare LF ends Host"] = await deferToThread(
            verdict, port, b"GET /simple/tinyproj/ HTTP/1.1\r\nHost: x\n\r\n"
                           b"GET http://x/simple/tinyproj/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got == {why: Verdict((400,), True) for why in got}
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_connection_lists_keep_twisted_webs_meaning(tmp_path, fake_upstream):
    """``Connection: keep-alive, close`` closes the connection (as twisted.web
    does): the fast path hands over a Connection value it does not read plainly."""
    from tests.rawhttp import verdict

    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        port = server.port.getHost().port
        await deferToThread(exchange, port, get("/simple/tinyproj/", close=True))
        v = await deferToThread(verdict, port, get("/simple/tinyproj/", b"Connection: keep-alive, close"))
        assert v.statuses == (200,) and v.closed
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_bad_request_line_is_refused_before_the_head_is_complete(tmp_path, fake_upstream):
    """twisted.web refuses a bad request line as soon as it has the line; the
    fast path must not sit on it waiting for the end of a head it will never
    answer (the client would see a hang instead of a 400)."""
    from tests.rawhttp import Verdict, verdict

    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        port = server.port.getHost().port
        for line in (b"GET /simple/tinyproj/ HTTP/9.9\r\n", b"GET /simple/tiny proj/ HTTP/1.1\r\nHost: x\r\n"):
            assert await deferToThread(verdict, port, line, first_byte=3.0) == Verdict((400,), True), line

        def in_pieces() -> bytes:  # a good head in three reads still gets the fast path
            import time

            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for piece in (b"GET /simple/tinyproj/ HTTP/1.1\r", b"\nHost: x\r\nAcc", b"ept: */*\r\n\r\n"):
                    s.sendall(piece)
                    time.sleep(0.05)
                s.shutdown(socket.SHUT_WR)
                return s.recv(65536)

        await deferToThread(exchange, port, get("/simple/tinyproj/", close=True))
        answer = await deferToThread(in_pieces)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\nServer: pypicache\r\n")
    finally:
        await server.stop()


def test_the_date_comes_from_the_reactor_clock():
    """The fast path dates its answers by the clock it is given (the reactor
    in the server), as twisted.web does, formatting it once per second."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from pypicache.web.fastpath import FastPathFactory

    class View:
        def fast_page(self, name, accept, accept_encoding, if_none_match):
            return 200, [(b"Content-Type", b"text/html")], b"<html></html>"

    clock = Clock()
    clock.advance(784111777)  # RFC 9110's example date
    factory = FastPathFactory(None, (View(), View()), lambda: False, clock=clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(get("/simple/tinyproj/"))
    clock.advance(1.5)
    proto.dataReceived(get("/simple/tinyproj/"))
    dates = [line for line in transport.value().split(b"\r\n") if line.startswith(b"Date: ")]
    assert dates == [b"Date: Sun, 06 Nov 1994 08:49:37 GMT", b"Date: Sun, 06 Nov 1994 08:49:38 GMT"]
