"""Does the storage hold what the index says it holds?  And the right bytes?

The index marks a file ``stored`` (and its METADATA ``metadata_stored``, its
PEP 740 provenance ``provenance_sha256``) only after the blob is in place, so after any crash every such mark must still
point at a blob whose sha256 is its key.  :func:`verify` checks exactly that,
for every file of every project, and reports:

* **problems** -- a stored file whose blob is missing, corrupt (its bytes hash
  to something else) or unreadable, or whose index entry has no sha256 or a
  wrong size.  These are the cases where the server would otherwise fail to
  serve a file it lists (verify on read keeps it from serving wrong bytes);
* **orphans** -- blobs no stored file refers to: left by a crash between the
  blob's rename and the index write, or by deleted uploads.  Harmless (never
  served); a blob an index entry wants but does not mark stored is *adopted*
  by ``repair`` (it was hashed on the way in and is hashed again here);
* **quarantined** -- blobs that verify on read moved aside.

With ``repair=True`` a corrupt blob is removed, a missing or corrupt file is
marked not stored (so the proxy fetches it again from the upstream when next
asked; an uploaded file is then lost and must be uploaded again), a wrong
size is corrected, orphans wanted by the index are adopted and quarantined
blobs are deleted.  Orphans nobody wants are left alone: with a server
running, a blob may be a download whose index write is a moment away.

Used by ``pypicache verify`` (pypicache.cli.admin) and by the crash tests; it
only needs an :class:`~pypicache.interfaces.IIndex` and an
:class:`~pypicache.interfaces.IStorage`, and does more with the optional
capabilities (docs/providers.md):

* a storage without :class:`~pypicache.interfaces.IBlobInventory` is checked
  through readers (hashing what ``open_read`` gives) and its orphans are not
  looked for;
* one without :class:`~pypicache.interfaces.IBlobQuarantine` reports no
  quarantined blobs;
* an index without :class:`~pypicache.interfaces.IIndexRepair` cannot be
  told a blob is gone: ``repair`` then still removes a corrupt blob but leaves
  the entry (the server fetches the file again when it finds the blob gone).
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Callable

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from pypicache.interfaces import IBlobInventory, IBlobQuarantine, IIndexProvenance, IIndexRepair
from pypicache.model import BlobInfo, BlobNotFound

__all__ = ["Problem", "Report", "verify", "mark_unstored"]

_READ_CHUNK = 1024 * 1024

FILE = "file"
METADATA = "metadata"
#: A file's PEP 740 provenance object (pypicache.services.provenance).
PROVENANCE = "provenance"


def part_name(filename: str, part: str) -> str:
    """How a part of a file is named in messages: the file, or its sibling URL's name."""
    return filename if part == FILE else f"{filename}.{part}"


@attrs.frozen
class Problem:
    """One disagreement between the index and the storage.

    ``kind``: "missing", "corrupt", "unreadable", "no-hash" (stored without a
    sha256 in the index) or "size" (the index's size is not the blob's).
    ``action`` says what ``repair`` did about it (None: nothing).
    """

    project: str
    filename: str
    part: str
    sha256: str | None
    kind: str
    detail: str = ""
    action: str | None = None

    def __str__(self) -> str:
        what = part_name(self.filename, self.part)
        text = f"{self.kind}: {self.project}/{what}"
        if self.sha256:
            text += f" (blob {self.sha256})"
        if self.detail:
            text += f": {self.detail}"
        if self.action:
            text += f" -> {self.action}"
        return text


@attrs.define
class Report:
    """What :func:`verify` found (and, with repair, did)."""

    projects: int = 0
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[Problem] = attrs.Factory(list)
    #: (sha256, size) of blobs no stored file refers to, before adoption.
    orphans: list[tuple[str, int]] = attrs.Factory(list)
    #: Orphans an unstored index entry wanted and that were re-attached.
    adopted: list[str] = attrs.Factory(list)
    quarantined: int = 0
    quarantine_deleted: int = 0
    #: False when the storage cannot list its blobs (no orphan check).
    listed_blobs: bool = False

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if p.action is None]

    @property
    def ok(self) -> bool:
        """True when nothing is (left) wrong."""
        return not self.unrepaired

    def summary(self) -> str:
        text = (f"checked {self.files} stored file(s) and metadata in {self.projects} project(s): "
                f"{self.blobs} blob(s), {self.bytes} bytes; {len(self.problems)} problem(s)")
        repaired = len(self.problems) - len(self.unrepaired)
        if repaired:
            text += f", {repaired} repaired"
        if self.listed_blobs:
            text += f"; {len(self.orphans)} blob(s) not in the index"
            if self.orphans:
                text += f" ({sum(size for _, size in self.orphans)} bytes)"
            if self.adopted:
                text += f", {len(self.adopted)} re-attached"
        if self.quarantined:
            text += f"; {self.quarantined} quarantined blob(s)"
            if self.quarantine_deleted:
                text += f", {self.quarantine_deleted} deleted"
        return text


@attrs.frozen
class _Blob:
    status: str  # ok, missing, corrupt, unreadable
    size: int | None = None
    detail: str = ""
    removed: bool = False


async def _check_generic(storage: Any, sha256: str, deep: bool) -> _Blob:
    """Any IStorage: read the blob through a reader and hash it."""
    try:
        reader = await storage.open_read(sha256)
    except BlobNotFound:
        return _Blob("missing")
    try:
        size = reader.size
        if not deep:
            return _Blob("ok", size)
        h = hashlib.sha256()
        reader.seek(0)
        while True:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    except OSError as e:
        return _Blob("unreadable", detail=str(e))
    finally:
        reader.close()
    actual = h.hexdigest()
    if actual != sha256:
        return _Blob("corrupt", size, f"its bytes hash to {actual}")
    return _Blob("ok", size)


async def _check(storage: Any, sha256: str, *, deep: bool, repair: bool) -> _Blob:
    inventory = IBlobInventory.providedBy(storage)
    if inventory and deep:
        result = await storage.check_blob(sha256, remove_corrupt=repair)
        detail = result.error or (f"its bytes hash to {result.actual}" if result.status == "corrupt" else "")
        return _Blob(result.status, result.size, detail, result.removed)
    if inventory:  # quick: presence and size only
        try:
            return _Blob("ok", await storage.size(sha256))
        except BlobNotFound:
            return _Blob("missing")
    blob = await _check_generic(storage, sha256, deep)
    if repair and blob.status in ("corrupt", "unreadable"):
        await storage.delete(sha256)
        blob = attrs.evolve(blob, removed=True)
    return blob


async def mark_unstored(index: Any, project: str, filename: str, part: str) -> str | None:
    """Tell the index that a file's (or its METADATA's) bytes are gone.

    Returns a description of what was done, or None when this index cannot
    be told (it lacks :class:`~pypicache.interfaces.IIndexRepair`; then the
    server notices on the next request: the blob is gone, so it fetches the
    file again).
    """
    if part == PROVENANCE:
        if not IIndexProvenance.providedBy(index):
            return None
        try:  # fetched again from the upstream, and checked again, when next asked for
            await index.mark_provenance_stored(project, filename, None)
        except KeyError:
            return "no longer in the index"
        return "marked not stored"
    if not IIndexRepair.providedBy(index):
        return None
    try:
        await index.mark_unstored(project, filename, part == METADATA)
    except KeyError:  # the entry went away meanwhile: nothing left to unmark
        return "no longer in the index"
    return "marked not stored"


async def verify(index: Any, storage: Any, *, repair: bool = False, deep: bool = True,
                 reactor: Any = None, threadpool: Any = None,
                 on_problem: Callable[[Problem], None] | None = None) -> Report:
    """Check every stored file and METADATA blob of ``index`` in ``storage``.

    ``deep=False`` only checks presence and size (no hashing).  ``reactor``
    and ``threadpool`` let the blob listing run off the reactor thread; without
    them it runs inline (fine for tests and the admin command).
    ``on_problem`` is called for each problem as it is found (the command
    prints them as it goes).
    """
    report = Report()
    checked: dict[str, _Blob] = {}
    referenced: set[str] = set()
    #: sha256 -> entries that list it without marking it stored (adoptable).
    wanted: dict[str, list[tuple[str, str, str]]] = {}

    def found(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)

    for name in await index.list_projects():
        record = await index.get_project(name)
        if record is None:
            continue
        report.projects += 1
        for f in record.files:
            for part, stored, sha256 in ((FILE, f.stored, f.sha256),
                                         (METADATA, f.metadata_stored, f.metadata_sha256),
                                         (PROVENANCE, f.provenance_sha256 is not None, f.provenance_sha256)):
                if not stored:
                    if sha256 is not None:
                        wanted.setdefault(sha256, []).append((name, f.filename, part))
                    continue
                report.files += 1
                if sha256 is None:
                    action = await mark_unstored(index, name, f.filename, part) if repair else None
                    found(Problem(name, f.filename, part, None, "no-hash",
                                  "marked stored but the index has no sha256", action))
                    continue
                referenced.add(sha256)
                blob = checked.get(sha256)
                if blob is None:
                    blob = checked[sha256] = await _check(storage, sha256, deep=deep, repair=repair)
                    if blob.status == "ok":
                        report.blobs += 1
                        report.bytes += blob.size or 0
                if blob.status != "ok":
                    action = None
                    if repair:
                        action = await mark_unstored(index, name, f.filename, part)
                        if blob.removed:
                            action = "blob removed, " + (action or "index unchanged")
                    found(Problem(name, f.filename, part, sha256, blob.status, blob.detail, action))
                elif part == FILE and f.size is not None and blob.size is not None and f.size != blob.size:
                    action = None
                    if repair:
                        await index.mark_stored(name, f.filename, BlobInfo(sha256=sha256, size=blob.size))
                        action = "size corrected"
                    found(Problem(name, f.filename, part, sha256, "size",
                                  f"the index says {f.size} bytes, the blob has {blob.size}", action))

    if IBlobInventory.providedBy(storage):
        report.listed_blobs = True
        blobs = await _blocking(reactor, threadpool, lambda: list(storage.iter_blobs()))
        report.orphans = [(sha, size) for sha, size in blobs if sha not in referenced]
        if repair:
            for sha, _size in report.orphans:
                if sha in wanted and (await _check(storage, sha, deep=True, repair=False)).status == "ok":
                    for project, filename, part in wanted[sha]:
                        await _adopt(index, project, filename, part, sha, _size)
                    report.adopted.append(sha)
    if IBlobQuarantine.providedBy(storage):
        entries = await _blocking(reactor, threadpool, storage.quarantined)
        report.quarantined = len(entries)
        if repair:
            for entry in entries:
                if await _blocking(reactor, threadpool, partial(storage.discard_quarantined, entry)):
                    report.quarantine_deleted += 1
    return report


async def _adopt(index: Any, project: str, filename: str, part: str, sha256: str, size: int) -> None:
    try:
        if part == FILE:
            await index.mark_stored(project, filename, BlobInfo(sha256=sha256, size=size))
        else:
            await index.mark_metadata_stored(project, filename, sha256)
    except KeyError:  # the entry went away meanwhile
        pass


def _blocking(reactor: Any, threadpool: Any, f: Callable[[], Any]) -> defer.Deferred:
    if reactor is None or threadpool is None:
        return defer.maybeDeferred(f)
    return deferToThreadPool(reactor, threadpool, f)
