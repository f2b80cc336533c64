"""Core metadata (``METADATA``/``PKG-INFO``) into the dict the JSON API serves.

The keys are the snake_case names PyPI's JSON API uses in ``info`` (and that
twine sends as form fields), so the same dict feeds ``/pypi/<name>/json``
whether it came from the archive or from the form.  Every single-use field
is present (None when absent); multi-use fields are lists (possibly empty);
``project_urls`` is a dict.  ``keywords`` stays one string, as PyPI shows it.

Input is hostile: the parser never raises anything but
:class:`~pypicache.uploads.multipart.UploadError` (400).
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Mapping
from typing import Any

from pypicache.uploads.multipart import UploadError

__all__ = ["parse_core_metadata", "metadata_from_form", "SINGLE_FIELDS", "MULTI_FIELDS"]

#: Generous for a METADATA file (long READMEs included), small for a server.
MAX_METADATA_BYTES = 4 * 1024 * 1024

#: Header name (lower case) -> key, for fields that appear at most once.
SINGLE_FIELDS: Mapping[str, str] = {
    "metadata-version": "metadata_version",
    "name": "name",
    "version": "version",
    "summary": "summary",
    "description": "description",
    "description-content-type": "description_content_type",
    "keywords": "keywords",
    "home-page": "home_page",
    "download-url": "download_url",
    "author": "author",
    "author-email": "author_email",
    "maintainer": "maintainer",
    "maintainer-email": "maintainer_email",
    "license": "license",
    "license-expression": "license_expression",
    "requires-python": "requires_python",
}

#: Header name (lower case) -> key, for fields that may repeat.
MULTI_FIELDS: Mapping[str, str] = {
    "classifier": "classifiers",
    "requires-dist": "requires_dist",
    "provides-extra": "provides_extra",
    "provides-dist": "provides_dist",
    "obsoletes-dist": "obsoletes_dist",
    "requires-external": "requires_external",
    "platform": "platform",
    "supported-platform": "supported_platform",
    "license-file": "license_files",
    "dynamic": "dynamic",
    "requires": "requires",
    "provides": "provides",
    "obsoletes": "obsoletes",
    "import-name": "import_names",
    "import-namespace": "import_namespaces",
}

#: Form field names that differ from the keys above (twine's spelling).
_FORM_ALIASES: Mapping[str, str] = {"license_file": "license_files"}

_FOLD = re.compile(r"\r?\n[ \t]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def empty_metadata() -> dict[str, Any]:
    """A metadata dict with every key present and nothing known."""
    result: dict[str, Any] = {key: None for key in SINGLE_FIELDS.values()}
    result.update({key: [] for key in MULTI_FIELDS.values()})
    result["project_urls"] = {}
    return result


def parse_core_metadata(raw: bytes, *, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """Parse METADATA/PKG-INFO bytes (RFC 822 style headers, body = description).

    Refuses (UploadError 400) input over ``max_bytes``, not UTF-8, holding
    NUL or control characters, repeating a single-use field, or lacking
    ``Name``/``Version``.  Unknown fields are ignored.
    """
    if len(raw) > max_bytes:
        raise UploadError(400, f"METADATA is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError(400, "METADATA is not valid UTF-8") from None
    if "\x00" in text:
        raise UploadError(400, "METADATA contains a NUL character")
    try:
        # compat32 keeps values as plain strings (no RFC 2047 decoding, no
        # header-object magic), which is what the metadata spec means.
        message = email.parser.Parser(policy=email.policy.compat32).parsestr(text)
        items = list(message.items())
        body = message.get_payload()
    except Exception:  # the email package has odd corners; never a 500
        raise UploadError(400, "METADATA could not be parsed") from None
    if not isinstance(body, str):
        raise UploadError(400, "METADATA could not be parsed")

    result = empty_metadata()
    seen: set[str] = set()
    for header, value in items:
        if not isinstance(value, str):
            raise UploadError(400, "METADATA could not be parsed")
        lower = header.lower()
        if lower == "description":
            value = _unfold_description(value)
        else:
            value = _FOLD.sub(" ", value).strip()
            if _CONTROL.search(value) or "\n" in value or "\r" in value:
                raise UploadError(400, f"METADATA field {header!r} contains control characters")
        if lower in SINGLE_FIELDS:
            if lower in seen:
                raise UploadError(400, f"METADATA field {header!r} appears more than once")
            seen.add(lower)
            result[SINGLE_FIELDS[lower]] = value
        elif lower in MULTI_FIELDS:
            result[MULTI_FIELDS[lower]].append(value)
        elif lower == "project-url":
            _add_project_url(result["project_urls"], value)
    if body.strip():
        # Metadata 2.1+ puts the description in the body; it wins over a header.
        result["description"] = body
    for required in ("name", "version"):
        if not result[required]:
            raise UploadError(400, f"METADATA has no {required.capitalize()}")
    return result


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
                _add_project_url(result["project_urls"], value)
    return result


def _add_project_url(urls: dict[str, str], value: str) -> None:
    """``Project-URL: Label, https://...``: keep the first URL for each label;
    entries without a comma are not a label/URL pair and are skipped."""
    label, sep, url = value.partition(",")
    label, url = label.strip(), url.strip()
    if sep and label and url:
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
