"""Parsing Simple API pages: PEP 503 HTML and PEP 691 JSON, friendly and hostile."""

from __future__ import annotations

import json

import pytest

from pypicache.providers.upstream.parse import (
    page_format,
    parse_index,
    parse_index_html,
    parse_index_json,
    parse_project,
    parse_project_html,
    parse_project_json,
)

PAGE = "https://index.example/simple/demo/"
SHA = "a" * 64
SHA_B = "b" * 64


def _json(files=(), version="1.0", **extra) -> bytes:
    data = {"meta": {"api-version": version}, "name": "demo", "files": list(files)}
    data.update(extra)
    return json.dumps(data).encode()


def _html(body: str, head: str = "") -> bytes:
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>".encode()


# ---------------------------------------------------------------------- JSON


def test_json_v1_0_full_entry():
    page = parse_project_json(_json([{
        "filename": "demo-1.0-py3-none-any.whl",
        "url": "https://files.example/demo-1.0-py3-none-any.whl",
        "hashes": {"sha256": SHA.upper(), "md5": "0" * 32},
        "requires-python": ">=3.8",
        "core-metadata": {"sha256": SHA_B},
        "size": 123,
        "upload-time": "2024-01-02T03:04:05.000000Z",
    }]), PAGE)
    assert page.name == "demo"
    (f,) = page.files
    assert f.filename == "demo-1.0-py3-none-any.whl"
    assert f.url == "https://files.example/demo-1.0-py3-none-any.whl"
    assert f.hashes == {"sha256": SHA, "md5": "0" * 32}
    assert f.sha256 == SHA
    assert f.requires_python == ">=3.8"
    assert f.core_metadata == {"sha256": SHA_B}
    assert f.metadata_sha256 == SHA_B
    assert f.size == 123
    assert f.upload_time == "2024-01-02T03:04:05.000000Z"
    assert not f.yanked and f.yanked_reason is None
    assert page.versions is None
    assert page.meta == {}


def test_json_v1_1_versions_and_meta_kept():
    page = parse_project_json(_json([], version="1.1", versions=["1.0", "2.0", 3]), PAGE)
    assert page.versions == ("1.0", "2.0")
    page = parse_project_json(
        json.dumps({"meta": {"api-version": "1.2", "tracks": ["https://pypi.org/simple/demo/"],
                             "_x": 1},
                    "name": "Demo", "files": []}).encode(), PAGE)
    assert page.meta == {"tracks": ["https://pypi.org/simple/demo/"], "_x": 1}
    assert page.versions is None


def test_json_name_from_page_or_caller():
    assert parse_project_json(_json(), PAGE).name == "demo"
    data = json.dumps({"meta": {"api-version": "1.0"}, "name": "Foo_Bar.baz", "files": []}).encode()
    assert parse_project_json(data, PAGE).name == "foo-bar-baz"
    assert parse_project_json(data, PAGE, name="other").name == "other"
    no_name = json.dumps({"meta": {"api-version": "1.0"}, "files": []}).encode()
    assert parse_project_json(no_name, PAGE).name == "demo"  # from the URL


@pytest.mark.parametrize("value, yanked, reason", [
    (True, True, None),
    (False, False, None),
    ("broken build", True, "broken build"),
    ("", False, None),
    (1, False, None),
])
def test_json_yanked(value, yanked, reason):
    (f,) = parse_project_json(_json([{"filename": "demo-1.0.tar.gz", "url": "demo-1.0.tar.gz",
                                       "hashes": {}, "yanked": value}]), PAGE).files
    assert (f.yanked, f.yanked_reason) == (yanked, reason)


@pytest.mark.parametrize("entry, expected", [
    ({"core-metadata": True}, {}),
    ({"core-metadata": False}, None),
    ({}, None),
    ({"core-metadata": {"sha256": SHA}}, {"sha256": SHA}),
    ({"core-metadata": {"sha256": "short"}}, {}),
    ({"dist-info-metadata": True}, {}),
    ({"dist-info-metadata": {"sha256": SHA}}, {"sha256": SHA}),
    ({"core-metadata": False, "dist-info-metadata": True}, None),
])
def test_json_core_metadata_variants(entry, expected):
    entry = {"filename": "demo-1.0-py3-none-any.whl", "url": "x.whl", "hashes": {}, **entry}
    (f,) = parse_project_json(_json([entry]), PAGE).files
    assert f.core_metadata == expected


def test_json_relative_urls_resolve_against_page():
    files = [
        {"filename": "a-1.tar.gz", "url": "a-1.tar.gz", "hashes": {}},
        {"filename": "b-1.tar.gz", "url": "../../files/b-1.tar.gz", "hashes": {}},
        {"filename": "c-1.tar.gz", "url": "/packages/c-1.tar.gz", "hashes": {}},
        {"filename": "d-1.tar.gz", "url": "//cdn.example/d-1.tar.gz", "hashes": {}},
    ]
    urls = [f.url for f in parse_project_json(_json(files), PAGE).files]
    assert urls == [
        "https://index.example/simple/demo/a-1.tar.gz",
        "https://index.example/files/b-1.tar.gz",
        "https://index.example/packages/c-1.tar.gz",
        "https://cdn.example/d-1.tar.gz",
    ]


def test_json_invalid_entries_skipped_not_fatal():
    files = [
        "not a dict",
        {"url": "x.tar.gz", "hashes": {}},                           # no filename
        {"filename": "", "url": "x.tar.gz"},
        {"filename": "../evil.tar.gz", "url": "x.tar.gz"},
        {"filename": "..", "url": "x.tar.gz"},
        {"filename": "a\\b.tar.gz", "url": "x.tar.gz"},
        {"filename": "bad\r\nX-Header: 1.tar.gz", "url": "x.tar.gz"},
        {"filename": "nul\x00.whl", "url": "x.whl"},
        {"filename": "js.tar.gz", "url": "javascript:alert(1)"},
        {"filename": "file.tar.gz", "url": "file:///etc/passwd"},
        {"filename": "ftp.tar.gz", "url": "ftp://host/x.tar.gz"},
        {"filename": "nourl.tar.gz"},
        {"filename": 5, "url": "x.tar.gz"},
        {"filename": "x" * 300 + ".tar.gz", "url": "x.tar.gz"},
        {"filename": "good-1.0.tar.gz", "url": "good-1.0.tar.gz", "hashes": {"sha256": SHA}},
        {"filename": "good-1.0.tar.gz", "url": "dup.tar.gz", "hashes": {}},  # duplicate: first wins
    ]
    page = parse_project_json(_json(files), PAGE)
    assert [f.filename for f in page.files] == ["good-1.0.tar.gz"]
    assert page.files[0].url == PAGE + "good-1.0.tar.gz"


def test_json_odd_field_types_dropped():
    (f,) = parse_project_json(_json([{
        "filename": "demo-1.0.tar.gz", "url": "demo-1.0.tar.gz",
        "hashes": {"sha256": "zz", "sha512": SHA, "blake2b_256": "AB12", 5: SHA},
        "requires-python": 3, "size": True, "upload-time": 7,
    }]), PAGE).files
    assert f.hashes == {"blake2b_256": "ab12"}  # wrong lengths and non-hex dropped
    assert f.requires_python is None and f.size is None and f.upload_time is None
    (f,) = parse_project_json(_json([{"filename": "d.tar.gz", "url": "d.tar.gz", "hashes": [],
                                       "size": -1}]), PAGE).files
    assert f.hashes == {} and f.size is None


@pytest.mark.parametrize("version", ["2.0", "0.9", "2", "one", "", None, 1.0])
def test_json_bad_api_version(version):
    with pytest.raises(ValueError):
        parse_project_json(_json([], version=version), PAGE)


@pytest.mark.parametrize("body", [
    b"",
    b"{",
    b"[]",
    b'"string"',
    b"\xff\xfe\x00",
    b'{"files": []}',
    b'{"meta": "x", "files": []}',
    b'{"meta": {"api-version": "1.0"}}',
    b'{"meta": {"api-version": "1.0"}, "files": {}}',
    b"[" * 100000 + b"]" * 100000,
])
def test_json_malformed_is_value_error(body):
    with pytest.raises(ValueError):
        parse_project_json(body, PAGE)


def test_json_non_bytes_is_value_error():
    with pytest.raises(ValueError):
        parse_project_json(None, PAGE)  # type: ignore[arg-type]


def test_json_minor_versions_accepted():
    """Any 1.x page is read (later minor versions only add keys); the api-version itself is not kept."""
    entry = {"filename": "demo-1.0-py3-none-any.whl", "url": "https://files.example/demo-1.0-py3-none-any.whl",
             "hashes": {"sha256": SHA}}
    for version in ("1.0", "1.1", "1.4", "1.99", "1"):
        page = parse_project_json(_json([entry], version=version, versions=["1.0"]), PAGE)
        assert page.name == "demo", version
        assert [f.filename for f in page.files] == ["demo-1.0-py3-none-any.whl"], version
        assert page.files[0].sha256 == SHA, version
        assert page.versions == ("1.0",), version
        assert "api-version" not in page.meta, version


# ---------------------------------------------------------------------- HTML


def test_html_anchor_with_everything():
    body = _html(
        f'<a href="https://files.example/demo-1.0-py3-none-any.whl#sha256={SHA}" '
        'data-requires-python="&gt;=3.8,&lt;4" '
        f'data-core-metadata="sha256={SHA_B}" data-dist-info-metadata="sha256={SHA_B}">'
        " demo-1.0-py3-none-any.whl </a><br/>",
        head='<meta name="pypi:repository-version" content="1.1">')
    page = parse_project_html(body, PAGE)
    assert page.name == "demo"
    (f,) = page.files
    assert f.filename == "demo-1.0-py3-none-any.whl"
    assert f.url == "https://files.example/demo-1.0-py3-none-any.whl"
    assert f.hashes == {"sha256": SHA}
    assert f.requires_python == ">=3.8,<4"
    assert f.core_metadata == {"sha256": SHA_B}
    assert not f.yanked
    assert page.versions is None


@pytest.mark.parametrize("attr, yanked, reason", [
    ("data-yanked", True, None),
    ('data-yanked=""', True, None),
    ('data-yanked="bad &amp; broken"', True, "bad & broken"),
    ("", False, None),
])
def test_html_yanked(attr, yanked, reason):
    (f,) = parse_project_html(_html(f'<a href="demo-1.0.tar.gz" {attr}>demo-1.0.tar.gz</a>'),
                              PAGE).files
    assert (f.yanked, f.yanked_reason) == (yanked, reason)


@pytest.mark.parametrize("attrs, expected", [
    ('data-core-metadata="true"', {}),
    (f'data-core-metadata="sha256={SHA}"', {"sha256": SHA}),
    (f'data-dist-info-metadata="sha256={SHA}"', {"sha256": SHA}),
    ('data-dist-info-metadata="true"', {}),
    ('data-core-metadata="sha256=nothex"', {}),
    ('data-core-metadata="false"', None),
    ("data-core-metadata", None),
    ("", None),
])
def test_html_core_metadata_variants(attrs, expected):
    (f,) = parse_project_html(_html(f'<a href="d-1-py3-none-any.whl" {attrs}>d-1-py3-none-any.whl</a>'),
                              PAGE).files
    assert f.core_metadata == expected


def test_html_relative_absolute_and_hash_fragments():
    body = _html(
        f'<a href="demo-1.tar.gz#sha256={SHA}">demo-1.tar.gz</a>'
        '<a href="../../packages/demo-2.tar.gz#md5=' + "c" * 32 + '">demo-2.tar.gz</a>'
        '<a href="http://other.example/demo-3.tar.gz#egg=demo">demo-3.tar.gz</a>'
        '<a href="/x/demo-4.tar.gz#sha256=short">demo-4.tar.gz</a>')
    files = parse_project_html(body, PAGE).files
    assert [(f.url, dict(f.hashes)) for f in files] == [
        ("https://index.example/simple/demo/demo-1.tar.gz", {"sha256": SHA}),
        ("https://index.example/packages/demo-2.tar.gz", {"md5": "c" * 32}),
        ("http://other.example/demo-3.tar.gz", {}),
        ("https://index.example/x/demo-4.tar.gz", {}),
    ]


def test_html_base_href_honoured():
    body = _html('<a href="demo-1.tar.gz">demo-1.tar.gz</a>',
                 head='<base href="https://mirror.example/pkgs/">')
    (f,) = parse_project_html(body, PAGE).files
    assert f.url == "https://mirror.example/pkgs/demo-1.tar.gz"
    # A relative base resolves against the page URL first.
    body = _html('<a href="demo-1.tar.gz">demo-1.tar.gz</a>', head='<base href="../../files/">')
    (f,) = parse_project_html(body, PAGE).files
    assert f.url == "https://index.example/files/demo-1.tar.gz"


def test_html_filename_from_url_when_text_empty():
    body = _html('<a href="/p/demo%2B1-1.0.tar.gz#sha256=' + SHA + '"> </a>')
    (f,) = parse_project_html(body, PAGE).files
    assert f.filename == "demo+1-1.0.tar.gz"


def test_html_hostile_entries_skipped():
    body = _html(
        '<a>no href</a>'
        '<a href="">empty.tar.gz</a>'
        '<a href="javascript:alert(1)">js.tar.gz</a>'
        '<a href="file:///etc/passwd">passwd</a>'
        '<a href="x.tar.gz">../../etc/passwd</a>'
        '<a href="x.tar.gz">a\\b.tar.gz</a>'
        '<a href="x.tar.gz">bad&#13;&#10;name.tar.gz</a>'
        '<a href="/dir/">  </a>'
        '<a href="ok-1.0.tar.gz">ok-1.0.tar.gz</a>')
    assert [f.filename for f in parse_project_html(body, PAGE).files] == ["ok-1.0.tar.gz"]


def test_html_unclosed_anchors_and_entities():
    body = b'<a href="a-1.tar.gz">a-1.tar.gz<a href="b-1.tar.gz">b&#45;1.tar.gz'
    assert [f.filename for f in parse_project_html(body, PAGE).files] == ["a-1.tar.gz", "b-1.tar.gz"]


def test_html_latin1_garbage_does_not_crash():
    body = b'<a href="a-1.tar.gz">a-1.tar.gz</a>\xff\xfe<a href="b\xe9.tar.gz">b\xe9.tar.gz</a>'
    names = [f.filename for f in parse_project_html(body, PAGE).files]
    assert names[0] == "a-1.tar.gz" and len(names) == 2


@pytest.mark.parametrize("version", ["2.0", "0.1", "x", ""])
def test_html_bad_repository_version(version):
    body = _html('<a href="a-1.tar.gz">a-1.tar.gz</a>',
                 head=f'<meta name="pypi:repository-version" content="{version}">')
    with pytest.raises(ValueError):
        parse_project_html(body, PAGE)


def test_html_non_bytes_is_value_error():
    with pytest.raises(ValueError):
        parse_project_html("text", PAGE)  # type: ignore[arg-type]


def test_html_empty_page_is_empty_project():
    page = parse_project_html(b"", PAGE, name="demo")
    assert page.files == () and page.name == "demo"


# ---------------------------------------------------------------------- index


def test_index_json():
    body = json.dumps({"meta": {"api-version": "1.0"}, "projects": [
        {"name": "Foo_Bar"}, {"name": "foo.bar"}, {"name": "-bad-"}, {"name": 3}, "x", {},
        {"name": "zope.interface"}]}).encode()
    assert parse_index_json(body) == ("foo-bar", "zope-interface")


@pytest.mark.parametrize("body", [b"{}", b'{"meta": {"api-version": "2.0"}, "projects": []}',
                                  b'{"meta": {"api-version": "1.0"}, "projects": {}}', b"nope"])
def test_index_json_malformed(body):
    with pytest.raises(ValueError):
        parse_index_json(body)


def test_index_html():
    body = _html('<a href="/simple/foo-bar/">Foo_Bar</a><a href="/simple/baz/"></a>'
                 '<a href="/simple/x/">!!bad!!</a><a href="/simple/foo-bar/">foo-bar</a>',
                 head='<meta name="pypi:repository-version" content="1.0">')
    assert parse_index_html(body) == ("foo-bar", "baz")


def test_index_html_bad_version():
    with pytest.raises(ValueError):
        parse_index_html(_html("", head='<meta name="pypi:repository-version" content="3.0">'))


# ------------------------------------------------------------ by content type


@pytest.mark.parametrize("content_type, kind", [
    ("application/vnd.pypi.simple.v1+json", "json"),
    ("application/json; charset=utf-8", "json"),
    ("application/vnd.pypi.simple.v1+html", "html"),
    ("text/html; charset=UTF-8", "html"),
    ("TEXT/HTML", "html"),
    ("application/octet-stream", None),
    (None, None),
])
def test_page_format(content_type, kind):
    assert page_format(content_type) == kind


def test_parse_project_dispatch_and_fallback():
    j = _json([{"filename": "a-1.tar.gz", "url": "a-1.tar.gz", "hashes": {}}])
    h = _html('<a href="a-1.tar.gz">a-1.tar.gz</a>')
    for body, ctype in ((j, "application/vnd.pypi.simple.v1+json"), (h, "text/html"),
                        (j, None), (h, "text/plain"), (h, None)):
        page = parse_project(body, ctype, PAGE, name="demo")
        assert [f.filename for f in page.files] == ["a-1.tar.gz"]
    with pytest.raises(ValueError):
        parse_project(h, "application/json", PAGE)
    with pytest.raises(ValueError):
        parse_project(b"plain words", "text/plain", PAGE)
    assert parse_index(_html('<a href="x/">x</a>'), None) == ("x",)


# ------------------------------------------------------- resolving file URLs

_BASES = [
    "https://index.example/simple/demo/",
    "http://127.0.0.1:8080/simple/demo/",
    "https://index.example/a/b?q=1#frag",
    "https://index.example",
]
_HREFS = [
    "x.whl", "../x.whl", "../../files/x.whl", "/x.whl", "./x.whl", "x/./y.whl", "x/../y.whl",
    "x/..", "x/.", "x/", "", "#", "//h2/x.whl", "//h2", "///x.whl", "//", "https://h3/p/x.whl",
    "https://h3", "http:x/y.whl", "https:x.whl", "a:b/c.whl", "../files/a:b.whl", "ftp://h/x.whl",
    "a b/c d.whl", " ../x.whl ", "x.whl#sha256=ab", "x.whl#", "x.whl#a#b", "x.whl?q#f", "x;p.whl",
    "d/x;p", "%2e%2e/x.whl", "..%2Fx.whl", "x\\y.whl", "x/\x01.whl", "https://u:p@h/x/y.whl",
    "https://h:99999/x/y.whl", "https://[::1]/x/y.whl", "https://h/x/\u00e9.whl",
]


@pytest.mark.parametrize("base", _BASES)
def test_resolver_matches_urljoin_for_every_shape(base):
    """The per-page resolver (directory resolved once, file name appended)
    must give exactly what resolving each whole href gives, odd hrefs too."""
    from pypicache.providers.upstream.parse import _absolute_url, _Resolver

    resolve = _Resolver(base)
    for href in _HREFS + ["sub/" + h for h in _HREFS]:
        for attempt in range(2):  # second time from the directory memo
            try:
                expected = _absolute_url(base, href)
            except ValueError:
                expected = "ValueError"
            try:
                got = resolve(href)
            except ValueError:
                got = "ValueError"
            assert got == expected, (base, href, attempt)


def test_json_page_files_in_many_directories_resolve_each_own_url():
    files = [{"filename": f"demo-1.{i}.tar.gz", "url": f"../../d{i % 3}/demo-1.{i}.tar.gz",
              "hashes": {"sha256": SHA}} for i in range(9)]
    page = parse_project_json(_json(files), PAGE)
    assert [f.url for f in page.files] == [
        f"https://index.example/d{i % 3}/demo-1.{i}.tar.gz" for i in range(9)]


# ------------------------------------------ big JSON pages, decoded incrementally


_ENTRY = {"filename": "demo-1.0.tar.gz", "url": "../../files/demo-1.0.tar.gz", "hashes": {"sha256": SHA},
          "requires-python": ">=3.8", "yanked": False, "size": 10, "upload-time": "2024-01-01T00:00:00Z"}
_SAME_EITHER_WAY = [
    _json([_ENTRY], versions=["1.0"]),
    b' \n{ "files" : [ ] , "meta" : {"api-version" : "1.1"} , "name" : "demo" } \r\n',
    b'{"meta": {"api-version": "1.0"}, "files": [{"filename": "x-1.whl", "url": "x-1.whl"}],'
    b' "files": [{"filename": "y-1.whl", "url": "y-1.whl"}, 7, null, []]}',  # duplicate key: the last wins
    b'{"files": [{"filename": "d\\u00e9mo-1.0.zip", "url": "https://h.example/a b/d\\u00e9mo-1.0.zip",'
    b' "yanked": "bad \\"build\\""}], "meta": {"api-version": "1.1", "tracks": ["https://x/"]}}',
    '\ufeff'.encode() + _json([_ENTRY]),  # a UTF-8 BOM, as json.loads accepts
]
_BAD_EITHER_WAY = [
    _json([_ENTRY]) + b" extra",
    _json([_ENTRY])[:-10],
    b'{"meta": {"api-version": "1.0"}, "files": [{"filename": "x"} {"filename": "y"}]}',
    b'{"meta": {"api-version": "1.0"} "files": []}',
    b'{"meta": {"api-version": "1.0"}, 7: 1, "files": []}',
    b'{"meta": {"api-version": "1.0"}, "files": [',
    b'{"meta": {"api-version": "2.0"}, "files": []}',
    b'{"meta": {"api-version": "1.0"}, "files": {"a": 1}}',
    b'[{"meta": {"api-version": "1.0"}}]',
    b'{"meta": {"api-version": "1.0"}, "files": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    b"\xff\xfe{}",
]


@pytest.mark.parametrize("body", _SAME_EITHER_WAY)
def test_incremental_json_decoding_gives_what_json_loads_gives(body, monkeypatch):
    """Pages above INCREMENTAL_JSON_BYTES are decoded entry by entry, so that
    no single call holds the GIL (and stalls the reactor) for long: the result
    must be exactly that of the one-shot decoding."""
    from pypicache.providers.upstream import parse

    whole = parse_project_json(body, PAGE)
    monkeypatch.setattr(parse, "INCREMENTAL_JSON_BYTES", 0)
    assert parse_project_json(body, PAGE) == whole


@pytest.mark.parametrize("body", _BAD_EITHER_WAY)
def test_incremental_json_decoding_refuses_what_json_loads_refuses(body, monkeypatch):
    from pypicache.providers.upstream import parse

    with pytest.raises(ValueError):
        parse_project_json(body, PAGE)
    monkeypatch.setattr(parse, "INCREMENTAL_JSON_BYTES", 0)
    with pytest.raises(ValueError):
        parse_project_json(body, PAGE)


def test_a_big_json_page_is_decoded_one_entry_at_a_time(monkeypatch):
    """The decoder never sees the whole files list at once (json.loads of a
    20 MB page holds the GIL for most of a second)."""
    from pypicache.providers.upstream import parse

    entries = [dict(_ENTRY, filename=f"demo-{i}.tar.gz", url=f"demo-{i}.tar.gz") for i in range(5000)]
    body = _json(entries)
    assert len(body) > parse.INCREMENTAL_JSON_BYTES
    calls: list[int] = []
    decode = parse._DECODE
    monkeypatch.setattr(parse, "_DECODE", lambda text, pos: calls.append(pos) or decode(text, pos))
    monkeypatch.setattr(parse.json, "loads", None)  # would raise TypeError if called
    page = parse_project_json(body, PAGE)
    assert len(page.files) == 5000 and page.files[-1].filename == "demo-4999.tar.gz"
    assert len(calls) > 5000
    names = parse_index_json(json.dumps({"meta": {"api-version": "1.0"},
                                         "projects": [{"name": f"P_{i}"} for i in range(80_000)]}).encode())
    assert len(names) == 80_000 and names[0] == "p-0"
