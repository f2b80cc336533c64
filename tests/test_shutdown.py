"""Stopping without dropping requests (pypicache.web.draining,
pypicache.daemon.tap, pypicache.daemon.systemd).

In process first: the drain closes idle keep-alive connections at once,
gives a just-accepted connection time for its first request, lets requests
in flight finish (answering ``Connection: close``), and cuts what is left
at the timeout.  Then a real ``twistd`` on a socket it inherits the way
systemd hands one over (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``,
the socket as descriptor 3) and a ``NOTIFY_SOCKET`` this test reads: it says
READY=1, drains on SIGTERM and exits 0; and a restart under a client loop
fails no request.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from pypicache.daemon import systemd
from pypicache.web import draining
from tests.clients import isolated_env
from tests.daemon import JSON, STOP_TIMEOUT, Daemon, _Collector, sleep, twistd_argv, write_config
from tests.server import make_config, start_server


# ------------------------------------------------------------ helpers


class RawClient:
    """A non-blocking socket read on the reactor's schedule (no thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.received = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def poll(self) -> None:
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.received += chunk

    async def until(self, done: Any, timeout: float = 5.0) -> None:
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            self.poll()
            if done(self):
                return
            if reactor.seconds() > deadline:
                pytest.fail(f"timed out; received {self.received[:300]!r}, closed={self.closed}")
            await sleep(0.02)

    def close(self) -> None:
        self.sock.close()


def get(path: str, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAccept: " + JSON.encode() + b"\r\n" + extra
            + b"\r\n")


def whole_answer(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def stop_listening(server: Any) -> None:
    """What the listeners do first when the server stops (once: the
    fixture-less teardown below must not stop the port again)."""
    d = server.port.stopListening()
    server.port.stopListening = lambda: defer.succeed(None)
    await d


def wheel_of(fake_upstream: Any) -> tuple[str, bytes]:
    name = next(n for n in sorted(fake_upstream.files) if n.startswith("tinyproj-2.0") and n.endswith(".whl"))
    return name, fake_upstream.files[name].read_bytes()


#: Longer than the drain gives a connection that has sent nothing yet.
FRESH_GRACE_AND_A_BIT = draining.FRESH_GRACE + 0.5


def slow_file(fake_upstream: Any, filename: str, seconds: float) -> None:
    """The upstream sends ``filename`` over about ``seconds`` (a first
    download the server streams to its client as it arrives)."""
    size = len(fake_upstream.files[filename].read_bytes())
    fake_upstream.fail("slow", f"/files/{filename}", rate=max(1, int(size / seconds)))


# ------------------------------------------------------------ the drain, in process


@pytest.mark.parametrize("fast_path", [True, False])
@pytest_twisted.ensureDeferred
async def test_drain_closes_idle_connections_and_finishes_requests_in_flight(tmp_path, fake_upstream, fast_path):
    from twisted.internet import reactor

    server = await start_server(make_config(tmp_path, fake_upstream.url, fast_path=fast_path))
    port = server.port.getHost().port
    clients: list[RawClient] = []
    try:
        idle = RawClient(port)
        clients.append(idle)
        idle.send(get("/simple/tinyproj/"))
        await idle.until(lambda c: whole_answer(c.received))
        assert idle.received.startswith(b"HTTP/1.1 200") and not idle.closed

        wheel, data = wheel_of(fake_upstream)
        slow_file(fake_upstream, wheel, 2.0)
        download = treq.get(f"{server.root}/files/tinyproj/{wheel}", persistent=False)
        fresh = RawClient(port)  # accepted, its request not sent yet
        clients.append(fresh)
        await sleep(0.5)

        await stop_listening(server)  # what the listeners do first
        began = reactor.seconds()
        drained = defer.ensureDeferred(draining.drain(server.app.factory, reactor, 10.0))
        await idle.until(lambda c: c.closed, timeout=1.0)  # idle keep-alive: closed at once
        assert reactor.seconds() - began < 1.0

        fresh.send(get("/simple/tinyproj/"))  # within the grace: answered, then closed
        await fresh.until(lambda c: c.closed)
        assert fresh.received.startswith(b"HTTP/1.1 200"), fresh.received[:200]
        assert b"\r\nconnection: close\r\n" in fresh.received.lower().partition(b"\r\n\r\n")[0] + b"\r\n"

        response = await download
        assert response.code == 200
        assert await treq.content(response) == data  # the transfer in flight completed intact
        assert await drained is True
        assert not server.app.factory.live
        assert reactor.seconds() - began < 10.0
    finally:
        for client in clients:
            client.close()
        await server.stop()


@pytest.mark.parametrize("fast_path", [True, False])
@pytest_twisted.ensureDeferred
async def test_requests_half_received_when_the_drain_starts_are_answered(tmp_path, fake_upstream, fast_path):
    """A head begun (on the fast path or twisted.web) and a body begun are
    requests in flight: each is answered, with ``Connection: close``."""
    from twisted.internet import reactor

    server = await start_server(make_config(tmp_path, fake_upstream.url, fast_path=fast_path))
    port = server.port.getHost().port
    clients: list[RawClient] = []
    try:
        warm = RawClient(port)
        clients.append(warm)
        warm.send(get("/simple/tinyproj/", close=True))  # cached: the fast path can answer it now
        await warm.until(lambda c: c.closed)
        head, body = RawClient(port), RawClient(port)
        clients += [head, body]
        request = get("/simple/tinyproj/")
        head.send(request[:20])
        body.send(b"POST /simple/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n12345")
        await sleep(0.3)
        await stop_listening(server)
        drained = defer.ensureDeferred(draining.drain(server.app.factory, reactor, 10.0))
        await sleep(FRESH_GRACE_AND_A_BIT)
        assert not head.closed and not body.closed
        head.send(request[20:])
        body.send(b"67890")
        for client in (head, body):
            await client.until(lambda c: c.closed)
            answer_head = client.received.partition(b"\r\n\r\n")[0].lower()
            assert b"\r\nconnection: close" in answer_head, client.received[:300]
        assert head.received.startswith(b"HTTP/1.1 200"), head.received[:200]
        assert body.received.startswith(b"HTTP/1.1 405"), body.received[:200]
        assert await drained is True
    finally:
        for client in clients:
            client.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_drain_cuts_what_is_left_at_the_timeout(tmp_path, fake_upstream):
    from twisted.internet import reactor

    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        wheel, _ = wheel_of(fake_upstream)
        slow_file(fake_upstream, wheel, 20.0)
        download = treq.get(f"{server.root}/files/tinyproj/{wheel}", persistent=False)
        await sleep(0.5)
        await stop_listening(server)
        began = reactor.seconds()
        assert await defer.ensureDeferred(draining.drain(server.app.factory, reactor, 0.5)) is False
        assert 0.5 <= reactor.seconds() - began < 2.0
        with pytest.raises(Exception):
            response = await download
            await treq.content(response)
        assert not server.app.factory.live
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_drain_with_nothing_open_is_immediate(tmp_path, fake_upstream):
    from twisted.internet import reactor

    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        await stop_listening(server)
        began = reactor.seconds()
        assert await defer.ensureDeferred(draining.drain(server.app.factory, reactor, 30.0)) is True
        assert reactor.seconds() - began < 0.5
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_drains_the_monitoring_listener_and_ready_says_shutting_down(tmp_path, fake_upstream,
                                                                                      monkeypatch):
    """The whole service tree in process, with a [monitoring] listener:
    stopping closes its idle keep-alive connection at once and stops its
    port, a scrape half sent when the stop began is answered, ``/ready``
    answers 503 from the start of the drain on both listeners while
    ``/health`` answers 200, and systemd hears how many connections are left."""
    from prometheus_client.parser import text_string_to_metric_families
    from twisted.internet import reactor

    from pypicache.daemon import config as configuration
    from pypicache.daemon import tap
    from tests.daemon import free_port

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@pypicache-test-{uuid.uuid4().hex}"
    notify.bind("\0" + name[1:])
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    main, monitoring = free_port(), free_port()
    top = tap.Server(configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, "shutdown_timeout": 10,
                   "listen": f"tcp:{main}:interface=127.0.0.1"},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": fake_upstream.url},
        "monitoring": {"listen": f"tcp:{monitoring}:interface=127.0.0.1"},
    }, source="<test>"))
    top.privilegedStartService()
    top.startService()
    clients: list[RawClient] = []
    stopping: Any = None
    try:
        idle = RawClient(monitoring)
        idle.send(get("/health"))
        await idle.until(lambda c: whole_answer(c.received))
        assert idle.received.startswith(b"HTTP/1.1 200") and not idle.closed
        scrape = RawClient(monitoring)
        scrape.send(get("/metrics")[:10])  # a scrape in flight
        probes = {(port, path): RawClient(port) for port in (main, monitoring) for path in ("/ready", "/health")}
        clients += [idle, scrape, *probes.values()]
        await sleep(0.3)

        began = reactor.seconds()
        stopping = top.stopService()
        await idle.until(lambda c: c.closed, timeout=1.0)
        assert reactor.seconds() - began < 1.0
        await sleep(0.1)
        with pytest.raises(ConnectionRefusedError):  # the monitoring port no longer accepts
            socket.create_connection(("127.0.0.1", monitoring), timeout=2).close()
        for (port, path), probe in probes.items():
            probe.send(get(path))
            await probe.until(lambda c: c.closed)
            head, _, body = probe.received.partition(b"\r\n\r\n")
            assert b"\r\nconnection: close" in head.lower(), probe.received[:300]
            if path == "/ready":
                assert head.startswith(b"HTTP/1.1 503") and b"shutting down" in body, (port, probe.received[:300])
            else:
                assert head.startswith(b"HTTP/1.1 200") and body == b"ok\n", (port, probe.received[:300])
        scrape.send(get("/metrics")[10:])
        await scrape.until(lambda c: c.closed)
        head, _, body = scrape.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close" in head.lower(), head
        assert any(f.name == "pypicache_http_requests" for f in text_string_to_metric_families(body.decode()))
        await stopping
        stopping = None
        assert top.app_service.drained is True
        assert not top.app_service.app.monitoring.live
        told = [line for line in notify.recv(65536).decode().split("\n")]
        while True:
            try:
                told += notify.recv(65536).decode().split("\n")
            except BlockingIOError:
                break
        counts = [int(line.split(": ")[1].split()[0]) for line in told if line.startswith("STATUS=shutting down")]
        assert counts[-1] == 0 and counts[0] > 0 and counts == sorted(counts, reverse=True), told
    finally:
        for client in clients:
            client.close()
        if stopping is not None:
            await stopping
        notify.close()


# ------------------------------------------------------------ sd_notify


def test_notify_sends_one_datagram_and_is_a_no_op_without_systemd(tmp_path):
    name = f"@pypicache-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name[1:])
        assert systemd.notify("READY=1", "STATUS=up", environ={"NOTIFY_SOCKET": name})
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"
        path = str(tmp_path / "n.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as by_path:
            by_path.bind(path)
            assert systemd.notify("STOPPING=1", environ={"NOTIFY_SOCKET": path})
            assert by_path.recv(4096) == b"STOPPING=1"
    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


# ------------------------------------------------------------ the real daemon on an inherited socket


class Activation:
    """What systemd gives a socket-activated service: a listening socket
    (descriptor 3 in the child, ``LISTEN_FDS=1``, ``LISTEN_FDNAMES``,
    ``LISTEN_PID`` set to the child's own pid by a shell that then execs
    twistd) and a ``NOTIFY_SOCKET`` (abstract namespace) read here."""

    NAME = "pypicache"

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.notify_name = f"@pypicache-test-{uuid.uuid4().hex}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind("\0" + self.notify_name[1:])
        self.notify.setblocking(False)
        self.messages: list[str] = []
        self.daemons: list[Daemon] = []

    def spawn(self, args: list[str], cwd: Path) -> Daemon:
        from twisted.internet import reactor

        env = isolated_env({"PYTHONUNBUFFERED": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": self.NAME,
                            "NOTIFY_SOCKET": self.notify_name})
        env.pop("LISTEN_PID", None)
        argv = ["/bin/sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh", *twistd_argv(args)]
        proto = _Collector()
        transport = reactor.spawnProcess(proto, argv[0], argv, env=env, path=str(cwd),
                                         childFDs={0: "w", 1: "r", 2: "r", 3: self.listener.fileno()})
        transport.closeStdin()
        daemon = Daemon(proto, transport, self.port)
        self.daemons.append(daemon)
        return daemon

    async def message(self, daemon: Daemon, prefix: str, timeout: float = 30.0) -> str:
        """The next notification starting with ``prefix`` (the lines of one datagram are kept in order)."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            while True:
                try:
                    self.messages += self.notify.recv(4096).decode().split("\n")
                except BlockingIOError:
                    break
            for i, line in enumerate(self.messages):
                if line.startswith(prefix):
                    del self.messages[:i + 1]
                    return line
            if not daemon.running and prefix != "STOPPING":
                pytest.fail(f"daemon exited with {daemon.proto.status} before {prefix}:\n{daemon.output}")
            if reactor.seconds() > deadline:
                pytest.fail(f"no {prefix} from the daemon within {timeout}s:\n{daemon.output}")
            await sleep(0.05)

    def close(self) -> None:
        self.listener.close()
        self.notify.close()


@pytest_twisted.async_yield_fixture
async def activation() -> AsyncIterator[Activation]:
    from twisted.internet import reactor

    act = Activation()
    try:
        yield act
    finally:
        for daemon in act.daemons:
            if daemon.running:
                daemon.kill()
                d = daemon.proto.ended
                d.addTimeout(STOP_TIMEOUT, reactor)
                try:
                    await d
                except Exception:
                    pass
        act.close()


def daemon_config(tmp_path: Path, upstream: str, shutdown_timeout: float = 30) -> Path:
    return write_config(tmp_path / "pypicache.toml", f"""
[server]
data_dir = "data"
listen = "tcp:1:interface=127.0.0.1"   # replaced by --listen
shutdown_timeout = {shutdown_timeout}
[http]
connect_timeout = 2
read_timeout = 5
page_timeout = 5
[upstream]
url = "{upstream}"
""")


async def stopped(act: Activation, daemon: Daemon, timeout: float = 20.0) -> int:
    daemon.transport.signalProcess("TERM")
    status = await daemon.exited(timeout)
    assert "Traceback" not in daemon.output, daemon.output
    return status


@pytest_twisted.ensureDeferred
async def test_inherited_socket_ready_and_a_clean_stop(tmp_path, fake_upstream, activation):
    conf = daemon_config(tmp_path, fake_upstream.url)
    daemon = activation.spawn(["pypicache", "--config", str(conf), "--listen",
                               f"systemd:domain=INET:name={Activation.NAME}"], tmp_path)
    ready = await activation.message(daemon, "READY=1")
    assert ready == "READY=1"
    status_line = await activation.message(daemon, "STATUS=")
    assert "systemd:domain=INET" in status_line
    # Ready means answering, through the socket the test holds.
    code, body, _ = await daemon.get("/simple/tinyproj/", accept=JSON)
    assert code == 200 and json.loads(body)["name"] == "tinyproj"
    assert await stopped(activation, daemon) == 0, daemon.output
    assert await activation.message(daemon, "STOPPING=1")
    assert "Server Shut Down." in daemon.output
    # The socket outlived the process: a connection now is queued, not refused.
    with socket.create_connection(("127.0.0.1", activation.port), timeout=2):
        pass


@pytest_twisted.ensureDeferred
async def test_a_systemd_endpoint_without_a_socket_is_one_line(tmp_path, spawn):
    conf = write_config(tmp_path / "c.toml", '[server]\ndata_dir = "data"\n')
    daemon = spawn(twistd_argv(["pypicache", "--config", str(conf), "--listen", "systemd:domain=INET:index=0"]),
                   env={"LISTEN_FDS": "", "LISTEN_PID": "", "LISTEN_FDNAMES": ""})
    status = await daemon.exited(15.0)
    assert status == 1, daemon.output
    assert "Traceback" not in daemon.output
    naming = [line for line in daemon.output.splitlines() if "systemd:domain=INET:index=0" in line]
    assert len(naming) == 1 and "no socket inherited from systemd" in naming[0], daemon.output


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_a_restart_under_a_client_loop_fails_no_request(tmp_path, fake_upstream, activation):
    """The systemd restart: SIGTERM, the old process drains and exits 0, a
    new one starts on the same socket.  Clients request pages (new
    connections each, and keep-alive ones) and a file all along; every
    request succeeds, some of them queued in the socket while no process
    served it."""
    from twisted.internet import reactor
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    conf = daemon_config(tmp_path, fake_upstream.url)
    args = ["pypicache", "--config", str(conf), "--listen", "systemd:domain=INET:index=0"]
    old = activation.spawn(args, tmp_path)
    await activation.message(old, "READY=1")
    root = f"http://127.0.0.1:{activation.port}"
    code, body, _ = await old.get("/simple/tinyproj/", accept=JSON)
    assert code == 200
    wheel, data = wheel_of(fake_upstream)
    file_url = urljoin(root + "/simple/tinyproj/", next(f["url"] for f in json.loads(body)["files"]
                                                        if f["filename"] == wheel))

    pool = HTTPConnectionPool(reactor, persistent=True)  # keep-alive, as pip and uv do
    keep_alive = HTTPClient(Agent(reactor, pool=pool))
    done: list[tuple[float, float]] = []  # (sent, answered)
    failures: list[str] = []
    running = True

    async def loop(what: str) -> None:
        while running:
            sent = reactor.seconds()
            try:
                if what == "file":
                    response = await treq.get(file_url, persistent=False, timeout=30)
                    ok = response.code == 200 and await treq.content(response) == data
                else:
                    client = keep_alive if what == "keep-alive" else treq
                    kw = {} if what == "keep-alive" else {"persistent": False}
                    response = await client.get(root + "/simple/tinyproj/", headers={"accept": [JSON]},
                                                timeout=30, **kw)
                    ok = response.code == 200 and json.loads(await treq.content(response))["name"] == "tinyproj"
                if not ok:
                    failures.append(f"{what}: status {response.code}")
            except Exception as e:
                failures.append(f"{what}: {e!r}")
            done.append((sent, reactor.seconds()))

    loops = [defer.ensureDeferred(loop(what)) for what in ("page", "page", "keep-alive", "file")]
    try:
        await sleep(1.0)
        stopping = reactor.seconds()
        assert await stopped(activation, old) == 0, old.output
        new = activation.spawn(args, tmp_path)
        await activation.message(new, "READY=1")
        ready = reactor.seconds()
        await sleep(1.0)
    finally:
        running = False
        await defer.DeferredList(loops)
        await pool.closeCachedConnections()
    assert failures == [], failures
    assert len(done) > 20, done
    across = [(s, a) for s, a in done if stopping < s and a > ready]  # sent while no process was serving
    assert across, (stopping, ready, done)
    assert await stopped(activation, new) == 0, new.output


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_slow_download_finish_and_cuts_at_the_timeout(tmp_path, fake_upstream, activation):
    """A first download (the upstream trickles it over ~3 s) in flight when
    SIGTERM arrives completes intact, systemd's STATUS= counts the
    connections left, and the exit is 0; with
    shutdown_timeout = 1 a longer one is cut and the exit status is 1."""
    from twisted.internet import reactor

    wheel, data = wheel_of(fake_upstream)
    for timeout, seconds, expected in ((30, 3.0, 0), (1, 20.0, 1)):
        workdir = tmp_path / f"t{timeout}"
        workdir.mkdir()
        conf = daemon_config(workdir, fake_upstream.url, shutdown_timeout=timeout)
        daemon = activation.spawn(["pypicache", "--config", str(conf), "--listen", "systemd:domain=INET:index=0"],
                                  workdir)
        await activation.message(daemon, "READY=1")
        code, _, _ = await daemon.get("/simple/tinyproj/", accept=JSON)
        assert code == 200
        fake_upstream.heal()
        slow_file(fake_upstream, wheel, seconds)
        download = treq.get(f"{daemon.root}/files/tinyproj/{wheel}", persistent=False, timeout=40)
        await sleep(1.0)
        began = reactor.seconds()
        status = await stopped(activation, daemon, timeout=30.0)
        assert status == expected, daemon.output
        if expected == 0:
            response = await download
            assert response.code == 200
            assert await treq.content(response) == data
            # systemd heard how many connections the drain waited for, down to none.
            first = await activation.message(daemon, "STATUS=shutting down: ")
            assert first != "STATUS=shutting down: 0 connection(s) left", first
            assert await activation.message(daemon, "STATUS=shutting down: 0 ") == \
                "STATUS=shutting down: 0 connection(s) left"
        else:
            assert reactor.seconds() - began < 10.0
            assert "still busy after server.shutdown_timeout" in daemon.output
            with pytest.raises(Exception):
                response = await download
                await treq.content(response)
