"""How much disk the cache uses, against its limit: the web UI's gauge.

One small function-like object, :class:`DiskUsage`, so that the figure can
come from whatever knows it best: today the storage's inventory
(:class:`~pypicache.interfaces.IBlobInventory`, a walk of every blob, run in
the thread pool and remembered for ``ttl`` seconds so a page view never
walks the store); when the app keeps its own account of the cache's size
(a size limit with eviction), the UI's factory in pypicache.daemon.app
passes that instead.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from pypicache.interfaces import IBlobInventory

log = Logger()


@attrs.frozen
class Usage:
    """``used``: bytes held (None when the storage cannot say);
    ``limit``: the configured maximum (None: no limit); ``counts``: what
    ``used`` sums, said on the page ("storage": every blob; "cached files":
    what ``[cache] max_size`` bounds, private uploads left out)."""

    used: int | None
    limit: int | None
    counts: str = "storage"


class DiskUsage:
    """``await usage()`` -> :class:`Usage`, at most one walk per ``ttl`` seconds."""

    def __init__(self, storage: Any, in_thread: Callable[..., Any], clock: Any, limit: int | None = None, *,
                 ttl: float = 60.0) -> None:
        self.storage = storage
        self.in_thread = in_thread
        self.clock = clock
        self.limit = limit
        self.ttl = ttl
        self._known: tuple[float, int | None] | None = None
        self._walking: list[defer.Deferred[Any]] | None = None

    async def __call__(self) -> Usage:
        now = self.clock.seconds()
        if self._known is None or now - self._known[0] >= self.ttl:
            used = await self._walk()
            self._known = (self.clock.seconds(), used)
        return Usage(self._known[1], self.limit)

    def _walk(self) -> Awaitable[int | None]:
        """The sum of blob sizes; concurrent callers share one walk."""
        if not IBlobInventory.providedBy(self.storage):
            return defer.succeed(None)
        waiter: defer.Deferred[Any] = defer.Deferred()
        if self._walking is not None:
            self._walking.append(waiter)
            return waiter
        self._walking = [waiter]

        def settle(result: Any) -> None:
            waiters, self._walking = self._walking or [], None
            for d in waiters:
                d.callback(result)

        def failed(failure: Any) -> None:
            log.failure("cannot sum the storage's blob sizes", failure)
            settle(None)

        self.in_thread(_total, self.storage).addCallbacks(settle, failed)
        return waiter


def _total(storage: Any) -> int:
    """Blocking: walks the whole store."""
    return sum(size for _, size in storage.iter_blobs())
