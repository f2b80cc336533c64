"""Tests that break the suite's guards on purpose: run only by tests/test_guards.py.

Not named ``test_*.py``, so a normal run does not collect it.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer


@pytest.mark.timeout(0.5)
@pytest_twisted.ensureDeferred
async def test_async_hang():
    await defer.Deferred()


@pytest.mark.timeout(0.5)
def test_sync_hang():
    time.sleep(30)


def test_leaves_a_timer():
    from twisted.internet import reactor

    reactor.callLater(100, lambda: None)


def test_leaves_a_port():
    from twisted.internet import protocol, reactor

    reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")


@pytest.mark.dirty_reactor_ok("allowed explicitly")
def test_leaves_a_timer_allowed():
    from twisted.internet import reactor

    reactor.callLater(100, lambda: None)


@pytest_twisted.ensureDeferred
async def test_clean_after_itself():
    from twisted.internet import protocol, reactor, task

    port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    call = reactor.callLater(100, lambda: None)
    await task.deferLater(reactor, 0.01, lambda: None)
    call.cancel()
    await port.stopListening()
