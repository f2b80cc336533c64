"""The server's counters in Prometheus' terms, read at scrape time.

Why a custom collector rather than prometheus_client's own Counter objects:
the request paths (the fast path above all) already count into the plain
:class:`pypicache.services.stats.Stats` attributes, which cost one integer
addition.  The collector turns those numbers, the breaker's state and the
page cache's size into metric families when ``/metrics`` is scraped: a
handful of objects, well under a millisecond of the reactor's time.

This module imports prometheus_client: it is imported on the first
``/metrics`` request only, so start-up does not pay for it.  Each App gets
its own :class:`CollectorRegistry` (never the process-wide one: tests and
embedders build many apps in one process).
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pypicache import __version__

__all__ = ["CONTENT_TYPE_LATEST", "ServerCollector", "make_registry", "scrape"]

#: (Stats attribute, metric name without ``_total``, help text)
COUNTERS = (
    ("pages", "pypicache_pages_served", "Simple index pages answered (304s included), both views, fast path included."),
    ("pages_not_modified", "pypicache_pages_not_modified", "Simple index pages answered 304 Not Modified."),
    ("pages_stale", "pypicache_pages_stale", "Simple index pages served stale because the upstream could not be asked."),
    ("file_hits", "pypicache_file_cache_hits", "File downloads served from storage."),
    ("file_misses", "pypicache_file_cache_misses", "File downloads not in storage, fetched from the upstream."),
    ("bytes_from_cache", "pypicache_cache_served_bytes", "Bytes of files sent to clients from storage."),
    ("bytes_from_upstream", "pypicache_upstream_fetched_bytes", "Bytes of files fetched from the upstream."),
)

#: What the breaker's states read as on ``pypicache_upstream_circuit_open``:
#: half-open (one probe let through) still refuses every other call.
BREAKER_OPEN = {"closed": 0, "open": 1, "half-open": 1}


class ServerCollector:
    """Reads ``stats``, ``upstream`` (its ``state`` when it is a circuit
    breaker) and ``pages`` (a PageCache: ``used``, ``budget``, ``len``)."""

    def __init__(self, stats: Any, upstream: Any = None, pages: Any = None, cache: Any = None) -> None:
        self.stats = stats
        self.upstream = upstream
        self.pages = pages
        self.cache = cache  # an eviction CacheKeeper ([cache] max_size), or None

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("pypicache_build_info", "The running pypicache version (always 1).",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        for attribute, name, help_text in COUNTERS:
            yield CounterMetricFamily(name, help_text, value=getattr(self.stats, attribute))
        state = getattr(self.upstream, "state", None)
        if state in BREAKER_OPEN:
            yield GaugeMetricFamily("pypicache_upstream_circuit_open",
                                    "1 while the upstream circuit breaker refuses calls (open or half-open), else 0.",
                                    value=BREAKER_OPEN[state])
        if self.pages is not None:
            yield GaugeMetricFamily("pypicache_memory_pages", "Rendered index pages held in memory.",
                                    value=len(self.pages))
            yield GaugeMetricFamily("pypicache_memory_pages_bytes", "Bytes of rendered index pages held in memory.",
                                    value=self.pages.used)
            yield GaugeMetricFamily("pypicache_memory_pages_limit_bytes",
                                    "The byte budget for rendered index pages in memory.", value=self.pages.budget)
        if self.cache is not None:
            used, limit = self.cache.usage()
            if used is not None:
                yield GaugeMetricFamily("pypicache_storage_used_bytes",
                                        "Bytes of cached upstream files and their METADATA in storage: what "
                                        "[cache] max_size bounds (private uploads do not count).", value=used)
            yield GaugeMetricFamily("pypicache_storage_limit_bytes", "[cache] max_size.", value=limit)
            yield CounterMetricFamily("pypicache_cache_evictions", "Cached files evicted for the size limit.",
                                      value=self.cache.evictions)
            yield CounterMetricFamily("pypicache_cache_evicted_bytes", "Bytes freed by evicting cached files.",
                                      value=self.cache.evicted_bytes)


def make_registry(collector: ServerCollector) -> CollectorRegistry:
    """A private registry holding ``collector`` only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def scrape(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)


# -------------------------------------------------- requests and the upstream
# (pypicache.services.traffic counts; this turns its dicts into families)


def _histogram(name: str, help_text: str, label: str, timings: dict[str, Any]) -> Metric:
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    from pypicache.services.traffic import BUCKETS

    family = HistogramMetricFamily(name, help_text, labels=[label])
    bounds = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
    for value, t in sorted(timings.items()):
        if not any(t.counts):
            continue  # a route never asked for: no series
        running, buckets = 0, []
        for bound, count in zip(bounds, t.counts):
            running += count
            buckets.append((bound, running))
        family.add_metric([value], buckets, t.total)
    return family


class TrafficCollector:
    """Reads a :class:`pypicache.services.traffic.Traffic`: requests by route
    and status, upstream latency and errors, coalesced waiters, downloads
    in flight.  Give it a ``Traffic.snapshot()`` to collect off the reactor."""

    def __init__(self, traffic: Any) -> None:
        self.traffic = traffic

    def collect(self) -> Iterator[Metric]:
        t = self.traffic
        requests = CounterMetricFamily("pypicache_http_requests", "HTTP requests answered, by route and status "
                                       "(the page fast path included).", labels=["route", "status"])
        for (route, status), n in sorted(dict(t.requests).items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        yield _histogram("pypicache_http_request_duration_seconds",
                         "Time from a request's first line to its last byte handed to the socket, by route.",
                         "route", dict(t.durations))
        yield _histogram("pypicache_upstream_request_duration_seconds",
                         "Time until the upstream answered (a page's whole body; a file's headers), by kind.",
                         "kind", dict(t.upstream_durations))
        errors = CounterMetricFamily("pypicache_upstream_errors", "Upstream requests that failed, by kind "
                                     "and reason (timeout, connect, reset, status_5xx, hash_mismatch, ...).",
                                     labels=["kind", "reason"])
        for (kind, reason), n in sorted(dict(t.upstream_errors).items()):
            errors.add_metric([kind, reason], n)
        yield errors
        coalesced = CounterMetricFamily("pypicache_coalesced_requests", "Requests that joined an upstream page "
                                        "fetch or file download in flight instead of starting their own.",
                                        labels=["kind"])
        for kind, n in sorted(dict(t.coalesced).items()):
            coalesced.add_metric([kind], n)
        yield coalesced
        refused = CounterMetricFamily("pypicache_http_refused", "Connections answered and closed before a request "
                                      "was handled, by reason: connection_cap and client_cap (503), header_timeout "
                                      "and body_rate (408), bad_request (400, a head that cannot be parsed).",
                                      labels=["reason"])
        for reason, n in dict(t.refusals).items():
            refused.add_metric([reason], n)
        yield refused
        if t.in_flight is not None:
            yield GaugeMetricFamily("pypicache_upstream_downloads_in_flight",
                                    "File downloads from the upstream running now.", value=t.in_flight())


class _Replay:
    """A collector giving back families collected earlier."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def scrape_in_thread(registry: CollectorRegistry, traffic: Any, in_thread: Any) -> Any:
    """The text exposition of ``registry`` and ``traffic``, formatted in the
    thread pool; a Deferred firing with bytes.

    With every route, status and upstream error seen, a scrape is some 400
    lines, and building and formatting them costs the CPU 2–10 ms
    (docs/operations.md): too long for the reactor.  So the reactor only
    collects ``registry`` (a handful of numbers) and snapshots ``traffic``
    (copies of a few small dicts, tens of µs); the thread does the rest on
    data nobody else touches.
    """
    families = list(registry.collect())
    frozen = TrafficCollector(traffic.snapshot())

    def text() -> bytes:
        out = CollectorRegistry(auto_describe=False)
        out.register(_Replay(families))
        out.register(frozen)
        return generate_latest(out)

    return in_thread(text)
