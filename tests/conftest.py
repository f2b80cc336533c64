"""Shared fixtures.  The reactor is imported inside fixtures only: pytest-twisted
installs it at configure time, and importing it here first would install the
default one behind its back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted

from tests.builders import build_sdist, build_wheel
from tests.clients import isolated_env
from tests.daemon import STOP_TIMEOUT, Daemon, _Collector
from tests.fakeupstream import FakeUpstream
from tests.logcapture import LogCapture
from tests.server import RunningServer, make_config, start_server


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


@pytest_twisted.async_yield_fixture
async def proxy(tmp_path: Path, fake_upstream: FakeUpstream) -> AsyncIterator[RunningServer]:
    """A server with the default configuration in front of :func:`fake_upstream`."""
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def srv(tmp_path: Path, fake_upstream: FakeUpstream) -> AsyncIterator[RunningServer]:
    """A server with the short fault-test timeouts (tests/faults.py) and ``page_ttl = 0``."""
    from tests.faults import fault_config, start as start_fault_server

    server = await start_fault_server(fault_config(tmp_path, fake_upstream.url))
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def start(tmp_path: Path, fake_upstream: FakeUpstream) -> AsyncIterator[Any]:
    """``await start(**uploads)``: a server with users alice and bob (tests/uploads.py's
    PASSWORD, a cheap hasher) whose ``[uploads]`` are overridden; stopped after the test."""
    from tests.uploads import PASSWORD, cheap_accounts

    started: list[RunningServer] = []

    async def start_(**uploads: Any) -> RunningServer:
        config = make_config(tmp_path, fake_upstream.url)
        if uploads:
            config = attrs.evolve(config, uploads=attrs.evolve(config.uploads, **uploads))
        server = await start_server(config)
        started.append(server)
        store = cheap_accounts(server)
        store.add_user("alice", PASSWORD)
        store.add_user("bob", PASSWORD)
        return server

    yield start_
    for server in started:
        await server.stop()


@pytest.fixture
def logs() -> Any:
    """Every twisted.logger event emitted during the test (:class:`LogCapture`)."""
    from twisted.logger import globalLogPublisher

    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)


@pytest_twisted.async_yield_fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    """``spawn(argv, port=None, env=None)`` -> :class:`tests.daemon.Daemon`; every
    daemon still running at teardown is killed and reaped."""
    from twisted.internet import reactor

    daemons: list[Daemon] = []

    def start_(argv: Sequence[str], *, port: int | None = None, env: dict[str, str] | None = None) -> Daemon:
        full_env = isolated_env({"PYTHONUNBUFFERED": "1", **(env or {})})
        proto = _Collector()
        transport = reactor.spawnProcess(proto, argv[0], list(argv), env=full_env, path=str(tmp_path))
        transport.closeStdin()
        daemon = Daemon(proto, transport, port)
        daemons.append(daemon)
        return daemon

    yield start_
    for daemon in daemons:
        if daemon.running:
            daemon.kill()
            d = daemon.proto.ended
            d.addTimeout(STOP_TIMEOUT, reactor)
            try:
                await d
            except Exception:
                pass
