"""Check an uploaded distribution the way the public index does.

Pure and synchronous (the caller runs it in a thread pool).  It never
extracts anything to disk: it only lists the archive and reads the one
metadata member, with hard caps on bytes, members, expansion and time,
because archives from clients lie (zip bombs, members named ``../x``,
headers that understate sizes, tar symlinks pointing at ``/etc``).

Every refusal is ``UploadError(400, reason)`` with a one-line reason that
names the rule, so a user running twine learns what to fix.  Nothing here
deletes the spooled file: the caller owns it (``UploadForm.discard``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import json
import lzma
import posixpath
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from pypicache.model import InvalidName, normalize
from pypicache.uploads.metadata import MAX_METADATA_BYTES, parse_core_metadata
from pypicache.uploads.multipart import UploadedFile, UploadError, UploadForm

__all__ = ["ValidUpload", "validate_upload", "WHEEL", "SDIST"]

WHEEL = "bdist_wheel"
SDIST = "sdist"

#: A member this much larger than its compressed size is a bomb...
MAX_RATIO = 100
#: ...unless it is this small anyway (tiny files compress oddly well).
_RATIO_FLOOR = 64 * 1024
#: Members listed before we give up on an archive.
MAX_MEMBERS = 100_000
#: Wall-clock budget for inspecting one archive.
MAX_SECONDS = 30.0
#: A tar.gz may always expand to this much, whatever its compressed size...
_UNPACK_FLOOR = 16 * 1024 * 1024
#: ...and never to more than this.
MAX_UNPACKED_BYTES = 2 * 1024 * 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_DRIVE = re.compile(r"^[A-Za-z]:")
#: One part of a wheel's compressed tag set (PEP 425: "py2.py3", "none",
#: "manylinux_2_17_x86_64"): what packaging.tags produces, and nothing that
#: could carry markup or a quote into a page.
_TAG_PART = re.compile(r"[A-Za-z0-9_]+", re.ASCII)


@attrs.frozen
class ValidUpload:
    """An upload that passed every check.

    ``project`` is the normalised name; ``version`` the normalised version
    string; ``metadata_bytes`` the METADATA/PKG-INFO exactly as in the
    archive (served as ``<file>.metadata``); ``metadata`` its parsed fields
    (see :mod:`pypicache.metadata`, the reader the JSON API shares);
    ``python_version`` what PyPI's JSON API calls it (``source`` for sdists,
    the wheel's python tag).
    """

    project: str
    version: str
    filename: str
    filetype: str
    metadata_bytes: bytes
    metadata: Mapping[str, Any]
    requires_python: str | None
    file: UploadedFile
    python_version: str
    #: PEP 740: the provenance object made of the ``attestations`` sent
    #: (twine ``--attestations``), checked to be about this file; None: none sent.
    provenance: bytes | None = None

    @property
    def metadata_sha256(self) -> str:
        """The sha256 under which ``metadata_bytes`` are stored and advertised (PEP 658)."""
        return hashlib.sha256(self.metadata_bytes).hexdigest()


@attrs.frozen
class _Limits:
    metadata_bytes: int
    ratio: int
    members: int
    unpacked_bytes: int
    deadline: Callable[[], None]


def validate_upload(
    form: UploadForm,
    *,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
    max_ratio: int = MAX_RATIO,
    max_members: int = MAX_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_seconds: float = MAX_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> ValidUpload:
    """Validate a parsed upload; return what the caller stores.

    Checks, in order: the form's action and protocol, that a file came,
    the filename, its name/version against the form, ``filetype``, every
    digest sent, the archive's structure, and its METADATA against the
    filename.  Raises UploadError(400) at the first failure.
    """
    _check_action(form)
    upload = form.file
    if upload is None:
        raise UploadError(400, "no file uploaded in the 'content' field")
    filename = upload.filename
    _check_filename(filename)
    filetype, fn_name, fn_version, python_version = _parse_filename(filename)
    project = _check_name(form, fn_name, filename)
    _check_version(form, fn_version, filename)
    _check_filetype(form, filetype, filename)
    _check_digests(form, upload)
    provenance = _attestations(form, filename, upload.sha256)

    started = clock()

    def deadline() -> None:
        if clock() - started > max_seconds:
            raise UploadError(400, "archive took too long to inspect")

    limits = _Limits(
        metadata_bytes=max_metadata_bytes,
        ratio=max_ratio,
        members=max_members,
        unpacked_bytes=max_unpacked_bytes,
        deadline=deadline,
    )
    if filetype == WHEEL:
        metadata_bytes = _wheel_metadata(upload.path, project, fn_version, limits)
    elif filename.endswith(".zip"):
        metadata_bytes = _zip_sdist_metadata(upload.path, limits)
    else:
        metadata_bytes = _tar_sdist_metadata(upload.path, upload.size, limits)

    metadata = parse_core_metadata(metadata_bytes, max_bytes=max_metadata_bytes)
    _check_metadata(metadata, project, fn_version)
    return ValidUpload(
        project=project,
        version=str(fn_version),
        filename=filename,
        filetype=filetype,
        metadata_bytes=metadata_bytes,
        metadata=metadata,
        requires_python=metadata["requires_python"],
        file=upload,
        python_version=python_version,
        provenance=provenance,
    )


# -- the form -----------------------------------------------------------------


def _single(form: UploadForm, field: str) -> str | None:
    """The one value of a single-valued field (None when absent or empty)."""
    values = form.fields.get(field) or []
    if len(values) > 1:
        raise UploadError(400, f"field {field!r} was given more than once")
    value = values[0].strip() if values else ""
    return value or None


#: The publisher recorded for attestations uploaded here: PEP 740 groups
#: attestations by Trusted Publisher, which a private index does not have.
#: Clients verify the signatures against their own identity policy.
UPLOAD_PUBLISHER = {"kind": "pypicache-upload"}


def _attestations(form: UploadForm, filename: str, sha256: str) -> bytes | None:
    """The provenance object (PEP 740) of the ``attestations`` field, a JSON
    list of attestation objects, or None when none was sent.  Every
    attestation must be about this file (pypicache.services.provenance):
    PyPI too refuses an upload whose attestations do not match it."""
    text = _single(form, "attestations")
    if text is None:
        return None
    from pypicache.services.provenance import ProvenanceRejected, check_provenance

    try:
        attestations = json.loads(text)
    except ValueError:
        raise UploadError(400, "'attestations' is not JSON") from None
    if not isinstance(attestations, list) or not attestations:
        raise UploadError(400, "'attestations' must be a non-empty JSON list of attestation objects")
    body = json.dumps({"version": 1, "attestation_bundles": [
        {"publisher": UPLOAD_PUBLISHER, "attestations": attestations}]}, separators=(",", ":")).encode()
    try:
        check_provenance(body, filename, sha256)
    except ProvenanceRejected as e:
        raise UploadError(400, f"attestations: {e}") from None
    return body


def _check_action(form: UploadForm) -> None:
    if _single(form, ":action") != "file_upload":
        raise UploadError(400, "':action' must be 'file_upload'")
    # Warehouse treats a missing protocol_version as 1; so do we.
    if _single(form, "protocol_version") not in (None, "1"):
        raise UploadError(400, "'protocol_version' must be '1'")


def _check_filename(filename: str) -> None:
    if not filename:
        raise UploadError(400, "empty filename")
    if len(filename) > 255:
        raise UploadError(400, "filename is longer than 255 characters")
    if "/" in filename or "\\" in filename:
        raise UploadError(400, "filename must not contain a path separator")
    if _CONTROL.search(filename):
        raise UploadError(400, "filename must not contain control characters")
    if not filename.isascii():
        raise UploadError(400, "filename must be ASCII")
    if filename.startswith("."):
        raise UploadError(400, "filename must not start with '.'")


def _parse_filename(filename: str) -> tuple[str, str, Version, str]:
    """Return ``(filetype, normalised name, version, python_version)``."""
    if filename.endswith(".whl"):
        try:
            name, version, _build, _tags = parse_wheel_filename(filename)
        except ValueError as e:
            raise UploadError(400, f"invalid wheel filename {filename!r}") from e
        tag_fields = filename[:-4].split("-")[-3:]
        for part in (p for field in tag_fields for p in field.split(".")):
            if not _TAG_PART.fullmatch(part):
                raise UploadError(400, f"invalid wheel tag {part[:50]!r} in {filename!r}: tags are "
                                       "letters, digits and '_' (PEP 425)")
        return WHEEL, str(name), version, tag_fields[0]
    if filename.endswith((".tar.gz", ".zip")):
        try:
            name, version = parse_sdist_filename(filename)
        except ValueError as e:
            raise UploadError(400, f"invalid sdist filename {filename!r}") from e
        return SDIST, str(name), version, "source"
    raise UploadError(
        400,
        f"unsupported file type {filename!r}: only wheels (.whl) and "
        "sdists (.tar.gz, .zip) are accepted",
    )


def _check_name(form: UploadForm, fn_name: str, filename: str) -> str:
    try:
        normalize(fn_name)
    except InvalidName:
        raise UploadError(400, f"invalid project name in filename {filename!r}") from None
    name = _single(form, "name")
    if name is None:
        raise UploadError(400, "missing 'name' field")
    try:
        project = normalize(name)
    except InvalidName:
        raise UploadError(400, f"invalid project name {name[:100]!r}") from None
    if project != fn_name:
        raise UploadError(400, f"name {name!r} does not match the filename {filename!r}")
    return project


def _check_version(form: UploadForm, fn_version: Version, filename: str) -> None:
    value = _single(form, "version")
    if value is None:
        raise UploadError(400, "missing 'version' field")
    try:
        version = Version(value)
    except InvalidVersion:
        raise UploadError(400, f"invalid version {value[:100]!r}") from None
    if version != fn_version:
        raise UploadError(400, f"version {value!r} does not match the filename {filename!r}")


def _check_filetype(form: UploadForm, expected: str, filename: str) -> None:
    filetype = _single(form, "filetype")
    if filetype is not None and filetype != expected:
        raise UploadError(
            400, f"filetype {filetype[:50]!r} does not match {filename!r} (expected {expected!r})"
        )


def _check_digests(form: UploadForm, upload: UploadedFile) -> None:
    """Every digest the client sent must match; none is required (twine
    omits blake2 under FIPS, older clients send only md5)."""
    for field, actual in (
        ("sha256_digest", upload.sha256),
        ("blake2_256_digest", upload.blake2_256),
        ("md5_digest", upload.md5),
    ):
        sent = _single(form, field)
        if sent is None:
            continue
        if not _digest_equal(sent, actual, allow_base64=field == "md5_digest"):
            raise UploadError(400, f"{field} does not match the uploaded file")


def _digest_equal(sent: str, actual_hex: str, *, allow_base64: bool) -> bool:
    actual = bytes.fromhex(actual_hex)
    if len(sent) == 2 * len(actual) and _HEX.fullmatch(sent):
        return hmac.compare_digest(bytes.fromhex(sent), actual)
    if allow_base64:
        # Warehouse documents md5_digest as unpadded urlsafe base64.
        try:
            decoded = base64.urlsafe_b64decode(sent + "=" * (-len(sent) % 4))
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, actual)
    return False


def _check_metadata(metadata: Mapping[str, Any], project: str, version: Version) -> None:
    """The archive's own METADATA must agree with the filename, and what
    installers will read from it (Requires-Python, Requires-Dist) must parse."""
    name = metadata["name"]
    try:
        metadata_project = normalize(name)
    except InvalidName:
        reason = f"METADATA Name {name[:100]!r} is not a valid project name"
        raise UploadError(400, reason) from None
    if metadata_project != project:
        raise UploadError(400, f"METADATA Name {name[:100]!r} does not match the filename")
    value = metadata["version"]
    try:
        metadata_version = Version(value)
    except InvalidVersion:
        reason = f"METADATA Version {value[:100]!r} is not a valid version"
        raise UploadError(400, reason) from None
    if metadata_version != version:
        raise UploadError(400, f"METADATA Version {value[:100]!r} does not match the filename")
    requires_python = metadata["requires_python"]
    if requires_python is not None:
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier:
            raise UploadError(
                400, f"METADATA Requires-Python {requires_python[:100]!r} is not valid"
            ) from None
    for requirement in metadata["requires_dist"]:
        try:
            Requirement(requirement)
        except InvalidRequirement:
            raise UploadError(
                400, f"METADATA Requires-Dist {requirement[:100]!r} is not valid"
            ) from None


# -- archives -----------------------------------------------------------------


def _unsafe(name: str) -> UploadError:
    return UploadError(400, f"archive member {name[:100]!r} has an unsafe path")


def _check_member_name(name: str) -> list[str]:
    """Refuse names that could escape an extraction directory; return parts."""
    if not name or "\\" in name or _CONTROL.search(name):
        raise _unsafe(name)
    if name.startswith("/") or _DRIVE.match(name):
        raise _unsafe(name)
    parts = name.split("/")
    if ".." in parts:
        raise _unsafe(name)
    return parts


def _count_zip_entries(fp: BinaryIO, limit: int) -> None:
    """Refuse a zip whose central directory holds more than ``limit`` entries.

    Walks the directory the way zipfile will (by bytes, not by the count the
    end record claims, which may lie) but without building an object per
    entry, so a hostile directory costs no memory.  Anything malformed is
    left for zipfile to report.
    """
    fp.seek(0, 2)
    size = fp.tell()
    tail_len = min(size, 22 + 65535)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return
    end = size - tail_len + at
    count, cd_size = struct.unpack("<HL", tail[at + 10 : at + 16])
    if end >= 20 + 56:
        fp.seek(end - 20)
        if fp.read(4) == b"PK\x06\x07":
            fp.seek(end - 20 - 56)
            record = fp.read(56)
            if record[:4] == b"PK\x06\x06":
                count, cd_size = struct.unpack("<QQ", record[32:48])
                end -= 20 + 56
    if count > limit:
        raise UploadError(400, f"archive has more than {limit} members")
    position = end - cd_size
    if position < 0:
        return
    fp.seek(position)
    seen = 0
    while position < end:
        header = fp.read(46)
        if len(header) < 46 or header[:4] != b"PK\x01\x02":
            return
        seen += 1
        if seen > limit:
            raise UploadError(400, f"archive has more than {limit} members")
        skip = sum(struct.unpack("<HHH", header[28:34]))
        fp.seek(skip, 1)
        position += 46 + skip


def _open_zip(fp: BinaryIO, limits: _Limits) -> zipfile.ZipFile:
    try:
        _count_zip_entries(fp, limits.members)
        fp.seek(0)
        return zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError,
            struct.error):
        raise UploadError(400, "not a valid zip archive") from None


def _zip_members(zf: zipfile.ZipFile, limits: _Limits) -> dict[str, zipfile.ZipInfo]:
    """Check every member's name and type; return them by name."""
    infos = zf.infolist()
    if len(infos) > limits.members:
        raise UploadError(400, f"archive has more than {limits.members} members")
    members: dict[str, zipfile.ZipInfo] = {}
    for index, info in enumerate(infos):
        if index % 1000 == 0:
            limits.deadline()
        # zipfile cuts names at NUL; the original name shows the trick.
        if "\x00" in info.orig_filename:
            raise _unsafe(info.orig_filename)
        _check_member_name(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UploadError(400, f"archive member {info.filename[:100]!r} is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UploadError(400, f"archive member {info.filename[:100]!r} is a special file")
        if info.filename in members:
            raise UploadError(400, f"archive has a duplicate member {info.filename[:100]!r}")
        members[info.filename] = info
    return members


def _read_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, limits: _Limits
) -> bytes:
    if info.is_dir():
        raise UploadError(400, f"{what} is not a regular file")
    if info.flag_bits & 0x1:
        raise UploadError(400, f"{what} is encrypted")
    if info.file_size > limits.metadata_bytes:
        raise UploadError(400, f"{what} is larger than {limits.metadata_bytes} bytes")
    ratio_limit = limits.ratio * max(info.compress_size, 1)
    if info.file_size > _RATIO_FLOOR and info.file_size > ratio_limit:
        raise UploadError(400, f"{what} has a suspicious compression ratio")
    try:
        with zf.open(info) as member:
            # A hard cap whatever the header says: zip bombs lie about sizes.
            data = member.read(limits.metadata_bytes + 1)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
            OSError, zlib.error, lzma.LZMAError):
        raise UploadError(400, f"could not read {what} from the archive") from None
    if len(data) > limits.metadata_bytes:
        raise UploadError(400, f"{what} is larger than {limits.metadata_bytes} bytes")
    if len(data) != info.file_size:
        raise UploadError(400, f"{what} size does not match the archive's header")
    return data


def _wheel_metadata(path: Path, project: str, version: Version, limits: _Limits) -> bytes:
    with open(path, "rb") as fp, _open_zip(fp, limits) as zf:
        members = _zip_members(zf, limits)
        dist_infos = {
            name.split("/", 1)[0]
            for name in members
            if "/" in name and name.split("/", 1)[0].endswith(".dist-info")
        }
        if len(dist_infos) != 1:
            found = len(dist_infos)
            reason = f"wheel must contain exactly one .dist-info directory, found {found}"
            raise UploadError(400, reason)
        dist_info = dist_infos.pop()
        if not _dist_info_matches(dist_info, project, version):
            raise UploadError(
                400, f"wheel's {dist_info[:100]!r} does not match the filename's name and version"
            )
        for required in ("METADATA", "WHEEL", "RECORD"):
            if f"{dist_info}/{required}" not in members:
                raise UploadError(400, f"wheel is missing {dist_info}/{required}")
        return _read_zip_member(zf, members[f"{dist_info}/METADATA"], "METADATA", limits)


def _dist_info_matches(dist_info: str, project: str, version: Version) -> bool:
    stem = dist_info[: -len(".dist-info")]
    name, sep, ver = stem.partition("-")
    if not sep:
        return False
    try:
        return canonicalize_name(name) == project and Version(ver) == version
    except InvalidVersion:
        return False


def _sdist_parts(name: str) -> list[str]:
    """Check a member name; return its parts without ``.`` or empty ones."""
    parts = _check_member_name(name)
    return [part for part in parts if part not in ("", ".")]


class _TopDir:
    """Tracks the single top-level directory every sdist member must be under."""

    def __init__(self) -> None:
        self.name: str | None = None

    def add(self, parts: list[str], is_dir: bool) -> None:
        if not parts:
            return  # the archive root itself ("./")
        if len(parts) == 1 and not is_dir:
            raise UploadError(400, "sdist must keep every file under one top-level directory")
        if self.name is None:
            self.name = parts[0]
        elif parts[0] != self.name:
            raise UploadError(400, "sdist must keep every file under one top-level directory")


def _zip_sdist_metadata(path: Path, limits: _Limits) -> bytes:
    with open(path, "rb") as fp, _open_zip(fp, limits) as zf:
        members = _zip_members(zf, limits)
        top = _TopDir()
        found: zipfile.ZipInfo | None = None
        for name, info in members.items():
            parts = _sdist_parts(name)
            top.add(parts, info.is_dir())
            if len(parts) == 2 and parts[1] == "PKG-INFO":
                if found is not None:
                    raise UploadError(400, "sdist has more than one PKG-INFO")
                found = info
        if found is None or top.name is None:
            raise UploadError(400, "sdist is missing PKG-INFO")
        return _read_zip_member(zf, found, "PKG-INFO", limits)


class _CappedReader:
    """A file-like wrapper that refuses to decompress past a byte budget.

    tarfile reads pax/GNU long-name headers whole, with one ``read(size)``
    of a size the archive chooses, and skips member data with ``seek``:
    both are checked here, before any work or allocation happens.
    """

    def __init__(self, raw: BinaryIO, budget: int, max_read: int) -> None:
        self._raw = raw
        self._budget = budget
        self._max_read = max_read

    def _refuse(self) -> UploadError:
        return UploadError(400, "sdist expands to too many bytes")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._max_read:
            raise self._refuse()
        if self._raw.tell() + size > self._budget:
            raise self._refuse()
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset > self._budget:
            if whence == 0:
                raise self._refuse()
            raise UploadError(400, "not a valid gzip-compressed tar archive")
        return self._raw.seek(offset)

    def tell(self) -> int:
        return self._raw.tell()


_TAR_ERRORS = (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, UnicodeError)


def _tar_sdist_metadata(path: Path, compressed_size: int, limits: _Limits) -> bytes:
    budget = min(
        max(compressed_size * limits.ratio, _UNPACK_FLOOR),
        limits.unpacked_bytes,
    )
    with open(path, "rb") as fp, gzip.GzipFile(fileobj=fp, mode="rb") as gz:
        reader = _CappedReader(gz, budget, max(limits.metadata_bytes + 1, 1024 * 1024))
        try:
            tar = tarfile.open(fileobj=reader, mode="r:")  # type: ignore[call-overload]
        except _TAR_ERRORS:
            raise UploadError(400, "not a valid gzip-compressed tar archive") from None
        with tar:
            try:
                return _scan_tar(tar, budget, limits)
            except _TAR_ERRORS:
                raise UploadError(400, "not a valid gzip-compressed tar archive") from None


def _scan_tar(tar: tarfile.TarFile, budget: int, limits: _Limits) -> bytes:
    top = _TopDir()
    names: set[str] = set()
    metadata: bytes | None = None
    expanded = 0
    count = 0
    while True:
        member = tar.next()
        if member is None:
            break
        # tarfile remembers every member; we need none of them afterwards.
        tar.members.clear()
        count += 1
        if count > limits.members:
            raise UploadError(400, f"archive has more than {limits.members} members")
        if count % 1000 == 0:
            limits.deadline()
        expanded += tarfile.BLOCKSIZE + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if expanded > budget:
            raise UploadError(400, "sdist expands to too many bytes")
        name = member.name
        parts = _sdist_parts(name)
        clean = "/".join(parts)
        if clean in names and not member.isdir():
            raise UploadError(400, f"archive has a duplicate member {name[:100]!r}")
        names.add(clean)
        _check_tar_member_type(member, parts)
        top.add(parts, member.isdir())
        if len(parts) == 2 and parts[1] == "PKG-INFO":
            if not member.isreg():
                raise UploadError(400, "PKG-INFO is not a regular file")
            if member.size > limits.metadata_bytes:
                raise UploadError(400, f"PKG-INFO is larger than {limits.metadata_bytes} bytes")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise UploadError(400, "PKG-INFO is not a regular file")
            metadata = extracted.read(limits.metadata_bytes + 1)
            if len(metadata) != member.size:
                raise UploadError(400, "PKG-INFO size does not match the archive's header")
    limits.deadline()
    if metadata is None or top.name is None:
        raise UploadError(400, "sdist is missing PKG-INFO")
    return metadata


def _check_tar_member_type(member: tarfile.TarInfo, parts: list[str]) -> None:
    label = member.name[:100]
    if member.isreg() or member.isdir():
        return
    if member.issym() or member.islnk():
        target = member.linkname
        if not target or "\\" in target or _CONTROL.search(target) or target.startswith("/"):
            raise UploadError(400, f"archive member {label!r} links outside the sdist")
        if member.issym():
            # Relative to the link's own directory.
            resolved = posixpath.normpath(posixpath.join(*parts[:-1], target))
        else:
            # Hard links name another member, relative to the archive root.
            resolved = posixpath.normpath(target)
        resolved_parts = resolved.split("/")
        if (
            not parts
            or resolved.startswith("/")
            or resolved_parts[0] in ("..", ".")
            or len(resolved_parts) < 2
            or resolved_parts[0] != parts[0]
        ):
            raise UploadError(400, f"archive member {label!r} links outside the sdist")
        return
    raise UploadError(400, f"archive member {label!r} is a device or special file")
