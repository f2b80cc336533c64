"""Counters that say what the cache is worth: hits, misses, bytes saved.

Kept in memory (reset at restart) and shown at ``/stats`` as JSON, so an
operator can see the hit rate without parsing logs.  The per-project
request counts behind the web UI's "top projects" are kept here too,
bounded (:data:`PROJECTS_KEPT`), and left out of ``/stats``.
"""

from __future__ import annotations

import heapq

import attrs

#: Projects whose file requests are counted; past it the least requested
#: half is forgotten (amortised O(1) per request, bounded memory whatever
#: names clients ask for).
PROJECTS_KEPT = 2048


@attrs.define
class Stats:
    pages: int = 0
    pages_not_modified: int = 0
    pages_stale: int = 0
    file_hits: int = 0
    file_misses: int = 0
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0
    #: File requests per project (hits and misses), for the web UI.
    by_project: dict[str, int] = attrs.field(factory=dict, init=False, repr=False, eq=False)

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self, filter=lambda attribute, _: attribute.name != "by_project")

    def note_project(self, name: str) -> None:
        """Count one file request for ``name``: a dict increment."""
        counts = self.by_project
        counts[name] = counts.get(name, 0) + 1
        if len(counts) > PROJECTS_KEPT:
            keep = heapq.nlargest(PROJECTS_KEPT // 2, counts.items(), key=lambda item: item[1])
            counts.clear()
            counts.update(keep)

    def top_projects(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` most requested projects, most requested first."""
        return heapq.nlargest(n, self.by_project.items(), key=lambda item: (item[1], item[0]))
