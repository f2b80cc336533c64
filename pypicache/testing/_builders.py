"""Build real, tiny, installable distributions for tests.

Public through :mod:`pypicache.testing`: a provider's tests need real files to
store, index and serve (the fake upstream publishes what these build).

Tests need wheels and sdists that real pip and uv accept (so integration tests
prove the server end to end) and whose bytes are reproducible (so a test can
compute a file's sha256 before the server sees it, and two builds with the
same arguments are the same file).  Everything here is deterministic: fixed
zip/tar timestamps, fixed permissions, padding bytes from a seeded generator.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

__all__ = ["build_wheel", "build_sdist", "wheel_metadata", "sha256_file", "provenance_object"]

#: Zip timestamps must be >= 1980; a fixed one makes the archive reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_PAD_CHUNK = 1 << 20


def _escape_wheel_name(name: str) -> str:
    """Escape a name for a wheel filename: runs of ``-_.`` become ``_``.

    Case is kept on purpose: the wheel spec says producers *should* lower-case
    but consumers *must* accept upper case, and PyPI is full of such files
    (``Django-4.2-py3-none-any.whl``).  Pass a lower-case name to get a fully
    normalised filename; pass ``"Yanked_Proj"`` to test a server's handling
    of unnormalised spellings.
    """
    return re.sub(r"[-_.]+", "_", name)


def _default_module(name: str) -> str:
    return canonicalize_name(name).replace("-", "_")


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _metadata_text(
    name: str,
    version: str,
    *,
    summary: str,
    requires_dist: Iterable[str],
    requires_python: str | None,
) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {summary}",
    ]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _module_source(version: str) -> bytes:
    return f'"""Test package built by pypicache.testing."""\n__version__ = "{version}"\n'.encode()


def _zipinfo(arcname: str, compress: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    info.create_system = 3  # Unix, so the permission bits above are honoured
    return info


def _padding_chunks(seed: str, size: int) -> Iterable[bytes]:
    """Incompressible bytes, the same for the same seed and size.

    Generated in fixed-size chunks so memory stays flat for large files.
    """
    rng = random.Random(seed)
    remaining = size
    while remaining > 0:
        n = min(_PAD_CHUNK, remaining)
        yield rng.randbytes(n)
        remaining -= n


def build_wheel(
    dest: Path,
    name: str,
    version: str,
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    summary: str = "",
    extra_bytes: int = 0,
    module: str | None = None,
) -> Path:
    """Write a pure-python ``py3-none-any`` wheel into ``dest``; return its path.

    Contents: ``<module>/__init__.py`` (with ``__version__``), optionally
    ``<module>/_pad.bin`` holding ``extra_bytes`` incompressible bytes (stored,
    not deflated, so the wheel really is that large), and a ``.dist-info``
    with ``METADATA``, ``WHEEL`` and a ``RECORD`` of correct hashes and sizes.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    version = str(Version(version))
    module = module or _default_module(name)
    escaped = _escape_wheel_name(name)
    dist_info = f"{escaped}-{version}.dist-info"
    path = dest / f"{escaped}-{version}-py3-none-any.whl"

    metadata = _metadata_text(
        name,
        version,
        summary=summary,
        requires_dist=requires_dist,
        requires_python=requires_python,
    )
    wheel_file = (
        b"Wheel-Version: 1.0\n"
        b"Generator: pypicache-tests\n"
        b"Root-Is-Purelib: true\n"
        b"Tag: py3-none-any\n\n"
    )
    record: list[str] = []

    with zipfile.ZipFile(path, "w") as zf:

        def add(arcname: str, data: bytes) -> None:
            zf.writestr(_zipinfo(arcname), data)
            record.append(f"{arcname},{_record_hash(data)},{len(data)}")

        add(f"{module}/__init__.py", _module_source(version))
        if extra_bytes > 0:
            arcname = f"{module}/_pad.bin"
            hasher = hashlib.sha256()
            info = _zipinfo(arcname, zipfile.ZIP_STORED)
            with zf.open(info, "w", force_zip64=extra_bytes > 0x7FFF0000) as out:
                for chunk in _padding_chunks(f"{name}-{version}-{extra_bytes}", extra_bytes):
                    hasher.update(chunk)
                    out.write(chunk)
            digest = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{extra_bytes}")
        add(f"{dist_info}/METADATA", metadata)
        add(f"{dist_info}/WHEEL", wheel_file)
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(_zipinfo(f"{dist_info}/RECORD"), ("\n".join(record) + "\n").encode())
    return path


def build_sdist(
    dest: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
) -> Path:
    """Write ``<normalised_name>-<version>.tar.gz`` into ``dest``; return its path.

    It holds ``PKG-INFO``, a ``pyproject.toml`` (flit_core backend) and the
    module, under the ``<name>-<version>/`` directory the sdist spec asks for.
    Gzip and tar headers carry fixed times and owners, so bytes are stable.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    version = str(Version(version))
    module = _default_module(name)
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    path = dest / f"{stem}.tar.gz"

    pkg_info = _metadata_text(
        name, version, summary="", requires_dist=(), requires_python=requires_python
    )
    rp_line = f'requires-python = "{requires_python}"\n' if requires_python else ""
    pyproject = (
        "[build-system]\n"
        'requires = ["flit_core>=3.2,<4"]\n'
        'build-backend = "flit_core.buildapi"\n\n'
        "[project]\n"
        f'name = "{name}"\n'
        f'version = "{version}"\n'
        'description = ""\n'
        f"{rp_line}\n"
        "[tool.flit.module]\n"
        f'name = "{module}"\n'
    ).encode()
    members = [
        ("PKG-INFO", pkg_info),
        ("pyproject.toml", pyproject),
        (f"{module}/__init__.py", _module_source(version)),
    ]

    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, data in members:
                info = tarfile.TarInfo(f"{stem}/{arcname}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(raw.getvalue())
    return path


def wheel_metadata(path: Path) -> bytes:
    """Return the ``METADATA`` bytes of a wheel: what PEP 658 serves as ``<file>.metadata``."""
    with zipfile.ZipFile(path) as zf:
        for arcname in zf.namelist():
            parts = arcname.split("/")
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                return zf.read(arcname)
    raise ValueError(f"{path} has no .dist-info/METADATA")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large test files stay cheap."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_PAD_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def provenance_object(filename: str, sha256: str, *, publisher: str = "example/project") -> dict:
    """A PEP 740 provenance object for ``filename`` (bytes ``sha256``): one
    bundle, one attestation whose in-toto statement names the file.

    Shaped like PyPI's (``/integrity/.../provenance``); the signature and
    certificate are placeholders, since the cache checks what an attestation
    is about, never its signature.  Serialise with ``json.dumps``.
    """
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": filename, "digest": {"sha256": sha256}}],
        "predicateType": "https://docs.pypi.org/attestations/publish/v1",
        "predicate": None,
    }
    owner, _, repository = publisher.partition("/")
    return {
        "version": 1,
        "attestation_bundles": [{
            "publisher": {"kind": "GitHub", "repository": publisher, "workflow": "release.yml",
                          "environment": None, "claims": None},
            "attestations": [{
                "version": 1,
                "verification_material": {
                    "certificate": base64.b64encode(f"placeholder certificate for {owner}".encode()).decode(),
                    "transparency_entries": [{"logIndex": "1", "kindVersion": {"kind": "dsse", "version": "0.0.1"}}],
                },
                "envelope": {
                    "statement": base64.b64encode(json.dumps(statement).encode()).decode(),
                    "signature": base64.b64encode(b"placeholder signature " + repository.encode()).decode(),
                },
            }],
        }],
    }
