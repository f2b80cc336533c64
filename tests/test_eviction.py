"""``[cache] max_size``: LRU eviction, pins, batched access times, ``pypicache gc``.

Everything through a real server on 127.0.0.1:0 in front of the fake
upstream; the commands run as a user runs them, in their own process, while
the server runs.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.logger import LogLevel

from pypicache.daemon import config as configuration
from tests.blobs import deferred_sleep, get, wait_stored
from tests.builders import build_wheel
from tests.server import RunningServer, start_server
from tests.uploads import PASSWORD, WHEEL_NAME, cheap_accounts, form, good_wheel, post

PAD = 20_000


def wheel_name(i: int) -> str:
    return f"bulk{i}-1.0-py3-none-any.whl"


def add_bulk(fu: Any, dest: Path, n: int, pad: int = PAD) -> dict[str, bytes]:
    """``bulk0`` .. ``bulk<n-1>``, one wheel of about ``pad`` bytes each."""
    files = {}
    for i in range(n):
        path = build_wheel(dest, f"bulk{i}", "1.0", extra_bytes=pad)
        fu.add(path)
        files[path.name] = path.read_bytes()
    return files


def write_config(tmp_path: Path, upstream: str, cache: str) -> Path:
    path = tmp_path / "pypicache.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\naccess_log = false\n'
                    f'[http]\nconnect_timeout = 2\nread_timeout = 2\npage_timeout = 3\n'
                    f'[upstream]\nurl = "{upstream}"\n[cache]\n{cache}\n')
    return path


async def run_command(config: Path, *argv: str) -> subprocess.CompletedProcess:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    command = [sys.executable, "-m", "pypicache.cli.admin", "--config", str(config), *argv]
    return await deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=60,
                               env=env, stdin=subprocess.DEVNULL).addTimeout(90, reactor)


def blob_bytes(server: RunningServer) -> dict[str, int]:
    root = server.app.storage.root
    return {p.name: p.stat().st_size for p in root.rglob("*")
            if p.is_file() and ".tmp" not in p.parts and ".quarantine" not in p.parts}


async def settled(server: RunningServer, timeout: float = 20.0) -> None:
    """Until the keeper has counted storage and no eviction runs."""
    keeper = server.app.cache_keeper
    for _ in range(int(timeout / 0.05)):
        if keeper.used is not None and keeper._evicting is None and not server.app.downloader._transfers:
            await keeper.flush()
            if keeper._evicting is None and keeper.used <= keeper.limit:
                return
        await deferred_sleep(0.05)
    raise AssertionError(f"eviction did not settle: used {keeper.used}, limit {keeper.limit}")


async def ready(server: RunningServer) -> None:
    for _ in range(200):
        if server.app.cache_keeper.used is not None:
            return
        await deferred_sleep(0.02)
    raise AssertionError("the keeper never counted storage")


async def fetch(server: RunningServer, project: str, filename: str) -> bytes:
    code, body, _ = await get(f"{server.root}/files/{project}/{filename}")
    assert code == 200, (filename, code, body)
    assert isinstance(body, bytes), (filename, body)
    return body


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_fill_to_twice_the_limit_under_concurrent_reads(tmp_path: Path, fake_upstream: Any, logs: Any) -> None:
    """The issue's test: 20 files of ~20 kB through a 200 kB limit while
    readers keep reading; storage ends within the limit plus one file, no
    read fails, the private upload and the pinned file stay, an evicted file
    is still listed and comes back on request."""
    files = add_bulk(fake_upstream, tmp_path / "dists", 20)
    limit = 200_000
    config_path = write_config(tmp_path, fake_upstream.url, f"max_size = {limit}\naccess_flush = 0.2")
    server = await start_server(configuration.load(config_path))
    try:
        cheap_accounts(server).add_user("alice", PASSWORD)
        await ready(server)
        private = good_wheel(tmp_path)
        answer = await post(server, form(private))
        assert answer.code == 200, answer.body
        # bulk0 is fetched and pinned (through the command, the server running).
        assert await fetch(server, "bulk0", wheel_name(0)) == files[wheel_name(0)]
        await wait_stored(server, wheel_name(0), "bulk0")
        requirements = tmp_path / "requirements.txt"
        requirements.write_text("bulk0==1.0\n")
        pinned = await run_command(config_path, "pin", str(requirements))
        assert pinned.returncode == 0, pinned.stderr
        assert "pinned 1 file(s)" in pinned.stdout

        failures: list[str] = []
        reads = [0]
        stop = [False]

        async def reader(names: list[tuple[str, str]]) -> None:
            while not stop[0]:
                for project, filename in names:
                    code, body, _ = await get(f"{server.root}/files/{project}/{filename}")
                    expected = private if project == "acme-tools" else files[filename]
                    if code != 200 or body != expected:
                        failures.append(f"{filename}: {code} {body if not isinstance(body, bytes) else len(body)}")
                    reads[0] += 1

        readers = [defer.ensureDeferred(reader([("bulk0", wheel_name(0)), ("acme-tools", WHEEL_NAME)])),
                   defer.ensureDeferred(reader([("bulk1", wheel_name(1)), ("bulk2", wheel_name(2))])),
                   defer.ensureDeferred(reader([(f"bulk{i}", wheel_name(i)) for i in range(3, 8)]))]
        # Fill: the rest, four at a time, while the readers read.
        sem = defer.DeferredSemaphore(4)

        async def one(i: int) -> None:
            body = await fetch(server, f"bulk{i}", wheel_name(i))
            if body != files[wheel_name(i)]:
                failures.append(f"fill {i}")

        await defer.gatherResults([sem.run(lambda i=i: defer.ensureDeferred(one(i))) for i in range(1, 20)])
        stop[0] = True
        await defer.gatherResults(readers)
        await settled(server)

        assert failures == []
        assert reads[0] > 20
        assert logs.tracebacks == []
        assert logs.lines(LogLevel.warn) == []
        on_disk = blob_bytes(server)
        largest = max(len(b) for b in files.values())
        assert sum(on_disk.values()) <= limit + largest, (sum(on_disk.values()), on_disk)
        assert server.app.cache_keeper.evictions > 0
        # The private upload and the pinned file are still there.
        private_sha = hashlib.sha256(private).hexdigest()
        assert private_sha in on_disk
        assert hashlib.sha256(files[wheel_name(0)]).hexdigest() in on_disk
        record = await server.app.index.get_project("bulk0")
        assert record.file(wheel_name(0)).stored
        # An evicted file: still listed, fetched again (from the upstream) on request.
        evicted = []
        for i in range(1, 20):
            record = await server.app.index.get_project(f"bulk{i}")
            if not record.file(wheel_name(i)).stored:
                evicted.append(i)
        assert evicted
        i = evicted[0]
        page = await treq.get(f"{server.simple}bulk{i}/", persistent=False)
        assert wheel_name(i) in (await page.text())
        before = fake_upstream.count(f"/files/{wheel_name(i)}", "GET")
        assert await fetch(server, f"bulk{i}", wheel_name(i)) == files[wheel_name(i)]
        assert fake_upstream.count(f"/files/{wheel_name(i)}", "GET") == before + 1
        await wait_stored(server, wheel_name(i), f"bulk{i}")
        # Metrics.
        metrics = await (await treq.get(f"{server.root}/metrics", persistent=False)).text()
        assert f"pypicache_storage_limit_bytes {float(limit)}" in metrics
        assert "pypicache_storage_used_bytes " in metrics
        assert "pypicache_cache_evictions_total " in metrics
        assert "pypicache_cache_evicted_bytes_total " in metrics
        used, cap = server.app.cache_usage()
        assert cap == limit and used is not None
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_access_times_are_batched(tmp_path: Path, fake_upstream: Any) -> None:
    """Reading a cached file writes nothing; the next flush writes one
    transaction with its new access time."""
    files = add_bulk(fake_upstream, tmp_path / "dists", 1, pad=1000)
    config_path = write_config(tmp_path, fake_upstream.url, 'max_size = "1 GB"\naccess_flush = "1h"')
    server = await start_server(configuration.load(config_path))
    try:
        keeper = server.app.cache_keeper
        await ready(server)
        await fetch(server, "bulk0", wheel_name(0))
        await wait_stored(server, wheel_name(0), "bulk0")
        await keeper.flush()
        book_file = tmp_path / "data" / "cache.sqlite3"
        index_file = tmp_path / "data" / "index.sqlite3"
        stamp = (os.stat(index_file).st_mtime_ns, os.stat(str(index_file) + "-wal").st_size)
        writes = keeper.book.writes
        for _ in range(30):
            assert await fetch(server, "bulk0", wheel_name(0)) == files[wheel_name(0)]
        assert keeper.book.writes == writes  # not one write per request
        assert (os.stat(index_file).st_mtime_ns, os.stat(str(index_file) + "-wal").st_size) == stamp
        with sqlite3.connect(book_file) as conn:
            (before,) = conn.execute("SELECT last_access FROM cached").fetchone()
        await keeper.flush()
        assert keeper.book.writes == writes + 1  # one batch
        with sqlite3.connect(book_file) as conn:
            (after,) = conn.execute("SELECT last_access FROM cached").fetchone()
        assert after > before
        # A blob no file names (not a cached file's) does not count against the limit.
        used = keeper.used
        data = b"stored elsewhere" * 100
        blob = server.app.storage.path_of(hashlib.sha256(data).hexdigest())
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        await keeper._recount()
        assert keeper.used == used
    finally:
        await server.stop()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_evicting_again_and_again_grows_neither_file(tmp_path: Path, fake_upstream: Any) -> None:
    """Five rounds of filling to twice the limit: the bookkeeping file and
    the index stay the size they had after the first rounds."""
    add_bulk(fake_upstream, tmp_path / "dists", 12, pad=8000)
    config_path = write_config(tmp_path, fake_upstream.url, "max_size = 50000\naccess_flush = 0.2")
    server = await start_server(configuration.load(config_path))
    data = tmp_path / "data"

    def size(name: str) -> int:
        wal = data / f"{name}-wal"
        assert not wal.exists() or wal.stat().st_size <= 1024 * 1024 + 65536  # journal_size_limit
        return os.stat(data / name).st_size

    sizes = []
    try:
        await ready(server)
        for _ in range(5):
            for i in range(12):
                await fetch(server, f"bulk{i}", wheel_name(i))
            await settled(server)
            sizes.append((size("cache.sqlite3"), os.stat(data / "index.sqlite3").st_size))
        assert server.app.cache_keeper.evictions >= 4 * 12 // 2
        assert max(s[0] for s in sizes[2:]) <= max(s[0] for s in sizes[:2]), sizes
        assert max(s[1] for s in sizes[2:]) <= max(s[1] for s in sizes[:2]), sizes
    finally:
        await server.stop()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_gc_dry_run_then_gc_while_the_server_runs(tmp_path: Path, fake_upstream: Any) -> None:
    files = add_bulk(fake_upstream, tmp_path / "dists", 6, pad=10_000)
    config_path = write_config(tmp_path, fake_upstream.url, 'max_size = "1 GB"\naccess_flush = 0.2')
    server = await start_server(configuration.load(config_path))
    try:
        await ready(server)
        for i in range(6):
            await fetch(server, f"bulk{i}", wheel_name(i))
            await wait_stored(server, wheel_name(i), f"bulk{i}")
        await server.app.cache_keeper.flush()
        before = blob_bytes(server)

        dry = await run_command(config_path, "gc", "--dry-run", "--to", "35kB")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.count("would remove bulk") >= 3, dry.stdout
        assert "would remove" in dry.stdout.splitlines()[-1]
        assert blob_bytes(server) == before  # nothing removed

        done = await run_command(config_path, "gc", "--to", "35kB")
        assert done.returncode == 0, done.stderr
        removed = [line.split()[2] for line in done.stdout.splitlines() if line.startswith("removed bulk")]
        assert removed and len(removed) == dry.stdout.count("would remove bulk")
        assert wheel_name(0) in removed  # the least recently used first
        assert sum(blob_bytes(server).values()) <= 35_000
        # The server still answers every file: the removed ones from the upstream again.
        for i in range(6):
            assert await fetch(server, f"bulk{i}", wheel_name(i)) == files[wheel_name(i)]
        # It learnt of the bytes gc freed at its next flush.
        keeper = server.app.cache_keeper
        await keeper.flush()
        await settled(server)
        assert keeper.used == sum(blob_bytes(server).values())
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pin_commands_and_one_line_errors(tmp_path: Path, fake_upstream: Any) -> None:
    config_path = write_config(tmp_path, fake_upstream.url, "")
    lock = tmp_path / "pylock.toml"
    lock.write_text('lock-version = "1.0"\ncreated-by = "test"\n[[packages]]\nname = "tinyproj"\n'
                    'version = "1.0"\n[[packages.wheels]]\nname = "tinyproj-1.0-py3-none-any.whl"\n'
                    f'hashes = {{sha256 = "{"a" * 64}"}}\n')
    pinned = await run_command(config_path, "pin", "--name", "prod", str(lock))
    assert pinned.returncode == 0, pinned.stderr
    listed = await run_command(config_path, "pins")
    assert listed.stdout == "prod\t1 file(s)\n"

    cases = [
        (("pin", str(tmp_path / "missing.txt")), 1, "cannot read"),
        (("unpin", "nope"), 1, "no pin named 'nope'"),
        (("gc",), 2, "max_size is not set"),
        (("gc", "--to", "lots"), 2, "gc --to: expected a size"),
        (("pin", "--name", "x", str(lock), str(lock)), 2, "--name needs exactly one FILE"),
    ]
    for argv, code, text in cases:
        result = await run_command(config_path, *argv)
        assert result.returncode == code, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in result.stderr, (argv, result.stderr)

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("nosuchproject==1.0\n")
    result = await run_command(config_path, "pin", str(requirements))
    assert result.returncode == 1
    assert "not pinned" in result.stderr and "nosuchproject" in result.stderr

    unpinned = await run_command(config_path, "unpin", "prod")
    assert unpinned.returncode == 0 and "unpinned prod" in unpinned.stdout
    assert (await run_command(config_path, "pins")).stdout == ""


def _no_writes() -> None:
    """In the child: no file may grow (RLIMIT_FSIZE 0), as on a full disk."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_gc_frees_space_when_nothing_can_be_written(tmp_path: Path, fake_upstream: Any) -> None:
    """gc deletes blobs before it writes anything: with no file allowed to
    grow (a full disk) it still removes files; the server, which still
    thinks them stored, fetches them again when asked."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    files = add_bulk(fake_upstream, tmp_path / "dists", 4, pad=10_000)
    config_path = write_config(tmp_path, fake_upstream.url, 'max_size = "1 GB"\naccess_flush = 0.2')
    server = await start_server(configuration.load(config_path))
    try:
        await ready(server)
        for i in range(4):
            await fetch(server, f"bulk{i}", wheel_name(i))
            await wait_stored(server, wheel_name(i), f"bulk{i}")
        await server.app.cache_keeper.flush()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        command = [sys.executable, "-m", "pypicache.cli.admin", "--config", str(config_path), "gc", "--to", "15kB"]
        result = await deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=60, env=env,
                                     stdin=subprocess.DEVNULL, preexec_fn=_no_writes).addTimeout(90, reactor)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("removed bulk") >= 2, result.stdout
        assert "still marked stored in the index" in result.stderr  # nothing could be written indeed
        assert sum(blob_bytes(server).values()) <= 15_000
        for i in range(4):
            assert await fetch(server, f"bulk{i}", wheel_name(i)) == files[wheel_name(i)]
    finally:
        await server.stop()


def test_bookkeeping_file_gives_space_back_and_picks_victims_by_index(tmp_path: Path) -> None:
    """Forgetting rows shrinks the file (auto_vacuum, WAL checkpointed);
    choosing victims and recording access times search indexes, never scan
    the table; the file is the server's user's only."""
    from pypicache.services.cachebook import Book

    book = Book(tmp_path / "cache.sqlite3")
    try:
        rows = [(f"p{i}", f"f{i}.whl", f"{i:064x}", 100, None, float(i)) for i in range(5000)]
        book.apply(stored=rows)
        book.compact()
        full = os.stat(tmp_path / "cache.sqlite3").st_size
        assert [r.project for r in book.victims(None, 3)] == ["p0", "p1", "p2"]
        assert [r.project for r in book.victims((1.0, "p1", "f1.whl"), 2)] == ["p2", "p3"]
        book.pin("prod", [("p2", "f2.whl", None)])
        book.pin("other", [("p9", "f9.whl", f"{3:064x}")])  # same bytes as p3: kept too
        assert [r.project for r in book.victims((1.0, "p1", "f1.whl"), 2)] == ["p4", "p5"]
        book.forget([(r[0], r[1]) for r in rows])
        book.compact()
        assert os.stat(tmp_path / "cache.sqlite3").st_size < full / 10
        assert os.stat(tmp_path / "cache.sqlite3").st_mode & 0o777 == 0o600
        conn = sqlite3.connect(tmp_path / "cache.sqlite3")
        from pypicache.services.cachebook import TOUCH_SQL, VICTIMS_SQL

        plans = [" ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
                 for sql, args in ((VICTIMS_SQL, (0, "", "", 64)), (TOUCH_SQL, ("x", 1.0)))]
        conn.close()
        assert all("USING" in plan and "SCAN" not in plan for plan in plans), plans
    finally:
        book.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_pip_installs_an_evicted_file_again(tmp_path: Path, fake_upstream: Any) -> None:
    """Real pip through a limited server: install, evict everything with
    gc (the server running), install again: the wheel comes from the
    upstream through the server a second time."""
    from twisted.internet.threads import deferToThread

    from tests.clients import pip_install

    config_path = write_config(tmp_path, fake_upstream.url, 'max_size = "1 GB"\naccess_flush = 0.2')
    server = await start_server(configuration.load(config_path))
    wheel = "tinyproj-2.0-py3-none-any.whl"
    try:
        await ready(server)
        first = await deferToThread(pip_install, server.simple, "tinyproj==2.0", target=tmp_path / "t1")
        assert first.returncode == 0, first.stderr
        await wait_stored(server, wheel)
        await server.app.cache_keeper.flush()
        gc = await run_command(config_path, "gc", "--to", "0")
        assert gc.returncode == 0 and f"removed tinyproj {wheel}" in gc.stdout, (gc.stdout, gc.stderr)
        assert not blob_bytes(server)
        def fetched() -> list[str]:
            return [path for method, path, _ in fake_upstream.requests if method == "GET" and wheel in path]

        before = fetched()
        second = await deferToThread(pip_install, server.simple, "tinyproj==2.0", target=tmp_path / "t2")
        assert second.returncode == 0, second.stderr
        assert (tmp_path / "t2" / "tinyproj" / "__init__.py").exists()
        again = fetched()[len(before):]  # through this server, again: the wheel and its METADATA
        assert sorted(p.rsplit("/", 1)[-1] for p in again) == [wheel, wheel + ".metadata"], again
        await wait_stored(server, wheel)
    finally:
        await server.stop()


async def cached_bytes(server: RunningServer, projects: list[str]) -> int:
    """What the limit bounds: the blobs of ``projects``' stored files and their METADATA."""
    shas = set()
    for name in projects:
        record = await server.app.index.get_project(name)
        for f in record.files:
            if f.stored:
                shas.add(f.sha256)
            if f.metadata_stored:
                shas.add(f.metadata_sha256)
    on_disk = blob_bytes(server)
    return sum(on_disk.get(sha, 0) for sha in shas)


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_private_uploads_neither_count_nor_go(tmp_path: Path, fake_upstream: Any, logs: Any) -> None:
    """Private uploads past the limit and a few cached files under it:
    nothing is evicted, no warning, and the gauge, the start-up count, the
    recount and the UI all say the cached bytes only."""
    from tests.builders import build_wheel

    add_bulk(fake_upstream, tmp_path / "dists", 3, pad=10_000)
    limit = 60_000
    config_path = write_config(tmp_path, fake_upstream.url, f"max_size = {limit}\naccess_flush = 0.2")
    server = await start_server(configuration.load(config_path))
    try:
        cheap_accounts(server).add_user("alice", PASSWORD)
        await ready(server)
        private = {}
        for version in ("1.0", "2.0", "3.0"):
            data = build_wheel(tmp_path / f"private{version}", "acme-tools", version, extra_bytes=30_000).read_bytes()
            filename = f"acme_tools-{version}-py3-none-any.whl"
            answer = await post(server, form(data, filename, version=version))
            assert answer.code == 200, answer.body
            private[hashlib.sha256(data).hexdigest()] = len(data)
        assert sum(private.values()) > limit
        for i in range(3):
            await fetch(server, f"bulk{i}", wheel_name(i))
            await wait_stored(server, wheel_name(i), f"bulk{i}")
        keeper = server.app.cache_keeper
        await settled(server)
        expected = await cached_bytes(server, ["bulk0", "bulk1", "bulk2"])
        assert 30_000 < expected < limit
        assert keeper.evictions == 0 and keeper.used == expected
        assert set(private) <= set(blob_bytes(server))
        assert sum(blob_bytes(server).values()) > limit  # storage itself is over: private bytes do not count
        metrics = await (await treq.get(f"{server.root}/metrics", persistent=False)).text()
        assert f"pypicache_storage_used_bytes {float(expected)}" in metrics
        html = await (await treq.get(f"{server.root}/statistics", persistent=False)).text()
        assert "disk used (cached files)" in html
        await keeper._recount()  # the hourly count
        assert keeper.used == expected and keeper.evictions == 0
        assert logs.lines(LogLevel.warn) == []
    finally:
        await server.stop()
    server = await start_server(configuration.load(config_path))  # the start-up count
    try:
        await ready(server)
        await settled(server)
        assert server.app.cache_keeper.used == expected and server.app.cache_keeper.evictions == 0
        assert set(private) <= set(blob_bytes(server))
    finally:
        await server.stop()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_gc_without_bookkeeping_file_on_a_full_disk(tmp_path: Path, fake_upstream: Any) -> None:
    """No server ever ran with a limit (no cache.sqlite3) and no file may
    grow: gc plans in memory from the index, in the order of the blobs'
    last use (the storage's atime/mtime), frees
    space, writes no bookkeeping file, leaves the private upload alone."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    files = add_bulk(fake_upstream, tmp_path / "dists", 4, pad=10_000)
    config_path = write_config(tmp_path, fake_upstream.url, "")
    server = await start_server(configuration.load(config_path))
    try:
        cheap_accounts(server).add_user("alice", PASSWORD)
        private = build_wheel(tmp_path / "private", "acme-tools", "1.0", extra_bytes=30_000).read_bytes()
        assert (await post(server, form(private))).code == 200
        for i in range(4):
            await fetch(server, f"bulk{i}", wheel_name(i))
            await wait_stored(server, wheel_name(i), f"bulk{i}")
        book = tmp_path / "data" / "cache.sqlite3"
        assert not book.exists()
        # The blobs' times say bulk0 was used last (first_seen would put it first).
        now = time.time()
        for i, when in enumerate((now, now - 3000, now - 2000, now - 1000)):
            os.utime(server.app.storage.path_of(hashlib.sha256(files[wheel_name(i)]).hexdigest()), (when, when))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        command = [sys.executable, "-m", "pypicache.cli.admin", "--config", str(config_path), "gc", "--to", "15kB"]
        result = await deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=60, env=env,
                                     stdin=subprocess.DEVNULL, preexec_fn=_no_writes).addTimeout(90, reactor)
        assert result.returncode == 0, result.stderr
        removed = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("removed bulk")]
        assert removed[:2] == [wheel_name(1), wheel_name(2)], result.stdout  # the least recently used first
        assert "still marked stored in the index" in result.stderr  # nothing could be written indeed
        assert not book.exists() and not list(book.parent.glob("*cache.sqlite3*"))
        assert hashlib.sha256(private).hexdigest() in blob_bytes(server)
        assert await cached_bytes(server, [f"bulk{i}" for i in range(4)]) <= 15_000
        for i in range(4):
            assert await fetch(server, f"bulk{i}", wheel_name(i)) == files[wheel_name(i)]
        assert await fetch(server, "acme-tools", WHEEL_NAME) == private
    finally:
        await server.stop()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_files_another_process_stored_are_evicted_without_a_restart(
        tmp_path: Path, fake_upstream: Any, monkeypatch: Any) -> None:
    """``pypicache prefetch`` stores files past the limit while the server
    runs: the next recount learns them and evicts down to the limit; an
    evicted one is still listed and fetched again."""
    from pypicache.services.eviction import CacheKeeper

    monkeypatch.setattr(CacheKeeper, "RECOUNT_INTERVAL", 0.5)
    files = add_bulk(fake_upstream, tmp_path / "dists", 6, pad=15_000)
    limit = 50_000
    config_path = write_config(tmp_path, fake_upstream.url, f"max_size = {limit}\naccess_flush = 0.2")
    server = await start_server(configuration.load(config_path))
    try:
        await ready(server)
        requirements = tmp_path / "requirements.txt"
        requirements.write_text("".join(f"bulk{i}==1.0\n" for i in range(6)))
        prefetched = await run_command(config_path, "prefetch", str(requirements))
        assert prefetched.returncode == 0, (prefetched.stdout, prefetched.stderr)
        keeper = server.app.cache_keeper
        for _ in range(200):
            if keeper.evictions:
                break
            await deferred_sleep(0.05)
        await settled(server)
        assert keeper.evictions > 0
        names = [f"bulk{i}" for i in range(6)]
        assert keeper.used == await cached_bytes(server, names) <= limit
        evicted = [i for i in range(6)
                   if not (await server.app.index.get_project(f"bulk{i}")).file(wheel_name(i)).stored]
        assert evicted
        page = await treq.get(f"{server.simple}bulk{evicted[0]}/", persistent=False)
        assert wheel_name(evicted[0]) in (await page.text())
        assert await fetch(server, f"bulk{evicted[0]}", wheel_name(evicted[0])) == files[wheel_name(evicted[0])]
    finally:
        await server.stop()


def test_seeding_guesses_last_use_and_writes_only_what_is_new() -> None:
    """New rows take the storage's last use, else first_seen; a book that
    knows every file is not written (gc on a full disk, the hourly
    recount); only cached files' blobs and METADATA count, private ones not."""
    from pypicache.services.cachebook import Book

    book = Book.in_memory()
    try:
        sha = [f"{i:064x}" for i in range(5)]
        rows = [("a", "a.whl", sha[0], 100, sha[3], 50.0), ("b", "b.whl", sha[1], 200, None, 10.0)]
        assert book.seed(rows, [sha[2]], lambda s: 5.0 if s == sha[0] else None) == 2
        assert [(r.project, r.last_access) for r in book.victims(None)] == [("a", 5.0), ("b", 10.0)]
        writes = book.writes
        assert book.seed(rows, [sha[2]]) == 0 and book.writes == writes
        assert book.counted([(sha[0], 100), (sha[1], 200), (sha[2], 400), (sha[3], 7), (sha[4], 1000)]) == 307
        book.seed([("c", "c.whl", sha[2], 400, None, 0.0)], [])  # a cached file sharing a private blob
        assert book.counted([(sha[2], 400)]) == 0
    finally:
        book.close()
