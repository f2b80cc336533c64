"""Block and allow lists: which projects and releases this server refuses.

``[policy] block`` names known-bad projects or releases as requirement
specifiers ("evil", "requests>=2,<2.3"); ``[policy] allow_only`` makes the
server a curated mirror proxying only the listed projects.  Runtime changes
made with ``pypicache policy`` live in ``<data_dir>/policy.json`` and are
merged with the config's (pypicache.daemon.reload re-reads both).

The one rule, asked by every view (pages, the JSON API, the file routes):

* a file whose project and version match a block rule is left out of pages
  and the JSON API (so resolvers pick another version) and its URL answers
  403 with the reason, even when its bytes are cached;
* a project blocked by name answers 403 everywhere;
* with ``allow_only``, an unlisted project's upstream files are neither
  fetched nor shown (404); private projects are not concerned (allow_only is
  about proxying), but block rules apply to uploads too: a known-bad
  version is bad wherever it comes from.

Rules are compiled once per change into an immutable :class:`Rules`; the
server holds the current one in a :class:`Blocklist` whose ``generation`` the
page caches include in their keys, so a page rendered before a change is
never served after it.  Without a policy ``rules.active`` is False and the
views skip all of this.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

import attrs

from pypicache.model import version_of
from pypicache.services.visibility import LOCAL
#: The runtime additions made by ``pypicache policy`` (in the data dir).
RUNTIME_FILE = "policy.json"
#: A denied file is written to the audit log at most once per this many seconds.
DENIED_LOG_EVERY = 3600.0


@attrs.frozen
class Rule:
    """One block rule: a project, and the versions of it (all when empty)."""

    spec: str
    name: str
    specifier: Any  # packaging.specifiers.SpecifierSet; empty: the whole project
    note: str | None = None

    @property
    def reason(self) -> str:
        return f"blocked by policy: {self.spec}" + (f" ({self.note})" if self.note else "")


@attrs.frozen
class Rules:
    """The compiled policy: block rules by project name, and allow_only."""

    by_name: Mapping[str, tuple[Rule, ...]] = attrs.field(factory=dict)
    allow_only: frozenset[str] | None = None

    @property
    def active(self) -> bool:
        return bool(self.by_name) or self.allow_only is not None

    def project_reason(self, name: str) -> str | None:
        """Why the whole project ``name`` is refused (a rule without versions), or None."""
        for rule in self.by_name.get(name, ()):
            if not rule.specifier:
                return rule.reason
        return None

    def allows(self, name: str) -> bool:
        """Whether ``name`` may be proxied (allow_only unset, or lists it)."""
        return self.allow_only is None or name in self.allow_only

    def file_reason(self, name: str, filename: str) -> str | None:
        """Why ``filename`` of project ``name`` is refused, or None.

        A file whose version cannot be read from its name is refused when a
        version rule names its project: failing closed is the safe side of a
        known-malicious release.  Pre-releases match too.
        """
        rules = self.by_name.get(name)
        if not rules:
            return None
        version = version_of(filename)
        for rule in rules:
            if not rule.specifier or version is None or rule.specifier.contains(version, prereleases=True):
                return rule.reason
        return None

    def visible(self, name: str, files: Iterable[Any]) -> tuple[Any, ...]:
        """``files`` without the refused ones (what pages and the JSON API list)."""
        allowed = self.allows(name)
        blocked = name in self.by_name
        return tuple(f for f in files
                     if (allowed or f.origin == LOCAL) and not (blocked and self.file_reason(name, f.filename)))

    def visible_versions(self, name: str, versions: Any) -> Any:
        """``versions`` (a page's PEP 700 list) without the blocked ones."""
        rules = self.by_name.get(name)
        if not rules or not versions:
            return versions
        from packaging.version import InvalidVersion, Version

        def blocked(text: str) -> bool:
            try:
                version = Version(text)
            except InvalidVersion:
                return True
            return any(not r.specifier or r.specifier.contains(version, prereleases=True) for r in rules)

        return type(versions)(v for v in versions if not blocked(v))


NO_RULES = Rules()


def parse_rule(spec: str, note: str | None = None) -> Rule:
    """A block rule from a requirement string; ValueError naming the problem."""
    from packaging.requirements import InvalidRequirement, Requirement

    from pypicache.model import normalize

    try:
        req = Requirement(spec)
    except InvalidRequirement as e:
        raise ValueError(f"{spec!r} is not a requirement specifier: {e}") from None
    if req.url or req.marker or req.extras:
        raise ValueError(f"{spec!r}: only a name and version specifiers may be blocked")
    return Rule(spec=spec, name=normalize(req.name), specifier=req.specifier, note=note)


@attrs.frozen
class RuntimePolicy:
    """What ``pypicache policy`` added: ``<data_dir>/policy.json``."""

    #: (spec, note) pairs, in the order they were added.
    block: tuple[tuple[str, str | None], ...] = ()
    #: Names added to the config's allow_only.
    allow: frozenset[str] = frozenset()

    def as_json(self) -> dict[str, Any]:
        return {"block": [{"spec": s, "reason": n} for s, n in self.block], "allow": sorted(self.allow)}


def load_runtime(data_dir: Path) -> RuntimePolicy:
    """The runtime policy file; an empty policy when there is none.
    ValueError (naming the file) when it is not what ``pypicache policy`` writes."""
    path = Path(data_dir) / RUNTIME_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return RuntimePolicy()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable: {e}") from None
    try:
        block = tuple((str(item["spec"]), item.get("reason")) for item in data.get("block", []))
        for spec, note in block:
            parse_rule(spec, note)
        allow = frozenset(str(n) for n in data.get("allow", []))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a policy file: {e}") from None
    return RuntimePolicy(block=block, allow=allow)


def save_runtime(data_dir: Path, runtime: RuntimePolicy) -> None:
    """Write the runtime policy file atomically and durably (0600)."""
    from pypicache.durable import fsync_dir

    path = Path(data_dir) / RUNTIME_FILE
    tmp = path.with_name(f".{RUNTIME_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(runtime.as_json(), indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def compile_rules(policy: Any, runtime: RuntimePolicy = RuntimePolicy()) -> Rules:
    """Rules from a PolicyConfig and the runtime additions."""
    if not policy.block and not runtime.block and policy.allow_only is None:
        return NO_RULES
    by_name: dict[str, list[Rule]] = {}
    for spec, note in [(s, None) for s in policy.block] + list(runtime.block):
        rule = parse_rule(spec, note)
        by_name.setdefault(rule.name, []).append(rule)
    allow_only = None if policy.allow_only is None else frozenset(policy.allow_only) | runtime.allow
    return Rules(by_name={k: tuple(v) for k, v in by_name.items()}, allow_only=allow_only)


class Blocklist:
    """The server's current :class:`Rules`, replaced as a whole on a change.

    ``generation`` grows with every change; rendered-page caches key on it.
    ``on_denied(project, filename, reason, client)`` is told of refused file
    requests, at most once per file per ``DENIED_LOG_EVERY`` (the audit log:
    a client retrying cannot fill the disk).
    """

    def __init__(self, rules: Rules = NO_RULES, *, clock: Callable[[], float] = time.time) -> None:
        self.rules = rules
        self.generation = 0
        self.on_denied: Callable[[str, str, str, str], Any] | None = None
        self._clock = clock
        self._denied: dict[tuple[str, str], float] = {}

    def update(self, rules: Rules) -> None:
        self.rules = rules
        self.generation += 1
        self._denied.clear()

    def denied(self, project: str, filename: str, reason: str, client: str) -> None:
        if self.on_denied is None:
            return
        now = self._clock()
        key = (project, filename)
        if now - self._denied.get(key, -DENIED_LOG_EVERY) < DENIED_LOG_EVERY:
            return
        if len(self._denied) > 10_000:
            self._denied.clear()
        self._denied[key] = now
        self.on_denied(project, filename, reason, client)
