"""``POST /legacy/``: the upload API that twine and ``uv publish`` speak.

The order of checks is the order of cost: credentials first (401), then the
spooled body is parsed and validated in the thread pool (400/413), then the
ownership rules (403), then the filename rules (200 for an identical re-upload
so retries are safe, 409 "already exists" for anything else under a used
filename), and only then is anything stored: the first uploader's grant of a
new name, the METADATA blob, the file blob, and last the index row that makes
them visible (the grant is taken back if that row is not written).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource

from pypicache.daemon.config import UploadConfig
from pypicache.services.mirror import retry_after_seconds
from pypicache.model import FileExists, FileRecord, HashMismatch, UpstreamError, UpstreamNotFound, Validators
from pypicache.uploads.multipart import UploadError, parse_upload
from pypicache.web.auth import AUTH_CHALLENGE, authenticate
from pypicache.web.util import HTTPError, finish_bytes, handle

log = Logger()

def upload_time(seconds: float) -> str:
    """PEP 700's format: ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Upload(Resource):
    isLeaf = True

    def __init__(self, *, app: Any, accounts: Any, config: UploadConfig) -> None:
        super().__init__()
        self.app = app
        self.accounts = accounts
        self.config = config
        #: One upload at a time per project from the ownership check to the
        #: grant: two users racing to create a new name must not both become
        #: its first maintainer.
        self._locks: dict[str, DeferredLock] = {}

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
        app = self.app
        ctype = request.getHeader(b"content-type") or b""
        spool = app.downloader.spool_dir
        # The body is ours from here: Twisted closes request.content when the
        # client hangs up, which would pull it from under the parser's thread.
        body, request.content = request.content, None
        try:
            body.seek(0)
            form = await deferToThreadPool(app.reactor, app.threadpool, parse_upload, body, ctype,
                                           spool, max_file_bytes=self.config.max_size)
        except UploadError as e:
            raise HTTPError(e.status, e.reason) from None
        finally:
            body.close()
        try:
            await self._accept(request, identity, form)
        finally:
            path = getattr(form.file, "path", None)
            if path is not None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    async def _accept(self, request: Any, identity: Any, form: Any) -> None:
        from pypicache.uploads.validate import validate_upload  # zipfile, tarfile: loaded on first use

        app = self.app
        try:
            valid = await deferToThreadPool(app.reactor, app.threadpool, validate_upload, form)
        except UploadError as e:
            raise HTTPError(e.status, e.reason) from None
        lock = self._locks.setdefault(valid.project, DeferredLock())
        await lock.acquire()
        try:
            await self._store(request, identity, valid)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(valid.project, None)

    async def _store(self, request: Any, identity: Any, valid: Any) -> None:
        """Ownership, filename and storage: under the project's lock."""
        app = self.app
        name, filename = valid.project, valid.filename
        record = await app.mirror.load(name)
        existing = record is not None and record.origin == "local"
        if not existing:
            await self._check_new_private_name(name, record)
        maintainers = await self._check_may_upload(identity, name, existing)

        sha256 = valid.file.sha256
        used = await app.index.used_filename(filename)
        if used is not None:
            if used == sha256 and record is not None and record.file(filename) is not None:
                record = await self._restore_lost(name, record.file(filename), valid) or record
            self._answer_reupload(request, record, filename, used, sha256)
            return

        # The first uploader of a new name becomes its maintainer before
        # anything is published, and the grant is undone unless the file
        # is: a file never goes public without an owner.
        granted = await self._grant_first(identity, name, maintainers)
        published = False
        try:
            meta_writer = app.storage.open_write(None)
            meta_writer.write(valid.metadata_bytes)
            meta_blob = await meta_writer.commit()
            blob = await app.storage.ingest(valid.file.path, sha256)
            file_record = FileRecord(
                filename=filename,
                url="",
                hashes={"sha256": sha256},
                requires_python=valid.requires_python or None,
                core_metadata={"sha256": meta_blob.sha256},
                size=blob.size,
                upload_time=upload_time(app.reactor.seconds()),
                stored=True,
                metadata_stored=True,
                origin="local",
            )
            try:
                await app.index.add_file(name, file_record)
            except FileExists as e:  # a concurrent upload of the same filename won
                self._answer_reupload(request, await app.mirror.note_changed(name), filename, e.sha256, sha256)
                return
            published = True
        finally:
            if granted and not published:
                await self._undo_grant(identity, name)
        await app.mirror.note_changed(name)
        log.info("{user} uploaded {project}/{filename} ({size} bytes)", user=identity.user, project=name,
                 filename=filename, size=blob.size)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        finish_bytes(request, b"OK\n")

    async def _check_may_upload(self, identity: Any, name: str, existing: bool) -> set[str]:
        """403 unless ``identity`` may upload to ``name``; returns its
        maintainers (granted ones and the owners its claim names).

        A claimed name with no owner at all is created by no ordinary
        user: the first to race there would own a public name.
        """
        maintainers = set(await self.accounts.maintainers(name)) | set(self.config.claim.get(name, ()))
        if not identity.in_scope(name):
            raise HTTPError(403, f"this token of {identity.user} is limited to other projects than {name}")
        if name in self.config.claim and not maintainers and not existing and not identity.admin:
            raise HTTPError(403, f"{name} is claimed ([uploads] claim) but has no owner yet: an administrator "
                                 f"names its owners in [uploads.claim] or runs "
                                 f"`pypicache project grant {name} USER`")
        if not identity.may_upload(name, maintainers, existing=existing):
            raise HTTPError(403, f"{identity.user} may not upload to {name}")
        return maintainers

    async def _grant_first(self, identity: Any, name: str, maintainers: set[str]) -> bool:
        """Make the first uploader of a name without maintainers its
        maintainer; True when this call granted."""
        if maintainers:
            return False
        from pypicache.services.accounts import AccountError

        try:
            await self.accounts.grant(name, identity.user)
        except AccountError as e:  # e.g. the user was removed since the login was checked
            raise HTTPError(403, f"{identity.user} cannot become maintainer of {name}: {e}") from None
        return True

    async def _undo_grant(self, identity: Any, name: str) -> None:
        """Take back a first-upload grant whose file was not published."""
        try:
            await self.accounts.revoke(name, identity.user)
        except Exception:
            log.failure("could not take back {user}'s grant of {project} after a failed upload "
                        "(run `pypicache project revoke {project} {user}`)", user=identity.user, project=name)

    async def _restore_lost(self, name: str, current: FileRecord, valid: Any) -> Any:
        """Store again the bytes of an identical re-upload whose blob (or
        METADATA) storage lost, e.g. after ``pypicache verify --repair``
        quarantined a corrupt copy: the upload is the one way to get a private
        file back, and a 200 must mean the file is served.  Returns the
        updated record, or None when nothing was missing."""
        app = self.app
        record = None
        if not (current.stored and current.sha256 and await app.storage.exists(current.sha256)):
            blob = await app.storage.ingest(valid.file.path, valid.file.sha256)
            record = await app.index.mark_stored(name, current.filename, blob)
            app.mirror.note_record(name, record)
        meta_sha = current.metadata_sha256
        if current.core_metadata is not None and not (
                current.metadata_stored and meta_sha and await app.storage.exists(meta_sha)):
            writer = app.storage.open_write(meta_sha)
            writer.write(valid.metadata_bytes)
            try:
                meta_blob = await writer.commit()
            except HashMismatch:  # not the METADATA recorded at the first upload: keep the record
                log.warn("{project}/{filename}: re-uploaded METADATA differs from the recorded one",
                         project=name, filename=current.filename)
            else:
                record = await app.index.mark_metadata_stored(name, current.filename, meta_blob.sha256)
                app.mirror.note_record(name, record)
        if record is not None:
            log.warn("{project}/{filename}: stored again from an identical re-upload (it had been lost)",
                     project=name, filename=current.filename)
        return record

    def _answer_reupload(self, request: Any, record: Any, filename: str, used: str | None, sha256: str) -> None:
        present = record is not None and record.file(filename) is not None
        if used == sha256 and present:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            finish_bytes(request, b"OK (identical file already uploaded)\n")
            return
        raise HTTPError(409, f"File already exists: {filename} (a filename can be used only once, "
                             "even after deletion)")

    async def _check_new_private_name(self, name: str, record: Any) -> None:
        """Refuse to create a private name that the upstream has (dependency
        confusion), unless the config claims it.

        Only the upstream's "not found" lets an unclaimed name through: when
        it cannot be asked (offline, breaker open, timeout, 5xx) the answer
        is 503, never an acceptance, or any public name the server never
        cached could be taken and would shadow the upstream for good.
        """
        if name in self.config.claim:
            return
        if record is not None and record.origin == "upstream" and record.files:
            raise HTTPError(403, f"{name} exists on the upstream index: an administrator must claim it "
                                 "([uploads] claim in the config) before it can be uploaded here")
        if self.app.mirror.offline:
            raise HTTPError(503, f"this server is offline, so it cannot check whether {name} exists on the "
                                 "upstream index: while offline, only names listed in [uploads] claim "
                                 "in the config can be created")
        try:
            await self.app.upstream.fetch_project(name, Validators())
        except UpstreamNotFound:
            return
        except UpstreamError as e:
            raise HTTPError(503, f"cannot check whether {name} exists on the upstream index: {e}",
                            {b"retry-after": str(retry_after_seconds(e)).encode()}) from None
        except Exception as e:  # a provider bug is no "not found" either
            log.failure("upstream provider failed checking {project}", project=name)
            raise HTTPError(503, f"cannot check whether {name} exists on the upstream index: {e}",
                            {b"retry-after": b"30"}) from None
        raise HTTPError(403, f"{name} exists on the upstream index: an administrator must claim it "
                             "([uploads] claim in the config) before it can be uploaded here")
