"""Start-up order and cost: the port is listened on before the app is built,
rarely used routes are imported on first use, and every piece still works.

No timings here (docs/performance.md has them): these tests pin the
behaviour that makes start-up short.
"""

from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest_twisted
import treq

from pypicache.daemon import app as app_module
from pypicache.daemon import listening
from pypicache.daemon import tap
from tests.clients import isolated_env
from tests.daemon import free_port, write_config

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
    assert seen == [True]
    assert gc.isenabled()  # inside a running reactor the collector is left alone
    top.privilegedStartService()
    top.startService()
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
        "pypicache.uploads.multipart"]
before = [m for m in lazy if m in sys.modules]
root = app.site.resource
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


def test_collector_paused_during_start_up_and_resumed_with_start_up_frozen(tmp_path, fake_upstream):
    """The cycle collector is off from makeService until the reactor runs;
    then it is back on, with what start-up built frozen out of its way."""
    conf = write_config(tmp_path / "c.toml", MEMORY_CONFIG.format(data=tmp_path / "data", upstream=fake_upstream.url))
    script = f"""
import gc, json
from pypicache.daemon import tap
options = tap.Options()
options.parseOptions(["--config", {str(conf)!r}, "--listen", "tcp:0:interface=127.0.0.1"])
top = tap.makeService(options)
seen = {{"building": gc.isenabled()}}
from twisted.internet import reactor
def running():
    seen["running"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count() > 10000
    top.stopService().addBoth(lambda _: reactor.stop())
top.startService()
reactor.callWhenRunning(running)
reactor.run()
print(json.dumps(seen))
"""
    result = subprocess.run([sys.executable, "-c", script], env=isolated_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"building": False, "running": True, "frozen": True}
