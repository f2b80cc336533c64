"""JSON access log lines (``[monitoring] access_log_format = "json"``).

A log pipeline (Loki, Elasticsearch, jq) reads one JSON object per request
without a regex for the combined format, and gets what that format lacks:
the duration, the route label the metrics use and the authenticated user.
The line goes where the combined one goes (twisted.web's access log, which
twistd's log observer writes), so switching formats changes nothing else.
Fields: docs/operations.md, "Access log".
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address

from pypicache.services.traffic import route_of


def _text(value: bytes | None) -> str | None:
    """Client-supplied bytes as text: undecodable bytes escaped, never an error."""
    return value.decode("utf-8", "backslashreplace") if value is not None else None


def json_line(timestamp: Any, request: Any) -> str:
    """The access log line of a finished request (an IAccessLogFormatter:
    ``timestamp`` is twisted's combined-format date, unused here)."""
    address = request.getClientAddress()
    client = address.host if isinstance(address, (IPv4Address, IPv6Address)) else None
    path = getattr(request, "path", None) or request.uri.split(b"?", 1)[0]
    started = getattr(request, "started_at", None)
    identity = getattr(request, "identity", None)
    entry = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client": client,
        "method": _text(request.method),
        "path": _text(request.uri),
        "protocol": _text(request.clientproto),
        "status": request.code,
        "bytes": request.sentLength,
        "duration": round(time.monotonic() - started, 6) if started is not None else None,
        "user_agent": _text(request.getHeader(b"user-agent")),
        "referrer": _text(request.getHeader(b"referer")),
        "route": getattr(request.channel.site, "route_of", route_of)(path),
    }
    if identity is not None:
        entry["user"] = identity.user
    return json.dumps(entry, separators=(",", ":"))
