"""Blobs in a dict: the model implementation of IStorage, for tests.

It keeps the same semantics as the file system provider (checked keys,
nothing visible before commit, verified digests), answers with Deferreds that
have already fired, and has no file descriptors (``fileno()`` is None), so the
web layer's non-sendfile path gets exercised.  Everything lives in the
reactor thread; ``ingest`` reads the whole file there, which is fine for the
small files of tests and nothing else.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from pypicache.interfaces import IBlobInventory, IBlobReader, IBlobWriter, IProviderFactory, IStorage
from pypicache.model import BlobCheck, BlobInfo, BlobNotFound, HashMismatch
from pypicache.providers import ProviderContext, check_options
from pypicache.providers.storage.keys import check_key

__all__ = ["MemoryStorage", "MemoryBlobWriter", "MemoryBlobReader", "factory"]


@implementer(IStorage, IBlobInventory)
class MemoryStorage:
    """``blobs`` maps sha256 -> bytes; tests may inspect it, and replace a
    value to play bit rot for the scrub (IBlobInventory)."""

    #: Memory does not decay unnoticed: no background scrub by default.
    scrub_rate = 0

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def _store(self, sha256: str, data: bytes) -> BlobInfo:
        self.blobs.setdefault(sha256, data)
        return BlobInfo(sha256=sha256, size=len(data))

    def open_write(self, expected_sha256: str | None) -> "MemoryBlobWriter":
        if expected_sha256 is not None:
            check_key(expected_sha256)
        return MemoryBlobWriter(self, expected_sha256)

    def ingest(self, path: str | os.PathLike[str], sha256: str) -> defer.Deferred[BlobInfo]:
        """Read the file at ``path`` in, then delete it.

        Unlike the file system provider this checks the caller's digest (a
        test double that is strict catches caller bugs); on a mismatch it
        fails with HashMismatch and leaves the file where it is.
        """
        check_key(sha256)
        try:
            data = Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                raise HashMismatch(f"expected sha256 {sha256}, got {digest}")
            info = self._store(sha256, data)
            os.unlink(path)
        except Exception:
            return defer.fail()
        return defer.succeed(info)

    def open_read(self, sha256: str) -> defer.Deferred["MemoryBlobReader"]:
        check_key(sha256)
        if sha256 not in self.blobs:
            return defer.fail(BlobNotFound(sha256))
        return defer.succeed(MemoryBlobReader(self.blobs[sha256]))

    def exists(self, sha256: str) -> defer.Deferred[bool]:
        check_key(sha256)
        return defer.succeed(sha256 in self.blobs)

    def size(self, sha256: str) -> defer.Deferred[int]:
        check_key(sha256)
        if sha256 not in self.blobs:
            return defer.fail(BlobNotFound(sha256))
        return defer.succeed(len(self.blobs[sha256]))

    def delete(self, sha256: str) -> defer.Deferred[None]:
        check_key(sha256)
        self.blobs.pop(sha256, None)
        return defer.succeed(None)

    # ------------------------------------------------------ IBlobInventory

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        return iter([(sha, len(data)) for sha, data in sorted(self.blobs.items())])

    def check_blob(self, sha256: str, remove_corrupt: bool = False,
                   pace: Callable[[int], defer.Deferred[None]] | None = None) -> defer.Deferred[BlobCheck]:
        check_key(sha256)
        data = self.blobs.get(sha256)
        if data is None:
            return defer.succeed(BlobCheck(sha256, "missing"))
        actual = hashlib.sha256(data).hexdigest()
        if actual == sha256:
            result = BlobCheck(sha256, "ok", size=len(data), actual=actual)
        else:
            removed = remove_corrupt and self.blobs.pop(sha256, None) is not None
            result = BlobCheck(sha256, "corrupt", size=len(data), actual=actual, removed=removed)
        if pace is None:
            return defer.succeed(result)
        return pace(len(data)).addCallback(lambda _: result)


@implementer(IBlobWriter)
class MemoryBlobWriter:
    """Collects chunks; the blob appears in the storage only on commit."""

    def __init__(self, storage: MemoryStorage, expected: str | None) -> None:
        self._storage = storage
        self._expected = expected
        self._chunks: list[bytes] = []
        self._state = "open"

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"blob writer is {self._state}")

    def write(self, data: bytes) -> None:
        self._check_open()
        self._chunks.append(bytes(data))

    def commit(self) -> defer.Deferred[BlobInfo]:
        try:
            self._check_open()
            data = b"".join(self._chunks)
            self._chunks = []
            digest = hashlib.sha256(data).hexdigest()
            if self._expected is not None and digest != self._expected:
                self._state = "failed"
                raise HashMismatch(f"expected sha256 {self._expected}, got {digest}")
        except Exception:
            return defer.fail(Failure())
        self._state = "committed"
        return defer.succeed(self._storage._store(digest, data))

    def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._chunks = []


@implementer(IBlobReader)
class MemoryBlobReader:
    """Reads from the bytes the blob had when opened (a later delete does
    not disturb an open reader, as with files)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._closed = False
        self.size: int = len(data)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("blob reader is closed")

    def seek(self, offset: int) -> None:
        self._check_open()
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        self._pos = offset

    def read(self, length: int) -> defer.Deferred[bytes]:
        try:
            self._check_open()
        except ValueError:
            return defer.fail()
        chunk = self._data[self._pos:self._pos + max(length, 0)]
        self._pos += len(chunk)
        return defer.succeed(chunk)

    def fileno(self) -> None:
        return None

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "MemoryBlobReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@implementer(IProviderFactory)
class MemoryStorageFactory:
    """``provider = "memory"``: no options; everything is lost on exit."""

    kind = "storage"

    def create(self, options: Mapping[str, Any], context: ProviderContext) -> MemoryStorage:
        check_options("storage", options, {})
        return MemoryStorage()


factory = MemoryStorageFactory()
