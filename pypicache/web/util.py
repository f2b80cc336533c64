"""Small helpers every route uses: async handlers and plain error answers."""

from __future__ import annotations

import errno
import json
from typing import Any, Awaitable, Callable, Mapping

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

log = Logger()


class HTTPError(Exception):
    """Answer with ``code`` and a one-line plain-text ``message``."""

    def __init__(self, code: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def refused(code: int, reason: str) -> HTTPError:
    """A policy refusal (pypicache.services.blocklist): the reason in the
    body and in ``X-PyPICache-Reason``, for scripts and humans alike."""
    return HTTPError(code, reason, {b"x-pypicache-reason": safe_header(reason)})


def safe_header(value: str) -> bytes:
    """A header value with no CR/LF (or other controls) left in it."""
    return "".join(ch if 32 <= ord(ch) < 127 or ord(ch) > 159 else "?" for ch in value).encode("utf-8")


def watch_disconnect(request: Any) -> None:
    """Note, as ``request.gone``, a client that goes away before its answer
    is finished (``notifyFinish`` fails then), so an answer computed after
    an ``await`` is not written to a lost connection (Twisted raises on
    ``finish`` then).  Idempotent: one watch per request."""
    if getattr(request, "gone", None) is not None:
        return
    request.gone = False

    def lost(_: Any) -> None:
        request.gone = True

    request.notifyFinish().addErrback(lost)


def request_gone(request: Any) -> bool:
    """Is the request finished, or its client gone (see :func:`watch_disconnect`)?"""
    return bool(request.finished or getattr(request, "gone", False))


def send_error(request: Any, code: int, message: str, headers: Mapping[bytes, bytes] | None = None, *,
               json_body: bool = False) -> None:
    """Answer ``code`` with a one-line ``message`` (unless the answer has begun:
    then the connection is cut, which clients see as the failure it is).

    ``json_body``: as PyPI's JSON API answers errors, ``{"message": ...}``
    under the standard reason phrase; else plain text, the message also in
    the reason phrase.
    """
    if request_gone(request):
        return
    if request.startedWriting:
        request.channel.transport.abortConnection()
        return
    if json_body:
        request.setResponseCode(code)
        body, content_type = json.dumps({"message": message}).encode("utf-8"), b"application/json"
    else:
        # The reason phrase carries the message too: twine shows the status line,
        # not the body (as PyPI does: "400 File already exists").
        phrase = safe_header(message)[:200].decode("utf-8", "replace").encode("latin-1", "replace")
        request.setResponseCode(code, phrase or None)
        body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
        content_type = b"text/plain; charset=utf-8"
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(len(body)).encode())
    request.responseHeaders.removeHeader(b"etag")
    request.responseHeaders.removeHeader(b"content-encoding")
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def handle(request: Any, handler: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async handler for a request; errors become clean HTTP answers.

    HTTPError gives its own status; anything else is logged with its
    traceback and answered with a 500 that shows no internals.
    """

    def failed(failure: Any) -> None:
        if failure.check(HTTPError):
            e = failure.value
            send_error(request, e.code, e.message, e.headers)
            return
        if failure.check(defer.CancelledError):
            return
        if failure.check(OSError) and failure.value.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("no space left on the server's disk answering {method} {uri}: {error}",
                      method=request.method, uri=request.uri, error=str(failure.value))
            send_error(request, 507, "insufficient storage on the server: no space left on its disk",
                       {b"retry-after": b"60"})
            return
        log.failure("error answering {method} {uri}", failure, method=request.method, uri=request.uri)
        send_error(request, 500, "internal server error")

    watch_disconnect(request)
    defer.ensureDeferred(handler()).addErrback(failed)
    return NOT_DONE_YET


def finish_bytes(request: Any, body: bytes) -> None:
    """Write a whole in-memory body (with Content-Length) and finish."""
    if request_gone(request):
        return
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD" and body:
        request.write(body)
    request.finish()
