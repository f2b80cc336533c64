"""The fake upstream must be right before any proxy test can trust it.

Pages, negotiation, validators and files are checked with treq; the faults
with a raw socket client in a thread, because only bytes on the wire show the
difference between a stall, a reset and a clean-but-short close.  The last two
tests drive real pip and uv straight at the fake upstream: that proves the
built wheels are installable and that :mod:`tests.clients` shuts out this
machine's own pip configuration.
"""

from __future__ import annotations

import errno
import hashlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
import treq
from packaging.utils import parse_wheel_filename
from treq.client import HTTPClient
from twisted.internet import defer, task, threads
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.builders import build_sdist, build_wheel, sha256_file, wheel_metadata
from tests.clients import isolated_env, pip_install, uv_pip_install
from tests.fakeupstream import JSON_TYPE, TEXT_HTML_TYPE, V1_HTML_TYPE, FakeUpstream, negotiate

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
WHEEL2 = "tinyproj-2.0-py3-none-any.whl"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _client() -> HTTPClient:
    """treq without a persistent pool, so no client connection outlives a test."""
    from twisted.web.client import Agent, HTTPConnectionPool

    reactor = _reactor()
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def _get(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, **kw: Any) -> tuple[Any, bytes]:
    client = _client()
    hdrs = {k: [v] for k, v in (headers or {}).items()}
    resp = await client.request(method, url, headers=hdrs, timeout=5, **kw)
    body = await treq.content(resp).addTimeout(5, _reactor())
    return resp, body


def _header(resp: Any, name: str) -> str | None:
    if name.lower() == "content-length":
        # Twisted's client keeps Content-Length out of headers: it is resp.length.
        return None if resp.length is UNKNOWN_LENGTH else str(resp.length)
    values = resp.headers.getRawHeaders(name)
    return values[-1] if values else None


# --------------------------------------------------------- raw socket client


@attrs.frozen
class Raw:
    """What a raw HTTP/1.1 client saw: response head, body bytes, and how it ended."""

    head: bytes
    body: bytes
    end: str  # "eof", "reset" or "timeout"
    elapsed: float

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1]) if self.head else 0

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def _raw(port: int, path: str, *, method: str = "GET", idle: float = 0.5, headers: dict[str, str] | None = None) -> Raw:
    """Send one request with ``Connection: close``; read until EOF, RST, or ``idle`` s of silence."""
    start = time.monotonic()
    data = b""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=idle) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n".encode())
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                end = "timeout"
                break
            except ConnectionResetError:
                end = "reset"
                break
            if not chunk:
                end = "eof"
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return Raw(head, body, end, time.monotonic() - start)


def raw(fu: FakeUpstream, path: str, **kw: Any) -> defer.Deferred[Raw]:
    """Run :func:`_raw` in a thread so the reactor keeps serving."""
    assert fu.port is not None
    return threads.deferToThread(_raw, fu.port, path, **kw)


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    reactor = _reactor()
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await task.deferLater(reactor, 0.01, lambda: None)


# ------------------------------------------------------------------ builders


def test_builders_are_deterministic_and_valid(tmp_path: Path) -> None:
    a = build_wheel(tmp_path / "a", "Foo.Bar", "1.0", requires_dist=["x>1"], extra_bytes=200_000)
    b = build_wheel(tmp_path / "b", "Foo.Bar", "1.0", requires_dist=["x>1"], extra_bytes=200_000)
    assert a.name == "Foo_Bar-1.0-py3-none-any.whl"
    assert sha256_file(a) == sha256_file(b)
    assert a.stat().st_size > 200_000  # padding is incompressible and stored
    name, version, _, _ = parse_wheel_filename(a.name)
    assert (name, str(version)) == ("foo-bar", "1.0")
    meta = wheel_metadata(a)
    assert b"Name: Foo.Bar\n" in meta and b"Requires-Dist: x>1\n" in meta

    import zipfile

    with zipfile.ZipFile(a) as zf:
        record = zf.read("Foo_Bar-1.0.dist-info/RECORD").decode()
        assert "foo_bar/_pad.bin,sha256=" in record
        assert zf.read("foo_bar/__init__.py").endswith(b'__version__ = "1.0"\n')

    s1 = build_sdist(tmp_path / "a", "Foo.Bar", "1.0", requires_python=">=3.8")
    s2 = build_sdist(tmp_path / "b", "Foo.Bar", "1.0", requires_python=">=3.8")
    assert s1.name == "foo_bar-1.0.tar.gz"
    assert sha256_file(s1) == sha256_file(s2)


def test_negotiate() -> None:
    assert negotiate(PIP_ACCEPT) == JSON_TYPE
    assert negotiate(UV_ACCEPT) == JSON_TYPE
    assert negotiate(None) == TEXT_HTML_TYPE
    assert negotiate("*/*") == TEXT_HTML_TYPE
    assert negotiate("text/html") == TEXT_HTML_TYPE
    assert negotiate("application/vnd.pypi.simple.latest+json") == JSON_TYPE
    assert negotiate("application/vnd.pypi.simple.v1+json;q=0, text/html") == TEXT_HTML_TYPE
    assert negotiate("application/vnd.pypi.simple.v1+json;q=0.5, text/html") == TEXT_HTML_TYPE
    assert negotiate("application/vnd.pypi.simple.v1+html, text/html;q=0.5") == V1_HTML_TYPE


def test_isolated_env_strips_local_pip_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("UV_INDEX_URL", "http://example.invalid/")
    env = isolated_env({"EXTRA": "1"})
    assert "PIP_FIND_LINKS" not in env and "UV_INDEX_URL" not in env
    assert env["PIP_CONFIG_FILE"] == "/dev/null" and env["UV_NO_CONFIG"] == "1" and env["EXTRA"] == "1"


# --------------------------------------------------------------------- pages


@pytest_twisted.ensureDeferred
async def test_root_page_html_and_json(fake_upstream: FakeUpstream) -> None:
    resp, body = await _get(fake_upstream.url)
    assert resp.code == 200
    assert _header(resp, "Content-Type") == TEXT_HTML_TYPE
    assert _header(resp, "Vary") == "Accept"
    assert b'<meta name="pypi:repository-version" content="1.1">' in body
    assert b'<a href="tinyproj/">tinyproj</a>' in body
    assert b'<a href="yanked-proj/">Yanked_Proj</a>' in body

    resp, body = await _get(fake_upstream.url, headers={"Accept": PIP_ACCEPT})
    assert _header(resp, "Content-Type") == JSON_TYPE
    doc = json.loads(body)
    assert doc["meta"] == {"api-version": "1.1"}
    assert {p["name"] for p in doc["projects"]} == {"tinyproj", "depproj", "Yanked_Proj"}


@pytest_twisted.ensureDeferred
async def test_project_page_html(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    resp, body = await _get(fu.url + "tinyproj/", headers={"Accept": "text/html"})
    assert resp.code == 200 and _header(resp, "ETag")
    page = body.decode()
    assert '<meta name="pypi:repository-version" content="1.1">' in page
    meta_sha = hashlib.sha256(wheel_metadata(fu.files[WHEEL2])).hexdigest()
    anchor = (
        f'<a href="../../files/{WHEEL2}#sha256={sha256_file(fu.files[WHEEL2])}" '
        f'data-requires-python="&gt;=3.8" data-core-metadata="sha256={meta_sha}" '
        f'data-dist-info-metadata="sha256={meta_sha}">{WHEEL2}</a>'
    )
    assert anchor in page
    # sdists have no PEP 658 metadata; 1.0 has no Requires-Python.
    assert '<a href="../../files/tinyproj-1.0.tar.gz#sha256=' in page
    assert 'tinyproj-1.0.tar.gz#sha256=' + fu.sha256("tinyproj-1.0.tar.gz") + '">' in page

    _, body = await _get(fu.url + "yanked-proj/")
    assert b'data-yanked="broken"' in body


@pytest_twisted.ensureDeferred
async def test_project_page_json(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    resp, body = await _get(fu.url + "tinyproj/", headers={"Accept": UV_ACCEPT})
    assert _header(resp, "Content-Type") == JSON_TYPE and _header(resp, "Vary") == "Accept"
    doc = json.loads(body)
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "tinyproj" and doc["versions"] == ["1.0", "2.0"]
    files = {f["filename"]: f for f in doc["files"]}
    assert set(files) == {"tinyproj-1.0-py3-none-any.whl", "tinyproj-1.0.tar.gz", WHEEL2, "tinyproj-2.0.tar.gz"}
    w = files[WHEEL2]
    assert w["url"] == f"../../files/{WHEEL2}"
    assert w["hashes"] == {"sha256": sha256_file(fu.files[WHEEL2])}
    assert w["requires-python"] == ">=3.8" and w["yanked"] is False
    assert w["core-metadata"] == {"sha256": hashlib.sha256(wheel_metadata(fu.files[WHEEL2])).hexdigest()}
    assert "dist-info-metadata" not in w and "data-dist-info-metadata" not in w
    assert w["size"] == fu.files[WHEEL2].stat().st_size
    assert w["upload-time"].endswith("Z") and len(w["upload-time"]) == len("2024-01-01T00:00:00.000000Z")
    assert files["tinyproj-1.0.tar.gz"]["core-metadata"] is False

    _, body = await _get(fu.url + "yanked-proj/", headers={"Accept": PIP_ACCEPT})
    assert json.loads(body)["files"][0]["yanked"] == "broken"

    _, body = await _get(fu.url + "tinyproj/?format=" + quote(JSON_TYPE, safe=""))
    assert json.loads(body)["name"] == "tinyproj"


@pytest_twisted.ensureDeferred
async def test_html_only_and_absolute_urls(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    fu.html_only = True
    resp, body = await _get(fu.url + "tinyproj/", headers={"Accept": PIP_ACCEPT})
    assert _header(resp, "Content-Type") == TEXT_HTML_TYPE and b"<a href=" in body
    fu.html_only = False
    fu.absolute_urls = True
    _, body = await _get(fu.url + "tinyproj/", headers={"Accept": PIP_ACCEPT})
    url = next(f["url"] for f in json.loads(body)["files"] if f["filename"] == WHEEL2)
    assert url == f"{fu.root_url}files/{WHEEL2}"
    resp, data = await _get(url)
    assert resp.code == 200 and data == fu.files[WHEEL2].read_bytes()


@pytest_twisted.ensureDeferred
async def test_etag_304(fake_upstream: FakeUpstream) -> None:
    url = fake_upstream.url + "tinyproj/"
    resp, _ = await _get(url, headers={"Accept": PIP_ACCEPT})
    etag = _header(resp, "ETag")
    resp, body = await _get(url, headers={"Accept": PIP_ACCEPT, "If-None-Match": etag, "Cache-Control": "max-age=0"})
    assert resp.code == 304 and body == b"" and _header(resp, "ETag") == etag
    assert _header(resp, "Vary") == "Accept"
    # The HTML variant has its own validator.
    resp, _ = await _get(url, headers={"Accept": "text/html", "If-None-Match": etag})
    assert resp.code == 200 and _header(resp, "ETag") != etag


@pytest_twisted.ensureDeferred
async def test_redirects_and_404(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    resp, _ = await _get(fu.url + "tinyproj", allow_redirects=False)
    assert resp.code == 301 and _header(resp, "Location") == "/simple/tinyproj/"
    resp, _ = await _get(fu.url + "Yanked_Proj/", allow_redirects=False)
    assert resp.code == 301 and _header(resp, "Location") == "/simple/yanked-proj/"
    resp, body = await _get(fu.url + "Yanked.Proj")  # followed
    assert resp.code == 200 and b"Yanked_Proj-1.0-py3-none-any.whl" in body
    for path in ("simple/nope/", "files/nope.whl", "files/tinyproj-1.0.tar.gz.metadata", "elsewhere"):
        resp, _ = await _get(fu.root_url + path)
        assert resp.code == 404, path


@pytest_twisted.ensureDeferred
async def test_files_metadata_head_and_range(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    data = fu.files[WHEEL2].read_bytes()
    resp, body = await _get(fu.root_url + "files/" + WHEEL2)
    assert resp.code == 200 and body == data
    assert _header(resp, "Content-Length") == str(len(data))
    assert _header(resp, "Content-Type") == "application/octet-stream"
    r = await raw(fu, "/files/" + WHEEL2, headers={"Accept-Encoding": "gzip"})
    assert r.body == data and r.header("Content-Encoding") is None

    r = await raw(fu, "/files/" + WHEEL2, method="HEAD")  # Twisted's client hides HEAD lengths
    assert r.status == 200 and r.body == b"" and r.end == "eof"
    assert r.header("Content-Length") == str(len(data)) and r.header("Accept-Ranges") == "bytes"

    resp, body = await _get(fu.root_url + "files/" + WHEEL2 + ".metadata")
    assert body == wheel_metadata(fu.files[WHEEL2])
    assert _header(resp, "Content-Length") == str(len(body))

    resp, body = await _get(fu.root_url + "files/" + WHEEL2, headers={"Range": "bytes=-22"})
    assert resp.code == 206 and body == data[-22:]
    assert _header(resp, "Content-Range") == f"bytes {len(data) - 22}-{len(data) - 1}/{len(data)}"
    resp, body = await _get(fu.root_url + "files/" + WHEEL2, headers={"Range": "bytes=10-19"})
    assert resp.code == 206 and body == data[10:20]
    resp, _ = await _get(fu.root_url + "files/" + WHEEL2, headers={"Range": f"bytes={len(data)}-"})
    assert resp.code == 416


@pytest_twisted.ensureDeferred
async def test_add_without_metadata_and_remove(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fu = fake_upstream
    whl = build_wheel(tmp_path, "plain", "0.1")
    fu.add(whl, metadata=False, upload_time="2020-02-02T02:02:02.000000Z", requires_python="<4")
    _, body = await _get(fu.url + "plain/", headers={"Accept": PIP_ACCEPT})
    (entry,) = json.loads(body)["files"]
    assert entry["core-metadata"] is False and entry["upload-time"] == "2020-02-02T02:02:02.000000Z"
    assert entry["requires-python"] == "<4"
    _, body = await _get(fu.url + "plain/")
    assert b"data-core-metadata" not in body and b'data-requires-python="&lt;4"' in body
    resp, _ = await _get(fu.root_url + f"files/{whl.name}.metadata")
    assert resp.code == 404
    fu.remove(whl.name)
    resp, _ = await _get(fu.url + "plain/")
    assert resp.code == 404


@pytest_twisted.ensureDeferred
async def test_request_log_and_counters(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    await _get(fu.url + "tinyproj/?x=1", headers={"Accept": PIP_ACCEPT})
    await _get(fu.root_url + "files/" + WHEEL2, method="HEAD")
    method, path, headers = fu.requests[0]
    assert (method, path) == ("GET", "/simple/tinyproj/?x=1")
    assert headers["accept"] == PIP_ACCEPT
    assert fu.count("/simple/tinyproj/") == 1
    assert fu.count(WHEEL2) == 1 and fu.count(WHEEL2, method="HEAD") == 1 and fu.count(WHEEL2, "GET") == 0
    fu.reset_log()
    assert fu.requests == [] and fu.count("/") == 0


# -------------------------------------------------------------------- faults


def test_fail_rejects_typos() -> None:
    fu = FakeUpstream()
    with pytest.raises(ValueError):
        fu.fail("explode")
    with pytest.raises(TypeError):
        fu.fail("status", cod=500)


@pytest_twisted.ensureDeferred
async def test_fault_status_prefix_and_times(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    fu.fail("status", "/simple/", code=503, retry_after=7)
    resp, _ = await _get(fu.url + "tinyproj/")
    assert resp.code == 503 and _header(resp, "Retry-After") == "7"
    resp, _ = await _get(fu.root_url + "files/" + WHEEL2)
    assert resp.code == 200  # other prefixes unaffected
    fu.fail("status", "/simple/tinyproj/", code=429, times=1)  # longest prefix wins, once
    resp, _ = await _get(fu.url + "tinyproj/")
    assert resp.code == 429
    resp, _ = await _get(fu.url + "tinyproj/")
    assert resp.code == 503
    fu.heal()
    resp, _ = await _get(fu.url + "tinyproj/")
    assert resp.code == 200


@pytest_twisted.ensureDeferred
async def test_fault_hang(fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail("hang")
    r = await raw(fake_upstream, "/simple/tinyproj/", idle=0.3)
    assert (r.end, r.head, r.body) == ("timeout", b"", b"")
    assert fake_upstream.count("/simple/tinyproj/") == 1


@pytest_twisted.ensureDeferred
async def test_fault_stall(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    data = fu.files[WHEEL2].read_bytes()
    fu.fail("stall", "/files/", after=100)
    r = await raw(fu, "/files/" + WHEEL2, idle=0.3)
    assert r.end == "timeout" and r.status == 200
    assert r.header("Content-Length") == str(len(data)) and r.body == data[:100]


@pytest_twisted.ensureDeferred
async def test_fault_reset(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    data = fu.files[WHEEL2].read_bytes()
    fu.fail("reset", "/files/", after=200)
    r = await raw(fu, "/files/" + WHEEL2, idle=2)
    assert r.end == "reset" and r.status == 200
    assert data.startswith(r.body) and len(r.body) <= 200


@pytest_twisted.ensureDeferred
async def test_fault_truncate(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    data = fu.files[WHEEL2].read_bytes()
    fu.fail("truncate", "/files/", after=300)
    r = await raw(fu, "/files/" + WHEEL2, idle=2)
    assert r.end == "eof" and r.header("Content-Length") == str(len(data)) and r.body == data[:300]
    fu.fail("truncate", "/files/")  # default: half
    r = await raw(fu, "/files/" + WHEEL2, idle=2)
    assert r.end == "eof" and r.body == data[: len(data) // 2]


@pytest_twisted.ensureDeferred
async def test_fault_overlong(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    data = fu.files[WHEEL2].read_bytes()
    fu.fail("overlong", "/files/", extra=10)
    r = await raw(fu, "/files/" + WHEEL2, idle=2)
    assert r.end == "eof" and r.header("Content-Length") == str(len(data))
    assert r.body == data + b"X" * 10


@pytest_twisted.ensureDeferred
async def test_fault_wrong_bytes(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    fu.fail("wrong_bytes", "/files/")
    resp, body = await _get(fu.root_url + "files/" + WHEEL2)
    assert resp.code == 200 and len(body) == fu.files[WHEEL2].stat().st_size
    assert hashlib.sha256(body).hexdigest() != fu.sha256(WHEEL2)


@pytest_twisted.ensureDeferred
async def test_fault_malformed(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    fu.fail("malformed", "/simple/")
    resp, body = await _get(fu.url + "tinyproj/", headers={"Accept": PIP_ACCEPT})
    assert resp.code == 200 and _header(resp, "Content-Type") == JSON_TYPE
    with pytest.raises(ValueError):
        json.loads(body)
    resp, body = await _get(fu.url + "tinyproj/")
    assert resp.code == 200 and b"repository-version" not in body and b"tinyproj-2.0" not in body


@pytest_twisted.ensureDeferred
async def test_fault_huge_page(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    size = 3 * 1024 * 1024 + 7
    fu.fail("huge_page", "/simple/", size=size)
    resp, body = await _get(fu.url + "tinyproj/", headers={"Accept": PIP_ACCEPT})
    assert len(body) == size and _header(resp, "Content-Length") is None
    assert json.loads(body)["name"] == "huge"
    fu.fail("huge_page", "/simple/", size=size, content_length=True)
    resp, body = await _get(fu.url + "tinyproj/")
    assert len(body) == size and _header(resp, "Content-Length") == str(size)
    assert body.startswith(b"<!DOCTYPE html>") and body.endswith(b"</html>\n")


@pytest_twisted.ensureDeferred
async def test_fault_redirect_loop(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    fu.fail("redirect_loop", "/files/")
    url = fu.root_url + "files/" + WHEEL2
    resp, _ = await _get(url, allow_redirects=False)
    assert resp.code == 302 and _header(resp, "Location") == url


@pytest_twisted.ensureDeferred
async def test_fault_slow_and_delay(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    data = fu.files[WHEEL2].read_bytes()
    fu.fail("slow", "/files/", rate=len(data) * 4)  # about 0.25 s
    start = time.monotonic()
    _, body = await _get(fu.root_url + "files/" + WHEEL2)
    assert body == data and time.monotonic() - start >= 0.15
    fu.fail("delay", "/files/", seconds=0.3)
    start = time.monotonic()
    _, body = await _get(fu.root_url + "files/" + WHEEL2)
    assert body == data and time.monotonic() - start >= 0.3


def _our_delayed_calls() -> list[Any]:
    return [
        dc for dc in _reactor().getDelayedCalls() if getattr(dc.func, "__module__", None) == FakeUpstream.__module__
    ]


@pytest_twisted.ensureDeferred
async def test_stop_drops_everything_and_start_again(fake_upstream: FakeUpstream) -> None:
    fu = fake_upstream
    fu.fail("hang", "/simple/tinyproj/")
    fu.fail("stall", "/files/", after=10)
    fu.fail("slow", "/simple/depproj/", rate=1)
    fu.fail("delay", "/simple/yanked-proj/", seconds=30)
    pending = [
        raw(fu, path, idle=5)
        for path in ("/simple/tinyproj/", "/files/" + WHEEL2, "/simple/depproj/", "/simple/yanked-proj/")
    ]
    await _until(lambda: len(fu.requests) == 4)
    assert _our_delayed_calls()  # slow pacing and delay are waiting
    await fu.stop()
    results = await defer.gatherResults(pending).addTimeout(5, _reactor())
    for r in results:
        assert r.end in ("reset", "eof") and r.elapsed < 4
    assert not _our_delayed_calls() and not fu._calls
    assert not fu.listening

    with pytest.raises(OSError) as exc:
        socket.create_connection(("127.0.0.1", fu.port), timeout=1).close()
    assert exc.value.errno == errno.ECONNREFUSED

    port = fu.port
    fu.heal()
    await fu.start_again()
    assert fu.port == port
    resp, _ = await _get(fu.url + "tinyproj/")
    assert resp.code == 200


# ---------------------------------------------------------- real installers


def _installed_version(target: Path, module: str) -> str:
    text = (target / module / "__init__.py").read_text()
    return text.split('__version__ = "')[1].split('"')[0]


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_pip_installs_from_fake_upstream(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fu = fake_upstream
    target = tmp_path / "pip-target"
    proc = await threads.deferToThread(pip_install, fu.url, "depproj", target=target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _installed_version(target, "depproj") == "1.0"
    assert _installed_version(target, "tinyproj") == "2.0"
    # Everything came from the fake upstream, not from /etc/pip.conf or PIP_FIND_LINKS.
    assert fu.count("/files/depproj-1.0-py3-none-any.whl", "GET") >= 1
    assert fu.count("/files/" + WHEEL2, "GET") >= 1
    accept = next(h["accept"] for m, p, h in fu.requests if p == "/simple/depproj/")
    assert "application/vnd.pypi.simple.v1+json" in accept


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_uv_installs_from_fake_upstream(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fu = fake_upstream
    target = tmp_path / "uv-target"
    proc = await threads.deferToThread(uv_pip_install, fu.url, "depproj", "yanked-proj==1.0", target=target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _installed_version(target, "depproj") == "1.0"
    assert _installed_version(target, "tinyproj") == "2.0"
    assert _installed_version(target, "yanked_proj") == "1.0"
    assert "yanked" in proc.stderr  # uv noticed data-yanked/"yanked"
    assert fu.count("/files/depproj-1.0-py3-none-any.whl", "GET") >= 1
    assert fu.count("/files/" + WHEEL2, "GET") >= 1
    assert fu.count("/simple/yanked-proj/") >= 1
