"""Real pip and uv install through the server: cold, warm, and with the upstream gone.

Each test proves the bytes came through the server under test: the fake
upstream sees the server's own requests (its User-Agent, never pip's or uv's),
and the server's counters show the hits.  The clients run isolated from this
machine's pip configuration (tests/clients.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from pypicache.services.mirror import MAX_RETRY_AFTER
from tests.clients import pip_install, uv_pip_install
from tests.server import make_config, start_server

pytestmark = pytest.mark.integration

CLIENTS = {"pip": pip_install, "uv": uv_pip_install}


def installed(target: Path) -> set[str]:
    return {p.name.split("-")[0].lower() for p in target.glob("*.dist-info")}


def check(result) -> None:
    assert result.returncode == 0, f"install failed:\n{result.stdout}\n{result.stderr}"


def client_agents(fake_upstream) -> set[str]:
    agents = set()
    for _, _, headers in fake_upstream.requests:
        for key, value in headers.items():
            if key.lower() == "user-agent":
                agents.add(value)
    return agents


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest_twisted.ensureDeferred
async def test_cold_warm_and_offline_installs(client, tmp_path, fake_upstream):
    install = CLIENTS[client]
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        # Cold: everything comes from the upstream, through the server.
        result = await deferToThread(install, server.simple, "depproj", target=tmp_path / "cold")
        check(result)
        assert installed(tmp_path / "cold") == {"depproj", "tinyproj"}
        assert (tmp_path / "cold" / "tinyproj" / "__init__.py").read_text().strip().endswith('"2.0"')
        wheel_gets = [r for r in fake_upstream.requests if r[:2] == ("GET", "/files/depproj-1.0-py3-none-any.whl")]
        assert len(wheel_gets) == 1
        agents = client_agents(fake_upstream)
        assert agents and all(a.startswith("pypicache") for a in agents), agents
        misses = server.app.stats.file_misses
        assert misses >= 2 or client == "uv"  # uv may read metadata only, then the wheels

        # Warm: no file leaves the upstream again (pages are revalidated: page_ttl=0).
        fake_upstream.reset_log()
        result = await deferToThread(install, server.simple, "depproj", target=tmp_path / "warm")
        check(result)
        assert installed(tmp_path / "warm") == {"depproj", "tinyproj"}
        assert fake_upstream.count("/files/") == 0
        assert server.app.stats.file_hits >= 2

        # Upstream gone: the proxy view serves its stale pages, the local view its own.
        await fake_upstream.stop()
        for view, url in (("proxy", server.simple), ("local", server.local)):
            target = tmp_path / f"offline-{view}"
            result = await deferToThread(install, url, "depproj", target=target)
            check(result)
            assert installed(target) == {"depproj", "tinyproj"}
        assert server.app.stats.pages_stale >= 1
    finally:
        await server.stop()


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest_twisted.ensureDeferred
async def test_local_view_never_asks_upstream_and_misses_what_is_not_stored(client, tmp_path, fake_upstream):
    install = CLIENTS[client]
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        check(await deferToThread(install, server.simple, "tinyproj==1.0", target=tmp_path / "a"))
        fake_upstream.reset_log()
        check(await deferToThread(install, server.local, "tinyproj", target=tmp_path / "b"))
        assert (tmp_path / "b" / "tinyproj" / "__init__.py").read_text().strip().endswith('"1.0"')
        result = await deferToThread(install, server.local, "depproj", target=tmp_path / "c")
        assert result.returncode != 0
        assert fake_upstream.requests == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_yanked_release_is_skipped_unless_pinned(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        result = await deferToThread(pip_install, server.simple, "yanked-proj", target=tmp_path / "a")
        assert result.returncode != 0
        check(await deferToThread(pip_install, server.simple, "yanked-proj==1.0", target=tmp_path / "b"))
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pip_gives_up_quickly_on_a_file_the_upstream_cannot_send(tmp_path, fake_upstream):
    """pip sleeps a 502/503's Retry-After before each of its 5 retries: the
    server's hint stays short, or an install that cannot succeed during an
    outage hangs for minutes (30 s of ours, 2.5 min; an upstream's 3600, 5 h)."""
    server = await start_server(make_config(tmp_path, fake_upstream.url, page_ttl=0))
    try:
        check(await deferToThread(pip_install, server.simple, "tinyproj==1.0", target=tmp_path / "a"))
        await fake_upstream.stop()
        started = time.monotonic()
        result = await deferToThread(pip_install, server.simple, "tinyproj==2.0", target=tmp_path / "b")
        elapsed = time.monotonic() - started
        assert result.returncode != 0
        assert "tinyproj-2.0" in result.stdout + result.stderr
        assert elapsed < 5 * MAX_RETRY_AFTER + 15, f"pip took {elapsed:.0f} s to fail"
    finally:
        await server.stop()
