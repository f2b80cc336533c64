"""The in-memory index: the reference semantics of :class:`IIndex`.

Besides the provider itself, this module holds the pure functions that say
*what* a save or a mark does to a :class:`ProjectRecord`.  Persistent
providers (``pypicache.index.sqlite``) load a record, apply the same function
and write the result back, so every provider merges upstream pages by exactly
the same rules and the contract test in :mod:`pypicache.testing` checks them
once.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from pypicache.interfaces import IIndex, IProviderFactory
from pypicache.model import (
    BlobInfo,
    FileRecord,
    ProjectList,
    ProjectPage,
    ProjectRecord,
    Validators,
)
from pypicache.providers import check_options

log = Logger()

#: ``origin`` of files and projects that come from the upstream.
UPSTREAM = "upstream"


# ------------------------------------------------------------ pure semantics


def _fresh(page_file: FileRecord) -> FileRecord:
    """A page's file as a new record: plain dicts, nothing stored yet.

    The page cannot know what we hold, so its ``stored`` flags are ignored.
    Copying the mappings means a caller that later mutates its page does not
    change what the index holds.
    """
    return attrs.evolve(
        page_file,
        hashes=dict(page_file.hashes),
        core_metadata=None if page_file.core_metadata is None else dict(page_file.core_metadata),
        stored=False,
        metadata_stored=False,
        listed=True,
        origin=UPSTREAM,
    )


def _carry_state(prior: FileRecord | None, new: FileRecord) -> FileRecord:
    """Give ``new`` (the page's version) the stored state of ``prior``.

    The stored bytes are only still valid when they are the bytes the page
    describes: a page listing a *different* sha256 for the filename resets
    ``stored``.  A page that gives no sha256 at all is no evidence of a
    change, so the state is kept and our verified digest (and size) carried
    over -- otherwise a hash-less upstream would make us forget every file on
    each refresh.  ``metadata_stored`` follows the same rule for the METADATA
    digest and is also reset when the file itself changed.
    """
    if prior is None:
        return new
    if not (prior.stored or prior.metadata_stored):
        return new
    changes: dict[str, Any] = {}
    prior_sha, new_sha = prior.sha256, new.sha256
    file_same = prior_sha is None or new_sha is None or prior_sha == new_sha
    if prior.stored and prior_sha is not None and file_same:
        changes["stored"] = True
        if new_sha is None:
            changes["hashes"] = {**new.hashes, "sha256": prior_sha}
        if new.size is None:
            changes["size"] = prior.size
    prior_meta, new_meta = prior.metadata_sha256, new.metadata_sha256
    if (prior.metadata_stored and prior_meta is not None and file_same
            and (new_meta is None or new_meta == prior_meta)):
        changes["metadata_stored"] = True
        if new_meta is None:
            changes["core_metadata"] = {**(new.core_metadata or {}), "sha256": prior_meta}
    return attrs.evolve(new, **changes) if changes else new


def merge_upstream_page(old: ProjectRecord | None, page: ProjectPage,
                        refreshed_at: float) -> ProjectRecord:
    """The record that results from saving ``page`` over ``old``.

    Files keep the page's order; after them come the files the page no
    longer lists but that we still hold (``stored``, now ``listed=False``)
    and any non-upstream files (never touched by an upstream page; a page
    entry with the same filename as one of them is ignored).  Unstored
    unlisted files are dropped.  A filename listed twice keeps its first entry.
    """
    previous = {f.filename: f for f in old.files} if old is not None else {}
    files: list[FileRecord] = []
    seen: set[str] = set()
    for page_file in page.files:
        if page_file.filename in seen:
            continue
        seen.add(page_file.filename)
        prior = previous.get(page_file.filename)
        if prior is not None and prior.origin != UPSTREAM:
            files.append(prior)
        else:
            files.append(_carry_state(prior, _fresh(page_file)))
    for prior in old.files if old is not None else ():
        if prior.filename in seen:
            continue
        if prior.origin != UPSTREAM:
            files.append(prior)
        elif prior.stored:
            files.append(prior if not prior.listed else attrs.evolve(prior, listed=False))
    return ProjectRecord(
        name=page.name,
        files=tuple(files),
        validators=page.validators,
        refreshed_at=refreshed_at,
        origin=UPSTREAM,
        versions=None if page.versions is None else tuple(page.versions),
        meta=dict(page.meta),
    )


def refreshed(record: ProjectRecord, refreshed_at: float,
              validators: Validators | None) -> ProjectRecord:
    """``record`` after a 304: new time, and new validators when given."""
    return attrs.evolve(record, refreshed_at=refreshed_at,
                        validators=record.validators if validators is None else validators)


def _replace_file(record: ProjectRecord, old: FileRecord, new: FileRecord) -> ProjectRecord:
    return attrs.evolve(record, files=tuple(new if f is old else f for f in record.files))


def _find(record: ProjectRecord, filename: str) -> FileRecord:
    found = record.file(filename)
    if found is None:
        raise KeyError(f"{record.name}: no file {filename!r}")
    return found


def with_file_stored(record: ProjectRecord, filename: str,
                     blob: BlobInfo) -> tuple[ProjectRecord, FileRecord]:
    """``record`` with ``filename``'s bytes marked as stored as ``blob``.

    Returns the new record and the new file record.  Raises KeyError for an
    unknown filename.  When the record already names a *different* sha256
    (the page changed while the download ran) nothing changes and a warning
    is logged: recording the blob would make the index point at bytes that
    are not the file it lists.
    """
    old = _find(record, filename)
    if old.sha256 is not None and old.sha256 != blob.sha256:
        log.warn("index: not marking {project}/{filename} stored: blob {blob} but "
                 "the index lists {listed}", project=record.name, filename=filename,
                 blob=blob.sha256, listed=old.sha256)
        return record, old
    hashes = dict(old.hashes)
    if old.sha256 is None:
        hashes["sha256"] = blob.sha256
    new = attrs.evolve(old, stored=True, size=blob.size, hashes=hashes)
    return _replace_file(record, old, new), new


def with_metadata_stored(record: ProjectRecord, filename: str,
                         sha256: str) -> tuple[ProjectRecord, FileRecord]:
    """``record`` with ``filename``'s METADATA marked as stored under ``sha256``.

    Same rules as :func:`with_file_stored`, for ``core_metadata['sha256']``.
    """
    old = _find(record, filename)
    if old.metadata_sha256 is not None and old.metadata_sha256 != sha256:
        log.warn("index: not marking {project}/{filename} metadata stored: {blob} but "
                 "the index lists {listed}", project=record.name, filename=filename,
                 blob=sha256, listed=old.metadata_sha256)
        return record, old
    core_metadata = dict(old.core_metadata or {})
    core_metadata["sha256"] = sha256
    new = attrs.evolve(old, metadata_stored=True, core_metadata=core_metadata)
    return _replace_file(record, old, new), new


# ------------------------------------------------------------------ provider


@implementer(IIndex)
class MemoryIndex:
    """A dict of records: for tests and for throw-away servers.

    Every answer is immediate (``defer.succeed``); nothing survives
    :meth:`close` or a restart.
    """

    def __init__(self) -> None:
        self._projects: dict[str, ProjectRecord] = {}
        self._project_list: tuple[ProjectList, float] | None = None

    def get_project(self, name: str) -> defer.Deferred:
        return defer.succeed(self._projects.get(name))

    def list_projects(self) -> defer.Deferred:
        return defer.succeed(sorted(self._projects))

    def save_upstream_page(self, page: ProjectPage, refreshed_at: float) -> defer.Deferred:
        record = merge_upstream_page(self._projects.get(page.name), page, refreshed_at)
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

    def _mark(self, how: Any, name: str, filename: str, what: Any) -> ProjectRecord:
        record = self._projects.get(name)
        if record is None:
            raise KeyError(f"no project {name!r}")
        record, _ = how(record, filename, what)
        self._projects[name] = record
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
        return MemoryIndex()


factory = MemoryIndexFactory()
