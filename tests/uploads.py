"""Upload bodies and requests, built by hand (a plain helper module).

A test can send what no well-behaved client would: NUL in a filename, a
member named ``../evil.py``, a thousand fields.  Shared by the upload, scrub,
file-mode, dependency-confusion and upstream-page tests; the ``start``
fixture (conftest.py) gives a server with users alice and bob.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import attrs
import treq
from argon2 import PasswordHasher
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from pypicache.services.accounts import AccountStore
from tests.builders import build_wheel
from tests.server import RunningServer

PASSWORD = "correct horse battery"
#: argon2 at its cheapest: the tests check the rules, not the hash's cost.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8)
BOUNDARY = "pypicache-test-7f3a9c"
NAME, VERSION = "acme-tools", "1.0"
WHEEL_NAME = "acme_tools-1.0-py3-none-any.whl"
SDIST_NAME = "acme_tools-1.0.tar.gz"
TIMEOUT = 30


# ------------------------------------------------------------ the server


def cheap_accounts(server: RunningServer) -> AccountStore:
    """Swap the server's account store for one with a cheap hasher."""
    accounts = server.app.accounts
    old = accounts.store
    old.close()
    accounts.store = AccountStore(old.path, hasher=CHEAP_HASHER)
    return accounts.store


# ------------------------------------------------------------ bodies


@attrs.frozen
class Form:
    """A multipart body to send: text fields and the raw ``content`` part."""

    fields: tuple[tuple[str, str], ...]
    #: The Content-Disposition parameters naming the file (raw bytes, so a
    #: test can put anything there), or None for no ``content`` part.
    file_param: bytes | None
    data: bytes = b""

    def body(self) -> bytes:
        out = io.BytesIO()
        for key, value in self.fields:
            out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
            out.write(value.encode("utf-8") + b"\r\n")
        if self.file_param is not None:
            out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="content"; '.encode()
                      + self.file_param + b"\r\nContent-Type: application/octet-stream\r\n\r\n")
            out.write(self.data + b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
        return out.getvalue()


def quoted(filename: str) -> bytes:
    return b'filename="' + filename.encode("utf-8") + b'"'


def digests(data: bytes) -> dict[str, str]:
    return {
        "sha256_digest": hashlib.sha256(data).hexdigest(),
        "md5_digest": hashlib.md5(data).hexdigest(),
        "blake2_256_digest": hashlib.blake2b(data, digest_size=32).hexdigest(),
    }


def form(data: bytes, filename: str = WHEEL_NAME, *, file_param: bytes | None = None,
         extra: tuple[tuple[str, str], ...] = (), **overrides: str | None) -> Form:
    """What twine sends for ``data``; ``overrides`` replace fields (None drops one)."""
    fields: dict[str, str | None] = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": NAME,
        "version": VERSION,
        "filetype": "sdist" if filename.endswith((".tar.gz", ".zip")) else "bdist_wheel",
        "pyversion": "source" if filename.endswith((".tar.gz", ".zip")) else "py3",
        "metadata_version": "2.1",
        "summary": "A test package",
        **digests(data),
    }
    fields.update(overrides)
    pairs = tuple((k, v) for k, v in fields.items() if v is not None) + extra
    return Form(pairs, quoted(filename) if file_param is None else file_param, data)


def good_wheel(tmp_path: Path, version: str = VERSION) -> bytes:
    return build_wheel(tmp_path / "good", NAME, version).read_bytes()


def rezip(data: bytes, *, drop: tuple[str, ...] = (), replace: dict[str, bytes] | None = None,
          add: dict[str, bytes] | None = None, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A copy of zip ``data`` with members dropped, replaced or added (by name suffix for drop/replace)."""
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", compression=compress) as dst:
        for info in src.infolist():
            if info.filename.endswith(drop):
                continue
            body = src.read(info)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    body = new
            dst.writestr(info.filename, body)
        for name, body in (add or {}).items():
            dst.writestr(name, body)
    return out.getvalue()


def metadata(name: str = NAME, version: str = VERSION, tail: bytes = b"") -> bytes:
    return (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\n".encode() + tail)


def sdist_without_pkg_info() -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, body in (("pyproject.toml", b"[project]\nname = 'acme-tools'\n"),
                                  ("acme_tools/__init__.py", b"")):
                info = tarfile.TarInfo(f"acme_tools-1.0/{arcname}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return raw.getvalue()


# ------------------------------------------------------------ requests


@attrs.frozen
class Answer:
    code: int
    phrase: str
    body: str
    headers: Any


async def post(server: RunningServer, body: bytes | Form, *, auth: tuple[str, str] | None = ("alice", PASSWORD),
               path: str = "/legacy/", chunked: bool = False, method: str = "POST",
               content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> Answer:
    if isinstance(body, Form):
        body = body.body()
    producer = FileBodyProducer(io.BytesIO(body))
    if chunked:
        producer.length = UNKNOWN_LENGTH  # no Content-Length: Transfer-Encoding: chunked
    kwargs: dict[str, Any] = {"headers": {"content-type": [content_type]}, "persistent": False,
                              "allow_redirects": False,
                              "timeout": TIMEOUT}
    if method == "POST":
        kwargs["data"] = producer
    if auth is not None:
        kwargs["auth"] = auth
    response = await treq.request(method, server.root + path, **kwargs)
    text = (await treq.content(response)).decode("utf-8", "replace")
    return Answer(response.code, response.phrase.decode("latin-1"), text, response.headers)


def blob_files(server: RunningServer) -> list[str]:
    root = server.app.storage.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts)


def leftovers(server: RunningServer) -> list[str]:
    """Temporary files anywhere the server writes bodies: the spool and storage's .tmp."""
    dirs = (server.app.downloader.spool_dir, server.app.storage.root / ".tmp")
    return sorted(str(p) for d in dirs if d.exists() for p in d.iterdir())


async def state(server: RunningServer, name: str = NAME, filename: str = WHEEL_NAME) -> dict[str, Any]:
    app = server.app
    return {
        "blobs": blob_files(server),
        "leftovers": leftovers(server),
        "project": await app.index.get_project(name),
        "projects": await app.index.list_projects(),
        "used": await app.index.used_filename(filename),
        "maintainers": app.accounts.store.maintainers(name),
    }
