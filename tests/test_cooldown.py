"""The release cooldown (``[policy] min_age``): the rule, then over real HTTP
and with real pip and uv (docs/security.md, "Supply chain")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.internet.threads import deferToThread

from pypicache.daemon import config as configuration
from pypicache.daemon.config import PolicyConfig
from pypicache.model import FileRecord
from pypicache.services import cooldown
from tests.anchors import anchors
from tests.builders import build_wheel
from tests.clients import pip_install, uv_pip_install
from tests.server import RunningServer, start_server

JSON = "application/vnd.pypi.simple.v1+json"
DAY = 86400.0
NOW = 1_750_000_000.0


def stamp(seconds: float) -> str:
    """A PEP 700 upload time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(seconds))


def upstream_file(name: str, age: float | None, now: float = NOW) -> FileRecord:
    return FileRecord(name, url="https://u.example/" + name,
                      upload_time=None if age is None else stamp(now - age))


# ------------------------------------------------------------------ the rule


def test_no_policy_and_zero_min_age_hold_nothing():
    files = (upstream_file("p-1.0.tar.gz", 60), upstream_file("p-2.0.tar.gz", None))
    for policy in (None, PolicyConfig()):
        held = cooldown.hold_back(policy, "p", files, NOW)
        assert held.files is files and held.count == 0 and held.until is None


def test_young_files_are_held_until_they_come_of_age():
    policy = PolicyConfig(min_age=2 * DAY)
    old, day, hour = (upstream_file("p-1.0.tar.gz", 30 * DAY), upstream_file("p-1.1.tar.gz", DAY),
                      upstream_file("p-2.0.tar.gz", 3600))
    held = cooldown.hold_back(policy, "p", (old, day, hour), NOW)
    assert held.files == (old,)
    assert held.count == 2
    assert held.until == pytest.approx(NOW + DAY)  # 1.1 comes of age first
    assert cooldown.held_until(policy, "p", old, NOW) is None
    assert cooldown.held_until(policy, "p", hour, NOW) == pytest.approx(NOW - 3600 + 2 * DAY)
    assert cooldown.reason(NOW) == "cooldown until " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW))


def test_exemptions_overrides_and_private_files():
    young = upstream_file("p-2.0.tar.gz", 3600)
    policy = PolicyConfig(min_age=2 * DAY, min_age_exempt=frozenset({"p"}),
                          min_age_overrides={"q": 600.0, "r": 7200.0})
    assert cooldown.held_until(policy, "p", young, NOW) is None  # exempt
    assert cooldown.held_until(policy, "q", young, NOW) is None  # 10 min cooldown: old enough
    assert cooldown.held_until(policy, "r", young, NOW) is not None  # 2 h: not yet
    assert cooldown.held_until(policy, "s", young, NOW) is not None
    private = attrs.evolve(young, origin="local", url="")
    assert cooldown.held_until(policy, "s", private, NOW) is None  # uploads here are never held
    # A merged project ([uploads] merge) mixes both: only its upstream files are held.
    held = cooldown.hold_back(policy, "s", (private, young), NOW)
    assert held.files == (private,) and held.count == 1


def test_missing_upload_time_follows_the_config():
    unknown = upstream_file("p-1.0.tar.gz", None)
    garbled = attrs.evolve(unknown, upload_time="last tuesday")
    allow = PolicyConfig(min_age=DAY)
    hide = PolicyConfig(min_age=DAY, missing_upload_time="hide")
    assert cooldown.held_until(allow, "p", unknown, NOW) is None
    assert cooldown.held_until(hide, "p", unknown, NOW) == cooldown.FOREVER
    assert cooldown.held_until(hide, "p", garbled, NOW) == cooldown.FOREVER
    held = cooldown.hold_back(hide, "p", (unknown,), NOW)
    assert held.count == 1 and held.until is None  # never comes of age
    assert cooldown.reason(cooldown.FOREVER) == "cooldown: no upload time"


# --------------------------------------------------------- over real HTTP


def policy_config(tmp_path: Path, upstream_url: str, **policy) -> configuration.Config:
    return configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": upstream_url},
        "policy": policy,
    }, source="<test>")


def publish_releases(fake_upstream, tmp_path: Path) -> dict[str, str]:
    """``coolproj`` 1.0 (a month old), 1.1 (a day old), 2.0 (an hour old): wheel filenames by version."""
    now = time.time()
    names = {}
    for version, age in (("1.0", 30 * DAY), ("1.1", DAY), ("2.0", 3600)):
        wheel = build_wheel(tmp_path / "dists", "coolproj", version)
        fake_upstream.add(wheel, upload_time=stamp(now - age))
        names[version] = wheel.name
    return names


async def get(url: str, accept: str = JSON):
    response = await treq.get(url, headers={"Accept": [accept]}, allow_redirects=False)
    return response, await treq.content(response)


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


@pytest_twisted.async_yield_fixture
async def cool(tmp_path, fake_upstream):
    """A server with a two-day cooldown in front of the three coolproj releases."""
    names = publish_releases(fake_upstream, tmp_path)
    server = await start_server(policy_config(tmp_path, fake_upstream.url, min_age="2d"))
    try:
        yield server, names
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pages_list_only_old_enough_files_and_say_how_many_are_held(cool):
    server, names = cool
    response, body = await get(server.simple + "coolproj/")
    assert response.code == 200
    page = json.loads(body)
    assert [f["filename"] for f in page["files"]] == [names["1.0"]]
    assert page["versions"] == ["1.0"]  # held releases are not named either
    assert page["meta"]["_pypicache"] == {"held_back": 2}
    assert header(response, "x-pypicache-held-back") == "2"
    response, body = await get(server.simple + "coolproj/", "text/html")
    assert [a["text"] for a in anchors(body)] == [names["1.0"]]
    assert b'<meta name="pypicache:held-back" content="2">' in body
    # A project with nothing young is untouched: no count, no header.
    response, body = await get(server.simple + "tinyproj/")
    assert "_pypicache" not in json.loads(body)["meta"]
    assert header(response, "x-pypicache-held-back") is None


@pytest_twisted.ensureDeferred
async def test_held_file_urls_answer_404_with_the_reason(cool, fake_upstream):
    server, names = cool
    await get(server.simple + "coolproj/")
    response, body = await get(server.root + "/files/coolproj/" + names["2.0"], "*/*")
    assert response.code == 404
    reason = header(response, "x-pypicache-reason")
    assert reason.startswith("cooldown until ") and reason.endswith("Z")
    assert b"held back by the release cooldown" in body
    response, _ = await get(server.root + "/files/coolproj/" + names["2.0"] + ".metadata", "*/*")
    assert response.code == 404 and header(response, "x-pypicache-reason") == reason
    assert fake_upstream.count(names["2.0"]) == 0  # never fetched
    response, _ = await get(server.root + "/files/coolproj/" + names["1.0"], "*/*")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_json_api_leaves_held_releases_out(cool):
    server, names = cool
    response, body = await get(server.root + "/pypi/coolproj/json", "application/json")
    assert response.code == 200
    doc = json.loads(body)
    assert set(doc["releases"]) == {"1.0"}
    assert doc["info"]["version"] == "1.0"
    assert header(response, "x-pypicache-held-back") == "2"


@pytest_twisted.ensureDeferred
async def test_policy_is_read_per_request(cool):
    """A reload replaces ``app.policy``: the next page follows it, cached or not."""
    server, names = cool
    _, body = await get(server.simple + "coolproj/")
    page_before = json.loads(body)
    server.app.policy = attrs.evolve(server.app.policy, min_age_overrides={"coolproj": 7200.0})
    response, body = await get(server.simple + "coolproj/")
    assert [f["filename"] for f in json.loads(body)["files"]] == [names["1.0"], names["1.1"]]
    assert json.loads(body) != page_before
    server.app.policy = attrs.evolve(server.app.policy, min_age_exempt=frozenset({"coolproj"}))
    response, body = await get(server.simple + "coolproj/")
    assert len(json.loads(body)["files"]) == 3
    assert header(response, "x-pypicache-held-back") is None


@pytest_twisted.ensureDeferred
async def test_missing_upload_time_hide_and_allow(tmp_path, fake_upstream):
    wheel = build_wheel(tmp_path / "dists", "timeless", "1.0")
    fake_upstream.add(wheel, upload_time="")
    for choice, listed in (("allow", [wheel.name]), ("hide", [])):
        server = await start_server(policy_config(tmp_path / choice, fake_upstream.url, min_age="1d",
                                                  missing_upload_time=choice))
        try:
            response, body = await get(server.simple + "timeless/")
            assert [f["filename"] for f in json.loads(body)["files"]] == listed, choice
            response, _ = await get(server.root + "/files/timeless/" + wheel.name, "*/*")
            if choice == "hide":
                assert response.code == 404
                assert header(response, "x-pypicache-reason") == "cooldown: no upload time"
            else:
                assert response.code == 200
        finally:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_private_uploads_are_never_held_back(cool):
    server, _ = cool
    record = FileRecord("mine-1.0.tar.gz", hashes={"sha256": "a" * 64}, size=1,
                        upload_time=stamp(time.time()), origin="local")
    await server.app.index.add_file("mine", record)
    response, body = await get(server.simple + "mine/")
    assert [f["filename"] for f in json.loads(body)["files"]] == ["mine-1.0.tar.gz"]
    assert header(response, "x-pypicache-held-back") is None


@pytest_twisted.ensureDeferred
async def test_a_file_appears_when_it_comes_of_age_not_a_ttl_later(tmp_path, fake_upstream):
    """The page (the fast path's too) and its ETag change the moment the held
    file is old enough, with a page TTL of an hour."""
    wheel = build_wheel(tmp_path / "dists", "ripening", "1.0")
    fake_upstream.add(wheel, upload_time=stamp(time.time() - 3600 + 1.5))
    config = policy_config(tmp_path, fake_upstream.url, min_age="1h")
    server = await start_server(attrs.evolve(config, page_ttl=3600.0))
    try:
        response, body = await get(server.simple + "ripening/")
        assert json.loads(body)["files"] == []
        held_etag = header(response, "etag")
        # Fresh and rendered: the fast path can answer it (no upstream request).
        fast = server.app.site.resource.views[0].fast_page
        status, headers, body = fast("ripening", JSON.encode(), None, None)
        assert status == 200 and json.loads(body)["files"] == []
        assert (b"X-PyPICache-Held-Back", b"1") in headers
        before = fake_upstream.count("/simple/ripening")
        response, body = await get(server.simple + "ripening/")
        assert json.loads(body)["files"] == [] and header(response, "etag") == held_etag
        from twisted.internet import reactor

        await task.deferLater(reactor, 2.0, lambda: None)
        assert fast("ripening", JSON.encode(), None, None) is None  # of age: no longer current
        response, body = await get(server.simple + "ripening/")
        assert [f["filename"] for f in json.loads(body)["files"]] == [wheel.name]
        assert header(response, "etag") != held_etag
        assert fake_upstream.count("/simple/ripening") == before  # no refresh was needed
        response, _ = await get(server.root + "/files/ripening/" + wheel.name, "*/*")
        assert response.code == 200
    finally:
        await server.stop()


# --------------------------------------------------------- real pip and uv

CLIENTS = {"pip": pip_install, "uv": uv_pip_install}


def installed_version(target: Path, name: str) -> str | None:
    found = [p.name for p in target.glob(f"{name}-*.dist-info")]
    return found[0][len(name) + 1:-len(".dist-info")] if found else None


@pytest.mark.integration
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest_twisted.ensureDeferred
async def test_clients_resolve_to_the_newest_release_old_enough(client, tmp_path, fake_upstream):
    names = publish_releases(fake_upstream, tmp_path)
    install = CLIENTS[client]
    for label, policy, expected in (("cooled", {"min_age": "2d"}, "1.0"),
                                    ("override", {"min_age": "2d", "min_age_overrides": {"coolproj": "2h"}}, "1.1"),
                                    ("exempt", {"min_age": "2d", "min_age_exempt": ["coolproj"]}, "2.0")):
        server = await start_server(policy_config(tmp_path / label, fake_upstream.url, **policy))
        try:
            fake_upstream.reset_log()
            result = await deferToThread(install, server.simple, "coolproj", target=tmp_path / label / "t")
            assert result.returncode == 0, f"{label}:\n{result.stdout}\n{result.stderr}"
            assert installed_version(tmp_path / label / "t", "coolproj") == expected, label
            # The wheel came through the server under test.
            assert fake_upstream.count(names[expected]) >= 1
        finally:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_pre_filling_resolves_past_held_releases(cool, fake_upstream):
    """``POST /requirements.txt`` and ``pypicache prefetch`` fill what clients
    can install: never a release the cooldown holds back."""
    from twisted.internet import reactor

    from pypicache.services.environments import environments
    from pypicache.services.lockfiles import parse_requirements
    from pypicache.services.prefetch import Prefetcher

    server, names = cool
    app = server.app
    prefetcher = Prefetcher(mirror=app.mirror, downloader=app.downloader, storage=app.storage, reactor=reactor,
                            policy=lambda: app.policy)
    report = await prefetcher.run(parse_requirements("coolproj\n"), environments())
    assert {f.filename: f.status for f in report.files} == {names["1.0"]: "fetched"}
    assert fake_upstream.count(names["2.0"]) == 0
