"""The streaming multipart/form-data parser.

Bodies are built by hand so every malformation can be expressed; each test
also checks that no temporary file is left in the spool directory after an
error, and tiny chunk sizes prove that boundaries split across reads are
found.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest

from pypicache.uploads import UploadError, parse_upload
from pypicache.uploads.multipart import parse_content_type, parse_disposition

BOUNDARY = "xYzZY-boundary"
CT = f"multipart/form-data; boundary={BOUNDARY}"
DELIMITER = b"--" + BOUNDARY.encode()
CD_A = b'Content-Disposition: form-data; name="a"'
MB = 1024 * 1024


def field(name: str, value: str | bytes, *, headers: bytes = b"") -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return (
        f'Content-Disposition: form-data; name="{name}"\r\n'.encode() + headers + b"\r\n" + data
    )


def filepart(name: str, filename: str, data: bytes, *, disposition: bytes | None = None) -> bytes:
    disposition = disposition or f'form-data; name="{name}"; filename="{filename}"'.encode()
    return (
        b"Content-Disposition: " + disposition + b"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + data
    )


def body(*parts: bytes, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    delimiter = b"--" + boundary.encode()
    out = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    if close:
        out += delimiter + b"--\r\n"
    return out


def standard_parts(data: bytes = b"wheel bytes") -> list[bytes]:
    return [
        field(":action", "file_upload"),
        field("protocol_version", "1"),
        field("name", "my-pkg"),
        field("classifiers", "A :: B"),
        field("classifiers", "C :: D"),
        filepart("content", "my_pkg-1.0-py3-none-any.whl", data),
    ]


class CountingReader(io.BytesIO):
    """Records how much was read and the largest single read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.total = 0
        self.largest = 0

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and size > 0, "the parser must read in bounded chunks"
        data = super().read(size)
        self.total += len(data)
        self.largest = max(self.largest, size)
        return data


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def parse(raw: bytes, spool: Path, content_type: str | bytes = CT, **kwargs: object):
    kwargs.setdefault("max_file_bytes", 10 * MB)
    return parse_upload(io.BytesIO(raw), content_type, spool, **kwargs)  # type: ignore[arg-type]


def refused(raw: bytes, spool: Path, match: str, status: int = 400, **kwargs: object) -> None:
    with pytest.raises(UploadError) as info:
        parse(raw, spool, **kwargs)
    assert info.value.status == status
    assert match in info.value.reason, info.value.reason
    assert "\n" not in info.value.reason
    assert list(spool.iterdir()) == [], "temporary file left behind"


# -- success ---------------------------------------------------------------------


def test_fields_and_file(spool: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    form = parse(body(*standard_parts(data)), spool)
    assert form.fields == {
        ":action": ["file_upload"],
        "protocol_version": ["1"],
        "name": ["my-pkg"],
        "classifiers": ["A :: B", "C :: D"],
    }
    assert form.first("name") == "my-pkg" and form.first("missing") is None
    upload = form.file
    assert upload is not None
    assert upload.filename == "my_pkg-1.0-py3-none-any.whl"
    assert upload.path.parent == spool
    assert upload.path.read_bytes() == data
    assert upload.size == len(data)
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert upload.md5 == hashlib.md5(data).hexdigest()
    assert upload.blake2_256 == hashlib.blake2b(data, digest_size=32).hexdigest()
    form.discard()
    assert list(spool.iterdir()) == []
    form.discard()  # twice is harmless


def test_reads_in_bounded_chunks(spool: Path) -> None:
    raw = body(*standard_parts(b"x" * (3 * MB)))
    reader = CountingReader(raw)
    form = parse_upload(reader, CT, spool, max_file_bytes=10 * MB, chunk_size=4096)
    assert reader.largest == 4096
    assert form.file is not None and form.file.size == 3 * MB
    form.discard()


# Data that keeps almost-matching the delimiter, so a parser that loses bytes
# or state at a chunk border shows it.
TRICKY = (
    b"\r\n--xYzZY-boundar\r\n-\r\n--\r\n--xYzZY\r\r\n--xYzZY-boundarX"
    b"--xYzZY-boundary\n--xYzZY-boundary\r--xYzZY-boundary\r\n--xYzZY-bound"
)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 11, 16, 17, 18, 19, 31, 64, 65536])
def test_boundaries_straddling_chunks(spool: Path, chunk_size: int) -> None:
    assert b"\r\n" + DELIMITER not in TRICKY
    data = TRICKY * 50 + random.Random(chunk_size).randbytes(2000) + TRICKY
    raw = body(field("note", "a\r\n--xYzZY-boundar b"), *standard_parts(data))
    form = parse(raw, spool, chunk_size=chunk_size)
    assert form.file is not None and form.file.path.read_bytes() == data
    assert form.fields["note"] == ["a\r\n--xYzZY-boundar b"]
    assert form.fields["classifiers"] == ["A :: B", "C :: D"]
    form.discard()


def test_empty_file_and_empty_field(spool: Path) -> None:
    form = parse(body(field("comment", ""), filepart("content", "a.whl", b"")), spool)
    assert form.fields == {"comment": [""]}
    assert form.file is not None and form.file.size == 0
    assert form.file.sha256 == hashlib.sha256(b"").hexdigest()
    form.discard()


def test_no_content_part(spool: Path) -> None:
    form = parse(body(field(":action", "file_upload")), spool)
    assert form.file is None
    assert list(spool.iterdir()) == []


def test_preamble_epilogue_and_transport_padding(spool: Path) -> None:
    raw = body(*standard_parts()).replace(DELIMITER + b"\r\n", DELIMITER + b" \t\r\n")
    raw = b"This is a preamble.\r\n" + raw + b"This is an epilogue, ignored."
    form = parse(raw, spool)
    assert form.first(":action") == "file_upload"
    assert form.file is not None and form.file.path.read_bytes() == b"wheel bytes"
    form.discard()


def test_utf8_field_values(spool: Path) -> None:
    form = parse(body(field("author", "Zoë Ünïcode ✓")), spool)
    assert form.fields["author"] == ["Zoë Ünïcode ✓"]


def test_extra_file_parts_kept_as_bytes(spool: Path) -> None:
    signature = b"-----BEGIN PGP SIGNATURE-----\r\nabc\r\n"
    raw = body(filepart("gpg_signature", "pkg.whl.asc", signature), *standard_parts())
    form = parse(raw, spool)
    assert form.extras == {"gpg_signature": signature}
    assert "gpg_signature" not in form.fields
    form.discard()


def test_filename_star_rfc5987(spool: Path) -> None:
    disposition = (
        b'form-data; name="content"; filename="fallback.whl"; '
        b"filename*=UTF-8''na%C3%AFve-1.0.whl"
    )
    form = parse(body(filepart("content", "", b"x", disposition=disposition)), spool)
    assert form.file is not None and form.file.filename == "naïve-1.0.whl"
    form.discard()


def test_quoted_filename_escapes(spool: Path) -> None:
    disposition = b'form-data; name=content; filename="a\\"b.whl"'
    form = parse(body(filepart("content", "", b"x", disposition=disposition)), spool)
    assert form.file is not None and form.file.filename == 'a"b.whl'
    form.discard()


def test_content_type_parsing() -> None:
    assert parse_content_type(b'multipart/form-data; boundary="a b=c"') == "a b=c"
    assert parse_content_type("Multipart/Form-Data;charset=utf-8;  boundary=abc ") == "abc"


def test_disposition_parsing() -> None:
    assert parse_disposition('form-data; name="a"; filename="b.whl";') == (
        "form-data",
        {"name": "a", "filename": "b.whl"},
    )


# -- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, reason",
    [
        ("multipart/form-data", "no multipart boundary"),
        ("multipart/form-data; boundary=", "no multipart boundary"),
        ("application/x-www-form-urlencoded", "must be multipart/form-data"),
        ("multipart/mixed; boundary=abc", "must be multipart/form-data"),
        ("multipart/form-data; boundary=" + "a" * 71, "invalid multipart boundary"),
        ("multipart/form-data; boundary=a\x00b", "invalid multipart boundary"),
        ("multipart/form-data; boundary=a; boundary=b", "duplicate 'boundary'"),
        ('multipart/form-data; boundary="abc', "unterminated quoted string"),
        (b"multipart/form-data; boundary=\xff", "not ASCII"),
    ],
)
def test_bad_content_type(spool: Path, content_type: str | bytes, reason: str) -> None:
    refused(body(*standard_parts()), spool, reason, content_type=content_type)


def test_body_without_boundary(spool: Path) -> None:
    refused(b"just some bytes\r\n" * 10, spool, "no multipart boundary found")


def test_preamble_is_bounded(spool: Path) -> None:
    refused(b"x" * (200 * 1024) + body(*standard_parts()), spool, "no multipart boundary found")


def test_no_closing_boundary(spool: Path) -> None:
    refused(body(*standard_parts(), close=False), spool, "before the closing multipart boundary")


def test_truncated_inside_the_file(spool: Path) -> None:
    raw = body(*standard_parts(b"z" * 100_000))
    refused(raw[: len(raw) // 2], spool, "before the closing multipart boundary")


def test_truncated_inside_headers(spool: Path) -> None:
    raw = b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="a"'
    refused(raw, spool, "ended inside form part headers")


def test_malformed_boundary_line(spool: Path) -> None:
    raw = body(*standard_parts()).replace(DELIMITER + b"\r\n", DELIMITER + b"X\r\n", 1)
    refused(raw, spool, "malformed multipart boundary line")


def test_too_many_fields(spool: Path) -> None:
    parts = [field(f"f{i}", "v") for i in range(11)]
    refused(body(*parts, *standard_parts()), spool, "too many form fields", max_fields=10)


def test_too_many_fields_after_the_file_removes_it(spool: Path) -> None:
    parts = [field(f"f{i}", "v") for i in range(11)]
    refused(body(*standard_parts(), *parts), spool, "too many form fields", max_fields=10)


def test_field_too_large(spool: Path) -> None:
    raw = body(field("description", "d" * 2000), *standard_parts())
    refused(raw, spool, "form field 'description' is larger than 1000 bytes", max_field_bytes=1000)


def test_extra_file_too_large(spool: Path) -> None:
    raw = body(*standard_parts(), filepart("gpg_signature", "x.asc", b"s" * 2000))
    refused(raw, spool, "form field 'gpg_signature' is larger", max_field_bytes=1000)


def test_fields_too_large_in_total(spool: Path) -> None:
    parts = [field("classifiers", "c" * 900) for _ in range(20)]
    refused(body(*standard_parts(), *parts), spool, "too large in total", max_form_bytes=10_000)


def test_duplicate_content(spool: Path) -> None:
    raw = body(*standard_parts(), filepart("content", "other.whl", b"second"))
    refused(raw, spool, "more than one 'content' file")


def test_duplicate_extra_file(spool: Path) -> None:
    sig = filepart("gpg_signature", "x.asc", b"s")
    refused(body(sig, sig, *standard_parts()), spool, "more than one 'gpg_signature' file")


def test_content_without_filename(spool: Path) -> None:
    refused(body(field("content", "not a file")), spool, "'content' part has no filename")


def test_file_too_large_is_413_and_stops_reading(spool: Path) -> None:
    raw = body(*standard_parts(b"b" * (5 * MB)))
    reader = CountingReader(raw)
    with pytest.raises(UploadError) as info:
        parse_upload(reader, CT, spool, max_file_bytes=100_000, chunk_size=8192)
    assert info.value.status == 413
    assert "larger than the limit of 100000 bytes" in info.value.reason
    assert reader.total < 200_000
    assert list(spool.iterdir()) == []


def test_file_exactly_at_the_limit(spool: Path) -> None:
    form = parse(body(*standard_parts(b"b" * 1000)), spool, max_file_bytes=1000)
    assert form.file is not None and form.file.size == 1000
    form.discard()


def test_invalid_utf8_field(spool: Path) -> None:
    raw = body(field("summary", b"\xff\xfe"), *standard_parts())
    refused(raw, spool, "'summary' is not valid UTF-8")


def test_nul_in_field(spool: Path) -> None:
    refused(body(field("summary", "a\x00b"), *standard_parts()), spool, "'summary' contains a NUL")


@pytest.mark.parametrize(
    "headers",
    [
        b'Content-Disposition: form-data; name="a"\nX-Injected: 1',
        b'Content-Disposition: form-data; name="a"\rX-Injected: 1',
        b'Content-Disposition: form-data; name="a\x00b"',
        b'Content-Disposition: form-data; name="a"; filename="x\x1b.whl"',
        b"Content-Disposition: form-data; name=\"a\"; filename*=UTF-8''x%0D%0AEvil.whl",
        b"Content-Disposition: form-data; name=\"a\"; filename*=UTF-8''x%09.whl",
    ],
)
def test_control_characters_in_headers(spool: Path, headers: bytes) -> None:
    raw = body(headers + b"\r\n\r\nvalue", *standard_parts())
    refused(raw, spool, "control character in form part headers")


def test_folded_header(spool: Path) -> None:
    raw = body(b'Content-Disposition: form-data;\r\n name="a"\r\n\r\nv', *standard_parts())
    refused(raw, spool, "folded header line")


@pytest.mark.parametrize(
    "headers, reason",
    [
        (b"X-Other: 1", "without Content-Disposition"),
        (b"", "without Content-Disposition"),
        (b"Not a header line", "malformed form part header"),
        (b"Bad Name: x", "malformed form part header"),
        (b"Content-Disposition: attachment; name=\"a\"", "is not form-data"),
        (b"Content-Disposition: form-data", "without a field name"),
        (b'Content-Disposition: form-data; name=""', "without a field name"),
        (b'Content-Disposition: form-data; name="a"; name="content"', "duplicate 'name'"),
        (CD_A + b'\r\nContent-Disposition: form-data; name="b"', "two Content-Disposition"),
        (CD_A + b"\r\nContent-Transfer-Encoding: base64", "Content-Transfer-Encoding"),
        (b"Content-Disposition: form-data; name=\"a\"; filename*=koi8-r''x", "malformed filename*"),
        (CD_A + b"; filename*=UTF-8''%ff", "malformed filename*"),
        (b'Content-Disposition: form-data; name="\xff"', "not valid UTF-8"),
        (b"Content-Disposition: form-data; name=a b", "malformed Content-Disposition"),
    ],
)
def test_malformed_part_headers(spool: Path, headers: bytes, reason: str) -> None:
    raw = body(headers + b"\r\n\r\nvalue", *standard_parts())
    refused(raw, spool, reason)


def test_part_headers_are_bounded(spool: Path) -> None:
    headers = b'Content-Disposition: form-data; name="a"\r\n' + b"X-Pad: " + b"p" * 20_000
    refused(body(headers + b"\r\n\r\nv", *standard_parts()), spool, "headers are too large")


def test_random_garbage_never_crashes(spool: Path) -> None:
    rng = random.Random(3)
    good = body(*standard_parts(b"data"))
    for _ in range(300):
        raw = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(raw))
            raw[at : at + rng.randrange(1, 4)] = rng.randbytes(rng.randrange(0, 4))
        try:
            form = parse(bytes(raw), spool, chunk_size=rng.choice([1, 3, 64]))
        except UploadError as e:
            assert e.status == 400
            assert list(spool.iterdir()) == []
        else:
            form.discard()
    assert list(spool.iterdir()) == []
