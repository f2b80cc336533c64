"""``POST /legacy/``: the upload API that twine and ``uv publish`` speak.

This route translates HTTP: credentials first (401), then the spooled body is
parsed in the thread pool (400/413), then the
:class:`~pypicache.services.publishing.Publisher` validates and publishes it,
and its refusals become status codes (403 ownership, 409 a used filename, 503
when the upstream cannot be asked).  An identical re-upload answers 200 so
retries are safe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.web.resource import Resource

from pypicache.services.publishing import FilenameUsed, NotAllowed, Publisher, PublishRefused, UpstreamUnknown
from pypicache.uploads.multipart import UploadError, parse_upload
from pypicache.web.auth import AUTH_CHALLENGE, authenticate, client_of
from pypicache.web.util import HTTPError, finish_bytes, handle

if TYPE_CHECKING:  # the daemon builds the routes: only the type comes from it
    from pypicache.daemon.config import UploadConfig


def refusal(e: PublishRefused) -> HTTPError:
    """The HTTP answer for a publishing service's refusal."""
    if isinstance(e, UpstreamUnknown):
        headers = {b"retry-after": str(e.retry_after).encode()} if e.retry_after is not None else None
        return HTTPError(503, e.reason, headers)
    if isinstance(e, FilenameUsed):
        return HTTPError(409, e.reason)
    if isinstance(e, NotAllowed):
        return HTTPError(403, e.reason)
    return HTTPError(400, e.reason)


class Upload(Resource):
    isLeaf = True

    def __init__(self, *, publisher: Publisher, accounts: Any, config: UploadConfig, spool_dir: Path,
                 in_thread: Callable[..., Any]) -> None:
        super().__init__()
        self.publisher = publisher
        self.accounts = accounts
        self.config = config
        self.spool_dir = spool_dir
        self.in_thread = in_thread

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"upload with POST (twine upload, uv publish)\n"

    def render_POST(self, request: Any) -> Any:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: upload to /legacy/\n"
        return handle(request, lambda: self._upload(request))

    async def _upload(self, request: Any) -> None:
        if not self.config.enabled:
            raise HTTPError(403, "uploads are disabled on this server")
        authorization = request.getHeader(b"authorization")
        # Usually checked already, when the headers arrived (web/request.py).
        identity = getattr(request, "identity", None) or await authenticate(self.accounts, request)
        if identity is None:
            if authorization is None:
                reason = "upload needs credentials (a user and password, or __token__ and a token)"
            else:
                reason = "invalid credentials: wrong user or password, or an unknown or revoked token"
            raise HTTPError(401, reason, AUTH_CHALLENGE)
        ctype = request.getHeader(b"content-type") or b""
        # The body is ours from here: Twisted closes request.content when the
        # client hangs up, which would pull it from under the parser's thread.
        body, request.content = request.content, None
        try:
            body.seek(0)
            form = await self.in_thread(parse_upload, body, ctype, self.spool_dir,
                                        max_file_bytes=self.config.max_size)
        except UploadError as e:
            raise HTTPError(e.status, e.reason) from None
        finally:
            body.close()
        try:
            published = await self.publisher.publish(identity, form, client=client_of(request))
        except UploadError as e:
            raise HTTPError(e.status, e.reason) from None
        except PublishRefused as e:
            raise refusal(e) from None
        finally:
            path = getattr(form.file, "path", None)
            if path is not None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        finish_bytes(request, b"OK (identical file already uploaded)\n" if published.identical else b"OK\n")
