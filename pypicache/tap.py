"""``twistd pypicache``: options parse, makeService composes, services act."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.application import service
from twisted.internet import protocol
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
    """Owns the built App: closes the index and thread pool on shutdown, and
    closes idle fast-path connections every 30 s."""

    REAP_EVERY = 30.0

    def __init__(self, app: Any) -> None:
        self.app = app
        self._reaper: Any = None

    def startService(self) -> None:
        super().startService()
        cfg = self.app.config
        log.info("pypicache started: config {source}, data in {data_dir}, upstream {upstream}{offline}",
                 source=cfg.source, data_dir=str(cfg.data_dir), upstream=getattr(self.app.upstream, "url", "?"),
                 offline=" (offline)" if cfg.offline else "")
        if hasattr(self.app.factory, "reap_idle"):
            from twisted.internet import task

            self._reaper = task.LoopingCall(self.app.factory.reap_idle)
            self._reaper.clock = self.app.reactor
            self._reaper.start(self.REAP_EVERY, now=False)

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet import defer

        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
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


class _PendingFactory(protocol.Factory):
    """Stands in for the server's factory while the server is built.

    Listening comes first in start-up, before the slow part (importing and
    building the app): a port that cannot be bound then fails at once, and a
    client that connects while the server starts waits in the kernel's accept
    queue instead of being refused (pip and uv treat a refused connection as
    an error and back off).  Nothing is accepted before the reactor runs, and
    by then :meth:`attach` has given the real factory.
    """

    noisy = False

    def __init__(self) -> None:
        self.target: Any = None

    def attach(self, target: Any) -> None:
        self.target = target
        if self.numPorts:
            target.doStart()

    def buildProtocol(self, addr: Any) -> Any:
        if self.target is None:  # start-up failed; the connection is closed
            return None
        return self.target.buildProtocol(addr)

    def stopFactory(self) -> None:
        if self.target is not None:
            self.target.doStop()


class _Listener(service.Service):
    """A port listened on during start-up; stopped with the service."""

    def __init__(self, endpoint: str, listening: Any) -> None:
        self.endpoint = endpoint
        self.listening = listening  # a Deferred firing with the IListeningPort

    def stopService(self) -> Any:
        super().stopService()
        self.listening.addCallback(lambda port: port.stopListening())
        self.listening.addErrback(lambda _: None)
        return self.listening


def _listen(endpoint: str, factory: protocol.Factory) -> Any:
    """Listen on ``endpoint`` now; one-line exit if it is malformed or busy."""
    from twisted.internet import endpoints, reactor

    try:
        server = endpoints.serverFromString(reactor, endpoint)
    except Exception as e:
        _abort(f"config error: server.listen: bad endpoint {endpoint!r}: {e}")
    try:
        listening = server.listen(factory)
    except Exception as e:
        _abort(f"server.listen: cannot listen on {endpoint!r}: {e}")
    failed: list[Any] = []
    listening.addErrback(lambda f: failed.append(f) or f)
    if failed:  # TCP, UNIX and systemd endpoints answer at once
        listening.addErrback(lambda _: None)
        _abort(f"server.listen: cannot listen on {endpoint!r}: {failed[0].value}")

    def late_failure(f: Any) -> None:  # an endpoint that listens asynchronously
        log.critical("server.listen: cannot listen on {endpoint!r}: {error}", endpoint=endpoint, error=f.value)
        reactor.stop()

    listening.addErrback(late_failure)
    return listening


def makeService(options: Options) -> service.IService:
    cfg = options["config_obj"]
    pending = _PendingFactory()
    listeners = [_Listener(endpoint, _listen(endpoint, pending)) for endpoint in cfg.listen]

    from twisted.internet import reactor

    from pypicache.app import build

    try:
        app = build(cfg, reactor)
    except ConfigError as e:
        _abort(f"config error: {e}")
    pending.attach(app.factory)
    top = service.MultiService()
    AppService(app).setServiceParent(top)
    for listener in listeners:  # stopped first (reverse order): no new requests while the app closes
        listener.setServiceParent(top)
    return top
