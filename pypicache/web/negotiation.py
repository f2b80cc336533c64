"""Content negotiation for the Simple API (PEP 691), without any I/O.

Every page request goes through :func:`choose_format`, so it is on the hot
path.  Installers send the same ``Accept`` string on every request (pip and uv
each have one fixed header), so parsed answers are memoised in a small bounded
dict keyed by the raw header: after the first request a negotiation costs one
dict lookup.

The rules, in short: ``?format=`` overrides ``Accept``; otherwise every
format gets the q-value of the most specific media range that matches it
(RFC 9110 section 12.5.1) and the highest q wins.  Equal q-values are broken
in favour of the formats the client named itself (JSON, then v1 HTML, then
plain HTML); formats reached only through a wildcard lose such ties, and
among those plain HTML, the server's default, comes first, so ``*/*``
yields HTML.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import attrs

__all__ = [
    "Format",
    "JSON",
    "HTML_V1",
    "HTML",
    "FORMATS",
    "choose_format",
    "accepts_gzip",
]


@attrs.frozen
class Format:
    """One representation of a Simple API page.

    ``name`` is a short stable identifier (usable as a cache key);
    ``content_type`` is the exact ``Content-Type`` header value to send.
    """

    name: str
    content_type: str

    @property
    def is_json(self) -> bool:
        """True for the PEP 691 JSON form; both HTML forms render alike."""
        return self.name == "json"


JSON = Format("json", "application/vnd.pypi.simple.v1+json")
HTML_V1 = Format("html-v1", "application/vnd.pypi.simple.v1+html")
HTML = Format("html", "text/html; charset=utf-8")

#: All formats, in the server's order of preference for explicit ties.
FORMATS: tuple[Format, ...] = (JSON, HTML_V1, HTML)

_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_HTML_V1_TYPE = "application/vnd.pypi.simple.v1+html"
_LATEST_JSON_TYPE = "application/vnd.pypi.simple.latest+json"
_LATEST_HTML_TYPE = "application/vnd.pypi.simple.latest+html"

#: Values accepted for ``?format=`` (compared lower-cased and stripped).
_FORMAT_PARAMS: dict[str, Format] = {
    _JSON_TYPE: JSON,
    _LATEST_JSON_TYPE: JSON,
    "latest+json": JSON,
    _HTML_V1_TYPE: HTML_V1,
    _LATEST_HTML_TYPE: HTML_V1,
    "latest+html": HTML_V1,
    "text/html": HTML,
}

#: Exact media types, mapped to the format they ask for.
_EXACT: dict[str, Format] = {
    _JSON_TYPE: JSON,
    _LATEST_JSON_TYPE: JSON,
    _HTML_V1_TYPE: HTML_V1,
    _LATEST_HTML_TYPE: HTML_V1,
    "text/html": HTML,
}

#: Wildcard ranges and the formats they reach.  ``text/*`` and ``*/*`` reach
#: plain HTML; ``application/*`` reaches the two vendor types.
_WILDCARDS: dict[str, tuple[Format, ...]] = {
    "*/*": (JSON, HTML_V1, HTML),
    "text/*": (HTML,),
    "application/*": (JSON, HTML_V1),
}

# Tie-break ranks (higher wins) for formats the client named, and for formats
# it reached only through a wildcard (where the server's default comes first).
_EXPLICIT_RANK = {JSON: 2, HTML_V1: 1, HTML: 0}
_WILDCARD_RANK = {HTML: 2, JSON: 1, HTML_V1: 0}

_CACHE_SIZE = 128
#: Headers longer than this are negotiated but never memoised, so a client
#: cannot fill memory with junk headers.
_MAX_CACHED_LENGTH = 1024

_T = TypeVar("_T")
_MISSING = object()


def _memoised(cache: dict, key: str, compute: Callable[[str], _T]) -> _T:
    """Look ``key`` up in a bounded ``cache``, computing and storing on a miss.

    Eviction drops the oldest entry (dict insertion order), which is all a
    handful of recurring headers need.
    """
    value = cache.get(key, _MISSING)
    if value is not _MISSING:
        return value  # type: ignore[return-value]
    value = compute(key)
    if len(key) <= _MAX_CACHED_LENGTH:
        if len(cache) >= _CACHE_SIZE:
            try:
                del cache[next(iter(cache))]
            except (StopIteration, KeyError, RuntimeError):
                cache.clear()
        cache[key] = value
    return value  # type: ignore[return-value]


def _parse_q(raw: str) -> float | None:
    """A q-value, or None when it is malformed (the item is then skipped)."""
    raw = raw.strip().strip('"')
    try:
        q = float(raw)
    except ValueError:
        return None
    if not 0.0 <= q <= 1.0:  # also rejects nan
        return None
    return q


def _parse_header(header: str) -> list[tuple[str, float]]:
    """Split a comma list of ``token[;param=value]*`` into ``(token, q)``.

    Tokens are lower-cased; parameters other than ``q`` are ignored (as are
    extensions after it).  Items that cannot be parsed are skipped, never
    raised about: a header is client input.
    """
    items: list[tuple[str, float]] = []
    for item in header.split(","):
        token, *params = item.split(";")
        token = token.strip().lower()
        if not token:
            continue
        q: float | None = 1.0
        for param in params:
            key, sep, value = param.partition("=")
            if key.strip().lower() == "q":
                q = _parse_q(value) if sep else None
                break
        if q is None:
            continue
        items.append((token, q))
    return items


def _negotiate(accept: str) -> Format | None:
    """The uncached body of :func:`choose_format` for a non-empty header."""
    # Per format: (specificity, q) of the best matching range so far.
    best: dict[Format, tuple[int, float]] = {}

    def offer(fmt: Format, specificity: int, q: float) -> None:
        current = best.get(fmt)
        if current is None or specificity > current[0]:
            best[fmt] = (specificity, q)
        elif specificity == current[0] and q > current[1]:
            best[fmt] = (specificity, q)

    parsed_any = False
    for media_range, q in _parse_header(accept):
        if media_range == "*":  # old clients (Java) send a bare "*"
            media_range = "*/*"
        kind, slash, subtype = media_range.partition("/")
        if not slash or not kind or not subtype or "/" in subtype:
            continue
        if kind == "*" and subtype != "*":
            continue
        parsed_any = True
        exact = _EXACT.get(media_range)
        if exact is not None:
            offer(exact, 2, q)
            continue
        for fmt in _WILDCARDS.get(media_range, ()):
            offer(fmt, 0 if kind == "*" else 1, q)

    if not parsed_any:
        # Nothing recognisable as a media range: RFC 9110 lets the server
        # disregard such a header, i.e. treat it as absent.
        return HTML

    choice: Format | None = None
    choice_key: tuple[float, int, int] = (0.0, 0, 0)
    for fmt, (specificity, q) in best.items():
        if q <= 0.0:
            continue
        explicit = specificity == 2
        rank = _EXPLICIT_RANK[fmt] if explicit else _WILDCARD_RANK[fmt]
        key = (q, int(explicit), rank)
        if choice is None or key > choice_key:
            choice, choice_key = fmt, key
    return choice


_accept_cache: dict[str, Format | None] = {}


def choose_format(accept: str | None, format_param: str | None) -> Format | None:
    """Pick the representation for a Simple API page.

    :param accept: the request's ``Accept`` header (None when absent).
    :param format_param: the ``?format=`` query value (None when absent; an
        empty value counts as absent).  It overrides ``Accept``.
    :return: the :class:`Format` to render, or None when nothing the client
        accepts can be served (answer 406).
    """
    if format_param:
        return _FORMAT_PARAMS.get(format_param.strip().lower())
    if accept is None:
        return HTML
    return _memoised(_accept_cache, accept, _choose_from_accept)


def _choose_from_accept(accept: str) -> Format | None:
    if not accept.strip():
        return HTML
    return _negotiate(accept)


def _gzip_ok(accept_encoding: str) -> bool:
    gzip_q: float | None = None
    star_q: float | None = None
    for coding, q in _parse_header(accept_encoding):
        if coding in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == "*":
            star_q = q if star_q is None else max(star_q, q)
    if gzip_q is not None:
        return gzip_q > 0.0
    return star_q is not None and star_q > 0.0


_encoding_cache: dict[str, bool] = {}


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when the client takes a gzip-encoded body.

    That is ``gzip`` (or ``x-gzip``) with q > 0, or ``*`` with q > 0 unless
    gzip itself is refused.  A missing header answers False: an identity body
    is always safe.
    """
    if not accept_encoding:
        return False
    return _memoised(_encoding_cache, accept_encoding, _gzip_ok)
