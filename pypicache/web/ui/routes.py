"""The UI's routes: ``/`` (the project list), ``/project/<name>/``, ``/statistics``.

They only read: the index's names, the mirror's records (never asking the
upstream: the UI shows what this server holds, and browsing it costs the
upstream nothing), the counters.  Which files a page shows is decided by
pypicache.services.visibility, as for ``/simple/``; the read gate of
pypicache.web.request guards these routes like every other.  What the
supply-chain policy refuses is shown, not hidden (pypicache.web.ui.policy):
the pages are for the administrator, the refusals are the file routes'.
"""

from __future__ import annotations

import datetime
import re
from collections import OrderedDict
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from twisted.web.resource import Resource

from pypicache.model import InvalidName, ProjectRecord, normalize
from pypicache.services.releases import group_releases, latest
from pypicache.services.stats import Stats
from pypicache.services.usage import Usage
from pypicache.services.visibility import LOCAL, visible_files
from pypicache.web.ui import pages
from pypicache.web.ui.policy import mark, policy_facts
from pypicache.web.ui.layout import send_html
from pypicache.web.util import HTTPError, finish_bytes, handle, safe_header

#: Names per page of the list.
PAGE_SIZE = 100
#: Projects with more files than this are grouped and rendered in the
#: thread pool (100,000 files take a second: the reactor must not wait).
THREAD_FILES = 2000
#: Bytes of rendered project pages kept (each valid while its record's files
#: are the same object); a page bigger than a quarter of it is not kept.
RENDERED_BYTES = 16 * 1024 * 1024
_MAX_QUERY = 200
_SEPARATORS = re.compile(r"[-_.\s]+")


def search_key(query: str) -> str:
    """A query as names are normalised (PEP 503), so ``Foo_Bar`` finds ``foo-bar``."""
    return _SEPARATORS.sub("-", query.strip().lower())


def _arg(request: Any, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"the {name.decode()} parameter is not UTF-8") from None


class ProjectList(Resource):
    """``/``: every project the index holds, searchable, a page at a time.

    The same names ``/local/simple/`` lists (and ``/simple/`` with the
    upstream's): a name alone gives nothing away that those do not.
    """

    isLeaf = True

    def __init__(self, index: Any, blocklist: Any = None) -> None:
        super().__init__()
        self.index = index
        #: pypicache.services.blocklist.Blocklist: projects blocked by name are marked.
        self.blocklist = blocklist

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._serve(request))

    async def _serve(self, request: Any) -> None:
        query = _arg(request, b"q").strip()
        if len(query) > _MAX_QUERY:
            raise HTTPError(400, f"the search text is longer than {_MAX_QUERY} characters")
        raw_page = _arg(request, b"page") or "1"
        if not raw_page.isdigit() or int(raw_page) < 1:
            raise HTTPError(400, "page must be a positive whole number")
        # Read each time (4 ms for 10,000 names on SQLite, in its thread):
        # an upload shows at once.
        names = await self.index.list_projects()
        if query:
            needle = search_key(query)
            names = [n for n in names if needle in n]
        count = max(1, -(-len(names) // PAGE_SIZE))
        number = min(int(raw_page), count)
        shown = names[(number - 1) * PAGE_SIZE: number * PAGE_SIZE]
        rules = self.blocklist.rules if self.blocklist is not None else None
        blocked = frozenset(n for n in shown if rules.project_reason(n)) if rules and rules.by_name else frozenset()
        send_html(request, pages.project_list(pages.ListView(shown, query, number, count, len(names), blocked)))


class ProjectPage(Resource):
    """``/project/<name>/``: releases, files, sizes, origin, yanked state,
    and what the policy refuses.

    A rendered page is kept while the record's files are the same object,
    it was not refreshed, and the block list's generation and the policy
    object are those it was rendered under -- and no longer than until its
    first held-back file comes of age (as web/simple.py's ``Rendered.current``).
    """

    isLeaf = True

    def __init__(self, mirror: Any, documents: Any, in_thread: Callable[..., Any] | None = None,
                 policy: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self.mirror = mirror
        self.in_thread = in_thread
        #: The current ``[policy]`` (``app.policy``), read per request.
        self.policy = policy
        #: pypicache.services.projectjson.ProjectJson: METADATA (the summary) from storage.
        self.documents = documents
        self._rendered: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._rendered_bytes = 0

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._serve(request))

    async def _serve(self, request: Any) -> None:
        post = list(request.postpath)
        if len(post) not in (1, 2) or (len(post) == 2 and post[1] != b"") or not post[0]:
            return send_html(request, pages.not_found("Not found", "No such page.", self._root(post)), 404)
        try:
            raw = post[0].decode("utf-8")
            name = normalize(raw)
        except (UnicodeDecodeError, InvalidName):
            return send_html(request, pages.not_found("Not found", "That is not a project name.",
                                                      self._root(post)), 404)
        if raw != name or len(post) == 1:
            prefix = "/" + "".join(p.decode("utf-8", "replace") + "/" for p in request.prepath)
            request.setResponseCode(301)
            request.setHeader(b"location", safe_header(prefix + quote(name, safe="") + "/"))
            return finish_bytes(request, b"")
        result = await self.mirror.project(name, allow_upstream=False)
        if result is None:
            return send_html(request, pages.not_found(
                name, f"{name} is not held by this server (install it once through /simple/).", "../../"), 404)
        send_html(request, await self._page(name, result.record))

    @staticmethod
    def _root(post: list[bytes]) -> str:
        return "../" * len(post) if post else "./"

    async def _page(self, name: str, record: ProjectRecord) -> bytes:
        blocklist = self.mirror.blocklist
        rules, generation, policy = blocklist.rules, blocklist.generation, self.policy()
        now = self.mirror.clock.seconds()
        kept = self._rendered.get(name)
        if (kept is not None and kept[0] is record.files and kept[1] == record.refreshed_at
                and kept[2] == generation and kept[3] is policy and (kept[4] is None or now < kept[4])):
            self._rendered.move_to_end(name)
            return kept[-1]
        files = visible_files(record, local=False, merged=name in self.mirror.merge)
        big = self.in_thread is not None and len(files) > THREAD_FILES
        if big:
            releases = await self.in_thread(group_releases, files, record.versions or ())
            marks = await self.in_thread(mark, rules, policy, name, files, now)
        else:
            releases = group_releases(files, record.versions or ())
            marks = mark(rules, policy, name, files, now)
        summary = None
        newest = latest(releases)
        if newest is not None and newest.files:
            metadata = await self.documents.stored_metadata(name, newest)
            summary = (metadata or {}).get("summary") or None
        refreshed = None
        if record.refreshed_at is not None:
            when = datetime.datetime.fromtimestamp(record.refreshed_at, datetime.timezone.utc)
            refreshed = when.strftime("%Y-%m-%d %H:%M:%S UTC")
        grouped = {f.filename for r in releases.values() for f, _, _ in r.files}
        view = pages.ProjectView(
            name=name, releases=list(reversed(releases.values())),
            other_files=[f for f in files if f.filename not in grouped],
            private=record.origin == LOCAL, summary=summary, refreshed_at=refreshed, marks=marks)
        body = await self.in_thread(pages.project_page, view) if big else pages.project_page(view)
        old = self._rendered.pop(name, None)
        if old is not None:
            self._rendered_bytes -= len(old[-1])
        if len(body) <= RENDERED_BYTES // 4:
            self._rendered[name] = (record.files, record.refreshed_at, generation, policy, marks.until, body)
            self._rendered_bytes += len(body)
            while self._rendered_bytes > RENDERED_BYTES:
                self._rendered_bytes -= len(self._rendered.popitem(last=False)[1][-1])
        return body


class StatisticsPage(Resource):
    """``/statistics``: hit ratio, bytes saved, top projects, disk used, the policy."""

    isLeaf = True

    def __init__(self, stats: Stats, disk_usage: Callable[[], Awaitable[Usage]], blocklist: Any = None,
                 policy: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self.stats = stats
        self.disk_usage = disk_usage
        self.blocklist = blocklist
        self.policy = policy

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._serve(request))

    async def _serve(self, request: Any) -> None:
        if request.postpath:
            root = "../" * len(request.postpath)
            return send_html(request, pages.not_found("Not found", "No such page.", root), 404)
        usage = await self.disk_usage()
        facts = policy_facts(self.blocklist.rules, self.policy()) if self.blocklist is not None else ()
        send_html(request, pages.statistics_page(self.stats, usage, self.stats.top_projects(10), facts))
