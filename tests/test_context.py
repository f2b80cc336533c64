"""The one helper that builds a process's thread pool and provider context
(pypicache.daemon.context), and what ``exclusive`` tells providers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pypicache import providers
from pypicache.daemon.context import start_context, stop_context
from pypicache.providers import HTTPSettings
from tests.clients import isolated_env


def test_start_context_starts_a_pool_that_stop_context_stops(tmp_path: Path) -> None:
    from twisted.internet import reactor

    http = HTTPSettings(read_timeout=3.0)
    context = start_context(reactor, tmp_path, threads=3, name="pypicache-t", http=http)
    try:
        assert context.threadpool.started and context.threadpool.max == 3
        assert context.threadpool.name == "pypicache-t"
        assert (context.reactor, context.data_dir, context.http) == (reactor, tmp_path, http)
        assert context.exclusive
    finally:
        stop_context(context)
    assert not context.threadpool.started
    stop_context(context)  # idempotent


def _leftover(root: Path) -> Path:
    (root / ".tmp").mkdir(parents=True)
    leftover = root / ".tmp" / "in-flight"
    leftover.write_bytes(b"half a wheel")
    return leftover


def test_filesystem_storage_cleans_up_only_in_an_exclusive_context(tmp_path: Path) -> None:
    from twisted.internet import reactor

    for exclusive in (False, True):
        leftover = _leftover(tmp_path / str(exclusive))
        context = start_context(reactor, tmp_path, threads=1, name="t", exclusive=exclusive)
        try:
            providers.create("storage", "filesystem", {"path": str(exclusive)}, context)
        finally:
            stop_context(context)
        assert leftover.exists() is not exclusive


def test_verify_command_leaves_a_running_servers_files_in_progress(tmp_path: Path) -> None:
    """``pypicache verify`` builds its storage by name through the registry,
    like the server, in a context that is not exclusive."""
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    leftover = _leftover(tmp_path / "data" / "files")
    result = subprocess.run([sys.executable, "-m", "pypicache.cli.admin", "--config", str(config), "verify"],
                            capture_output=True, text=True, timeout=60, env=isolated_env())
    assert result.returncode == 0, result.stderr
    assert "0 problem(s)" in result.stdout
    assert leftover.exists()
