"""Upstream faults: what the server answers, stores and logs under each.

Every case runs against a real server and the fault-injecting upstream
(tests/fakeupstream.py) over real sockets, with short ``[http]`` timeouts so
hangs and black holes cost well under a second.  Each test asserts three
things: the status the client gets, what the index and storage hold
afterwards, and what the server logged.

The servers and helpers are in tests/faults.py, raw HTTP in tests/rawhttp.py,
the ``srv`` and ``logs`` fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import LogLevel
from zope.interface.verify import verifyObject

from pypicache.daemon import config as configuration
from pypicache.interfaces import IUpstream, IUpstreamDownload
from pypicache.model import NotModified, UpstreamError, UpstreamNotFound, Validators
from pypicache.providers import HTTPSettings, ProviderContext
from pypicache.errors import CircuitOpen
from pypicache.services.mirror import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER
from pypicache.providers.upstream.breaker import CLOSED, HALF_OPEN, OPEN, BreakerUpstream, with_breaker
from pypicache.providers.upstream.simple import SimpleUpstream
from tests.builders import build_wheel
from tests.server import RunningServer
from tests.faults import (
    CONNECT,
    JSON,
    MAX_PAGE,
    PAGE,
    READ,
    SLACK,
    WHEEL,
    blobs,
    fault_config,
    get,
    hdr,
    simple_upstream,
    spool,
    start,
    stored,
)
from tests.rawhttp import raw_request

# ---------------------------------------------------------------- faults

#: (id, how to break the upstream, options): every way a page fetch can fail.
PAGE_FAULTS = [
    ("refused", "stop", {}),
    ("black-hole", "black_hole", {}),
    ("hang", "hang", {}),
    ("delay-past-timeout", "delay", {"seconds": 5.0}),
    ("slow-drip", "slow", {"rate": 200}),
    ("stall-mid-body", "stall", {"after": 20}),
    ("reset-mid-body", "reset", {"after": 20}),
    ("truncated", "truncate", {"after": 20}),
    ("http-500", "status", {"code": 500}),
    ("http-502", "status", {"code": 502}),
    ("http-503", "status", {"code": 503, "retry_after": 120}),
    ("http-504", "status", {"code": 504}),
    ("http-429", "status", {"code": 429, "retry_after": 7}),
    ("http-403", "status", {"code": 403}),
    ("malformed-json", "malformed", {}),
    ("not-http", "garbage", {}),
    ("huge-page", "huge_page", {"size": 4 * MAX_PAGE}),
    ("huge-page-announced", "huge_page", {"size": 4 * MAX_PAGE, "content_length": True}),
    ("redirect-loop", "redirect_loop", {}),
]


async def break_upstream(fu: Any, fault: str, options: dict[str, Any], prefix: str | None = "/simple/") -> None:
    if fault == "stop":
        await fu.stop()
    elif fault == "black_hole":
        await fu.stop()
        fu.black_hole()
    else:
        fu.fail(fault, prefix, **options)


async def heal_upstream(fu: Any) -> None:
    fu.heal()
    if not fu.listening:
        await fu.start_again()


@pytest.mark.parametrize("case,fault,options", PAGE_FAULTS, ids=[c[0] for c in PAGE_FAULTS])
@pytest_twisted.ensureDeferred
async def test_cached_project_is_served_stale_under_every_fault(srv, fake_upstream, logs, tmp_path, case, fault,
                                                                options):
    response, fresh = await get(srv.simple + "tinyproj/", accept=JSON)
    assert response.code == 200 and hdr(response, "x-pypicache-stale") is None
    before = await srv.app.index.get_project("tinyproj")
    # A new release upstream, so the refresh is a 200 with a body (not a 304)
    # and a fault in that body has something to break.
    fake_upstream.add(build_wheel(tmp_path / "new", "tinyproj", "3.0"))

    await break_upstream(fake_upstream, fault, options)
    logs.clear()
    started = time.monotonic()
    response, body = await get(srv.simple + "tinyproj/", accept=JSON)
    elapsed = time.monotonic() - started

    assert response.code == 200, case
    assert hdr(response, "x-pypicache-stale") == "true", case
    assert json.loads(body)["files"] == json.loads(fresh)["files"]
    assert elapsed < PAGE + SLACK, f"{case}: {elapsed:.2f}s"
    after = await srv.app.index.get_project("tinyproj")
    assert after.files == before.files  # nothing of the fault reached the index
    assert logs.has("serving the stale page", "tinyproj", min_level=LogLevel.warn), logs.lines()

    await heal_upstream(fake_upstream)
    fake_upstream.reset_log()
    response, body = await get(srv.simple + "tinyproj/", accept=JSON)
    assert response.code == 200 and hdr(response, "x-pypicache-stale") is None
    assert fake_upstream.count("/simple/tinyproj/") == 1  # the failure was not cached
    assert "tinyproj-3.0-py3-none-any.whl" in {f["filename"] for f in json.loads(body)["files"]}


@pytest.mark.parametrize("case,fault,options", PAGE_FAULTS, ids=[c[0] for c in PAGE_FAULTS])
@pytest_twisted.ensureDeferred
async def test_uncached_project_during_outage_is_503_with_retry_after(srv, fake_upstream, logs, case, fault, options):
    await break_upstream(fake_upstream, fault, options)
    started = time.monotonic()
    response, body = await get(srv.simple + "depproj/", accept=JSON)
    elapsed = time.monotonic() - started

    assert response.code in (502, 503), case
    retry_after = hdr(response, "retry-after")
    assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= MAX_RETRY_AFTER, retry_after
    if options.get("retry_after") is not None:  # the upstream's hint is passed on, capped (pip sleeps it 5 times)
        assert int(retry_after) == min(options["retry_after"], MAX_RETRY_AFTER)
    assert elapsed < PAGE + SLACK, f"{case}: {elapsed:.2f}s"
    assert await srv.app.index.get_project("depproj") is None  # no empty list was stored
    assert srv.app.mirror.cached("depproj") is None
    assert logs.has("upstream failed for depproj", "not cached", min_level=LogLevel.warn), logs.lines()

    await heal_upstream(fake_upstream)
    response, body = await get(srv.simple + "depproj/", accept=JSON)
    assert response.code == 200  # the error was not cached
    assert [f["filename"] for f in json.loads(body)["files"]] == ["depproj-1.0-py3-none-any.whl"]


@pytest_twisted.ensureDeferred
async def test_outage_on_every_route_of_an_uncached_project(srv, fake_upstream):
    await fake_upstream.stop()
    for path in ("/simple/depproj/", "/files/depproj/depproj-1.0-py3-none-any.whl", "/pypi/depproj/json"):
        response, _ = await get(srv.root + path)
        assert response.code in (502, 503), path
        assert hdr(response, "retry-after"), path
    assert await srv.app.index.get_project("depproj") is None
    await fake_upstream.start_again()
    response, body = await get(srv.root + "/files/depproj/depproj-1.0-py3-none-any.whl")
    assert response.code == 200 and body == fake_upstream.files["depproj-1.0-py3-none-any.whl"].read_bytes()


@pytest_twisted.ensureDeferred
async def test_outage_on_every_route_of_a_cached_project(srv, fake_upstream, logs):
    wheel2 = "tinyproj-2.0-py3-none-any.whl"
    await get(srv.simple + "tinyproj/")
    response, data = await get(srv.root + f"/files/tinyproj/{WHEEL}")
    await stored(srv, "tinyproj", WHEEL)
    response, pypi_json = await get(srv.root + "/pypi/tinyproj/json")
    assert response.code == 200
    await fake_upstream.stop()
    response, body = await get(srv.simple + "tinyproj/", accept="text/html")
    assert response.code == 200 and hdr(response, "x-pypicache-stale") == "true"
    response, body = await get(srv.root + "/pypi/tinyproj/json")
    assert response.code == 200 and hdr(response, "x-pypicache-stale") == "true"
    assert json.loads(body)["releases"].keys() == json.loads(pypi_json)["releases"].keys()
    response, body = await get(srv.root + f"/files/tinyproj/{WHEEL}")  # stored: never needs the upstream
    assert response.code == 200 and body == data
    response, _ = await get(srv.root + f"/files/tinyproj/{wheel2}")  # listed, not stored
    assert response.code == 502 and hdr(response, "retry-after") == str(DEFAULT_RETRY_AFTER)
    response, body = await get(srv.local + "tinyproj/", accept=JSON)
    assert response.code == 200 and [f["filename"] for f in json.loads(body)["files"]] == [WHEEL]
    assert logs.has("upstream failed for tinyproj/" + wheel2, min_level=LogLevel.warn)


@pytest_twisted.ensureDeferred
async def test_root_list_is_served_stale_during_an_outage(tmp_path, fake_upstream, monkeypatch):
    from pypicache.web import simple

    monkeypatch.setattr(simple, "ROOT_CACHE_SECONDS", 0, raising=False)  # the root page's own memory
    server = await start(fault_config(tmp_path, fake_upstream.url, root_ttl=0))
    try:
        response, fresh = await get(server.simple, accept=JSON)
        assert response.code == 200
        await fake_upstream.stop()
        response, body = await get(server.simple, accept=JSON)
        assert response.code == 200
        assert json.loads(body)["projects"] == json.loads(fresh)["projects"]
        assert hdr(response, "x-pypicache-stale") == "true"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_retry_after_date_from_upstream_becomes_seconds(srv, fake_upstream):
    fake_upstream.fail("status", "/simple/", code=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    response, _ = await get(srv.simple + "depproj/")
    assert response.code == 503
    assert hdr(response, "retry-after").isdigit()


@pytest_twisted.ensureDeferred
async def test_upstream_404_is_a_404_not_an_outage(srv, fake_upstream, logs):
    response, _ = await get(srv.simple + "no-such-project/")
    assert response.code == 404
    assert await srv.app.index.get_project("no-such-project") is None
    assert not logs.has("serving the stale page")


@pytest_twisted.ensureDeferred
async def test_html_error_page_with_200_is_not_taken_for_an_empty_project(tmp_path, logs):
    """A captive portal or a misrouted proxy answers 200 text/html for every
    URL: that is not a project without files."""
    from twisted.internet import reactor

    from tests.fakeupstream import FakeUpstream
    from tests.conftest import populate

    fu = FakeUpstream(html_only=True)
    populate(fu, tmp_path / "dists")
    await fu.listen(reactor)
    server = await start(fault_config(tmp_path, fu.url))
    try:
        portal = b"<!DOCTYPE html><html><body><h1>Sign in</h1><a href='/login'>Log in</a></body></html>"
        fu.fail("malformed", "/simple/depproj/", body=portal)
        response, _ = await get(server.simple + "depproj/")
        assert response.code == 503
        assert await server.app.index.get_project("depproj") is None
        response, fresh = await get(server.simple + "tinyproj/")
        assert response.code == 200
        for garbage in (portal, None):  # None: the fake's own broken HTML
            options = {"body": garbage} if garbage is not None else {}
            fu.fail("malformed", "/simple/tinyproj/", **options)
            response, body = await get(server.simple + "tinyproj/")
            assert response.code == 200 and hdr(response, "x-pypicache-stale") == "true"
            assert body == fresh
        assert logs.has("serving the stale page", "tinyproj", min_level=LogLevel.warn)
    finally:
        await server.stop()
        await fu.stop()


# ------------------------------------------------------------------ files

#: (id, fault on /files/, options, chunked upstream?)
FILE_FAULTS = [
    ("wrong-sha256", "wrong_bytes", {}, False),
    ("wrong-sha256-chunked", "wrong_bytes", {}, True),
    ("truncated", "truncate", {"after": 700}, False),
    ("truncated-chunked", "truncate", {"after": 700}, True),
    ("reset-mid-body", "reset", {"after": 700}, False),
    ("reset-mid-body-chunked", "reset", {"after": 700}, True),
    ("stall-mid-body", "stall", {"after": 700}, False),
    ("overlong-chunked", "overlong", {"extra": 100}, True),
]


@pytest.mark.parametrize("case,fault,options,chunked", FILE_FAULTS, ids=[c[0] for c in FILE_FAULTS])
@pytest_twisted.ensureDeferred
async def test_bad_file_is_never_stored_and_the_client_is_aborted(srv, fake_upstream, logs, case, fault, options,
                                                                  chunked):
    fake_upstream.chunked_files = chunked
    data = fake_upstream.files[WHEEL].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    await get(srv.simple + "tinyproj/")
    fake_upstream.fail(fault, "/files/", **options)
    logs.clear()

    started = time.monotonic()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    elapsed = time.monotonic() - started

    assert response.status == 200, case  # headers went out before the body failed
    assert not response.complete, f"{case}: the client must not see a clean end"
    assert len(response.body) < len(data)
    if response.announced is not None:
        assert response.announced == len(data)
    assert data.startswith(response.body)  # what was sent was true, just not all
    assert elapsed < READ + SLACK
    record = await srv.app.index.get_project("tinyproj")
    assert not record.file(WHEEL).stored
    assert sha not in blobs(srv)
    assert spool(srv) == []
    if fault == "wrong_bytes":
        assert logs.has("not caching", WHEEL, min_level=LogLevel.error), logs.lines()
    else:
        assert logs.has("download of", WHEEL, "failed", min_level=LogLevel.warn), logs.lines()

    fake_upstream.heal()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    assert response.status == 200 and response.complete and response.body == data
    await stored(srv, "tinyproj", WHEEL)
    assert sha in blobs(srv)


@pytest_twisted.ensureDeferred
async def test_file_whose_length_differs_from_the_page_is_refused(srv, fake_upstream, logs, tmp_path):
    original = fake_upstream.files[WHEEL]
    await get(srv.simple + "tinyproj/")  # the page we hold names the original size and hash
    fake_upstream.add(build_wheel(tmp_path / "other", "tinyproj", "1.0", extra_bytes=1000))  # same name, new bytes
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    assert response.status == 502
    assert response.header("retry-after") == str(DEFAULT_RETRY_AFTER)
    record = await srv.app.index.get_project("tinyproj")
    assert not record.file(WHEEL).stored
    assert blobs(srv) == [] and spool(srv) == []
    assert logs.has("upstream failed for tinyproj/" + WHEEL, "the page says", min_level=LogLevel.warn), logs.lines()
    fake_upstream.add(original)
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    assert response.complete and response.body == original.read_bytes()


@pytest.mark.parametrize("fault,options", [("status", {"code": 500}), ("status", {"code": 429, "retry_after": 9}),
                                           ("hang", {}), ("garbage", {}), ("redirect_loop", {})],
                         ids=["500", "429", "hang", "not-http", "redirect-loop"])
@pytest_twisted.ensureDeferred
async def test_file_upstream_failing_before_headers_is_502(srv, fake_upstream, logs, fault, options):
    await get(srv.simple + "tinyproj/")
    fake_upstream.fail(fault, "/files/", **options)
    started = time.monotonic()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    elapsed = time.monotonic() - started
    assert response.status == 502 and response.complete
    assert response.header("retry-after").isdigit()
    if options.get("retry_after"):  # passed on, capped
        assert response.header("retry-after") == str(min(options["retry_after"], MAX_RETRY_AFTER))
    assert elapsed < max(CONNECT, READ) + SLACK
    assert logs.has("upstream failed for tinyproj/" + WHEEL, min_level=LogLevel.warn), logs.lines()
    assert blobs(srv) == [] and spool(srv) == []
    fake_upstream.heal()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    assert response.status == 200 and response.complete


@pytest_twisted.ensureDeferred
async def test_metadata_with_wrong_hash_is_not_stored(srv, fake_upstream, logs):
    await get(srv.simple + "tinyproj/")
    fake_upstream.fail("wrong_bytes", "/files/")
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}.metadata")
    assert response.status == 502
    record = await srv.app.index.get_project("tinyproj")
    assert not record.file(WHEEL).metadata_stored
    assert blobs(srv) == []
    assert logs.has("not caching", ".metadata", min_level=LogLevel.error)
    fake_upstream.heal()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}.metadata")
    assert response.status == 200 and response.complete


# --------------------------------------------------------------- timeouts


def test_default_timeouts_answer_before_pip_gives_up():
    """pip waits 15 s for a byte; every wait of ours must end sooner."""
    from twisted.internet import reactor

    http = HTTPSettings()
    upstream = SimpleUpstream(ProviderContext(reactor=reactor, threadpool=None, data_dir=Path("."), http=http),
                              "http://127.0.0.1:1/simple/")
    assert http.page_timeout < 15
    assert http.read_timeout < 15
    assert upstream.file_header_timeout < 15


@pytest_twisted.ensureDeferred
async def test_black_hole_upstream_answers_within_the_connect_timeout(srv, fake_upstream):
    await get(srv.simple + "tinyproj/")
    await fake_upstream.stop()
    fake_upstream.black_hole()
    started = time.monotonic()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    assert response.status == 502
    assert time.monotonic() - started < CONNECT + SLACK


@pytest_twisted.ensureDeferred
async def test_stalled_download_is_cut_after_the_read_timeout(srv, fake_upstream, logs):
    await get(srv.simple + "tinyproj/")
    fake_upstream.fail("stall", "/files/", after=500)
    started = time.monotonic()
    response = await raw_request(srv, "GET", f"/files/tinyproj/{WHEEL}")
    elapsed = time.monotonic() - started
    assert not response.complete and len(response.body) <= 500
    assert READ <= elapsed < READ + SLACK
    assert logs.has("stalled", min_level=LogLevel.warn), logs.lines()


@pytest_twisted.ensureDeferred
async def test_timeouts_come_from_the_config(tmp_path, fake_upstream):
    data = {
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, "page_ttl": 0},
        "http": {"connect_timeout": 0.2, "read_timeout": 0.3, "page_timeout": 0.4},
        "upstream": {"provider": "simple", "url": fake_upstream.url},
    }
    server = await start(configuration.parse(data, source="<test>"))
    try:
        fake_upstream.fail("hang")
        started = time.monotonic()
        response, _ = await get(server.simple + "depproj/")
        assert response.code == 503
        assert 0.4 <= time.monotonic() - started < 0.4 + SLACK
    finally:
        await server.stop()


# --------------------------------------------------------- circuit breaker


class FakeInner:
    """An IUpstream whose answers the test scripts."""

    url = "http://upstream.invalid/simple/"

    def __init__(self) -> None:
        self.calls = 0
        self.outcome: Any = None  # None: succeed; an exception: fail with it
        self.pending: list[defer.Deferred[Any]] = []

    def _answer(self, value: Any) -> defer.Deferred[Any]:
        self.calls += 1
        if self.outcome == "wait":
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d
        if self.outcome is not None:
            return defer.fail(self.outcome)
        return defer.succeed(value)

    def fetch_project_list(self, validators):
        return self._answer("list")

    def fetch_project(self, name, validators):
        return self._answer(name)

    def open_file(self, url):
        return self._answer(FakeDownload())


class FakeDownload:
    length = 3

    def __init__(self) -> None:
        self.result: defer.Deferred[None] = defer.Deferred()
        self.cancelled = False

    def deliver(self, write):
        return self.result

    def cancel(self):
        self.cancelled = True


async def outcome(d: defer.Deferred[Any]) -> Any:
    try:
        return await d
    except Exception as e:  # noqa: BLE001
        return e


@pytest_twisted.ensureDeferred
async def test_breaker_unit_opens_probes_and_closes(logs):
    clock = task.Clock()
    inner = FakeInner()
    breaker = BreakerUpstream(inner, clock, threshold=3, cooldown=30)
    verifyObject(IUpstream, breaker)
    assert breaker.url == inner.url

    inner.outcome = UpstreamError("down")
    for _ in range(3):
        assert isinstance(await outcome(breaker.fetch_project("p", Validators())), UpstreamError)
    assert breaker.state == OPEN and inner.calls == 3
    assert logs.has("circuit open", min_level=LogLevel.warn)

    clock.advance(10)
    error = await outcome(breaker.fetch_project("p", Validators()))
    assert isinstance(error, CircuitOpen) and error.retry_after == 20
    assert inner.calls == 3  # not asked while open

    clock.advance(20)
    inner.outcome = "wait"  # the probe hangs a while: everyone else is still refused
    probe = breaker.fetch_project("p", Validators())
    assert breaker.state == HALF_OPEN and inner.calls == 4
    assert isinstance(await outcome(breaker.fetch_project_list(Validators())), CircuitOpen)
    assert inner.calls == 4
    inner.pending.pop().callback("p")
    assert await probe == "p"
    assert breaker.state == CLOSED
    assert logs.has("circuit closed")


@pytest_twisted.ensureDeferred
async def test_breaker_unit_failed_probe_reopens():
    clock = task.Clock()
    inner = FakeInner()
    breaker = BreakerUpstream(inner, clock, threshold=2, cooldown=5)
    inner.outcome = UpstreamError("down")
    await outcome(breaker.fetch_project("p", Validators()))
    await outcome(breaker.fetch_project("p", Validators()))
    assert breaker.state == OPEN
    clock.advance(5)
    assert isinstance(await outcome(breaker.fetch_project("p", Validators())), UpstreamError)
    assert breaker.state == OPEN and inner.calls == 3
    error = await outcome(breaker.fetch_project("p", Validators()))
    assert isinstance(error, CircuitOpen) and error.retry_after == 5


@pytest_twisted.ensureDeferred
async def test_breaker_unit_what_counts():
    clock = task.Clock()
    inner = FakeInner()
    breaker = BreakerUpstream(inner, clock, threshold=2, cooldown=5, window=10)
    # 404 and 304 are answers, not failures.
    for error in (UpstreamNotFound("x"), NotModified("x")) * 3:
        inner.outcome = error
        await outcome(breaker.fetch_project("p", Validators()))
    assert breaker.state == CLOSED
    # Failures further apart than the window never add up.
    inner.outcome = UpstreamError("down")
    for _ in range(3):
        await outcome(breaker.fetch_project("p", Validators()))
        clock.advance(11)
    assert breaker.state == CLOSED
    # A success in between resets the streak.
    await outcome(breaker.fetch_project("p", Validators()))
    inner.outcome = None
    await outcome(breaker.fetch_project("p", Validators()))
    inner.outcome = UpstreamError("down")
    await outcome(breaker.fetch_project("p", Validators()))
    assert breaker.state == CLOSED
    # A download whose body breaks off counts; one we cancel does not.
    inner.outcome = None
    download = await breaker.open_file("http://upstream.invalid/f.whl")
    verifyObject(IUpstreamDownload, download)
    assert download.length == 3
    d = download.deliver(lambda _: None)
    download._inner.result.errback(UpstreamError("reset"))
    await outcome(d)
    assert breaker.state == OPEN
    assert with_breaker(breaker, clock, 5, 30) is breaker
    assert with_breaker(inner, clock, 0, 30) is inner


async def breaker_server(tmp_path: Path, fu: Any, clock: task.Clock, threshold: int = 3,
                         cooldown: float = 30) -> tuple[RunningServer, BreakerUpstream]:
    config = fault_config(tmp_path, fu.url)
    breaker = BreakerUpstream(simple_upstream(config, fu.url), clock, threshold=threshold, cooldown=cooldown)
    return await start(config, upstream=breaker), breaker


@pytest_twisted.ensureDeferred
async def test_breaker_stops_asking_a_dead_upstream_and_probes_later(tmp_path, fake_upstream, logs):
    clock = task.Clock()
    server, breaker = await breaker_server(tmp_path, fake_upstream, clock, threshold=3, cooldown=30)
    try:
        response, fresh = await get(server.simple + "tinyproj/", accept=JSON)
        assert response.code == 200
        fake_upstream.fail("hang")  # the worst kind: every request costs a full timeout
        for _ in range(3):
            response, _ = await get(server.simple + "tinyproj/", accept=JSON)
            assert hdr(response, "x-pypicache-stale") == "true"
        assert breaker.state == OPEN
        assert logs.has("circuit open", min_level=LogLevel.warn)

        fake_upstream.reset_log()
        slowest = 0.0
        for _ in range(10):
            started = time.monotonic()
            response, body = await get(server.simple + "tinyproj/", accept=JSON)
            assert response.code == 200 and hdr(response, "x-pypicache-stale") == "true"
            assert body == fresh
            response, _ = await get(server.simple + "depproj/")
            assert response.code == 503 and int(hdr(response, "retry-after")) == MAX_RETRY_AFTER  # the breaker's 30, capped
            response, _ = await get(server.root + "/files/depproj/depproj-1.0-py3-none-any.whl")
            assert response.code == 503 and int(hdr(response, "retry-after")) == MAX_RETRY_AFTER  # the breaker's 30, capped
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < PAGE  # none of them waited for the (hanging) upstream's timeout
        assert fake_upstream.requests == []  # nobody asked it
        await get(server.simple + "tinyproj/")
        clock.advance(27)
        response, _ = await get(server.simple + "depproj/")
        assert int(hdr(response, "retry-after")) == 3  # the cool-down left, once under the cap

        # Cool-down over, upstream back (if slow): exactly one probe goes
        # through while the others still get their immediate answer.
        fake_upstream.fail("delay", seconds=0.3)
        clock.advance(3)
        logs.clear()
        responses = await defer.gatherResults([defer.ensureDeferred(get(server.simple + p))
                                               for p in ("tinyproj/", "depproj/")])
        assert sorted(r.code for r, _ in responses) in ([200, 503], [200, 200])  # which one probed
        assert len(fake_upstream.requests) == 1
        fake_upstream.heal()
        assert breaker.state == CLOSED
        assert logs.has("probe") and logs.has("circuit closed")
        response, _ = await get(server.simple + "depproj/")
        assert response.code == 200 and hdr(response, "x-pypicache-stale") is None
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_breaker_counts_file_failures_not_404s(tmp_path, fake_upstream, logs):
    clock = task.Clock()
    server, breaker = await breaker_server(tmp_path, fake_upstream, clock, threshold=2, cooldown=30)
    try:
        for name in ("nope-a", "nope-b", "nope-c"):
            response, _ = await get(server.simple + name + "/")
            assert response.code == 404
        assert breaker.state == CLOSED
        await get(server.simple + "tinyproj/")
        fake_upstream.fail("reset", "/files/", after=100)
        for _ in range(2):
            response = await raw_request(server, "GET", f"/files/tinyproj/{WHEEL}")
            assert not response.complete
        assert breaker.state == OPEN
        fake_upstream.heal()
        fake_upstream.reset_log()
        response = await raw_request(server, "GET", "/files/tinyproj/tinyproj-2.0-py3-none-any.whl")
        assert response.status in (502, 503) and response.header("retry-after") == str(MAX_RETRY_AFTER)  # 30 s, capped
        assert fake_upstream.requests == []
        clock.advance(30)
        response = await raw_request(server, "GET", f"/files/tinyproj/{WHEEL}")
        assert response.status == 200 and response.complete
        assert breaker.state == CLOSED
    finally:
        await server.stop()
