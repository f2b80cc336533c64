"""The lockers of the field through the server: poetry, pdm, pip-tools, uv pip compile.

Each test proves the files came through the server under test: the lock
names the fake upstream's own sha256 for every file, the fake upstream saw
only the server's requests (its User-Agent, never the tool's), and the
server's counters show the downloads.  The tools run with a private home
(tests/clients.py: ``locker_env``), blind to this machine's configuration.

The ``--require-hashes`` flow is the air-gapped one: the server is filled
ahead (``POST /requirements.txt``), the upstream is stopped, and then a
hashed requirements file is compiled and installed from the server alone.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.clients import PDM, PIP_COMPILE, POETRY, UV, isolated_env, locker_env, run_tool
from tests.server import make_config, start_server

pytestmark = pytest.mark.integration

#: The files ``depproj`` pulls in on this interpreter (tests/conftest.py: populate).
WHEELS = {"depproj-1.0-py3-none-any.whl", "tinyproj-2.0-py3-none-any.whl"}


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def only_the_server_asked(fake_upstream) -> None:
    agents = {h.get("user-agent", "") for _, _, h in fake_upstream.requests}
    assert agents and all(a.startswith("pypicache") for a in agents), agents


#: The PEP 658 files the server fetches for the resolution.
METADATA = {f"/files/{w}.metadata" for w in WHEELS}


def upstream_gets(fake_upstream, prefix: str) -> set[str]:
    """The paths the fake upstream answered, each asserted to be asked once."""
    paths = [p for m, p, _ in fake_upstream.requests if m == "GET" and p.startswith(prefix)]
    assert len(paths) == len(set(paths)), paths
    return set(paths)


def make_venv(path: Path) -> Path:
    """An empty in-project venv for the tool to install into (never the test's own)."""
    ok(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], capture_output=True, text=True))
    return path


def site_packages(venv: Path) -> set[str]:
    return {p.name.split("-")[0].lower() for p in venv.glob("lib/python*/site-packages/*.dist-info")}


def lock_hashes(lock: dict) -> dict[str, str]:
    """filename -> sha256 from a poetry.lock or pdm.lock."""
    found = {}
    for package in lock["package"]:
        for entry in package.get("files", ()):
            name = entry.get("file") or entry.get("url", "").rsplit("/", 1)[-1]
            algo, _, digest = entry["hash"].partition(":")
            assert algo == "sha256", entry
            found[name] = digest
    return found


@pytest_twisted.ensureDeferred
async def test_poetry_lock_and_install(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        project = tmp_path / "app"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            '[project]\nname = "app"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = ["depproj"]\n\n'
            "[tool.poetry]\npackage-mode = false\n\n"
            f'[[tool.poetry.source]]\nname = "pypicache"\nurl = "{server.simple}"\npriority = "primary"\n'
        )
        venv = make_venv(project / ".venv")
        env = locker_env(tmp_path / "home")

        ok(await deferToThread(run_tool, [str(POETRY), "lock"], cwd=project, env=env))
        lock = tomllib.loads((project / "poetry.lock").read_text())
        assert {p["name"] for p in lock["package"]} == {"depproj", "tinyproj"}
        hashes = lock_hashes(lock)
        assert hashes and all(digest == fake_upstream.sha256(name) for name, digest in hashes.items())

        ok(await deferToThread(run_tool, [str(POETRY), "install", "--no-root"], cwd=project, env=env))
        assert site_packages(venv) == {"depproj", "tinyproj"}
        assert upstream_gets(fake_upstream, "/files/") == {f"/files/{w}" for w in WHEELS} | METADATA
        only_the_server_asked(fake_upstream)
        assert server.app.stats.file_misses >= 2
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pdm_lock_and_install(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        project = tmp_path / "app"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            '[project]\nname = "app"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = ["depproj"]\n\n'
            "[tool.pdm]\ndistribution = false\n\n"
            f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{server.simple}"\n'
        )
        venv = make_venv(project / ".venv")
        env = {**locker_env(tmp_path / "home"), "PDM_PYTHON": str(venv / "bin" / "python")}

        ok(await deferToThread(run_tool, [str(PDM), "lock"], cwd=project, env=env))
        lock = tomllib.loads((project / "pdm.lock").read_text())
        assert {p["name"] for p in lock["package"]} == {"depproj", "tinyproj"}
        hashes = lock_hashes(lock)
        assert hashes and all(digest == fake_upstream.sha256(name) for name, digest in hashes.items())

        ok(await deferToThread(run_tool, [str(PDM), "install", "--frozen-lockfile"], cwd=project, env=env))
        assert site_packages(venv) == {"depproj", "tinyproj"}
        assert upstream_gets(fake_upstream, "/files/") == {f"/files/{w}" for w in WHEELS} | METADATA
        only_the_server_asked(fake_upstream)
        assert server.app.stats.file_misses >= 2
    finally:
        await server.stop()
