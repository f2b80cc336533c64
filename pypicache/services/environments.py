"""Target environments for pre-filling: a Python version on a platform.

An office pre-fills for the machines that will install, not for the server:
``python = ["3.11", "3.12"]`` and ``platforms = ["manylinux_2_28_x86_64",
"win_amd64"]`` make four environments, each with the wheel tags it accepts
(best first, as installers rank them) and the values its markers see.  With
neither given, the server's own environment (``packaging.tags.sys_tags()``).
"""

from __future__ import annotations

import re
import sys
from typing import Iterable, Sequence

import attrs
from packaging import tags
from packaging.markers import Marker, default_environment
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

__all__ = ["Environment", "environments", "InvalidEnvironment", "PYTHON", "PLATFORM"]

PYTHON = re.compile(r"3\.\d{1,2}")
PLATFORM = re.compile(r"[a-z0-9_.]{1,64}", re.ASCII)
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
_LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
_MUSLLINUX = re.compile(r"musllinux_(\d+)_(\d+)_(\w+)")
_MACOS = re.compile(r"macosx_(\d+)_(\d+)_(\w+)")


class InvalidEnvironment(ValueError):
    """A Python version or platform tag this module cannot target."""


@attrs.frozen
class Environment:
    """One target: what its markers see and the wheel tags it installs."""

    python: str
    platform: str
    markers: dict[str, str] = attrs.field(eq=False, repr=False)
    tags: tuple[tags.Tag, ...] = attrs.field(eq=False, repr=False)
    rank: dict[tags.Tag, int] = attrs.field(eq=False, repr=False)

    @property
    def label(self) -> str:
        return f"python {self.python} on {self.platform}"

    def accepts_python(self, requires_python: str | None) -> bool:
        if not requires_python:
            return True
        try:
            return SpecifierSet(requires_python).contains(self.markers["python_full_version"], prereleases=True)
        except InvalidSpecifier:
            return True  # as pip does: an unreadable Requires-Python does not hide a file

    def marker_true(self, marker: Marker | None, extras: Iterable[str] = ("",)) -> bool:
        if marker is None:
            return True
        return any(marker.evaluate({**self.markers, "extra": extra}) for extra in extras)

    def wheel_rank(self, filename: str) -> int | None:
        """The wheel's best tag's position (lower is better); None: not installable here."""
        try:
            file_tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return None
        ranks = [self.rank[t] for t in file_tags if t in self.rank]
        return min(ranks) if ranks else None


def _linux_platforms(tag: str) -> list[str]:
    """A manylinux/musllinux tag and every older one it also installs."""
    m = _MANYLINUX.fullmatch(tag)
    if tag.split("_", 1)[0] in _LEGACY_MANYLINUX:
        major, minor = _LEGACY_MANYLINUX[tag.split("_", 1)[0]]
        m = _MANYLINUX.fullmatch(f"manylinux_{major}_{minor}_{tag.split('_', 1)[1]}")
    if m is not None:
        major, minor, arch = int(m[1]), int(m[2]), m[3]
        out = []
        for glibc_minor in range(minor, 4, -1):
            out.append(f"manylinux_{major}_{glibc_minor}_{arch}")
            for legacy, (lmaj, lmin) in _LEGACY_MANYLINUX.items():
                if (lmaj, lmin) == (major, glibc_minor):
                    out.append(f"{legacy}_{arch}")
        return out + [f"linux_{arch}"]
    m = _MUSLLINUX.fullmatch(tag)
    if m is not None:
        major, minor, arch = int(m[1]), int(m[2]), m[3]
        return [f"musllinux_{major}_{n}_{arch}" for n in range(minor, -1, -1)] + [f"linux_{arch}"]
    m = _MACOS.fullmatch(tag)
    if m is not None:
        return list(tags.mac_platforms((int(m[1]), int(m[2])), m[3]))
    return [tag]


def _markers_for(python: str, platform_tag: str, own: dict[str, str]) -> dict[str, str]:
    markers = dict(own)
    major_minor = ".".join(own["python_version"].split(".")[:2])
    markers.update(python_version=python, implementation_name="cpython",
                   platform_python_implementation="CPython",
                   python_full_version=own["python_full_version"] if python == major_minor else f"{python}.0",
                   implementation_version=own["python_full_version"] if python == major_minor else f"{python}.0")
    if platform_tag == "native":
        return markers
    arch = platform_tag.split("_", 3)[-1] if "_" in platform_tag else platform_tag
    if platform_tag.startswith(("manylinux", "musllinux", "linux")):
        markers.update(sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine=arch)
    elif platform_tag.startswith("macosx"):
        markers.update(sys_platform="darwin", platform_system="Darwin", os_name="posix",
                       platform_machine=platform_tag.rsplit("_", 1)[-1])
    elif platform_tag.startswith("win"):
        machine = {"win_amd64": "AMD64", "win32": "x86", "win_arm64": "ARM64"}.get(platform_tag, "AMD64")
        markers.update(sys_platform="win32", platform_system="Windows", os_name="nt", platform_machine=machine)
    markers.update(platform_release="", platform_version="")
    return markers


def _environment(python: str | None, platform_tag: str | None) -> Environment:
    own = default_environment()
    if python is None and platform_tag is None:
        ordered = tuple(dict.fromkeys(tags.sys_tags()))
        return Environment(".".join(own["python_version"].split(".")[:2]), "native", dict(own), ordered,
                           {t: i for i, t in enumerate(ordered)})
    if python is None:
        python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python is not None and not PYTHON.fullmatch(python):
        raise InvalidEnvironment(f"python: expected a version such as 3.12, got {python!r}")
    if platform_tag is not None and not PLATFORM.fullmatch(platform_tag):
        raise InvalidEnvironment(f"platform: expected a wheel platform tag such as manylinux_2_28_x86_64, "
                                 f"got {platform_tag!r}")
    version = tuple(int(p) for p in python.split("."))
    if platform_tag is None:
        platforms: list[str] = list(dict.fromkeys(t.platform for t in tags.sys_tags()))
        label = "native"
    else:
        platforms, label = _linux_platforms(platform_tag), platform_tag
    interpreter = f"cp{version[0]}{version[1]}"
    ordered = tuple(dict.fromkeys([*tags.cpython_tags(version, platforms=platforms),
                                   *tags.compatible_tags(version, interpreter, platforms)]))
    return Environment(python, label, _markers_for(python, label, own), ordered,
                       {t: i for i, t in enumerate(ordered)})


def environments(pythons: Sequence[str] = (), platforms: Sequence[str] = ()) -> list[Environment]:
    """Every (python, platform) pair; the server's own where a list is empty."""
    pys: list[str | None] = list(dict.fromkeys(pythons)) or [None]
    plats: list[str | None] = list(dict.fromkeys(platforms)) or [None]
    return [_environment(py, plat) for py in pys for plat in plats]
