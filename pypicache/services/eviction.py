"""The size limit on cached files: the running total, access times, eviction.

``[cache] max_size`` bounds the bytes of cached upstream files and their
METADATA.  Private uploads (and a blob a private file shares) neither count
nor are ever removed: a server whose private packages outgrow the limit
still caches.  Cached files are removed least recently used first,
never one pinned (``pypicache pin``), never a blob a private file also
uses, never one open for reading or writing in this process.  Evicting a
file marks it not stored in the index (:class:`~pypicache.interfaces.IIndexRepair`)
so its page keeps listing it and the next request fetches it again.

The LRU order, the pins and what is private are kept in a bookkeeping file
of its own (:mod:`pypicache.services.cachebook`).

Access times are recorded in memory (a dict update on each open of a blob)
and written in one transaction every ``access_flush`` seconds, so a request
never writes.  The server (:class:`CacheKeeper`) and ``pypicache gc``
(:mod:`pypicache.cli.cache`) share :class:`Evictor` and may run at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from pypicache.interfaces import IBlobReader, IBlobWriter
from pypicache.model import BlobNotFound
from pypicache.services.cachebook import BOOK_FILE, Book, Row

__all__ = ["BOOK_FILE", "Book", "CacheKeeper", "Evicted", "EvictionReport", "Evictor", "TrackedIndex",
           "TrackedStorage", "count_cached", "seed_from_index", "walk_inventory"]

log = Logger()

# ---------------------------------------------------------------- eviction


@attrs.frozen
class Evicted:
    """One file evicted (or, in a dry run, that would be)."""

    project: str
    filename: str
    size: int  # the file's and, when it went too, its METADATA's bytes


@attrs.define
class EvictionReport:
    files: list[Evicted] = attrs.field(factory=list)
    freed: int = 0
    dry_run: bool = False
    #: Files whose blob went but whose index entry still says stored.
    unrecorded: int = 0

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return f"{verb} {len(self.files)} file(s), {self.freed} bytes"


class Evictor:
    """Picks victims in LRU order and removes them; shared by the server and
    ``pypicache gc``.

    ``is_open(sha256)`` says a blob is being read or written in this
    process, ``is_held(sha256)`` that a private file uses it (not yet in
    the bookkeeping file); ``delete_first`` (gc, maybe on a full disk) deletes blobs
    before recording anything, so it needs no free space to start.
    """

    def __init__(self, *, book: Book, index: Any, storage: Any, in_thread: Callable[..., Any],
                 clock: Any, is_open: Callable[[str], bool] = lambda sha: False,
                 stopping: Callable[[], bool] = lambda: False,
                 is_held: Callable[[str], bool] = lambda sha: False,
                 on_deleting: Callable[[str, defer.Deferred[None]], None] | None = None) -> None:
        self.book = book
        self.index = index
        self.storage = storage
        self.in_thread = in_thread
        self.clock = clock
        self.is_open = is_open
        self.stopping = stopping
        self.is_held = is_held
        self.on_deleting = on_deleting
        #: (project, filename, metadata) whose blob went but whose mark could
        #: not be undone (delete_first on a full disk); retried at the end.
        self.unrecorded: list[tuple[str, str, bool]] = []

    async def evict(self, need: int, *, dry_run: bool = False, delete_first: bool = False,
                    on_file: Callable[[Evicted], None] | None = None) -> EvictionReport:
        """Free at least ``need`` bytes if that many can be freed."""
        report = EvictionReport(dry_run=dry_run)
        cursor: tuple[float, str, str] | None = None
        seen: set[str] = set()
        forget: list[tuple[str, str]] = []
        try:
            while report.freed < need and not self.stopping():
                rows = await self.in_thread(self.book.victims, cursor)
                if not rows:
                    break
                for row in rows:
                    cursor = (row.last_access, row.project, row.filename)
                    if report.freed >= need or self.stopping():
                        break
                    if row.sha256 in seen or self.is_open(row.sha256):
                        continue
                    seen.add(row.sha256)
                    done = await self._one(row, dry_run, delete_first, forget)
                    if done is not None:
                        report.files.append(done)
                        report.freed += done.size
                        if on_file is not None:
                            on_file(done)
                if not dry_run and forget:
                    await self._forget(forget, delete_first)
                    forget = []
        finally:
            if not dry_run and forget:
                await self._forget(forget, delete_first)
        for project, filename, part in self.unrecorded:  # space was freed since
            try:
                await self.index.mark_unstored(project, filename, part)
            except KeyError:
                pass
            except Exception as e:  # still no room: the blob's absence is found on the next request
                report.unrecorded += 1
                log.warn("{project}/{filename}: blob removed, but the index could not record it: {error}",
                         project=project, filename=filename, error=repr(e))
        self.unrecorded = []
        if not dry_run and report.files:
            try:
                await self.in_thread(self.book.compact)
            except Exception as e:
                if not delete_first:
                    raise
                log.warn("cache bookkeeping: not compacted: {error}", error=repr(e))
        return report

    async def _forget(self, keys: list[tuple[str, str]], tolerant: bool) -> None:
        try:
            await self.in_thread(self.book.forget, keys)
        except Exception as e:
            if not tolerant:
                raise
            # gc on a full disk: rows left behind are found stale and dropped later.
            log.warn("cache bookkeeping: could not drop {n} evicted row(s) yet: {error}", n=len(keys),
                     error=repr(e))

    async def _current(self, row: Row) -> Any:
        """The index's record of a row's file, if it is still a stored
        upstream file with those bytes; else None."""
        record = await self.index.get_project(row.project)
        found = record.file(row.filename) if record is not None else None
        if (found is None or not found.stored or found.sha256 != row.sha256 or found.origin != "upstream"
                or not found.url or record.origin != "upstream"):
            return None
        return found

    async def _one(self, row: Row, dry_run: bool, delete_first: bool,
                   forget: list[tuple[str, str]]) -> Evicted | None:
        if self.is_held(row.sha256) or await self.in_thread(self.book.held, row.sha256):  # a private file's too
            forget.append((row.project, row.filename))
            return None
        files = []
        for other in await self.in_thread(self.book.sharing, row.sha256):
            current = await self._current(other)
            if current is None:
                forget.append((other.project, other.filename))  # stale: evicted elsewhere, deleted, private
            else:
                files.append((other, current))
        if not files:
            return None
        keys = [(r.project, r.filename) for r, _ in files]
        if await self.in_thread(self.book.pinned, keys):
            if not dry_run:  # a file pinned under a name the query did not see: out of the way
                await self.in_thread(self.book.touch, keys, self.clock.seconds())
            return None
        metadata = await self._metadata_to_drop(files, set(keys))
        try:
            blob_size = size = await self.storage.size(row.sha256)
        except BlobNotFound:  # gone already (verify, another gc): only the marks are left to undo
            blob_size = size = 0
        if metadata is not None:
            try:
                size += await self.storage.size(metadata)
            except BlobNotFound:
                metadata = None
        if dry_run:
            return Evicted(row.project, row.filename, size)
        # Until the blobs are gone, a store of the same bytes (the file
        # fetched again this moment) waits: it must land after the delete.
        gate: defer.Deferred[None] = defer.Deferred()
        if self.on_deleting is not None:
            for sha in (row.sha256, metadata):
                if sha is not None:
                    self.on_deleting(sha, gate)
        try:
            size -= await self._remove(row, files, metadata, blob_size, size - blob_size, delete_first)
        finally:
            gate.callback(None)
        forget.extend(keys)
        for r, _ in files:
            log.info("evicted {project}/{filename} ({size} bytes)", project=r.project, filename=r.filename,
                     size=r.size)
        return Evicted(row.project, row.filename, size)

    async def _remove(self, row: Row, files: list[tuple[Row, Any]], metadata: str | None, blob_size: int,
                      metadata_size: int, delete_first: bool) -> int:
        """Unmark and delete; the bytes that stayed after all (opened meanwhile)."""
        if delete_first:
            await self.storage.delete(row.sha256)
            if metadata is not None:
                await self.storage.delete(metadata)
        for r, current in files:
            marks = [False] + ([True] if metadata is not None and current.metadata_sha256 == metadata else [])
            for part in marks:
                try:
                    await self.index.mark_unstored(r.project, r.filename, part)
                except KeyError:
                    pass  # deleted meanwhile
                except Exception:
                    if not delete_first:
                        raise
                    # The blob is gone already (gc on a full disk): the next
                    # request finds it missing and fetches it again anyway.
                    self.unrecorded.append((r.project, r.filename, part))
        if delete_first:
            return 0
        kept = 0
        # Opened (or uploaded privately) since it was chosen: it stays,
        # unmarked; a request that does not have it open fetches it anew.
        if self.is_open(row.sha256) or self.is_held(row.sha256):
            kept += blob_size
        else:
            await self.storage.delete(row.sha256)
        if metadata is not None:
            if self.is_open(metadata) or self.is_held(metadata):
                kept += metadata_size
            else:
                await self.storage.delete(metadata)
        return kept

    async def _metadata_to_drop(self, files: list[tuple[Row, Any]], going: set[tuple[str, str]]) -> str | None:
        """The METADATA blob that goes with the file, unless another file keeps it."""
        shas = {current.metadata_sha256 for _, current in files if current.metadata_stored}
        if len(shas) != 1:
            return None
        (sha,) = shas
        if sha is None or self.is_held(sha) or await self.in_thread(self.book.held, sha):
            return None
        users = await self.in_thread(self.book.metadata_users, sha)
        return sha if set(users) <= going else None



# --------------------------------------------------------------- inventory


def walk_inventory(storage: Any, stopping: Callable[[], bool] = lambda: False) -> int:
    """The bytes of every blob (blocking: in a thread)."""
    total = 0
    for _, size in storage.iter_blobs():
        total += size
        if stopping():
            break
    return total


def count_cached(storage: Any, book: Book, stopping: Callable[[], bool] = lambda: False,
                 batch: int = 512) -> int:
    """The bytes in storage that ``max_size`` bounds: blobs of cached
    upstream files and their METADATA the book knows, not private ones; a
    batch of blobs per look-up so the server's flush is not held up
    (blocking: in a thread)."""
    total = 0
    chunk: list[tuple[str, int]] = []
    for blob in storage.iter_blobs():
        chunk.append(blob)
        if len(chunk) >= batch:
            total += book.counted(chunk)
            chunk = []
            if stopping():
                return total
    return total + book.counted(chunk)


async def seed_from_index(index: Any, book: Book, in_thread: Callable[..., Any],
                          stopping: Callable[[], bool] = lambda: False, storage: Any = None) -> set[str]:
    """Rows for every stored upstream file the book does not know yet, and
    every private file's blobs, a batch of projects at a time: at start and
    at each recount, in the background, so a file stored by another process
    (``pypicache prefetch``, ``pypicache import``) or before the limit was
    set can be evicted too.  A new row's last access is the best proxy
    there is: the blob's last use if ``storage`` can say
    (:class:`~pypicache.interfaces.IBlobAccessTime`), else the file's
    ``first_seen`` (else 0).  Returns the private blobs."""
    from pypicache.interfaces import IBlobAccessTime

    last_used = storage.last_used if storage is not None and IBlobAccessTime.providedBy(storage) else None
    files: list[tuple[str, str, str, int, str | None, float]] = []
    held: list[str] = []
    private: set[str] = set()
    for name in await index.list_projects():
        if stopping():
            return private
        record = await index.get_project(name)
        if record is None:
            continue
        for f in record.files:
            if f.stored and f.sha256:
                if f.origin == "upstream" and f.url and record.origin == "upstream":
                    files.append((name, f.filename, f.sha256, f.size or 0,
                                  f.metadata_sha256 if f.metadata_stored else None, f.first_seen or 0.0))
                else:
                    held.append(f.sha256)
                    if f.metadata_stored and f.metadata_sha256:
                        held.append(f.metadata_sha256)
        if len(files) + len(held) >= 2000:
            await in_thread(book.seed, files, held, last_used)
            private.update(held)
            files, held = [], []
    await in_thread(book.seed, files, held, last_used)
    private.update(held)
    return private


# ------------------------------------------------------------------ server


class CacheKeeper:
    """The server's side: the running total, open blobs, batched access
    times, and eviction when a store takes the total over ``limit``."""

    #: Seconds before trying again after an eviction that freed nothing.
    FUTILE_PAUSE = 60.0
    #: Seconds a blob stored but not yet indexed is kept from eviction at most.
    FRESH_FOR = 60.0
    #: Seconds between counts of storage (the first is at start); each also
    #: adds rows for files another process stored.  Tests shorten it.
    RECOUNT_INTERVAL = 3600.0

    def __init__(self, *, storage: Any, index: Any, data_dir: Path, limit: int, low_water: float,
                 flush_interval: float, reactor: Any, threadpool: Any) -> None:
        self.storage = storage  # the provider itself, under the TrackedStorage
        self.index = index
        self.limit = limit
        self.low_water = low_water
        self.flush_interval = flush_interval
        self.reactor = reactor
        self.threadpool = threadpool
        self.book_path = Path(data_dir) / BOOK_FILE
        self.book: Book | None = None
        #: Bytes of cached files and their METADATA in storage (private
        #: blobs do not count); None until the start-up walk has counted them.
        self.used: int | None = None
        self._delta = 0  # changes while a count runs
        self.evictions = 0
        self.evicted_bytes = 0
        self._open: dict[str, int] = {}
        self._fresh: dict[str, float] = {}  # stored, not yet indexed: sha256 -> when
        #: New blobs not counted yet: only the index says whether they are a
        #: cached file's (counted) or a private one's: sha256 -> (size, when).
        self._pending: dict[str, tuple[int, float]] = {}
        self._deleting: dict[str, defer.Deferred[None]] = {}
        self._touched: dict[str, float] = {}
        self._stored: dict[tuple[str, str], tuple[str, str, str, int, str | None, float]] = {}
        self._metadata: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._held: set[str] = set()  # the next batch
        #: Every private blob seen by this process: the evictor checks it
        #: besides the file, so a batch not yet written protects too.
        self._private: set[str] = set()
        self._loop: task.LoopingCall | None = None
        self._recount_loop: task.LoopingCall | None = None
        self._walking = False
        self._busy: set[defer.Deferred[Any]] = set()
        self._evicting: defer.Deferred[Any] | None = None
        self._stopping = False
        self._quiet_until = 0.0

    # ---------------------------------------------------------- lifecycle
    def in_thread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(self.reactor, self.threadpool, f, *args, **kwargs)

    def _track(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        self._busy.add(d)
        d.addBoth(lambda result: (self._busy.discard(d), result)[1])
        return d

    def start(self) -> None:
        self._track(defer.ensureDeferred(self._start()))

    async def _start(self) -> None:
        try:
            self.book = await self.in_thread(Book, self.book_path)
            await self.in_thread(self.book.reset_freed)  # the walk below counts what gc left
            self._private |= await self.in_thread(self.book.all_held)
            if not await self._recount():
                raise RuntimeError("the first count of storage failed")
        except Exception as e:
            log.error("the cache size limit is off: cannot read what is stored: {error}", error=repr(e))
            return
        if self._stopping:
            return
        log.info("cache: {used} bytes stored, limit {limit}", used=self.used, limit=self.limit)
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self.reactor
        self._loop.start(self.flush_interval, now=True).addErrback(
            lambda f: log.failure("cache bookkeeping stopped", f))
        # Another process may store files too (pypicache prefetch, import):
        # learnt and counted again now and then, in the background, so they
        # become candidates and the total cannot drift.
        self._recount_loop = task.LoopingCall(lambda: self._track(defer.ensureDeferred(self._recount())))
        self._recount_loop.clock = self.reactor
        self._recount_loop.start(self.RECOUNT_INTERVAL, now=False).addErrback(
            lambda f: log.failure("cache recount stopped", f))

    async def _recount(self) -> bool:
        """Learn the stored files the book does not know (another process
        stored them), then count the bytes the limit bounds by listing
        storage (a walk in a thread).  False when it failed."""
        self._delta = 0
        self._walking = True
        try:
            await self._flush()  # what this process stored is in the book before the walk
            self._private |= await seed_from_index(self.index, self.book, self.in_thread,
                                                   lambda: self._stopping, self.storage)
            walked = await self.in_thread(count_cached, self.storage, self.book, lambda: self._stopping)
        except Exception as e:
            log.warn("cache: counting storage failed: {error}", error=repr(e))
            return False
        finally:
            self._walking = False
        if not self._stopping:
            self.used = walked + self._delta
            self._maybe_evict()  # files learnt may take the total over the limit
        return True

    async def stop(self) -> None:
        self._stopping = True
        for loop in (self._loop, self._recount_loop):
            if loop is not None and loop.running:
                loop.stop()
        while self._busy:
            await defer.DeferredList(list(self._busy), consumeErrors=True)
        if self.book is not None:
            try:
                await self._flush()
            except Exception as e:
                log.warn("cache bookkeeping: last flush failed: {error}", error=repr(e))
            await self.in_thread(self.book.close)
            self.book = None

    def usage(self) -> tuple[int | None, int]:
        return self.used, self.limit

    # ------------------------------------------------- hooks (O(1) each)
    def opened(self, sha256: str) -> None:
        self._open[sha256] = self._open.get(sha256, 0) + 1
        self._touched[sha256] = self.reactor.seconds()

    def closed(self, sha256: str) -> None:
        n = self._open.get(sha256, 0) - 1
        if n > 0:
            self._open[sha256] = n
        else:
            self._open.pop(sha256, None)

    def is_open(self, sha256: str) -> bool:
        return sha256 in self._open or sha256 in self._fresh

    def stored(self, sha256: str, size: int, new: bool) -> None:
        """A blob was stored (ingest, commit).  Until the index records whose
        it is (:class:`TrackedIndex`), it counts as open: an upload of bytes
        a cached file has must not lose them in between."""
        self._fresh[sha256] = self.reactor.seconds()
        if new:
            self._pending[sha256] = (size, self.reactor.seconds())

    def _count(self, sha256: str) -> None:
        """The index says the new blob ``sha256`` is a cached file's: it counts."""
        pending = self._pending.pop(sha256, None)
        if pending is not None and sha256 not in self._private:
            self.added(pending[0])

    def is_private(self, sha256: str) -> bool:
        return sha256 in self._private

    def indexed(self, *shas: str | None) -> None:
        for sha in shas:
            if sha is not None:
                self._fresh.pop(sha, None)

    def deleting(self, sha256: str) -> defer.Deferred[None] | None:
        return self._deleting.get(sha256)

    def _on_deleting(self, sha256: str, d: defer.Deferred[None]) -> None:
        self._deleting[sha256] = d
        d.addBoth(lambda result: (self._deleting.pop(sha256, None), result)[1])

    def added(self, size: int) -> None:
        if self._walking:
            self._delta += size
        if self.used is not None:
            self.used += size
            self._maybe_evict()

    def _maybe_evict(self) -> None:
        """Start an eviction when over the limit and none runs (O(1))."""
        if (self._evicting is not None or self._stopping or self.used is None or self.used <= self.limit
                or self.reactor.seconds() < self._quiet_until):
            return
        d = defer.ensureDeferred(self._evict())
        if not d.called:
            self._evicting = self._track(d)

    def removed(self, size: int) -> None:
        if self._walking:
            self._delta -= size
        if self.used is not None:
            self.used = max(0, self.used - size)

    def _note_private(self, sha256: str) -> None:
        self._pending.pop(sha256, None)  # never counted
        self._held.add(sha256)
        self._private.add(sha256)

    def note_stored(self, project: str, filename: str, record: Any) -> None:
        f = record.file(filename) if record is not None else None
        if f is None or not f.stored or not f.sha256:
            return
        if f.origin == "upstream" and f.url and record.origin == "upstream":
            self._stored[(project, filename)] = (project, filename, f.sha256, f.size or 0,
                                                 f.metadata_sha256 if f.metadata_stored else None,
                                                 self.reactor.seconds())
            self._count(f.sha256)
        else:
            self._note_private(f.sha256)

    def note_metadata(self, project: str, filename: str, record: Any) -> None:
        f = record.file(filename) if record is not None else None
        if f is None or not f.metadata_stored or not f.metadata_sha256:
            return
        if f.origin == "upstream" and record.origin == "upstream":
            self._metadata[(project, filename)] = (project, filename, f.metadata_sha256)
            self._count(f.metadata_sha256)
        else:
            self._note_private(f.metadata_sha256)

    def note_upload(self, record: Any, filename: str) -> None:
        f = record.file(filename) if record is not None else None
        if f is not None and f.sha256:
            self._note_private(f.sha256)
            if f.metadata_sha256:
                self._note_private(f.metadata_sha256)

    # --------------------------------------------------------- batching
    def flush(self) -> defer.Deferred[Any]:
        """Write the batch (LoopingCall); then evict if over the limit."""
        return self._track(defer.ensureDeferred(self._flush_and_check()))

    async def _flush_and_check(self) -> None:
        try:
            await self._flush()
        except Exception as e:
            log.warn("cache bookkeeping: flush failed (retried): {error}", error=repr(e))
            return
        self._maybe_evict()

    async def _flush(self) -> None:
        if self.book is None:
            return
        stored, self._stored = self._stored, {}
        touched, self._touched = self._touched, {}
        metadata, self._metadata = self._metadata, {}
        held, self._held = self._held, set()
        if self._fresh:  # a store whose index write failed: not protected forever
            old = self.reactor.seconds() - self.FRESH_FOR
            for sha in [sha for sha, when in self._fresh.items() if when < old]:
                del self._fresh[sha]
        if self._pending:  # never indexed: the next recount counts it if it is a cached file's
            old = self.reactor.seconds() - self.FRESH_FOR
            for sha in [sha for sha, (_, when) in self._pending.items() if when < old]:
                del self._pending[sha]
        try:
            freed = await self.in_thread(self.book.apply, stored=list(stored.values()),
                                         touched=list(touched.items()), held=list(held),
                                         metadata=list(metadata.values()))
        except BaseException:
            for key, value in stored.items():  # again next time
                self._stored.setdefault(key, value)
            for sha, when in touched.items():
                self._touched[sha] = max(when, self._touched.get(sha, 0.0))
            self._held |= held
            raise
        if freed and self.used is not None:
            self.used = max(0, self.used - freed)

    async def _evict(self) -> None:
        try:
            while self.used is not None and self.used > self.limit and not self._stopping:
                await self._flush()
                assert self.book is not None
                target = int(self.limit * self.low_water)
                evictor = Evictor(book=self.book, index=self.index, storage=self.storage,
                                  in_thread=self.in_thread, clock=self.reactor, is_open=self.is_open,
                                  stopping=lambda: self._stopping, is_held=self._private.__contains__,
                                  on_deleting=self._on_deleting)
                report = await evictor.evict(self.used - target)
                self.evictions += len(report.files)
                self.evicted_bytes += report.freed
                self.removed(report.freed)
                if report.files:
                    log.info("cache over its limit: {summary}", summary=report.summary())
                if report.freed == 0:
                    # Said once a minute, not after every store.
                    self._quiet_until = self.reactor.seconds() + self.FUTILE_PAUSE
                    log.warn("cache: {used} bytes stored, over the limit of {limit}, and nothing more can "
                             "be evicted (pinned, private or in use)", used=self.used, limit=self.limit)
                    break
        except Exception:
            log.failure("cache eviction failed")
        finally:
            self._evicting = None


# ---------------------------------------------------------------- wrappers


@implementer(IBlobReader)
class _Reader:
    """A reader that tells the keeper when it is closed."""

    __slots__ = ("_inner", "_keeper", "_sha256")

    def __init__(self, inner: Any, keeper: CacheKeeper, sha256: str) -> None:
        self._inner = inner
        self._keeper = keeper
        self._sha256 = sha256

    @property
    def size(self) -> int:
        return self._inner.size

    def seek(self, offset: int) -> None:
        self._inner.seek(offset)

    def read(self, length: int) -> Any:
        return self._inner.read(length)

    def fileno(self) -> Any:
        return self._inner.fileno()

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.closed(self._sha256)
            self._keeper = None  # type: ignore[assignment]
        self._inner.close()


@implementer(IBlobWriter)
class _Writer:
    """A writer whose commit is counted."""

    def __init__(self, inner: Any, storage: TrackedStorage, expected: str | None) -> None:
        self._inner = inner
        self._storage = storage
        self._expected = expected

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    async def _commit(self) -> Any:
        keeper = self._storage.keeper
        pending = keeper.deleting(self._expected) if self._expected is not None else None
        if pending is not None:  # evicted this moment: let the delete land first
            await pending
        existed = self._expected is not None and await self._storage.inner.exists(self._expected)
        info = await self._inner.commit()
        keeper.stored(info.sha256, info.size, not existed)
        return info

    def commit(self) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._commit())

    def abort(self) -> None:
        self._inner.abort()


class TrackedStorage:
    """The configured storage, counted: sizes in and out, open blobs, and
    the access time of every blob opened (one dict update)."""

    def __init__(self, inner: Any, keeper: CacheKeeper) -> None:
        self.inner = inner
        self.keeper = keeper
        directlyProvides(self, providedBy(inner))

    def open_read(self, sha256: str) -> defer.Deferred[Any]:
        keeper = self.keeper
        keeper.opened(sha256)
        d = self.inner.open_read(sha256)
        if d.called and not isinstance(d.result, Failure):  # the usual case: no callback machinery
            return defer.succeed(_Reader(d.result, keeper, sha256))

        def opened(reader: Any) -> Any:
            return _Reader(reader, keeper, sha256)

        def failed(failure: Any) -> Any:
            keeper.closed(sha256)
            return failure

        return d.addCallbacks(opened, failed)

    def open_write(self, expected_sha256: str | None) -> Any:
        return _Writer(self.inner.open_write(expected_sha256), self, expected_sha256)

    async def _ingest(self, path: Any, sha256: str) -> Any:
        pending = self.keeper.deleting(sha256)
        if pending is not None:  # evicted this moment: let the delete land first
            await pending
        self.keeper.opened(sha256)
        try:
            existed = await self.inner.exists(sha256)
            info = await self.inner.ingest(path, sha256)
            self.keeper.stored(sha256, info.size, not existed)
        finally:
            self.keeper.closed(sha256)
        return info

    def ingest(self, path: Any, sha256: str) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._ingest(path, sha256))

    async def _delete(self, sha256: str) -> None:
        try:
            size = await self.inner.size(sha256)
        except BlobNotFound:
            size = 0
        await self.inner.delete(sha256)
        if not self.keeper.is_private(sha256):
            self.keeper.removed(size)

    def delete(self, sha256: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._delete(sha256))

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


class TrackedIndex:
    """The server's index, telling the keeper which stored files are cached
    upstream files (evictable) and which are private (never)."""

    def __init__(self, inner: Any, keeper: CacheKeeper) -> None:
        self.inner = inner
        self.keeper = keeper
        directlyProvides(self, providedBy(inner))

    def mark_stored(self, name: str, filename: str, blob: Any) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(self.inner.mark_stored, name, filename, blob)
        d.addBoth(lambda result: (self.keeper.indexed(getattr(blob, "sha256", None)), result)[1])
        return d.addCallback(lambda record: (self.keeper.note_stored(name, filename, record), record)[1])

    def mark_metadata_stored(self, name: str, filename: str, sha256: str) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(self.inner.mark_metadata_stored, name, filename, sha256)
        d.addBoth(lambda result: (self.keeper.indexed(sha256), result)[1])
        return d.addCallback(lambda record: (self.keeper.note_metadata(name, filename, record), record)[1])

    def add_file(self, name: str, record: Any) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(self.inner.add_file, name, record)
        d.addCallback(lambda new: (self.keeper.note_upload(new, record.filename), new)[1])
        return d.addBoth(lambda result: (self.keeper.indexed(record.sha256, record.metadata_sha256), result)[1])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def keep_cache(cache: Any, storage: Any, index: Any, *, data_dir: Path, reactor: Any,
               threadpool: Any) -> tuple[CacheKeeper, TrackedStorage, TrackedIndex]:
    """The keeper for ``[cache]`` and the storage and index to use instead
    of the configured ones; ConfigError when a provider cannot be evicted from."""
    from pypicache.errors import ConfigError
    from pypicache.interfaces import IBlobInventory, IIndexRepair

    if not IBlobInventory.providedBy(storage):
        raise ConfigError("cache.max_size: the storage provider cannot list its blobs (IBlobInventory), "
                          "so its size cannot be bounded")
    if not IIndexRepair.providedBy(index):
        raise ConfigError("cache.max_size: the index provider cannot mark files unstored (IIndexRepair), "
                          "so nothing can be evicted")
    keeper = CacheKeeper(storage=storage, index=index, data_dir=data_dir, limit=cache.max_size,
                         low_water=cache.low_water, flush_interval=cache.access_flush, reactor=reactor,
                         threadpool=threadpool)
    return keeper, TrackedStorage(storage, keeper), TrackedIndex(index, keeper)
