"""Counters that say what the cache is worth: hits, misses, bytes saved.

Kept in memory (reset at restart) and shown at ``/stats`` as JSON, so an
operator can see the hit rate without parsing logs.
"""

from __future__ import annotations

import attrs


@attrs.define
class Stats:
    pages: int = 0
    pages_not_modified: int = 0
    pages_stale: int = 0
    file_hits: int = 0
    file_misses: int = 0
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)
