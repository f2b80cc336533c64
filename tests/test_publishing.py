"""The publishing and management services without HTTP: memory providers,
a stub upstream and stub accounts, a Clock, and validation replaced by the
``in_thread`` collaborator handing back a prepared upload."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, task

from pypicache.model import UpstreamError, UpstreamNotFound
from pypicache.providers.index.memory import MemoryIndex
from pypicache.providers.storage.memory import MemoryStorage
from pypicache.services.accounts import Identity
from pypicache.services.management import Management, NoSuchProject, NotPrivate, NoUploadedFile
from pypicache.services.management import NotAllowed as MayNotManage
from pypicache.services.mirror import Mirror
from pypicache.services.publishing import FilenameUsed, NotAllowed, Publisher, UpstreamUnknown
from pypicache.testing import index_file, index_page, local_file
from pypicache.uploads.multipart import UploadedFile
from pypicache.uploads.validate import ValidUpload

ALICE = Identity("alice")
BOB = Identity("bob")
WHEEL = "acme-1.0-py3-none-any.whl"


class Accounts:
    """Maintainers by project, as the real Accounts keeps them."""

    def __init__(self) -> None:
        self.granted: dict[str, set[str]] = {}

    def maintainers(self, name: str) -> defer.Deferred:
        return defer.succeed(sorted(self.granted.get(name, ())))

    def grant(self, name: str, user: str) -> defer.Deferred:
        self.granted.setdefault(name, set()).add(user)
        return defer.succeed(None)

    def revoke(self, name: str, user: str) -> defer.Deferred:
        self.granted.get(name, set()).discard(user)
        return defer.succeed(None)


class Upstream:
    """Knows the names in ``public``; ``fail`` makes it unreachable."""

    def __init__(self, public: tuple[str, ...] = ()) -> None:
        self.public = public
        self.fail: Exception | None = None

    def fetch_project(self, name: str, validators: Any) -> defer.Deferred:
        if self.fail is not None:
            return defer.fail(self.fail)
        if name in self.public:
            return defer.succeed(index_page(name, index_file(f"{name}-1.0.tar.gz")))
        return defer.fail(UpstreamNotFound(name))


@attrs.define
class World:
    publisher: Publisher
    mirror: Mirror
    storage: MemoryStorage
    accounts: Accounts
    upstream: Upstream
    tmp_path: Path

    def upload(self, filename: str = WHEEL, data: bytes = b"wheel bytes", project: str = "acme") -> ValidUpload:
        """What validate_upload would hand back for an upload of ``data``."""
        path = self.tmp_path / f"spool-{hashlib.sha256(data + filename.encode()).hexdigest()[:12]}"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        spooled = UploadedFile(path=path, filename=filename, size=len(data), sha256=sha, md5="", blake2_256="")
        return ValidUpload(project=project, version="1.0", filename=filename, filetype="bdist_wheel",
                           metadata_bytes=b"Metadata-Version: 2.1\nName: acme\nVersion: 1.0\n", metadata={},
                           requires_python=">=3.9", file=spooled, python_version="py3")

    async def publish(self, identity: Identity, valid: ValidUpload) -> Any:
        return await self.publisher.publish(identity, valid)


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = task.Clock()
    clock.advance(1_700_000_000)
    storage = MemoryStorage()
    mirror = Mirror(index=MemoryIndex(), upstream=None, clock=clock)
    accounts, upstream = Accounts(), Upstream(public=("requests",))

    def in_thread(f: Any, form: Any) -> defer.Deferred:
        return defer.succeed(form)  # the "form" is already a ValidUpload

    publisher = Publisher(storage=storage, index=mirror.index, accounts=accounts, mirror=mirror,
                          upstream=upstream, clock=clock, claim={"claimed": frozenset({"bob"})},
                          in_thread=in_thread)
    return World(publisher, mirror, storage, accounts, upstream, tmp_path)


@pytest_twisted.ensureDeferred
async def test_first_upload_publishes_and_grants(world: World) -> None:
    valid = world.upload()
    result = await world.publish(ALICE, valid)
    assert (result.project, result.filename, result.identical) == ("acme", WHEEL, False)
    assert world.accounts.granted == {"acme": {"alice"}}
    record = world.mirror.cached("acme")  # the catalogue updated the memory: no reload
    f = record.file(WHEEL)
    assert record.origin == "local" and f.stored and f.metadata_stored and f.sha256 == valid.file.sha256
    assert f.upload_time == "2023-11-14T22:13:20.000000Z" and f.requires_python == ">=3.9"
    assert await world.storage.exists(f.sha256) and await world.storage.exists(f.metadata_sha256)


@pytest_twisted.ensureDeferred
async def test_identical_reupload_is_a_success_and_other_bytes_are_not(world: World) -> None:
    await world.publish(ALICE, world.upload())
    again = await world.publish(ALICE, world.upload())
    assert again.identical
    with pytest.raises(FilenameUsed, match="File already exists"):
        await world.publish(ALICE, world.upload(data=b"other bytes"))
    await world.mirror.index.remove_file("acme", WHEEL)
    with pytest.raises(FilenameUsed):  # even after deletion
        await world.publish(ALICE, world.upload())


@pytest_twisted.ensureDeferred
async def test_only_maintainers_upload_to_an_existing_name(world: World) -> None:
    await world.publish(ALICE, world.upload())
    with pytest.raises(NotAllowed, match="bob may not upload to acme"):
        await world.publish(BOB, world.upload("acme-2.0-py3-none-any.whl"))
    with pytest.raises(NotAllowed, match="limited to other projects"):
        await world.publish(attrs.evolve(ALICE, projects=frozenset({"other"})),
                            world.upload("acme-2.0-py3-none-any.whl"))


@pytest_twisted.ensureDeferred
async def test_public_names_need_a_claim(world: World) -> None:
    with pytest.raises(NotAllowed, match="exists on the upstream index"):
        await world.publish(ALICE, world.upload("requests-1.0-py3-none-any.whl", project="requests"))
    assert await world.mirror.index.get_project("requests") is None and world.accounts.granted == {}
    with pytest.raises(NotAllowed, match="alice may not upload to claimed"):
        await world.publish(ALICE, world.upload("claimed-1.0-py3-none-any.whl", project="claimed"))
    result = await world.publish(BOB, world.upload("claimed-1.0-py3-none-any.whl", project="claimed"))
    assert not result.identical and world.mirror.cached("claimed").origin == "local"


@pytest_twisted.ensureDeferred
async def test_an_unreachable_upstream_refuses_new_names(world: World) -> None:
    e = UpstreamError("refused")
    e.retry_after = "3"
    world.upstream.fail = e
    with pytest.raises(UpstreamUnknown) as caught:
        await world.publish(ALICE, world.upload())
    assert caught.value.retry_after == 3
    world.mirror.offline = True
    with pytest.raises(UpstreamUnknown, match="offline") as caught:
        await world.publish(ALICE, world.upload())
    assert caught.value.retry_after is None
    assert await world.mirror.index.get_project("acme") is None


@pytest_twisted.ensureDeferred
async def test_a_failed_index_write_takes_the_grant_back(world: World) -> None:
    def broken(name: str, record: Any) -> defer.Deferred:
        return defer.fail(OSError("disk full"))

    world.mirror.index.provider.add_file = broken
    with pytest.raises(OSError):
        await world.publish(ALICE, world.upload())
    assert world.accounts.granted == {"acme": set()}
    assert world.mirror.cached("acme") is None


@pytest_twisted.ensureDeferred
async def test_an_identical_reupload_restores_a_lost_blob(world: World) -> None:
    valid = world.upload()
    await world.publish(ALICE, valid)
    await world.storage.delete(valid.file.sha256)  # e.g. verify --repair removed a corrupt copy
    assert (await world.publish(ALICE, world.upload())).identical
    assert await world.storage.exists(valid.file.sha256)
    assert world.mirror.cached("acme").file(WHEEL).stored


# ----------------------------------------------------------- management


@pytest_twisted.ensureDeferred
async def test_management_selects_uploaded_files_by_the_one_rule() -> None:
    index = MemoryIndex()
    accounts = Accounts()
    await index.add_file("acme", local_file("acme-1.0-py3-none-any.whl"))
    await index.add_file("acme", local_file("acme-1.0.tar.gz"))
    await index.save_upstream_page(index_page("public", index_file("public-1.0.tar.gz")), 1.0)
    accounts.granted["acme"] = {"alice"}
    management = Management(index, accounts=accounts, claim={"acme": frozenset({"carol"})})

    files = await management.select("acme", "1.0", identity=ALICE)
    assert sorted(f.filename for f in files) == ["acme-1.0-py3-none-any.whl", "acme-1.0.tar.gz"]
    assert len(await management.select("acme", "1.0", identity=Identity("carol"))) == 2  # a claim's owner
    assert len(await management.select("acme", "acme-1.0.tar.gz")) == 1  # the command: no identity
    with pytest.raises(MayNotManage):
        await management.select("acme", "1.0", identity=BOB)
    with pytest.raises(NoSuchProject):
        await management.select("nothing", "1.0", identity=ALICE)
    with pytest.raises(NotPrivate):
        await management.select("public", "1.0")
    with pytest.raises(NoUploadedFile):
        await management.select("acme", "2.0", identity=ALICE)


@pytest_twisted.ensureDeferred
async def test_management_applies_through_the_catalogue() -> None:
    """Given the server's index, every change reaches the served pages."""
    mirror = Mirror(index=MemoryIndex(), upstream=None, clock=task.Clock())
    await mirror.index.add_file("acme", local_file(WHEEL))
    management = Management(mirror.index)
    done: list[str] = []
    await management.apply("yank", "acme", await management.select("acme", WHEEL), reason="broken",
                           done=lambda f: done.append(f.filename))
    assert done == [WHEEL] and mirror.cached("acme").file(WHEEL).yanked_reason == "broken"
    await management.apply("unyank", "acme", await management.select("acme", WHEEL), reason="ignored")
    assert not mirror.cached("acme").file(WHEEL).yanked
    await management.apply("delete", "acme", await management.select("acme", WHEEL))
    assert mirror.cached("acme").files == ()
    with pytest.raises(ValueError):
        await management.apply("burn", "acme", [])
