"""``/api/projects/<project>/<target>[/yank|/unyank]``: yank, unyank, delete.

``target`` is a filename or a version (then every uploaded file of that
version).  This route translates HTTP; what may be changed, and the change,
are :class:`pypicache.services.management.Management`'s, which the admin
command uses too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web.resource import Resource

from pypicache.model import InvalidName, normalize
from pypicache.services.management import Management, NoSuchProject, NotAllowed, NotPrivate, NoUploadedFile
from pypicache.web.auth import AUTH_CHALLENGE, authenticate, client_of
from pypicache.web.util import HTTPError, finish_bytes, handle

log = Logger()


class Manage(Resource):
    isLeaf = True

    def __init__(self, *, management: Management, accounts: Any) -> None:
        super().__init__()
        self.management = management
        self.accounts = accounts

    def render_POST(self, request: Any) -> Any:
        return handle(request, lambda: self._handle(request))

    render_DELETE = render_POST

    def render_GET(self, request: Any) -> bytes:
        """GET and HEAD (twisted routes HEAD here) change nothing: 405 naming
        the methods that do, instead of a 500 for a missing renderer."""
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST, DELETE")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"use POST .../yank, POST .../unyank or DELETE\n"

    async def _handle(self, request: Any) -> None:
        post = [p.decode("utf-8", "replace") for p in request.postpath]
        if post[-1:] == [""]:
            post = post[:-1]
        if len(post) < 3 or post[0] != "projects":
            raise HTTPError(404, "not found")
        if request.method == b"DELETE" and len(post) == 3:
            action = "delete"
        elif request.method == b"POST" and len(post) == 4 and post[3] in ("yank", "unyank", "delete"):
            action = post[3]
        else:
            raise HTTPError(405, "use POST .../yank, POST .../unyank or DELETE")
        try:
            name = normalize(post[1])
        except InvalidName:
            raise HTTPError(404, "not a valid project name") from None
        target = post[2]

        identity = request.identity = await authenticate(self.accounts, request)  # the access log's user
        if identity is None:
            raise HTTPError(401, "credentials needed", AUTH_CHALLENGE)
        try:  # the admin command's rule: only uploaded files, never the upstream's
            files = await self.management.select(name, target, identity=identity)
        except NoSuchProject as e:
            raise HTTPError(404, e.reason) from None
        except NotPrivate as e:
            raise HTTPError(409, e.reason) from None
        except NotAllowed as e:
            raise HTTPError(403, e.reason) from None
        except NoUploadedFile as e:
            raise HTTPError(409 if e.upstream else 404, str(e)) from None
        await self.management.apply(action, name, files, reason=self._reason(request), actor=identity.user,
                                    client=client_of(request))
        log.info("{user} did {action} on {project} {files}", user=identity.user, action=action, project=name,
                 files=[f.filename for f in files])
        request.setHeader(b"content-type", b"application/json")
        finish_bytes(request, json.dumps({"action": action, "project": name,
                                          "files": [f.filename for f in files]}).encode() + b"\n")

    @staticmethod
    def _reason(request: Any) -> str | None:
        values = request.args.get(b"reason")
        if values:
            return values[0].decode("utf-8", "replace")[:1000] or None
        body = request.content.read(64 * 1024) if request.content is not None else b""
        if not body:
            return None
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        try:
            if ctype == b"application/json":
                reason = json.loads(body).get("reason")
            else:
                reason = parse_qs(body.decode("utf-8")).get("reason", [None])[0]
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise HTTPError(400, "unreadable body: send reason=... form-encoded or {\"reason\": ...} as JSON") from None
        return str(reason)[:1000] if reason else None
