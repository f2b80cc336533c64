"""Shared fixtures.  The reactor is imported inside fixtures only: pytest-twisted
installs it at configure time, and importing it here first would install the
default one behind its back.
"""

from __future__ import annotations

import os
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
from tests import loopback_only
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


# ------------------------------------------------------------------ suite guards
#
# Two guards run around every test: a time limit, so a hang fails one test in
# a minute instead of stalling the run, and a dirty-reactor check, so a test
# that leaves a listening port, a connection or a pending timer behind fails
# itself instead of disturbing whichever test runs next.

#: Seconds a test may take; ``@pytest.mark.timeout(seconds)`` changes it.
DEFAULT_TIMEOUT = 60.0
#: Tests that drive real pip, uv or twine (``@pytest.mark.integration``).
INTEGRATION_TIMEOUT = 180.0
#: How long a finished test's connections get to close (a few reactor turns).
SETTLE_SECONDS = 0.5

#: Modules whose tests still leave things in the reactor: reported in the
#: terminal summary, not failed.  Every other module (and every new one) is
#: strict.  Remove a module once its leaks are fixed.
LEAKY_MODULES: frozenset[str] = frozenset()


class TestTimeout(Exception):
    """A test ran past its limit."""


def pytest_configure(config: Any) -> None:
    loopback_only.install()
    config.addinivalue_line("markers", "timeout(seconds): the test's time limit (default 60 s; integration 180 s)")
    config.addinivalue_line("markers", "dirty_reactor_ok(reason): the test may leave things in the reactor")
    config._reactor_leaks = []  # type: ignore[attr-defined]


def _time_limit(item: Any) -> float:
    mark = item.get_closest_marker("timeout")
    if mark is not None:
        return float(mark.args[0] if mark.args else mark.kwargs["seconds"])
    return INTEGRATION_TIMEOUT if item.get_closest_marker("integration") else DEFAULT_TIMEOUT


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> Any:
    """pytest-twisted's own call, with a time limit.

    An async test's Deferred is cancelled when the limit passes (its
    ``finally`` blocks run, its fixtures are torn down); a synchronous test
    blocking the reactor thread is interrupted by SIGALRM a few seconds
    later.  Uses pytest-twisted internals: when they are missing (another
    version) the test runs without a limit rather than not at all.
    """
    import signal

    import pytest_twisted
    from twisted.internet import defer
    from twisted.python.failure import Failure

    run = getattr(pytest_twisted, "_async_pytest_pyfunc_call", None)
    instances = getattr(pytest_twisted, "_instances", None)
    reactor = getattr(instances, "reactor", None)
    if (run is None or reactor is None or getattr(instances, "gr_twisted", None) is None
            or getattr(pyfuncitem.obj, "hypothesis", None) is not None):
        return None
    seconds = _time_limit(pyfuncitem)
    message = f"{pyfuncitem.nodeid} took more than {seconds:g} s (raise it with @pytest.mark.timeout(seconds))"

    def timed_out(result: Any, timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            return Failure(TestTimeout(message))
        return result

    done: defer.Deferred[Any] = defer.Deferred()

    def in_reactor() -> None:
        test = defer.maybeDeferred(run, pyfuncitem, pyfuncitem.obj, {})
        test.addTimeout(seconds, reactor, onTimeoutCancel=timed_out)
        test.chainDeferred(done)

    def alarm(signum: int, frame: Any) -> None:
        raise TestTimeout(message + " while blocking the reactor")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds + min(5.0, seconds / 2))  # after the Deferred's cancel
    try:
        reactor.callLater(0, in_reactor)
        pytest_twisted.blockon(done)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    return True


def _reactor_state() -> tuple[set[Any], set[Any]]:
    from twisted.internet import reactor

    calls = {c for c in reactor.getDelayedCalls() if c.active()}
    selectables = {s for s in set(reactor.getReaders()) | set(reactor.getWriters())
                   if not type(s).__module__.startswith("twisted.internet._signals")}  # the reactor's wakers
    return calls, selectables


def _close_client_pool() -> Any:
    """treq's shared connection pool keeps idle keep-alive connections (and
    their expiry timers) open between requests: a test's, not the server's."""
    try:
        from treq.api import get_global_pool
    except ImportError:  # another treq: its pool's connections count as the test's
        return None
    pool = get_global_pool()
    return pool.closeCachedConnections() if pool is not None else None


def _leaks(before: tuple[set[Any], set[Any]]) -> list[str]:
    calls, selectables = _reactor_state()
    found = [f"pending call: {c}" for c in calls - before[0]]
    found += [f"open: {s!r}" for s in selectables - before[1]]
    return sorted(found)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: Any) -> Any:
    item._reactor_before = _reactor_state()
    return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: Any, nextitem: Any) -> Any:
    """After the test's fixtures are gone: nothing of the test may remain in
    the reactor (a leaked port or timer makes another test fail, far away).

    What is compared is the reactor before the test's setup and after its
    teardown, so a module- or session-scoped fixture holding a port counts
    as its first test's leak: mark that test ``dirty_reactor_ok``.
    ``PYPICACHE_TEST_LEAKS=report`` lists every leak and fails none.
    """
    result = yield
    before = getattr(item, "_reactor_before", None)
    if before is None:
        return result
    import pytest_twisted
    from twisted.internet import reactor, task

    closing = _close_client_pool()
    if closing is not None:
        pytest_twisted.blockon(closing)
    leaks = _leaks(before)
    waited = 0.0
    while leaks and waited < SETTLE_SECONDS:
        pytest_twisted.blockon(task.deferLater(reactor, 0.01, lambda: None))
        waited += 0.01
        leaks = _leaks(before)
    if not leaks:
        return result
    allowed = (item.get_closest_marker("dirty_reactor_ok") is not None
               or item.module.__name__.split(".")[-1] in LEAKY_MODULES
               or os.environ.get("PYPICACHE_TEST_LEAKS") == "report")  # survey: report every leak, fail none
    if allowed:
        item.config._reactor_leaks.append((item.nodeid, leaks))
        return result
    pytest.fail("the test left these in the reactor:\n  " + "\n  ".join(leaks), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    leaks = getattr(terminalreporter.config, "_reactor_leaks", [])
    if leaks:
        terminalreporter.section("left in the reactor (allowed: LEAKY_MODULES or dirty_reactor_ok)")
        for nodeid, found in leaks:
            terminalreporter.write_line(f"{nodeid}: {len(found)}: {found[0]}")
