"""Hostile input: traversal on every route, header splitting, markup, big bodies.

Requests go out on raw sockets (tests.test_faults.raw_request) because
treq and hyperlink would normalise or refuse the very URLs under test.
Every refusal must be a 4xx, and leave storage, spool and index as they
were; nothing hostile may be passed on to the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from argon2 import PasswordHasher

from pypicache.services.accounts import AccountStore
from tests.builders import build_wheel
from tests.faults import JSON, fault_config, start
from tests.rawhttp import RawResponse, raw_request

PASSWORD = "correct horse battery"
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8)
AUTH = {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
WHEEL = "tinyproj-1.0-py3-none-any.whl"

#: One path segment, every way of smuggling "../" (or a NUL) through it.
TRAVERSALS = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",  # double-encoded
    "..%255c..%255cetc",
    "..%5c..%5cetc%5cpasswd",  # backslashes
    "..\\..\\etc\\passwd",
    "%5c..%5c..%5cwindows%5cwin.ini",
    "x%00.whl",
    "%00",
    "tinyproj-1.0-py3-none-any.whl%00.txt",
    "%c0%ae%c0%ae%c0%afetc%c0%afpasswd",  # overlong UTF-8
    "%e0%80%ae%e0%80%ae%e0%80%af",
    "%c0%2e%c0%2e%c0%5c",
    "%ef%bc%8e%ef%bc%8e%ef%bc%8fetc",  # fullwidth ．．／
    "....%2f%2f....%2f%2fetc",
    "%2fetc%2fpasswd",
    "%2f%2f127.0.0.1%2fx",
    "%0d%0aSet-Cookie:%20pwned=1",
]

#: (method, template): every route family, the payload in each position.
ROUTES = [
    ("GET", "/simple/{}/"),
    ("GET", "/simple/{}"),
    ("GET", "/simple/tinyproj/{}"),
    ("GET", "/files/tinyproj/{}"),
    ("HEAD", "/files/tinyproj/{}"),
    ("GET", "/files/{}/" + WHEEL),
    ("GET", "/files/tinyproj/{}.metadata"),
    ("GET", "/local/simple/{}/"),
    ("GET", "/local/files/tinyproj/{}"),
    ("GET", "/local/files/{}/" + WHEEL),
    ("GET", "/pypi/{}/json"),
    ("GET", "/pypi/tinyproj/{}/json"),
    ("GET", "/local/pypi/{}/json"),
    ("POST", "/api/projects/{}/1.0/yank"),
    ("POST", "/api/projects/privproj/{}/yank"),
    ("DELETE", "/api/projects/privproj/{}"),
    ("POST", "/legacy/{}"),
    ("GET", "/legacy/{}"),
    ("GET", "/files/tinyproj/{}.provenance"),
    ("GET", "/as-of/{}/simple/"),
    ("GET", "/as-of/2024-05-01/simple/{}/"),
    ("GET", "/project/{}/"),
    ("HEAD", "/project/{}/"),
    ("GET", "/requirements/jobs/{}"),
]


# ------------------------------------------------------------- servers


def cheap_accounts(server: Any) -> AccountStore:
    accounts = server.app.accounts
    old = accounts.store
    old.close()
    accounts.store = AccountStore(old.path, hasher=CHEAP_HASHER)
    accounts.store.add_user("alice", PASSWORD)
    return accounts.store


@pytest_twisted.async_yield_fixture
async def hsrv(tmp_path, fake_upstream):
    """A server with a user, a cached upstream project (tinyproj, one file
    stored) and a private project (privproj 1.0)."""
    server = await start(fault_config(tmp_path, fake_upstream.url, page_ttl=600))
    cheap_accounts(server)
    response = await raw_request(server, "GET", f"/files/tinyproj/{WHEEL}")
    assert response.status == 200 and response.complete
    answer = await upload(server, build_wheel(tmp_path / "priv", "privproj", "1.0"))
    assert answer.status == 200, answer
    yield server
    await server.stop()


BOUNDARY = "hostile-boundary-5d1e"


def multipart(fields: list[tuple[str, str]], file_param: bytes, data: bytes) -> bytes:
    out = []
    for key, value in fields:
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
                   + value.encode("utf-8") + b"\r\n")
    out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="content"; '.encode() + file_param
               + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def upload_fields(data: bytes, project: str, release: str, **overrides: str) -> list[tuple[str, str]]:
    fields = {
        ":action": "file_upload", "protocol_version": "1", "name": project, "version": release,
        "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1",
        "sha256_digest": hashlib.sha256(data).hexdigest(), **overrides,
    }
    return list(fields.items())


async def upload(server: Any, wheel: Path, *, file_param: bytes | None = None, **overrides: str) -> RawResponse:
    data = wheel.read_bytes()
    project, release = wheel.name.split("-")[:2]
    body = multipart(upload_fields(data, project, release, **overrides),
                     file_param if file_param is not None else f'filename="{wheel.name}"'.encode(), data)
    return await raw_request(server, "POST", "/legacy/", body=body,
                             headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith("-shm"):  # SQLite's shared-memory index changes on reads
                continue
            path = Path(dirpath) / name
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


async def snapshot(server: Any) -> dict[str, Any]:
    """Everything a request could have written: files under the data dir
    (storage, spool, databases) and the index's view of every project."""
    index = server.app.index
    names = await index.list_projects()
    return {
        "tree": _tree(server.app.config.data_dir),
        "projects": names,
        "records": [await index.get_project(n) for n in names],
        "outside": sorted(p.name for p in server.app.config.data_dir.parent.iterdir()),
    }


def assert_no_split(response: RawResponse) -> None:
    """No header a payload could have injected, and a sane head."""
    names = response.header_names()
    assert b"set-cookie" not in names, response.raw[:500]
    assert b"x-injected" not in names, response.raw[:500]
    for name, value in response.headers:
        assert b"\r" not in value and b"\n" not in value
        assert b"pwned" not in name.lower()


# ----------------------------------------------------------- traversal


@pytest_twisted.ensureDeferred
async def test_traversal_in_every_form_on_every_route_is_refused(hsrv, fake_upstream):
    before = await snapshot(hsrv)
    fake_upstream.reset_log()
    failures = []
    for method, template in ROUTES:
        for payload in TRAVERSALS:
            path = template.format(payload)
            body = b"reason=x" if method == "POST" and path.startswith("/api/") else b""
            response = await raw_request(hsrv, method, path.encode("latin-1"), headers=AUTH, body=body)
            if response.status is None or not 400 <= response.status < 500:
                failures.append((method, path, response.status))
            assert_no_split(response)
    assert failures == []
    assert await snapshot(hsrv) == before
    upstream_paths = " ".join(p for _m, p, _h in fake_upstream.requests)
    for bad in ("..", "%2e", "%2E", "passwd", "%00", "%5c", "\\"):
        assert bad not in upstream_paths, fake_upstream.requests


@pytest_twisted.ensureDeferred
async def test_raw_dot_segments_and_absolute_forms_are_refused(hsrv):
    """Request targets no browser would send: dot segments, absolute-form,
    a path without a leading slash."""
    before = await snapshot(hsrv)
    for target in (b"/files/../../../../etc/passwd", b"/files/tinyproj/../../../etc/passwd",
                   b"/simple/../../etc/passwd", b"/local/../files/tinyproj/" + WHEEL.encode(),
                   b"/files/tinyproj/./" + WHEEL.encode(), b"/files//tinyproj/" + WHEEL.encode(),
                   b"files/tinyproj/../x", b"/files/tinyproj/..;/x", b"/%2e%2e/%2e%2e/etc/passwd"):
        response = await raw_request(hsrv, "GET", target)
        assert response.status is not None and 400 <= response.status < 500, (target, response.status)
        assert b"root:" not in response.body
    assert await snapshot(hsrv) == before


# ------------------------------------------------------ header splitting


@pytest_twisted.ensureDeferred
async def test_crlf_never_reaches_a_header_or_a_redirect(hsrv):
    before = await snapshot(hsrv)
    cases = [
        ("/simple/TinyProj?x=%0d%0aSet-Cookie:%20pwned=1", 301),
        ("/simple/tinyproj?%0d%0aX-Injected:%201", 301),
        ("/simple/Tiny_Proj/?format=%0d%0aSet-Cookie:%20pwned=1", 301),
        ("/pypi/TinyProj/json?%0d%0aSet-Cookie:%20pwned=1", 301),
        ("/pypi/TinyProj/1.0%0d%0aSet-Cookie:%20pwned=1/json", None),
        ("/simple/tinyproj%0d%0aSet-Cookie:%20pwned=1/", 404),
        ("/files/tinyproj/x%0d%0aSet-Cookie:%20pwned=1.whl", 404),
        ("/files/tinyproj/x%c2%85Set-Cookie:%20pwned=1.whl", 404),  # NEL
        ("/files/tinyproj/x%e2%80%a8Set-Cookie:%20pwned=1.whl", 404),  # LINE SEPARATOR
        ("/simple/tinyproj/?format=%0d%0a", None),
    ]
    for path, status in cases:
        response = await raw_request(hsrv, "GET", path)
        assert response.status is not None, path
        if status is not None:
            assert response.status == status, (path, response.status)
        assert_no_split(response)
        location = response.header("location")
        if location is not None:
            assert location.startswith("/") and not location.startswith("//"), location
    # Raw bytes that are not CR/LF but that some stacks treat as line breaks.
    for raw_target in (b"/simple/TinyProj?\x0bSet-Cookie:x", b"/simple/TinyProj?\x85Set-Cookie:x",
                       b"/simple/TinyProj?\x0cX-Injected:1"):
        response = await raw_request(hsrv, "GET", raw_target)
        assert_no_split(response)
        assert response.status is not None and response.status < 500
    assert await snapshot(hsrv) == before


@pytest_twisted.ensureDeferred
async def test_hostile_upload_filenames_never_split_a_header(hsrv, tmp_path):
    wheel = build_wheel(tmp_path / "up", "upproj", "1.0")
    before = await snapshot(hsrv)
    params = [
        b'filename="upproj-1.0-py3-none-any.whl\r\nSet-Cookie: pwned=1"',
        b'filename="upproj-1.0-py3-none-any.whl\nX-Injected: 1"',
        b'filename="../../upproj-1.0-py3-none-any.whl"',
        b'filename="..\\\\..\\\\upproj-1.0-py3-none-any.whl"',
        b'filename="/etc/upproj-1.0-py3-none-any.whl"',
        b'filename="upproj-1.0-py3-none-any.whl\x00.txt"',
        b'filename="upproj-1.0-py3-none-any.whl%0d%0aSet-Cookie: pwned=1"',
        b"filename*=UTF-8''..%2f..%2fupproj-1.0-py3-none-any.whl",
        b'filename="upproj-1.0-py3-none-any.whl\xc2\x85Set-Cookie: pwned=1"',
    ]
    for param in params:
        response = await upload(hsrv, wheel, file_param=param)
        assert response.status is not None and 400 <= response.status < 500, (param, response.status)
        assert_no_split(response)
    for field, value in (("name", "upproj\r\nSet-Cookie: pwned=1"), ("version", "1.0\r\nX-Injected: 1"),
                         ("summary", "x\r\nSet-Cookie: pwned=1"), ("name", "<script>alert(1)</script>")):
        response = await upload(hsrv, wheel, **{field: value})
        assert_no_split(response)
        assert response.status is not None and response.status < 500, (field, response.status)
        if field == "summary":
            continue  # a summary with a line break is refused or kept, but never in a header
        assert 400 <= response.status < 500, (field, response.status)
    after = await snapshot(hsrv)
    if after != before:  # only the summary case may have stored something, and only upproj
        assert {n for n in after["projects"]} - set(before["projects"]) <= {"upproj"}
    assert not any(".." in k or k.startswith("/") for k in after["tree"])


# --------------------------------------------------------------- markup


def _anchors_attrs(body: bytes) -> list[dict[str, str]]:
    from tests.anchors import anchors

    return anchors(body)


@pytest_twisted.ensureDeferred
async def test_markup_from_the_upstream_is_escaped(tmp_path, fake_upstream):
    script = '<script>alert("x")</script>'
    wheel = build_wheel(tmp_path / "evil", "evilproj", "1.0")
    fake_upstream.add(wheel, yanked=f'"><img src=x onerror=alert(1)>{script}', requires_python=f'>=3.8"{script}')
    server = await start(fault_config(tmp_path, fake_upstream.url))
    try:
        for accept in ("text/html", JSON, "application/vnd.pypi.simple.v1+html"):
            response = await raw_request(server, "GET", "/simple/evilproj/", headers={"Accept": accept})
            assert response.status == 200
            if accept == JSON:  # JSON carries the strings as they are: not markup
                assert response.header("content-type") == JSON
                entry = json.loads(response.body)["files"][0]
                assert entry["yanked"] == f'"><img src=x onerror=alert(1)>{script}'
                assert entry["requires-python"] == f'>=3.8"{script}'
            else:
                assert b"<script" not in response.body and b"<img" not in response.body
                anchor = _anchors_attrs(response.body)[0]
                assert anchor["data-yanked"] == f'"><img src=x onerror=alert(1)>{script}'
                assert anchor["data-requires-python"] == f'>=3.8"{script}'
        response = await raw_request(server, "GET", "/pypi/evilproj/json")
        assert response.status == 200
        doc = json.loads(response.body)
        assert doc["urls"][0]["yanked_reason"] == f'"><img src=x onerror=alert(1)>{script}'
        assert "<script" not in response.header("content-type")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_hostile_strings_in_an_upstream_page_are_escaped_or_dropped(tmp_path, fake_upstream):
    """A page the upstream (or someone between) crafted: markup and line
    breaks in filenames, URLs, hashes and attributes."""
    wheel = build_wheel(tmp_path / "evil", "evilproj", "1.0")
    fake_upstream.add(wheel)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    files = [
        {"filename": "evilproj-1.0<img src=x onerror=alert(1)>.tar.gz", "url": "../../files/a.tar.gz",
         "hashes": {"sha256": sha}},
        {"filename": "evilproj-1.1.tar.gz\r\nSet-Cookie: pwned=1", "url": "../../files/b.tar.gz", "hashes": {}},
        {"filename": "../../../etc/passwd.tar.gz", "url": "../../files/c.tar.gz", "hashes": {}},
        {"filename": "evilproj-1.2.tar.gz", "url": "javascript:alert(1)", "hashes": {}},
        {"filename": "evilproj-1.3.tar.gz", "url": "../../files/d.tar.gz",
         "hashes": {"sha256": '"><script>alert(1)</script>'}, "yanked": "<b>bold</b>",
         "requires-python": "<i>", "core-metadata": {"sha256": "<svg onload=alert(1)>"}},
        {"filename": wheel.name, "url": f"../../files/{wheel.name}", "hashes": {"sha256": sha}},
    ]
    page = json.dumps({"meta": {"api-version": "1.1"}, "name": "evilproj", "files": files}).encode()
    fake_upstream.fail("malformed", "/simple/evilproj/", body=page)
    server = await start(fault_config(tmp_path, fake_upstream.url))
    try:
        response = await raw_request(server, "GET", "/simple/evilproj/", headers={"Accept": "text/html"})
        assert response.status == 200
        body = response.body
        for bad in (b"<script", b"<img", b"<svg", b"<b>", b"<i>", b"javascript:", b"Set-Cookie: pwned",
                    b"passwd"):
            assert bad not in body, bad
        names = [a["text"] for a in _anchors_attrs(body)]
        assert wheel.name in names
        assert "evilproj-1.0<img src=x onerror=alert(1)>.tar.gz" in names  # shown, as text
        response = await raw_request(server, "GET", "/simple/evilproj/", headers={"Accept": JSON})
        listed = {f["filename"] for f in json.loads(response.body)["files"]}
        assert not any("\r" in n or "\n" in n or "/" in n for n in listed)
        # A hostile filename is only ever an index key: asking for it reaches no path.
        quoted = "evilproj-1.0%3Cimg%20src=x%20onerror=alert(1)%3E.tar.gz"
        response = await raw_request(server, "GET", f"/files/evilproj/{quoted}")
        assert response.status is not None and response.status != 500
        assert_no_split(response)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_yank_reason_with_markup_and_crlf(hsrv):
    reason = "<script>alert(1)</script>\r\nSet-Cookie: pwned=1"
    body = ("reason=" + __import__("urllib.parse").parse.quote(reason)).encode()
    response = await raw_request(hsrv, "POST", "/api/projects/privproj/1.0/yank", body=body,
                                 headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200, response.body
    assert_no_split(response)
    for prefix in ("/simple/", "/local/simple/"):
        page = await raw_request(hsrv, "GET", prefix + "privproj/", headers={"Accept": "text/html"})
        assert page.status == 200
        assert_no_split(page)
        assert b"<script" not in page.body
        assert html.escape("<script>", quote=True).encode() in page.body
        anchor = _anchors_attrs(page.body)[0]
        assert anchor["data-yanked"].startswith("<script>alert(1)</script>")
        page = await raw_request(hsrv, "GET", prefix + "privproj/", headers={"Accept": JSON})
        assert json.loads(page.body)["files"][0]["yanked"].startswith("<script>alert(1)</script>")
    page = await raw_request(hsrv, "GET", "/pypi/privproj/json")
    assert_no_split(page)
    assert json.loads(page.body)["urls"][0]["yanked_reason"].startswith("<script>")


# ---------------------------------------------------------- big bodies


@pytest.mark.parametrize("method,path", [
    ("GET", "/simple/tinyproj/"),
    ("GET", f"/files/tinyproj/{WHEEL}"),
    ("POST", "/api/projects/privproj/1.0/yank"),
    ("POST", "/pypi/tinyproj/json"),
    ("POST", "/"),
    ("PUT", "/simple/"),
], ids=["simple", "files", "api-yank", "pypi-json", "home", "put"])
@pytest_twisted.ensureDeferred
async def test_oversized_bodies_on_non_upload_routes_are_413(hsrv, method, path):
    before = await snapshot(hsrv)
    big = b"reason=" + b"x" * (300 * 1024)
    response = await raw_request(hsrv, method, path, body=big, headers=AUTH)
    assert response.status == 413, (path, response.status)
    # The same, chunked (no Content-Length to refuse up front).
    chunks = b"".join(b"%x\r\n" % len(part) + part + b"\r\n"
                      for part in (big[i:i + 16384] for i in range(0, len(big), 16384))) + b"0\r\n\r\n"
    raw = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
           f"Authorization: {AUTH['Authorization']}\r\n\r\n").encode() + chunks
    response = await raw_request(hsrv, method, path, raw=raw)
    assert response.status == 413, (path, response.status)
    assert await snapshot(hsrv) == before


@pytest_twisted.ensureDeferred
async def test_huge_declared_body_is_refused_without_waiting_for_it(hsrv):
    """A Content-Length of 10 GB with a few bytes sent: answered at once."""
    raw = (b"POST /api/projects/privproj/1.0/yank HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           b"Content-Length: 10000000000\r\n\r\nreason=x")
    response = await raw_request(hsrv, "POST", "", raw=raw, timeout=2)
    assert response.status == 413, response


@pytest_twisted.ensureDeferred
async def test_form_with_a_huge_field_count_is_answered(hsrv):
    body = b"&".join([b"reason=ok"] + [b"f%d=1" % i for i in range(8000)])
    assert len(body) < 64 * 1024
    response = await raw_request(hsrv, "POST", "/api/projects/privproj/1.0/yank", body=body,
                                 headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status is not None and response.status < 500


# ------------------------------------------------------- non-ASCII names

#: Letters that Python's case folding maps onto ASCII (``ſ``→s, the Kelvin
#: sign→k, ``İ``→i with IGNORECASE): PEP 508 names are ASCII, so none of them
#: may pass for a project name, be sent upstream or land in a Location.
NON_ASCII_NAMES = ["\u017fample", "\u212aiwi", "\u0130nfo", "tinypro\u0237", "tiny\u017fproj"]


def test_normalize_refuses_non_ascii_letters():
    from pypicache.model import InvalidName, normalize

    for name in NON_ASCII_NAMES + ["Tiny\u212a", "\u0131nfo", "caf\u00e9", "\uff54inyproj"]:
        with pytest.raises(InvalidName):
            normalize(name)
    assert normalize("Tiny_Proj.K") == "tiny-proj-k"


@pytest_twisted.ensureDeferred
async def test_non_ascii_names_are_refused_on_every_route(hsrv, fake_upstream, tmp_path):
    from urllib.parse import quote

    kiwi = build_wheel(tmp_path / "kiwi", "kiwi", "1.0")
    sample = build_wheel(tmp_path / "sample", "sample", "1.0")
    before = await snapshot(hsrv)
    fake_upstream.reset_log()
    failures = []
    for name in NON_ASCII_NAMES:
        encoded = quote(name, safe="")
        for method, path in (("GET", f"/simple/{encoded}/"), ("GET", f"/simple/{encoded}"),
                             ("GET", f"/local/simple/{encoded}/"), ("GET", f"/files/{encoded}/{WHEEL}"),
                             ("GET", f"/files/{encoded}/{WHEEL}.metadata"), ("GET", f"/local/files/{encoded}/{WHEEL}"),
                             ("GET", f"/pypi/{encoded}/json"), ("GET", f"/pypi/{encoded}/1.0/json"),
                             ("GET", f"/local/pypi/{encoded}/json"),
                             ("POST", f"/api/projects/{encoded}/1.0/yank")):
            body = b"reason=x" if method == "POST" else b""
            response = await raw_request(hsrv, method, path, headers=AUTH, body=body)
            if response.status is None or not 400 <= response.status < 500 or response.header("location"):
                failures.append((method, name, path, response.status, response.header("location")))
    assert failures == []
    # An upload whose name field folds onto the filename's ASCII name is refused too.
    response = await upload(hsrv, kiwi, name="\u212aiwi")
    assert response.status == 400 and b"invalid project name" in response.body, response
    response = await upload(hsrv, sample, name="\u017fample")
    assert response.status == 400, response
    assert await snapshot(hsrv) == before
    assert fake_upstream.requests == []
