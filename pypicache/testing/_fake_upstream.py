"""An in-process fake PyPI: a Twisted web site serving the Simple API, on demand badly.

Why a fake and not recorded responses: the proxy's hard parts are the failure
modes (resets, stalls, truncation, wrong bytes, outages), and those only show
up on a real socket.  :class:`FakeUpstream` listens on ``127.0.0.1:0`` on the
test's own reactor (no threads), serves real wheels (built with
:func:`pypicache.testing.build_wheel` or by any other means), records every
request, and misbehaves per path prefix when a test calls
:meth:`FakeUpstream.fail`.  Public through :mod:`pypicache.testing`, so a
third-party upstream provider meets the same faults as the built-in one
(:class:`pypicache.testing.UpstreamContract` runs it against this).

Typical use (the ``fake_upstream`` fixtures of the test suite and of
:class:`~pypicache.testing.UpstreamContract` do this)::

    fu = FakeUpstream()
    fu.add(build_wheel(tmp_path, "tinyproj", "1.0"))
    fu.listen(reactor)
    ... fu.url ...              # http://127.0.0.1:PORT/simple/
    fu.fail("reset", "/files/", after=100)
    await fu.stop()

Routes: ``/simple/`` (root list), ``/simple/<name>/`` (project page, HTML per
PEP 503/629/592/658/714/740 or JSON per PEP 691/700/740, by ``Accept``),
``/files/<filename>`` plus ``/files/<filename>.metadata`` (GET and HEAD, single
``Range`` supported), and for files given one with :meth:`FakeUpstream.attest`
PyPI's ``/integrity/<project>/<version>/<filename>/provenance``.  Page links are relative (``../../files/...``) unless
``absolute_urls`` is set.

Faults (``fail(name, path_prefix=None, *, times=None, **kw)``); the longest
matching prefix wins, ``None`` matches every path, ``times`` makes a fault
apply to that many requests only:

=================  ======================================================
``status``         answer ``code`` (default 500), optional ``retry_after``
``hang``           accept the request, never answer
``stall``          headers and ``after`` body bytes, then silence forever
``reset``          headers and ``after`` body bytes, then a TCP RST
``truncate``       full Content-Length, ``after`` bytes, then a clean FIN
``overlong``       the body plus ``extra`` (default 64) bytes, then FIN
``wrong_bytes``    same length, every byte flipped (hash mismatch)
``malformed``      200 with garbage of the page's type (``body`` overrides)
``huge_page``      a ``size``-byte body (default 8 MiB), streamed chunked
                   (``content_length=True`` announces it)
``redirect_loop``  302 to the same URL
``redirect``       ``code`` (default 302) to ``location`` (required)
``slow``           body paced at ``rate`` bytes/s (default 16 KiB/s)
``delay``          wait ``seconds`` (default 1.0), then answer normally
``garbage``        no HTTP at all: raw ``body`` bytes, then a FIN
=================  ======================================================

Outages below HTTP: :meth:`FakeUpstream.stop` makes the port refuse
connections; :meth:`FakeUpstream.black_hole` (after ``stop``) makes it a
black hole where connecting never completes (a listener whose accept queue
is full and never drained: the kernel drops further SYNs), the way a
firewalled or overloaded host looks; :meth:`FakeUpstream.start_again`
serves normally again.

``after`` defaults to half the body.  :meth:`FakeUpstream.stop` cancels every
timer this module scheduled and aborts every open connection, so hanging and
stalled requests never leave the reactor dirty.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import io
import json
import re
import socket
import tarfile
import weakref
from collections.abc import Callable
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote

import attrs
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from pypicache.testing._builders import provenance_object, sha256_file, wheel_metadata

__all__ = ["FakeUpstream", "FAULTS", "JSON_TYPE", "V1_HTML_TYPE", "TEXT_HTML_TYPE", "negotiate"]

log = Logger()

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
V1_HTML_TYPE = "application/vnd.pypi.simple.v1+html"
TEXT_HTML_TYPE = "text/html; charset=utf-8"
_API_VERSION = "1.1"
_CHUNK = 64 * 1024
_FLIP = bytes(255 - i for i in range(256))

#: fault name -> {option: default}; ``None`` defaults are computed per request.
FAULTS: dict[str, dict[str, Any]] = {
    "status": {"code": 500, "retry_after": None},
    "hang": {},
    "stall": {"after": None},
    "reset": {"after": None},
    "truncate": {"after": None},
    "overlong": {"extra": 64},
    "wrong_bytes": {},
    "malformed": {"body": None},
    "huge_page": {"size": 8 * 1024 * 1024, "content_length": False},
    "redirect_loop": {},
    "redirect": {"code": 302, "location": None},
    "slow": {"rate": 16 * 1024},
    "delay": {"seconds": 1.0},
    "garbage": {"body": b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe not http\r\n\r\n"},
}


# ------------------------------------------------------------------ data


@attrs.define
class _File:
    filename: str
    path: Path
    project: str
    version: Version
    sha256: str
    size: int
    requires_python: str | None
    yanked: bool | str
    metadata: bytes | None
    upload_time: str
    #: PEP 740: the provenance object served, and the URL pages advertise.
    provenance: bytes | None = None
    provenance_url: str | None = None

    @property
    def metadata_sha256(self) -> str | None:
        return None if self.metadata is None else hashlib.sha256(self.metadata).hexdigest()


@attrs.define
class _Project:
    display_name: str
    files: dict[str, _File] = attrs.Factory(dict)


@attrs.define
class _Fault:
    name: str
    prefix: str
    options: dict[str, Any]
    remaining: int | None


class _Body(Protocol):
    length: int

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


@attrs.define
class _BytesBody:
    data: bytes
    length: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.length = len(self.data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        pass


@attrs.define
class _FileBody:
    """A window of a file on disk, opened at the first read (HEAD never opens it)."""

    path: Path
    start: int
    length: int
    _fh: io.BufferedReader | None = None

    def read(self, offset: int, size: int) -> bytes:
        if self._fh is None:
            self._fh = open(self.path, "rb")
        self._fh.seek(self.start + offset)
        return self._fh.read(min(size, self.length - offset))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@attrs.define
class _PatternBody:
    """``head`` + repeated ``fill`` + ``tail``, exactly ``length`` bytes, never in memory."""

    head: bytes
    fill: bytes
    tail: bytes
    length: int

    def _byte_range(self, offset: int, size: int) -> bytes:
        out = bytearray()
        end = min(self.length, offset + size)
        tail_start = self.length - len(self.tail)
        pos = offset
        while pos < end:
            if pos < len(self.head):
                piece = self.head[pos : min(end, len(self.head))]
            elif pos >= tail_start:
                piece = self.tail[pos - tail_start : end - tail_start]
            else:
                k = (pos - len(self.head)) % len(self.fill)
                block = self._block()
                piece = block[k : k + min(end, tail_start) - pos]
            out += piece
            pos += len(piece)
        return bytes(out)

    def _block(self) -> bytes:
        """``fill`` repeated to at least a chunk, so a read copies a few slices, not thousands."""
        return self.fill * (_CHUNK // len(self.fill) + 2)

    def read(self, offset: int, size: int) -> bytes:
        return self._byte_range(offset, size)

    def close(self) -> None:
        pass


@attrs.define
class _Response:
    code: int
    headers: dict[str, str]
    body: _Body | None = None
    #: "html" or "json" for Simple API pages (what malformed/huge_page imitate).
    page_format: str | None = None
    #: False for chunked streaming without a Content-Length (huge_page).
    announce_length: bool = True


# ------------------------------------------------------------- negotiation


def _parse_accept(value: str) -> dict[str, float]:
    """``{media_type: q}`` with the highest q per type; malformed q counts as 0."""
    result: dict[str, float] = {}
    for item in value.split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        q = 1.0
        for param in parts[1:]:
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        result[media] = max(q, result.get(media, 0.0))
    return result


def negotiate(accept: str | None) -> str:
    """Pick the Content-Type to serve for an ``Accept`` header.

    JSON when a JSON Simple type is listed with q>0 and no HTML type ranks
    higher; otherwise HTML (the v1 HTML type when the client prefers it to
    ``text/html``).  Wildcards count for HTML only, like a server whose
    default format is HTML: a missing Accept means ``*/*``.
    """
    prefs = _parse_accept(accept or "*/*")
    q_json = max(prefs.get(JSON_TYPE, 0.0), prefs.get("application/vnd.pypi.simple.latest+json", 0.0))
    q_v1_html = max(prefs.get(V1_HTML_TYPE, 0.0), prefs.get("application/vnd.pypi.simple.latest+html", 0.0))
    q_text = max(prefs.get("text/html", 0.0), prefs.get("text/*", 0.0), prefs.get("*/*", 0.0))
    if q_json > 0 and q_json >= max(q_v1_html, q_text):
        return JSON_TYPE
    if q_v1_html > 0 and q_v1_html > q_text:
        return V1_HTML_TYPE
    return TEXT_HTML_TYPE


def _etag(content_type: str, body: bytes) -> str:
    return '"' + hashlib.sha256(content_type.encode() + b"\0" + body).hexdigest()[:40] + '"'


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _parse_range(value: str | None, length: int) -> tuple[int, int] | None | str:
    """One ``bytes=`` range as ``(start, end_exclusive)``, None to ignore, "bad" if unsatisfiable."""
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if m is None or (not m[1] and not m[2]):
        return None  # multiple or odd ranges: answer 200 with everything
    if not m[1]:
        n = int(m[2])
        if n == 0:
            return "bad"
        return max(0, length - n), length
    start = int(m[1])
    end = min(length, int(m[2]) + 1) if m[2] else length
    if start >= length or end <= start:
        return "bad"
    return start, end


def _metadata_field(raw: bytes, field: str) -> str | None:
    return BytesParser().parsebytes(raw, headersonly=True).get(field)


def _sdist_pkg_info(path: Path) -> bytes | None:
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] == "PKG-INFO":
                    f = tar.extractfile(member)
                    return f.read() if f else None
    except (tarfile.TarError, OSError):
        return None
    return None


# --------------------------------------------------------------- streaming


@implementer(IPushProducer)
class _Sender:
    """Write ``body[0:end]`` to a request in chunks, honouring back-pressure.

    ``interval`` None streams as fast as the socket takes it; a number paces
    one ``chunk`` per interval (the ``slow`` fault).  ``on_done`` runs after
    the last byte was handed to the transport; it decides how the response
    ends (finish, close, reset, or nothing at all for a stall).
    """

    def __init__(
        self,
        fu: FakeUpstream,
        request: Any,
        body: _Body,
        end: int,
        on_done: Callable[[], None],
        *,
        transform: Callable[[bytes], bytes] | None = None,
        chunk: int = _CHUNK,
        interval: float | None = None,
    ) -> None:
        self._fu = fu
        self._request = request
        self._body = body
        self._end = end
        self._on_done = on_done
        self._transform = transform
        self._chunk = max(1, chunk)
        self._interval = interval
        self._pos = 0
        self._paused = False
        self._stopped = False
        self._call: Any = None

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._call is None and not self._paused and not self._stopped:
            self._call = self._fu._call_later(delay, self._pump)

    def _pump(self) -> None:
        self._call = None
        if self._stopped or self._paused:
            return
        size = min(self._chunk, self._end - self._pos)
        if size > 0:
            data = self._body.read(self._pos, size)
            self._pos += len(data)
            if self._transform is not None:
                data = self._transform(data)
            self._request.write(data)  # may call pauseProducing synchronously
        if self._stopped:
            return
        if self._pos >= self._end or size <= 0:
            self._stopped = True
            self._body.close()
            self._request.unregisterProducer()
            self._on_done()
            return
        self._schedule(self._interval or 0)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._call is not None:
            self._fu._cancel(self._call)
            self._call = None

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule(self._interval or 0)

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._body.close()
        if self._call is not None:
            self._fu._cancel(self._call)
            self._call = None


# ----------------------------------------------------------------- plumbing


class _ConnectionTracker(WrappingFactory):
    """Remembers open connections so :meth:`FakeUpstream.stop` can drop them all."""

    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self._lost: dict[Any, defer.Deferred[None]] = {}

    def when_lost(self, proto: Any) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._lost.setdefault(proto, d)
        return self._lost[proto]

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        d = self._lost.pop(p, None)
        if d is not None:
            d.callback(None)


class _Root(Resource):
    isLeaf = True

    def __init__(self, fu: FakeUpstream) -> None:
        super().__init__()
        self._fu = fu

    def render(self, request: Any) -> Any:
        return self._fu._handle(request)


# --------------------------------------------------------------- the server


class FakeUpstream:
    """A PyPI Simple API on a real socket, with bookkeeping and injectable faults.

    :ivar requests: ``(method, path_with_query, {lower-case header: value})``
        for every request received, in order, before any fault applies.
    :ivar files: ``{filename: Path}`` of every file added.
    :ivar html_only: ignore ``Accept`` and always answer HTML (an old index).
    :ivar absolute_urls: put ``http://127.0.0.1:PORT/files/...`` in pages
        instead of relative links.
    :ivar file_base: when set, pages link every file as ``file_base +
        filename`` (an upstream whose links point elsewhere, maybe somewhere
        hostile).
    """

    def __init__(self, *, absolute_urls: bool = False, html_only: bool = False) -> None:
        self.absolute_urls = absolute_urls
        self.html_only = html_only
        #: Send files chunked, without Content-Length (as some CDNs do).
        self.chunked_files = False
        self.file_base: str | None = None
        #: The address :meth:`listen` binds (``"::1"`` for an IPv6 upstream).
        self.interface = "127.0.0.1"
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.files: dict[str, Path] = {}
        self.port: int | None = None
        self._projects: dict[str, _Project] = {}
        self._by_filename: dict[str, _File] = {}
        self._faults: dict[str, _Fault] = {}
        self._reactor: Any = None
        self._listening: Any = None
        self._tracker: _ConnectionTracker | None = None
        self._calls: set[Any] = set()
        self._added = 0
        self._hole: list[socket.socket] = []
        #: Requests whose client went away (from ``notifyFinish``, not Twisted's private flag).
        self._gone: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Rendered project pages, kept until the project changes: a page of
        #: 100,000 synthetic files costs a second to render, on the reactor
        #: thread the server under test shares.
        self._rendered: dict[tuple[str, str, bool, str | None], tuple[bytes, str]] = {}

    # ------------------------------------------------------------ content

    def add(
        self,
        path: Path,
        *,
        requires_python: str | None = None,
        yanked: bool | str = False,
        metadata: bool = True,
        upload_time: str | None = None,
    ) -> None:
        """Publish a built wheel or sdist under the project its filename names.

        ``requires_python`` None means "take it from the file's own metadata"
        (what PyPI does).  ``metadata`` serves and advertises PEP 658
        ``.metadata`` for wheels.  ``upload_time`` defaults to a fixed,
        increasing time so pages are reproducible; ``""`` serves none.  Re-adding a filename
        replaces it.
        """
        path = Path(path)
        filename = path.name
        if filename.endswith(".whl"):
            project, version, _build, _tags = parse_wheel_filename(filename)
            core = wheel_metadata(path)
        else:
            project, version = parse_sdist_filename(filename)
            core = _sdist_pkg_info(path)
        display = filename.split("-", 1)[0]
        if requires_python is None and core is not None:
            requires_python = _metadata_field(core, "Requires-Python")
        if upload_time is None:
            when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
            when += datetime.timedelta(minutes=self._added)
            upload_time = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._added += 1
        record = _File(
            filename=filename,
            path=path,
            project=project,
            version=version,
            sha256=sha256_file(path),
            size=path.stat().st_size,
            requires_python=requires_python,
            yanked=yanked,
            metadata=core if (metadata and filename.endswith(".whl")) else None,
            upload_time=upload_time,
        )
        self.remove(filename)
        proj = self._projects.setdefault(project, _Project(display_name=display))
        proj.files[filename] = record
        self._by_filename[filename] = record
        self.files[filename] = path
        self._rendered.clear()

    def add_synthetic(self, project: str, count: int) -> None:
        """Publish ``count`` made-up wheels of ``project`` (no bytes behind them).

        For pages of a size no real project on disk would give (100,000
        files, 20 MB): only pages are served; a download of one is a 404.
        """
        proj = self._projects.setdefault(canonicalize_name(project), _Project(display_name=project))
        stem = project.replace("-", "_")
        nowhere = Path("/nonexistent")
        for i in range(count):
            filename = f"{stem}-{i}-py3-none-any.whl"
            record = _File(
                filename=filename,
                path=nowhere,
                project=canonicalize_name(project),
                version=Version(str(i)),
                sha256=hashlib.sha256(filename.encode()).hexdigest(),
                size=1000 + i,
                requires_python=">=3.8",
                yanked=False,
                metadata=None,
                upload_time="2024-01-01T00:00:00.000000Z",
            )
            proj.files[filename] = record
        self._rendered.clear()

    def prerender(self, project: str, json_page: bool = True) -> int:
        """Render (and keep) a project's page now; its size in bytes."""
        ctype = JSON_TYPE if json_page else TEXT_HTML_TYPE
        return len(self._rendered_page(canonicalize_name(project), ctype)[0])

    def _rendered_page(self, project: str | None, ctype: str) -> tuple[bytes, str]:
        # Every attribute the rendering reads that a test may change between
        # requests is part of the key.
        key = (project or "", ctype, self.absolute_urls, self.file_base)
        found = self._rendered.get(key)
        if found is None:
            is_json = ctype == JSON_TYPE
            if project is None:
                body = self._root_json() if is_json else self._root_html()
            else:
                proj = self._projects[project]
                body = self._project_json(project, proj) if is_json else self._project_html(project, proj)
            found = self._rendered[key] = (body, _etag(ctype, body))
        return found

    def remove(self, filename: str) -> None:
        """Unpublish a file (absent is fine); a project left empty disappears."""
        record = self._by_filename.pop(filename, None)
        self.files.pop(filename, None)
        if record is None:
            return
        proj = self._projects[record.project]
        proj.files.pop(filename, None)
        if not proj.files:
            del self._projects[record.project]
        self._rendered.clear()

    def attest(self, filename: str, provenance: bytes | None = None, *, url: str | None = None) -> str:
        """Give ``filename`` a PEP 740 provenance and advertise it on pages.

        ``provenance`` defaults to a good object naming the file
        (:func:`~pypicache.testing.provenance_object`); pass other bytes
        for a lying or broken upstream.  ``url`` overrides the advertised
        URL (default: PyPI's integrity path here).  Returns that URL.
        """
        record = self._by_filename[filename]
        if provenance is None:
            provenance = json.dumps(provenance_object(filename, record.sha256)).encode()
        path = f"/integrity/{quote(record.project)}/{record.version}/{quote(filename)}/provenance"
        record.provenance = provenance
        record.provenance_url = url if url is not None else self.root_url + path.lstrip("/")
        self._rendered.clear()
        return record.provenance_url

    def sha256(self, filename: str) -> str:
        """The hash the pages advertise for ``filename``."""
        return self._by_filename[filename].sha256

    # -------------------------------------------------------- bookkeeping

    def count(self, path_substring: str, method: str | None = None) -> int:
        """How many logged requests had ``path_substring`` in their path (and ``method``)."""
        return sum(
            1
            for m, p, _h in self.requests
            if path_substring in p and (method is None or m == method.upper())
        )

    def reset_log(self) -> None:
        self.requests.clear()

    # ------------------------------------------------------------- faults

    def fail(self, fault: str, path_prefix: str | None = None, *, times: int | None = None, **kw: Any) -> None:
        """Make requests whose path starts with ``path_prefix`` (all when None) misbehave.

        Unknown fault names or options raise at once, so a typo cannot make a
        test pass vacuously.  Setting a fault for a prefix replaces the
        previous one for that prefix.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        unknown = set(kw) - set(FAULTS[fault])
        if unknown:
            raise TypeError(f"fault {fault!r} takes no option(s) {sorted(unknown)}")
        options = {**FAULTS[fault], **kw}
        if fault == "redirect" and not options["location"]:
            raise TypeError("fault 'redirect' needs a location")
        prefix = path_prefix or ""
        self._faults[prefix] = _Fault(fault, prefix, options, times)

    def heal(self, path_prefix: str | None = None) -> None:
        """Remove every fault, or only the one set for ``path_prefix``."""
        if path_prefix is None:
            self._faults.clear()
        else:
            self._faults.pop(path_prefix, None)

    def _take_fault(self, path: str) -> _Fault | None:
        matches = [f for f in self._faults.values() if path.startswith(f.prefix)]
        if not matches:
            return None
        fault = max(matches, key=lambda f: len(f.prefix))
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.pop(fault.prefix, None)
        return fault

    # ---------------------------------------------------------- lifecycle

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT/`` (``http://[::1]:PORT/`` on IPv6)."""
        if self.port is None:
            raise RuntimeError("FakeUpstream has not listened yet")
        host = f"[{self.interface}]" if ":" in self.interface else self.interface
        return f"http://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The Simple API root: ``http://127.0.0.1:PORT/simple/``."""
        return self.root_url + "simple/"

    @property
    def listening(self) -> bool:
        return self._listening is not None

    @property
    def open_connections(self) -> int:
        """Client connections open right now (a closed upstream client leaves none)."""
        return len(self._tracker.protocols) if self._tracker is not None else 0

    def listen(self, reactor: Any, port: int = 0, interface: str | None = None) -> defer.Deferred[FakeUpstream]:
        """Listen on ``127.0.0.1:port`` (0: any free port), or on ``interface``.

        Listening is synchronous; the already-fired Deferred exists so callers
        may ``await`` it or ignore it alike.
        """
        if self._listening is not None:
            raise RuntimeError("already listening")
        self._reactor = reactor
        if interface is not None:
            self.interface = interface
        self._tracker = _ConnectionTracker(Site(_Root(self), reactor=reactor))
        self._listening = reactor.listenTCP(port, self._tracker, interface=self.interface)
        self.port = self._listening.getHost().port
        return defer.succeed(self)

    def start_again(self) -> defer.Deferred[FakeUpstream]:
        """Listen again on the port used before :meth:`stop`.

        Twisted sets SO_REUSEADDR on listening sockets, so this works unless
        another process grabbed the port meanwhile; then it raises
        ``twisted.internet.error.CannotListenError``.
        """
        if self.port is None or self._reactor is None:
            raise RuntimeError("start_again() needs a previous listen()")
        self._close_hole()
        return self.listen(self._reactor, self.port)

    def black_hole(self) -> None:
        """Make the (stopped) port a black hole: connecting never completes.

        A plain socket listens on the port with an accept queue of one,
        which a connection of our own fills; Linux then drops every further
        SYN, so a client's connect hangs until its own timeout, as with a
        firewalled host.  :meth:`start_again` or :meth:`stop` end it.
        """
        if self._listening is not None or self.port is None:
            raise RuntimeError("black_hole() needs a stopped FakeUpstream that listened before")
        self._close_hole()
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", self.port))
        hole.listen(0)
        filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        self._hole = [hole, filler]

    def _close_hole(self) -> None:
        for sock in self._hole:
            sock.close()
        self._hole = []

    def stop(self) -> defer.Deferred[None]:
        """Stop listening, cancel our timers and abort every open connection.

        Fires once the port is closed and every connection is gone, so a
        stopped upstream refuses connections and leaves nothing behind in
        the reactor.  Safe to call when not listening.
        """
        for call in list(self._calls):
            self._cancel(call)
        self._close_hole()
        waits: list[defer.Deferred[Any]] = []
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        tracker = self._tracker
        if tracker is not None:
            for proto in list(tracker.protocols):
                waits.append(tracker.when_lost(proto))
                transport = proto.transport
                if transport is not None:
                    transport.abortConnection()
        d = defer.gatherResults(waits, consumeErrors=True)

        def cleanup(_: object) -> None:
            # Aborting may have run stopProducing callbacks that scheduled nothing,
            # but be thorough: nothing of ours may outlive stop().
            for call in list(self._calls):
                self._cancel(call)

        d.addCallback(cleanup)
        return d

    def _call_later(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:
        """``reactor.callLater`` whose calls :meth:`stop` can find and cancel."""

        def run() -> None:
            self._calls.discard(call)
            f(*args)

        call = self._reactor.callLater(delay, run)
        self._calls.add(call)
        return call

    def _cancel(self, call: Any) -> None:
        self._calls.discard(call)
        if call.active():
            call.cancel()

    # ----------------------------------------------------------- requests

    def _handle(self, request: Any) -> Any:
        method = request.method.decode("ascii", "replace")
        uri = request.uri.decode("latin-1")
        headers = {
            name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((method, uri, headers))
        request.notifyFinish().addErrback(lambda _: self._gone.add(request))
        path = request.path.decode("latin-1")
        fault = self._take_fault(path)
        response = self._route(request, method, path, headers)
        if fault is not None:
            log.debug("fake upstream fault {fault} on {method} {uri}", fault=fault.name, method=method, uri=uri)

        if fault is not None and fault.name == "delay":
            call = self._call_later(float(fault.options["seconds"]), self._deliver, request, response, None)
            request.notifyFinish().addErrback(lambda _: self._cancel(call))
        else:
            self._deliver(request, response, fault)
        return NOT_DONE_YET

    # ---------------------------------------------------------- routing

    def _route(self, request: Any, method: str, path: str, headers: dict[str, str]) -> _Response:
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed\n", Allow="GET, HEAD")
        if path == "/simple":
            return _redirect(301, "/simple/")
        if path == "/simple/":
            return self._page(request, headers, None)
        m = re.fullmatch(r"/simple/([^/]+)(/?)", path)
        if m:
            canonical = canonicalize_name(unquote(m[1]))
            if canonical not in self._projects:
                return _text(404, "no such project\n")
            if not m[2] or unquote(m[1]) != canonical:
                return _redirect(301, f"/simple/{quote(canonical)}/")
            return self._page(request, headers, canonical)
        m = re.fullmatch(r"/files/([^/]+)", path)
        if m:
            return self._file(unquote(m[1]), headers)
        m = re.fullmatch(r"/integrity/[^/]+/[^/]+/([^/]+)/provenance", path)
        if m:
            record = self._by_filename.get(unquote(m[1]))
            if record is None or record.provenance is None:
                return _text(404, "no provenance\n")
            return _Response(200, {"Content-Type": "application/vnd.pypi.integrity.v1+json"},
                             _BytesBody(record.provenance))
        return _text(404, "not found\n")

    def _page(self, request: Any, headers: dict[str, str], project: str | None) -> _Response:
        accept = headers.get("accept")
        fmt = parse_qs(request.uri.decode("latin-1").partition("?")[2]).get("format")
        if fmt:
            accept = fmt[-1]
        ctype = TEXT_HTML_TYPE if self.html_only else negotiate(accept)
        is_json = ctype == JSON_TYPE
        body, etag = self._rendered_page(project, ctype)
        base = {"Content-Type": ctype, "Vary": "Accept", "ETag": etag}
        if _etag_matches(headers.get("if-none-match"), etag):
            return _Response(304, base)
        return _Response(200, base, _BytesBody(body), page_format="json" if is_json else "html")

    def _file(self, filename: str, headers: dict[str, str]) -> _Response:
        record = self._by_filename.get(filename)
        if record is not None:
            etag = f'"{record.sha256}"'
            full: _Body = _FileBody(record.path, 0, record.size)
        elif filename.endswith(".metadata"):
            record = self._by_filename.get(filename.removesuffix(".metadata"))
            if record is None or record.metadata is None:
                return _text(404, "not found\n")
            etag = f'"{record.metadata_sha256}"'
            full = _BytesBody(record.metadata)
        else:
            return _text(404, "not found\n")
        base = {"Content-Type": "application/octet-stream", "ETag": etag, "Accept-Ranges": "bytes"}
        if _etag_matches(headers.get("if-none-match"), etag):
            return _Response(304, base)
        wanted = _parse_range(headers.get("range"), full.length)
        if wanted == "bad":
            return _Response(416, {**base, "Content-Range": f"bytes */{full.length}"}, _BytesBody(b""))
        if isinstance(wanted, tuple):
            start, end = wanted
            if isinstance(full, _FileBody):
                part: _Body = _FileBody(full.path, start, end - start)
            else:
                part = _BytesBody(full.read(start, end - start))
            return _Response(206, {**base, "Content-Range": f"bytes {start}-{end - 1}/{full.length}"}, part)
        return _Response(200, base, full, announce_length=not self.chunked_files)

    # ---------------------------------------------------------- rendering

    def _file_url(self, filename: str) -> str:
        if self.file_base is not None:
            return f"{self.file_base}{quote(filename)}"
        if self.absolute_urls:
            return f"{self.root_url}files/{quote(filename)}"
        return f"../../files/{quote(filename)}"

    def _root_html(self) -> bytes:
        links = "".join(
            f'    <a href="{quote(name)}/">{html.escape(proj.display_name)}</a><br />\n'
            for name, proj in sorted(self._projects.items())
        )
        return (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{_API_VERSION}">\n'
            "    <title>Simple index</title>\n  </head>\n  <body>\n"
            f"{links}  </body>\n</html>\n"
        ).encode()

    def _root_json(self) -> bytes:
        doc = {
            "meta": {"api-version": _API_VERSION},
            "projects": [{"name": p.display_name} for _n, p in sorted(self._projects.items())],
        }
        return json.dumps(doc).encode()

    def _sorted_files(self, proj: _Project) -> list[_File]:
        return sorted(proj.files.values(), key=lambda f: (f.version, f.filename))

    def _project_html(self, name: str, proj: _Project) -> bytes:
        anchors = []
        for f in self._sorted_files(proj):
            attrs_ = [f'href="{html.escape(self._file_url(f.filename))}#sha256={f.sha256}"']
            if f.requires_python is not None:
                attrs_.append(f'data-requires-python="{html.escape(f.requires_python)}"')
            if f.yanked is not False:
                reason = "" if f.yanked is True else str(f.yanked)
                attrs_.append(f'data-yanked="{html.escape(reason)}"')
            if f.metadata is not None:
                attrs_.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
                attrs_.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
            if f.provenance_url is not None:
                attrs_.append(f'data-provenance="{html.escape(f.provenance_url)}"')
            anchors.append(f'    <a {" ".join(attrs_)}>{html.escape(f.filename)}</a><br />\n')
        return (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{_API_VERSION}">\n'
            f"    <title>Links for {html.escape(name)}</title>\n  </head>\n  <body>\n"
            f"    <h1>Links for {html.escape(name)}</h1>\n"
            f"{''.join(anchors)}  </body>\n</html>\n"
        ).encode()

    def _project_json(self, name: str, proj: _Project) -> bytes:
        files = []
        for f in self._sorted_files(proj):
            files.append(
                {
                    "filename": f.filename,
                    "url": self._file_url(f.filename),
                    "hashes": {"sha256": f.sha256},
                    "requires-python": f.requires_python,
                    "yanked": f.yanked,
                    "core-metadata": {"sha256": f.metadata_sha256} if f.metadata is not None else False,
                    "size": f.size,
                    # An empty upload_time: a file the upstream gives no time (PEP 700 makes it optional).
                    **({"upload-time": f.upload_time} if f.upload_time else {}),
                    "provenance": f.provenance_url,
                }
            )
        versions = sorted({f.version for f in proj.files.values()})
        doc = {
            "meta": {"api-version": _API_VERSION},
            "name": name,
            "files": files,
            "versions": [str(v) for v in versions],
        }
        return json.dumps(doc).encode()

    # --------------------------------------------------------- delivery

    def _deliver(self, request: Any, response: _Response, fault: _Fault | None) -> None:
        if request in self._gone:
            return
        name = fault.name if fault is not None else None
        opts = fault.options if fault is not None else {}
        response = self._replace(request, response, name, opts)
        if name == "hang":
            return
        if name == "garbage":
            transport = request.channel.transport
            transport.write(bytes(opts["body"]))
            transport.loseConnection()
            return

        body = response.body
        length = body.length if body is not None else 0
        request.setResponseCode(response.code)
        for key, value in response.headers.items():
            request.setHeader(key, value)
        if body is not None and response.announce_length:
            request.setHeader("Content-Length", str(length))

        channel = request.channel
        if request.method == b"HEAD" or body is None:
            if name == "stall":
                return
            if name == "reset":
                channel.transport.abortConnection()
                return
            if name == "truncate":
                channel.loseConnection()
                return
            request.write(b"")
            request.finish()
            return

        after = opts.get("after")
        after = length // 2 if after is None else max(0, min(int(after), length))

        def finish() -> None:
            if not request.finished and request not in self._gone:
                request.finish()

        def overlong() -> None:
            request.write(b"X" * int(opts["extra"]))
            finish()
            channel.loseConnection()

        def reset() -> None:
            self._abort_when_flushed(channel.transport, 0)

        end, on_done, transform, chunk, interval = length, finish, None, _CHUNK, None
        if name == "stall":
            end, on_done = after, lambda: None
        elif name == "reset":
            end, on_done = after, reset
        elif name == "truncate":
            end, on_done = after, channel.loseConnection
        elif name == "overlong":
            on_done = overlong
        elif name == "wrong_bytes":
            transform = _flip
        elif name == "slow":
            rate = max(1, int(opts["rate"]))
            interval = 0.05
            chunk = max(1, int(rate * interval))
        sender = _Sender(self, request, body, end, on_done, transform=transform, chunk=chunk, interval=interval)
        request.notifyFinish().addErrback(lambda _: sender.stopProducing())
        sender.start()

    def _replace(self, request: Any, response: _Response, name: str | None, opts: dict[str, Any]) -> _Response:
        """The response a fault substitutes for the real one (or the real one)."""
        if name == "status":
            code = int(opts["code"])
            resp = _text(code, f"fake upstream: injected status {code}\n")
            if opts.get("retry_after") is not None:
                resp.headers["Retry-After"] = str(opts["retry_after"])
            return resp
        if name == "redirect_loop":
            return _redirect(302, self.root_url.rstrip("/") + request.uri.decode("latin-1"))
        if name == "redirect":
            if not opts.get("location"):
                raise ValueError("the redirect fault needs a location")
            return _redirect(int(opts["code"]), str(opts["location"]))
        ctype = response.headers.get("Content-Type", "application/octet-stream")
        if name == "malformed":
            if opts.get("body") is not None:
                garbage = bytes(opts["body"])
            elif response.page_format == "json":
                garbage = b'{"meta": {"api-version": "1.1"}, "name": "x", "files": [{"filename": \x00\xff'
            elif response.page_format == "html":
                garbage = b'<!DOCTYPE html><html><body><a href="../../files/\x00\xff<<<a href=#sha256=zz'
            else:
                garbage = b"\x00\xffnot what you asked for"
            return _Response(200, {"Content-Type": ctype, "ETag": _etag(ctype, garbage)}, _BytesBody(garbage))
        if name == "huge_page":
            size = int(opts["size"])
            if response.page_format == "json":
                head, fill, tail = b'{"meta": {"api-version": "1.1"}, "name": "huge", "files": [], "_pad": "', b"x", b'"}'
            else:
                head = b'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.1"></head><body>\n'
                fill, tail = b"<!-- padding padding padding padding padding padding -->\n", b"</body></html>\n"
            if size < len(head) + len(tail):
                head, tail = b"", b""
            headers = {"Content-Type": ctype}
            if response.page_format is not None:
                headers["Vary"] = "Accept"
            return _Response(
                200,
                headers,
                _PatternBody(head, fill, tail, size),
                page_format=response.page_format,
                announce_length=bool(opts["content_length"]),
            )
        return response

    def _abort_when_flushed(self, transport: Any, waited: float) -> None:
        """RST the connection once the bytes already written have left the buffer.

        ``abortConnection`` discards unsent data, so aborting right after a
        write would send fewer than ``after`` bytes.  Polls for at most 2 s.
        """
        tcp = getattr(transport, "transport", transport)  # through the WrappingFactory wrapper
        if getattr(tcp, "disconnected", False) or not getattr(tcp, "connected", True):
            return
        buffered = len(getattr(tcp, "dataBuffer", b"")) - getattr(tcp, "offset", 0)
        buffered += getattr(tcp, "_tempDataLen", 0)
        if buffered > 0 and waited < 2.0:
            self._call_later(0.01, self._abort_when_flushed, transport, waited + 0.01)
            return
        tcp.abortConnection()


def _flip(data: bytes) -> bytes:
    return data.translate(_FLIP)


def _text(code: int, text: str, **headers: str) -> _Response:
    return _Response(code, {"Content-Type": "text/plain; charset=utf-8", **headers}, _BytesBody(text.encode()))


def _redirect(code: int, location: str) -> _Response:
    return _Response(code, {"Location": location, "Content-Type": "text/plain; charset=utf-8"}, _BytesBody(b"redirect\n"))
