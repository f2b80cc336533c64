"""Value types shared by every provider and the web layer.

Everything here is a frozen attrs class: records travel between threads (the
SQLite provider answers from a thread pool) and are cached in memory, so they
must never be mutated after construction.  Use ``attrs.evolve`` to change one.
"""

from __future__ import annotations

import re
from typing import Mapping

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    canonicalize_version,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version  # already loaded by packaging.utils

#: The Simple API version this server speaks (PEP 691 / PEP 700).
API_VERSION = "1.1"

#: PEP 508 names, ASCII only.  Spelled out in both cases with re.ASCII, not
#: with IGNORECASE: Unicode case folding would let ``ſ`` pass for ``s`` and the
#: Kelvin sign for ``k`` (and str.lower keeps ``ſ``), so a non-ASCII "name"
#: would reach the upstream and Location headers.
_VALID_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InvalidName(ValueError):
    """A project name that PEP 508 does not allow (and so no index can hold)."""


def normalize(name: str) -> str:
    """PEP 503 normalised form of a *valid* project name.

    Raises InvalidName for anything else (non-ASCII letters included), so a
    client-supplied string that is not a project name never reaches the index
    or a URL.
    """
    if not isinstance(name, str) or len(name) > 200 or not _VALID_NAME.fullmatch(name):
        raise InvalidName(f"not a valid project name: {name!r}")
    return str(canonicalize_name(name))


def file_key(filename: str) -> str:
    """The identity of a distribution file as the public index compares
    filenames: normalised name, normalised version, build tag and tag set.

    ``pkg-2.0.0-py3-none-any.whl`` and ``Pkg-2.0-py3-none-any.whl`` name the
    same file (PEP 440 versions, PEP 503 names), so "a filename is used once"
    must compare these keys, not strings.  An sdist's key has no extension
    (one sdist per release, as on PyPI).  A name that parses as neither
    (an old egg, say) is its own key.
    """
    try:
        if filename.endswith(".whl"):
            name, version, build, tags = parse_wheel_filename(filename)
            build_tag = "".join(str(part) for part in build)
            tag_set = ",".join(sorted(str(tag) for tag in tags))
            return f"wheel:{name}:{canonicalize_version(version)}:{build_tag}:{tag_set}"
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return f"sdist:{name}:{canonicalize_version(version)}"
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        pass
    return f"file:{filename}"


def version_of(filename: str) -> Version | None:
    """The version a wheel or sdist filename names, or None when it names
    none that parses (an egg, an installer, junk)."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def is_sha256(value: object) -> bool:
    """True for a lower-case 64-digit hex string: the only key storage accepts."""
    return isinstance(value, str) and bool(_SHA256.fullmatch(value))


@attrs.frozen
class BlobCheck:
    """The verdict on one blob (:meth:`pypicache.interfaces.IBlobInventory.check_blob`).

    ``status`` is "ok", "missing", "corrupt" (bytes do not hash to the key)
    or "unreadable" (an I/O error); ``actual`` is the digest found, if any.
    ``removed`` says a corrupt blob was moved aside.
    """

    sha256: str
    status: str
    size: int | None = None
    actual: str | None = None
    error: str | None = None
    removed: bool = False


@attrs.frozen
class Validators:
    """HTTP cache validators that the upstream gave for a page."""

    etag: str | None = None
    last_modified: str | None = None


@attrs.frozen
class FileRecord:
    """One distribution file of a project, as the index knows it.

    ``url`` is where the upstream serves the file (absolute); empty for files
    that were uploaded here.  ``hashes`` maps hash names to hex digests, as in
    PEP 691 (the sha256 is what the cache verifies against).
    ``core_metadata`` is None when no PEP 658 metadata is advertised, else the
    hashes of the METADATA file (possibly empty: advertised without a hash).
    ``stored`` says that the file's bytes are in storage under ``hashes['sha256']``;
    ``metadata_stored`` the same for the METADATA file.
    ``listed`` is False when the upstream no longer lists a file we still hold.
    ``provenance`` is the upstream's PEP 740 provenance URL (None: it gives
    none); ``provenance_sha256`` the blob of the provenance object once it
    was fetched, checked to name this file, and stored (None: not stored).
    """

    filename: str
    url: str = ""
    hashes: Mapping[str, str] = attrs.field(factory=dict)
    requires_python: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    core_metadata: Mapping[str, str] | None = None
    size: int | None = None
    upload_time: str | None = None
    stored: bool = False
    metadata_stored: bool = False
    listed: bool = True
    origin: str = "upstream"
    #: When this server first saw the file (seconds since the epoch; None:
    #: before the index recorded it), and every change of its yank state as
    #: ``(when, yanked, reason)``, oldest first: what the as-of views
    #: (``/as-of/<time>/simple/``) need.  Bookkeeping about the file, not
    #: part of what it is: left out of equality, so a record read back
    #: equals the one written whatever the index noted about it.
    first_seen: float | None = attrs.field(default=None, eq=False)
    yank_history: tuple[tuple[float, bool, str | None], ...] = attrs.field(default=(), eq=False)
    provenance: str | None = None
    provenance_sha256: str | None = None

    @property
    def sha256(self) -> str | None:
        value = self.hashes.get("sha256")
        return value if is_sha256(value) else None

    @property
    def metadata_sha256(self) -> str | None:
        if self.core_metadata is None:
            return None
        value = self.core_metadata.get("sha256")
        return value if is_sha256(value) else None


@attrs.frozen
class ProjectPage:
    """One project's page as an upstream served it (already parsed).

    ``files`` keep the upstream's order.  ``meta`` holds extra page-level keys
    worth passing on (for example PEP 708 ``tracks``); ``versions`` is the PEP
    700 list when the upstream gave one.
    """

    name: str
    files: tuple[FileRecord, ...] = ()
    validators: Validators = Validators()
    versions: tuple[str, ...] | None = None
    meta: Mapping[str, object] = attrs.field(factory=dict)


@attrs.frozen
class ProjectRecord:
    """One project as the index holds it: its files plus cache bookkeeping.

    ``refreshed_at`` is the time (seconds since the epoch) at which the
    upstream last confirmed the page (200 or 304); None for a project never
    fetched from upstream (a private one, or a stub).
    """

    name: str
    files: tuple[FileRecord, ...] = ()
    validators: Validators = Validators()
    refreshed_at: float | None = None
    origin: str = "upstream"
    versions: tuple[str, ...] | None = None
    meta: Mapping[str, object] = attrs.field(factory=dict)

    _by_filename: dict[str, FileRecord] | None = attrs.field(default=None, init=False, eq=False, repr=False)

    def file(self, filename: str) -> FileRecord | None:
        """The file named ``filename``: a dict lookup (pages list hundreds)."""
        by_filename = self._by_filename
        if by_filename is None:
            by_filename = {}
            for record in self.files:
                by_filename.setdefault(record.filename, record)
            object.__setattr__(self, "_by_filename", by_filename)
        return by_filename.get(filename)


@attrs.frozen
class ProjectList:
    """The upstream's list of project names (the Simple API root)."""

    names: tuple[str, ...] = ()
    validators: Validators = Validators()


@attrs.frozen
class BlobInfo:
    """What storage reports about a committed blob."""

    sha256: str
    size: int


class NotModified(Exception):
    """The upstream answered 304 to a conditional request."""


class UpstreamNotFound(Exception):
    """The upstream does not know this project or file (404/410)."""


class UpstreamError(Exception):
    """The upstream could not be asked or answered wrongly (5xx, reset,
    timeout, malformed page).  Callers fall back to what is cached."""


class HashMismatch(Exception):
    """Bytes whose sha256 differs from the expected digest: nothing is stored."""


class FileExists(Exception):
    """A filename that was used before: uploads never replace a file."""

    def __init__(self, filename: str, sha256: str | None = None) -> None:
        super().__init__(f"{filename} already exists")
        self.filename = filename
        self.sha256 = sha256


class BlobNotFound(KeyError):
    """No blob with that sha256 in storage."""
