"""Run real pip and uv against a test server, blind to this machine's own config.

This machine (and CI) has ``/etc/pip.conf``, ``/etc/xdg/pip/pip.conf`` (with a
constraints file) and ``PIP_FIND_LINKS`` pointing at local wheel folders.  An
integration test that let pip see them could pass without ever touching the
server under test, so:

* pip: ``--isolated`` drops ``PIP_*`` variables and the user config, but pip
  still reads the *global* config files in isolated mode; only
  ``PIP_CONFIG_FILE=/dev/null`` makes it skip every config file.  The cache is
  turned off with ``--no-cache-dir`` on the command line rather than
  ``PIP_NO_CACHE_DIR`` (whose boolean parsing has been inverted/odd across
  pip versions, and which ``--isolated`` would ignore anyway).
* uv: ``--no-config`` and ``--no-cache``, plus ``UV_NO_CONFIG``/``UV_NO_CACHE``
  and no inherited ``UV_*`` variables.

These calls block for seconds: from a test running on the reactor, call them
through ``twisted.internet.threads.deferToThread`` so the reactor keeps
serving the requests they make.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["isolated_env", "pip_install", "uv_pip_install", "UV"]

#: The uv binary installed in the same environment as the test interpreter.
UV = Path(sys.executable).parent / "uv"

_TIMEOUT = 120


def isolated_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``os.environ`` without any ``PIP_*``/``UV_*`` setting, made hermetic."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(
        {
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "UV_NO_CONFIG": "1",
            "UV_NO_CACHE": "1",
        }
    )
    if extra:
        env.update(extra)
    return env


def pip_install(
    index_url: str,
    *reqs: str,
    target: Path,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``pip install --target DIR`` from ``index_url`` only; output captured, not checked."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--index-url",
        index_url,
        "--target",
        str(target),
        *args,
        *reqs,
    ]
    return subprocess.run(
        cmd, env=isolated_env(env), capture_output=True, text=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL
    )


def uv_pip_install(
    index_url: str,
    *reqs: str,
    target: Path,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``uv pip install --target DIR`` from ``index_url`` only; output captured, not checked."""
    cmd = [
        str(UV),
        "pip",
        "install",
        "--no-cache",
        "--no-config",
        "--python",
        sys.executable,
        "--target",
        str(target),
        "--index-url",
        index_url,
        *args,
        *reqs,
    ]
    return subprocess.run(
        cmd, env=isolated_env(env), capture_output=True, text=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL
    )
