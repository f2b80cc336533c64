"""The ``simple`` upstream: any index that speaks the Simple API over HTTP(S).

Pages are fetched (JSON preferred, HTML accepted, gzip decoded), conditionally
when we hold validators, and parsed by :mod:`pypicache.providers.upstream.parse`.  Files
are streamed chunk by chunk to the caller, so memory stays flat whatever the
size of a wheel.  Requests go through :mod:`pypicache.providers.upstream.http`, a lean
keep-alive client: Twisted's Agent and treq cost more per request than the
rest of a cold install's work on the reactor thread.

Every wait is bounded (connect, whole page, idle download, drained bodies)
and every failure -- refused, reset, timed out, truncated, malformed -- arrives as
:class:`~pypicache.model.UpstreamError`, because the server's answer to any of
them is the same: serve what is cached.

Redirects are followed here (at most :data:`MAX_REDIRECTS` hops): the body of
each intermediate response is read (so its connection is reused) and a
relative ``Location`` is resolved against the current URL.
Configured extra headers (credentials) only go to the upstream's own origin.
Every URL fetched (file links, each redirect) and every address connected to
must pass the fetch policy (:mod:`pypicache.providers.upstream.policy`), so a hostile
page cannot point the server at internal services.
"""

from __future__ import annotations

import math
import re
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urldefrag, urljoin, urlsplit

import attrs
from hyperlink import EncodedURL
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from pypicache._twisted import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from pypicache.errors import ConfigError
from pypicache.interfaces import IClosable, IProviderFactory, IUpstream, IUpstreamDownload
from pypicache.model import (
    FileRecord,
    InvalidName,
    NotModified,
    ProjectList,
    ProjectPage,
    UpstreamError,
    UpstreamNotFound,
    Validators,
    normalize,
)
from pypicache.providers import HTTPSettings, ProviderContext, check_options
from pypicache.providers.upstream.http import ConnectionPool
from pypicache.providers.upstream.parse import page_format, parse_index, parse_project
from pypicache.providers.upstream.policy import FetchPolicy, UpstreamRefused, parse_file_hosts, parse_networks

__all__ = [
    "ACCEPT",
    "Download",
    "MAX_REDIRECTS",
    "SimpleUpstream",
    "UpstreamStatusError",
    "factory",
]

log = Logger()

#: What we ask for: JSON first, the same weights uv uses.
ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
_ACCEPT = ACCEPT.encode("ascii")
#: Files are never asked for compressed: their bytes are what is hashed.
_FILE_HEADERS = {b"accept-encoding": b"identity"}
DEFAULT_URL = "https://pypi.org/simple/"
MAX_REDIRECTS = 5
#: Pages bigger than this are parsed in the thread pool, not the reactor thread.
THREAD_PARSE_BYTES = 256 * 1024
#: Bodies of error and redirect responses are read (to keep the connection)
#: up to this size, then the connection is dropped instead.
_DRAIN_BYTES = 64 * 1024
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")  # latin-1, no CR/LF/NUL


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an unexpected HTTP status.

    ``retry_after`` keeps the upstream's Retry-After (429, 503), so the server
    can pass the hint on or back off.
    """

    def __init__(self, url: str, status: int, retry_after: str | None = None) -> None:
        self.url = url
        self.status = status
        self.retry_after = retry_after
        hint = f" (Retry-After: {retry_after})" if retry_after else ""
        super().__init__(f"{url}: upstream answered HTTP {status}{hint}")


# ----------------------------------------------------------------- helpers


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port


def _http_url(url: str) -> str | None:
    """``url`` without its fragment if it is absolute http(s), else None."""
    if not isinstance(url, str):
        return None
    url = urldefrag(url.strip())[0]
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        if parts.port == 0:  # raises ValueError on a port that is no number or out of range
            return None  # not "the default port": nothing listens on port 0
    except ValueError:
        return None
    return url


#: URLs that hyperlink's IRI-to-URI conversion returns unchanged: lower-case
#: host (or an IPv6 literal), no user info, no default port, only URI
#: characters (no brackets past the host).
_PLAIN_URL = re.compile(r"(?:http://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?!80/)[1-9][0-9]{0,4})?"
                        r"|https://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?!443/)[1-9][0-9]{0,4})?)"
                        r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*(?<!\?)")


def _wire_url(url: str) -> bytes:
    """The URL as the request line needs it (IRIs percent-encoded).

    Almost every file URL is already plain ASCII; those skip hyperlink, whose
    parse and re-encode cost more than the rest of issuing the request.
    """
    if _PLAIN_URL.fullmatch(url):
        return url.encode("ascii")
    parsed = EncodedURL.from_text(url)
    host = parsed.host
    if ":" in host:  # an IPv6 literal, which hyperlink would try to IDNA-encode
        return parsed.replace(host="ipv6.invalid").to_uri().replace(host=host).to_text().encode("ascii")
    return parsed.to_uri().to_text().encode("ascii")


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1").strip() if values else None


def _describe(exc: BaseException) -> str:
    """A one-line reason for a network failure, unwrapping Twisted's
    ``ResponseFailed([Failure, ...])`` style wrappers."""
    reasons = getattr(exc, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(
            _describe(r.value) if isinstance(r, Failure) else str(r) for r in reasons
        )
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name


#: File name endings of distributions (and their PEP 658 metadata).
_DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tbz", ".tar", ".egg", ".exe",
                  ".msi", ".rpm", ".dmg", ".metadata")


def _looks_like_project_page(body: bytes, content_type: str | None, page: ProjectPage) -> bool:
    """False for an HTML page that is no Simple API page at all.

    Captive portals, login walls and misrouted proxies answer 200 text/html
    for every URL; parsed as PEP 503 that is a project without files (or with
    a "Log in" file), which would replace the cached list.  A real project
    page either carries the PEP 629 ``pypi:repository-version`` marker (every
    current index sends it) or links at least one distribution.  JSON pages
    are checked by their parser (``meta.api-version`` is required).
    """
    head = body[:65536]
    if page_format(content_type) == "json" or head.lstrip()[:1] == b"{":
        return True
    if b"pypi:repository-version" in head.lower():  # it sits in <head>: no need to copy a huge page
        return True
    return any(f.filename.lower().endswith(_DIST_SUFFIXES) for f in page.files)


def _validators(response: Any) -> Validators:
    return Validators(etag=_header(response, b"etag"), last_modified=_header(response, b"last-modified"))


# ------------------------------------------------------------ body reading


class _BodyReader(Protocol):
    """Receives one response body: hands chunks to ``sink`` and guards it.

    Fails ``done`` with UpstreamError when the body exceeds ``max_bytes``, is
    longer or shorter than ``expected`` (the Content-Length), ends without any
    length (Twisted's PotentialDataLoss: a close that may be a reset), breaks
    off, sends nothing for ``idle_timeout`` seconds, or is not over after
    ``deadline`` seconds (a byte now and then resets the idle timer forever).  Every failure aborts
    the connection so nothing lingers.  Cancelling ``done`` aborts too.
    """

    def __init__(
        self,
        sink: Callable[[bytes], Any],
        url: str,
        *,
        clock: Any,
        expected: int | None = None,
        max_bytes: int | None = None,
        idle_timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.done: Deferred[None] = Deferred(self._on_cancel)
        self.received = 0
        self._sink = sink
        self._url = url
        self._clock = clock
        self._expected = expected
        self._max_bytes = max_bytes
        self._idle_timeout = idle_timeout
        self._deadline = deadline
        self._timer: Any = None
        self._deadline_timer: Any = None

    # Twisted calls makeConnection from deliverBody, before any data.
    def connectionMade(self) -> None:
        if self._idle_timeout is not None and not self.done.called:
            self._timer = self._clock.callLater(self._idle_timeout, self._stalled)
        if self._deadline is not None and not self.done.called:
            self._deadline_timer = self._clock.callLater(self._deadline, self._overdue)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.received += len(data)
        if self._max_bytes is not None and self.received > self._max_bytes:
            self.abort(UpstreamError(f"{self._url}: body larger than {self._max_bytes} bytes"))
            return
        if self._expected is not None and self.received > self._expected:
            self.abort(UpstreamError(
                f"{self._url}: overlong body: more than the announced {self._expected} bytes"))
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        try:
            self._sink(data)
        except Exception as e:  # the caller's own failure (disk full, ...): theirs to see
            self.abort(e)

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason or Failure(ResponseDone())
        self._stop_timer()
        if self.done.called:
            return
        if reason.check(ResponseDone):
            if self._expected is not None and self.received != self._expected:
                self.done.errback(UpstreamError(
                    f"{self._url}: truncated: {self.received} of {self._expected} bytes"))
            else:
                self.done.callback(None)
        elif reason.check(PotentialDataLoss):
            self.done.errback(UpstreamError(
                f"{self._url}: truncated? connection closed after {self.received} bytes "
                "without a Content-Length"))
        else:
            self.done.errback(UpstreamError(
                f"{self._url}: truncated after {self.received} bytes: {_describe(reason.value)}"))

    def abort(self, exc: BaseException) -> None:
        """Drop the connection and fail ``done`` with ``exc``."""
        self._stop_timer()
        self._drop()
        if not self.done.called:
            self.done.errback(exc)

    def _stalled(self) -> None:
        self._timer = None
        self.abort(UpstreamError(
            f"{self._url}: stalled: no data for {self._idle_timeout}s after {self.received} bytes"))

    def _overdue(self) -> None:
        self._deadline_timer = None
        self.abort(UpstreamError(
            f"{self._url}: body not over after {self._deadline}s ({self.received} bytes)"))

    def _on_cancel(self, _: Deferred) -> None:
        self._stop_timer()
        self._drop()

    def _drop(self) -> None:
        # The response's transport proxy stops the TCP connection (it is not
        # reused: the pool never gets back a connection mid-body).
        if self.transport is not None:
            self.transport.stopProducing()

    def _stop_timer(self) -> None:
        for timer in (self._timer, self._deadline_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._deadline_timer = None


def _drain_body(response: Any, url: str, clock: Any, timeout: float) -> _BodyReader:
    """Read and forget a small body (error, redirect) so the connection can go
    back to the pool; a big or slow one is cut off instead: at most
    ``timeout`` seconds in all, however the bytes trickle.  The reader's
    ``done`` fires (never fails) once the body is gone."""
    reader = _BodyReader(lambda _: None, url, clock=clock, max_bytes=_DRAIN_BYTES,
                         idle_timeout=timeout, deadline=timeout)
    reader.done.addErrback(lambda _: None)
    response.deliverBody(reader)
    return reader


def _abandon(response: Any, url: str, clock: Any) -> _BodyReader:
    """Take a body only to drop its connection (nothing else releases it)."""
    reader = _BodyReader(lambda _: None, url, clock=clock)
    reader.done.addErrback(lambda _: None)
    response.deliverBody(reader)
    reader.abort(UpstreamError(f"{url}: abandoned"))
    return reader


# --------------------------------------------------------------- download


@implementer(IUpstreamDownload)
class Download:
    """A file whose headers arrived; call :meth:`deliver` or :meth:`cancel`
    exactly once (an undelivered body holds its connection)."""

    def __init__(self, response: Any, url: str, clock: Any, read_timeout: float) -> None:
        self.url = url
        length = response.length
        self.length: int | None = length if length is not UNKNOWN_LENGTH and isinstance(length, int) else None
        self._response = response
        self._clock = clock
        self._read_timeout = read_timeout
        self._reader: _BodyReader | None = None
        self._cancelled = False

    def deliver(self, write: Callable[[bytes], Any]) -> Deferred[None]:
        if self._cancelled:
            return defer.fail(UpstreamError(f"{self.url}: download cancelled"))
        if self._reader is not None:
            return defer.fail(UpstreamError(f"{self.url}: body already delivered"))
        self._reader = _BodyReader(write, self.url, clock=self._clock, expected=self.length,
                                   idle_timeout=self._read_timeout)
        self._response.deliverBody(self._reader)
        return self._reader.done

    def cancel(self) -> None:
        self._cancelled = True
        if self._reader is None:
            self._reader = _abandon(self._response, self.url, self._clock)
        else:
            self._reader.abort(UpstreamError(f"{self.url}: download cancelled"))


# --------------------------------------------------------------- upstream


#: Idle connections kept per upstream host.  A client resolving a set of
#: requirements asks for its pages (then METADATA, then files) all at once;
#: the pool opens a connection per concurrent request and keeps this many
#: afterwards, so the next burst reuses them instead of paying a new
#: connection (a TLS handshake on a real index).
IDLE_PER_HOST = 32
#: How long an idle upstream connection is kept.
IDLE_TIMEOUT = 60.0


@implementer(IUpstream, IClosable)
class SimpleUpstream:
    """Pages and files from one Simple API root.

    Pages and files share one keep-alive :class:`ConnectionPool` (``pool``
    may be injected by tests), so the connections a burst of page requests
    opened serve the METADATA and file requests that follow.  Call
    :meth:`close` on shutdown.

    Every URL (file links, redirects) and every address connected to must
    pass ``policy`` (by default: the upstream's origin, the public index's
    file host, no internal addresses; see policy.py); ``resolver`` (an
    ``IHostnameResolver``) replaces the reactor's for those connections.
    """

    def __init__(
        self,
        context: ProviderContext,
        url: str = DEFAULT_URL,
        *,
        http: HTTPSettings | None = None,
        headers: Mapping[str, str] | None = None,
        pool: Any = None,
        policy: FetchPolicy | None = None,
        resolver: Any = None,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.policy = policy if policy is not None else FetchPolicy.for_upstream(self.url)
        self._reactor = context.reactor
        self._threadpool = context.threadpool
        self._http = http or context.http
        self._extra = {k.lower().encode("latin-1"): v.encode("latin-1") for k, v in (headers or {}).items()}
        self._origin = _origin(self.url)
        self._user_agent = self._http.user_agent.encode("latin-1")
        self._draining: set[_BodyReader] = set()
        self._pool = pool if pool is not None else ConnectionPool(
            self._reactor, connect_timeout=self._http.connect_timeout, idle_per_host=IDLE_PER_HOST,
            idle_timeout=IDLE_TIMEOUT, guard=self.policy.check_address, resolver=resolver)

    async def _close(self) -> None:
        # Let a response being parsed right now (close() called from one of
        # its callbacks) finish and return its connection to the pool first.
        # Drains still running are abandoned: a shutdown never waits for an
        # upstream to finish a body nobody reads.
        await deferLater(self._reactor, 0, lambda: None)
        for reader in list(self._draining):
            reader.abort(UpstreamError(f"{reader._url}: abandoned at shutdown"))
        await self._pool.close()

    def close(self) -> Deferred[None]:
        """Close pooled connections (for shutdown and test teardown)."""
        return ensureDeferred(self._close())

    def _drain(self, response: Any, url: str) -> None:
        reader = _drain_body(response, url, self._reactor, self._http.read_timeout)
        if not reader.done.called:
            self._draining.add(reader)
            reader.done.addBoth(lambda _: self._draining.discard(reader))

    # -- requests ---------------------------------------------------------

    def _headers(self, url: str, extra: Mapping[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        """Request headers (lower-case names, each once): configured extra
        headers only for the upstream's own origin, never after a redirect
        elsewhere."""
        headers = {b"user-agent": self._user_agent}
        if self._extra and _origin(url) == self._origin:
            headers.update(self._extra)
        headers.update(extra)
        return list(headers.items())

    async def _get(self, url: str, extra: Mapping[bytes, bytes],
                   send: Callable[[str, list[tuple[bytes, bytes]]], Awaitable[Any]]) -> tuple[Any, str]:
        """GET ``url`` following redirects; the response and its final URL.

        Each hop must pass the fetch policy (UpstreamRefused, logged)."""
        start = url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                self.policy.check_url(url)
                response = await send(url, self._headers(url, extra))
            except UpstreamRefused as e:
                where = f" (redirected from {start})" if url != start else ""
                log.warn("upstream fetch refused by policy{where}: {why}", where=where, why=str(e))
                raise
            if response.code not in _REDIRECT_CODES:
                return response, url
            location = _header(response, b"location")
            self._drain(response, url)
            if hop == MAX_REDIRECTS:
                raise UpstreamError(f"{start}: more than {MAX_REDIRECTS} redirects")
            target = _http_url(urljoin(url, location)) if location else None
            if target is None:
                raise UpstreamError(f"{url}: HTTP {response.code} redirect to unusable {location!r}")
            url = target
        raise AssertionError("unreachable")

    def _send_page(self, url: str, headers: list[tuple[bytes, bytes]]) -> Deferred[Any]:
        return self._pool.request(_wire_url(url), headers, decode_gzip=True,
                                  max_wire_bytes=self._http.max_page_bytes)

    def _send_file(self, url: str, headers: list[tuple[bytes, bytes]]) -> Deferred[Any]:
        return self._pool.request(_wire_url(url), headers)

    def _bounded(self, coro: Awaitable[Any], url: str, timeout: float) -> Deferred[Any]:
        """Run ``coro`` for at most ``timeout`` seconds; every failure other
        than our own (and a caller's cancel) becomes UpstreamError."""
        d = ensureDeferred(coro)
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self._reactor.callLater(timeout, expire)

        def translate(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if not isinstance(result, Failure):
                return result
            # Cancelling mid-request surfaces as CancelledError or as Twisted's
            # ResponseNeverReceived/ResponseFailed wrapping it: the flag is the truth.
            if timed_out:
                return Failure(UpstreamError(f"{url}: timed out after {timeout}s"))
            if result.check(NotModified, UpstreamNotFound, UpstreamError, CancelledError):
                return result
            log.debug("upstream request to {url} failed: {f}", url=url, f=result)
            return Failure(UpstreamError(f"{url}: {_describe(result.value)}"))

        return d.addBoth(translate)

    # -- pages ------------------------------------------------------------

    async def _page(self, url: str, validators: Validators) -> tuple[bytes, str | None, str, Validators]:
        """Body, Content-Type, final URL and validators of a 200 page."""
        extra = {b"accept": _ACCEPT}
        # Validators come from an index that may predate the parser's CR/LF
        # check: one that could split the request head is not sent.
        if validators.etag and _HEADER_VALUE.fullmatch(validators.etag):
            extra[b"if-none-match"] = validators.etag.encode("latin-1")
        if validators.last_modified and _HEADER_VALUE.fullmatch(validators.last_modified):
            extra[b"if-modified-since"] = validators.last_modified.encode("latin-1")
        response, final = await self._get(url, extra, self._send_page)
        code = response.code
        if code != 200:
            self._drain(response, final)
            if code == 304:
                raise NotModified(final)
            if code in (404, 410):
                raise UpstreamNotFound(f"{final}: HTTP {code}")
            raise UpstreamStatusError(final, code, _header(response, b"retry-after"))
        limit = self._http.max_page_bytes
        if isinstance(response.length, int) and response.length > limit:
            _abandon(response, final, self._reactor)
            raise UpstreamError(f"{final}: page of {response.length} bytes exceeds {limit}")
        parts: list[bytes] = []
        reader = _BodyReader(parts.append, final, clock=self._reactor, max_bytes=limit)
        response.deliverBody(reader)
        await reader.done
        return b"".join(parts), _header(response, b"content-type"), final, _validators(response)

    async def _parse(self, url: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        body = args[0]
        try:
            if len(body) > THREAD_PARSE_BYTES and self._threadpool is not None:
                return await deferToThreadPool(self._reactor, self._threadpool, func, *args, **kwargs)
            return func(*args, **kwargs)
        except ValueError as e:
            raise UpstreamError(f"{url}: malformed page: {e}") from e

    async def _project(self, name: str, validators: Validators) -> ProjectPage:
        body, content_type, final, got = await self._page(self.url + name + "/", validators)
        page = await self._parse(final, parse_project, body, content_type, final, name=name)
        if not _looks_like_project_page(body, content_type, page):
            raise UpstreamError(f"{final}: not a Simple API page (an error or login page answered 200?)")
        return ProjectPage(name=name, files=self._fetchable_provenance(page.files), validators=got,
                           versions=page.versions, meta=page.meta)

    def _fetchable_provenance(self, files: tuple[FileRecord, ...]) -> tuple[FileRecord, ...]:
        """``files`` with every PEP 740 provenance URL the fetch policy would
        refuse dropped: a URL is only kept if the server can fetch it (and a
        page cannot point it at an internal host through us)."""
        if not any(f.provenance for f in files):
            return files
        out = []
        for f in files:
            if f.provenance:
                try:
                    self.policy.check_url(f.provenance)
                except UpstreamRefused:
                    log.debug("dropping provenance of {filename}: {url} is refused by the fetch policy",
                              filename=f.filename, url=f.provenance)
                    f = attrs.evolve(f, provenance=None)
            out.append(f)
        return tuple(out)

    async def _project_list(self, validators: Validators) -> ProjectList:
        body, content_type, final, got = await self._page(self.url, validators)
        names = await self._parse(final, parse_index, body, content_type)
        return ProjectList(names=names, validators=got)

    def fetch_project(self, name: str, validators: Validators = Validators()) -> Deferred[ProjectPage]:
        try:
            name = normalize(name)
        except InvalidName:
            return defer.fail(UpstreamNotFound(f"not a project name: {name!r}"))
        url = self.url + name + "/"
        return self._bounded(self._project(name, validators), url, self._http.page_timeout)

    def fetch_project_list(self, validators: Validators = Validators()) -> Deferred[ProjectList]:
        return self._bounded(self._project_list(validators), self.url, self._http.page_timeout)

    # -- files ------------------------------------------------------------

    async def _open(self, url: str) -> Download:
        response, final = await self._get(url, _FILE_HEADERS, self._send_file)
        if response.code != 200:
            self._drain(response, final)
            if response.code in (404, 410):
                raise UpstreamNotFound(f"{final}: HTTP {response.code}")
            raise UpstreamStatusError(final, response.code, _header(response, b"retry-after"))
        return Download(response, final, self._reactor, self._http.read_timeout)

    def open_file(self, url: str) -> Deferred[Download]:
        checked = _http_url(url)
        if checked is None:
            return defer.fail(UpstreamError(f"not an http(s) URL: {url!r}"))
        return self._bounded(self._open(checked), checked, self.file_header_timeout)

    @property
    def file_header_timeout(self) -> float:
        """How long a download may take to produce its headers (connecting
        and redirects included); the body then has its own idle timeout.

        One budget rather than connect + read, so that with the defaults
        (5 s, 10 s) a client waiting for its first byte hears from us within
        10 s: pip gives up after 15.
        """
        return max(self._http.connect_timeout, self._http.read_timeout)


# ---------------------------------------------------------------- factory


def _positive(options: Mapping[str, Any], key: str, kind: type) -> None:
    if key in options:
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, kind if kind is int else (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"upstream.{key}: must be a positive {kind.__name__}, got {value!r}")


def _check_url(value: str) -> str:
    if _http_url(value) != value.strip() or urlsplit(value).query:
        raise ConfigError(f"upstream.url: must be an http(s) URL without query or fragment, got {value!r}")
    if urlsplit(value).username is not None:
        # Twisted's Agent would silently ignore them: say where credentials go.
        raise ConfigError("upstream.url: no credentials in the URL; set an Authorization "
                          "header in upstream.headers instead")
    value = value.strip()
    return value if value.endswith("/") else value + "/"


def _check_headers(value: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, text in value.items():
        ok = isinstance(name, str) and _TOKEN.fullmatch(name) and isinstance(text, str) \
            and _HEADER_VALUE.fullmatch(text)
        if not ok:
            raise ConfigError(f"upstream.headers: bad header {name!r}")
        out[name] = text
    return out


@implementer(IProviderFactory)
class _SimpleFactory:
    """``provider = "simple"``: see the module docstring and docs/configuration.md."""

    kind = "upstream"

    def create(self, options: Mapping[str, Any], context: ProviderContext) -> SimpleUpstream:
        check_options("upstream", options, {
            "url": str,
            "connect_timeout": (int, float),
            "read_timeout": (int, float),
            "page_timeout": (int, float),
            "max_page_bytes": int,
            "headers": dict,
            "file_hosts": list,
            "allow_networks": list,
        })
        for key in ("connect_timeout", "read_timeout", "page_timeout"):
            _positive(options, key, float)
        _positive(options, "max_page_bytes", int)
        url = _check_url(options.get("url", DEFAULT_URL))
        headers = _check_headers(options.get("headers", {}))
        overrides = {k: (float(options[k]) if k != "max_page_bytes" else options[k])
                     for k in ("connect_timeout", "read_timeout", "page_timeout", "max_page_bytes")
                     if k in options}
        http = attrs.evolve(context.http, **overrides)
        file_hosts = parse_file_hosts(options["file_hosts"]) if "file_hosts" in options else None
        policy = FetchPolicy.for_upstream(url, file_hosts, parse_networks(options.get("allow_networks", [])))
        return SimpleUpstream(context, url, http=http, headers=headers, policy=policy)


factory = _SimpleFactory()
