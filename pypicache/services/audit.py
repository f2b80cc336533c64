"""The audit log: who changed what, when, from where; one JSON line each.

``<data_dir>/audit.log`` (mode 0600) records every upload, yank, unyank,
delete, claim, grant and revocation, token and user change, policy change,
and refused (blocked) download.  Each event is one line written with a
single ``write`` on an ``O_APPEND`` descriptor and fsync'd before the call
returns, so concurrent writers (the server and admin commands) never
interleave and each line survives a crash; a line torn by a crash mid-write
is skipped by :func:`read` with a warning.  Nothing here rewrites or trims
the file: rotating it is the operator's (docs/security.md, "Audit log").

The server writes through its thread pool (:class:`AuditLog` with an
``in_thread``); the admin command writes directly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

FILENAME = "audit.log"
#: The actions the log knows (``pypicache audit --action`` checks against them).
ACTIONS = ("upload", "yank", "unyank", "delete", "claim", "grant", "revoke", "token.create",
           "token.revoke", "user.add", "user.remove", "user.passwd", "policy.change", "policy.block",
           "policy.unblock", "policy.allow", "policy.disallow", "blocked")


def event(action: str, actor: str, target: str, *, client: str | None = None, when: datetime | None = None,
          **details: Any) -> dict[str, Any]:
    """One audit record: RFC 3339 UTC time, actor, action, target, client, details."""
    when = when or datetime.now(timezone.utc)
    entry: dict[str, Any] = {"time": when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
                             .replace("+00:00", "Z"), "actor": actor, "action": action, "target": target,
                             "client": client}
    entry.update({k: v for k, v in details.items() if v is not None})
    return entry


def append(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one line, durably (blocking: a thread, or the CLI).

    After a torn last line the entry starts on a line of its own, so one
    crash costs one line, never the next one too."""
    line = (json.dumps(entry, sort_keys=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a crash: end it first
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path, warn: Callable[[str], Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every readable entry, oldest first; a torn or garbled line is skipped
    (and ``warn`` told, by default on stderr)."""
    if warn is None:
        def warn(message: str) -> None:
            print(f"pypicache audit: warning: {message}", file=sys.stderr)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                entry = json.loads(raw)
                if not isinstance(entry, dict) or not raw.endswith(b"\n"):
                    raise ValueError("incomplete")
            except ValueError:
                warn(f"{path}:{number}: skipped a torn or unreadable line")
                continue
            yield entry


class AuditLog:
    """The server's writer: appends in the thread pool, never fails a request
    (an audit write that fails is logged as an error)."""

    def __init__(self, path: Path, in_thread: Callable[..., Any] | None = None) -> None:
        self.path = Path(path)
        self.in_thread = in_thread

    async def record(self, action: str, actor: str, target: str, *, client: str | None = None,
                     **details: Any) -> None:
        entry = event(action, actor, target, client=client, **details)
        try:
            if self.in_thread is None:
                append(self.path, entry)
            else:
                await self.in_thread(append, self.path, entry)
        except OSError as e:
            log.error("audit log {path}: cannot write {action} of {target}: {error}", path=str(self.path),
                      action=action, target=target, error=str(e))

    def __call__(self, action: str, actor: str, target: str, **kw: Any) -> Any:
        """Fire and forget (for hooks that must not wait): a Deferred."""
        from twisted.internet import defer

        return defer.ensureDeferred(self.record(action, actor, target, **kw))
