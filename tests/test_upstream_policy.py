"""Where the server may fetch from on the upstream's say-so (pypicache/providers/upstream/policy.py).

A hostile upstream page links files at internal addresses, and its
redirects point there too; a name may resolve to one.  Each case runs a real
server against the fake upstream, with a *canary* listening where the
upstream points: a TCP listener that only counts the connections and bytes
it gets, so "refused" means nothing ever reached it, not that it timed out.

IPv6 literal upstreams (``http://[::1]:PORT/simple/``) are served end to end
when this machine has an IPv6 loopback; skipped otherwise.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from pypicache.daemon import config as configuration
from pypicache.providers.upstream.breaker import CLOSED
from tests.clients import pip_install
from tests.conftest import populate
from tests.fakeupstream import FakeUpstream
from tests.server import RunningServer
from tests.faults import blobs, get, start

WHEEL = "tinyproj-1.0-py3-none-any.whl"
FILE = f"/files/tinyproj/{WHEEL}"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


# ------------------------------------------------------------------ helpers


class _Canary(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data


class Canary(Factory):
    """A listener that answers nothing and counts what reaches it."""

    protocol = _Canary

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.port: Any = None

    def listen(self, interface: str) -> "Canary":
        self.port = _reactor().listenTCP(0, self, interface=interface)
        return self

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def untouched(self) -> bool:
        return self.connections == 0 and self.received == b""


@pytest.fixture
def canaries():
    made: list[Canary] = []

    def make(interface: str = "127.0.0.2") -> Canary:
        canary = Canary().listen(interface)
        made.append(canary)
        return canary

    yield make
    for canary in made:
        pytest_twisted.blockon(defer.maybeDeferred(canary.port.stopListening))


@pytest_twisted.async_yield_fixture
async def upstreams(tmp_path: Path):
    """Make more listening fake upstreams (on other addresses); stopped after the test."""
    made: list[FakeUpstream] = []

    async def make(interface: str = "127.0.0.1") -> FakeUpstream:
        fu = FakeUpstream()
        populate(fu, tmp_path / "upstream-dists")
        await fu.listen(_reactor(), interface=interface)
        made.append(fu)
        return fu

    yield make
    for fu in made:
        await fu.stop()


def policy_config(tmp_path: Path, url: str, **upstream: Any) -> configuration.Config:
    data = {
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, "page_ttl": 0},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": url, **upstream},
    }
    return configuration.parse(data, source="<test>")


@pytest_twisted.async_yield_fixture
async def servers():
    made: list[RunningServer] = []

    async def make(config: configuration.Config) -> RunningServer:
        server = await start(config)
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class MapResolver:
    """Resolves the names in ``names`` to the given addresses, the rest as before."""

    def __init__(self, fallback: Any, names: dict[str, list[str]]) -> None:
        self.fallback = fallback
        self.names = names
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> Any:
        if hostName not in self.names:
            return self.fallback.resolveHostName(receiver, hostName, portNumber, addressTypes, transportSemantics)
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        for address in self.names[hostName]:
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return resolution


@pytest.fixture
def resolve():
    """``resolve({"name": ["address", ...]})`` installs a MapResolver as the
    reactor's; the previous one comes back after the test."""
    reactor = _reactor()
    original = reactor.nameResolver

    def install(names: dict[str, list[str]]) -> MapResolver:
        resolver = MapResolver(original, names)
        reactor.installNameResolver(resolver)
        return resolver

    yield install
    reactor.installNameResolver(original)


async def refused(server: RunningServer, path: str, *needles: str) -> str:
    """GET ``path``: a 502 whose body names the refusal; returns the body."""
    response, body = await get(server.root + path)
    text = body.decode("utf-8", "replace")
    assert response.code == 502, (response.code, text)
    for needle in ("refused", *needles):
        assert needle in text, (needle, text)
    return text


# ------------------------------------------------------- links and redirects


@pytest.mark.parametrize("where", ["127.0.0.2", "127.0.0.1-other-port"])
@pytest_twisted.ensureDeferred
async def test_file_links_to_internal_addresses_are_refused(where, tmp_path, fake_upstream, canaries, servers,
                                                            logs):
    """A page linking files on loopback (another address, or the upstream's
    own address on another port: another service) never makes the server
    connect there; the client gets a 502 saying why, and it is logged."""
    canary = canaries("127.0.0.2" if where == "127.0.0.2" else "127.0.0.1")
    host = canary.port.getHost().host
    fake_upstream.file_base = f"http://{host}:{canary.number}/files/"
    server = await servers(policy_config(tmp_path, fake_upstream.url))
    text = await refused(server, FILE, f"{host}:{canary.number}")
    assert "file_hosts" in text
    await refused(server, FILE + ".metadata")
    assert canary.untouched()
    assert blobs(server) == []
    assert logs.has("refused", f"{host}:{canary.number}")


@pytest_twisted.ensureDeferred
async def test_a_listed_file_host_on_an_internal_address_needs_allow_networks(tmp_path, fake_upstream, canaries,
                                                                              upstreams, servers):
    """Listing a host in file_hosts does not open internal addresses: the
    address check refuses loopback until allow_networks names its network."""
    canary = canaries("127.0.0.2")
    fake_upstream.file_base = f"http://127.0.0.2:{canary.number}/files/"
    server = await servers(policy_config(tmp_path / "a", fake_upstream.url,
                                         file_hosts=[f"127.0.0.2:{canary.number}"]))
    await refused(server, FILE, "loopback", "allow_networks")
    assert canary.untouched()

    files = await upstreams("127.0.0.2")
    fake_upstream.file_base = f"http://127.0.0.2:{files.port}/files/"
    allowed = await servers(policy_config(tmp_path / "b", fake_upstream.url, file_hosts=[f"127.0.0.2:{files.port}"],
                                          allow_networks=["127.0.0.2/32"]))
    response, body = await get(allowed.root + FILE)
    assert response.code == 200 and body == fake_upstream.files[WHEEL].read_bytes()
    assert files.count(f"/files/{WHEEL}") == 1


@pytest_twisted.ensureDeferred
async def test_redirects_to_internal_addresses_are_refused(tmp_path, fake_upstream, canaries, servers, logs):
    """Redirects are held to the same policy as links: a file or a page
    redirected to loopback or to the cloud metadata address is refused
    before any connection (the redirect count stays bounded as before)."""
    canary = canaries("127.0.0.2")
    server = await servers(policy_config(tmp_path, fake_upstream.url))
    fake_upstream.fail("redirect", "/files/", location=f"http://127.0.0.2:{canary.number}/files/{WHEEL}")
    await refused(server, FILE, "127.0.0.2")
    fake_upstream.fail("redirect", "/files/", location="http://169.254.169.254/latest/meta-data/")
    await refused(server, FILE, "169.254.169.254")
    fake_upstream.fail("redirect", "/simple/", location=f"http://127.0.0.2:{canary.number}/simple/depproj/")
    response, body = await get(server.root + "/simple/depproj/")
    assert response.code == 503 and b"refused" in body, body  # never seen before: no stale page to serve
    response, body = await get(server.root + "/simple/tinyproj/")
    assert response.code == 200 and response.headers.getRawHeaders("x-pypicache-stale") == ["true"]
    assert canary.untouched()
    assert logs.has("refused", "redirected from")
    fake_upstream.heal("/simple/")
    # Refusals are our policy, not the upstream's health: the breaker stays closed.
    for _ in range(6):
        await refused(server, FILE)
    assert server.app.upstream.state == CLOSED


@pytest_twisted.ensureDeferred
async def test_a_name_resolving_to_a_forbidden_address_is_refused(tmp_path, fake_upstream, canaries, servers,
                                                                  resolve, logs):
    """The check is on the addresses a name resolves to, not on the name:
    file hosts whose names map to loopback or to the metadata address are
    refused before any byte is sent."""
    canary = canaries("127.0.0.2")
    resolver = resolve({"files.example.test": ["127.0.0.2"], "meta.example.test": ["169.254.169.254"],
                        "mapped.example.test": ["::ffff:127.0.0.2"]})
    config = policy_config(tmp_path, fake_upstream.url, file_hosts=[
        f"files.example.test:{canary.number}", "meta.example.test", f"mapped.example.test:{canary.number}"])
    server = await servers(config)
    fake_upstream.file_base = f"http://files.example.test:{canary.number}/files/"
    await refused(server, FILE, "files.example.test", "127.0.0.2", "loopback")
    fake_upstream.file_base = "http://meta.example.test/files/"
    await get(server.root + "/simple/tinyproj/")  # page_ttl 0: the links change now
    await refused(server, FILE, "meta.example.test", "169.254.169.254", "link-local")
    fake_upstream.file_base = f"http://mapped.example.test:{canary.number}/files/"
    await get(server.root + "/simple/tinyproj/")
    await refused(server, FILE, "loopback")
    assert {"files.example.test", "meta.example.test", "mapped.example.test"} <= set(resolver.asked)
    assert canary.untouched()
    assert logs.has("refused", "meta.example.test")


@pytest_twisted.ensureDeferred
async def test_a_name_resolving_to_an_allowed_network_is_fetched(tmp_path, fake_upstream, upstreams, servers,
                                                                 resolve):
    """The positive side of the same resolver: a name mapped into an allowed
    network is fetched (with its own Host header), and of several addresses
    only the allowed ones are tried."""
    files = await upstreams("127.0.0.2")
    resolve({"files.example.test": ["169.254.169.254", "127.0.0.2"]})
    fake_upstream.file_base = f"http://files.example.test:{files.port}/files/"
    server = await servers(policy_config(tmp_path, fake_upstream.url, file_hosts=[f"files.example.test:{files.port}"],
                                         allow_networks=["127.0.0.0/8"]))
    response, body = await get(server.root + FILE)
    assert response.code == 200 and body == fake_upstream.files[WHEEL].read_bytes()
    [(_, _, headers)] = [r for r in files.requests if r[1] == f"/files/{WHEEL}"]
    assert headers["host"] == f"files.example.test:{files.port}"


@pytest_twisted.ensureDeferred
async def test_the_upstream_itself_on_loopback_keeps_working(tmp_path, upstreams, servers):
    """The upstream's own origin is allowed wherever it is, absolute links
    and redirects within it included."""
    fu = await upstreams("127.0.0.1")
    fu.absolute_urls = True
    fu.fail("redirect", "/files/tinyproj-1.0.tar.gz", location=f"{fu.root_url}files/tinyproj-1.0.tar.gz?again",
            times=1)
    server = await servers(policy_config(tmp_path, fu.url))
    for name in (WHEEL, "tinyproj-1.0.tar.gz"):
        response, body = await get(f"{server.root}/files/tinyproj/{name}")
        assert response.code == 200 and body == fu.files[name].read_bytes()


@pytest.mark.parametrize("port", ["0", "65536", "99999999"])
@pytest_twisted.ensureDeferred
async def test_a_redirect_to_port_0_or_out_of_range_is_a_bad_redirect(port, tmp_path, fake_upstream, servers):
    """Port 0 used to become 80 silently; it is a bad redirect, like a port
    out of range."""
    server = await servers(policy_config(tmp_path, fake_upstream.url))
    fake_upstream.fail("redirect", "/files/", location=f"http://127.0.0.1:{port}/files/{WHEEL}")
    response, body = await get(server.root + FILE)
    assert response.code == 502 and b"unusable" in body, body


# ------------------------------------------------------------------- IPv6


@needs_ipv6
@pytest_twisted.ensureDeferred
async def test_ipv6_literal_upstream_end_to_end(tmp_path, upstreams, servers):
    """An upstream at ``http://[::1]:PORT/simple/`` serves pages, files
    (through a redirect to another IPv6 literal URL) and METADATA, and pip
    installs from it."""
    fu = await upstreams("::1")
    assert fu.url.startswith("http://[::1]:")
    fu.file_base = f"{fu.root_url}moved/"
    for name in (WHEEL, WHEEL + ".metadata"):
        fu.fail("redirect", f"/moved/{name}", location=f"http://[0:0::1]:{fu.port}/files/{name}")
    server = await servers(policy_config(tmp_path, fu.url))
    response, body = await get(server.root + "/simple/tinyproj/")
    assert response.code == 200 and WHEEL.encode() in body
    response, body = await get(server.root + FILE)
    assert response.code == 200 and body == fu.files[WHEEL].read_bytes()
    response, body = await get(server.root + FILE + ".metadata")
    assert response.code == 200 and b"Name: tinyproj" in body
    fu.heal()
    fu.file_base = None
    result = await deferToThread(pip_install, server.simple, "depproj", target=tmp_path / "target")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "target" / "depproj").is_dir() and (tmp_path / "target" / "tinyproj").is_dir()


@needs_ipv6
@pytest_twisted.ensureDeferred
async def test_redirect_to_an_ipv6_literal_file_host(tmp_path, fake_upstream, upstreams, servers):
    """A redirect from an IPv4 upstream to an IPv6 literal file host works
    when the policy allows it, and is refused (loopback) when it does not."""
    files = await upstreams("::1")
    fake_upstream.fail("redirect", "/files/", location=f"http://[::1]:{files.port}/files/{WHEEL}")
    server = await servers(policy_config(tmp_path / "a", fake_upstream.url, file_hosts=[f"[::1]:{files.port}"],
                                         allow_networks=["::1/128"]))
    response, body = await get(server.root + FILE)
    assert response.code == 200 and body == fake_upstream.files[WHEEL].read_bytes()
    strict = await servers(policy_config(tmp_path / "b", fake_upstream.url, file_hosts=[f"[::1]:{files.port}"]))
    await refused(strict, FILE, "::1", "loopback")
    assert files.count(f"/files/{WHEEL}") == 1


# ------------------------------------------------------- the pieces alone


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fe80::1%lo", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", {"private", "reserved"}), ("100.64.0.1", "not globally routable"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "private"),
    ("151.101.0.223", None), ("2a04:4e42::223", None), ("::ffff:151.101.0.223", None),
])
def test_forbidden_ranges(address, why):
    import ipaddress

    from pypicache.providers.upstream.policy import forbidden_range

    got = forbidden_range(ipaddress.ip_address(address.partition("%")[0]))
    assert got in why if isinstance(why, set) else got == why


def test_url_rules():
    from pypicache.providers.upstream.policy import FetchPolicy, UpstreamRefused, parse_file_hosts

    def allowed(policy: FetchPolicy, url: str) -> bool:
        try:
            policy.check_url(url)
        except UpstreamRefused:
            return False
        return True

    pypi = FetchPolicy.for_upstream("https://pypi.org/simple/")
    assert allowed(pypi, "https://pypi.org/simple/x/")
    assert allowed(pypi, "https://files.pythonhosted.org/packages/a/b/x.whl")
    assert allowed(pypi, "https://FILES.pythonhosted.org./packages/x.whl")
    assert not allowed(pypi, "http://files.pythonhosted.org/packages/x.whl")  # no downgrade
    assert not allowed(pypi, "https://files.pythonhosted.org:8443/x.whl")
    assert not allowed(pypi, "http://pypi.org/simple/x/")
    assert not allowed(pypi, "https://evil.example/x.whl")
    assert allowed(FetchPolicy.for_upstream("https://test.pypi.org/simple/"),
                   "https://test-files.pythonhosted.org/packages/x.whl")

    own = FetchPolicy.for_upstream("http://127.0.0.1:3141/root/pypi/+simple/")
    assert allowed(own, "http://127.0.0.1:3141/root/pypi/+f/x.whl")
    assert not allowed(own, "http://127.0.0.1:6379/")
    assert not allowed(own, "https://files.pythonhosted.org/x.whl")  # not the public index: not its file host

    listed = FetchPolicy.for_upstream("http://mirror.example/simple/",
                                      parse_file_hosts(["cdn.example", "blobs.example:8080", "[2001:db8::1]"]))
    assert allowed(listed, "http://cdn.example/x.whl") and allowed(listed, "https://cdn.example/x.whl")
    assert not allowed(listed, "http://cdn.example:81/x.whl")
    assert allowed(listed, "http://blobs.example:8080/x.whl") and not allowed(listed, "http://blobs.example/x")
    assert allowed(listed, "http://[2001:db8:0::1]/x.whl")


def test_address_rules():
    from pypicache.providers.upstream.policy import FetchPolicy, UpstreamRefused, parse_networks

    policy = FetchPolicy.for_upstream("http://127.0.0.1:3141/simple/", allow_networks=parse_networks(["10.0.0.0/8"]))

    def allowed(origin: tuple[str, str, int], address: str) -> bool:
        try:
            policy.check_address(origin, address)
        except UpstreamRefused:
            return False
        return True

    assert allowed(("http", "127.0.0.1", 3141), "127.0.0.1")
    assert allowed(("http", "localhost", 3141), "127.0.0.1")  # the upstream's own address and port
    assert not allowed(("http", "localhost", 3142), "127.0.0.1")  # same address, another port: another service
    assert allowed(("https", "files.example", 443), "10.1.2.3")
    assert allowed(("https", "files.example", 443), "::ffff:10.1.2.3")
    assert not allowed(("https", "files.example", 443), "192.168.0.1")
    assert allowed(("https", "files.example", 443), "151.101.0.223")
    named = FetchPolicy.for_upstream("http://pypi.internal:3141/simple/")
    named.check_address(("http", "pypi.internal", 3141), "192.168.7.7")  # wherever the admin's name points


@pytest.mark.parametrize("options, key", [
    ({"file_hosts": "cdn.example"}, "upstream.file_hosts"),
    ({"file_hosts": [5]}, "upstream.file_hosts"),
    ({"file_hosts": ["cdn.example/path"]}, "upstream.file_hosts"),
    ({"file_hosts": ["user@cdn.example"]}, "upstream.file_hosts"),
    ({"file_hosts": ["cdn.example:0"]}, "upstream.file_hosts"),
    ({"file_hosts": ["cdn.example:99999"]}, "upstream.file_hosts"),
    ({"file_hosts": [""]}, "upstream.file_hosts"),
    ({"allow_networks": "10.0.0.0/8"}, "upstream.allow_networks"),
    ({"allow_networks": ["10.0.0.0/33"]}, "upstream.allow_networks"),
    ({"allow_networks": ["10.0.0.1/8"]}, "upstream.allow_networks"),
    ({"allow_networks": ["not a network"]}, "upstream.allow_networks"),
    ({"allow_networks": [10]}, "upstream.allow_networks"),
    ({"url": "http://127.0.0.1:0/simple/"}, "upstream.url"),
])
def test_policy_options_are_checked(options, key, tmp_path):
    from pypicache.errors import ConfigError
    from pypicache.providers import ProviderContext
    from pypicache.providers.upstream.simple import factory

    context = ProviderContext(reactor=_reactor(), threadpool=None, data_dir=tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        factory.create(options, context)


@pytest_twisted.ensureDeferred
async def test_pool_refuses_port_0_and_checks_the_peer_before_sending(canaries):
    """The connection pool never turns port 0 into 80, and with a guard
    checks the address it actually connected to before writing a byte."""
    from pypicache.providers.upstream.http import ConnectionPool
    from pypicache.providers.upstream.policy import UpstreamRefused

    plain = ConnectionPool(_reactor(), connect_timeout=2.0)
    with pytest.raises(ValueError, match="port 0"):
        await plain.request(b"http://127.0.0.1:0/x", []).addTimeout(5, _reactor())

    canary = canaries("127.0.0.2")
    calls: list[str] = []

    def guard(origin: tuple[str, str, int], address: str) -> None:
        calls.append(address)
        if len(calls) > 1:  # let resolution pass, refuse the peer: as if the name's answer changed
            raise UpstreamRefused(f"{address}: refused (test)")

    pool = ConnectionPool(_reactor(), connect_timeout=2.0, guard=guard)
    with pytest.raises(UpstreamRefused):
        await pool.request(f"http://127.0.0.2:{canary.number}/x".encode(), []).addTimeout(5, _reactor())
    assert calls == ["127.0.0.2", "127.0.0.2"]
    assert canary.received == b""
    await pool.close()
