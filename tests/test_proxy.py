"""The proxy and standalone views over real HTTP (treq against a listening server)."""

from __future__ import annotations

import hashlib
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from tests.anchors import anchors
from tests.server import make_config, start_server

JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


async def get(url: str, **headers: str):
    h = {k.replace("_", "-"): [v] for k, v in headers.items()}
    response = await treq.get(url, headers=h, allow_redirects=False)
    body = await treq.content(response)
    return response, body


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


@pytest_twisted.ensureDeferred
async def test_project_page_html_rewrites_links_and_keeps_attributes(proxy, fake_upstream):
    response, body = await get(proxy.simple + "tinyproj/", accept="text/html")
    assert response.code == 200
    assert header(response, "content-type").startswith("text/html")
    assert "Accept" in header(response, "vary")
    assert header(response, "etag")
    assert b'<meta name="pypi:repository-version" content="1.' in body
    links = {a["text"]: a for a in anchors(body)}
    assert set(links) == {p for p in fake_upstream.files if p.startswith("tinyproj")}
    wheel = "tinyproj-2.0-py3-none-any.whl"
    sha = hashlib.sha256(fake_upstream.files[wheel].read_bytes()).hexdigest()
    assert links[wheel]["href"] == f"../../files/tinyproj/{wheel}#sha256={sha}"
    assert links[wheel]["data-requires-python"] == ">=3.8"
    assert b"data-requires-python=\"&gt;=3.8\"" in body
    assert links[wheel]["data-core-metadata"].startswith("sha256=")
    assert links[wheel]["data-dist-info-metadata"] == links[wheel]["data-core-metadata"]


@pytest_twisted.ensureDeferred
async def test_project_page_json_for_pip_accept(proxy):
    response, body = await get(proxy.simple + "tinyproj/", accept=PIP_ACCEPT)
    assert response.code == 200
    assert header(response, "content-type") == JSON
    page = json.loads(body)
    assert page["name"] == "tinyproj"
    assert page["meta"]["api-version"].startswith("1.")
    assert page["versions"] == ["1.0", "2.0"]
    by_name = {f["filename"]: f for f in page["files"]}
    wheel = by_name["tinyproj-2.0-py3-none-any.whl"]
    assert wheel["url"] == "../../files/tinyproj/tinyproj-2.0-py3-none-any.whl"
    assert wheel["requires-python"] == ">=3.8"
    assert set(wheel["hashes"]) == {"sha256"}
    assert "sha256" in wheel["core-metadata"]
    assert "dist-info-metadata" not in wheel
    assert isinstance(wheel["size"], int)


@pytest_twisted.ensureDeferred
async def test_yanked_and_redirect_to_normalised_name(proxy):
    response, _ = await get(proxy.simple + "Yanked_Proj/")
    assert response.code == 301
    assert header(response, "location") == "/simple/yanked-proj/"
    response, _ = await get(proxy.simple + "tinyproj")
    assert response.code == 301
    assert header(response, "location") == "/simple/tinyproj/"
    response, body = await get(proxy.simple + "yanked-proj/", accept=JSON)
    files = json.loads(body)["files"]
    assert files[0]["yanked"] == "broken"
    response, body = await get(proxy.simple + "yanked-proj/", accept="text/html")
    assert anchors(body)[0]["data-yanked"] == "broken"


@pytest_twisted.ensureDeferred
async def test_unknown_project_404_and_invalid_names(proxy):
    response, _ = await get(proxy.simple + "no-such-project/")
    assert response.code == 404
    for bad in ("..%2F..%2Fetc/", "%00/", "-bad-/", "a%0d%0aSet-Cookie:x/"):
        response, _ = await get(proxy.simple + bad)
        assert response.code == 404, bad
        assert header(response, "set-cookie") is None


@pytest_twisted.ensureDeferred
async def test_not_acceptable(proxy):
    response, _ = await get(proxy.simple + "tinyproj/", accept="application/json")
    assert response.code == 406


@pytest_twisted.ensureDeferred
async def test_etag_revalidation_gives_304(proxy):
    response, body = await get(proxy.simple + "tinyproj/", accept=PIP_ACCEPT)
    etag = header(response, "etag")
    response, body2 = await get(proxy.simple + "tinyproj/", accept=PIP_ACCEPT, if_none_match=etag)
    assert response.code == 304
    assert body2 == b""


@pytest_twisted.ensureDeferred
async def test_pages_gzip_when_asked_files_never(proxy, fake_upstream):
    response = await treq.get(proxy.simple + "tinyproj/", headers={"accept-encoding": ["gzip"]}, unbuffered=True)
    assert response.code == 200
    wheel = "tinyproj-2.0-py3-none-any.whl"
    response, body = await get(proxy.root + f"/files/tinyproj/{wheel}", accept_encoding="gzip")
    assert response.code == 200
    # treq's decoder leaves an empty Content-Encoding where the server sent none.
    assert not header(response, "content-encoding")
    assert body == fake_upstream.files[wheel].read_bytes()


@pytest_twisted.ensureDeferred
async def test_root_lists_projects(proxy):
    response, body = await get(proxy.simple, accept=JSON)
    assert response.code == 200
    names = {p["name"] for p in json.loads(body)["projects"]}
    assert {"tinyproj", "depproj", "yanked-proj"} <= names
    response, body = await get(proxy.simple, accept="text/html")
    assert {"tinyproj/", "depproj/"} <= {a["href"] for a in anchors(body)}


@pytest_twisted.ensureDeferred
async def test_file_is_cached_once_and_then_served_locally(proxy, fake_upstream):
    wheel = "tinyproj-1.0-py3-none-any.whl"
    expected = fake_upstream.files[wheel].read_bytes()
    url = proxy.root + f"/files/tinyproj/{wheel}"
    response, body = await get(url)
    assert response.code == 200 and body == expected
    await _stored(proxy, "tinyproj", wheel)
    fake_upstream.reset_log()
    response, body = await get(url)
    assert body == expected
    assert header(response, "etag") == f'"{hashlib.sha256(expected).hexdigest()}"'
    assert "immutable" in header(response, "cache-control")
    assert header(response, "accept-ranges") == "bytes"
    assert fake_upstream.count("/files/") == 0


async def _stored(server, project: str, filename: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(200):
        record = await server.app.index.get_project(project)
        if record is not None and record.file(filename) is not None and record.file(filename).stored:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{filename} was never stored")


@pytest_twisted.ensureDeferred
async def test_head_and_ranges_on_cached_file(proxy, fake_upstream):
    wheel = "tinyproj-2.0-py3-none-any.whl"
    data = fake_upstream.files[wheel].read_bytes()
    url = proxy.root + f"/files/tinyproj/{wheel}"
    await get(url)
    await _stored(proxy, "tinyproj", wheel)
    response = await treq.head(url)
    assert response.code == 200
    assert header(response, "content-length") == str(len(data))
    response, body = await get(url, range="bytes=0-9")
    assert response.code == 206 and body == data[:10]
    assert header(response, "content-range") == f"bytes 0-9/{len(data)}"
    response, body = await get(url, range="bytes=-22")
    assert response.code == 206 and body == data[-22:]
    response, body = await get(url, range="bytes=10-")
    assert response.code == 206 and body == data[10:]
    response, body = await get(url, range=f"bytes={len(data)}-")
    assert response.code == 416
    assert header(response, "content-range") == f"bytes */{len(data)}"


@pytest_twisted.ensureDeferred
async def test_core_metadata_is_fetched_verified_and_served(proxy, fake_upstream):
    from tests.builders import wheel_metadata

    wheel = "tinyproj-2.0-py3-none-any.whl"
    response, body = await get(proxy.simple + "tinyproj/", accept=JSON)
    advertised = {f["filename"]: f for f in json.loads(body)["files"]}[wheel]["core-metadata"]["sha256"]
    response, body = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
    assert response.code == 200
    assert body == wheel_metadata(fake_upstream.files[wheel])
    assert hashlib.sha256(body).hexdigest() == advertised
    fake_upstream.reset_log()
    response, body2 = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
    assert body2 == body
    assert fake_upstream.count(".metadata") == 0


@pytest_twisted.ensureDeferred
async def test_core_metadata_is_answered_before_the_index_records_it(proxy, fake_upstream):
    """In a cold install the index writer is busy with page saves; METADATA,
    once stored, is served without waiting for its index mark, and asking
    again meanwhile needs no second upstream fetch."""
    from tests.builders import wheel_metadata

    index = proxy.app.index
    real_mark = index.mark_metadata_stored
    held: list[defer.Deferred] = []

    def held_mark(project, filename, sha256):
        gate: defer.Deferred = defer.Deferred()
        held.append(gate)
        return gate.addCallback(lambda _: real_mark(project, filename, sha256))

    index.mark_metadata_stored = held_mark
    wheel = "tinyproj-2.0-py3-none-any.whl"
    try:
        await get(proxy.simple + "tinyproj/")
        response, body = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
        assert response.code == 200 and body == wheel_metadata(fake_upstream.files[wheel])
        assert len(held) == 1 and not held[0].called  # answered while the mark waits
        response, again = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
        assert response.code == 200 and again == body
        assert fake_upstream.count(".metadata") == 1 and len(held) == 1
    finally:
        index.mark_metadata_stored = real_mark
    for gate in held:
        gate.callback(None)
    from twisted.internet import reactor

    await proxy.app.downloader.settle(reactor, 5)
    record = await index.get_project("tinyproj")
    assert record.file(wheel).metadata_stored
    assert proxy.app.downloader._metadata_unmarked == {}


@pytest_twisted.ensureDeferred
async def test_core_metadata_whose_index_mark_fails_is_fetched_again(proxy, fake_upstream):
    """A failed index mark is logged, the client already has its bytes, and
    the next request fetches (and tries to record) it again."""
    index = proxy.app.index
    real_mark = index.mark_metadata_stored
    calls: list[str] = []

    def failing_mark(project, filename, sha256):
        calls.append(filename)
        if len(calls) == 1:
            return defer.fail(OSError("index is read-only"))
        return real_mark(project, filename, sha256)

    index.mark_metadata_stored = failing_mark
    wheel = "tinyproj-2.0-py3-none-any.whl"
    try:
        await get(proxy.simple + "tinyproj/")
        response, first = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
        assert response.code == 200
        response, second = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
        assert response.code == 200 and second == first
    finally:
        index.mark_metadata_stored = real_mark
    assert calls == [wheel, wheel]
    assert fake_upstream.count(".metadata") == 2
    from twisted.internet import reactor

    await proxy.app.downloader.settle(reactor, 5)  # the second mark runs in the background
    assert (await index.get_project("tinyproj")).file(wheel).metadata_stored


def test_settle_waits_for_metadata_index_marks(tmp_path):
    from twisted.internet.task import Clock

    from pypicache.services.downloads import Downloader

    downloader = Downloader(storage=None, index=None, upstream=None, spool_dir=tmp_path / "spool")
    mark: defer.Deferred = defer.Deferred()
    downloader._metadata_marks.add(mark)
    clock = Clock()
    settled = downloader.settle(clock, 10.0)
    assert not settled.called
    mark.callback(None)
    assert settled.called
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_first_requests_make_one_upstream_download(proxy, fake_upstream):
    wheel = "tinyproj-1.0-py3-none-any.whl"
    expected = fake_upstream.files[wheel].read_bytes()
    await get(proxy.simple + "tinyproj/")
    fake_upstream.fail("slow", path_prefix="/files/", rate=20_000)
    fake_upstream.reset_log()
    results = await defer.gatherResults(
        [defer.ensureDeferred(get(proxy.root + f"/files/tinyproj/{wheel}")) for _ in range(10)])
    assert all(body == expected for _, body in results)
    assert fake_upstream.count(f"/files/{wheel}", method="GET") == 1


@pytest_twisted.ensureDeferred
async def test_hash_mismatch_stores_nothing_and_aborts_the_client(proxy, fake_upstream):
    wheel = "tinyproj-1.0-py3-none-any.whl"
    await get(proxy.simple + "tinyproj/")
    fake_upstream.fail("wrong_bytes", path_prefix="/files/")
    with pytest.raises(Exception):
        await get(proxy.root + f"/files/tinyproj/{wheel}")
    record = await proxy.app.index.get_project("tinyproj")
    assert not record.file(wheel).stored
    assert not any(proxy.app.downloader.spool_dir.iterdir())
    fake_upstream.heal()
    response, body = await get(proxy.root + f"/files/tinyproj/{wheel}")
    assert body == fake_upstream.files[wheel].read_bytes()


@pytest_twisted.ensureDeferred
async def test_truncated_upstream_body_is_not_stored(proxy, fake_upstream):
    wheel = "tinyproj-1.0-py3-none-any.whl"
    await get(proxy.simple + "tinyproj/")
    fake_upstream.fail("truncate", path_prefix="/files/", after=100)
    with pytest.raises(Exception):
        await get(proxy.root + f"/files/tinyproj/{wheel}")
    record = await proxy.app.index.get_project("tinyproj")
    assert not record.file(wheel).stored


@pytest_twisted.ensureDeferred
async def test_stale_page_served_when_upstream_fails(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        response, body = await get(server.simple + "tinyproj/", accept=JSON)
        assert response.code == 200
        for fault, options in (("status", {"code": 500}), ("hang", {}), ("malformed", {}), ("reset", {"after": 10})):
            fake_upstream.fail(fault, path_prefix="/simple/", **options)
            response, stale_body = await get(server.simple + "tinyproj/", accept=JSON)
            assert response.code == 200, fault
            assert header(response, "x-pypicache-stale") == "true", fault
            assert json.loads(stale_body)["files"] == json.loads(body)["files"]
            fake_upstream.heal()
        response, _ = await get(server.simple + "tinyproj/", accept=JSON)
        assert header(response, "x-pypicache-stale") is None
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_uncached_project_during_outage_is_503_not_404(proxy, fake_upstream):
    fake_upstream.fail("status", code=502)
    response, _ = await get(proxy.simple + "depproj/")
    assert response.code == 503
    assert header(response, "retry-after")
    fake_upstream.heal()
    response, _ = await get(proxy.simple + "depproj/")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_page_refreshed_with_conditional_request_after_ttl(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        await get(server.simple + "tinyproj/")
        fake_upstream.reset_log()
        await get(server.simple + "tinyproj/")
        requests = [r for r in fake_upstream.requests if r[1].startswith("/simple/tinyproj/")]
        assert len(requests) == 1
        assert any(k.lower() == "if-none-match" for k in requests[0][2])
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_local_view_serves_only_stored_files_and_never_asks_upstream(proxy, fake_upstream):
    wheel = "tinyproj-1.0-py3-none-any.whl"
    await get(proxy.root + f"/files/tinyproj/{wheel}")
    await _stored(proxy, "tinyproj", wheel)
    fake_upstream.reset_log()
    response, body = await get(proxy.local + "tinyproj/", accept=JSON)
    assert response.code == 200
    page = json.loads(body)
    assert [f["filename"] for f in page["files"]] == [wheel]
    response, data = await get(proxy.root + "/local/files/tinyproj/" + page["files"][0]["url"].split("/")[-1])
    assert data == fake_upstream.files[wheel].read_bytes()
    response, _ = await get(proxy.local + "depproj/")
    assert response.code == 404
    response, _ = await get(proxy.root + "/local/files/tinyproj/tinyproj-2.0-py3-none-any.whl")
    assert response.code == 404
    assert fake_upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_offline_config_makes_simple_local(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url, offline=True))
    try:
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 404
        assert fake_upstream.requests == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_hostile_file_paths_are_refused(proxy):
    for path in ("/files/tinyproj/..%2F..%2Fetc%2Fpasswd", "/files/tinyproj/%2e%2e", "/files/..%2Ftinyproj/x.whl",
                 "/files/tinyproj/a%00.whl", "/files/tinyproj/..%5c..%5cx.whl", "/files/tinyproj/",
                 "/files/tinyproj/x/y.whl", "/local/files/tinyproj/%252e%252e%252fx"):
        response, _ = await get(proxy.root + path)
        assert response.code == 404, path


@pytest_twisted.ensureDeferred
async def test_upstream_without_content_length_is_streamed_chunked_and_cached(proxy, fake_upstream):
    fake_upstream.chunked_files = True
    wheel = "tinyproj-1.0-py3-none-any.whl"
    expected = fake_upstream.files[wheel].read_bytes()
    await get(proxy.simple + "tinyproj/")
    results = await defer.gatherResults(
        [defer.ensureDeferred(get(proxy.root + f"/files/tinyproj/{wheel}")) for _ in range(3)])
    assert all(body == expected for _, body in results)
    await _stored(proxy, "tinyproj", wheel)


@pytest_twisted.ensureDeferred
async def test_uncached_head_and_range_requests(proxy, fake_upstream):
    wheel = "tinyproj-2.0-py3-none-any.whl"
    data = fake_upstream.files[wheel].read_bytes()
    await get(proxy.simple + "tinyproj/")
    response = await treq.head(proxy.root + f"/files/tinyproj/{wheel}")
    assert response.code == 200
    response, body = await get(proxy.root + f"/files/tinyproj/{wheel}", range="bytes=-30")
    assert response.code == 206 and body == data[-30:]



@pytest_twisted.ensureDeferred
async def test_storing_a_file_updates_memory_from_the_index_write(proxy, fake_upstream):
    """The record an index mark returns becomes the in-memory copy: no
    second read of the whole project (601 files for numpy) per stored file."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    wheel = "tinyproj-1.0-py3-none-any.whl"
    await get(proxy.simple + "tinyproj/")
    index = proxy.app.index
    reads: list[str] = []
    real_get = index.get_project

    def counting_get(name):
        reads.append(name)
        return real_get(name)

    index.get_project = counting_get
    try:
        response, _ = await get(proxy.root + f"/files/tinyproj/{wheel}")
        assert response.code == 200
        response, _ = await get(proxy.root + f"/files/tinyproj/{wheel}.metadata")
        assert response.code == 200
        for _ in range(200):  # both are indexed after their last byte was sent
            memory = proxy.app.mirror.cached("tinyproj").file(wheel)
            if memory.stored and memory.metadata_stored:
                break
            await deferLater(reactor, 0.01, lambda: None)
    finally:
        index.get_project = real_get
    assert memory.stored and memory.metadata_stored
    assert reads == []
    assert (await real_get("tinyproj")) == proxy.app.mirror.cached("tinyproj")


@pytest_twisted.ensureDeferred
async def test_first_page_of_a_project_reads_the_index_once(proxy, fake_upstream):
    """A project nobody asked for yet (every page of a cold install) costs one
    index read, not one to load it and another before asking the upstream."""
    index = proxy.app.index
    reads: list[str] = []
    real_get = index.get_project

    def counting_get(name):
        reads.append(name)
        return real_get(name)

    index.get_project = counting_get
    try:
        response, body = await get(proxy.simple + "tinyproj/")
        assert response.code == 200 and b"tinyproj-1.0" in body
        await proxy.app.mirror.refresh("tinyproj")  # known in memory: no read at all
    finally:
        index.get_project = real_get
    assert reads == ["tinyproj"]


@pytest_twisted.ensureDeferred
async def test_close_lets_a_verified_file_be_stored_and_indexed(tmp_path, fake_upstream):
    """Shutting down right after a client received a file whole still stores
    and indexes it, rather than leaving an orphan blob behind a closed index."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from pypicache.daemon.app import build

    config = make_config(tmp_path, fake_upstream.url)
    server = await start_server(config)
    storage = server.app.storage
    real_ingest = storage.ingest

    def slow_ingest(path, sha256):
        return deferLater(reactor, 0.3, lambda: None).addCallback(lambda _: real_ingest(path, sha256))

    storage.ingest = slow_ingest
    wheel = "tinyproj-1.0-py3-none-any.whl"
    response, body = await get(server.root + f"/files/tinyproj/{wheel}")
    assert response.code == 200 and body == fake_upstream.files[wheel].read_bytes()
    assert server.app.downloader.transfer_for("tinyproj", wheel) is not None  # still storing
    await server.stop()
    again = build(config, reactor)
    try:
        record = await again.index.get_project("tinyproj")
        assert record.file(wheel).stored
        assert await again.storage.exists(record.file(wheel).sha256)
    finally:
        await again.close()


def test_settle_gives_up_after_its_timeout(tmp_path):
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from pypicache.services.downloads import Downloader

    downloader = Downloader(storage=None, index=None, upstream=None, spool_dir=tmp_path / "spool")

    class Storing:
        verified = True
        stored: defer.Deferred = defer.Deferred()

    downloader._transfers[("p", "f")] = Storing()  # type: ignore[assignment]
    clock = Clock()
    settled = downloader.settle(clock, 10.0)
    clock.advance(9.9)
    assert not settled.called
    clock.advance(0.2)
    assert settled.called
    assert clock.getDelayedCalls() == []
    assert not Storing.stored.called  # observed, never fired nor consumed
