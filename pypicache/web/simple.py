"""The Simple Repository API routes: ``/simple/`` and ``/local/simple/``.

Pages are rendered once per (view, project, format) and kept as bytes with
their ETag (and a gzip variant made on first demand), so the hot path of a
fresh page is a dict lookup and a write: pip revalidates every page, so a 304
must cost next to nothing.  A rendered page is reused as long as the
project's files tuple is the very same object (records are immutable; the
mirror keeps the tuple when a refresh changed nothing), and in the proxy view
also when the files differ only in whether their bytes are stored here (which
the proxy page does not show): a cold install stores every file it fetched,
and the next install should not re-render numpy's 601 files, nor fall off the
fast path for it.

With a release cooldown (``[policy] min_age``, pypicache.services.cooldown)
a rendered page also remembers the policy it was rendered under and the
instant its next held-back file comes of age: it is rendered again after
either changes, so a file appears the moment it is old enough, not a TTL
later.  Without a cooldown that is one identity test per request.

A page listing thousands of files (a project with 100,000 is 20 MB of JSON)
is rendered, hashed and gzipped in the thread pool: on the reactor thread it
would stall every other request for a second.
"""

from __future__ import annotations

import gzip
import operator
from collections import OrderedDict
from typing import Any, Callable, Sequence

import attrs
from twisted.web.resource import Resource

from pypicache.services import cooldown
from pypicache.services.mirror import Coalescer, Mirror, UpstreamUnavailable
from pypicache.model import FileRecord, InvalidName, ProjectRecord, normalize
from pypicache.services.stats import Stats
from pypicache.services.visibility import LOCAL, visible, visible_files
from pypicache.web.negotiation import HTML, accepts_gzip, choose_format
from pypicache.web.render import etag_for, render_index, render_project, versions_of
from pypicache.web.util import HTTPError, finish_bytes, handle, refused, safe_header

GZIP_MIN = 1024
#: Pages listing at least this many files are rendered in the thread pool
#: (600 files render in about 3 ms; this many in some 15 ms).
THREAD_RENDER_FILES = 2000
ROOT_CACHE_SECONDS = 5.0


@attrs.define
class Rendered:
    """One page in one format, ready to send."""

    key_ref: Any
    body: bytes
    etag: str
    gz_body: bytes | None = None
    gz_etag: str | None = None
    #: The policy rendered under, how many files it held back, and when the
    #: first of those comes of age (the page is stale from then on).
    policy: Any = None
    held: int = 0
    until: float | None = None

    def current(self, policy: Any, clock: Any) -> bool:
        """Was this page rendered under ``policy``, and is no held-back file
        of age yet?  O(1): the fast path asks on every request."""
        return self.policy is policy and (self.until is None or clock.seconds() < self.until)

    def gzipped(self) -> tuple[bytes, str]:
        if self.gz_body is None:
            self.gz_body = gzip.compress(self.body, compresslevel=6, mtime=0)
            self.gz_etag = self.etag[:-1] + '-gz"'
        assert self.gz_etag is not None
        return self.gz_body, self.gz_etag

    @property
    def cost(self) -> int:
        return len(self.body) + len(self.gz_body or b"")


class PageCache:
    """Rendered pages, least recently used dropped past a byte budget.

    ``used`` never exceeds ``budget``: a page bigger than the whole budget is
    served but not kept (and pushes nothing else out).
    """

    def __init__(self, budget: int = 32 * 1024 * 1024) -> None:
        self.budget = budget
        self.used = 0
        self._pages: OrderedDict[tuple, Rendered] = OrderedDict()

    def get(self, key: tuple, ref: Any, same: Any = None) -> Rendered | None:
        """The page rendered from ``ref``; with ``same(old_ref, ref)``, also
        one rendered from an equivalent ref (then re-keyed to ``ref``)."""
        page = self._pages.get(key)
        if page is None:
            return None
        if page.key_ref is not ref:
            if same is None or not same(page.key_ref, ref):
                return None
            page.key_ref = ref
        self._pages.move_to_end(key)
        return page

    def put(self, key: tuple, page: Rendered) -> Rendered:
        old = self._pages.pop(key, None)
        if old is not None:
            self.used -= old.cost
        if page.cost > self.budget:  # it would push out everything else: served, not kept
            return page
        self._pages[key] = page
        self.used += page.cost
        self._trim()
        return page

    def grew(self, key: tuple, before: int) -> None:
        page = self._pages.get(key)
        if page is not None:
            self.used += page.cost - before
            if page.cost > self.budget:
                del self._pages[key]
                self.used -= page.cost
            self._trim()

    def _trim(self) -> None:
        while self.used > self.budget and self._pages:
            _, page = self._pages.popitem(last=False)
            self.used -= page.cost

    def __len__(self) -> int:
        return len(self._pages)


def etag_matches(header: bytes | None, *etags: str) -> bool:
    if not header:
        return False
    text = header.decode("latin-1")
    if text.strip() == "*":
        return True
    wanted = {e for e in etags if e}
    for item in text.split(","):
        item = item.strip()
        if item.startswith("W/"):
            item = item[2:]
        if item in wanted:
            return True
    return False


def same_listing(old: tuple[FileRecord, ...], new: tuple[FileRecord, ...]) -> bool:
    """True when two files tuples differ at most in ``stored``,
    ``metadata_stored`` and ``provenance_sha256`` (the proxy page links a
    provenance the upstream offers whether or not it is stored): the same
    proxy page (the local view lists stored files only, so it never uses this)."""
    if len(old) != len(new):
        return False
    listing = _LISTING
    for a, b in zip(old, new):
        if a is not b and listing(a) != listing(b):
            return False
    return True


#: Every FileRecord field but where its bytes are (fields added later count).
_LISTING = operator.attrgetter(*(f.name for f in attrs.fields(FileRecord)
                                 if f.name not in ("stored", "metadata_stored", "provenance_sha256")))


def without_held_versions(versions: Sequence[str] | None, visible: Sequence[FileRecord],
                          shown: Sequence[FileRecord]) -> tuple[str, ...] | None:
    """``versions`` (PEP 700, the upstream's list) less those whose every
    file the cooldown holds back: a held release is not named either."""
    if not versions:
        return None if versions is None else tuple(versions)
    hidden = set(versions_of(f.filename for f in visible)) - set(versions_of(f.filename for f in shown))
    return tuple(v for v in versions if v not in hidden)


def render_page(fmt: Any, record: ProjectRecord, local: bool, merged: bool, meta: dict[str, Any],
                gzipped: bool, rules: Any = None, policy: Any = None, now: float = 0.0) -> Rendered:
    """Render, hash (and with ``gzipped``, compress) one project page, with
    the files the cooldown of ``policy`` holds back at ``now`` left out.

    Pure: it may run in the thread pool (records and ``rules`` are immutable).
    """
    name = record.name
    visible = visible_files(record, local=local, merged=merged, rules=rules)
    held = cooldown.hold_back(policy, name, visible, now)
    versions = rules.visible_versions(name, record.versions) if rules is not None else record.versions
    if held.count:
        meta = {**meta, "_pypicache": {"held_back": held.count}}
        versions = without_held_versions(versions, visible, held.files)
    shown = held.files
    if local:  # what is stored only: a provenance not fetched yet is not offered
        shown = tuple(f if f.provenance is None or f.provenance_sha256 else attrs.evolve(f, provenance=None)
                      for f in shown)
    body = render_project(fmt, name, shown, "../../files/" + name + "/", versions, meta)
    page = Rendered(record.files, body, etag_for(body), policy=policy, held=held.count, until=held.until)
    if gzipped and len(body) >= GZIP_MIN:
        page.gzipped()
    return page


async def find_project(mirror: Mirror, name: str, *, allow_upstream: bool,
                       missing: str | None = None) -> tuple[Any, Any, int]:
    """``(result, rules, generation)``: the project as the mirror has it,
    under the block and allow lists of this moment -- the one prologue of
    every view of a project (Simple pages, as-of pages, the JSON API).

    403 for a project blocked by name; 404 with the reason for one
    ``allow_only`` leaves out (never asked of the upstream); 503 when the
    upstream is needed and cannot answer; 404 (``missing``, else "no such
    project") when there is no such project.
    """
    blocklist = mirror.blocklist
    rules, generation = blocklist.rules, blocklist.generation
    allowed = project_allowed(rules, name)
    try:
        result = await mirror.project(name, allow_upstream=allow_upstream and allowed)
    except UpstreamUnavailable as e:
        raise HTTPError(503, f"upstream unavailable and {name} is not cached: {e.reason}",
                        {b"retry-after": str(e.retry_after).encode()}) from None
    if result is None or not (allowed or result.record.origin == LOCAL):
        if not allowed:
            raise refused(404, f"not proxied by policy: {name} is not in policy.allow_only")
        raise HTTPError(404, missing or f"no such project: {name}")
    return result, rules, generation


def project_allowed(rules: Any, name: str) -> bool:
    """False when the policy lets no upstream file of ``name`` through
    (allow_only); a project blocked by name raises the 403."""
    if not rules.active:
        return True
    reason = rules.project_reason(name)
    if reason is not None:
        raise refused(403, reason)
    return rules.allows(name)


class SimpleIndex(Resource):
    """``<prefix>/`` and ``<prefix>/<project>/`` in HTML or JSON."""

    isLeaf = True

    def __init__(self, mirror: Mirror, pages: PageCache, *, local: bool, stats: Stats | None = None,
                 in_thread: Callable[..., Any] | None = None, policy: Callable[[], Any] = lambda: None) -> None:
        """``in_thread(f, *args)``: run ``f`` in the thread pool (a Deferred);
        big pages are rendered there.  None renders everything inline.
        ``policy()``: the current ``[policy]`` (``app.policy``), read per request."""
        super().__init__()
        self.policy = policy
        self.in_thread = in_thread
        self._renders: Coalescer[Rendered] = Coalescer()
        self.stats = stats if stats is not None else Stats()
        self.mirror = mirror
        self.pages = pages
        self.local = local
        self.view = "local" if local else "proxy"
        self._root_cache: dict[str, tuple[float, Rendered]] = {}

    @property
    def allow_upstream(self) -> bool:
        return not self.local and not self.mirror.offline

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._dispatch(request))

    render_HEAD = render_GET

    async def _dispatch(self, request: Any) -> None:
        post = request.postpath
        prefix = "/" + "/".join(p.decode("utf-8", "replace") for p in request.prepath)
        if post == []:
            return self._redirect(request, prefix + "/")
        if post == [b""]:
            return await self._root(request)
        if len(post) > 2 or (len(post) == 2 and post[1] != b""):
            raise HTTPError(404, "not found")
        raw = post[0].decode("utf-8", "replace")
        try:
            name = normalize(raw)
        except InvalidName:
            raise HTTPError(404, "not a valid project name") from None
        if raw != name or len(post) == 1:
            return self._redirect(request, f"{prefix}/{name}/")
        await self._project(request, name)

    def _redirect(self, request: Any, location: str) -> None:
        query = request.uri.partition(b"?")[2]
        target = location.encode("utf-8") + (b"?" + query if query else b"")
        request.setResponseCode(301)
        request.setHeader(b"location", safe_header(target.decode("utf-8", "replace")))
        finish_bytes(request, b"")

    def _format(self, request: Any) -> Any:
        fmt_param = request.args.get(b"format", [None])[0]
        fmt = choose_format(
            (request.getHeader(b"accept") or b"").decode("latin-1") or None,
            fmt_param.decode("latin-1") if fmt_param is not None else None,
        )
        if fmt is None:
            raise HTTPError(406, "none of the acceptable types is offered: use "
                                 "application/vnd.pypi.simple.v1+json or text/html")
        return fmt

    async def _project(self, request: Any, name: str) -> None:
        fmt = self._format(request)
        result, rules, generation = await find_project(self.mirror, name, allow_upstream=self.allow_upstream)
        record = result.record
        merged = name in self.mirror.merge
        if self.local and not any(f.stored and visible(record, f, merged=merged) for f in record.files):
            raise HTTPError(404, f"no files of {name} are stored here")
        # generation: a page rendered under another block/allow policy is never reused.
        key = (self.view, name, fmt.name, record.origin, generation)  # origin: PEP 708 meta differs
        policy = self.policy()
        page = self.pages.get(key, record.files, None if self.local else same_listing)
        if page is None or not page.current(policy, self.mirror.clock):
            page = self.pages.put(key, await self._render(key, fmt, record, merged, rules, policy))
        self.stats.pages += 1
        if result.stale:
            self.stats.pages_stale += 1
            request.setHeader(b"x-pypicache-stale", b"true")
        self._send_page(request, fmt, page, key)

    async def _render(self, key: tuple, fmt: Any, record: ProjectRecord, merged: bool, rules: Any,
                      policy: Any) -> Rendered:
        """The page, rendered inline, or in the thread pool when it is big
        (gzipped there too: clients ask for gzip, and compressing 20 MB
        takes half a second).  Concurrent requests share one rendering."""
        meta = self._page_meta(record)
        now = self.mirror.clock.seconds()
        if self.in_thread is None or len(record.files) < THREAD_RENDER_FILES:
            return render_page(fmt, record, self.local, merged, meta, False, rules, policy, now)
        files = record.files  # held by the closure: its id is not reused while it runs
        return await self._renders.run(
            (key, id(files), id(policy)),
            lambda: self.in_thread(render_page, fmt, record, self.local, merged, meta, True, rules, policy, now))

    def _page_meta(self, record: ProjectRecord) -> dict[str, Any]:
        """PEP 708: a proxied project ``tracks`` its upstream page; a private
        one never does (nor passes on the upstream's signals)."""
        meta = {k: v for k, v in record.meta.items() if k not in ("tracks", "alternate-locations")}
        upstream_url = getattr(self.mirror.upstream, "url", None)
        if record.origin == "upstream" and upstream_url:
            meta["tracks"] = [f"{upstream_url}{record.name}/"]
        return meta

    async def _root(self, request: Any) -> None:
        fmt = self._format(request)
        now = self.mirror.clock.seconds()
        rules, generation = self.mirror.blocklist.rules, self.mirror.blocklist.generation
        cached = self._root_cache.get(fmt.name)
        if cached is not None and now - cached[0] < ROOT_CACHE_SECONDS and cached[2] == generation:
            page = cached[1]
        else:
            names, stale = await self.mirror.project_names(allow_upstream=self.allow_upstream)
            if stale:
                request.setHeader(b"x-pypicache-stale", b"true")
            if rules.active:
                names = await self._listed_names(rules, names)
            body = render_index(fmt, names)
            page = Rendered(None, body, etag_for(body))
            if not stale:
                self._root_cache[fmt.name] = (now, page, generation)
        self._send_page(request, fmt, page, None)

    async def _listed_names(self, rules: Any, names: list[str]) -> list[str]:
        """The root page under a policy: no project blocked by name and,
        with allow_only, the allowed projects and the private ones."""
        listed = []
        for name in names:
            if rules.project_reason(name) is not None:
                continue
            if not rules.allows(name):
                record = await self.mirror.load(name)
                if record is None or record.origin != LOCAL:
                    continue
            listed.append(name)
        return listed

    def _send_page(self, request: Any, fmt: Any, page: Rendered, key: tuple | None) -> None:
        status, headers, body = self.page_response(fmt, page, key, request.getHeader(b"accept-encoding"),
                                                   request.getHeader(b"if-none-match"))
        for name, value in headers:
            request.setHeader(name, value)
        if status == 304:
            request.setResponseCode(304)
            request.finish()
            return
        finish_bytes(request, body)

    def page_response(self, fmt: Any, page: Rendered, key: tuple | None, accept_encoding: bytes | None,
                      if_none_match: bytes | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body for a rendered page: shared by the
        twisted.web route and the fast path (pypicache.web.fastpath)."""
        content_type = b"text/html; charset=utf-8" if fmt == HTML else fmt.content_type.encode()
        headers = [(b"Content-Type", content_type), (b"Vary", b"Accept, Accept-Encoding"),
                   (b"Cache-Control", b"max-age=60, public")]
        body, etag = page.body, page.etag
        gz = False
        if len(body) >= GZIP_MIN and accepts_gzip(accept_encoding.decode("latin-1") if accept_encoding else None):
            before = page.cost
            body, etag = page.gzipped()
            if key is not None:
                self.pages.grew(key, before)
            gz = True
        headers.append((b"ETag", etag.encode()))
        if page.held:
            headers.append((b"X-PyPICache-Held-Back", b"%d" % page.held))
        if etag_matches(if_none_match, page.etag, page.gz_etag or ""):
            self.stats.pages_not_modified += 1
            return 304, headers, b""
        if gz:
            headers.append((b"Content-Encoding", b"gzip"))
        return 200, headers, body

    def _fast_not_found(self, name: str, accept: bytes | None) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """The ordinary route's 404 for a name the upstream just said it does
        not know (``not_found_ttl``), else None."""
        if not self.allow_upstream or name not in self.mirror.not_found \
                or choose_format(accept.decode("latin-1") if accept else None, None) is None:
            return None
        return 404, [(b"Content-Type", b"text/plain; charset=utf-8")], f"no such project: {name}\n".encode()

    def fast_page(self, name: str, accept: bytes | None, accept_encoding: bytes | None,
                  if_none_match: bytes | None) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """The answer for ``<prefix>/<name>/`` if it can be given right now
        from memory (fresh record, rendered page), else None: the caller
        then takes the ordinary route, which may ask the upstream."""
        record = self.mirror.fresh_cached(name, allow_upstream=self.allow_upstream)
        if record is None:
            return self._fast_not_found(name, accept) if self.mirror.cached(name) is None else None
        fmt = choose_format(accept.decode("latin-1") if accept else None, None)
        if fmt is None:
            return None
        key = (self.view, name, fmt.name, record.origin, self.mirror.blocklist.generation)
        page = self.pages.get(key, record.files, None if self.local else same_listing)
        if page is None or not page.current(self.policy(), self.mirror.clock):
            return None
        self.stats.pages += 1
        return self.page_response(fmt, page, key, accept_encoding, if_none_match)
