"""The routes in memory: the App's resource tree driven by ``treq.testing.StubTreq``.

No socket is opened: the server is built from the configuration with the
memory storage and index and a scripted upstream (tests/scripted.py), and
StubTreq carries each request through the resources as twisted.web would.
What these tests pin is the HTTP a client sees of each route family -- the
simple API's negotiation, redirects and errors, a file, /stats and the JSON
API -- so a route's domain logic can move into services without a socket
test noticing first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from treq.testing import StubTreq

from pypicache.daemon import config as configuration
from pypicache.model import FileRecord, ProjectList, ProjectPage, Validators
from pypicache.testing import write_blob
from tests.anchors import anchors
from tests.scripted import ScriptedUpstream

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"
WHEEL = "acme_tools-1.0-py3-none-any.whl"
DATA = b"not really a wheel, but bytes with a known digest"
SHA = hashlib.sha256(DATA).hexdigest()


def upstream_file(name: str, version: str) -> FileRecord:
    filename = f"{name}-{version}-py3-none-any.whl"
    return FileRecord(filename=filename, url=f"https://files.example/{filename}",
                      hashes={"sha256": hashlib.sha256(filename.encode()).hexdigest()}, requires_python=">=3.8")


class Routes:
    """A built App, a StubTreq on its resource tree, and helpers to read answers."""

    def __init__(self, app: Any, upstream: ScriptedUpstream) -> None:
        self.app = app
        self.upstream = upstream
        self.http = StubTreq(app.site.resource)

    def get(self, path: str, **headers: str) -> tuple[Any, bytes]:
        """GET ``path``; the whole exchange completes in memory before this returns."""
        h = {k.replace("_", "-"): [v] for k, v in headers.items()}
        d = self.http.get("http://pypicache.test" + path, headers=h, allow_redirects=False)
        self.http.flush()
        response = self.result(d)
        body = self.http.content(response)
        self.http.flush()
        return response, self.result(body)

    @staticmethod
    def result(d: Any) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "the route did not answer in memory"
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    def add_private(self, name: str, filename: str, data: bytes) -> None:
        """An uploaded file, stored: what the admin command or an upload leaves behind."""
        info = Routes.result(_deferred(write_blob(self.app.storage, data)))
        record = FileRecord(filename=filename, hashes={"sha256": info.sha256}, size=info.size,
                            origin="local", stored=True, requires_python=">=3.9")
        Routes.result(self.app.index.add_file(name, record))


def _deferred(coro: Any) -> Any:
    from twisted.internet import defer

    return defer.ensureDeferred(coro)


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


@pytest_twisted.async_yield_fixture
async def routes(tmp_path: Path) -> AsyncIterator[Routes]:
    from twisted.internet import reactor

    from pypicache.daemon.app import build

    config = configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False},
        "storage": {"provider": "memory"},
        "index": {"provider": "memory"},
        "upstream": {"provider": "simple", "url": "https://upstream.invalid/simple/"},
    }, source="<test>")
    upstream = ScriptedUpstream()
    upstream.pages["tinyproj"] = ProjectPage(name="tinyproj", files=(upstream_file("tinyproj", "1.0"),
                                                                     upstream_file("tinyproj", "2.0")),
                                             validators=Validators(etag='"t1"'))
    upstream.project_list = ProjectList(names=("tinyproj", "depproj"))
    app = build(config, reactor, upstream=upstream)
    try:
        r = Routes(app, upstream)
        r.add_private("acme-tools", WHEEL, DATA)
        yield r
    finally:
        await app.close()  # stops the thread pool: its threads would keep the process alive


# ------------------------------------------------------------ /simple/


def test_a_project_page_in_html_by_default(routes):
    response, body = routes.get("/simple/tinyproj/")
    assert response.code == 200
    assert header(response, "content-type").startswith("text/html")
    assert "Accept" in header(response, "vary")
    links = {a["text"]: a for a in anchors(body)}
    assert set(links) == {"tinyproj-1.0-py3-none-any.whl", "tinyproj-2.0-py3-none-any.whl"}
    assert links["tinyproj-2.0-py3-none-any.whl"]["href"].startswith(
        "../../files/tinyproj/tinyproj-2.0-py3-none-any.whl#sha256=")
    assert links["tinyproj-2.0-py3-none-any.whl"]["data-requires-python"] == ">=3.8"
    assert routes.upstream.asked == [("tinyproj", Validators())]


def test_a_project_page_in_json_when_asked(routes):
    response, body = routes.get("/simple/tinyproj/", accept=JSON)
    assert response.code == 200 and header(response, "content-type") == JSON
    page = json.loads(body)
    assert page["name"] == "tinyproj"
    assert [f["filename"] for f in page["files"]] == ["tinyproj-1.0-py3-none-any.whl",
                                                      "tinyproj-2.0-py3-none-any.whl"]
    response, body = routes.get("/simple/tinyproj/", accept=f"{HTML}; q=0.5, {JSON}")
    assert header(response, "content-type") == JSON
    response, _ = routes.get("/simple/tinyproj/", accept=f"{HTML}, {JSON}; q=0.5")
    assert header(response, "content-type") == HTML
    assert len(routes.upstream.asked) == 1  # the page stayed fresh


def test_an_unnormalised_name_is_redirected_to_the_canonical_one(routes):
    for path in ("/simple/TinyProj/", "/simple/tinyproj", "/simple/Tiny.Proj/"):
        response, _ = routes.get(path)
        assert response.code == 301, path
    assert header(routes.get("/simple/TinyProj/")[0], "location") == "/simple/tinyproj/"
    assert header(routes.get("/simple/tinyproj")[0], "location") == "/simple/tinyproj/"
    assert routes.upstream.asked == []


def test_an_unknown_or_invalid_project_is_404(routes):
    response, _ = routes.get("/simple/no-such-project/")
    assert response.code == 404
    for bad in ("/simple/-bad-/", "/simple/%00/", "/simple/a%0d%0aSet-Cookie:x/"):
        response, _ = routes.get(bad)
        assert response.code == 404, bad
        assert header(response, "set-cookie") is None
    assert [name for name, _ in routes.upstream.asked] == ["no-such-project"]


def test_an_unacceptable_type_is_406(routes):
    response, _ = routes.get("/simple/tinyproj/", accept="application/json")
    assert response.code == 406


def test_revalidation_with_the_etag_is_304(routes):
    response, _ = routes.get("/simple/tinyproj/", accept=JSON)
    etag = header(response, "etag")
    assert etag
    response, body = routes.get("/simple/tinyproj/", accept=JSON, if_none_match=etag)
    assert response.code == 304 and body == b""


def test_the_root_lists_upstream_and_private_projects(routes):
    response, body = routes.get("/simple/", accept=JSON)
    assert response.code == 200
    assert {p["name"] for p in json.loads(body)["projects"]} == {"tinyproj", "depproj", "acme-tools"}
    response, body = routes.get("/local/simple/", accept=JSON)
    assert {p["name"] for p in json.loads(body)["projects"]} == {"acme-tools"}


def test_a_private_project_is_served_without_the_upstream(routes):
    response, body = routes.get("/simple/acme-tools/")
    assert response.code == 200
    assert [a["text"] for a in anchors(body)] == [WHEEL]
    response, body = routes.get("/local/simple/tinyproj/")
    assert response.code == 404
    assert routes.upstream.asked == []


# ------------------------------------------------------------ files


def test_a_stored_file_is_sent_with_its_digest(routes):
    response, body = routes.get(f"/files/acme-tools/{WHEEL}")
    assert response.code == 200 and body == DATA
    assert header(response, "etag") == f'"{SHA}"'
    assert response.length == len(DATA)  # the client moves Content-Length there
    assert "immutable" in header(response, "cache-control")
    response, body = routes.get(f"/local/files/acme-tools/{WHEEL}")
    assert response.code == 200 and body == DATA


def test_a_range_of_a_stored_file(routes):
    response, body = routes.get(f"/files/acme-tools/{WHEEL}", range="bytes=4-9")
    assert response.code == 206 and body == DATA[4:10]


def test_an_unknown_file_is_404(routes):
    for path in (f"/files/acme-tools/{WHEEL[:-4]}.zip", "/files/acme-tools/.hidden", "/files/acme-tools",
                 f"/files/acme-tools/{WHEEL}/more"):
        response, _ = routes.get(path)
        assert response.code == 404, path


def test_an_upstream_file_the_upstream_no_longer_has_is_404(routes):
    response, _ = routes.get("/files/tinyproj/tinyproj-1.0-py3-none-any.whl")
    assert response.code == 404
    assert routes.upstream.opened == ["https://files.example/tinyproj-1.0-py3-none-any.whl"]


# ------------------------------------------------------------ /stats


def test_stats_count_what_was_served(routes):
    routes.get("/simple/tinyproj/")
    routes.get(f"/files/acme-tools/{WHEEL}")
    response, body = routes.get("/stats")
    assert response.code == 200
    assert header(response, "content-type") == "application/json"
    assert header(response, "cache-control") == "no-store"
    stats = json.loads(body)
    assert stats["file_hits"] == 1
    assert isinstance(stats, dict) and all(isinstance(v, (int, float, dict)) for v in stats.values())


# ------------------------------------------------------------ /pypi/<name>/json


def test_the_json_api_describes_a_project(routes):
    response, body = routes.get("/pypi/tinyproj/json")
    assert response.code == 200
    assert header(response, "content-type").startswith("application/json")
    doc = json.loads(body)
    assert doc["info"]["name"] == "tinyproj"
    assert doc["info"]["version"] == "2.0"
    assert set(doc["releases"]) == {"1.0", "2.0"}
    assert [u["filename"] for u in doc["urls"]] == ["tinyproj-2.0-py3-none-any.whl"]


def test_the_json_api_of_one_version_and_of_unknown_ones(routes):
    response, body = routes.get("/pypi/tinyproj/1.0/json")
    assert response.code == 200
    assert json.loads(body)["info"]["version"] == "1.0"
    assert routes.get("/pypi/tinyproj/9.9/json")[0].code == 404
    assert routes.get("/pypi/no-such-project/json")[0].code == 404
    response, _ = routes.get("/pypi/TinyProj/json")
    assert response.code == 301 and header(response, "location").endswith("/pypi/tinyproj/json")
