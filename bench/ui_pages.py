"""How long the web UI takes to answer: the list with 10,000 projects, a 601-file project.

Builds an in-process server on the SQLite index (offline, so no upstream is
ever asked), fills the index with 10,000 project names and one project of
601 files, then times whole HTTP requests to 127.0.0.1 (median and p95 of
``--runs``) and, apart, the pure render functions of pypicache.web.ui.pages.

    .venv/bin/python bench/ui_pages.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _summary(label: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"{label:<46} median {statistics.median(samples) * 1000:6.2f} ms   p95 {p95 * 1000:6.2f} ms")


async def main(reactor, runs: int) -> None:
    import treq
    from twisted.internet import defer

    from pypicache.model import FileRecord, ProjectPage
    from pypicache.services.releases import group_releases
    from pypicache.web.ui import pages
    from tests.server import make_config, start_server

    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(Path(tmp), "http://127.0.0.1:9/simple/", offline=True)
        server = await start_server(config)
        try:
            index = server.app.index
            await defer.gatherResults([index.create_project(f"project-{i:05d}", "local") for i in range(10_000)])
            files = tuple(
                FileRecord(filename=f"bigproj-{v // 3}.{v % 3}.0-cp312-cp312-manylinux_2_17_x86_64.whl"
                           if k else f"bigproj-{v // 3}.{v % 3}.0.tar.gz",
                           url=f"http://127.0.0.1:9/f/{v}-{k}", hashes={"sha256": f"{v * 2 + k:064x}"},
                           requires_python=">=3.9", size=1234567 + v, stored=bool(v % 2))
                for v in range(301) for k in (0, 1))[:601]
            await index.save_upstream_page(ProjectPage(name="bigproj", files=files), time.time())

            async def timed(url: str) -> list[float]:
                out = []
                for _ in range(runs):
                    start = time.perf_counter()
                    response = await treq.get(url, persistent=True)
                    body = await response.content()
                    out.append(time.perf_counter() - start)
                    assert response.code == 200, (url, response.code)
                return out

            base = server.root
            _summary("GET / (10,000 projects, page 1 of 100)", await timed(base + "/"))
            _summary("GET /?q=project-0999 (search 10,000)", await timed(base + "/?q=project-0999"))
            _summary("GET /?page=57", await timed(base + "/?page=57"))
            _summary("GET /project/bigproj/ (601 files, cached render)", await timed(base + "/project/bigproj/"))
            _summary("GET /statistics", await timed(base + "/statistics"))

            reads = []
            for _ in range(min(runs, 50)):
                start = time.perf_counter()
                names = await index.list_projects()
                reads.append(time.perf_counter() - start)
            _summary("index.list_projects() (10,000: each list request)", reads)
            view = pages.ListView(names[:100], "", 1, 100, len(names))
            _summary("render: list page", _loop(lambda: pages.project_list(view), runs))
            record = await index.get_project("bigproj")

            def project() -> bytes:
                releases = group_releases(record.files)
                return pages.project_page(pages.ProjectView(
                    "bigproj", list(reversed(releases.values())), [], False, "A summary", None))

            from pypicache.services.releases import classify

            def cold() -> bytes:
                classify.cache_clear()
                return project()

            _summary("render: 601-file project, first time", _loop(cold, runs))
            _summary("render: 601-file project, filenames seen", _loop(project, runs))
            print(f"601-file page: {len(project()) // 1024} KiB")
            await treq.get(base + "/", persistent=False)
        finally:
            from treq.api import get_global_pool

            await get_global_pool().closeCachedConnections()
            await server.stop()


def _loop(f, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        out.append(time.perf_counter() - start)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    options = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options.runs)))
