"""Exceptions that cross module boundaries and are not about the data model.

An error type raised in one layer and caught in another lives here, so the
catching layer imports no provider or service module just to name it (the
data model's own errors, such as ``UpstreamError``, are in
:mod:`pypicache.model`).
"""

from __future__ import annotations

from pypicache.model import UpstreamError

__all__ = ["CircuitOpen", "ConfigError", "DiskFull"]


class ConfigError(Exception):
    """A bad configuration: the message is one line naming the key or value.

    Raised at start-up (by config loading and by provider factories); the
    daemon prints the message and exits instead of showing a traceback.
    """


class CircuitOpen(UpstreamError):
    """The upstream's circuit breaker is open: the upstream was not asked.

    Raised by :mod:`pypicache.providers.upstream.breaker`; an UpstreamError,
    so callers fall back to what is cached, and the routes answer 503 (not
    502: nothing failed just now).  ``retry_after`` is the number of seconds
    until the next probe (at least 1), so the server can tell clients when
    to come back.
    """

    def __init__(self, url: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"{url}: upstream unavailable (circuit open, next try in {retry_after}s)")


class DiskFull(Exception):
    """No space left to spool or store a file, so it cannot be fetched now.

    Raised by the downloader (:mod:`pypicache.services.downloads`) and
    answered 507 with Retry-After by the routes.  Not an UpstreamError: the
    upstream is fine, and nothing that falls back on an upstream failure
    (stale pages, the breaker's counters) should take a full disk for one.
    """
