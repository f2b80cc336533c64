"""Resolving requirement ranges into exact versions with resolvelib (the
resolver pip is built on), fed by this server's own catalog.

resolvelib is synchronous, so a resolution runs in a thread; its
:class:`Source` (pypicache.services.prefetch) answers from the reactor
thread: project pages from the mirror and core metadata through the
downloader, the way the file routes get them.  One resolution per target
environment, since markers and wheel tags differ between them.
"""

from __future__ import annotations

from email.message import Message
from typing import Any, Iterable, Mapping, Protocol, Sequence

import attrs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from resolvelib import AbstractProvider, BaseReporter, Resolver
from resolvelib.resolvers import ResolutionError, ResolutionImpossible

from pypicache.model import FileRecord, version_of
from pypicache.services.environments import Environment
from pypicache.services.lockfiles import Wanted

__all__ = ["Source", "Candidate", "Resolution", "resolve", "version_of", "best_files", "matches_hashes"]

#: resolvelib's bound on resolution steps: a hopeless set fails rather than spins.
MAX_ROUNDS = 20_000


class Source(Protocol):
    """What the resolver reads (blocking calls, from its thread)."""

    def files(self, name: str) -> Sequence[FileRecord] | None:
        """The project's visible files; None when no index knows it."""

    def metadata(self, name: str, version: Version, files: Sequence[FileRecord]) -> Message:
        """Core metadata of one release (PEP 658 file, else read from a file)."""

    def warm(self, requirements: Iterable[Requirement], env: Environment) -> None:
        """A hint: these will be asked for soon (start fetching, do not wait)."""


def matches_hashes(record: FileRecord, hashes: frozenset[tuple[str, str]]) -> bool:
    return not hashes or any(record.hashes.get(algo) == digest for algo, digest in hashes)


def best_files(files: Iterable[FileRecord], env: Environment,
               hashes: frozenset[tuple[str, str]] = frozenset()) -> list[FileRecord]:
    """The file an installer in ``env`` would take: the best-ranked wheel, else
    the sdist; an empty list when none fits."""
    wheels: list[tuple[int, FileRecord]] = []
    sdists: list[FileRecord] = []
    for f in files:
        if not env.accepts_python(f.requires_python) or not matches_hashes(f, hashes):
            continue
        if f.filename.endswith(".whl"):
            rank = env.wheel_rank(f.filename)
            if rank is not None:
                wheels.append((rank, f))
        elif f.filename.endswith((".tar.gz", ".zip")):
            sdists.append(f)
    if wheels:
        return [min(wheels, key=lambda pair: pair[0])[1]]
    return sdists[:1]


@attrs.frozen
class Candidate:
    name: str
    version: Version
    extras: frozenset[str] = frozenset()
    files: tuple[FileRecord, ...] = attrs.field(default=(), eq=False, repr=False)


@attrs.frozen
class Resolution:
    """Per environment: chosen releases, and the requirements that failed."""

    pins: dict[str, Candidate]
    failed: list[tuple[str, str]]  # (project, reason)


def _key(name: str, extras: Iterable[str]) -> str:
    extras = sorted(extras)
    return f"{name}[{','.join(extras)}]" if extras else name


class _Provider(AbstractProvider):  # type: ignore[misc]
    def __init__(self, source: Source, env: Environment, constraints: Mapping[str, SpecifierSet],
                 hashes: Mapping[str, frozenset[tuple[str, str]]], unknown: set[str]) -> None:
        self.source = source
        self.env = env
        self.constraints = constraints
        self.hashes = hashes
        self.unknown = unknown

    def identify(self, requirement_or_candidate: Any) -> str:
        item = requirement_or_candidate
        if isinstance(item, Candidate):
            return _key(item.name, item.extras)
        return _key(canonicalize_name(item.name), item.extras)

    def get_preference(self, identifier: str, resolutions: Any, candidates: Any, information: Any,
                       backtrack_causes: Any) -> Any:
        pinned = any(s.operator in ("==", "===") for info in information[identifier]
                     for s in info.requirement.specifier)
        return (not pinned, identifier)

    def find_matches(self, identifier: str, requirements: Any, incompatibilities: Any) -> list[Candidate]:
        name = identifier.split("[", 1)[0]
        reqs = list(requirements[identifier])
        extras = frozenset(e for r in reqs for e in r.extras)
        bad = {c.version for c in incompatibilities[identifier]}
        files = self.source.files(name)
        if files is None:
            self.unknown.add(name)
            return []
        by_version: dict[Version, list[FileRecord]] = {}
        for f in files:
            v = version_of(f.filename)
            if v is not None:
                by_version.setdefault(v, []).append(f)
        spec = SpecifierSet()
        for r in reqs:
            spec &= r.specifier
        if name in self.constraints:
            spec &= self.constraints[name]
        pinned = any(s.operator in ("==", "===") for s in spec)
        hashes = self.hashes.get(name, frozenset())
        out = []
        for v in spec.filter(sorted(by_version, reverse=True)):
            if v in bad:
                continue
            release = by_version[v]
            if not pinned and all(f.yanked for f in release):
                continue  # PEP 592: a yanked release only for an exact pin
            if not best_files(release, self.env, hashes):
                continue
            out.append(Candidate(name, v, extras, tuple(release)))
        return out

    def is_satisfied_by(self, requirement: Any, candidate: Candidate) -> bool:
        return requirement.specifier.contains(candidate.version, prereleases=True) \
            and set(requirement.extras) <= candidate.extras

    def get_dependencies(self, candidate: Candidate) -> list[Requirement]:
        deps: list[Requirement] = []
        if candidate.extras:
            deps.append(Requirement(f"{candidate.name}=={candidate.version}"))
        metadata = self.source.metadata(candidate.name, candidate.version, candidate.files)
        for line in metadata.get_all("Requires-Dist") or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None:
                if candidate.extras:
                    if not self.env.marker_true(req.marker, sorted(candidate.extras)) or \
                            self.env.marker_true(req.marker, ("",)):
                        continue  # extras' own dependencies only; the base candidate brings the rest
                elif not self.env.marker_true(req.marker):
                    continue
            elif candidate.extras:
                continue
            deps.append(req)
        self.source.warm(deps, self.env)
        return deps


def resolve(source: Source, wanted: Sequence[Wanted], constraints: Sequence[Requirement],
            env: Environment) -> Resolution:
    """Resolve ``wanted`` for ``env`` (blocking: run it in a thread).

    A top-level requirement that cannot be met (unknown project, no version
    that fits) is reported and dropped, and the rest resolved again: one
    typo must not stop the whole set.
    """
    active = [w for w in wanted if env.marker_true(w.requirement.marker)]
    limits: dict[str, SpecifierSet] = {}
    for c in constraints:
        if env.marker_true(c.marker):
            name = canonicalize_name(c.name)
            limits[name] = limits.get(name, SpecifierSet()) & c.specifier
    hashes: dict[str, frozenset[tuple[str, str]]] = {}
    for w in active:
        if w.hashes:
            hashes[w.name] = hashes.get(w.name, frozenset()) | w.hashes
    failed: list[tuple[str, str]] = []
    source.warm([w.requirement for w in active], env)
    while active:
        unknown: set[str] = set()
        provider = _Provider(source, env, limits, hashes, unknown)
        try:
            result = Resolver(provider, BaseReporter()).resolve([w.requirement for w in active],
                                                                max_rounds=MAX_ROUNDS)
        except ResolutionImpossible as e:
            culprits = {canonicalize_name(info.requirement.name) for info in e.causes if info.parent is None}
            if not culprits:
                # Conflicts between dependencies: name the top-level set.
                chain = "; ".join(sorted({f"{info.requirement} (needed by "
                                          f"{info.parent.name if info.parent else 'the request'})"
                                          for info in e.causes}))
                failed += [(w.name, f"no consistent set of versions for {env.label}: {chain}") for w in active]
                return Resolution({}, failed)
            for w in active:
                if w.name in culprits:
                    if w.name in unknown:
                        reason = "no such project on the index"
                    else:
                        reason = f"no version matching {w.requirement} has a file for {env.label}"
                    failed.append((w.name, reason))
            active = [w for w in active if w.name not in culprits]
            continue
        except ResolutionError as e:
            failed += [(w.name, f"resolution failed for {env.label}: {e}") for w in active]
            return Resolution({}, failed)
        pins = {c.name: c for c in result.mapping.values() if not c.extras}
        return Resolution(pins, failed)
    return Resolution({}, failed)
