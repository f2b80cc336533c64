"""Sustained load: many concurrent clients against the real daemon, on loopback.

For a fixed time, ``clients`` concurrent clients each send one request after
another, drawn from a fixed mix:

=====================  ====  =============================================
cached page             35%  ``/simple/<p>/`` of a project already cached
revalidated page (304)  20%  the same with ``If-None-Match`` (what pip does)
uncached page            8%  a project never asked for (one upstream fetch)
cached file             25%  a stored wheel or sdist (a third as Range)
uncached file            7%  the first request for a file (upstream fetch)
root list                5%  ``/simple/``
=====================  ====  =============================================

Every answer is checked (status, and for files every byte via sha256).  The
server is a ``twistd`` subprocess, so its resident memory (``VmRSS``) and open
descriptors (``/proc/PID/fd``) are sampled from outside four times a second:
they must stay flat, i.e. what the first second shows is what the last
second shows, within a small margin.

In the suite it runs for 5 seconds.  For longer runs (the figures in
docs/reliability.md)::

    python -m tests.test_load --seconds 60 --clients 50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import defer
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from tests.builders import build_wheel
from tests.clients import isolated_env
from tests.conftest import populate
from tests.fakeupstream import FakeUpstream
from tests.daemon import Daemon, _Collector, free_port, sleep, twistd_argv

JSON = "application/vnd.pypi.simple.v1+json"
CACHED_PROJECTS = ("tinyproj", "depproj", "yanked-proj")
SUITE_SECONDS = 5.0
SUITE_CLIENTS = 50
#: Allowed growth from the first to the last second of the run.  Memory:
#: the cold projects legitimately fill the page and record caches (about
#: 2 MiB in 5 s); a leak of even 2 KiB per request would pass 8 MiB.
RSS_MARGIN = 8 * 1024 * 1024
#: Descriptors: client connections are constant, but upstream connections
#: (pools of 8 + 16) and spool files of transfers in flight come and go with
#: the mix; a leak of one per cold fetch alone would add hundreds.
FD_MARGIN = 32

MIX = (("page", 35), ("page304", 20), ("page_cold", 8), ("file", 25), ("file_cold", 7), ("root", 5))


@attrs.define
class Sample:
    t: float
    rss: int
    fds: int


@attrs.define
class LoadResult:
    seconds: float
    clients: int
    counts: Counter = attrs.Factory(Counter)
    errors: list[str] = attrs.Factory(list)
    latencies: list[float] = attrs.Factory(list)
    samples: list[Sample] = attrs.Factory(list)

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end] or self.samples[:1]

    @property
    def first(self) -> list[Sample]:
        return self.window(0.0, 1.0)

    @property
    def last(self) -> list[Sample]:
        return self.window(self.seconds - 1.0, self.seconds + 1.0)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def figures(self) -> str:
        first_rss = max(s.rss for s in self.first)
        last_rss = max(s.rss for s in self.last)
        first_fds = max(s.fds for s in self.first)
        last_fds = max(s.fds for s in self.last)
        peak = max(s.rss for s in self.samples)
        mix = ", ".join(f"{kind} {self.counts[kind]}" for kind, _ in MIX)
        step = max(1.0, self.seconds / 6)
        marks = [max(self.window(t - 0.5, t + 0.5), key=lambda s: s.rss)
                 for t in [x * step for x in range(int(self.seconds / step) + 1)]]
        timeline = ", ".join(f"{m.t:.0f}s {m.rss / 2**20:.1f} MiB/{m.fds} fds" for m in marks)
        return (f"{self.clients} clients, {self.seconds:.0f} s: {self.requests} requests "
                f"({self.requests / self.seconds:.0f}/s), {len(self.errors)} errors; "
                f"latency p50 {self.percentile(0.5) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms, "
                f"max {max(self.latencies, default=0) * 1000:.0f} ms\n"
                f"RSS first second {first_rss / 2**20:.1f} MiB, last second {last_rss / 2**20:.1f} MiB, "
                f"peak {peak / 2**20:.1f} MiB; open fds first second {first_fds}, last second {last_fds}\n"
                f"mix: {mix}\n"
                f"timeline: {timeline}")


def proc_sample(pid: int, t: float) -> Sample:
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return Sample(t, rss, len(os.listdir(f"/proc/{pid}/fd")))


# ------------------------------------------------------------------ the run


class Load:
    """The fake upstream's extra projects, the daemon, and the clients."""

    def __init__(self, fu: FakeUpstream, daemon: Daemon, cold_projects: list[str],
                 expected: dict[str, str], rng: random.Random) -> None:
        self.fu = fu
        self.daemon = daemon
        self.cold_pages = list(cold_projects)
        self.cold_files: list[tuple[str, str]] = []
        self.expected = expected  # filename -> sha256
        self.warm_files: list[tuple[str, str]] = []
        self.etags: dict[str, bytes] = {}
        self.rng = rng
        self.kinds = [kind for kind, weight in MIX for _ in range(weight)]

    async def warm_up(self, http: HTTPClient) -> None:
        for project in CACHED_PROJECTS:
            response = await http.get(self.daemon.root + f"/simple/{project}/", headers={"accept": [JSON]})
            page = json.loads(await response.content())
            assert response.code == 200
            self.etags[project] = response.headers.getRawHeaders("etag")[0].encode()
            for f in page["files"]:
                self.warm_files.append((project, f["filename"]))
        for project, filename in self.warm_files:
            response = await http.get(self.daemon.root + f"/files/{project}/{filename}")
            body = await response.content()
            assert response.code == 200 and hashlib.sha256(body).hexdigest() == self.expected[filename]
        await sleep(0.3)  # let the last one be stored

    async def one(self, http: HTTPClient, result: LoadResult) -> None:
        kind = self.rng.choice(self.kinds)
        if kind == "page_cold" and not self.cold_pages:
            kind = "page"
        if kind == "file_cold" and not self.cold_files:
            kind = "file"
        root = self.daemon.root
        headers: dict[str, list[str]] = {"accept": [JSON]}
        want = 200
        if kind in ("page", "page304"):
            project = self.rng.choice(CACHED_PROJECTS)
            url = root + f"/simple/{project}/"
            if kind == "page304":
                headers["if-none-match"] = [self.etags[project].decode()]
                want = 304
        elif kind == "page_cold":
            project = self.cold_pages.pop()
            url = root + f"/simple/{project}/"
        elif kind == "root":
            url = root + "/simple/"
        else:
            project, filename = self.cold_files.pop() if kind == "file_cold" else self.rng.choice(self.warm_files)
            url = root + f"/files/{project}/{filename}"
            headers = {}
            if kind == "file" and self.rng.random() < 0.33:
                headers["range"] = ["bytes=-100"]
                want = 206
        started = time.monotonic()
        response = await http.get(url, headers=headers)
        body = await response.content()
        result.latencies.append(time.monotonic() - started)
        result.counts[kind] += 1
        if response.code != want:
            result.errors.append(f"{kind} {url}: {response.code} (wanted {want})")
            return
        if kind == "page_cold":
            page = json.loads(body)
            for f in page["files"]:
                self.cold_files.append((project, f["filename"]))
        elif kind in ("file", "file_cold"):
            digest = hashlib.sha256(body).hexdigest()
            if want == 200 and digest != self.expected[filename]:
                result.errors.append(f"{kind} {url}: wrong bytes")
            if want == 206 and len(body) != 100:
                result.errors.append(f"{kind} {url}: {len(body)} bytes for a 100-byte range")

    async def client(self, http: HTTPClient, result: LoadResult, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                await self.one(http, result)
            except Exception as e:  # refused, reset, timeout: all errors
                result.errors.append(f"{type(e).__name__}: {e}")

    async def run(self, seconds: float, clients: int) -> LoadResult:
        from twisted.internet import reactor

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = clients
        http = HTTPClient(Agent(reactor, connectTimeout=5, pool=pool))
        try:
            await self.warm_up(http)
            result = LoadResult(seconds=seconds, clients=clients)
            pid = self.daemon.transport.pid
            start = time.monotonic()
            deadline = start + seconds
            sampling = True

            async def sampler() -> None:
                while sampling:
                    result.samples.append(proc_sample(pid, time.monotonic() - start))
                    await sleep(0.25)

            sampled = defer.ensureDeferred(sampler())
            await defer.gatherResults([defer.ensureDeferred(self.client(http, result, deadline))
                                       for _ in range(clients)], consumeErrors=True)
            result.samples.append(proc_sample(pid, time.monotonic() - start))
            sampling = False
            await sampled
            return result
        finally:
            await pool.closeCachedConnections()


def add_cold_projects(fu: FakeUpstream, dest: Path, count: int) -> tuple[list[str], dict[str, str]]:
    names = []
    expected = {}
    for i in range(count):
        wheel = build_wheel(dest, f"loadproj{i}", "1.0", extra_bytes=20_000)
        fu.add(wheel)
        names.append(f"loadproj{i}")
        expected[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return names, expected


def start_daemon(workdir: Path, upstream_url: str) -> Daemon:
    from twisted.internet import reactor

    config = workdir / "pypicache.toml"
    config.write_text(f"""
[server]
data_dir = "data"
access_log = false
[http]
connect_timeout = 2
read_timeout = 5
page_timeout = 5
[upstream]
url = "{upstream_url}"
""")
    port = free_port()
    argv = twistd_argv(["pypicache", "--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"])
    proto = _Collector()
    transport = reactor.spawnProcess(proto, argv[0], argv, env=isolated_env({"PYTHONUNBUFFERED": "1"}),
                                     path=str(workdir))
    transport.closeStdin()
    return Daemon(proto, transport, port)


async def load_run(workdir: Path, fu: FakeUpstream, seconds: float, clients: int, cold: int) -> LoadResult:
    """Everything but the fake upstream's life: build, start, load, stop."""
    cold_projects, expected = add_cold_projects(fu, workdir / "cold", cold)
    expected.update({name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in fu.files.items()})
    daemon = start_daemon(workdir, fu.url)
    try:
        await daemon.wait_until_answers("/")
        load = Load(fu, daemon, cold_projects, expected, random.Random(42))
        result = await load.run(seconds, clients)
        await daemon.stop()
        return result
    finally:
        daemon.kill()


# ------------------------------------------------------------------ the test


@pytest_twisted.ensureDeferred
async def test_sustained_load_is_error_free_and_flat(tmp_path, fake_upstream):
    result = await load_run(tmp_path, fake_upstream, SUITE_SECONDS, SUITE_CLIENTS, cold=400)
    report = result.figures()
    assert result.errors == [], report + "\n" + "\n".join(result.errors[:20])
    assert result.requests > 20 * SUITE_SECONDS, report
    for kind, _ in MIX:
        assert result.counts[kind] > 0, report
    first_rss, last_rss = max(s.rss for s in result.first), max(s.rss for s in result.last)
    first_fds, last_fds = max(s.fds for s in result.first), max(s.fds for s in result.last)
    assert last_rss - first_rss < RSS_MARGIN, report
    assert last_fds - first_fds <= FD_MARGIN, report
    # Open descriptors are bounded by the clients, not by the requests served.
    assert last_fds < 3 * SUITE_CLIENTS + 50, report


# --------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.test_load --seconds 60 --clients 50``: print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--cold", type=int, default=None, help="uncached projects to draw from")
    args = parser.parse_args(argv)
    cold = args.cold if args.cold is not None else int(40 * args.seconds)

    from twisted.internet import task

    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="pypicache-load-") as tmp:
            workdir = Path(tmp)
            fu = FakeUpstream()
            populate(fu, workdir / "upstream-dists")
            await fu.listen(reactor)
            try:
                outcome["result"] = await load_run(workdir, fu, args.seconds, args.clients, cold)
            finally:
                await fu.stop()

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    result = outcome["result"]
    sys.stdout.write(result.figures() + "\n")
    for line in result.errors[:20]:
        sys.stdout.write(f"error: {line}\n")
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
