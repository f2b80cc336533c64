"""Render Simple API pages (PEP 503/629/658/691/700/740) to bytes, without I/O.

The server caches what these functions return, so a page is rendered once
per change, but that render still happens on the reactor thread and a project
may list thousands of files (budget: a 600-file page in well under 5 ms).
Hence the shape of the code: pages are assembled from string pieces joined
once (JSON included: every outside string still goes through the json
module's string encoder), and what depends on a filename alone (its quoted
and escaped forms, its version) is memoised in bounded LRU caches, because
the same filenames come back each time their project changes.

Everything that comes from a client or an upstream (names, filenames, yank
reasons, requires-python, meta values) is escaped: an upstream is not
trusted to serve harmless markup.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from html import escape
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

from pypicache.model import API_VERSION, FileRecord
from pypicache.web.negotiation import Format

__all__ = ["render_project", "render_index", "etag_for", "versions_of"]

#: Emitted instead of API_VERSION when a page lacks a file size (PEP 700
#: makes ``size`` mandatory from 1.1 on).
_API_VERSION_NO_SIZE = "1.0"

_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: What that encoder uses for a string (the C implementation when present).
_json_str = json.encoder.encode_basestring

_HTML_HEAD = (
    "<!DOCTYPE html>\n"
    "<html>\n"
    "  <head>\n"
    '    <meta name="pypi:repository-version" content="{version}">\n'
)


#: PEP 708 (``tracks``, ``alternate-locations``) arrived with API version 1.2.
_API_VERSION_TRACKS = "1.2"
#: PEP 740 (``provenance``) with 1.3: announced by pages that carry it.
_API_VERSION_PROVENANCE = "1.3"
#: Where a file's provenance is served: beside it, as ``.metadata`` is
#: (web/files.py), so the relative link works under every view's prefix.
PROVENANCE_SUFFIX = ".provenance"


def has_provenance(record: FileRecord) -> bool:
    """True when the page offers ``record``'s PEP 740 provenance: the
    upstream gave a URL for it, or an object for it is stored here."""
    return record.provenance is not None or record.provenance_sha256 is not None


def _page_version(meta: Mapping[str, Any] | None, provenance: bool) -> str:
    if provenance:
        return _API_VERSION_PROVENANCE
    return _API_VERSION_TRACKS if _has_tracks(meta) else API_VERSION


def _has_tracks(meta: Mapping[str, Any] | None) -> bool:
    return bool(meta and meta.get("tracks"))


def _html_head(title: str, meta: Mapping[str, Any] | None, provenance: bool = False) -> list[str]:
    parts = [_HTML_HEAD.format(version=_page_version(meta, provenance))]
    if meta:
        tracks = meta.get("tracks")
        if isinstance(tracks, str):
            tracks = [tracks]
        for value in tracks or ():
            parts.append(f'    <meta name="pypi:tracks" content="{escape(str(value))}">\n')
        ours = meta.get("_pypicache")
        if isinstance(ours, Mapping) and ours.get("held_back"):
            # Files the release cooldown holds back (pypicache.services.cooldown).
            parts.append(f'    <meta name="pypicache:held-back" content="{int(ours["held_back"])}">\n')
    parts.append(f"    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n")
    return parts


_HTML_TAIL = "  </body>\n</html>\n"


def render_project(
    fmt: Format,
    name: str,
    files: Sequence[FileRecord],
    file_base: str,
    versions: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """One project's page in ``fmt``.

    :param name: the project name to show (normally the normalised one).
    :param files: the files to list, in page order.
    :param file_base: relative URL prefix of the files, ending in ``/``
        (e.g. ``"../../files/tinyproj/"``); each href is that plus the quoted
        filename (and ``#sha256=`` in HTML when the hash is known).
    :param versions: the PEP 700 versions list; computed from the filenames
        when None.  JSON only.
    :param meta: extra page-level keys.  JSON puts them all in ``meta`` (it
        computes ``api-version`` itself, so that key is ignored); HTML only
        shows ``tracks`` (PEP 708) as ``pypi:tracks`` meta tags.
    """
    if fmt.is_json:
        return _project_json(name, files, file_base, versions, meta)
    return _project_html(name, files, file_base, meta)


def _project_html(
    name: str, files: Sequence[FileRecord], file_base: str, meta: Mapping[str, Any] | None
) -> bytes:
    title = "Links for " + escape(name)
    parts = _html_head(title, meta, any(map(has_provenance, files)))
    append = parts.append
    # requires-python specifiers repeat across a project's files: escape once.
    escaped: dict[str, str] = {}
    base = escape(file_base)
    for record in files:
        _, html_quoted, html_text, _ = _filename_forms(record.filename)
        attrs = ['    <a href="', base, html_quoted]
        sha256 = record.sha256
        if sha256 is not None:
            attrs.append("#sha256=")
            attrs.append(sha256)
        attrs.append('"')
        requires_python = record.requires_python
        if requires_python:
            value = escaped.get(requires_python)
            if value is None:
                value = escaped[requires_python] = escape(requires_python)
            attrs.append(' data-requires-python="')
            attrs.append(value)
            attrs.append('"')
        if record.yanked:
            attrs.append(' data-yanked="')
            attrs.append(escape(record.yanked_reason) if record.yanked_reason else "")
            attrs.append('"')
        if record.core_metadata is not None:
            metadata_sha256 = record.metadata_sha256
            value = "sha256=" + metadata_sha256 if metadata_sha256 else "true"
            attrs.append(' data-core-metadata="')
            attrs.append(value)
            attrs.append('" data-dist-info-metadata="')
            attrs.append(value)
            attrs.append('"')
        if record.provenance is not None or record.provenance_sha256 is not None:
            attrs.append(' data-provenance="')
            attrs.append(base)
            attrs.append(html_quoted)
            attrs.append(PROVENANCE_SUFFIX + '"')
        attrs.append(">")
        attrs.append(html_text)
        attrs.append("</a><br/>\n")
        append("".join(attrs))
    append(_HTML_TAIL)
    return "".join(parts).encode("utf-8")


def _project_json(
    name: str,
    files: Sequence[FileRecord],
    file_base: str,
    versions: Sequence[str] | None,
    meta: Mapping[str, Any] | None,
) -> bytes:
    # The file list is assembled as text rather than handed to json.dumps as
    # dicts: building hundreds of dicts and walking them again costs more
    # than the page budget allows.  Every string from outside goes through
    # the json module's own string encoder, and the tests compare the result
    # with json.loads.
    with_size = all(record.size is not None for record in files)
    provenance = False
    base = _json_str(file_base)[1:-1]
    entries = []
    append = entries.append
    for record in files:
        quoted, _, _, filename_json = _filename_forms(record.filename)
        parts = ['{"filename":', filename_json, ',"url":"', base, quoted, '","hashes":']
        sha256 = record.sha256
        if sha256 is not None and len(record.hashes) == 1:
            parts.append('{"sha256":"' + sha256 + '"}')
        else:
            parts.append(_json_encode(dict(record.hashes)))
        if record.requires_python:
            parts.append(',"requires-python":')
            parts.append(_json_str(record.requires_python))
        if not record.yanked:
            parts.append(',"yanked":false')
        elif record.yanked_reason:
            parts.append(',"yanked":')
            parts.append(_json_str(record.yanked_reason))
        else:
            parts.append(',"yanked":true')
        if record.core_metadata is not None:
            metadata_sha256 = record.metadata_sha256
            if metadata_sha256:
                parts.append(',"core-metadata":{"sha256":"' + metadata_sha256 + '"}')
            else:
                parts.append(',"core-metadata":true')
        if with_size:
            parts.append(',"size":%d' % record.size)
        if record.upload_time:
            parts.append(',"upload-time":')
            parts.append(_json_str(record.upload_time))
        if record.provenance is not None or record.provenance_sha256 is not None:
            provenance = True
            parts.append(',"provenance":"' + base + quoted + PROVENANCE_SUFFIX + '"')
        parts.append("}")
        append("".join(parts))

    if not with_size:
        version = _API_VERSION_NO_SIZE
    else:
        version = _page_version(meta, provenance)
    page_meta: dict[str, Any] = {"api-version": version}
    if meta:
        for key, value in meta.items():
            if key != "api-version":
                page_meta[key] = value
    head = _json_encode({"meta": page_meta, "name": name})[:-1]
    tail = "]}"
    if with_size:
        if versions is None:
            listed = versions_of(record.filename for record in files)
        else:
            listed = list(versions)
        tail = '],"versions":' + _json_encode(listed) + "}"
    return (head + ',"files":[' + ",".join(entries) + tail).encode("utf-8")


# ---------------------------------------------------------------- filenames

_WHEEL_SUFFIX = ".whl"
_SDIST_SUFFIXES = (".tar.gz", ".zip")


#: Characters that neither ``quote(..., safe="")`` nor ``html.escape`` touch:
#: nearly every real filename consists of them only.
_PLAIN = re.compile(r"[A-Za-z0-9._~-]+")


@functools.lru_cache(maxsize=16384)
def _filename_forms(filename: str) -> tuple[str, str, str, str]:
    """``(url segment, url segment escaped for HTML, filename escaped for
    HTML, filename as a JSON string)``, memoised: the same filenames are
    rendered again every time their project changes, and quoting is one of
    the costlier steps.
    """
    if _PLAIN.fullmatch(filename):
        return filename, filename, filename, '"' + filename + '"'
    # safe="" so that a "/" in a (bogus) filename cannot step into another
    # path segment; valid distribution filenames never contain one.
    quoted = quote(filename, safe="")
    return quoted, escape(quoted), escape(filename), _json_str(filename)


def _raw_version(filename: str) -> str | None:
    """The version part of a wheel or sdist filename, unparsed, or None.

    A light version of packaging's parse_wheel_filename/parse_sdist_filename:
    those also validate the name and parse every compatibility tag, which
    costs more than a page render can afford, and only the version is
    needed here.
    """
    if filename.endswith(_WHEEL_SUFFIX):
        parts = filename[: -len(_WHEEL_SUFFIX)].split("-")
        if len(parts) not in (5, 6) or not all(parts):
            return None
        return parts[1]
    for suffix in _SDIST_SUFFIXES:
        if filename.endswith(suffix):
            name_part, sep, raw = filename[: -len(suffix)].rpartition("-")
            return raw if sep and name_part and raw else None
    return None


_CANONICAL_RELEASE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


@functools.lru_cache(maxsize=16384)
def _parse_version(raw: str) -> tuple[str, Version] | None:
    """``(normalised spelling, Version)`` of a version string, or None.

    Memoised per raw string: a project has many files per version.
    """
    try:
        version = Version(raw)
    except InvalidVersion:
        return None
    # A plain release spelled canonically is its own normal form; str() on a
    # Version is surprisingly slow.
    return (raw if _CANONICAL_RELEASE.fullmatch(raw) else str(version)), version


@functools.lru_cache(maxsize=16384)
def _file_version(filename: str) -> tuple[str, Version] | None:
    """:func:`_parse_version` of a filename's version part, memoised per file."""
    raw = _raw_version(filename)
    return _parse_version(raw) if raw is not None else None


def versions_of(filenames: Iterable[str]) -> list[str]:
    """Unique versions of the given distribution filenames, oldest first.

    Unparsable filenames (eggs, installers, junk) are skipped.  Versions are
    given in their normalised spelling.
    """
    found: dict[str, Version] = {}
    for filename in filenames:
        parsed = _file_version(filename)
        if parsed is not None and parsed[0] not in found:
            found[parsed[0]] = parsed[1]
    return sorted(found, key=found.__getitem__)


# ------------------------------------------------------------------- index

# Names made only of these characters need neither URL quoting nor HTML or
# JSON escaping: every valid (let alone normalised) project name qualifies.
_NEEDS_ESCAPING = re.compile(r"[^A-Za-z0-9._\-]")


def render_index(fmt: Format, names: Sequence[str], project_base: str = "") -> bytes:
    """The root page: one link (or JSON entry) per project name.

    Names are emitted as given (callers pass normalised names).  PyPI's root
    lists several hundred thousand projects, so when every name is plain (the
    usual case, checked with one regex search over all of them) the page is
    built by joining, without per-name escaping.
    """
    names = list(names)
    plain = _NEEDS_ESCAPING.search("".join(names)) is None and all(names)
    if fmt.is_json:
        meta = '{"meta":{"api-version":"' + API_VERSION + '"},"projects":['
        if plain:
            body = '{"name":"' + '"},{"name":"'.join(names) + '"}' if names else ""
        else:
            body = ",".join('{"name":' + _json_encode(str(n)) + "}" for n in names)
        return (meta + body + "]}").encode("utf-8")

    parts = _html_head("Simple index", None)
    base = escape(project_base)
    if plain:
        parts.append("".join(f'    <a href="{base}{n}/">{n}</a><br/>\n' for n in names))
    else:
        for n in names:
            n = str(n)
            parts.append(
                f'    <a href="{base}{escape(quote(n, safe=""))}/">{escape(n)}</a><br/>\n'
            )
    parts.append(_HTML_TAIL)
    return "".join(parts).encode("utf-8")


# -------------------------------------------------------------------- etag


def etag_for(body: bytes) -> str:
    """A strong ETag for a rendered body: its digest, quoted.

    blake2b is used because it is faster than sha256 in CPython and the tag
    only has to tell bodies apart, not be compatible with anything.
    """
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
