"""Servers for upstream-fault tests: short ``[http]`` timeouts, small helpers.

Shared by tests/test_faults.py, test_client_faults.py, test_hostile.py and
test_upstream_policy.py; the ``srv`` fixture (conftest.py) is one such server
in front of the ``fake_upstream``.  Raw-socket requests are in tests/rawhttp.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import task

from pypicache.daemon import config as configuration
from pypicache.providers import ProviderContext
from pypicache.providers.upstream.simple import SimpleUpstream
from tests.server import RunningServer, _TrackingSite

JSON = "application/vnd.pypi.simple.v1+json"
WHEEL = "tinyproj-1.0-py3-none-any.whl"

#: The timeouts every server in these tests runs with (seconds).
CONNECT, READ, PAGE = 0.5, 0.5, 1.0
#: Scheduling slack on a loaded 2-core CI machine.
SLACK = 1.5
MAX_PAGE = 256 * 1024


def fault_config(tmp_path: Path, upstream_url: str, **server: Any) -> configuration.Config:
    data = {
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, "page_ttl": 0, **server},
        "http": {"connect_timeout": CONNECT, "read_timeout": READ, "page_timeout": PAGE,
                 "max_page_bytes": MAX_PAGE},
        "upstream": {"provider": "simple", "url": upstream_url},
    }
    return configuration.parse(data, source="<test>")


async def start(config: configuration.Config, upstream: Any = None) -> RunningServer:
    from twisted.internet import reactor

    from pypicache.daemon.app import build

    app = build(config, reactor, upstream=upstream)
    _TrackingSite(app.site)
    port = reactor.listenTCP(0, app.site, interface="127.0.0.1")
    return RunningServer(app, port, f"http://127.0.0.1:{port.getHost().port}")


def simple_upstream(config: configuration.Config, url: str) -> SimpleUpstream:
    from twisted.internet import reactor

    context = ProviderContext(reactor=reactor, threadpool=None, data_dir=config.data_dir, http=config.http)
    return SimpleUpstream(context, url)


async def get(url: str, **headers: str) -> tuple[Any, bytes]:
    h = {k.replace("_", "-"): [v] for k, v in headers.items()}
    response = await treq.get(url, headers=h, allow_redirects=False)
    return response, await treq.content(response)


def hdr(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def stored(server: RunningServer, project: str, filename: str, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        record = await server.app.index.get_project(project)
        if record is not None and record.file(filename) is not None and record.file(filename).stored:
            return
        await sleep(0.02)
    raise AssertionError(f"{filename} was never stored")


def blobs(server: RunningServer) -> list[str]:
    """Every committed blob in storage (file names under the fan-out dirs)."""
    root = Path(server.app.storage.root)
    return sorted(p.name for p in root.glob("??/??/*") if p.is_file())


def spool(server: RunningServer) -> list[str]:
    return sorted(p.name for p in server.app.downloader.spool_dir.iterdir())
