"""The lockers of the field through the server: poetry, pdm, pip-tools, uv pip compile.

Each test proves the files came through the server under test: the lock
names the fake upstream's own sha256 for every file, the fake upstream saw
only the server's requests (its User-Agent, never the tool's), and the
server's counters show the downloads.  The tools run with a private home
(tests/clients.py: ``locker_env``), blind to this machine's configuration.

Each lock is then installed again with the upstream stopped, from what the
server holds.  The ``--require-hashes`` flow is the air-gapped one: the server is filled
ahead (``POST /requirements.txt``), the upstream is stopped, and then a
hashed requirements file is compiled and installed from the server alone.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.builders import build_wheel
from tests.clients import PDM, PIP_COMPILE, POETRY, UV, locker_env, run_tool
from tests.server import free_port, make_config, start_server
from tests.uploads import PASSWORD, cheap_accounts

pytestmark = pytest.mark.integration

TWINE = Path(sys.executable).parent / "twine"
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


def need(tool: Path) -> None:
    """Skip, naming the tool, when the ``test`` extra did not install it."""
    if not tool.exists():
        pytest.skip(f"{tool.name} is not installed beside {sys.executable} (pip install -e '.[test]')")


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


#: How each tool is pointed at the server alone (poetry: README's command; pdm:
#: README's table, named "pypi" to replace the default), locks, and installs
#: the lock (non-package mode: the project itself is not built).
LOCKERS = {
    "poetry": (
        "[tool.poetry]\npackage-mode = false\n",
        "poetry.lock",
        lambda index: [
            [str(POETRY), "source", "add", "--priority=primary", "pypicache", index],
            [str(POETRY), "lock"],
            [str(POETRY), "install", "--no-root"],
        ],
    ),
    "pdm": (
        '[tool.pdm]\ndistribution = false\n\n[[tool.pdm.source]]\nname = "pypi"\nurl = "{index}"\n',
        "pdm.lock",
        lambda index: [[str(PDM), "lock"], [str(PDM), "install", "--frozen-lockfile"]],
    ),
}


async def lock_and_install(tool: str, tmp_path: Path, index: str, dependency: str) -> tuple[dict, set[str]]:
    """Lock a one-dependency project against ``index`` and install it into the
    project's own venv: the lock (parsed) and the distributions installed."""
    source, lock_name, commands = LOCKERS[tool]
    project = tmp_path / f"app-{tool}"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "app"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = ["{dependency}"]\n'
        + "\n" + source.format(index=index)
    )
    for argv in commands(index):
        ok(await deferToThread(run_tool, argv, cwd=project, env=env_in(project, tmp_path)))
    return tomllib.loads((project / lock_name).read_text()), site_packages(project / ".venv")


def env_in(project: Path, tmp_path: Path) -> dict[str, str]:
    """The tool's environment, with a new empty venv in the project."""
    venv = make_venv(project / ".venv")
    return {**locker_env(tmp_path / "home"), "PDM_PYTHON": str(venv / "bin" / "python")}


async def install_the_lock_again(tool: str, tmp_path: Path) -> set[str]:
    """Install the project's lock once more, into a new venv, with a new (empty) cache."""
    project = tmp_path / f"app-{tool}"
    shutil.rmtree(project / ".venv")
    shutil.rmtree(tmp_path / "home")
    ok(await deferToThread(run_tool, LOCKERS[tool][2]("")[-1], cwd=project, env=env_in(project, tmp_path)))
    return site_packages(project / ".venv")


@pytest.mark.parametrize("tool", sorted(LOCKERS))
@pytest_twisted.ensureDeferred
async def test_lock_and_install_through_the_server(tool, tmp_path, fake_upstream):
    need(POETRY if tool == "poetry" else PDM)
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        lock, installed = await lock_and_install(tool, tmp_path, server.simple, "depproj")
        assert {p["name"] for p in lock["package"]} == {"depproj", "tinyproj"}
        # Every file of each locked version, with the upstream's own sha256.
        assert lock_hashes(lock) == {
            name: fake_upstream.sha256(name)
            for name in ("depproj-1.0-py3-none-any.whl", "tinyproj-2.0-py3-none-any.whl", "tinyproj-2.0.tar.gz")
        }
        assert installed == {"depproj", "tinyproj"}
        # Resolved from PEP 658 files, then each wheel fetched once, all by the server.
        assert upstream_gets(fake_upstream, "/files/") == {f"/files/{w}" for w in WHEELS} | METADATA
        only_the_server_asked(fake_upstream)
        assert server.app.stats.file_misses >= 2

        # The upstream gone, the lock installs again from what the server holds.
        await fake_upstream.stop()
        hits = server.app.stats.file_hits
        assert await install_the_lock_again(tool, tmp_path) == {"depproj", "tinyproj"}
        assert server.app.stats.file_hits - hits == 2
    finally:
        await server.stop()


@pytest.mark.parametrize("tool", sorted(LOCKERS))
@pytest_twisted.ensureDeferred
async def test_private_upload_is_locked_and_installed(tool, tmp_path, fake_upstream):
    need(POETRY if tool == "poetry" else PDM)
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        cheap_accounts(server).add_user("alice", PASSWORD)
        wheel = build_wheel(tmp_path / "dist", "acme-tools", "1.0", requires_dist=["tinyproj<2"])
        ok(await deferToThread(run_tool, [
            str(TWINE), "upload", "--disable-progress-bar", "--non-interactive",
            "--repository-url", server.root + "/legacy/", "-u", "alice", "-p", PASSWORD, str(wheel),
        ], cwd=tmp_path, env={**locker_env(tmp_path / "home"), "TWINE_NON_INTERACTIVE": "1"}))
        fake_upstream.reset_log()

        lock, installed = await lock_and_install(tool, tmp_path, server.simple, "acme-tools")
        assert {p["name"]: p["version"] for p in lock["package"]} == {"acme-tools": "1.0", "tinyproj": "1.0"}
        assert lock_hashes(lock)[wheel.name] == hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert installed == {"acme_tools", "tinyproj"}
        assert not [path for _, path, _ in fake_upstream.requests if "acme" in path]  # private: never asked upstream
    finally:
        await server.stop()


def requirement_hashes(text: str) -> dict[str, set[str]]:
    """``name==version`` -> its ``--hash=sha256:`` values, from a compiled requirements file."""
    found: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=\S)", text.replace("\\\n", " ")):
        pin = re.match(r"([A-Za-z0-9_.-]+==[^\s;]+)", block)
        if pin:
            found[pin.group(1).lower()] = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return found


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


@pytest_twisted.ensureDeferred
async def test_require_hashes_from_a_prefilled_server_with_the_upstream_stopped(tmp_path, fake_upstream):
    need(PIP_COMPILE)
    # public_url: pip-compile takes each file's sha256 from the JSON API
    # (/pypi/<name>/json) only when its URLs are absolute and equal the pages'
    # links; otherwise it downloads every file of each pinned version to hash
    # it, and the sdists were never fetched.
    port = await free_port()
    config = make_config(tmp_path, fake_upstream.url, page_ttl=0, public_url=f"http://127.0.0.1:{port}/")
    server = await start_server(attrs.evolve(config, prefetch=attrs.evolve(config.prefetch, open=True)), port)
    try:
        # Fill the server ahead, then take the upstream away: every page is
        # now a stale copy, every file the stored one.
        response = await treq.post(server.root + "/requirements.txt", b"depproj\n",
                                   headers={"Content-Type": "text/plain"})
        report = await response.json()
        assert response.code == 200, report
        assert {f["filename"] for f in report["files"] if f["status"] == "fetched"} == WHEELS
        sha256 = {name: fake_upstream.sha256(name) for name in fake_upstream.files}
        await fake_upstream.stop()
        hits = server.app.stats.file_hits

        work = tmp_path / "work"
        work.mkdir()
        (work / "requirements.in").write_text("depproj\n")
        env = locker_env(tmp_path / "home")
        pip_index = ("--isolated", "--no-cache-dir", "--disable-pip-version-check", "--index-url", server.simple)
        expected = {
            "depproj==1.0": {sha256["depproj-1.0-py3-none-any.whl"]},
            "tinyproj==2.0": {sha256["tinyproj-2.0-py3-none-any.whl"], sha256["tinyproj-2.0.tar.gz"]},
        }

        # pip-tools: compile with hashes, then pip download and pip install by them.
        ok(await deferToThread(run_tool, [
            str(PIP_COMPILE), "--generate-hashes", "--no-header", "--no-emit-index-url",
            "--cache-dir", str(tmp_path / "piptools-cache"), "--index-url", server.simple,
            "--pip-args", "--isolated --no-cache-dir", "-o", "requirements.txt", "requirements.in",
        ], cwd=work, env=env, timeout=60))
        assert requirement_hashes((work / "requirements.txt").read_text()) == expected

        ok(await deferToThread(run_tool, pip("download", *pip_index, "--require-hashes", "-r", "requirements.txt",
                                             "-d", str(tmp_path / "dl")), cwd=work, env=env))
        downloaded = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "dl").iterdir()}
        assert downloaded == {name: sha256[name] for name in WHEELS}

        ok(await deferToThread(run_tool, pip("install", *pip_index, "--require-hashes", "-r", "requirements.txt",
                                             "--target", str(tmp_path / "pip-target")), cwd=work, env=env))
        assert {p.name.split("-")[0] for p in (tmp_path / "pip-target").glob("*.dist-info")} == {"depproj", "tinyproj"}

        # uv: the same two steps.
        uv = (str(UV), "pip")
        uv_opts = ("--no-cache", "--no-config", "--python", sys.executable, "--index-url", server.simple)
        ok(await deferToThread(run_tool, [*uv, "compile", *uv_opts, "--generate-hashes", "--no-header",
                                          "-o", "uv-requirements.txt", "requirements.in"], cwd=work, env=env))
        assert requirement_hashes((work / "uv-requirements.txt").read_text()) == expected
        ok(await deferToThread(run_tool, [*uv, "install", *uv_opts, "--require-hashes", "-r", "uv-requirements.txt",
                                          "--target", str(tmp_path / "uv-target")], cwd=work, env=env))
        assert {p.name.split("-")[0] for p in (tmp_path / "uv-target").glob("*.dist-info")} == {"depproj", "tinyproj"}

        # Every file came from the server's store: 2 per download or install.
        assert server.app.stats.file_hits - hits >= 6
        assert server.app.stats.pages_stale >= 1
    finally:
        await server.stop()
