"""Streaming file bodies to clients without holding them in memory.

Two ways, chosen per response:

* **zero copy** (plain TCP and a local file descriptor): ``os.sendfile`` from
  the file straight into the socket, driven by the socket's writability.  For
  the body, the TCP transport's producer (normally the HTTP channel) is swapped
  for a pull producer, so Twisted calls us exactly when its own buffer (the
  response headers) has been flushed and the socket can take more; the
  channel is put back before the request finishes.
* **chunked copy** (TLS, storage without a file descriptor): a push producer
  that reads 256 KiB at a time and respects back-pressure.

Both can *follow* a transfer that is still being written (see
pypicache.services.downloads): they send what is available, then wait for more.  If the
source fails (upstream reset, bad hash) the client's connection is aborted, so
it never mistakes a partial body for a whole one.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from pypicache import _twisted
from pypicache.web.util import request_gone

log = Logger()

CHUNK = 256 * 1024
SENDFILE_TURN = 8 * 1024 * 1024  # bytes per writable event before yielding to others


class _Source:
    """Where body bytes come from: an fd (maybe still growing) or a reader."""

    def __init__(self, *, fd: int | None = None, reader: Any = None, transfer: Any = None) -> None:
        self.fd = fd
        self.reader = reader
        self.transfer = transfer

    def limit(self, end: int) -> int:
        """How far (exclusive) we may read now, given the wanted end."""
        if self.transfer is None:
            return end
        return min(end, self.transfer.available)

    def final_end(self, end: int) -> int:
        """The wanted end, cut to the real length once a transfer of unknown
        length has completed."""
        if self.transfer is not None and self.transfer.verified:
            return min(end, self.transfer.written)
        return end

    @property
    def failed(self) -> bool:
        return self.transfer is not None and self.transfer.failure is not None

    def wait(self) -> defer.Deferred[None]:
        return self.transfer.wait()


def send_body(request: Any, *, offset: int, length: int | None, fd: int | None = None, reader: Any = None,
              transfer: Any = None) -> defer.Deferred[bool]:
    """Send ``length`` bytes from ``offset`` and finish the request.

    Headers (including Content-Length) must already be set.  ``length`` None
    means unknown (a transfer without Content-Length): the body is then sent
    chunked until the transfer completes.  Fires with True when the whole body
    was sent, False when the client went away or the source failed (the
    connection is then aborted).
    """
    source = _Source(fd=fd, reader=reader, transfer=transfer)
    done: defer.Deferred[bool] = defer.Deferred()
    if request.method == b"HEAD" or length == 0:
        if source.failed:
            _abort(request)
            done.callback(False)
            return done
        request.finish()
        done.callback(True)
        return done
    transport = _twisted.plain_tcp(getattr(request.channel, "transport", None))
    if length is None:
        length = 2**62
        transport = None  # chunked framing must go through request.write
    if fd is not None and transport is not None and _twisted.support.sendfile and hasattr(os, "sendfile"):
        _SendfileProducer(request, transport, source, offset, length, done).start()
    else:
        _ChunkProducer(request, source, offset, length, done).start()
    return done


def _abort(request: Any) -> None:
    transport = getattr(request.channel, "transport", None)
    if transport is not None:
        transport.abortConnection()


@implementer(IPullProducer)
class _SendfileProducer:
    def __init__(self, request: Any, transport: Any, source: _Source, offset: int, length: int,
                 done: defer.Deferred[bool]) -> None:
        self.request = request
        self.transport = transport
        self.source = source
        self.offset = offset
        self.end = offset + length
        self.done = done
        self._saved: tuple[Any, bool] | None = None
        self._waiting = False
        self._over = False

    def start(self) -> None:
        t = self.transport
        self.request.write(b"")  # the status line and headers, into the transport's buffer
        if t.disconnected or request_gone(self.request):
            self._end(False)
            return
        self._saved = _twisted.take_producer(t)
        t.registerProducer(self, False)  # calls resumeProducing now

    def resumeProducing(self) -> None:
        if self._over or self._waiting:
            return
        t = self.transport
        if _twisted.write_buffered(t):
            t.startWriting()  # doWrite flushes, then calls us again
            return
        sock = _twisted.socket_of(t).fileno()
        sent = 0
        while self.offset < self.end:
            if self.source.failed:
                self._fail("source failed")
                return
            limit = self.source.limit(self.end)
            if limit <= self.offset:
                self._waiting = True
                self.source.wait().addCallback(self._more)
                return
            try:
                n = os.sendfile(sock, self.source.fd, self.offset, min(limit - self.offset, SENDFILE_TURN))
            except BlockingIOError:
                t.startWriting()
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    log.warn("sendfile failed: {error}", error=str(e))
                self._fail(str(e))
                return
            if n == 0:
                self._fail("file shorter than announced")
                return
            self.offset += n
            sent += n
            if sent >= SENDFILE_TURN and self.offset < self.end:
                t.startWriting()  # let other connections have a turn
                return
        self._restore()
        self.request.channel.resetTimeout()
        self.request.finish()
        self._end(True)

    def _more(self, _: object) -> None:
        self._waiting = False
        if not self._over:
            self.resumeProducing()

    def stopProducing(self) -> None:
        # The connection was lost.
        self._end(False)

    def _restore(self) -> None:
        t = self.transport
        if self._saved is not None and _twisted.holds_producer(t, self):
            _twisted.give_back_producer(t, self._saved)
        self._saved = None

    def _fail(self, why: str) -> None:
        self._restore()
        self.transport.abortConnection()
        self._end(False)

    def _end(self, ok: bool) -> None:
        if self._over:
            return
        self._over = True
        if not self.done.called:
            self.done.callback(ok)


@implementer(IPushProducer)
class _ChunkProducer:
    def __init__(self, request: Any, source: _Source, offset: int, length: int,
                 done: defer.Deferred[bool]) -> None:
        self.request = request
        self.source = source
        self.offset = offset
        self.end = offset + length
        self.done = done
        self._paused = False
        self._stopped = False
        self._running = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._pump()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True
        if not self.done.called:
            self.done.callback(False)

    def _pump(self) -> None:
        if not self._running:
            self._running = True
            defer.ensureDeferred(self._loop()).addErrback(self._crash)

    def _crash(self, failure: Any) -> None:
        log.failure("sending a file failed", failure)
        self._abort()

    async def _loop(self) -> None:
        try:
            while not self._paused and not self._stopped and self.offset < self.end:
                if self.source.failed:
                    self._abort()
                    return
                self.end = self.source.final_end(self.end)
                if self.offset >= self.end:
                    break
                limit = self.source.limit(self.end)
                if limit <= self.offset:
                    await self.source.wait()
                    continue
                want = min(limit - self.offset, CHUNK)
                if self.source.fd is not None:
                    chunk = os.pread(self.source.fd, want, self.offset)
                else:
                    self.source.reader.seek(self.offset)
                    chunk = await self.source.reader.read(want)
                if self._stopped:
                    return
                if not chunk:
                    self._abort()
                    return
                self.offset += len(chunk)
                self.request.write(chunk)
            if self.offset >= self.end and not self._stopped:
                self._stopped = True
                self.request.unregisterProducer()
                self.request.finish()
                if not self.done.called:
                    self.done.callback(True)
        finally:
            self._running = False

    def _abort(self) -> None:
        self._stopped = True
        try:
            self.request.unregisterProducer()
        except Exception:
            pass
        _abort(self.request)
        if not self.done.called:
            self.done.callback(False)
