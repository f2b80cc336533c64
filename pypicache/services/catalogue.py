"""The one writer of the index: every write tells the mirror's memory what changed.

The mirror serves pages from an in-memory copy of each project
(:class:`~pypicache.services.mirror.Mirror`), so a page is only as current as
the last time that copy was replaced.  Before this module every index write
had to be followed by a hand-written "note it" call, and a newcomer adding a
write path (eviction, a repair, a second index) would have had to know that.
Now the index the server hands out *is* a :class:`CataloguedIndex`: an
:class:`~pypicache.interfaces.IIndex` decorator (the shape of
:class:`~pypicache.providers.upstream.breaker.BreakerUpstream`) that forwards
every call to the provider and, after each write, passes the
:class:`~pypicache.model.ProjectRecord` the provider returned to whoever
follows it (the mirror).  Whatever calls ``index.add_file`` or
``index.mark_stored`` keeps the pages in step without knowing they exist.

Writes made by another process (the ``pypicache`` admin command) cannot be
seen here; the mirror re-reads private projects every ``local_recheck``
seconds for them.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from zope.interface import directlyProvides, implementer, providedBy

from pypicache.interfaces import IIndex

__all__ = ["CataloguedIndex", "READS", "WRITES", "Follower"]

#: Called after a write to project ``name`` with what the index returned:
#: the new ProjectRecord, or anything else (None, a failure's absence of a
#: record) meaning "no record to take: forget the copy you hold".
Follower = Callable[[str, Any], None]

#: IIndex methods that change no project's files: forwarded as they are.
READS = frozenset({"get_project", "list_projects", "used_filename", "get_project_list",
                   "save_project_list", "close"})

#: Methods that change one project, named by their first argument, and fire
#: with its new ProjectRecord.  The optional ``mark_unstored`` (verify and
#: the scrub's repair) and ``mark_provenance_stored`` are too, when the
#: provider has them.  A new write
#: method belongs here: tests/test_catalogue.py fails for an IIndex method
#: that is in neither set.
WRITES = frozenset({"save_upstream_page", "mark_refreshed", "mark_stored", "mark_metadata_stored",
                    "add_file", "create_project", "set_yanked", "remove_file", "mark_unstored",
                    "mark_provenance_stored"})


@implementer(IIndex)
class CataloguedIndex:
    """Any IIndex, with every write's result passed to its followers.

    The wrapper also provides whatever optional interfaces the provider
    declares (:func:`zope.interface.providedBy`), and forwards every other
    attribute, so capability checks and provider extras see the provider.
    """

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self._followers: list[Follower] = []
        directlyProvides(self, providedBy(provider))

    def follow(self, follower: Follower) -> None:
        """Call ``follower(name, result)`` after every write to a project."""
        self._followers.append(follower)

    def _noted(self, name: str, result: Any) -> Any:
        for follower in self._followers:
            follower(name, result)
        return result

    def _write(self, method: str, name: str, *args: Any, **kwargs: Any) -> defer.Deferred:
        d = defer.maybeDeferred(getattr(self.provider, method), name, *args, **kwargs)
        return d.addCallback(lambda result: self._noted(name, result))

    # ---------------------------------------------------------------- reads
    def get_project(self, name: str) -> Any:
        return self.provider.get_project(name)

    def list_projects(self) -> Any:
        return self.provider.list_projects()

    def used_filename(self, filename: str) -> Any:
        return self.provider.used_filename(filename)

    def get_project_list(self) -> Any:
        return self.provider.get_project_list()

    def save_project_list(self, project_list: Any, refreshed_at: float) -> Any:
        return self.provider.save_project_list(project_list, refreshed_at)

    def close(self) -> Any:
        return self.provider.close()

    # --------------------------------------------------------------- writes
    def save_upstream_page(self, page: Any, refreshed_at: float, merge: bool = False) -> defer.Deferred:
        d = defer.maybeDeferred(self.provider.save_upstream_page, page, refreshed_at, merge)
        return d.addCallback(lambda result: self._noted(page.name, result))

    def mark_refreshed(self, name: str, refreshed_at: float, validators: Any) -> defer.Deferred:
        return self._write("mark_refreshed", name, refreshed_at, validators)

    def mark_stored(self, name: str, filename: str, blob: Any) -> defer.Deferred:
        return self._write("mark_stored", name, filename, blob)

    def mark_metadata_stored(self, name: str, filename: str, sha256: str) -> defer.Deferred:
        return self._write("mark_metadata_stored", name, filename, sha256)

    def add_file(self, name: str, record: Any) -> defer.Deferred:
        return self._write("add_file", name, record)

    def create_project(self, name: str, origin: str) -> defer.Deferred:
        return self._write("create_project", name, origin)

    def set_yanked(self, name: str, filename: str, yanked: bool, reason: str | None) -> defer.Deferred:
        return self._write("set_yanked", name, filename, yanked, reason)

    def remove_file(self, name: str, filename: str) -> defer.Deferred:
        return self._write("remove_file", name, filename)

    # ------------------------------------------------------------- the rest
    def __getattr__(self, attr: str) -> Any:
        """Optional writes (``mark_unstored``) are noted like the others when
        the provider has them; anything else is the provider's own."""
        value = getattr(self.provider, attr)
        if attr in WRITES and callable(value):
            return lambda name, *args, **kwargs: self._write(attr, name, *args, **kwargs)
        return value

