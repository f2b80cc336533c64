"""Start-up order and cost: the port is listened on before the app is built,
rarely used routes are imported on first use, and every piece still works.

No timings here (docs/performance.md has them): these tests pin the
behaviour that makes start-up short.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq

from pypicache.daemon import app as app_module
from pypicache.daemon import listening
from pypicache.daemon import tap
from tests.clients import isolated_env
from pypicache.errors import ConfigError
from tests.daemon import TWISTD, free_port, write_config

MEMORY_CONFIG = """
[server]
data_dir = "{data}"
access_log = false
[storage]
provider = "memory"
[index]
provider = "memory"
[upstream]
url = "{upstream}"
"""


def _options(tmp_path: Path, upstream: str, port: int) -> tap.Options:
    conf = write_config(tmp_path / "c.toml", MEMORY_CONFIG.format(data=tmp_path / "data", upstream=upstream))
    options = tap.Options()
    options.parseOptions(["--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"])
    return options


@pytest_twisted.ensureDeferred
async def test_port_listens_before_the_app_is_built(tmp_path, monkeypatch, fake_upstream):
    port = free_port()
    seen: list[bool] = []
    real_build = app_module.build

    def build(*args, **kwargs):
        # A client connecting now is queued by the kernel, not refused.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            seen.append(True)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(app_module, "build", build)
    top = tap.makeService(_options(tmp_path, fake_upstream.url, port))
    assert seen == []  # makeService only assembles
    top.privilegedStartService()
    assert seen == []
    assert gc.isenabled()  # inside a running reactor the collector is left alone
    top.startService()
    assert seen == [True]
    try:
        response = await treq.get(f"http://127.0.0.1:{port}/simple/tinyproj/")
        assert response.code == 200
        await response.content()
        (app_service,) = [s for s in top if isinstance(s, tap.AppService)]
        assert app_service._reaper is not None and app_service._reaper.running
    finally:
        await top.stopService()
    assert not app_service._reaper.running
    refused = socket.socket()
    try:
        assert refused.connect_ex(("127.0.0.1", port)) != 0  # the port was closed
    finally:
        refused.close()


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_make_service_only_assembles(tmp_path):
    """makeService binds no port, builds no provider, creates no file and
    leaves the collector alone, so it runs in a unit test (as Twisted's own
    web/tap.py does); the services do the work when started."""
    port = free_port()
    top = tap.makeService(_options(tmp_path, "http://127.0.0.1:9/simple/", port))
    assert isinstance(top, tap.Server)
    assert [type(s) for s in top] == [tap.AppService, listening.Listener]
    assert top.app_service.app is None
    assert [listener.listening for listener in top.listeners] == [None]
    assert _refused(port)
    assert not (tmp_path / "data").exists()
    assert gc.isenabled()


def test_under_twistd_make_service_listens_at_once(tmp_path):
    """twistd imports the reactor (for its first log lines) between
    makeService and starting the services, so run by twistd (options with a
    parent) makeService pauses the collector and binds plain TCP ports
    before that import."""
    conf = write_config(tmp_path / "c.toml", MEMORY_CONFIG.format(data=tmp_path / "data", upstream="http://127.0.0.1:9/"))
    script = f"""
import gc, json, socket, sys
from pypicache.daemon import tap
options = tap.Options()
options.parseOptions(["--config", {str(conf)!r}, "--listen", "tcp:0:interface=127.0.0.1"])
options.parent = {{"pidfile": "", "nodaemon": True}}  # what twistd's ServerOptions hold
top = tap.makeService(options)
client = socket.create_connection(top.listeners[0].early.getsockname(), timeout=2)  # queued by the kernel
heavy = ["twisted.internet.reactor", "twisted.internet.tcp", "OpenSSL", "pypicache.daemon.app"]
print(json.dumps({{"collector": gc.isenabled(), "imported": [m for m in heavy if m in sys.modules]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], env=isolated_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"collector": False, "imported": []}


@pytest_twisted.ensureDeferred
async def test_a_wrong_provider_fails_the_start_and_the_ports_close(tmp_path):
    """Inside a running reactor (tests, embedders) a start-up error is raised
    to the caller, not turned into an exit; stopping closes what was bound."""
    port = free_port()
    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                                             '[storage]\nprovider = "s3"\n')
    options = tap.Options()
    options.parseOptions(["--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"])
    top = tap.makeService(options)
    top.privilegedStartService()
    assert not _refused(port)
    with pytest.raises(ConfigError, match="'s3'"):
        top.startService()
    await top.stopService()
    assert _refused(port)


def test_start_up_error_is_reported_to_twistd(tmp_path):
    """What twistd does for its own start-up errors: a daemonizing twistd's
    parent reads the message from its status pipe; the pid file goes."""
    read, write = os.pipe()
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_text("1")
    server = tap.Server(_options(tmp_path, "http://127.0.0.1:9/simple/", free_port())["config_obj"],
                        twistd={"statusPipe": write, "pidfile": str(pidfile)})
    server._tell_twistd("config error: storage.provider: no storage provider named 's3'")
    try:
        assert os.read(read, 200) == b"1 config error: storage.provider: no storage provider named 's3'"
    finally:
        os.close(read)
    assert not pidfile.exists()


def test_daemonizing_twistd_prints_the_error_and_exits_1(tmp_path):
    """Without -n twistd forks before the service starts; its parent prints
    the line the child sent and exits 1, leaving no pid file behind."""
    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                                             '[storage]\nprovider = "s3"\n')
    pidfile = tmp_path / "twistd.pid"
    result = subprocess.run([sys.executable, str(TWISTD), f"--pidfile={pidfile}", f"--logfile={tmp_path / 'log'}",
                             "pypicache", "--config", str(conf), "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
                            env=isolated_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert "'s3'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not pidfile.exists()


def test_pending_factory_refuses_connections_until_attached():
    pending = listening.PendingFactory()
    assert pending.buildProtocol(("127.0.0.1", 1)) is None

    class Target:
        started = stopped = 0

        def doStart(self):
            self.started += 1

        def doStop(self):
            self.stopped += 1

        def buildProtocol(self, addr):
            return ("protocol for", addr)

    target = Target()
    pending.doStart()  # what a port does when it starts listening
    pending.attach(target)
    assert target.started == 1
    assert pending.buildProtocol("addr") == ("protocol for", "addr")
    pending.doStop()
    assert target.stopped == 1

    late = listening.PendingFactory()  # attached before a port listens
    target = Target()
    late.attach(target)
    assert target.started == 0
    late.doStart()
    assert target.started == 1


def test_rare_routes_and_argon2_are_imported_on_first_use(tmp_path):
    """Building the server imports neither the upload, management and JSON
    API routes nor argon2; the first request to each builds it."""
    script = f"""
import json, sys
from twisted.internet import reactor
from pypicache.daemon import config
from pypicache.daemon.app import build
import tomllib
cfg = config.parse(tomllib.loads({MEMORY_CONFIG.format(data=tmp_path / "data", upstream="http://127.0.0.1:9/simple/")!r}))
app = build(cfg, reactor)
lazy = ["argon2", "pypicache.web.jsonapi", "pypicache.web.upload", "pypicache.web.manage",
        "pypicache.uploads.multipart", "pypicache.services.publishing", "pypicache.services.management",
        "pypicache.metadata", "pypicache.services.projectjson", "packaging.metadata",
        "prometheus_client", "pypicache.services.metrics", "pypicache.services.health", "pypicache.web.monitoring",
        "pypicache.services.bundles", "pypicache.web.static", "pypicache.cli.bundles",
        "pypicache.services.provenance",
        "packaging.requirements", "packaging.specifiers", "pypicache.cli.policy", "pypicache.cli.audit",
        "pypicache.web.asof",
        "pypicache.web.ui", "pypicache.web.ui.routes", "pypicache.web.ui.policy", "pypicache.services.usage",
        "pypicache.services.eviction", "pypicache.services.cachebook", "pypicache.cli.cache",
        "pypicache.web.draining"]
before = [m for m in lazy if m in sys.modules]
root = app.site.resource
before += [m for m in ["pypicache.web.accesslog"] if m in sys.modules]  # only with access_log_format = "json"
from twisted.web.test.requesthelper import DummyRequest
for name in (b"legacy", b"api", b"pypi"):
    root.getChildWithDefault(name, DummyRequest([name]))
after = sorted(type(root.children[n]).__name__ for n in (b"legacy", b"api", b"pypi"))
print(json.dumps({{"before": before, "after": after}}))
app.threadpool.stop()
app.accounts._pool.stop()
"""
    result = subprocess.run([sys.executable, "-c", script], env=isolated_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"before": [], "after": ["JsonAPI", "Manage", "Upload"]}


def test_the_server_does_not_need_treq():
    """treq is the tests' HTTP client, in the test extra only: no module of
    the server imports it (the plugin authors' kit, pypicache.testing, may)."""
    script = """
import importlib, pkgutil, sys
import pypicache
for module in pkgutil.walk_packages(pypicache.__path__, "pypicache."):
    if module.name.split(".")[1] != "testing":
        importlib.import_module(module.name)
print(sorted(m for m in sys.modules if m == "treq" or m.startswith("treq.")))
"""
    result = subprocess.run([sys.executable, "-c", script], env=isolated_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_collector_paused_during_start_up_and_resumed_with_start_up_frozen(tmp_path, fake_upstream):
    """The cycle collector is off from the start (the bind) until the reactor
    runs; then it is back on, with what start-up built frozen out of its way.
    makeService, which only assembles, leaves it alone."""
    conf = write_config(tmp_path / "c.toml", MEMORY_CONFIG.format(data=tmp_path / "data", upstream=fake_upstream.url))
    script = f"""
import gc, json
from pypicache.daemon import tap
options = tap.Options()
options.parseOptions(["--config", {str(conf)!r}, "--listen", "tcp:0:interface=127.0.0.1"])
top = tap.makeService(options)
seen = {{"assembled": gc.isenabled()}}
top.privilegedStartService()
seen["listening"] = gc.isenabled()
from twisted.internet import reactor
def running():
    seen["running"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count() > 10000
    top.stopService().addBoth(lambda _: reactor.stop())
top.startService()
seen["building"] = gc.isenabled()
reactor.callWhenRunning(running)
reactor.run()
print(json.dumps(seen))
"""
    result = subprocess.run([sys.executable, "-c", script], env=isolated_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"assembled": True, "listening": False, "building": False, "running": True, "frozen": True}
