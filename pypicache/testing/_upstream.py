"""The upstream contract: what every :class:`~pypicache.interfaces.IUpstream` must do.

An upstream provider is only as good as its failures: the server serves
what it has cached whenever the upstream errs, so every network or parse
failure must arrive as :class:`~pypicache.model.UpstreamError`, promptly,
and never as a hang.  The contract therefore runs each provider against
:class:`~pypicache.testing.FakeUpstream` on a real socket, healthy and then
misbehaving (hang, stall, reset, truncate, 5xx, garbage, redirects).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urldefrag

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from zope.interface.verify import verifyObject

from pypicache.interfaces import IClosable, IUpstream, IUpstreamDownload
from pypicache.model import (
    NotModified,
    ProjectList,
    ProjectPage,
    UpstreamError,
    UpstreamNotFound,
    Validators,
    normalize,
)
from pypicache.providers import HTTPSettings, ProviderContext
from pypicache.testing._builders import build_sdist, build_wheel, wheel_metadata
from pypicache.testing._context import TIMEOUT, make_context, sha256_of, stop_context, wait, wait_for_error
from pypicache.testing._fake_upstream import FakeUpstream

#: The project every contract test asks for, and its files on the fake.
PROJECT = "demo-proj"
WHEEL = "demo_proj-1.0-py3-none-any.whl"
SDIST = "demo_proj-1.0.tar.gz"
YANKED = "demo_proj-2.0-py3-none-any.whl"


async def _collect(download: Any) -> bytes:
    parts: list[bytes] = []
    await wait(download.deliver(parts.append))
    return b"".join(parts)


async def _until(check: Any, timeout: float = TIMEOUT) -> None:
    """Poll ``check()`` on the reactor until it is true (AssertionError after ``timeout``)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {check}")
        await deferLater(reactor, 0.02, lambda: None)


class UpstreamContract:
    """Mixin: the behaviour every :class:`~pypicache.interfaces.IUpstream`
    must have.  Subclass it in a ``Test*`` class and implement
    :meth:`make_upstream`; override :meth:`close_upstream` when the provider
    shuts down other than by ``close()``.

    The provider is pointed at a :class:`FakeUpstream` (fixture
    ``fake_pypi``) holding :meth:`populate`'s files.  Its context carries
    :attr:`HTTP`'s short timeouts, which the provider must honour: a hung
    or stalled upstream has to fail well within :data:`TIMEOUT`.
    """

    #: Timeouts the context hands the provider (``context.http``).
    HTTP = HTTPSettings(connect_timeout=1.0, read_timeout=1.0, page_timeout=1.0)

    def make_upstream(self, url: str, context: ProviderContext) -> Any:
        """Return a provider for the Simple API root ``url`` (override this)."""
        raise NotImplementedError

    def close_upstream(self, upstream: Any) -> Any:
        """Shut ``upstream`` down as the server does at exit: ``close()``
        when the provider declares :class:`~pypicache.interfaces.IClosable`
        (a Deferred or None)."""
        return upstream.close() if IClosable.providedBy(upstream) else None

    def populate(self, fake: FakeUpstream, dest: Path) -> None:
        """Publish the projects the tests expect (override to add, not remove).

        ``demo-proj``: a 1.0 wheel needing Python >= 3.8 (with PEP 658
        metadata) and sdist, a 2.0 wheel yanked as "broken"; ``other-proj``:
        one sdist.
        """
        fake.add(build_wheel(dest, PROJECT, "1.0", requires_python=">=3.8", summary="contract"))
        fake.add(build_sdist(dest, PROJECT, "1.0"))
        fake.add(build_wheel(dest, PROJECT, "2.0"), yanked="broken")
        fake.add(build_sdist(dest, "other-proj", "0.1"))

    # ------------------------------------------------------------ plumbing

    @pytest.fixture
    def upstream_context(self, tmp_path: Path) -> Iterator[ProviderContext]:
        context = attrs.evolve(make_context(tmp_path), http=self.HTTP)
        yield context
        stop_context(context)

    @pytest.fixture
    def fake_pypi(self, tmp_path: Path) -> Iterator[FakeUpstream]:
        from twisted.internet import reactor

        fake = FakeUpstream()
        self.populate(fake, tmp_path / "upstream-dists")
        fake.listen(reactor)
        yield fake
        pytest_twisted.blockon(fake.stop().addTimeout(TIMEOUT, reactor))

    @pytest.fixture
    def upstream(self, fake_pypi: FakeUpstream, upstream_context: ProviderContext) -> Iterator[Any]:
        from twisted.internet import reactor

        provider = self.make_upstream(fake_pypi.url, upstream_context)
        self._to_close = [provider]
        yield provider
        for left in self._to_close:
            pytest_twisted.blockon(defer.maybeDeferred(self.close_upstream, left).addTimeout(TIMEOUT, reactor))

    def file_url(self, fake: FakeUpstream, filename: str) -> str:
        """Where the fake serves ``filename`` (what its pages link to)."""
        return f"{fake.root_url}files/{filename}"

    # --------------------------------------------------------------- pages

    def test_provides_iupstream(self, upstream: Any) -> None:
        assert verifyObject(IUpstream, upstream)
        assert upstream.url.endswith("/")

    @pytest_twisted.ensureDeferred
    async def test_fetch_project(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        page = await wait(upstream.fetch_project(PROJECT, Validators()))
        assert isinstance(page, ProjectPage)
        assert page.name == PROJECT
        files = {f.filename: f for f in page.files}
        assert set(files) == {WHEEL, SDIST, YANKED}
        for filename, record in files.items():
            # Absolute URLs (resolved against the page), the page's sha256.
            assert urldefrag(record.url)[0] == self.file_url(fake_pypi, filename)
            assert record.hashes.get("sha256") == fake_pypi.sha256(filename)
        wheel = files[WHEEL]
        assert wheel.requires_python == ">=3.8"
        assert wheel.yanked is False
        assert wheel.core_metadata == {"sha256": sha256_of(wheel_metadata(fake_pypi.files[WHEEL]))}
        assert files[SDIST].core_metadata is None
        assert (files[YANKED].yanked, files[YANKED].yanked_reason) == (True, "broken")
        assert page.validators != Validators(), "validators the next request can send"

    @pytest_twisted.ensureDeferred
    async def test_fetch_project_conditionally(self, upstream: Any, fake_pypi: FakeUpstream,
                                               tmp_path: Path) -> None:
        page = await wait(upstream.fetch_project(PROJECT, Validators()))
        await wait_for_error(NotModified, upstream.fetch_project, PROJECT, page.validators)
        again = await wait(upstream.fetch_project(PROJECT, Validators(etag='"not-current"')))
        assert again.files == page.files
        fake_pypi.add(build_sdist(tmp_path / "later", PROJECT, "3.0"))
        changed = await wait(upstream.fetch_project(PROJECT, page.validators))
        assert "demo_proj-3.0.tar.gz" in {f.filename for f in changed.files}
        assert changed.validators != page.validators

    @pytest_twisted.ensureDeferred
    async def test_unknown_project(self, upstream: Any) -> None:
        await wait_for_error(UpstreamNotFound, upstream.fetch_project, "no-such-project", Validators())

    @pytest_twisted.ensureDeferred
    async def test_fetch_project_list(self, upstream: Any) -> None:
        listed = await wait(upstream.fetch_project_list(Validators()))
        assert isinstance(listed, ProjectList)
        assert {normalize(name) for name in listed.names} == {PROJECT, "other-proj"}
        assert listed.validators != Validators()
        await wait_for_error(NotModified, upstream.fetch_project_list, listed.validators)

    # --------------------------------------------------------------- files

    @pytest_twisted.ensureDeferred
    async def test_open_file(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        page = await wait(upstream.fetch_project(PROJECT, Validators()))
        for record in page.files:
            download = await wait(upstream.open_file(record.url))
            assert verifyObject(IUpstreamDownload, download)
            data = fake_pypi.files[record.filename].read_bytes()
            assert download.length in (None, len(data))
            assert await _collect(download) == data
        wheel = next(f for f in page.files if f.filename == WHEEL)
        download = await wait(upstream.open_file(urldefrag(wheel.url)[0] + ".metadata"))
        assert await _collect(download) == wheel_metadata(fake_pypi.files[WHEEL])

    @pytest_twisted.ensureDeferred
    async def test_missing_file(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        await wait_for_error(UpstreamNotFound, upstream.open_file, self.file_url(fake_pypi, "nothing-1.0.tar.gz"))

    @pytest_twisted.ensureDeferred
    async def test_redirects_are_followed_but_not_forever(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        real = self.file_url(fake_pypi, WHEEL)
        fake_pypi.fail("redirect", "/files/moved/", location=real)
        download = await wait(upstream.open_file(self.file_url(fake_pypi, "moved/" + WHEEL)))
        assert await _collect(download) == fake_pypi.files[WHEEL].read_bytes()
        fake_pypi.fail("redirect_loop", "/files/")
        await wait_for_error(UpstreamError, upstream.open_file, real)

    # -------------------------------------------------------------- faults

    @pytest_twisted.ensureDeferred
    async def test_error_statuses_are_upstream_errors(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        fake_pypi.fail("status", None, code=503, retry_after=5)
        await wait_for_error(UpstreamError, upstream.fetch_project, PROJECT, Validators())
        await wait_for_error(UpstreamError, upstream.fetch_project_list, Validators())
        await wait_for_error(UpstreamError, upstream.open_file, self.file_url(fake_pypi, WHEEL))

    @pytest_twisted.ensureDeferred
    async def test_malformed_pages_are_upstream_errors(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        fake_pypi.fail("malformed", "/simple/")
        await wait_for_error(UpstreamError, upstream.fetch_project, PROJECT, Validators())
        await wait_for_error(UpstreamError, upstream.fetch_project_list, Validators())
        fake_pypi.fail("garbage", "/simple/")  # not HTTP at all
        await wait_for_error(UpstreamError, upstream.fetch_project, PROJECT, Validators())

    @pytest_twisted.ensureDeferred
    async def test_hangs_are_bounded(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        fake_pypi.fail("hang")
        await wait_for_error(UpstreamError, upstream.fetch_project, PROJECT, Validators())
        await wait_for_error(UpstreamError, upstream.open_file, self.file_url(fake_pypi, WHEEL))

    @pytest_twisted.ensureDeferred
    async def test_broken_bodies_are_upstream_errors(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        for fault in ("reset", "truncate", "stall"):
            fake_pypi.fail(fault, "/simple/", after=100)
            await wait_for_error(UpstreamError, upstream.fetch_project, PROJECT, Validators())
            fake_pypi.fail(fault, "/files/", after=100)
            download = await wait(upstream.open_file(self.file_url(fake_pypi, WHEEL)))
            error = await wait_for_error(UpstreamError, download.deliver, lambda data: None)
            assert error is not None, fault

    @pytest_twisted.ensureDeferred
    async def test_unreachable_is_an_upstream_error(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        await fake_pypi.stop()  # the port now refuses connections
        await wait_for_error(UpstreamError, upstream.fetch_project, PROJECT, Validators())
        await wait_for_error(UpstreamError, upstream.open_file, self.file_url(fake_pypi, WHEEL))

    # ------------------------------------------------------- cancel, close

    @pytest_twisted.ensureDeferred
    async def test_cancelling_a_request(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        fake_pypi.fail("hang", "/simple/")
        pending = upstream.fetch_project(PROJECT, Validators())
        await _until(lambda: fake_pypi.count("/simple/") == 1)
        pending.cancel()
        # Well before the page timeout: the cancel, not a timer, ended it.
        with pytest.raises(CancelledError):
            await wait(pending)

    @pytest_twisted.ensureDeferred
    async def test_cancelling_a_download(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        fake_pypi.fail("stall", "/files/", after=100)
        download = await wait(upstream.open_file(self.file_url(fake_pypi, WHEEL)))
        received: list[bytes] = []
        delivered = download.deliver(received.append)
        await _until(lambda: sum(map(len, received)) >= 100)
        download.cancel()
        # Ended by the cancel, not by the (1 s) read timeout.
        with pytest.raises(UpstreamError):
            await wait(delivered, self.HTTP.read_timeout / 2)
        # An undelivered download can be cancelled too.
        download = await wait(upstream.open_file(self.file_url(fake_pypi, WHEEL)))
        download.cancel()

    @pytest_twisted.ensureDeferred
    async def test_close_drops_connections(self, upstream: Any, fake_pypi: FakeUpstream) -> None:
        await wait(upstream.fetch_project(PROJECT, Validators()))
        download = await wait(upstream.open_file(self.file_url(fake_pypi, WHEEL)))
        await _collect(download)
        self._to_close.remove(upstream)
        await wait(self.close_upstream(upstream))
        await _until(lambda: fake_pypi.open_connections == 0)
