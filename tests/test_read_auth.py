"""``[auth] read = "authenticated"``: every read needs a user or a token.

Pages (both views, both formats), files, ``.metadata``, the JSON API and the
home page answer 401 with a Basic challenge to anonymous clients, before the
upstream is asked anything; a real pip with credentials in the index URL
installs a private and a proxied package.  And no secret ever reaches the
log, whether the login succeeds or fails.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
import treq
from argon2 import PasswordHasher
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from pypicache.services.accounts import AccountStore
from tests.builders import build_wheel
from tests.clients import pip_install, uv_pip_install
from tests.server import RunningServer, make_config, start_server

PASSWORD = "s3cret-Horse/battery:staple"  # '/' and ':' must survive the index URL
WRONG = "not-the-password-9f2c"
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8)
TIMEOUT = 30
PRIVATE_WHEEL = "acme_tools-1.0-py3-none-any.whl"
UPSTREAM_WHEEL = "tinyproj-1.0-py3-none-any.whl"
JSON = "application/vnd.pypi.simple.v1+json"


class LogCapture:
    """Every twisted.logger event (legacy log.msg included) while attached, as text."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        out = []
        for event in self.events:
            text = [formatEvent(event) or "", repr(event)]
            failure = event.get("log_failure")
            if failure is not None:
                text.append(failure.getTraceback())
            out.append("\n".join(text))
        return out

    def assert_never_logged(self, *secrets: str) -> None:
        assert self.events, "nothing was logged: the observer saw nothing"
        texts = self.texts()
        for secret in secrets:
            variants = {secret, quote(secret, safe=""), secret.encode().hex()}
            for text in texts:
                for variant in variants:
                    assert variant not in text, f"a secret reached the log: {text[:500]}"


@pytest.fixture
def log_capture():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)


def fetched(fake_upstream: Any, filename: str) -> int:
    """How many times the upstream served the file itself (not its .metadata)."""
    return sum(1 for method, path, _ in fake_upstream.requests if method == "GET" and path.endswith("/" + filename))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


async def upload(server: Any, path: Path, auth: tuple[str, str]) -> None:
    """A private wheel, through the real upload route (treq builds the multipart body)."""
    name, version = path.name.split("-")[:2]
    with open(path, "rb") as f:
        response = await treq.post(
            server.root + "/legacy/",
            data={":action": "file_upload", "protocol_version": "1", "name": name, "version": version,
                  "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1"},
            files={"content": (path.name, "application/octet-stream", io.BytesIO(f.read()))},
            auth=auth, persistent=False, timeout=TIMEOUT)
    assert response.code == 200, await treq.text_content(response)


@attrs.define
class Guarded:
    server: RunningServer
    token: str

    @property
    def root(self) -> str:
        return self.server.root

    @property
    def simple(self) -> str:
        return self.server.simple


@pytest_twisted.async_yield_fixture
async def guarded(tmp_path: Path, fake_upstream: Any):
    """A server that wants credentials for reading, with user alice, her
    token, and one private project (acme-tools 1.0)."""
    async for server in _guarded(tmp_path, fake_upstream, access_log=True):
        yield server


@pytest_twisted.async_yield_fixture
async def guarded_fast(tmp_path: Path, fake_upstream: Any):
    """The same, without an access log: the page fast path is in front."""
    async for server in _guarded(tmp_path, fake_upstream, access_log=False):
        yield server


async def _guarded(tmp_path: Path, fake_upstream: Any, *, access_log: bool) -> Any:
    config = make_config(tmp_path, fake_upstream.url, access_log=access_log)
    config = attrs.evolve(config, auth=attrs.evolve(config.auth, read="authenticated"))
    server = await start_server(config)
    try:
        accounts = server.app.accounts
        old = accounts.store
        old.close()
        accounts.store = store = AccountStore(old.path, hasher=CHEAP_HASHER)
        store.add_user("alice", PASSWORD)
        _, token = store.create_token("alice", description="reads")
        await upload(server, build_wheel(tmp_path / "dist", "acme-tools", "1.0"), ("alice", PASSWORD))
        fake_upstream.reset_log()
        yield Guarded(server, token)
    finally:
        await server.stop()


#: path, Accept, what a 200 must contain
READS = [
    pytest.param("/", "text/html", b"pypicache", id="home"),
    pytest.param("/simple/", "text/html", b"<a", id="proxy-root"),
    pytest.param("/simple/tinyproj/", "text/html", UPSTREAM_WHEEL.encode(), id="proxy-page-html"),
    pytest.param("/simple/acme-tools/", JSON, PRIVATE_WHEEL.encode(), id="proxy-page-json"),
    pytest.param("/local/simple/", "text/html", b"acme-tools", id="local-root"),
    pytest.param("/local/simple/acme-tools/", "text/html", PRIVATE_WHEEL.encode(), id="local-page"),
    pytest.param(f"/files/acme-tools/{PRIVATE_WHEEL}", "*/*", b"PK", id="file"),
    pytest.param(f"/files/acme-tools/{PRIVATE_WHEEL}.metadata", "*/*", b"Name: acme-tools", id="metadata"),
    pytest.param(f"/local/files/acme-tools/{PRIVATE_WHEEL}", "*/*", b"PK", id="local-file"),
    pytest.param(f"/files/tinyproj/{UPSTREAM_WHEEL}", "*/*", b"PK", id="proxied-file"),
    pytest.param("/pypi/acme-tools/json", "application/json", b'"acme-tools"', id="json-api"),
    pytest.param("/pypi/acme-tools/1.0/json", "application/json", b'"1.0"', id="json-api-version"),
    pytest.param("/stats", "application/json", b"{", id="stats"),
]


async def get(server: Any, path: str, accept: str, authorization: str | None) -> Any:
    headers = {"accept": [accept]}
    if authorization is not None:
        headers["authorization"] = [authorization]
    response = await treq.get(server.root + path, headers=headers, persistent=False, timeout=TIMEOUT)
    return response, await treq.content(response)


@pytest.mark.parametrize("path, accept, expected", READS)
@pytest_twisted.ensureDeferred
async def test_reads_need_credentials(guarded, fake_upstream, path, accept, expected):
    for authorization in (None, "Basic " + basic("alice", WRONG), "Basic " + basic("__token__", "pypicache-nope"),
                          "Bearer " + guarded.token):
        response, _ = await get(guarded, path, accept, authorization)
        assert response.code == 401, (authorization, response.code)
        assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Basic realm=")
    assert fake_upstream.requests == []  # refused before anything was asked upstream

    for authorization in ("Basic " + basic("alice", PASSWORD), "Basic " + basic("__token__", guarded.token)):
        response, body = await get(guarded, path, accept, authorization)
        assert response.code == 200, (path, response.code, body[:300])
        assert expected in body


@pytest_twisted.ensureDeferred
async def test_head_needs_credentials_too(guarded):
    response = await treq.head(guarded.simple + "acme-tools/", persistent=False, timeout=TIMEOUT)
    assert response.code == 401
    response = await treq.head(guarded.simple + "acme-tools/", auth=("alice", PASSWORD), persistent=False,
                               timeout=TIMEOUT)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_pip_installs_with_credentials_in_the_index_url(guarded, fake_upstream, tmp_path, log_capture):
    """pip (and uv) take the credentials from the URL: a private and a proxied
    package install, the proxied file really fetched through the server.
    Nothing pip sent as a secret shows up in the log, access log included."""
    host = guarded.root.removeprefix("http://")
    index = f"http://alice:{quote(PASSWORD, safe='')}@{host}/simple/"
    result = await deferToThread(pip_install, index, "acme-tools", "tinyproj==1.0", target=tmp_path / "pip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pip" / "acme_tools" / "__init__.py").read_text().strip().endswith('"1.0"')
    assert (tmp_path / "pip" / "tinyproj" / "__init__.py").read_text().strip().endswith('"1.0"')
    assert fetched(fake_upstream, UPSTREAM_WHEEL) == 1  # came through the server, from the upstream
    assert not [r for r in fake_upstream.requests if "acme" in r[1]]  # private: never asked upstream

    token_index = f"http://__token__:{guarded.token}@{host}/simple/"
    result = await deferToThread(uv_pip_install, token_index, "tinyproj==1.0", target=tmp_path / "uv")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fetched(fake_upstream, UPSTREAM_WHEEL) == 1  # the second install was served from the cache

    access = [t for t in log_capture.texts() if "GET /simple/" in t or "GET /files/" in t]
    assert access, "the access log saw none of pip's requests"
    log_capture.assert_never_logged(PASSWORD, guarded.token, basic("alice", PASSWORD),
                                    basic("__token__", guarded.token))


@pytest_twisted.ensureDeferred
async def test_pip_without_credentials_is_refused(guarded, fake_upstream, tmp_path):
    result = await deferToThread(pip_install, guarded.simple, "acme-tools", target=tmp_path / "t")
    assert result.returncode != 0  # pip does not say why: a 401 page just has no versions
    assert not (tmp_path / "t" / "acme_tools").exists()
    assert fake_upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_not_logged(guarded, tmp_path, log_capture):
    """Wrong passwords (reads, uploads, the management API) leave no trace of
    the attempted secret, nor of the right one."""
    for path in ("/simple/acme-tools/", f"/files/acme-tools/{PRIVATE_WHEEL}", "/pypi/acme-tools/json"):
        response, _ = await get(guarded, path, "*/*", "Basic " + basic("alice", WRONG))
        assert response.code == 401
    response = await treq.post(guarded.root + "/legacy/", data={":action": "file_upload"},
                               auth=("alice", WRONG), persistent=False, timeout=TIMEOUT)
    assert response.code == 401
    await treq.content(response)
    response = await treq.post(guarded.root + "/api/projects/acme-tools/1.0/yank", auth=("alice", WRONG),
                               persistent=False, timeout=TIMEOUT)
    assert response.code == 401
    await treq.content(response)
    # and a successful upload with a token, for the "logged in" side of the log
    await upload(guarded, build_wheel(tmp_path / "d2", "acme-tools", "2.0"), ("__token__", guarded.token))
    log_capture.assert_never_logged(WRONG, PASSWORD, guarded.token, basic("alice", WRONG))


def assert_private(response: Any, what: Any) -> None:
    """Only the client that authenticated may keep it: no shared cache."""
    cache_control = ",".join(response.headers.getRawHeaders("cache-control") or [])
    directives = {d.strip().split("=")[0].lower() for d in cache_control.split(",") if d.strip()}
    assert "private" in directives and "public" not in directives, (what, cache_control)
    vary = ",".join(response.headers.getRawHeaders("vary") or [])
    assert "authorization" in {v.strip().lower() for v in vary.split(",")}, (what, vary)


@pytest_twisted.ensureDeferred
async def test_protected_answers_are_private(guarded):
    """With reads protected, no answer may tell a shared cache in front to
    keep it (it would serve it to anyone): pages, JSON, files, metadata,
    304s, ranges, errors and challenges are all ``private`` and vary on
    Authorization; max-age is kept."""
    await check_private_answers(guarded)


@pytest_twisted.ensureDeferred
async def test_protected_answers_are_private_on_the_fast_path(guarded_fast):
    await check_private_answers(guarded_fast)


async def check_private_answers(server: Any) -> None:
    auth = "Basic " + basic("alice", PASSWORD)
    for param in READS:
        path, accept, _ = param.values
        for _ in range(2):  # the second time from the caches (and the fast path)
            response, _body = await get(server, path, accept, auth)
            assert response.code == 200
            assert_private(response, path)
        if path.startswith(("/simple/", "/local/simple/", "/pypi/")):
            cache_control = response.headers.getRawHeaders("cache-control")[0]
            assert "max-age=60" in cache_control, (path, cache_control)
        etag = response.headers.getRawHeaders("etag")
        if etag and ("simple/" in path or "/pypi/" in path):
            again = await treq.get(server.root + path, headers={"accept": [accept], "authorization": [auth],
                                                                "if-none-match": etag}, persistent=False,
                                   timeout=TIMEOUT)
            await treq.content(again)
            assert again.code == 304, path
            assert_private(again, path + " (304)")
    response = await treq.get(f"{server.root}/files/acme-tools/{PRIVATE_WHEEL}",
                              headers={"authorization": [auth], "range": ["bytes=-10"]}, persistent=False,
                              timeout=TIMEOUT)
    assert response.code == 206 and len(await treq.content(response)) == 10
    assert_private(response, "range")
    assert "max-age=31536000" in response.headers.getRawHeaders("cache-control")[0]
    for path, code in (("/simple/no-such-project-here/", 404), ("/simple/acme-tools/", 401)):
        response, _body = await get(server, path, "text/html", auth if code != 401 else None)
        assert response.code in (code, 503), path
        assert_private(response, path)
