"""Where the upstream client may connect: a guard against server-side request forgery.

The upstream's pages choose the URLs of files, and its redirects choose where
the next request goes.  Followed blindly, a hostile or compromised index (or
anyone who can edit a page on it) makes this server fetch
``http://127.0.0.1:6379/``, ``http://169.254.169.254/latest/meta-data/`` or an
intranet host and stream the answer to whoever asked: the server's network
position becomes theirs.  So every request the upstream client makes passes
two checks:

1. **The URL** (:meth:`FetchPolicy.check_url`, before anything is sent, for the
   first request and for every redirect): its scheme, host and port must be
   the upstream's own origin, or a *file host*: a host the configuration
   lists (``upstream.file_hosts``; for the public index, the host its pages
   link files on).  A file host is reached over https, or over http only when
   the upstream itself is http (no downgrade), on the scheme's default port
   unless the entry names one.

2. **The address** (:meth:`FetchPolicy.check_address`, on each address a host
   name resolves to, before connecting, and again on the address actually
   connected to): an address in a loopback, link-local (cloud metadata
   services live there), private, shared (carrier-grade NAT), multicast,
   unspecified or reserved range is refused, unless a configured network
   (``upstream.allow_networks``) contains it or the connection is to the
   upstream itself.  A name that resolves to such an address is refused like
   the literal address, and since the check is made on what the resolver
   returned (and on the peer of the connection), a name that changes its
   answer between checks gains nothing.

"The upstream itself" is its configured origin (scheme, host, port) --
whatever address its name resolves to: the administrator chose it -- and,
when the upstream URL names an IP address, that address *with that port*.
The same address on another port is another service (a database, an admin
interface), so it is refused like any other internal address.

A refusal is :class:`UpstreamRefused`: nothing was sent, and the client gets
a 502 naming why.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable
from urllib.parse import urlsplit

import attrs

from pypicache.errors import ConfigError
from pypicache.model import UpstreamError

__all__ = ["FetchPolicy", "Network", "UpstreamRefused", "forbidden_range", "normalize_host", "parse_file_hosts",
           "parse_networks", "PUBLIC_FILE_HOSTS"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Origin = tuple[str, str, int]

#: The public indexes' pages link files on these hosts.
PUBLIC_FILE_HOSTS = {"pypi.org": ("files.pythonhosted.org",), "test.pypi.org": ("test-files.pythonhosted.org",)}
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UpstreamRefused(UpstreamError):
    """A URL or address the fetch policy does not allow: nothing was sent to it."""


def _ip(text: str) -> Address | None:
    """The address ``text`` spells (an IPv6 zone is dropped), else None."""
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def normalize_host(host: str) -> str:
    """One spelling per host: lower case, no trailing dot, IPv6 compressed."""
    ip = _ip(host)
    if ip is not None:
        return str(ip)
    return host.lower().rstrip(".")


def forbidden_range(address: Address) -> str | None:
    """Why ``address`` is not one to fetch from on the upstream's say-so
    (``"loopback"``, ``"link-local"``, ...), or None for a public address.

    An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the IPv4
    address it maps, since that is where the kernel connects it.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name, hit in (("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
                      ("link-local", address.is_link_local), ("multicast", address.is_multicast),
                      ("private", address.is_private), ("reserved", address.is_reserved)):
        if hit:
            return name
    if not address.is_global:  # 100.64.0.0/10 (shared, carrier-grade NAT) and the like
        return "not globally routable"
    return None


def _host_port(where: str, entry: Any) -> tuple[str, int | None]:
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{where}: expected a host name or host:port, got {entry!r}")
    try:
        parts = urlsplit("//" + entry.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: not a host name or host:port: {entry!r}") from None
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username is not None \
            or port == 0:
        raise ConfigError(f"{where}: not a host name or host:port: {entry!r}")
    return normalize_host(parts.hostname), port


def parse_file_hosts(value: Any, where: str = "upstream.file_hosts") -> frozenset[tuple[str, int | None]]:
    """Config ``file_hosts``: ``["files.example.com", "mirror.example:8443", "[2001:db8::1]:80"]``."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of host names")
    return frozenset(_host_port(where, entry) for entry in value)


def parse_networks(value: Any, where: str = "upstream.allow_networks") -> tuple[Network, ...]:
    """Config ``allow_networks``: ``["10.0.0.0/8", "fd00::/8", "192.0.2.7"]``."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of networks such as \"10.0.0.0/8\"")
    out = []
    for entry in value:
        if not isinstance(entry, str):
            raise ConfigError(f"{where}: expected a network such as \"10.0.0.0/8\", got {entry!r}")
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return tuple(out)


@attrs.frozen
class FetchPolicy:
    """What the upstream client may fetch; see the module docstring."""

    #: The upstream's own (scheme, host, port).
    origin: Origin
    #: (host, port) pairs files may come from; port None: the scheme's default.
    file_hosts: frozenset[tuple[str, int | None]] = frozenset()
    #: Networks that may be connected to although internal.
    allow_networks: tuple[Network, ...] = ()
    #: "scheme://authority" -> None (allowed) or why not: every upstream
    #: request is checked, and a whole parse costs more than the lookup.
    _verdicts: dict[str, str | None] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @classmethod
    def for_upstream(cls, url: str, file_hosts: Iterable[tuple[str, int | None]] | None = None,
                     allow_networks: Iterable[Network] = ()) -> "FetchPolicy":
        """The policy for the upstream at ``url``: ``file_hosts`` None means
        the default (the public index's file host for pypi.org, else none
        beyond the upstream's own origin)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host = normalize_host(parts.hostname or "")
        origin = (scheme, host, parts.port or _DEFAULT_PORTS[scheme])
        if file_hosts is None:
            file_hosts = ((h, None) for h in PUBLIC_FILE_HOSTS.get(host, ()))
        return cls(origin, frozenset(file_hosts), tuple(allow_networks))

    def check_url(self, url: str) -> None:
        """Raise :class:`UpstreamRefused` unless ``url`` (absolute http(s),
        already checked for syntax) may be fetched."""
        pieces = url.split("/", 3)
        key = pieces[0] + "//" + pieces[2] if len(pieces) > 2 else url
        try:
            why = self._verdicts[key]
        except KeyError:
            why = self._judge(url)
            if len(self._verdicts) < 1024:
                self._verdicts[key] = why
        if why is not None:
            raise UpstreamRefused(f"{url}: refused: {why}")

    def _judge(self, url: str) -> str | None:
        parts = urlsplit(url)
        scheme = parts.scheme
        host = normalize_host(parts.hostname or "")
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        if (scheme, host, port) == self.origin:
            return None
        if (host, port) in self.file_hosts or \
                ((host, None) in self.file_hosts and port == _DEFAULT_PORTS.get(scheme)):
            if scheme == "https" or self.origin[0] == "http":
                return None
            return "plain http to a file host of an https upstream"
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port} is neither the upstream nor one of its file hosts (upstream.file_hosts)"

    def check_address(self, origin: Origin, address: str) -> None:
        """Raise :class:`UpstreamRefused` unless connecting to ``address`` for
        ``origin`` (scheme, host, port) is allowed."""
        if origin == self.origin or (origin[0], normalize_host(origin[1]), origin[2]) == self.origin:
            return
        ip = _ip(address)
        if ip is None:
            raise UpstreamRefused(f"{origin[1]}: refused: {address!r} is not an IP address")
        why = forbidden_range(ip)
        if why is None:
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return
        if _ip(self.origin[1]) == ip and origin[2] == self.origin[2]:
            return  # the upstream itself, named by address, reached under another scheme or spelling
        host = origin[1]
        shown = f"{host} ({ip})" if _ip(host) is None else str(ip)
        raise UpstreamRefused(f"{shown} port {origin[2]}: refused: a {why} address, and not the upstream "
                              "(upstream.allow_networks may allow it)")
