"""The server's Request class: bounded bodies and optional read authentication.

* Bodies are bounded while they stream: uploads by ``[uploads] max_size``
  (plus room for the form's text fields), everything else by a small limit.
  Twisted would otherwise spool any body to disk, and parse multipart forms
  into memory, which we switch off: the upload route parses the spooled body
  itself, streaming.  A body known (Content-Length) or found (chunked) to be
  too large is never written anywhere: it is counted, discarded, and answered
  with 413.
* An upload's credentials are checked as soon as its headers are in, before
  any of its body is read or spooled (:class:`UploadGate`): no or malformed
  credentials get 401 at once, present ones are checked with the connection
  paused.  The same gate caps how many uploads run at once (503).
* With ``[auth] read = "authenticated"`` every request is authenticated before
  it is routed; the management routes check credentials themselves.
  Every answer then says ``Cache-Control: private`` and ``Vary: Authorization``
  (set here, as the headers go out, so no route can forget it): a shared
  cache in front must never hand a protected answer to someone else.
"""

from __future__ import annotations

import io
import time
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from pypicache import _twisted
from pypicache.web.util import HTTPError, request_gone, send_error, watch_disconnect

log = Logger()

#: Body limit for every route that takes no upload (forms with a yank reason, ...).
SMALL_BODY = 64 * 1024
#: How much of an oversized body we read and discard before hanging up, so a
#: client that sent a modest Content-Length overshoot still reads our 413.
DISCARD_SLACK = 16 * 1024 * 1024
#: An upload body holds the file plus text fields (a long README as
#: ``description``...): a file of exactly ``max_size`` bytes must still fit.
#: The file itself is held to ``max_size`` by the multipart parser.
FORM_ALLOWANCE = 1024 * 1024

UPLOAD_PATHS = (b"/legacy", b"/legacy/")
#: Routes that show no package data (pypicache.web.monitoring): never behind the read gate.
UNGATED_PATHS = (b"/health", b"/ready", b"/metrics")


def _path_of(raw: bytes) -> bytes:
    return raw.split(b"?", 1)[0]


def make_private(headers: Any) -> None:
    """Turn a response's cache headers private (max-age and the rest kept)
    and add ``Authorization`` to ``Vary``."""
    directives = [d.strip() for v in headers.getRawHeaders(b"cache-control", []) for d in v.split(b",")]
    directives = [d for d in directives if d and d.lower() not in (b"public", b"private")]
    headers.setRawHeaders(b"cache-control", [b", ".join(directives + [b"private"])])
    vary = [v.strip() for value in headers.getRawHeaders(b"vary", []) for v in value.split(b",") if v.strip()]
    if b"authorization" not in (v.lower() for v in vary):
        headers.setRawHeaders(b"vary", [b", ".join(vary + [b"Authorization"])])


@attrs.define
class UploadGate:
    """What an upload must pass before its body is read: uploads enabled,
    well-formed credentials, a free slot among ``max_concurrent``, and then
    valid credentials (checked by ``accounts``, asynchronously)."""

    accounts: Any
    max_concurrent: int = 4
    enabled: bool = True
    active: int = 0

    def acquire(self) -> bool:
        if self.active >= self.max_concurrent:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class PyPICacheRequest(Request):
    is_upload = False
    #: True once the client has gone; None until watched (pypicache.web.util.watch_disconnect).
    gone: bool | None = None
    #: Reads need credentials: every answer is made private (see make_private).
    private = False

    def __init__(self, channel: Any, *args: Any, **kw: Any) -> None:
        # Passed, not set as a class attribute: Request.__init__ assigns the
        # instance attribute from the Site's setting (True by default), which
        # would shadow a class attribute and make Twisted read every form
        # body into memory and parse it a second time.
        kw["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kw)
        #: When the request line arrived (monotonic): durations in metrics and the access log.
        self.started_at = time.monotonic()

    def write(self, data: bytes) -> None:
        if self.private and not self.startedWriting:
            make_private(self.responseHeaders)
        super().write(data)

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        self.private = getattr(site, "read_gate", None) is not None
        head = _twisted.request_line(self.channel)
        self.is_upload = head is not None and _path_of(head[1]) in UPLOAD_PATHS
        # Without the request line (a Twisted that hides it) any body may be
        # an upload: bounded as one, its credentials checked by the route.
        if self.is_upload or head is None:
            self._max_size = getattr(site, "upload_limit", 0)
            self._limit = self._max_size + FORM_ALLOWANCE
        else:  # a route may have its own bound (pre-filling: [prefetch] max_body)
            self._max_size = self._limit = getattr(site, "body_limits", {}).get(_path_of(head[1]), SMALL_BODY)
        self._received = 0
        self._too_large = length is not None and length > self._limit
        if self._too_large:
            self.content = io.BytesIO()
            if length > self._limit + DISCARD_SLACK:
                # Far too large to read and discard: answer now and hang up.
                self._refuse_and_close()
        elif self.is_upload and head[0] == b"POST" \
                and getattr(site, "upload_gate", None) is not None:
            self._gate_upload(site.upload_gate, length, head[2])
        else:
            super().gotLength(length)

    # ------------------------------------------------ uploads: before the body

    def _gate_upload(self, gate: UploadGate, length: int | None, version: bytes) -> None:
        """Refuse an upload before reading its body, or pause the connection
        while its credentials are checked (see the module docstring)."""
        from pypicache.services.accounts import parse_basic
        from pypicache.web.auth import AUTH_CHALLENGE

        # Twisted answers "Expect: 100-continue" right after this method;
        # we send it ourselves once the upload is let in.
        expect = self.requestHeaders.getRawHeaders(b"expect") or []
        self._expects_continue = bool(expect) and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1"
        self.requestHeaders.removeHeader(b"expect")
        if not gate.enabled:
            return self._answer_and_close(403, "uploads are disabled on this server")
        if parse_basic(self.getHeader(b"authorization")) is None:
            return self._answer_and_close(
                401, "upload needs credentials (a user and password, or __token__ and a token)", AUTH_CHALLENGE)
        if not gate.acquire():
            return self._answer_and_close(
                503, f"too many uploads in progress (at most {gate.max_concurrent}): retry shortly",
                {b"retry-after": b"5"})
        watch_disconnect(self)
        self.notifyFinish().addBoth(lambda _: gate.release())
        # What arrives until the check is done: at most the rest of one read,
        # as the transport is paused.
        self.content = io.BytesIO()
        self._checking = True
        self.channel.transport.pauseProducing()
        from pypicache.web.auth import authenticate

        d = defer.ensureDeferred(authenticate(gate.accounts, self))
        d.addCallbacks(self._upload_checked, self._upload_check_failed, callbackArgs=(length,))

    def _upload_checked(self, identity: Any, length: int | None) -> None:
        from pypicache.web.auth import AUTH_CHALLENGE

        self._checking = False
        if identity is None:
            self._answer_and_close(
                401, "invalid credentials: wrong user or password, or an unknown or revoked token", AUTH_CHALLENGE)
            return
        if request_gone(self):
            return
        self.identity = identity
        held = self.content
        transport = self.channel.transport
        if getattr(self, "_body_done", False):
            held.seek(0)  # the whole (small) body came with the headers
            transport.resumeProducing()
            self.process()
            return
        super().gotLength(length)  # the body's real home: memory or a spooled file
        self.content.write(held.getvalue())
        if self._expects_continue:
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.resumeProducing()

    def _upload_check_failed(self, failure: Any) -> None:
        self._checking = False
        if failure.check(HTTPError):  # throttled: 429 or 503 with Retry-After
            self._answer_and_close(failure.value.code, failure.value.message, failure.value.headers)
            return
        log.failure("checking an upload's credentials failed", failure)
        self._answer_and_close(500, "internal server error")

    def handleContentChunk(self, data: bytes) -> None:
        if getattr(self, "_refused", False):
            return
        self._received += len(data)
        if self._received > self._limit and not self._too_large:
            self._too_large = True
            self.content.close()  # a spooled temporary file: gone with it
            self.content = io.BytesIO()
        if self._too_large:
            # Nothing of an oversized body is kept, not even its first bytes.
            if self._received > self._limit + DISCARD_SLACK:
                self._refuse_and_close()
            return
        super().handleContentChunk(data)

    def _refuse_and_close(self) -> None:
        self._answer_and_close(413, self._too_large_message())

    def _answer_and_close(self, status: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        """Answer before the body is read, and hang up: what is left of the
        body must never be read as a request."""
        channel = self.channel
        transport = channel.transport if channel is not None else None
        if transport is None or getattr(self, "_refused", False):
            return
        self._refused = True
        body = message.encode() + b"\n"
        extra = b"".join(name + b": " + value + b"\r\n" for name, value in (headers or {}).items())
        transport.write(b"HTTP/1.1 %d " % status + message.encode() + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        + extra + b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
        transport.loseConnection()

    def _too_large_message(self) -> str:
        """One line, used as the reason phrase too (twine shows only the status line)."""
        if self.is_upload:
            return f"upload too large: the limit is {self._max_size} bytes"
        return f"request body too large: the limit is {self._max_size} bytes"

    def process(self) -> None:
        self.is_upload = _path_of(self.uri) in UPLOAD_PATHS  # the same, unless gotLength could not tell
        if getattr(self, "_refused", False):
            return
        if getattr(self, "_checking", False):  # the body came before the credentials' verdict
            self._body_done = True
            return
        if getattr(self, "_too_large", False):
            message = self._too_large_message()
            self.setResponseCode(413, message.encode())
            body = message.encode() + b"\n"
            self.channel.persistent = False  # what is left of the body must not be read as a request
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.setHeader(b"content-length", str(len(body)).encode())
            self.setHeader(b"connection", b"close")
            self.write(body)
            self.finish()
            return
        site = self.channel.site
        gate = getattr(site, "read_gate", None)
        path = _path_of(self.uri)
        if gate is None or self.is_upload or path.startswith(b"/api/") or path in UNGATED_PATHS:
            super().process()
            return
        watch_disconnect(self)
        d = defer.ensureDeferred(gate(self))
        d.addCallbacks(self._gate_passed, self._gate_failed)

    def _gate_passed(self, allowed: bool) -> None:
        if allowed:
            super().process()
            return
        self.setResponseCode(401)
        self.setHeader(b"www-authenticate", b'Basic realm="pypicache"')
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        body = b"authentication required\n"
        self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        self.finish()

    def _gate_failed(self, failure: Any) -> None:
        if failure.check(HTTPError):  # throttled: 429 or 503 with Retry-After
            send_error(self, failure.value.code, failure.value.message, failure.value.headers)
            return
        log.failure("authenticating a read failed", failure)
        self.setResponseCode(500)
        self.finish()
