"""A project's files grouped into releases, as PyPI's JSON API shows them.

Pure functions of file records: which release (and which kind of
distribution) a filename is, the releases of a project in version order,
and the release PyPI puts in ``info``.  Files whose names cannot be read are
left out, as PyPI leaves them out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from pypicache.model import FileRecord

__all__ = ["Release", "classify", "group_releases", "latest"]

_EGG = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-py(?P<py>[0-9.]+))?(?:-[^-]+)?\.egg$")
_OTHER_SDIST = (".tar.bz2", ".tar.xz", ".tgz", ".tar")


@functools.lru_cache(maxsize=16384)
def classify(filename: str) -> tuple[Version, str, str] | None:
    """(version, packagetype, python_version) of a distribution file, or None
    when the name is not one we can read (such files are left out).

    Memoised: parsing a wheel's tags costs ~15 µs, and a page of 601 files is
    grouped again each time one of its files is stored."""
    try:
        if filename.endswith(".whl"):
            _, version, _, _ = parse_wheel_filename(filename)
            python_tag = filename[:-4].split("-")[-3]
            return version, "bdist_wheel", python_tag
        if filename.endswith((".tar.gz", ".zip")):
            return parse_sdist_filename(filename)[1], "sdist", "source"
        for suffix in _OTHER_SDIST:  # old sdists PyPI still lists
            if filename.endswith(suffix):
                return parse_sdist_filename(filename[: -len(suffix)] + ".tar.gz")[1], "sdist", "source"
        m = _EGG.match(filename)
        if m is not None:
            return Version(m["version"]), "bdist_egg", m["py"] or "any"
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion, IndexError):
        return None
    return None


class Release:
    """One version's files, in the order the records list them."""

    def __init__(self, version: Version) -> None:
        self.version = version
        self.key = str(version)
        self.files: list[tuple[FileRecord, str, str]] = []  # (record, packagetype, python_version)

    @property
    def yanked(self) -> bool:
        """PyPI yanks whole releases: a release is yanked when all its files are."""
        return bool(self.files) and all(f.yanked for f, _, _ in self.files)

    @property
    def yanked_reason(self) -> str | None:
        if not self.yanked:
            return None
        return next((f.yanked_reason for f, _, _ in self.files if f.yanked_reason), None)


def group_releases(files: Iterable[FileRecord], extra_versions: Iterable[str] = ()) -> dict[str, Release]:
    """Releases by version string, ascending by packaging Version.

    ``extra_versions`` (PEP 700 ``versions``) adds releases with no files, as
    PyPI lists them.
    """
    by_version: dict[Version, Release] = {}
    for record in files:
        found = classify(record.filename)
        if found is None:
            continue
        version, packagetype, python_version = found
        by_version.setdefault(version, Release(version)).files.append((record, packagetype, python_version))
    for raw in extra_versions:
        try:
            version = Version(raw)
        except InvalidVersion:
            continue
        by_version.setdefault(version, Release(version))
    return {r.key: r for r in sorted(by_version.values(), key=lambda r: r.version)}


def latest(releases: Mapping[str, Release]) -> Release | None:
    """What PyPI shows in ``info``: the newest release that is neither yanked
    nor a pre-release, else the newest not yanked, else the newest (releases
    with files first)."""
    candidates = [r for r in releases.values() if r.files] or list(releases.values())
    for keep in (lambda r: not r.yanked and not r.version.is_prerelease, lambda r: not r.yanked, lambda r: True):
        chosen = [r for r in candidates if keep(r)]
        if chosen:
            return max(chosen, key=lambda r: r.version)
    return None
