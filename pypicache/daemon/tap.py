"""``twistd pypicache``: options parse, makeService composes, services act."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from pypicache.daemon import config as configuration
from pypicache.daemon import listening
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
    """Builds the App when started (after the listeners are bound, so the
    slow imports come after listening), hands its factory to the listeners,
    closes the index and thread pool on shutdown, and closes idle fast-path
    connections every 30 s."""

    REAP_EVERY = 30.0

    def __init__(self, config: Any, pending: listening.PendingFactory) -> None:
        self.config = config
        self.pending = pending
        #: What the [monitoring] listeners serve, once the app is built.
        self.monitoring = listening.PendingFactory()
        self.app: Any = None
        self._reaper: Any = None
        #: After stopping: False if the drain had to cut requests (server.shutdown_timeout).
        self.drained: bool | None = None

    def startService(self) -> None:
        """Build the App; ConfigError if a provider is wrong."""
        from twisted.internet import reactor

        from pypicache.daemon import app as app_module

        self.app = app_module.build(self.config, reactor)
        self.pending.attach(self.app.factory)
        if self.app.monitoring is not None:
            self.monitoring.attach(self.app.monitoring)
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
        from pypicache.daemon.reload import Reloader  # SIGHUP: the [policy] table again

        self._reloader = Reloader(self.app, self.app.reactor)
        self._reloader.start()

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet import defer

        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        if getattr(self, "_reloader", None) is not None:
            self._reloader.stop()
        if self.app is None:
            return None
        return defer.ensureDeferred(self._stop(self.app))

    async def _stop(self, app: Any) -> None:
        """Drain the connections, the monitoring listener's too (the
        listeners stopped first), telling systemd how many are left; then close."""
        try:
            if hasattr(app.factory, "live"):
                from pypicache.daemon import systemd
                from pypicache.web import draining

                also = [app.monitoring] if hasattr(app.monitoring, "live") else []
                self.drained = await draining.drain(
                    app.factory, app.reactor, app.config.shutdown_timeout, also=also,
                    report=lambda n: systemd.notify(f"STATUS=shutting down: {n} connection(s) left"))
        finally:
            await app.close()


class Server(service.MultiService):
    """``twistd pypicache``: the listeners and the App, started in the
    order that makes start-up fast and its failures plain.

    :meth:`start_early` pauses the cycle collector and binds every plain TCP
    listener with the socket module, before the reactor is imported;
    ``privilegedStartService`` listens on the rest and hands the sockets to
    the reactor; ``startService`` then builds the App (the slow imports) and
    hands it the ports.  A port that cannot be had or a provider that is
    wrong stops twistd with one line and exit status 1 (:meth:`abort`).
    Started inside a running reactor (tests, embedders), the error is raised
    instead.
    """

    def __init__(self, config: Any, twistd: Any = None) -> None:
        super().__init__()
        self.config = config
        #: twistd's own options (pid file, daemon status pipe), if run by it.
        self.twistd = twistd
        self.pending = listening.PendingFactory()
        self.app_service = AppService(config, self.pending)
        self.app_service.setServiceParent(self)
        self.listeners = [listening.Listener(endpoint, self.pending) for endpoint in config.listen]
        self.listeners += [listening.Listener(endpoint, self.app_service.monitoring)
                           for endpoint in config.monitoring.listen]
        for listener in self.listeners:  # stopped first (reverse order): no new requests while the app closes
            listener.setServiceParent(self)
        self._started_early = False
        self._gc_paused = False
        self._shutting_down = False

    def start_early(self) -> None:
        """The first step of starting, which imports nothing of Twisted's
        network stack: pause the collector, bind the plain TCP ports.

        :func:`makeService` calls it when twistd runs it, because twistd
        imports the reactor (to log its first lines) before it starts any
        service, and listening before that import is a measured start-up win
        (docs/performance.md).  Otherwise ``privilegedStartService`` does.
        """
        if self._started_early:
            return
        self._started_early = True
        self._gc_paused = _pause_gc()
        try:
            for listener in self.listeners:
                listener.bind_early()
        except listening.ListenError as e:
            self.abort(str(e), e)

    def privilegedStartService(self) -> None:
        self.start_early()
        from twisted.internet import reactor

        if self._gc_paused:
            reactor.callWhenRunning(_resume_gc)
        try:
            super().privilegedStartService()
        except listening.ListenError as e:
            self.abort(str(e), e)

    def startService(self) -> None:
        try:
            super().startService()
        except ConfigError as e:
            self.abort(f"config error: {e}", e)
        from twisted.internet import reactor

        if self.twistd is not None and not reactor.running:  # not inside a test's or an embedder's reactor
            reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        """Run by twistd, once the reactor runs: every listener listens and
        the app is built.  SIGTERM becomes a graceful stop, and systemd
        hears that the server is ready."""
        import signal

        from pypicache.daemon import systemd

        # Twisted's own handler (installed as the reactor started) stops the
        # reactor too, but makes twistd end by re-raising SIGTERM on itself:
        # exit status 143, even after a clean stop.
        signal.signal(signal.SIGTERM, self._sigterm)
        systemd.notify("READY=1", f"STATUS=serving on {', '.join(self.config.listen)}")

    def _sigterm(self, signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self.shut_down)

    def shut_down(self) -> None:
        """Stop gracefully: listeners first, then the drain (bounded by
        ``server.shutdown_timeout``), then the app; twistd then exits 0, or
        1 if the drain had to cut requests (:meth:`stopService`)."""
        from twisted.internet import error, reactor

        from pypicache.daemon import systemd

        if self._shutting_down:
            return
        self._shutting_down = True
        log.info("SIGTERM: no new connections; requests in flight get up to {timeout:g} s (server.shutdown_timeout)",
                 timeout=self.config.shutdown_timeout)
        systemd.notify("STOPPING=1", "STATUS=finishing the requests in flight")
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass

    def stopService(self) -> Any:
        d = super().stopService()
        if self.twistd is not None:
            d.addCallback(lambda _: self._exit_status())
        return d

    def _exit_status(self) -> None:
        """A drain that had to cut requests makes twistd exit with status 1,
        so a supervisor sees it (twistd itself ends with 0 whatever happened)."""
        if self.app_service.drained is False:
            import atexit

            atexit.register(_exit_failed)

    def abort(self, message: str, error: BaseException | None = None) -> NoReturn:
        """Print one line and exit 1, after releasing what start-up created.

        Providers' thread pools (the SQLite index's, the app's) are not
        daemonic: exiting with them running would hang the process forever.
        Closing them needs the reactor, which twistd has not started yet, so
        run it once just for that: ``app.close()`` if the app was built, and
        the "before shutdown" triggers that providers register for exactly
        this case.  The line goes to stderr, which is twistd's log once it
        logs; a daemonizing twistd's parent is told through its status pipe,
        and twistd's pid file is removed, as twistd does for its own errors.
        """
        from twisted.internet import defer, reactor

        if reactor.running:  # inside a test or an embedder: theirs to handle
            raise error if error is not None else RuntimeError(message)
        sys.stderr.write(f"pypicache: {message}\n")
        sys.stderr.flush()
        self._tell_twistd(message)
        app = self.app_service.app

        def close() -> None:
            d = defer.ensureDeferred(app.close()) if app is not None else defer.succeed(None)
            d.addErrback(lambda f: log.failure("while closing after a start-up error", f))
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(close)
        reactor.run(installSignalHandlers=False)
        raise SystemExit(1)

    def _tell_twistd(self, message: str) -> None:
        """What twistd's ``postApplication`` does for an exception: the
        daemon's parent prints the message; the pid file goes away."""
        import os

        if self.twistd is None:
            return
        pipe = self.twistd.get("statusPipe")
        if pipe is not None:
            try:
                os.write(pipe, b"1 " + message.encode("ascii", "backslashreplace")[:98])
                os.close(pipe)
            except OSError:
                pass
        pidfile = self.twistd.get("pidfile")
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass


def _exit_failed() -> None:
    """The last exit handler: status 1 (after twistd removed its pid file)."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(1)


def _pause_gc() -> bool:
    """Hold CPython's cycle collector for the rest of start-up.

    Start-up is almost all imports: about 55,000 objects (modules, classes,
    functions) that live as long as the process, and next to no garbage.  The
    collector still ran some 130 times during a start, 45–65 ms of CPU in a
    0.45–0.57 s start to the first answer, two thirds of it after this point.
    When the reactor runs, :func:`_resume_gc` freezes what start-up built
    (moves it out of the collector's generations) so that neither the first
    requests nor later full collections scan it again.  The price is the
    start-up garbage that a collection would have found: about 1,100 objects
    (0.4 MiB), kept for the life of the process; collecting them first would
    cost 11–17 ms, most of what the pause saves.  Not done inside a running
    reactor (tests build services there).
    """
    import gc

    reactor = sys.modules.get("twisted.internet.reactor")
    if (reactor is not None and reactor.running) or not gc.isenabled():
        return False
    gc.disable()
    return True


def _resume_gc() -> None:
    import gc

    gc.freeze()
    gc.enable()


def makeService(options: Options) -> service.IService:
    """Assemble the server's services; nothing is built or imported until
    they are started (see :class:`Server`).

    Run by twistd (the options have twistd's as their parent), the ports are
    bound here already: twistd imports the reactor before it starts a
    service (:meth:`Server.start_early`).  Called with options of its own,
    as in a unit test, it binds nothing.
    """
    twistd = getattr(options, "parent", None)
    server = Server(options["config_obj"], twistd=twistd)
    if twistd is not None:
        server.start_early()
    return server
