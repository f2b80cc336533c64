"""Fetching files from the upstream into storage, with clients following along.

One :class:`Transfer` per file being fetched: the upstream body is written to a
spool file as it arrives, and every client asking for that file (the first one
and any that arrive later) streams from the spool at its own pace.  So:

* concurrent first requests cause exactly one upstream download;
* a slow or vanished client neither slows nor stops the download (the cache
  still gets the file);
* memory stays flat: bytes go upstream -> page cache -> socket.

The last byte is only released to clients once the sha256 matched; on a
mismatch or a short body, clients' connections are aborted (never ended
cleanly) and nothing is stored.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pypicache.errors import DiskFull
from pypicache.services.mirror import Coalescer
from pypicache.services.traffic import Traffic
from pypicache.model import BlobInfo, FileRecord, HashMismatch, UpstreamError

log = Logger()


def is_disk_full(error: BaseException) -> bool:
    """True for an OSError saying the disk (or the quota) is full."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


class Transfer:
    """One upstream download in flight, readable while it is written."""

    def __init__(self, project: str, record: FileRecord, spool: Path) -> None:
        self.project = project
        self.record = record
        self.filename = record.filename
        self.spool = spool
        self.length: int | None = record.size
        self.written = 0
        self.verified = False
        self.failure: Exception | None = None
        self.stored: defer.Deferred[BlobInfo | None] = defer.Deferred()
        self._watchers: list[defer.Deferred[None]] = []
        self._read_fd: int | None = None
        self._refs = 0
        self._done = False

    # --------------------------------------------------------- for followers
    @property
    def available(self) -> int:
        """Bytes a client may send now.  The final byte waits for the hash."""
        if self.verified:
            return self.written
        if self.length is not None:
            return min(self.written, self.length - 1)
        return self.written

    @property
    def fd(self) -> int:
        assert self._read_fd is not None
        return self._read_fd

    def acquire(self) -> None:
        self._refs += 1

    def release(self) -> None:
        self._refs -= 1
        self._maybe_close()

    def wait(self) -> defer.Deferred[None]:
        """Fires when more bytes are available, the transfer ends or fails."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.failure is not None or self._done:
            d.callback(None)
        else:
            self._watchers.append(d)
        return d

    # ------------------------------------------------------------ internals
    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            d.callback(None)

    def _maybe_close(self) -> None:
        if self._done and self._refs <= 0 and self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def _finish(self) -> None:
        self._done = True
        self._notify()
        self._maybe_close()


class Downloader:
    """Starts and tracks transfers; stores what verified."""

    def __init__(self, *, storage: Any, index: Any, upstream: Any, spool_dir: Path,
                 max_metadata_bytes: int = 16 * 1024 * 1024, traffic: Traffic | None = None) -> None:
        self.storage = storage
        self.index = index
        self.upstream = upstream
        self.spool_dir = spool_dir
        self.max_metadata_bytes = max_metadata_bytes
        self._transfers: dict[tuple[str, str], Transfer] = {}
        #: Upstream latency, errors and coalesced downloads (``/metrics``).
        self.traffic = traffic if traffic is not None else Traffic()
        self.traffic.in_flight = lambda: len(self._transfers)
        self._starting: Coalescer[Transfer] = Coalescer(lambda: self.traffic.joined("file"))
        self._metadata: Coalescer[str] = Coalescer(lambda: self.traffic.joined("file"))
        #: METADATA blobs stored and answered whose index mark has not landed
        #: yet: their sha256 (so a repeat request needs no second fetch) and
        #: the marks in flight (so shutdown can wait for them).
        self._metadata_unmarked: dict[tuple[str, str], str] = {}
        self._metadata_marks: set[defer.Deferred[None]] = set()
        #: Files whose storing failed for lack of space: logged once each,
        #: forgotten as soon as anything is stored again.
        self._disk_full: set[tuple[str, str]] = set()
        spool_dir.mkdir(0o700, parents=True, exist_ok=True)  # partial files: the server's user only
        for leftover in spool_dir.iterdir():  # partial downloads from a crash
            try:
                leftover.unlink()
            except OSError:
                pass

    def settle(self, clock: Any, timeout: float) -> defer.Deferred[None]:
        """Fires once every transfer whose bytes are verified has been stored
        and indexed (and every stored METADATA blob indexed), or after
        ``timeout`` seconds.

        For shutdown: a file that clients already received whole should not
        be left as an orphan blob (stored but not indexed) because the index
        closed under it.  Transfers still downloading are not waited for;
        closing the upstream ends them.
        """
        storing = [t.stored for t in self._transfers.values() if t.verified and not t.stored.called]
        storing += list(self._metadata_marks)
        done: defer.Deferred[None] = defer.Deferred()
        if not storing:
            done.callback(None)
            return done
        left = [len(storing)]

        def one_more(result: Any) -> Any:  # observe without consuming the result
            left[0] -= 1
            if left[0] == 0 and not done.called:
                done.callback(None)
            return result

        for stored in storing:
            stored.addBoth(one_more)
        timer = clock.callLater(timeout, lambda: done.called or done.callback(None))
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        log.info("waiting up to {timeout}s for {n} verified file(s) to be stored", timeout=timeout,
                 n=len(storing))
        return done

    def transfer_for(self, project: str, filename: str) -> Transfer | None:
        return self._transfers.get((project, filename))

    async def start(self, project: str, record: FileRecord) -> Transfer:
        """The transfer of ``record``, started if needed, once headers arrived.

        Raises UpstreamError / UpstreamNotFound when the upstream refuses.
        """
        key = (project, record.filename)
        existing = self._transfers.get(key)
        if existing is not None:
            self.traffic.joined("file")
            return existing
        return await self._starting.run(key, lambda: self._open(project, record))

    async def _open(self, project: str, record: FileRecord) -> Transfer:
        download = await self.traffic.timed("file", lambda: self.upstream.open_file(record.url))
        if record.size is not None and download.length is not None and download.length != record.size:
            download.cancel()
            error = UpstreamError(f"{record.filename}: upstream sends {download.length} bytes, "
                                  f"the page says {record.size}")
            self.traffic.upstream_error("file", error)
            raise error
        spool = self.spool_dir / f"{uuid.uuid4().hex}.part"
        transfer = Transfer(project, record, spool)
        if transfer.length is None:
            transfer.length = download.length
        try:
            write_fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                transfer._read_fd = os.open(spool, os.O_RDONLY)
            except BaseException:
                os.close(write_fd)
                raise
        except OSError as e:
            download.cancel()
            self._unlink(spool)
            self._storage_failed(project, record.filename, "spooling", e)
            if not is_disk_full(e):
                raise
            raise DiskFull(f"{record.filename}: cannot spool it: {e.strerror or e}") from None
        self._transfers[(project, record.filename)] = transfer
        defer.ensureDeferred(self._run(transfer, download, write_fd))
        return transfer

    async def _run(self, transfer: Transfer, download: Any, write_fd: int) -> None:
        hasher = hashlib.sha256()
        record = transfer.record
        limit = transfer.length

        def write(chunk: bytes) -> None:
            if limit is not None and transfer.written + len(chunk) > limit:
                raise UpstreamError(f"{record.filename}: upstream sent more than {limit} bytes")
            view = memoryview(chunk)
            while view:
                n = os.write(write_fd, view)
                view = view[n:]
            hasher.update(chunk)
            transfer.written += len(chunk)
            transfer._notify()

        try:
            try:
                await download.deliver(write)
            finally:
                os.close(write_fd)
            digest = hasher.hexdigest()
            if limit is not None and transfer.written != limit:
                raise UpstreamError(f"{record.filename}: upstream sent {transfer.written} of {limit} bytes")
            expected = record.sha256
            if expected is not None and digest != expected:
                raise HashMismatch(f"{record.filename}: sha256 {digest} differs from the page's {expected}")
        except Exception as e:
            if not isinstance(e, OSError):  # our spool's failure is not the upstream's
                self.traffic.upstream_error("file", e)
            if isinstance(e, HashMismatch):
                log.error("not caching {project}/{filename}: {error}", project=transfer.project,
                          filename=record.filename, error=str(e))
            elif is_disk_full(e):  # writing the spool: our disk, not the upstream
                self._storage_failed(transfer.project, record.filename, "spooling", e)
            else:
                log.warn("download of {project}/{filename} failed: {error}", project=transfer.project,
                         filename=record.filename, error=str(e))
            transfer.failure = e
            self._discard(transfer)
            transfer.stored.callback(None)
            return
        transfer.length = transfer.written
        transfer.verified = True
        transfer._notify()
        try:
            blob = await self.storage.ingest(transfer.spool, digest)
            await self.index.mark_stored(transfer.project, record.filename, blob)
            log.info("cached {project}/{filename} ({size} bytes)", project=transfer.project,
                     filename=record.filename, size=blob.size)
            self._stored_again()
        except Exception as e:
            self._storage_failed(transfer.project, record.filename, "storing", e)
            blob = None
            self._unlink(transfer.spool)
        self._transfers.pop((transfer.project, record.filename), None)
        transfer._finish()
        transfer.stored.callback(blob)

    def _storage_failed(self, project: str, filename: str, doing: str, error: BaseException) -> None:
        """Log a failure of our own disk in one line; a full disk once per file.

        A full disk makes every new file fail the same way: one line per file
        says what is not cached without burying the log in repeats.
        """
        if not is_disk_full(error):
            log.error("{doing} {project}/{filename} failed; it is not cached: {error}", doing=doing,
                      project=project, filename=filename, error=repr(error))
            return
        key = (project, filename)
        if key in self._disk_full:
            log.debug("{doing} {project}/{filename}: disk still full", doing=doing, project=project,
                      filename=filename)
            return
        if len(self._disk_full) < 100_000:
            self._disk_full.add(key)
        log.error("disk full: {doing} {project}/{filename} failed, so it is not cached "
                  "(cached files are still served): {error}", doing=doing, project=project,
                  filename=filename, error=error.strerror or str(error))

    def _stored_again(self) -> None:
        if self._disk_full:
            log.info("storing works again ({count} file(s) failed while the disk was full)",
                     count=len(self._disk_full))
            self._disk_full.clear()

    def _discard(self, transfer: Transfer) -> None:
        self._transfers.pop((transfer.project, transfer.filename), None)
        self._unlink(transfer.spool)
        transfer._finish()

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    # -------------------------------------------------------------- metadata
    async def fetch_metadata(self, project: str, record: FileRecord) -> str:
        """Fetch, verify and store a file's PEP 658 METADATA; its sha256.

        Returns once the blob is stored (verified and durable), before the
        index has recorded it: in a cold install every METADATA request would
        otherwise wait for the index writer, queued behind the page saves of
        the same install.  A crash in between leaves an orphan blob, which
        costs a re-fetch and which ``verify --repair`` removes; nothing wrong
        is ever served.
        """
        key = (project, record.filename)
        unmarked = self._metadata_unmarked.get(key)
        if unmarked is not None:
            return unmarked
        return await self._metadata.run(key, lambda: self._fetch_metadata(project, record))

    async def _fetch_metadata(self, project: str, record: FileRecord) -> str:
        download = await self.traffic.timed("file", lambda: self.upstream.open_file(record.url + ".metadata"))
        if download.length is not None and download.length > self.max_metadata_bytes:
            download.cancel()
            raise UpstreamError(f"{record.filename}.metadata: {download.length} bytes is too large")
        try:
            writer = self.storage.open_write(record.metadata_sha256)
        except OSError as e:
            download.cancel()
            if not is_disk_full(e):
                raise
            self._storage_failed(project, record.filename + ".metadata", "storing", e)
            raise DiskFull(f"{record.filename}.metadata: cannot store it: {e.strerror or e}") from None
        received = 0

        def write(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > self.max_metadata_bytes:
                raise UpstreamError(f"{record.filename}.metadata: too large")
            writer.write(chunk)

        try:
            await download.deliver(write)
            blob = await writer.commit()
        except HashMismatch as e:
            writer.abort()
            self.traffic.upstream_error("file", e)
            log.error("not caching {project}/{filename}.metadata: {error}", project=project,
                      filename=record.filename, error=str(e))
            raise
        except OSError as e:
            writer.abort()
            if not is_disk_full(e):
                raise
            self._storage_failed(project, record.filename + ".metadata", "storing", e)
            raise DiskFull(f"{record.filename}.metadata: cannot store it: {e.strerror or e}") from None
        except BaseException:
            writer.abort()
            raise
        key = (project, record.filename)
        self._metadata_unmarked[key] = blob.sha256
        mark = defer.ensureDeferred(self._mark_metadata(project, record.filename, blob.sha256))
        if not mark.called:
            self._metadata_marks.add(mark)
            mark.addBoth(lambda _: self._metadata_marks.discard(mark))
        return blob.sha256

    async def _mark_metadata(self, project: str, filename: str, sha256: str) -> None:
        """Record a stored METADATA blob in the index (in the background)."""
        try:
            await self.index.mark_metadata_stored(project, filename, sha256)
        except Exception as e:
            log.error("indexing {project}/{filename}.metadata failed; it will be fetched again: {error}",
                      project=project, filename=filename, error=repr(e))
        finally:
            self._metadata_unmarked.pop((project, filename), None)
