"""Core metadata (``METADATA``/``PKG-INFO``): the one reader uploads and the JSON API share.

The file is read with :func:`packaging.metadata.parse_email`, what the public
index itself uses, which knows every field of every metadata version, which
may repeat, and where the description lives.  What is left here is what
pypicache promises on top of it, stated once:

* the dict shape: the snake_case keys PyPI's JSON API uses in ``info`` (and
  that twine sends as form fields), every single-use field present (None when
  absent), multi-use fields as lists, ``project_urls`` a dict, ``keywords``
  one string as written (PyPI shows it so);
* the upload rules (:func:`read_core_metadata`): at most ``max_bytes``,
  UTF-8, no NUL or control characters, no repeated single-use field, a Name
  and a Version.  Each refusal is a :class:`MetadataError` with a one-line
  reason that twine shows to the user;
* a lenient reading (:func:`read_core_metadata_leniently`) for files
  the upload rules refuse but an upstream serves anyway: the JSON API shows
  what it can rather than nothing.

Deliberately *not* applied: ``packaging.metadata.Metadata``'s full
validation.  It refuses files that real, installable distributions carry
(no ``Metadata-Version``, fields newer than the declared version, unknown
fields, a description both as header and as body); tests/test_metadata.py
lists each such case and pins that it is still accepted.

Input is hostile: nothing here raises anything but :class:`MetadataError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from packaging.metadata import parse_email

__all__ = [
    "MAX_METADATA_BYTES", "MULTI_FIELDS", "MetadataError", "SINGLE_FIELDS", "empty_metadata",
    "json_info", "metadata_from_form", "read_core_metadata", "read_core_metadata_leniently",
    "read_for_json",
]

#: Generous for a METADATA file (long READMEs included), small for a server.
MAX_METADATA_BYTES = 4 * 1024 * 1024


class MetadataError(ValueError):
    """A METADATA file the upload rules refuse; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: Field as the spec spells it -> (our key, packaging's RawMetadata key), single-use fields.
_SINGLE: Mapping[str, tuple[str, str]] = {
    "Metadata-Version": ("metadata_version", "metadata_version"),
    "Name": ("name", "name"),
    "Version": ("version", "version"),
    "Summary": ("summary", "summary"),
    "Description": ("description", "description"),
    "Description-Content-Type": ("description_content_type", "description_content_type"),
    "Keywords": ("keywords", "keywords"),
    "Home-page": ("home_page", "home_page"),
    "Download-URL": ("download_url", "download_url"),
    "Author": ("author", "author"),
    "Author-email": ("author_email", "author_email"),
    "Maintainer": ("maintainer", "maintainer"),
    "Maintainer-email": ("maintainer_email", "maintainer_email"),
    "License": ("license", "license"),
    "License-Expression": ("license_expression", "license_expression"),
    "Requires-Python": ("requires_python", "requires_python"),
}

#: The same for fields that may repeat.
_MULTI: Mapping[str, tuple[str, str]] = {
    "Classifier": ("classifiers", "classifiers"),
    "Requires-Dist": ("requires_dist", "requires_dist"),
    "Provides-Extra": ("provides_extra", "provides_extra"),
    "Provides-Dist": ("provides_dist", "provides_dist"),
    "Obsoletes-Dist": ("obsoletes_dist", "obsoletes_dist"),
    "Requires-External": ("requires_external", "requires_external"),
    "Platform": ("platform", "platforms"),
    "Supported-Platform": ("supported_platform", "supported_platforms"),
    "License-File": ("license_files", "license_files"),
    "Dynamic": ("dynamic", "dynamic"),
    "Requires": ("requires", "requires"),
    "Provides": ("provides", "provides"),
    "Obsoletes": ("obsoletes", "obsoletes"),
    "Import-Name": ("import_names", "import_names"),
    "Import-Namespace": ("import_namespaces", "import_namespaces"),
}

#: Header name (lower case) -> key, for fields that appear at most once.
SINGLE_FIELDS: Mapping[str, str] = {field.lower(): key for field, (key, _) in _SINGLE.items()}
#: Header name (lower case) -> key, for fields that may repeat.
MULTI_FIELDS: Mapping[str, str] = {field.lower(): key for field, (key, _) in _MULTI.items()}
_KNOWN = {*SINGLE_FIELDS, *MULTI_FIELDS, "project-url"}

#: Form field names that differ from the keys above (twine's spelling).
_FORM_ALIASES: Mapping[str, str] = {"license_file": "license_files"}

_FOLD = re.compile(r"\r?\n[ \t]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_DESCRIPTION_CONTINUATION = re.compile(r"^ {1,8}\|", re.MULTILINE)
#: The Keywords header as written (packaging splits it at commas; PyPI shows the string).
_KEYWORDS = re.compile(r"^keywords:[ \t]*(?P<value>.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def empty_metadata() -> dict[str, Any]:
    """A metadata dict with every key present and nothing known."""
    result: dict[str, Any] = {key: None for key in SINGLE_FIELDS.values()}
    result.update({key: [] for key in MULTI_FIELDS.values()})
    result["project_urls"] = {}
    return result


def read_core_metadata(raw: bytes, *, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """Read METADATA/PKG-INFO bytes under the upload rules (see the module docstring).

    The first fault found is raised as :class:`MetadataError`; faults are
    looked for in the spec's field order.  Unknown fields are ignored.
    """
    if len(raw) > max_bytes:
        raise MetadataError(f"METADATA is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError("METADATA is not valid UTF-8") from None
    if "\x00" in text:
        raise MetadataError("METADATA contains a NUL character")
    result = _read(text, lenient=False)
    for required in ("name", "version"):
        if not result[required]:
            raise MetadataError(f"METADATA has no {required.capitalize()}")
    return result


def read_core_metadata_leniently(raw: bytes) -> dict[str, Any]:
    """What can be read from any bytes: undecodable bytes and NULs replaced,
    the first of a repeated single-use field kept, empty list entries
    dropped.  Never raises; a file it cannot read at all gives
    :func:`empty_metadata`."""
    return _read(raw.decode("utf-8", "replace").replace("\x00", "\ufffd"), lenient=True)


def read_for_json(raw: bytes, *, max_bytes: int) -> dict[str, Any]:
    """The ``info`` keys the JSON API takes from a METADATA file: read under
    the upload rules when it passes them, else leniently.  Never raises."""
    try:
        meta = read_core_metadata(raw, max_bytes=max_bytes)
    except MetadataError:
        meta = read_core_metadata_leniently(raw)
    return json_info(meta)


def json_info(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The 21 ``info`` keys of PyPI's JSON API that come from core metadata.

    Empty lists become None (as PyPI shows them), platforms are joined into
    one string, and ``project_urls`` gets Homepage and Download first.
    """
    platforms = [p for p in meta.get("platform") or [] if p]
    info = {
        "author": meta.get("author"),
        "author_email": meta.get("author_email"),
        "classifiers": list(meta.get("classifiers") or []),
        "description": meta.get("description"),
        "description_content_type": meta.get("description_content_type"),
        "download_url": meta.get("download_url"),
        "dynamic": list(meta.get("dynamic") or []) or None,
        "home_page": meta.get("home_page"),
        "keywords": meta.get("keywords"),
        "license": meta.get("license"),
        "license_expression": meta.get("license_expression"),
        "license_files": list(meta.get("license_files") or []) or None,
        "maintainer": meta.get("maintainer"),
        "maintainer_email": meta.get("maintainer_email"),
        "name": meta.get("name"),
        "platform": ", ".join(platforms) if platforms else None,
        "provides_extra": list(meta.get("provides_extra") or []) or None,
        "requires_dist": list(meta.get("requires_dist") or []) or None,
        "requires_python": meta.get("requires_python"),
        "summary": meta.get("summary"),
        "version": meta.get("version"),
    }
    urls: dict[str, str] = {}
    if info["home_page"]:
        urls["Homepage"] = info["home_page"]
    if info["download_url"]:
        urls["Download"] = info["download_url"]
    for label, url in (meta.get("project_urls") or {}).items():
        urls.setdefault(label, url)
    info["project_urls"] = urls or None
    return info


#: ``info`` for a release whose METADATA is not known.
EMPTY_INFO: Mapping[str, Any] = json_info(empty_metadata())


def metadata_from_form(fields: Mapping[str, list[str]]) -> dict[str, Any]:
    """The same dict built from upload form fields (twine sends core metadata
    as lower-case, underscored fields).  A fallback for what an archive lacks;
    the archive's own METADATA is the authority.  Single-use fields take the
    first value; ``project_urls`` entries are ``"label, url"`` strings."""
    result = empty_metadata()
    singles = set(SINGLE_FIELDS.values())
    multis = set(MULTI_FIELDS.values())
    for field, values in fields.items():
        key = _FORM_ALIASES.get(field, field)
        clean = [v for v in values if isinstance(v, str)]
        if not clean:
            continue
        if key in singles:
            result[key] = clean[0] if key == "description" else clean[0].strip()
        elif key in multis:
            result[key] = [v.strip() for v in clean if v.strip()]
        elif key == "project_urls":
            for value in clean:
                _add_project_url(result["project_urls"], *value.partition(",")[::2])
    return result


# ------------------------------------------------------------------ reading


def _read(text: str, *, lenient: bool) -> dict[str, Any]:
    """packaging's reading of ``text`` in our shape, with the upload rules
    (raising MetadataError) unless ``lenient``."""
    # A body, unlike any header value, then always ends with a newline: that
    # tells the description's body from its header where packaging lumps both.
    added_newline = not text.endswith("\n")
    if added_newline:
        text += "\n"
    try:
        fields, unparsed = parse_email(text)
    except Exception:  # the email package has odd corners (multipart bodies...); never a 500
        if lenient:
            return empty_metadata()
        raise MetadataError("METADATA could not be parsed") from None
    for found in (fields, unparsed):
        for name in [name for name, value in found.items() if not _all_text(value)]:
            # A multipart "body" and such: not a METADATA file packaging could read.
            if not lenient:
                raise MetadataError("METADATA could not be parsed")
            value = found[name]  # type: ignore[literal-required]
            found[name] = ({} if isinstance(value, dict) else  # type: ignore[literal-required]
                           [v for v in value if isinstance(v, str)] if isinstance(value, list) else [])

    def values(field: str, raw_key: str | None) -> list[str]:
        found = fields.get(raw_key) if raw_key is not None else None  # type: ignore[misc]
        if found is None:  # repeated single-use fields, or fields this packaging does not know
            found = unparsed.get(field.lower(), [])
        elif found == [] and raw_key == "import_names":
            found = [""]  # packaging's reading of a lone empty "Import-Name:"
        return [found] if isinstance(found, str) else list(found)

    result = empty_metadata()
    for field, (key, raw_key) in _SINGLE.items():
        if key == "description":
            result[key] = _description(values(field, raw_key), added_newline, lenient)
            continue
        if key == "keywords":
            found = _keywords(text, fields.get("keywords"), unparsed.get("keywords"))
        else:
            found = values(field, raw_key)
        if lenient and key == "license" and found:
            result[key] = _multi_line(found[0])  # the lenient reading keeps a license's lines
            continue
        found = [_one_line(v, field, lenient) for v in found]
        if len(found) > 1 and not lenient:
            raise MetadataError(f"METADATA field {field!r} appears more than once")
        if found:
            result[key] = found[0]
    for field, (key, raw_key) in _MULTI.items():
        found = [_one_line(v, field, lenient) for v in values(field, raw_key)]
        result[key] = [v for v in found if v] if lenient else found
    urls = result["project_urls"]
    for label, url in (fields.get("project_urls") or {}).items():
        _add_project_url(urls, _one_line(label, "Project-URL", lenient), _one_line(url, "Project-URL", lenient))
    for value in unparsed.get("project-url", []):  # a label given twice: the first wins
        _add_project_url(urls, *_one_line(value, "Project-URL", lenient).partition(",")[::2])
    if not lenient:
        for name, others in unparsed.items():
            if name not in _KNOWN:
                field = "-".join(part.capitalize() for part in name.split("-"))
                for value in others:
                    _one_line(value, field, lenient)
    return result


def _all_text(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _one_line(value: str, field: str, lenient: bool) -> str:
    """A header value with its folding undone; control characters refused
    under the upload rules."""
    value = _FOLD.sub(" ", value).strip()
    if not lenient and (_CONTROL.search(value) or "\n" in value or "\r" in value):
        raise MetadataError(f"METADATA field {field!r} contains control characters")
    return value


def _keywords(text: str, parsed: list[str] | None, repeated: list[str] | None) -> list[str]:
    """Keywords as written: packaging hands them split at commas."""
    if repeated is not None:
        return list(repeated)
    if parsed is None:
        return []
    match = _KEYWORDS.search(text)
    if match is not None:
        written = match["value"]
        if [k.strip() for k in written.split(",")] == parsed:
            return [written]
    return [", ".join(parsed)]  # how PyPI writes them back


def _description(found: list[str], added_newline: bool, lenient: bool) -> str | None:
    """The body wins over the ``Description`` header when it says anything
    (Metadata 2.1+ puts it there); packaging leaves both in ``found``."""
    body = found[-1] if found and found[-1].endswith("\n") else None
    headers = found[:-1] if body is not None else found
    if len(headers) > 1 and not lenient:
        raise MetadataError("METADATA field 'Description' appears more than once")
    if body is not None:
        if added_newline:
            body = body[:-1]
        if body.strip():
            return body
    if not headers:
        return None
    return _multi_line(headers[0]) if lenient else _unfold_description(headers[0])


def _add_project_url(urls: dict[str, str], label: str, url: str) -> None:
    """``Project-URL: Label, https://...``: keep the first URL for each label;
    entries without a comma are not a label/URL pair and are skipped."""
    label, url = label.strip(), url.strip()
    if label and url:
        urls.setdefault(label, url)


def _unfold_description(value: str) -> str:
    """Undo the old header-style description: continuation lines are indented
    by eight spaces, optionally followed by ``|`` (setuptools' style)."""
    lines = value.splitlines()
    if not lines:
        return ""
    out = [lines[0].strip()]
    for line in lines[1:]:
        if line.startswith("        |"):
            out.append(line[9:])
        elif line.startswith("        "):
            out.append(line[8:])
        else:
            out.append(line.lstrip(" \t"))
    return "\n".join(out)


def _multi_line(value: str) -> str:
    """The lenient reading of a header that carries several lines
    (Description, License): undo the ``8 spaces + |`` continuation
    setuptools writes, or plain folding."""
    value = value.replace("\r\n", "\n")
    if _DESCRIPTION_CONTINUATION.search(value):
        return _DESCRIPTION_CONTINUATION.sub("", value)
    first, *rest = value.split("\n")
    return "\n".join([first] + [line[8:] if line.startswith(" " * 8) else line.lstrip() for line in rest])
