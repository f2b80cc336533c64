"""Pages from the upstream: what unknown names and enormous projects cost.

An anonymous client must not be able to make the server hammer the upstream
(a 404 is remembered for ``not_found_ttl``), and a project listing 100,000
files must neither stall the reactor nor stay in memory past the budget
(``page_cache_bytes``).  Real HTTP against a listening server and the fake
upstream; time is driven through the mirror's clock.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import task

from pypicache.daemon import config as configuration
from pypicache.errors import ConfigError
from tests.server import make_config, start_server
from tests.uploads import NAME, WHEEL_NAME, form, good_wheel, post

JSON = "application/vnd.pypi.simple.v1+json"


async def get(url: str, **headers: str) -> tuple[Any, bytes]:
    h = {k.replace("_", "-"): [v] for k, v in headers.items()}
    response = await treq.get(url, headers=h, allow_redirects=False)
    return response, await treq.content(response)


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


def mirror_clock(server: Any) -> task.Clock:
    """Give the server's mirror a clock the test advances (starting now)."""
    from twisted.internet import reactor

    clock = task.Clock()
    clock.advance(reactor.seconds())
    server.app.mirror.clock = clock
    return clock


def asked(fake_upstream: Any, name: str) -> int:
    return fake_upstream.count(f"/simple/{name}/")


# ------------------------------------------------------------- unknown names


@pytest_twisted.ensureDeferred
async def test_unknown_name_asks_the_upstream_once_per_not_found_ttl(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))  # not_found_ttl = 60 by default
    try:
        clock = mirror_clock(server)
        first, body = await get(server.simple + "no-such-project/")
        assert first.code == 404 and b"no such project: no-such-project" in body
        # Again, by the fast path (a plain GET) and the ordinary route (a query string).
        for url in ("no-such-project/", "no-such-project/", "no-such-project/?via=twisted.web"):
            response, again = await get(server.simple + url, accept=JSON)
            assert response.code == 404 and again == body
            assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
        assert asked(fake_upstream, "no-such-project") == 1

        clock.advance(59)
        assert (await get(server.simple + "no-such-project/"))[0].code == 404
        assert asked(fake_upstream, "no-such-project") == 1
        clock.advance(2)  # past the TTL: asked again, and remembered again
        assert (await get(server.simple + "no-such-project/"))[0].code == 404
        assert (await get(server.simple + "no-such-project/"))[0].code == 404
        assert asked(fake_upstream, "no-such-project") == 2
        # A known project is not affected.
        assert (await get(server.simple + "tinyproj/"))[0].code == 200
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_cached_404_on_the_fast_path_matches_the_ordinary_route(tmp_path, fake_upstream):
    """HEAD and GET, with and without the fast path: same status, headers, body."""
    answers = []
    for fast in (True, False):
        server = await start_server(make_config(tmp_path / str(fast), fake_upstream.url, fast_path=fast))
        try:
            await get(server.simple + "nope/")
            got = []
            for method in ("GET", "HEAD"):
                response = await treq.request(method, server.simple + "nope/", allow_redirects=False)
                body = await treq.content(response)
                got.append((response.code, body, response.headers.getRawHeaders("content-type"),
                            response.headers.getRawHeaders("content-length")))
            answers.append(got)
        finally:
            await server.stop()
    assert answers[0] == answers[1]
    assert answers[0][0][:2] == (404, b"no such project: nope\n")
    assert asked(fake_upstream, "nope") == 2  # once per server


@pytest_twisted.ensureDeferred
async def test_not_found_ttl_zero_asks_the_upstream_every_time(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url, not_found_ttl=0))
    try:
        for _ in range(3):
            assert (await get(server.simple + "no-such-project/"))[0].code == 404
        assert asked(fake_upstream, "no-such-project") == 3
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_many_unknown_names_keep_the_cache_bounded(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        cache = server.app.mirror.not_found
        cache.max_entries = 5
        for i in range(8):
            assert (await get(server.simple + f"made-up-{i}/"))[0].code == 404
        assert len(cache) == 5
        assert "made-up-7" in cache and "made-up-0" not in cache
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_an_upload_clears_the_cached_404_of_its_name(start, tmp_path, fake_upstream):
    server = await start()
    mirror_clock(server)
    assert (await get(server.simple + NAME + "/"))[0].code == 404
    answer = await post(server, form(good_wheel(tmp_path)))
    assert answer.code == 200, answer
    for _ in range(2):  # the ordinary route, then the fast path
        response, body = await get(server.simple + NAME + "/", accept=JSON)
        assert response.code == 200
        assert [f["filename"] for f in json.loads(body)["files"]] == [WHEEL_NAME]


@pytest_twisted.ensureDeferred
async def test_an_admin_change_clears_the_cached_404(tmp_path, fake_upstream):
    """Taking a project's record from the index (note_changed; the catalogue
    does the same after every write) forgets the 404, so the next request
    asks again."""
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        mirror_clock(server)
        assert (await get(server.simple + "no-such-project/"))[0].code == 404
        await server.app.mirror.note_changed("no-such-project")
        assert (await get(server.simple + "no-such-project/"))[0].code == 404
        assert asked(fake_upstream, "no-such-project") == 2
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_cached_404_does_not_hide_the_standalone_view(tmp_path, fake_upstream):
    """The local view never asks the upstream, so it never consults the 404s:
    a project the upstream dropped still lists the files stored here."""
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        wheel = "tinyproj-1.0-py3-none-any.whl"
        assert (await get(server.root + f"/files/tinyproj/{wheel}"))[0].code == 200
        for _ in range(50):
            record = await server.app.index.get_project("tinyproj")
            if record.file(wheel).stored:
                break
            await sleep(0.05)
        for filename in list(fake_upstream.files):
            if filename.startswith("tinyproj"):
                fake_upstream.remove(filename)
        assert (await get(server.simple + "tinyproj/"))[0].code == 404
        response, body = await get(server.local + "tinyproj/", accept=JSON)
        assert response.code == 200
        assert [f["filename"] for f in json.loads(body)["files"]] == [wheel]
    finally:
        await server.stop()


def test_not_found_ttl_and_page_cache_bytes_are_checked():
    base = {"upstream": {"provider": "simple"}}
    config = configuration.parse({**base, "server": {"not_found_ttl": 0, "page_cache_bytes": 8 << 20}})
    assert config.not_found_ttl == 0 and config.page_cache_bytes == 8 << 20
    assert configuration.parse(base).not_found_ttl == 60 and configuration.parse(base).page_cache_bytes == 64 << 20
    for key, value in (("not_found_ttl", -1), ("not_found_ttl", 86400), ("not_found_ttl", "60"),
                       ("page_cache_bytes", 1000), ("page_cache_bytes", 1.5), ("page_cache_bytes", True)):
        with pytest.raises(ConfigError, match=f"server.{key}"):
            configuration.parse({**base, "server": {key: value}})


# ------------------------------------------------------------- enormous pages

#: The longest the reactor may go without running a 10 ms timer while a page
#: of 100,000 files is fetched, parsed, stored, rendered and sent.  Before,
#: it stalled for over a second (json.loads holding the GIL, rendering and
#: gzip on the reactor thread); the margin is for a loaded 2-core machine.
MAX_REACTOR_GAP = 0.4


async def big_page_server(tmp_path: Any, fake_upstream: Any, **server: Any) -> Any:
    config = make_config(tmp_path, fake_upstream.url, **server)
    config = attrs.evolve(config, http=attrs.evolve(config.http, page_timeout=120.0, read_timeout=30.0))
    return await start_server(config)


@pytest_twisted.ensureDeferred
async def test_a_page_of_100000_files_does_not_stall_the_reactor(tmp_path, fake_upstream):
    import gc

    fake_upstream.add_synthetic("big-proj", 100_000)
    size = fake_upstream.prerender("big-proj")
    assert size > 20_000_000
    server = await big_page_server(tmp_path, fake_upstream)
    gaps: list[float] = []
    last = time.monotonic()

    def tick() -> None:
        nonlocal last
        now = time.monotonic()
        gaps.append(now - last)
        last = now

    # What the test process held before (pytest, the fake upstream's 100,000
    # synthetic files) is kept out of the garbage collector's full passes:
    # a server's own heap is small, and it is the server under test here.
    gc.collect()
    gc.freeze()
    ticker = task.LoopingCall(tick)
    try:
        ticker.start(0.01)
        response, body = await get(server.simple + "big-proj/", accept=JSON, accept_encoding="gzip")
        ticker.stop()
        assert response.code == 200
        assert response.headers.getRawHeaders("etag")[0].endswith('-gz"')  # treq decoded it
        files = json.loads(body)["files"]
        assert len(files) == 100_000 and files[-1]["filename"] == "big_proj-99999-py3-none-any.whl"
        worst = sorted(gaps)[-3:]
        assert max(gaps) < MAX_REACTOR_GAP, f"the reactor stalled: longest gaps {worst} s"
    finally:
        if ticker.running:
            ticker.stop()
        gc.unfreeze()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_memory_caches_stay_within_their_byte_budget(tmp_path, fake_upstream):
    budget = 2 * 1024 * 1024  # records; rendered pages get half
    for i in range(6):
        fake_upstream.add_synthetic(f"wide-{i}", 600)
    fake_upstream.add_synthetic("huge", 3000)  # estimated at more than the whole budget
    server = await big_page_server(tmp_path, fake_upstream, page_cache_bytes=budget)
    try:
        mirror = server.app.mirror
        pages = server.app.site.resource.views[0].pages
        assert (mirror._records.budget, pages.budget) == (budget, budget // 2)
        for name in [f"wide-{i}" for i in range(6)] + ["huge", "huge", "wide-5"]:
            for accept in (JSON, "text/html"):
                response, body = await get(server.simple + name + "/", accept=accept, accept_encoding="gzip")
                assert response.code == 200
                assert 0 < mirror._records.used <= budget and pages.used <= pages.budget
        assert mirror.cached("huge") is None  # served (twice), never kept
        assert mirror.cached("wide-5") is not None and mirror.cached("wide-0") is None
        # The most recent pages are still answered from memory, correctly.
        response, body = await get(server.simple + "wide-5/", accept=JSON)
        assert len(json.loads(body)["files"]) == 600
    finally:
        await server.stop()
