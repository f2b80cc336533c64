"""Offline bundles end to end: ``pypicache export`` from a server filled through
the fake upstream (and a private upload), ``pypicache import`` into a fresh
data directory, real pip and uv installing from a server on it with the
upstream gone; ``export --static`` served by ``python -m http.server``; and
the refusals: tampered and hostile bundles, dependency-confusion clashes,
each leaving storage and index as they were."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from pypicache.services import bundles
from pypicache.services.environments import environments
from pypicache.services.lockfiles import parse_requirements
from pypicache.services.prefetch import Prefetcher
from tests.clients import isolated_env, pip_install, uv_pip_install
from tests.server import make_config, start_server
from tests.uploads import NAME as PRIVATE, WHEEL_NAME as PRIVATE_WHEEL, form, good_wheel, post

TIMEOUT = 60
SET = "depproj\nyanked-proj==1.0\n"


def write_config(path: Path, data_dir: Path, upstream_url: str, extra: str = "") -> Path:
    path.write_text(f'[server]\ndata_dir = "{data_dir}"\n\n[upstream]\nurl = "{upstream_url}"\n{extra}')
    return path


async def run_command(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pypicache.cli.admin", *argv]
    return await deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=TIMEOUT,
                               stdin=subprocess.DEVNULL, env=isolated_env())


async def filled(start: Any, tmp_path: Path) -> Any:
    """Server A: ``depproj`` (and tinyproj 2.0) and the yanked project through
    the fake upstream, plus the private upload ``acme-tools``."""
    from twisted.internet import reactor

    server = await start()
    app = server.app
    prefetcher = Prefetcher(mirror=app.mirror, downloader=app.downloader, storage=app.storage, reactor=reactor)
    report = await prefetcher.run(parse_requirements(SET), environments())
    assert report.ok and report.summary()["fetched"] == 3, report.as_dict()
    answer = await post(server, form(good_wheel(tmp_path)))
    assert answer.code == 200, answer.body
    return server


async def state(app: Any) -> tuple[Any, ...]:
    names = await app.index.list_projects()
    return (tuple(names), tuple([await app.index.get_project(n) for n in names]),
            tuple(sorted(p.name for p in app.storage.root.rglob("*") if p.is_file())))


async def export_to(tmp_path: Path, server: Any, url: str, *argv: str) -> subprocess.CompletedProcess:
    config = write_config(tmp_path / "a.toml", tmp_path / "data", url)
    return await run_command("--config", str(config), "export", *argv)


# ------------------------------------------------------------- the proof


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_import_into_a_fresh_server_installs_with_pip_and_uv_offline(start: Any, fake_upstream: Any,
                                                                           tmp_path: Path) -> None:
    server = await filled(start, tmp_path)
    bundle = tmp_path / "set.tar.gz"
    (tmp_path / "req.txt").write_text(SET + f"{PRIVATE}\n")
    result = await export_to(tmp_path, server, fake_upstream.url, "--requirements", str(tmp_path / "req.txt"),
                             str(bundle))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split()[1:3] for line in lines[:-1]) == sorted([
        ["depproj", "depproj-1.0-py3-none-any.whl"], ["tinyproj", "tinyproj-2.0-py3-none-any.whl"],
        ["yanked-proj", "Yanked_Proj-1.0-py3-none-any.whl"], [PRIVATE, PRIVATE_WHEEL]])
    assert lines[-1].startswith("4 exported") and "of 4 project(s)" in lines[-1]
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and all(re.fullmatch(r"blobs/[0-9a-f]{64}", n) for n in names[1:])

    data_b = tmp_path / "b" / "data"
    config_b = write_config(tmp_path / "b.toml", data_b, fake_upstream.url)
    result = await run_command("--config", str(config_b), "import", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("4 imported")
    await fake_upstream.stop()

    target = await start_server(make_config(tmp_path / "b", fake_upstream.url))
    try:
        tiny = await target.app.index.get_project("tinyproj")
        (wheel,) = tiny.files
        assert wheel.origin == "upstream" and wheel.stored and wheel.metadata_stored and wheel.upload_time
        assert wheel.requires_python == ">=3.8"
        (yanked,) = (await target.app.index.get_project("yanked-proj")).files
        assert yanked.yanked and yanked.yanked_reason == "broken"
        private = await target.app.index.get_project(PRIVATE)
        assert private.origin == "local" and private.files[0].origin == "local"
        assert await target.app.index.used_filename(PRIVATE_WHEEL) == private.files[0].sha256

        for install in (pip_install, uv_pip_install):
            site = tmp_path / f"site-{install.__name__}"
            before = target.app.stats.file_hits
            result = await deferToThread(install, target.simple, "depproj", PRIVATE, target=site)
            assert result.returncode == 0, result.stdout + result.stderr
            assert {p.name.split("-")[0] for p in site.glob("*.dist-info")} == {"depproj", "tinyproj", "acme_tools"}
            assert target.app.stats.file_hits - before == 3  # every file came from the imported server
    finally:
        await target.stop()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_static_tree_served_by_http_server_installs_with_pip_and_uv(start: Any, fake_upstream: Any,
                                                                          tmp_path: Path) -> None:
    server = await filled(start, tmp_path)
    tree = tmp_path / "tree"
    result = await export_to(tmp_path, server, fake_upstream.url, "--static", str(tree))
    assert result.returncode == 0, result.stderr
    page = (tree / "simple" / "tinyproj" / "index.html").read_text()
    assert 'href="../../files/tinyproj/tinyproj-2.0-py3-none-any.whl#sha256=' in page
    assert 'data-requires-python="&gt;=3.8"' in page and 'data-core-metadata="sha256=' in page
    assert (tree / "files" / "tinyproj" / "tinyproj-2.0-py3-none-any.whl.metadata").is_file()
    assert 'data-yanked="broken"' in (tree / "simple" / "yanked-proj" / "index.html").read_text()
    doc = json.loads((tree / "simple" / "tinyproj" / "index.json").read_text())
    assert doc["files"][0]["url"] == "../../files/tinyproj/tinyproj-2.0-py3-none-any.whl"
    assert [p["name"] for p in json.loads((tree / "simple" / "index.json").read_text())["projects"]] == [
        PRIVATE, "depproj", "tinyproj", "yanked-proj"]
    # A second export replaces the tree (atomically); a foreign directory is refused.
    result = await export_to(tmp_path, server, fake_upstream.url, "--static", str(tree), "--project", "tinyproj")
    assert result.returncode == 0 and not (tree / "simple" / "depproj").exists()
    result = await export_to(tmp_path, server, fake_upstream.url, "--static", str(tmp_path))
    assert result.returncode == 1 and "is not a tree" in result.stderr
    result = await export_to(tmp_path, server, fake_upstream.url, "--static", str(tree))
    assert result.returncode == 0
    await fake_upstream.stop()

    http = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(tree)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=isolated_env())
    try:
        first = await deferToThread(http.stdout.readline)
        port = int(re.search(r"port (\d+)", first).group(1))
        url = f"http://127.0.0.1:{port}/simple/"
        for install in (pip_install, uv_pip_install):
            site = tmp_path / f"site-{install.__name__}"
            result = await deferToThread(install, url, "depproj", PRIVATE, target=site)
            assert result.returncode == 0, result.stdout + result.stderr
            assert {p.name.split("-")[0] for p in site.glob("*.dist-info")} == {"depproj", "tinyproj", "acme_tools"}
    finally:
        http.terminate()
        _, log = await deferToThread(http.communicate, timeout=10)
    for path in ("depproj/depproj-1.0-py3-none-any.whl", "tinyproj/tinyproj-2.0-py3-none-any.whl",
                 f"{PRIVATE}/{PRIVATE_WHEEL}"):
        assert log.count(f'"GET /files/{path} HTTP/1.1" 200') == 2  # pip's and uv's, through that web server


# -------------------------------------------------------------- refusals


@pytest_twisted.async_yield_fixture
async def pair(start: Any, fake_upstream: Any, tmp_path: Path):
    """(A filled, its full bundle's members, B empty)."""
    from twisted.internet import reactor

    source = await filled(start, tmp_path)
    records = await bundles.select_all(source.app.index)
    path = tmp_path / "all.tar"
    await bundles.export_bundle(records, source.app.storage, path, reactor=reactor,
                                threadpool=reactor.getThreadPool(), created="2026-01-01T00:00:00Z")
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    target = await start_server(make_config(tmp_path / "b", fake_upstream.url))
    yield source, members, target
    await target.stop()


def pack(path: Path, members: list[tuple[str, bytes]], *, kind: bytes = tarfile.REGTYPE,
         declared: dict[str, int] | None = None, links: dict[str, str] | None = None) -> Path:
    with open(path, "wb") as fh:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = (declared or {}).get(name, len(data)), kind
            if name in (links or {}):
                info.type, info.linkname, info.size = tarfile.SYMTYPE, links[name], 0
                fh.write(info.tobuf(tarfile.PAX_FORMAT))
                continue
            fh.write(info.tobuf(tarfile.PAX_FORMAT))
            if name in (declared or {}):
                break  # a header claiming more than follows
            fh.write(data + b"\0" * (-len(data) % 512))
        fh.write(b"\0" * 1024)
    return path


def redigest(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "digest"}
    doc["digest"] = hashlib.sha256(bundles._canonical(body)).hexdigest()
    return bundles._canonical(doc)


async def refused(target: Any, path: Path, tmp_path: Path, match: str) -> None:
    from twisted.internet import reactor

    before = await state(target.app)
    with pytest.raises(bundles.BundleError, match=match):
        await bundles.import_bundle(path, target.app.storage, target.app.index, reactor=reactor,
                                    threadpool=reactor.getThreadPool(), staging=tmp_path / f"stage-{path.name}")
    assert await state(target.app) == before
    assert not (tmp_path / f"stage-{path.name}").exists()


@pytest_twisted.ensureDeferred
async def test_tampered_bundles_are_refused_and_change_nothing(pair: Any, tmp_path: Path) -> None:
    from twisted.internet import reactor

    _, members, target = pair
    manifest, blobs = members[0], members[1:]
    name, data = blobs[0]
    flipped = data[:10] + bytes([data[10] ^ 1]) + data[11:]
    await refused(target, pack(tmp_path / "flip.tar", [manifest, (name, flipped), *blobs[1:]]), tmp_path,
                  "does not hash to its name")
    doc = json.loads(manifest[1])
    doc["projects"][0]["files"][0]["yanked"] = True  # digest left as it was
    await refused(target, pack(tmp_path / "manifest.tar", [("manifest.json", json.dumps(doc).encode()), *blobs]),
                  tmp_path, "digest does not match")
    extra = ("blobs/" + "0" * 64, b"x")
    await refused(target, pack(tmp_path / "extra.tar", [manifest, *blobs, extra]), tmp_path, "unexpected member")
    await refused(target, pack(tmp_path / "short.tar", [manifest, *blobs[:-1]]), tmp_path, "lacks 1 blob")
    await refused(target, pack(tmp_path / "twice.tar", [manifest, *blobs, blobs[0]]), tmp_path, "twice")
    # The untouched bundle goes in, and a second import finds it all held.
    good = pack(tmp_path / "good.tar", members)
    items = await bundles.import_bundle(good, target.app.storage, target.app.index, reactor=reactor,
                                        threadpool=reactor.getThreadPool(), staging=tmp_path / "stage")
    assert {i.status for i in items} == {"imported"} and len(items) == 4
    again = await bundles.import_bundle(good, target.app.storage, target.app.index, reactor=reactor,
                                        threadpool=reactor.getThreadPool(), staging=tmp_path / "stage")
    assert {i.status for i in again} == {"held"}


@pytest_twisted.ensureDeferred
async def test_hostile_archives_are_refused(pair: Any, tmp_path: Path, fake_upstream: Any) -> None:
    _, members, target = pair
    manifest, blobs = members[0], members[1:]
    name = blobs[0][0]
    for label, path, match in [
        ("traversal", pack(tmp_path / "t1.tar", [manifest, ("../../evil", b"x")]), "unexpected member"),
        ("absolute", pack(tmp_path / "t2.tar", [manifest, ("/etc/passwd", b"x")]), "unexpected member"),
        ("dotted", pack(tmp_path / "t3.tar", [manifest, ("blobs/../" + name, b"x")]), "unexpected member"),
        ("symlink", pack(tmp_path / "t4.tar", [manifest, (name, b"")], links={name: "/etc/passwd"}),
         "not a regular file"),
        ("huge", pack(tmp_path / "t5.tar", [manifest, (name, b"")], declared={name: 1 << 50}), "the manifest says"),
        ("no manifest first", pack(tmp_path / "t6.tar", [*blobs, manifest]), "first member"),
        ("manifest a link", pack(tmp_path / "t7.tar", [manifest], links={"manifest.json": "/etc/passwd"}),
         "first member"),
        ("garbage", _write(tmp_path / "t8.tar.gz", b"\x1f\x8b" + b"junk" * 100), "not a readable bundle"),
        ("huge manifest", pack(tmp_path / "t11.tar", [manifest], declared={"manifest.json": 1 << 40}), "too large"),
    ]:
        await refused(target, path, tmp_path, match)
    doc = json.loads(manifest[1])
    doc["projects"][0]["files"][0]["filename"] = "../evil.whl"
    await refused(target, pack(tmp_path / "t9.tar", [("manifest.json", redigest(doc)), *blobs]), tmp_path,
                  "filename")
    doc = json.loads(manifest[1])
    doc["blobs"][next(iter(doc["blobs"]))] = 1 << 50
    await refused(target, pack(tmp_path / "t10.tar", [("manifest.json", redigest(doc)), *blobs]), tmp_path,
                  "blob")
    # The command says so in one line, exit 1, and leaves no staging directory behind.
    before = await state(target.app)
    config = write_config(tmp_path / "b.toml", tmp_path / "b" / "data", fake_upstream.url)
    result = await run_command("--config", str(config), "import", str(tmp_path / "t1.tar"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "t1.tar refused, nothing imported: unexpected member '../../evil'" in result.stderr
    assert await state(target.app) == before and not list((tmp_path / "b" / "data").glob(".import-*"))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest_twisted.ensureDeferred
async def test_dependency_confusion_clashes_are_refused(pair: Any, tmp_path: Path) -> None:
    import treq

    _, members, target = pair
    # B caches tinyproj from the upstream: A's bundle with a private "tinyproj" may not shadow it.
    response = await treq.get(target.simple + "tinyproj/", persistent=False)
    await treq.content(response)
    doc = json.loads(members[0][1])
    (tiny,) = [p for p in doc["projects"] if p["name"] == "tinyproj"]
    doc["projects"].remove(tiny)
    drop = {"blobs/" + f[key] for f in tiny["files"] for key in ("sha256", "metadata-sha256") if f[key]}
    for name in drop:
        del doc["blobs"][name[len("blobs/"):]]
    (acme,) = [p for p in doc["projects"] if p["name"] == PRIVATE]
    acme["name"] = "tinyproj"
    kept = [m for m in members[1:] if m[0] not in drop]
    await refused(target, pack(tmp_path / "shadow.tar", [("manifest.json", redigest(doc)), *kept]),
                  tmp_path, "would shadow")
    # B has a private depproj (claimed and uploaded, say): the bundle's upstream depproj may not be
    # mixed into it.
    await target.app.index.create_project("depproj", "local")
    await refused(target, pack(tmp_path / "mixed.tar", members), tmp_path, "private here")
    # No filename comes back with other bytes: one still listed, or one used and deleted since.
    from pypicache.model import FileRecord

    await target.app.index.create_project("depproj", "upstream")
    other = FileRecord(PRIVATE_WHEEL, hashes={"sha256": "1" * 64}, size=1, origin="local")
    await target.app.index.add_file(PRIVATE, other)
    await refused(target, pack(tmp_path / "listed.tar", members), tmp_path, "other bytes under that filename")
    await target.app.index.remove_file(PRIVATE, PRIVATE_WHEEL)
    await refused(target, pack(tmp_path / "used.tar", members), tmp_path, "was used here for other bytes")


@pytest_twisted.ensureDeferred
async def test_export_names_what_the_server_does_not_hold(start: Any, fake_upstream: Any, tmp_path: Path) -> None:
    server = await filled(start, tmp_path)
    (tmp_path / "more.txt").write_text("depproj\ntinyproj==1.0\nnot-here\n")
    result = await export_to(tmp_path, server, fake_upstream.url, "-r", str(tmp_path / "more.txt"),
                             str(tmp_path / "x.tar"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "tinyproj" in result.stderr and "not-here" in result.stderr and "pypicache prefetch" in result.stderr
    assert not (tmp_path / "x.tar").exists() and not list(tmp_path.glob(".x.tar*"))
    result = await export_to(tmp_path, server, fake_upstream.url, "--project", "nope", str(tmp_path / "x.tar"))
    assert result.returncode == 1 and "no such project here: nope" in result.stderr
    result = await export_to(tmp_path, server, fake_upstream.url)
    assert result.returncode == 2 and "OUT or --static" in result.stderr
    config = write_config(tmp_path / "a.toml", tmp_path / "data", fake_upstream.url)
    result = await run_command("--config", str(config), "import", str(tmp_path / "missing.tar"))
    assert result.returncode == 1 and "no such file" in result.stderr


def test_progress_bar_on_a_terminal() -> None:
    from pypicache.cli.bundles import Progress

    out, err = io.StringIO(), io.StringIO()
    progress = Progress(out, err, bar=True)
    progress.plan(2, 3072)
    progress.item(bundles.Item("a", "a-1-py3-none-any.whl", "exported", 2048))
    progress.item(bundles.Item("b", "b-1.tar.gz", "exported", 1024))
    progress.close("of 2 project(s) to x.tar", 0.0)
    assert "2/2 files" in err.getvalue() and "3.00k" in err.getvalue()
    assert out.getvalue() == "2 exported (3.0 KiB) of 2 project(s) to x.tar in 0.0 s\n"


@pytest_twisted.ensureDeferred
async def test_round_trip_through_memory_providers(tmp_path: Path) -> None:
    """Storages without a file descriptor (read through their Deferreds) and
    the memory index: the imported catalog equals the exported one."""
    from twisted.internet import reactor

    from pypicache.model import FileRecord
    from pypicache.providers.index.memory import MemoryIndex
    from pypicache.providers.storage.memory import MemoryStorage
    from tests.builders import build_wheel

    source, catalog = MemoryStorage(), MemoryIndex()
    blobs = []
    for data in (build_wheel(tmp_path, "memproj", "1.0").read_bytes(), b"Metadata-Version: 2.1\nName: memproj\n"):
        writer = source.open_write(None)
        writer.write(data)
        blobs.append(await writer.commit())
    wheel, meta = blobs
    await catalog.add_file("memproj", FileRecord(
        "memproj-1.0-py3-none-any.whl", hashes={"sha256": wheel.sha256}, size=wheel.size, stored=True,
        core_metadata={"sha256": meta.sha256}, metadata_stored=True, origin="local", yanked=True,
        yanked_reason="old", upload_time="2026-01-02T03:04:05.000000Z", requires_python=">=3.9"))
    await catalog.create_project("empty-private", "local")
    path = tmp_path / "m.tgz"
    pool = reactor.getThreadPool()
    exported = await bundles.export_bundle(await bundles.select_all(catalog), source, path, reactor=reactor,
                                           threadpool=pool, created="2026-01-01T00:00:00Z")
    assert [i.filename for i in exported] == ["memproj-1.0-py3-none-any.whl"]
    target, copy = MemoryStorage(), MemoryIndex()
    seen: list[Any] = []
    await bundles.import_bundle(path, target, copy, reactor=reactor, threadpool=pool, staging=tmp_path / "s",
                                on_manifest=seen.append, on_blob=lambda sha, size: seen.append(sha))
    assert target.blobs == source.blobs
    assert sorted(seen[1:]) == sorted(source.blobs) and len(seen[0].projects) == 2
    for name in ("memproj", "empty-private"):
        assert await copy.get_project(name) == await catalog.get_project(name)
    assert await copy.used_filename("memproj-1.0-py3-none-any.whl") == wheel.sha256
