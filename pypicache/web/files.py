"""``/files/<project>/<filename>`` and its PEP 658 ``.metadata`` sibling.

A stored file is answered from storage with Range, HEAD, a strong ETag (its
sha256) and immutable cache headers.  An uncached file (proxy view only) is
fetched once from the upstream while every client asking for it streams along
(pypicache.downloads).  The filename is only ever used to look a record up in
the index: storage is addressed by sha256, so no client string reaches a path.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource

from pypicache.downloads import Downloader
from pypicache.mirror import Mirror, UpstreamUnavailable
from pypicache.model import (
    BlobNotFound,
    FileRecord,
    HashMismatch,
    InvalidName,
    UpstreamError,
    UpstreamNotFound,
    normalize,
)
from pypicache.stats import Stats
from pypicache.web.sending import send_body
from pypicache.web.util import HTTPError, handle

log = Logger()

_BAD_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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


class Files(Resource):
    """Serves distribution files and their metadata."""

    isLeaf = True

    def __init__(self, mirror: Mirror, downloader: Downloader, storage: Any, *, local: bool,
                 stats: Stats | None = None) -> None:
        super().__init__()
        self.stats = stats if stats is not None else Stats()
        self.mirror = mirror
        self.downloader = downloader
        self.storage = storage
        self.local = local

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

        record, metadata = await self._find(project, filename)
        if record is None:
            raise HTTPError(404, f"no such file: {project}/{filename}")
        if metadata:
            await self._serve_metadata(request, project, record)
        else:
            await self._serve_file(request, project, record)

    async def _find(self, project: str, filename: str) -> tuple[FileRecord | None, bool]:
        """The record for ``filename`` (or the file whose metadata it is)."""

        def lookup(rec: Any) -> tuple[FileRecord | None, bool]:
            if rec is None:
                return None, False
            found = rec.file(filename)
            if found is not None:
                return found, False
            if filename.endswith(".metadata"):
                base = rec.file(filename[: -len(".metadata")])
                if base is not None and base.core_metadata is not None:
                    return base, True
            return None, False

        found = lookup(await self.mirror.load(project))
        if found[0] is None and self.allow_upstream:
            # A link from a page we have not seen yet (or an older copy): ask once.
            try:
                result = await self.mirror.project(project)
            except UpstreamUnavailable as e:
                raise HTTPError(503, f"upstream unavailable: {e.reason}",
                                {b"retry-after": str(e.retry_after).encode()}) from None
            found = lookup(result.record if result is not None else None)
        if self.local and found[0] is not None and not (found[0].metadata_stored if found[1] else found[0].stored):
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
                await self._send_blob(request, reader, record.sha256, b"application/octet-stream")
                return
        if not self.allow_upstream:
            raise HTTPError(404, f"{project}/{record.filename} is not stored here")
        transfer = self.downloader.transfer_for(project, record.filename)
        if transfer is None:
            try:
                transfer = await self.downloader.start(project, record)
            except UpstreamNotFound:
                raise HTTPError(404, f"upstream has no {record.filename}") from None
            except UpstreamError as e:
                raise HTTPError(502, f"upstream failed for {record.filename}: {e}",
                                {b"retry-after": b"30"}) from None
        self.stats.file_misses += 1
        if request.getHeader(b"range"):
            # Ranges need the end of the file (suffix ranges): wait until stored.
            blob = await transfer.stored
            if blob is None:
                raise HTTPError(502, f"upstream failed for {record.filename}")
            reader = await self.storage.open_read(blob.sha256)
            await self._send_blob(request, reader, blob.sha256, b"application/octet-stream")
            return
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
        if sha is None:
            if not self.allow_upstream:
                raise HTTPError(404, f"metadata of {record.filename} is not stored here")
            try:
                sha = await self.downloader.fetch_metadata(project, record)
            except UpstreamNotFound:
                raise HTTPError(404, f"upstream has no metadata for {record.filename}") from None
            except HashMismatch:
                raise HTTPError(502, f"upstream metadata for {record.filename} failed verification") from None
            except UpstreamError as e:
                raise HTTPError(502, f"upstream failed for {record.filename}.metadata: {e}",
                                {b"retry-after": b"30"}) from None
        try:
            reader = await self.storage.open_read(sha)
        except BlobNotFound:
            raise HTTPError(404, f"metadata of {record.filename} is missing from storage") from None
        await self._send_blob(request, reader, sha, b"application/octet-stream")
