"""Request limits: what an anonymous or slow client can hold of the server.

* HEAD is answered on every route family (never a 500 with a traceback);
* upload credentials are checked when the headers arrive, before any of the
  body is read or spooled, and concurrent uploads are capped;
* failed logins are rate-limited per client and per user, and token checks
  never wait behind password hashing;
* a request's headers have a deadline, a body a minimum rate, and connections
  are capped per client address and in total.

Raw sockets (in threads, so the in-process server keeps running) where the
behaviour under test is below what an HTTP client library shows.
"""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from argon2 import PasswordHasher
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from pypicache.services.accounts import AccountStore
from tests.builders import build_wheel
from tests.server import make_config, start_server
from tests.rawhttp import parse_raw, raw_request

PASSWORD = "correct horse battery"
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8)
WHEEL = "tinyproj-1.0-py3-none-any.whl"
TIMEOUT = 30


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = {"Authorization": basic("alice", PASSWORD)}


def cheap_accounts(server: Any, hasher: Any = CHEAP_HASHER) -> AccountStore:
    accounts = server.app.accounts
    old = accounts.store
    old.close()
    accounts.store = AccountStore(old.path, hasher=hasher)
    accounts.store.add_user("alice", PASSWORD)
    return accounts.store


async def serve(tmp_path: Path, upstream_url: str, *, uploads: dict | None = None, auth: dict | None = None,
                **server: Any) -> Any:
    config = make_config(tmp_path, upstream_url, **server)
    if uploads:
        config = attrs.evolve(config, uploads=attrs.evolve(config.uploads, **uploads))
    if auth:
        config = attrs.evolve(config, auth=attrs.evolve(config.auth, **auth))
    return await start_server(config)


@pytest_twisted.async_yield_fixture
async def lsrv(tmp_path, fake_upstream):
    server = await serve(tmp_path, fake_upstream.url)
    cheap_accounts(server)
    yield server
    await server.stop()


# ------------------------------------------------------------------ HEAD

HEAD_ROUTES = [
    "/", "/simple/", "/simple/tinyproj/", "/simple/tinyproj", f"/files/tinyproj/{WHEEL}",
    f"/files/tinyproj/{WHEEL}.metadata", "/local", "/local/", "/local/simple/", "/local/simple/privproj/",
    "/local/files/privproj/privproj-1.0-py3-none-any.whl", "/stats", "/legacy", "/legacy/", "/api",
    "/api/", "/api/projects", "/api/projects/privproj/1.0/yank", "/api/projects/privproj/1.0",
    "/pypi/tinyproj/json", "/pypi/tinyproj/1.0/json", "/pypi/nosuchproj/json", "/nosuch",
]


@pytest_twisted.ensureDeferred
async def test_every_route_answers_head(lsrv, tmp_path, logs):
    wheel = build_wheel(tmp_path / "priv", "privproj", "1.0")
    response = await treq.post(lsrv.root + "/legacy/", auth=("alice", PASSWORD), persistent=False, timeout=TIMEOUT,
                               data={":action": "file_upload", "protocol_version": "1", "name": "privproj",
                                     "version": "1.0", "filetype": "bdist_wheel", "pyversion": "py3",
                                     "metadata_version": "2.1"},
                               files={"content": (wheel.name, "application/octet-stream", wheel.open("rb"))})
    assert response.code == 200, await treq.text_content(response)
    logs.clear()
    for path in HEAD_ROUTES:
        response = await raw_request(lsrv, "HEAD", path)
        assert response.status is not None and response.status < 500, (path, response.raw[:300])
        assert response.body == b"", path
    failures = [e for e in logs.events if e.get("log_failure") is not None]
    assert not failures, failures[0]["log_failure"].getTraceback()


# ------------------------------------------------------- failed logins


def raw_from(port: int, source: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` from the loopback address ``source`` (another client, as
    the server sees it) and read until the server closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    chunks = []
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    return b"".join(chunks)


def get_from(server: Any, source: str, path: str, authorization: str) -> Any:
    port = server.port.getHost().port
    raw = (f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {authorization}\r\n\r\n").encode()
    return deferToThread(raw_from, port, source, raw).addCallback(parse_raw)


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_are_throttled_and_never_delay_a_token(tmp_path, fake_upstream):
    """30 wrong password logins in parallel (each a real argon2 check) while a
    valid token reads: the token answers at once, the logins beyond the
    limit get 429 with Retry-After, and the user is throttled from another
    address too, except for a token."""
    server = await serve(tmp_path, fake_upstream.url, auth={"read": "authenticated"})
    try:
        store = server.app.accounts.store  # the real argon2 hasher, as in production
        store.add_user("alice", PASSWORD)
        _, token = store.create_token("alice")
        limit = server.app.config.auth.max_failed_logins
        wrong = [treq.get(server.root + "/stats", headers={"Authorization": basic("alice", f"wrong-{i}")},
                          persistent=False, timeout=TIMEOUT) for i in range(30)]
        await deferToThread(time.sleep, 0.2)  # the wrong ones are queued first
        started = time.monotonic()
        response = await get_from(server, "127.0.0.3", "/stats", basic("__token__", token))
        elapsed = time.monotonic() - started
        assert response.status == 200, response.raw[:300]
        assert elapsed < 2.0, f"a token read waited {elapsed:.1f} s behind password checks"
        answers = await defer.gatherResults(wrong)
        codes = sorted(a.code for a in answers)
        assert codes == [401] * limit + [429] * (30 - limit), codes
        for a in answers:
            await treq.content(a)
            if a.code == 429:
                assert int(a.headers.getRawHeaders("retry-after")[0]) > 0
        # The user is throttled from another address as well; tokens are not.
        response = await get_from(server, "127.0.0.2", "/stats", basic("alice", "wrong-again"))
        assert response.status == 429 and int(response.header("retry-after")) > 0
        response = await get_from(server, "127.0.0.2", "/stats", basic("__token__", token))
        assert response.status == 200
    finally:
        await server.stop()


# ------------------------------------------------------------- uploads

BIG = 9 * 1024 * 1024


def upload_head(length: int, authorization: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (f"POST /legacy/ HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n{auth}{extra}\r\n").encode()


class Held:
    """A connection opened in a thread and left as the test says."""

    def __init__(self, port: int, data: bytes, source: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        if data:
            self.sock.sendall(data)

    def read(self, timeout: float) -> tuple[bytes, bool]:
        """What the server sent within ``timeout``, and whether it closed."""
        self.sock.settimeout(timeout)
        chunks = []
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b"".join(chunks), True
                chunks.append(chunk)
        except socket.timeout:
            return b"".join(chunks), False
        except OSError:
            return b"".join(chunks), True

    def close(self) -> None:
        self.sock.close()


async def held(server: Any, data: bytes, source: str = "127.0.0.1") -> Held:
    return await deferToThread(Held, server.port.getHost().port, data, source)


@pytest_twisted.ensureDeferred
async def test_upload_credentials_are_checked_before_the_body(lsrv):
    """No credentials, malformed ones or wrong ones: 401 and a closed
    connection as soon as the headers are in, with 9 MB announced and only
    the first 64 KiB sent (nothing more is read, nothing spooled)."""
    for authorization in (None, "Bearer x", basic("alice", "wrong password"), basic("__token__", "pypicache-x")):
        conn = await held(lsrv, upload_head(BIG, authorization) + b"x" * 65536)
        try:
            data, closed = await deferToThread(conn.read, 5)
        finally:
            conn.close()
        response = parse_raw(data)
        assert response.status == 401, (authorization, data[:200])
        assert response.header("www-authenticate", ).startswith("Basic")
        assert closed, authorization


@pytest_twisted.ensureDeferred
async def test_expect_continue_is_not_sent_to_a_refused_upload(lsrv):
    conn = await held(lsrv, upload_head(BIG, None, "Expect: 100-continue\r\n"))
    try:
        data, closed = await deferToThread(conn.read, 5)
    finally:
        conn.close()
    assert data.startswith(b"HTTP/1.1 401 ") and closed
    assert b"100 Continue" not in data


@pytest_twisted.ensureDeferred
async def test_concurrent_uploads_are_capped(tmp_path, fake_upstream):
    server = await serve(tmp_path, fake_upstream.url, uploads={"max_concurrent": 2})
    conns: list[Held] = []
    try:
        cheap_accounts(server)
        for _ in range(2):  # two uploads in progress, their bodies stalled
            conns.append(await held(server, upload_head(BIG, AUTH["Authorization"]) + b"--b\r\n"))
        await deferToThread(time.sleep, 0.3)
        third = await held(server, upload_head(BIG, AUTH["Authorization"]))
        conns.append(third)
        data, closed = await deferToThread(third.read, 5)
        response = parse_raw(data)
        assert response.status == 503, data[:200]
        assert int(response.header("retry-after")) > 0 and closed
        for conn in conns:
            conn.close()
        conns = []
        await deferToThread(time.sleep, 0.3)
        wheel = build_wheel(tmp_path / "priv", "privproj", "1.0")
        response = await treq.post(server.root + "/legacy/", auth=("alice", PASSWORD), persistent=False,
                                   timeout=TIMEOUT,
                                   data={":action": "file_upload", "protocol_version": "1", "name": "privproj",
                                         "version": "1.0", "filetype": "bdist_wheel", "pyversion": "py3",
                                         "metadata_version": "2.1"},
                                   files={"content": (wheel.name, "application/octet-stream", wheel.open("rb"))})
        assert response.code == 200, await treq.text_content(response)  # the slots were given back
    finally:
        for conn in conns:
            conn.close()
        await server.stop()


# ------------------------------------------------ slow clients, connection caps


def trickle(port: int, data: bytes, every: float, budget: float, first: bytes = b"",
            answered: bool = True) -> tuple[bytes, float | None]:
    """Send ``first`` whole (and read its answer if ``answered``), then ``data`` one byte
    every ``every`` seconds for at most ``budget`` seconds.  Returns what the
    server sent after ``first``'s answer and when (seconds since the trickle
    began) it closed the connection, or None if it never did."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", port))
    got = b""
    try:
        if first:
            sock.sendall(first)
        if first and answered:
            sock.settimeout(5)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"\n"):
                answer += sock.recv(65536)
        sock.settimeout(every)
        started = time.monotonic()
        for i in range(len(data)):
            if time.monotonic() - started > budget:
                break
            try:
                sock.send(data[i:i + 1])
            except OSError:
                return got, time.monotonic() - started
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return got, time.monotonic() - started
                got += chunk
            except socket.timeout:
                pass
            except OSError:
                return got, time.monotonic() - started
        return got, None
    finally:
        sock.close()


@pytest_twisted.async_yield_fixture
async def strict(tmp_path, fake_upstream):
    server = await serve(tmp_path, fake_upstream.url, header_timeout=1, min_body_rate=100,
                         max_connections=4, max_connections_per_client=2)
    cheap_accounts(server)
    yield server
    await server.stop()


SLOW_GET = b"GET /simple/tinyproj/ HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"s" * 200 + b"\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_headers_sent_one_byte_at_a_time_hit_a_deadline(strict):
    """On a fresh connection (the fast path reads it) and on a kept-alive one
    already handed to twisted.web: 408 and closed once header_timeout (1 s)
    has passed, however steadily the bytes come."""
    port = strict.port.getHost().port
    got, closed_after = await deferToThread(trickle, port, SLOW_GET, 0.1, 6)
    assert closed_after is not None and closed_after < 3, (closed_after, got[:200])
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    first = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
    got, closed_after = await deferToThread(trickle, port, SLOW_GET, 0.1, 6, first)
    assert closed_after is not None and closed_after < 3, (closed_after, got[:200])
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]


@pytest_twisted.ensureDeferred
async def test_a_body_below_the_minimum_rate_is_cut(strict):
    port = strict.port.getHost().port
    head = (b"POST /api/projects/privproj/1.0/yank HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nAuthorization: " + AUTH["Authorization"].encode()
            + b"\r\n\r\n")
    got, closed_after = await deferToThread(trickle, port, b"reason=" + b"x" * 493, 0.1, 8, head, False)
    assert closed_after is not None and closed_after < 4, (closed_after, got[:200])
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]


@pytest_twisted.ensureDeferred
async def test_connections_are_capped_per_client_and_in_total(strict):
    conns = [await held(strict, b"") for _ in range(2)]  # 127.0.0.1's two
    try:
        refused = await held(strict, b"")
        conns.append(refused)
        data, closed = await deferToThread(refused.read, 5)
        assert data.startswith(b"HTTP/1.1 503 ") and closed, data[:200]
        assert int(parse_raw(data).header("retry-after")) > 0
        # Another address is served...
        response = await get_from(strict, "127.0.0.2", "/stats", basic("alice", PASSWORD))
        assert response.status == 200, response.raw[:200]
        conns += [await held(strict, b"", "127.0.0.2"), await held(strict, b"", "127.0.0.3")]
        # ...until the server holds max_connections (4) in total.
        data = await deferToThread(raw_from, strict.port.getHost().port, "127.0.0.4",
                                   b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 503 "), data[:200]
        for conn in conns:
            conn.close()
        conns = []
        await deferToThread(time.sleep, 0.3)
        response = await get_from(strict, "127.0.0.1", "/stats", basic("alice", PASSWORD))
        assert response.status == 200  # closed connections were counted out
    finally:
        for conn in conns:
            conn.close()


def steady_post(port: int, head: bytes, body: bytes, step: int, every: float) -> bytes:
    """Send ``head``, then ``body`` ``step`` bytes every ``every`` seconds; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for i in range(0, len(body), step):
            time.sleep(every)
            sock.sendall(body[i:i + step])
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "site-only"])
@pytest_twisted.ensureDeferred
async def test_a_slow_but_steady_body_is_read_whole(tmp_path, fake_upstream, fast_path):
    """500 bytes/s for 2 s (minimum 100 bytes/s, header_timeout 1 s): the
    request is answered, with or without the fast path in front."""
    server = await serve(tmp_path, fake_upstream.url, header_timeout=1, min_body_rate=100, fast_path=fast_path)
    try:
        cheap_accounts(server)
        body = b"reason=" + b"x" * 993
        head = (b"POST /api/projects/privproj/1.0/yank HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: 1000\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: "
                + AUTH["Authorization"].encode() + b"\r\n\r\n")
        answer = await deferToThread(steady_post, server.port.getHost().port, head, body, 50, 0.1)
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]  # no such project: it was read and routed
    finally:
        await server.stop()
