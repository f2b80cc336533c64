"""The storage contract against both built-in providers, plus what only the
file system provider promises (layout, crash clean-up, EXDEV, options)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from pypicache import providers
from pypicache.errors import ConfigError
from pypicache.interfaces import IProviderFactory, IStorage
from pypicache.model import BlobInfo
from pypicache.providers.storage import filesystem, memory
from pypicache.testing import (
    StorageContract,
    provider_context,  # noqa: F401 - a fixture
    read_blob,
    sha256_of,
    wait,
    write_blob,
)


class TestFilesystemContract(StorageContract):
    def make_storage(self, tmp_path, context):
        return filesystem.factory.create({"path": str(tmp_path / "store")}, context)


class TestFilesystemNoFsyncContract(StorageContract):
    def make_storage(self, tmp_path, context):
        return filesystem.factory.create({"path": str(tmp_path / "store"), "fsync": False}, context)


class TestMemoryContract(StorageContract):
    def make_storage(self, tmp_path, context):
        return memory.factory.create({}, context)


# ------------------------------------------------------------- keys


def test_one_key_check_for_every_storage():
    """Both built-ins use the shared check (third-party storages may too):
    a fix to it reaches every provider at once."""
    from pypicache.providers.storage.keys import check_key

    assert filesystem.check_key is check_key and memory.check_key is check_key
    good = "a" * 64
    assert check_key(good) == good
    for bad in (good + "\n", good.upper(), "a" * 63, "../" + "a" * 61, None, b"a" * 64):
        with pytest.raises(ValueError):
            check_key(bad)


# ------------------------------------------------------------ factories


@pytest.mark.parametrize("module", [filesystem, memory])
def test_factory_provides_interface(module):
    assert verifyObject(IProviderFactory, module.factory)
    assert module.factory.kind == "storage"


@pytest.mark.parametrize("name", ["filesystem", "memory"])
def test_loads_by_name(name, provider_context):
    storage = providers.create("storage", name, {}, provider_context)
    assert IStorage.providedBy(storage)


def test_default_path_is_under_data_dir(provider_context):
    storage = providers.create("storage", "filesystem", {}, provider_context)
    assert storage.root == provider_context.data_dir / "files"
    assert storage.root.is_dir() and (storage.root / ".tmp").is_dir()


def test_relative_path_is_relative_to_data_dir(provider_context):
    storage = filesystem.factory.create({"path": "blobs/here"}, provider_context)
    assert storage.root == provider_context.data_dir / "blobs" / "here"
    assert storage.root.is_dir()


def test_absolute_path(provider_context, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    storage = filesystem.factory.create({"path": str(elsewhere)}, provider_context)
    assert storage.root == elsewhere


@pytest.mark.parametrize("options, key", [
    ({"bogus": 1}, "storage.bogus"),
    ({"fsync": "yes"}, "storage.fsync"),
    ({"path": 3}, "storage.path"),
])
def test_bad_filesystem_options(options, key, provider_context):
    with pytest.raises(ConfigError, match=key):
        filesystem.factory.create(options, provider_context)


def test_memory_takes_no_options(provider_context):
    with pytest.raises(ConfigError, match="storage.path"):
        memory.factory.create({"path": "x"}, provider_context)


# ------------------------------------------------------------ file system


@pytest.fixture
def fs_storage(tmp_path, provider_context):
    return filesystem.factory.create({"path": str(tmp_path / "store")}, provider_context)


def all_files(root: Path) -> list[Path]:
    return sorted(Path(d, f).relative_to(root) for d, _, files in os.walk(root) for f in files)


def test_crash_leftovers_removed_at_start(tmp_path, provider_context):
    tmp = tmp_path / "store" / ".tmp"
    (tmp / "half-written-dir").mkdir(parents=True)
    (tmp / "half-written-dir" / "x").write_bytes(b"x")
    (tmp / "abc.part").write_bytes(b"partial")
    blob = tmp_path / "store" / "ab" / "cd" / ("abcd" + "0" * 60)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"kept")
    filesystem.factory.create({"path": str(tmp_path / "store")}, provider_context)
    assert list(tmp.iterdir()) == []
    assert blob.read_bytes() == b"kept"


def test_layout(fs_storage):
    digest = sha256_of(b"layout")
    assert fs_storage.path_of(digest) == fs_storage.root / digest[:2] / digest[2:4] / digest
    with pytest.raises(ValueError):
        fs_storage.path_of("../" + digest[3:])


@pytest_twisted.ensureDeferred
async def test_only_the_blob_after_commit(fs_storage):
    data = b"one blob, nothing else"
    info = await write_blob(fs_storage, data)
    digest = sha256_of(data)
    assert all_files(fs_storage.root) == [Path(digest[:2], digest[2:4], digest)]
    assert fs_storage.path_of(digest).read_bytes() == data
    assert info.sha256 == digest


def test_writer_uses_tmp_until_commit(fs_storage):
    writer = fs_storage.open_write(None)
    writer.write(b"in progress")
    assert [p.parent for p in all_files(fs_storage.root)] == [Path(".tmp")]
    writer.abort()
    assert all_files(fs_storage.root) == []


@pytest_twisted.ensureDeferred
async def test_reader_fileno_is_real(fs_storage):
    info = await write_blob(fs_storage, b"0123456789")
    reader = await wait(fs_storage.open_read(info.sha256))
    fd = reader.fileno()
    assert os.fstat(fd).st_size == 10
    reader.close()
    reader.close()
    with pytest.raises(ValueError):
        reader.fileno()
    with pytest.raises(ValueError):
        await wait(reader.read(1))


@pytest_twisted.ensureDeferred
async def test_ingest_across_file_systems(fs_storage, tmp_path, monkeypatch):
    real_replace = filesystem._replace
    calls = []

    def replace(src, dst):
        calls.append(Path(src).parent)
        if Path(src).parent != fs_storage.tmp:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(filesystem, "_replace", replace)
    data = os.urandom(3 * 1024 * 1024 + 7)  # more than one copy chunk
    spool = tmp_path / "other-fs.part"
    spool.write_bytes(data)
    info = await wait(fs_storage.ingest(spool, sha256_of(data)))
    assert info == BlobInfo(sha256=sha256_of(data), size=len(data))
    assert calls == [spool.parent, fs_storage.tmp]
    assert not spool.exists()
    assert await read_blob(fs_storage, info.sha256) == data
    assert all_files(fs_storage.root) == [fs_storage.path_of(info.sha256).relative_to(fs_storage.root)]


@pytest_twisted.ensureDeferred
async def test_ingest_other_errors_propagate(fs_storage, tmp_path, monkeypatch):
    def replace(src, dst):
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(filesystem, "_replace", replace)
    spool = tmp_path / "spool.part"
    spool.write_bytes(b"data")
    with pytest.raises(PermissionError):
        await wait(fs_storage.ingest(spool, sha256_of(b"data")))
    assert spool.exists()
    assert all_files(fs_storage.root) == []


@pytest_twisted.ensureDeferred
async def test_damaged_blob_is_replaced(fs_storage):
    data = b"the full content"
    target = fs_storage.path_of(sha256_of(data))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the fu")  # truncated, e.g. by a crash with fsync off
    await write_blob(fs_storage, data)
    assert target.read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_commit_failure_cleans_up(fs_storage, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem, "_replace", replace)
    writer = fs_storage.open_write(None)
    writer.write(b"no room")
    with pytest.raises(OSError):
        await wait(writer.commit())
    writer.abort()
    assert all_files(fs_storage.root) == []
