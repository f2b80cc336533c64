"""Block and allow lists (pypicache.services.blocklist) through real HTTP,
real pip and uv, a real twistd reloaded with SIGHUP, and ``pypicache policy``.

The policy is changed the way the server changes it (``apply_policy``, which
SIGHUP and the runtime policy file's watch call), so what is tested is what
a reload does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from pypicache.cli import admin
from pypicache.daemon.config import PolicyConfig
from pypicache.daemon.reload import apply_policy
from pypicache.services import audit
from pypicache.services.blocklist import RuntimePolicy, compile_rules, save_runtime
from tests.clients import pip_install, uv_pip_install
from tests.daemon import JSON, free_port, sleep, twistd_argv, write_config
from tests.uploads import WHEEL_NAME, form, good_wheel, post

TINY2 = "tinyproj-2.0-py3-none-any.whl"
TINY1 = "tinyproj-1.0-py3-none-any.whl"


async def get(url: str, accept: str | None = JSON):
    headers = {"accept": [accept]} if accept else {}
    response = await treq.get(url, headers=headers, persistent=False, timeout=10)
    return response, await treq.content(response)


def filenames(body: bytes) -> set[str]:
    return {f["filename"] for f in json.loads(body)["files"]}


def block(server, *specs: str, allow_only=None) -> None:
    apply_policy(server.app, PolicyConfig(block=specs, allow_only=allow_only))


def reason(response) -> str:
    return (response.headers.getRawHeaders(b"x-pypicache-reason") or [b""])[0].decode()


# ------------------------------------------------------------------ the rule


def test_rules_match_names_versions_and_prereleases():
    rules = compile_rules(PolicyConfig(block=("Evil_Pkg", "requests>=2,<2.3", "foo==1.1")))
    assert rules.project_reason("evil-pkg") == "blocked by policy: Evil_Pkg"
    assert rules.project_reason("requests") is None
    assert rules.file_reason("requests", "requests-2.2.0-py3-none-any.whl") == "blocked by policy: requests>=2,<2.3"
    assert rules.file_reason("requests", "requests-2.3rc1.tar.gz") is None
    assert rules.file_reason("requests", "requests-2.1rc1.tar.gz") is not None  # pre-releases match
    assert rules.file_reason("requests", "requests-2.3.0.tar.gz") is None
    assert rules.file_reason("foo", "foo-1.1.0.tar.gz") is not None
    assert rules.file_reason("foo", "foo-weird.exe") is not None  # no readable version: refused
    assert rules.file_reason("other", "other-1.1.tar.gz") is None
    assert not compile_rules(PolicyConfig()).active


def test_runtime_policy_merges_with_the_config(tmp_path):
    save_runtime(tmp_path, RuntimePolicy(block=(("foo<2", "CVE-1"),), allow=frozenset({"bar"})))
    assert oct((tmp_path / "policy.json").stat().st_mode & 0o777) == "0o600"
    from pypicache.services.blocklist import load_runtime

    rules = compile_rules(PolicyConfig(allow_only=frozenset({"baz"})), load_runtime(tmp_path))
    assert rules.file_reason("foo", "foo-1.0.tar.gz") == "blocked by policy: foo<2 (CVE-1)"
    assert rules.allows("bar") and rules.allows("baz") and not rules.allows("qux")


# ------------------------------------------------------------------ HTTP


@pytest_twisted.ensureDeferred
async def test_a_cached_file_is_refused_after_a_block_and_cached_pages_follow(proxy, fake_upstream):
    page_url = proxy.simple + "tinyproj/"
    response, body = await get(proxy.root + f"/files/tinyproj/{TINY2}", None)
    assert response.code == 200  # now cached
    for _ in range(2):  # the second answer comes from the fast path
        response, body = await get(page_url)
        assert TINY2 in filenames(body)
    etag = response.headers.getRawHeaders(b"etag")[0]
    _, api = await get(proxy.root + "/pypi/tinyproj/json", None)
    assert "2.0" in json.loads(api)["releases"]

    block(proxy, "tinyproj==2.0")
    fake_upstream.reset_log()
    for _ in range(2):
        response, body = await get(proxy.root + f"/files/tinyproj/{TINY2}", None)
        assert response.code == 403
        assert reason(response) == "blocked by policy: tinyproj==2.0"
        assert b"blocked by policy: tinyproj==2.0" in body
    assert not fake_upstream.requests  # refused before anything is fetched
    response, _ = await get(proxy.root + f"/files/tinyproj/{TINY2}.metadata", None)
    assert response.code == 403
    response, _ = await get(proxy.root + f"/files/tinyproj/{TINY1}", None)
    assert response.code == 200
    for _ in range(2):
        response, body = await get(page_url)
        assert response.code == 200
        assert TINY2 not in filenames(body) and TINY1 in filenames(body)
        assert response.headers.getRawHeaders(b"etag")[0] != etag
    _, api = await get(proxy.root + "/pypi/tinyproj/json", None)
    assert "2.0" not in json.loads(api)["releases"]

    # One audit line for the refused file, however often it is asked for.
    await sleep(0.2)
    lines = [e for e in audit.read(proxy.app.config.data_dir / audit.FILENAME) if e["action"] == "blocked"]
    assert [e["target"] for e in lines] == [f"tinyproj/{TINY2}"]
    assert lines[0]["client"] == "127.0.0.1" and lines[0]["reason"] == "blocked by policy: tinyproj==2.0"

    block(proxy)  # lifted: served again, pages list it again
    response, _ = await get(proxy.root + f"/files/tinyproj/{TINY2}", None)
    assert response.code == 200
    _, body = await get(page_url)
    assert TINY2 in filenames(body)


@pytest_twisted.ensureDeferred
async def test_a_project_blocked_by_name_answers_403_everywhere(proxy, fake_upstream):
    response, _ = await get(proxy.simple + "depproj/")
    assert response.code == 200
    block(proxy, "depproj")
    for url in ("/simple/depproj/", "/local/simple/depproj/", "/files/depproj/depproj-1.0-py3-none-any.whl",
                "/pypi/depproj/json"):
        response, body = await get(proxy.root + url)
        assert response.code == 403, url
        assert reason(response) == "blocked by policy: depproj", url
    _, root = await get(proxy.simple)
    names = {p["name"] for p in json.loads(root)["projects"]}
    assert "depproj" not in names and "tinyproj" in names


@pytest_twisted.ensureDeferred
async def test_allow_only_proxies_the_listed_projects_and_private_ones(start, fake_upstream, tmp_path):
    server = await start()
    answer = await post(server, form(good_wheel(tmp_path)))
    assert answer.code == 200, answer.body
    response, _ = await get(server.simple + "depproj/")  # cached before the policy
    assert response.code == 200
    block(server, allow_only=frozenset({"tinyproj"}))
    fake_upstream.reset_log()
    for url in ("/simple/depproj/", "/simple/yanked-proj/", "/files/depproj/depproj-1.0-py3-none-any.whl"):
        response, body = await get(server.root + url)
        assert response.code == 404, url
        assert "not in policy.allow_only" in reason(response)
    response, _ = await get(server.root + "/pypi/depproj/json", None)
    assert response.code == 404
    assert not [r for r in fake_upstream.requests if "depproj" in r[1] or "yanked" in r[1]]
    response, body = await get(server.simple + "tinyproj/")
    assert response.code == 200 and TINY2 in filenames(body)
    response, body = await get(server.simple + "acme-tools/")  # private: not concerned
    assert response.code == 200 and WHEEL_NAME in filenames(body)
    _, root = await get(server.simple)
    assert sorted(p["name"] for p in json.loads(root)["projects"]) == ["acme-tools", "tinyproj"]


@pytest_twisted.ensureDeferred
async def test_block_refuses_uploads_of_a_blocked_release(start, tmp_path):
    server = await start()
    block(server, "acme-tools==1.0")
    answer = await post(server, form(good_wheel(tmp_path)))
    assert answer.code == 403
    assert "blocked by policy: acme-tools==1.0" in answer.body


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_pip_and_uv_resolve_to_the_release_before_a_blocked_one(proxy, fake_upstream, tmp_path):
    await get(proxy.simple + "tinyproj/")  # cached (and rendered) before the block
    block(proxy, "tinyproj>=2")
    for install, name in ((pip_install, "pip"), (uv_pip_install, "uv")):
        fake_upstream.reset_log()
        target = tmp_path / name
        result = await deferToThread(install, proxy.simple, "tinyproj", target=target)
        assert result.returncode == 0, result.stdout + result.stderr
        assert [p.name for p in target.glob("tinyproj-*.dist-info")] == ["tinyproj-1.0.dist-info"]
        # the bytes came through the server under test, from its upstream
        assert any(TINY1 in path or "tinyproj-1.0.tar.gz" in path for _, path, _ in fake_upstream.requests) \
            or name == "uv"
    result = await deferToThread(pip_install, proxy.simple, "tinyproj==2.0", target=tmp_path / "pinned")
    assert result.returncode != 0


# ------------------------------------------------------------------ a real daemon

CONFIG = """
[server]
data_dir = "{data}"
access_log = false
page_ttl = {ttl}
[upstream]
url = "{upstream}"
[policy]
block = {block}
"""


async def _wait_for(daemon, path: str, predicate, timeout: float = 10.0):
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while True:
        code, body, headers = await daemon.get(path, accept=JSON)
        if predicate(code, body):
            return code, body, headers
        if reactor.seconds() > deadline:
            pytest.fail(f"{path} still answers {code} {body[:200]!r}:\n{daemon.output}")
        await sleep(0.2)


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_sighup_applies_the_policy_and_a_bad_config_keeps_the_old_one(tmp_path, spawn, fake_upstream):
    conf = tmp_path / "c.toml"
    data = tmp_path / "data"

    def write(block: str, ttl: int = 600) -> None:
        write_config(conf, CONFIG.format(data=data, upstream=fake_upstream.url, block=block, ttl=ttl))

    write("[]")
    port = free_port()
    daemon = spawn(twistd_argv(["pypicache", "--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"]),
                   port=port)
    await daemon.wait_until_answers("/simple/tinyproj/")
    code, body, _ = await daemon.get("/simple/tinyproj/", accept=JSON)
    assert code == 200 and TINY2 in filenames(body)

    write('["tinyproj==2.0"]', ttl=30)
    daemon.transport.signalProcess("HUP")
    await _wait_for(daemon, "/simple/tinyproj/", lambda c, b: c == 200 and TINY2 not in filenames(b))
    code, body, headers = await daemon.get(f"/files/tinyproj/{TINY2}")
    assert code == 403 and headers.getRawHeaders(b"x-pypicache-reason") == [b"blocked by policy: tinyproj==2.0"]
    assert "changed but not applied until a restart: page_ttl" in daemon.output

    write('["not a requirement !!"]')
    daemon.transport.signalProcess("HUP")
    await _wait_for(daemon, "/simple/tinyproj/", lambda c, b: "config reload failed" in daemon.output)
    assert "policy.block" in daemon.output
    code, body, _ = await daemon.get("/simple/tinyproj/", accept=JSON)
    assert code == 200 and TINY2 not in filenames(body)  # the old policy stays

    # `pypicache policy` from another process: applied without a signal.
    write('["tinyproj==2.0"]', ttl=30)  # the command reads the config too
    assert admin.main(["--config", str(conf), "policy", "block", "tinyproj==1.0", "--reason", "CVE-2026-1"]) == 0
    await _wait_for(daemon, "/simple/tinyproj/", lambda c, b: c == 200 and TINY1 not in filenames(b))
    code, body, headers = await daemon.get(f"/files/tinyproj/{TINY1}")
    assert code == 403 and b"(CVE-2026-1)" in body
    assert admin.main(["--config", str(conf), "policy", "unblock", "tinyproj==1.0"]) == 0
    await _wait_for(daemon, "/simple/tinyproj/", lambda c, b: c == 200 and TINY1 in filenames(b))

    actions = [e["action"] for e in audit.read(data / audit.FILENAME)]
    assert actions.count("policy.change") == 1 and "policy.block" in actions and "policy.unblock" in actions
    await daemon.stop()


# ------------------------------------------------------------------ the command


def test_policy_command_show_block_unblock_allow(tmp_path, capsys):
    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{tmp_path / "d"}"\n'
                                             '[policy]\nblock = ["evil"]\nallow_only = ["tinyproj"]\n')
    run = lambda *a: admin.main(["--config", str(conf), "policy", *a])  # noqa: E731
    assert run("block", "requests>=2,<2.3", "--reason", "bad release") == 0
    assert run("block", "requests>=2,<2.3") == 1
    assert "blocked already" in capsys.readouterr().err
    assert run("block", "not a spec !!") == 1
    assert "is not a requirement specifier" in capsys.readouterr().err
    assert run("unblock", "evil") == 1
    assert "remove it from policy.block" in capsys.readouterr().err
    assert run("allow", "Depproj") == 0
    assert run("show") == 0
    out = capsys.readouterr().out
    assert "block\tevil\tconfig" in out
    assert "block\trequests>=2,<2.3\truntime\tbad release" in out
    assert "allow_only\tdepproj\truntime" in out and "allow_only\ttinyproj\tconfig" in out
    assert run("disallow", "depproj") == 0 and run("unblock", "requests>=2,<2.3") == 0
    assert json.loads((tmp_path / "d" / "policy.json").read_text()) == {"block": [], "allow": []}

    plain = write_config(tmp_path / "p.toml", f'[server]\ndata_dir = "{tmp_path / "d"}"\n')
    assert admin.main(["--config", str(plain), "policy", "allow", "x"]) == 1
    assert "policy.allow_only is not set" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_prefetch_never_fetches_what_the_policy_refuses(proxy, fake_upstream):
    from twisted.internet import reactor

    from pypicache.services.environments import environments
    from pypicache.services.lockfiles import parse_requirements
    from pypicache.services.prefetch import Prefetcher

    block(proxy, "tinyproj>=2", "depproj")
    app = proxy.app
    prefetcher = Prefetcher(mirror=app.mirror, downloader=app.downloader, storage=app.storage, reactor=reactor)
    report = await prefetcher.run(parse_requirements("tinyproj\ndepproj\n"), environments())
    fetched = {f.filename for f in report.files if f.status == "fetched"}
    assert fetched == {TINY1}
    assert fake_upstream.count("/files/tinyproj-2.0") == 0 and fake_upstream.count("/files/depproj") == 0
