"""The catalogue: every index write keeps the served pages in step, by itself.

No sockets: the server is built on memory providers and driven through
``treq.testing.StubTreq``; the page fast path is asked directly.  The
mirror's clock stands still, so its ``local_recheck`` never re-reads a
private project: only the catalogue can bring a page up to date.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from pypicache.daemon import config as configuration
from pypicache.interfaces import IIndex
from pypicache.model import BlobInfo
from pypicache.providers.index.memory import MemoryIndex
from pypicache.services.catalogue import READS, WRITES, CataloguedIndex
from pypicache.services.mirror import Mirror
from pypicache.testing import local_file

JSON = "application/vnd.pypi.simple.v1+json"


def test_every_index_method_is_a_read_or_a_noted_write() -> None:
    """A method added to IIndex must be classified here, or a write could
    bypass the pages."""
    names = set(IIndex.names())
    assert names <= READS | WRITES, names - (READS | WRITES)
    assert not READS & WRITES
    for name in names:
        assert name in vars(CataloguedIndex), f"CataloguedIndex does not forward {name}"


def test_it_is_an_index_and_keeps_the_providers_capabilities() -> None:
    class IExtra(Interface):
        pass

    @implementer(IIndex, IExtra)
    class Extra(MemoryIndex):
        flavour = "extra"

    wrapped = CataloguedIndex(Extra())
    verifyObject(IIndex, wrapped)
    assert IExtra.providedBy(wrapped) and wrapped.flavour == "extra"
    assert not IExtra.providedBy(CataloguedIndex(MemoryIndex()))
    with pytest.raises(AttributeError):
        CataloguedIndex(MemoryIndex()).flavour  # noqa: B018 -- absent stays absent


def test_a_mirror_follows_the_index_it_is_given() -> None:
    """A raw provider is wrapped; a catalogue is followed as it is."""
    clock = task.Clock()
    raw = MemoryIndex()
    mirror = Mirror(index=raw, upstream=None, clock=clock)
    assert isinstance(mirror.index, CataloguedIndex) and mirror.index.provider is raw
    catalogue = CataloguedIndex(MemoryIndex())
    assert Mirror(index=catalogue, upstream=None, clock=clock).index is catalogue

    record = mirror.index.add_file("acme", local_file("acme-1.0.tar.gz")).result
    assert mirror.cached("acme") is record
    record = mirror.index.set_yanked("acme", "acme-1.0.tar.gz", True, "broken").result
    assert mirror.cached("acme") is record and record.files[0].yanked


def test_optional_writes_are_noted_too() -> None:
    """``mark_unstored`` (verify's and the scrub's repair) is not in IIndex:
    the catalogue notes it when the provider has it."""

    class Repairable(MemoryIndex):
        def mark_unstored(self, name: str, filename: str, metadata: bool = False) -> Any:
            import attrs

            record = self._projects[name]
            files = tuple(attrs.evolve(f, stored=False) if f.filename == filename else f for f in record.files)
            record = self._projects[name] = attrs.evolve(record, files=files)
            return defer.succeed(record)

    mirror = Mirror(index=Repairable(), upstream=None, clock=task.Clock())
    mirror.index.add_file("acme", local_file("acme-1.0.tar.gz"))
    mirror.index.mark_unstored("acme", "acme-1.0.tar.gz", False)
    assert not mirror.cached("acme").files[0].stored


def test_a_failed_write_leaves_memory_alone() -> None:
    mirror = Mirror(index=MemoryIndex(), upstream=None, clock=task.Clock())
    before = mirror.index.add_file("acme", local_file("acme-1.0.tar.gz")).result
    failed = mirror.index.set_yanked("acme", "acme-9.0.tar.gz", True, None)
    assert failed.called and isinstance(failed.result.value, KeyError)
    failed.addErrback(lambda _: None)
    assert mirror.cached("acme") is before


# ------------------------------------------------------- the served pages


@pytest.fixture
def app(tmp_path: Path) -> Any:
    from twisted.internet import reactor

    from pypicache.daemon.app import build

    cfg = configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False},
        "storage": {"provider": "memory"},
        "index": {"provider": "memory"},
        "upstream": {"url": "http://127.0.0.1:9/simple/"},  # never asked: the projects are private
    }, source="<test>")
    built = build(cfg, reactor)
    clock = task.Clock()
    clock.advance(reactor.seconds())
    built.mirror.clock = clock
    yield built
    pytest_twisted.blockon(defer.ensureDeferred(built.close()))


async def page(app: Any, name: str) -> list[tuple[str, Any]]:
    """(filename, yanked) of the page, asked through the ordinary route, and
    checked to be what the fast path answers from memory right after."""
    from treq.testing import StubTreq

    stub = StubTreq(app.site.resource)
    response = await stub.get(f"http://pypicache.test/simple/{name}/", headers={"accept": [JSON]})
    body = await stub.content(response)
    assert response.code == 200, body
    status, _, fast = app.site.resource.views[0].fast_page(name, JSON.encode(), None, None)
    assert status == 200 and fast == body
    return [(f["filename"], f.get("yanked", False)) for f in json.loads(body)["files"]]


@pytest_twisted.ensureDeferred
async def test_a_newcomers_write_path_keeps_the_page_in_step(app: Any) -> None:
    """Code that writes through the app's index directly, the way a newcomer
    adds a feature, needs no call to the mirror for the page to follow."""
    index = app.index
    await index.add_file("acme", local_file("acme-1.0-py3-none-any.whl"))
    assert await page(app, "acme") == [("acme-1.0-py3-none-any.whl", False)]

    await index.add_file("acme", local_file("acme-2.0-py3-none-any.whl"))
    assert await page(app, "acme") == [("acme-1.0-py3-none-any.whl", False), ("acme-2.0-py3-none-any.whl", False)]

    await index.set_yanked("acme", "acme-1.0-py3-none-any.whl", True, "broken")
    assert (await page(app, "acme"))[0] == ("acme-1.0-py3-none-any.whl", "broken")

    await index.remove_file("acme", "acme-2.0-py3-none-any.whl")
    assert [f for f, _ in await page(app, "acme")] == ["acme-1.0-py3-none-any.whl"]


@pytest_twisted.ensureDeferred
async def test_a_stored_mark_reaches_the_local_view(app: Any) -> None:
    """The standalone view lists stored files only: marking one stored
    through the index shows it there at once."""
    from treq.testing import StubTreq

    wheel = local_file("acme-1.0-py3-none-any.whl", stored=False)
    await app.index.add_file("acme", wheel)
    stub = StubTreq(app.site.resource)

    async def local() -> list[str]:
        response = await stub.get("http://pypicache.test/local/simple/acme/", headers={"accept": [JSON]})
        body = await stub.content(response)
        if response.code == 404:  # "no files of acme are stored here"
            return []
        return [f["filename"] for f in json.loads(body)["files"]]

    assert await local() == []
    await app.index.mark_stored("acme", wheel.filename, BlobInfo(wheel.sha256, 1000))
    assert await local() == [wheel.filename]
