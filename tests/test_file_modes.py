"""Everything the server creates under its data directory is private.

Private package bytes, their METADATA, the index (which lists private
projects) and the accounts database are for the server's user only: files
are created 0600 and directories 0700, whatever the umask (a stricter umask
still applies: modes are never forced wider afterwards).  Checked after a
real upload, a cached download with its METADATA and a quarantined blob,
while the server runs (SQLite's -wal and -shm files exist) and after it
stopped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest_twisted

from tests.server import make_config, start_server
from tests.blobs import WHEEL_1, get, later_ctime_tick, rot_in_place, sha, wait_stored
from tests.uploads import NAME, PASSWORD, WHEEL_NAME, cheap_accounts, form, good_wheel, post


def too_open(root: Path) -> list[str]:
    """Every file or directory under ``root`` (itself included) that its
    group or others may access, with its mode."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for path in [directory, *(os.path.join(directory, f) for f in files)]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode & 0o077:
                found.append(f"{os.path.relpath(path, root)} {oct(mode)}")
    return found


@pytest_twisted.ensureDeferred
async def test_data_directory_is_private_after_upload_and_download(tmp_path, fake_upstream):
    previous = os.umask(0o022)  # the usual, permissive default
    try:
        data_dir = tmp_path / "data"
        srv = await start_server(make_config(tmp_path, fake_upstream.url))
        try:
            cheap_accounts(srv).add_user("alice", PASSWORD)
            wheel = good_wheel(tmp_path)
            answer = await post(srv, form(wheel))
            assert answer.code == 200, answer.body
            code, body, _ = await get(srv.root + f"/files/{NAME}/{WHEEL_NAME}.metadata")
            assert code == 200
            good = fake_upstream.files[WHEEL_1].read_bytes()
            code, body, _ = await get(srv.root + f"/files/tinyproj/{WHEEL_1}")
            assert code == 200 and body == good
            await wait_stored(srv, WHEEL_1)
            code, body, _ = await get(srv.root + f"/files/tinyproj/{WHEEL_1}.metadata")
            assert code == 200
            await later_ctime_tick()
            rot_in_place(srv.app.storage.path_of(sha(good)), 7)
            code, _, _ = await get(srv.root + f"/local/files/tinyproj/{WHEEL_1}")
            assert code == 404  # found corrupt: moved to the quarantine
            names = {p.name for p in data_dir.rglob("*")}
            assert {".quarantine", ".tmp", "spool", "index.sqlite3-wal", "accounts.sqlite3-wal"} <= names
            assert too_open(data_dir) == []
        finally:
            await srv.stop()
        assert too_open(data_dir) == []
    finally:
        os.umask(previous)
