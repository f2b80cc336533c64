"""A real headless browser for the web UI's tests: Debian's chromium, run once per page.

``--dump-dom`` gives the document after the browser parsed it (so escaping is
judged by what a browser builds, not by our own reading of the bytes) and
``--screenshot`` a PNG.  Every host name but 127.0.0.1 resolves to nothing,
so a page that tried to load anything from outside could not, and the test
checks that the document names no outside URL at all.

Runs in a thread (the server under test lives on this process's reactor);
the browser gets its own session so that a timeout kills it and its helpers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's package)")

TIMEOUT = 40.0


def _command(profile: str, *args: str) -> list[str]:
    assert CHROMIUM is not None
    flags = ["--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--hide-scrollbars",
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    return [CHROMIUM, *flags, *args]


def _run(*args: str) -> str:
    """Blocking: run chromium with ``args``; its stdout."""
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


async def dom(url: str) -> str:
    """The serialized DOM of ``url`` after the browser loaded it."""
    from twisted.internet.threads import deferToThread

    return await deferToThread(_run, "--dump-dom", url)


async def screenshot(url: str, path: Any, size: str = "1200,800") -> None:
    from twisted.internet.threads import deferToThread

    await deferToThread(_run, f"--screenshot={path}", f"--window-size={size}", url)
