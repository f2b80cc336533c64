"""Release cooldown and as-of views: which files are too new to show.

A compromised maintainer account or a typo-squat is usually caught within
hours or days of its upload; a cooldown (``[policy] min_age``) keeps every
upstream file out of sight until it has been public that long (its PEP 700
upload time), so an install never picks a release in that window.  Uploads
to this server (``origin`` local) are never held back: the operator trusts
them already.

The rule lives here only; the views apply it on top of
:mod:`pypicache.services.visibility` (pages, the JSON API, file URLs).
Nothing is cached here: callers pass the policy of the moment (it is
replaced on a config reload) and ``now``, and a rendered page stays valid
only until :attr:`Held.until`, the next instant a held file comes of age.

The as-of views (``/as-of/<time>/simple/``) answer "what did this server
show at that time": :func:`as_of` filters files by upload time and replays
their yank history (docs/security.md, "Supply chain").
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from typing import Any, Iterable

import attrs

from pypicache.model import FileRecord

#: ``origin`` of uploaded files (as in visibility and index.rules).
LOCAL = "local"

#: :func:`held_until` of a file held back for good (no upload time, "hide").
FOREVER = math.inf

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: RFC 3339 section 5.6 (the offset optional here, to name it when missing).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")


@functools.lru_cache(maxsize=65536)
def upload_seconds(text: str) -> float | None:
    """A PEP 700 upload time (``2024-01-02T03:04:05.123456Z``) in seconds since
    the epoch; None if it does not parse.  Memoised: the same files come back
    each time their page is rendered."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as an RFC 3339 UTC time (whole seconds, ``Z``)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def min_age_of(policy: Any, name: str) -> float:
    """The cooldown of project ``name`` in seconds (0: none) under ``policy``
    (a :class:`pypicache.daemon.config.PolicyConfig`, or None for no policy)."""
    if policy is None or name in policy.min_age_exempt:
        return 0.0
    return policy.min_age_overrides.get(name, policy.min_age)


def held_until(policy: Any, name: str, file: FileRecord, now: float) -> float | None:
    """When ``file`` of project ``name`` comes of age, if it is held back at
    ``now``; None when it may be served.  :data:`FOREVER` for a file without
    a usable upload time under ``missing_upload_time = "hide"``."""
    if file.origin == LOCAL:
        return None
    age = min_age_of(policy, name)
    if age <= 0:
        return None
    uploaded = upload_seconds(file.upload_time) if file.upload_time else None
    if uploaded is None:
        return FOREVER if policy.missing_upload_time == "hide" else None
    until = uploaded + age
    return until if until > now else None


def reason(until: float) -> str:
    """The ``X-PyPICache-Reason`` of a file held back until ``until``."""
    if until == FOREVER:
        return "cooldown: no upload time"
    return f"cooldown until {rfc3339(until)}"


@attrs.frozen
class Held:
    """A page's files after the cooldown.

    ``files``: those shown; ``count``: how many were held back; ``until``:
    the earliest instant one of them comes of age (None: no such instant),
    after which the page must be built again.
    """

    files: tuple[FileRecord, ...]
    count: int = 0
    until: float | None = None


def hold_back(policy: Any, name: str, files: tuple[FileRecord, ...], now: float) -> Held:
    """``files`` (already filtered by visibility) without those the cooldown
    holds back at ``now``.  Without a cooldown for ``name``: ``files`` itself."""
    if min_age_of(policy, name) <= 0:
        return Held(files)
    shown = []
    count = 0
    until = FOREVER
    for f in files:
        held = held_until(policy, name, f, now)
        if held is None:
            shown.append(f)
        else:
            count += 1
            until = min(until, held)
    return Held(tuple(shown) if count else files, count, None if until == FOREVER else until)


# ------------------------------------------------------------------ as-of


class BadTime(ValueError):
    """An as-of time that is neither a date nor an RFC 3339 timestamp."""


def parse_as_of(text: str) -> float:
    """The instant an as-of URL names, in seconds since the epoch.

    A date (``2024-05-01``) means the end of that day in UTC: files
    uploaded during it are included, as uv's ``--exclude-newer`` includes
    them (the server cannot know the client's time zone, so UTC).  An RFC
    3339 timestamp needs its offset (``Z`` or ``+02:00``).  Files count
    when they were uploaded strictly before the instant.
    """
    if _DATE.fullmatch(text):
        try:
            day = datetime.date.fromisoformat(text)
        except ValueError:
            raise BadTime(f"not a date: {text!r}") from None
        start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
        return (start + datetime.timedelta(days=1)).timestamp()
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise BadTime(f"not a date (YYYY-MM-DD) or an RFC 3339 time: {text!r}")
    if not m.group(1):
        raise BadTime(f"an RFC 3339 time needs its offset (Z or +hh:mm): {text!r}")
    try:
        when = datetime.datetime.fromisoformat(text.upper())
    except ValueError:
        raise BadTime(f"not a valid time: {text!r}") from None
    return when.timestamp()


def file_time(file: FileRecord) -> float | None:
    """When ``file`` became available: its upload time, else when this
    server first saw it; None when neither is known."""
    uploaded = upload_seconds(file.upload_time) if file.upload_time else None
    return uploaded if uploaded is not None else file.first_seen


def yank_state(file: FileRecord, when: float) -> tuple[bool, str | None]:
    """``file``'s yank state (yanked, reason) as of ``when``, from its history.

    A file whose history is empty was never seen to change: its state now.
    """
    history = file.yank_history
    if not history:
        return file.yanked, file.yanked_reason
    state: tuple[bool, str | None] = (False, None)
    for at, yanked, why in history:
        if at >= when:
            break
        state = (yanked, why if yanked else None)
    return state


def as_of(files: Iterable[FileRecord], when: float) -> tuple[FileRecord, ...]:
    """The files available before ``when``, each with its yank state then.

    A file with no known time counts as always available (docs/security.md
    says why).
    """
    shown = []
    for f in files:
        available = file_time(f)
        if available is not None and available >= when:
            continue
        yanked, why = yank_state(f, when)
        if yanked != f.yanked or why != f.yanked_reason:
            f = attrs.evolve(f, yanked=yanked, yanked_reason=why)
        shown.append(f)
    return tuple(shown)
