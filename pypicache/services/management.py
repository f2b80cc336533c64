"""Yank, unyank and delete uploaded files: one rule for the HTTP API and the command.

Only uploaded files of private projects are managed
(:func:`pypicache.providers.index.rules.uploaded_files`): an upstream file's
yank state belongs to the upstream and would be overwritten by the next
refresh.  Yanked files stay listed, marked (PEP 592); deleted files
disappear, and their filenames stay used (an upload can never replace a
file).

The route (:mod:`pypicache.web.manage`) and the ``pypicache`` command
(:mod:`pypicache.cli.admin`) both :meth:`Management.select` the files, then
:meth:`Management.apply` the action; the command asks for confirmation in
between.  In the server the index is the
:class:`~pypicache.services.catalogue.CataloguedIndex`, so pages follow.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from pypicache.model import FileRecord
from pypicache.providers.index.rules import NoUploadedFile, uploaded_files

__all__ = ["Management", "ACTIONS", "ManageRefused", "NoSuchProject", "NotPrivate", "NotAllowed",
           "NoUploadedFile"]

#: Each action and its past tense, for messages.
ACTIONS = {"yank": "yanked", "unyank": "unyanked", "delete": "deleted"}


class ManageRefused(Exception):
    """Nothing was changed in project ``name``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


class NoSuchProject(ManageRefused):
    """The index has no project of that name (HTTP: 404)."""


class NotPrivate(ManageRefused):
    """The project follows the upstream: nothing in it is ours to manage (HTTP: 409)."""


class NotAllowed(ManageRefused):
    """The user maintains no such project (HTTP: 403)."""


class Management:
    """Selects and changes the uploaded files of private projects in ``index``.

    ``accounts`` and ``claim`` (``[uploads] claim``: owners who maintain a
    name too) decide who may; without ``accounts`` only the administrator's
    command (``identity=None``) can select.
    """

    def __init__(self, index: Any, *, accounts: Any = None, claim: Mapping[str, frozenset[str]] | None = None,
                 audit: Any = None) -> None:
        self.index = index
        self.audit = audit  # a pypicache.services.audit.AuditLog, or None
        self.accounts = accounts
        self.claim = claim or {}

    async def select(self, name: str, target: str, *, identity: Any = None) -> list[FileRecord]:
        """The uploaded files of project ``name`` (normalised) that
        ``target`` (a filename, or a version) names.

        ``identity`` None is the administrator at the command line; any other
        must maintain the project.  Raises :class:`ManageRefused` or
        :class:`NoUploadedFile`, checked in this order: unknown project, not
        private, not allowed, no such file.
        """
        maintainers: set[str] = set()
        if identity is not None:
            maintainers = set(await self.accounts.maintainers(name)) | set(self.claim.get(name, ()))
        record = await self.index.get_project(name)
        if record is None:
            raise NoSuchProject(name, f"no such project: {name}")
        if record.origin != "local":
            raise NotPrivate(name, f"{name} is not a private project: its files follow the upstream")
        if identity is not None and not identity.may_manage(name, maintainers):
            raise NotAllowed(name, f"{identity.user} may not manage {name}")
        return uploaded_files(record, target)

    async def apply(self, action: str, name: str, files: list[FileRecord], *, reason: str | None = None,
                    done: Callable[[FileRecord], None] | None = None, actor: str = "admin-cli",
                    client: str | None = None) -> None:
        """Do ``action`` ("yank", "unyank" or "delete") to each of ``files``
        (from :meth:`select`); ``done(file)`` is called after each one.
        ``reason`` is kept for a yank only.  Each file done is written to
        the audit log (``self.audit``, pypicache.services.audit) by ``actor``."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        for f in files:
            if action == "delete":
                await self.index.remove_file(name, f.filename)
            else:
                yank = action == "yank"
                await self.index.set_yanked(name, f.filename, yank, reason if yank else None)
            if self.audit is not None:
                await self.audit.record(action, actor, f"{name}/{f.filename}", client=client,
                                        reason=reason if action == "yank" else None)
            if done is not None:
                done(f)
