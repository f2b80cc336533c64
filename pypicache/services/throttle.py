"""Failed-login throttling: a sliding window of attempts per key.

A password check costs tens of milliseconds of argon2 on purpose, so a client
trying passwords is both a guessing attack and a denial of service.  Each
client address and each user name gets ``max_failures`` attempts per
``window`` seconds; beyond that the server answers 429 with ``Retry-After``
without hashing anything.  An attempt counts from the moment it starts (so a
burst of parallel guesses is held to the limit too) and is taken back when it
succeeds: only failures stay counted.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any, Hashable, Iterable

__all__ = ["FailureWindow"]


class FailureWindow:
    """Attempts per key over the last ``window`` seconds.

    :param clock: an ``IReactorTime`` (``seconds()``), injected for tests.
    :param max_keys: how many keys are remembered; the least recently
        touched are forgotten first, so a flood of new addresses or names
        cannot grow memory without bound.
    """

    def __init__(self, clock: Any, *, max_failures: int, window: float, max_keys: int = 10_000) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self._max_keys = max_keys
        self._seen: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def _recent(self, key: Hashable, now: float) -> deque[float] | None:
        stamps = self._seen.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._seen[key]
            return None
        return stamps

    def retry_after(self, keys: Iterable[Hashable]) -> int:
        """Seconds until one of ``keys`` may try again; 0 when all may now."""
        now = self._clock.seconds()
        wait = 0.0
        for key in keys:
            stamps = self._recent(key, now)
            if stamps is not None and len(stamps) >= self.max_failures:
                wait = max(wait, stamps[len(stamps) - self.max_failures] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def attempt(self, keys: Iterable[Hashable]) -> float:
        """Count an attempt against every key; returns its stamp for :meth:`succeeded`."""
        now = self._clock.seconds()
        for key in keys:
            stamps = self._recent(key, now)
            if stamps is None:
                stamps = self._seen[key] = deque()
            stamps.append(now)
            self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return now

    def succeeded(self, keys: Iterable[Hashable], stamp: float) -> None:
        """Take back the attempt made at ``stamp``: it was not a failure."""
        for key in keys:
            stamps = self._seen.get(key)
            if stamps is not None:
                try:
                    stamps.remove(stamp)
                except ValueError:
                    pass
                if not stamps:
                    del self._seen[key]
