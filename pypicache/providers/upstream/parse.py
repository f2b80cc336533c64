"""Parsing Simple API pages (PEP 503 HTML, PEP 691 JSON) into model values.

Pure functions on bytes, no I/O: the upstream provider may run them in a
thread for big pages, and tests drive them with plain strings.

A JSON page of more than :data:`INCREMENTAL_JSON_BYTES` is decoded entry by
entry (``raw_decode`` per file) and each entry turned into its record at
once: ``json.loads`` of a 20 MB page holds the GIL for most of a second,
which stalls the reactor thread however the parse is threaded, and it builds
every entry's dict before the first record (twice the memory).

Everything the upstream sends is untrusted.  A page that cannot be understood
raises ValueError (and only ValueError, so callers need one ``except``); a
single file entry that is unusable (no filename, a filename that could escape
a directory, a URL that is not http(s)) is skipped, because one bad entry must
not hide the rest of a project.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from pypicache.model import FileRecord, InvalidName, ProjectPage, normalize

__all__ = [
    "parse_index",
    "parse_index_html",
    "parse_index_json",
    "parse_project",
    "parse_project_html",
    "parse_project_json",
    "page_format",
]

_T = TypeVar("_T")

_API_VERSION = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*$")
_HASH_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A last path segment that ``urljoin`` copies verbatim (no query, fragment,
#: parameters or dot segment), so it can be appended to its resolved directory.
_PLAIN_SEGMENT = re.compile(r"[^/?#;\\]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: Hex digits of each hash algorithm's digest, looked up once per algorithm.
_HEX_LENGTHS: dict[str, int] = {}
_MAX_FILENAME = 255
#: JSON pages above this size are decoded incrementally (see the module docstring).
INCREMENTAL_JSON_BYTES = 1024 * 1024
_DECODE = json.JSONDecoder().raw_decode
_SPACE = re.compile(r"[ \t\n\r]*")

JSON_TYPES = frozenset({"application/vnd.pypi.simple.v1+json", "application/json"})
HTML_TYPES = frozenset({"application/vnd.pypi.simple.v1+html", "text/html", "application/xhtml+xml"})


def _only_value_errors(func: Callable[..., _T]) -> Callable[..., _T]:
    """Turn any stray exception (RecursionError on deeply nested JSON, a
    TypeError from a surprising shape) into ValueError: the promised contract."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return func(*args, **kwargs)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - hostile input may raise anything
            raise ValueError(f"malformed page ({type(e).__name__})") from e

    return wrapper


# ------------------------------------------------------------------ helpers


def _check_api_version(value: object, where: str) -> None:
    """PEP 629/691: a client must refuse a major version it does not know."""
    if not isinstance(value, str):
        raise ValueError(f"{where} is missing or not a string")
    match = _API_VERSION.fullmatch(value)
    if not match:
        raise ValueError(f"{where} {value!r} is not a version")
    if int(match.group(1)) != 1:
        raise ValueError(f"unsupported API major version {value!r}")


def _clean_hash(name: object, value: object) -> tuple[str, str] | None:
    """A (name, lower-case hex) pair, or None when it is not a usable digest.

    Known hashlib algorithms must also have the right length, so that a
    truncated sha256 never reaches storage as if it were a key.
    """
    if not isinstance(name, str) or not isinstance(value, str):
        return None
    name, value = name.strip().lower(), value.strip().lower()
    if not _HASH_NAME.fullmatch(name) or not _HEX.fullmatch(value):
        return None
    if name in hashlib.algorithms_guaranteed and not name.startswith("shake_"):
        length = _HEX_LENGTHS.get(name)
        if length is None:
            length = _HEX_LENGTHS[name] = hashlib.new(name).digest_size * 2
        if len(value) != length:
            return None
    return name, value


def _clean_hashes(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, str] = {}
    for name, digest in value.items():
        pair = _clean_hash(name, digest)
        if pair is not None:
            out[pair[0]] = pair[1]
    return out


def _valid_filename(name: str) -> bool:
    """A bare file name: nothing that could be a path or smuggle a header."""
    return (
        0 < len(name) <= _MAX_FILENAME
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and not _CONTROL.search(name)
    )


def _absolute_url(base: str, href: str) -> str | None:
    """``href`` resolved against ``base``, or None unless it is http(s)."""
    href = href.strip()
    if _CONTROL.search(href):
        return None
    url = urljoin(base, href).replace(" ", "%20")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


class _Resolver:
    """Resolves one page's file hrefs as :func:`_absolute_url` does.

    A page lists hundreds of files that mostly share a directory (PyPI's
    JSON gives relative ``../../files/...`` or absolute URLs; numpy has
    thousands): the directory is resolved once and each file's last segment
    appended, which gives the same URL as resolving the whole href (tests
    compare the two) at a fraction of the cost of ``urljoin`` per file.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self._dirs: dict[str, str | None] = {}

    def __call__(self, href: str) -> str | None:
        href = href.strip()
        path, _, fragment = href.partition("#")
        head, sep, name = path.rpartition("/")
        if not sep or name in (".", "..") or not _PLAIN_SEGMENT.fullmatch(name) or _CONTROL.search(href) \
                or self._in_authority(path):
            return _absolute_url(self.base, href)
        try:
            prefix = self._dirs[head]
        except KeyError:
            prefix = _absolute_url(self.base, head + "/")
            if len(self._dirs) < 1024:
                self._dirs[head] = prefix
        if prefix is None:
            return None
        url = prefix + name + ("#" + fragment if fragment else "")
        return url.replace(" ", "%20")

    @staticmethod
    def _in_authority(path: str) -> bool:
        """True when the last segment is (part of) the host: ``//host``."""
        scheme = _SCHEME.match(path)
        rest = path[scheme.end():] if scheme else path
        return rest.startswith("//") and rest.find("/", 2) < 0


def _last_segment(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path.rsplit("/", 1)[-1])


def _optional_str(value: object) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _page_name(name: str | None, fallback: object, page_url: str) -> str:
    """The page's normalised project name: the caller's, else the page's own,
    else the last path segment of the page URL."""
    for candidate in (name, fallback, urlsplit(page_url).path.rstrip("/").rsplit("/", 1)[-1]):
        if isinstance(candidate, str) and candidate:
            try:
                return normalize(candidate)
            except InvalidName:
                if candidate is name:
                    raise ValueError(f"invalid project name {name!r}") from None
    raise ValueError("page names no valid project")


def _dedupe(files: Iterable[FileRecord]) -> tuple[FileRecord, ...]:
    """Keep the first entry of each filename: the index is keyed by it."""
    seen: set[str] = set()
    out = []
    for record in files:
        if record.filename not in seen:
            seen.add(record.filename)
            out.append(record)
    return tuple(out)


def _load_json(body: bytes, key: str = "", convert: Callable[[Any], Any] | None = None) -> dict:
    """The page's object, its API version checked; with ``convert``, the
    list under ``key`` (if it is one) holds ``convert(entry)`` per entry."""
    if not isinstance(body, (bytes, bytearray)):
        raise ValueError("page body must be bytes")
    try:
        if convert is not None and len(body) > INCREMENTAL_JSON_BYTES:
            data = _load_json_incrementally(bytes(body).decode(json.detect_encoding(body)), key, convert)
        else:
            data = json.loads(body)
            if convert is not None and isinstance(data, dict) and isinstance(data.get(key), list):
                data[key] = [convert(entry) for entry in data[key]]
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("JSON page is not an object")
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise ValueError("JSON page has no meta object")
    _check_api_version(meta.get("api-version"), "meta.api-version")
    return data


def _skip(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # always matches


def _load_json_incrementally(text: str, key: str, convert: Callable[[Any], Any]) -> Any:
    """``json.loads(text)``, except that an array under the top-level
    ``key`` is decoded one entry at a time, each passed through ``convert``
    at once.  Same grammar as ``json.loads`` (a duplicate key: the last wins);
    errors are ValueError."""
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        value, pos = _DECODE(text, pos)  # not an object: the caller says so
        if _skip(text, pos) != len(text):
            raise ValueError(f"extra data at {pos}")
        return value
    data: dict[str, Any] = {}
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            name, pos = _DECODE(text, pos)
            if not isinstance(name, str):
                raise ValueError(f"object key expected at {pos}")
            pos = _skip(text, pos)
            if not text.startswith(":", pos):
                raise ValueError(f"':' expected at {pos}")
            pos = _skip(text, pos + 1)
            if name == key and text.startswith("[", pos):
                data[name], pos = _decode_array(text, pos + 1, convert)
            else:
                data[name], pos = _DECODE(text, pos)
            pos = _skip(text, pos)
            if text.startswith(",", pos):
                pos = _skip(text, pos + 1)
            elif text.startswith("}", pos):
                pos += 1
                break
            else:
                raise ValueError(f"',' or '}}' expected at {pos}")
    if _skip(text, pos) != len(text):
        raise ValueError(f"extra data at {pos}")
    return data


def _decode_array(text: str, pos: int, convert: Callable[[Any], Any]) -> tuple[list[Any], int]:
    """The array whose ``[`` ends before ``pos``, converted entry by entry."""
    out: list[Any] = []
    pos = _skip(text, pos)
    if text.startswith("]", pos):
        return out, pos + 1
    while True:
        entry, pos = _DECODE(text, pos)
        out.append(convert(entry))
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif text.startswith("]", pos):
            return out, pos + 1
        else:
            raise ValueError(f"',' or ']' expected at {pos}")


# --------------------------------------------------------------------- JSON


def _json_metadata(entry: Mapping[str, Any]) -> dict[str, str] | None:
    # PEP 714 renamed the key; old servers still send only the old one.
    value = entry.get("core-metadata", entry.get("dist-info-metadata"))
    if value is True:
        return {}
    if isinstance(value, dict):
        return _clean_hashes(value)
    return None


def _provenance_url(value: object, resolve: Callable[[str], str | None]) -> str | None:
    """PEP 740's ``provenance`` (JSON) / ``data-provenance`` (HTML): a URL,
    resolved like a file's; anything else (null, junk, not http(s)) is None.
    Whether it may be fetched is the upstream provider's call (its policy)."""
    if not isinstance(value, str) or not value.strip():
        return None
    url = resolve(value)
    return None if url is None else urldefrag(url)[0]


def _json_file(entry: object, resolve: Callable[[str], str | None]) -> FileRecord | None:
    if not isinstance(entry, dict):
        return None
    filename = entry.get("filename")
    href = entry.get("url")
    if not isinstance(filename, str) or not _valid_filename(filename) or not isinstance(href, str):
        return None
    url = resolve(href)
    if url is None:
        return None
    yanked_value = entry.get("yanked", False)
    # PEP 691: a truthy value means yanked; a non-empty string is the reason.
    yanked = bool(yanked_value) and isinstance(yanked_value, (bool, str))
    reason = _optional_str(yanked_value) if yanked else None
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None
    return FileRecord(
        filename=filename,
        url=url,
        hashes=_clean_hashes(entry.get("hashes")),
        requires_python=_optional_str(entry.get("requires-python")),
        yanked=yanked,
        yanked_reason=reason,
        core_metadata=_json_metadata(entry),
        size=size,
        upload_time=_optional_str(entry.get("upload-time")),
        provenance=_provenance_url(entry.get("provenance"), resolve),
    )


@_only_value_errors
def parse_project_json(body: bytes, page_url: str, *, name: str | None = None) -> ProjectPage:
    """A PEP 691 project page (API 1.x).

    :param page_url: the URL the page was finally served from; relative file
        URLs are resolved against it.
    :param name: the normalised name asked for; defaults to the page's own.
    """
    resolve = _Resolver(page_url)
    data = _load_json(body, "files", lambda entry: _json_file(entry, resolve))
    files = data.get("files")
    if not isinstance(files, list):
        raise ValueError("JSON page has no files list")
    records = _dedupe(r for r in files if r is not None)
    versions = data.get("versions")
    if isinstance(versions, list):
        versions = tuple(v for v in versions if isinstance(v, str))
    else:
        versions = None
    meta = {k: v for k, v in data["meta"].items() if k != "api-version" and isinstance(k, str)}
    return ProjectPage(
        name=_page_name(name, data.get("name"), page_url),
        files=records,
        versions=versions,
        meta=meta,
    )


@_only_value_errors
def parse_index_json(body: bytes) -> tuple[str, ...]:
    """Normalised names from a PEP 691 root page; invalid names are skipped."""
    data = _load_json(body, "projects", lambda p: p.get("name") if isinstance(p, dict) else None)
    projects = data.get("projects")
    if not isinstance(projects, list):
        raise ValueError("JSON index has no projects list")
    return _unique_names(projects)


def _unique_names(candidates: Iterable[object]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for candidate in candidates:
        if isinstance(candidate, str):
            try:
                seen.setdefault(normalize(candidate.strip()), None)
            except InvalidName:
                continue
    return tuple(seen)


# --------------------------------------------------------------------- HTML


class _AnchorParser(HTMLParser):
    """Collects anchors (attributes + text), the first ``<base href>`` and the
    PEP 629 repository version; everything else in the page is ignored."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.version: str | None = None
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._attrs: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found: dict[str, str | None] = {}
        for key, value in attrs:
            found.setdefault(key, value)  # HTML keeps the first of a repeated attribute
        if tag == "a":
            self._finish_anchor()
            self._attrs, self._text = found, []
        elif tag == "base" and self.base is None and found.get("href"):
            self.base = found["href"]
        elif tag == "meta" and (found.get("name") or "").strip().lower() == "pypi:repository-version":
            self.version = found.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._finish_anchor()

    def handle_data(self, data: str) -> None:
        if self._attrs is not None:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._finish_anchor()

    def _finish_anchor(self) -> None:
        if self._attrs is not None:
            self.anchors.append((self._attrs, "".join(self._text).strip()))
        self._attrs, self._text = None, []


def _parse_html(body: bytes) -> _AnchorParser:
    if not isinstance(body, (bytes, bytearray)):
        raise ValueError("page body must be bytes")
    parser = _AnchorParser()
    parser.feed(bytes(body).decode("utf-8", errors="replace"))
    parser.close()
    if parser.version is not None:
        _check_api_version(parser.version, "pypi:repository-version")
    return parser


def _html_metadata(attrs: Mapping[str, str | None]) -> dict[str, str] | None:
    for key in ("data-core-metadata", "data-dist-info-metadata"):
        value = (attrs.get(key) or "").strip()
        if value.lower() == "true":
            return {}
        if "=" in value:
            pair = _clean_hash(*value.split("=", 1))
            # Advertised, so the upstream serves it, even if the hash is junk.
            return dict([pair]) if pair else {}
    return None


def _html_file(attrs: Mapping[str, str | None], text: str, resolve: Callable[[str], str | None]) -> FileRecord | None:
    href = attrs.get("href")
    if not href:
        return None
    url = resolve(href)
    if url is None:
        return None
    url, fragment = urldefrag(url)
    filename = text or _last_segment(url)
    if not _valid_filename(filename):
        return None
    hashes = {}
    if "=" in fragment:
        pair = _clean_hash(*fragment.split("=", 1))
        if pair is not None:
            hashes[pair[0]] = pair[1]
    yanked = "data-yanked" in attrs
    return FileRecord(
        filename=filename,
        url=url,
        hashes=hashes,
        requires_python=_optional_str(attrs.get("data-requires-python")),
        yanked=yanked,
        yanked_reason=_optional_str(attrs.get("data-yanked")) if yanked else None,
        core_metadata=_html_metadata(attrs),
        provenance=_provenance_url(attrs.get("data-provenance"), resolve),
    )


@_only_value_errors
def parse_project_html(body: bytes, page_url: str, *, name: str | None = None) -> ProjectPage:
    """A PEP 503 project page (with the PEP 592/629/658/714/740 attributes).

    Attribute values arrive unescaped (``&lt;`` is ``<``).  Links resolve
    against ``<base href>`` when the page has one, else ``page_url``.
    """
    parser = _parse_html(body)
    base = urljoin(page_url, parser.base.strip()) if parser.base else page_url
    resolve = _Resolver(base)
    records = (_html_file(attrs, text, resolve) for attrs, text in parser.anchors)
    return ProjectPage(
        name=_page_name(name, None, page_url),
        files=_dedupe(r for r in records if r is not None),
    )


@_only_value_errors
def parse_index_html(body: bytes) -> tuple[str, ...]:
    """Normalised names from a PEP 503 root page; invalid names are skipped."""
    parser = _parse_html(body)
    return _unique_names(
        text or _last_segment((attrs.get("href") or "").rstrip("/")) for attrs, text in parser.anchors
    )


# ------------------------------------------------------- by content type


def page_format(content_type: str | None) -> str | None:
    """'json', 'html' or None (unknown: try both) for a Content-Type value."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES or mime.endswith("+json"):
        return "json"
    if mime in HTML_TYPES or mime.endswith("+html"):
        return "html"
    return None


def _by_type(content_type: str | None, body: bytes, as_json: Callable[[], _T], as_html: Callable[[], _T]) -> _T:
    kind = page_format(content_type)
    if kind == "json":
        return as_json()
    if kind == "html":
        return as_html()
    try:
        return as_json()
    except ValueError:
        # Anything parses as HTML with no links; only call it HTML if it looks so.
        if not bytes(body[:1024]).lstrip().startswith(b"<"):
            raise ValueError(f"unknown page type {content_type!r}") from None
        return as_html()


def parse_project(body: bytes, content_type: str | None, page_url: str, *, name: str | None = None) -> ProjectPage:
    """Parse a project page by its Content-Type (unknown: JSON, then HTML)."""
    return _by_type(
        content_type,
        body,
        lambda: parse_project_json(body, page_url, name=name),
        lambda: parse_project_html(body, page_url, name=name),
    )


def parse_index(body: bytes, content_type: str | None) -> tuple[str, ...]:
    """Parse the root list by its Content-Type (unknown: JSON, then HTML)."""
    return _by_type(content_type, body, lambda: parse_index_json(body), lambda: parse_index_html(body))
