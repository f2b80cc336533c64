"""The shutdown drain: stop taking work, finish what was taken, then close.

When the server stops (SIGTERM, see pypicache.daemon.tap), its listeners
have stopped accepting before :func:`drain` runs; under socket activation the
listening socket stays open in systemd, so new connections wait in its
queue for the next process.  The drain then

* closes every idle keep-alive connection at once (one that has answered a
  request and is not reading the next);
* lets every request in flight finish, long downloads and uploads included,
  answering each with ``Connection: close`` and closing the connection
  after it (the fast path and twisted.web are told through their
  ``draining`` flags);
* gives a connection that has not sent its first request yet
  :data:`FRESH_GRACE` seconds to send it: it was accepted just before the
  listeners stopped, and its client is about to ask;
* aborts whatever is still open after ``timeout`` seconds.

The main listeners and the ``[monitoring]`` listener are drained together,
within the one ``timeout``: a scrape in flight finishes, an idle scraper's
keep-alive connection is closed.  From the start of the drain ``/ready``
answers ``503`` (pypicache.web.monitoring reads the Site's ``draining``
flag), so a load balancer probing a connection it already holds stops
routing here; ``/health`` stays ``200`` to the end.

It polls the open connections (every :data:`POLL` seconds, only while
shutting down) rather than hooking into every request: the hot paths stay
as they are.  Imported at shutdown only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from pypicache import _twisted

log = Logger()

#: Seconds between looks at the open connections while draining.
POLL = 0.05
#: Seconds a connection accepted before the listeners stopped has to send its first request.
FRESH_GRACE = 2.0


def _busy(inner: Any) -> bool:
    """Is the connection's protocol in the middle of a request (reading its
    head or body, or answering it)?"""
    if isinstance(inner, HTTPChannel):
        return bool(inner.requests) or _twisted.reading_head(inner)
    return bool(getattr(inner, "_buffer", b""))  # the fast path: a head begun, not yet answered


def _no_keep_alive(inner: Any) -> None:
    """The request in flight on a twisted.web channel is its last: close
    after it, and say so if its answer has not started."""
    if isinstance(inner, HTTPChannel) and inner.requests:
        inner.persistent = False
        for request in inner.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])


def start(limits: Any) -> None:
    """From now on every answer closes its connection."""
    site = getattr(limits, "site", None)  # the fast path's Site (when it is in front)
    for factory in (limits.inner, site):
        if factory is not None and hasattr(factory, "draining"):
            factory.draining = True
    for guard in list(limits.live):
        _no_keep_alive(guard.inner)


def close_idle(limits: Any, fresh_too: bool) -> int:
    """Close the connections with no request in flight; how many are still open."""
    for guard in list(limits.live):
        transport = guard.transport
        if transport is None or transport.disconnecting:
            continue
        if (guard.used or fresh_too) and not _busy(guard.inner):
            transport.loseConnection()
    return len(limits.live)


async def drain(limits: Any, clock: Any, timeout: float, *, also: Iterable[Any] = (),
                report: Callable[[int], Any] | None = None) -> bool:
    """Drain ``limits`` (the :class:`~pypicache.web.limits.ConnectionLimits`
    the listeners served) and those in ``also`` (the monitoring listener's);
    True if every connection closed by itself within ``timeout`` seconds,
    False if some had to be cut.  ``report`` hears the number of
    connections still open whenever it changes (systemd's ``STATUS=``)."""
    groups = (limits, *also)
    for group in groups:
        start(group)
    began = clock.seconds()
    opened = sum(len(group.live) for group in groups)
    if opened:
        log.info("shutting down: waiting up to {timeout:g} s for {n} open connection(s)", timeout=timeout, n=opened)
    told = None
    while True:
        elapsed = clock.seconds() - began
        left_now = sum([close_idle(group, fresh_too=elapsed >= FRESH_GRACE) for group in groups])
        if report is not None and left_now != told:
            told = left_now
            report(left_now)
        if not left_now:
            return True
        if elapsed >= timeout:
            break
        await deferLater(clock, min(POLL, max(timeout - elapsed, 0)), lambda: None)
    await deferLater(clock, 0, lambda: None)  # connections closed just now report it on the next turn
    left = [guard for group in groups for guard in group.live]
    if not left:
        return True
    log.warn("shutting down: {n} connection(s) still busy after server.shutdown_timeout ({timeout:g} s): cut",
             n=len(left), timeout=timeout)
    for guard in left:
        if guard.transport is not None:
            guard.transport.abortConnection()
    return False
