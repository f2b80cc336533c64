"""The mirror's bounded in-memory caches: project records and unknown names.

Both exist to keep the upstream and the index out of the hot path, and both
must stay bounded whatever clients or the upstream do: a project of 100,000
files must not hold hundreds of MiB, and a client asking for a million made-up
names must not grow the server (nor make it ask the upstream a million times
a minute).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from pypicache.model import ProjectRecord

__all__ = ["RecordCache", "NotFoundCache", "record_cost"]

#: What one parsed file costs in memory, roughly (a FileRecord with its
#: strings and hashes dict measures 0.9 KiB), and one project on top.
FILE_COST = 1024
PROJECT_COST = 1024


def record_cost(record: ProjectRecord) -> int:
    """An estimate of the bytes ``record`` holds: cheap (no walk over its
    files), because it is taken every time a record is remembered."""
    return PROJECT_COST + FILE_COST * len(record.files)


class RecordCache(OrderedDict):  # type: ignore[type-arg]
    """Project records by name, least recently used dropped past a byte budget.

    A plain OrderedDict to its users (``get``, ``pop``, ``in``,
    ``move_to_end``) that keeps ``used``, the estimated bytes of what it
    holds.  Call :meth:`trim` after adding (and moving to the end): it drops
    the oldest records until ``used <= budget`` and returns their names.  A
    record bigger than the whole budget is not kept at all (it is read from
    the index when needed), and pushes nothing else out.
    """

    def __init__(self, budget: int, max_entries: int | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.max_entries = max_entries
        self.used = 0
        self._costs: dict[str, int] = {}

    def __setitem__(self, name: str, record: ProjectRecord) -> None:
        cost = record_cost(record)
        self.used += cost - self._costs.get(name, 0)
        self._costs[name] = cost
        super().__setitem__(name, record)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self.used -= self._costs.pop(name)

    def pop(self, name: str, *default: Any) -> Any:
        if name in self:
            self.used -= self._costs.pop(name)
        return super().pop(name, *default)

    def popitem(self, last: bool = True) -> tuple[str, ProjectRecord]:
        name, record = super().popitem(last=last)
        self.used -= self._costs.pop(name)
        return name, record

    def trim(self) -> list[str]:
        gone = []
        if self:
            newest = next(reversed(self))
            if self._costs[newest] > self.budget:  # would push out everything else: not kept
                self.pop(newest)
                gone.append(newest)
        while self and (self.used > self.budget or (self.max_entries is not None and len(self) > self.max_entries)):
            gone.append(self.popitem(last=False)[0])
        return gone


class NotFoundCache:
    """Names the upstream answered 404 for, and when: for ``ttl`` seconds
    such a name is answered 404 without asking the upstream again.

    At most ``max_entries`` names are kept (the oldest answers go first), so
    a client walking through made-up names costs bounded memory.  ``ttl`` 0
    turns it off.
    """

    def __init__(self, now: Callable[[], float], ttl: float, max_entries: int = 16384) -> None:
        self.now = now
        self.ttl = ttl
        self.max_entries = max_entries
        self._since: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._since)

    def add(self, name: str) -> None:
        if self.ttl <= 0:
            return
        self._since.pop(name, None)
        self._since[name] = self.now()
        while len(self._since) > self.max_entries:
            self._since.popitem(last=False)

    def __contains__(self, name: str) -> bool:
        """True while the upstream's 404 for ``name`` is younger than ``ttl``."""
        since = self._since.get(name)
        if since is None:
            return False
        if self.now() - since < self.ttl:
            return True
        del self._since[name]
        return False

    def discard(self, name: str) -> None:
        """Forget the 404 (the name was created here, or an admin changed it)."""
        self._since.pop(name, None)
