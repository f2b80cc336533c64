"""Is the server ready to answer?  The check behind ``/ready``.

``/health`` only says the process answers (the reactor runs); ``/ready``
asks more: a tiny index read and a storage look-up, each within
``timeout`` seconds, so a load balancer stops sending clients to a server
whose index is closed or whose storage hangs.  Neither reads package data
a client could not see anyway: the index is asked for a name no project
can have, the storage for a blob no file can have.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

#: Not a valid project name (PEP 508 names cannot contain a space): never a real record.
PROBE_PROJECT = "pypicache ready probe"
#: A well-formed key no real file hashes to in practice.
PROBE_BLOB = "0" * 64


@attrs.define
class Readiness:
    """Checks ``index`` and ``storage``; ``clock`` bounds each check to ``timeout`` seconds."""

    index: Any
    storage: Any
    clock: Any
    timeout: float = 2.0

    async def problems(self) -> list[str]:
        """What failed, one short line each (empty: ready).  Both checks run at once."""
        checks = {
            "index": defer.maybeDeferred(self.index.get_project, PROBE_PROJECT),
            "storage": defer.maybeDeferred(self.storage.exists, PROBE_BLOB),
        }
        for d in checks.values():
            d.addTimeout(self.timeout, self.clock)
        found = []
        for name, d in checks.items():
            try:
                await d
            except defer.TimeoutError:
                found.append(f"{name}: no answer within {self.timeout:g}s")
            except Exception as e:  # any failure means not ready; say which
                log.warn("readiness check of the {what} failed: {why}", what=name, why=e)
                found.append(f"{name}: {type(e).__name__}: {e}")
        return found
