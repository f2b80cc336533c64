"""Run ``twistd pypicache`` as a real subprocess: a plain helper module.

The fake upstream runs on the test's reactor, so a daemon is spawned with
``reactor.spawnProcess`` and awaited, never waited for in a blocking call.
The ``spawn`` fixture (conftest.py) kills and reaps whatever is left running.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import treq
from twisted.internet import defer, error, protocol

#: The twistd of the environment the tests run in (not whatever PATH finds).
TWISTD = Path(sys.executable).parent / "twistd"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
JSON = "application/vnd.pypi.simple.v1+json"


def free_port() -> int:
    """A loopback port that was free a moment ago (the daemon's --listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class _Collector(protocol.ProcessProtocol):
    """Keeps everything the process prints; ``ended`` fires with its status."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.status: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        # ProcessDone/ProcessTerminated: an exit code, or minus the signal.
        self.status = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        self.ended.callback(self.status)


@attrs.define
class Daemon:
    """A spawned ``twistd -n pypicache`` and the port it was told to use."""

    proto: _Collector
    transport: Any
    port: int | None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.proto.output.decode("utf-8", "replace")

    @property
    def running(self) -> bool:
        return self.proto.status is None

    async def get(self, path: str, accept: str | None = None, timeout: float = 10.0) -> tuple[int, bytes, Any]:
        """GET on a fresh connection (nothing left open for the reactor)."""
        from twisted.internet import reactor

        headers = {"accept": [accept]} if accept else None
        d = treq.get(self.root + path, headers=headers, persistent=False, timeout=timeout)
        response = await d
        body = await treq.content(response).addTimeout(timeout, reactor)
        return response.code, body, response.headers

    async def wait_until_answers(self, path: str, timeout: float = START_TIMEOUT) -> tuple[int, bytes, Any]:
        """Poll ``path`` until the daemon answers it (any status)."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            if not self.running:
                pytest.fail(f"daemon exited with {self.proto.status} before answering:\n{self.output}")
            try:
                return await self.get(path, timeout=2.0)
            except Exception as e:  # refused, or not answering yet
                if reactor.seconds() > deadline:
                    pytest.fail(f"daemon did not answer {path} within {timeout}s ({e!r}):\n{self.output}")
            await sleep(0.1)

    async def exited(self, timeout: float) -> int:
        """The exit status, failing the test if it takes more than ``timeout``."""
        from twisted.internet import reactor

        if self.proto.status is not None:
            return self.proto.status
        waiter: defer.Deferred[int] = defer.Deferred()
        self.proto.ended.addBoth(lambda r: (waiter.callback(r) if not waiter.called else None, r)[1])
        waiter.addTimeout(timeout, reactor)
        try:
            return await waiter
        except defer.TimeoutError:
            pytest.fail(f"daemon still running after {timeout}s:\n{self.output}")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM; the daemon must shut down cleanly within ``timeout``,
        with exit status 0.

        (twistd's own SIGTERM handler would end the process by re-raising
        the signal, status 143; the server takes SIGTERM over to drain its
        connections and exit 0: pypicache.daemon.tap.)
        """
        self.transport.signalProcess("TERM")
        status = await self.exited(timeout)
        assert status == 0, f"exit status {status}:\n{self.output}"
        assert "Server Shut Down." in self.output, self.output
        assert "Traceback" not in self.output, self.output

    def kill(self) -> None:
        if self.running:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


def twistd_argv(args: Sequence[str]) -> list[str]:
    """``twistd -n`` (foreground), no pid file, log to stdout, then ``args``."""
    return [sys.executable, str(TWISTD), "-n", "--pidfile=", "--logfile=-", *args]



def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
