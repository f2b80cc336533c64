"""pypicache.metadata: the one core-metadata reader (uploads and the JSON API).

It reads with ``packaging.metadata.parse_email``; the tests here pin what it
promises on top: where packaging's full validation (``Metadata.from_email``)
would refuse a file that real distributions carry, we still accept it, and
the two users (uploads, the JSON API) get one reading.
"""

from __future__ import annotations

import pytest
from packaging.metadata import InvalidMetadata, Metadata

from pypicache.metadata import (
    MetadataError,
    json_info,
    read_core_metadata,
    read_core_metadata_leniently,
    read_for_json,
)
from pypicache.uploads import UploadError, parse_core_metadata

#: Files packaging's validation refuses and pypicache accepts, for
#: compatibility with what is on PyPI and what older tools write.
ACCEPTED_FOR_COMPATIBILITY = {
    "no Metadata-Version (what the test suite's and old tools' files look like)":
        b"Name: pkg\nVersion: 1.0\n",
    "a field newer than the declared version (Description-Content-Type in 1.1)":
        b"Metadata-Version: 1.1\nName: pkg\nVersion: 1.0\nDescription-Content-Type: text/markdown\n",
    "an unknown field":
        b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nX-Custom: anything\n",
    "the description both as header and as body (the body wins)":
        b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nDescription: short\n\nThe long body.\n",
    "a Project-URL label given twice (the first wins)":
        b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nProject-URL: Home, https://a.invalid/\n"
        b"Project-URL: Home, https://b.invalid/\n",
    "a metadata version packaging does not know yet":
        b"Metadata-Version: 9.9\nName: pkg\nVersion: 1.0\n",
    "a license expression that is not SPDX":
        b"Metadata-Version: 2.4\nName: pkg\nVersion: 1.0\nLicense-Expression: Proprietary stuff\n",
}


@pytest.mark.parametrize("raw", ACCEPTED_FOR_COMPATIBILITY.values(), ids=ACCEPTED_FOR_COMPATIBILITY.keys())
def test_accepted_where_packaging_validation_refuses(raw: bytes) -> None:
    with pytest.raises((InvalidMetadata, ExceptionGroup)):
        Metadata.from_email(raw, validate=True)
    meta = read_core_metadata(raw)
    assert (meta["name"], meta["version"]) == ("pkg", "1.0")


def test_compatibility_readings() -> None:
    cases = ACCEPTED_FOR_COMPATIBILITY
    assert read_core_metadata(cases["the description both as header and as body (the body wins)"])[
        "description"] == "The long body.\n"
    no_label = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nProject-URL: https://example.invalid/\n"
    assert read_core_metadata(no_label)["project_urls"] == {}  # packaging: {"https://example.invalid/": ""}
    assert read_core_metadata(cases["a Project-URL label given twice (the first wins)"])[
        "project_urls"] == {"Home": "https://a.invalid/"}


def test_non_utf8_is_refused_for_uploads_but_read_for_the_json_api() -> None:
    raw = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nSummary: caf\xe9\n"
    with pytest.raises(MetadataError, match="not valid UTF-8"):
        read_core_metadata(raw)
    assert read_for_json(raw, max_bytes=1 << 20)["summary"] == "caf\ufffd"


def test_keywords_stay_as_written() -> None:
    """packaging splits Keywords at commas; PyPI's JSON shows the string."""
    for written in ("a,b c", "a, b", "one"):
        raw = f"Name: pkg\nVersion: 1.0\nKeywords: {written}\n".encode()
        assert read_core_metadata(raw)["keywords"] == written
        assert read_for_json(raw, max_bytes=1 << 20)["keywords"] == written


def test_body_versus_header_description() -> None:
    base = b"Name: pkg\nVersion: 1.0\n"
    assert read_core_metadata(base + b"\nbody without a final newline")["description"] == \
        "body without a final newline"
    # A blank body leaves the header's description.
    assert read_core_metadata(base + b"Description: header\n\n   \n")["description"] == "header"
    with pytest.raises(MetadataError, match="'Description' appears more than once"):
        read_core_metadata(base + b"Description: one\nDescription: two\n")
    # Two headers and a body: still a repeated field.
    with pytest.raises(MetadataError, match="'Description' appears more than once"):
        read_core_metadata(base + b"Description: one\nDescription: two\n\nbody\n")
    lenient = read_core_metadata_leniently(base + b"Description: one\nDescription: two\n")
    assert lenient["description"] == "one"


def test_fields_named_in_the_specs_spelling() -> None:
    """Refusals name a field as the spec spells it, whatever case the file used."""
    with pytest.raises(MetadataError, match="'Author-email' contains control characters"):
        read_core_metadata(b"Name: pkg\nVersion: 1.0\nAUTHOR-EMAIL: a\x07b\n")
    with pytest.raises(MetadataError, match="'X-Odd' contains control characters"):
        read_core_metadata(b"Name: pkg\nVersion: 1.0\nx-odd: a\x1bb\n")


def test_unparseable_message_is_a_clean_refusal() -> None:
    raw = b"Name: pkg\nVersion: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n"
    with pytest.raises(MetadataError, match="could not be parsed"):
        read_core_metadata(raw)
    info = read_for_json(raw, max_bytes=1 << 20)  # the JSON API shows what it can
    assert info["name"] == "pkg" and info["description"] is None


def test_uploads_and_json_api_share_the_reading() -> None:
    """The upload path's view is the same reader with UploadError(400), and
    the JSON API's info is json_info of that very dict."""
    raw = (b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nHome-page: https://h.invalid/\n"
           b"Platform: linux\nPlatform: win32\nClassifier: A :: B\n\nBody\n")
    meta = read_core_metadata(raw)
    assert parse_core_metadata(raw) == meta
    assert read_for_json(raw, max_bytes=1 << 20) == json_info(meta)
    info = json_info(meta)
    assert info["platform"] == "linux, win32" and info["project_urls"] == {"Homepage": "https://h.invalid/"}
    assert info["requires_dist"] is None and info["classifiers"] == ["A :: B"]
    with pytest.raises(UploadError) as caught:
        parse_core_metadata(b"Version: 1.0\n")
    assert (caught.value.status, caught.value.reason) == (400, "METADATA has no Name")
