"""What every ``pypicache`` command module shares: one-line errors, output,
and running a coroutine with the configured index and storage.

The commands (``admin.py`` and the modules it lists in ``COMMAND_MODULES``)
import from here, never from each other, so adding a command touches its own
module and one line of ``admin.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

__all__ = ["CommandError", "fail", "out", "open_storage", "run_reactor"]


class CommandError(Exception):
    """An operation failed: print the message, exit with ``code`` (1; 2 for
    a usage error found after parsing, such as a bad target environment)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"pypicache: error: {message}\n")
    return code


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def open_storage(cfg: Any, context: Any) -> Any:
    """The configured storage, by name through the registry as the server
    builds it.  The context is not ``exclusive`` (see :func:`run_reactor`),
    so a filesystem store skips its start-up clean-up, which would delete a
    running server's files in progress."""
    from pypicache import providers

    return providers.create("storage", cfg.storage.name, cfg.storage.options, context)


def run_reactor(cfg: Any, args: argparse.Namespace,
                 command: Callable[[Any, argparse.Namespace, Any, Any], Any],
                 prepare: Callable[[Any, Any], None] | None = None) -> int:
    """Build the configured index, then run the reactor just for
    ``command(cfg, args, index, context)`` (a coroutine returning the exit
    status) and close the index.  ``prepare(reactor, threadpool)`` runs first.
    Everything that can fail in the config fails before the reactor runs,
    like the daemon's start-up.  Providers come from the registry with a
    context that is not ``exclusive``: a server may be running on the same
    data."""
    from twisted.internet import defer, reactor, task

    from pypicache import providers
    from pypicache.daemon.context import start_context, stop_context

    context = start_context(reactor, cfg.data_dir, threads=2, name="pypicache-admin", http=cfg.http,
                            exclusive=False)
    threadpool = context.threadpool
    try:
        if prepare is not None:
            prepare(reactor, threadpool)
        index = providers.create("index", cfg.index.name, cfg.index.options, context)
    except BaseException:
        stop_context(context)
        raise
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        try:
            outcome["code"] = await command(cfg, args, index, context)
        except BaseException as e:
            outcome["error"] = e
        finally:
            try:
                await index.close()
            finally:
                stop_context(context)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass  # react always exits; the outcome says how it went
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("code", 1)
