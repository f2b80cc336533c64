"""``twistd pypicache``: options parse, makeService composes, services act."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

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


def _abort(message: str, app: Any = None) -> NoReturn:
    """Print one line and exit 1, after releasing what start-up created.

    Providers' thread pools (the SQLite index's, the app's) are not daemonic:
    exiting with them running would hang the process forever.  Closing them
    needs the reactor, which twistd has not started yet, so run it once just
    for that: ``app.close()`` if the app was built, and the "before shutdown"
    triggers that providers register for exactly this case.
    """
    from twisted.internet import defer, reactor

    sys.stderr.write(f"pypicache: {message}\n")
    sys.stderr.flush()

    def close() -> None:
        d = defer.ensureDeferred(app.close()) if app is not None else defer.succeed(None)
        d.addErrback(lambda f: log.failure("while closing after a start-up error", f))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(close)
    reactor.run(installSignalHandlers=False)
    raise SystemExit(1)


class _TopService(service.MultiService):
    """The daemon's root service: a listener that cannot bind (port in use or
    out of range, no permission) stops start-up with one line, not a
    traceback followed by a hang."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app
        self.listeners: dict[int, str] = {}  # id(listener service) -> endpoint string

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except Exception as e:
                if id(child) not in self.listeners:
                    raise
                _abort(f"server.listen: cannot listen on {self.listeners[id(child)]!r}: {e}", self.app)


def makeService(options: Options) -> service.IService:
    from twisted.internet import endpoints, reactor

    from pypicache.app import build

    cfg = options["config_obj"]
    # Endpoint strings are checked before anything is built, so that a typo
    # costs no start-up work.
    for endpoint in cfg.listen:
        try:
            endpoints.serverFromString(reactor, endpoint)
        except Exception as e:
            _abort(f"config error: server.listen: bad endpoint {endpoint!r}: {e}")
    try:
        app = build(cfg, reactor)
    except ConfigError as e:
        _abort(f"config error: {e}")
    top = _TopService(app)
    AppService(app).setServiceParent(top)
    if hasattr(app.factory, "reap_idle"):
        from twisted.application.internet import TimerService

        TimerService(30, app.factory.reap_idle).setServiceParent(top)
    for endpoint in cfg.listen:
        listener = strports.service(endpoint, app.factory)
        listener.setServiceParent(top)
        top.listeners[id(listener)] = endpoint
    return top
