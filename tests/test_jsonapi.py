"""The PyPI JSON API (``/pypi/<project>/json``): shape, versions, errors, caching.

Server tests run treq against a listening server on the fake upstream, with
the JSON API mounted by :func:`mount` (as site.py does).  Private-project
tests drive the resource in memory (StubTreq) over a tiny fake mirror and
memory storage, so METADATA of any shape can be planted.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urljoin

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from pypicache.services.mirror import PageResult
from pypicache.model import FileRecord, ProjectRecord
from pypicache.providers.storage.memory import MemoryStorage
from pypicache.metadata import read_for_json
from pypicache.services.projectjson import MAX_METADATA_BYTES
from pypicache.services.releases import classify, group_releases, latest
from pypicache.web.jsonapi import JsonAPI
from tests.builders import wheel_metadata

INFO_KEYS = {
    "author", "author_email", "bugtrack_url", "classifiers", "description", "description_content_type",
    "docs_url", "download_url", "downloads", "dynamic", "home_page", "keywords", "license",
    "license_expression", "license_files", "maintainer", "maintainer_email", "name", "package_url",
    "platform", "project_url", "project_urls", "provides_extra", "release_url", "requires_dist",
    "requires_python", "summary", "version", "yanked", "yanked_reason",
}
FILE_KEYS = {
    "comment_text", "digests", "downloads", "filename", "has_sig", "md5_digest", "packagetype",
    "python_version", "requires_python", "size", "upload_time", "upload_time_iso_8601", "url",
    "yanked", "yanked_reason",
}


def mount(app: Any) -> None:
    """Mount the JSON API under ``/pypi`` and ``/local/pypi`` of a built app."""
    root = app.site.resource
    root.putChild(b"pypi", JsonAPI(app.mirror, app.storage, app.downloader))
    root.children[b"local"].putChild(b"pypi", JsonAPI(app.mirror, app.storage, app.downloader, local=True))


@pytest.fixture
def api(proxy):  # noqa: F811
    mount(proxy.app)
    return proxy


async def get(url: str, **headers: str):
    h = {k.replace("_", "-"): [v] for k, v in headers.items()}
    response = await treq.get(url, headers=h, allow_redirects=False).addTimeout(10, _reactor())
    body = await treq.content(response)
    return response, body


def _reactor():
    from twisted.internet import reactor

    return reactor


async def _stored(server, project: str, filename: str) -> None:
    """Wait until the mirror knows the download of ``filename`` is stored."""
    from twisted.internet.task import deferLater

    for _ in range(200):
        record = server.app.mirror.cached(project)
        if record is not None and record.file(filename) is not None and record.file(filename).stored:
            return
        await deferLater(_reactor(), 0.01, lambda: None)
    raise AssertionError(f"{filename} was never stored")


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


# ------------------------------------------------------------ over HTTP


@pytest_twisted.ensureDeferred
async def test_project_json_has_pypi_shape(api, fake_upstream):
    response, body = await get(api.root + "/pypi/tinyproj/json")
    assert response.code == 200
    assert header(response, "content-type") == "application/json"
    assert header(response, "etag")
    assert "max-age" in header(response, "cache-control")
    data = json.loads(body)
    assert set(data) == {"info", "last_serial", "releases", "urls", "vulnerabilities"}
    assert data["vulnerabilities"] == []
    assert isinstance(data["last_serial"], int) and data["last_serial"] > 0
    assert header(response, "x-pypi-last-serial") == str(data["last_serial"])

    info = data["info"]
    assert set(info) == INFO_KEYS
    assert info["name"] == "tinyproj"
    assert info["version"] == "2.0"
    assert info["summary"] == "A tiny project"  # from the wheel's METADATA, fetched on demand
    assert info["requires_python"] == ">=3.8"
    assert info["requires_dist"] is None
    assert info["classifiers"] == []
    assert info["downloads"] == {"last_day": -1, "last_month": -1, "last_week": -1}
    assert info["yanked"] is False and info["yanked_reason"] is None
    assert info["bugtrack_url"] is None and info["docs_url"] is None
    assert info["release_url"].endswith("/pypi/tinyproj/2.0/json")

    assert list(data["releases"]) == ["1.0", "2.0"]
    assert {f["filename"] for f in data["releases"]["1.0"]} == {
        "tinyproj-1.0-py3-none-any.whl", "tinyproj-1.0.tar.gz"}
    assert {f["filename"] for f in data["urls"]} == {"tinyproj-2.0-py3-none-any.whl", "tinyproj-2.0.tar.gz"}

    by_name = {f["filename"]: f for f in data["urls"]}
    wheel = by_name["tinyproj-2.0-py3-none-any.whl"]
    sdist = by_name["tinyproj-2.0.tar.gz"]
    assert set(wheel) == FILE_KEYS
    sha = hashlib.sha256(fake_upstream.files[wheel["filename"]].read_bytes()).hexdigest()
    assert wheel["digests"] == {"sha256": sha}
    assert wheel["md5_digest"] == ""
    assert wheel["packagetype"] == "bdist_wheel" and wheel["python_version"] == "py3"
    assert sdist["packagetype"] == "sdist" and sdist["python_version"] == "source"
    assert wheel["requires_python"] == ">=3.8"
    assert wheel["size"] == fake_upstream.files[wheel["filename"]].stat().st_size
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", wheel["upload_time"])
    assert wheel["upload_time_iso_8601"].startswith(wheel["upload_time"])
    assert wheel["upload_time_iso_8601"].endswith("Z")
    assert wheel["has_sig"] is False and wheel["comment_text"] == ""
    assert wheel["yanked"] is False and wheel["yanked_reason"] is None
    # Relative to the request URL: nothing from the request's headers.
    assert wheel["url"] == "../../files/tinyproj/tinyproj-2.0-py3-none-any.whl"

    # The URL is served by this server, with the advertised bytes.
    response, content = await get(urljoin(api.root + "/pypi/tinyproj/json", wheel["url"]))
    assert response.code == 200
    assert hashlib.sha256(content).hexdigest() == sha


@pytest_twisted.ensureDeferred
async def test_metadata_fetched_once_then_served_from_cache(api, fake_upstream):
    await get(api.root + "/pypi/tinyproj/json")
    await get(api.root + "/pypi/tinyproj/json")
    response, body = await get(api.root + "/pypi/tinyproj/json", accept_encoding="gzip")
    assert response.code == 200
    assert json.loads(body)["info"]["summary"] == "A tiny project"
    assert fake_upstream.count(".metadata") == 1


@pytest_twisted.ensureDeferred
async def test_version_endpoint(api):
    response, body = await get(api.root + "/pypi/tinyproj/1.0/json")
    assert response.code == 200
    data = json.loads(body)
    assert "releases" not in data
    assert set(data) == {"info", "last_serial", "urls", "vulnerabilities"}
    assert data["info"]["version"] == "1.0"
    assert data["info"]["requires_python"] is None
    assert data["info"]["summary"] == "A tiny project"
    assert {f["filename"] for f in data["urls"]} == {"tinyproj-1.0-py3-none-any.whl", "tinyproj-1.0.tar.gz"}
    for f in data["urls"]:
        assert f["url"].startswith("../../../files/tinyproj/")
    # An equal spelling of the version finds the same release.
    response, body = await get(api.root + "/pypi/tinyproj/1.0.0/json")
    assert response.code == 200
    assert json.loads(body)["info"]["version"] == "1.0"


@pytest_twisted.ensureDeferred
async def test_not_found_answers_like_pypi(api):
    for path in ("/pypi/no-such-project/json", "/pypi/tinyproj/9.9/json", "/pypi/tinyproj/not%20a%20version/json",
                 "/pypi/-bad-/json", "/pypi/..%2F..%2Fetc/json", "/pypi/a%0d%0aSet-Cookie:x/json",
                 "/pypi/tinyproj", "/pypi/tinyproj/", "/pypi/tinyproj/1.0/2.0/json", "/pypi/"):
        response, body = await get(api.root + path)
        assert response.code == 404, path
        assert header(response, "content-type") == "application/json", path
        assert json.loads(body) == {"message": "Not Found"}, path
        assert header(response, "set-cookie") is None


@pytest_twisted.ensureDeferred
async def test_unnormalised_names_redirect(api):
    response, _ = await get(api.root + "/pypi/TinyProj/json")
    assert response.code == 301
    assert header(response, "location") == "/pypi/tinyproj/json"
    response, _ = await get(api.root + "/pypi/Yanked_Proj/1.0/json")
    assert response.code == 301
    assert header(response, "location") == "/pypi/yanked-proj/1.0/json"
    response, _ = await get(api.root + "/pypi/tinyproj/json/")
    assert response.code == 301
    assert header(response, "location") == "/pypi/tinyproj/json"


@pytest_twisted.ensureDeferred
async def test_etag_revalidation_gives_304(api):
    response, _ = await get(api.root + "/pypi/tinyproj/json")
    etag = header(response, "etag")
    response, body = await get(api.root + "/pypi/tinyproj/json", if_none_match=etag)
    assert response.code == 304
    assert body == b""
    response, _ = await get(api.root + "/pypi/tinyproj/json", if_none_match='"other"')
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_head(api):
    response = await treq.head(api.root + "/pypi/tinyproj/json").addTimeout(10, _reactor())
    assert response.code == 200
    assert int(header(response, "content-length")) > 0
    assert await treq.content(response) == b""


@pytest_twisted.ensureDeferred
async def test_metadata_failure_gives_minimal_info_and_is_not_retried_at_once(api, fake_upstream):
    fake_upstream.fail("status", "/files/tinyproj-2.0-py3-none-any.whl.metadata", code=404)
    response, body = await get(api.root + "/pypi/tinyproj/json")
    assert response.code == 200
    info = json.loads(body)["info"]
    assert info["summary"] is None and info["version"] == "2.0"
    assert info["requires_python"] == ">=3.8"  # still known from the page
    asked = fake_upstream.count(".metadata")
    assert asked >= 1
    fake_upstream.heal()
    response, body = await get(api.root + "/pypi/tinyproj/json")
    assert response.code == 200
    assert fake_upstream.count(".metadata") == asked
    # Another release's metadata is fetched normally.
    response, body = await get(api.root + "/pypi/tinyproj/1.0/json")
    assert json.loads(body)["info"]["summary"] == "A tiny project"


@pytest_twisted.ensureDeferred
async def test_uncached_project_during_outage_is_503(api, fake_upstream):
    fake_upstream.fail("status", code=502)
    response, body = await get(api.root + "/pypi/depproj/json")
    assert response.code == 503
    assert header(response, "retry-after")
    assert "message" in json.loads(body)
    fake_upstream.heal()
    response, body = await get(api.root + "/pypi/depproj/json")
    assert response.code == 200
    assert json.loads(body)["info"]["requires_dist"] == ["tinyproj>=1.0"]


@pytest_twisted.ensureDeferred
async def test_yanked_release(api):
    response, body = await get(api.root + "/pypi/yanked-proj/json")
    assert response.code == 200
    data = json.loads(body)
    # The only release is yanked: info falls back to it, flagged.
    assert data["info"]["version"] == "1.0"
    assert data["info"]["yanked"] is True
    assert data["info"]["yanked_reason"] == "broken"
    assert data["info"]["name"] == "Yanked_Proj"  # display name from METADATA
    (f,) = data["urls"]
    assert f["yanked"] is True and f["yanked_reason"] == "broken"
    assert data["releases"]["1.0"][0]["yanked"] is True


@pytest_twisted.ensureDeferred
async def test_local_view_shows_only_stored_files(api, fake_upstream):
    response, _ = await get(api.root + "/local/pypi/tinyproj/json")
    assert response.code == 404
    await get(api.root + "/pypi/tinyproj/json")  # fetches (and stores) 2.0's METADATA
    wheel = "tinyproj-2.0-py3-none-any.whl"
    response, _ = await get(api.root + f"/files/tinyproj/{wheel}")
    assert response.code == 200
    await _stored(api, "tinyproj", wheel)
    fake_upstream.reset_log()
    response, body = await get(api.root + "/local/pypi/tinyproj/json")
    assert response.code == 200
    assert fake_upstream.requests == []
    data = json.loads(body)
    assert list(data["releases"]) == ["2.0"]
    assert [f["filename"] for f in data["urls"]] == [wheel]
    assert data["urls"][0]["url"] == f"../../files/tinyproj/{wheel}"
    assert data["info"]["summary"] == "A tiny project"


# ------------------------------------------------------------ in memory


class FakeMirror:
    """Just what JsonAPI asks of a Mirror."""

    offline = False
    merge: frozenset[str] = frozenset()

    def __init__(self, *records: ProjectRecord) -> None:
        from pypicache.services.blocklist import Blocklist

        self.blocklist = Blocklist()
        self.clock = Clock()
        self.records = {r.name: r for r in records}
        self.calls: list[tuple[str, bool]] = []

    async def project(self, name: str, *, allow_upstream: bool = True) -> PageResult | None:
        self.calls.append((name, allow_upstream))
        record = self.records.get(name)
        return PageResult(record) if record is not None else None


class NoDownloads:
    async def fetch_metadata(self, project: str, record: FileRecord) -> str:
        raise AssertionError("private projects never go upstream")


ODD_METADATA = (
    b"Metadata-Version: 2.4\n"
    b"Name: Private.Pkg\n"
    b"Version: 1.1\n"
    b"Summary: Private \xff\xfe stuff\n"
    b"Author: J\xc3\xb6rg\n"
    b"Author-email: jorg@example.com\n"
    b"Home-page: https://example.com/\n"
    b"Project-URL: Source, https://example.com/src\n"
    b"Project-URL: broken entry\n"
    b"Classifier: Programming Language :: Python :: 3\n"
    b"Classifier: License :: OSI Approved :: MIT License\n"
    b"Requires-Dist: attrs>=22\n"
    b"Requires-Dist: rich; extra == 'cli'\n"
    b"Provides-Extra: cli\n"
    b"License-Expression: MIT\n"
    b"License-File: LICENSE\n"
    b"Keywords: a,b\n"
    b"Description-Content-Type: text/markdown\n"
    b"\n"
    b"# Private\n\nBody with </script> and \x00 bytes \xc3\n"
)


async def private_site(metadata: bytes) -> tuple[StubTreq, FakeMirror]:
    storage = MemoryStorage()
    writer = storage.open_write(None)
    writer.write(metadata)
    blob = await writer.commit()

    def uploaded(filename: str, upload_time: str, **kw: Any) -> FileRecord:
        return FileRecord(filename=filename, origin="local", stored=True, size=10,
                          hashes={"sha256": hashlib.sha256(filename.encode()).hexdigest(),
                                  "md5": "0" * 32, "blake2b_256": "b" * 64},
                          upload_time=upload_time, **kw)

    record = ProjectRecord(name="private-pkg", origin="local", files=(
        uploaded("private_pkg-1.0-py3-none-any.whl", "2025-01-01T00:00:00.000001Z"),
        uploaded("private_pkg-1.1-py3-none-any.whl", "2025-02-01T10:20:30.123456Z",
                 core_metadata={"sha256": blob.sha256}, metadata_stored=True, requires_python=">=3.9",
                 listed=False),
        uploaded("private_pkg-2.0rc1-py3-none-any.whl", "2025-03-01T00:00:00Z"),
        uploaded("private_pkg-1.2-py3-none-any.whl", "2025-02-02T00:00:00Z", yanked=True),
        uploaded("private-pkg-weird.exe", "2025-02-02T00:00:00Z"),
    ))
    mirror = FakeMirror(record)
    root = Resource()
    root.putChild(b"pypi", JsonAPI(mirror, storage, NoDownloads()))  # type: ignore[arg-type]
    return StubTreq(root), mirror


@pytest_twisted.ensureDeferred
async def test_private_project_info_from_stored_metadata():
    client, mirror = await private_site(ODD_METADATA)
    response = await client.get("http://pkgs.example:8080/pypi/private-pkg/json")
    assert response.code == 200
    data = json.loads(await client.content(response))
    assert mirror.calls == [("private-pkg", True)]
    # 2.0rc1 is a pre-release, 1.2 is yanked: info is 1.1.
    assert list(data["releases"]) == ["1.0", "1.1", "1.2", "2.0rc1"]
    info = data["info"]
    assert set(info) == INFO_KEYS
    assert info["version"] == "1.1"
    assert info["name"] == "Private.Pkg"
    assert "\ufffd" in info["summary"]
    assert info["author"] == "J\u00f6rg"
    assert info["classifiers"] == ["Programming Language :: Python :: 3",
                                   "License :: OSI Approved :: MIT License"]
    assert info["requires_dist"] == ["attrs>=22", "rich; extra == 'cli'"]
    assert info["provides_extra"] == ["cli"]
    assert info["project_urls"] == {"Homepage": "https://example.com/", "Source": "https://example.com/src"}
    assert info["home_page"] == "https://example.com/"
    assert info["license_expression"] == "MIT" and info["license_files"] == ["LICENSE"]
    assert info["keywords"] == "a,b"
    assert info["description_content_type"] == "text/markdown"
    assert info["description"].startswith("# Private\n\nBody with </script>")
    assert info["requires_python"] == ">=3.9"
    assert info["package_url"] == "../../simple/private-pkg/"
    # Private projects list every file (even an unlisted one); the .exe is skipped.
    (f,) = data["urls"]
    assert f["url"] == "../../files/private-pkg/private_pkg-1.1-py3-none-any.whl"
    assert f["digests"] == {"md5": "0" * 32, "sha256": f["digests"]["sha256"], "blake2b_256": "b" * 64}
    assert f["md5_digest"] == "0" * 32
    assert f["upload_time"] == "2025-02-01T10:20:30"
    assert f["upload_time_iso_8601"] == "2025-02-01T10:20:30.123456Z"
    assert data["releases"]["1.2"][0]["yanked"] is True
    assert data["last_serial"] == 1740787200  # 2025-03-01T00:00:00Z


@pytest_twisted.ensureDeferred
async def test_version_without_metadata_gets_minimal_info():
    client, _ = await private_site(ODD_METADATA)
    response = await client.get("http://pkgs.example/pypi/private-pkg/2.0rc1/json")
    assert response.code == 200
    info = json.loads(await client.content(response))["info"]
    assert set(info) == INFO_KEYS
    assert info["name"] == "private-pkg" and info["version"] == "2.0rc1"
    assert info["summary"] is None and info["classifiers"] == [] and info["requires_dist"] is None
    response = await client.get("http://pkgs.example/pypi/private-pkg/1.2/json")
    info = json.loads(await client.content(response))["info"]
    assert info["yanked"] is True and info["yanked_reason"] is None


@pytest_twisted.ensureDeferred
async def test_garbage_metadata_never_crashes():
    client, _ = await private_site(b"\x00\xff\xfe garbage\n\n\n: : :\nName\n" + bytes(range(256)))
    response = await client.get("http://pkgs.example/pypi/private-pkg/json")
    assert response.code == 200
    info = json.loads(await client.content(response))["info"]
    assert info["version"] == "1.1" and info["name"] == "private-pkg"


@pytest_twisted.ensureDeferred
async def test_relative_urls_without_a_usable_host():
    client, _ = await private_site(ODD_METADATA)
    response = await client.get("http://pkgs.example/pypi/private-pkg/1.1/json",
                                headers={"Host": ["evil\r\nx"]})
    data = json.loads(await client.content(response))
    # Resolved against /pypi/private-pkg/1.1/json this is /files/private-pkg/...
    assert data["urls"][0]["url"] == "../../../files/private-pkg/private_pkg-1.1-py3-none-any.whl"


# ------------------------------------------------------------ URLs and spoofed headers

SPOOFED = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
           "X-Forwarded-Prefix": "/evil", "Forwarded": "host=evil.example;proto=https"}


async def spoofed_get(server: Any, path: str, headers: dict[str, str]) -> Any:
    from tests.rawhttp import raw_request

    lines = [f"GET {path} HTTP/1.1", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    if "Host" not in headers:
        lines.append("Host: 127.0.0.1")
    return await raw_request(server, "GET", path, raw=("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest_twisted.ensureDeferred
async def test_host_and_forwarded_headers_never_reach_the_urls(proxy, fake_upstream):  # noqa: F811
    """The answer is cacheable, so nothing a client (or a cache's unkeyed
    header) sends may shape it: URLs are relative to the request URL."""
    honest = await spoofed_get(proxy, "/pypi/tinyproj/json", {})
    assert honest.status == 200
    for name, value in SPOOFED.items():
        response = await spoofed_get(proxy, "/pypi/tinyproj/json", {name: value})
        assert response.status == 200, (name, response.status)
        assert b"evil" not in response.body and b"https:" not in response.body, name
        assert response.body == honest.body and response.header("etag") == honest.header("etag")
    data = json.loads(honest.body)
    assert data["info"]["package_url"] == "../../simple/tinyproj/"
    assert data["info"]["release_url"] == "../../pypi/tinyproj/2.0/json"
    url = urljoin(proxy.root + "/pypi/tinyproj/json", data["urls"][0]["url"])
    response, content = await get(url)
    assert response.code == 200 and hashlib.sha256(content).hexdigest() == data["urls"][0]["digests"]["sha256"]
    version = json.loads((await spoofed_get(proxy, "/pypi/tinyproj/1.0/json", SPOOFED)).body)
    assert version["urls"][0]["url"].startswith("../../../files/tinyproj/tinyproj-1.0")


@pytest_twisted.ensureDeferred
async def test_public_url_gives_absolute_urls_whatever_the_host(tmp_path, fake_upstream):
    from tests.server import make_config, start_server

    server = await start_server(make_config(tmp_path, fake_upstream.url, public_url="https://pkgs.example.com/py"))
    try:
        bodies = set()
        for headers in ({}, SPOOFED):
            response = await spoofed_get(server, "/pypi/tinyproj/json", headers)
            assert response.status == 200
            bodies.add(response.body)
        (body,) = bodies
        data = json.loads(body)
        assert data["info"]["package_url"] == "https://pkgs.example.com/py/simple/tinyproj/"
        assert data["info"]["release_url"] == "https://pkgs.example.com/py/pypi/tinyproj/2.0/json"
        assert {f["url"] for f in data["urls"]} == {
            f"https://pkgs.example.com/py/files/tinyproj/{f['filename']}" for f in data["urls"]}
    finally:
        await server.stop()


# ------------------------------------------------------------ helpers


def test_classify():
    assert classify("a-1.0-py2.py3-none-any.whl") == (classify("a-1.0.tar.gz")[0], "bdist_wheel", "py2.py3")
    assert classify("a-1.0-cp311-cp311-manylinux_2_17_x86_64.whl")[2] == "cp311"
    assert classify("a_b-2.0.zip")[1:] == ("sdist", "source")
    assert classify("a-2.0.tar.bz2")[1] == "sdist"
    assert classify("a-1.0-py2.7.egg")[1:] == ("bdist_egg", "2.7")
    assert classify("a-1.0.exe") is None
    assert classify("a-notaversion!.tar.gz") is None


def test_latest_prefers_final_unyanked():
    files = [FileRecord(filename=f) for f in ("a-1.0.tar.gz", "a-3.0a1.tar.gz")]
    files.append(FileRecord(filename="a-2.0.tar.gz", yanked=True))
    releases = group_releases(files, ["0.5", "bogus!"])
    assert list(releases) == ["0.5", "1.0", "2.0", "3.0a1"]
    assert latest(releases).key == "1.0"
    only_pre = group_releases([FileRecord(filename="a-3.0a1.tar.gz")])
    assert latest(only_pre).key == "3.0a1"


def test_parse_metadata_old_style_description(tmp_path):
    raw = (b"Metadata-Version: 1.1\nName: old\nVersion: 1\n"
           b"Description: first line\n        |second line\n        |\n        |fourth\n"
           b"License: line one\n        line two\nPlatform: linux\nPlatform: win32\n")
    meta = read_for_json(raw, max_bytes=MAX_METADATA_BYTES)
    assert meta["description"] == "first line\nsecond line\n\nfourth"
    assert meta["license"].split() == ["line", "one", "line", "two"]
    assert meta["platform"] == "linux, win32"
    assert meta["requires_dist"] is None and meta["project_urls"] is None
    # What the strict upload parser refuses (not UTF-8, a repeated field) is read leniently.
    lenient = read_for_json(raw.replace(b"Version: 1\n", b"Version: 1\nVersion: 2\nSummary: \xff\n"),
                            max_bytes=MAX_METADATA_BYTES)
    assert lenient["description"] == "first line\nsecond line\n\nfourth"
    assert lenient["license"] == "line one\nline two"
    assert lenient["version"] == "1" and lenient["summary"] == "\ufffd"


def test_parse_metadata_of_built_wheel(tmp_path):
    from tests.builders import build_wheel

    wheel = build_wheel(tmp_path, "depproj", "1.0", requires_dist=["tinyproj>=1.0"], summary="S")
    meta = read_for_json(wheel_metadata(wheel), max_bytes=MAX_METADATA_BYTES)
    assert meta["name"] == "depproj" and meta["version"] == "1.0"
    assert meta["summary"] == "S" and meta["requires_dist"] == ["tinyproj>=1.0"]
