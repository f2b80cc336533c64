"""Project pages: what the index holds, kept fresh from the upstream.

The mirror is the one place that decides when to ask the upstream.  It keeps
the latest :class:`ProjectRecord` of every project it has seen in memory (the
index is the durable copy), refreshes a page when its TTL has passed with a
conditional request, makes concurrent refreshes of one project share a single
upstream request, and serves the stale page when the upstream fails: a cache
degrades, it does not fail.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypicache.services.blocklist import Blocklist
from pypicache.services.catalogue import CataloguedIndex
from pypicache.services.memcache import NotFoundCache, RecordCache
from pypicache.services.traffic import Traffic
from pypicache.model import (
    NotModified,
    ProjectList,
    ProjectRecord,
    UpstreamError,
    UpstreamNotFound,
    Validators,
)
from pypicache.errors import CircuitOpen

log = Logger()
T = TypeVar("T")

#: Retry-After when the upstream gave no usable hint, and the longest we pass on.
#: Short on purpose: pip sleeps a 502/503's Retry-After before each of its 5
#: retries, so an upstream's 120 (or 30 of our own) held a failing install for
#: minutes (tests/test_clients_lockers.py).  The breaker, not the clients'
#: patience, is what spares the upstream.
DEFAULT_RETRY_AFTER = 2
MAX_RETRY_AFTER = 5


def retry_after_seconds(error: BaseException, default: int = DEFAULT_RETRY_AFTER) -> int:
    """A Retry-After (whole seconds, 1..MAX_RETRY_AFTER) for an upstream failure.

    The upstream's own hint (a 429/503 ``Retry-After``, or the breaker's
    cool-down) is passed on when it is a number of seconds; an HTTP date or
    anything odd gives ``default``, so no upstream string reaches our headers.
    """
    value = getattr(error, "retry_after", None)
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isdigit() and len(value) <= 10 else None
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return max(1, min(MAX_RETRY_AFTER, value))


class Coalescer(Generic[T]):
    """Runs one call per key at a time; concurrent callers share its result.

    A caller that gives up (its Deferred is cancelled, say because its client
    hung up) does not cancel the shared work: others may still need it, and
    finishing it fills the cache.
    """

    def __init__(self, on_join: Callable[[], None] | None = None) -> None:
        self._pending: dict[Hashable, list[defer.Deferred[T]]] = {}
        #: Called when a caller joins a call in flight (metrics: coalesced waiters).
        self.on_join = on_join

    def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> defer.Deferred[T]:
        waiter: defer.Deferred[T] = defer.Deferred()
        if key in self._pending:
            self._pending[key].append(waiter)
            if self.on_join is not None:
                self.on_join()
            return waiter
        self._pending[key] = [waiter]

        def settle(result: Any) -> None:
            for d in self._pending.pop(key, []):
                if not d.called:
                    d.callback(result) if not isinstance(result, Failure) else d.errback(result)
            return None

        defer.ensureDeferred(work()).addBoth(settle)
        return waiter

    def busy(self, key: Hashable) -> bool:
        return key in self._pending


@attrs.frozen
class PageResult:
    """A project as the web layer should show it.

    ``stale`` is True when the upstream failed and an older copy is served.
    """

    record: ProjectRecord
    stale: bool = False


class UpstreamUnavailable(Exception):
    """The upstream failed and nothing is cached: answer 502/503."""

    def __init__(self, reason: str, retry_after: int = DEFAULT_RETRY_AFTER):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Mirror:
    """Pages from the index, refreshed from the upstream when too old.

    ``index`` is wrapped in a :class:`CataloguedIndex` unless it is one
    already, and the mirror follows it: every write through ``mirror.index``
    (the index the whole server uses) replaces the in-memory copy.
    """

    def __init__(
        self,
        *,
        index: Any,
        upstream: Any,
        clock: Any,
        page_ttl: float = 600.0,
        root_ttl: float = 3600.0,
        offline: bool = False,
        merge: frozenset[str] = frozenset(),
        local_recheck: float = 2.0,
        memory_projects: int = 4096,
        memory_bytes: int = 64 * 1024 * 1024,
        not_found_ttl: float = 60.0,
        traffic: Traffic | None = None,
    ) -> None:
        self.index = index if isinstance(index, CataloguedIndex) else CataloguedIndex(index)
        self.index.follow(self.note_record)
        self.upstream = upstream
        self.clock = clock
        self.page_ttl = page_ttl
        self.root_ttl = root_ttl
        self.offline = offline
        self.merge = merge
        self.local_recheck = local_recheck
        self._loaded_at: dict[str, float] = {}
        #: Bounded by estimated bytes (a project may list 100,000 files) and count.
        self._records = RecordCache(memory_bytes, memory_projects)
        #: Unknown names, answered 404 without the upstream for a while.
        self.not_found = NotFoundCache(lambda: self.clock.seconds(), not_found_ttl)
        #: Upstream latency, errors and coalesced refreshes (``/metrics``).
        self.traffic = traffic if traffic is not None else Traffic()
        self._refreshes: Coalescer[ProjectRecord | None] = Coalescer(lambda: self.traffic.joined("page"))
        self._loads: Coalescer[ProjectRecord | None] = Coalescer()
        self._root: tuple[ProjectList, float] | None = None
        self._root_refresh: Coalescer[tuple[ProjectList, float] | None] = Coalescer()
        #: The block and allow lists every view applies (pypicache.services.blocklist).
        self.blocklist = Blocklist()

    # ------------------------------------------------------------- records
    def remember(self, record: ProjectRecord) -> ProjectRecord:
        """Make ``record`` the current in-memory copy (bounded LRU).

        The name exists now (uploaded, or changed by an admin): a cached 404
        for it is forgotten.
        """
        self._records[record.name] = record
        self._records.move_to_end(record.name)
        self._loaded_at[record.name] = self.clock.seconds()
        self.not_found.discard(record.name)
        for gone in self._records.trim():
            self._loaded_at.pop(gone, None)
        return record

    def cached(self, name: str) -> ProjectRecord | None:
        """The in-memory record, without touching the index or upstream."""
        return self._records.get(name)

    def fresh_cached(self, name: str, *, allow_upstream: bool = True) -> ProjectRecord | None:
        """The in-memory record if it may be served as it is right now, else
        None: the page fast path's question, answered by the rules of
        :meth:`load` (a private project is re-read every ``local_recheck``
        seconds) and :meth:`is_fresh` (``allow_upstream``: the view asks the
        upstream when the record is too old)."""
        record = self._records.get(name)
        if record is None:
            return None
        if record.origin == "local" and self._recheck_due(name):
            return None
        if allow_upstream and not self.is_fresh(record):
            return None
        return record

    def _recheck_due(self, name: str) -> bool:
        """A private project's copy is older than ``local_recheck``: the
        admin command may have changed it from another process."""
        return self.clock.seconds() - self._loaded_at.get(name, 0) >= self.local_recheck

    async def load(self, name: str) -> ProjectRecord | None:
        """The record from memory, else from the index (never the upstream).

        Private projects are re-read from the index every ``local_recheck``
        seconds, so changes made by the admin command show up promptly.
        """
        record = self._records.get(name)
        if record is not None:
            if record.origin != "local" or not self._recheck_due(name):
                return record
            self._records.pop(name, None)

        async def from_index() -> ProjectRecord | None:
            found = await self.index.get_project(name)
            if found is not None and name not in self._records:
                if record is not None and found == record:
                    found = record  # unchanged: keep the object, and the rendered pages
                self.remember(found)
            return self._records.get(name, found)

        return await self._loads.run(name, from_index)

    def is_private(self, name: str, record: ProjectRecord | None) -> bool:
        """A private name is never looked up upstream unless merged by config."""
        return record is not None and record.origin == "local" and name not in self.merge

    def is_fresh(self, record: ProjectRecord) -> bool:
        if self.is_private(record.name, record):
            return True
        if record.refreshed_at is None:
            return False
        return self.clock.seconds() - record.refreshed_at < self.page_ttl

    async def project(self, name: str, *, allow_upstream: bool = True) -> PageResult | None:
        """The project's current page, asking the upstream only when needed.

        Returns None when nobody knows the project.  Raises
        UpstreamUnavailable when the upstream failed and nothing is cached.
        """
        if allow_upstream and not self.offline and name in self.not_found:
            return None  # the upstream said 404 a moment ago (not_found_ttl)
        record = await self.load(name)
        if not allow_upstream or self.offline:
            return PageResult(record) if record is not None else None
        if record is not None and self.is_fresh(record):
            return PageResult(record)
        try:
            fresh = await self._refreshes.run(name, lambda: self._refresh(name, loaded=(record,)))
        except UpstreamError as e:
            record = self._records.get(name, record)
            # While the breaker is open every request would log: it logged once.
            emit = log.debug if isinstance(e, CircuitOpen) else log.warn
            if record is not None:
                emit("upstream failed for {project}, serving the stale page: {error}",
                     project=name, error=str(e))
                return PageResult(record, stale=True)
            emit("upstream failed for {project}, which is not cached: answering 503: {error}",
                 project=name, error=str(e))
            raise UpstreamUnavailable(str(e), retry_after=retry_after_seconds(e)) from e
        if fresh is None:
            return None
        return PageResult(fresh)

    async def refresh(self, name: str) -> ProjectRecord | None:
        """Ask the upstream now (shared with any refresh in flight)."""
        return await self._refreshes.run(name, lambda: self._refresh(name))

    async def _refresh(self, name: str, loaded: tuple[ProjectRecord | None] | None = None) -> ProjectRecord | None:
        """``loaded``: what :meth:`load` just found, so that a project the index
        does not hold (every first request of a cold install) costs one index
        read instead of two."""
        current = self._records.get(name)
        if current is None:
            current = loaded[0] if loaded is not None else await self.index.get_project(name)
        validators = current.validators if current is not None and current.files else Validators()
        now = self.clock.seconds()
        try:
            page = await self.traffic.timed("page", lambda: self.upstream.fetch_project(name, validators))
        except NotModified:
            record = await self.index.mark_refreshed(name, now, validators)
            if current is not None:
                # Keep the same files tuple so rendered pages stay valid.
                record = attrs.evolve(current, refreshed_at=now, validators=validators)
            return self.remember(record) if record is not None else None
        except UpstreamNotFound:
            if current is not None and current.origin == "local":  # merged private project
                # Kept in the index too: the record is re-read every
                # local_recheck, and must not ask again before page_ttl.
                record = await self.index.mark_refreshed(name, now, None)
                return self.remember(record if record is not None else attrs.evolve(current, refreshed_at=now))
            log.info("upstream does not know {project}", project=name)
            self._records.pop(name, None)
            self.not_found.add(name)
            return None
        except UpstreamError:
            raise
        except Exception as e:  # a provider bug must not become a 500 traceback loop
            log.failure("upstream provider failed for {project}", project=name)
            raise UpstreamError(f"upstream provider error: {e}") from e
        # The index drops the page if an upload made the name private
        # meanwhile (and it is not merged): then the private record returns.
        record = await self.index.save_upstream_page(page, now, name in self.merge)
        if current is not None and current.files == record.files:
            record = attrs.evolve(record, files=current.files)
        return self.remember(record)

    def note_record(self, name: str, record: Any) -> None:
        """Take the record an index write returned as the current copy.

        Called by the :class:`CataloguedIndex` after every write, never by
        hand.  Cheaper than :meth:`note_changed`, which reads the whole
        project back (601 files for numpy); an index that returns nothing
        (against the IIndex contract) just makes the next load read it.
        """
        if isinstance(record, ProjectRecord) and record.name == name:
            self.remember(record)
        else:
            self._records.pop(name, None)

    async def note_changed(self, name: str) -> ProjectRecord | None:
        """Reload a project from the index after its files changed."""
        record = await self.index.get_project(name)
        if record is not None:
            self.remember(record)
        else:
            self._records.pop(name, None)
            self.not_found.discard(name)
        return record

    # ---------------------------------------------------------------- root
    async def project_names(self, *, allow_upstream: bool = True) -> tuple[list[str], bool]:
        """Names for the root page: the upstream's list merged with ours.

        Returns (names, stale).  Without the upstream (offline, or the local
        view) only the projects the index holds are listed.
        """
        local = await self.index.list_projects()
        if not allow_upstream or self.offline:
            return local, False
        stale = False
        root = self._root
        if root is None:
            root = await self.index.get_project_list()
            self._root = root
        if root is None or self.clock.seconds() - root[1] >= self.root_ttl:
            try:
                root = await self._root_refresh.run("root", self._refresh_root)
            except UpstreamError as e:
                log.warn("upstream project list failed, serving what is cached: {error}", error=str(e))
                stale = True
        names = set(local)
        if root is not None:
            names.update(root[0].names)
        return sorted(names), stale

    async def _refresh_root(self) -> tuple[ProjectList, float] | None:
        now = self.clock.seconds()
        current = self._root
        try:
            plist = await self.traffic.timed("page", lambda: self.upstream.fetch_project_list(
                current[0].validators if current else Validators()))
        except NotModified:
            assert current is not None
            plist = current[0]
        await self.index.save_project_list(plist, now)
        self._root = (plist, now)
        return self._root
