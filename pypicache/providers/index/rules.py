"""What every index operation does to a :class:`ProjectRecord`, as pure functions.

Each provider loads a record, applies one of these functions and stores the
result (the memory index keeps it in a dict, the SQLite index writes it in
one transaction).  Keeping the rules here, apart from any storage, means
every provider merges upstream pages, marks files and handles uploads by
exactly the same rules, and the contract test in :mod:`pypicache.testing`
checks them once.

Nothing here does I/O or keeps state: the one rule that needs state across
projects (a filename may be uploaded only once, ever) is the providers' job.
"""

from __future__ import annotations

from typing import Any

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from twisted.logger import Logger

from pypicache.model import (
    file_key,
    BlobInfo,
    FileExists,
    FileRecord,
    ProjectPage,
    ProjectRecord,
    Validators,
)

log = Logger()

#: ``origin`` of files and projects that come from the upstream.
UPSTREAM = "upstream"

#: ``origin`` of uploaded files and of private projects.
LOCAL = "local"


# ------------------------------------------------------------ upstream pages


def _fresh(page_file: FileRecord, prior: FileRecord | None, at: float) -> FileRecord:
    """A page's file as a new record: plain dicts, nothing stored yet.

    The page cannot know what we hold, so its ``stored`` flags are ignored.
    Copying the mappings means a caller that later mutates its page does not
    change what the index holds.  The history the as-of views read comes
    from ``prior`` (None: a file first seen ``at``): a change of yank state
    is noted as happening ``at``, when this server learnt of it; a file
    first seen yanked was yanked no later than that.
    """
    yanked, reason = page_file.yanked, page_file.yanked_reason if page_file.yanked else None
    if prior is None:
        first_seen: float | None = at
        history: tuple[tuple[float, bool, str | None], ...] = ((at, True, reason),) if yanked else ()
    else:
        first_seen, history = prior.first_seen, prior.yank_history
        if (prior.yanked, prior.yanked_reason if prior.yanked else None) != (yanked, reason):
            history += ((at, yanked, reason),)
    return attrs.evolve(
        page_file,
        hashes=dict(page_file.hashes),
        core_metadata=None if page_file.core_metadata is None else dict(page_file.core_metadata),
        stored=False,
        metadata_stored=False,
        provenance_sha256=None,
        listed=True,
        origin=UPSTREAM,
        first_seen=first_seen,
        yank_history=history,
    )


def _carry_state(prior: FileRecord | None, new: FileRecord) -> FileRecord:
    """Give ``new`` (the page's version) the stored state of ``prior``.

    The stored bytes are only still valid when they are the bytes the page
    describes: a page listing a *different* sha256 for the filename resets
    ``stored``.  A page that gives no sha256 at all is no evidence of a
    change, so the state is kept and our verified digest (and size) carried
    over -- otherwise a hash-less upstream would make us forget every file on
    each refresh.  ``metadata_stored`` follows the same rule for the METADATA
    digest and is also reset when the file itself changed; so does the
    stored provenance, kept while the page still offers one.
    """
    if prior is None:
        return new
    if not (prior.stored or prior.metadata_stored or prior.provenance_sha256):
        return new
    changes: dict[str, Any] = {}
    prior_sha, new_sha = prior.sha256, new.sha256
    file_same = prior_sha is None or new_sha is None or prior_sha == new_sha
    if prior.provenance_sha256 and file_same and new.provenance is not None:
        # The provenance was checked to name these bytes: still good while
        # the page offers one for them (an upstream may re-sign, not rebind).
        changes["provenance_sha256"] = prior.provenance_sha256
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
                        refreshed_at: float, merge: bool = False) -> ProjectRecord:
    """The record that results from saving ``page`` over ``old``.

    A page never enters a private project (``old.origin == "local"``)
    unless ``merge`` says the name is listed in ``[uploads] merge``: then
    ``old`` itself is returned, unchanged.  A refresh that was already on
    its way when the first upload made the name private would otherwise
    list (and serve) the upstream's files under the private name for good.
    Providers apply this function inside the transaction that writes the
    result, so the check and the write see the same record.

    The page governs the upstream files only.  Order: first the upstream
    files the page lists, in the page's order; then every file the page does
    not govern, in its previous order -- files of another origin (uploads:
    never touched by a page, and a page entry with the same filename as one
    of them is ignored, so our file wins) and the upstream files the page no
    longer lists but that we still hold (``stored``, now ``listed=False``).
    Unstored unlisted upstream files are dropped.  A filename listed twice
    keeps its first entry.  The order is thus deterministic and stable
    across refreshes; within a page it carries no meaning.

    The project keeps its origin: a private project that opted in to
    merging (``origin="local"``) stays private.  Its ``versions`` is None,
    since the page's list does not know our uploads (the renderer derives
    the list from the filenames instead).  Validators, refresh time and
    page-level ``meta`` always come from the page.
    """
    if old is not None and old.origin == LOCAL and not merge:
        return old
    previous = {f.filename: f for f in old.files} if old is not None else {}
    origin = UPSTREAM if old is None else old.origin
    files: list[FileRecord] = []
    seen: set[str] = set()
    for page_file in page.files:
        if page_file.filename in seen:
            continue
        seen.add(page_file.filename)
        prior = previous.get(page_file.filename)
        if prior is not None and prior.origin != UPSTREAM:
            continue  # ours wins; it keeps its place among the ungoverned files
        files.append(_carry_state(prior, _fresh(page_file, prior, refreshed_at)))
    governed = {f.filename for f in files}
    for prior in old.files if old is not None else ():
        if prior.filename in governed:
            continue
        if prior.origin != UPSTREAM:
            files.append(prior)
        elif prior.stored:
            files.append(prior if not prior.listed else attrs.evolve(prior, listed=False))
    versions = None if origin == LOCAL or page.versions is None else tuple(page.versions)
    return ProjectRecord(
        name=page.name,
        files=tuple(files),
        validators=page.validators,
        refreshed_at=refreshed_at,
        origin=origin,
        versions=versions,
        meta=dict(page.meta),
    )


def refreshed(record: ProjectRecord, refreshed_at: float,
              validators: Validators | None) -> ProjectRecord:
    """``record`` after a 304: new time, and new validators when given."""
    return attrs.evolve(record, refreshed_at=refreshed_at,
                        validators=record.validators if validators is None else validators)


# --------------------------------------------------------------- file marks
# Each returns (new record, new file record); the record is returned
# unchanged (the same object) when nothing changes, so a provider can skip
# the write.


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

    Raises KeyError for an unknown filename.  When the record already names
    a *different* sha256 (the page changed while the download ran) nothing
    changes and a warning is logged: recording the blob would make the index
    point at bytes that are not the file it lists.
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


def with_provenance_stored(record: ProjectRecord, filename: str,
                           sha256: str | None) -> tuple[ProjectRecord, FileRecord]:
    """``record`` with ``filename``'s PEP 740 provenance object recorded as
    the blob ``sha256`` (None: forget it, the blob is gone).

    The caller checked that the object names this file's sha256 and
    filename (:mod:`pypicache.services.provenance`).  KeyError for an
    unknown filename; unchanged (the same objects) when already so.
    """
    old = _find(record, filename)
    if old.provenance_sha256 == sha256:
        return record, old
    new = attrs.evolve(old, provenance_sha256=sha256)
    return _replace_file(record, old, new), new


def without_stored(record: ProjectRecord, filename: str,
                   metadata: bool) -> tuple[ProjectRecord, FileRecord]:
    """``record`` with ``filename``'s bytes (or, with ``metadata``, its
    METADATA's) marked not stored (:meth:`IIndexRepair.mark_unstored`).

    The sha256 stays: the bytes fetched again must hash to it.  Unchanged
    when it was not marked stored; KeyError for an unknown filename.
    """
    old = _find(record, filename)
    field = "metadata_stored" if metadata else "stored"
    if not getattr(old, field):
        return record, old
    new = attrs.evolve(old, **{field: False})
    return _replace_file(record, old, new), new


def stored_with_blob(record: ProjectRecord, sha256: str) -> list[tuple[str, str, str]]:
    """``(project, filename, part)`` of each of ``record``'s files marked
    stored whose bytes (part "file"), METADATA (part "metadata") or
    provenance (part "provenance") are the blob ``sha256``
    (:meth:`IIndexRepair.stored_with_blob`)."""
    found = []
    for f in record.files:
        if f.stored and f.sha256 == sha256:
            found.append((record.name, f.filename, "file"))
        if f.metadata_stored and f.metadata_sha256 == sha256:
            found.append((record.name, f.filename, "metadata"))
        if f.provenance_sha256 == sha256:
            found.append((record.name, f.filename, "provenance"))
    return found


def with_yanked(record: ProjectRecord, filename: str, yanked: bool,
                reason: str | None, at: float | None = None) -> tuple[ProjectRecord, FileRecord]:
    """``record`` with ``filename`` yanked (PEP 592) or not.

    An un-yanked file has no reason: PEP 592 gives a reason only to a yanked
    file, and keeping a stale one would resurface on the next yank.  Raises
    KeyError for an unknown filename.  ``at`` (seconds since the epoch):
    the change joins the file's ``yank_history`` (the as-of views).
    """
    old = _find(record, filename)
    yanked = bool(yanked)
    new = attrs.evolve(old, yanked=yanked, yanked_reason=reason if yanked else None)
    if new == old:
        return record, old
    if at is not None:
        new = attrs.evolve(new, yank_history=old.yank_history + ((at, yanked, new.yanked_reason),))
    return _replace_file(record, old, new), new


def without_file(record: ProjectRecord, filename: str) -> ProjectRecord:
    """``record`` minus ``filename`` (KeyError when it has no such file).

    The project itself stays, even with no files left: a private name must
    stay private rather than fall back to the upstream's project of that name.
    """
    old = _find(record, filename)
    return attrs.evolve(record, files=tuple(f for f in record.files if f is not old))


# ---------------------------------------------------------- private projects


def check_upload(upload: FileRecord) -> str:
    """``upload``'s sha256; ValueError unless it can be added as an uploaded file.

    It must be ``origin="local"`` and carry a valid sha256: the digest is
    what storage keys the bytes by and what the used-filename register
    remembers (so a re-upload of identical bytes can be recognised).
    """
    if upload.origin != LOCAL:
        raise ValueError(f"{upload.filename}: an uploaded file must have origin {LOCAL!r}, "
                         f"not {upload.origin!r}")
    sha256 = upload.sha256
    if sha256 is None:
        raise ValueError(f"{upload.filename}: an uploaded file needs a sha256 in its hashes")
    return sha256


def privatised(record: ProjectRecord) -> ProjectRecord:
    """``record`` turned private (unchanged when it already is).

    The upstream no longer governs the name: its unstored files are dropped
    (we cannot serve them), stored ones are kept but unlisted: no view shows
    or serves them (:mod:`pypicache.services.visibility`) unless the name later opts
    in to merging.
    The upstream bookkeeping goes too -- validators, refresh time, versions
    and page meta -- so that should the name later opt in to merging, the
    first upstream fetch is a full one rather than a 304 against files we
    dropped.
    """
    if record.origin == LOCAL:
        return record
    files = tuple(
        f if f.origin != UPSTREAM or not f.listed else attrs.evolve(f, listed=False)
        for f in record.files
        if f.origin != UPSTREAM or f.stored
    )
    return ProjectRecord(name=record.name, files=files, origin=LOCAL)


def with_upload(record: ProjectRecord | None, name: str, upload: FileRecord) -> ProjectRecord:
    """The record after adding the uploaded file ``upload`` to project ``name``.

    ``record`` is the project's current record, or None to create it
    private.  The project is made private first (:func:`privatised`); the
    new file goes last.  Raises ValueError for a record that is no upload
    (:func:`check_upload`) and :class:`FileExists` (with that file's sha256)
    when the project still holds a file of that name, whatever its origin:
    an upload never replaces a file.  Names compare as the public index
    compares them (:func:`pypicache.model.file_key`: ``2.0`` is ``2.0.0``).
    Whether the filename was used before anywhere else is for the provider
    to check first.
    """
    check_upload(upload)
    base = ProjectRecord(name=name, origin=LOCAL) if record is None else privatised(record)
    clash = base.file(upload.filename)
    if clash is None:
        key = file_key(upload.filename)
        clash = next((f for f in base.files if file_key(f.filename) == key), None)
    if clash is not None:
        raise FileExists(upload.filename, clash.sha256)
    upload = attrs.evolve(
        upload,
        hashes=dict(upload.hashes),
        core_metadata=None if upload.core_metadata is None else dict(upload.core_metadata),
    )
    return attrs.evolve(base, files=base.files + (upload,), versions=None)


def with_origin(record: ProjectRecord | None, name: str, origin: str) -> ProjectRecord:
    """The record after ``create_project(name, origin)``.

    A new project has no files and no upstream bookkeeping.  An existing one
    keeps everything -- files, validators, refresh time -- and only its
    origin changes (so an upstream project opted in to merging keeps its
    listed upstream files; compare :func:`privatised`, which an upload
    applies).  A private project has ``versions=None``.  Returns ``record``
    itself when nothing changes.
    """
    if not isinstance(origin, str) or not origin:
        raise ValueError(f"not a project origin: {origin!r}")
    if record is None:
        return ProjectRecord(name=name, origin=origin)
    if record.origin == origin:
        return record
    return attrs.evolve(record, origin=origin,
                        versions=None if origin == LOCAL else record.versions)


# ------------------------------------------------------ yank, unyank, delete


class NoUploadedFile(LookupError):
    """A yank/unyank/delete target that names no uploaded file.

    ``upstream`` is True when it names a file that came from the upstream
    (a conflict with the rule, not an unknown file).
    """

    def __init__(self, message: str, *, upstream: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream

    def __str__(self) -> str:
        return self.message


def _filename_version(filename: str) -> tuple[str, Version] | None:
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return str(canonicalize_name(name)), version


def uploaded_files(record: ProjectRecord, target: str) -> list[FileRecord]:
    """The uploaded files of ``record`` that ``target`` names: the one rule
    for yank, unyank and delete, over HTTP and with the admin command.

    ``target`` is an exact filename, or else a version: every uploaded file
    whose filename (parsed with packaging.utils) has that version.  Files
    cached from the upstream are never matched: the next refresh would undo
    a yank, and deleting them here would not remove them upstream.  Raises
    :class:`NoUploadedFile` when nothing matches.
    """
    exact = record.file(target)
    if exact is not None:
        if exact.origin != LOCAL:
            raise NoUploadedFile(f"{target} was not uploaded here (it comes from the upstream)", upstream=True)
        return [exact]
    try:
        version = Version(target)
    except InvalidVersion:
        raise NoUploadedFile(f"{record.name} has no file named {target!r} (and it is not a version)") from None
    found = []
    for f in record.files:
        if f.origin != LOCAL:
            continue
        parsed = _filename_version(f.filename)
        if parsed is not None and parsed[0] == record.name and parsed[1] == version:
            found.append(f)
    if not found:
        raise NoUploadedFile(f"{record.name} has no uploaded file of version {target}")
    return found
