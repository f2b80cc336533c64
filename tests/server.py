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


async def start_server(config: configuration.Config, port: int = 0) -> RunningServer:
    """Build the app and listen on 127.0.0.1 (``port`` 0: any free port;
    else one from :func:`free_port`, for a config that must name its own URL)."""
    from twisted.internet import reactor

    from pypicache.daemon.app import build

    app = build(config, reactor)
    _TrackingSite(app.site)
    listening = reactor.listenTCP(port, app.factory, interface="127.0.0.1")
    return RunningServer(app, listening, f"http://127.0.0.1:{listening.getHost().port}")


async def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for ``[server] public_url``)."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    probe = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = probe.getHost().port
    await probe.stopListening()
    return number
