"""What the supply-chain policy does to the files the UI shows.

The UI is informational: it lists every file the server holds, refused or
not, but says of each one the policy refuses why (a block rule, the release
cooldown, allow_only) and offers no download link for it.  The decision is
the one the file routes make (pypicache.services.blocklist and
pypicache.services.cooldown), asked here per file rather than by filtering,
so what the page says is what a client would get.

Pure functions of immutable inputs (rules, the PolicyConfig, the records):
a page of 100,000 files is marked in the thread pool with its rendering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from pypicache.model import FileRecord
from pypicache.services import cooldown
from pypicache.services.visibility import LOCAL

__all__ = ["Marks", "NO_MARKS", "mark", "policy_facts"]

#: The kinds of refusal a file row can show (its tag's CSS class).
BLOCKED = "blocked"
HELD = "held"


@attrs.frozen
class Marks:
    """The policy's verdict on one project's files.

    ``files``: filename -> (kind, text) for each refused file; ``project``:
    why the whole project is refused (blocked by name, or not proxied), or
    None; ``until``: the instant the first held file comes of age (the page
    must be built again then), None when there is none.
    """

    files: Mapping[str, tuple[str, str]] = attrs.field(factory=dict)
    project: str | None = None
    blocked: int = 0
    held: int = 0
    until: float | None = None


NO_MARKS = Marks()


def held_text(until: float) -> str:
    if until == cooldown.FOREVER:
        return "held back: no upload time (cooldown)"
    return f"held back until {cooldown.rfc3339(until)} (cooldown)"


def mark(rules: Any, policy: Any, name: str, files: Iterable[FileRecord], now: float) -> Marks:
    """Which of ``files`` (project ``name``) the block/allow ``rules`` and
    the cooldown of ``policy`` refuse at ``now``.  Without any policy for
    ``name``: :data:`NO_MARKS`, at the cost of two lookups."""
    blockable = rules.active and name in rules.by_name
    proxied = rules.allows(name)
    cooling = cooldown.min_age_of(policy, name) > 0
    if not (blockable or cooling or not proxied):
        return NO_MARKS
    project = rules.project_reason(name) if blockable else None
    unlisted = None if proxied else f"not proxied by policy: {name} is not in policy.allow_only"
    marked: dict[str, tuple[str, str]] = {}
    blocked = held = 0
    until = cooldown.FOREVER
    for f in files:
        why = rules.file_reason(name, f.filename) if blockable else None
        if why is None and unlisted is not None and f.origin != LOCAL:
            why = project = project or unlisted  # a private project is not concerned
        if why is not None:
            marked[f.filename] = (BLOCKED, why)
            blocked += 1
            continue
        if cooling:
            held_until = cooldown.held_until(policy, name, f, now)
            if held_until is not None:
                marked[f.filename] = (HELD, held_text(held_until))
                held += 1
                until = min(until, held_until)
    if not marked and project is None:
        return NO_MARKS  # the page looks as without a policy
    return Marks(marked, project, blocked, held, None if until == cooldown.FOREVER else until)


def _duration(seconds: float) -> str:
    """``2d``, ``36h``, ``90m``, ``45s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def policy_facts(rules: Any, policy: Any) -> list[tuple[str, str]]:
    """The statistics page's "Policy" block: the cooldown, the block rules,
    allow_only, as they are in force now."""
    min_age = policy.min_age if policy is not None else 0.0
    if min_age > 0:
        cooldown_text = _duration(min_age)
    else:
        cooldown_text = "off"
    if policy is not None:
        extras = []
        if policy.min_age_overrides:
            extras.append(f"{len(policy.min_age_overrides)} per-project override"
                          f"{'s' if len(policy.min_age_overrides) != 1 else ''}")
        if policy.min_age_exempt and min_age > 0:
            extras.append(f"{len(policy.min_age_exempt)} exempt")
        if extras:
            cooldown_text += f" ({', '.join(extras)})"
    count = sum(len(r) for r in rules.by_name.values())
    allow = ("off" if rules.allow_only is None else
             f"on, {len(rules.allow_only)} project{'s' if len(rules.allow_only) != 1 else ''}")
    return [("cooldown (min_age)", cooldown_text), ("block rules", str(count)), ("allow_only", allow)]
