"""``/as-of/<time>/simple/``: the proxy view as this server knew it at a time.

A build without a lock file can be reproduced by pointing the installer at
``/as-of/2024-05-01/simple/``: files uploaded after that time are left out
and yanks that happened later are not shown, as uv's ``--exclude-newer``
does on the client, but for every client.  The rule (what "at a time"
means, and its limits) is :func:`pypicache.services.cooldown.as_of`;
docs/security.md says what it cannot know.

The page is refreshed from the upstream as usual and then filtered: a file
uploaded before the time that this server had not seen yet must still be
listed, and the upstream only adds newer files, which are filtered out.
File links point at the ordinary ``/files/`` route (four levels up), which
serves every listed file.  Pages here are rendered per request and not
kept: the route is rare, and each time in a URL is its own view.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.web.resource import Resource

from pypicache.services import cooldown
from pypicache.services.mirror import Mirror
from pypicache.services.stats import Stats
from pypicache.services.visibility import LOCAL, visible
from pypicache.web.render import etag_for, render_project
from pypicache.web.simple import PageCache, Rendered, SimpleIndex, find_project
from pypicache.web.util import HTTPError


class AsOf(Resource):
    """``/as-of/``: its child segment is the time, parsed here."""

    def __init__(self, mirror: Mirror, stats: Stats, policy: Callable[[], Any]) -> None:
        super().__init__()
        self.mirror = mirror
        self.stats = stats
        self.policy = policy

    def getChild(self, path: bytes, request: Any) -> Resource:
        try:
            when = cooldown.parse_as_of(path.decode("ascii"))
        except UnicodeDecodeError:
            return _BadRequest("not a date (YYYY-MM-DD) or an RFC 3339 time")
        except cooldown.BadTime as e:
            return _BadRequest(str(e))
        moment = _NotFound()
        moment.putChild(b"simple", AsOfIndex(self.mirror, when, stats=self.stats, policy=self.policy))
        return moment

    def render_GET(self, request: Any) -> bytes:
        return _NotFound().render_GET(request)


class _NotFound(Resource):
    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found: use /as-of/<YYYY-MM-DD or RFC 3339 time>/simple/\n"


class _BadRequest(Resource):
    """A time that does not parse: 400 naming it, whatever follows."""

    isLeaf = True

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"bad as-of time: {self.message}\n".encode("utf-8", "replace")

    render_HEAD = render_GET


class AsOfIndex(SimpleIndex):
    """The proxy view's pages at the instant ``when`` (seconds since the epoch)."""

    def __init__(self, mirror: Mirror, when: float, *, stats: Stats, policy: Callable[[], Any]) -> None:
        super().__init__(mirror, PageCache(0), local=False, stats=stats, policy=policy)
        self.when = when

    async def _project(self, request: Any, name: str) -> None:
        fmt = self._format(request)
        # The block and allow lists of today hold in the past too.
        result, rules, _ = await find_project(self.mirror, name, allow_upstream=self.allow_upstream)
        record = result.record
        merged = name in self.mirror.merge
        # What was listed then may be unlisted now: files still held are shown.
        files = tuple(f for f in record.files
                      if (f.listed or f.stored or f.origin == LOCAL) and visible(record, f, merged=merged))
        if rules.active:
            files = rules.visible(name, files)
        files = cooldown.as_of(files, self.when)
        held = cooldown.hold_back(self.policy(), name, files, self.mirror.clock.seconds())
        meta = self._page_meta(record)
        if held.count:
            meta["_pypicache"] = {"held_back": held.count}
        body = render_project(fmt, name, held.files, "../../../../files/" + name + "/", None, meta)
        page = Rendered(None, body, etag_for(body), held=held.count)
        self.stats.pages += 1
        if result.stale:
            self.stats.pages_stale += 1
            request.setHeader(b"x-pypicache-stale", b"true")
        self._send_page(request, fmt, page, None)
