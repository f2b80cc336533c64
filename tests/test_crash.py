"""Crash safety: the real daemon killed with SIGKILL, then restarted on the same data.

What must hold after any crash (checked by :func:`assert_clean`):

* no partial file anywhere under the data directory: the download spool and
  the storage's ``.tmp`` are empty once the server is back, and every blob's
  bytes hash to its name;
* the index agrees with the storage (``pypicache.services.verify``): every file marked
  stored has its blob, with the right sha256;
* an upload is wholly present (index row, file blob, METADATA blob) or wholly
  absent (and may then simply be sent again); one answered 200 is present.

The daemon is a ``twistd -n pypicache`` subprocess (tests/test_daemon.py's
helpers); the fake upstream and the clients run on this test's reactor.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
import treq
from twisted.internet import defer, endpoints, protocol

from pypicache.services import verify as verifying
from pypicache.services.accounts import AccountStore
from pypicache.providers.storage import filesystem
from pypicache.testing import make_context, stop_context
from tests.builders import build_wheel, wheel_metadata
from tests.daemon import free_port, sleep, twistd_argv, write_config

TIMEOUT = 15.0
PROJECT = "acme-crash"


# ------------------------------------------------------------------ helpers


class Server:
    """Start, kill and restart one daemon configuration on one data directory."""

    def __init__(self, tmp_path: Path, spawn: Any, upstream_url: str) -> None:
        self.tmp_path = tmp_path
        self.data = tmp_path / "data"
        self._spawn = spawn
        self.config = write_config(tmp_path / "pypicache.toml", f"""
[server]
data_dir = "data"
access_log = false
[http]
connect_timeout = 2
read_timeout = 5
page_timeout = 3
[upstream]
url = "{upstream_url}"
""")
        self.daemon: Any = None

    async def start(self) -> Any:
        port = free_port()
        self.daemon = self._spawn(twistd_argv(["pypicache", "--config", str(self.config),
                                               "--listen", f"tcp:{port}:interface=127.0.0.1"]), port=port)
        code, _, _ = await self.daemon.wait_until_answers("/")
        assert code == 200, self.daemon.output
        return self.daemon

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        self.daemon.transport.signalProcess("KILL")
        status = await self.daemon.exited(10.0)
        assert status == -9, status

    async def restart(self) -> Any:
        return await self.start()

    @property
    def root(self) -> str:
        return self.daemon.root


def partial_files(data: Path) -> list[str]:
    """Everything under ``data`` that is not a complete, correct file.

    Spool and ``.tmp`` entries, quarantined blobs, blobs whose sha256 is not
    their name, and anything unexpected (a ``.part`` file anywhere).
    """
    bad = []
    files = data / "files"
    for directory, _, names in os.walk(data):
        for name in names:
            path = Path(directory, name)
            rel = path.relative_to(data)
            if rel.parts[0] in ("spool",) or rel.parts[:2] in (("files", ".tmp"), ("files", ".quarantine")):
                bad.append(f"leftover: {rel}")
            elif rel.parts[0] == "files":
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if len(rel.parts) != 4 or digest != name or rel.parts[1:3] != (name[:2], name[2:4]):
                    bad.append(f"bad blob: {rel}")
            elif len(rel.parts) != 1 or not name.startswith(("index.sqlite3", "accounts.sqlite3", "audit.log")):
                bad.append(f"unexpected: {rel}")
    return bad


async def consistency(data: Path) -> Any:
    """``pypicache.services.verify`` of the data directory, from this process (the
    daemon may be running: SQLite WAL lets us read meanwhile)."""
    context = make_context(data)
    try:
        storage = filesystem.factory.create({}, attrs.evolve(context, exclusive=False))
        return await ask_index(data, lambda index: verifying.verify(index, storage))
    finally:
        stop_context(context)


async def ask_index(data: Path, question: Any) -> Any:
    """``await question(index)`` with the data directory's SQLite index,
    opened from this process next to the daemon (WAL allows it)."""
    from pypicache import providers

    context = make_context(data)
    try:
        index = providers.create("index", "sqlite", {}, context)
        try:
            return await question(index)
        finally:
            await index.close()
    finally:
        stop_context(context)


async def assert_clean(data: Path) -> Any:
    """The post-crash invariants; returns the verify report."""
    assert partial_files(data) == []
    report = await consistency(data)
    assert report.ok, [str(p) for p in report.problems]
    return report


async def wait_for(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.005) -> None:
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await sleep(interval)


def spool_files(data: Path, pattern: str = "*") -> list[Path]:
    return list((data / "spool").glob(pattern)) if (data / "spool").is_dir() else []


# ---------------------------------------------------------------- downloads


@pytest_twisted.ensureDeferred
async def test_sigkill_during_cached_download(tmp_path, fake_upstream, spawn):
    big = build_wheel(tmp_path / "big", "bigproj", "1.0", extra_bytes=6_000_000)
    fake_upstream.add(big)
    fake_upstream.fail("slow", f"/files/{big.name}", rate=2_000_000)
    server = Server(tmp_path, spawn, fake_upstream.url)
    await server.start()

    client = treq.get(server.root + f"/files/bigproj/{big.name}", persistent=False, timeout=TIMEOUT)
    client.addCallback(treq.content)
    client.addErrback(lambda failure: failure.value)  # the connection dies with the daemon
    await wait_for(lambda: any(p.stat().st_size > 1_000_000 for p in spool_files(server.data, "*.part")))
    await server.kill()
    assert any(0 < p.stat().st_size < big.stat().st_size for p in spool_files(server.data)), \
        "the kill must land mid-transfer"
    received = await client
    assert not isinstance(received, bytes) or len(received) < big.stat().st_size

    await server.restart()
    report = await assert_clean(server.data)
    assert report.files == 0

    fake_upstream.heal()
    code, body, _ = await server.daemon.get(f"/files/bigproj/{big.name}", timeout=TIMEOUT)
    assert code == 200 and body == big.read_bytes()
    await wait_for(lambda: "cached bigproj/" in server.daemon.output)  # stored and indexed
    await server.daemon.stop()
    report = await assert_clean(server.data)
    assert report.files == 1 and report.bytes == big.stat().st_size


# ------------------------------------------------------------------ uploads


def big_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_token(data: Path) -> str:
    data.mkdir(parents=True, exist_ok=True)
    store = AccountStore(data / "accounts.sqlite3")
    try:
        store.add_user("alice", "correct horse battery")
        _, token = store.create_token("alice", description="crash tests")
    finally:
        store.close()
    return token


def upload_body(wheel: Path) -> tuple[bytes, bytes]:
    """A twine-like multipart upload of ``wheel``: (body, content type)."""
    boundary = uuid.uuid4().hex.encode()
    name, version = wheel.name.split("-")[:2]
    fields = {":action": "file_upload", "protocol_version": "1", "name": name, "version": version,
              "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1",
              "sha256_digest": big_sha(wheel)}
    parts = []
    for key, value in fields.items():
        parts.append(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + key.encode()
                     + b"\"\r\n\r\n" + value.encode() + b"\r\n")
    parts.append(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"content\"; filename=\""
                 + wheel.name.encode() + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 + wheel.read_bytes() + b"\r\n")
    parts.append(b"--" + boundary + b"--\r\n")
    return b"".join(parts), b"multipart/form-data; boundary=" + boundary


class RawClient(protocol.Protocol):
    """Writes what it is told, when it is told; keeps the answer."""

    def __init__(self) -> None:
        self.answer = bytearray()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


async def raw_post(port: int, token: str, body: bytes, ctype: bytes, send: int | None = None) -> RawClient:
    """POST ``body`` (only its first ``send`` bytes) to /legacy/ on a raw connection."""
    import base64

    from twisted.internet import reactor

    client = RawClient()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    await endpoints.connectProtocol(endpoint, client)
    auth = base64.b64encode(b"__token__:" + token.encode())
    client.transport.write(b"POST /legacy/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + auth
                           + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
    client.transport.write(body if send is None else body[:send])
    return client


async def upload_state(server: Server, wheel: Path) -> str:
    """'present' (index + file blob + METADATA blob, right bytes) or 'absent';
    anything in between fails the test."""
    record = await ask_index(server.data, lambda index: index.get_project(PROJECT))
    entry = record.file(wheel.name) if record is not None else None
    if entry is None:
        # Absent from the index: then the filename is not used up either.
        assert await ask_index(server.data, lambda index: index.used_filename(wheel.name)) is None
        return "absent"
    assert entry.stored and entry.metadata_stored, entry
    files = server.data / "files"
    blob = files / entry.sha256[:2] / entry.sha256[2:4] / entry.sha256
    assert blob.read_bytes() == wheel.read_bytes()
    meta = entry.metadata_sha256
    assert (files / meta[:2] / meta[2:4] / meta).read_bytes() == wheel_metadata(wheel)
    return "present"


async def assert_served(server: Server, wheel: Path) -> None:
    code, body, _ = await server.daemon.get(f"/files/{PROJECT}/{wheel.name}", timeout=TIMEOUT)
    assert code == 200 and body == wheel.read_bytes()
    code, body, _ = await server.daemon.get(f"/files/{PROJECT}/{wheel.name}.metadata", timeout=TIMEOUT)
    assert code == 200 and body == wheel_metadata(wheel)


@pytest_twisted.ensureDeferred
async def test_sigkill_during_upload_body(tmp_path, fake_upstream, spawn):
    """Killed while the body is still arriving: nothing of it survives, and
    the same upload then succeeds."""
    server = Server(tmp_path, spawn, fake_upstream.url)
    token = make_token(server.data)
    wheel = build_wheel(tmp_path / "dist", PROJECT, "1.0", extra_bytes=2_000_000)
    body, ctype = upload_body(wheel)
    await server.start()
    client = await raw_post(server.daemon.port, token, body, ctype, send=len(body) // 2)
    await sleep(0.3)
    await server.kill()
    await client.lost
    await server.restart()
    await assert_clean(server.data)
    assert await upload_state(server, wheel) == "absent"

    client = await raw_post(server.daemon.port, token, body, ctype)
    await client.lost
    assert client.answer.startswith(b"HTTP/1.1 200"), bytes(client.answer[:300])
    assert await upload_state(server, wheel) == "present"
    await assert_served(server, wheel)


@pytest_twisted.ensureDeferred
async def test_sigkill_while_upload_is_stored(tmp_path, fake_upstream, spawn):
    """Killed after the whole body arrived, while it is parsed, spooled and
    stored: all or nothing, whichever moment the kill lands on."""
    server = Server(tmp_path, spawn, fake_upstream.url)
    token = make_token(server.data)
    await server.start()
    def blobs() -> set[Path]:
        return set((server.data / "files").glob("??/??/*"))

    moments = {
        "spooling": lambda before: bool(spool_files(server.data, "upload-*")),
        "storing": lambda before: bool(blobs() - before),
    }
    for version, (moment, reached) in zip(("1.0", "2.0"), moments.items()):
        wheel = build_wheel(tmp_path / "dist", PROJECT, version, extra_bytes=20_000_000)
        body, ctype = upload_body(wheel)
        before = blobs()
        client = await raw_post(server.daemon.port, token, body, ctype)
        await wait_for(lambda: reached(before) or bool(client.answer) or client.lost.called, interval=0.002)
        hit = reached(before) and not client.answer
        await server.kill()
        await client.lost
        await server.restart()
        await assert_clean(server.data)
        state = await upload_state(server, wheel)
        where = f"killed while {moment} ({'hit' if hit else 'missed'}), upload {state}"
        # Either way the retry is answered 200 and leaves it present.
        client = await raw_post(server.daemon.port, token, body, ctype)
        await client.lost
        assert client.answer.startswith(b"HTTP/1.1 200"), (where, bytes(client.answer[:300]))
        assert await upload_state(server, wheel) == "present"
        await assert_served(server, wheel)


@pytest_twisted.ensureDeferred
async def test_upload_answered_200_survives_sigkill(tmp_path, fake_upstream, spawn):
    server = Server(tmp_path, spawn, fake_upstream.url)
    token = make_token(server.data)
    wheel = build_wheel(tmp_path / "dist", PROJECT, "1.0", extra_bytes=1_000_000)
    body, ctype = upload_body(wheel)
    await server.start()
    client = await raw_post(server.daemon.port, token, body, ctype)
    await wait_for(lambda: b"\r\n\r\n" in client.answer or client.lost.called)
    await server.kill()  # at once: nothing after the answer may be needed
    assert client.answer.startswith(b"HTTP/1.1 200"), bytes(client.answer[:300])
    await server.restart()
    await assert_clean(server.data)
    assert await upload_state(server, wheel) == "present"
    await assert_served(server, wheel)
