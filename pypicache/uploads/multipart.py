"""A streaming ``multipart/form-data`` parser (RFC 7578) for upload bodies.

Why not ``cgi``/``email``: both want the whole body in memory (and ``cgi`` is
gone in Python 3.13), while an upload may be hundreds of megabytes.  This
parser reads the body (already spooled to a temporary file by the web layer)
in fixed-size chunks, writes the one distribution file straight to a new
temporary file while hashing it, and keeps only the small text fields in
memory, each bounded.

It is pure and synchronous: the caller runs it in a thread pool.  Every
failure is an :class:`UploadError` carrying the HTTP status to answer (400
for a malformed body, 413 for a file over the size limit) and a one-line
reason; whatever temporary file was created is removed before it is raised.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import attrs

__all__ = [
    "UploadError",
    "UploadedFile",
    "UploadForm",
    "parse_upload",
    "parse_content_type",
    "parse_disposition",
]

#: Read size: large enough to be cheap, small enough to keep memory flat.
CHUNK_SIZE = 64 * 1024
#: The form field that carries the distribution (twine, uv publish, warehouse).
FILE_FIELD = "content"
#: One part's header block; real clients send two short lines.
MAX_HEADER_BYTES = 16 * 1024
#: Everything kept in memory (text fields + small extra files) in total.
MAX_FORM_BYTES = 16 * 1024 * 1024
#: Bytes tolerated before the first boundary (RFC 2046 allows a preamble).
MAX_PREAMBLE_BYTES = 64 * 1024

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 2046 bcharsnospace plus space (not last).
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class UploadError(Exception):
    """An upload refused: ``status`` is the HTTP code, ``reason`` one line.

    The reason is meant to be shown to the client (twine prints it), so it
    never contains the request's bytes beyond short, repr-quoted names.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@attrs.frozen
class UploadedFile:
    """The distribution file of an upload, spooled to ``path``.

    The digests are lower-case hex, computed while the bytes were written,
    so nothing has to read the file again to know them.  The caller owns
    ``path`` and must remove it (see :meth:`discard`) or move it away.
    """

    path: Path
    filename: str
    size: int
    sha256: str
    md5: str
    blake2_256: str

    def discard(self) -> None:
        """Remove the spooled file; harmless if it is already gone."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@attrs.frozen
class UploadForm:
    """A parsed upload form.

    ``fields`` maps each text field to its values in order (fields such as
    ``classifiers`` and ``requires_dist`` repeat).  ``file`` is the part
    named ``content`` (None when the body had none: validation says so).
    ``extras`` holds other file parts (``gpg_signature``...) as bytes.
    """

    fields: Mapping[str, list[str]] = attrs.field(factory=dict)
    file: UploadedFile | None = None
    extras: Mapping[str, bytes] = attrs.field(factory=dict)

    def first(self, name: str) -> str | None:
        """The first value of text field ``name``, or None."""
        values = self.fields.get(name)
        return values[0] if values else None

    def discard(self) -> None:
        """Remove the spooled file, if any."""
        if self.file is not None:
            self.file.discard()


def parse_content_type(content_type: bytes | str) -> str:
    """Return the boundary of a ``multipart/form-data`` Content-Type.

    Raises UploadError(400) for any other type or a missing/invalid boundary.
    """
    if isinstance(content_type, bytes):
        try:
            content_type = content_type.decode("ascii")
        except UnicodeDecodeError:
            raise UploadError(400, "Content-Type is not ASCII") from None
    kind, params = _parse_header_params(content_type, what="Content-Type")
    if kind != "multipart/form-data":
        raise UploadError(400, "Content-Type must be multipart/form-data")
    boundary = params.get("boundary")
    if not boundary:
        raise UploadError(400, "Content-Type has no multipart boundary")
    if not _BOUNDARY.fullmatch(boundary):
        raise UploadError(400, "Content-Type has an invalid multipart boundary")
    return boundary


def parse_disposition(value: str) -> tuple[str, dict[str, str]]:
    """Parse a Content-Disposition value into ``(type, params)``.

    ``filename*`` (RFC 2231/5987: ``charset'lang'percent-encoded``) is decoded
    and, when present, replaces ``filename``.  Parameter names are lower-cased.
    """
    kind, params = _parse_header_params(value, what="Content-Disposition")
    extended = params.pop("filename*", None)
    if extended is not None:
        params["filename"] = _decode_ext_value(extended)
    return kind, params


def parse_upload(
    fileobj: BinaryIO,
    content_type: bytes | str,
    spool_dir: Path,
    *,
    max_fields: int = 1000,
    max_field_bytes: int = 1024 * 1024,
    max_file_bytes: int,
    max_form_bytes: int = MAX_FORM_BYTES,
    chunk_size: int = CHUNK_SIZE,
) -> UploadForm:
    """Parse an upload body read from ``fileobj`` (positioned at its start).

    ``max_fields`` bounds the number of parts, ``max_field_bytes`` each text
    field or extra file part, ``max_form_bytes`` all of them together, and
    ``max_file_bytes`` the distribution file (413 past it; reading stops).
    The distribution is written to a new file in ``spool_dir``; on success
    the caller owns it, on failure it is already removed.
    """
    boundary = parse_content_type(content_type)
    parser = _Parser(
        _Stream(fileobj, chunk_size),
        boundary.encode("ascii"),
        Path(spool_dir),
        max_fields=max_fields,
        max_field_bytes=max_field_bytes,
        max_file_bytes=max_file_bytes,
        max_form_bytes=max_form_bytes,
    )
    try:
        return parser.parse()
    except BaseException:
        parser.cleanup()
        raise


class _Stream:
    """A buffered reader over ``fileobj`` that finds markers across chunks."""

    def __init__(self, fileobj: BinaryIO, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._fileobj = fileobj
        self._chunk_size = chunk_size
        # The body's first delimiter has no CRLF before it; pretending one is
        # there lets a single marker (CRLF--boundary) find every delimiter.
        self._buf = bytearray(b"\r\n")
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._fileobj.read(self._chunk_size)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them (fewer only at EOF)."""
        while len(self._buf) < n and self._fill():
            pass
        return bytes(self._buf[:n])

    def skip(self, n: int) -> None:
        del self._buf[:n]

    def read_until(self, marker: bytes, sink: Callable[[bytes], None]) -> bool:
        """Feed ``sink`` everything before ``marker`` and consume the marker.

        Returns False when the input ends without the marker (after feeding
        what was read).  Keeps ``len(marker) - 1`` bytes back between reads,
        so a marker split over two chunks is still found.
        """
        keep = len(marker) - 1
        while True:
            index = self._buf.find(marker)
            if index >= 0:
                if index:
                    sink(bytes(self._buf[:index]))
                del self._buf[: index + len(marker)]
                return True
            if len(self._buf) > keep:
                n = len(self._buf) - keep
                sink(bytes(self._buf[:n]))
                del self._buf[:n]
            if not self._fill():
                return False


class _Bounded:
    """A sink collecting bytes in memory up to a limit."""

    def __init__(self, limit: int, error: Callable[[], UploadError]) -> None:
        self.data = bytearray()
        self._limit = limit
        self._error = error

    def __call__(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > self._limit:
            raise self._error()
        self.data += chunk


class _Spool:
    """A sink writing the distribution to a temporary file while hashing it."""

    def __init__(self, spool_dir: Path, limit: int) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=spool_dir)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._limit = limit
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._blake2 = hashlib.blake2b(digest_size=32)

    def __call__(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise UploadError(413, f"file is larger than the limit of {self._limit} bytes")
        self._file.write(chunk)
        self._sha256.update(chunk)
        self._md5.update(chunk)
        self._blake2.update(chunk)

    def finish(self, filename: str) -> UploadedFile:
        self._file.close()
        return UploadedFile(
            path=self.path,
            filename=filename,
            size=self.size,
            sha256=self._sha256.hexdigest(),
            md5=self._md5.hexdigest(),
            blake2_256=self._blake2.hexdigest(),
        )

    def abort(self) -> None:
        self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Parser:
    def __init__(
        self,
        stream: _Stream,
        boundary: bytes,
        spool_dir: Path,
        *,
        max_fields: int,
        max_field_bytes: int,
        max_file_bytes: int,
        max_form_bytes: int,
    ) -> None:
        self._stream = stream
        self._delimiter = b"\r\n--" + boundary
        self._spool_dir = spool_dir
        self._max_fields = max_fields
        self._max_field_bytes = max_field_bytes
        self._max_file_bytes = max_file_bytes
        self._form_budget = max_form_bytes
        self._spool: _Spool | None = None
        self._file: UploadedFile | None = None
        self._fields: dict[str, list[str]] = {}
        self._extras: dict[str, bytes] = {}

    def cleanup(self) -> None:
        if self._spool is not None:
            self._spool.abort()
            self._spool = None
        if self._file is not None:
            self._file.discard()
            self._file = None

    def parse(self) -> UploadForm:
        preamble = _Bounded(
            MAX_PREAMBLE_BYTES, lambda: UploadError(400, "no multipart boundary found in the body")
        )
        if not self._stream.read_until(self._delimiter, preamble):
            raise UploadError(400, "no multipart boundary found in the body")
        parts = 0
        while not self._after_delimiter():
            parts += 1
            if parts > self._max_fields:
                raise UploadError(400, f"too many form fields (more than {self._max_fields})")
            self._part()
        return UploadForm(fields=self._fields, file=self._file, extras=self._extras)

    def _after_delimiter(self) -> bool:
        """Consume the rest of a delimiter line; True if it closed the body."""
        stream = self._stream
        if stream.peek(2) == b"--":
            return True  # close delimiter; the epilogue is ignored unread
        # Transport padding (RFC 2046): optional linear white space, then CRLF.
        for _ in range(256):
            head = stream.peek(1)
            if head not in (b" ", b"\t"):
                break
            stream.skip(1)
        if stream.peek(2) != b"\r\n":
            if len(stream.peek(2)) < 2:
                raise UploadError(400, "body ended before the closing multipart boundary")
            raise UploadError(400, "malformed multipart boundary line")
        stream.skip(2)
        return False

    def _part(self) -> None:
        name, filename = self._headers()
        if name == FILE_FIELD:
            if filename is None:
                raise UploadError(400, "the 'content' part has no filename")
            if self._file is not None:
                raise UploadError(400, "more than one 'content' file in the form")
            self._spool = _Spool(self._spool_dir, self._max_file_bytes)
            self._body(self._spool)
            self._file = self._spool.finish(filename)
            self._spool = None
            return
        sink = _Bounded(
            self._max_field_bytes,
            lambda: UploadError(
                400, f"form field {name!r} is larger than {self._max_field_bytes} bytes"
            ),
        )
        self._body(sink)
        data = bytes(sink.data)
        self._form_budget -= len(data) + len(name)
        if self._form_budget < 0:
            raise UploadError(400, "form fields are too large in total")
        if filename is not None:
            if name in self._extras:
                raise UploadError(400, f"more than one {name!r} file in the form")
            self._extras[name] = data
            return
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError(400, f"form field {name!r} is not valid UTF-8") from None
        if "\x00" in value:
            raise UploadError(400, f"form field {name!r} contains a NUL character")
        self._fields.setdefault(name, []).append(value)

    def _body(self, sink: Callable[[bytes], None]) -> None:
        if not self._stream.read_until(self._delimiter, sink):
            raise UploadError(400, "body ended before the closing multipart boundary")

    def _headers(self) -> tuple[str, str | None]:
        """Read one part's headers; return its field name and filename."""
        if self._stream.peek(2) == b"\r\n":
            self._stream.skip(2)
            raise UploadError(400, "form part without Content-Disposition")
        block = _Bounded(
            MAX_HEADER_BYTES, lambda: UploadError(400, "form part headers are too large")
        )
        if not self._stream.read_until(b"\r\n\r\n", block):
            raise UploadError(400, "body ended inside form part headers")
        try:
            text = bytes(block.data).decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError(400, "form part headers are not valid UTF-8") from None
        disposition: str | None = None
        for line in text.split("\r\n"):
            if _CONTROL.search(line):
                raise UploadError(400, "control character in form part headers")
            if line[:1] in (" ", "\t"):
                raise UploadError(400, "folded header line in form part headers")
            header, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(header):
                raise UploadError(400, "malformed form part header")
            header = header.lower()
            value = value.strip(" \t")
            if header == "content-disposition":
                if disposition is not None:
                    raise UploadError(400, "form part with two Content-Disposition headers")
                disposition = value
            elif header == "content-transfer-encoding":
                if value.lower() not in ("7bit", "8bit", "binary"):
                    raise UploadError(400, f"unsupported Content-Transfer-Encoding {value!r}")
        if disposition is None:
            raise UploadError(400, "form part without Content-Disposition")
        kind, params = parse_disposition(disposition)
        if kind != "form-data":
            raise UploadError(400, "form part Content-Disposition is not form-data")
        name = params.get("name")
        if not name:
            raise UploadError(400, "form part without a field name")
        filename = params.get("filename")
        for value in (name, filename or ""):
            if _CONTROL.search(value) or "\t" in value:
                raise UploadError(400, "control character in form part headers")
        return name, filename


def _parse_header_params(value: str, *, what: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=b; c="d"`` into the lower-cased type and its params.

    Quoted strings honour ``\\"`` and ``\\\\`` escapes (RFC 7230); any other
    backslash is kept, because HTML5-style encoders (urllib3, browsers) do
    not escape it.  Duplicate parameters are refused: two ``name`` values
    are a classic way to make two parsers disagree.
    """
    pos = 0
    length = len(value)

    def skip_ws() -> None:
        nonlocal pos
        while pos < length and value[pos] in " \t":
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < length and value[pos] not in ' \t;=",':
            pos += 1
        return value[start:pos]

    skip_ws()
    kind = token().lower()
    if not kind:
        raise UploadError(400, f"malformed {what} header")
    params: dict[str, str] = {}
    while True:
        skip_ws()
        if pos >= length:
            return kind, params
        if value[pos] != ";":
            raise UploadError(400, f"malformed {what} header")
        pos += 1
        skip_ws()
        if pos >= length:
            return kind, params  # a trailing ';' is common and harmless
        key = token().lower()
        skip_ws()
        if not key or not _TOKEN.fullmatch(key) or pos >= length or value[pos] != "=":
            raise UploadError(400, f"malformed {what} header")
        pos += 1
        skip_ws()
        if pos < length and value[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= length:
                    raise UploadError(400, f"unterminated quoted string in {what} header")
                char = value[pos]
                if char == "\\" and pos + 1 < length and value[pos + 1] in '"\\':
                    chars.append(value[pos + 1])
                    pos += 2
                    continue
                pos += 1
                if char == '"':
                    break
                chars.append(char)
            param = "".join(chars)
        else:
            param = token()
        if key in params:
            raise UploadError(400, f"duplicate {key!r} parameter in {what} header")
        params[key] = param


def _decode_ext_value(value: str) -> str:
    """Decode an RFC 5987 ``charset'language'value`` parameter."""
    charset, sep1, rest = value.partition("'")
    _language, sep2, encoded = rest.partition("'")
    charset = charset.lower()
    if not (sep1 and sep2) or charset not in ("utf-8", "iso-8859-1"):
        raise UploadError(400, "malformed filename* parameter")
    try:
        return urllib.parse.unquote(encoded, encoding=charset, errors="strict")
    except UnicodeDecodeError:
        raise UploadError(400, "malformed filename* parameter") from None
