"""The PyPI JSON API: ``/pypi/<project>/json`` and ``/pypi/<project>/<version>/json``.

Renovate, poetry and bandersnatch read this legacy API rather than the Simple
API, so it is answered from the same records the pages come from (same
freshness, same stale-on-outage rules, the same visibility rule:
pypicache.services.visibility).  This module only translates HTTP: names and
versions from the path, redirects to the normalised URL, the page cache,
ETags and gzip, errors as PyPI gives them.  The document itself (releases,
``info`` from METADATA, ``last_serial``) is built by
pypicache.services.projectjson.

Rendered bodies are cached like pages (pypicache.web.simple.PageCache), valid
while the project's files tuple is the very same object.

URLs in an answer (files, ``package_url``, ``release_url``) are relative to
the request URL, or absolute under ``[server] public_url`` when configured.
They never come from ``Host`` or ``X-Forwarded-*``: the answer is cacheable
(here and by any shared cache in front), so a header that a cache does not
key on must not shape it.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import quote

import attrs
from packaging.version import InvalidVersion, Version
from twisted.web.resource import Resource

from pypicache.model import InvalidName, normalize
from pypicache.services import cooldown
from pypicache.services.mirror import Mirror
from pypicache.services.projectjson import ProjectJson
from pypicache.services.visibility import visible_files
from pypicache.web.negotiation import accepts_gzip
from pypicache.web.render import etag_for
from pypicache.web.simple import GZIP_MIN, PageCache, Rendered, etag_matches, find_project, without_held_versions
from pypicache.web.util import HTTPError, finish_bytes, handle, safe_header, send_error

JSON_TYPE = b"application/json"
CACHE_CONTROL = b"max-age=60, public"


@attrs.define
class JsonPage(Rendered):
    """A rendered answer and its serial (sent as X-PyPI-Last-Serial, which
    bandersnatch reads)."""

    serial: int = 0


# -------------------------------------------------------------- resource


class JsonAPI(Resource):
    """``<prefix>/pypi/<project>/json`` and ``<prefix>/pypi/<project>/<version>/json``.

    Mount it as the ``pypi`` child next to ``simple`` and ``files``: file URLs
    point at the sibling ``files/`` route.  ``local=True`` is the standalone
    view (stored files only, never the upstream).
    """

    isLeaf = True

    def __init__(self, mirror: Mirror, storage: Any, downloader: Any, local: bool = False, *,
                 pages: PageCache | None = None, parsed_cache_size: int = 1024,
                 public_url: str | None = None, policy: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        #: The current ``[policy]`` (``app.policy``): its cooldown holds files back.
        self.policy = policy
        #: "https://host/prefix/" (validated by pypicache.daemon.config), or None for relative URLs.
        self.public_url = public_url
        self.mirror = mirror
        self.local = local
        self.view = "local" if local else "proxy"
        self.pages = pages if pages is not None else PageCache(budget=16 * 1024 * 1024)
        self.documents = ProjectJson(storage, downloader, mirror.clock, cache_size=parsed_cache_size)

    @property
    def allow_upstream(self) -> bool:
        return not self.local and not self.mirror.offline

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._serve(request))

    render_HEAD = render_GET

    # ------------------------------------------------------------ routing
    async def _serve(self, request: Any) -> None:
        try:
            await self._dispatch(request)
        except HTTPError as e:  # as PyPI gives them: {"message": ...} in JSON
            send_error(request, e.code, e.message, e.headers, json_body=True)

    async def _dispatch(self, request: Any) -> None:
        post = list(request.postpath)
        if len(post) >= 3 and post[-1] == b"" and post[-2] == b"json":
            post = post[:-1]
            trailing_slash = True
        else:
            trailing_slash = False
        if len(post) not in (2, 3) or post[-1] != b"json":
            raise HTTPError(404, "Not Found")
        try:
            raw = post[0].decode("utf-8")
            raw_version = post[1].decode("utf-8") if len(post) == 3 else None
        except UnicodeDecodeError:
            raise HTTPError(404, "Not Found") from None
        try:
            name = normalize(raw)
        except InvalidName:
            raise HTTPError(404, "Not Found") from None
        version: Version | None = None
        if raw_version is not None:
            try:
                version = Version(raw_version)
            except InvalidVersion:
                raise HTTPError(404, "Not Found") from None
        if raw != name or trailing_slash:
            prefix = "/" + "".join(p.decode("utf-8", "replace") + "/" for p in request.prepath)
            middle = quote(raw_version, safe="") + "/" if raw_version is not None else ""
            return self._redirect(request, f"{prefix}{name}/{middle}json")
        await self._answer(request, name, version)

    def _redirect(self, request: Any, location: str) -> None:
        query = request.uri.partition(b"?")[2]
        target = location + ("?" + query.decode("latin-1") if query else "")
        request.setResponseCode(301)
        request.setHeader(b"location", safe_header(target))
        finish_bytes(request, b"")

    # ------------------------------------------------------------ answers
    async def _answer(self, request: Any, name: str, version: Version | None) -> None:
        result, rules, generation = await find_project(self.mirror, name, allow_upstream=self.allow_upstream,
                                                       missing="Not Found")
        record = result.record
        policy = self.policy()
        visible = visible_files(record, local=self.local, merged=name in self.mirror.merge, rules=rules)
        held = cooldown.hold_back(policy, name, visible, self.mirror.clock.seconds())
        files = held.files
        if self.local and not files:
            raise HTTPError(404, "Not Found")
        base = self._base(request, version is not None)
        key = ("pypi-json", self.view, name, str(version) if version is not None else None, base, generation)
        page = self.pages.get(key, record.files)
        if page is None or not page.current(policy, self.mirror.clock):
            extra = rules.visible_versions(name, record.versions or ()) if not self.local else ()
            if held.count:  # a release whose files are all held back is not named either
                extra = without_held_versions(extra, visible, files) or ()
            built = await self.documents.build(
                name, files, version, base, extra_versions=extra, allow_upstream=self.allow_upstream)
            if built is None:
                raise HTTPError(404, "Not Found")
            page = JsonPage(record.files, built.body, etag_for(built.body), serial=built.serial,
                            policy=policy, held=held.count, until=held.until)
            if built.complete:
                self.pages.put(key, page)
        if result.stale:
            request.setHeader(b"x-pypicache-stale", b"true")
        self._send(request, page, key)

    def _base(self, request: Any, with_version: bool) -> str:
        """The URL of the view's root (the path above ``pypi/``: ``/`` or
        ``/local/``): under ``public_url`` when configured, else relative
        to this request's URL, which clients resolve it against.  Never
        from request headers (see the module's docstring)."""
        if self.public_url is None:
            return "../../../" if with_version else "../../"
        return self.public_url + "".join(quote(p.decode("utf-8", "replace"), safe="") + "/"
                                         for p in request.prepath[:-1])

    # ------------------------------------------------------------ sending
    def _send(self, request: Any, page: JsonPage, key: tuple) -> None:
        request.setHeader(b"content-type", JSON_TYPE)
        request.setHeader(b"x-pypi-last-serial", str(page.serial).encode())
        request.setHeader(b"vary", b"Accept-Encoding")
        request.setHeader(b"cache-control", CACHE_CONTROL)
        request.setHeader(b"access-control-allow-origin", b"*")
        if page.held:
            request.setHeader(b"x-pypicache-held-back", b"%d" % page.held)
        body, etag = page.body, page.etag
        encoding = request.getHeader(b"accept-encoding")
        if len(body) >= GZIP_MIN and accepts_gzip(encoding.decode("latin-1") if encoding else None):
            before = page.cost
            body, etag = page.gzipped()
            self.pages.grew(key, before)
            request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"etag", etag.encode())
        if etag_matches(request.getHeader(b"if-none-match"), page.etag, page.gz_etag or ""):
            request.setResponseCode(304)
            request.responseHeaders.removeHeader(b"content-encoding")
            request.finish()
            return
        finish_bytes(request, body)
