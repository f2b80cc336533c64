"""The SQLite index: the default, persistent catalog.

Every SQLite call runs on one dedicated thread owned by the provider.  A
connection may only be used by the thread that made it, and a single writer
thread means our own writes never contend for the lock ("database is
locked"); WAL mode lets other processes (the admin CLI) read meanwhile.  The
reactor thread only queues work and receives frozen records.

What each operation *means* is defined once, by the pure functions in
:mod:`pypicache.providers.index.rules`; this module loads a record, applies one and
writes the result, each call inside one transaction.  The one piece of
state beyond the projects is the register of used filenames (table
``used_filenames``): a filename, once uploaded, is never accepted again, nor
any other spelling of it (column ``file_key``, see pypicache.model.file_key).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from pypicache.durable import create_sqlite
from pypicache.errors import ConfigError
from pypicache.providers.index.rules import (
    LOCAL,
    check_upload,
    merge_upstream_page,
    refreshed,
    stored_with_blob,
    with_file_stored,
    with_metadata_stored,
    with_origin,
    with_provenance_stored,
    with_upload,
    with_yanked,
    without_file,
    without_stored,
)
from pypicache.interfaces import IIndex, IIndexProvenance, IIndexRepair, IProviderFactory
from pypicache.model import (
    BlobInfo,
    FileExists,
    FileRecord,
    ProjectList,
    ProjectPage,
    ProjectRecord,
    Validators,
    file_key,
)
from pypicache.providers import check_options

log = Logger()

T = TypeVar("T")

#: PRAGMA user_version this code writes.  Bump it and add a step to
#: ``_MIGRATIONS`` to change the schema; older files are upgraded on open.
SCHEMA_VERSION = 5

#: Milliseconds a statement waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 10_000

def _fill_file_keys(conn: sqlite3.Connection) -> None:
    """Give every used filename recorded before version 3 its file_key."""
    rows = conn.execute("SELECT filename FROM used_filenames").fetchall()
    conn.executemany("UPDATE used_filenames SET file_key = ? WHERE filename = ?",
                     [(file_key(filename), filename) for (filename,) in rows])


def _note_known_yanks(conn: sqlite3.Connection) -> None:
    """Files yanked before version 4 were yanked at a time nobody noted: their
    history says "since the beginning" (time 0), so an as-of view shows them
    yanked at any time rather than inventing when it happened."""
    rows = conn.execute("SELECT project, filename, yanked_reason FROM files WHERE yanked").fetchall()
    conn.executemany("UPDATE files SET yank_history = ? WHERE project = ? AND filename = ?",
                     [(_dumps([[0, True, reason]]), project, filename) for project, filename, reason in rows])


#: Step ``n`` takes a database from version ``n - 1`` to ``n``: SQL
#: statements, or functions of the connection for what SQL cannot compute.
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
    1: (
        """CREATE TABLE projects (
            name TEXT PRIMARY KEY,
            origin TEXT NOT NULL,
            etag TEXT,
            last_modified TEXT,
            refreshed_at REAL,
            versions TEXT,
            meta TEXT NOT NULL DEFAULT '{}'
        ) WITHOUT ROWID""",
        """CREATE TABLE files (
            project TEXT NOT NULL,
            filename TEXT NOT NULL,
            position INTEGER NOT NULL,
            url TEXT NOT NULL,
            hashes TEXT NOT NULL,
            requires_python TEXT,
            yanked INTEGER NOT NULL,
            yanked_reason TEXT,
            core_metadata TEXT,
            size INTEGER,
            upload_time TEXT,
            stored INTEGER NOT NULL,
            metadata_stored INTEGER NOT NULL,
            listed INTEGER NOT NULL,
            origin TEXT NOT NULL,
            PRIMARY KEY (project, filename)
        ) WITHOUT ROWID""",
        """CREATE TABLE project_list (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            names TEXT NOT NULL,
            etag TEXT,
            last_modified TEXT,
            refreshed_at REAL
        )""",
    ),
    # Private packages: every filename ever uploaded, kept after the file is
    # deleted (PyPI's rule: a filename names one content forever).
    2: (
        """CREATE TABLE used_filenames (
            filename TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            project TEXT NOT NULL,
            upload_time TEXT
        ) WITHOUT ROWID""",
    ),
    # Filenames compare as the public index compares them: 2.0 is 2.0.0.
    # Not unique: databases from before may hold two spellings already.
    3: (
        "ALTER TABLE used_filenames ADD COLUMN file_key TEXT",
        _fill_file_keys,
        "CREATE INDEX used_filenames_by_key ON used_filenames (file_key)",
    ),
    # The as-of views: when each file was first seen here (NULL: before this
    # version) and the history of its yank state (JSON [[when, yanked, reason], ...]).
    4: (
        "ALTER TABLE files ADD COLUMN first_seen REAL",
        "ALTER TABLE files ADD COLUMN yank_history TEXT",
        _note_known_yanks,
    ),
    # PEP 740: the upstream's provenance URL of each file, and the blob of
    # the provenance object once fetched and checked (NULL: none / not yet).
    5: (
        "ALTER TABLE files ADD COLUMN provenance TEXT",
        "ALTER TABLE files ADD COLUMN provenance_sha256 TEXT",
    ),
}

_FILE_COLUMNS = ("filename, url, hashes, requires_python, yanked, yanked_reason, core_metadata, "
                 "size, upload_time, stored, metadata_stored, listed, origin, first_seen, yank_history, "
                 "provenance, provenance_sha256")
_SELECT_FILES = f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ? ORDER BY position"
_INSERT_FILE = (f"INSERT INTO files (project, position, {_FILE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UPDATE_FILE = ("UPDATE files SET url = ?, hashes = ?, requires_python = ?, yanked = ?, "
                "yanked_reason = ?, core_metadata = ?, size = ?, upload_time = ?, stored = ?, "
                "metadata_stored = ?, listed = ?, origin = ?, first_seen = ?, yank_history = ?, "
                "provenance = ?, provenance_sha256 = ? "
                "WHERE project = ? AND filename = ?")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_scanners = threading.local()


def _loads(text: str) -> Any:
    """Decode JSON that this module wrote.

    Calls the decoder's C scanner directly: ``json.loads`` spends most of its
    time in wrappers (type checks, whitespace regex), and a 600-file project
    has 1200 small documents to decode per read.  The text is always ours, so
    the skipped checks buy nothing.  One scanner per thread: it keeps a memo.
    """
    scan = getattr(_scanners, "scan", None)
    if scan is None:
        scan = _scanners.scan = json.JSONDecoder().scan_once
    return scan(text, 0)[0]


class IndexClosed(RuntimeError):
    """The index was used after :meth:`SQLiteIndex.close`."""


class SchemaTooNew(RuntimeError):
    """The database was written by a newer pypicache: refuse to touch it."""


# ------------------------------------------------------- thread-side helpers


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating or upgrading) the database at ``path``.

    Autocommit mode (``isolation_level=None``): transactions are explicit,
    so none is ever left open by accident between calls.
    """
    # A new index costs 2 fsyncs instead of 9.  0600: it names private
    # projects and files (SQLite gives -wal and -shm the same mode).
    create_sqlite(path, _migrate, mode=0o600)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warn("index: SQLite refused WAL mode for {path} (using {mode})", path=path, mode=mode)
        # FULL: a commit (an upload answered 200, a yank) survives a power
        # cut, not only a crash.  The cost, one fsync per write, is paid on
        # the index's own thread, never the reactor's; writes that only
        # record the upstream cache skip it (see _cache_write).
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    with _transaction(conn):
        # Re-read under the write lock: another process may have migrated.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"index schema version {version} is newer than this pypicache "
                               f"understands ({SCHEMA_VERSION})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                if isinstance(statement, str):
                    conn.execute(statement)
                else:
                    statement(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if version < SCHEMA_VERSION:
        log.info("index: schema upgraded from {old} to {new}", old=version, new=SCHEMA_VERSION)


@contextmanager
def _transaction(conn: sqlite3.Connection, write: bool = True) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-modify-write cannot
    # fail half-way with SQLITE_BUSY on lock upgrade; a read transaction just
    # gives the several SELECTs of one answer a consistent snapshot.
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _file_from_row(row: tuple) -> FileRecord:
    (filename, url, hashes, requires_python, yanked, yanked_reason, core_metadata,
     size, upload_time, stored, metadata_stored, listed, origin, first_seen, yank_history,
     provenance, provenance_sha256) = row
    return FileRecord(
        filename, url, _loads(hashes), requires_python, bool(yanked), yanked_reason,
        None if core_metadata is None else _loads(core_metadata), size, upload_time,
        bool(stored), bool(metadata_stored), bool(listed), origin, first_seen,
        () if yank_history is None else tuple((when, bool(y), why) for when, y, why in _loads(yank_history)),
        provenance, provenance_sha256,
    )


def _file_values(f: FileRecord) -> tuple:
    """Column values of ``f`` in ``_FILE_COLUMNS`` order."""
    return (f.filename, f.url, _dumps(dict(f.hashes)), f.requires_python, int(f.yanked),
            f.yanked_reason,
            None if f.core_metadata is None else _dumps(dict(f.core_metadata)),
            f.size, f.upload_time, int(f.stored), int(f.metadata_stored), int(f.listed), f.origin,
            f.first_seen, _dumps([list(event) for event in f.yank_history]) if f.yank_history else None,
            f.provenance, f.provenance_sha256)


def _load_project(conn: sqlite3.Connection, name: str) -> ProjectRecord | None:
    row = conn.execute("SELECT origin, etag, last_modified, refreshed_at, versions, meta "
                       "FROM projects WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    origin, etag, last_modified, refreshed_at, versions, meta = row
    files = tuple(map(_file_from_row, conn.execute(_SELECT_FILES, (name,))))
    return ProjectRecord(
        name=name,
        files=files,
        validators=Validators(etag, last_modified),
        refreshed_at=refreshed_at,
        origin=origin,
        versions=None if versions is None else tuple(_loads(versions)),
        meta=_loads(meta),
    )


def _write_project_row(conn: sqlite3.Connection, record: ProjectRecord) -> None:
    conn.execute(
        "INSERT INTO projects (name, origin, etag, last_modified, refreshed_at, versions, meta) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET origin = excluded.origin, "
        "etag = excluded.etag, last_modified = excluded.last_modified, "
        "refreshed_at = excluded.refreshed_at, versions = excluded.versions, meta = excluded.meta",
        (record.name, record.origin, record.validators.etag, record.validators.last_modified,
         record.refreshed_at, _json_or_none(None if record.versions is None else list(record.versions)),
         _dumps(dict(record.meta))),
    )


def _update_file(conn: sqlite3.Connection, project: str, f: FileRecord) -> None:
    values = _file_values(f)
    conn.execute(_UPDATE_FILE, values[1:] + (project, f.filename))


def _write_project(conn: sqlite3.Connection, record: ProjectRecord) -> None:
    """Replace the project's row and all its file rows by ``record``."""
    _write_project_row(conn, record)
    conn.execute("DELETE FROM files WHERE project = ?", (record.name,))
    conn.executemany(_INSERT_FILE, [(record.name, position) + _file_values(f)
                                    for position, f in enumerate(record.files)])


def _append_file(conn: sqlite3.Connection, project: str, f: FileRecord) -> None:
    """Insert ``f`` after the project's other files (positions may have
    gaps where files were removed; only their order matters)."""
    (position,) = conn.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM files "
                               "WHERE project = ?", (project,)).fetchone()
    conn.execute(_INSERT_FILE, (project, position) + _file_values(f))


# ----------------------------------------------------------------- queries
# Each runs on the index thread with the connection as first argument.


def _cache_write(query: Callable[..., T]) -> Callable[..., T]:
    """``query`` committed with ``synchronous = NORMAL`` instead of FULL.

    For writes that only record what the upstream said and what is in the
    cache (pages, refresh times, "this file is stored"): losing the last of
    them to a power cut costs a refetch, never wrong data (blobs are
    content-addressed and fsynced before they are marked; a stored blob
    marked unstored is fetched and recognised again).  WAL mode keeps the
    database consistent either way, and the next FULL commit makes these
    durable too.  A cold install writes several of these per package; the
    fsync each was the largest cost of a cold ``uv pip install``.
    """

    def run(conn: sqlite3.Connection, *args: Any) -> T:
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            return query(conn, *args)
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    run.__name__ = query.__name__
    return run


def _q_get_project(conn: sqlite3.Connection, name: str) -> ProjectRecord | None:
    with _transaction(conn, write=False):
        return _load_project(conn, name)


def _q_list_projects(conn: sqlite3.Connection) -> list[str]:
    return [name for (name,) in conn.execute("SELECT name FROM projects ORDER BY name")]


def _q_save_upstream_page(conn: sqlite3.Connection, page: ProjectPage,
                          refreshed_at: float, merge: bool = False) -> ProjectRecord:
    with _transaction(conn):
        old = _load_project(conn, page.name)
        record = merge_upstream_page(old, page, refreshed_at, merge)
        if record is not old:  # the same object: a private name dropped the page
            _write_project(conn, record)
    return record


def _q_mark_refreshed(conn: sqlite3.Connection, name: str, refreshed_at: float,
                      validators: Validators | None) -> ProjectRecord | None:
    with _transaction(conn):
        record = _load_project(conn, name)
        if record is None:
            return None
        record = refreshed(record, refreshed_at, validators)
        conn.execute("UPDATE projects SET refreshed_at = ?, etag = ?, last_modified = ? "
                     "WHERE name = ?", (record.refreshed_at, record.validators.etag,
                                        record.validators.last_modified, name))
    return record


def _load_existing(conn: sqlite3.Connection, name: str) -> ProjectRecord:
    record = _load_project(conn, name)
    if record is None:
        raise KeyError(f"no project {name!r}")
    return record


def _q_mark(conn: sqlite3.Connection, how: Callable, name: str, filename: str,
            *what: Any) -> ProjectRecord:
    """Apply a file mark (``how(record, filename, *what)``) and write the one
    file row it changed."""
    with _transaction(conn):
        record = _load_existing(conn, name)
        new_record, new_file = how(record, filename, *what)
        if new_record is not record:
            _update_file(conn, name, new_file)
    return new_record


def _q_stored_with_blob(conn: sqlite3.Connection, sha256: str) -> list[tuple[str, str, str]]:
    """Files marked stored whose bytes or METADATA are the blob ``sha256``.

    The digests live inside the JSON columns, so SQL only narrows the search
    to the projects whose text mentions it (a scan of the files table: this
    runs once per missing or corrupt blob, which is rare) and the rule reads
    the decoded records."""
    with _transaction(conn, write=False):
        names = [name for (name,) in conn.execute(
            "SELECT DISTINCT project FROM files WHERE (stored AND instr(hashes, ?1)) "
            "OR (metadata_stored AND instr(coalesce(core_metadata, ''), ?1)) "
            "OR provenance_sha256 = ?1", (sha256,))]
        found = []
        for name in names:
            record = _load_project(conn, name)
            if record is not None:
                found += stored_with_blob(record, sha256)
    return sorted(found)


def _q_used_filename(conn: sqlite3.Connection, filename: str) -> str | None:
    row = conn.execute("SELECT sha256 FROM used_filenames WHERE file_key = ? ORDER BY filename = ? DESC LIMIT 1",
                       (file_key(filename), filename)).fetchone()
    return None if row is None else row[0]


def _q_add_file(conn: sqlite3.Connection, name: str, upload: FileRecord) -> ProjectRecord:
    sha256 = check_upload(upload)
    with _transaction(conn):
        used = _q_used_filename(conn, upload.filename)
        if used is not None:
            raise FileExists(upload.filename, used)
        old = _load_project(conn, name)
        record = with_upload(old, name, upload)
        if old is not None and old.origin == LOCAL:
            # Already private: the other files are untouched.
            _write_project_row(conn, record)
            _append_file(conn, name, record.files[-1])
        else:
            _write_project(conn, record)
        conn.execute("INSERT INTO used_filenames (filename, sha256, project, upload_time, file_key) "
                     "VALUES (?, ?, ?, ?, ?)", (upload.filename, sha256, name, upload.upload_time,
                                                file_key(upload.filename)))
    return record


def _q_create_project(conn: sqlite3.Connection, name: str, origin: str) -> ProjectRecord:
    with _transaction(conn):
        old = _load_project(conn, name)
        record = with_origin(old, name, origin)
        if record is not old:
            _write_project_row(conn, record)  # the files stay as they are
    return record


def _q_remove_file(conn: sqlite3.Connection, name: str, filename: str) -> ProjectRecord:
    with _transaction(conn):
        record = without_file(_load_existing(conn, name), filename)
        conn.execute("DELETE FROM files WHERE project = ? AND filename = ?", (name, filename))
    return record


def _q_get_project_list(conn: sqlite3.Connection) -> tuple[ProjectList, float] | None:
    row = conn.execute("SELECT names, etag, last_modified, refreshed_at FROM project_list "
                       "WHERE id = 1").fetchone()
    if row is None:
        return None
    names, etag, last_modified, refreshed_at = row
    return ProjectList(tuple(_loads(names)), Validators(etag, last_modified)), refreshed_at


def _q_save_project_list(conn: sqlite3.Connection, project_list: ProjectList,
                         refreshed_at: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO project_list (id, names, etag, last_modified, refreshed_at) "
        "VALUES (1, ?, ?, ?, ?)",
        (_dumps(list(project_list.names)), project_list.validators.etag,
         project_list.validators.last_modified, refreshed_at),
    )


# ------------------------------------------------------------------ provider


@implementer(IIndex, IIndexRepair, IIndexProvenance)
class SQLiteIndex:
    """The catalog in one SQLite file, answered from a private thread.

    Made by :data:`factory`; call :meth:`close` to stop its thread.  A
    database that cannot be opened makes every call fail with the error
    (and logs it once at start).
    """

    def __init__(self, path: Path, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._conn: sqlite3.Connection | None = None  # only touched on the pool thread
        self._read_conn: sqlite3.Connection | None = None  # only touched on the reader thread
        self._closing: defer.Deferred | None = None
        self._pool = ThreadPool(1, 1, name=f"pypicache-index:{path.name}")
        self._pool.start()
        # Reads get their own connection and thread: in WAL mode a reader
        # never waits for the writer, so a lookup is not queued behind the
        # page writes of a cold install (30 at once, numpy's is 601 rows).
        # A read started after a write's Deferred fired sees that write.
        self._opened = threading.Event()  # the writer's connection was attempted
        self._reader = ThreadPool(1, 1, name=f"pypicache-index-reads:{path.name}")
        self._reader.start()
        # Stop the (non-daemon) thread at shutdown even if nobody calls close().
        self._trigger: Any = reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        self._call(lambda conn: None).addErrback(
            lambda f: log.failure("index: cannot open {path}", f, path=path))

    def _in_thread(self, query: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            try:
                self._conn = connect(self.path)
            finally:
                self._opened.set()
        return query(self._conn, *args)

    def _call(self, query: Callable[..., T], *args: Any) -> defer.Deferred:
        """Run ``query(conn, *args)`` on the index thread (for tests too)."""
        if self._closing is not None:
            return defer.fail(IndexClosed(f"index {self.path} is closed"))
        return deferToThreadPool(self._reactor, self._pool, self._in_thread, query, *args)

    def _read_in_thread(self, query: Callable[..., T], *args: Any) -> T:
        if self._read_conn is None:
            # The writer opens first (the call made at construction): it
            # switches a new file to WAL and creates the schema, which a
            # second connection doing the same at the same moment can meet
            # as "database is locked".
            self._opened.wait()
            self._read_conn = connect(self.path)
        return query(self._read_conn, *args)

    def _read(self, query: Callable[..., T], *args: Any) -> defer.Deferred:
        """Run a read-only ``query(conn, *args)`` on the reader thread."""
        if self._closing is not None:
            return defer.fail(IndexClosed(f"index {self.path} is closed"))
        return deferToThreadPool(self._reactor, self._reader, self._read_in_thread, query, *args)

    def get_project(self, name: str) -> defer.Deferred:
        return self._read(_q_get_project, name)

    def list_projects(self) -> defer.Deferred:
        return self._read(_q_list_projects)

    def save_upstream_page(self, page: ProjectPage, refreshed_at: float,
                           merge: bool = False) -> defer.Deferred:
        return self._call(_cache_write(_q_save_upstream_page), page, refreshed_at, merge)

    def mark_refreshed(self, name: str, refreshed_at: float,
                       validators: Validators | None) -> defer.Deferred:
        return self._call(_cache_write(_q_mark_refreshed), name, refreshed_at, validators)

    def mark_stored(self, name: str, filename: str, blob: BlobInfo) -> defer.Deferred:
        return self._call(_cache_write(_q_mark), with_file_stored, name, filename, blob)

    def mark_metadata_stored(self, name: str, filename: str, sha256: str) -> defer.Deferred:
        return self._call(_cache_write(_q_mark), with_metadata_stored, name, filename, sha256)

    def mark_provenance_stored(self, name: str, filename: str, sha256: str | None) -> defer.Deferred:
        """IIndexProvenance."""
        return self._call(_cache_write(_q_mark), with_provenance_stored, name, filename, sha256)

    def set_yanked(self, name: str, filename: str, yanked: bool,
                   reason: str | None) -> defer.Deferred:
        # The change's time joins the file's yank history (the as-of views).
        return self._call(_q_mark, with_yanked, name, filename, yanked, reason, self._reactor.seconds())

    def mark_unstored(self, name: str, filename: str, metadata: bool) -> defer.Deferred:
        """IIndexRepair: a full (not a cache) write, since it undoes a mark."""
        return self._call(_q_mark, without_stored, name, filename, metadata)

    def stored_with_blob(self, sha256: str) -> defer.Deferred:
        """IIndexRepair."""
        return self._read(_q_stored_with_blob, sha256)

    def add_file(self, name: str, record: FileRecord) -> defer.Deferred:
        return self._call(_q_add_file, name, record)

    def create_project(self, name: str, origin: str) -> defer.Deferred:
        return self._call(_q_create_project, name, origin)

    def used_filename(self, filename: str) -> defer.Deferred:
        return self._read(_q_used_filename, filename)

    def remove_file(self, name: str, filename: str) -> defer.Deferred:
        return self._call(_q_remove_file, name, filename)

    def get_project_list(self) -> defer.Deferred:
        return self._read(_q_get_project_list)

    def save_project_list(self, project_list: ProjectList, refreshed_at: float) -> defer.Deferred:
        return self._call(_cache_write(_q_save_project_list), project_list, refreshed_at)

    def _close_in_thread(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()  # the last connection checkpoints the WAL into the file

    def _close_reader_in_thread(self) -> None:
        if self._read_conn is not None:
            conn, self._read_conn = self._read_conn, None
            conn.close()

    def close(self) -> defer.Deferred:
        """Finish queued work, close the database, stop the threads.

        Safe to call more than once; later calls fire when the first is done.
        The reader closes first, so that the writer's connection is the last
        one and checkpoints the WAL into the file.
        """
        if self._closing is None:
            reader = deferToThreadPool(self._reactor, self._reader, self._close_reader_in_thread)
            reader.addErrback(lambda f: log.failure("index: error closing the reader of {path}", f,
                                                    path=self.path))
            self._closing = reader.addCallback(
                lambda _: deferToThreadPool(self._reactor, self._pool, self._close_in_thread))
            self._closing.addBoth(self._stopped)
        if self._closing.called:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._closing.addBoth(lambda result: (waiter.callback(None), result)[1])
        return waiter

    def _shutdown(self) -> defer.Deferred:
        self._trigger = None  # firing now: it must not be removed any more
        return self.close()

    def _stopped(self, result: Any) -> Any:
        self._reader.stop()
        self._pool.stop()
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        if isinstance(result, Failure):
            log.failure("index: error closing {path}", result, path=self.path)
            return None
        return result


@implementer(IProviderFactory)
class SQLiteIndexFactory:
    """``provider = "sqlite"``; option ``path`` (relative to the data directory)."""

    kind = "index"

    def create(self, options: Mapping[str, Any], context: Any) -> SQLiteIndex:
        check_options("index", options, {"path": str})
        name = options.get("path", "index.sqlite3")
        if not name.strip():
            raise ConfigError("index.path: must name a file")
        path = Path(context.data_dir) / name
        if path.is_dir():
            raise ConfigError(f"index.path: {str(path)!r} is a directory")
        try:
            # One tiny syscall at start-up, not reactor-blocking work.
            path.parent.mkdir(0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"index.path: cannot create {str(path.parent)!r}: {e.strerror}") from e
        return SQLiteIndex(path, context.reactor)


factory = SQLiteIndexFactory()
