"""Pre-filling end to end: resolution of ranges over the fake upstream, the
``pypicache prefetch`` command, the ``POST /requirements.txt`` route and its
jobs, and the proof that matters: after a pre-fill, pip installs (and
``pip download --require-hashes`` works) from the server with the upstream
stopped."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from pypicache.services.environments import environments
from pypicache.services.lockfiles import parse_any, parse_requirements
from pypicache.services.prefetch import Prefetcher
from tests.builders import build_sdist, build_wheel
from tests.clients import isolated_env, pip_install
from tests.server import make_config, start_server
from tests.uploads import PASSWORD, cheap_accounts

TIMEOUT = 60


def add_projects(fu: Any, dest: Path) -> None:
    """Beyond conftest's populate: extras, markers, platform wheels, no PEP 658.

    * ``webby`` 1.0 needs ``tinyproj>=1.0``, and ``depproj`` with extra
      ``deps``; 2.0 needs a Python that does not exist yet;
    * ``platproj`` 1.0: a CPython 3.11 manylinux wheel, a 3.12 Windows one, an sdist;
    * ``nometa`` 1.0: a wheel without PEP 658 metadata, needing ``tinyproj<2``.
    """
    fu.add(build_wheel(dest, "webby", "1.0", requires_dist=[
        "tinyproj>=1.0", "depproj; extra == 'deps'", "nosuchproject; python_version < '3'"]))
    fu.add(build_wheel(dest, "webby", "2.0", requires_python=">=3.99"))
    pure = build_wheel(dest / "plat", "platproj", "1.0")
    for tag in ("cp311-cp311-manylinux_2_17_x86_64", "cp312-cp312-win_amd64"):
        fu.add(shutil.copy(pure, dest / f"platproj-1.0-{tag}.whl"))
    fu.add(build_sdist(dest, "platproj", "1.0"))
    fu.add(build_wheel(dest, "nometa", "1.0", requires_dist=["tinyproj<2"]), metadata=False)


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path, fake_upstream: Any):
    add_projects(fake_upstream, tmp_path / "more-dists")
    running = await start_server(make_config(tmp_path, fake_upstream.url))
    yield running
    await running.stop()


def prefetcher(server: Any) -> Prefetcher:
    from twisted.internet import reactor

    app = server.app
    return Prefetcher(mirror=app.mirror, downloader=app.downloader, storage=app.storage, reactor=reactor)


def by_file(report: Any) -> dict[str | None, tuple[str, str | None]]:
    return {f.filename or f.project: (f.status, f.reason) for f in report.files}


async def stored(server: Any, project: str) -> set[str]:
    record = await server.app.index.get_project(project)
    return {f.filename for f in record.files if f.stored} if record else set()


# ------------------------------------------------------------------ service


@pytest_twisted.ensureDeferred
async def test_ranges_extras_and_markers_resolve_transitively(server: Any, fake_upstream: Any) -> None:
    report = await prefetcher(server).run(parse_requirements("webby[deps]>=1\ntinyproj>=1,<3\n"), environments())
    assert by_file(report) == {
        "webby-1.0-py3-none-any.whl": ("fetched", None),  # 2.0 needs Python 3.99
        "depproj-1.0-py3-none-any.whl": ("fetched", None),  # the extra's dependency
        "tinyproj-2.0-py3-none-any.whl": ("fetched", None),  # the wheel, not the sdist
    }
    assert report.ok and report.summary()["fetched"] == 3
    assert await stored(server, "tinyproj") == {"tinyproj-2.0-py3-none-any.whl"}
    assert fake_upstream.count("/files/webby-1.0-py3-none-any.whl.metadata") == 1  # PEP 658, read once
    assert fake_upstream.count("nosuchproject") == 0  # its marker is false

    fake_upstream.reset_log()
    again = await prefetcher(server).run(parse_requirements("webby[deps]>=1\n"), environments())
    assert {status for status, _ in by_file(again).values()} == {"held"}
    assert fake_upstream.count("/files/") == 0


@pytest_twisted.ensureDeferred
async def test_best_file_per_target_environment(server: Any) -> None:
    envs = environments(["3.11", "3.12"], ["manylinux_2_28_x86_64", "win_amd64"])
    report = await prefetcher(server).run(parse_requirements("platproj\n"), envs)
    assert by_file(report) == {
        "platproj-1.0-cp311-cp311-manylinux_2_17_x86_64.whl": ("fetched", None),
        "platproj-1.0-cp312-cp312-win_amd64.whl": ("fetched", None),
        "platproj-1.0.tar.gz": ("fetched", None),  # 3.11 on Windows, 3.12 on Linux: no wheel fits
    }
    assert len(report.summary()["environments"]) == 4


@pytest_twisted.ensureDeferred
async def test_metadata_read_from_the_wheel_without_pep658(server: Any, fake_upstream: Any) -> None:
    report = await prefetcher(server).run(parse_requirements("nometa\n"), environments())
    assert by_file(report) == {"nometa-1.0-py3-none-any.whl": ("fetched", None),
                               "tinyproj-1.0-py3-none-any.whl": ("fetched", None)}
    assert fake_upstream.count("/files/nometa-1.0-py3-none-any.whl") == 1  # downloaded once, read, kept


@pytest_twisted.ensureDeferred
async def test_hashes_choose_the_file_and_failures_say_why(server: Any, fake_upstream: Any) -> None:
    sdist = fake_upstream.sha256("tinyproj-1.0.tar.gz")
    text = f"tinyproj==1.0 --hash=sha256:{sdist}\nnot-on-the-index\ndepproj>=5\n-e .\n"
    report = await prefetcher(server).run(parse_requirements(text), environments())
    files = by_file(report)
    assert files["tinyproj-1.0.tar.gz"] == ("fetched", None)
    assert files["not-on-the-index"] == ("failed", "no such project on the index")
    assert files["depproj"][0] == "failed" and "depproj>=5" in files["depproj"][1]
    assert any(r and "editable" in r for _, r in files.values())
    assert not report.ok and report.summary()["failed"] == 3


@pytest_twisted.ensureDeferred
async def test_lock_files_name_exact_files(server: Any, fake_upstream: Any) -> None:
    wheel, sdist = "tinyproj-1.0-py3-none-any.whl", "tinyproj-1.0.tar.gz"
    lock = f"""\
version = 1
requires-python = ">=3.11"

[[package]]
name = "tinyproj"
version = "1.0"
source = {{ registry = "https://pypi.org/simple" }}
sdist = {{ url = "https://x.invalid/{sdist}", hash = "sha256:{fake_upstream.sha256(sdist)}" }}
wheels = [{{ url = "https://x.invalid/{wheel}", hash = "sha256:{fake_upstream.sha256(wheel)}" }}]

[[package]]
name = "depproj"
version = "1.0"
source = {{ registry = "https://pypi.org/simple" }}
wheels = [{{ url = "https://x.invalid/depproj-1.0-py3-none-any.whl", hash = "sha256:{'0' * 64}" }}]
"""
    report = await prefetcher(server).run(parse_any(lock, label="uv.lock"), environments())
    files = by_file(report)
    assert files[wheel] == ("fetched", None) and sdist not in files  # the wheel fits: no sdist needed
    assert files["depproj-1.0-py3-none-any.whl"][0] == "failed"
    assert "hash" in files["depproj-1.0-py3-none-any.whl"][1]
    assert fake_upstream.count("/simple/") >= 2 and fake_upstream.count("metadata") == 0  # no resolution


# ------------------------------------------------------------------ command


def write_config(tmp_path: Path, upstream_url: str) -> Path:
    config = tmp_path / "pypicache.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n\n[upstream]\nurl = "{upstream_url}"\n')
    return config


async def run_command(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pypicache.cli.admin", *argv]
    return await deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=TIMEOUT,
                               stdin=subprocess.DEVNULL)


@pytest_twisted.ensureDeferred
async def test_command_plain_lines_summary_and_exit_status(tmp_path: Path, fake_upstream: Any) -> None:
    config = write_config(tmp_path, fake_upstream.url)
    (tmp_path / "good.txt").write_text("depproj>=1\n")
    result = await run_command("--config", str(config), "prefetch", str(tmp_path / "good.txt"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split()[:2] for line in lines[:-1]) == [
        ["fetched", "depproj"], ["fetched", "tinyproj"]]
    assert lines[-1].startswith("2 fetched") and "0 failed" in lines[-1]

    (tmp_path / "bad.txt").write_text("-r good.txt\nnot-on-the-index\n")
    result = await run_command("--config", str(config), "prefetch", str(tmp_path / "bad.txt"),
                               "--python", "3.12", "--platform", "win_amd64")
    assert result.returncode == 1
    assert "held     depproj depproj-1.0-py3-none-any.whl" in result.stdout
    assert "failed   not-on-the-index: no such project on the index" in result.stdout
    assert "1 failed, for python 3.12 on win_amd64" in result.stdout

    result = await run_command("--config", str(config), "prefetch", str(tmp_path / "good.txt"), "--python", "x")
    assert result.returncode == 2 and "python" in result.stderr
    result = await run_command("--config", str(config), "prefetch", str(tmp_path / "missing.txt"))
    assert result.returncode == 1 and "cannot read" in result.stderr


# -------------------------------------------------------------------- route


@pytest_twisted.async_yield_fixture
async def start(tmp_path: Path, fake_upstream: Any):
    started: list[Any] = []

    async def start_(**prefetch: Any) -> Any:
        config = make_config(tmp_path, fake_upstream.url)
        config = attrs.evolve(config, prefetch=attrs.evolve(config.prefetch, **prefetch))
        running = await start_server(config)
        cheap_accounts(running).add_user("alice", PASSWORD)
        started.append(running)
        return running

    yield start_
    for running in started:
        await running.stop()


async def post(server: Any, body: bytes | None = None, *, form: dict[str, str] | None = None,
               auth: Any = ("alice", PASSWORD), query: str = "") -> tuple[int, Any, Any]:
    kwargs: dict[str, Any] = {"timeout": TIMEOUT, "persistent": False}
    if auth is not None:
        kwargs["auth"] = auth
    if form is not None:
        kwargs["data"] = {k: v for k, v in form.items() if k != "requirements"}
        kwargs["files"] = {"requirements": ("requirements.txt", io.BytesIO(form["requirements"].encode()))}
    else:
        kwargs["data"] = body
        kwargs["headers"] = {"content-type": ["text/plain"]}
    response = await treq.post(server.root + "/requirements.txt" + query, **kwargs)
    text = (await treq.content(response)).decode()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text
    return response.code, payload, response.headers


@pytest_twisted.ensureDeferred
async def test_route_needs_credentials_and_answers_json(start: Any) -> None:
    server = await start()
    code, body, headers = await post(server, form={"requirements": "depproj\n"}, auth=None)
    assert code == 401 and headers.getRawHeaders("www-authenticate")
    code, body, _ = await post(server, form={"requirements": "depproj\n"}, auth=("alice", "wrong"))
    assert code == 401
    code, body, _ = await post(server, form={"requirements": "depproj\n", "python": "3.12",
                                             "platform": "win_amd64"})
    assert code == 200, body
    assert {(f["filename"], f["status"]) for f in body["files"]} == {
        ("depproj-1.0-py3-none-any.whl", "fetched"), ("tinyproj-2.0-py3-none-any.whl", "fetched")}
    assert body["summary"]["fetched"] == 2 and body["summary"]["environments"] == ["python 3.12 on win_amd64"]
    # GET and HEAD say how to use it.
    for method in ("GET", "HEAD"):
        response = await treq.request(method, server.root + "/requirements.txt", persistent=False)
        await treq.content(response)
        assert response.code == 405 and response.headers.getRawHeaders("allow") == ["POST"]


@pytest_twisted.ensureDeferred
async def test_route_open_raw_body_and_bounds(start: Any) -> None:
    server = await start(open=True, max_body=2048, max_requirements=2)
    code, body, _ = await post(server, b"tinyproj==1.0\n", auth=None, query="?python=3.12")
    assert code == 200 and [f["filename"] for f in body["files"]] == ["tinyproj-1.0-py3-none-any.whl"]
    code, body, _ = await post(server, b"# padding\n" * 400, auth=None)
    assert code == 413
    code, body, _ = await post(server, b"a\nb\nc\n", auth=None)
    assert code == 413 and "too many requirements" in body
    code, body, _ = await post(server, b"a\n", auth=None, query="?platform=Bad!")
    assert code == 400


@pytest_twisted.ensureDeferred
async def test_large_set_runs_as_a_job(start: Any) -> None:
    from twisted.internet import reactor, task

    server = await start(job_threshold=1)
    code, body, headers = await post(server, form={"requirements": "depproj\ntinyproj<2\n"})
    assert code == 202, body
    (location,) = headers.getRawHeaders("location")
    assert location == body["status_url"] and location.startswith("/requirements/jobs/")
    for _ in range(200):
        response = await treq.get(server.root + location, auth=("alice", PASSWORD), persistent=False)
        status = json.loads(await treq.content(response))
        if status["status"] != "running":
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert status["status"] == "done", status
    assert {f["filename"] for f in status["files"]} == {"depproj-1.0-py3-none-any.whl",
                                                        "tinyproj-1.0-py3-none-any.whl"}
    assert status["progress"] == {"files_planned": 2, "files_done": 2}
    response = await treq.get(server.root + location, persistent=False)
    await treq.content(response)
    assert response.code == 401
    response = await treq.get(server.root + "/requirements/jobs/nope", auth=("alice", PASSWORD),
                              persistent=False)
    await treq.content(response)
    assert response.code == 404


# ------------------------------------------------------------- the proof


def pip_download(index_url: str, requirements: Path, dest: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir", "--disable-pip-version-check",
           "--no-input", "--index-url", index_url, "--require-hashes", "-r", str(requirements), "-d", str(dest)]
    return subprocess.run(cmd, env=isolated_env(), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_prefilled_server_installs_with_the_upstream_stopped(start: Any, fake_upstream: Any,
                                                                   tmp_path: Path) -> None:
    add_projects(fake_upstream, tmp_path / "more-dists")
    server = await start()
    code, body, _ = await post(server, form={"requirements": "webby>=1\ndepproj>=1\nnometa\n"})
    assert code == 200 and body["summary"]["failed"] == 0, body
    await fake_upstream.stop()

    result = await deferToThread(pip_install, server.local, "webby", "depproj", "nometa", target=tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    installed = {p.name.split("-")[0] for p in (tmp_path / "site").glob("*.dist-info")}
    assert installed == {"webby", "depproj", "tinyproj", "nometa"}

    # pip-compile style: every file pinned with its hash, against the proxy view (upstream gone).
    pins = {f["project"]: f for f in body["files"]}
    hashed = tmp_path / "hashed.txt"
    hashed.write_text("".join(f"{name}=={f['version']} --hash=sha256:{fake_upstream.sha256(f['filename'])}\n"
                              for name, f in pins.items()))
    result = await deferToThread(pip_download, server.simple, hashed, tmp_path / "downloads")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == sorted(f["filename"] for f in pins.values())


def test_progress_bar_on_a_terminal() -> None:
    from pypicache.cli.prefetch import Progress
    from pypicache.model import FileRecord
    from pypicache.services.prefetch import FileResult, Report

    out, err = io.StringIO(), io.StringIO()
    progress = Progress(out, err, bar=True)
    progress.plan([("a", FileRecord("a-1-py3-none-any.whl", size=2048)), ("b", FileRecord("b-1.tar.gz", size=1024))])
    results = [FileResult("a", "a-1-py3-none-any.whl", "fetched", size=2048),
               FileResult("b", "b-1.tar.gz", "failed", "upstream failed", size=1024)]
    for result in results:
        progress.file(result)
    progress.close(Report(files=results, environments=["python 3.12 on native"]))
    assert "2/2 files" in err.getvalue() and "3.00k" in err.getvalue()  # files and bytes
    assert "failed   b b-1.tar.gz: upstream failed" in err.getvalue()
    assert out.getvalue() == "1 fetched (2.0 KiB), 0 already held, 1 failed, for python 3.12 on native in 0.0 s\n"


@pytest_twisted.ensureDeferred
async def test_pylock_markers_and_files_that_fit_no_environment(server: Any, fake_upstream: Any) -> None:
    win = "platproj-1.0-cp312-cp312-win_amd64.whl"
    lock = f"""\
lock-version = "1.0"
created-by = "test"

[[packages]]
name = "platproj"
version = "1.0"
wheels = [{{name = "{win}", hashes = {{sha256 = "{fake_upstream.sha256(win)}"}}}}]

[[packages]]
name = "depproj"
version = "1.0"
marker = "sys_platform == 'nonesuch'"
wheels = [{{name = "depproj-1.0-py3-none-any.whl"}}]
"""
    report = await prefetcher(server).run(parse_any(lock, label="pylock.toml"),
                                          environments(["3.12"], ["manylinux_2_28_x86_64"]))
    assert by_file(report) == {"platproj": ("failed", "no file of platproj 1.0 fits python 3.12 on "
                                                      "manylinux_2_28_x86_64")}
    report = await prefetcher(server).run(parse_any(lock, label="pylock.toml"), environments(["3.12"], ["win_amd64"]))
    assert by_file(report) == {win: ("fetched", None)}
