"""Making new files durable: directory fsync and whole-or-nothing SQLite files.

Creating a SQLite database the ordinary way (connect, switch to WAL, create
the schema with ``synchronous = FULL``) costs eight or nine fsyncs.  On a disk
busy writing back someone else's data (a CI host unpacking wheels) each one
can wait for that writeback, and both of the server's databases are created
on its first start, on the way to its first answer: interleaved starts with
a writer in the background took 0.85 s (median of 10) against 0.63 s with
the accounts database out of the way (docs/performance.md).

:func:`create_sqlite` builds a new database under a temporary name with
syncing off, makes it durable with one fsync, and links it into place with a
second (the directory's).  A crash leaves either no database (the next start
builds it again) or a complete one, never a half-created file; an existing
database is never touched.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Callable


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (and platforms) cannot fsync a directory; the
        # rename is still atomic there, just not guaranteed durable.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def create_sqlite(path: Path, build: Callable[[sqlite3.Connection], None], *, mode: int = 0o600) -> bool:
    """Create the WAL-mode database ``path`` with ``build`` unless it exists.

    ``build`` gets an autocommit connection to the new file and creates the
    schema.  Returns True if this call created the database; False if one
    was there already, including one another process created meanwhile
    (that one is kept, ours discarded).  ``mode`` is the file's permission
    (SQLite gives its -wal and -shm files the same); the default keeps the
    database to the server's user, and the umask can only narrow it.
    """
    if path.exists():
        return False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    for leftover in (temporary, *(Path(f"{temporary}{s}") for s in ("-wal", "-shm", "-journal"))):
        _unlink_quietly(leftover)  # from a crash of a process that had our pid
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        conn = sqlite3.connect(str(temporary), isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")  # durability comes from the fsync below
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                build(conn)
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:
                    raise sqlite3.OperationalError(f"could not checkpoint the new database {temporary}")
            else:  # a file system without shared memory: SQLite's own warning follows at open
                build(conn)
        finally:
            conn.close()
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # unlike rename, never replaces a database created meanwhile
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.rename(temporary, path)
        fsync_dir(path.parent)
        return True
    finally:
        for leftover in (temporary, *(Path(f"{temporary}{s}") for s in ("-wal", "-shm", "-journal"))):
            _unlink_quietly(leftover)
