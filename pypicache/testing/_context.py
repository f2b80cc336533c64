"""What every contract shares: a provider context and bounded waits.

Kept apart from the contracts so the daemon's way of building a thread pool
and context has one place to be mirrored in (:func:`make_context`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet import defer

from pypicache.providers import ProviderContext

#: How long any single wait in a contract test may take before it fails.
TIMEOUT = 10.0


def make_context(tmp_path: Path) -> ProviderContext:
    """A ProviderContext with the global reactor, a *started* thread pool and
    ``data_dir = tmp_path``.  Stop it with :func:`stop_context` (the
    ``provider_context`` fixture does both)."""
    from twisted.internet import reactor

    from pypicache.daemon.context import start_context

    return start_context(reactor, Path(tmp_path), threads=4, name="pypicache-test")


def stop_context(context: ProviderContext) -> None:
    """Stop the thread pool of a context from :func:`make_context`."""
    if context.threadpool.started:
        context.threadpool.stop()


@pytest.fixture
def provider_context(tmp_path: Path) -> Iterator[ProviderContext]:
    """``make_context(tmp_path)``, stopped at teardown.  Import it into a test
    module or conftest to use it."""
    context = make_context(tmp_path)
    yield context
    stop_context(context)


async def wait(value: Any, timeout: float = TIMEOUT) -> Any:
    """Await ``value`` if it is a Deferred (failing after ``timeout``
    seconds so a hang fails fast), else return it."""
    if isinstance(value, defer.Deferred):
        from twisted.internet import reactor

        value.addTimeout(timeout, reactor)
        return await value
    return value


async def wait_for_error(error: type[BaseException], f: Any, *args: Any) -> BaseException:
    """Call ``f(*args)`` and expect ``error``, raised directly or as the
    failure of the Deferred it returns."""
    try:
        await wait(f(*args))
    except error as e:
        return e
    raise AssertionError(f"{getattr(f, '__name__', f)}{args!r} did not raise {error.__name__}")


def sha256_of(data: bytes) -> str:
    """The hex sha256 of ``data``: the key every storage provider files it under."""
    return hashlib.sha256(data).hexdigest()
