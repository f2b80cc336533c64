"""Blobs on disk for storage-fault tests: damage them, wait for them.

Shared by tests/test_storage_faults.py, test_scrub.py and test_file_modes.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer

TIMEOUT = 10.0
WHEEL_1 = "tinyproj-1.0-py3-none-any.whl"
WHEEL_2 = "tinyproj-2.0-py3-none-any.whl"
SDIST_1 = "tinyproj-1.0.tar.gz"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def get(url: str, headers: dict[str, list[str]] | None = None) -> tuple[int, bytes | Exception, Any]:
    """GET on a fresh connection: (status, body or the exception reading it, headers)."""
    from twisted.internet import reactor

    response = await treq.get(url, headers=headers, persistent=False, timeout=TIMEOUT)
    try:
        body: bytes | Exception = await treq.content(response).addTimeout(TIMEOUT, reactor)
    except Exception as e:  # aborted mid-body
        body = e
    return response.code, body, response.headers


async def stored(server: Any, filename: str, project: str = "tinyproj") -> bool:
    record = await server.app.index.get_project(project)
    found = record.file(filename) if record is not None else None
    return bool(found and found.stored)


async def wait_stored(server: Any, filename: str, project: str = "tinyproj") -> None:
    """Storing runs after the last byte went out: give it a moment."""
    for _ in range(100):
        if await stored(server, filename, project):
            return
        await deferred_sleep(0.02)
    raise AssertionError(f"{project}/{filename} was not stored")


def rot(path: Path, offset: int = 0) -> None:
    """Flip one byte in place, keeping size and mtime: silent decay."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def deferred_sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def rot_in_place(path: Path, offset: int = 0) -> None:
    """Flip one byte through the same inode with pwrite, then put size and
    mtime back: everything a reader can set looks unchanged.  Only the
    inode's change time (which no writer can set back) moves."""
    st = os.stat(path)
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), offset)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


async def later_ctime_tick() -> None:
    """The kernel stamps ctime from a coarse clock: let one tick pass so a
    rewrite right after a store gets a different change time."""
    await deferred_sleep(0.05)
