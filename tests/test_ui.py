"""The web UI (``/``, ``/project/<name>/``, ``/statistics``): what it shows, to whom, safely.

HTTP tests run treq against a listening server on the fake upstream, whose
files come through the server under test; browser tests load the same pages
in Debian's chromium (tests/browser.py) and judge the DOM it built.
``PYPICACHE_UI_SCREENSHOTS=<dir>`` makes the last test write the screenshots
of docs/ui/ there.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
import treq

from pypicache.daemon.config import PolicyConfig
from pypicache.daemon.reload import apply_policy
from pypicache.services import cooldown
from pypicache.services.stats import PROJECTS_KEPT, Stats
from pypicache.services.usage import DiskUsage, Usage
from pypicache.web.ui.routes import PAGE_SIZE, search_key
from tests import browser
from tests.blobs import deferred_sleep
from tests.builders import build_wheel
from tests.server import make_config, start_server
from tests.uploads import PASSWORD, cheap_accounts

TIMEOUT = 30
EVIL = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"


async def get(url: str, **kw: Any) -> Any:
    return await treq.get(url, allow_redirects=False, persistent=False, timeout=TIMEOUT, **kw)


async def text(url: str, **kw: Any) -> tuple[Any, str]:
    response = await get(url, **kw)
    return response, await response.text("utf-8")


async def fill(server: Any, project: str = "tinyproj", *, metadata: bool = True) -> None:
    """Fetch ``project``'s page and every file (and METADATA) through the server."""
    response = await get(server.simple + project + "/",
                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    assert response.code == 200
    for f in (await response.json())["files"]:
        body = await get(f"{server.root}/files/{project}/{f['filename']}")
        assert body.code == 200
        await body.content()
        if metadata and f.get("core-metadata"):
            await (await get(f"{server.root}/files/{project}/{f['filename']}.metadata")).content()
    # Storing runs after the last byte went out: wait until the index has it all.
    for _ in range(250):
        record = await server.app.index.get_project(project)
        if all(f.stored and (f.metadata_stored or not metadata or f.core_metadata is None) for f in record.files):
            return
        await deferred_sleep(0.02)
    raise AssertionError(f"{project}'s files were not all stored")


async def upload(server: Any, path: Path, user: str = "alice") -> None:
    name, version = path.name.split("-")[:2]
    response = await treq.post(
        server.root + "/legacy/",
        data={":action": "file_upload", "protocol_version": "1", "name": name, "version": version,
              "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1"},
        files={"content": (path.name, "application/octet-stream", io.BytesIO(path.read_bytes()))},
        auth=(user, PASSWORD), persistent=False, timeout=TIMEOUT)
    assert response.code == 200, await response.text()


def cells(html: str, filename: str) -> str:
    """The table row of ``filename``."""
    row = re.search(r"<tr><td><a [^>]*>" + re.escape(filename) + r"</a>.*?</tr>", html)
    assert row is not None, filename
    return row.group(0)


# ------------------------------------------------------------------ HTTP


@pytest_twisted.ensureDeferred
async def test_the_list_shows_what_the_index_holds_and_search_filters_it(proxy):
    await fill(proxy)
    await fill(proxy, "depproj")
    response, html = await text(proxy.root + "/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert 'href="project/tinyproj/"' in html and 'href="project/depproj/"' in html
    assert "<form method=get" in html
    _, found = await text(proxy.root + "/?q=+TINY")  # case and spaces do not matter
    assert 'href="project/tinyproj/"' in found and "depproj" not in found
    _, none = await text(proxy.root + "/?q=nothing-like-it")
    assert "No project matches." in none
    # Only the index, never the upstream: the list costs the upstream nothing.
    assert search_key(" Foo__Bar.baz ") == "foo-bar-baz"


@pytest_twisted.ensureDeferred
async def test_the_list_is_paged(proxy):
    for i in range(PAGE_SIZE + 30):
        await proxy.app.index.create_project(f"pkg-{i:04d}", "local")
    _, first = await text(proxy.root + "/")
    assert first.count('href="project/') == PAGE_SIZE
    assert "page 1 of 2" in first and 'rel=next href="?page=2"' in first
    _, second = await text(proxy.root + "/?page=2")
    assert second.count('href="project/') == 30 and "pkg-0129" in second and 'rel=prev' in second
    _, searched = await text(proxy.root + "/?q=pkg-01&page=1")
    assert searched.count('href="project/') == 30 and "page 1 of" not in searched
    for bad in ("/?page=0", "/?page=x", "/?q=" + "a" * 201, "/?q=%ff"):
        response, message = await text(proxy.root + bad)
        assert response.code == 400, bad
        assert message.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_a_project_page_shows_versions_files_sizes_origin_yanked_and_summary(proxy, fake_upstream):
    await fill(proxy)
    # Only the page is fetched: its files show as listed upstream, not cached.
    await (await get(proxy.simple + "yanked-proj/")).content()
    response, html = await text(proxy.root + "/project/tinyproj/")
    assert response.code == 200
    assert "<h1>tinyproj</h1>" in html
    assert "<p class=summary>A tiny project</p>" in html  # from the stored METADATA
    assert html.index('id="v2.0"') < html.index('id="v1.0"')  # newest first
    wheel = cells(html, "tinyproj-2.0-py3-none-any.whl")
    size = fake_upstream.files["tinyproj-2.0-py3-none-any.whl"].stat().st_size
    assert f"{size} B" in wheel and "cached" in wheel and "&gt;=3.8" in wheel
    assert 'href="../../files/tinyproj/tinyproj-2.0-py3-none-any.whl"' in wheel
    _, yanked = await text(proxy.root + "/project/yanked-proj/")
    row = cells(yanked, "Yanked_Proj-1.0-py3-none-any.whl")
    assert "yanked: broken" in row and "tag upstream" in row


@pytest_twisted.ensureDeferred
async def test_a_big_project_is_rendered_off_the_reactor_and_kept(proxy):
    import time

    from pypicache.model import FileRecord, ProjectPage
    from pypicache.web.ui.routes import THREAD_FILES

    count = THREAD_FILES + 500
    files = tuple(FileRecord(filename=f"bigproj-1.{i}.tar.gz", url=f"http://127.0.0.1:9/{i}",
                             hashes={"sha256": f"{i:064x}"}, size=1000 + i) for i in range(count))
    await proxy.app.index.save_upstream_page(ProjectPage(name="bigproj", files=files), time.time())
    response, html = await text(proxy.root + "/project/bigproj/")
    assert response.code == 200
    assert html.count("<tr><td>") == count and html.index('id="v1.2499"') < html.index('id="v1.0"')
    assert (await text(proxy.root + "/project/bigproj/"))[1] == html
    apply_policy(proxy.app, PolicyConfig(block=("bigproj>=1.2000",)))  # marked in the thread pool too
    _, html = await text(proxy.root + "/project/bigproj/")
    assert html.count("<span class='tag blocked'>blocked by policy: bigproj&gt;=1.2000</span>") == 500
    assert "<dt>policy</dt><dd>500 files blocked, 0 held back (cooldown)</dd>" in html


@pytest_twisted.ensureDeferred
async def test_project_urls_are_canonical(proxy):
    await fill(proxy)
    for path in ("/project/TinyProj/", "/project/tinyproj", "/project/TINYPROJ"):
        response = await get(proxy.root + path)
        assert response.code == 301, path
        assert response.headers.getRawHeaders("location") == ["/project/tinyproj/"]
    for path in ("/project/unknown-one/", "/project/", "/project/tinyproj/x", "/project/%00bad/"):
        response, html = await text(proxy.root + path)
        assert response.code == 404, path
        assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert "unknown-one is not held by this server" in (await text(proxy.root + "/project/unknown-one/"))[1]


@pytest_twisted.ensureDeferred
async def test_every_page_forbids_outside_sources_and_answers_head(proxy):
    await fill(proxy)
    for path in ("/", "/project/tinyproj/", "/statistics", "/project/nope/"):
        response, html = await text(proxy.root + path)
        csp = response.headers.getRawHeaders("content-security-policy")[0]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert response.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        assert "<script" not in html
        assert not re.search(r"""(?:src|href|action)=["']?(?:https?:)?//""", html), path
        head = await treq.head(proxy.root + path, persistent=False, timeout=TIMEOUT)
        assert head.code == response.code
        assert await head.content() == b""
        if path != "/statistics":  # live counters: the next answer may differ
            assert head.headers.getRawHeaders("content-length") == [str(len(html.encode()))]
    # The JSON counters keep their route and shape.
    stats = await (await get(proxy.root + "/stats")).json()
    assert stats["file_misses"] == 4 and "by_project" not in stats


@pytest_twisted.ensureDeferred
async def test_the_statistics_page_shows_ratio_bytes_top_projects_and_disk(proxy):
    await fill(proxy)
    await fill(proxy, "depproj")
    await (await get(f"{proxy.root}/files/tinyproj/tinyproj-1.0.tar.gz")).content()  # a hit
    response, html = await text(proxy.root + "/statistics")
    assert response.code == 200
    assert html.count("<svg") == 4
    assert "<dt>file hit ratio</dt><dd>16.7 %</dd>" in html  # 1 hit, 5 misses
    assert "(no limit)" in html and "Disk used (no limit)" in html
    top = re.search(r'aria-label="Top projects[^"]*".*?</svg>', html).group(0)
    assert top.index(">tinyproj<") < top.index(">depproj<")
    assert "<title>tinyproj: 5</title>" in top


@pytest_twisted.ensureDeferred
async def test_private_projects_show_only_their_own_files_and_summaries_are_escaped(tmp_path, start):
    server = await start(claim={"tinyproj": {"alice"}})
    await fill(server)  # the upstream's files are cached before the name is claimed
    await upload(server, build_wheel(tmp_path / "dist", "tinyproj", "9.0", summary=EVIL))
    response, html = await text(server.root + "/project/tinyproj/")
    assert response.code == 200
    assert "tinyproj-9.0-py3-none-any.whl" in html and "tag private" in html
    assert "tinyproj-1.0" not in html and "tinyproj-2.0" not in html  # pypicache.services.visibility
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;document.title=&#x27;owned&#x27;&lt;/script&gt;" in html


@pytest_twisted.ensureDeferred
async def test_the_ui_is_behind_the_read_gate(tmp_path, fake_upstream):
    config = make_config(tmp_path, fake_upstream.url)
    config = attrs.evolve(config, auth=attrs.evolve(config.auth, read="authenticated"))
    server = await start_server(config)
    try:
        cheap_accounts(server).add_user("alice", PASSWORD)
        for path in ("/", "/?q=tiny", "/project/tinyproj/", "/statistics"):
            response = await get(server.root + path)
            assert response.code == 401, path
            await response.content()
        response = await get(server.root + "/statistics", auth=("alice", PASSWORD))
        assert response.code == 200
        assert "no-store" in response.headers.getRawHeaders("cache-control")[0]
        await response.content()
    finally:
        await server.stop()


# ------------------------------------------------------------ the policy

DAY = 86400.0


def stamp(seconds: float) -> str:
    """A PEP 700 upload time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(seconds))


def row(html: str, filename: str) -> str:
    """The table row of ``filename``, linked or not."""
    found = re.search(r"<tr><td>(?:<a [^>]*>)?" + re.escape(filename) + r"(?:</a>)?</td>.*?</tr>", html)
    assert found is not None, filename
    return found.group(0)


def publish(fake_upstream: Any, tmp_path: Path, ages: dict[str, float]) -> dict[str, tuple[str, str]]:
    """``coolproj`` releases ``version: age``: (wheel filename, upload time) by version."""
    now = time.time()
    published = {}
    for version, age in ages.items():
        wheel = build_wheel(tmp_path / "dists", "coolproj", version)
        fake_upstream.add(wheel, upload_time=stamp(now - age))
        published[version] = (wheel.name, stamp(now - age))
    return published


@pytest_twisted.ensureDeferred
async def test_refused_files_are_tagged_counted_and_not_linked_and_a_change_shows_at_once(
        proxy, fake_upstream, tmp_path):
    releases = publish(fake_upstream, tmp_path, {"1.0": 30 * DAY, "1.1": DAY, "2.0": 3600})
    await (await get(proxy.simple + "coolproj/")).content()  # the index holds the page now
    _, plain = await text(proxy.root + "/project/coolproj/")
    assert "<th>policy</th>" not in plain and "tag blocked" not in plain and "tag held" not in plain

    apply_policy(proxy.app, PolicyConfig(min_age=2 * DAY, block=("coolproj==1.0",)))
    response, html = await text(proxy.root + "/project/coolproj/")
    assert response.code == 200  # the page is shown (to the admin), refusals and all
    assert "<th>policy</th>" in html
    blocked = row(html, releases["1.0"][0])
    assert "<span class='tag blocked'>blocked by policy: coolproj==1.0</span>" in blocked
    for version in ("1.1", "2.0"):
        filename, uploaded = releases[version]
        until = cooldown.rfc3339(cooldown.upload_seconds(uploaded) + 2 * DAY)
        assert f"<span class='tag held'>held back until {until} (cooldown)</span>" in row(html, filename)
    for filename, _ in releases.values():  # no download link for a refused file
        assert "<a " not in row(html, filename) and f"/{filename}\"" not in html
    assert "<dt>policy</dt><dd>1 file blocked, 2 held back (cooldown)</dd>" in html
    # The file routes agree with what the page says.
    for version, code in (("1.0", 403), ("1.1", 404)):
        refused = await get(f"{proxy.root}/files/coolproj/{releases[version][0]}")
        assert refused.code == code, version
        await refused.content()

    # The policy object is part of the render cache's key (a SIGHUP replaces it).
    proxy.app.policy = attrs.evolve(proxy.app.policy, min_age_exempt=frozenset({"coolproj"}))
    _, html = await text(proxy.root + "/project/coolproj/")
    assert "tag held" not in html and "<dt>policy</dt><dd>1 file blocked, 0 held back (cooldown)</dd>" in html
    assert f'href="../../files/coolproj/{releases["2.0"][0]}"' in html
    # So is the block list's generation: blocked by name, at once.
    apply_policy(proxy.app, PolicyConfig(block=("coolproj",)))
    response, html = await text(proxy.root + "/project/coolproj/")
    assert response.code == 200
    assert "<p class=refusal><span class='tag blocked'>blocked by policy: coolproj</span></p>" in html
    assert "<dt>policy</dt><dd>3 files blocked, 0 held back (cooldown)</dd>" in html
    assert "href=\"../../files/" not in html
    _, listed = await text(proxy.root + "/")
    assert re.search(r'>coolproj</a> <span class=\'tag blocked\'[^>]*>blocked</span></li>', listed)
    assert not re.search(r">tinyproj</a> <span", listed)
    apply_policy(proxy.app, PolicyConfig())  # lifted: links again, nothing marked
    _, html = await text(proxy.root + "/project/coolproj/")
    assert html == plain
    assert "tag blocked" not in (await text(proxy.root + "/"))[1]


@pytest_twisted.ensureDeferred
async def test_a_kept_project_page_expires_when_its_first_held_file_comes_of_age(proxy, fake_upstream, tmp_path):
    """The page is not kept past the moment a held file may be served: then
    it links the file (as web/simple.py's pages do)."""
    releases = publish(fake_upstream, tmp_path, {"1.0": 3600 - 1.5})
    apply_policy(proxy.app, PolicyConfig(min_age=3600.0))
    await (await get(proxy.simple + "coolproj/")).content()
    filename = releases["1.0"][0]
    for _ in range(2):  # the second answer is the kept page
        _, html = await text(proxy.root + "/project/coolproj/")
        assert "tag held" in row(html, filename) and "0 files blocked, 1 held back" in html
    await deferred_sleep(2.0)
    _, html = await text(proxy.root + "/project/coolproj/")
    assert f'<a href="../../files/coolproj/{filename}">' in row(html, filename)
    assert "<th>policy</th>" not in html


@pytest_twisted.ensureDeferred
async def test_allow_only_marks_the_upstream_files_of_an_unlisted_project(proxy):
    await fill(proxy)
    apply_policy(proxy.app, PolicyConfig(allow_only=frozenset({"depproj"})))
    _, html = await text(proxy.root + "/project/tinyproj/")
    assert "not proxied by policy: tinyproj is not in policy.allow_only" in html
    assert "<dt>policy</dt><dd>4 files blocked, 0 held back (cooldown)</dd>" in html
    assert "href=\"../../files/" not in html


@pytest_twisted.ensureDeferred
async def test_the_statistics_page_shows_the_policy_in_force(proxy):
    def facts(html: str) -> dict[str, str]:
        block = html[html.index("<h2 id=policy>"):]
        return dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", block))

    _, html = await text(proxy.root + "/statistics")
    assert facts(html) == {"cooldown (min_age)": "off", "block rules": "0", "allow_only": "off"}
    apply_policy(proxy.app, PolicyConfig(min_age=2 * DAY, min_age_overrides={"x": 60.0},
                                         block=("evil", "tinyproj==1.0"), allow_only=frozenset({"a", "b"})))
    _, html = await text(proxy.root + "/statistics")  # read at request time
    assert facts(html) == {"cooldown (min_age)": "2d (1 per-project override)", "block rules": "2",
                           "allow_only": "on, 2 projects"}


def test_marks_without_upload_time_private_files_and_durations():
    from pypicache.model import FileRecord
    from pypicache.services.blocklist import NO_RULES, compile_rules
    from pypicache.web.ui.policy import NO_MARKS, mark, policy_facts

    files = (FileRecord("p-1.0.tar.gz", url="https://u.example/p-1.0.tar.gz"),
             FileRecord("p-2.0.tar.gz", url="https://u.example/p-2.0.tar.gz", origin="local"))
    assert mark(NO_RULES, PolicyConfig(min_age=DAY), "p", files, time.time()) is NO_MARKS  # "allow"
    hide = mark(NO_RULES, PolicyConfig(min_age=DAY, missing_upload_time="hide"), "p", files, time.time())
    assert hide.files == {"p-1.0.tar.gz": ("held", "held back: no upload time (cooldown)")}
    assert hide.until is None and hide.held == 1  # never of age: the page need not expire for it
    allow_only = compile_rules(PolicyConfig(allow_only=frozenset({"q"})))
    assert mark(allow_only, None, "p", files[1:], 0.0) is NO_MARKS  # a private project is not concerned
    assert mark(allow_only, None, "p", files, 0.0).project.startswith("not proxied by policy")
    assert policy_facts(NO_RULES, PolicyConfig(min_age=5400.0))[0] == ("cooldown (min_age)", "90m")


# ------------------------------------------------------------ services


def test_top_projects_stay_bounded():
    stats = Stats()
    for _ in range(3):
        stats.note_project("popular")
    for i in range(PROJECTS_KEPT + 10):
        stats.note_project(f"once-{i}")
    assert len(stats.by_project) <= PROJECTS_KEPT
    assert stats.top_projects(1) == [("popular", 3)]


@pytest_twisted.ensureDeferred
async def test_disk_usage_walks_the_store_once_per_ttl(tmp_path):
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from pypicache.providers.storage.memory import MemoryStorage

    storage = MemoryStorage()
    storage.blobs["a" * 64] = b"x" * 1000
    walks = []

    def in_thread(f, *args):
        walks.append(f)
        return defer.maybeDeferred(f, *args)

    clock = Clock()
    usage = DiskUsage(storage, in_thread, clock, limit=4096, ttl=60)
    assert await usage() == Usage(1000, 4096)
    assert await usage() == Usage(1000, 4096) and len(walks) == 1
    clock.advance(60)
    await usage()
    assert len(walks) == 2
    assert await DiskUsage(object(), in_thread, clock)() == Usage(None, None)


# ------------------------------------------------------------ browser


async def _browser_server(tmp_path: Path, fake_upstream: Any) -> Any:
    fake_upstream.add(build_wheel(tmp_path / "evil", "evilproj", "1.0", summary=EVIL), yanked=EVIL)
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    await fill(server)
    await fill(server, "evilproj")
    await (await get(server.simple + "yanked-proj/")).content()
    return server


async def dom(url: str) -> str:
    """The DOM of ``url`` in the browser, which asked no outside host for
    anything, and which names no outside URL."""
    page = await browser.load(url)
    assert page.outside == ()
    urls = re.findall(r"""(?:src|href|action|xlink:href)=["']?([^"' >]+)""", page.dom)
    assert urls
    assert all("//" not in u or u.startswith("http://127.0.0.1:") for u in urls), urls
    return page.dom


@browser.needs_chromium
@pytest_twisted.ensureDeferred
async def test_the_browser_check_sees_a_request_to_the_outside():
    """The control: a page that loads an outside image is caught (and the
    request reaches only the recorder)."""
    page = await browser.load("data:text/html,<p>x</p><img src='http://cdn.example.org/x.png'>")
    assert page.outside == ("cdn.example.org",)


@browser.needs_chromium
@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_in_a_browser_list_search_project_and_statistics(tmp_path, fake_upstream):
    server = await _browser_server(tmp_path, fake_upstream)
    try:
        listed = await dom(server.root + "/")
        assert ">tinyproj</a>" in listed and ">evilproj</a>" in listed and ">yanked-proj</a>" in listed
        searched = await dom(server.root + "/?q=tiny")  # what submitting the form loads
        assert ">tinyproj</a>" in searched and "evilproj" not in searched
        assert 'value="tiny"' in searched
        project = await dom(server.root + "/project/tinyproj/")
        assert "A tiny project" in project and "2.0" in project and "cached" in project
        assert "&gt;=3.8" in project and re.search(r"\d+ B</td>", project)
        apply_policy(server.app, PolicyConfig(block=("tinyproj==1.0",)))
        project = await dom(server.root + "/project/tinyproj/")
        assert '<span class="tag blocked">blocked by policy: tinyproj==1.0</span>' in project
        assert "<td>tinyproj-1.0.tar.gz</td>" in project and "/tinyproj-1.0.tar.gz" not in project
        assert '<a href="../../files/tinyproj/tinyproj-2.0.tar.gz">' in project
        statistics = await dom(server.root + "/statistics")
        assert statistics.count("<svg") == 4 and "<rect" in statistics and "Top projects" in statistics
    finally:
        await server.stop()


@browser.needs_chromium
@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_in_a_browser_nothing_is_injected(tmp_path, fake_upstream):
    server = await _browser_server(tmp_path, fake_upstream)
    try:
        project = await dom(server.root + "/project/evilproj/")
        searched = await dom(server.root + "/?q=" + quote(EVIL))
        for built in (project, searched):
            # Had the summary, the yanked reason or the query become markup,
            # the browser would have built the elements (and run the script).
            assert "<script" not in built and "<img" not in built
            assert "owned" not in re.search(r"<title>(.*?)</title>", built).group(1)
        assert "yanked: &lt;script&gt;" in project and "&lt;script&gt;document.title" in project
        shots = os.environ.get("PYPICACHE_UI_SCREENSHOTS")
        if shots:
            # Screenshots for docs/ui/: a fuller server, as an operator would see it.
            await fill(server, "depproj")
            await (await get(f"{server.root}/files/tinyproj/tinyproj-2.0.tar.gz")).content()
            for i in range(40):
                await server.app.index.create_project(f"internal-tool-{i:02d}", "local")
            for name, path in (("list", "/"), ("project", "/project/tinyproj/"), ("statistics", "/statistics")):
                await browser.screenshot(server.root + path, Path(shots) / f"{name}.png")
    finally:
        await server.stop()
