"""Private packages end to end: real twine and uv publish, then real pip and uv installs.

The fake upstream's request log proves what was (not) asked upstream; the
clients run isolated from this machine's pip configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.builders import build_sdist, build_wheel
from tests.clients import isolated_env, pip_install, uv_pip_install
from tests.server import make_config, start_server

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery"


def twine_upload(url: str, *files: Path, user: str = "alice", password: str = PASSWORD,
                 args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = isolated_env({"TWINE_NON_INTERACTIVE": "1"})
    for key in [k for k in env if k.startswith("TWINE_") and k != "TWINE_NON_INTERACTIVE"]:
        del env[key]
    cmd = [str(BIN / "twine"), "upload", "--disable-progress-bar", "--non-interactive", "--repository-url", url,
           "-u", user, "-p", password, *args, *map(str, files)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def uv_publish(url: str, *files: Path, user: str = "alice", password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "uv"), "publish", "--no-config", "--publish-url", url, "--username", user,
           "--password", password, "--trusted-publishing", "never", *map(str, files)]
    return subprocess.run(cmd, env=isolated_env(), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def ok(result) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def add_user(server, name: str = "alice", *, admin: bool = False) -> None:
    server.app.accounts.store.add_user(name, PASSWORD, admin=admin)


async def private_server(tmp_path, fake_upstream, **uploads):
    config = make_config(tmp_path, fake_upstream.url)
    if uploads:
        import attrs

        config = attrs.evolve(config, uploads=attrs.evolve(config.uploads, **uploads))
    server = await start_server(config)
    add_user(server)
    return server


@pytest_twisted.ensureDeferred
async def test_twine_upload_then_pip_and_uv_install(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream)
    try:
        dist = tmp_path / "dist"
        wheel = build_wheel(dist, "acme-tools", "1.0", requires_python=">=3.8")
        sdist = build_sdist(dist, "acme-tools", "1.0")
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel, sdist))
        fake_upstream.reset_log()
        for view in (server.simple, server.local):
            for install, target in ((pip_install, "pip"), (uv_pip_install, "uv")):
                out = tmp_path / f"{target}-{view.count('/')}"
                ok(await deferToThread(install, view, "acme-tools", target=out))
                assert (out / "acme_tools" / "__init__.py").read_text().strip().endswith('"1.0"')
        assert not [r for r in fake_upstream.requests if "acme" in r[1]]

        response = await treq.get(server.simple + "acme-tools/",
                                  headers={"accept": ["application/vnd.pypi.simple.v1+json"]})
        page = json.loads(await treq.content(response))
        assert "tracks" not in page["meta"]
        by_name = {f["filename"]: f for f in page["files"]}
        assert by_name[wheel.name]["requires-python"] == ">=3.8"
        assert by_name[wheel.name]["upload-time"].endswith("Z")
        assert "sha256" in by_name[wheel.name]["core-metadata"]
        response = await treq.get(server.root + f"/files/acme-tools/{wheel.name}.metadata")
        from tests.builders import wheel_metadata

        assert await treq.content(response) == wheel_metadata(wheel)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_reupload_identical_is_ok_and_conflicting_is_409(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream)
    try:
        wheel = build_wheel(tmp_path / "a", "acme-tools", "1.0")
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel))
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel))  # safe retry
        other = build_wheel(tmp_path / "b", "acme-tools", "1.0", summary="different bytes")
        result = await deferToThread(twine_upload, server.root + "/legacy/", other)
        assert result.returncode != 0
        assert "409" in result.stdout + result.stderr
        assert "already exists" in (result.stdout + result.stderr).lower()
        # (twine 7 allows --skip-existing only against PyPI itself; the 409 with
        # "already exists" is what older twines and other clients key on.)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_uv_publish(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream)
    try:
        wheel = build_wheel(tmp_path / "dist", "acme-uv", "0.1")
        ok(await deferToThread(uv_publish, server.root + "/legacy/", wheel))
        ok(await deferToThread(uv_pip_install, server.simple, "acme-uv", target=tmp_path / "t"))
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_claimed_private_name_shadows_a_higher_upstream_version(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream, claim={"tinyproj": frozenset({"alice"})})
    try:
        wheel = build_wheel(tmp_path / "dist", "tinyproj", "1.5")
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel))
        fake_upstream.reset_log()
        for install in (pip_install, uv_pip_install):
            out = tmp_path / install.__name__
            ok(await deferToThread(install, server.simple, "tinyproj", target=out))
            assert (out / "tinyproj" / "__init__.py").read_text().strip().endswith('"1.5"')
        assert not [r for r in fake_upstream.requests if "tinyproj" in r[1]], fake_upstream.requests
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_unclaimed_name_that_exists_upstream_is_refused(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream)
    try:
        wheel = build_wheel(tmp_path / "dist", "tinyproj", "1.5")
        result = await deferToThread(twine_upload, server.root + "/legacy/", wheel)
        assert result.returncode != 0
        assert "403" in result.stdout + result.stderr
        record = await server.app.index.get_project("tinyproj")
        assert record is None or record.origin == "upstream"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_merged_private_name_lists_both(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream, claim={"tinyproj": frozenset({"alice"})},
                                  merge=frozenset({"tinyproj"}))
    try:
        wheel = build_wheel(tmp_path / "dist", "tinyproj", "1.5")
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel))
        response = await treq.get(server.simple + "tinyproj/",
                                  headers={"accept": ["application/vnd.pypi.simple.v1+json"]})
        names = {f["filename"] for f in json.loads(await treq.content(response))["files"]}
        assert wheel.name in names and "tinyproj-2.0-py3-none-any.whl" in names
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_credentials_required_and_checked(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream)
    try:
        server.app.accounts.store.add_user("bob", PASSWORD)
        response = await treq.post(server.root + "/legacy/", data={":action": "file_upload"})
        assert response.code == 401
        assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Basic")
        wheel = build_wheel(tmp_path / "dist", "acme-tools", "1.0")
        result = await deferToThread(twine_upload, server.root + "/legacy/", wheel, password="wrong password")
        assert result.returncode != 0
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel))  # alice owns acme-tools now
        wheel2 = build_wheel(tmp_path / "dist", "acme-tools", "2.0")
        result = await deferToThread(twine_upload, server.root + "/legacy/", wheel2, user="bob")
        assert result.returncode != 0 and "403" in result.stdout + result.stderr
        _, token = server.app.accounts.store.create_token("alice", description="ci")
        ok(await deferToThread(twine_upload, server.root + "/legacy/", wheel2, user="__token__", password=token))
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_yank_unyank_delete_over_http(tmp_path, fake_upstream):
    server = await private_server(tmp_path, fake_upstream)
    try:
        w1 = build_wheel(tmp_path / "dist", "acme-tools", "1.0")
        w2 = build_wheel(tmp_path / "dist", "acme-tools", "2.0")
        ok(await deferToThread(twine_upload, server.root + "/legacy/", w1, w2))
        auth = ("alice", PASSWORD)
        api = server.root + "/api/projects/acme-tools/"
        response = await treq.post(api + "2.0/yank", data={"reason": "bad build"}, auth=auth)
        assert response.code == 200, await treq.content(response)
        response = await treq.get(server.simple + "acme-tools/", headers={"accept": ["text/html"]})
        assert b'data-yanked="bad build"' in await treq.content(response)
        out = tmp_path / "t"
        ok(await deferToThread(pip_install, server.simple, "acme-tools", target=out))
        assert (out / "acme_tools" / "__init__.py").read_text().strip().endswith('"1.0"')
        response = await treq.post(api + "2.0/unyank", auth=auth)
        assert response.code == 200
        response = await treq.delete(api + w1.name, auth=auth)
        assert response.code == 200
        response = await treq.get(server.simple + "acme-tools/", headers={"accept": ["text/html"]})
        body = await treq.content(response)
        assert w1.name.encode() not in body and b"data-yanked" not in body
        result = await deferToThread(twine_upload, server.root + "/legacy/", w1)
        assert result.returncode != 0 and "409" in result.stdout + result.stderr  # a filename is used once
        response = await treq.post(api + "2.0/yank", auth=("alice", "nope"))
        assert response.code == 401
    finally:
        await server.stop()
