"""One test per upload rule, each a real multipart POST to a listening server.

Every refusal must say what is wrong twice (twine shows the HTTP status line,
other clients the body) and must leave no trace: no blob, no temporary or
spool file, no index row, no used filename, no maintainer.  The bodies are
built by hand so a test can send what no well-behaved client would (NUL in a
filename, a member named ``../evil.py``, a thousand fields).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
import pytest_twisted
import treq

from pypicache.web.request import DISCARD_SLACK, FORM_ALLOWANCE
from tests.builders import build_sdist, build_wheel
from tests.server import RunningServer
from tests.uploads import (
    NAME,
    PASSWORD,
    SDIST_NAME,
    TIMEOUT,
    VERSION,
    WHEEL_NAME,
    Answer,
    Form,
    blob_files,
    form,
    good_wheel,
    leftovers,
    metadata,
    post,
    rezip,
    sdist_without_pkg_info,
    state,
)

@pytest_twisted.async_yield_fixture
async def server(start: Callable[..., Any]):
    yield await start()


async def refused(server: RunningServer, body: bytes | Form, code: int, *reasons: str,
                  name: str = NAME, filename: str = WHEEL_NAME, **kw: Any) -> Answer:
    """POST ``body``; assert the status, the reason in body and status line, and no trace left."""
    before = await state(server, name, filename)
    answer = await post(server, body, **kw)
    assert answer.code == code, answer
    for reason in reasons:
        assert reason in answer.body, answer
        assert reason in answer.phrase, answer
    after = await state(server, name, filename)
    assert after == before
    assert after["leftovers"] == []
    if before["project"] is None:
        assert after["project"] is None and after["used"] is None
        assert server.app.mirror.cached(name) is None
    return answer


# ------------------------------------------------------------ sanity: the good path


@pytest_twisted.ensureDeferred
async def test_a_valid_upload_is_stored(server, tmp_path):
    """The baseline every refusal below differs from by one thing."""
    data = good_wheel(tmp_path)
    answer = await post(server, form(data))
    assert answer.code == 200, answer
    record = await server.app.index.get_project(NAME)
    assert record.origin == "local" and record.file(WHEEL_NAME) is not None
    assert await server.app.index.used_filename(WHEEL_NAME) == hashlib.sha256(data).hexdigest()
    assert leftovers(server) == []
    assert len(blob_files(server)) == 2  # the wheel and its METADATA


@pytest_twisted.ensureDeferred
async def test_a_valid_sdist_is_stored(server, tmp_path):
    data = build_sdist(tmp_path / "good", NAME, VERSION).read_bytes()
    answer = await post(server, form(data, SDIST_NAME))
    assert answer.code == 200, answer
    assert await server.app.index.used_filename(SDIST_NAME) is not None


# ------------------------------------------------------------ 400: the form and the filename

RULES: dict[str, tuple[Callable[[Path], Form], str, str]] = {}
"""rule id -> (build the form, the filename to check as unused, a reason substring)."""


def rule(rule_id: str, reason: str, filename: str = WHEEL_NAME):
    def register(build: Callable[[Path], Form]) -> Callable[[Path], Form]:
        RULES[rule_id] = (build, filename, reason)
        return build

    return register


@rule("bad-action", "':action' must be 'file_upload'")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), **{":action": "remove_pkg"})


@rule("bad-protocol-version", "'protocol_version' must be '1'")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), protocol_version="2")


@rule("missing-content", "no file uploaded in the 'content' field")
def _(tmp_path: Path) -> Form:
    return attrs.evolve(form(good_wheel(tmp_path)), file_param=None)


@rule("filename-slash", "path separator", filename="acme/" + WHEEL_NAME)
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), "acme/" + WHEEL_NAME)


@rule("filename-backslash", "path separator", filename="acme\\" + WHEEL_NAME)
def _(tmp_path: Path) -> Form:
    # In a quoted-string a backslash before anything but '"' or '\' is kept
    # (HTML5 encoders do not escape it), so the server sees "acme\acme_tools...".
    return form(good_wheel(tmp_path), file_param=b'filename="acme\\' + WHEEL_NAME.encode() + b'"')


@rule("filename-nul", "control character", filename="acme\x00" + WHEEL_NAME)
def _(tmp_path: Path) -> Form:
    # RFC 5987 encoding smuggles the NUL past the header line itself.
    return form(good_wheel(tmp_path), file_param=b"filename*=utf-8''acme%00" + WHEEL_NAME.encode())


@rule("filename-raw-nul", "control character", filename="acme\x00" + WHEEL_NAME)
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), file_param=b'filename="acme\x00' + WHEEL_NAME.encode() + b'"')


@rule("filename-control-char", "control character", filename="acme\x1b" + WHEEL_NAME)
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), file_param=b"filename*=utf-8''acme%1B" + WHEEL_NAME.encode())


@rule("filename-leading-dot", "must not start with '.'", filename="." + WHEEL_NAME)
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), "." + WHEEL_NAME)


@rule("unsupported-egg", "unsupported file type", filename="acme_tools-1.0-py3.11.egg")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), "acme_tools-1.0-py3.11.egg", filetype="bdist_egg")


@rule("unsupported-exe", "unsupported file type", filename="acme_tools-1.0.win32.exe")
def _(tmp_path: Path) -> Form:
    return form(b"MZ\x90\x00" + b"\x00" * 100, "acme_tools-1.0.win32.exe", filetype="bdist_wininst")


@rule("unparsable-wheel-filename", "invalid wheel filename", filename="acme_tools-1.0.whl")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), "acme_tools-1.0.whl")


@rule("name-field-differs", "does not match the filename")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), name="acme-other")


@rule("invalid-project-name", "invalid project name")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), name="acme tools!")


@rule("non-normalisable-name", "invalid project name in filename", filename="_acme-1.0.tar.gz")
def _(tmp_path: Path) -> Form:
    # packaging parses it (as "-acme"), but no valid project name normalises to that.
    return form(b"\x1f\x8b" + b"\x00" * 64, "_acme-1.0.tar.gz", name="_acme")


@rule("version-field-differs", "version '2.0' does not match the filename")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), version="2.0")


@rule("filetype-inconsistent", "filetype 'sdist' does not match")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), filetype="sdist")


@rule("sha256-mismatch", "sha256_digest does not match the uploaded file")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), sha256_digest="0" * 64)


@rule("md5-mismatch", "md5_digest does not match the uploaded file")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), md5_digest="0" * 32)


@rule("blake2-mismatch", "blake2_256_digest does not match the uploaded file")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), blake2_256_digest="0" * 64)


# ------------------------------------------------------------ 400: the archive


@rule("metadata-name-differs", "METADATA Name 'acme-other' does not match the filename")
def _(tmp_path: Path) -> Form:
    return form(rezip(good_wheel(tmp_path), replace={".dist-info/METADATA": metadata(name="acme-other")}))


@rule("metadata-version-differs", "METADATA Version '2.0' does not match the filename")
def _(tmp_path: Path) -> Form:
    return form(rezip(good_wheel(tmp_path), replace={".dist-info/METADATA": metadata(version="2.0")}))


@rule("wheel-without-metadata", "wheel is missing acme_tools-1.0.dist-info/METADATA")
def _(tmp_path: Path) -> Form:
    return form(rezip(good_wheel(tmp_path), drop=(".dist-info/METADATA",)))


@rule("wheel-without-wheel", "wheel is missing acme_tools-1.0.dist-info/WHEEL")
def _(tmp_path: Path) -> Form:
    return form(rezip(good_wheel(tmp_path), drop=(".dist-info/WHEEL",)))


@rule("wheel-without-record", "wheel is missing acme_tools-1.0.dist-info/RECORD")
def _(tmp_path: Path) -> Form:
    return form(rezip(good_wheel(tmp_path), drop=(".dist-info/RECORD",)))


@rule("sdist-without-pkg-info", "sdist is missing PKG-INFO", filename=SDIST_NAME)
def _(tmp_path: Path) -> Form:
    return form(sdist_without_pkg_info(), SDIST_NAME)


@rule("zip-slip-member", "has an unsafe path")
def _(tmp_path: Path) -> Form:
    return form(rezip(good_wheel(tmp_path), add={"../../evil.py": b"print('pwned')\n"}))


@rule("zip-bomb-metadata", "METADATA has a suspicious compression ratio")
def _(tmp_path: Path) -> Form:
    # 3 MB of METADATA (under the 4 MiB cap) deflated to a few KB.
    bomb = metadata(tail=b"\x00" * (3 * 1024 * 1024))
    data = rezip(good_wheel(tmp_path), replace={".dist-info/METADATA": bomb})
    assert len(data) < 64 * 1024
    return form(data)


@rule("not-a-zip", "not a valid zip archive")
def _(tmp_path: Path) -> Form:
    return form(b"this is not a zip archive, only some text\n" * 10)


@rule("huge-field-count", "too many form fields")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), extra=tuple(("classifiers", f"Topic :: {i}") for i in range(1001)))


@rule("oversized-field", "form field 'description' is larger than")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), description="x" * (1024 * 1024 + 1))


@rule("markup-in-wheel-tags", "invalid wheel tag", "acme_tools-1.0-py3-none-any><svg onload=alert(1)>.whl")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), "acme_tools-1.0-py3-none-any><svg onload=alert(1)>.whl")


@rule("quote-in-wheel-tags", "invalid wheel tag", 'acme_tools-1.0-py3-none-any"><svg onload=alert(1)>.whl')
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), file_param=b"filename*=UTF-8''acme_tools-1.0-py3-none-any%22%3E%3Csvg%20"
                                                 b"onload%3Dalert(1)%3E.whl")


@rule("bad-abi-tag", "invalid wheel tag", "acme_tools-1.0-py3-no%ne-any.whl")
def _(tmp_path: Path) -> Form:
    return form(good_wheel(tmp_path), "acme_tools-1.0-py3-no%ne-any.whl")


@pytest.mark.parametrize("rule_id", list(RULES))
@pytest_twisted.ensureDeferred
async def test_rule(server, tmp_path, rule_id):
    build, filename, reason = RULES[rule_id]
    await refused(server, build(tmp_path), 400, reason, filename=filename)


@pytest_twisted.ensureDeferred
async def test_not_multipart(server, tmp_path):
    await refused(server, b"name=acme-tools", 400, "multipart/form-data",
                  content_type="application/x-www-form-urlencoded")


@pytest_twisted.ensureDeferred
async def test_broken_body_gets_the_parsers_reason(server, tmp_path):
    """The streaming parser, not Twisted's in-memory form parser (switched
    off), reads upload bodies: a broken one gets a reason, not a bare 400."""
    await refused(server, os.urandom(4096), 400, "no multipart boundary found in the body")


# ------------------------------------------------------------ 413: the size limit, while streaming

LIMIT = 64 * 1024


def open_temp_files() -> set[str]:
    """This process's open files that are unlinked temporaries (Twisted spools bodies there)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "(deleted)" in target:
            found.add(f"{fd} {target}")
    return found


def padded_wheel(tmp_path: Path, pad: int) -> bytes:
    return rezip(good_wheel(tmp_path), add={"acme_tools/pad.bin": os.urandom(pad)}, compress=zipfile.ZIP_STORED)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("size, chunked", [
    pytest.param(LIMIT + FORM_ALLOWANCE + 64 * 1024, False, id="content-length"),
    pytest.param(LIMIT + FORM_ALLOWANCE + 64 * 1024, True, id="chunked"),
])
@pytest_twisted.ensureDeferred
async def test_size_limit_413_while_streaming(start, tmp_path, size, chunked):
    """The body is counted as it arrives and dropped, never spooled, past the limit."""
    server = await start(max_size=LIMIT)
    temps = open_temp_files()
    await refused(server, form(padded_wheel(tmp_path, size)), 413, f"upload too large: the limit is {LIMIT} bytes",
                  chunked=chunked)
    assert open_temp_files() <= temps  # no spooled body is kept open either
    small = form(good_wheel(tmp_path, "0.9"), "acme_tools-0.9-py3-none-any.whl", version="0.9")
    assert (await post(server, small)).code == 200  # and the server still takes small uploads


@pytest_twisted.ensureDeferred
async def test_size_limit_hang_up_past_the_slack(start, tmp_path):
    """A body far over the limit is not read to its end: the server answers and hangs up."""
    server = await start(max_size=LIMIT)
    data = padded_wheel(tmp_path, LIMIT + FORM_ALLOWANCE + DISCARD_SLACK + 1024 * 1024)
    before = await state(server)
    try:
        answer = await post(server, form(data), chunked=True)
    except Exception:  # noqa: BLE001  the client may still be sending when the connection closes
        pass
    else:
        assert answer.code == 413 and f"the limit is {LIMIT} bytes" in answer.phrase, answer
    assert await state(server) == before
    assert leftovers(server) == []


@pytest_twisted.ensureDeferred
async def test_file_part_over_the_limit_is_413_from_the_parser(start, tmp_path):
    """The body fits (the limit leaves room for text fields) but the file does not."""
    server = await start(max_size=LIMIT)
    await refused(server, form(padded_wheel(tmp_path, LIMIT)), 413, f"larger than the limit of {LIMIT} bytes")


@pytest_twisted.ensureDeferred
async def test_file_under_the_limit_with_long_fields_is_accepted(start, tmp_path):
    """A body over ``max_size`` whose file is under it: the limit is the file's."""
    server = await start(max_size=LIMIT)
    data = padded_wheel(tmp_path, LIMIT - 4096)
    assert len(data) < LIMIT
    answer = await post(server, form(data, description="README " * 4096))
    assert answer.code == 200, answer


# ------------------------------------------------------------ 401/403: credentials and ownership


@pytest_twisted.ensureDeferred
async def test_no_credentials_is_401_with_a_challenge(server, tmp_path):
    answer = await refused(server, form(good_wheel(tmp_path)), 401, "needs credentials", auth=None)
    assert answer.headers.getRawHeaders("www-authenticate")[0].startswith("Basic ")


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_401(server, tmp_path):
    answer = await refused(server, form(good_wheel(tmp_path)), 401, "invalid credentials",
                           auth=("alice", "not the password"))
    assert answer.headers.getRawHeaders("www-authenticate")[0].startswith("Basic ")


@pytest_twisted.ensureDeferred
async def test_unknown_user_is_401(server, tmp_path):
    await refused(server, form(good_wheel(tmp_path)), 401, "invalid credentials", auth=("mallory", PASSWORD))


@pytest_twisted.ensureDeferred
async def test_other_users_project_is_403(server, tmp_path):
    first = await post(server, form(good_wheel(tmp_path, "0.9"), "acme_tools-0.9-py3-none-any.whl",
                                    version="0.9"))
    assert first.code == 200, first  # alice owns acme-tools now
    await refused(server, form(good_wheel(tmp_path)), 403, "bob may not upload to acme-tools",
                  auth=("bob", PASSWORD))


@pytest_twisted.ensureDeferred
async def test_token_scoped_to_another_project_is_403(server, tmp_path):
    _, token = server.app.accounts.store.create_token("alice", projects=["acme-other"])
    await refused(server, form(good_wheel(tmp_path)), 403, "token of alice is limited to other projects",
                  auth=("__token__", token))


@pytest_twisted.ensureDeferred
async def test_revoked_token_is_401(server, tmp_path):
    token_id, token = server.app.accounts.store.create_token("alice")
    server.app.accounts.store.revoke_token(token_id)
    await refused(server, form(good_wheel(tmp_path)), 401, "revoked token", auth=("__token__", token))


@pytest_twisted.ensureDeferred
async def test_a_valid_token_uploads(server, tmp_path):
    _, token = server.app.accounts.store.create_token("alice", projects=[NAME])
    answer = await post(server, form(good_wheel(tmp_path)), auth=("__token__", token))
    assert answer.code == 200, answer


@pytest_twisted.ensureDeferred
async def test_unclaimed_upstream_name_is_403(server, tmp_path):
    data = build_wheel(tmp_path / "u", "tinyproj", "1.5").read_bytes()
    await refused(server, form(data, "tinyproj-1.5-py3-none-any.whl", name="tinyproj", version="1.5"), 403,
                  "tinyproj exists on the upstream index", name="tinyproj",
                  filename="tinyproj-1.5-py3-none-any.whl")


@pytest_twisted.ensureDeferred
async def test_uploads_disabled_is_403(start, tmp_path):
    server = await start(enabled=False)
    await refused(server, form(good_wheel(tmp_path)), 403, "uploads are disabled")


# ------------------------------------------------------------ the URL


@pytest_twisted.ensureDeferred
async def test_get_is_405(server):
    answer = await post(server, b"", method="GET")
    assert answer.code == 405
    assert answer.headers.getRawHeaders("allow") == ["POST"]


@pytest_twisted.ensureDeferred
async def test_legacy_without_slash_uploads_without_redirect(server, tmp_path):
    answer = await post(server, form(good_wheel(tmp_path)), path="/legacy")
    assert answer.code == 200, answer
    assert await server.app.index.used_filename(WHEEL_NAME) is not None


@pytest_twisted.ensureDeferred
async def test_concurrent_first_uploads_make_one_owner(server, tmp_path):
    """Two users racing to create the same new name: one wins, the other is refused."""
    from twisted.internet import defer

    alice = form(good_wheel(tmp_path))
    bob = form(good_wheel(tmp_path, "2.0"), "acme_tools-2.0-py3-none-any.whl", version="2.0")
    answers = await defer.gatherResults([
        defer.ensureDeferred(post(server, alice, auth=("alice", PASSWORD))),
        defer.ensureDeferred(post(server, bob, auth=("bob", PASSWORD))),
    ])
    assert sorted(a.code for a in answers) == [200, 403], answers
    winner = "alice" if answers[0].code == 200 else "bob"
    assert server.app.accounts.store.maintainers(NAME) == {winner}
    record = await server.app.index.get_project(NAME)
    assert len(record.files) == 1


@pytest_twisted.ensureDeferred
async def test_identical_reupload_restores_a_lost_file(server, tmp_path):
    """After storage lost a private wheel and its METADATA (a disk error,
    or `verify --repair` quarantining a corrupt copy), uploading the same
    bytes again stores them again: the 200 means the file is served."""
    data = good_wheel(tmp_path)
    assert (await post(server, form(data))).code == 200
    record = await server.app.index.get_project(NAME)
    wheel = record.file(WHEEL_NAME)
    for sha in (wheel.sha256, wheel.metadata_sha256):
        server.app.storage.path_of(sha).unlink()
    answer = await post(server, form(data))
    assert answer.code == 200, answer
    for suffix, expected in (("", data), (".metadata", None)):
        response = await treq.get(f"{server.root}/local/files/{NAME}/{WHEEL_NAME}{suffix}")
        body = await treq.content(response)
        assert response.code == 200
        if expected is not None:
            assert body == expected
        else:
            assert hashlib.sha256(body).hexdigest() == wheel.metadata_sha256
    stored = (await server.app.index.get_project(NAME)).file(WHEEL_NAME)
    assert stored.stored and stored.metadata_stored
    assert leftovers(server) == []
    # Nothing lost: a third identical upload changes nothing.
    before = blob_files(server)
    assert (await post(server, form(data))).code == 200
    assert blob_files(server) == before


# ------------------------------------------------------------ a file is named once, as PyPI compares names


async def delete_file(server: RunningServer, filename: str) -> None:
    response = await treq.request("DELETE", f"{server.root}/api/projects/{NAME}/{filename}",
                                  auth=("alice", PASSWORD), persistent=False, timeout=TIMEOUT)
    await treq.content(response)
    assert response.code == 200, response.code


@pytest_twisted.ensureDeferred
async def test_another_spelling_of_a_used_filename_is_409(server, tmp_path):
    """``2.0.0`` is ``2.0``, ``01.1`` is ``1.1``, tags and name compare
    normalised: the same (name, version, build, tags) is one filename, used
    once, even after deletion."""
    first = build_wheel(tmp_path / "a", NAME, "2.0").read_bytes()
    assert (await post(server, form(first, "acme_tools-2.0-py3-none-any.whl", version="2.0"))).code == 200
    await delete_file(server, "acme_tools-2.0-py3-none-any.whl")
    other = build_wheel(tmp_path / "b", NAME, "2.0.0", summary="other bytes").read_bytes()
    for filename in ("acme_tools-2.0.0-py3-none-any.whl", "Acme.Tools-2-py3-none-any.whl",
                     "acme_tools-2.0-PY3-none-ANY.whl"):
        answer = await refused(server, form(other, filename, version="2.0.0"), 409, "File already exists",
                               filename=filename)
        assert answer.code == 409

    one = build_wheel(tmp_path / "c", NAME, "1.1").read_bytes()
    assert (await post(server, form(one, "acme_tools-1.1-py3-none-any.whl", version="1.1"))).code == 200
    again = build_wheel(tmp_path / "d", NAME, "01.1", summary="other bytes").read_bytes()
    await refused(server, form(again, "acme_tools-01.1-py3-none-any.whl", version="01.1"), 409,
                  "File already exists", filename="acme_tools-01.1-py3-none-any.whl")
    # Other tags, another build number or an sdist are other files.
    sdist = build_sdist(tmp_path / "e", NAME, "1.1").read_bytes()
    assert (await post(server, form(sdist, "acme_tools-1.1.tar.gz", version="1.1"))).code == 200
    zipped = build_sdist(tmp_path / "f", NAME, "1.1.0").read_bytes()
    await refused(server, form(zipped, "acme_tools-1.1.0.tar.gz", version="1.1.0"), 409, "File already exists",
                  filename="acme_tools-1.1.0.tar.gz")
    record = await server.app.index.get_project(NAME)
    assert [f.filename for f in record.files] == ["acme_tools-1.1-py3-none-any.whl", "acme_tools-1.1.tar.gz"]
