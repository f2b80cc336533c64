"""The thread pool and provider context every process builds providers with.

The server (:func:`pypicache.daemon.app.build`), the admin command
(:mod:`pypicache.cli.admin`) and the plugin authors' kit
(:func:`pypicache.testing.make_context`) all need the same two things before
the first provider exists: a started thread pool for blocking work, and the
:class:`~pypicache.providers.ProviderContext` handed to every factory.  Built
here once, so a new context field (or a second process kind) is added in one
place instead of three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.python.threadpool import ThreadPool

from pypicache.providers import HTTPSettings, ProviderContext

__all__ = ["start_context", "stop_context"]


def start_context(reactor: Any, data_dir: Path, *, threads: int, name: str,
                  http: HTTPSettings | None = None, exclusive: bool = True) -> ProviderContext:
    """A context whose thread pool (at most ``threads`` threads, named
    ``name``) is started; give it back with :func:`stop_context`.

    ``exclusive=False`` tells providers that a server may be running on the
    same data (the admin command): see :class:`ProviderContext`.
    """
    threadpool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
    threadpool.start()
    return ProviderContext(reactor=reactor, threadpool=threadpool, data_dir=Path(data_dir),
                           http=http if http is not None else HTTPSettings(), exclusive=exclusive)


def stop_context(context: ProviderContext) -> None:
    """Stop the context's thread pool (idempotent).  Pools are not daemonic:
    a process exits only once each of them is stopped."""
    if context.threadpool.started:
        context.threadpool.stop()
