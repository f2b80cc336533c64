"""Connecting to an upstream host under the fetch policy (policy.py).

Why not check the host name once and then connect: a name is only a promise
about an address.  What matters is where the socket goes, so the check is
made on every address the resolver returns, before any connection attempt
(a forbidden address never even sees a SYN), and once more on the peer of
the connection that won, before the request is written.

Connections still race over the allowed addresses as Twisted's
``HostnameEndpoint`` does (happy eyeballs): the endpoint is given a resolver
that passes on only the addresses the policy allows.  IP literals are
answered without a resolver round trip (the system resolver would take a
thread for them).  The resolver is the one given, else the reactor's
``nameResolver`` at the time of connecting, so a test can install one that
maps a name anywhere.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from pypicache.providers.upstream.policy import UpstreamRefused

__all__ = ["connect_checked"]

Origin = tuple[str, str, int]
#: Raises UpstreamRefused when (origin, address) may not be connected to.
Guard = Callable[[Origin, str], None]


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IResolutionReceiver)
class _Filter:
    """Passes on the addresses ``allow`` accepts; remembers why it refused others."""

    def __init__(self, inner: Any, allow: Callable[[str], None], refusals: list[UpstreamRefused]) -> None:
        self._inner = inner
        self._allow = allow
        self._refusals = refusals

    def resolutionBegan(self, resolution: Any) -> None:
        self._inner.resolutionBegan(resolution)

    def addressResolved(self, address: Any) -> None:
        try:
            self._allow(address.host)
        except UpstreamRefused as e:
            self._refusals.append(e)
        else:
            self._inner.addressResolved(address)

    def resolutionComplete(self) -> None:
        self._inner.resolutionComplete()


@implementer(IHostnameResolver)
class _CheckingResolver:
    def __init__(self, inner: Any, allow: Callable[[str], None]) -> None:
        self._inner = inner
        self._allow = allow
        #: Why addresses were dropped, for the error when none is left.
        self.refusals: list[UpstreamRefused] = []

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        receiver = _Filter(resolutionReceiver, self._allow, self.refusals)
        try:
            ip = ipaddress.ip_address(hostName)
        except ValueError:
            return self._inner.resolveHostName(receiver, hostName, portNumber, addressTypes, transportSemantics)
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        kind = IPv6Address if ip.version == 6 else IPv4Address
        receiver.addressResolved(kind("TCP", hostName, portNumber))
        receiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class _ReactorWithResolver:
    """The reactor, but resolving names with ``nameResolver``."""

    def __init__(self, reactor: Any, resolver: Any) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: Any) -> Any:
        raise NotImplementedError("a per-connection view of the reactor")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def connect_checked(reactor: Any, origin: Origin, factory: Any, *, guard: Guard, timeout: float,
                    tls: Callable[[str], Any] | None = None, resolver: Any = None) -> Deferred[Any]:
    """Connect ``factory`` to ``origin`` (scheme, host, port) where ``guard``
    allows; fires with the protocol, or fails with :class:`UpstreamRefused`
    when every address was refused (or the peer turned out to be)."""
    scheme, host, port = origin
    checking = _CheckingResolver(resolver if resolver is not None else reactor.nameResolver,
                                 lambda address: guard(origin, address))
    endpoint: Any = HostnameEndpoint(_ReactorWithResolver(reactor, checking), host, port, timeout=timeout)
    if scheme == "https":
        assert tls is not None
        endpoint = wrapClientTLS(tls(host), endpoint)
    connecting = endpoint.connect(factory)

    def none_left(failure: Failure) -> Failure:
        if checking.refusals and failure.check(DNSLookupError):
            return Failure(checking.refusals[0])
        return failure

    def check_peer(protocol: Any) -> Any:
        try:
            guard(origin, protocol.transport.getPeer().host)
        except UpstreamRefused:
            protocol.transport.abortConnection()
            raise
        return protocol

    return connecting.addCallbacks(check_peer, none_left)
