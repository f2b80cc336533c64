"""The server's Request class: bounded bodies and optional read authentication.

* Bodies are bounded while they stream: uploads by ``[uploads] max_size``
  (plus room for the form's text fields), everything else by a small limit.
  Twisted would otherwise spool any body to disk, and parse multipart forms
  into memory, which we switch off: the upload route parses the spooled body
  itself, streaming.  A body known (Content-Length) or found (chunked) to be
  too large is never written anywhere: it is counted, discarded, and answered
  with 413.
* With ``[auth] read = "authenticated"`` every request is authenticated before
  it is routed; the upload and management routes check credentials themselves.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from pypicache.web.util import HTTPError, send_error

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


def _path_of(raw: bytes) -> bytes:
    return raw.split(b"?", 1)[0]


class PyPICacheRequest(Request):
    is_upload = False

    def __init__(self, channel: Any, *args: Any, **kw: Any) -> None:
        # Passed, not set as a class attribute: Request.__init__ assigns the
        # instance attribute from the Site's setting (True by default), which
        # would shadow a class attribute and make Twisted read every form
        # body into memory and parse it a second time.
        kw["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kw)

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        path = _path_of(getattr(self.channel, "_path", b"") or b"")
        self.is_upload = path in UPLOAD_PATHS
        if self.is_upload:
            self._max_size = getattr(site, "upload_limit", 0)
            self._limit = self._max_size + FORM_ALLOWANCE
        else:
            self._max_size = self._limit = SMALL_BODY
        self._received = 0
        self._too_large = length is not None and length > self._limit
        if self._too_large:
            self.content = io.BytesIO()
            if length > self._limit + DISCARD_SLACK:
                # Far too large to read and discard: answer now and hang up.
                self._refuse_and_close()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
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
        transport = self.channel.transport
        if transport is None or getattr(self, "_refused", False):
            return
        self._refused = True
        message = self._too_large_message()
        body = message.encode() + b"\n"
        transport.write(b"HTTP/1.1 413 " + message.encode() + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()

    def _too_large_message(self) -> str:
        """One line, used as the reason phrase too (twine shows only the status line)."""
        if self.is_upload:
            return f"upload too large: the limit is {self._max_size} bytes"
        return f"request body too large: the limit is {self._max_size} bytes"

    def process(self) -> None:
        if getattr(self, "_refused", False):
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
        if gate is None or self.is_upload or _path_of(self.uri).startswith(b"/api/"):
            super().process()
            return
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
