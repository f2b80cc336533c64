"""The background scrub: every stored blob is hashed again, slowly, forever.

Verify on read catches a blob rewritten on disk (its change time moves), but
decay that touches no metadata at all (the medium itself) would be served
for as long as the process trusts its first verdict.  The scrub re-hashes
every blob at ``[storage] scrub_rate`` bytes per second, quarantines what
fails and marks the index entries not stored, so the next request fetches
good bytes from the upstream.  An uploaded file has no upstream: it is
answered 404, never with wrong bytes, and the log says to upload it again.

Real servers on 127.0.0.1 and the fake upstream; a pass is driven directly
(``app.scrubber.run_pass()``) rather than waited for.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from pypicache.daemon import config as configuration
from pypicache.errors import ConfigError
from pypicache.interfaces import IBlobInventory
from pypicache.services.scrub import Scrubber
from pypicache.providers.storage import filesystem, memory
from pypicache.testing import provider_context, write_blob, wait  # noqa: F401 (fixture)
from tests.builders import wheel_metadata
from tests.server import make_config, start_server
from tests.blobs import WHEEL_1, WHEEL_2, deferred_sleep, get, later_ctime_tick, rot, wait_stored
from tests.uploads import NAME, WHEEL_NAME, cheap_accounts, form, good_wheel, post


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scrub_config(tmp_path: Any, upstream_url: str, rate: int = 64 * 1024 * 1024) -> configuration.Config:
    config = make_config(tmp_path, upstream_url)
    return attrs.evolve(config, storage=configuration.ProviderConfig("filesystem", {"scrub_rate": rate}))


@pytest_twisted.async_yield_fixture
async def server(tmp_path, fake_upstream):
    srv = await start_server(scrub_config(tmp_path, fake_upstream.url))
    try:
        yield srv
    finally:
        await srv.stop()


async def metadata_stored(server: Any, filename: str) -> None:
    for _ in range(100):
        record = await server.app.index.get_project("tinyproj")
        if record.file(filename).metadata_stored:
            return
        await deferred_sleep(0.02)
    raise AssertionError(f"{filename}.metadata was not indexed")


# ---------------------------------------------------------------- end to end


@pytest_twisted.ensureDeferred
async def test_scrub_quarantines_rot_and_the_next_request_fetches_good_bytes(server, fake_upstream, logs):
    good = fake_upstream.files[WHEEL_1].read_bytes()
    good_meta = wheel_metadata(fake_upstream.files[WHEEL_1])
    other = fake_upstream.files[WHEEL_2].read_bytes()
    for name in (WHEEL_1, WHEEL_2):
        code, body, _ = await get(server.root + f"/files/tinyproj/{name}")
        assert code == 200
        await wait_stored(server, name)
    code, body, _ = await get(server.root + f"/files/tinyproj/{WHEEL_1}.metadata")
    assert code == 200 and body == good_meta
    await metadata_stored(server, WHEEL_1)
    storage = server.app.storage
    await later_ctime_tick()
    rot(storage.path_of(sha(good)), len(good) // 2)
    rot(storage.path_of(sha(good_meta)), 3)

    report = await wait(server.app.scrubber.run_pass(), 30)
    assert sorted(report.corrupt) == sorted([sha(good), sha(good_meta)])
    assert report.blobs == 3 and report.bytes >= len(good) + len(other)
    assert sorted(report.unstored) == [("tinyproj", WHEEL_1, "file"), ("tinyproj", WHEEL_1, "metadata")]
    assert report.lost == []
    assert sorted(p.name for p in storage.quarantined()) == sorted([sha(good), sha(good_meta)])
    record = await server.app.index.get_project("tinyproj")
    assert not record.file(WHEEL_1).stored and not record.file(WHEEL_1).metadata_stored
    assert record.file(WHEEL_2).stored
    assert len(logs.errors_about(sha(good))) >= 1

    fake_upstream.reset_log()
    code, body, _ = await get(server.root + f"/local/files/tinyproj/{WHEEL_1}")
    assert code == 404
    code, body, _ = await get(server.root + f"/files/tinyproj/{WHEEL_1}")
    assert code == 200 and body == good
    code, body, _ = await get(server.root + f"/files/tinyproj/{WHEEL_1}.metadata")
    assert code == 200 and body == good_meta
    assert fake_upstream.count(f"/files/{WHEEL_1}") == 2  # the file and its .metadata, once each
    assert fake_upstream.count(f"/files/{WHEEL_1}.metadata") == 1
    await wait_stored(server, WHEEL_1)
    assert storage.path_of(sha(good)).read_bytes() == good
    assert (await wait(server.app.scrubber.run_pass(), 30)).corrupt == []


@pytest_twisted.ensureDeferred
async def test_scrub_of_a_corrupt_upload_answers_404_not_wrong_bytes(tmp_path, fake_upstream, logs):
    srv = await start_server(scrub_config(tmp_path, fake_upstream.url))
    try:
        cheap_accounts(srv).add_user("alice", "correct horse battery")
        data = good_wheel(tmp_path)
        answer = await post(srv, form(data))
        assert answer.code == 200, answer.body
        url = srv.root + f"/files/{NAME}/{WHEEL_NAME}"
        code, body, _ = await get(url)
        assert code == 200 and body == data
        rot(srv.app.storage.path_of(sha(data)), 10)
        report = await wait(srv.app.scrubber.run_pass(), 30)
        assert report.corrupt == [sha(data)]
        assert report.lost == [(NAME, WHEEL_NAME, "file")]
        assert any(WHEEL_NAME in line and "upload it again" in line for line in logs.lines())
        for where in (url, srv.root + f"/local/files/{NAME}/{WHEEL_NAME}"):
            code, body, _ = await get(where)
            assert code == 404, (where, code)
        answer = await post(srv, form(data))  # what the log tells the administrator to do
        assert answer.code == 200, answer.body
        code, body, _ = await get(url)
        assert code == 200 and body == data
    finally:
        await srv.stop()


# ----------------------------------------------------------------- the pace


@pytest_twisted.ensureDeferred
async def test_scrub_keeps_to_its_rate(tmp_path, provider_context):
    store = filesystem.factory.create({"path": str(tmp_path / "store"), "scrub_rate": 100_000},
                                      provider_context)
    for size in (150_000, 50_000):
        await write_blob(store, os.urandom(size))
    clock = task.Clock()
    scrubber = Scrubber(store, None, rate=store.scrub_rate, reactor=provider_context.reactor,
                        threadpool=provider_context.threadpool, clock=clock)
    done = scrubber.run_pass()
    waited = 0.0
    for _ in range(500):
        if done.called:
            break
        calls = clock.getDelayedCalls()
        if calls:
            step = calls[0].getTime() - clock.seconds()
            waited += step
            clock.advance(step)
        else:
            await deferred_sleep(0.005)
    report = await wait(done)
    assert report.blobs == 2 and report.bytes == 200_000 and report.corrupt == []
    assert waited >= 2.0, f"200 kB at 100 kB/s took {waited} s of the clock"


@pytest_twisted.ensureDeferred
async def test_scrub_runs_with_the_app_and_stops_on_close(tmp_path, fake_upstream):
    srv = await start_server(scrub_config(tmp_path, fake_upstream.url))
    scrubber = srv.app.scrubber
    try:
        assert scrubber.running
    finally:
        await srv.stop()
    assert not scrubber.running


@pytest_twisted.ensureDeferred
async def test_stop_ends_a_pass_in_progress(tmp_path, provider_context):
    store = filesystem.factory.create({"path": str(tmp_path / "store")}, provider_context)
    await write_blob(store, os.urandom(10_000))
    scrubber = Scrubber(store, None, rate=1, reactor=provider_context.reactor,
                        threadpool=provider_context.threadpool)  # 1 byte/s: would take hours
    scrubber.start()
    ended = []
    scrubber.run_pass().addErrback(lambda f: ended.append(f.check(defer.CancelledError)))
    await deferred_sleep(0.1)
    await wait(scrubber.stop(), 5)
    assert ended == [defer.CancelledError] and not scrubber.running


# ---------------------------------------------------------------- the option


def test_scrub_rate_option(provider_context):
    assert filesystem.factory.create({}, provider_context).scrub_rate == 1024 * 1024
    assert filesystem.factory.create({"scrub_rate": 0}, provider_context).scrub_rate == 0
    for bad in (-1, "fast", 1.5, True):
        with pytest.raises(ConfigError, match="storage.scrub_rate"):
            filesystem.factory.create({"scrub_rate": bad}, provider_context)


@pytest_twisted.ensureDeferred
async def test_rate_zero_means_no_scrub(tmp_path, fake_upstream):
    srv = await start_server(scrub_config(tmp_path, fake_upstream.url, rate=0))
    try:
        assert srv.app.scrubber is None
    finally:
        await srv.stop()


def test_storages_declare_the_inventory(provider_context):
    for store in (filesystem.factory.create({}, provider_context), memory.factory.create({}, provider_context)):
        assert IBlobInventory.providedBy(store) and verifyObject(IBlobInventory, store)


@pytest_twisted.ensureDeferred
async def test_memory_storage_scrub_finds_a_changed_blob(provider_context):
    store = memory.factory.create({}, provider_context)
    info = await write_blob(store, b"some bytes")
    assert list(store.iter_blobs()) == [(info.sha256, 10)]
    store.blobs[info.sha256] = b"some bytez"  # the test double's way to rot
    result = await wait(store.check_blob(info.sha256, remove_corrupt=True))
    assert result.status == "corrupt" and result.removed and info.sha256 not in store.blobs
