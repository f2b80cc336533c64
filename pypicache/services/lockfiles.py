"""What to pre-fill, read from the files projects already keep: requirements
files, ``pylock.toml`` (PEP 751), ``uv.lock`` and ``poetry.lock``.

Pure parsing, no I/O beyond the ``read`` callback that follows ``-r``/``-c``
includes, so the route (which has one uploaded file and no includes) and the
command (which reads files next to each other) share it.  A line or package
that cannot be used becomes a :class:`Problem` naming where it is, and the
rest of the file still counts: one editable line must not stop an office's
pre-fill.

Requirements files give requirements to resolve; lock files give exact files
(name, version, filename, hash) that only need fetching.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import attrs
from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = ["Wanted", "LockedFile", "Problem", "Inputs", "parse_requirements", "parse_pylock",
           "parse_uv_lock", "parse_poetry_lock", "parse_any", "detect_format", "FORMATS"]

FORMATS = ("requirements", "pylock", "uv.lock", "poetry.lock")
#: How deep ``-r``/``-c`` includes may nest (a loop is caught before that).
MAX_INCLUDE_DEPTH = 10

_HASH = re.compile(r"--hash(?:=|\s+)([A-Za-z0-9]+):([0-9a-fA-F]+)")
_COMMENT = re.compile(r"(^|\s)#.*$")
_INCLUDE = re.compile(r"^(?:(-r|-c)\s*|(--requirement|--constraint)(?:=|\s+))(\S.*)$")
#: Options that only say where to find packages, or how to install them:
#: this server is the index, so they do not change what is fetched.
_IGNORED = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host", "--pre",
            "--prefer-binary", "--no-binary", "--only-binary", "--require-hashes", "--no-index",
            "--use-feature", "--no-deps", "--upgrade-strategy")
_PER_REQUIREMENT_OPTIONS = re.compile(r"\s--(?:config-settings|global-option|install-option)(?:=|\s+)\S+")


@attrs.frozen
class Wanted:
    """A requirement to resolve; ``hashes`` (algorithm, hex) restrict its files."""

    requirement: Requirement
    hashes: frozenset[tuple[str, str]] = frozenset()
    where: str = ""

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)


@attrs.frozen
class LockedFile:
    """One file a lock names exactly; ``marker`` (the package's) may exclude it
    from a target environment."""

    project: str
    version: str
    filename: str
    hashes: frozenset[tuple[str, str]] = frozenset()
    marker: Marker | None = None
    where: str = ""


@attrs.frozen
class Problem:
    """A line or package that cannot be pre-filled, and why."""

    where: str
    reason: str
    project: str | None = None


@attrs.frozen
class Inputs:
    """Everything read from one or more files."""

    wanted: tuple[Wanted, ...] = ()
    constraints: tuple[Requirement, ...] = ()
    locked: tuple[LockedFile, ...] = ()
    problems: tuple[Problem, ...] = ()

    def __add__(self, other: Inputs) -> Inputs:
        return Inputs(self.wanted + other.wanted, self.constraints + other.constraints,
                      self.locked + other.locked, self.problems + other.problems)

    @property
    def size(self) -> int:
        """Requirements plus locked packages: what the route's bounds count."""
        return len(self.wanted) + len({(f.project, f.version) for f in self.locked})


# --------------------------------------------------------------- requirements


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) with continuations joined and comments gone."""
    out: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not buffer:
            start = number
        line = _COMMENT.sub("", raw).rstrip()
        if line.endswith("\\"):
            buffer.append(line[:-1])
            continue
        buffer.append(line)
        joined = " ".join(part.strip() for part in buffer).strip()
        buffer = []
        if joined:
            out.append((start, joined))
    if buffer:
        joined = " ".join(part.strip() for part in buffer).strip()
        if joined:
            out.append((start, joined))
    return out


def _looks_like_location(text: str) -> bool:
    return ("://" in text or text.startswith((".", "/", "~")) or text.endswith((".whl", ".tar.gz", ".zip"))
            or (("/" in text or "\\" in text) and not any(c in text for c in "<>=!~;")))


def parse_requirements(text: str, *, label: str = "requirements.txt",
                       read: Callable[[str, str], tuple[str, str]] | None = None,
                       constraint: bool = False, _seen: frozenset[str] = frozenset(),
                       _depth: int = 0) -> Inputs:
    """A pip requirements file: requirement lines (extras, markers, ``--hash``),
    ``-r``/``-c`` includes through ``read(name, label) -> (label, text)`` (None:
    includes are refused, as in an uploaded file), comments and continuations.
    Index options are ignored; URLs, paths and editables are problems."""
    wanted: list[Wanted] = []
    constraints: list[Requirement] = []
    result = Inputs()
    problems: list[Problem] = []
    for number, line in _logical_lines(text):
        where = f"{label}:{number}"
        include = _INCLUDE.match(line)
        if include is not None:
            option, target = include.group(1) or include.group(2), include.group(3).strip()
            nested = option in ("-c", "--constraint") or constraint
            if read is None:
                problems.append(Problem(where, f"cannot follow {option} {target}: send the "
                                               "included file's lines in the same file"))
                continue
            if _depth >= MAX_INCLUDE_DEPTH:
                problems.append(Problem(where, f"includes nested more than {MAX_INCLUDE_DEPTH} deep"))
                continue
            try:
                child_label, child_text = read(target, label)
            except OSError as e:
                problems.append(Problem(where, f"cannot read {target}: {e.strerror or e}"))
                continue
            if child_label in _seen or child_label == label:
                problems.append(Problem(where, f"{target} includes itself (loop)"))
                continue
            result = result + parse_requirements(child_text, label=child_label, read=read, constraint=nested,
                                                 _seen=_seen | {label}, _depth=_depth + 1)
            continue
        if line.startswith(("-e", "--editable")):
            problems.append(Problem(where, "editable requirements are built from source, not fetched"))
            continue
        if line.startswith("-"):
            option = line.split("=", 1)[0].split()[0]
            if option not in _IGNORED:
                problems.append(Problem(where, f"unknown option {option}"))
            continue
        hashes = frozenset((algo.lower(), digest.lower()) for algo, digest in _HASH.findall(line))
        spec = _PER_REQUIREMENT_OPTIONS.sub("", _HASH.sub("", " " + line)).strip()
        if _looks_like_location(spec.split(";")[0]):
            problems.append(Problem(where, "URLs and paths are not fetched through an index: name a "
                                           "project and version instead"))
            continue
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as e:
            problems.append(Problem(where, f"not a valid requirement: {e}"))
            continue
        if requirement.url:
            problems.append(Problem(where, "URL requirements (name @ url) are not fetched through an index",
                                    canonicalize_name(requirement.name)))
            continue
        if constraint:
            constraints.append(requirement)
        else:
            wanted.append(Wanted(requirement, hashes, where))
    return result + Inputs(tuple(wanted), tuple(constraints), (), tuple(problems))


# ------------------------------------------------------------------ lock files


def _hashes(value: Any) -> frozenset[tuple[str, str]]:
    """``{sha256 = "..."}`` (pylock) or ``"sha256:..."`` (uv, poetry)."""
    if isinstance(value, dict):
        return frozenset((str(k).lower(), str(v).lower()) for k, v in value.items() if isinstance(v, str))
    if isinstance(value, str) and ":" in value:
        algo, digest = value.split(":", 1)
        return frozenset({(algo.lower(), digest.lower())})
    return frozenset()


def _filename(entry: dict[str, Any]) -> str | None:
    name = entry.get("name") or entry.get("file")
    if isinstance(name, str) and name:
        return name
    url = entry.get("url") or entry.get("path")
    if isinstance(url, str) and url:
        return unquote(PurePosixPath(urlsplit(url).path).name) or None
    return None


def _marker(value: Any, where: str, problems: list[Problem]) -> Marker | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return Marker(value)
    except InvalidMarker as e:
        problems.append(Problem(where, f"invalid marker: {e}"))
        return None


def _load_toml(text: str, label: str) -> tuple[dict[str, Any] | None, Inputs]:
    try:
        return tomllib.loads(text), Inputs()
    except tomllib.TOMLDecodeError as e:
        return None, Inputs(problems=(Problem(label, f"not valid TOML: {e}"),))


def _package_files(package: dict[str, Any], entries: list[Any], where: str, marker: Marker | None,
                   problems: list[Problem]) -> list[LockedFile]:
    name = canonicalize_name(str(package.get("name", "")))
    version = str(package.get("version", ""))
    files = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        filename = _filename(entry)
        if filename is None:
            problems.append(Problem(where, "a file without a name or URL", name))
            continue
        files.append(LockedFile(name, version, filename, _hashes(entry.get("hashes", entry.get("hash"))),
                                marker, where))
    return files


def parse_pylock(text: str, *, label: str = "pylock.toml") -> Inputs:
    """PEP 751: ``[[packages]]`` with ``wheels`` and/or ``sdist`` (name or url,
    hashes); ``vcs``, ``directory`` and ``archive`` sources are problems."""
    data, failed = _load_toml(text, label)
    if data is None:
        return failed
    locked: list[LockedFile] = []
    problems: list[Problem] = []
    for i, package in enumerate(data.get("packages", []), 1):
        if not isinstance(package, dict) or "name" not in package:
            continue
        where = f"{label}: packages[{i}] {package['name']}"
        marker = _marker(package.get("marker"), where, problems)
        entries = list(package.get("wheels", []) or [])
        if isinstance(package.get("sdist"), dict):
            entries.append(package["sdist"])
        if not entries:
            kind = next((k for k in ("vcs", "directory", "archive") if k in package), "no files")
            problems.append(Problem(where, f"{kind}: only index files (wheels, sdist) are fetched",
                                    canonicalize_name(package["name"])))
            continue
        if "version" not in package:
            package = {**package, "version": ""}
        locked += _package_files(package, entries, where, marker, problems)
    return Inputs(locked=tuple(locked), problems=tuple(problems))


def parse_uv_lock(text: str, *, label: str = "uv.lock") -> Inputs:
    """uv's lock: ``[[package]]`` with ``sdist`` and ``wheels`` (url, hash).
    The project itself (an editable, virtual or directory source) is skipped;
    git and URL sources are problems."""
    data, failed = _load_toml(text, label)
    if data is None:
        return failed
    locked: list[LockedFile] = []
    problems: list[Problem] = []
    for package in data.get("package", []):
        if not isinstance(package, dict) or "name" not in package:
            continue
        where = f"{label}: {package['name']}"
        source = package.get("source", {})
        if isinstance(source, dict) and any(k in source for k in ("editable", "virtual", "directory", "path")):
            continue  # the locked project itself, or a local one: nothing on an index
        entries = list(package.get("wheels", []) or [])
        if isinstance(package.get("sdist"), dict):
            entries.append(package["sdist"])
        if not entries or (isinstance(source, dict) and ("git" in source or "url" in source)):
            problems.append(Problem(where, "not from an index (git or URL source)",
                                    canonicalize_name(package["name"])))
            continue
        locked += _package_files(package, entries, where, None, problems)
    return Inputs(locked=tuple(locked), problems=tuple(problems))


def parse_poetry_lock(text: str, *, label: str = "poetry.lock") -> Inputs:
    """Poetry's lock: ``[[package]]`` name, version and ``files`` (file, hash);
    lock format 1.x kept the files in ``[metadata.files]`` instead."""
    data, failed = _load_toml(text, label)
    if data is None:
        return failed
    old_files = data.get("metadata", {}).get("files", {}) if isinstance(data.get("metadata"), dict) else {}
    locked: list[LockedFile] = []
    problems: list[Problem] = []
    for package in data.get("package", []):
        if not isinstance(package, dict) or "name" not in package:
            continue
        where = f"{label}: {package['name']}"
        source = package.get("source")
        if isinstance(source, dict) and source.get("type") in ("git", "directory", "file", "url"):
            problems.append(Problem(where, f"{source.get('type')} source: only index files are fetched",
                                    canonicalize_name(package["name"])))
            continue
        marker = _marker(package.get("markers"), where, problems)
        entries = package.get("files") or old_files.get(package["name"]) or []
        if not entries:
            problems.append(Problem(where, "no files listed", canonicalize_name(package["name"])))
            continue
        locked += _package_files(package, list(entries), where, marker, problems)
    return Inputs(locked=tuple(locked), problems=tuple(problems))


def detect_format(name: str | None, text: str) -> str:
    """The format of a file from its name, else from its first keys."""
    base = (name or "").rsplit("/", 1)[-1].lower()
    if base == "uv.lock":
        return "uv.lock"
    if base == "poetry.lock":
        return "poetry.lock"
    if base.startswith("pylock.") and base.endswith(".toml"):
        return "pylock"
    if base.endswith(".txt") or base.endswith(".in"):
        return "requirements"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "requirements"
    if "lock-version" in data and "packages" in data:
        return "pylock"
    if isinstance(data.get("package"), list):
        return "uv.lock" if isinstance(data.get("version"), int) else "poetry.lock"
    return "requirements"


_PARSERS: dict[str, Callable[..., Inputs]] = {"pylock": parse_pylock, "uv.lock": parse_uv_lock,
                                              "poetry.lock": parse_poetry_lock}


def parse_any(text: str, *, label: str, fmt: str | None = None,
              read: Callable[[str, str], tuple[str, str]] | None = None) -> Inputs:
    """Parse ``text`` as ``fmt`` (detected when None)."""
    fmt = fmt or detect_format(label, text)
    if fmt == "requirements":
        return parse_requirements(text, label=label, read=read)
    return _PARSERS[fmt](text, label=label)
