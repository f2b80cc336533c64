"""Blobs as files on a local file system, one file per sha256.

Layout under the root (``storage.path``)::

    <root>/ab/cd/abcd...64 hex   one file per blob, two levels of fan-out so
                                 no directory grows past a few thousand entries
    <root>/.tmp/                 files being written; same file system as the
                                 blobs, so ``os.replace`` into place is atomic

A blob appears under its final name only once its bytes are complete, verified
and (with ``fsync = true``) durable.  Anything left in ``.tmp/`` after a crash
is deleted when the storage is created, which is how no partial file ever
survives.  That clean-up assumes one server per root: two processes sharing a
root would delete each other's in-flight files at start-up.

Keys are checked with :func:`pypicache.model.is_sha256` before any path is
built, so a client-supplied string never reaches the file system.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pypicache.interfaces import IBlobReader, IBlobWriter, IProviderFactory, IStorage
from pypicache.model import BlobInfo, BlobNotFound, HashMismatch, is_sha256
from pypicache.providers import ProviderContext, check_options

__all__ = ["FilesystemStorage", "FileBlobWriter", "FileBlobReader", "factory"]

log = Logger()

_T = TypeVar("_T")

#: Indirection so tests can simulate a rename across file systems (EXDEV).
_replace = os.replace

_COPY_CHUNK = 1024 * 1024


def check_key(sha256: object) -> str:
    """Return ``sha256`` if it is a valid key, else raise ValueError.

    Called first by every method taking a key: nothing else may be done with
    an unchecked string (it could be ``../../etc/passwd``).
    """
    # The length check guards against a trailing newline, which a ``$``
    # anchored pattern would let through.
    if not is_sha256(sha256) or len(sha256) != 64:  # type: ignore[arg-type]
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256  # type: ignore[return-value]


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (and platforms) cannot fsync a directory; the
        # rename is still atomic there, just not guaranteed durable.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(IStorage)
class FilesystemStorage:
    """Content-addressed blobs under ``root``; see the module docstring.

    Slow work (fsync, renames, copies, unlinks of big files) runs in the
    context's thread pool; opening, stat-ing and small reads and writes are
    done directly because they are single cheap system calls.
    """

    def __init__(self, root: Path, reactor: Any, threadpool: Any, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.fsync = fsync
        self._reactor = reactor
        self._threadpool = threadpool
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self._remove_leftovers()

    # ----------------------------------------------------------------- helpers

    def _remove_leftovers(self) -> None:
        """Delete whatever a crashed process left half-written in ``.tmp``."""
        count = 0
        for entry in os.scandir(self.tmp):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                _unlink_quietly(Path(entry.path))
            count += 1
        if count:
            log.info("removed {count} leftover temporary file(s) from {tmp}", count=count, tmp=str(self.tmp))

    def _in_thread(self, f: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        return deferToThreadPool(self._reactor, self._threadpool, f, *args)

    def path_of(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it exists).

        Not part of IStorage: the web layer uses it for a zero-copy fast path.
        """
        check_key(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _new_temp(self) -> tuple[Path, int]:
        """A fresh, exclusively created file in ``.tmp`` (path, fd)."""
        while True:
            path = self.tmp / f"{secrets.token_hex(16)}.part"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # pragma: no cover - 128 random bits
                continue
            return path, fd

    def _make_parents(self, target: Path) -> None:
        """Create the two fan-out directories, durably when fsync is on."""
        for directory in (target.parent.parent, target.parent):
            try:
                os.mkdir(directory)
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(directory.parent)

    def _place(self, source: Path, sha256: str, size: int) -> BlobInfo:
        """Move a complete (and already fsynced) file in ``.tmp`` or on the
        same file system into place.  Runs in the thread pool.

        A blob that already exists with the same size is kept and ``source``
        dropped: same key, same bytes.  A different size can only be a blob
        damaged outside our control (say, written with fsync off before a power
        cut), so the new, verified bytes replace it.
        """
        target = self.path_of(sha256)
        try:
            existing = os.stat(target).st_size
        except FileNotFoundError:
            existing = None
        if existing == size:
            _unlink_quietly(source)
            return BlobInfo(sha256=sha256, size=size)
        self._make_parents(target)
        _replace(source, target)
        if self.fsync:
            _fsync_dir(target.parent)
        return BlobInfo(sha256=sha256, size=size)

    # ------------------------------------------------------------------ IStorage

    def open_write(self, expected_sha256: str | None) -> "FileBlobWriter":
        if expected_sha256 is not None:
            check_key(expected_sha256)
        path, fd = self._new_temp()
        return FileBlobWriter(self, path, os.fdopen(fd, "wb"), expected_sha256)

    def ingest(self, path: str | os.PathLike[str], sha256: str) -> defer.Deferred[BlobInfo]:
        """Take over the complete file at ``path`` as the blob ``sha256``.

        The caller vouches for the digest: it hashed the bytes while writing
        them (the download spool), so hashing them again here would only read
        the whole file a second time.  ``path`` is gone afterwards.
        """
        check_key(sha256)
        return self._in_thread(self._ingest, Path(path), sha256)

    def _ingest(self, source: Path, sha256: str) -> BlobInfo:
        if self.fsync:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        else:
            size = os.stat(source).st_size
        try:
            return self._place(source, sha256, size)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        # Another file system: copy next to the blobs, then rename atomically.
        temp, fd = self._new_temp()
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
            info = self._place(temp, sha256, size)
        except BaseException:
            _unlink_quietly(temp)
            raise
        _unlink_quietly(source)
        return info

    def open_read(self, sha256: str) -> defer.Deferred["FileBlobReader"]:
        path = self.path_of(sha256)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return defer.fail(BlobNotFound(sha256))
        return defer.succeed(FileBlobReader(fd))

    def exists(self, sha256: str) -> defer.Deferred[bool]:
        return defer.succeed(self.path_of(sha256).is_file())

    def size(self, sha256: str) -> defer.Deferred[int]:
        path = self.path_of(sha256)
        try:
            return defer.succeed(os.stat(path).st_size)
        except FileNotFoundError:
            return defer.fail(BlobNotFound(sha256))

    def delete(self, sha256: str) -> defer.Deferred[None]:
        # The fan-out directories are kept: removing them could race with a
        # commit that has just created them.  Unlinking a big file can take a
        # while on some file systems, hence the thread.
        return self._in_thread(_unlink_quietly, self.path_of(sha256))


@implementer(IBlobWriter)
class FileBlobWriter:
    """Writes into a temporary file in ``.tmp``, hashing as it goes.

    States: open -> committing -> committed, or -> aborted.  ``write`` and
    ``commit`` are only allowed while open; ``abort`` is always allowed and
    only acts while open (a commit in progress cleans up after itself).
    """

    def __init__(self, storage: FilesystemStorage, path: Path, file: Any, expected: str | None) -> None:
        self._storage = storage
        self._path = path
        self._file = file
        self._expected = expected
        self._hash = hashlib.sha256()
        self._size = 0
        self._state = "open"

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"blob writer is {self._state}")

    def write(self, data: bytes) -> None:
        self._check_open()
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> defer.Deferred[BlobInfo]:
        try:
            self._check_open()
        except RuntimeError:
            return defer.fail()
        self._state = "committing"
        d = self._storage._in_thread(self._finish)

        def done(result: Any) -> Any:
            # On failure _finish already removed the temporary file.
            self._state = "failed" if isinstance(result, Failure) else "committed"
            return result

        return d.addBoth(done)

    def _finish(self) -> BlobInfo:
        """Runs in the thread pool: flush, verify, move into place."""
        try:
            self._file.flush()
            if self._storage.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            digest = self._hash.hexdigest()
            if self._expected is not None and digest != self._expected:
                raise HashMismatch(f"expected sha256 {self._expected}, got {digest}")
            return self._storage._place(self._path, digest, self._size)
        except BaseException:
            self._file.close()
            _unlink_quietly(self._path)
            raise

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._file.close()
        _unlink_quietly(self._path)


@implementer(IBlobReader)
class FileBlobReader:
    """An open blob file.  ``fileno()`` is the descriptor the reads use, so
    it is always positioned like the reader (the server may ``sendfile`` it)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self.size: int = os.fstat(fd).st_size

    def _fileno(self) -> int:
        if self._fd is None:
            # Never touch a closed descriptor: its number may be reused.
            raise ValueError("blob reader is closed")
        return self._fd

    def seek(self, offset: int) -> None:
        os.lseek(self._fileno(), offset, os.SEEK_SET)

    def read(self, length: int) -> defer.Deferred[bytes]:
        # One small read of a local file: cheaper than a thread hop.
        try:
            return defer.succeed(os.read(self._fileno(), length))
        except Exception:
            return defer.fail()

    def fileno(self) -> int:
        return self._fileno()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "FileBlobReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@implementer(IProviderFactory)
class FilesystemStorageFactory:
    """``provider = "filesystem"``: options ``path`` (default ``files``,
    relative to the data directory) and ``fsync`` (default true)."""

    kind = "storage"

    def create(self, options: Mapping[str, Any], context: ProviderContext) -> FilesystemStorage:
        check_options("storage", options, {"path": str, "fsync": bool})
        root = Path(options.get("path", "files")).expanduser()
        if not root.is_absolute():
            root = Path(context.data_dir) / root
        return FilesystemStorage(root, context.reactor, context.threadpool,
                                 fsync=options.get("fsync", True))


factory = FilesystemStorageFactory()
