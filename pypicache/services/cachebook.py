"""The eviction bookkeeping file, ``<data_dir>/cache.sqlite3``.

Why a file of its own instead of columns in the index: the index schema
belongs to the index providers, and the LRU order needs an index on last
access that the catalog has no use for.  What it holds:

* ``cached``: one row per cached upstream file (project, filename, blob,
  size, METADATA blob, last access), indexed on last access, so picking the
  next victims reads only them: eviction costs O(files evicted);
* ``held``: blobs of private files (never deleted, even if an upstream file
  has the same bytes);
* ``pins``: (pin name, project, filename, sha256) from ``pypicache pin``;
* ``counters``: bytes freed by ``pypicache gc``, for the server to subtract.

Rows deleted on eviction leave pages the next rows reuse, and
``auto_vacuum = INCREMENTAL`` hands the rest back, so the file does not grow
from evicting.  WAL and a busy timeout: the server and the admin command use
it at once.  Every method blocks: call it in a thread.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs

from pypicache.durable import create_sqlite

__all__ = ["BOOK_FILE", "Book", "Row"]

BOOK_FILE = "cache.sqlite3"
#: Victims read from the bookkeeping file per query.
BATCH = 64

#: The next victims: a search of the last-access index from a cursor, with
#: the pins' indexes for the two exclusions (tests/test_eviction.py checks
#: the plan), so each query costs what it returns.
VICTIMS_SQL = (
    "SELECT project, filename, sha256, size, metadata_sha256, last_access FROM cached "
    "WHERE (last_access, project, filename) > (?, ?, ?) "
    "AND NOT EXISTS (SELECT 1 FROM pins WHERE pins.project = cached.project AND pins.filename = cached.filename) "
    "AND NOT EXISTS (SELECT 1 FROM pins WHERE pins.sha256 = cached.sha256) "
    "ORDER BY last_access, project, filename LIMIT ?")
TOUCH_SQL = "UPDATE cached SET last_access = max(last_access, ?2) WHERE sha256 = ?1"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cached (project TEXT NOT NULL, filename TEXT NOT NULL, sha256 TEXT NOT NULL, "
    "size INTEGER NOT NULL, metadata_sha256 TEXT, last_access REAL NOT NULL, "
    "PRIMARY KEY (project, filename)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS cached_lru ON cached (last_access, project, filename)",
    "CREATE INDEX IF NOT EXISTS cached_sha ON cached (sha256)",
    "CREATE INDEX IF NOT EXISTS cached_metadata ON cached (metadata_sha256)",
    "CREATE TABLE IF NOT EXISTS held (sha256 TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS pins (name TEXT NOT NULL, project TEXT NOT NULL, filename TEXT NOT NULL, "
    "sha256 TEXT, PRIMARY KEY (name, project, filename)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS pins_file ON pins (project, filename)",
    "CREATE INDEX IF NOT EXISTS pins_sha ON pins (sha256)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)


@attrs.frozen
class Row:
    """One cached file as the bookkeeping file knows it."""

    project: str
    filename: str
    sha256: str
    size: int
    metadata_sha256: str | None
    last_access: float


class Book:
    """The bookkeeping file.  Every method blocks: call it in a thread.

    One connection, guarded by a lock, shared by the pool's threads.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is None:  # see in_memory()
            self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA temp_store = MEMORY")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self.writes = 0
            return

        def build(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # pages go back to the file system...
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("VACUUM")  # ...once VACUUM applies it (the WAL switch created the file already)

        create_sqlite(self.path, build)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # bookkeeping: losing the last flush is harmless
        self._conn.execute("PRAGMA journal_size_limit = 1048576")
        #: Write transactions so far (the tests count them: none per request).
        self.writes = 0

    @classmethod
    def in_memory(cls) -> Book:
        """A book that writes nothing to disk: what ``pypicache gc`` plans
        with when no server with a limit has written the file yet (the disk
        may be full, and the plan comes from the index anyway)."""
        return cls(None)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.writes += 1
            return result

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # ------------------------------------------------------------ the server
    def apply(self, *, stored: Iterable[tuple[str, str, str, int, str | None, float]] = (),
              touched: Iterable[tuple[str, float]] = (), held: Iterable[str] = (),
              metadata: Iterable[tuple[str, str, str]] = ()) -> int:
        """Record one batch in one transaction; returns (and resets) the
        bytes freed by other processes since the last call."""
        def work(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO cached (project, filename, sha256, size, metadata_sha256, last_access) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project, filename) DO UPDATE SET "
                "sha256 = excluded.sha256, size = excluded.size, last_access = excluded.last_access, "
                "metadata_sha256 = coalesce(excluded.metadata_sha256, metadata_sha256)", list(stored))
            conn.executemany(TOUCH_SQL, list(touched))
            conn.executemany("INSERT OR IGNORE INTO held (sha256) VALUES (?)", [(s,) for s in held])
            conn.executemany("UPDATE cached SET metadata_sha256 = ?3 WHERE project = ?1 AND filename = ?2",
                             list(metadata))
            row = conn.execute("SELECT value FROM counters WHERE name = 'freed'").fetchone()
            if row is not None and row[0]:
                conn.execute("UPDATE counters SET value = 0 WHERE name = 'freed'")
            return row[0] if row is not None else 0

        return self._write(work)

    def seed(self, files: Iterable[tuple[str, str, str, int, str | None, float]], held: Iterable[str],
             last_used: Callable[[str], float | None] | None = None) -> int:
        """Rows for files stored before (or by another process than) the one
        that keeps this book, with ``last_access`` the best guess there is;
        existing rows are kept; ``last_used(sha256)``, when given, is a better
        guess for the new rows.  Reads first and writes only what is new,
        so a book that knows everything is not written at all (gc on a full
        disk, the server's hourly recount).  Returns the rows added."""
        files, held = list(files), list(held)
        with self._lock:
            conn = self._conn
            new_files = [f for f in files if conn.execute(
                "SELECT 1 FROM cached WHERE project = ? AND filename = ?", (f[0], f[1])).fetchone() is None]
            new_held = [s for s in set(held) if conn.execute(
                "SELECT 1 FROM held WHERE sha256 = ?", (s,)).fetchone() is None]
        if not new_files and not new_held:
            return 0
        if last_used is not None:
            new_files = [(*f[:5], last_used(f[2]) or f[5]) for f in new_files]

        def work(conn: sqlite3.Connection) -> int:
            conn.executemany("INSERT OR IGNORE INTO cached (project, filename, sha256, size, metadata_sha256, "
                             "last_access) VALUES (?, ?, ?, ?, ?, ?)", new_files)
            conn.executemany("INSERT OR IGNORE INTO held (sha256) VALUES (?)", [(s,) for s in new_held])
            return len(new_files)

        return self._write(work)

    def counted(self, blobs: Iterable[tuple[str, int]]) -> int:
        """The bytes of ``blobs`` (sha256, size) that ``max_size`` bounds: a
        cached file's or its METADATA's, and no private file's."""
        total = 0
        with self._lock:
            conn = self._conn
            for sha, size in blobs:
                if (conn.execute("SELECT 1 FROM held WHERE sha256 = ?", (sha,)).fetchone() is None
                        and (conn.execute("SELECT 1 FROM cached WHERE sha256 = ? LIMIT 1", (sha,)).fetchone()
                             or conn.execute("SELECT 1 FROM cached WHERE metadata_sha256 = ? LIMIT 1",
                                             (sha,)).fetchone())):
                    total += size
        return total

    def all_held(self) -> set[str]:
        return {r[0] for r in self._read("SELECT sha256 FROM held")}

    def reset_freed(self) -> None:
        self._write(lambda conn: conn.execute("DELETE FROM counters WHERE name = 'freed'"))

    def add_freed(self, n: int) -> None:
        self._write(lambda conn: conn.execute(
            "INSERT INTO counters (name, value) VALUES ('freed', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (n,)))

    # ------------------------------------------------------------- eviction
    def victims(self, after: tuple[float, str, str] | None, limit: int = BATCH) -> list[Row]:
        """The next ``limit`` least recently used unpinned rows after ``after``."""
        last, project, filename = after if after is not None else (-1.0, "", "")
        rows = self._read(VICTIMS_SQL, (last, project, filename, limit))
        return [Row(*r) for r in rows]

    def sharing(self, sha256: str) -> list[Row]:
        """Every cached row whose bytes are the blob ``sha256``."""
        rows = self._read("SELECT project, filename, sha256, size, metadata_sha256, last_access FROM cached "
                          "WHERE sha256 = ?", (sha256,))
        return [Row(*r) for r in rows]

    def held(self, sha256: str) -> bool:
        return bool(self._read("SELECT 1 FROM held WHERE sha256 = ?", (sha256,)))

    def pinned(self, keys: Iterable[tuple[str, str]]) -> bool:
        return any(self._read("SELECT 1 FROM pins WHERE project = ? AND filename = ? LIMIT 1", key)
                   for key in keys)

    def metadata_users(self, sha256: str) -> list[tuple[str, str]]:
        return [tuple(r) for r in self._read(
            "SELECT project, filename FROM cached WHERE metadata_sha256 = ?", (sha256,))]

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        keys = list(keys)
        if keys:
            self._write(lambda conn: conn.executemany(
                "DELETE FROM cached WHERE project = ? AND filename = ?", keys))

    def touch(self, keys: Iterable[tuple[str, str]], now: float) -> None:
        keys = list(keys)
        if keys:
            self._write(lambda conn: conn.executemany(
                "UPDATE cached SET last_access = ? WHERE project = ? AND filename = ?",
                [(now, p, f) for p, f in keys]))

    def compact(self) -> None:
        """Hand free pages back and empty the write-ahead log: evicting
        never leaves the file bigger than its rows need."""
        with self._lock:
            self._conn.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def count(self) -> int:
        return self._read("SELECT count(*) FROM cached")[0][0]

    # ----------------------------------------------------------------- pins
    def pin(self, name: str, entries: Iterable[tuple[str, str, str | None]]) -> int:
        """Replace the pin ``name`` with ``entries`` (project, filename, sha256)."""
        entries = sorted(set(entries))

        def work(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM pins WHERE name = ?", (name,))
            conn.executemany("INSERT INTO pins (name, project, filename, sha256) VALUES (?, ?, ?, ?)",
                             [(name, *e) for e in entries])
            return len(entries)

        return self._write(work)

    def unpin(self, name: str) -> int:
        return self._write(lambda conn: conn.execute("DELETE FROM pins WHERE name = ?", (name,)).rowcount)

    def pins(self) -> list[tuple[str, int]]:
        return [tuple(r) for r in self._read("SELECT name, count(*) FROM pins GROUP BY name ORDER BY name")]
