"""The index providers: the shared contract, then what only SQLite must do."""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from pypicache import providers
from pypicache.errors import ConfigError
from pypicache.providers.index import memory, sqlite
from pypicache.interfaces import IIndex, IProviderFactory
from pypicache.model import BlobInfo, FileExists, ProjectList, ProjectRecord, Validators
from pypicache.testing import (
    IndexContract,
    _digest,
    index_file,
    index_page,
    local_file,
    make_context,
    stop_context,
    wait,
    wait_for_error,
)


class TestMemoryIndex(IndexContract):
    persistent = False

    def make_index(self, tmp_path: Path, context: Any) -> Any:
        return memory.factory.create({}, context)


class TestSQLiteIndex(IndexContract):
    def make_index(self, tmp_path: Path, context: Any) -> Any:
        return sqlite.factory.create({}, context)


# ------------------------------------------------------------------ factories


@pytest.fixture
def context(tmp_path: Path) -> Any:
    context = make_context(tmp_path)
    yield context
    stop_context(context)


@pytest.fixture
def opened(context: Any) -> Any:
    """Call ``opened(index)`` to have it closed at teardown."""
    from twisted.internet import reactor

    indexes: list[Any] = []
    yield indexes.append
    for index in indexes:
        pytest_twisted.blockon(defer.maybeDeferred(index.close).addTimeout(10, reactor))


@pytest.fixture
def index(context: Any, opened: Any) -> sqlite.SQLiteIndex:
    index = sqlite.factory.create({}, context)
    opened(index)
    return index


@pytest.mark.parametrize("module", [sqlite, memory])
def test_factories_provide_the_interface(module: Any) -> None:
    assert verifyObject(IProviderFactory, module.factory)
    assert module.factory.kind == "index"


@pytest.mark.parametrize("name", ["sqlite", "memory"])
@pytest_twisted.ensureDeferred
async def test_load_by_name(name: str, context: Any, opened: Any) -> None:
    index = providers.create("index", name, {}, context)
    opened(index)
    assert verifyObject(IIndex, index)
    assert await wait(index.get_project("x")) is None


@pytest.mark.parametrize("options, key", [
    ({"nonsense": 1}, "index.nonsense"),
    ({"path": 3}, "index.path"),
    ({"path": ""}, "index.path"),
    ({"path": "."}, "index.path"),
])
def test_bad_sqlite_options(options: dict, key: str, context: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        providers.create("index", "sqlite", options, context)


def test_bad_memory_options(context: Any) -> None:
    with pytest.raises(ConfigError, match="index.path"):
        providers.create("index", "memory", {"path": "x"}, context)


def test_unwritable_directory_is_config_error(context: Any, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="index.path"):
        sqlite.factory.create({"path": "a-file/sub/index.db"}, context)


@pytest_twisted.ensureDeferred
async def test_path_option(context: Any, opened: Any, tmp_path: Path) -> None:
    relative = sqlite.factory.create({"path": "deep/er/catalog.db"}, context)
    opened(relative)
    absolute = sqlite.factory.create({"path": str(tmp_path / "abs.db")}, context)
    opened(absolute)
    await wait(relative.save_upstream_page(index_page("rel"), 1.0))
    await wait(absolute.save_upstream_page(index_page("abs"), 1.0))
    assert (tmp_path / "deep/er/catalog.db").is_file()
    assert (tmp_path / "abs.db").is_file()
    assert await wait(relative.list_projects()) == ["rel"]
    assert not (tmp_path / "index.sqlite3").exists()


# ------------------------------------------------------------ SQLite specifics


@pytest_twisted.ensureDeferred
async def test_version_4_database_keeps_its_data_and_gains_provenance(context: Any, opened: Any,
                                                                      tmp_path: Path) -> None:
    """Schema 5 adds each file's PEP 740 provenance URL and blob: files from
    before keep every field (stored state, history) and have neither."""
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    try:
        for step in (1, 2, 3, 4):  # the schema exactly as version 4 wrote it
            for statement in sqlite._MIGRATIONS[step]:
                conn.execute(statement) if isinstance(statement, str) else statement(conn)
        conn.execute("INSERT INTO projects (name, origin, refreshed_at, meta) VALUES ('v4', 'upstream', 7.0, '{}')")
        conn.execute("INSERT INTO files (project, filename, position, url, hashes, yanked, yanked_reason, "
                     "stored, metadata_stored, listed, origin, upload_time, size, first_seen, yank_history) "
                     "VALUES ('v4', 'v4-1.0.tar.gz', 0, 'https://u.example/f', ?, 1, 'bad', 1, 0, 1, "
                     "'upstream', '2024-01-01T00:00:00Z', 3, 5.0, '[[6.0,true,\"bad\"]]')",
                     (json.dumps({"sha256": "ab" * 32}),))
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    finally:
        conn.close()
    index = sqlite.factory.create({}, context)
    opened(index)
    record = await wait(index.get_project("v4"))
    (f,) = record.files
    assert (f.filename, f.sha256, f.stored, f.size, f.yanked_reason, f.first_seen, f.yank_history) == (
        "v4-1.0.tar.gz", "ab" * 32, True, 3, "bad", 5.0, ((6.0, True, "bad"),))
    assert (f.provenance, f.provenance_sha256) == (None, None)
    assert await wait(index._call(lambda conn: conn.execute("PRAGMA user_version").fetchone()[0])) == 5
    url = "https://u.example/integrity/v4/1.0/v4-1.0.tar.gz/provenance"
    page = index_page("v4", index_file("v4-1.0.tar.gz", hashes={"sha256": "ab" * 32}, provenance=url))
    await wait(index.save_upstream_page(page, 8.0))
    await wait(index.mark_provenance_stored("v4", "v4-1.0.tar.gz", "cd" * 32))
    (f,) = (await wait(index.get_project("v4"))).files
    assert (f.stored, f.provenance, f.provenance_sha256) == (True, url, "cd" * 32)


@pytest_twisted.ensureDeferred
async def test_pragmas_and_schema(index: sqlite.SQLiteIndex, tmp_path: Path) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple:
        return tuple(conn.execute(f"PRAGMA {p}").fetchone()[0]
                     for p in ("journal_mode", "synchronous", "busy_timeout", "user_version"))

    assert await wait(index._call(pragmas)) == ("wal", 2, sqlite.BUSY_TIMEOUT_MS,
                                                sqlite.SCHEMA_VERSION)
    await wait(index.save_upstream_page(index_page("w", index_file("w-1.tar.gz")), 1.0))
    # Another process can read while we hold the database open (WAL).
    other = sqlite3.connect(tmp_path / "index.sqlite3")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {name for (name,) in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"projects", "files", "project_list", "used_filenames"} <= tables
        assert other.execute("SELECT filename, listed FROM files").fetchall() == [("w-1.tar.gz", 1)]
    finally:
        other.close()


@pytest_twisted.ensureDeferred
async def test_every_call_runs_off_the_reactor_thread(index: sqlite.SQLiteIndex) -> None:
    idents: set[int] = set()
    await wait(index._call(lambda conn: conn.set_trace_callback(
        lambda statement: idents.add(threading.get_ident()))))
    await wait(index._read(lambda conn: conn.set_trace_callback(
        lambda statement: idents.add(threading.get_ident()))))
    wheel = index_file("t-1-py3-none-any.whl")
    await wait(index.save_upstream_page(index_page("t", wheel), 1.0))
    await wait(index.get_project("t"))
    await wait(index.list_projects())
    await wait(index.mark_refreshed("t", 2.0, Validators("e", None)))
    await wait(index.mark_stored("t", wheel.filename, BlobInfo(wheel.sha256, 1)))
    await wait(index.mark_metadata_stored("t", wheel.filename, _digest("m")))
    await wait(index.save_project_list(ProjectList(("t",)), 3.0))
    await wait(index.get_project_list())
    await wait(index.add_file("t", local_file("t-2.tar.gz")))
    await wait(index.used_filename("t-2.tar.gz"))
    await wait(index.set_yanked("t", "t-2.tar.gz", True, None))
    await wait(index.remove_file("t", "t-2.tar.gz"))
    await wait(index.create_project("t2", "local"))
    assert len(idents) == 2  # two dedicated threads (writes, reads) ...
    assert threading.get_ident() not in idents  # ... neither of them the reactor's
    assert idents == {t.ident for t in index._pool.threads} | {t.ident for t in index._reader.threads}


@pytest_twisted.ensureDeferred
async def test_reads_are_not_queued_behind_writes(index: sqlite.SQLiteIndex) -> None:
    """Lookups have their own connection and thread (WAL: readers never wait
    for the writer), and a read started after a write finished sees it."""
    wheel = index_file("r-1-py3-none-any.whl")
    await wait(index.save_upstream_page(index_page("r", wheel), 1.0))
    writing, release = threading.Event(), threading.Event()

    def slow_write(conn):
        with sqlite._transaction(conn):
            conn.execute("UPDATE projects SET refreshed_at = 5 WHERE name = 'r'")
            writing.set()
            release.wait(10)

    held = index._call(slow_write)
    queued = index.mark_stored("r", wheel.filename, BlobInfo(wheel.sha256, 1))
    try:
        assert await deferToThread(writing.wait, 10)
        record = await wait(index.get_project("r"))  # answered while the writer is busy
        assert record.refreshed_at == 1.0 and not record.file(wheel.filename).stored
        assert await wait(index.used_filename("nothing-1.0.tar.gz")) is None
    finally:
        release.set()
    await wait(held)
    await wait(queued)
    record = await wait(index.get_project("r"))
    assert record.refreshed_at == 5 and record.file(wheel.filename).stored


@pytest_twisted.ensureDeferred
async def test_reopen_keeps_data(context: Any, opened: Any) -> None:
    first = sqlite.factory.create({}, context)
    opened(first)
    wheel = index_file("keep-1-py3-none-any.whl")
    await wait(first.save_upstream_page(index_page("keep", wheel), 1.0))
    record = await wait(first.mark_stored("keep", wheel.filename, BlobInfo(wheel.sha256, 9)))
    await wait(first.close())
    await wait(first.close())  # idempotent
    await wait_for_error(sqlite.IndexClosed, first.get_project, "keep")
    second = sqlite.factory.create({}, context)
    opened(second)
    assert await wait(second.get_project("keep")) == record
    assert not first._pool.started and not first._reader.started  # its threads are gone


@pytest_twisted.ensureDeferred
async def test_large_project_round_trip_is_fast(index: sqlite.SQLiteIndex) -> None:
    files = [index_file(f"big-1.{i}-cp3{i % 13}-cp3{i % 13}-manylinux_2_17_x86_64.whl",
                        requires_python=">=3.8", size=100_000 + i,
                        core_metadata={"sha256": _digest(f"m{i}")},
                        upload_time="2024-05-06T07:08:09.123456Z",
                        yanked=i % 50 == 0, yanked_reason="bad" if i % 100 == 0 else None)
             for i in range(650)]
    page = index_page("big", *files, versions=tuple(f"1.{i}" for i in range(650)))
    saved = await wait(index.save_upstream_page(page, 1.0))
    assert saved.files == tuple(files)
    assert await wait(index.get_project("big")) == saved
    again = await wait(index.save_upstream_page(page, 2.0))  # a refresh rewrites all rows
    assert again.files == saved.files

    def timed(conn: sqlite3.Connection) -> float:
        start = time.perf_counter()
        sqlite._q_get_project(conn, "big")
        return time.perf_counter() - start

    # Time on the index thread (no reactor hop); median of several runs so
    # a busy test machine does not make this flaky.  Typically ~3 ms.
    samples = [await wait(index._call(timed)) for _ in range(9)]
    assert statistics.median(samples) < 0.025, samples


@pytest_twisted.ensureDeferred
async def test_many_concurrent_calls(index: sqlite.SQLiteIndex) -> None:
    pages = [index_page(f"c{n}", *(index_file(f"c{n}-{i}.tar.gz") for i in range(20)))
             for n in range(10)]
    calls = []
    for round_ in range(5):
        for page in pages:
            calls.append(index.save_upstream_page(page, float(round_)))
            calls.append(index.get_project(page.name))
        calls.append(index.list_projects())
    results = await wait(defer.gatherResults(calls, consumeErrors=True), timeout=30)
    assert len(results) == len(calls)
    for page in pages:
        record = await wait(index.get_project(page.name))
        assert record.files == page.files
        assert record.refreshed_at == 4.0
    assert await wait(index.list_projects()) == sorted(p.name for p in pages)


@pytest_twisted.ensureDeferred
async def test_failed_save_changes_nothing(index: sqlite.SQLiteIndex) -> None:
    saved = await wait(index.save_upstream_page(index_page("a", index_file("a-1.tar.gz")), 1.0))
    # A value that cannot be stored fails after the old rows were deleted:
    # the transaction must roll that back.
    bad = attrs.evolve(index_file("a-2.tar.gz"), hashes={"sha256": _digest("x"), "bad": object()})
    await wait_for_error(TypeError, index.save_upstream_page, index_page("a", bad), 2.0)
    assert await wait(index.get_project("a")) == saved


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused(context: Any, opened: Any, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    conn.execute(f"PRAGMA user_version = {sqlite.SCHEMA_VERSION + 1}")
    conn.close()
    index = sqlite.factory.create({}, context)
    opened(index)
    await wait_for_error(sqlite.SchemaTooNew, index.get_project, "x")


@pytest_twisted.ensureDeferred
async def test_shutdown_trigger_removed_on_close(context: Any) -> None:
    from twisted.internet import reactor

    index = sqlite.factory.create({}, context)
    trigger = index._trigger
    await wait(index.close())
    assert index._trigger is None
    with pytest.raises(ValueError):
        reactor.removeSystemEventTrigger(trigger)


# ------------------------------------------------------ private packages (SQLite)


@pytest_twisted.ensureDeferred
async def test_used_filenames_rows(index: sqlite.SQLiteIndex) -> None:
    one = local_file("uf-1.tar.gz")
    two = local_file("uf-1-py3-none-any.whl", upload_time=None)
    await wait(index.add_file("uf", one))
    await wait(index.add_file("uf", two))
    await wait(index.remove_file("uf", one.filename))

    def rows(conn: sqlite3.Connection) -> list:
        return conn.execute("SELECT filename, sha256, project, upload_time FROM used_filenames "
                            "ORDER BY filename").fetchall()

    assert await wait(index._call(rows)) == [
        (two.filename, two.sha256, "uf", None),
        (one.filename, one.sha256, "uf", one.upload_time),
    ]


@pytest_twisted.ensureDeferred
async def test_add_file_to_private_project_writes_one_row(index: sqlite.SQLiteIndex) -> None:
    for n in range(3):
        await wait(index.add_file("one", local_file(f"one-{n}.tar.gz")))
    statements: list[str] = []
    await wait(index._call(lambda conn: conn.set_trace_callback(statements.append)))
    await wait(index.add_file("one", local_file("one-3.tar.gz")))
    await wait(index._call(lambda conn: conn.set_trace_callback(None)))
    writes = [s.split()[0] for s in statements if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert writes == ["INSERT", "INSERT", "INSERT"]  # project row (upsert), file, used filename


@pytest_twisted.ensureDeferred
async def test_failed_add_file_changes_nothing(index: sqlite.SQLiteIndex) -> None:
    page = index_page("fa", index_file("fa-1.tar.gz"), validators=Validators("e", None))
    saved = await wait(index.save_upstream_page(page, 1.0))
    # Making the project private deletes its rows first; a value that cannot
    # be stored then fails, and the transaction must roll everything back.
    bad = local_file("fa-2.tar.gz", core_metadata={"sha256": _digest("m"), "bad": object()})
    await wait_for_error(TypeError, index.add_file, "fa", bad)
    assert await wait(index.get_project("fa")) == saved
    assert await wait(index.used_filename(bad.filename)) is None
    good = local_file("fa-2.tar.gz")
    record = await wait(index.add_file("fa", good))
    assert record == ProjectRecord(name="fa", files=(good,), origin="local")


@pytest_twisted.ensureDeferred
async def test_concurrent_adds_of_one_filename(index: sqlite.SQLiteIndex) -> None:
    uploads = [local_file("race-1.tar.gz", hashes={"sha256": _digest(f"bytes {n}")})
               for n in range(5)]
    results = await wait(defer.DeferredList([index.add_file(f"race{n}", u)
                                             for n, u in enumerate(uploads)], consumeErrors=True))
    won = [r for ok, r in results if ok]
    lost = [r.value for ok, r in results if not ok]
    assert len(won) == 1 and len(lost) == 4
    assert all(isinstance(e, FileExists) and e.sha256 == won[0].files[0].sha256 for e in lost)
    assert await wait(index.list_projects()) == [won[0].name]


@pytest_twisted.ensureDeferred
async def test_version_1_database_is_upgraded(context: Any, opened: Any, tmp_path: Path) -> None:
    # Write a database exactly as the schema-1 code did ...
    wheel = index_file("v1-1.0-py3-none-any.whl")
    sdist = index_file("v1-1.0.tar.gz")
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    try:
        for statement in sqlite._MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO projects (name, origin, refreshed_at, meta) VALUES ('v1', 'upstream', 1.0, '{}')")
        for position, (f, stored) in enumerate(((wheel, 1), (sdist, 0))):
            conn.execute("INSERT INTO files (project, filename, position, url, hashes, yanked, stored, "
                         "metadata_stored, listed, origin, size) VALUES ('v1', ?, ?, ?, ?, 0, ?, 0, 1, 'upstream', ?)",
                         (f.filename, position, f.url, '{"sha256":"%s"}' % f.sha256, stored, 5 if stored else None))
        conn.execute("INSERT INTO project_list (id, names, refreshed_at) VALUES (1, '[\"v1\",\"other\"]', 2.0)")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    finally:
        conn.close()
    saved = ProjectRecord(name="v1", files=(attrs.evolve(wheel, stored=True, size=5), sdist), refreshed_at=1.0)
    names = ProjectList(("v1", "other"))

    # ... then open it with this code: the data stays, the new table appears.
    index = sqlite.factory.create({}, context)
    opened(index)
    assert await wait(index.get_project("v1")) == saved
    assert await wait(index.get_project_list()) == (names, 2.0)
    assert await wait(index._call(lambda conn: conn.execute("PRAGMA user_version").fetchone()[0])) \
        == sqlite.SCHEMA_VERSION
    assert await wait(index.used_filename(wheel.filename)) is None
    upload = local_file("v1-2.0.tar.gz")
    record = await wait(index.add_file("v1", upload))
    kept = attrs.evolve(wheel, stored=True, size=5, listed=False)
    assert record == ProjectRecord(name="v1", files=(kept, upload), origin="local")
    assert await wait(index.used_filename(upload.filename)) == upload.sha256


@pytest_twisted.ensureDeferred
async def test_version_3_database_keeps_its_data_and_gains_history(context: Any, opened: Any,
                                                                   tmp_path: Path) -> None:
    """Schema 4 adds first-seen times and yank histories (the as-of views):
    files from before keep everything, have no first-seen time, and a file
    yanked then counts as yanked since always."""
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    try:
        for step in (1, 2, 3):  # the schema exactly as version 3 wrote it
            for statement in sqlite._MIGRATIONS[step]:
                conn.execute(statement) if isinstance(statement, str) else statement(conn)
        conn.execute("INSERT INTO projects (name, origin, refreshed_at, meta) VALUES ('v3', 'upstream', 7.0, '{}')")
        for position, (filename, yanked, reason) in enumerate((("v3-1.0.tar.gz", 0, None),
                                                               ("v3-2.0.tar.gz", 1, "broken"))):
            conn.execute("INSERT INTO files (project, filename, position, url, hashes, yanked, yanked_reason, "
                         "stored, metadata_stored, listed, origin, upload_time) "
                         "VALUES ('v3', ?, ?, 'https://u.example/f', '{}', ?, ?, 0, 0, 1, 'upstream', "
                         "'2024-01-01T00:00:00Z')", (filename, position, yanked, reason))
        conn.execute("INSERT INTO used_filenames (filename, sha256, project, file_key) VALUES (?, ?, ?, ?)",
                     ("mine-1.0.tar.gz", "cd" * 32, "mine", "sdist:mine:1"))
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    finally:
        conn.close()
    index = sqlite.factory.create({}, context)
    opened(index)
    record = await wait(index.get_project("v3"))
    assert [(f.filename, f.yanked, f.yanked_reason, f.upload_time) for f in record.files] == [
        ("v3-1.0.tar.gz", False, None, "2024-01-01T00:00:00Z"), ("v3-2.0.tar.gz", True, "broken", "2024-01-01T00:00:00Z")]
    assert record.refreshed_at == 7.0
    assert [f.first_seen for f in record.files] == [None, None]
    assert [f.yank_history for f in record.files] == [(), ((0, True, "broken"),)]
    assert await wait(index.used_filename("mine-1.0.tar.gz")) == "cd" * 32
    assert await wait(index._call(lambda conn: conn.execute("PRAGMA user_version").fetchone()[0])) \
        == sqlite.SCHEMA_VERSION
    # The next page keeps the history and notes what changed, and when.
    page = index_page("v3", index_file("v3-1.0.tar.gz", yanked=True, yanked_reason="late"),
                      index_file("v3-2.0.tar.gz", yanked=True, yanked_reason="broken"), index_file("v3-3.0.tar.gz"))
    record = await wait(index.save_upstream_page(page, 50.0))
    again = await wait(index.get_project("v3"))
    for got in (record, again):
        assert [f.first_seen for f in got.files] == [None, None, 50.0]
        assert [f.yank_history for f in got.files] == [((50.0, True, "late"),), ((0, True, "broken"),), ()]


@pytest_twisted.ensureDeferred
async def test_version_2_used_filenames_compare_normalised_after_upgrade(context: Any, opened: Any,
                                                                         tmp_path: Path) -> None:
    """Filenames used before the upgrade block their other spellings too."""
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    try:
        for step in (1, 2):  # the schema exactly as version 2 wrote it
            for statement in sqlite._MIGRATIONS[step]:
                conn.execute(statement)
        sha = "ab" * 32
        conn.execute("INSERT INTO used_filenames (filename, sha256, project, upload_time) VALUES (?, ?, ?, ?)",
                     ("old_pkg-2.0-py3-none-any.whl", sha, "old-pkg", None))
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    finally:
        conn.close()
    index = sqlite.factory.create({}, context)
    opened(index)
    assert await wait(index.used_filename("old_pkg-2.0-py3-none-any.whl")) == sha
    assert await wait(index.used_filename("Old.Pkg-2.0.0-py3-none-any.whl")) == sha
    assert await wait(index.used_filename("old_pkg-2.0-py2.py3-none-any.whl")) is None
    error = await wait_for_error(FileExists, index.add_file, "old-pkg", local_file("old_pkg-2.0.0-py3-none-any.whl"))
    assert error.sha256 == sha


@pytest_twisted.ensureDeferred
async def test_cache_writes_skip_the_fsync_uploads_keep_it(index: sqlite.SQLiteIndex) -> None:
    """Writes that only record the upstream cache commit with synchronous =
    NORMAL (a power cut costs a refetch); the connection is back at FULL for
    everything else, such as an upload's add_file."""
    def level(conn: sqlite3.Connection) -> int:
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    assert await wait(index._call(sqlite._cache_write(level))) == 1
    assert await wait(index._call(level)) == 2
    seen: list[int] = []
    real = sqlite._q_save_upstream_page

    def spy(conn, *args):
        seen.append(level(conn))
        return real(conn, *args)

    sqlite._q_save_upstream_page = spy
    try:
        await wait(index.save_upstream_page(index_page("w", index_file("w-1.tar.gz")), 1.0))
    finally:
        sqlite._q_save_upstream_page = real
    assert seen == [1]
    assert await wait(index._call(level)) == 2


@pytest_twisted.ensureDeferred
async def test_first_read_and_first_write_of_a_new_file_do_not_collide(context: Any, opened: Any,
                                                                      tmp_path: Path) -> None:
    """The reader connects only once the writer has made the file WAL and
    created the schema: a new index answers its very first read."""
    for i in range(20):
        index = sqlite.SQLiteIndex(tmp_path / f"new-{i}.sqlite3", context.reactor)
        opened(index)
        assert await wait(index.get_project("x")) is None
        assert await wait(index.list_projects()) == []


@pytest_twisted.ensureDeferred
async def test_mark_unstored_clears_one_flag(index: sqlite.SQLiteIndex) -> None:
    """What verify and the scrub call when a blob is gone (they no longer
    reach into the index's connection)."""
    await wait(index.add_file("mu", local_file("mu-1.tar.gz")))
    await wait(index.mark_unstored("mu", "mu-1.tar.gz", True))
    record = (await wait(index.get_project("mu"))).file("mu-1.tar.gz")
    assert record.stored and not record.metadata_stored
    await wait(index.mark_unstored("mu", "mu-1.tar.gz", False))
    record = (await wait(index.get_project("mu"))).file("mu-1.tar.gz")
    assert not record.stored and not record.metadata_stored
