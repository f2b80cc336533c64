"""The storage contract: what every :class:`~pypicache.interfaces.IStorage` must do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from pypicache.interfaces import IBlobReader, IBlobWriter, IStorage
from pypicache.model import BlobInfo, BlobNotFound, HashMismatch
from pypicache.providers import ProviderContext
from pypicache.testing._context import make_context, sha256_of, stop_context, wait, wait_for_error

_COMPUTE = object()


async def write_blob(storage: Any, data: bytes, expected: Any = _COMPUTE, chunk: int = 1000) -> BlobInfo:
    """Store ``data`` through a writer in ``chunk``-sized writes and commit.

    ``expected`` defaults to the true digest; pass None or another digest."""
    writer = storage.open_write(sha256_of(data) if expected is _COMPUTE else expected)
    for start in range(0, len(data), chunk):
        writer.write(data[start:start + chunk])
    return await wait(writer.commit())


async def read_blob(storage: Any, sha256: str, chunk: int = 65536) -> bytes:
    """The whole blob, read through a reader ``chunk`` bytes at a time."""
    reader = await wait(storage.open_read(sha256))
    try:
        parts = []
        while True:
            part = await wait(reader.read(chunk))
            if not part:
                break
            parts.append(part)
        return b"".join(parts)
    finally:
        reader.close()


class StorageContract:
    """Mixin: the behaviour every :class:`~pypicache.interfaces.IStorage`
    must have.  Subclass it in a ``Test*`` class and implement
    :meth:`make_storage`; optionally override :meth:`list_files`.
    """

    def make_storage(self, tmp_path: Path, context: ProviderContext) -> Any:
        """Return a fresh, empty storage provider (override this)."""
        raise NotImplementedError

    def list_files(self, storage: Any) -> set[str] | None:
        """Every file the storage holds on disk (relative paths), to check
        that nothing stray is left behind; None when it has no disk root.

        The default lists everything under ``storage.root`` when the provider
        exposes such a ``Path`` attribute."""
        root = getattr(storage, "root", None)
        if not isinstance(root, Path):
            return None
        found = set()
        for directory, _, files in os.walk(root):
            for name in files:
                found.add(str(Path(directory, name).relative_to(root)))
        return found

    def assert_no_files(self, storage: Any, *allowed_sha256: str) -> None:
        """No file on disk other than those named after ``allowed_sha256``."""
        files = self.list_files(storage)
        if files is None:
            return
        stray = {f for f in files if Path(f).name not in allowed_sha256}
        assert not stray, f"stray files left in storage: {sorted(stray)}"
        assert len(files) == len(set(allowed_sha256)), f"expected one file per blob: {sorted(files)}"

    @pytest.fixture
    def context(self, tmp_path: Path) -> Iterator[ProviderContext]:
        context = make_context(tmp_path)
        yield context
        stop_context(context)

    @pytest.fixture
    def storage(self, tmp_path: Path, context: ProviderContext) -> Any:
        return self.make_storage(tmp_path, context)

    # ----------------------------------------------------------------- tests

    @pytest_twisted.ensureDeferred
    async def test_provides_interfaces(self, storage: Any) -> None:
        data = b"interfaces"
        assert verifyObject(IStorage, storage)
        writer = storage.open_write(sha256_of(data))
        assert verifyObject(IBlobWriter, writer)
        writer.write(data)
        await wait(writer.commit())
        reader = await wait(storage.open_read(sha256_of(data)))
        try:
            assert verifyObject(IBlobReader, reader)
        finally:
            reader.close()

    @pytest_twisted.ensureDeferred
    async def test_write_commit_read(self, storage: Any) -> None:
        data = b"hello, blob"
        digest = sha256_of(data)
        assert await wait(storage.exists(digest)) is False
        info = await write_blob(storage, data)
        assert info == BlobInfo(sha256=digest, size=len(data))
        assert await wait(storage.exists(digest)) is True
        assert await read_blob(storage, digest) == data
        self.assert_no_files(storage, digest)

    @pytest_twisted.ensureDeferred
    async def test_empty_blob(self, storage: Any) -> None:
        info = await write_blob(storage, b"")
        assert info == BlobInfo(sha256=sha256_of(b""), size=0)
        assert await read_blob(storage, info.sha256) == b""
        assert await wait(storage.size(info.sha256)) == 0

    @pytest_twisted.ensureDeferred
    async def test_streaming_many_chunks(self, storage: Any) -> None:
        data = os.urandom(4096) * 300 + b"tail"  # 1.2 MB in 4 KiB chunks
        info = await write_blob(storage, data, chunk=4096)
        assert info.size == len(data)
        assert await read_blob(storage, info.sha256, chunk=10_000) == data

    @pytest_twisted.ensureDeferred
    async def test_hash_mismatch_stores_nothing(self, storage: Any) -> None:
        data = b"the real bytes"
        claimed = sha256_of(b"what the index said")
        writer = storage.open_write(claimed)
        writer.write(data)
        await wait_for_error(HashMismatch, writer.commit)
        writer.abort()  # still safe after a failed commit
        assert await wait(storage.exists(claimed)) is False
        assert await wait(storage.exists(sha256_of(data))) is False
        await wait_for_error(BlobNotFound, storage.open_read, claimed)
        self.assert_no_files(storage)

    @pytest_twisted.ensureDeferred
    async def test_expected_none_accepts_and_returns_digest(self, storage: Any) -> None:
        data = b"whatever arrives"
        info = await write_blob(storage, data, expected=None)
        assert info == BlobInfo(sha256=sha256_of(data), size=len(data))
        assert await read_blob(storage, info.sha256) == data

    @pytest_twisted.ensureDeferred
    async def test_recommit_existing_blob(self, storage: Any) -> None:
        data = b"twice"
        first = await write_blob(storage, data)
        second = await write_blob(storage, data)
        assert first == second
        assert await read_blob(storage, first.sha256) == data
        self.assert_no_files(storage, first.sha256)

    @pytest_twisted.ensureDeferred
    async def test_abort_leaves_nothing(self, storage: Any) -> None:
        data = b"never mind"
        writer = storage.open_write(sha256_of(data))
        writer.write(data)
        writer.abort()
        writer.abort()  # idempotent
        assert await wait(storage.exists(sha256_of(data))) is False
        self.assert_no_files(storage)
        with pytest.raises(Exception):
            writer.write(b"more")
        with pytest.raises(Exception):
            await wait(writer.commit())
        self.assert_no_files(storage)

    @pytest_twisted.ensureDeferred
    async def test_writer_unusable_after_commit(self, storage: Any) -> None:
        data = b"done"
        writer = storage.open_write(sha256_of(data))
        writer.write(data)
        await wait(writer.commit())
        with pytest.raises(Exception):
            writer.write(b"more")
        with pytest.raises(Exception):
            await wait(writer.commit())
        writer.abort()  # allowed, and does not undo the commit
        assert await read_blob(storage, sha256_of(data)) == data

    BAD_KEYS = [
        "",
        "abc",
        "../../../../etc/passwd",
        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",  # upper case
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n",
        "/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855e3",
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        42,
    ]

    @pytest_twisted.ensureDeferred
    async def test_bad_keys_raise_value_error(self, storage: Any, tmp_path: Path) -> None:
        spool = tmp_path / "spool-bad-key"
        spool.write_bytes(b"")
        for key in self.BAD_KEYS:
            await wait_for_error(ValueError, storage.open_write, key)
            await wait_for_error(ValueError, storage.open_read, key)
            await wait_for_error(ValueError, storage.exists, key)
            await wait_for_error(ValueError, storage.size, key)
            await wait_for_error(ValueError, storage.delete, key)
            await wait_for_error(ValueError, storage.ingest, spool, key)
            assert spool.exists(), f"ingest with bad key {key!r} touched the file"
        await wait_for_error(ValueError, storage.exists, None)
        self.assert_no_files(storage)

    @pytest_twisted.ensureDeferred
    async def test_missing_blob(self, storage: Any) -> None:
        digest = sha256_of(b"absent")
        error = await wait_for_error(BlobNotFound, storage.open_read, digest)
        assert isinstance(error, KeyError)
        await wait_for_error(BlobNotFound, storage.size, digest)
        assert await wait(storage.exists(digest)) is False

    @pytest_twisted.ensureDeferred
    async def test_size(self, storage: Any) -> None:
        data = b"x" * 12345
        info = await write_blob(storage, data)
        assert await wait(storage.size(info.sha256)) == 12345
        reader = await wait(storage.open_read(info.sha256))
        try:
            assert reader.size == 12345
        finally:
            reader.close()

    @pytest_twisted.ensureDeferred
    async def test_delete(self, storage: Any) -> None:
        keep = await write_blob(storage, b"keep me")
        gone = await write_blob(storage, b"delete me")
        assert await wait(storage.delete(gone.sha256)) is None
        assert await wait(storage.exists(gone.sha256)) is False
        await wait_for_error(BlobNotFound, storage.open_read, gone.sha256)
        await wait_for_error(BlobNotFound, storage.size, gone.sha256)
        assert await wait(storage.delete(gone.sha256)) is None  # absent is fine
        assert await read_blob(storage, keep.sha256) == b"keep me"
        self.assert_no_files(storage, keep.sha256)
        # A deleted blob can be stored again.
        assert await write_blob(storage, b"delete me") == gone

    @pytest_twisted.ensureDeferred
    async def test_ingest_moves_file_in(self, storage: Any, tmp_path: Path) -> None:
        data = os.urandom(100_000)
        spool = tmp_path / "spool" / "download.part"
        spool.parent.mkdir()
        spool.write_bytes(data)
        info = await wait(storage.ingest(spool, sha256_of(data)))
        assert info == BlobInfo(sha256=sha256_of(data), size=len(data))
        assert not spool.exists()
        assert await wait(storage.exists(info.sha256)) is True
        assert await read_blob(storage, info.sha256) == data
        self.assert_no_files(storage, info.sha256)

    @pytest_twisted.ensureDeferred
    async def test_ingest_existing_blob(self, storage: Any, tmp_path: Path) -> None:
        data = b"already here"
        await write_blob(storage, data)
        spool = tmp_path / "again.part"
        spool.write_bytes(data)
        info = await wait(storage.ingest(str(spool), sha256_of(data)))  # str works too
        assert info == BlobInfo(sha256=sha256_of(data), size=len(data))
        assert not spool.exists()
        assert await read_blob(storage, info.sha256) == data
        self.assert_no_files(storage, info.sha256)

    @pytest_twisted.ensureDeferred
    async def test_seek_and_read_ranges(self, storage: Any) -> None:
        data = bytes(range(256)) * 40
        info = await write_blob(storage, data)
        reader = await wait(storage.open_read(info.sha256))
        try:
            assert reader.size == len(data)
            reader.seek(10)
            assert await wait(reader.read(5)) == data[10:15]
            assert await wait(reader.read(5)) == data[15:20]
            reader.seek(len(data) - 3)  # a suffix range
            assert await wait(reader.read(100)) == data[-3:]
            assert await wait(reader.read(100)) == b""
            reader.seek(len(data) + 10)
            assert await wait(reader.read(10)) == b""
            reader.seek(0)
            assert await wait(reader.read(len(data) * 2)) == data
            reader.seek(1000)
            fd = reader.fileno()
            if fd is not None:  # positioned like the reader, for sendfile
                assert os.read(fd, 7) == data[1000:1007]
        finally:
            reader.close()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_writers_of_one_blob(self, storage: Any) -> None:
        data = os.urandom(50_000)
        digest = sha256_of(data)
        writers = [storage.open_write(digest), storage.open_write(None), storage.open_write(digest)]
        for start in range(0, len(data), 5000):
            for writer in writers:
                writer.write(data[start:start + 5000])
        results = await wait(defer.gatherResults([defer.maybeDeferred(w.commit) for w in writers],
                                                 consumeErrors=True))
        assert results == [BlobInfo(sha256=digest, size=len(data))] * 3
        assert await read_blob(storage, digest) == data
        self.assert_no_files(storage, digest)

    @pytest_twisted.ensureDeferred
    async def test_many_blobs(self, storage: Any) -> None:
        blobs = [f"blob number {i}".encode() for i in range(20)]
        infos = await wait(defer.gatherResults(
            [defer.ensureDeferred(write_blob(storage, b)) for b in blobs], consumeErrors=True))
        for data, info in zip(blobs, infos):
            assert await read_blob(storage, info.sha256) == data
        self.assert_no_files(storage, *(info.sha256 for info in infos))

