"""The in-memory index: the reference implementation of :class:`IIndex`.

What each operation does to a project is defined by the pure functions in
:mod:`pypicache.providers.index.rules`, shared with every other provider; this module
only keeps the results in dicts.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from twisted.internet import defer
from zope.interface import implementer

from pypicache.providers.index.rules import (
    check_upload,
    merge_upstream_page,
    refreshed,
    stored_with_blob,
    with_file_stored,
    with_metadata_stored,
    with_origin,
    with_provenance_stored,
    with_upload,
    with_yanked,
    without_file,
    without_stored,
)
from pypicache.interfaces import IIndex, IIndexProvenance, IIndexRepair, IProviderFactory
from pypicache.model import (
    BlobInfo,
    FileExists,
    FileRecord,
    ProjectList,
    ProjectPage,
    ProjectRecord,
    Validators,
    file_key,
)
from pypicache.providers import check_options


@implementer(IIndex, IIndexRepair, IIndexProvenance)
class MemoryIndex:
    """A dict of records: for tests and for throw-away servers.

    Every answer is immediate (``defer.succeed`` or ``defer.fail``); nothing
    survives :meth:`close` or a restart.
    """

    def __init__(self, clock: Any = None) -> None:
        #: Times the yank changes (the as-of views); None: the wall clock.
        self._clock = clock
        self._projects: dict[str, ProjectRecord] = {}
        self._project_list: tuple[ProjectList, float] | None = None
        #: Every filename ever uploaded, as its file_key -> its sha256 (never shrinks).
        self._used: dict[str, str] = {}

    def get_project(self, name: str) -> defer.Deferred:
        return defer.succeed(self._projects.get(name))

    def list_projects(self) -> defer.Deferred:
        return defer.succeed(sorted(self._projects))

    def save_upstream_page(self, page: ProjectPage, refreshed_at: float,
                           merge: bool = False) -> defer.Deferred:
        record = merge_upstream_page(self._projects.get(page.name), page, refreshed_at, merge)
        self._projects[record.name] = record
        return defer.succeed(record)

    def mark_refreshed(self, name: str, refreshed_at: float,
                       validators: Validators | None) -> defer.Deferred:
        record = self._projects.get(name)
        if record is None:
            return defer.succeed(None)
        record = self._projects[name] = refreshed(record, refreshed_at, validators)
        return defer.succeed(record)

    def mark_stored(self, name: str, filename: str, blob: BlobInfo) -> defer.Deferred:
        return defer.maybeDeferred(self._mark, with_file_stored, name, filename, blob)

    def mark_metadata_stored(self, name: str, filename: str, sha256: str) -> defer.Deferred:
        return defer.maybeDeferred(self._mark, with_metadata_stored, name, filename, sha256)

    def mark_provenance_stored(self, name: str, filename: str, sha256: str | None) -> defer.Deferred:
        """IIndexProvenance."""
        return defer.maybeDeferred(self._mark, with_provenance_stored, name, filename, sha256)

    def set_yanked(self, name: str, filename: str, yanked: bool,
                   reason: str | None) -> defer.Deferred:
        now = self._clock.seconds() if self._clock is not None else time.time()
        return defer.maybeDeferred(self._mark, with_yanked, name, filename, yanked, reason, now)

    # -------------------------------------------------------- IIndexRepair

    def mark_unstored(self, name: str, filename: str, metadata: bool) -> defer.Deferred:
        return defer.maybeDeferred(self._mark, without_stored, name, filename, metadata)

    def stored_with_blob(self, sha256: str) -> defer.Deferred:
        return defer.succeed(sorted(use for record in self._projects.values()
                                    for use in stored_with_blob(record, sha256)))

    def _existing(self, name: str) -> ProjectRecord:
        record = self._projects.get(name)
        if record is None:
            raise KeyError(f"no project {name!r}")
        return record

    def _mark(self, how: Callable[..., tuple[ProjectRecord, FileRecord]], name: str,
              filename: str, *what: Any) -> ProjectRecord:
        record, _ = how(self._existing(name), filename, *what)
        self._projects[name] = record
        return record

    def add_file(self, name: str, record: FileRecord) -> defer.Deferred:
        return defer.maybeDeferred(self._add_file, name, record)

    def _add_file(self, name: str, upload: FileRecord) -> ProjectRecord:
        sha256 = check_upload(upload)
        key = file_key(upload.filename)
        used = self._used.get(key)
        if used is not None:
            raise FileExists(upload.filename, used)
        record = self._projects[name] = with_upload(self._projects.get(name), name, upload)
        self._used[key] = sha256
        return record

    def create_project(self, name: str, origin: str) -> defer.Deferred:
        return defer.maybeDeferred(self._create_project, name, origin)

    def _create_project(self, name: str, origin: str) -> ProjectRecord:
        record = self._projects[name] = with_origin(self._projects.get(name), name, origin)
        return record

    def used_filename(self, filename: str) -> defer.Deferred:
        return defer.succeed(self._used.get(file_key(filename)))

    def remove_file(self, name: str, filename: str) -> defer.Deferred:
        return defer.maybeDeferred(self._remove_file, name, filename)

    def _remove_file(self, name: str, filename: str) -> ProjectRecord:
        record = self._projects[name] = without_file(self._existing(name), filename)
        return record

    def get_project_list(self) -> defer.Deferred:
        return defer.succeed(self._project_list)

    def save_project_list(self, project_list: ProjectList, refreshed_at: float) -> defer.Deferred:
        self._project_list = (project_list, refreshed_at)
        return defer.succeed(None)

    def close(self) -> defer.Deferred:
        return defer.succeed(None)


@implementer(IProviderFactory)
class MemoryIndexFactory:
    """``provider = "memory"``: takes no options."""

    kind = "index"

    def create(self, options: Mapping[str, Any], context: Any) -> MemoryIndex:
        check_options("index", options, {})
        return MemoryIndex(context.reactor)


factory = MemoryIndexFactory()
