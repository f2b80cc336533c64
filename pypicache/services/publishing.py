"""Publishing an upload: who may, under which filename, and storing it whole.

The route (:mod:`pypicache.web.upload`) checks credentials and parses the
body; everything after that is here, in the order of cost: the upload is
validated in the thread pool, then the ownership rules, then the filename
rules (an identical re-upload succeeds so retries are safe; anything else
under a used filename is refused, even after deletion), and only then is
anything stored: the first uploader's grant of a new name, the METADATA
blob, the file blob, and last the index row that makes them visible (the
grant is taken back if that row is not written).

The index given is the server's :class:`~pypicache.services.catalogue.CataloguedIndex`,
so the pages follow every write here without being told.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from pypicache.model import FileExists, FileRecord, HashMismatch, UpstreamError, UpstreamNotFound, Validators
from pypicache.services.mirror import retry_after_seconds

__all__ = ["Publisher", "Published", "PublishRefused", "NotAllowed", "FilenameUsed", "UpstreamUnknown",
           "upload_time"]

log = Logger()


def upload_time(seconds: float) -> str:
    """PEP 700's format: ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PublishRefused(Exception):
    """Nothing was published; ``reason`` is one line for the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAllowed(PublishRefused):
    """The ownership rules refuse it (HTTP: 403)."""


class FilenameUsed(PublishRefused):
    """The filename was used before for other bytes, or for a deleted file (HTTP: 409)."""


class UpstreamUnknown(PublishRefused):
    """A new private name, and the upstream cannot say whether it has it (HTTP: 503)."""

    def __init__(self, reason: str, retry_after: int | None) -> None:
        super().__init__(reason)
        #: Seconds worth waiting before trying again; None when waiting will not help (offline).
        self.retry_after = retry_after


@attrs.frozen
class Published:
    """What an accepted upload did.  ``identical``: the same bytes were
    already published under that filename (a retry), so nothing new is."""

    project: str
    filename: str
    identical: bool = False
    claimed: bool = False  # the uploader became the new name's first maintainer
    sha256: str | None = None


class Publisher:
    """Publishes validated uploads into ``storage`` and ``index``.

    :param accounts: :class:`pypicache.services.accounts.Accounts` (maintainers, grants).
    :param mirror: the :class:`~pypicache.services.mirror.Mirror`: the
        project as currently known, and whether the server is offline.
    :param upstream: the IUpstream asked whether a new private name is public.
    :param claim: ``[uploads] claim``: names that may be created although
        the upstream has them, each with its owners.
    :param in_thread: runs a blocking callable in the thread pool (validation).
    """

    def __init__(self, *, storage: Any, index: Any, accounts: Any, mirror: Any, upstream: Any, clock: Any,
                 claim: Mapping[str, frozenset[str]], in_thread: Callable[..., Any]) -> None:
        self.storage = storage
        self.index = index
        self.accounts = accounts
        self.mirror = mirror
        self.upstream = upstream
        self.clock = clock
        self.claim = claim
        self.in_thread = in_thread
        self.audit: Any = None  # a pypicache.services.audit.AuditLog, or None
        #: One upload at a time per project from the ownership check to the
        #: grant: two users racing to create a new name must not both become
        #: its first maintainer.
        self._locks: dict[str, DeferredLock] = {}

    async def publish(self, identity: Any, form: Any, client: str | None = None) -> Published:
        """Validate and publish a parsed upload form as ``identity``.

        Raises :class:`pypicache.uploads.UploadError` for an invalid upload,
        or a :class:`PublishRefused`.  The form's spooled file is the
        caller's to delete.
        """
        from pypicache.uploads.validate import validate_upload  # zipfile, tarfile: loaded on first use

        valid = await self.in_thread(validate_upload, form)
        lock = self._locks.setdefault(valid.project, DeferredLock())
        await lock.acquire()
        try:
            published = await self._publish(identity, valid)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(valid.project, None)
        if self.audit is not None and not published.identical:
            who = {"client": client, "token": identity.token_id}
            if published.claimed:
                await self.audit.record("claim", identity.user, published.project, **who)
            await self.audit.record("upload", identity.user, f"{published.project}/{published.filename}",
                                    sha256=published.sha256, **who)
        return published

    async def _publish(self, identity: Any, valid: Any) -> Published:
        """Ownership, filename and storage: under the project's lock."""
        name, filename = valid.project, valid.filename
        rules = self.mirror.blocklist.rules
        if rules.active and rules.file_reason(name, filename) is not None:  # a known-bad release, uploaded or not
            raise NotAllowed(f"{filename}: {rules.file_reason(name, filename)}")
        record = await self.mirror.load(name)
        existing = record is not None and record.origin == "local"
        if not existing:
            await self._check_new_private_name(name, record)
        maintainers = await self._check_may_upload(identity, name, existing)

        sha256 = valid.file.sha256
        used = await self.index.used_filename(filename)
        if used is not None:
            if used == sha256 and record is not None and record.file(filename) is not None:
                record = await self._restore_lost(name, record.file(filename), valid) or record
            return self._reupload(record, name, filename, used, sha256)

        # The first uploader of a new name becomes its maintainer before
        # anything is published, and the grant is undone unless the file
        # is: a file never goes public without an owner.
        granted = await self._grant_first(identity, name, maintainers)
        published = False
        try:
            meta_writer = self.storage.open_write(None)
            meta_writer.write(valid.metadata_bytes)
            meta_blob = await meta_writer.commit()
            provenance_sha256 = None
            if valid.provenance is not None:  # PEP 740 attestations, checked against the file
                provenance_writer = self.storage.open_write(None)
                provenance_writer.write(valid.provenance)
                provenance_sha256 = (await provenance_writer.commit()).sha256
            blob = await self.storage.ingest(valid.file.path, sha256)
            file_record = FileRecord(
                filename=filename,
                url="",
                hashes={"sha256": sha256},
                requires_python=valid.requires_python or None,
                core_metadata={"sha256": meta_blob.sha256},
                size=blob.size,
                upload_time=upload_time(self.clock.seconds()),
                stored=True,
                metadata_stored=True,
                origin="local",
                provenance_sha256=provenance_sha256,
            )
            try:
                await self.index.add_file(name, file_record)
            except FileExists as e:  # a concurrent upload of the same filename won
                return self._reupload(await self.index.get_project(name), name, filename, e.sha256, sha256)
            published = True
        finally:
            if granted and not published:
                await self._undo_grant(identity, name)
        log.info("{user} uploaded {project}/{filename} ({size} bytes)", user=identity.user, project=name,
                 filename=filename, size=blob.size)
        return Published(name, filename, claimed=granted, sha256=sha256)

    async def _check_may_upload(self, identity: Any, name: str, existing: bool) -> set[str]:
        """NotAllowed unless ``identity`` may upload to ``name``; returns its
        maintainers (granted ones and the owners its claim names).

        A claimed name with no owner at all is created by no ordinary
        user: the first to race there would own a public name.
        """
        maintainers = set(await self.accounts.maintainers(name)) | set(self.claim.get(name, ()))
        if not identity.in_scope(name):
            raise NotAllowed(f"this token of {identity.user} is limited to other projects than {name}")
        if name in self.claim and not maintainers and not existing and not identity.admin:
            raise NotAllowed(f"{name} is claimed ([uploads] claim) but has no owner yet: an administrator "
                             f"names its owners in [uploads.claim] or runs "
                             f"`pypicache project grant {name} USER`")
        if not identity.may_upload(name, maintainers, existing=existing):
            raise NotAllowed(f"{identity.user} may not upload to {name}")
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
            raise NotAllowed(f"{identity.user} cannot become maintainer of {name}: {e}") from None
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
        file back, and success must mean the file is served.  Returns the
        updated record, or None when nothing was missing."""
        storage = self.storage
        record = None
        if not (current.stored and current.sha256 and await storage.exists(current.sha256)):
            blob = await storage.ingest(valid.file.path, valid.file.sha256)
            record = await self.index.mark_stored(name, current.filename, blob)
        meta_sha = current.metadata_sha256
        if current.core_metadata is not None and not (
                current.metadata_stored and meta_sha and await storage.exists(meta_sha)):
            writer = storage.open_write(meta_sha)
            writer.write(valid.metadata_bytes)
            try:
                meta_blob = await writer.commit()
            except HashMismatch:  # not the METADATA recorded at the first upload: keep the record
                log.warn("{project}/{filename}: re-uploaded METADATA differs from the recorded one",
                         project=name, filename=current.filename)
            else:
                record = await self.index.mark_metadata_stored(name, current.filename, meta_blob.sha256)
        if record is not None:
            log.warn("{project}/{filename}: stored again from an identical re-upload (it had been lost)",
                     project=name, filename=current.filename)
        return record

    @staticmethod
    def _reupload(record: Any, name: str, filename: str, used: str | None, sha256: str) -> Published:
        """A used filename: the same bytes still listed are a retry, anything else is refused."""
        if used == sha256 and record is not None and record.file(filename) is not None:
            return Published(name, filename, identical=True)
        raise FilenameUsed(f"File already exists: {filename} (a filename can be used only once, "
                           "even after deletion)")

    async def _check_new_private_name(self, name: str, record: Any) -> None:
        """Refuse to create a private name that the upstream has (dependency
        confusion), unless the config claims it.

        Only the upstream's "not found" lets an unclaimed name through: when
        it cannot be asked (offline, breaker open, timeout, 5xx) the answer
        is UpstreamUnknown, never an acceptance, or any public name the
        server never cached could be taken and would shadow the upstream for
        good.
        """
        if name in self.claim:
            return
        if record is not None and record.origin == "upstream" and record.files:
            raise NotAllowed(f"{name} exists on the upstream index: an administrator must claim it "
                             "([uploads] claim in the config) before it can be uploaded here")
        if self.mirror.offline:
            raise UpstreamUnknown(f"this server is offline, so it cannot check whether {name} exists on the "
                                  "upstream index: while offline, only names listed in [uploads] claim "
                                  "in the config can be created", retry_after=None)
        try:
            await self.upstream.fetch_project(name, Validators())
        except UpstreamNotFound:
            return
        except UpstreamError as e:
            raise UpstreamUnknown(f"cannot check whether {name} exists on the upstream index: {e}",
                                  retry_after=retry_after_seconds(e)) from None
        except Exception as e:  # a provider bug is no "not found" either
            log.failure("upstream provider failed checking {project}", project=name)
            raise UpstreamUnknown(f"cannot check whether {name} exists on the upstream index: {e}",
                                  retry_after=30) from None
        raise NotAllowed(f"{name} exists on the upstream index: an administrator must claim it "
                         "([uploads] claim in the config) before it can be uploaded here")
