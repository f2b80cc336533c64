"""Whole-or-nothing creation of the server's SQLite files (pypicache.durable)."""

from __future__ import annotations

import os
import sqlite3
import stat

from pypicache.services.accounts import AccountStore
from pypicache.durable import create_sqlite
from pypicache.providers.index import sqlite as index_sqlite


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.execute("PRAGMA user_version = 7")


def _only(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_new_database_is_complete_in_wal_mode_and_alone(tmp_path):
    path = tmp_path / "db.sqlite3"
    assert create_sqlite(path, _schema, mode=0o600) is True
    assert _only(tmp_path) == ["db.sqlite3"]  # no temporary, -wal or -shm file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        conn.close()


def test_existing_database_is_never_touched(tmp_path):
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"not ours to judge")
    assert create_sqlite(path, _schema) is False
    assert path.read_bytes() == b"not ours to judge"


def test_database_created_meanwhile_by_another_process_wins(tmp_path):
    path = tmp_path / "db.sqlite3"

    def racing(conn: sqlite3.Connection) -> None:
        _schema(conn)
        path.write_bytes(b"the other process")

    assert create_sqlite(path, racing) is False
    assert path.read_bytes() == b"the other process"
    assert _only(tmp_path) == ["db.sqlite3"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    path = tmp_path / "db.sqlite3"

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t (x)")
        raise RuntimeError("schema bug")

    try:
        create_sqlite(path, broken)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the build's error was swallowed")
    assert _only(tmp_path) == []


def test_leftover_of_a_crash_is_replaced(tmp_path):
    path = tmp_path / "db.sqlite3"
    leftover = tmp_path / f".db.sqlite3.{os.getpid()}.new"
    leftover.write_bytes(b"half a database")
    (tmp_path / f"{leftover.name}-wal").write_bytes(b"junk")
    assert create_sqlite(path, _schema) is True
    assert _only(tmp_path) == ["db.sqlite3"]


def test_index_and_accounts_are_created_this_way(tmp_path):
    """Both databases the server makes on its first start come out whole,
    with their schema, and the accounts file readable by its owner only."""
    conn = index_sqlite.connect(tmp_path / "index.sqlite3")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index_sqlite.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    store = AccountStore(tmp_path / "accounts.sqlite3")
    try:
        store.add_user("alice", "correct horse battery")
    finally:
        store.close()
    assert stat.S_IMODE((tmp_path / "accounts.sqlite3").stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
