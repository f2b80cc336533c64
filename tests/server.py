"""Start a real pypicache server in-process, listening on 127.0.0.1:0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from pypicache.daemon import config as configuration


@attrs.define
class RunningServer:
    app: Any
    port: Any
    root: str

    @property
    def simple(self) -> str:
        return self.root + "/simple/"

    @property
    def local(self) -> str:
        return self.root + "/local/simple/"

    async def stop(self) -> None:
        await self.port.stopListening()
        # Drop keep-alive connections from clients so the reactor stays clean.
        for proto in list(getattr(self.app.factory, "live", ())) + list(getattr(self.app.site, "_live", ())):
            transport = getattr(proto, "transport", None) or getattr(getattr(proto, "_channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()
        await self.app.close()


def make_config(tmp_path: Path, upstream_url: str, **server: Any) -> configuration.Config:
    data = {
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, **server},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": upstream_url},
    }
    return configuration.parse(data, source="<test>")


class _TrackingSite:
    """Wrap a Site's buildProtocol to remember live connections."""

    def __init__(self, site: Any) -> None:
        site._live = set()
        original = site.buildProtocol

        def build(addr: Any) -> Any:
            proto = original(addr)
            site._live.add(proto)
            lost = proto.connectionLost

            def connection_lost(reason: Any) -> None:
                site._live.discard(proto)
                lost(reason)

            proto.connectionLost = connection_lost
            return proto

        site.buildProtocol = build


async def start_server(config: configuration.Config) -> RunningServer:
    from twisted.internet import reactor

    from pypicache.daemon.app import build

    app = build(config, reactor)
    _TrackingSite(app.site)
    port = reactor.listenTCP(0, app.factory, interface="127.0.0.1")
    return RunningServer(app, port, f"http://127.0.0.1:{port.getHost().port}")
