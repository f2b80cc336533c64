"""``/health``, ``/ready`` and ``/metrics``: for load balancers and Prometheus.

None of them shows package data, so none is behind the read gate
(pypicache.web.request) nor behind upload credentials.  Every answer says
``Cache-Control: no-store``: a cached health answer is a wrong one.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pypicache.web.util import request_gone, watch_disconnect

log = Logger()

_TEXT = b"text/plain; charset=utf-8"


def _plain(request: Any, code: int, body: bytes, content_type: bytes = _TEXT) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(body)).encode())
    return body


class Health(Resource):
    """``/health``: 200 ``ok`` while the process answers; checks nothing else."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return _plain(request, 200, b"ok\n")

    def render_HEAD(self, request: Any) -> bytes:
        self.render_GET(request)
        return b""  # the headers, Content-Length included, without the body


class Ready(Resource):
    """``/ready``: 200 ``ready`` when the index and storage answer in time
    (pypicache.services.health), else 503 naming each failed check; 503
    ``shutting down`` once the shutdown drain began (the Site's ``draining``
    flag, pypicache.web.draining): a load balancer stops routing here
    while the requests in flight finish."""

    isLeaf = True

    def __init__(self, readiness: Any) -> None:
        super().__init__()
        self.readiness = readiness

    def render_GET(self, request: Any) -> Any:
        if getattr(getattr(request, "site", None), "draining", False):
            return _plain(request, 503, b"not ready\nshutting down\n")
        watch_disconnect(request)
        d = defer.ensureDeferred(self.readiness.problems())
        d.addCallback(self._answer, request)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    render_HEAD = render_GET  # twisted.web sends no body for HEAD

    def _answer(self, problems: list[str], request: Any) -> None:
        if request_gone(request):
            return
        if problems:
            body = ("not ready\n" + "".join(p + "\n" for p in problems)).encode()
            body = _plain(request, 503, body)
        else:
            body = _plain(request, 200, b"ready\n")
        request.write(body)
        request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        log.failure("the readiness check failed", failure)
        self._answer(["check: internal error"], request)


class Metrics(Resource):
    """``/metrics``: the Prometheus text format, generated from a private
    registry (pypicache.services.metrics) on each scrape.  ``scrape``
    returns the bytes, or a Deferred of them (formatted in a thread)."""

    isLeaf = True

    def __init__(self, registry: Any, scrape: Callable[[Any], Any], content_type: str) -> None:
        super().__init__()
        self.registry = registry
        self.scrape = scrape
        self.content_type = content_type.encode()

    def render_GET(self, request: Any) -> Any:
        watch_disconnect(request)
        d = defer.maybeDeferred(self.scrape, self.registry)
        d.addCallback(self._answer, request)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    render_HEAD = render_GET  # twisted.web sends no body for HEAD

    def _answer(self, text: bytes, request: Any) -> None:
        if request_gone(request):
            return
        request.write(_plain(request, 200, text, self.content_type))
        request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        log.failure("scraping the metrics failed", failure)
        if request_gone(request):
            return
        request.write(_plain(request, 500, b"metrics unavailable\n"))
        request.finish()
