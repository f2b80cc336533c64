"""Listening ports: the plain TCP listener is bound before Twisted's network
stack is imported and adopted by the reactor; every other endpoint string
goes through Twisted's parser."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web import resource, server

from pypicache.daemon import listening
from tests.clients import isolated_env


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:8141", ("", 8141, 50)),
        ("tcp:8141:interface=127.0.0.1", ("127.0.0.1", 8141, 50)),
        ("tcp:port=0:backlog=7:interface=0.0.0.0", ("0.0.0.0", 0, 7)),
        ("tcp:65535", ("", 65535, 50)),
    ],
)
def test_plain_tcp_endpoints_are_bound_early(endpoint, expected):
    assert listening.plain_tcp(endpoint) == expected


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp6:8141",
        "unix:/run/pypicache.sock",
        "ssl:8443:privateKey=key.pem",
        "systemd:domain=INET:index=0",
        r"tcp:8141:interface=\:\:1",  # escapes: Twisted's grammar
        "tcp:8141:interface=localhost",  # names are resolved by Twisted
        "tcp:99999",  # out of range: Twisted words the error
        "tcp:eighty",
        "tcp:",
        "tcp",
        "tcp:8141:8142",
        "tcp:8141:port=8142",
        "tcp:8141:reuse=1",
    ],
)
def test_other_endpoints_are_left_to_twisted(endpoint):
    assert listening.plain_tcp(endpoint) is None
    assert listening.bind_early(endpoint) is None


def test_a_busy_port_fails_early_naming_the_endpoint():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        with pytest.raises(listening.ListenError) as raised:
            listening.bind_early(endpoint)
    assert str(raised.value).startswith(f"server.listen: cannot listen on {endpoint!r}: ")
    assert "in use" in str(raised.value)


def test_binding_early_imports_no_network_stack():
    """The point of binding early: neither the reactor nor the TLS libraries
    (a quarter of start-up) are imported to get the port listening."""
    script = """
import json, socket, sys
from pypicache.daemon import tap
from pypicache.daemon.listening import bind_early
sock = bind_early("tcp:0:interface=127.0.0.1")
client = socket.create_connection(sock.getsockname(), timeout=2)  # queued by the kernel
heavy = ["twisted.internet.reactor", "twisted.internet.endpoints", "twisted.internet.tcp", "OpenSSL"]
print(json.dumps([m for m in heavy if m in sys.modules]))
"""
    result = subprocess.run([sys.executable, "-c", script], env=isolated_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


class _Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


@pytest.mark.parametrize("early", [True, False])
@pytest_twisted.ensureDeferred
async def test_adopted_and_parsed_ports_serve_and_close(early, monkeypatch):
    sock = listening.bind_early("tcp:0:interface=127.0.0.1")
    port_number = sock.getsockname()[1]
    endpoint = f"tcp:{port_number}:interface=127.0.0.1"
    sock.close()
    if not early:  # the same port through Twisted's parser
        monkeypatch.setattr(listening, "plain_tcp", lambda endpoint: None)
    listener = listening.Listener(endpoint, server.Site(_Hello()))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port_number)) != 0  # built, not bound
    listener.bind_early()
    assert (listener.early is not None) is early
    listener.privilegedStartService()
    assert listener.early is None
    listener.startService()
    try:
        response = await treq.get(f"http://127.0.0.1:{port_number}/")
        assert response.code == 200
        assert await response.content() == b"hello"
    finally:
        await listener.stopService()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port_number)) != 0  # no copy of the socket left open


def test_a_bad_endpoint_is_a_config_error():
    with pytest.raises(listening.ListenError) as raised:
        listening.listen(reactor, "tcpp:8141", server.Site(_Hello()))
    assert str(raised.value).startswith("config error: server.listen: bad endpoint 'tcpp:8141': ")
