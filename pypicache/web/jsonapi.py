"""The PyPI JSON API: ``/pypi/<project>/json`` and ``/pypi/<project>/<version>/json``.

Renovate, poetry and bandersnatch read this legacy API rather than the Simple
API, so it is answered from the same records the pages come from (same
freshness, same stale-on-outage rules) with PyPI's shape: ``info`` (the core
metadata of one release), ``releases`` (version -> files), ``urls`` (the files
of the ``info`` release), ``last_serial`` and ``vulnerabilities``.

``info`` needs a METADATA file.  It is read from storage when one of the
release's files has it stored, else fetched from the upstream through the
downloader (which verifies and stores it, so the next time it is local) when
the file advertises PEP 658 metadata and the view may ask the upstream.
Without any, ``info`` is minimal: name, version, requires_python, nulls.

``last_serial`` is PyPI's changelog serial, which a cache cannot know; here it
is the newest upload time of the project's files as whole seconds since the
epoch (0 when none is known).  It only grows when files are added, which is
all that clients comparing serials rely on.

Rendered bodies are cached like pages (pypicache.web.simple.PageCache), valid
while the project's files tuple is the very same object.

URLs in an answer (files, ``package_url``, ``release_url``) are relative to
the request URL, or absolute under ``[server] public_url`` when configured.
They never come from ``Host`` or ``X-Forwarded-*``: the answer is cacheable
(here and by any shared cache in front), so a header that a cache does not
key on must not shape it.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import json
import re
from collections import OrderedDict
from typing import Any, Iterable, Mapping
from urllib.parse import quote

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from twisted.logger import Logger
from twisted.web.resource import Resource

from pypicache.errors import DiskFull
from pypicache.services.mirror import Mirror, UpstreamUnavailable
from pypicache.model import (
    BlobNotFound,
    FileRecord,
    HashMismatch,
    InvalidName,
    ProjectRecord,
    UpstreamError,
    UpstreamNotFound,
    normalize,
)
from pypicache.uploads.metadata import parse_core_metadata
from pypicache.uploads.multipart import UploadError
from pypicache.services.visibility import visible_files
from pypicache.web.negotiation import accepts_gzip
from pypicache.web.render import etag_for
from pypicache.web.simple import GZIP_MIN, PageCache, Rendered, etag_matches
from pypicache.web.util import HTTPError, finish_bytes, handle, request_gone, safe_header

log = Logger()

JSON_TYPE = b"application/json"
CACHE_CONTROL = b"max-age=60, public"
#: METADATA files larger than this are not parsed (the downloader caps fetches too).
MAX_METADATA_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024
#: After an upstream METADATA fetch failed, answer without it for this long
#: rather than make every request wait for the upstream again.
METADATA_RETRY_SECONDS = 60.0

_EGG = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-py(?P<py>[0-9.]+))?(?:-[^-]+)?\.egg$")
_OTHER_SDIST = (".tar.bz2", ".tar.xz", ".tgz", ".tar")
_FOLD = re.compile(r"\r?\n[ \t]+")
_DESCRIPTION_CONTINUATION = re.compile(r"^ {1,8}\|", re.MULTILINE)


# ------------------------------------------------------------ file names


def classify(filename: str) -> tuple[Version, str, str] | None:
    """(version, packagetype, python_version) of a distribution file, or None
    when the name is not one we can read (such files are left out)."""
    try:
        if filename.endswith(".whl"):
            _, version, _, _ = parse_wheel_filename(filename)
            python_tag = filename[:-4].split("-")[-3]
            return version, "bdist_wheel", python_tag
        if filename.endswith((".tar.gz", ".zip")):
            return parse_sdist_filename(filename)[1], "sdist", "source"
        for suffix in _OTHER_SDIST:  # old sdists PyPI still lists
            if filename.endswith(suffix):
                return parse_sdist_filename(filename[: -len(suffix)] + ".tar.gz")[1], "sdist", "source"
        m = _EGG.match(filename)
        if m is not None:
            return Version(m["version"]), "bdist_egg", m["py"] or "any"
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion, IndexError):
        return None
    return None


# -------------------------------------------------------------- metadata


def _one_line(value: str | None) -> str | None:
    if value is None:
        return None
    return _FOLD.sub(" ", value).strip()


def _multi_line(value: str | None) -> str | None:
    """A header that carries several lines (Description, License): undo the
    ``8 spaces + |`` continuation setuptools writes, or plain folding."""
    if value is None:
        return None
    value = value.replace("\r\n", "\n")
    if _DESCRIPTION_CONTINUATION.search(value):
        return _DESCRIPTION_CONTINUATION.sub("", value)
    first, *rest = value.split("\n")
    return "\n".join([first] + [line[8:] if line.startswith(" " * 8) else line.lstrip() for line in rest])


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """The ``info`` keys that come from a METADATA file, PyPI-style.

    The upload parser (pypicache.uploads.metadata) reads it when it can; it
    is strict on purpose (it guards uploads), so whatever it refuses, such as
    bytes that are not UTF-8 in an upstream file, is read leniently instead.
    Never raises.
    """
    try:
        meta = parse_core_metadata(raw, max_bytes=MAX_METADATA_BYTES)
    except UploadError:
        return _parse_leniently(raw)
    platforms = [p for p in meta.get("platform") or [] if p]
    urls = dict(meta.get("project_urls") or {})
    return _with_urls({
        "author": meta.get("author"),
        "author_email": meta.get("author_email"),
        "classifiers": list(meta.get("classifiers") or []),
        "description": meta.get("description"),
        "description_content_type": meta.get("description_content_type"),
        "download_url": meta.get("download_url"),
        "dynamic": list(meta.get("dynamic") or []) or None,
        "home_page": meta.get("home_page"),
        "keywords": meta.get("keywords"),
        "license": meta.get("license"),
        "license_expression": meta.get("license_expression"),
        "license_files": list(meta.get("license_files") or []) or None,
        "maintainer": meta.get("maintainer"),
        "maintainer_email": meta.get("maintainer_email"),
        "name": meta.get("name"),
        "platform": ", ".join(platforms) if platforms else None,
        "provides_extra": list(meta.get("provides_extra") or []) or None,
        "requires_dist": list(meta.get("requires_dist") or []) or None,
        "requires_python": meta.get("requires_python"),
        "summary": meta.get("summary"),
        "version": meta.get("version"),
    }, urls)


def _with_urls(info: dict[str, Any], project_urls: Mapping[str, str]) -> dict[str, Any]:
    """Add ``project_urls`` as PyPI builds it: Homepage and Download first."""
    urls: dict[str, str] = {}
    if info["home_page"]:
        urls["Homepage"] = info["home_page"]
    if info["download_url"]:
        urls["Download"] = info["download_url"]
    for label, url in project_urls.items():
        urls.setdefault(label, url)
    info["project_urls"] = urls or None
    return info


def _parse_leniently(raw: bytes) -> dict[str, Any]:
    """What can be read from a METADATA file the strict parser refused:
    undecodable bytes replaced, the first of repeated single fields kept."""
    text = raw.decode("utf-8", "replace").replace("\x00", "\ufffd")
    try:
        msg = email.parser.Parser(policy=email.policy.compat32).parsestr(text)
    except Exception:  # the email package has odd corners
        msg = email.parser.Parser(policy=email.policy.compat32).parsestr("")

    def get(field: str) -> str | None:
        value = msg.get(field)
        return _one_line(str(value)) if value is not None else None

    def get_all(field: str) -> list[str]:
        return [v for v in (_one_line(str(x)) for x in (msg.get_all(field) or [])) if v]

    payload = msg.get_payload() if not msg.is_multipart() else None
    if isinstance(payload, str) and payload.strip():
        description: str | None = payload
    else:
        header = msg.get("Description")
        description = _multi_line(str(header)) if header is not None else None
    project_urls: dict[str, str] = {}
    for spec in get_all("Project-URL"):
        label, sep, url = spec.partition(",")
        if sep and label.strip() and url.strip():
            project_urls.setdefault(label.strip(), url.strip())
    license_text = msg.get("License")
    platforms = get_all("Platform")
    return _with_urls({
        "author": get("Author"),
        "author_email": get("Author-email"),
        "classifiers": get_all("Classifier"),
        "description": description,
        "description_content_type": get("Description-Content-Type"),
        "download_url": get("Download-URL"),
        "dynamic": get_all("Dynamic") or None,
        "home_page": get("Home-page"),
        "keywords": get("Keywords"),
        "license": _multi_line(str(license_text)) if license_text is not None else None,
        "license_expression": get("License-Expression"),
        "license_files": get_all("License-File") or None,
        "maintainer": get("Maintainer"),
        "maintainer_email": get("Maintainer-email"),
        "name": get("Name"),
        "platform": ", ".join(platforms) if platforms else None,
        "provides_extra": get_all("Provides-Extra") or None,
        "requires_dist": get_all("Requires-Dist") or None,
        "requires_python": get("Requires-Python"),
        "summary": get("Summary"),
        "version": get("Version"),
    }, project_urls)


_EMPTY_METADATA: dict[str, Any] = {
    key: ([] if key == "classifiers" else None) for key in _parse_leniently(b"")
}


# ------------------------------------------------------------- the model


@attrs.define
class JsonPage(Rendered):
    """A rendered answer and its serial (sent as X-PyPI-Last-Serial, which
    bandersnatch reads)."""

    serial: int = 0


def _upload_times(value: str | None) -> tuple[str | None, str | None, int]:
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


class Release:
    """One version's files, in the order the records list them."""

    def __init__(self, version: Version) -> None:
        self.version = version
        self.key = str(version)
        self.files: list[tuple[FileRecord, str, str]] = []  # (record, packagetype, python_version)

    @property
    def yanked(self) -> bool:
        """PyPI yanks whole releases: a release is yanked when all its files are."""
        return bool(self.files) and all(f.yanked for f, _, _ in self.files)

    @property
    def yanked_reason(self) -> str | None:
        if not self.yanked:
            return None
        return next((f.yanked_reason for f, _, _ in self.files if f.yanked_reason), None)


def group_releases(files: Iterable[FileRecord], extra_versions: Iterable[str] = ()) -> dict[str, Release]:
    """Releases by version string, ascending by packaging Version.

    ``extra_versions`` (PEP 700 ``versions``) adds releases with no files, as
    PyPI lists them.
    """
    by_version: dict[Version, Release] = {}
    for record in files:
        found = classify(record.filename)
        if found is None:
            continue
        version, packagetype, python_version = found
        by_version.setdefault(version, Release(version)).files.append((record, packagetype, python_version))
    for raw in extra_versions:
        try:
            version = Version(raw)
        except InvalidVersion:
            continue
        by_version.setdefault(version, Release(version))
    return {r.key: r for r in sorted(by_version.values(), key=lambda r: r.version)}


def latest(releases: Mapping[str, Release]) -> Release | None:
    """What PyPI shows in ``info``: the newest release that is neither yanked
    nor a pre-release, else the newest not yanked, else the newest (releases
    with files first)."""
    candidates = [r for r in releases.values() if r.files] or list(releases.values())
    for keep in (lambda r: not r.yanked and not r.version.is_prerelease, lambda r: not r.yanked, lambda r: True):
        chosen = [r for r in candidates if keep(r)]
        if chosen:
            return max(chosen, key=lambda r: r.version)
    return None


def file_dict(record: FileRecord, packagetype: str, python_version: str, url: str) -> dict[str, Any]:
    hashes = record.hashes
    digests: dict[str, str] = {}
    if hashes.get("md5"):
        digests["md5"] = hashes["md5"]
    if record.sha256:
        digests["sha256"] = record.sha256
    blake = hashes.get("blake2b_256") or (hashes.get("blake2b") if len(hashes.get("blake2b", "")) == 64 else None)
    if blake:
        digests["blake2b_256"] = blake
    upload_time, upload_iso, _ = _upload_times(record.upload_time)
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


# -------------------------------------------------------------- resource


class JsonAPI(Resource):
    """``<prefix>/pypi/<project>/json`` and ``<prefix>/pypi/<project>/<version>/json``.

    Mount it as the ``pypi`` child next to ``simple`` and ``files``: file URLs
    point at the sibling ``files/`` route.  ``local=True`` is the standalone
    view (stored files only, never the upstream).
    """

    isLeaf = True

    def __init__(self, mirror: Mirror, storage: Any, downloader: Any, local: bool = False, *,
                 pages: PageCache | None = None, parsed_cache_size: int = 1024,
                 public_url: str | None = None) -> None:
        super().__init__()
        #: "https://host/prefix/" (validated by pypicache.daemon.config), or None for relative URLs.
        self.public_url = public_url
        self.mirror = mirror
        self.storage = storage
        self.downloader = downloader
        self.local = local
        self.view = "local" if local else "proxy"
        self.pages = pages if pages is not None else PageCache(budget=16 * 1024 * 1024)
        self._parsed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._parsed_max = parsed_cache_size
        self._failed: OrderedDict[tuple[str, str], float] = OrderedDict()

    @property
    def allow_upstream(self) -> bool:
        return not self.local and not self.mirror.offline

    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._serve(request))

    render_HEAD = render_GET

    # ------------------------------------------------------------ routing
    async def _serve(self, request: Any) -> None:
        try:
            await self._dispatch(request)
        except HTTPError as e:
            self._send_error(request, e.code, e.message, e.headers)

    async def _dispatch(self, request: Any) -> None:
        post = list(request.postpath)
        if len(post) >= 3 and post[-1] == b"" and post[-2] == b"json":
            post = post[:-1]
            trailing_slash = True
        else:
            trailing_slash = False
        if len(post) not in (2, 3) or post[-1] != b"json":
            raise HTTPError(404, "Not Found")
        try:
            raw = post[0].decode("utf-8")
            raw_version = post[1].decode("utf-8") if len(post) == 3 else None
        except UnicodeDecodeError:
            raise HTTPError(404, "Not Found") from None
        try:
            name = normalize(raw)
        except InvalidName:
            raise HTTPError(404, "Not Found") from None
        version: Version | None = None
        if raw_version is not None:
            try:
                version = Version(raw_version)
            except InvalidVersion:
                raise HTTPError(404, "Not Found") from None
        if raw != name or trailing_slash:
            prefix = "/" + "".join(p.decode("utf-8", "replace") + "/" for p in request.prepath)
            middle = quote(raw_version, safe="") + "/" if raw_version is not None else ""
            return self._redirect(request, f"{prefix}{name}/{middle}json")
        await self._answer(request, name, version)

    def _redirect(self, request: Any, location: str) -> None:
        query = request.uri.partition(b"?")[2]
        target = location + ("?" + query.decode("latin-1") if query else "")
        request.setResponseCode(301)
        request.setHeader(b"location", safe_header(target))
        finish_bytes(request, b"")

    # ------------------------------------------------------------ answers
    async def _answer(self, request: Any, name: str, version: Version | None) -> None:
        try:
            result = await self.mirror.project(name, allow_upstream=self.allow_upstream)
        except UpstreamUnavailable as e:
            raise HTTPError(503, f"upstream unavailable and {name} is not cached: {e.reason}",
                            {b"retry-after": str(e.retry_after).encode()}) from None
        if result is None:
            raise HTTPError(404, "Not Found")
        record = result.record
        files = visible_files(record, local=self.local, merged=name in self.mirror.merge)
        if self.local and not files:
            raise HTTPError(404, "Not Found")
        base = self._base(request, version is not None)
        key = ("pypi-json", self.view, name, str(version) if version is not None else None, base)
        page = self.pages.get(key, record.files)
        if page is None:
            built = await self._build(name, record, files, version, base)
            if built is None:
                raise HTTPError(404, "Not Found")
            body, serial, complete = built
            page = JsonPage(record.files, body, etag_for(body), serial=serial)
            if complete:
                self.pages.put(key, page)
        if result.stale:
            request.setHeader(b"x-pypicache-stale", b"true")
        self._send(request, page, key)

    def _base(self, request: Any, with_version: bool) -> str:
        """The URL of the view's root (the path above ``pypi/``: ``/`` or
        ``/local/``): under ``public_url`` when configured, else relative
        to this request's URL, which clients resolve it against.  Never
        from request headers (see the module's docstring)."""
        if self.public_url is None:
            return "../../../" if with_version else "../../"
        return self.public_url + "".join(quote(p.decode("utf-8", "replace"), safe="") + "/"
                                         for p in request.prepath[:-1])

    async def _build(self, name: str, record: ProjectRecord, files: tuple[FileRecord, ...],
                     version: Version | None, base: str) -> tuple[bytes, int, bool] | None:
        """The body, its last serial, and whether it is complete enough to cache (its ``info``
        did not lack metadata because a fetch failed)."""
        releases = group_releases(files, (record.versions or ()) if not self.local else ())
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

        metadata, complete = await self._metadata(name, release)
        info = self._info(name, release, metadata, base)
        last_serial = max((_upload_times(f.upload_time)[2] for f in files), default=0)
        data: dict[str, Any] = {"info": info, "last_serial": last_serial}
        if version is None:
            data["releases"] = {key: files_of(rel) for key, rel in releases.items()}
        data["urls"] = files_of(release)
        data["vulnerabilities"] = []
        # ASCII escapes: odd strings (lone surrogates) can never break the encoding.
        return json.dumps(data).encode("ascii"), last_serial, complete

    def _info(self, name: str, release: Release, metadata: dict[str, Any] | None,
              base: str) -> dict[str, Any]:
        fields = dict(metadata if metadata is not None else _EMPTY_METADATA)
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

    # ----------------------------------------------------------- metadata
    async def _metadata(self, project: str, release: Release) -> tuple[dict[str, Any] | None, bool]:
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
        if not self.allow_upstream:
            return None, True
        now = self.mirror.clock.seconds()
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
            parsed = parse_metadata(b"".join(chunks))
        except Exception:  # the email parser is lenient; this is a last resort
            log.failure("cannot parse metadata blob {sha256}", sha256=sha256)
            parsed = dict(_EMPTY_METADATA)
        self._parsed[sha256] = parsed
        while len(self._parsed) > self._parsed_max:
            self._parsed.popitem(last=False)
        return parsed

    # ------------------------------------------------------------ sending
    def _send(self, request: Any, page: JsonPage, key: tuple) -> None:
        request.setHeader(b"content-type", JSON_TYPE)
        request.setHeader(b"x-pypi-last-serial", str(page.serial).encode())
        request.setHeader(b"vary", b"Accept-Encoding")
        request.setHeader(b"cache-control", CACHE_CONTROL)
        request.setHeader(b"access-control-allow-origin", b"*")
        body, etag = page.body, page.etag
        encoding = request.getHeader(b"accept-encoding")
        if len(body) >= GZIP_MIN and accepts_gzip(encoding.decode("latin-1") if encoding else None):
            before = page.cost
            body, etag = page.gzipped()
            self.pages.grew(key, before)
            request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"etag", etag.encode())
        if etag_matches(request.getHeader(b"if-none-match"), page.etag, page.gz_etag or ""):
            request.setResponseCode(304)
            request.responseHeaders.removeHeader(b"content-encoding")
            request.finish()
            return
        finish_bytes(request, body)

    def _send_error(self, request: Any, code: int, message: str, headers: Mapping[bytes, bytes]) -> None:
        """Errors as PyPI gives them: ``{"message": ...}`` in JSON."""
        if request_gone(request):
            return
        if request.startedWriting:
            request.channel.transport.abortConnection()
            return
        request.setResponseCode(code)
        for header, value in headers.items():
            request.setHeader(header, value)
        request.responseHeaders.removeHeader(b"etag")
        request.responseHeaders.removeHeader(b"content-encoding")
        request.setHeader(b"content-type", JSON_TYPE)
        finish_bytes(request, json.dumps({"message": message}).encode("utf-8"))
