"""Shared fixtures.  The reactor is imported inside fixtures only: pytest-twisted
installs it at configure time, and importing it here first would install the
default one behind its back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted

from tests.builders import build_sdist, build_wheel
from tests.clients import isolated_env  # noqa: F401  (re-exported for tests)
from tests.fakeupstream import FakeUpstream


def populate(fu: FakeUpstream, dest: Path) -> None:
    """The standard small index every test can count on.

    * ``tinyproj`` 1.0 and 2.0, wheel and sdist each; 2.0 needs Python >=3.8;
    * ``depproj`` 1.0, a wheel requiring ``tinyproj>=1.0``;
    * ``Yanked_Proj`` 1.0, a wheel spelled unnormalised, yanked ("broken").
    """
    for version, rp in (("1.0", None), ("2.0", ">=3.8")):
        fu.add(build_wheel(dest, "tinyproj", version, requires_python=rp, summary="A tiny project"))
        fu.add(build_sdist(dest, "tinyproj", version, requires_python=rp))
    fu.add(build_wheel(dest, "depproj", "1.0", requires_dist=["tinyproj>=1.0"]))
    fu.add(build_wheel(dest, "Yanked_Proj", "1.0"), yanked="broken")


@pytest_twisted.async_yield_fixture(scope="function")
async def fake_upstream(tmp_path: Path) -> AsyncIterator[FakeUpstream]:
    """A listening :class:`FakeUpstream` with the :func:`populate` projects.

    ``fu.files`` maps each filename to its built path.  Stopped (port closed,
    connections aborted, timers cancelled) after the test.
    """
    from twisted.internet import reactor

    fu = FakeUpstream()
    populate(fu, tmp_path / "upstream-dists")
    await fu.listen(reactor)
    try:
        yield fu
    finally:
        await fu.stop()
