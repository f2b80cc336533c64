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


# ------------------------------------------------------------ the lockers: poetry, pdm, pip-tools
#
# Each keeps its own config, caches and credentials under the home directory:
# HOME and the XDG folders point into the test's tmp_path, every POETRY_*/PDM_*
# variable is dropped, keyring is the null backend (no desktop prompt, no
# stored password found), and the tool never checks for its own updates.

#: The tools installed beside the test interpreter by the ``test`` extra.
POETRY = Path(sys.executable).parent / "poetry"
PDM = Path(sys.executable).parent / "pdm"
PIP_COMPILE = Path(sys.executable).parent / "pip-compile"


def locker_env(home: Path) -> dict[str, str]:
    """:func:`isolated_env` with a private home for poetry, pdm and pip-tools."""
    env = {k: v for k, v in isolated_env().items() if not k.startswith(("POETRY_", "PDM_", "XDG_", "VIRTUAL_ENV"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_STATE_HOME": str(home / "state"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            "POETRY_CONFIG_DIR": str(home / "poetry-config"),
            "POETRY_CACHE_DIR": str(home / "poetry-cache"),
            "POETRY_DATA_DIR": str(home / "poetry-data"),
            "POETRY_VIRTUALENVS_IN_PROJECT": "true",
            "POETRY_VIRTUALENVS_USE_POETRY_PYTHON": "true",
            "POETRY_NO_INTERACTION": "1",
            "PDM_HOME": str(home / "pdm-home"),
            "PDM_CACHE_DIR": str(home / "pdm-cache"),
            "PDM_CONFIG_FILE": str(home / "pdm-config.toml"),
            "PDM_CHECK_UPDATE": "false",
            "PDM_IGNORE_SAVED_PYTHON": "1",
            "PDM_NON_INTERACTIVE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_tool(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float = _TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run one locker command in ``cwd``; output captured, not checked.

    A hang comes back as a failed run (return code -9) carrying what the tool
    printed until then, so the test's message shows where it stuck."""
    try:
        return subprocess.run(
            argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as expired:
        def text(data: bytes | str | None) -> str:
            return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")

        return subprocess.CompletedProcess(argv, -9, text(expired.stdout), text(expired.stderr) + f"\n(timed out after {timeout} s)")
