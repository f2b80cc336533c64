"""The server's Request class: bounded bodies and optional read authentication.

* Bodies are bounded while they stream: uploads by ``[uploads] max_size``,
  everything else by a small limit.  Twisted would otherwise spool any body
  to disk (and parse multipart forms into memory, which we switch off: the
  upload route parses the spooled body itself, streaming).
* With ``[auth] read = "authenticated"`` every request is authenticated before
  it is routed; the upload and management routes check credentials themselves.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

log = Logger()

#: Body limit for every route that takes no upload (forms with a yank reason, ...).
SMALL_BODY = 64 * 1024
#: How much of an oversized body we read and discard before hanging up, so a
#: client that sent a modest Content-Length overshoot still reads our 413.
DISCARD_SLACK = 16 * 1024 * 1024

UPLOAD_PATHS = (b"/legacy", b"/legacy/")


def _path_of(raw: bytes) -> bytes:
    return raw.split(b"?", 1)[0]


class PyPICacheRequest(Request):
    _parsePOSTFormSubmission = False

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        path = _path_of(getattr(self.channel, "_path", b"") or b"")
        self.is_upload = path in UPLOAD_PATHS
        self._limit = getattr(site, "upload_limit", 0) if self.is_upload else SMALL_BODY
        self._received = 0
        self._too_large = length is not None and length > self._limit
        if self._too_large:
            self.content = io.BytesIO()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit:
            if not self._too_large:
                self._too_large = True
                self.content.close()
                self.content = io.BytesIO()
            if self._received > self._limit + DISCARD_SLACK:
                self._refuse_and_close()
            return
        super().handleContentChunk(data)

    def _refuse_and_close(self) -> None:
        transport = self.channel.transport
        if transport is None or getattr(self, "_refused", False):
            return
        self._refused = True
        body = self._too_large_message().encode()
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()

    def _too_large_message(self) -> str:
        if self.is_upload:
            return f"upload too large: the limit is {self._limit} bytes\n"
        return f"request body too large: the limit is {self._limit} bytes\n"

    def process(self) -> None:
        if getattr(self, "_refused", False):
            return
        if getattr(self, "_too_large", False):
            self.setResponseCode(413)
            body = self._too_large_message().encode()
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
        log.failure("authenticating a read failed", failure)
        self.setResponseCode(500)
        self.finish()
