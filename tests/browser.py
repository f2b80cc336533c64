"""A real headless browser for the web UI's tests: Debian's chromium, run once per page.

``--dump-dom`` gives the document after the browser parsed it (so escaping is
judged by what a browser builds, not by our own reading of the bytes) and
``--screenshot`` a PNG.  The browser's proxy is a recorder on 127.0.0.1 that
answers nothing: every request for another host (loopback goes direct)
reaches it and is noted, so a test sees any request a page made to the
outside, and none leaves the machine.  Host names resolve to nothing too.
The browser's own background calls (its update and time services, hosts
under :data:`BROWSER_HOSTS`) are told apart and ignored.

Runs in a thread (the server under test lives on this process's reactor);
the browser gets its own session so that a timeout kills it and its helpers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from typing import Any

import attrs
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's package)")

TIMEOUT = 40.0
#: Chromium's own services, which it calls whatever page it shows.
BROWSER_HOSTS = re.compile(r"(^|\.)(google\.com|googleapis\.com|gstatic\.com)$")


@attrs.frozen
class Page:
    """A page as the browser built it, and the outside hosts it asked for."""

    dom: str
    outside: tuple[str, ...]


class _Recorder:
    """A proxy that records the request line of each connection and closes it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.lines.append(conn.recv(4096).split(b"\r\n", 1)[0])
                except OSError:
                    pass

    def close(self) -> tuple[str, ...]:
        """Stop; the hosts asked for, but the browser's own."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        hosts = []
        for line in self.lines:
            m = re.match(rb"[A-Z]+ (?:[a-z]+://)?([^/:\s]+)", line)
            host = m.group(1).decode("ascii", "replace") if m else repr(line)
            if not BROWSER_HOSTS.search(host):
                hosts.append(host)
        return tuple(hosts)


def _command(profile: str, *args: str) -> list[str]:
    assert CHROMIUM is not None
    flags = ["--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--hide-scrollbars",
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    return [CHROMIUM, *flags, *args]


def _run(*args: str) -> Page:
    """Blocking: run chromium with ``args``; its stdout, and the outside hosts asked for."""
    recorder = _Recorder()
    try:
        out = _chromium(f"--proxy-server=http://127.0.0.1:{recorder.port}", *args)
    finally:
        outside = recorder.close()
    return Page(out, outside)


def _chromium(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen(_command(profile, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                                env={**os.environ, "HOME": profile})
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"chromium did not finish within {TIMEOUT} s: {args}") from None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers it may have left
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, err[-2000:]
    return out


async def load(url: str) -> Page:
    """``url`` loaded: its serialized DOM, and the outside hosts it asked for."""
    from twisted.internet.threads import deferToThread

    return await deferToThread(_run, "--dump-dom", url)


async def screenshot(url: str, path: Any, size: str = "1200,800") -> None:
    from twisted.internet.threads import deferToThread

    await deferToThread(_run, f"--screenshot={path}", f"--window-size={size}", url)
