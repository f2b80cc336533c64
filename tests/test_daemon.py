"""``twistd pypicache`` as a real subprocess: it starts, serves, stops on
SIGTERM with status 0, and a bad configuration stops it at once with one
line and no traceback.

The fake upstream runs on this test's reactor, so the daemon is spawned with
``reactor.spawnProcess`` and awaited, never waited for in a blocking call:
a blocking wait would starve the upstream the daemon is talking to.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any
from urllib.parse import urljoin

import pytest
import pytest_twisted
from twisted.python import usage

from pypicache.daemon import config as configuration
from pypicache.daemon import tap
from tests.clients import isolated_env
from tests.daemon import JSON, TWISTD, free_port, sleep, twistd_argv, write_config


# ------------------------------------------------------------ options, in-process


def test_default_listener_is_loopback_only(monkeypatch, tmp_path):
    from twisted.internet import endpoints, reactor

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    options = tap.Options()
    options.parseOptions([])
    cfg = options["config_obj"]
    assert cfg.listen == (configuration.DEFAULT_LISTEN,)
    (listen,) = cfg.listen
    endpoint = endpoints.serverFromString(reactor, listen)
    assert isinstance(endpoint, endpoints.TCP4ServerEndpoint)
    assert endpoint._interface == "127.0.0.1"
    assert endpoint._port == 8141


def test_listen_option_replaces_the_config(tmp_path):
    conf = write_config(tmp_path / "c.toml", '[server]\nlisten = "tcp:1:interface=127.0.0.1"\n')
    options = tap.Options()
    options.parseOptions(["--config", str(conf), "--listen", "tcp:2:interface=127.0.0.1", "-l", "tcp:3"])
    assert options["config_obj"].listen == ("tcp:2:interface=127.0.0.1", "tcp:3")
    options = tap.Options()
    options.parseOptions(["-c", str(conf)])
    assert options["config_obj"].listen == ("tcp:1:interface=127.0.0.1",)


def test_config_error_is_a_usage_error(tmp_path):
    conf = write_config(tmp_path / "c.toml", "[server]\nbogus = 1\n")
    with pytest.raises(usage.UsageError, match="server.bogus: unknown key"):
        tap.Options().parseOptions(["--config", str(conf)])


# ------------------------------------------------------------ the real daemon


def test_twistd_help_lists_pypicache(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, str(TWISTD), "--help"], env=isolated_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert any(words[:1] == ["pypicache"] for words in lines), result.stdout


@pytest_twisted.ensureDeferred
async def test_serves_through_fake_upstream_and_stops_on_sigterm(tmp_path, fake_upstream, spawn):
    conf = write_config(tmp_path / "pypicache.toml", f"""
[server]
data_dir = "data"
listen = "tcp:1:interface=127.0.0.1"   # replaced by --listen below
[http]
connect_timeout = 2
read_timeout = 2
page_timeout = 3
[upstream]
url = "{fake_upstream.url}"
""")
    port = free_port()
    daemon = spawn(twistd_argv(["pypicache", "--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"]),
                   port=port)
    code, body, _ = await daemon.wait_until_answers("/simple/")
    assert code == 200, daemon.output
    assert b"tinyproj" in body

    code, body, headers = await daemon.get("/simple/tinyproj/", accept=JSON)
    assert code == 200, body
    page = json.loads(body)
    wheel = next(f for f in page["files"] if f["filename"].endswith(".whl"))
    url = urljoin(daemon.root + "/simple/tinyproj/", wheel["url"])
    assert url.startswith(daemon.root + "/"), url  # served by us, not a redirect to upstream
    code, body, _ = await daemon.get(url[len(daemon.root):])
    assert code == 200
    assert body == fake_upstream.files[wheel["filename"]].read_bytes()

    # Relative data_dir: next to the config file.
    data = tmp_path / "data"
    assert data.is_dir()
    await daemon.stop()
    # The index was closed on the way out: SQLite folded its WAL back in.
    index_files = sorted(p.name for p in data.glob("index*"))
    assert index_files and not any(name.endswith("-wal") for name in index_files), index_files


@pytest_twisted.ensureDeferred
async def test_starts_with_no_config_at_all(tmp_path, spawn):
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    port = free_port()
    daemon = spawn(twistd_argv(["pypicache", "--listen", f"tcp:{port}:interface=127.0.0.1"]), port=port,
                   env={"HOME": str(home), "XDG_DATA_HOME": str(xdg)})
    # Only "/" : anything under /simple/ would go to the real PyPI.
    code, body, headers = await daemon.wait_until_answers("/")
    assert code == 200, daemon.output
    assert b"simple/" in body
    assert (xdg / "pypicache").is_dir()
    assert list((xdg / "pypicache").iterdir()), "the default providers keep their data there"
    assert not (home / ".local").exists()
    assert "<embedded default>" in daemon.output
    await daemon.stop()


BAD_CONFIGS = {
    "unknown key": ('[server]\ndata_dir = "data"\npage_tll = 5\n', "server.page_tll"),
    "unknown provider": ('[server]\ndata_dir = "data"\n[storage]\nprovider = "s3"\n', "'s3'"),
    "unknown provider option": ('[server]\ndata_dir = "data"\n[storage]\nprovider = "memory"\nbucket = "b"\n',
                                "storage.bucket"),
    "unknown upstream after the index was built": (
        '[server]\ndata_dir = "data"\n[upstream]\nprovider = "nope"\n', "upstream.provider"),
    "bad endpoint type": ('[server]\ndata_dir = "data"\nlisten = "tcpp:8141"\n', "tcpp:8141"),
    "bad endpoint port": ('[server]\ndata_dir = "data"\nlisten = "tcp:eighty"\n', "tcp:eighty"),
    "port out of range": ('[server]\ndata_dir = "data"\nlisten = "tcp:99999:interface=127.0.0.1"\n', "tcp:99999"),
    "bad TOML": ('[server\n', "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
@pytest_twisted.ensureDeferred
async def test_bad_config_exits_with_one_line(tmp_path, spawn, case):
    text, needle = BAD_CONFIGS[case]
    conf = write_config(tmp_path / "bad.toml", text)
    daemon = spawn(twistd_argv(["pypicache", "--config", str(conf)]))
    status = await daemon.exited(10.0)
    output = daemon.output
    assert status != 0, output
    assert "Traceback" not in output, output
    naming = [line for line in output.splitlines() if needle in line]
    assert len(naming) == 1, output
    assert "error" in naming[0] or "cannot" in naming[0], naming


@pytest_twisted.ensureDeferred
async def test_port_in_use_exits_with_one_line(tmp_path, spawn):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        conf = write_config(tmp_path / "c.toml", '[server]\ndata_dir = "data"\n')
        daemon = spawn(twistd_argv(["pypicache", "--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"]))
        status = await daemon.exited(10.0)
    output = daemon.output
    assert status != 0, output
    assert "Traceback" not in output, output
    naming = [line for line in output.splitlines() if f"tcp:{port}" in line]
    assert len(naming) == 1 and "cannot listen" in naming[0], output


@pytest_twisted.ensureDeferred
async def test_missing_config_file_exits_with_one_line(tmp_path, spawn):
    missing = tmp_path / "nope.toml"
    daemon = spawn(twistd_argv(["pypicache", "--config", str(missing)]))
    status = await daemon.exited(10.0)
    assert status != 0
    assert "Traceback" not in daemon.output
    assert len([line for line in daemon.output.splitlines() if str(missing) in line]) == 1, daemon.output


class _TricklingRedirect:
    """A web site whose every GET is a 302 to ``target`` (same path) with a
    60,000-byte body sent one byte per 0.2 s: the proxy drains such a body
    (it is under the drain's size cap) and each byte resets its idle timer."""

    def __init__(self, target: str) -> None:
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET, Site

        self.dripping: list[Any] = []
        outer = self

        class Root(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> Any:
                from twisted.internet import reactor

                request.setResponseCode(302)
                request.setHeader(b"location", target.rstrip("/").encode() + request.path)
                request.setHeader(b"content-length", b"60000")

                def drip() -> None:
                    if not request._disconnected and not request.finished:
                        request.write(b"x")
                        outer.dripping.append(reactor.callLater(0.2, drip))

                request.notifyFinish().addBoth(lambda _: outer.requests.remove(request))
                outer.requests.append(request)
                drip()
                return NOT_DONE_YET

        self.requests: list[Any] = []
        self.site = Site(Root())

    def stop(self) -> None:
        for call in self.dripping:
            if call.active():
                call.cancel()
        for request in list(self.requests):
            request.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_sigterm_during_a_trickling_redirect_drain_exits_promptly(tmp_path, fake_upstream, spawn):
    """A drain is housekeeping: shutdown abandons it instead of waiting for
    an upstream that trickles a redirect's body (read_timeout is 10 s here,
    longer than the 5 s the stop may take)."""
    from twisted.internet import reactor

    trickle = _TricklingRedirect(fake_upstream.root_url)
    listening = reactor.listenTCP(0, trickle.site, interface="127.0.0.1")
    try:
        conf = write_config(tmp_path / "pypicache.toml", f"""
[server]
data_dir = "data"
[http]
connect_timeout = 2
read_timeout = 10
page_timeout = 5
[upstream]
url = "http://127.0.0.1:{listening.getHost().port}/simple/"
# The redirect leads to the fake upstream, another service on loopback.
file_hosts = ["127.0.0.1:{fake_upstream.port}"]
allow_networks = ["127.0.0.1/32"]
""")
        port = free_port()
        daemon = spawn(twistd_argv(["pypicache", "--config", str(conf), "--listen",
                                    f"tcp:{port}:interface=127.0.0.1"]), port=port)
        await daemon.wait_until_answers("/")
        code, body, _ = await daemon.get("/simple/tinyproj/", accept=JSON)
        assert code == 200, body
        assert json.loads(body)["name"] == "tinyproj"
        await sleep(0.5)
        assert trickle.requests, "the redirect body should still be draining"
        await daemon.stop()
    finally:
        trickle.stop()
        await listening.stopListening()
