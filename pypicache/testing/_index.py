"""The index contract: what every :class:`~pypicache.interfaces.IIndex` must do,
with builders for the records and pages it is fed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from pypicache.interfaces import IIndex, IIndexProvenance, IIndexRepair
from pypicache.model import BlobInfo, FileExists, FileRecord, ProjectList, ProjectPage, ProjectRecord, Validators
from pypicache.providers import ProviderContext
from pypicache.testing._context import TIMEOUT, make_context, stop_context, wait, wait_for_error


def _digest(label: str) -> str:
    """A well-formed sha256 hex digest named by ``label`` (no real bytes)."""
    return hashlib.sha256(label.encode()).hexdigest()


def index_file(filename: str, **fields: Any) -> FileRecord:
    """A FileRecord as an upstream page would give it: a URL and a sha256
    derived from the filename unless ``fields`` say otherwise."""
    fields.setdefault("url", f"https://files.example/packages/{filename}")
    fields.setdefault("hashes", {"sha256": _digest(filename)})
    return FileRecord(filename=filename, **fields)


def index_page(name: str, *files: FileRecord, **fields: Any) -> ProjectPage:
    """A ProjectPage for ``name`` with ``files`` in the given order."""
    return ProjectPage(name=name, files=tuple(files), **fields)


def local_file(filename: str, **fields: Any) -> FileRecord:
    """A FileRecord as an upload makes it: no URL, stored bytes and METADATA
    with digests derived from the filename unless ``fields`` say otherwise."""
    fields.setdefault("hashes", {"sha256": _digest(f"upload {filename}")})
    fields.setdefault("core_metadata", {"sha256": _digest(f"metadata {filename}")})
    fields.setdefault("size", 1000)
    fields.setdefault("upload_time", "2025-01-02T03:04:05.678901Z")
    fields.setdefault("stored", True)
    fields.setdefault("metadata_stored", True)
    return FileRecord(filename=filename, url="", origin="local", **fields)


class IndexContract:
    """Mixin: the behaviour every :class:`~pypicache.interfaces.IIndex` must
    have.  Subclass it in a ``Test*`` class and implement :meth:`make_index`;
    set ``persistent = False`` for a provider that forgets everything on close.

    ``make_index`` is called again with the same ``tmp_path`` and context to
    reopen a persistent index.  Indexes opened through :meth:`open_index`
    (the ``index`` fixture uses it) are closed at teardown.
    """

    persistent: bool = True

    def make_index(self, tmp_path: Path, context: ProviderContext) -> Any:
        """Return an index provider keeping its data under ``tmp_path``."""
        raise NotImplementedError

    # ------------------------------------------------------------ plumbing

    @pytest.fixture
    def index_context(self, tmp_path: Path) -> Iterator[ProviderContext]:
        context = make_context(tmp_path)
        yield context
        stop_context(context)

    @pytest.fixture
    def index(self, tmp_path: Path, index_context: ProviderContext) -> Iterator[Any]:
        self._open_indexes: list[Any] = []
        yield self.open_index(tmp_path, index_context)
        from twisted.internet import reactor

        for index in self._open_indexes:
            d = defer.maybeDeferred(index.close)
            d.addTimeout(TIMEOUT, reactor)
            pytest_twisted.blockon(d)

    def open_index(self, tmp_path: Path, context: ProviderContext) -> Any:
        """``make_index`` and remember to close the result at teardown."""
        index = self.make_index(tmp_path, context)
        self._open_indexes.append(index)
        return index

    async def close_index(self, index: Any) -> None:
        """Close ``index`` now (teardown will not close it again)."""
        self._open_indexes.remove(index)
        await wait(index.close())

    # --------------------------------------------------------------- basics

    def test_provides_iindex(self, index: Any) -> None:
        assert verifyObject(IIndex, index)

    @pytest_twisted.ensureDeferred
    async def test_empty_index(self, index: Any) -> None:
        assert await wait(index.get_project("nothing-here")) is None
        assert await wait(index.list_projects()) == []
        assert await wait(index.get_project_list()) is None

    @pytest_twisted.ensureDeferred
    async def test_round_trip_every_field(self, index: Any) -> None:
        files = (
            index_file("demo-2.0.tar.gz", hashes={}, size=None),
            index_file("demo-1.0-py3-none-any.whl",
                       hashes={"sha256": _digest("w"), "md5": "0" * 32},
                       requires_python=">=3.8, <4", yanked=True, yanked_reason="broken <b>",
                       core_metadata={"sha256": _digest("w.metadata")}, size=1234,
                       upload_time="2024-01-02T03:04:05.123456Z"),
            index_file("demo-1.0.tar.gz", yanked=True, core_metadata={}, size=0),
            index_file("Demo-0.1.zip", url="https://elsewhere.example/Demo-0.1.zip?x=1#frag",
                       requires_python="", upload_time="2001-01-01T00:00:00Z",
                       provenance="https://index.example/integrity/demo/0.1/Demo-0.1.zip/provenance"),
        )
        page = index_page("demo", *files, validators=Validators('"etag-1"', "Tue, 01 Jan 2030 00:00:00 GMT"),
                          versions=("0.1", "1.0", "2.0"), meta={"tracks": ["https://x.example/simple/demo/"]})
        saved = await wait(index.save_upstream_page(page, 1700000000.25))
        assert isinstance(saved, ProjectRecord)
        assert saved.name == "demo"
        assert saved.files == files  # every field, and the page's order
        assert saved.validators == Validators('"etag-1"', "Tue, 01 Jan 2030 00:00:00 GMT")
        assert saved.refreshed_at == 1700000000.25
        assert saved.origin == "upstream"
        assert saved.versions == ("0.1", "1.0", "2.0")
        assert saved.meta == {"tracks": ["https://x.example/simple/demo/"]}
        got = await wait(index.get_project("demo"))
        assert got == saved
        assert got.file("demo-2.0.tar.gz").core_metadata is None
        assert got.file("demo-1.0.tar.gz").core_metadata == {}
        for record in got.files:
            assert type(record.hashes) is dict
            assert record.stored is False and record.metadata_stored is False
            assert record.listed is True and record.origin == "upstream"

    @pytest_twisted.ensureDeferred
    async def test_minimal_page(self, index: Any) -> None:
        saved = await wait(index.save_upstream_page(index_page("empty"), 5.0))
        assert saved == ProjectRecord(name="empty", refreshed_at=5.0)
        assert await wait(index.get_project("empty")) == saved
        assert (await wait(index.get_project("empty"))).versions is None

    @pytest_twisted.ensureDeferred
    async def test_projects_are_separate(self, index: Any) -> None:
        await wait(index.save_upstream_page(index_page("one", index_file("one-1.tar.gz")), 1.0))
        await wait(index.save_upstream_page(index_page("two", index_file("two-1.tar.gz")), 2.0))
        await wait(index.save_upstream_page(index_page("one", index_file("one-2.tar.gz")), 3.0))
        one = await wait(index.get_project("one"))
        two = await wait(index.get_project("two"))
        assert [f.filename for f in one.files] == ["one-2.tar.gz"]
        assert [f.filename for f in two.files] == ["two-1.tar.gz"]
        assert (one.refreshed_at, two.refreshed_at) == (3.0, 2.0)

    @pytest_twisted.ensureDeferred
    async def test_list_projects_sorted(self, index: Any) -> None:
        for name in ["zope-interface", "attrs", "twisted", "a", "pip"]:
            await wait(index.save_upstream_page(index_page(name), 1.0))
        assert await wait(index.list_projects()) == ["a", "attrs", "pip", "twisted", "zope-interface"]

    # ---------------------------------------------------------------- merge

    @pytest_twisted.ensureDeferred
    async def test_merge_keeps_stored_state(self, index: Any) -> None:
        wheel = index_file("m-1.0-py3-none-any.whl", core_metadata={"sha256": _digest("meta")})
        await wait(index.save_upstream_page(index_page("m", wheel, index_file("m-1.0.tar.gz")), 1.0))
        await wait(index.mark_stored("m", wheel.filename, BlobInfo(wheel.sha256, 42)))
        await wait(index.mark_metadata_stored("m", wheel.filename, _digest("meta")))
        newer = attrs.evolve(wheel, yanked=True, yanked_reason="oops", size=42)
        page = index_page("m", index_file("m-1.1.tar.gz"), newer, index_file("m-1.0.tar.gz"),
                          validators=Validators("v2", None))
        record = await wait(index.save_upstream_page(page, 2.0))
        assert [f.filename for f in record.files] == ["m-1.1.tar.gz", wheel.filename, "m-1.0.tar.gz"]
        kept = record.file(wheel.filename)
        assert kept == attrs.evolve(newer, stored=True, metadata_stored=True)
        assert record.file("m-1.0.tar.gz").stored is False
        assert record.validators == Validators("v2", None)
        assert await wait(index.get_project("m")) == record

    @pytest_twisted.ensureDeferred
    async def test_merge_hash_change_resets_stored(self, index: Any) -> None:
        old = index_file("h-1.0.tar.gz", core_metadata={"sha256": _digest("old meta")})
        await wait(index.save_upstream_page(index_page("h", old), 1.0))
        await wait(index.mark_stored("h", old.filename, BlobInfo(old.sha256, 10)))
        await wait(index.mark_metadata_stored("h", old.filename, _digest("old meta")))
        new = index_file("h-1.0.tar.gz", hashes={"sha256": _digest("replaced")},
                         core_metadata={"sha256": _digest("new meta")}, size=11)
        record = await wait(index.save_upstream_page(index_page("h", new), 2.0))
        assert record.file(new.filename) == new  # not stored, the page's hash
        assert await wait(index.get_project("h")) == record

    @pytest_twisted.ensureDeferred
    async def test_merge_metadata_hash_change_resets_metadata_only(self, index: Any) -> None:
        old = index_file("mh-1.0-py3-none-any.whl", core_metadata={"sha256": _digest("old meta")})
        await wait(index.save_upstream_page(index_page("mh", old), 1.0))
        await wait(index.mark_stored("mh", old.filename, BlobInfo(old.sha256, 10)))
        await wait(index.mark_metadata_stored("mh", old.filename, _digest("old meta")))
        new = attrs.evolve(old, core_metadata={"sha256": _digest("new meta")}, size=10)
        record = await wait(index.save_upstream_page(index_page("mh", new), 2.0))
        assert record.file(old.filename) == attrs.evolve(new, stored=True)

    @pytest_twisted.ensureDeferred
    async def test_merge_page_without_hash_keeps_verified_digest(self, index: Any) -> None:
        # A page that gives no sha256 is no evidence of change: our verified
        # digest and size stay, so the stored bytes remain usable.
        bare = index_file("b-1.0-py3-none-any.whl", hashes={}, core_metadata={})
        await wait(index.save_upstream_page(index_page("b", bare), 1.0))
        await wait(index.mark_stored("b", bare.filename, BlobInfo(_digest("bytes"), 99)))
        await wait(index.mark_metadata_stored("b", bare.filename, _digest("meta")))
        record = await wait(index.save_upstream_page(index_page("b", bare), 2.0))
        assert record.file(bare.filename) == attrs.evolve(
            bare, hashes={"sha256": _digest("bytes")}, size=99, stored=True,
            core_metadata={"sha256": _digest("meta")}, metadata_stored=True)

    @pytest_twisted.ensureDeferred
    async def test_merge_unlisted_files(self, index: Any) -> None:
        kept = index_file("u-1.0.tar.gz")
        dropped = index_file("u-0.9.tar.gz")
        only_meta = index_file("u-0.8-py3-none-any.whl", core_metadata={"sha256": _digest("m")})
        current = index_file("u-2.0.tar.gz")
        await wait(index.save_upstream_page(index_page("u", only_meta, dropped, kept), 1.0))
        await wait(index.mark_stored("u", kept.filename, BlobInfo(kept.sha256, 5)))
        await wait(index.mark_metadata_stored("u", only_meta.filename, _digest("m")))
        record = await wait(index.save_upstream_page(index_page("u", current), 2.0))
        assert [f.filename for f in record.files] == [current.filename, kept.filename]
        gone = record.file(kept.filename)
        assert gone == attrs.evolve(kept, stored=True, size=5, listed=False)
        assert await wait(index.get_project("u")) == record
        # Still unlisted after another refresh; listed again when the upstream relists it.
        record = await wait(index.save_upstream_page(index_page("u", current), 3.0))
        assert record.file(kept.filename).listed is False
        record = await wait(index.save_upstream_page(index_page("u", kept, current), 4.0))
        assert [f.filename for f in record.files] == [kept.filename, current.filename]
        assert record.file(kept.filename) == attrs.evolve(kept, stored=True, size=5)

    @pytest_twisted.ensureDeferred
    async def test_duplicate_filename_in_page_keeps_first(self, index: Any) -> None:
        first = index_file("d-1.0.tar.gz", size=1)
        second = index_file("d-1.0.tar.gz", size=2)
        record = await wait(index.save_upstream_page(index_page("d", first, second), 1.0))
        assert record.files == (first,)
        assert await wait(index.get_project("d")) == record

    # ---------------------------------------------------------------- marks

    @pytest_twisted.ensureDeferred
    async def test_mark_refreshed(self, index: Any) -> None:
        page = index_page("r", index_file("r-1.tar.gz"), validators=Validators("a", "b"))
        saved = await wait(index.save_upstream_page(page, 1.0))
        record = await wait(index.mark_refreshed("r", 2.5, Validators("c", None)))
        assert record == attrs.evolve(saved, refreshed_at=2.5, validators=Validators("c", None))
        assert await wait(index.get_project("r")) == record
        assert await wait(index.mark_refreshed("unknown", 3.0, Validators())) is None
        assert await wait(index.get_project("unknown")) is None

    @pytest_twisted.ensureDeferred
    async def test_mark_stored(self, index: Any) -> None:
        with_hash = index_file("s-1.0.tar.gz", size=None)
        without_hash = index_file("s-1.0-py3-none-any.whl", hashes={"md5": "1" * 32}, size=7)
        await wait(index.save_upstream_page(index_page("s", with_hash, without_hash), 1.0))
        record = await wait(index.mark_stored("s", with_hash.filename, BlobInfo(with_hash.sha256, 321)))
        assert record.file(with_hash.filename) == attrs.evolve(with_hash, stored=True, size=321)
        assert record.file(without_hash.filename) == without_hash
        record = await wait(index.mark_stored("s", without_hash.filename, BlobInfo(_digest("x"), 8)))
        assert record.file(without_hash.filename) == attrs.evolve(
            without_hash, stored=True, size=8, hashes={"md5": "1" * 32, "sha256": _digest("x")})
        assert await wait(index.get_project("s")) == record

    @pytest_twisted.ensureDeferred
    async def test_mark_stored_other_hash_changes_nothing(self, index: Any) -> None:
        # The page changed while a download ran: the blob is not this file.
        listed = index_file("o-1.0.tar.gz")
        saved = await wait(index.save_upstream_page(index_page("o", listed), 1.0))
        record = await wait(index.mark_stored("o", listed.filename, BlobInfo(_digest("other"), 1)))
        assert record == saved
        assert await wait(index.get_project("o")) == saved

    @pytest_twisted.ensureDeferred
    async def test_mark_unknown_raises_key_error(self, index: Any) -> None:
        await wait(index.save_upstream_page(index_page("k", index_file("k-1.tar.gz")), 1.0))
        blob = BlobInfo(_digest("k"), 1)
        await wait_for_error(KeyError, index.mark_stored, "nope", "k-1.tar.gz", blob)
        await wait_for_error(KeyError, index.mark_stored, "k", "k-2.tar.gz", blob)
        await wait_for_error(KeyError, index.mark_metadata_stored, "nope", "k-1.tar.gz", blob.sha256)
        await wait_for_error(KeyError, index.mark_metadata_stored, "k", "k-2.tar.gz", blob.sha256)
        assert await wait(index.get_project("nope")) is None

    @pytest_twisted.ensureDeferred
    async def test_mark_metadata_stored(self, index: Any) -> None:
        hashed = index_file("mm-1-py3-none-any.whl", core_metadata={"sha256": _digest("a")})
        empty = index_file("mm-2-py3-none-any.whl", core_metadata={})
        absent = index_file("mm-3-py3-none-any.whl")
        await wait(index.save_upstream_page(index_page("mm", hashed, empty, absent), 1.0))
        await wait(index.mark_metadata_stored("mm", hashed.filename, _digest("a")))
        await wait(index.mark_metadata_stored("mm", empty.filename, _digest("b")))
        record = await wait(index.mark_metadata_stored("mm", absent.filename, _digest("c")))
        assert record.files == (
            attrs.evolve(hashed, metadata_stored=True),
            attrs.evolve(empty, metadata_stored=True, core_metadata={"sha256": _digest("b")}),
            attrs.evolve(absent, metadata_stored=True, core_metadata={"sha256": _digest("c")}),
        )
        assert all(not f.stored for f in record.files)
        assert await wait(index.get_project("mm")) == record
        # A different digest than the page lists is not recorded.
        again = await wait(index.mark_metadata_stored("mm", hashed.filename, _digest("zz")))
        assert again.file(hashed.filename) == record.file(hashed.filename)

    @pytest_twisted.ensureDeferred
    async def test_mark_provenance_stored(self, index: Any) -> None:
        """IIndexProvenance (optional): the provenance blob is recorded,
        kept across refreshes of an unchanged file, and forgotten when the
        file's bytes change or the page stops offering a provenance."""
        if not IIndexProvenance.providedBy(index):
            pytest.skip("the index does not provide IIndexProvenance")
        url = "https://index.example/integrity/pv/1/pv-1-py3-none-any.whl/provenance"
        wheel = index_file("pv-1-py3-none-any.whl", provenance=url)
        other = index_file("pv-1.tar.gz", provenance=url.replace("-py3-none-any.whl", ".tar.gz"))
        bare = index_file("pv-2.tar.gz")
        await wait(index.save_upstream_page(index_page("pv", wheel, other, bare), 1.0))
        await wait(index.mark_provenance_stored("pv", other.filename, _digest("p2")))
        record = await wait(index.mark_provenance_stored("pv", wheel.filename, _digest("p1")))
        assert record.file(wheel.filename) == attrs.evolve(wheel, provenance_sha256=_digest("p1"))
        assert await wait(index.get_project("pv")) == record
        if IIndexRepair.providedBy(index):
            assert await wait(index.stored_with_blob(_digest("p1"))) == [("pv", wheel.filename, "provenance")]
        # A refresh keeps it for the same bytes; new bytes or no provenance forget it.
        page = index_page("pv", wheel, attrs.evolve(other, provenance=None), bare)
        record = await wait(index.save_upstream_page(page, 2.0))
        assert [f.provenance_sha256 for f in record.files] == [_digest("p1"), None, None]
        page = index_page("pv", attrs.evolve(wheel, hashes={"sha256": _digest("new bytes")}), other, bare)
        record = await wait(index.save_upstream_page(page, 3.0))
        assert record.file(wheel.filename).provenance_sha256 is None
        await wait(index.mark_provenance_stored("pv", other.filename, _digest("p3")))
        record = await wait(index.mark_provenance_stored("pv", other.filename, None))
        assert record.file(other.filename).provenance_sha256 is None
        assert await wait(index.get_project("pv")) == record
        await wait_for_error(KeyError, index.mark_provenance_stored, "pv", "pv-9.tar.gz", _digest("x"))
        await wait_for_error(KeyError, index.mark_provenance_stored, "nope", "pv-9.tar.gz", _digest("x"))

    # --------------------------------------------------------- project list

    @pytest_twisted.ensureDeferred
    async def test_project_list(self, index: Any) -> None:
        first = ProjectList(names=("b", "a", "ünï-code"), validators=Validators('W/"1"', None))
        assert await wait(index.save_project_list(first, 10.0)) is None
        assert await wait(index.get_project_list()) == (first, 10.0)
        second = ProjectList(names=(), validators=Validators(None, "yesterday"))
        await wait(index.save_project_list(second, 11.5))
        assert await wait(index.get_project_list()) == (second, 11.5)
        assert await wait(index.list_projects()) == []  # names alone make no records

    # ----------------------------------------------------- private projects

    @pytest_twisted.ensureDeferred
    async def test_add_file_creates_private_project(self, index: Any) -> None:
        wheel = local_file("priv-1.0-py3-none-any.whl", requires_python=">=3.9")
        record = await wait(index.add_file("priv", wheel))
        assert record == ProjectRecord(name="priv", files=(wheel,), origin="local")
        assert record.refreshed_at is None and record.validators == Validators()
        assert record.versions is None and record.meta == {}
        assert type(record.file(wheel.filename).hashes) is dict
        assert await wait(index.get_project("priv")) == record
        assert await wait(index.list_projects()) == ["priv"]
        assert await wait(index.used_filename(wheel.filename)) == wheel.sha256
        assert await wait(index.used_filename("priv-2.0-py3-none-any.whl")) is None

    @pytest_twisted.ensureDeferred
    async def test_add_file_appends_in_order(self, index: Any) -> None:
        first = local_file("ord-1.0.tar.gz")
        second = local_file("ord-1.0-py3-none-any.whl")
        third = local_file("ord-0.9.tar.gz", yanked=True, yanked_reason="old")
        await wait(index.add_file("ord", first))
        await wait(index.add_file("ord", second))
        record = await wait(index.add_file("ord", third))
        assert record.files == (first, second, third)
        assert await wait(index.get_project("ord")) == record

    @pytest_twisted.ensureDeferred
    async def test_add_file_used_filename_is_refused_forever(self, index: Any) -> None:
        wheel = local_file("once-1.0-py3-none-any.whl")
        saved = await wait(index.add_file("once", wheel))
        other_bytes = local_file(wheel.filename, hashes={"sha256": _digest("other")})
        error = await wait_for_error(FileExists, index.add_file, "once", other_bytes)
        assert (error.filename, error.sha256) == (wheel.filename, wheel.sha256)
        error = await wait_for_error(FileExists, index.add_file, "once", wheel)  # same bytes too
        assert error.sha256 == wheel.sha256
        # In any project, not only the one that used it.
        error = await wait_for_error(FileExists, index.add_file, "elsewhere", other_bytes)
        assert error.sha256 == wheel.sha256
        assert await wait(index.get_project("elsewhere")) is None
        assert await wait(index.get_project("once")) == saved
        # Deleting the file does not free its name.
        await wait(index.remove_file("once", wheel.filename))
        error = await wait_for_error(FileExists, index.add_file, "once", other_bytes)
        assert error.sha256 == wheel.sha256
        assert await wait(index.used_filename(wheel.filename)) == wheel.sha256
        assert (await wait(index.get_project("once"))).files == ()

    @pytest_twisted.ensureDeferred
    async def test_filenames_compare_as_the_public_index_compares_them(self, index: Any) -> None:
        """Another spelling of a used filename (name, version, build and
        tags normalised) is the same filename: used too, even after deletion."""
        wheel = local_file("norm-2.0-py3-none-any.whl")
        await wait(index.add_file("norm", wheel))
        for other in ("norm-2.0.0-py3-none-any.whl", "Norm-2-PY3-none-ANY.whl", "NORM-02.0-py3-none-any.whl"):
            assert await wait(index.used_filename(other)) == wheel.sha256
            error = await wait_for_error(FileExists, index.add_file, "norm", local_file(other))
            assert error.sha256 == wheel.sha256
        await wait(index.remove_file("norm", wheel.filename))
        error = await wait_for_error(FileExists, index.add_file, "norm", local_file("norm-2.0.0-py3-none-any.whl"))
        assert error.sha256 == wheel.sha256
        sdist = local_file("norm-1.1.tar.gz")
        await wait(index.add_file("norm", sdist))
        assert await wait(index.used_filename("norm-01.1.0.tar.gz")) == sdist.sha256
        # Other tags, another build or another version are other files.
        for free in ("norm-2.0-py2.py3-none-any.whl", "norm-2.0-1-py3-none-any.whl", "norm-2.0.1-py3-none-any.whl",
                     "norm-1.1-py3-none-any.whl"):
            assert await wait(index.used_filename(free)) is None
            await wait(index.add_file("norm", local_file(free)))
        assert [f.filename for f in (await wait(index.get_project("norm"))).files] == [
            "norm-1.1.tar.gz", "norm-2.0-py2.py3-none-any.whl", "norm-2.0-1-py3-none-any.whl",
            "norm-2.0.1-py3-none-any.whl", "norm-1.1-py3-none-any.whl"]

    @pytest_twisted.ensureDeferred
    async def test_add_file_refuses_records_that_are_no_upload(self, index: Any) -> None:
        await wait_for_error(ValueError, index.add_file, "bad", index_file("bad-1.tar.gz"))
        await wait_for_error(ValueError, index.add_file, "bad",
                             local_file("bad-1.tar.gz", hashes={"md5": "0" * 32}))
        assert await wait(index.get_project("bad")) is None
        assert await wait(index.used_filename("bad-1.tar.gz")) is None

    @pytest_twisted.ensureDeferred
    async def test_add_file_makes_upstream_project_private(self, index: Any) -> None:
        stored = index_file("cl-1.0-py3-none-any.whl", core_metadata={"sha256": _digest("clm")})
        unstored = index_file("cl-1.0.tar.gz")
        only_meta = index_file("cl-0.9-py3-none-any.whl", core_metadata={"sha256": _digest("m9")})
        page = index_page("cl", stored, unstored, only_meta, validators=Validators("e", "lm"),
                          versions=("0.9", "1.0"), meta={"tracks": ["https://x.example/cl/"]})
        await wait(index.save_upstream_page(page, 1.0))
        await wait(index.mark_stored("cl", stored.filename, BlobInfo(stored.sha256, 3)))
        await wait(index.mark_metadata_stored("cl", stored.filename, _digest("clm")))
        await wait(index.mark_metadata_stored("cl", only_meta.filename, _digest("m9")))
        upload = local_file("cl-2.0-py3-none-any.whl")
        record = await wait(index.add_file("cl", upload))
        kept = attrs.evolve(stored, stored=True, metadata_stored=True, size=3, listed=False)
        assert record == ProjectRecord(name="cl", files=(kept, upload), origin="local")
        assert await wait(index.get_project("cl")) == record
        # A file the project still holds cannot be uploaded over ...
        error = await wait_for_error(FileExists, index.add_file, "cl", local_file(stored.filename))
        assert error.sha256 == stored.sha256
        # ... but the name of a dropped upstream file is free.
        record = await wait(index.add_file("cl", local_file(unstored.filename)))
        assert [f.filename for f in record.files] == [stored.filename, upload.filename,
                                                      unstored.filename]
        assert await wait(index.used_filename(stored.filename)) is None  # never uploaded
        assert await wait(index.get_project("cl")) == record

    @pytest_twisted.ensureDeferred
    async def test_create_project(self, index: Any) -> None:
        record = await wait(index.create_project("new", "local"))
        assert record == ProjectRecord(name="new", origin="local")
        assert await wait(index.create_project("new", "local")) == record  # idempotent
        assert await wait(index.get_project("new")) == record
        assert await wait(index.list_projects()) == ["new"]  # even with no files
        upload = local_file("new-1.tar.gz")
        record = await wait(index.add_file("new", upload))
        assert await wait(index.create_project("new", "local")) == record  # keeps files

        # An upstream project keeps its files and bookkeeping; only the origin changes.
        page = index_page("up", index_file("up-1.tar.gz"), validators=Validators("e", None),
                          versions=("1",), meta={"k": 1})
        saved = await wait(index.save_upstream_page(page, 1.0))
        record = await wait(index.create_project("up", "local"))
        assert record == attrs.evolve(saved, origin="local", versions=None)
        assert await wait(index.get_project("up")) == record
        # And back: its files stay as they are.
        record = await wait(index.create_project("new", "upstream"))
        assert record == ProjectRecord(name="new", files=(upload,), origin="upstream")
        assert await wait(index.get_project("new")) == record
        assert await wait(index.list_projects()) == ["new", "up"]

    @pytest_twisted.ensureDeferred
    async def test_set_yanked(self, index: Any) -> None:
        one, two = local_file("y-1.tar.gz"), local_file("y-2.tar.gz")
        await wait(index.add_file("y", one))
        await wait(index.add_file("y", two))
        record = await wait(index.set_yanked("y", one.filename, True, "broken build"))
        assert record.files == (attrs.evolve(one, yanked=True, yanked_reason="broken build"), two)
        assert await wait(index.get_project("y")) == record
        record = await wait(index.set_yanked("y", one.filename, True, None))
        assert record.file(one.filename).yanked_reason is None
        await wait(index.set_yanked("y", one.filename, True, "again"))
        record = await wait(index.set_yanked("y", one.filename, False, "ignored"))
        assert record.files == (one, two)  # un-yanked: no reason left
        assert await wait(index.get_project("y")) == record
        await wait_for_error(KeyError, index.set_yanked, "nope", one.filename, True, None)
        await wait_for_error(KeyError, index.set_yanked, "y", "y-3.tar.gz", True, None)
        assert await wait(index.get_project("nope")) is None
        # Upstream files can be yanked too (until the next page says otherwise).
        listed = index_file("uy-1.tar.gz")
        await wait(index.save_upstream_page(index_page("uy", listed), 1.0))
        record = await wait(index.set_yanked("uy", listed.filename, True, "r"))
        assert record.file(listed.filename) == attrs.evolve(listed, yanked=True, yanked_reason="r")
        assert await wait(index.get_project("uy")) == record

    @pytest_twisted.ensureDeferred
    async def test_first_seen_and_yank_history(self, index: Any, tmp_path: Path,
                                               index_context: ProviderContext) -> None:
        """What the as-of views read: when each upstream file was first saved,
        and every change of its yank state with its time (schema 4)."""
        one, two = index_file("h-1.tar.gz"), index_file("h-2.tar.gz", yanked=True, yanked_reason="bad")
        await wait(index.save_upstream_page(index_page("h", one), 100.0))
        await wait(index.save_upstream_page(index_page("h", attrs.evolve(one, yanked=True), two), 200.0))
        await wait(index.save_upstream_page(index_page("h", one, two), 300.0))  # unyanked again
        record = await wait(index.save_upstream_page(
            index_page("h", attrs.evolve(one, yanked=True, yanked_reason="again"), two), 400.0))
        expected = {"h-1.tar.gz": (100.0, ((200.0, True, None), (300.0, False, None), (400.0, True, "again"))),
                    "h-2.tar.gz": (200.0, ((200.0, True, "bad"),))}  # first seen yanked
        assert {f.filename: (f.first_seen, f.yank_history) for f in record.files} == expected
        got = await wait(index.get_project("h"))
        assert {f.filename: (f.first_seen, f.yank_history) for f in got.files} == expected
        # A yank through the index is noted too (at the provider's clock).
        await wait(index.add_file("hp", local_file("hp-1.tar.gz")))
        await wait(index.set_yanked("hp", "hp-1.tar.gz", True, "oops"))
        record = await wait(index.set_yanked("hp", "hp-1.tar.gz", True, "oops"))  # no change: no event
        history = record.file("hp-1.tar.gz").yank_history
        assert [(yanked, why) for _, yanked, why in history] == [(True, "oops")]
        assert (await wait(index.get_project("hp"))).file("hp-1.tar.gz").yank_history == history
        if self.persistent:
            await self.close_index(index)
            reopened = self.open_index(tmp_path, index_context)
            got = await wait(reopened.get_project("h"))
            assert {f.filename: (f.first_seen, f.yank_history) for f in got.files} == expected

    @pytest_twisted.ensureDeferred
    async def test_remove_file(self, index: Any) -> None:
        one, two = local_file("rm-1.tar.gz"), local_file("rm-2.tar.gz")
        await wait(index.add_file("rm", one))
        await wait(index.add_file("rm", two))
        record = await wait(index.remove_file("rm", one.filename))
        assert record == ProjectRecord(name="rm", files=(two,), origin="local")
        assert await wait(index.get_project("rm")) == record
        three = local_file("rm-3.tar.gz")
        record = await wait(index.add_file("rm", three))
        assert record.files == (two, three)
        assert await wait(index.get_project("rm")) == record
        await wait(index.remove_file("rm", two.filename))
        record = await wait(index.remove_file("rm", three.filename))
        assert record == ProjectRecord(name="rm", origin="local")  # the project stays
        assert await wait(index.get_project("rm")) == record
        assert await wait(index.list_projects()) == ["rm"]
        for f in (one, two, three):
            assert await wait(index.used_filename(f.filename)) == f.sha256
        await wait_for_error(KeyError, index.remove_file, "rm", one.filename)
        await wait_for_error(KeyError, index.remove_file, "nope", one.filename)
        assert await wait(index.get_project("nope")) is None

    @pytest_twisted.ensureDeferred
    async def test_upstream_page_merged_into_private_project(self, index: Any) -> None:
        ours = local_file("mg-1.0.tar.gz")
        await wait(index.add_file("mg", ours))
        theirs = index_file("mg-1.0.tar.gz")  # same filename: ours wins
        old, older = index_file("mg-0.9.tar.gz"), index_file("mg-0.8.tar.gz")
        page = index_page("mg", old, theirs, older, validators=Validators("e1", None),
                          versions=("0.8", "0.9", "1.0"), meta={"tracks": ["https://x.example/"]})
        record = await wait(index.save_upstream_page(page, 5.0, True))
        # Upstream files in the page's order, then ours.
        assert record == ProjectRecord(name="mg", files=(old, older, ours),
                                        validators=Validators("e1", None), refreshed_at=5.0,
                                        origin="local", versions=None,
                                        meta={"tracks": ["https://x.example/"]})
        assert await wait(index.get_project("mg")) == record
        # Another upload goes last; a refresh keeps that order, unlisting a
        # stored file the page dropped and forgetting an unstored one.
        await wait(index.mark_stored("mg", old.filename, BlobInfo(old.sha256, 9)))
        newer = local_file("mg-1.1.tar.gz")
        await wait(index.add_file("mg", newer))
        newest = index_file("mg-2.0.tar.gz")
        record = await wait(index.save_upstream_page(index_page("mg", newest, theirs), 6.0, True))
        # The files the page does not govern keep their previous order.
        assert record.files == (newest, attrs.evolve(old, stored=True, size=9, listed=False),
                                ours, newer)
        assert record.origin == "local" and record.refreshed_at == 6.0
        assert await wait(index.get_project("mg")) == record
        # 304s on a merged project work as on any other.
        record = await wait(index.mark_refreshed("mg", 7.0, None))
        assert record.origin == "local" and record.refreshed_at == 7.0

    @pytest_twisted.ensureDeferred
    async def test_upstream_page_never_enters_an_unmerged_private_project(self, index: Any) -> None:
        # A refresh that was on its way when the first upload made the name
        # private: the page is dropped, the private record stays as it was.
        cached = index_file("pv-0.9.tar.gz")
        await wait(index.save_upstream_page(index_page("pv", cached), 1.0))
        await wait(index.mark_stored("pv", cached.filename, BlobInfo(cached.sha256, 3)))
        ours = local_file("pv-1.0.tar.gz")
        private = await wait(index.add_file("pv", ours))
        late = index_page("pv", index_file("pv-2.0.tar.gz"), cached, validators=Validators("e", None),
                          versions=("0.9", "2.0"), meta={"tracks": ["https://x.example/"]})
        for merge in ((), (False,)):
            record = await wait(index.save_upstream_page(late, 2.0, *merge))
            assert record == private
            assert await wait(index.get_project("pv")) == private
        # A name created private by create_project too.
        empty = await wait(index.create_project("pv-empty", "local"))
        assert await wait(index.save_upstream_page(index_page("pv-empty", index_file("pv_empty-1.tar.gz")),
                                                   3.0)) == empty
        assert await wait(index.get_project("pv-empty")) == empty

    @pytest_twisted.ensureDeferred
    async def test_upstream_page_keeps_local_files_of_upstream_project(self, index: Any) -> None:
        # A private project handed back to the upstream keeps the files uploaded here.
        ours = local_file("hb-1.0.tar.gz")
        await wait(index.add_file("hb", ours))
        await wait(index.create_project("hb", "upstream"))
        theirs = index_file("hb-2.0.tar.gz")
        record = await wait(index.save_upstream_page(index_page("hb", theirs, versions=("2.0",)), 1.0))
        assert record.files == (theirs, ours)
        assert record.origin == "upstream" and record.versions == ("2.0",)

    @pytest_twisted.ensureDeferred
    async def test_private_project_survives_reopen(self, index: Any, tmp_path: Path,
                                                   index_context: ProviderContext) -> None:
        if not self.persistent:
            pytest.skip("provider is not persistent")
        one, two = local_file("sv-1.tar.gz"), local_file("sv-2.tar.gz")
        await wait(index.add_file("sv", one))
        await wait(index.add_file("sv", two))
        await wait(index.set_yanked("sv", two.filename, True, "why"))
        record = await wait(index.remove_file("sv", one.filename))
        empty = await wait(index.create_project("empty-private", "local"))
        await self.close_index(index)

        reopened = self.open_index(tmp_path, index_context)
        assert await wait(reopened.get_project("sv")) == record
        assert await wait(reopened.get_project("empty-private")) == empty
        assert await wait(reopened.list_projects()) == ["empty-private", "sv"]
        assert await wait(reopened.used_filename(one.filename)) == one.sha256
        await wait_for_error(FileExists, reopened.add_file, "sv", one)
        three = local_file("sv-3.tar.gz")
        after = await wait(reopened.add_file("sv", three))
        assert after.files == record.files + (three,)
        assert await wait(reopened.get_project("sv")) == after

    # ----------------------------------------------------------- persistence

    @pytest_twisted.ensureDeferred
    async def test_survives_reopen(self, index: Any, tmp_path: Path,
                                   index_context: ProviderContext) -> None:
        if not self.persistent:
            pytest.skip("provider is not persistent")
        wheel = index_file("p-1-py3-none-any.whl", core_metadata={"sha256": _digest("pm")})
        page = index_page("p", wheel, index_file("p-1.tar.gz"), validators=Validators("e", "lm"),
                          versions=("1",), meta={"k": {"nested": [1, 2]}})
        await wait(index.save_upstream_page(page, 1.0))
        await wait(index.mark_stored("p", wheel.filename, BlobInfo(wheel.sha256, 77)))
        record = await wait(index.mark_metadata_stored("p", wheel.filename, _digest("pm")))
        record = await wait(index.mark_refreshed("p", 2.0, Validators("e2", None)))
        names = ProjectList(("p", "q"), Validators("root", None))
        await wait(index.save_project_list(names, 3.0))
        await self.close_index(index)

        reopened = self.open_index(tmp_path, index_context)
        assert await wait(reopened.get_project("p")) == record
        assert await wait(reopened.list_projects()) == ["p"]
        assert await wait(reopened.get_project_list()) == (names, 3.0)
