"""``twistd pypicache``: options parse, makeService composes, services act."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage

from pypicache import config as configuration
from pypicache.errors import ConfigError

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT]"
    longdesc = ("Runs the pypicache server. Without --config it uses the embedded default: "
                "filesystem storage and a SQLite index in ~/.local/share/pypicache, the public PyPI "
                f"as upstream, listening on {configuration.DEFAULT_LISTEN}.")
    optParameters = [
        ["config", "c", None, "Path to the TOML config file (default: the embedded default)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to listen on, e.g. tcp:8141:interface=127.0.0.1 (repeatable;
        replaces server.listen from the config)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            cfg = configuration.load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"config error: {e}") from None
        if self["listen"]:
            import attrs

            cfg = attrs.evolve(cfg, listen=tuple(self["listen"]))
        self["config_obj"] = cfg


class AppService(service.Service):
    """Owns the built App: closes the index and thread pool on shutdown."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def startService(self) -> None:
        super().startService()
        cfg = self.app.config
        log.info("pypicache started: config {source}, data in {data_dir}, upstream {upstream}{offline}",
                 source=cfg.source, data_dir=str(cfg.data_dir), upstream=getattr(self.app.upstream, "url", "?"),
                 offline=" (offline)" if cfg.offline else "")

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet import defer

        return defer.ensureDeferred(self.app.close())


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from pypicache.app import build

    cfg = options["config_obj"]
    try:
        app = build(cfg, reactor)
    except ConfigError as e:
        sys.stderr.write(f"pypicache: config error: {e}\n")
        raise SystemExit(1) from None
    top = service.MultiService()
    AppService(app).setServiceParent(top)
    for endpoint in cfg.listen:
        try:
            strports.service(endpoint, app.site).setServiceParent(top)
        except (ValueError, KeyError, TypeError) as e:
            sys.stderr.write(f"pypicache: config error: server.listen: bad endpoint {endpoint!r}: {e}\n")
            raise SystemExit(1) from None
    return top
