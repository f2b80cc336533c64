"""Client faults: clients that hang up, crowd in, read slowly or ask for pieces.

The server runs in this process, so "flat memory" is measured with
tracemalloc (every Python allocation of the server, the fake upstream and
the test) while a paused client holds a 40 MB download open.
"""

from __future__ import annotations

import hashlib
import socket
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool

from tests.builders import build_wheel
from tests.faults import WHEEL, blobs, get, sleep, spool, stored
from tests.rawhttp import raw_request

BIG = 40 * 1024 * 1024
#: How much the server's Python heap may grow while a 40 MB file is held
#: back by a paused client: buffers of a few chunks, not the file.
MEMORY_SLACK = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def big_wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("big"), "bigproj", "1.0", extra_bytes=BIG)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------ hang-ups


def _read_some_then_hang_up(port: int, path: str, keep: int) -> int:
    """GET, read ``keep`` body bytes at most, then reset the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    got = b""
    while len(got) < keep:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    sock.close()
    return len(got)


@pytest_twisted.ensureDeferred
async def test_client_hanging_up_mid_download_does_not_stop_caching(srv, fake_upstream, tmp_path, logs):
    wheel = build_wheel(tmp_path / "mid", "midproj", "1.0", extra_bytes=2 * 1024 * 1024)
    fake_upstream.add(wheel)
    data = wheel.read_bytes()
    fake_upstream.fail("slow", "/files/", rate=4 * 1024 * 1024)  # ~0.5 s: time to hang up mid-way
    path = f"/files/midproj/{wheel.name}"
    port = srv.port.getHost().port

    quitter = deferToThread(_read_some_then_hang_up, port, path, 200_000)
    await sleep(0.1)
    stayer = defer.ensureDeferred(raw_request(srv, "GET", path))
    assert await quitter < len(data)
    response = await stayer
    assert response.status == 200 and response.complete and response.body == data
    await stored(srv, "midproj", wheel.name)
    assert fake_upstream.count(path.rsplit("/", 1)[-1], method="GET") == 1
    assert _sha(data) in blobs(srv) and spool(srv) == []
    assert logs.has("cached midproj/" + wheel.name)


@pytest_twisted.ensureDeferred
async def test_only_client_hanging_up_still_gets_the_file_cached(srv, fake_upstream, tmp_path):
    wheel = build_wheel(tmp_path / "solo", "soloproj", "1.0", extra_bytes=1024 * 1024)
    fake_upstream.add(wheel)
    fake_upstream.fail("slow", "/files/", rate=4 * 1024 * 1024)
    path = f"/files/soloproj/{wheel.name}"
    assert await deferToThread(_read_some_then_hang_up, srv.port.getHost().port, path, 1000) < wheel.stat().st_size
    await stored(srv, "soloproj", wheel.name)
    fake_upstream.reset_log()
    response = await raw_request(srv, "GET", path)
    assert response.complete and response.body == wheel.read_bytes()
    assert fake_upstream.requests == []


# ------------------------------------------------------------ crowds


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_first_requests_make_one_upstream_fetch(srv, fake_upstream, tmp_path):
    from twisted.internet import reactor

    wheel = build_wheel(tmp_path / "crowd", "crowdproj", "1.0", extra_bytes=512 * 1024)
    fake_upstream.add(wheel)
    data = wheel.read_bytes()
    fake_upstream.fail("slow", "/files/", rate=2 * 1024 * 1024)  # still running when the last one arrives
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))

    async def fetch() -> tuple[int, bytes]:
        response = await client.get(srv.root + f"/files/crowdproj/{wheel.name}")
        return response.code, await treq.content(response)

    try:
        results = await defer.gatherResults([defer.ensureDeferred(fetch()) for _ in range(50)])
    finally:
        await pool.closeCachedConnections()
    assert [code for code, _ in results] == [200] * 50
    assert all(body == data for _, body in results)
    assert fake_upstream.count(f"/files/{wheel.name}", method="GET") == 1
    assert fake_upstream.count("/simple/crowdproj/") == 1  # the page too was asked once
    await stored(srv, "crowdproj", wheel.name)


# --------------------------------------------------------- slow readers


def _paused_reader(port: int, path: str, paused: Any, resume: Any) -> tuple[int, str]:
    """GET; once the head is in, set ``paused`` and read nothing until
    ``resume`` is set; then read (and de-chunk) everything and return
    (body length, sha256)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError("no response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    chunked = b"transfer-encoding: chunked" in head.lower()
    paused.set()
    if not resume.wait(30):
        raise AssertionError("never resumed")
    hasher = hashlib.sha256()
    total = 0
    pending = bytearray(rest)
    while True:
        if chunked:
            # Decode as we go so the test holds no more than a chunk either.
            while True:
                end = pending.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(pending[:end]).split(b";")[0], 16)
                if size == 0:
                    sock.close()
                    return total, hasher.hexdigest()
                if len(pending) < end + 2 + size + 2:
                    break
                piece = pending[end + 2 : end + 2 + size]
                hasher.update(piece)
                total += size
                del pending[: end + 2 + size + 2]
        else:
            hasher.update(pending)
            total += len(pending)
            pending.clear()
        chunk = sock.recv(1024 * 1024)
        if not chunk:
            break
        pending += chunk
    sock.close()
    return total, hasher.hexdigest()


async def _serve_to_paused_reader(server: Any, path: str, while_paused: Any) -> tuple[int, str, int]:
    """Serve ``path`` to a client that stops reading after the head; run
    ``while_paused`` meanwhile.  (bytes, sha256, heap growth while paused)."""
    import threading

    paused, resume = threading.Event(), threading.Event()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        reader = deferToThread(_paused_reader, server.port.getHost().port, path, paused, resume)
        try:
            deadline = time.monotonic() + 10
            while not paused.is_set() and time.monotonic() < deadline:
                await sleep(0.01)
            await while_paused()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            resume.set()
        total, digest = await reader
    finally:
        tracemalloc.stop()
    return total, digest, peak - baseline


@pytest.mark.parametrize("cached,chunked", [(False, False), (True, False), (False, True)],
                         ids=["uncached", "cached", "uncached-no-content-length"])
@pytest_twisted.ensureDeferred
async def test_paused_reader_holds_memory_flat(srv, fake_upstream, big_wheel, cached, chunked):
    fake_upstream.add(big_wheel)
    fake_upstream.chunked_files = chunked
    data_sha = hashlib.sha256(big_wheel.read_bytes()).hexdigest()
    size = big_wheel.stat().st_size
    path = f"/files/bigproj/{big_wheel.name}"
    await get(srv.simple + "bigproj/")
    if cached:
        await raw_request(srv, "HEAD", path)  # a HEAD starts the transfer too
        await stored(srv, "bigproj", big_wheel.name, within=20)

    async def while_paused() -> None:
        # The whole upstream transfer runs to its end (and is stored) while
        # the client reads nothing: every reason to buffer, and it must not.
        await stored(srv, "bigproj", big_wheel.name, within=20)
        await sleep(0.3)

    total, digest, growth = await _serve_to_paused_reader(srv, path, while_paused)
    assert total == size and digest == data_sha
    assert growth < MEMORY_SLACK, f"heap grew by {growth / 1e6:.1f} MB while serving a paused reader"
    await stored(srv, "bigproj", big_wheel.name, within=20)


# ------------------------------------------------------------ Range/HEAD


def _range_cases(size: int) -> list[tuple[str | None, int, tuple[int, int] | None]]:
    """(Range header, status, (start, end exclusive) of the body or None)."""
    return [
        (None, 200, (0, size)),
        ("bytes=0-0", 206, (0, 1)),
        ("bytes=0-9", 206, (0, 10)),
        ("bytes=10-", 206, (10, size)),
        (f"bytes={size - 1}-", 206, (size - 1, size)),
        (f"bytes={size - 1}-{size - 1}", 206, (size - 1, size)),
        ("bytes=-1", 206, (size - 1, size)),
        ("bytes=-22", 206, (size - 22, size)),
        (f"bytes=-{size + 100}", 206, (0, size)),  # suffix longer than the file: all of it
        (f"bytes=5-{size + 100}", 206, (5, size)),  # end past the file: clipped
        ("bytes= 3 - 7", 206, (3, 8)),
        (f"bytes={size}-", 416, None),
        (f"bytes={size + 5}-{size + 9}", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=0-1,4-5", 200, (0, size)),  # several ranges: the whole file
        ("bytes=9-3", 200, (0, size)),  # invalid: ignored
        ("items=0-3", 200, (0, size)),  # another unit: ignored
    ]


async def _check_ranges(server: Any, path: str, data: bytes) -> None:
    size = len(data)
    for header, status, span in _range_cases(size):
        headers = {"Range": header} if header else {}
        response = await raw_request(server, "GET", path, headers=headers)
        assert response.status == status, (header, response.status)
        assert response.header("accept-ranges") == "bytes"
        assert not response.header("content-encoding")
        if status == 416:
            assert response.header("content-range") == f"bytes */{size}", header
            continue
        start, end = span
        assert response.complete, header
        assert response.body == data[start:end], header
        assert response.announced == end - start, header
        if status == 206:
            assert response.header("content-range") == f"bytes {start}-{end - 1}/{size}", header
        else:
            assert response.header("content-range") is None
        head = await raw_request(server, "HEAD", path, headers=headers)
        assert head.status == status and head.announced == end - start, header
        assert head.body == b"", f"HEAD sent a body for {header}"


@pytest_twisted.ensureDeferred
async def test_range_and_head_are_exact_on_a_cached_file(srv, fake_upstream):
    data = fake_upstream.files[WHEEL].read_bytes()
    path = f"/files/tinyproj/{WHEEL}"
    await raw_request(srv, "GET", path)
    await stored(srv, "tinyproj", WHEEL)
    fake_upstream.reset_log()
    await _check_ranges(srv, path, data)
    head = await raw_request(srv, "HEAD", path)
    assert head.header("etag") == f'"{_sha(data)}"'
    assert fake_upstream.requests == []


@pytest.mark.parametrize("header,expected", [("bytes=-30", "suffix"), ("bytes=0-9", "prefix"),
                                             ("bytes=100-", "tail"), ("EOF", "416")])
@pytest_twisted.ensureDeferred
async def test_ranges_on_an_uncached_file(srv, fake_upstream, header, expected):
    wheel = "tinyproj-2.0-py3-none-any.whl"
    data = fake_upstream.files[wheel].read_bytes()
    size = len(data)
    if header == "EOF":
        header = f"bytes={size}-"
    response = await raw_request(srv, "GET", f"/files/tinyproj/{wheel}", headers={"Range": header})
    if expected == "416":
        assert response.status == 416
        assert response.header("content-range") == f"bytes */{size}"
    else:
        start = {"suffix": size - 30, "prefix": 0, "tail": 100}[expected]
        end = 10 if expected == "prefix" else size
        assert response.status == 206 and response.complete
        assert response.body == data[start:end]
        assert response.header("content-range") == f"bytes {start}-{end - 1}/{size}"
    await stored(srv, "tinyproj", wheel)  # asking for a piece still caches the whole
    assert fake_upstream.count(f"/files/{wheel}", method="GET") == 1


@pytest_twisted.ensureDeferred
async def test_head_on_an_uncached_file_and_its_metadata(srv, fake_upstream):
    wheel = "tinyproj-2.0-py3-none-any.whl"
    size = fake_upstream.files[wheel].stat().st_size
    head = await raw_request(srv, "HEAD", f"/files/tinyproj/{wheel}")
    assert head.status == 200 and head.announced == size and head.body == b""
    assert head.header("accept-ranges") == "bytes"
    head = await raw_request(srv, "HEAD", f"/files/tinyproj/{wheel}.metadata")
    from tests.builders import wheel_metadata

    assert head.status == 200 and head.announced == len(wheel_metadata(fake_upstream.files[wheel]))
    assert head.body == b""
    response = await raw_request(srv, "GET", f"/files/tinyproj/{wheel}.metadata", headers={"Range": "bytes=-5"})
    assert response.status == 206 and response.body == wheel_metadata(fake_upstream.files[wheel])[-5:]


@pytest_twisted.ensureDeferred
async def test_concurrent_ranges_on_an_uncached_file(srv, fake_upstream, tmp_path):
    """Lazy wheel readers (uv, poetry) send several Range requests at once."""
    wheel = build_wheel(tmp_path / "lazy", "lazyproj", "1.0", extra_bytes=256 * 1024)
    fake_upstream.add(wheel)
    data = wheel.read_bytes()
    size = len(data)
    await get(srv.simple + "lazyproj/")
    fake_upstream.fail("slow", "/files/", rate=2 * 1024 * 1024)
    wanted = [("bytes=-100", size - 100, size), ("bytes=0-99", 0, 100), ("bytes=1000-1999", 1000, 2000),
              ("bytes=-22", size - 22, size)]
    responses = await defer.gatherResults([
        defer.ensureDeferred(raw_request(srv, "GET", f"/files/lazyproj/{wheel.name}", headers={"Range": header}))
        for header, _, _ in wanted])
    for (header, start, end), response in zip(wanted, responses):
        assert response.status == 206, (header, response.status)
        assert response.body == data[start:end], header
    assert fake_upstream.count(f"/files/{wheel.name}", method="GET") == 1


@pytest_twisted.ensureDeferred
async def test_range_on_a_slow_uncached_file_falls_back_to_the_whole_file(srv, fake_upstream, logs):
    """A Range request must not wait in silence for a long download (pip
    gives up after 15 s): past ``range_wait`` it gets a 200 and every byte."""
    data = fake_upstream.files[WHEEL].read_bytes()
    files = srv.app.site.resource.children[b"files"]
    files.range_wait = 0.3
    await get(srv.simple + "tinyproj/")
    fake_upstream.fail("slow", "/files/", rate=len(data))  # about a second for the whole file
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}", headers={"Range": "bytes=-30"})
    assert response.status == 200 and response.complete and response.body == data
    assert response.header("content-range") is None
    assert logs.has("answering a Range request with the whole file")
    await stored(srv, "tinyproj", WHEEL)
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}", headers={"Range": "bytes=-30"})
    assert response.status == 206 and response.body == data[-30:]
