"""The document PyPI's JSON API gives for a project or one of its releases.

Built from the same records the pages come from, in PyPI's shape: ``info``
(the core metadata of one release), ``releases`` (version -> files),
``urls`` (the files of the ``info`` release), ``last_serial`` and
``vulnerabilities``.  The route (pypicache.web.jsonapi) picks the files a
view may show and caches, negotiates and sends the bytes; this builds them.

``info`` needs a METADATA file.  It is read from storage when one of the
release's files has it stored, else fetched from the upstream through the
downloader (which verifies and stores it, so the next time it is local) when
the file advertises PEP 658 metadata and the caller allows the upstream.
Without any, ``info`` is minimal: name, version, requires_python, nulls.
It is read by :mod:`pypicache.metadata`, the reader uploads use too.

``last_serial`` is PyPI's changelog serial, which a cache cannot know; here it
is the newest upload time of the project's files as whole seconds since the
epoch (0 when none is known).  It only grows when files are added, which is
all that clients comparing serials rely on.
"""

from __future__ import annotations

import datetime
import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import quote

import attrs
from packaging.version import Version
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pypicache.errors import DiskFull
from pypicache.interfaces import IStorage
from pypicache.metadata import EMPTY_INFO, read_for_json
from pypicache.model import BlobNotFound, FileRecord, HashMismatch, UpstreamError, UpstreamNotFound
from pypicache.services.releases import Release, group_releases, latest

__all__ = ["Document", "ProjectJson", "file_dict", "METADATA_RETRY_SECONDS", "MAX_METADATA_BYTES"]

log = Logger()

#: METADATA files larger than this are not parsed (the downloader caps fetches too).
MAX_METADATA_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024
#: After an upstream METADATA fetch failed, answer without it for this long
#: rather than make every request wait for the upstream again.
METADATA_RETRY_SECONDS = 60.0


class MetadataFetcher(Protocol):
    """What this needs of the downloader (pypicache.services.downloads.Downloader)."""

    async def fetch_metadata(self, project: str, record: FileRecord) -> str: ...


@attrs.frozen
class Document:
    """A built answer: its bytes, its last serial, and whether it is complete
    enough to cache (its ``info`` did not lack metadata because a fetch failed)."""

    body: bytes
    serial: int
    complete: bool


class ProjectJson:
    """Builds JSON API documents; keeps the parsed METADATA of recent releases.

    ``clock`` times the back-off after a failed upstream METADATA fetch;
    ``cache_size`` bounds both the parsed-metadata memo and that back-off list.
    """

    def __init__(self, storage: IStorage, downloader: MetadataFetcher, clock: IReactorTime, *,
                 cache_size: int = 1024) -> None:
        self.storage = storage
        self.downloader = downloader
        self.clock = clock
        self._parsed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._parsed_max = cache_size
        self._failed: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def build(self, name: str, files: tuple[FileRecord, ...], version: Version | None, base: str, *,
                    extra_versions: Iterable[str] = (), allow_upstream: bool) -> Document | None:
        """The document for ``name`` (or its release ``version``) listing
        ``files``, with URLs under ``base`` (the view's root, ending in
        ``/``); None when there is no such release."""
        releases = group_releases(files, extra_versions)
        if version is None:
            release = latest(releases)
        else:
            release = next((r for r in releases.values() if r.version == version), None)
        if release is None:
            return None
        files_base = f"{base}files/{name}/"

        def files_of(rel: Release) -> list[dict[str, Any]]:
            return [file_dict(f, kind, py, files_base + quote(f.filename, safe=""))
                    for f, kind, py in rel.files]

        metadata, complete = await self._metadata(name, release, allow_upstream)
        info = self._info(name, release, metadata, base)
        last_serial = max((upload_times(f.upload_time)[2] for f in files), default=0)
        data: dict[str, Any] = {"info": info, "last_serial": last_serial}
        if version is None:
            data["releases"] = {key: files_of(rel) for key, rel in releases.items()}
        data["urls"] = files_of(release)
        data["vulnerabilities"] = []
        # ASCII escapes: odd strings (lone surrogates) can never break the encoding.
        return Document(json.dumps(data).encode("ascii"), last_serial, complete)

    def _info(self, name: str, release: Release, metadata: dict[str, Any] | None,
              base: str) -> dict[str, Any]:
        fields = dict(metadata if metadata is not None else EMPTY_INFO)
        if not fields.get("requires_python"):
            fields["requires_python"] = next((f.requires_python for f, _, _ in release.files
                                              if f.requires_python), None)
        project_page = f"{base}simple/{name}/"
        fields.update({
            "bugtrack_url": None,
            "docs_url": None,
            "downloads": {"last_day": -1, "last_month": -1, "last_week": -1},
            "name": fields.get("name") or name,
            "package_url": project_page,
            "project_url": project_page,
            "release_url": f"{base}pypi/{name}/{quote(release.key, safe='')}/json",
            "version": release.key,
            "yanked": release.yanked,
            "yanked_reason": release.yanked_reason,
        })
        return dict(sorted(fields.items()))

    async def stored_metadata(self, project: str, release: Release) -> dict[str, Any] | None:
        """The release's parsed METADATA when storage holds it, never asking
        the upstream: what the web UI's project page shows a summary from."""
        metadata, _ = await self._metadata(project, release, allow_upstream=False)
        return metadata

    async def _metadata(self, project: str, release: Release,
                        allow_upstream: bool) -> tuple[dict[str, Any] | None, bool]:
        """The parsed METADATA of a release, and False when it could exist
        but could not be had now (so the answer is not cached)."""
        ordered = sorted((f for f, _, _ in release.files), key=lambda f: not f.filename.endswith(".whl"))
        for record in ordered:
            sha = record.metadata_sha256
            if sha is not None and sha in self._parsed:
                self._parsed.move_to_end(sha)
                return self._parsed[sha], True
        for record in ordered:
            if record.metadata_stored and record.metadata_sha256:
                parsed = await self._read_parsed(record.metadata_sha256)
                if parsed is not None:
                    return parsed, True
        if not allow_upstream:
            return None, True
        now = self.clock.seconds()
        for record in ordered:
            if record.core_metadata is None or not record.url:
                continue
            failed_key = (project, record.filename)
            if now - self._failed.get(failed_key, float("-inf")) < METADATA_RETRY_SECONDS:
                return None, False
            try:
                sha = await self.downloader.fetch_metadata(project, record)
            except (UpstreamError, UpstreamNotFound, HashMismatch, DiskFull) as e:
                log.warn("no metadata for {project}/{filename} in the JSON API: {error}",
                         project=project, filename=record.filename, error=str(e) or type(e).__name__)
                self._failed[failed_key] = now
                self._failed.move_to_end(failed_key)
                while len(self._failed) > self._parsed_max:
                    self._failed.popitem(last=False)
                return None, False
            self._failed.pop(failed_key, None)
            parsed = await self._read_parsed(sha)
            return parsed, parsed is not None
        return None, True

    async def _read_parsed(self, sha256: str) -> dict[str, Any] | None:
        try:
            reader = await self.storage.open_read(sha256)
        except BlobNotFound:
            log.error("metadata blob {sha256} is missing from storage", sha256=sha256)
            return None
        try:
            if reader.size > MAX_METADATA_BYTES:
                log.warn("metadata blob {sha256} is too large to parse ({size} bytes)",
                         sha256=sha256, size=reader.size)
                return None
            chunks = []
            while True:
                chunk = await reader.read(_READ_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            reader.close()
        try:
            parsed = read_for_json(b"".join(chunks), max_bytes=MAX_METADATA_BYTES)
        except Exception:  # the reader never raises; this is a last resort
            log.failure("cannot parse metadata blob {sha256}", sha256=sha256)
            parsed = dict(EMPTY_INFO)
        self._parsed[sha256] = parsed
        while len(self._parsed) > self._parsed_max:
            self._parsed.popitem(last=False)
        return parsed


def upload_times(value: str | None) -> tuple[str | None, str | None, int]:
    """(upload_time, upload_time_iso_8601, epoch seconds) from a PEP 700 time."""
    if not value:
        return None, None, 0
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None, None, 0
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    epoch = int(when.replace(tzinfo=datetime.timezone.utc).timestamp())
    return when.strftime("%Y-%m-%dT%H:%M:%S"), when.isoformat() + "Z", epoch


def file_dict(record: FileRecord, packagetype: str, python_version: str, url: str) -> dict[str, Any]:
    """One entry of ``releases``/``urls`` in PyPI's shape."""
    hashes = record.hashes
    digests: dict[str, str] = {}
    if hashes.get("md5"):
        digests["md5"] = hashes["md5"]
    if record.sha256:
        digests["sha256"] = record.sha256
    blake = hashes.get("blake2b_256") or (hashes.get("blake2b") if len(hashes.get("blake2b", "")) == 64 else None)
    if blake:
        digests["blake2b_256"] = blake
    upload_time, upload_iso, _ = upload_times(record.upload_time)
    return {
        "comment_text": "",
        "digests": digests,
        "downloads": -1,
        "filename": record.filename,
        "has_sig": False,
        "md5_digest": hashes.get("md5") or "",
        "packagetype": packagetype,
        "python_version": python_version,
        "requires_python": record.requires_python or None,
        "size": record.size,
        "upload_time": upload_time,
        "upload_time_iso_8601": upload_iso,
        "url": url,
        "yanked": record.yanked,
        "yanked_reason": (record.yanked_reason or None) if record.yanked else None,
    }
