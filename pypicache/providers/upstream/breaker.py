"""A circuit breaker around any upstream provider.

Why: when the upstream is down, every page refresh and every first download
would otherwise wait for its own timeout (seconds each, per request, for
every client) and keep hammering a host that cannot answer.  After
``threshold`` consecutive failures (within ``window`` seconds) the breaker
*opens*: for ``cooldown`` seconds no request reaches the upstream and every
call fails at once with :class:`pypicache.errors.CircuitOpen` (an UpstreamError, so the
mirror serves the stale page, or 503 with ``Retry-After`` when nothing is
cached).  Then it lets exactly one call through (*half-open*); the breaker
*closes* when that probe succeeds and opens again for another cool-down when
it fails.

Only real failures count: a 404 (UpstreamNotFound) and a 304 (NotModified)
are answers, and a call the caller itself cancelled is neither.  A download
whose body breaks off counts too, since its headers alone proved nothing.

:class:`BreakerUpstream` provides IUpstream, so it wraps any provider; it
keeps no state but counters and the clock it is given (tests pass a
``twisted.internet.task.Clock``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pypicache.errors import CircuitOpen
from pypicache.interfaces import IClosable, IUpstream, IUpstreamDownload
from pypicache.model import NotModified, UpstreamError, UpstreamNotFound
from pypicache.providers.upstream.policy import UpstreamRefused

__all__ = ["BreakerUpstream", "CLOSED", "OPEN", "HALF_OPEN", "with_breaker"]

log = Logger()

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


def _is_success(result: Any) -> bool | None:
    """True for an answer, False for a failure, None for neither (cancelled)."""
    if not isinstance(result, Failure):
        return True
    if result.check(NotModified, UpstreamNotFound):
        return True
    if result.check(CircuitOpen, CancelledError, UpstreamRefused):
        return None  # not asked, or refused by our own policy: says nothing about its health
    return False


@implementer(IUpstream, IClosable)
class BreakerUpstream:
    """IUpstream that stops calling ``inner`` after repeated failures.

    :param inner: the upstream provider to protect.
    :param clock: an ``IReactorTime`` (``seconds()``).
    :param threshold: consecutive failures that open the circuit (>= 1).
    :param cooldown: seconds the circuit stays open before a probe.
    :param window: a failure more than ``window`` seconds after the first
        one of the current streak starts a new streak, so rare failures
        spread over hours never add up.  Defaults to ``max(60, cooldown)``.
    """

    def __init__(self, inner: Any, clock: Any, threshold: int = 5, cooldown: float = 30.0,
                 window: float | None = None) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if cooldown <= 0:
            raise ValueError("cooldown must be positive")
        self.inner = inner
        self.clock = clock
        self.threshold = threshold
        self.cooldown = float(cooldown)
        self.window = float(window) if window is not None else max(60.0, self.cooldown)
        self.state = CLOSED
        self.failures = 0
        self._streak_started = 0.0
        self._opened_at = 0.0
        self._probing = False

    @property
    def url(self) -> str:
        return self.inner.url

    # ------------------------------------------------------------ state
    def _retry_after(self) -> int:
        remaining = self._opened_at + self.cooldown - self.clock.seconds()
        return max(1, math.ceil(remaining))

    def _admit(self) -> bool:
        """Whether a call may go upstream now; True marks it as the probe."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN and self.clock.seconds() >= self._opened_at + self.cooldown:
            self.state = HALF_OPEN
            log.info("upstream {url}: cool-down over, letting one request through to probe it",
                     url=self.url, breaker_state=HALF_OPEN)
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        raise CircuitOpen(self.url, self._retry_after() if self.state == OPEN else 1)

    def _record(self, outcome: bool | None, probe: bool, why: str = "") -> None:
        if probe:
            self._probing = False
        if outcome is None:
            return
        now = self.clock.seconds()
        if outcome:
            if self.state != CLOSED:
                log.info("upstream {url} answered again: circuit closed", url=self.url, breaker_state=CLOSED)
            self.state = CLOSED
            self.failures = 0
            return
        if self.state == HALF_OPEN and probe:
            self._open(now, f"the probe failed: {why}")
            return
        if self.state != CLOSED:
            return  # a call admitted before the circuit opened: already counted as down
        if self.failures == 0 or now - self._streak_started > self.window:
            self.failures = 0
            self._streak_started = now
        self.failures += 1
        if self.failures >= self.threshold:
            self._open(now, f"{self.failures} consecutive failures, the last: {why}")

    def _open(self, now: float, why: str) -> None:
        self.state = OPEN
        self._opened_at = now
        log.warn("upstream {url} is failing ({why}): circuit open, not asking it for {cooldown}s",
                 url=self.url, why=why, cooldown=self.cooldown, breaker_state=OPEN)

    def _call(self, start: Callable[[], Deferred[Any]], *, body_follows: bool = False) -> Deferred[Any]:
        """Run ``start`` if the circuit lets it through and count its outcome.

        ``body_follows``: success means only that headers arrived; unless
        this is the probe (an answer is enough to close), the body's outcome
        is what counts (see _WatchedDownload), so a server that always
        resets mid-body still opens the circuit.
        """
        try:
            probe = self._admit()
        except CircuitOpen as e:
            return defer.fail(e)
        d = defer.maybeDeferred(start)

        def settle(result: Any) -> Any:
            why = str(result.value) if isinstance(result, Failure) else ""
            outcome = _is_success(result)
            if outcome and body_follows and not probe:
                outcome = None
            self._record(outcome, probe, why)
            return result

        return d.addBoth(settle)

    # ------------------------------------------------------------- IUpstream
    def fetch_project_list(self, validators: Any) -> Deferred[Any]:
        return self._call(lambda: self.inner.fetch_project_list(validators))

    def fetch_project(self, name: str, validators: Any) -> Deferred[Any]:
        return self._call(lambda: self.inner.fetch_project(name, validators))

    def open_file(self, url: str) -> Deferred[Any]:
        return self._call(lambda: self.inner.open_file(url), body_follows=True).addCallback(
            lambda download: _WatchedDownload(download, self))

    def close(self) -> Deferred[None]:
        """IClosable, for whatever it wraps: closes the inner upstream if that
        declares IClosable."""
        if IClosable.providedBy(self.inner):
            return defer.maybeDeferred(self.inner.close)
        return defer.succeed(None)


@implementer(IUpstreamDownload)
class _WatchedDownload:
    """A download whose body failures count against the breaker."""

    def __init__(self, inner: Any, breaker: BreakerUpstream) -> None:
        self._inner = inner
        self._breaker = breaker
        self._cancelled = False

    @property
    def length(self) -> int | None:
        return self._inner.length

    def deliver(self, write: Callable[[bytes], Any]) -> Deferred[None]:
        def settle(result: Any) -> Any:
            if not isinstance(result, Failure):
                self._breaker._record(True, False)
            elif not self._cancelled and result.check(UpstreamError):
                self._breaker._record(False, False, str(result.value))
            return result

        return self._inner.deliver(write).addBoth(settle)

    def cancel(self) -> None:
        self._cancelled = True
        self._inner.cancel()


def with_breaker(upstream: Any, clock: Any, threshold: int, cooldown: float) -> Any:
    """``upstream`` behind a breaker; unchanged when ``threshold`` is 0 (off)
    or it already has one."""
    if threshold <= 0 or isinstance(upstream, BreakerUpstream):
        return upstream
    return BreakerUpstream(upstream, clock, threshold=threshold, cooldown=cooldown)
