"""Optional provider capabilities: declared as interfaces, checked with providedBy.

Each capability in pypicache.interfaces (IBlobInventory, IBlobQuarantine,
IIndexRepair, IClosable) is checked here twice: the built-in providers declare
it and conform to it, and a provider without it degrades the way
docs/providers.md says -- even when it happens to have a method of the same
name, since nothing probes for names any more.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pypicache.daemon.app import App
from pypicache.interfaces import (
    IBlobInventory,
    IBlobQuarantine,
    IClosable,
    IIndex,
    IIndexRepair,
    IStorage,
    IUpstream,
)
from pypicache.model import BlobInfo
from pypicache.providers.index import memory as memory_index
from pypicache.providers.index import sqlite
from pypicache.providers.storage import filesystem
from pypicache.providers.storage import memory as memory_storage
from pypicache.providers.upstream.breaker import BreakerUpstream
from pypicache.providers.upstream.simple import factory as simple_factory
from pypicache.services import verify as verifying
from pypicache.services.scrub import Scrubber
from pypicache.testing import index_file, index_page, local_file, provider_context, wait, write_blob  # noqa: F401

GOOD = b"the bytes of a wheel"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------ declarations


def test_built_in_storages_declare_their_capabilities(tmp_path, provider_context):
    fs = filesystem.factory.create({"path": str(tmp_path / "store")}, provider_context)
    mem = memory_storage.factory.create({}, provider_context)
    for store in (fs, mem):
        assert verifyObject(IStorage, store) and verifyObject(IBlobInventory, store)
        assert not IClosable.providedBy(store)  # nothing to release
    assert verifyObject(IBlobQuarantine, fs)
    assert not IBlobQuarantine.providedBy(mem)


@pytest_twisted.ensureDeferred
async def test_built_in_indexes_declare_repair(provider_context):
    for index in (memory_index.factory.create({}, provider_context), sqlite.factory.create({}, provider_context)):
        try:
            assert verifyObject(IIndex, index) and verifyObject(IIndexRepair, index)
        finally:
            await wait(index.close())


@pytest_twisted.ensureDeferred
async def test_built_in_upstreams_declare_closable(provider_context):
    upstream = simple_factory.create({"url": "http://127.0.0.1:9/simple/"}, provider_context)
    breaker = BreakerUpstream(upstream, task.Clock(), threshold=3, cooldown=30)
    try:
        for each in (upstream, breaker):
            assert verifyObject(IUpstream, each) and verifyObject(IClosable, each)
    finally:
        await wait(breaker.close())


# ----------------------------------------------------- IIndexRepair's rules


@pytest.fixture(params=["memory", "sqlite"])
def any_index(request: Any, provider_context: Any) -> Any:
    module = memory_index if request.param == "memory" else sqlite
    index = module.factory.create({}, provider_context)
    yield index
    pytest_twisted.blockon(index.close())


@pytest_twisted.ensureDeferred
async def test_stored_with_blob_and_mark_unstored(any_index):
    index = any_index
    shared = sha(b"one blob, two projects")
    await wait(index.save_upstream_page(index_page("alpha", index_file("a-1.0.tar.gz", hashes={"sha256": shared})),
                                        1.0))
    await wait(index.add_file("beta", local_file("b-1.0-py3-none-any.whl",
                                                 core_metadata={"sha256": shared})))
    assert await wait(index.stored_with_blob(shared)) == [("beta", "b-1.0-py3-none-any.whl", "metadata")]
    await wait(index.mark_stored("alpha", "a-1.0.tar.gz", BlobInfo(sha256=shared, size=7)))
    assert await wait(index.stored_with_blob(shared)) == [("alpha", "a-1.0.tar.gz", "file"),
                                                          ("beta", "b-1.0-py3-none-any.whl", "metadata")]

    record = await wait(index.mark_unstored("beta", "b-1.0-py3-none-any.whl", True))
    f = record.file("b-1.0-py3-none-any.whl")
    assert f.stored and not f.metadata_stored and f.metadata_sha256 == shared, "the digest stays"
    record = await wait(index.mark_unstored("alpha", "a-1.0.tar.gz", False))
    assert not record.file("a-1.0.tar.gz").stored and record.file("a-1.0.tar.gz").sha256 == shared
    assert (await wait(index.get_project("alpha"))).file("a-1.0.tar.gz").stored is False
    assert await wait(index.stored_with_blob(shared)) == []
    again = await wait(index.mark_unstored("alpha", "a-1.0.tar.gz", False))
    assert again == record, "unmarking an unstored file changes nothing"
    with pytest.raises(KeyError):
        await wait(index.mark_unstored("alpha", "nope-1.0.tar.gz", False))


# ------------------------------------------------- providers without them


@implementer(IStorage)
class PlainStorage:
    """Only IStorage, though the storage inside has every extra method:
    a name that happens to match must not count as a capability."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@implementer(IIndex)
class PlainIndex:
    """Only IIndex (its ``mark_unstored`` is never called)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _corrupt_setup(provider_context: Any) -> tuple[Any, Any, str]:
    store = memory_storage.factory.create({}, provider_context)
    info = await write_blob(store, GOOD)
    store.blobs[info.sha256] = b"the bytes of a wheeL"  # rotten
    index = memory_index.factory.create({}, provider_context)
    await index.save_upstream_page(index_page("proj", index_file("proj-1.0.tar.gz", hashes={"sha256": info.sha256})),
                                   1.0)
    await index.mark_stored("proj", "proj-1.0.tar.gz", info)
    return store, index, info.sha256


@pytest_twisted.ensureDeferred
async def test_verify_without_the_capabilities(provider_context):
    """Checked through readers; no orphans listed; the index left alone."""
    store, index, key = await _corrupt_setup(provider_context)
    report = await verifying.verify(PlainIndex(index), PlainStorage(store), repair=True)
    [problem] = report.problems
    assert problem.kind == "corrupt" and problem.action == "blob removed, index unchanged"
    assert not report.listed_blobs and report.quarantined == 0
    assert key not in store.blobs
    assert (await index.get_project("proj")).file("proj-1.0.tar.gz").stored, "PlainIndex cannot be told"


@pytest_twisted.ensureDeferred
async def test_verify_with_the_capabilities(provider_context):
    store, index, key = await _corrupt_setup(provider_context)
    report = await verifying.verify(index, store, repair=True)
    [problem] = report.problems
    assert problem.kind == "corrupt" and problem.action == "blob removed, marked not stored"
    assert report.listed_blobs and report.ok
    assert not (await index.get_project("proj")).file("proj-1.0.tar.gz").stored


@pytest_twisted.ensureDeferred
async def test_verify_deletes_quarantined_blobs_through_the_storage(tmp_path, provider_context):
    store = filesystem.factory.create({"path": str(tmp_path / "store")}, provider_context)
    info = await write_blob(store, GOOD)
    store.path_of(info.sha256).write_bytes(b"X" * len(GOOD))
    assert (await wait(store.check_blob(info.sha256, remove_corrupt=True))).removed
    index = memory_index.factory.create({}, provider_context)
    report = await verifying.verify(index, store)
    assert report.quarantined == 1 and report.quarantine_deleted == 0
    report = await verifying.verify(index, store, repair=True)
    assert report.quarantined == 1 and report.quarantine_deleted == 1
    assert store.quarantined() == []
    with pytest.raises(ValueError):
        store.discard_quarantined(tmp_path / "elsewhere")


@pytest_twisted.ensureDeferred
async def test_scrub_with_and_without_index_repair(provider_context):
    for repairable in (True, False):
        store, index, key = await _corrupt_setup(provider_context)
        scrubber = Scrubber(store, index if repairable else PlainIndex(index), rate=10**9,
                            reactor=provider_context.reactor, threadpool=provider_context.threadpool)
        report = await wait(scrubber.run_pass())
        assert report.corrupt == [key] and key not in store.blobs
        stored = (await index.get_project("proj")).file("proj-1.0.tar.gz").stored
        if repairable:
            assert report.unstored == [("proj", "proj-1.0.tar.gz", "file")] and not stored
        else:
            assert report.unstored == [] and stored


# ---------------------------------------------------------------- IClosable


class Closer:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> defer.Deferred[None]:
        self.closed += 1
        return defer.succeed(None)


@implementer(IClosable)
class DeclaredCloser(Closer):
    pass


@pytest_twisted.ensureDeferred
async def test_app_closes_only_what_declares_iclosable(provider_context):
    from twisted.internet import reactor

    for upstream_kind, storage_kind in ((Closer, DeclaredCloser), (DeclaredCloser, Closer)):
        upstream, storage = upstream_kind(), storage_kind()
        pool = ThreadPool(0, 1)
        pool.start()
        app = App(config=None, reactor=reactor, threadpool=pool, storage=storage,
                  index=memory_index.factory.create({}, provider_context), upstream=upstream,
                  mirror=None, downloader=None, site=None, stats=None)  # type: ignore[arg-type]
        await app.close()
        assert (upstream.closed, storage.closed) == (int(upstream_kind is DeclaredCloser),
                                                     int(storage_kind is DeclaredCloser))
        assert not pool.started


@pytest_twisted.ensureDeferred
async def test_breaker_closes_a_closable_inner_only():
    for kind in (Closer, DeclaredCloser):
        inner = kind()
        inner.url = "http://upstream.invalid/simple/"
        await BreakerUpstream(inner, task.Clock(), threshold=3, cooldown=30).close()
        assert inner.closed == (kind is DeclaredCloser)


def test_interfaces_name_every_capability():
    """The module docstring lists them, so a plugin author finds them."""
    import pypicache.interfaces as interfaces

    for name in ("IBlobInventory", "IBlobQuarantine", "IIndexRepair", "IClosable"):
        assert f":class:`{name}`" in interfaces.__doc__
