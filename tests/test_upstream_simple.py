"""The ``simple`` upstream provider against a tiny local Twisted site.

Each test registers handlers on a :class:`_Routes` resource listening on
127.0.0.1; handlers may misbehave on purpose (stall, truncate, reset).
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from pypicache.errors import ConfigError
from pypicache.interfaces import IProviderFactory, IUpstream, IUpstreamDownload
from pypicache.model import NotModified, UpstreamError, UpstreamNotFound, Validators
from pypicache.providers import HTTPSettings, ProviderContext
from pypicache.providers.upstream import simple
from pypicache.providers.upstream.simple import UpstreamStatusError, factory
from pypicache.testing import UpstreamContract

SHA = "a" * 64
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def _reactor():
    from twisted.internet import reactor

    return reactor


class _Routes(Resource):
    """Path -> handler(request) returning bytes or NOT_DONE_YET; records requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[str, Callable[[Any], Any]] = {}
        self.seen: list[Any] = []
        self.open: list[Any] = []
        self.base = ""

    def render(self, request):
        self.seen.append(request)
        path = request.path.decode()
        handler = self.handlers.get(path)
        if handler is None:
            request.setResponseCode(404)
            return b"not here"
        result = handler(request)
        if result is NOT_DONE_YET:
            self.open.append(request)
        return result

    def headers(self, name: str) -> list[str | None]:
        values = (r.requestHeaders.getRawHeaders(name.encode()) for r in self.seen)
        return [v[0].decode() if v else None for v in values]


def _listen(routes: _Routes):
    port = _reactor().listenTCP(0, Site(routes), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}/"


@pytest.fixture
def server():
    routes = _Routes()
    port, routes.base = _listen(routes)
    yield routes
    for request in routes.open:
        if request.transport is not None and not request.finished:
            request.transport.abortConnection()
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def threadpool():
    pool = ThreadPool(minthreads=0, maxthreads=2, name="test-upstream")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def make_upstream(server, threadpool, tmp_path):
    made = []
    http = HTTPSettings(connect_timeout=2.0, read_timeout=0.3, page_timeout=0.5, user_agent="pypicache-test")

    def make(*, settings: HTTPSettings = http, **options):
        options.setdefault("url", server.base + "simple/")
        context = ProviderContext(reactor=_reactor(), threadpool=threadpool, data_dir=tmp_path, http=settings)
        upstream = factory.create(options, context)
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        pytest_twisted.blockon(upstream.close())


async def _within(d, seconds: float = 5.0):
    """Await ``d`` but fail (not hang) after ``seconds``."""
    return await d.addTimeout(seconds, _reactor())


async def _failure(d, seconds: float = 5.0) -> BaseException:
    try:
        await _within(d, seconds)
    except defer.TimeoutError:
        raise AssertionError("hung instead of failing")
    except BaseException as e:
        return e
    raise AssertionError("did not fail")


def _json_page(files, **extra) -> bytes:
    return json.dumps({"meta": {"api-version": "1.1"}, "name": "demo", "files": files,
                       "versions": ["1.0"], **extra}).encode()


def _serve(body: bytes, content_type: str = JSON_TYPE, **headers: str):
    def handler(request):
        request.setHeader("content-type", content_type)
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-"), value)
        return body

    return handler


async def _download(upstream, url: str) -> tuple[Any, list[bytes]]:
    download = await _within(upstream.open_file(url))
    chunks: list[bytes] = []
    await _within(download.deliver(chunks.append))
    return download, chunks


# -------------------------------------------------------------------- config


def test_factory_and_provider_verify(make_upstream):
    verifyObject(IProviderFactory, factory)
    assert factory.kind == "upstream"
    upstream = make_upstream()
    verifyObject(IUpstream, upstream)


def test_url_gets_trailing_slash(make_upstream, server):
    assert make_upstream(url=server.base + "simple").url == server.base + "simple/"


@pytest_twisted.ensureDeferred
async def test_default_url(tmp_path):
    upstream = factory.create({}, ProviderContext(reactor=_reactor(), threadpool=None, data_dir=tmp_path))
    assert upstream.url == "https://pypi.org/simple/"
    await upstream.close()


@pytest.mark.parametrize("options, key", [
    ({"bogus": 1}, "upstream.bogus"),
    ({"url": "ftp://example.com/simple/"}, "upstream.url"),
    ({"url": "not a url"}, "upstream.url"),
    ({"url": "https://example.com/simple/?x=1"}, "upstream.url"),
    ({"url": 5}, "upstream.url"),
    ({"url": "https://user:pw@example.com/simple/"}, "upstream.url"),
    ({"connect_timeout": -1}, "upstream.connect_timeout"),
    ({"read_timeout": 0}, "upstream.read_timeout"),
    ({"page_timeout": True}, "upstream.page_timeout"),
    ({"page_timeout": "3"}, "upstream.page_timeout"),
    ({"page_timeout": float("nan")}, "upstream.page_timeout"),
    ({"max_page_bytes": 1.5}, "upstream.max_page_bytes"),
    ({"max_page_bytes": 0}, "upstream.max_page_bytes"),
    ({"headers": "x"}, "upstream.headers"),
    ({"headers": {"Bad Name": "x"}}, "upstream.headers"),
    ({"headers": {"X-Token": "a\r\nInjected: 1"}}, "upstream.headers"),
    ({"headers": {"X-Token": 5}}, "upstream.headers"),
])
def test_bad_options(options, key, tmp_path):
    context = ProviderContext(reactor=_reactor(), threadpool=None, data_dir=tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        factory.create(options, context)


def test_options_override_http_settings(make_upstream):
    upstream = make_upstream(connect_timeout=1, read_timeout=2.5, page_timeout=3, max_page_bytes=1000)
    assert upstream._http.connect_timeout == 1.0
    assert upstream._http.read_timeout == 2.5
    assert upstream._http.page_timeout == 3.0
    assert upstream._http.max_page_bytes == 1000
    assert upstream._http.user_agent == "pypicache-test"


# --------------------------------------------------------------------- pages


@pytest_twisted.ensureDeferred
async def test_json_page(make_upstream, server):
    server.handlers["/simple/demo/"] = _serve(
        _json_page([{"filename": "demo-1.0.tar.gz", "url": "../../files/demo-1.0.tar.gz",
                     "hashes": {"sha256": SHA}, "size": 3, "core-metadata": True}],
                   meta={"api-version": "1.1", "tracks": ["x"]}),
        etag='"v1"', last_modified="Wed, 01 Jan 2025 00:00:00 GMT")
    page = await _within(make_upstream().fetch_project("Demo", Validators()))
    assert page.name == "demo"
    assert page.validators == Validators(etag='"v1"', last_modified="Wed, 01 Jan 2025 00:00:00 GMT")
    (f,) = page.files
    assert f.url == server.base + "files/demo-1.0.tar.gz"
    assert f.sha256 == SHA and f.size == 3 and f.core_metadata == {}
    assert page.versions == ("1.0",)
    assert page.meta == {"tracks": ["x"]}
    assert server.headers("accept") == [simple.ACCEPT]
    assert server.headers("user-agent") == ["pypicache-test"]
    assert server.headers("if-none-match") == [None]


@pytest_twisted.ensureDeferred
async def test_html_fallback_after_redirect(make_upstream, server):
    """An HTML-only server, behind a redirect: links resolve against the final URL."""
    def moved(request):
        request.redirect(b"/other/place/")
        return b""

    server.handlers["/simple/demo/"] = moved
    server.handlers["/other/place/"] = _serve(
        b'<html><body><a href="../files/demo-1.0.tar.gz#sha256=' + SHA.encode()
        + b'" data-requires-python="&gt;=3.9" data-yanked="old">demo-1.0.tar.gz</a></body></html>',
        "text/html; charset=utf-8")
    page = await _within(make_upstream().fetch_project("demo", Validators()))
    (f,) = page.files
    assert f.url == server.base + "other/files/demo-1.0.tar.gz"
    assert (f.sha256, f.requires_python, f.yanked, f.yanked_reason) == (SHA, ">=3.9", True, "old")
    assert page.name == "demo"


@pytest_twisted.ensureDeferred
async def test_unknown_content_type_tries_json_then_html(make_upstream, server):
    server.handlers["/simple/a/"] = _serve(_json_page([]), "application/octet-stream")
    server.handlers["/simple/b/"] = _serve(b'<a href="b-1.tar.gz">b-1.tar.gz</a>', "text/plain")
    upstream = make_upstream()
    assert (await _within(upstream.fetch_project("a", Validators()))).files == ()
    page = await _within(upstream.fetch_project("b", Validators()))
    assert [f.filename for f in page.files] == ["b-1.tar.gz"]


@pytest_twisted.ensureDeferred
async def test_conditional_request_304(make_upstream, server):
    def handler(request):
        if request.requestHeaders.getRawHeaders(b"if-none-match") == [b'"v1"']:
            request.setResponseCode(304)
            return b""
        return _serve(_json_page([]), etag='"v1"')(request)

    server.handlers["/simple/demo/"] = handler
    upstream = make_upstream()
    page = await _within(upstream.fetch_project("demo", Validators()))
    assert page.validators.etag == '"v1"'
    error = await _failure(upstream.fetch_project("demo", page.validators))
    assert isinstance(error, NotModified)
    error = await _failure(upstream.fetch_project(
        "demo", Validators(etag='"v1"', last_modified="Wed, 01 Jan 2025 00:00:00 GMT")))
    assert isinstance(error, NotModified)
    assert server.headers("if-modified-since")[-1] == "Wed, 01 Jan 2025 00:00:00 GMT"


@pytest_twisted.ensureDeferred
async def test_not_found_404_and_410(make_upstream, server):
    def gone(request):
        request.setResponseCode(410)
        return b"gone"

    server.handlers["/simple/gone/"] = gone
    upstream = make_upstream()
    assert isinstance(await _failure(upstream.fetch_project("missing", Validators())), UpstreamNotFound)
    assert isinstance(await _failure(upstream.fetch_project("gone", Validators())), UpstreamNotFound)
    assert isinstance(await _failure(upstream.fetch_project("../etc", Validators())), UpstreamNotFound)


@pytest_twisted.ensureDeferred
async def test_server_errors(make_upstream, server):
    def status(code, **headers):
        def handler(request):
            request.setResponseCode(code)
            for name, value in headers.items():
                request.setHeader(name.replace("_", "-"), value)
            return b"oops"
        return handler

    server.handlers["/simple/broken/"] = status(500)
    server.handlers["/simple/busy/"] = status(503, retry_after="120")
    server.handlers["/simple/limited/"] = status(429, retry_after="7")
    upstream = make_upstream()
    error = await _failure(upstream.fetch_project("broken", Validators()))
    assert isinstance(error, UpstreamStatusError) and error.status == 500 and "500" in str(error)
    error = await _failure(upstream.fetch_project("busy", Validators()))
    assert isinstance(error, UpstreamError) and error.retry_after == "120" and "120" in str(error)
    error = await _failure(upstream.fetch_project("limited", Validators()))
    assert error.status == 429 and error.retry_after == "7"


@pytest_twisted.ensureDeferred
async def test_page_that_never_answers_times_out(make_upstream, server):
    server.handlers["/simple/slow/"] = lambda request: NOT_DONE_YET
    started = time.monotonic()
    error = await _failure(make_upstream(page_timeout=0.3).fetch_project("slow", Validators()))
    assert isinstance(error, UpstreamError) and "timed out" in str(error)
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_page_body_that_stops_times_out(make_upstream, server):
    def handler(request):
        request.setHeader("content-type", JSON_TYPE)
        request.setHeader("content-length", "1000")
        request.write(b'{"meta": ')
        return NOT_DONE_YET

    server.handlers["/simple/slow/"] = handler
    error = await _failure(make_upstream(page_timeout=0.3).fetch_project("slow", Validators()))
    assert isinstance(error, UpstreamError) and "timed out" in str(error)


@pytest_twisted.ensureDeferred
async def test_page_size_cap(make_upstream, server):
    big = _json_page([{"filename": f"demo-{i}.tar.gz", "url": f"demo-{i}.tar.gz", "hashes": {}}
                      for i in range(200)])

    def chunked(request):  # no Content-Length: the cap is enforced while reading
        request.setHeader("content-type", JSON_TYPE)
        request.write(big[:5000])
        request.write(big[5000:])
        request.finish()
        return NOT_DONE_YET

    server.handlers["/simple/big/"] = _serve(big)
    server.handlers["/simple/chunked/"] = chunked
    upstream = make_upstream(max_page_bytes=4096)
    for name in ("big", "chunked"):
        error = await _failure(upstream.fetch_project(name, Validators()))
        assert isinstance(error, UpstreamError) and "4096" in str(error)


@pytest_twisted.ensureDeferred
async def test_gzip_page_decoded_and_capped_after_decoding(make_upstream, server):
    body = _json_page([{"filename": "a-1.tar.gz", "url": "a-1.tar.gz", "hashes": {}}])
    bomb = body[:-1] + b", " + b" " * 200_000 + b"}"
    server.handlers["/simple/demo/"] = _serve(gzip.compress(body), content_encoding="gzip")
    server.handlers["/simple/bomb/"] = _serve(gzip.compress(bomb), content_encoding="gzip")
    upstream = make_upstream(max_page_bytes=100_000)
    page = await _within(upstream.fetch_project("demo", Validators()))
    assert [f.filename for f in page.files] == ["a-1.tar.gz"]
    assert server.headers("accept-encoding") == ["gzip"]
    error = await _failure(upstream.fetch_project("bomb", Validators()))
    assert isinstance(error, UpstreamError) and "100000" in str(error)


@pytest_twisted.ensureDeferred
async def test_big_page_parsed_in_thread(make_upstream, server, monkeypatch):
    files = [{"filename": f"demo-{i}.tar.gz", "url": f"demo-{i}.tar.gz", "hashes": {"sha256": SHA}}
             for i in range(4000)]
    body = _json_page(files)
    assert len(body) > simple.THREAD_PARSE_BYTES
    server.handlers["/simple/demo/"] = _serve(body)
    calls = []
    real = simple.deferToThreadPool
    monkeypatch.setattr(simple, "deferToThreadPool", lambda *a, **k: calls.append(1) or real(*a, **k))
    # A page deadline for a loaded machine: what is tested is where the parse runs.
    roomy = HTTPSettings(connect_timeout=2.0, read_timeout=5.0, page_timeout=5.0, user_agent="pypicache-test")
    page = await _within(make_upstream(settings=roomy).fetch_project("demo", Validators()), 10.0)
    assert len(page.files) == 4000 and calls == [1]


@pytest_twisted.ensureDeferred
async def test_malformed_and_unsupported_pages(make_upstream, server):
    server.handlers["/simple/bad/"] = _serve(b"{not json")
    server.handlers["/simple/v2/"] = _serve(json.dumps(
        {"meta": {"api-version": "2.0"}, "name": "v2", "files": []}).encode())
    upstream = make_upstream()
    for name in ("bad", "v2"):
        error = await _failure(upstream.fetch_project(name, Validators()))
        assert isinstance(error, UpstreamError) and "malformed" in str(error)


@pytest_twisted.ensureDeferred
async def test_redirect_loop_fails_fast(make_upstream, server):
    def loop(request):
        request.redirect(request.path)
        return b""

    server.handlers["/simple/loop/"] = loop
    started = time.monotonic()
    error = await _failure(make_upstream(page_timeout=5).fetch_project("loop", Validators()))
    assert isinstance(error, UpstreamError) and "redirect" in str(error)
    assert len(server.seen) == simple.MAX_REDIRECTS + 1
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_connection_refused(make_upstream, server):
    port, base = _listen(_Routes())
    await port.stopListening()
    error = await _failure(make_upstream(url=base + "simple/").fetch_project("demo", Validators()))
    assert isinstance(error, UpstreamError)
    error = await _failure(make_upstream().open_file(base + "files/x.whl"))
    assert isinstance(error, UpstreamError)


@pytest_twisted.ensureDeferred
async def test_project_list(make_upstream, server):
    server.handlers["/simple/"] = _serve(json.dumps({
        "meta": {"api-version": "1.0"},
        "projects": [{"name": "Foo_Bar"}, {"name": "baz"}, {"name": "-bad-"}]}).encode(), etag='"r"')
    upstream = make_upstream()
    listing = await _within(upstream.fetch_project_list(Validators()))
    assert listing.names == ("foo-bar", "baz")
    assert listing.validators.etag == '"r"'
    server.handlers["/simple/"] = _serve(b'<a href="/simple/x/">X</a>', "text/html")
    assert (await _within(upstream.fetch_project_list(Validators()))).names == ("x",)


@pytest_twisted.ensureDeferred
async def test_extra_headers_only_to_upstream_origin(make_upstream, server):
    other = _Routes()
    port, other.base = _listen(other)
    try:
        server.handlers["/simple/demo/"] = _serve(_json_page(
            [{"filename": "a-1.tar.gz", "url": other.base + "files/a-1.tar.gz", "hashes": {}}]))
        server.handlers["/files/own.tar.gz"] = _serve(b"own", "application/octet-stream")
        other.handlers["/files/a-1.tar.gz"] = _serve(b"abc", "application/octet-stream")
        other_host = other.base.split("/")[2]  # another port on loopback: allowed explicitly
        upstream = make_upstream(headers={"Authorization": "Bearer secret"}, file_hosts=[other_host],
                                 allow_networks=["127.0.0.1/32"])
        page = await _within(upstream.fetch_project("demo", Validators()))
        _, chunks = await _download(upstream, page.files[0].url)
        assert b"".join(chunks) == b"abc"
        await _download(upstream, server.base + "files/own.tar.gz")
        assert server.headers("authorization") == ["Bearer secret", "Bearer secret"]
        assert other.headers("authorization") == [None]
    finally:
        await port.stopListening()


# ----------------------------------------------------------------- downloads


@pytest_twisted.ensureDeferred
async def test_download_streams_in_chunks(make_upstream, server):
    payload = bytes(range(256)) * 4096  # 1 MiB

    def handler(request):
        request.setHeader("content-type", "application/octet-stream")
        request.setHeader("content-length", str(len(payload)))
        for i in range(0, len(payload), 65536):
            request.write(payload[i:i + 65536])
        request.finish()
        return NOT_DONE_YET

    server.handlers["/files/demo-1.0.whl"] = handler
    download, chunks = await _download(make_upstream(), server.base + "files/demo-1.0.whl")
    verifyObject(IUpstreamDownload, download)
    assert download.length == len(payload)
    assert b"".join(chunks) == payload and len(chunks) > 1
    assert server.headers("accept-encoding") == ["identity"]


@pytest_twisted.ensureDeferred
async def test_download_without_length(make_upstream, server):
    def chunked(request):
        request.write(b"abc")
        request.write(b"def")
        request.finish()
        return NOT_DONE_YET

    server.handlers["/files/x.tar.gz"] = chunked
    download, chunks = await _download(make_upstream(), server.base + "files/x.tar.gz")
    assert download.length is None and b"".join(chunks) == b"abcdef"


@pytest_twisted.ensureDeferred
async def test_download_follows_redirect(make_upstream, server):
    def moved(request):
        request.redirect(b"/real/x.whl")
        return b""

    server.handlers["/files/x.whl"] = moved
    server.handlers["/real/x.whl"] = _serve(b"wheel", "application/octet-stream")
    _, chunks = await _download(make_upstream(), server.base + "files/x.whl")
    assert b"".join(chunks) == b"wheel"


@pytest_twisted.ensureDeferred
async def test_download_statuses(make_upstream, server):
    def status(code):
        def handler(request):
            request.setResponseCode(code)
            return b"no"
        return handler

    server.handlers["/files/gone.whl"] = status(410)
    server.handlers["/files/err.whl"] = status(502)
    upstream = make_upstream()
    assert isinstance(await _failure(upstream.open_file(server.base + "files/nope.whl")), UpstreamNotFound)
    assert isinstance(await _failure(upstream.open_file(server.base + "files/gone.whl")), UpstreamNotFound)
    error = await _failure(upstream.open_file(server.base + "files/err.whl"))
    assert isinstance(error, UpstreamError) and "502" in str(error)
    for bad in ("file:///etc/passwd", "/relative.whl", "javascript:x", ""):
        assert isinstance(await _failure(upstream.open_file(bad)), UpstreamError)


@pytest_twisted.ensureDeferred
async def test_download_headers_never_come(make_upstream, server):
    server.handlers["/files/slow.whl"] = lambda request: NOT_DONE_YET
    started = time.monotonic()
    upstream = make_upstream(connect_timeout=0.2, read_timeout=0.2)
    error = await _failure(upstream.open_file(server.base + "files/slow.whl"))
    assert isinstance(error, UpstreamError) and "timed out" in str(error)
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_download_stall_detected(make_upstream, server):
    def stall(request):
        request.setHeader("content-length", "100")
        request.write(b"x" * 10)
        _reactor().callLater(0.1, lambda: request.finished or request.write(b"y" * 10))
        return NOT_DONE_YET

    server.handlers["/files/stall.whl"] = stall
    download = await _within(make_upstream(read_timeout=0.3).open_file(server.base + "files/stall.whl"))
    chunks: list[bytes] = []
    started = time.monotonic()
    error = await _failure(download.deliver(chunks.append))
    assert isinstance(error, UpstreamError) and "stalled" in str(error)
    assert b"".join(chunks) == b"x" * 10 + b"y" * 10
    assert 0.3 <= time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_download_truncated(make_upstream, server):
    def truncated(request):
        request.setHeader("content-length", "100")
        request.write(b"x" * 50)
        _reactor().callLater(0.05, request.transport.loseConnection)
        return NOT_DONE_YET

    server.handlers["/files/short.whl"] = truncated
    download = await _within(make_upstream().open_file(server.base + "files/short.whl"))
    assert download.length == 100
    chunks: list[bytes] = []
    error = await _failure(download.deliver(chunks.append))
    assert isinstance(error, UpstreamError) and "truncated" in str(error)
    assert len(b"".join(chunks)) == 50


@pytest_twisted.ensureDeferred
async def test_download_reset(make_upstream, server):
    def reset(request):
        request.write(b"x" * 50)  # chunked: no length, then a reset
        _reactor().callLater(0.05, request.transport.abortConnection)
        return NOT_DONE_YET

    server.handlers["/files/reset.whl"] = reset
    download = await _within(make_upstream().open_file(server.base + "files/reset.whl"))
    error = await _failure(download.deliver(lambda data: None))
    assert isinstance(error, UpstreamError) and "truncated" in str(error)


@pytest_twisted.ensureDeferred
async def test_close_delimited_body_is_suspect():
    """No Content-Length and no chunking: the end cannot be told from a reset.

    (Twisted's server always chunks on HTTP/1.1, so the reader is driven directly.)
    """
    reader = simple._BodyReader(lambda d: None, "u", clock=_reactor())
    reader.connectionLost(Failure(PotentialDataLoss()))
    error = await _failure(reader.done)
    assert isinstance(error, UpstreamError) and "truncated" in str(error)


@pytest_twisted.ensureDeferred
async def test_download_overlong(make_upstream, server):
    """Bytes beyond Content-Length never reach the writer, nor the next response."""
    def overlong(request):
        request.setHeader("content-length", "10")
        request.write(b"x" * 10 + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
        request.finish()
        return NOT_DONE_YET

    server.handlers["/files/long.whl"] = overlong
    server.handlers["/files/next.whl"] = _serve(b"good", "application/octet-stream")
    upstream = make_upstream()
    # Twisted's client stops at Content-Length and drops the connection's rest.
    download, chunks = await _download(upstream, server.base + "files/long.whl")
    assert download.length == 10 and b"".join(chunks) == b"x" * 10
    _, chunks = await _download(upstream, server.base + "files/next.whl")
    assert b"".join(chunks) == b"good"
    # An agent that does pass extra bytes on meets the reader's own count.
    chunks = []
    reader = simple._BodyReader(chunks.append, "u", clock=_reactor(), expected=10)
    reader.dataReceived(b"y" * 8)
    reader.dataReceived(b"y" * 8)
    error = await _failure(reader.done)
    assert isinstance(error, UpstreamError) and "overlong" in str(error)
    assert chunks == [b"y" * 8]


@pytest_twisted.ensureDeferred
async def test_download_cancel(make_upstream, server):
    def endless(request):
        request.setHeader("content-length", "1000000")
        request.write(b"x" * 100)
        return NOT_DONE_YET

    server.handlers["/files/endless.whl"] = endless
    upstream = make_upstream(read_timeout=5)
    download = await _within(upstream.open_file(server.base + "files/endless.whl"))
    d = download.deliver(lambda data: None)
    download.cancel()
    error = await _failure(d)
    assert isinstance(error, UpstreamError) and "cancel" in str(error)
    # Cancelled before delivering: deliver fails at once.
    download = await _within(upstream.open_file(server.base + "files/endless.whl"))
    download.cancel()
    assert isinstance(await _failure(download.deliver(lambda data: None)), UpstreamError)


@pytest_twisted.ensureDeferred
async def test_download_writer_error_propagates(make_upstream, server):
    server.handlers["/files/x.whl"] = _serve(b"data" * 100, "application/octet-stream")
    download = await _within(make_upstream().open_file(server.base + "files/x.whl"))

    def write(data):
        raise OSError("disk full")

    error = await _failure(download.deliver(write))
    assert isinstance(error, OSError) and "disk full" in str(error)


@pytest_twisted.ensureDeferred
async def test_sixteen_concurrent_downloads_do_not_queue(make_upstream, server):
    """Every response waits until all 16 requests reached the server: queued
    downloads would deadlock (and time out) here."""
    waiting: list[Any] = []

    def handler(request):
        waiting.append(request)
        if len(waiting) == 16:
            for r in waiting:
                r.setHeader("content-length", "3")
                r.write(b"abc")
                r.finish()
        return NOT_DONE_YET

    for i in range(16):
        server.handlers[f"/files/f{i}.whl"] = handler
    upstream = make_upstream(read_timeout=3)
    results = await _within(defer.gatherResults(
        [defer.ensureDeferred(_download(upstream, server.base + f"files/f{i}.whl")) for i in range(16)],
        consumeErrors=True), 10)
    assert all(b"".join(chunks) == b"abc" for _, chunks in results)


# ------------------------------------------------------------ request URLs

@pytest.mark.parametrize("url", [
    "http://127.0.0.1:18080/files/numpy-1.whl", "https://files.example/packages/a/b/x.whl",
    "https://Files.Example/a%7e/b?x=1&y=2", "https://h/a%2Fb", "https://h/a%zz", "https://h/a b",
    "https://h/\u00e4", "https://user:pw@h/x", "https://h/x/../y", "https://h:443/x", "http://h:80/x",
    "http://h:443/x", "https://h:80/x", "https://h:8443/x", "https://h:00443/x", "https://h:080/x",
    "https://h/[x]", "https://h/x?a=[1]", "https://h/x?", "https://h/x?a=b?c", "https://h/x;p=1",
    "https://h/x:y@z", "https://h/~u/x", "https://h/x'y(z)*+,", "https://h/", "https://h//x",
    "https://h/x%", "https://h/x%2", "https://h:0/x", "https://h/x\\y", "https://h/x|y",
    "https://h/x{y}", 'https://h/x"y', "https://xn--bcher-kva.example/x",
])
def test_wire_url_fast_path_matches_hyperlink(url):
    """Plain URLs skip hyperlink; whatever takes that shortcut must come out
    exactly as hyperlink's IRI-to-URI conversion would send it."""
    from hyperlink import EncodedURL

    expected = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
    assert simple._wire_url(url) == expected


@pytest_twisted.ensureDeferred
async def test_a_burst_of_pages_leaves_connections_that_files_reuse(make_upstream, server):
    """A client resolving requirements asks for many pages at once, then for
    their files: the connections the page burst opened (a TLS handshake each
    on a real index) are kept and serve the file requests that follow."""
    server.handlers["/simple/demo/"] = _serve(_json_page([]))
    server.handlers["/f.whl"] = lambda request: b"x" * 10
    upstream = make_upstream()
    burst = 12
    await _within(defer.gatherResults([upstream.fetch_project("demo") for _ in range(burst)]))
    page_peers = {r.transport.getPeer().port for r in server.seen}
    assert len(page_peers) == burst  # one connection per concurrent request
    downloads = await _within(defer.gatherResults([upstream.open_file(server.base + "f.whl")
                                                   for _ in range(burst)]))
    for download in downloads:
        await _within(download.deliver(lambda chunk: None))
    file_peers = {r.transport.getPeer().port for r in server.seen[burst:]}
    assert file_peers <= page_peers


def test_new_upstream_connections_are_not_logged():
    """A noisy Twisted factory logs "Starting factory" for every connection;
    in a cold install that was a third of the log."""
    from pypicache.providers.upstream.http import _ConnectionFactory

    assert _ConnectionFactory.noisy is False


@pytest_twisted.ensureDeferred
async def test_pooled_connections_the_upstream_closed_are_not_an_error(make_upstream, server):
    """The pool keeps a burst's worth of idle connections; an upstream that
    closes them (its keep-alive timeout) must cost a reconnect, not a failed
    page or file, even when the close and the next request cross."""
    server.handlers["/simple/demo/"] = _serve(_json_page([]))
    server.handlers["/f.whl"] = lambda request: b"x" * 10
    upstream = make_upstream()
    await _within(defer.gatherResults([upstream.fetch_project("demo") for _ in range(6)]))
    for request in server.seen:
        request.transport.loseConnection()
    pages = defer.gatherResults([upstream.fetch_project("demo") for _ in range(6)])
    files = defer.gatherResults([upstream.open_file(server.base + "f.whl") for _ in range(6)])
    assert len(await _within(pages)) == 6
    for download in await _within(files):
        chunks: list[bytes] = []
        await _within(download.deliver(chunks.append))
        assert b"".join(chunks) == b"x" * 10


# ------------------------------------------------ hostile answers, bounded waits


@pytest_twisted.ensureDeferred
async def test_gzip_page_wire_bytes_count_against_max_page_bytes(make_upstream, server):
    """Empty gzip members after the page decode to nothing: the encoded bytes
    are counted against ``max_page_bytes`` too, and every member is read."""
    body = _json_page([{"filename": "a-1.tar.gz", "url": "a-1.tar.gz", "hashes": {}}])
    empty = gzip.compress(b"")
    server.handlers["/simple/padded/"] = _serve(gzip.compress(body) + empty * (300_000 // len(empty)),
                                                content_encoding="gzip")
    half = len(body) // 2
    server.handlers["/simple/two/"] = _serve(gzip.compress(body[:half]) + gzip.compress(body[half:]),
                                             content_encoding="gzip")
    upstream = make_upstream(max_page_bytes=100_000)
    error = await _failure(upstream.fetch_project("padded", Validators()))
    assert isinstance(error, UpstreamError) and "100000" in str(error)
    page = await _within(upstream.fetch_project("two", Validators()))
    assert [f.filename for f in page.files] == ["a-1.tar.gz"]


@pytest_twisted.ensureDeferred
async def test_stored_validators_with_control_characters_are_never_sent(make_upstream, server):
    """A validator stored before the parser refused CR/LF (or edited into the
    index) must not split the request head."""
    server.handlers["/simple/demo/"] = _serve(_json_page([]))
    upstream = make_upstream()
    await _within(upstream.fetch_project("demo", Validators(
        etag='"x"\r\nX-Injected: yes', last_modified="Wed, 01 Jan 2025\n00:00:00 GMT")))
    (request,) = server.seen
    assert request.requestHeaders.getRawHeaders(b"x-injected") is None
    assert server.headers("if-none-match") == [None] and server.headers("if-modified-since") == [None]


def _trickling_redirect(to: bytes, length: int = 60_000, every: float = 0.05):
    """A redirect whose body (within the drain's size cap) comes one byte at a time."""
    calls: list[Any] = []

    def handler(request):
        request.setResponseCode(302)
        request.setHeader("location", to)
        request.setHeader("content-length", str(length))

        def drip():
            if request.finished or request._disconnected:
                return
            request.write(b"x")
            calls.append(_reactor().callLater(every, drip))

        drip()
        request.notifyFinish().addBoth(lambda _: [c.cancel() for c in calls if c.active()])
        return NOT_DONE_YET

    return handler


@pytest_twisted.ensureDeferred
async def test_a_trickling_redirect_body_is_drained_for_at_most_the_read_timeout(make_upstream, server):
    """Each byte comes well within the idle timeout: only an overall deadline ends it."""
    server.handlers["/simple/demo/"] = _trickling_redirect(b"/real/demo/")
    server.handlers["/real/demo/"] = _serve(_json_page([]))
    upstream = make_upstream(read_timeout=0.5)
    await _within(upstream.fetch_project("demo", Validators()))
    (redirect, _) = server.seen
    started = time.monotonic()
    while upstream._draining and time.monotonic() - started < 3:
        await _within(task_sleep(0.05))
    assert not upstream._draining, "the drain of the redirect body still runs"
    assert redirect.finished or redirect._disconnected


@pytest_twisted.ensureDeferred
async def test_close_abandons_a_drain_in_progress(make_upstream, server):
    """Shutdown must not wait for a slow upstream to finish a body nobody reads."""
    server.handlers["/simple/demo/"] = _trickling_redirect(b"/real/demo/")
    server.handlers["/real/demo/"] = _serve(_json_page([]))
    upstream = make_upstream(read_timeout=30)
    await _within(upstream.fetch_project("demo", Validators()))
    assert upstream._draining
    started = time.monotonic()
    await _within(upstream.close(), 3)
    assert time.monotonic() - started < 1
    assert not upstream._draining


def task_sleep(seconds: float):
    from twisted.internet.task import deferLater

    return deferLater(_reactor(), seconds, lambda: None)


class TestSimpleUpstreamContract(UpstreamContract):
    """The built-in provider keeps the contract the kit ships to third parties."""

    def make_upstream(self, url: str, context: ProviderContext) -> Any:
        return factory.create({"url": url}, context)
