"""Blobs as files on a local file system, one file per sha256.

Layout under the root (``storage.path``)::

    <root>/ab/cd/abcd...64 hex   one file per blob, two levels of fan-out so
                                 no directory grows past a few thousand entries
    <root>/.tmp/                 files being written; same file system as the
                                 blobs, so ``os.replace`` into place is atomic
    <root>/.quarantine/          blobs found corrupt, moved aside (never served)

A blob appears under its final name only once its bytes are complete, verified
and (with ``fsync = true``) durable.  Anything left in ``.tmp/`` after a crash
is deleted when the storage is created, which is how no partial file ever
survives.  That clean-up assumes one server per root: two processes sharing a
root would delete each other's in-flight files at start-up.

Keys are checked with :func:`pypicache.model.is_sha256` before any path is
built, so a client-supplied string never reaches the file system.

Verify on read (``verify_reads = true``, the default): the first time a
process opens a blob, its bytes are hashed in the thread pool before the
reader is handed out; a blob whose sha256 is not its name is moved to
``.quarantine/``, logged, and reported as missing (``BlobNotFound``), so the
server fetches it again instead of serving it.  The verdict is remembered per
(device, inode, size, mtime, ctime), so a blob costs one hash per process (or
per change on disk), not one per request.  The change time is what catches a
byte rewritten in place with size and mtime put back: no writer can set it.
Decay that touches no metadata at all (the disk itself) is caught by the
scrub (pypicache.services.scrub), the next process start or ``pypicache verify``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pypicache.durable import fsync_dir
from pypicache.errors import ConfigError
from pypicache.interfaces import (
    IBlobAccessTime,
    IBlobInventory,
    IBlobQuarantine,
    IBlobReader,
    IBlobWriter,
    IProviderFactory,
    IStorage,
)
from pypicache.model import BlobCheck, BlobInfo, BlobNotFound, HashMismatch, is_sha256
from pypicache.providers import ProviderContext, check_options
from pypicache.providers.storage.keys import check_key

__all__ = ["FilesystemStorage", "FileBlobWriter", "FileBlobReader", "BlobCheck", "factory"]

log = Logger()

_T = TypeVar("_T")

#: Indirection so tests can simulate a rename across file systems (EXDEV).
_replace = os.replace

_COPY_CHUNK = 1024 * 1024
_HASH_CHUNK = 1024 * 1024

#: Permissions of everything created under the root: private package bytes
#: and METADATA are for the server's user only.  A stricter umask still wins.
FILE_MODE = 0o600
DIR_MODE = 0o700

#: Default of ``scrub_rate``: bytes per second the background scrub re-reads
#: (a 100 GB store is checked about once a day; 0 turns it off).
SCRUB_RATE = 1024 * 1024

#: How many verified blobs a process remembers (about 250 bytes each); a blob
#: forgotten is simply hashed again the next time it is opened.
VERIFIED_CACHE_SIZE = 32768

#: (device, inode, size, mtime, ctime) of one version of a blob file.
StatKey = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> StatKey:
    """What identifies one version of a file: replacing it changes the inode,
    and any write, truncate, chmod or ``utime`` through the same inode moves
    its change time, which (unlike mtime) no writer can set back.  So a byte
    rewritten in place with size and mtime restored is still noticed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_some(fd: int, h: Any, offset: int, length: int) -> int:
    """Feed up to ``length`` bytes at ``offset`` into ``h``; how many there
    were (0 at the end).  Runs in the thread pool."""
    chunk = os.pread(fd, length, offset)
    h.update(chunk)
    return len(chunk)


def _hash_fd(fd: int) -> tuple[str, int]:
    """sha256 and length of everything in ``fd``, read with pread (the
    descriptor's offset is left alone).  Runs in the thread pool."""
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, _HASH_CHUNK, offset)
        if not chunk:
            return h.hexdigest(), offset
        h.update(chunk)
        offset += len(chunk)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _subdirs(path: Path | str, width: int) -> list[str]:
    """The fan-out subdirectories of ``path`` (names of ``width`` hex digits)."""
    try:
        return sorted(e.path for e in os.scandir(path)
                      if len(e.name) == width and is_sha256(e.name + "0" * (64 - width))
                      and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


@implementer(IStorage, IBlobInventory, IBlobQuarantine, IBlobAccessTime)
class FilesystemStorage:
    """Content-addressed blobs under ``root``; see the module docstring.

    Slow work (fsync, renames, copies, unlinks of big files) runs in the
    context's thread pool; opening, stat-ing and small reads and writes are
    done directly because they are single cheap system calls.
    """

    def __init__(self, root: Path, reactor: Any, threadpool: Any, *, fsync: bool = True,
                 verify_reads: bool = True, clean: bool = True,
                 verified_cache_size: int = VERIFIED_CACHE_SIZE, scrub_rate: int = SCRUB_RATE) -> None:
        """``clean=False`` keeps ``.tmp`` as it is: for a second process (the
        ``pypicache verify`` command) looking at the store of a running server,
        whose in-flight files must not be deleted under it."""
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.quarantine = self.root / ".quarantine"
        self.fsync = fsync
        self.verify_reads = verify_reads
        self.scrub_rate = scrub_rate
        self._reactor = reactor
        self._threadpool = threadpool
        #: sha256 -> stat key of the version whose bytes were found right.
        self._verified: OrderedDict[str, StatKey] = OrderedDict()
        self._verified_max = verified_cache_size
        #: (sha256, stat key) -> Deferreds waiting for a hash in progress.
        self._checking: dict[tuple[str, StatKey], list[defer.Deferred[bool]]] = {}
        self.root.mkdir(DIR_MODE, parents=True, exist_ok=True)
        self.tmp.mkdir(DIR_MODE, exist_ok=True)
        if clean:
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
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:  # pragma: no cover - 128 random bits
                continue
            return path, fd

    def _make_parents(self, target: Path) -> None:
        """Create the two fan-out directories, durably when fsync is on."""
        for directory in (target.parent.parent, target.parent):
            try:
                os.mkdir(directory, DIR_MODE)
            except FileExistsError:
                continue
            if self.fsync:
                fsync_dir(directory.parent)

    def _place(self, source: Path, sha256: str, size: int) -> BlobInfo:
        """Move a complete (and already fsynced) file in ``.tmp`` or on the
        same file system into place.  Runs in the thread pool.

        An existing blob of that key is always replaced: ``source`` holds bytes
        just verified, while the existing file may have decayed or been
        damaged outside our control (same size or not), and checking it would
        cost a full read.  The rename is atomic, so a reader of the old file
        keeps reading it undisturbed.
        """
        target = self.path_of(sha256)
        self._make_parents(target)
        _replace(source, target)
        if self.fsync:
            fsync_dir(target.parent)
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
        return self._in_thread(self._ingest, Path(path), sha256).addCallback(self._remember)

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
        try:
            reader = FileBlobReader(fd)
        except BaseException:
            os.close(fd)
            raise
        if not self.verify_reads or self._verified.get(sha256) == reader.key:
            if self.verify_reads:
                self._verified.move_to_end(sha256)
            return defer.succeed(reader)
        return self._verify_then_open(sha256, reader)

    # ------------------------------------------------------ verify on read

    def _remember(self, info: BlobInfo) -> BlobInfo:
        """Note a blob we have just placed as verified: its bytes were hashed
        on the way in, so reading them back would only cost time."""
        if self.verify_reads:
            try:
                key = _stat_key(os.stat(self.path_of(info.sha256)))
            except OSError:
                return info
            self._note_verified(info.sha256, key)
        return info

    def _note_verified(self, sha256: str, key: StatKey) -> None:
        self._verified[sha256] = key
        self._verified.move_to_end(sha256)
        while len(self._verified) > self._verified_max:
            self._verified.popitem(last=False)

    def _verify_then_open(self, sha256: str, reader: "FileBlobReader") -> defer.Deferred["FileBlobReader"]:
        """Hash the blob behind ``reader`` (once, however many ask at the same
        time), then hand the reader out, or close it and fail BlobNotFound."""
        key = reader.key
        waiter: defer.Deferred[bool] = defer.Deferred()
        pending = self._checking.get((sha256, key))
        if pending is not None:
            pending.append(waiter)
        else:
            self._checking[(sha256, key)] = [waiter]
            # The thread hashes through its own descriptor: the reader may be
            # closed (its waiter cancelled) while the hash runs, and its
            # number then reused for another file.
            fd = os.dup(reader.fileno())
            self._in_thread(self._check_fd, sha256, fd, key).addBoth(self._checked, sha256, key)

        def verdict(good: bool) -> "FileBlobReader":
            if not good:
                reader.close()
                raise BlobNotFound(sha256)
            return reader

        def failed(failure: Failure) -> Failure:
            reader.close()
            return failure

        return waiter.addCallbacks(verdict, failed)

    def _checked(self, result: Any, sha256: str, key: StatKey) -> None:
        waiters = self._checking.pop((sha256, key), [])
        if isinstance(result, Failure):
            log.failure("verifying blob {sha256} failed", result, sha256=sha256)
            result = False
        elif result:
            self._note_verified(sha256, key)
        else:
            self._verified.pop(sha256, None)
        for d in waiters:
            if not d.called:  # a cancelled waiter has had its answer
                d.callback(result)

    def _check_fd(self, sha256: str, fd: int, key: StatKey) -> bool:
        """Runs in the thread pool: True when the bytes behind ``fd`` hash to
        ``sha256``; a corrupt or unreadable blob is moved aside and logged.
        Closes ``fd``."""
        try:
            actual, _size = _hash_fd(fd)
        except OSError as e:
            self._move_aside(sha256, key, f"unreadable: {e}")
            return False
        finally:
            os.close(fd)
        if actual == sha256:
            return True
        self._move_aside(sha256, key, f"its bytes hash to {actual}")
        return False

    def _move_aside(self, sha256: str, key: StatKey | None, why: str) -> bool:
        """Move the blob ``sha256`` into ``.quarantine/`` so it is never served
        again, unless the file at its path is no longer the version ``key``
        that was found bad (a good copy was placed meanwhile).  Thread pool."""
        path = self.path_of(sha256)
        try:
            if key is not None and _stat_key(os.stat(path)) != key:
                return False
            self.quarantine.mkdir(DIR_MODE, exist_ok=True)
            destination = self.quarantine / sha256
            _replace(path, destination)
        except FileNotFoundError:
            return False
        except OSError as e:
            # Cannot move it: delete it rather than risk serving it again.
            log.error("cannot quarantine corrupt blob {path} ({error}); deleting it",
                      path=str(path), error=str(e))
            _unlink_quietly(path)
            return True
        log.error("blob {sha256} is corrupt ({why}); moved to {destination}, it will not be "
                  "served and is fetched again when next requested", sha256=sha256, why=why,
                  destination=str(destination))
        return True

    # --------------------------------------------------- for pypicache verify

    def check_blob(self, sha256: str, remove_corrupt: bool = False,
                   pace: Callable[[int], defer.Deferred[None]] | None = None) -> defer.Deferred[BlobCheck]:
        """Hash one blob now (ignoring what this process remembers).

        With ``remove_corrupt`` a corrupt or unreadable blob is moved to
        ``.quarantine/`` (unless a good copy replaced it while it was hashed).
        With ``pace`` the blob is read a chunk per thread call, waiting for
        ``pace(bytes)`` between chunks (the scrub: one big blob neither holds
        a pool thread nor the disk for long).  IBlobInventory.
        """
        check_key(sha256)
        if pace is None:
            return self._in_thread(self._check_blob, sha256, remove_corrupt)
        return defer.ensureDeferred(self._check_blob_paced(sha256, remove_corrupt, pace))

    async def _check_blob_paced(self, sha256: str, remove_corrupt: bool,
                                pace: Callable[[int], defer.Deferred[None]]) -> BlobCheck:
        try:
            fd = os.open(self.path_of(sha256), os.O_RDONLY)  # one cheap call, like open_read
        except FileNotFoundError:
            return BlobCheck(sha256, "missing")
        try:
            key = _stat_key(os.fstat(fd))
            h = hashlib.sha256()
            size = 0
            try:
                while True:
                    # The descriptor is only closed after the thread returned:
                    # a cancelled pace ends the loop between two reads.
                    n = await self._in_thread(_hash_some, fd, h, size, _HASH_CHUNK)
                    if not n:
                        break
                    size += n
                    await pace(n)
            except OSError as e:
                removed = remove_corrupt and await self._in_thread(
                    self._move_aside, sha256, key, f"unreadable: {e}")
                return self._forget(BlobCheck(sha256, "unreadable", error=str(e), removed=removed))
        finally:
            os.close(fd)
        actual = h.hexdigest()
        if actual == sha256:
            return BlobCheck(sha256, "ok", size=size, actual=actual)
        removed = remove_corrupt and await self._in_thread(
            self._move_aside, sha256, key, f"its bytes hash to {actual}")
        return self._forget(BlobCheck(sha256, "corrupt", size=size, actual=actual, removed=removed))

    def _forget(self, check: BlobCheck) -> BlobCheck:
        """Drop the remembered good verdict of a blob found bad."""
        if check.removed:
            self._verified.pop(check.sha256, None)
        return check

    def _check_blob(self, sha256: str, remove_corrupt: bool) -> BlobCheck:
        try:
            fd = os.open(self.path_of(sha256), os.O_RDONLY)
        except FileNotFoundError:
            return BlobCheck(sha256, "missing")
        try:
            key = _stat_key(os.fstat(fd))
            try:
                actual, size = _hash_fd(fd)
            except OSError as e:
                removed = remove_corrupt and self._move_aside(sha256, key, f"unreadable: {e}")
                return BlobCheck(sha256, "unreadable", error=str(e), removed=removed)
        finally:
            os.close(fd)
        if actual == sha256:
            return BlobCheck(sha256, "ok", size=size, actual=actual)
        removed = remove_corrupt and self._move_aside(sha256, key, f"its bytes hash to {actual}")
        return BlobCheck(sha256, "corrupt", size=size, actual=actual, removed=removed)

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """Every blob as ``(sha256, size)``, walking the fan-out directories.

        Blocking (it lists directories): call it in a thread.  Files whose
        names are not keys, and the ``.tmp``/``.quarantine`` directories, are
        skipped.
        """
        for first in _subdirs(self.root, 2):
            for second in _subdirs(first, 2):
                try:
                    entries = list(os.scandir(second))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    name = entry.name
                    if (len(name) == 64 and is_sha256(name) and name[:2] == Path(first).name
                            and name[2:4] == Path(second).name):
                        try:
                            yield name, entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue

    def last_used(self, sha256: str) -> float | None:
        """The later of the blob's atime and mtime (atime alone may be
        frozen: ``noatime`` mounts).  Blocking."""
        try:
            st = os.stat(self.path_of(sha256))
        except (OSError, ValueError):
            return None
        return max(st.st_atime, st.st_mtime)

    def quarantined(self) -> list[Path]:
        """The files in ``.quarantine/`` (blocking; cheap)."""
        try:
            return sorted(Path(e.path) for e in os.scandir(self.quarantine) if e.is_file())
        except FileNotFoundError:
            return []

    def discard_quarantined(self, entry: Path) -> bool:
        """Delete one of :meth:`quarantined`'s files (blocking).  IBlobQuarantine.

        Only a file directly in ``.quarantine/`` is ever unlinked."""
        path = Path(entry)
        if path.parent != self.quarantine:
            raise ValueError(f"not a quarantined blob: {str(path)!r}")
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

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

        return d.addBoth(done).addCallback(self._storage._remember)

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
        st = os.fstat(fd)
        self.size: int = st.st_size
        #: Identifies the version of the file opened (see verify on read).
        self.key = _stat_key(st)

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
    relative to the data directory), ``fsync`` (default true) and
    ``verify_reads`` (default true) and ``scrub_rate`` (bytes per second,
    default 1 MiB, 0 = off)."""

    kind = "storage"

    def create(self, options: Mapping[str, Any], context: ProviderContext) -> FilesystemStorage:
        """A store that cleans up ``.tmp`` only when the context is
        ``exclusive`` (the server's): see FilesystemStorage."""
        check_options("storage", options, {"path": str, "fsync": bool, "verify_reads": bool,
                                           "scrub_rate": int})
        scrub_rate = options.get("scrub_rate", SCRUB_RATE)
        if scrub_rate < 0:
            raise ConfigError(f"storage.scrub_rate: must be 0 (no scrub) or bytes per second, got {scrub_rate!r}")
        root = Path(options.get("path", "files")).expanduser()
        if not root.is_absolute():
            root = Path(context.data_dir) / root
        return FilesystemStorage(root, context.reactor, context.threadpool,
                                 fsync=options.get("fsync", True),
                                 verify_reads=options.get("verify_reads", True), clean=context.exclusive,
                                 scrub_rate=scrub_rate)


factory = FilesystemStorageFactory()
