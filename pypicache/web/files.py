"""``/files/<project>/<filename>``, its PEP 658 ``.metadata`` and its PEP
740 ``.provenance`` siblings.

A stored file is answered from storage with Range, HEAD, a strong ETag (its
sha256) and immutable cache headers.  An uncached file (proxy view only) is
fetched once from the upstream while every client asking for it streams along
(pypicache.services.downloads).  The filename is only ever used to look a record up in
the index: storage is addressed by sha256, so no client string reaches a path.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from pypicache.services import cooldown
from pypicache.services.downloads import Downloader
from pypicache.services.mirror import Mirror, UpstreamUnavailable, retry_after_seconds
from pypicache.model import (
    BlobNotFound,
    FileRecord,
    HashMismatch,
    InvalidName,
    UpstreamError,
    UpstreamNotFound,
    normalize,
)
from pypicache.services.stats import Stats
from pypicache.errors import CircuitOpen, DiskFull
from pypicache.services.visibility import LOCAL, visible
from pypicache.web.render import PROVENANCE_SUFFIX, has_provenance
from pypicache.web.sending import send_body
from pypicache.web.auth import client_of
from pypicache.web.simple import project_allowed
from pypicache.web.util import HTTPError, handle, refused

log = Logger()

_BAD_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: PEP 740's media type (pypicache.services.provenance.CONTENT_TYPE).
_PROVENANCE_TYPE = b"application/vnd.pypi.integrity.v1+json"
#: What ``_find`` says is asked for a ``<filename>.provenance`` URL.
PROVENANCE = "provenance"
#: Default of Files.range_wait: well inside pip's (15 s) and uv's (30 s) timeouts.
RANGE_WAIT = 5.0


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None | str:
    """(start, length) for a single satisfiable byte range; None to send the
    whole file (no header, or one we do not handle such as several ranges);
    the string "unsatisfiable" for a 416."""
    if not header:
        return None
    m = _RANGE.match(header.decode("latin-1").strip().replace(" ", ""))
    if m is None:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        n = min(n, size)
        return size - n, n
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end - start + 1


def _disk_full(filename: str, error: DiskFull) -> HTTPError:
    """The answer when there is no room to cache a file (the downloader has
    logged it already): 507, come back in a minute."""
    return HTTPError(507, f"cannot cache {filename} now: {error}", {b"retry-after": b"60"})


def _upstream_failed(project: str, filename: str, error: UpstreamError) -> HTTPError:
    """The answer when the upstream could not start a file: 503 when the
    breaker did not even ask it, else 502; with the upstream's Retry-After."""
    if isinstance(error, CircuitOpen):
        code = 503
    else:
        code = 502
        log.warn("upstream failed for {project}/{filename}: {error}", project=project, filename=filename,
                 error=str(error))
    return HTTPError(code, f"upstream failed for {filename}: {error}",
                     {b"retry-after": str(retry_after_seconds(error)).encode()})


class Files(Resource):
    """Serves distribution files and their metadata."""

    isLeaf = True

    def __init__(self, mirror: Mirror, downloader: Downloader, storage: Any, *, local: bool,
                 stats: Stats | None = None, policy: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        #: The current ``[policy]`` (``app.policy``): its cooldown holds files back.
        self.policy = policy
        self.stats = stats if stats is not None else Stats()
        self.mirror = mirror
        self.downloader = downloader
        self.storage = storage
        self.local = local
        #: How long a Range request on a file still downloading waits for it
        #: to be stored before it is answered with the whole file instead.
        self.range_wait = RANGE_WAIT

    @property
    def allow_upstream(self) -> bool:
        return not self.local and not self.mirror.offline

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._serve(request))

    render_HEAD = render_GET

    async def _serve(self, request: Any) -> None:
        post = request.postpath
        if len(post) != 2:
            raise HTTPError(404, "not found")
        try:
            raw_project = post[0].decode("utf-8")
            filename = post[1].decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(404, "not found") from None
        if not filename or len(filename) > 255 or filename.startswith(".") or _BAD_FILENAME.search(filename):
            raise HTTPError(404, "not found")
        try:
            project = normalize(raw_project)
        except InvalidName:
            raise HTTPError(404, "not found") from None

        rules = self.mirror.blocklist.rules
        allowed = project_allowed(rules, project)
        record, metadata = await self._find(project, filename, allowed)
        if record is None or not (allowed or record.origin == LOCAL):
            if not allowed:
                raise refused(404, f"not proxied by policy: {project} is not in policy.allow_only")
            raise HTTPError(404, f"no such file: {project}/{filename}")
        if rules.active:
            reason = rules.file_reason(project, record.filename)
            if reason is not None:  # cached or not: a known-bad file is never served
                self.mirror.blocklist.denied(project, record.filename, reason, client_of(request) or "")
                raise refused(403, reason)
        until = cooldown.held_until(self.policy(), project, record, self.mirror.clock.seconds())
        if until is not None:
            why = cooldown.reason(until)
            raise HTTPError(404, f"{record.filename} is held back by the release cooldown ({why})",
                            {b"x-pypicache-reason": why.encode()})
        if metadata == PROVENANCE:
            await self._serve_provenance(request, project, record)
        elif metadata:
            await self._serve_metadata(request, project, record)
        else:
            await self._serve_file(request, project, record)

    async def _find(self, project: str, filename: str, allowed: bool = True) -> tuple[FileRecord | None, Any]:
        """The record for ``filename`` (or the file whose metadata or
        provenance it is), and what is asked: False (the file), True (its
        METADATA) or :data:`PROVENANCE`; not ``allowed`` by the policy:
        never asks the upstream."""

        merged = project in self.mirror.merge

        def lookup(rec: Any) -> tuple[FileRecord | None, Any]:
            # A file hidden by the visibility rule (an upstream file of a
            # private name) is as unknown here as on the pages.
            if rec is None:
                return None, False
            found = rec.file(filename)
            if found is not None:
                return (found, False) if visible(rec, found, merged=merged) else (None, False)
            if filename.endswith(".metadata"):
                base = rec.file(filename[: -len(".metadata")])
                if base is not None and base.core_metadata is not None and visible(rec, base, merged=merged):
                    return base, True
            if filename.endswith(PROVENANCE_SUFFIX):
                base = rec.file(filename[: -len(PROVENANCE_SUFFIX)])
                if base is not None and has_provenance(base) and visible(rec, base, merged=merged):
                    return base, PROVENANCE
            return None, False

        found = lookup(await self.mirror.load(project))
        if found[0] is None and self.allow_upstream and allowed:
            # A link from a page we have not seen yet (or an older copy): ask once.
            try:
                result = await self.mirror.project(project)
            except UpstreamUnavailable as e:
                raise HTTPError(503, f"upstream unavailable: {e.reason}",
                                {b"retry-after": str(e.retry_after).encode()}) from None
            found = lookup(result.record if result is not None else None)
        if self.local and found[0] is not None:
            kept = found[0].provenance_sha256 if found[1] == PROVENANCE else \
                found[0].metadata_stored if found[1] else found[0].stored
            if not kept:
                return None, False
        return found

    def _common_headers(self, request: Any, sha256: str | None, content_type: bytes) -> None:
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"accept-ranges", b"bytes")
        if sha256:
            request.setHeader(b"etag", f'"{sha256}"'.encode())
            request.setHeader(b"cache-control", b"max-age=31536000, public, immutable")

    async def _serve_file(self, request: Any, project: str, record: FileRecord) -> None:
        if record.stored and record.sha256:
            try:
                reader = await self.storage.open_read(record.sha256)
            except BlobNotFound:
                log.error("index says {project}/{filename} is stored but storage lacks it",
                          project=project, filename=record.filename)
            else:
                self.stats.file_hits += 1
                self.stats.note_project(project)
                await self._send_blob(request, reader, record.sha256, b"application/octet-stream")
                return
        if not self.allow_upstream or not record.url:  # an uploaded file has no upstream to refetch from
            raise HTTPError(404, f"{project}/{record.filename} is not stored here")
        transfer = self.downloader.transfer_for(project, record.filename)
        if transfer is None:
            try:
                transfer = await self.downloader.start(project, record)
            except UpstreamNotFound:
                raise HTTPError(404, f"upstream has no {record.filename}") from None
            except DiskFull as e:
                raise _disk_full(record.filename, e) from None
            except UpstreamError as e:
                raise _upstream_failed(project, record.filename, e) from None
        self.stats.file_misses += 1
        self.stats.note_project(project)
        if request.getHeader(b"range"):
            # Ranges need the end of the file (suffix ranges): wait until it is
            # stored, but not so long that the client gives up on us.
            blob = await self._stored_within(transfer, self.range_wait)
            if blob is not None:
                reader = await self.storage.open_read(blob.sha256)
                await self._send_blob(request, reader, blob.sha256, b"application/octet-stream")
                return
            if transfer.failure is not None or transfer.stored.called:
                raise HTTPError(502, f"upstream failed for {record.filename}", {b"retry-after": b"30"})
            # Still arriving: RFC 9110 lets a server ignore Range, and a whole
            # body that starts now beats a 206 after the client's timeout.
            log.info("{project}/{filename} still downloading after {wait}s: answering a Range request "
                     "with the whole file", project=project, filename=record.filename, wait=self.range_wait)
        self._common_headers(request, record.sha256, b"application/octet-stream")
        transfer.acquire()
        try:
            length = transfer.length  # None: sent chunked, ends when the transfer does
            if length is not None:
                request.setHeader(b"content-length", str(length).encode())
            if await send_body(request, offset=0, length=length, fd=transfer.fd, transfer=transfer):
                self.stats.bytes_from_upstream += transfer.written
        finally:
            transfer.release()

    async def _stored_within(self, transfer: Any, timeout: float) -> Any:
        """The transfer's BlobInfo once stored; None if it failed or is still
        running after ``timeout`` seconds.

        Observes ``transfer.stored`` without awaiting it directly: awaiting a
        Deferred replaces its result with None for every later waiter, so
        the second concurrent Range request would see a failed transfer.
        """
        waiter: defer.Deferred[Any] = defer.Deferred()

        def relay(result: Any) -> Any:
            if not waiter.called:
                waiter.callback(None if isinstance(result, Failure) else result)
            return result

        transfer.stored.addBoth(relay)
        timer = self.mirror.clock.callLater(timeout, lambda: waiter.called or waiter.callback(None))
        try:
            return await waiter
        finally:
            if timer.active():
                timer.cancel()

    async def _send_blob(self, request: Any, reader: Any, sha256: str, content_type: bytes) -> None:
        try:
            self._common_headers(request, sha256, content_type)
            size = reader.size
            wanted = parse_range(request.getHeader(b"range"), size)
            if wanted == "unsatisfiable":
                raise HTTPError(416, "range not satisfiable", {b"content-range": f"bytes */{size}".encode()})
            if wanted is None:
                offset, length = 0, size
            else:
                assert isinstance(wanted, tuple)
                offset, length = wanted
                request.setResponseCode(206)
                request.setHeader(b"content-range", f"bytes {offset}-{offset + length - 1}/{size}".encode())
            request.setHeader(b"content-length", str(length).encode())
            fd = reader.fileno()
            if await send_body(request, offset=offset, length=length, fd=fd,
                               reader=None if fd is not None else reader) and request.method != b"HEAD":
                self.stats.bytes_from_cache += length
        finally:
            reader.close()

    async def _serve_metadata(self, request: Any, project: str, record: FileRecord) -> None:
        sha = record.metadata_sha256 if record.metadata_stored else None
        if sha is not None:
            try:
                reader = await self.storage.open_read(sha)
            except BlobNotFound:
                # Quarantined as corrupt, or lost: fetch it again like a file
                # (an advertised METADATA answered 404 fails pip and uv).
                log.error("index says {project}/{filename}.metadata is stored but storage lacks it",
                          project=project, filename=record.filename)
            else:
                await self._send_blob(request, reader, sha, b"application/octet-stream")
                return
        if not self.allow_upstream or not record.url:
            raise HTTPError(404, f"metadata of {record.filename} is not stored here")
        try:
            sha = await self.downloader.fetch_metadata(project, record)
        except UpstreamNotFound:
            raise HTTPError(404, f"upstream has no metadata for {record.filename}") from None
        except HashMismatch:
            raise HTTPError(502, f"upstream metadata for {record.filename} failed verification",
                            {b"retry-after": b"30"}) from None
        except DiskFull as e:
            raise _disk_full(record.filename + ".metadata", e) from None
        except UpstreamError as e:
            raise _upstream_failed(project, record.filename + ".metadata", e) from None
        try:
            reader = await self.storage.open_read(sha)
        except BlobNotFound:
            raise HTTPError(404, f"metadata of {record.filename} is missing from storage") from None
        await self._send_blob(request, reader, sha, b"application/octet-stream")

    async def _serve_provenance(self, request: Any, project: str, record: FileRecord) -> None:
        """The PEP 740 provenance object: from storage, else fetched, checked
        against the file and stored (pypicache.services.provenance)."""
        sha = record.provenance_sha256
        if sha is not None:
            try:
                reader = await self.storage.open_read(sha)
            except BlobNotFound:
                log.error("index says {project}/{filename}.provenance is stored but storage lacks it",
                          project=project, filename=record.filename)
            else:
                await self._send_blob(request, reader, sha, _PROVENANCE_TYPE)
                return
        if not self.allow_upstream or not record.provenance:
            raise HTTPError(404, f"provenance of {record.filename} is not stored here")
        from pypicache.services.provenance import ProvenanceRejected  # rare: not loaded at start-up
        try:
            sha = await self.provenance.fetch(project, record)
        except UpstreamNotFound:
            raise HTTPError(404, f"upstream has no provenance for {record.filename}") from None
        except ProvenanceRejected as e:
            raise HTTPError(502, str(e), {b"retry-after": b"30"}) from None
        except DiskFull as e:
            raise _disk_full(record.filename + PROVENANCE_SUFFIX, e) from None
        except UpstreamError as e:
            raise _upstream_failed(project, record.filename + PROVENANCE_SUFFIX, e) from None
        try:
            reader = await self.storage.open_read(sha)
        except BlobNotFound:
            raise HTTPError(404, f"provenance of {record.filename} is missing from storage") from None
        await self._send_blob(request, reader, sha, _PROVENANCE_TYPE)

    @property
    def provenance(self) -> Any:
        """The :class:`~pypicache.services.provenance.ProvenanceFetcher`,
        made on first use from the downloader's providers."""
        fetcher = self.__dict__.get("_provenance")
        if fetcher is None:
            from pypicache.services.provenance import ProvenanceFetcher
            d = self.downloader
            fetcher = self.__dict__["_provenance"] = ProvenanceFetcher(
                storage=d.storage, index=d.index, upstream=d.upstream, traffic=d.traffic)
        return fetcher
