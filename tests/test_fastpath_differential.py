"""The fast path and twisted.web give every odd request the same verdict.

The fast path parses requests itself, so a request it reads differently from
twisted.web is a smuggling hole: a body taken for a second request, a header
taken for another request line.  The same corpus of odd requests goes over a
raw socket to a server with the fast path on and to one with it off, and the
verdicts (statuses of the answers, in order, and whether the connection was
closed) must be equal.  h11 classifies the same bytes independently: no server
may answer more requests than h11 finds (plus one error answer where h11
rejects the rest).
"""

from __future__ import annotations

import attrs
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.rawhttp import h11_requests, verdict
from tests.server import make_config, start_server

PAGE = b"/simple/tinyproj/"
R = b"GET " + PAGE + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a fast-path request, headers still open
CLOSE = b"Connection: close\r\n"
#: A complete request, to be hidden in a body.
SMUGGLED = b"GET " + PAGE + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n"
N = str(len(SMUGGLED)).encode()
CHUNKED_SMUGGLED = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"

CORPUS: dict[str, bytes] = {
    # What the fast path answers: the control group.
    "plain keep-alive": R + b"\r\n",
    "plain close": R + CLOSE + b"\r\n",
    "pipelined": R + b"\r\n" + R + b"\r\n" + R + CLOSE + b"\r\n",
    "content-length 0": R + b"Content-Length: 0\r\n" + CLOSE + b"\r\n",
    "tab and obs-text in a value": R + b"X-A: a\tb caf\xc3\xa9\r\n" + CLOSE + b"\r\n",
    "500 header lines": R + b"X-N: v\r\n" * 498 + CLOSE + b"\r\n",
    "Connection: Close": R + b"Connection: Close\r\n\r\n",
    "Connection: keep-alive, close": R + b"Connection: keep-alive, close\r\n\r\n",
    "Connection: close, keep-alive": R + b"Connection: close, keep-alive\r\n\r\n",
    "no Host": b"GET " + PAGE + b" HTTP/1.1\r\n" + CLOSE + b"\r\n",
    # Smuggling: a body the fast path would run as a second request.
    "bare LF before Content-Length": R + b"X: y\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED,
    "bare CR before Content-Length": R + b"X: y\rContent-Length: " + N + b"\r\n\r\n" + SMUGGLED,
    "bare LF before Transfer-Encoding": R + b"X: y\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_SMUGGLED,
    "bare LF ends Host, absolute-form next":
        b"GET " + PAGE + b" HTTP/1.1\r\nHost: x\n\r\nGET http://x" + PAGE + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "obs-fold hides Content-Length": R + b"X: y\r\n Content-Length: " + N + b"\r\n\r\n" + SMUGGLED,
    "space before colon": R + b"Content-Length : " + N + b"\r\n\r\n" + SMUGGLED,
    "pipelined, then bare LF smuggling": R + b"\r\n" + R + b"X: y\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED,
    "Content-Length with body": R + b"Content-Length: " + N + b"\r\n\r\n" + SMUGGLED,
    "chunked body": R + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_SMUGGLED,
    "two Content-Lengths": R + b"Content-Length: 0\r\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED,
    # Bad names and values.
    "NUL in a name": R + b"X\x00Y: z\r\n" + CLOSE + b"\r\n",
    "NUL in a value": R + b"X: a\x00b\r\n" + CLOSE + b"\r\n",
    "space in a name": R + b"X Y: z\r\n" + CLOSE + b"\r\n",
    "control byte in a name": R + b"X\x01: z\r\n" + CLOSE + b"\r\n",
    "tab before colon": R + b"X\t: z\r\n" + CLOSE + b"\r\n",
    "non-ASCII name": R + b"\xc3\x84: z\r\n" + CLOSE + b"\r\n",
    "vertical tab in a value": R + b"X: a\x0bb\r\n" + CLOSE + b"\r\n",
    "empty name": R + b": z\r\n" + CLOSE + b"\r\n",
    "no colon": R + b"X-no-colon\r\n" + CLOSE + b"\r\n",
    "obs-fold": R + b"X: a\r\n folded\r\n" + CLOSE + b"\r\n",
    "501 header lines": R + b"X-N: v\r\n" * 499 + CLOSE + b"\r\n",
    "huge header line": R + b"X: " + b"a" * 17000 + b"\r\n" + CLOSE + b"\r\n",
    "head just under 16 KiB": R + b"X: " + b"a" * 16000 + b"\r\n" + CLOSE + b"\r\n",
    "duplicate Host": R + b"Host: other\r\n" + CLOSE + b"\r\n",
    "Transfer-Encoding: identity": R + b"Transfer-Encoding: identity\r\n" + CLOSE + b"\r\n",
    "Expect: 100-continue": R + b"Expect: 100-continue\r\n" + CLOSE + b"\r\n",
    "Upgrade: h2c": R + b"Upgrade: h2c\r\nConnection: Upgrade, close\r\n\r\n",
    # Odd request lines.
    "HTTP/1.0": b"GET " + PAGE + b" HTTP/1.0\r\nHost: x\r\n\r\n",
    "absolute-form target": b"GET http://127.0.0.1" + PAGE + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "lowercase method": b"get " + PAGE + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "lowercase version": b"GET " + PAGE + b" http/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "two spaces": b"GET  " + PAGE + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "tab separator": b"GET\t" + PAGE + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "bare LF line endings": b"GET " + PAGE + b" HTTP/1.1\nHost: x\n" + CLOSE + b"\r\n\r\n",
    "leading empty line": b"\r\n" + R + CLOSE + b"\r\n",
    "HEAD last": b"HEAD " + PAGE + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "percent-encoded target": b"GET /simple/tiny%70roj/ HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
}


async def _verdict(port: int, payload: bytes):
    return await deferToThread(verdict, port, payload)


@pytest_twisted.ensureDeferred
async def test_fast_path_and_twisted_web_agree_on_odd_requests(tmp_path, fake_upstream):
    config = make_config(tmp_path / "fast", fake_upstream.url)
    fast = await start_server(config)
    slow = await start_server(attrs.evolve(make_config(tmp_path / "slow", fake_upstream.url), fast_path=False))
    try:
        ports = fast.port.getHost().port, slow.port.getHost().port
        for port in ports:  # render the page once: from now on the fast path can answer it
            assert (await _verdict(port, R + CLOSE + b"\r\n")).statuses == (200,)
        differ, too_many = {}, {}
        fast_answers = 0
        for why, payload in CORPUS.items():
            on, off = await _verdict(ports[0], payload), await _verdict(ports[1], payload)
            if on != off:  # a slow answer under load can pass for an idle connection: ask again
                on, off = await _verdict(ports[0], payload), await _verdict(ports[1], payload)
            if on != off:
                differ[why] = (on, off)
            fast_answers += on.servers.count(b"pypicache")
            seen, rejected = h11_requests(payload)
            limit = seen + (1 if rejected else 0)
            if max(len(on.final), len(off.final)) > limit:
                too_many[why] = (on, off, seen, rejected)
        assert not differ, "\n".join(f"{why}: fast path {on}, twisted.web {off}" for why, (on, off) in differ.items())
        assert not too_many, "\n".join(f"{why}: {v}" for why, v in too_many.items())
        # The control group really went the fast way (and only the fast path says "pypicache").
        assert fast_answers >= 8
        assert (await _verdict(ports[1], R + CLOSE + b"\r\n")).servers != (b"pypicache",)
    finally:
        await fast.stop()
        await slow.stop()
