"""Listening ports, opened first in start-up, before the server exists.

Listening comes before the slow part of start-up (importing and building the
app): a port that cannot be bound fails at once, and a client that connects
while the server starts waits in the kernel's accept queue instead of being
refused (pip and uv treat a refused connection as an error and back off; a
script polling for readiness sleeps between tries).

The common listener, ``tcp:PORT[:interface=IPv4][:backlog=N]``, is bound with
the :mod:`socket` module before Twisted's network stack is imported (the
reactor, the endpoint parser and the TLS libraries they pull in are about a
quarter of start-up), and handed to the reactor afterwards with
``adoptStreamPort``.  Every other endpoint string goes through Twisted's
endpoint parser as usual.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

log = Logger()

#: Twisted's default listen backlog for TCP ports.
DEFAULT_BACKLOG = 50


class ListenError(Exception):
    """A listener that cannot be opened: one line naming the endpoint."""


class PendingFactory(protocol.Factory):
    """Stands in for the server's factory while the server is built.

    Nothing is accepted before the reactor runs, and by then :meth:`attach`
    has given the real factory.
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

    def startFactory(self) -> None:
        # Attached before any port listened (an embedder that calls only
        # startService, so the app is built before the listeners start).
        if self.target is not None:
            self.target.doStart()

    def stopFactory(self) -> None:
        if self.target is not None:
            self.target.doStop()


class Listener(service.Service):
    """A port to listen on, bound when the service is privileged-started
    (before twistd sheds root), stopped with the service.

    Building one opens nothing, so ``makeService`` can assemble listeners in
    a unit test.  :meth:`bind_early` binds a plain TCP endpoint with the
    socket module alone; the daemon calls it for every listener before it
    imports the reactor, so the ports listen before the slow part of
    start-up (see the module docstring).
    """

    def __init__(self, endpoint: str, factory: protocol.Factory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        #: The socket bind_early opened, until the reactor adopts it.
        self.early: socket.socket | None = None
        #: A Deferred firing with the IListeningPort, once listening.
        self.listening: defer.Deferred | None = None

    def bind_early(self) -> None:
        """Bind and listen now if the endpoint is plain TCP; ListenError if
        the port cannot be had.  Imports nothing of Twisted's network stack."""
        if self.listening is None and self.early is None:
            self.early = bind_early(self.endpoint)

    def privilegedStartService(self) -> None:
        """Listen (adopting the early socket, if any); ListenError if the
        endpoint is wrong or the port cannot be had."""
        super().privilegedStartService()
        if self.listening is not None:
            return
        self.bind_early()
        from twisted.internet import reactor

        early, self.early = self.early, None
        self.listening = listen(reactor, self.endpoint, self.factory, early)

    def startService(self) -> None:
        super().startService()
        if self.listening is None:  # started without the privileged step (an embedder)
            self.privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.early is not None:
            self.early.close()
            self.early = None
        if self.listening is None:
            return None
        listening, self.listening = self.listening, None
        listening.addCallback(lambda port: port.stopListening())
        listening.addErrback(lambda _: None)
        return listening


def plain_tcp(endpoint: str) -> tuple[str, int, int] | None:
    """``(interface, port, backlog)`` for a plain IPv4 TCP endpoint, else None.

    Only the unambiguous form is taken: ``tcp:PORT`` or ``tcp:port=PORT`` with
    optional ``interface=`` (an IPv4 address) and ``backlog=``, no escapes.
    Anything else (tcp6, unix, ssl, systemd, IPv6 interfaces, an out-of-range
    port, an unknown key) is left to Twisted's parser, which also words the
    errors.
    """
    if "\\" in endpoint:
        return None
    kind, _, rest = endpoint.partition(":")
    if kind != "tcp" or not rest:
        return None
    interface, port, backlog = "", None, DEFAULT_BACKLOG
    for i, part in enumerate(rest.split(":")):
        key, eq, value = part.partition("=")
        if not eq:
            if i != 0:
                return None
            key, value = "port", part
        if key == "port" and port is None and value.isdigit():
            port = int(value)
        elif key == "interface":
            try:
                socket.inet_pton(socket.AF_INET, value)
            except OSError:
                return None
            interface = value
        elif key == "backlog" and value.isdigit():
            backlog = int(value)
        else:
            return None
    if port is None or port > 65535:
        return None
    return interface, port, backlog


def bind_early(endpoint: str) -> socket.socket | None:
    """Bind and listen on a plain TCP endpoint now, with the socket module.

    Returns None for endpoints that :func:`listen` must parse.  Options as
    Twisted's TCP port sets them (SO_REUSEADDR, the backlog).
    """
    address = plain_tcp(endpoint)
    if address is None:
        return None
    interface, port, backlog = address
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ListenError(f"server.listen: cannot listen on {endpoint!r}: {e.strerror or e}") from None
    return sock


def _inherited() -> str:
    """What this process inherited from systemd, for an error message.

    Twisted read (and removed) ``LISTEN_*`` from the environment when its
    endpoint module was imported; it keeps what it found.
    """
    from pypicache import _twisted

    found = _twisted.systemd_sockets()
    if not found:
        return ("no socket inherited from systemd (LISTEN_FDS and LISTEN_FDNAMES unset, or LISTEN_PID "
                "is not this process: start pypicache.socket, or use a tcp: endpoint)")
    names = ", ".join(f"{name!r} (index {i})" for i, name in enumerate(found))
    return f"no such socket inherited from systemd; inherited: {names}"


def listen(reactor: Any, endpoint: str, factory: protocol.Factory, early: socket.socket | None = None) -> Any:
    """Listen on ``endpoint``; a Deferred firing with the listening port.

    ``early`` is the socket :func:`bind_early` opened for it, if any: the
    reactor adopts it (the port keeps its own copy of the descriptor).
    """
    if early is not None:
        from twisted.internet.interfaces import IReactorSocket

        if IReactorSocket.providedBy(reactor):
            try:
                port = reactor.adoptStreamPort(early.fileno(), socket.AF_INET, factory)
            finally:
                early.close()
            return defer.succeed(port)
        early.close()  # a reactor that cannot adopt sockets: listen again below

    from twisted.internet import endpoints

    try:
        server = endpoints.serverFromString(reactor, endpoint)
    except (IndexError, KeyError) as e:
        if endpoint.startswith("systemd:"):  # Twisted says only "list index out of range"
            raise ListenError(f"server.listen: cannot listen on {endpoint!r}: {_inherited()}") from None
        raise ListenError(f"config error: server.listen: bad endpoint {endpoint!r}: {e}") from None
    except Exception as e:
        raise ListenError(f"config error: server.listen: bad endpoint {endpoint!r}: {e}") from None
    try:
        listening = server.listen(factory)
    except Exception as e:
        raise ListenError(f"server.listen: cannot listen on {endpoint!r}: {e}") from None
    failed: list[Any] = []
    listening.addErrback(lambda f: failed.append(f) or f)
    if failed:  # TCP, UNIX and systemd endpoints answer at once
        listening.addErrback(lambda _: None)
        raise ListenError(f"server.listen: cannot listen on {endpoint!r}: {failed[0].value}")

    def late_failure(f: Any) -> None:  # an endpoint that listens asynchronously
        log.critical("server.listen: cannot listen on {endpoint!r}: {error}", endpoint=endpoint, error=f.value)
        reactor.stop()

    listening.addErrback(late_failure)
    return listening
