"""``/as-of/<time>/simple/``: the index as this server knew it at a time,
over real HTTP and with real pip and uv (docs/security.md, "Supply chain")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from pypicache.model import FileRecord
from pypicache.services import cooldown
from tests.anchors import anchors
from tests.builders import build_wheel
from tests.clients import pip_install, uv_pip_install
from tests.server import make_config, start_server

JSON = "application/vnd.pypi.simple.v1+json"
RELEASES = (("1.0", "2024-01-01T12:00:00.000000Z"), ("1.1", "2024-03-01T12:00:00.000000Z"),
            ("2.0", "2024-06-01T12:00:00.000000Z"))


async def get(url: str, accept: str = JSON):
    response = await treq.get(url, headers={"Accept": [accept]}, allow_redirects=False)
    return response, await treq.content(response)


def filenames(body: bytes) -> list[str]:
    return [f["filename"] for f in json.loads(body)["files"]]


def publish(fake_upstream, tmp_path: Path) -> dict[str, str]:
    names = {}
    for version, uploaded in RELEASES:
        wheel = build_wheel(tmp_path / "dists", "pastproj", version)
        fake_upstream.add(wheel, upload_time=uploaded)
        names[version] = wheel.name
    return names


@pytest_twisted.async_yield_fixture
async def past(tmp_path, fake_upstream):
    names = publish(fake_upstream, tmp_path)
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        yield server, names
    finally:
        await server.stop()


# ------------------------------------------------------------------ the rule


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01", "2024-05-02T00:00:00+00:00"),  # a date: the whole day, in UTC
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00"),
    ("2024-05-01T10:00:00.5+02:00", "2024-05-01T08:00:00.500000+00:00"),
    ("2024-05-01t10:00:00z", "2024-05-01T10:00:00+00:00"),
])
def test_times_parse(text, expected):
    import datetime

    assert cooldown.parse_as_of(text) == datetime.datetime.fromisoformat(expected).timestamp()


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "2024-05-01T10:00:00", "20240501", "",
                                  "2024-05-01T25:00:00Z", "1" * 100])
def test_bad_times_are_refused(text):
    with pytest.raises(cooldown.BadTime):
        cooldown.parse_as_of(text)


def test_yank_history_is_replayed():
    f = FileRecord("p-1.tar.gz", yanked=True, yanked_reason="again",
                   yank_history=((10.0, True, "first"), (20.0, False, None), (30.0, True, "again")))
    assert cooldown.yank_state(f, 5.0) == (False, None)
    assert cooldown.yank_state(f, 15.0) == (True, "first")
    assert cooldown.yank_state(f, 25.0) == (False, None)
    assert cooldown.yank_state(f, 35.0) == (True, "again")
    assert cooldown.yank_state(FileRecord("q-1.tar.gz", yanked=True), 1.0) == (True, None)  # no history: as now
    unknown_time = FileRecord("r-1.tar.gz", first_seen=None)
    seen_late = FileRecord("s-1.tar.gz", first_seen=50.0)
    assert cooldown.as_of((unknown_time, seen_late), 40.0) == (unknown_time,)


# --------------------------------------------------------- over real HTTP


@pytest_twisted.ensureDeferred
async def test_as_of_pages_leave_out_later_uploads(past):
    server, names = past
    base = server.root + "/as-of/"
    response, body = await get(base + "2024-05-01/simple/pastproj/")
    assert response.code == 200
    assert filenames(body) == [names["1.0"], names["1.1"]]
    # A date includes its whole day (as uv's --exclude-newer): 1.1 came at noon.
    _, body = await get(base + "2024-03-01/simple/pastproj/")
    assert filenames(body) == [names["1.0"], names["1.1"]]
    _, body = await get(base + "2024-03-01T11:59:59Z/simple/pastproj/")
    assert filenames(body) == [names["1.0"]]
    _, body = await get(base + "2023-12-31/simple/pastproj/")
    assert filenames(body) == []
    # HTML too, and the links reach the ordinary file route.
    response, body = await get(base + "2024-05-01/simple/pastproj/", "text/html")
    links = anchors(body)
    assert [a["text"] for a in links] == [names["1.0"], names["1.1"]]
    assert links[0]["href"].startswith("../../../../files/pastproj/")
    response, _ = await get(server.root + "/files/pastproj/" + names["1.1"], "*/*")
    assert response.code == 200
    # Names are normalised like everywhere else; the root lists projects.
    response, _ = await get(base + "2024-05-01/simple/PastProj/")
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == [b"/as-of/2024-05-01/simple/pastproj/".decode()]
    response, body = await get(base + "2024-05-01/simple/")
    assert response.code == 200 and {"name": "pastproj"} in json.loads(body)["projects"]


@pytest_twisted.ensureDeferred
async def test_bad_times_answer_400_naming_them(past):
    server, _ = past
    for when in ("yesterday", "2024-02-30", "2024-05-01T10:00:00"):
        response, body = await get(server.root + f"/as-of/{when}/simple/pastproj/")
        assert response.code == 400, when
        assert when.encode() in body and body.startswith(b"bad as-of time")
    response, _ = await get(server.root + "/as-of/2024-05-01/")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_yanks_after_the_time_are_not_shown(past, fake_upstream, tmp_path):
    server, names = past
    _, body = await get(server.simple + "pastproj/")  # first seen: not yanked
    assert all(f["yanked"] is False for f in json.loads(body)["files"])
    before_yank = cooldown.rfc3339(time.time())  # whole seconds: not after the yank below
    from twisted.internet import reactor, task

    await task.deferLater(reactor, 1.01, lambda: None)  # so the yank is seen in a later second
    fake_upstream.add(fake_upstream.files[names["1.1"]], yanked="bad build", upload_time=RELEASES[1][1])
    _, body = await get(server.simple + "pastproj/")  # page_ttl 0: the yank is seen now
    yanked = {f["filename"]: f["yanked"] for f in json.loads(body)["files"]}
    assert yanked[names["1.1"]] == "bad build"
    _, body = await get(server.root + f"/as-of/{before_yank}/simple/pastproj/")
    assert {f["filename"]: f["yanked"] for f in json.loads(body)["files"]}[names["1.1"]] is False
    after = cooldown.rfc3339(time.time() + 2)
    _, body = await get(server.root + f"/as-of/{after}/simple/pastproj/")
    assert {f["filename"]: f["yanked"] for f in json.loads(body)["files"]}[names["1.1"]] == "bad build"


@pytest_twisted.ensureDeferred
async def test_private_projects_use_their_upload_times(past):
    server, _ = past
    for version, uploaded in (("1.0", "2024-01-01T00:00:00.000000Z"), ("2.0", "2024-09-01T00:00:00.000000Z")):
        await server.app.index.add_file("ourproj", FileRecord(
            f"ourproj-{version}.tar.gz", hashes={"sha256": version[0] * 64}, size=1,
            upload_time=uploaded, origin="local"))
    await server.app.index.set_yanked("ourproj", "ourproj-1.0.tar.gz", True, "old")
    _, body = await get(server.root + "/as-of/2024-05-01/simple/ourproj/")
    files = json.loads(body)["files"]
    assert [f["filename"] for f in files] == ["ourproj-1.0.tar.gz"]
    assert files[0]["yanked"] is False  # yanked just now, not then


# --------------------------------------------------------- real pip and uv

CLIENTS = {"pip": pip_install, "uv": uv_pip_install}


@pytest.mark.integration
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest_twisted.ensureDeferred
async def test_clients_install_what_was_newest_then(client, past, fake_upstream, tmp_path):
    server, names = past
    target = tmp_path / "t"
    fake_upstream.reset_log()
    result = await deferToThread(CLIENTS[client], server.root + "/as-of/2024-05-01/simple/", "pastproj",
                                 target=target)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert [p.name for p in target.glob("pastproj-*.dist-info")] == ["pastproj-1.1.dist-info"]
    assert fake_upstream.count(names["1.1"]) >= 1  # fetched through the server under test
    assert fake_upstream.count(names["2.0"]) == 0


@pytest_twisted.ensureDeferred
async def test_as_of_pages_follow_the_block_and_allow_lists(past):
    """A release blocked today is not served from the past either: an as-of
    view must not be a way around the block list."""
    from pypicache.daemon.config import PolicyConfig
    from pypicache.daemon.reload import apply_policy

    server, names = past
    url = server.root + "/as-of/2024-05-01/simple/pastproj/"
    apply_policy(server.app, PolicyConfig(block=("pastproj==1.1",)))
    response, body = await get(url)
    assert response.code == 200 and filenames(body) == [names["1.0"]]
    apply_policy(server.app, PolicyConfig(block=("pastproj",)))
    response, body = await get(url)
    assert response.code == 403 and b"blocked by policy" in body
    apply_policy(server.app, PolicyConfig(allow_only=frozenset({"other"})))
    response, _ = await get(url)
    assert response.code == 404 and response.headers.getRawHeaders("x-pypicache-reason")
