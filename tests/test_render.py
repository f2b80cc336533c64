"""Page rendering: rendered pages are parsed back (html.parser, json) and checked."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from pypicache.model import FileRecord
from pypicache.web.negotiation import HTML, HTML_V1, JSON
from pypicache.web.render import etag_for, render_index, render_project, versions_of

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_M = "c" * 64
BASE = "../../files/tinyproj/"


class PageParser(HTMLParser):
    """Collects what a Simple API client looks at in an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype: str | None = None
        self.meta: list[dict[str, str | None]] = []
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.title = ""
        self.h1 = ""
        self.br = 0
        self._in: str | None = None
        self._attrs: dict[str, str | None] = {}
        self._text: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        if tag == "meta":
            self.meta.append(dict(attrs))
        elif tag == "br":
            self.br += 1
        elif tag in ("a", "title", "h1"):
            self._in, self._attrs, self._text = tag, dict(attrs), []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_data(self, data):
        if self._in:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag != self._in:
            return
        text = "".join(self._text)
        if tag == "a":
            self.anchors.append((self._attrs, text))
        elif tag == "title":
            self.title = text
        else:
            self.h1 = text
        self._in = None


def parse_html(body: bytes) -> PageParser:
    parser = PageParser()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return parser


def wheel(version: str, **kwargs) -> FileRecord:
    defaults = dict(hashes={"sha256": SHA_A}, size=100)
    defaults.update(kwargs)
    return FileRecord(filename=f"tinyproj-{version}-py3-none-any.whl", **defaults)


def sdist(version: str, **kwargs) -> FileRecord:
    defaults = dict(hashes={"sha256": SHA_B}, size=200)
    defaults.update(kwargs)
    return FileRecord(filename=f"tinyproj-{version}.tar.gz", **defaults)


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ----------------------------------------------------------------- HTML


@pytest.mark.parametrize("fmt", [HTML, HTML_V1])
def test_html_page_skeleton(fmt):
    body = render_project(fmt, "tinyproj", [wheel("1.0"), sdist("1.0")], BASE)
    assert body.startswith(b"<!DOCTYPE html>")
    page = parse_html(body)
    assert page.doctype is not None and page.doctype.lower() == "doctype html"
    assert {"name": "pypi:repository-version", "content": "1.1"} in page.meta
    assert page.title == "Links for tinyproj"
    assert page.h1 == "Links for tinyproj"
    assert [text for _, text in page.anchors] == [
        "tinyproj-1.0-py3-none-any.whl",
        "tinyproj-1.0.tar.gz",
    ]
    assert page.br == 2
    assert b"<br/>" in body


def test_both_html_formats_render_alike():
    files = [wheel("1.0", core_metadata={"sha256": SHA_M}), sdist("1.0", yanked=True)]
    assert render_project(HTML, "tinyproj", files, BASE) == render_project(
        HTML_V1, "tinyproj", files, BASE
    )


def test_html_href_carries_quoted_filename_and_sha256():
    files = [
        wheel("1.0"),
        FileRecord(filename="tinyproj-1.0+cpu.tar.gz", hashes={"sha256": SHA_B}),
        FileRecord(filename="tinyproj-0.1.tar.gz", hashes={"md5": "0" * 32}),
        FileRecord(filename="tinyproj-0.2.tar.gz", hashes={"sha256": "NOT-HEX"}),
    ]
    page = parse_html(render_project(HTML, "tinyproj", files, BASE))
    hrefs = [attrs["href"] for attrs, _ in page.anchors]
    assert hrefs == [
        f"{BASE}tinyproj-1.0-py3-none-any.whl#sha256={SHA_A}",
        f"{BASE}tinyproj-1.0%2Bcpu.tar.gz#sha256={SHA_B}",
        f"{BASE}tinyproj-0.1.tar.gz",
        f"{BASE}tinyproj-0.2.tar.gz",
    ]
    assert page.anchors[1][1] == "tinyproj-1.0+cpu.tar.gz"


def test_html_filename_with_slash_cannot_escape_its_directory():
    files = [FileRecord(filename="../evil.tar.gz")]
    page = parse_html(render_project(HTML, "tinyproj", files, BASE))
    assert page.anchors[0][0]["href"] == BASE + "..%2Fevil.tar.gz"


def test_html_requires_python_is_escaped():
    files = [wheel("1.0", requires_python=">=3.8,<4"), sdist("1.0")]
    body = render_project(HTML, "tinyproj", files, BASE)
    assert b'data-requires-python="&gt;=3.8,&lt;4"' in body
    page = parse_html(body)
    assert page.anchors[0][0]["data-requires-python"] == ">=3.8,<4"
    assert "data-requires-python" not in page.anchors[1][0]


def test_html_yanked():
    files = [
        wheel("1.0"),
        wheel("1.1", yanked=True),
        wheel("1.2", yanked=True, yanked_reason="broken build"),
        wheel("1.3", yanked=False, yanked_reason="ignored when not yanked"),
    ]
    page = parse_html(render_project(HTML, "tinyproj", files, BASE))
    yanked = [attrs.get("data-yanked", "ABSENT") for attrs, _ in page.anchors]
    assert yanked == ["ABSENT", "", "broken build", "ABSENT"]


def test_html_core_metadata():
    files = [
        wheel("1.0", core_metadata={"sha256": SHA_M}),
        wheel("1.1", core_metadata={}),
        wheel("1.2"),
    ]
    page = parse_html(render_project(HTML, "tinyproj", files, BASE))
    (a0, _), (a1, _), (a2, _) = page.anchors
    assert a0["data-core-metadata"] == a0["data-dist-info-metadata"] == f"sha256={SHA_M}"
    assert a1["data-core-metadata"] == a1["data-dist-info-metadata"] == "true"
    assert "data-core-metadata" not in a2 and "data-dist-info-metadata" not in a2


def test_html_escapes_markup_everywhere():
    evil_name = 'x"><script>alert(1)</script>'
    evil_file = 'tinyproj-1.0"><img src=x onerror=alert(1)>.tar.gz'
    evil_reason = '"><script>alert("yank")</script>&'
    files = [
        FileRecord(
            filename=evil_file,
            hashes={"sha256": SHA_A},
            yanked=True,
            yanked_reason=evil_reason,
            requires_python='"><b>',
        )
    ]
    body = render_project(HTML, evil_name, files, 'base"<>/', meta={"tracks": ['"><i>']})
    text = body.decode()
    assert "<script>" not in text
    assert "<img" not in text
    assert "<b>" not in text and "<i>" not in text
    page = parse_html(body)
    assert page.title == "Links for " + evil_name
    assert page.h1 == "Links for " + evil_name
    (attrs, anchor_text), = page.anchors
    assert anchor_text == evil_file
    assert attrs["data-yanked"] == evil_reason
    assert attrs["data-requires-python"] == '"><b>'
    assert attrs["href"].startswith('base"<>/tinyproj-1.0%22%3E%3Cimg')
    assert {"name": "pypi:tracks", "content": '"><i>'} in page.meta


def test_html_tracks_meta():
    meta = {"tracks": ["https://pypi.org/simple/tinyproj/", "https://a.example/?x=1&y=2"],
            "other": "ignored"}
    body = render_project(HTML, "tinyproj", [wheel("1.0")], BASE, meta=meta)
    page = parse_html(body)
    tracks = [m["content"] for m in page.meta if m.get("name") == "pypi:tracks"]
    assert tracks == meta["tracks"]
    assert b"ignored" not in body
    # A single string counts as one value.
    page = parse_html(render_project(HTML, "t", [], BASE, meta={"tracks": "https://x/"}))
    assert [m["content"] for m in page.meta if m.get("name") == "pypi:tracks"] == ["https://x/"]


def test_html_empty_project():
    page = parse_html(render_project(HTML, "tinyproj", [], BASE))
    assert page.anchors == [] and page.title == "Links for tinyproj"


# ----------------------------------------------------------------- JSON


def test_json_page_exact():
    files = [
        wheel(
            "1.0",
            requires_python=">=3.8",
            core_metadata={"sha256": SHA_M},
            upload_time="2024-01-02T03:04:05.000000Z",
        ),
        sdist("1.0", yanked=True),
        FileRecord(
            filename="tinyproj-1.1+cpu.tar.gz",
            hashes={},
            yanked=True,
            yanked_reason="bad",
            core_metadata={},
            size=5,
        ),
        FileRecord(
            filename="tinyproj-2.0.zip",
            hashes={"sha256": SHA_A, "md5": "0" * 32, "blake2b_256": "1" * 64},
            size=0,
        ),
    ]
    body = render_project(JSON, "tinyproj", files, BASE)
    expected = {
        "meta": {"api-version": "1.1"},
        "name": "tinyproj",
        "files": [
            {
                "filename": "tinyproj-1.0-py3-none-any.whl",
                "url": BASE + "tinyproj-1.0-py3-none-any.whl",
                "hashes": {"sha256": SHA_A},
                "requires-python": ">=3.8",
                "yanked": False,
                "core-metadata": {"sha256": SHA_M},
                "size": 100,
                "upload-time": "2024-01-02T03:04:05.000000Z",
            },
            {
                "filename": "tinyproj-1.0.tar.gz",
                "url": BASE + "tinyproj-1.0.tar.gz",
                "hashes": {"sha256": SHA_B},
                "yanked": True,
                "size": 200,
            },
            {
                "filename": "tinyproj-1.1+cpu.tar.gz",
                "url": BASE + "tinyproj-1.1%2Bcpu.tar.gz",
                "hashes": {},
                "yanked": "bad",
                "core-metadata": True,
                "size": 5,
            },
            {
                "filename": "tinyproj-2.0.zip",
                "url": BASE + "tinyproj-2.0.zip",
                "hashes": {"sha256": SHA_A, "md5": "0" * 32, "blake2b_256": "1" * 64},
                "yanked": False,
                "size": 0,
            },
        ],
        "versions": ["1.0", "1.1+cpu", "2.0"],
    }
    assert json.loads(body) == expected
    # Compact, key order as above, byte for byte what json.dumps would give.
    assert body == dumps(expected)


def test_json_never_has_dist_info_metadata_or_fragments():
    files = [wheel("1.0", core_metadata={"sha256": SHA_M})]
    body = render_project(JSON, "tinyproj", files, BASE)
    assert b"dist-info-metadata" not in body
    assert b"#sha256" not in body


def test_json_missing_size_downgrades_to_1_0():
    files = [wheel("1.0"), sdist("1.0", size=None, upload_time="2024-01-01T00:00:00Z")]
    page = json.loads(render_project(JSON, "tinyproj", files, BASE, versions=["1.0"]))
    assert page["meta"] == {"api-version": "1.0"}
    assert "versions" not in page
    assert all("size" not in f for f in page["files"])
    assert page["files"][1]["upload-time"] == "2024-01-01T00:00:00Z"


def test_json_meta_extras_and_api_version_not_overridable():
    meta = {"tracks": ["https://pypi.org/simple/tinyproj/"], "api-version": "9.9", "_x": 1}
    page = json.loads(render_project(JSON, "tinyproj", [wheel("1.0")], BASE, meta=meta))
    assert page["meta"] == {
        "api-version": "1.2",  # PEP 708 tracks need 1.2
        "tracks": ["https://pypi.org/simple/tinyproj/"],
        "_x": 1,
    }


def test_json_given_versions_are_passed_through():
    page = json.loads(
        render_project(JSON, "tinyproj", [wheel("1.0")], BASE, versions=("0.9", "1.0"))
    )
    assert page["versions"] == ["0.9", "1.0"]


def test_json_computed_versions_are_unique_and_sorted():
    files = [
        wheel("1.10"),
        sdist("1.10"),
        wheel("1.9"),
        sdist("2.0rc1"),
        sdist("2.0"),
        FileRecord(filename="tinyproj-1.9-1-py3-none-any.whl", size=1),  # build tag
        FileRecord(filename="tinyproj-0.5.zip", size=1),
        FileRecord(filename="tinyproj-0.1-py2.7.egg", size=1),  # egg: skipped
        FileRecord(filename="tinyproj-notaversion.tar.gz", size=1),
        FileRecord(filename="tinyproj-1.0.win32.exe", size=1),
        FileRecord(filename="garbage.whl", size=1),
        FileRecord(filename="tinyproj-01.02.tar.gz", size=1),  # normalised to 1.2
    ]
    page = json.loads(render_project(JSON, "tinyproj", files, BASE))
    assert page["versions"] == ["0.5", "1.2", "1.9", "1.10", "2.0rc1", "2.0"]


def test_json_escapes_and_keeps_unicode():
    reason = 'naïve "quote" \\ back\nline <script>\x01'
    files = [
        FileRecord(
            filename='tinyproj-1.0"\\ü.tar.gz',
            hashes={"sha256": SHA_A},
            yanked=True,
            yanked_reason=reason,
            requires_python='">=3"',
            upload_time="ü",
            size=1,
        )
    ]
    body = render_project(JSON, 'tiny"proj', files, 'base"\\/')
    assert "naïve".encode() in body  # ensure_ascii=False
    page = json.loads(body)
    f = page["files"][0]
    assert page["name"] == 'tiny"proj'
    assert f["filename"] == 'tinyproj-1.0"\\ü.tar.gz'
    assert f["url"] == 'base"\\/tinyproj-1.0%22%5C%C3%BC.tar.gz'
    assert f["yanked"] == reason
    assert f["requires-python"] == '">=3"'
    assert f["upload-time"] == "ü"


def test_json_empty_project():
    body = render_project(JSON, "tinyproj", [], BASE)
    assert json.loads(body) == {
        "meta": {"api-version": "1.1"},
        "name": "tinyproj",
        "files": [],
        "versions": [],
    }


def test_same_filename_under_different_bases():
    # Per-filename memoisation must not leak one page's base into another's.
    files = [wheel("1.0")]
    one = json.loads(render_project(JSON, "tinyproj", files, "../a/"))
    two = json.loads(render_project(JSON, "tinyproj", files, "../b/"))
    assert one["files"][0]["url"] == "../a/tinyproj-1.0-py3-none-any.whl"
    assert two["files"][0]["url"] == "../b/tinyproj-1.0-py3-none-any.whl"
    html = parse_html(render_project(HTML, "tinyproj", files, "../c/"))
    assert html.anchors[0][0]["href"].startswith("../c/tinyproj-1.0-py3-none-any.whl#")


def test_large_page_renders_consistently():
    files = []
    for i in range(300):
        files.append(wheel(f"1.{i}", core_metadata={"sha256": SHA_M}, requires_python=">=3.8"))
        files.append(sdist(f"1.{i}", yanked=i % 7 == 0, upload_time="2024-01-01T00:00:00Z"))
    page = json.loads(render_project(JSON, "tinyproj", files, BASE))
    assert len(page["files"]) == 600
    assert page["versions"] == [f"1.{i}" for i in range(300)]
    html = parse_html(render_project(HTML, "tinyproj", files, BASE))
    assert len(html.anchors) == 600


# ---------------------------------------------------------------- index


@pytest.mark.parametrize("fmt", [HTML, HTML_V1])
def test_index_html(fmt):
    body = render_index(fmt, ["alpha", "beta-two", "c.d_e"], project_base="/simple/")
    page = parse_html(body)
    assert body.startswith(b"<!DOCTYPE html>")
    assert {"name": "pypi:repository-version", "content": "1.1"} in page.meta
    assert [(a["href"], text) for a, text in page.anchors] == [
        ("/simple/alpha/", "alpha"),
        ("/simple/beta-two/", "beta-two"),
        ("/simple/c.d_e/", "c.d_e"),
    ]


def test_index_json():
    body = render_index(JSON, ["alpha", "beta-two"])
    assert body == dumps(
        {"meta": {"api-version": "1.1"}, "projects": [{"name": "alpha"}, {"name": "beta-two"}]}
    )


def test_index_empty():
    assert json.loads(render_index(JSON, [])) == {"meta": {"api-version": "1.1"}, "projects": []}
    assert parse_html(render_index(HTML, [])).anchors == []


def test_index_escapes_odd_names():
    names = ["plain", '<b>"x"</b>', "ü"]
    page = parse_html(render_index(HTML, names))
    assert "<b>" not in render_index(HTML, names).decode()
    assert [text for _, text in page.anchors] == names
    assert page.anchors[1][0]["href"] == "%3Cb%3E%22x%22%3C%2Fb%3E/"
    assert json.loads(render_index(JSON, names))["projects"] == [{"name": n} for n in names]


def test_index_accepts_any_sequence():
    assert json.loads(render_index(JSON, ("a", "b")))["projects"] == [{"name": "a"}, {"name": "b"}]


# ----------------------------------------------------------------- misc


def test_etag():
    tag = etag_for(b"hello")
    assert re.fullmatch(r'"[0-9a-f]{32}"', tag)
    assert etag_for(b"hello") == tag
    assert etag_for(b"hello!") != tag
    assert etag_for(b"") != tag


def test_versions_of():
    assert versions_of([]) == []
    assert versions_of(["p-1.0.tar.gz", "p-1.0.0.tar.gz", "p-v1.0.zip"]) == ["1.0", "1.0.0"]
    # Like packaging: an sdist's version is what follows the last dash.
    assert versions_of(["p-1.0-1.tar.gz"]) == ["1"]
    assert versions_of(["p-1.0a1-py3-none-any.whl", "p-1.0.dev0-py3-none-any.whl"]) == [
        "1.0.dev0",
        "1.0a1",
    ]


@pytest.mark.parametrize(
    "filename",
    [
        "tinyproj-1.0-py3-none-any.whl",
        "tiny_proj-2.0.post1-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "Tiny.Proj-1!2.0rc1+local.7-py2.py3-none-any.whl",
        "tinyproj-1.0.tar.gz",
        "tiny-proj-2024.1.1.zip",
        "tinyproj-1.0.dev3.tar.gz",
    ],
)
def test_versions_agree_with_packaging(filename):
    from packaging.utils import parse_sdist_filename, parse_wheel_filename

    if filename.endswith(".whl"):
        expected = parse_wheel_filename(filename)[1]
    else:
        expected = parse_sdist_filename(filename)[1]
    assert versions_of([filename]) == [str(expected)]
