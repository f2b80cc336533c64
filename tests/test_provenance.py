"""PEP 740 provenance through the cache, over real HTTP and real clients.

The fake upstream serves provenance objects at PyPI's integrity path for
some files; the server's pages link its own copy beside each file
(``<file>.provenance``), fetched, checked against the file and stored on the
first request, then served from storage (offline too).  A lying upstream
gets a 502 and nothing stored.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urljoin

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from pypicache.model import FileRecord
from pypicache.services.provenance import ProvenanceRejected, check_provenance
from pypicache.testing import provenance_object, wait
from pypicache.providers.upstream.parse import parse_project_html, parse_project_json
from tests.anchors import anchors
from tests.clients import isolated_env, pip_install, uv_pip_install
from tests.server import make_config, start_server

JSON = "application/vnd.pypi.simple.v1+json"
INTEGRITY = "application/vnd.pypi.integrity.v1+json"
WHEEL = "tinyproj-1.0-py3-none-any.whl"
SDIST = "tinyproj-1.0.tar.gz"


async def get(url: str, accept: str = "*/*") -> tuple[int, dict[str, list[str]], bytes]:
    response = await treq.get(url, headers={"Accept": [accept]}, allow_redirects=False)
    body = await treq.content(response)
    headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
    return response.code, headers, body


def statement_of(doc: dict) -> dict:
    envelope = doc["attestation_bundles"][0]["attestations"][0]["envelope"]
    return json.loads(base64.b64decode(envelope["statement"]))


def lying(filename: str, sha256: str) -> bytes:
    """A provenance object that is well formed but about other bytes."""
    return json.dumps(provenance_object(filename, "0" * 64 if sha256 != "0" * 64 else "1" * 64)).encode()


# ------------------------------------------------------------------- checks


def test_check_accepts_the_file_it_names_and_refuses_everything_else() -> None:
    sha = "ab" * 32
    good = json.dumps(provenance_object("Tiny_Proj-1.0-py3-none-any.whl", sha)).encode()
    check_provenance(good, "Tiny_Proj-1.0-py3-none-any.whl", sha)
    check_provenance(good, "tiny_proj-1.0.0-py3-none-any.whl", sha)  # the same file, spelt as PyPI compares
    cases = {
        "another file's digest": (good, "Tiny_Proj-1.0-py3-none-any.whl", "cd" * 32),
        "another filename": (good, "tiny_proj-2.0-py3-none-any.whl", sha),
        "not JSON": (b"{nope", "x-1.tar.gz", sha),
        "too big": (b" " * (1024 * 1024 + 1), "x-1.tar.gz", sha),
        "no bundles": (b'{"version": 1, "attestation_bundles": []}', "x-1.tar.gz", sha),
        "wrong version": (json.dumps({**json.loads(good), "version": 2}).encode(), "Tiny_Proj-1.0-py3-none-any.whl",
                          sha),
    }
    doc = json.loads(good)
    doc["attestation_bundles"][0]["attestations"][0]["envelope"]["statement"] = "not base64!"
    cases["statement not base64"] = (json.dumps(doc).encode(), "Tiny_Proj-1.0-py3-none-any.whl", sha)
    for why, (body, filename, digest) in cases.items():
        with pytest.raises(ProvenanceRejected):
            check_provenance(body, filename, digest)
            pytest.fail(why)


def test_pages_parse_provenance_urls() -> None:
    page = (b'<html><body><a href="../../files/p-1.tar.gz#sha256=' + b"a" * 64
            + b'" data-provenance="/integrity/p/1/p-1.tar.gz/provenance">p-1.tar.gz</a>'
            b'<a href="../../files/p-2.tar.gz" data-provenance="javascript:alert(1)">p-2.tar.gz</a></body></html>')
    files = parse_project_html(page, "https://up.example/simple/p/").files
    assert [f.provenance for f in files] == ["https://up.example/integrity/p/1/p-1.tar.gz/provenance", None]
    doc = {"meta": {"api-version": "1.3"}, "name": "p", "files": [
        {"filename": "p-1.tar.gz", "url": "https://f.example/p-1.tar.gz", "hashes": {},
         "provenance": "https://up.example/integrity/p/1/p-1.tar.gz/provenance"},
        {"filename": "p-2.tar.gz", "url": "https://f.example/p-2.tar.gz", "hashes": {}, "provenance": None},
        {"filename": "p-3.tar.gz", "url": "https://f.example/p-3.tar.gz", "hashes": {}, "provenance": 7}]}
    files = parse_project_json(json.dumps(doc).encode(), "https://up.example/simple/p/").files
    assert [f.provenance for f in files] == ["https://up.example/integrity/p/1/p-1.tar.gz/provenance", None, None]


# ------------------------------------------------------------ through HTTP


@pytest_twisted.ensureDeferred
async def test_pages_advertise_our_url_and_only_policy_fetchable_ones(proxy, fake_upstream) -> None:
    fake_upstream.attest(WHEEL)
    # A page pointing provenance at a host the fetch policy refuses: dropped.
    fake_upstream.attest(SDIST, url="http://169.254.169.254/latest/meta-data/provenance")
    code, headers, body = await get(proxy.simple + "tinyproj/", JSON)
    assert code == 200
    doc = json.loads(body)
    assert doc["meta"]["api-version"] == "1.3"
    by_name = {f["filename"]: f for f in doc["files"]}
    assert by_name[WHEEL]["provenance"] == f"../../files/tinyproj/{WHEEL}.provenance"
    assert "provenance" not in by_name[SDIST]
    assert "provenance" not in by_name["tinyproj-2.0-py3-none-any.whl"]
    code, headers, body = await get(proxy.simple + "tinyproj/", "text/html")
    links = {a["text"]: a for a in anchors(body)}
    assert links[WHEEL]["data-provenance"] == f"../../files/tinyproj/{WHEEL}.provenance"
    assert "data-provenance" not in links[SDIST]
    assert b'content="1.3"' in body
    # An unattested file has no provenance route.
    code, _, _ = await get(proxy.root + f"/files/tinyproj/{SDIST}.provenance")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_fetched_once_checked_stored_and_served_offline(tmp_path, fake_upstream) -> None:
    fake_upstream.attest(WHEEL)
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        code, _, body = await get(server.simple + "tinyproj/", JSON)
        link = {f["filename"]: f for f in json.loads(body)["files"]}[WHEEL]["provenance"]
        url = urljoin(server.simple + "tinyproj/", link)
        code, _, _ = await get(server.root + f"/files/tinyproj/{WHEEL}")
        assert code == 200
        from twisted.internet import reactor
        await server.app.downloader.settle(reactor, 5)
        # The file is stored, its provenance not yet: the local view does not offer it.
        _, _, local_page = await get(server.local + "tinyproj/", JSON)
        assert [f["filename"] for f in json.loads(local_page)["files"]] == [WHEEL]
        assert all("provenance" not in f for f in json.loads(local_page)["files"])
        code, _, _ = await get(server.root + f"/local/files/tinyproj/{WHEEL}.provenance")
        assert code == 404
        fake_upstream.reset_log()
        code, headers, body = await get(url)
        assert code == 200, body
        assert headers["content-type"] == [INTEGRITY]
        doc = json.loads(body)
        subject = statement_of(doc)["subject"][0]
        assert subject == {"name": WHEEL, "digest": {"sha256": fake_upstream.sha256(WHEEL)}}
        code, _, again = await get(url)
        assert (code, again) == (200, body)
        assert fake_upstream.count("/provenance") == 1
        record = await wait(server.app.index.get_project("tinyproj"))
        sha = record.file(WHEEL).provenance_sha256
        assert sha is not None and await wait(server.app.storage.exists(sha))
    finally:
        await server.stop()
    await fake_upstream.stop()
    # Restarted offline with the upstream gone: served from storage, under both views.
    server = await start_server(make_config(tmp_path, fake_upstream.url, offline=True))
    try:
        code, _, served = await get(server.root + f"/files/tinyproj/{WHEEL}.provenance")
        assert (code, served) == (200, body)
        _, _, local_page = await get(server.local + "tinyproj/", JSON)
        local_link = {f["filename"]: f for f in json.loads(local_page)["files"]}[WHEEL]["provenance"]
        code, headers, served = await get(urljoin(server.local + "tinyproj/", local_link))
        assert (code, served, headers["content-type"]) == (200, body, [INTEGRITY])
    finally:
        await server.stop()


@pytest.mark.parametrize("lie", ["other file", "malformed", "too big"])
@pytest_twisted.ensureDeferred
async def test_a_lying_upstream_gets_502_and_nothing_is_stored(proxy, fake_upstream, lie) -> None:
    bodies = {
        "other file": lying(WHEEL, fake_upstream.sha256(WHEEL)),
        "malformed": b'{"version": 1, "attestation_bundles": [{"attestations": "no"}',
        "too big": json.dumps({"version": 1, "padding": "x" * (1024 * 1024)}).encode(),
    }
    fake_upstream.attest(WHEEL, bodies[lie])
    await get(proxy.simple + "tinyproj/", JSON)
    blobs_before = set(proxy.app.storage.iter_blobs())
    code, _, body = await get(proxy.root + f"/files/tinyproj/{WHEEL}.provenance")
    assert code == 502, body
    assert b"provenance" in body
    record = await wait(proxy.app.index.get_project("tinyproj"))
    assert record.file(WHEEL).provenance_sha256 is None
    assert set(proxy.app.storage.iter_blobs()) == blobs_before


@pytest.mark.parametrize("client", ["pip", "uv"])
@pytest_twisted.ensureDeferred
async def test_real_clients_install_through_pages_with_provenance(client, proxy, fake_upstream, tmp_path) -> None:
    for filename in list(fake_upstream.files):
        fake_upstream.attest(filename)
    _, _, page = await get(proxy.simple + "tinyproj/", JSON)
    assert all(f["provenance"].endswith(".provenance") for f in json.loads(page)["files"])
    install = {"pip": pip_install, "uv": uv_pip_install}[client]
    result = await deferToThread(install, proxy.simple, "depproj", target=tmp_path / "t")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "t" / "tinyproj").exists() and (tmp_path / "t" / "depproj").exists()
    # The files came through the server under test.
    assert fake_upstream.count(f"/files/{WHEEL.replace('1.0', '2.0')}", "GET") >= 1
    assert "api-version" not in result.stderr.lower() and "repository-version" not in result.stderr.lower()
    record = await wait(proxy.app.index.get_project("tinyproj"))
    assert record.file(WHEEL.replace("1.0", "2.0")).stored


def test_record_fields_default_to_no_provenance() -> None:
    record = FileRecord("x-1.tar.gz")
    assert (record.provenance, record.provenance_sha256) == (None, None)


@pytest_twisted.ensureDeferred
async def test_verify_counts_provenance_blobs_and_repairs_a_lost_one(proxy, fake_upstream) -> None:
    from pypicache.services.verify import verify

    fake_upstream.attest(WHEEL)
    await get(proxy.simple + "tinyproj/", JSON)
    code, _, body = await get(proxy.root + f"/files/tinyproj/{WHEEL}.provenance")
    assert code == 200
    index, storage = proxy.app.index, proxy.app.storage
    sha = (await wait(index.get_project("tinyproj"))).file(WHEEL).provenance_sha256
    report = await verify(index, storage)
    assert report.ok and report.orphans == [] and report.blobs == 1
    await wait(storage.delete(sha))
    report = await verify(index, storage, repair=True)
    (problem,) = report.problems
    assert (problem.part, problem.kind, problem.action) == ("provenance", "missing", "marked not stored")
    assert f"{WHEEL}.provenance" in str(problem)
    assert (await wait(index.get_project("tinyproj"))).file(WHEEL).provenance_sha256 is None
    # Asked again: fetched and checked again.
    code, _, again = await get(proxy.root + f"/files/tinyproj/{WHEEL}.provenance")
    assert (code, again) == (200, body)
    assert fake_upstream.count("/provenance") == 2


@pytest_twisted.ensureDeferred
async def test_bundles_and_static_trees_carry_stored_provenance_only(proxy, fake_upstream, tmp_path) -> None:
    """``export``/``import`` move a stored provenance blob with its file;
    ``export --static`` writes it beside the file and links only what it wrote."""
    from twisted.internet import reactor

    from pypicache.providers.index.memory import MemoryIndex
    from pypicache.providers.storage.memory import MemoryStorage
    from pypicache.services import bundles
    from pypicache.web.static import write_static

    fake_upstream.attest(WHEEL)
    fake_upstream.attest(SDIST)
    await get(proxy.simple + "tinyproj/", JSON)
    for path in (WHEEL, SDIST, WHEEL + ".provenance"):
        code, _, body = await get(proxy.root + f"/files/tinyproj/{path}")
        assert code == 200
    provenance = body
    await proxy.app.downloader.settle(reactor, 5)
    app, pool = proxy.app, reactor.getThreadPool()
    records = await bundles.select_all(app.index, projects=["tinyproj"])
    bundle = tmp_path / "b.tgz"
    await bundles.export_bundle(records, app.storage, bundle, reactor=reactor, threadpool=pool,
                                created="2026-01-01T00:00:00Z")
    storage, index = MemoryStorage(), MemoryIndex()
    await bundles.import_bundle(bundle, storage, index, reactor=reactor, threadpool=pool, staging=tmp_path / "s")
    record = await wait(index.get_project("tinyproj"))
    wheel, sdist = record.file(WHEEL), record.file(SDIST)
    assert wheel.provenance_sha256 is not None and sdist.provenance_sha256 is None
    assert storage.blobs[wheel.provenance_sha256] == provenance

    await write_static(records, app.storage, tmp_path / "tree", reactor=reactor, threadpool=pool)
    page = json.loads((tmp_path / "tree" / "simple" / "tinyproj" / "index.json").read_bytes())
    links = {f["filename"]: f.get("provenance") for f in page["files"]}
    assert links == {WHEEL: f"../../files/tinyproj/{WHEEL}.provenance", SDIST: None}
    assert (tmp_path / "tree" / "files" / "tinyproj" / f"{WHEEL}.provenance").read_bytes() == provenance


# ----------------------------------------------------------------- uploads


@pytest_twisted.ensureDeferred
async def test_twine_uploads_attestations_that_are_kept_and_served(tmp_path, fake_upstream) -> None:
    """``twine upload --attestations``: the attestations about the file are
    kept as its provenance and linked from the pages; ones about another
    file are refused (400) and nothing is published."""
    import hashlib

    from tests.builders import build_wheel
    from tests.uploads import PASSWORD, cheap_accounts

    wheel = build_wheel(tmp_path / "dist", "acme-tools", "1.0")
    other = build_wheel(tmp_path / "dist", "acme-tools", "2.0")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    attestation = provenance_object(wheel.name, sha)["attestation_bundles"][0]["attestations"][0]
    (tmp_path / "dist" / f"{wheel.name}.publish.attestation").write_text(json.dumps(attestation))
    (tmp_path / "dist" / f"{other.name}.publish.attestation").write_text(json.dumps(attestation))  # a lie
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    cheap_accounts(server).add_user("alice", PASSWORD)

    def twine(dist: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in isolated_env({"TWINE_NON_INTERACTIVE": "1"}).items()
               if not k.startswith("TWINE_") or k == "TWINE_NON_INTERACTIVE"}
        cmd = [str(Path(sys.executable).parent / "twine"), "upload", "--disable-progress-bar", "--non-interactive",
               "--repository-url", server.root + "/legacy/", "-u", "alice", "-p", PASSWORD, "--attestations",
               str(dist), str(dist.parent / f"{dist.name}.publish.attestation")]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    try:
        result = await deferToThread(twine, wheel)
        assert result.returncode == 0, result.stdout + result.stderr
        result = await deferToThread(twine, other)
        assert result.returncode != 0 and "400" in result.stdout + result.stderr
        _, _, page = await get(server.simple + "acme-tools/", JSON)
        (entry,) = json.loads(page)["files"]
        assert entry["provenance"] == f"../../files/acme-tools/{wheel.name}.provenance"
        for base in (server.simple, server.local):
            code, headers, body = await get(urljoin(base + "acme-tools/", entry["provenance"]))
            assert (code, headers["content-type"]) == (200, [INTEGRITY])
            doc = json.loads(body)
            assert doc["attestation_bundles"][0]["attestations"] == [attestation]
            check_provenance(body, wheel.name, sha)
    finally:
        await server.stop()
