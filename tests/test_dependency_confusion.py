"""Dependency confusion: a build asking for a private name must never get upstream files.

Each test drives a real listening server over HTTP, with the fake upstream
holding the public ``tinyproj`` (1.0 and 2.0): the name an attacker (or an
unlucky administrator) tries to mix up with a private one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest_twisted
import treq
from twisted.internet import defer

from tests.builders import build_wheel
from tests.server import RunningServer, make_config, start_server
from tests.uploads import PASSWORD, cheap_accounts, form, post, state

JSON = "application/vnd.pypi.simple.v1+json"
PUBLIC = "tinyproj"
PUBLIC_WHEEL = "tinyproj-2.0-py3-none-any.whl"
PRIVATE_WHEEL = "tinyproj-1.5-py3-none-any.whl"


@pytest_twisted.async_yield_fixture
async def start(tmp_path: Path, fake_upstream: Any):
    """``await start(offline=..., **uploads)``: a server with users alice and bob."""
    started: list[RunningServer] = []

    async def start_(*, offline: bool = False, **uploads: Any) -> RunningServer:
        config = make_config(tmp_path, fake_upstream.url, offline=offline)
        config = attrs.evolve(config, uploads=attrs.evolve(config.uploads, **uploads))
        server = await start_server(config)
        started.append(server)
        store = cheap_accounts(server)
        store.add_user("alice", PASSWORD)
        store.add_user("bob", PASSWORD)
        return server

    yield start_
    for server in started:
        await server.stop()


def private_form(tmp_path: Path, version: str = "1.5", name: str = PUBLIC) -> Any:
    data = build_wheel(tmp_path / f"private-{version}", name, version).read_bytes()
    return form(data, f"{name.replace('-', '_')}-{version}-py3-none-any.whl", name=name, version=version)


async def get(url: str, accept: str = JSON) -> tuple[int, bytes]:
    response = await treq.get(url, headers={"accept": [accept]}, persistent=False)
    return response.code, await treq.content(response)


async def cache_public_wheel(server: RunningServer) -> None:
    """A client installs the public tinyproj 2.0 through the proxy: page and wheel are stored."""
    code, _ = await get(server.simple + f"{PUBLIC}/")
    assert code == 200
    code, _ = await get(f"{server.root}/files/{PUBLIC}/{PUBLIC_WHEEL}", "*/*")
    assert code == 200
    for _ in range(100):  # the index mark follows the last byte
        record = await server.app.index.get_project(PUBLIC)
        if record.file(PUBLIC_WHEEL).stored:
            break
        await deferLater(0.05)
    assert record.file(PUBLIC_WHEEL).stored


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


def listed_names(body: bytes) -> set[str]:
    return {f["filename"] for f in json.loads(body)["files"]}


# ---------------------------------------------------- 1. the upstream cannot be asked


@pytest_twisted.ensureDeferred
async def test_offline_server_refuses_a_new_unclaimed_name(start, tmp_path):
    """Offline, nobody can tell whether the upstream has the name: a new
    private name that the config does not claim is refused with 503 saying why."""
    server = await start(offline=True)
    before = await state(server, PUBLIC, PRIVATE_WHEEL)
    answer = await post(server, private_form(tmp_path))
    assert answer.code == 503, answer
    assert "offline" in answer.body and "[uploads] claim" in answer.body
    assert await state(server, PUBLIC, PRIVATE_WHEEL) == before
    assert (await server.app.index.get_project(PUBLIC)) is None


@pytest_twisted.ensureDeferred
async def test_offline_server_accepts_a_claimed_name_from_its_owner(start, tmp_path):
    server = await start(offline=True, claim={PUBLIC: frozenset({"alice"})})
    answer = await post(server, private_form(tmp_path))
    assert answer.code == 200, answer


@pytest_twisted.ensureDeferred
async def test_failing_upstream_refuses_a_new_unclaimed_name(start, tmp_path, fake_upstream):
    """A 5xx, or the breaker open after it, is no "not found": 503 with Retry-After."""
    server = await start()
    fake_upstream.fail("status", "/simple/", code=502)
    for _ in range(2):
        answer = await post(server, private_form(tmp_path, name="acme-new"))
        assert answer.code == 503, answer
        assert "cannot check whether acme-new exists" in answer.body
        assert answer.headers.getRawHeaders("retry-after")
        assert (await server.app.index.get_project("acme-new")) is None


# ------------------------------------- 2. a page refresh in flight during the first upload


@pytest_twisted.ensureDeferred
async def test_refresh_in_flight_does_not_merge_into_a_name_that_just_became_private(
        start, tmp_path, fake_upstream):
    server = await start(claim={PUBLIC: frozenset({"alice"})})
    fake_upstream.fail("delay", f"/simple/{PUBLIC}/", seconds=1.0)
    page = defer.ensureDeferred(get(server.simple + f"{PUBLIC}/"))
    for _ in range(100):
        if any(f"/simple/{PUBLIC}/" in uri for _, uri, _ in fake_upstream.requests):
            break
        await deferLater(0.02)
    answer = await post(server, private_form(tmp_path))  # lands while the page is on its way
    assert answer.code == 200, answer
    await page
    record = await server.app.index.get_project(PUBLIC)
    assert record.origin == "local"
    assert [f.filename for f in record.files] == [PRIVATE_WHEEL]
    code, body = await get(server.simple + f"{PUBLIC}/")
    assert code == 200 and listed_names(body) == {PRIVATE_WHEEL}
    code, _ = await get(f"{server.root}/files/{PUBLIC}/{PUBLIC_WHEEL}", "*/*")
    assert code == 404


# -------------------------------------------- 3. one visibility rule for every view


@pytest_twisted.ensureDeferred
async def test_claimed_name_hides_cached_upstream_files_on_every_view(start, tmp_path, fake_upstream):
    server = await start(claim={PUBLIC: frozenset({"alice"})})
    await cache_public_wheel(server)
    assert (await post(server, private_form(tmp_path))).code == 200
    fake_upstream.reset_log()
    for view in (server.simple, server.local):
        code, body = await get(view + f"{PUBLIC}/")
        assert code == 200 and listed_names(body) == {PRIVATE_WHEEL}, view
        code, body = await get(view + f"{PUBLIC}/", "text/html")
        assert PUBLIC_WHEEL.encode() not in body and PRIVATE_WHEEL.encode() in body
    code, body = await get(f"{server.root}/pypi/{PUBLIC}/json", "application/json")
    assert code == 200, body
    data = json.loads(body)
    assert set(data["releases"]) == {"1.5"}
    assert [f["filename"] for f in data["urls"]] == [PRIVATE_WHEEL]
    for files in ("/files/", "/local/files/"):
        code, _ = await get(f"{server.root}{files}{PUBLIC}/{PUBLIC_WHEEL}", "*/*")
        assert code == 404, files
        code, _ = await get(f"{server.root}{files}{PUBLIC}/{PRIVATE_WHEEL}", "*/*")
        assert code == 200, files
    assert not [r for r in fake_upstream.requests if PUBLIC in r[1]]


@pytest_twisted.ensureDeferred
async def test_merged_name_still_shows_the_upstream_files(start, tmp_path):
    """``[uploads] merge`` is the one way to mix: there both stay visible."""
    server = await start(claim={PUBLIC: frozenset({"alice"})}, merge=frozenset({PUBLIC}))
    await cache_public_wheel(server)
    assert (await post(server, private_form(tmp_path))).code == 200
    code, body = await get(server.local + f"{PUBLIC}/")
    assert code == 200 and listed_names(body) == {PUBLIC_WHEEL, PRIVATE_WHEEL}
    code, _ = await get(f"{server.root}/local/files/{PUBLIC}/{PUBLIC_WHEEL}", "*/*")
    assert code == 200


# ------------------------------------------------- 4. claims name their owners


@pytest_twisted.ensureDeferred
async def test_unowned_claim_refuses_every_user_until_granted(start, tmp_path):
    """The old list form claims a name without owners: racing to it wins
    nothing; only a user the admin command grants may create it."""
    server = await start(claim=frozenset({PUBLIC}))
    for user in ("alice", "bob"):
        before = await state(server, PUBLIC, PRIVATE_WHEEL)
        answer = await post(server, private_form(tmp_path), auth=(user, PASSWORD))
        assert answer.code == 403, answer
        assert f"pypicache project grant {PUBLIC}" in answer.body
        assert await state(server, PUBLIC, PRIVATE_WHEEL) == before
    server.app.accounts.store.grant(PUBLIC, "bob")
    assert (await post(server, private_form(tmp_path), auth=("alice", PASSWORD))).code == 403
    answer = await post(server, private_form(tmp_path), auth=("bob", PASSWORD))
    assert answer.code == 200, answer
    assert server.app.accounts.store.maintainers(PUBLIC) == {"bob"}


@pytest_twisted.ensureDeferred
async def test_claim_names_its_owners(start, tmp_path):
    server = await start(claim={PUBLIC: frozenset({"alice"})})
    answer = await post(server, private_form(tmp_path), auth=("bob", PASSWORD))
    assert answer.code == 403, answer
    assert (await server.app.index.get_project(PUBLIC)) is None
    answer = await post(server, private_form(tmp_path), auth=("alice", PASSWORD))
    assert answer.code == 200, answer
    # The owner maintains it: yank works for her, not for bob.
    api = f"{server.root}/api/projects/{PUBLIC}/1.5/yank"
    response = await treq.post(api, auth=("bob", PASSWORD), persistent=False)
    assert response.code == 403
    await treq.content(response)
    response = await treq.post(api, auth=("alice", PASSWORD), persistent=False)
    assert response.code == 200, await treq.content(response)
    await treq.content(response)


# ------------------------------------------- 5. one rule for yank/delete, HTTP and CLI


@pytest_twisted.ensureDeferred
async def test_manage_route_leaves_upstream_files_of_a_private_project_alone(start, tmp_path):
    server = await start(claim={PUBLIC: frozenset({"alice"})})
    await cache_public_wheel(server)
    assert (await post(server, private_form(tmp_path))).code == 200
    before = await server.app.index.get_project(PUBLIC)
    assert before.file(PUBLIC_WHEEL) is not None  # kept, hidden
    api = f"{server.root}/api/projects/{PUBLIC}/"
    response = await treq.delete(api + PUBLIC_WHEEL, auth=("alice", PASSWORD), persistent=False)
    assert response.code == 409
    assert b"comes from the upstream" in await treq.content(response)
    response = await treq.post(api + "2.0/yank", auth=("alice", PASSWORD), persistent=False)
    assert response.code == 404
    assert b"no uploaded file of version 2.0" in await treq.content(response)
    assert await server.app.index.get_project(PUBLIC) == before


# ------------------------------------------ 11. publishing and granting are one step


@pytest_twisted.ensureDeferred
async def test_failed_grant_publishes_nothing(start, tmp_path):
    """The uploader's account goes between the credential check (cached) and
    the grant: the upload fails and leaves no file without an owner."""
    server = await start()
    warm = await post(server, b"not a form", content_type="text/plain")  # caches alice's login
    assert warm.code == 400, warm
    server.app.accounts.store.remove_user("alice")
    before = await state(server, "acme-tools", "acme_tools-1.0-py3-none-any.whl")
    answer = await post(server, private_form(tmp_path, "1.0", "acme-tools"))
    assert answer.code != 200, answer
    after = await state(server, "acme-tools", "acme_tools-1.0-py3-none-any.whl")
    assert after["project"] is None and after["used"] is None and after["maintainers"] == set()
    assert after["blobs"] == before["blobs"]
    # bob can then create the name, and owns it.
    answer = await post(server, private_form(tmp_path, "1.0", "acme-tools"), auth=("bob", PASSWORD))
    assert answer.code == 200, answer
    assert server.app.accounts.store.maintainers("acme-tools") == {"bob"}
