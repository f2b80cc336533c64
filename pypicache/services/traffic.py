"""Requests by route and status, upstream latency and errors, coalesced waiters.

Counted in plain dicts and lists: the request paths (the page fast path above
all) pay a dict increment and a bisect per answer, about 0.3 µs, where a
prometheus_client ``Counter.labels(...).inc()`` plus ``Histogram.observe``
costs several times that (tests/test_metrics.py measures both).  The metrics
collector (pypicache.services.metrics) turns these numbers into metric
families when ``/metrics`` is scraped.

Connections refused before twisted.web has a request (pypicache.web.limits:
the connection caps, the header and body deadlines, heads it cannot parse)
never reach the site's finish path; they are counted by :data:`REFUSALS`.

Labels come from small fixed sets (:data:`ROUTES`, :data:`ERROR_REASONS`, :data:`REFUSALS`):
a client can never grow the number of time series by inventing paths.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any, Callable

from pypicache.errors import CircuitOpen
from pypicache.model import HashMismatch, NotModified, UpstreamNotFound

#: The route label of a request; never a raw path (bounded cardinality).
ROUTES = ("simple_page", "simple_index", "local_page", "file", "metadata", "json_api", "upload", "manage",
          "prefetch", "monitoring", "ui", "other")
#: Upper bounds (seconds) of the request and upstream latency histograms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Why an upstream call failed: the ``reason`` label.
ERROR_REASONS = ("timeout", "connect", "reset", "status_4xx", "status_5xx", "status_429", "hash_mismatch",
                 "size_mismatch", "malformed", "refused", "circuit_open", "other")

#: Why a connection was answered and closed before any request was handled
#: (the ``reason`` label of ``pypicache_http_refused_total``): over
#: ``max_connections`` or ``max_connections_per_client`` (503), headers not
#: complete within ``header_timeout`` or a body under ``min_body_rate`` (408),
#: a head twisted.web cannot parse (400).
REFUSALS = ("connection_cap", "client_cap", "header_timeout", "body_rate", "bad_request")

#: First path segment -> route (the ``/simple/`` families are split further).
_FIRST = {b"files": "file", b"pypi": "json_api", b"legacy": "upload", b"api": "manage",
          b"requirements.txt": "prefetch", b"requirements": "prefetch", b"health": "monitoring",
          b"ready": "monitoring", b"metrics": "monitoring", b"stats": "monitoring", b"ui": "ui",
          b"static": "ui", b"project": "ui", b"statistics": "ui", b"as-of": "simple_page"}


def route_of(path: bytes) -> str:
    """The route label of a request path (without its query): a few bytes
    operations, whatever the path."""
    if path == b"/" or path == b"":
        return "ui"
    parts = path.split(b"/", 4)
    first = parts[1] if len(parts) > 1 else b""
    local = first == b"local"
    if local:
        parts = parts[1:]
        first = parts[1] if len(parts) > 1 else b""
    if first == b"simple":
        if len(parts) < 3 or parts[2] == b"":
            return "simple_index"
        return "local_page" if local else "simple_page"
    if first == b"files":
        return "metadata" if path.endswith(b".metadata") else "file"
    if local:
        return "other"
    return _FIRST.get(first, "other")


def error_reason(error: BaseException) -> str:
    """The :data:`ERROR_REASONS` label of an upstream failure.

    Read from the exception's type and status, else from the one-line
    message the upstream provider wrote (pypicache.providers.upstream.simple
    words timeouts, stalls and network errors plainly).
    """
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, HashMismatch):
        return "hash_mismatch"
    status = getattr(error, "status", None)
    if isinstance(status, int):
        if status == 429:
            return "status_429"
        return "status_5xx" if status >= 500 else "status_4xx"
    name = type(error).__name__
    if name == "UpstreamRefused":
        return "refused"
    text = str(error).lower()
    text = text.partition(": ")[2] or text  # after the URL or filename the message starts with
    if "upstream sent" in text or "upstream sends" in text or "too large" in text:
        return "size_mismatch"
    if "timed out" in text or "timedout" in text or "timeout" in text or "stalled" in text \
            or "not over after" in text:
        return "timeout"
    if "connectionrefused" in text or "connecterror" in text or "dnslookup" in text or "no route" in text:
        return "connect"
    if "reset" in text or "truncated" in text or "connectionlost" in text or "connectiondone" in text \
            or "responsefailed" in text or "responseneverreceived" in text:
        return "reset"
    if "malformed" in text or "not a simple api page" in text:
        return "malformed"
    return "other"


class Timings:
    """A histogram's data: a count per :data:`BUCKETS` bound (and one for
    +Inf), not cumulative, and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def copy(self) -> "Timings":
        other = Timings()
        other.counts = self.counts[:]
        other.total = self.total
        return other

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


class Traffic:
    """The counters; ``now`` (seconds, monotonic) times upstream calls.

    ``in_flight`` is set by the app: a callable giving the number of
    upstream downloads running (read at scrape time only).
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        #: One per route from the start: the hot path never checks for it.
        self.durations: dict[str, Timings] = {route: Timings() for route in ROUTES}
        self.upstream_durations: dict[str, Timings] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.coalesced: dict[str, int] = {}
        #: Every reason from the start, at 0: a series exists before its first refusal.
        self.refusals: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self.in_flight: Callable[[], int] | None = None

    def snapshot(self) -> "Traffic":
        """A copy that later requests do not change (for formatting a scrape
        in another thread); its ``in_flight`` is the number now."""
        copy = Traffic(self.now)
        copy.requests = self.requests.copy()
        copy.durations = {k: t.copy() for k, t in self.durations.items()}
        copy.upstream_durations = {k: t.copy() for k, t in self.upstream_durations.items()}
        copy.upstream_errors = dict(self.upstream_errors)
        copy.coalesced = dict(self.coalesced)
        copy.refusals = dict(self.refusals)
        if self.in_flight is not None:
            running = self.in_flight()
            copy.in_flight = lambda: running
        return copy

    def request(self, route: str, status: int, seconds: float) -> None:
        """One answered request (the site's finish path and the fast path);
        ``route`` is one of :data:`ROUTES`."""
        self.requests[route, status] += 1
        timings = self.durations[route]
        timings.counts[bisect_left(BUCKETS, seconds)] += 1
        timings.total += seconds

    def refused(self, reason: str) -> None:
        """A connection answered 503, 408 or 400 and closed by
        pypicache.web.limits; ``reason`` is one of :data:`REFUSALS`."""
        self.refusals[reason] += 1

    def upstream_call(self, kind: str, seconds: float) -> None:
        """An upstream request of ``kind`` ("page", "file") that got an answer."""
        timings = self.upstream_durations.get(kind)
        if timings is None:
            timings = self.upstream_durations[kind] = Timings()
        timings.observe(seconds)

    def upstream_error(self, kind: str, error: BaseException) -> str:
        """An upstream failure of ``kind``; the reason it was counted under."""
        key = (kind, error_reason(error))
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1
        return key[1]

    def joined(self, kind: str) -> None:
        """A request that joined an upstream fetch of ``kind`` already in flight."""
        self.coalesced[kind] = self.coalesced.get(kind, 0) + 1

    async def timed(self, kind: str, call: Callable[[], Any]) -> Any:
        """Await ``call()``, an upstream request, counting its latency or its
        error.  NotModified and UpstreamNotFound are answers, not errors."""
        start = self.now()
        try:
            result = await call()
        except (NotModified, UpstreamNotFound):
            self.upstream_call(kind, self.now() - start)
            raise
        except Exception as e:
            if not isinstance(e, CircuitOpen):  # not asked: no latency to show
                self.upstream_call(kind, self.now() - start)
            self.upstream_error(kind, e)
            raise
        self.upstream_call(kind, self.now() - start)
        return result
