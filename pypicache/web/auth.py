"""Authenticating a request: the one place routes turn credentials into an
Identity, with the client's address for failed-login throttling and the
throttle's refusals as HTTP answers (429/503 with ``Retry-After``)."""

from __future__ import annotations

from typing import Any

from pypicache.services.accounts import LoginRefused
from pypicache.web.util import HTTPError

AUTH_CHALLENGE = {b"www-authenticate": b'Basic realm="pypicache"'}


def client_of(request: Any) -> str | None:
    """The peer's address as failed logins are counted (None on a UNIX socket)."""
    return getattr(request.getClientAddress(), "host", None)


async def authenticate(accounts: Any, request: Any) -> Any:
    """The request's Identity, or None for missing or wrong credentials;
    HTTPError when the credentials were not checked (throttled, busy)."""
    try:
        return await accounts.authenticate(request.getHeader(b"authorization"), client_of(request))
    except LoginRefused as e:
        raise HTTPError(e.status, e.reason, {b"retry-after": str(e.retry_after).encode()}) from None
