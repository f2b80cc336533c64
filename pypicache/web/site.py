"""The URL map: which resource answers which path.

    /simple/                      proxy view (upstream + cache), PEP 503/691
    /files/<project>/<filename>   files (and .metadata) behind the proxy view
    /local/simple/                standalone view: only what is stored, never the upstream
    /local/files/...              files behind the standalone view
    /legacy/                      uploads (twine, uv publish)
    /api/projects/...             yank, unyank, delete (private projects)
    /pypi/<project>/json          the PyPI JSON API
    /as-of/<time>/simple/         the proxy view as it was at a time (files link to /files/)
    /requirements.txt             pre-filling (POST); /requirements/jobs/<id>: its jobs
    /stats                        cache counters
    /, /project/<name>/, /statistics   the web UI (pypicache.web.ui), when built with ``ui``
    /health, /ready, /metrics     liveness, readiness, Prometheus metrics (never behind the read gate)
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from twisted.web.resource import Resource
from twisted.web.server import Site

from pypicache import __version__
from pypicache.services.stats import Stats
from pypicache.services.traffic import route_of
from pypicache.web.files import Files
from pypicache.web.limits import LimitedChannel
from pypicache.web.request import PyPICacheRequest
from pypicache.web.simple import PageCache, SimpleIndex

_HOME = f"""<!DOCTYPE html>
<html><head><title>pypicache</title></head><body>
<h1>pypicache {__version__}</h1>
<ul>
<li><a href="simple/">simple/</a>: the caching proxy index (pip, uv, poetry)</li>
<li><a href="local/simple/">local/simple/</a>: only what this server holds; never the upstream</li>
<li><a href="stats">stats</a>: cache hits, misses and bytes saved (JSON)</li>
</ul>
</body></html>
""".encode()


class Home(Resource):
    """``/``: a short page naming the indexes, and the parent of every route.

    Routes that few servers use (uploads, management, the JSON API) are
    registered as factories with :meth:`putLazyChild` and built, with their
    modules imported, on their first request: that keeps start-up time and
    memory down (docs/performance.md).
    """

    def __init__(self) -> None:
        super().__init__()
        self._lazy: dict[bytes, Callable[[], Resource]] = {}
        #: Builds the web UI (an object with a ``home`` resource), or None: the short page.
        self.make_ui: Callable[[], Any] | None = None
        self._ui: Any = None

    def ui(self) -> Any:
        """The web UI, built on first use."""
        if self._ui is None and self.make_ui is not None:
            self._ui = self.make_ui()
        return self._ui

    def putLazyChild(self, path: bytes, make: Callable[[], Resource]) -> None:
        self._lazy[path] = make

    def render_GET(self, request: Any) -> Any:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b"not found\n"
        if self.make_ui is not None:
            return self.ui().home.render(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _HOME

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        make = self._lazy.pop(path, None)
        if make is not None:
            child = make()
            self.putChild(path, child)
            return child
        return super().getChild(path, request)


class Folder(Resource):
    """A path that only parents other routes (``/local``): GET and HEAD get a
    404 rather than a 500 (twisted's plain Resource has no ``render_GET``,
    and its ``render_HEAD`` calls it)."""

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found\n"


class StatsPage(Resource):
    """``/stats``: the cache's counters as JSON."""

    isLeaf = True

    def __init__(self, stats: Stats) -> None:
        super().__init__()
        self.stats = stats

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self.stats.as_dict(), indent=1).encode() + b"\n"


def build_root(mirror: Any, downloader: Any, storage: Any, stats: Stats, *,
               upload: Callable[[], Resource] | None = None, manage: Callable[[], Resource] | None = None,
               jsonapi: Callable[[], Resource] | None = None, page_bytes: int = 32 * 1024 * 1024,
               in_thread: Callable[..., Any] | None = None, prefetch: Callable[[], Resource] | None = None,
               ready: Callable[[], Resource] | None = None, metrics: Callable[[], Resource] | None = None,
               monitoring: bool = True, policy: Callable[[], Any] = lambda: None,
               ui: Callable[[], Any] | None = None) -> Home:
    """The resource tree; ``upload``, ``manage``, ``jsonapi``, ``prefetch``,
    ``ready`` and ``metrics`` are factories called on the first request to
    their route; ``ui`` builds the web UI (pypicache.web.ui.UI), which then
    answers ``/``.  ``page_bytes`` bounds the rendered pages; ``in_thread``
    renders big ones in the thread pool.  ``monitoring=False`` leaves out
    ``/health``, ``/ready`` and ``/metrics`` (served on their own listener);
    ``policy()`` is the current ``[policy]`` (its cooldown holds files back)."""
    pages = PageCache(page_bytes)
    root = Home()
    watch = ((b"health", _health), (b"ready", ready), (b"metrics", metrics)) if monitoring else ()
    for name, make in ((b"legacy", upload), (b"api", manage), (b"pypi", jsonapi),
                       (b"requirements.txt", prefetch), (b"requirements", prefetch), *watch):
        if make is not None:
            root.putLazyChild(name, make)
    if ui is not None:
        root.make_ui = ui
        root.putLazyChild(b"project", lambda: root.ui().project)
        root.putLazyChild(b"statistics", lambda: root.ui().statistics)
    proxy_view = SimpleIndex(mirror, pages, local=False, stats=stats, in_thread=in_thread, policy=policy)
    local_view = SimpleIndex(mirror, pages, local=True, stats=stats, in_thread=in_thread, policy=policy)
    root.views = (proxy_view, local_view)  # for the fast path
    root.pages = pages  # for /metrics
    root.putChild(b"simple", proxy_view)
    root.putChild(b"files", Files(mirror, downloader, storage, local=False, stats=stats, policy=policy))
    root.putLazyChild(b"as-of", lambda: _as_of(mirror, stats, policy))
    root.putChild(b"stats", StatsPage(stats))
    local = Folder()
    local.putChild(b"simple", local_view)
    local.putChild(b"files", Files(mirror, downloader, storage, local=True, stats=stats, policy=policy))
    root.putChild(b"local", local)
    return root


class MonitoringRoot(Home):
    """The root of the monitoring listener (``[monitoring] listen``): only
    ``/health``, ``/ready`` and ``/metrics``; 404 for every other path."""

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found\n"


def build_monitoring_root(ready: Callable[[], Resource], metrics: Callable[[], Resource]) -> MonitoringRoot:
    """The monitoring listener's resource tree (each route built on first use)."""
    root = MonitoringRoot()
    for name, make in ((b"health", _health), (b"ready", ready), (b"metrics", metrics)):
        root.putLazyChild(name, make)
    return root


def monitoring_route_of(path: bytes) -> str:
    """Route labels on the monitoring listener: what it does not serve is "other"."""
    route = route_of(path)
    return route if route == "monitoring" else "other"


def _as_of(mirror: Any, stats: Stats, policy: Callable[[], Any]) -> Resource:
    from pypicache.web.asof import AsOf

    return AsOf(mirror, stats, policy)


def _health() -> Resource:
    from pypicache.web.monitoring import Health

    return Health()


class QuietSite(Site):
    """A Site whose per-request access log can be turned off (it costs more
    than rendering a cached page), with bounded request bodies and an
    optional read gate (see pypicache.web.request)."""

    requestFactory = PyPICacheRequest
    protocol = LimitedChannel  # a plain HTTP/1.1 channel: no HTTP/2 negotiation
    #: Deadline for a request's headers (seconds) and minimum body rate
    #: (bytes/s); None turns the check off.  See pypicache.web.limits.
    header_timeout: float | None = None
    min_body_rate: float | None = None
    #: Set when the server shuts down: no more keep-alive (pypicache.web.draining).
    draining = False

    #: Requests by route and status (pypicache.services.traffic), counted
    #: whether or not the access log is on.
    traffic: Any = None
    #: A request path's route label (the monitoring listener's differs).
    route_of = staticmethod(route_of)

    def __init__(self, resource: Resource, *, access_log: bool = True, upload_limit: int = 0,
                 read_gate: Any = None, upload_gate: Any = None, header_timeout: float | None = None,
                 min_body_rate: float | None = None, traffic: Any = None, access_log_format: str = "combined",
                 **kw: Any) -> None:
        if access_log_format == "json":
            from pypicache.web.accesslog import json_line

            kw.setdefault("logFormatter", json_line)
        super().__init__(resource, **kw)
        self.traffic = traffic
        self.header_timeout = header_timeout
        self.min_body_rate = min_body_rate
        self.access_log = access_log
        self.upload_limit = upload_limit
        self.read_gate = read_gate
        self.upload_gate = upload_gate

    def log(self, request: Any) -> None:
        """Called as each request finishes: count it, then log it if asked."""
        traffic = self.traffic
        if traffic is not None:
            path = getattr(request, "path", None) or request.uri.split(b"?", 1)[0]
            traffic.request(self.route_of(path), request.code, time.monotonic() - request.started_at)
        if self.access_log:
            super().log(request)
