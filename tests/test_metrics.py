"""``/metrics``, ``/health`` and ``/ready`` over real HTTP.

The scrape is parsed with prometheus_client's own text parser, so the
answer is what a Prometheus server reads, not what a regex finds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from pypicache.daemon import config as configuration
from tests.server import make_config, start_server

TIMEOUT = 15
WHEEL = "tinyproj-1.0-py3-none-any.whl"


async def get(url: str, method: str = "GET", persistent: bool = True, **headers: str) -> tuple[Any, bytes]:
    """``persistent=False``: a new connection (a page's second request then takes the fast path)."""
    h = {k.replace("_", "-"): [v] for k, v in headers.items()}
    response = await treq.request(method, url, headers=h, allow_redirects=False, timeout=TIMEOUT,
                                  persistent=persistent)
    return response, await treq.content(response)


async def scrape(root: str) -> dict[str, float]:
    """Every unlabelled sample of ``/metrics`` by name (see :func:`labelled` for the others)."""
    response, body = await get(root + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
    return {sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if not sample.labels or family.name == "pypicache_build_info"}


@pytest_twisted.ensureDeferred
async def test_metrics_count_pages_and_files(proxy, fake_upstream):
    from twisted.internet import reactor

    before = await scrape(proxy.root)
    assert before["pypicache_pages_served_total"] == 0
    assert before["pypicache_file_cache_misses_total"] == 0
    assert before["pypicache_upstream_circuit_open"] == 0
    assert before["pypicache_build_info"] == 1
    assert before["pypicache_memory_pages"] == 0

    first, _ = await get(proxy.simple + "tinyproj/", accept="text/html")
    assert first.code == 200
    again, _ = await get(proxy.simple + "tinyproj/", accept="text/html")  # the fast path's answer
    etag = again.headers.getRawHeaders("etag")[0]
    same, _ = await get(proxy.simple + "tinyproj/", accept="text/html", if_none_match=etag)
    assert same.code == 304
    size = fake_upstream.files[WHEEL].stat().st_size
    response, body = await get(proxy.root + f"/files/tinyproj/{WHEEL}")
    assert response.code == 200 and len(body) == size
    await proxy.app.downloader.settle(reactor, 10)
    response, body = await get(proxy.root + f"/files/tinyproj/{WHEEL}")
    assert response.code == 200 and len(body) == size

    found = await scrape(proxy.root)
    assert found["pypicache_pages_served_total"] == 3
    assert found["pypicache_pages_not_modified_total"] == 1
    assert found["pypicache_pages_stale_total"] == 0
    assert found["pypicache_file_cache_misses_total"] == 1
    assert found["pypicache_file_cache_hits_total"] == 1
    assert found["pypicache_upstream_fetched_bytes_total"] == size
    assert found["pypicache_cache_served_bytes_total"] == size
    assert found["pypicache_memory_pages"] == 1
    assert 0 < found["pypicache_memory_pages_bytes"] <= found["pypicache_memory_pages_limit_bytes"]
    # The counters are the /stats ones, read at scrape time.
    stats = proxy.app.stats
    assert found["pypicache_pages_served_total"] == stats.pages
    assert found["pypicache_file_cache_hits_total"] == stats.file_hits


@pytest_twisted.ensureDeferred
async def test_metrics_names_follow_the_conventions(proxy):
    response, body = await get(proxy.root + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families, body
    for name, family in families.items():
        assert name.startswith("pypicache_")
        assert family.documentation
        assert family.type in ("counter", "gauge", "histogram"), name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total") or sample.name.endswith("_created")
            if family.type == "histogram":
                assert name.endswith("_seconds")
    assert b"# TYPE pypicache_cache_served_bytes_total counter" in body


@pytest_twisted.ensureDeferred
async def test_stale_pages_and_the_open_breaker_show(tmp_path, fake_upstream):
    config = configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, "page_ttl": 0},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3, "breaker_threshold": 1,
                 "breaker_cooldown": 600},
        "upstream": {"provider": "simple", "url": fake_upstream.url},
    }, source="<test>")
    server = await start_server(config)
    try:
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 200
        fake_upstream.fail("status", "/simple/")
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 200  # stale, and the one failure opened the circuit
        found = await scrape(server.root)
        assert found["pypicache_pages_stale_total"] == 1
        assert found["pypicache_upstream_circuit_open"] == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_metrics_head(proxy):
    response, body = await get(proxy.root + "/metrics", method="HEAD")
    assert response.code == 200 and body == b""
    assert int(response.headers.getRawHeaders("content-length")[0]) > 0


@pytest_twisted.ensureDeferred
async def test_health_and_ready(proxy):
    for method in ("GET", "HEAD"):
        response, body = await get(proxy.root + "/health", method=method)
        assert response.code == 200
        assert body == (b"ok\n" if method == "GET" else b"")
        assert response.headers.getRawHeaders("cache-control") == ["no-store"]
        response, body = await get(proxy.root + "/ready", method=method)
        assert response.code == 200
        assert body == (b"ready\n" if method == "GET" else b"")


@pytest_twisted.ensureDeferred
async def test_ready_says_what_failed_once_the_index_is_closed(tmp_path, fake_upstream):
    server = await start_server(make_config(tmp_path, fake_upstream.url))
    try:
        await server.app.index.close()
        response, body = await get(server.root + "/ready")
        assert response.code == 503
        lines = body.decode().splitlines()
        assert lines[0] == "not ready"
        assert [line.split(":")[0] for line in lines[1:]] == ["index"]
        response, _ = await get(server.root + "/health")
        assert response.code == 200  # the process still answers
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_ready_times_out_on_a_hung_storage(proxy):
    from twisted.internet import defer

    from pypicache.services.health import Readiness

    class Hung:
        def exists(self, sha256: str) -> Any:
            return defer.Deferred()

    readiness = Readiness(index=proxy.app.index, storage=Hung(), clock=proxy.app.reactor, timeout=0.05)
    assert await readiness.problems() == ["storage: no answer within 0.05s"]


@pytest_twisted.ensureDeferred
async def test_monitoring_needs_no_credentials_when_reads_do(tmp_path, fake_upstream):
    config = make_config(tmp_path, fake_upstream.url)
    config = attrs.evolve(config, auth=attrs.evolve(config.auth, read="authenticated"))
    server = await start_server(config)
    try:
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 401  # the gate is on
        response, _ = await get(server.root + "/stats")
        assert response.code == 401
        for path in ("/health", "/ready", "/metrics"):
            response, _ = await get(server.root + path)
            assert response.code == 200, path
            response, _ = await get(server.root + path + "?x=1")
            assert response.code == 200, path
    finally:
        await server.stop()


# ------------------------------------------- requests, upstream, coalescing

async def labelled(root: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics`` by (name, labels)."""
    response, body = await get(root + "/metrics")
    assert response.code == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest_twisted.ensureDeferred
async def test_requests_counted_by_route_and_status_on_both_paths(proxy, fake_upstream):
    from twisted.internet import reactor

    first, _ = await get(proxy.simple + "tinyproj/", accept="text/html")
    assert first.code == 200 and first.headers.getRawHeaders("server") != ["pypicache"]
    fast, _ = await get(proxy.simple + "tinyproj/", accept="text/html", persistent=False)
    assert fast.headers.getRawHeaders("server") == ["pypicache"]  # the fast path answered
    etag = fast.headers.getRawHeaders("etag")[0]
    same, _ = await get(proxy.simple + "tinyproj/", accept="text/html", if_none_match=etag, persistent=False)
    assert same.code == 304 and same.headers.getRawHeaders("server") == ["pypicache"]
    response, _ = await get(proxy.simple, accept="text/html")
    assert response.code == 200
    response, _ = await get(proxy.local + "tinyproj/")
    assert response.code == 404  # nothing uploaded: the standalone view does not know it
    response, _ = await get(proxy.root + f"/files/tinyproj/{WHEEL}")
    assert response.code == 200
    await proxy.app.downloader.settle(reactor, 10)
    response, _ = await get(proxy.root + f"/files/tinyproj/{WHEEL}.metadata")
    assert response.code == 200
    response, _ = await get(proxy.root + "/pypi/tinyproj/json")
    assert response.code == 200
    for path in ("/no/such/route", "/etc/passwd%00", "/random-" + "x" * 50):
        response, _ = await get(proxy.root + path)
        assert response.code == 404

    found = await labelled(proxy.root)
    requests = "pypicache_http_requests_total"
    assert value(found, requests, route="simple_page", status="200") == 2
    assert value(found, requests, route="simple_page", status="304") == 1
    assert value(found, requests, route="simple_index", status="200") == 1
    assert value(found, requests, route="local_page", status="404") == 1
    assert value(found, requests, route="file", status="200") == 1
    assert value(found, requests, route="metadata", status="200") == 1
    assert value(found, requests, route="json_api", status="200") == 1
    assert value(found, requests, route="other", status="404") == 3  # raw paths never become labels
    routes = {dict(labels)["route"] for name, labels in found if name == requests}
    assert routes <= {"simple_page", "simple_index", "local_page", "file", "metadata", "json_api", "other",
                      "monitoring"}
    # The histogram saw every request of the route, the fast path's too.
    duration = "pypicache_http_request_duration_seconds"
    assert value(found, duration + "_count", route="simple_page") == 3
    assert value(found, duration + "_bucket", route="simple_page", le="+Inf") == 3
    assert 0 < value(found, duration + "_sum", route="simple_page") < 30
    # The scrape itself shows on the next one.
    again = await labelled(proxy.root)
    assert value(again, requests, route="monitoring", status="200") == 1
    # Upstream latency: the page and the file (the file's .metadata too).
    upstream = "pypicache_upstream_request_duration_seconds_count"
    assert value(found, upstream, kind="page") >= 2  # tinyproj and the project list
    assert value(found, upstream, kind="file") >= 2  # the JSON API may read METADATA too
    assert value(found, "pypicache_upstream_downloads_in_flight") == 0
    assert not [k for k in found if k[0] == "pypicache_upstream_errors_total"]


def fault_server_config(tmp_path: Path, url: str, timeout: float = 0.5) -> configuration.Config:
    """Short timeouts, pages always refreshed, no breaker (every fault reaches the upstream)."""
    return configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False, "page_ttl": 0},
        "http": {"connect_timeout": timeout, "read_timeout": timeout, "page_timeout": 2 * timeout,
                 "breaker_threshold": 0},
        "upstream": {"provider": "simple", "url": url},
    }, source="<test>")


@pytest_twisted.ensureDeferred
async def test_upstream_errors_by_kind_and_reason(tmp_path, fake_upstream):
    from twisted.internet import reactor

    server = await start_server(fault_server_config(tmp_path, fake_upstream.url))
    try:
        fake_upstream.fail("status", "/simple/", code=503)
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 503  # nothing cached yet
        fake_upstream.fail("hang", "/simple/")
        response, _ = await get(server.simple + "depproj/")
        assert response.code in (502, 503, 504)
        fake_upstream.heal()
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 200
        fake_upstream.fail("wrong_bytes", "/files/")  # the upstream lies about the file's bytes
        from twisted.web.client import ResponseFailed

        with pytest.raises(ResponseFailed):  # aborted before the last byte: never a whole wrong file
            await get(server.root + f"/files/tinyproj/{WHEEL}")
        await server.app.downloader.settle(reactor, 10)
        fake_upstream.fail("status", "/files/", code=500)
        response, _ = await get(server.root + f"/files/tinyproj/{WHEEL}")
        assert response.code >= 500
        found = await labelled(server.root)
    finally:
        fake_upstream.heal()
        await server.stop()
    errors = "pypicache_upstream_errors_total"
    assert value(found, errors, kind="page", reason="status_5xx") == 1
    assert value(found, errors, kind="page", reason="timeout") == 1
    assert value(found, errors, kind="file", reason="hash_mismatch") == 1
    assert value(found, errors, kind="file", reason="status_5xx") == 1
    reasons = {dict(labels)["reason"] for name, labels in found if name == errors}
    from pypicache.services.traffic import ERROR_REASONS

    assert reasons <= set(ERROR_REASONS)
    # Failed calls that got an answer show in the latency histogram too.
    assert value(found, "pypicache_upstream_request_duration_seconds_count", kind="page") >= 3


@pytest_twisted.ensureDeferred
async def test_coalesced_requests_are_counted(tmp_path, fake_upstream):
    from twisted.internet import defer, reactor

    server = await start_server(fault_server_config(tmp_path, fake_upstream.url, timeout=5))
    try:
        fake_upstream.fail("delay", "/simple/tinyproj/", seconds=0.5)
        answers = await defer.gatherResults([defer.ensureDeferred(get(server.simple + "tinyproj/"))
                                             for _ in range(3)])
        assert [r.code for r, _ in answers] == [200] * 3
        fake_upstream.heal()
        fake_upstream.fail("delay", "/files/", seconds=0.5)
        answers = await defer.gatherResults([defer.ensureDeferred(get(server.root + f"/files/tinyproj/{WHEEL}"))
                                             for _ in range(3)])
        assert [r.code for r, _ in answers] == [200] * 3
        await server.app.downloader.settle(reactor, 10)
        found = await labelled(server.root)
    finally:
        fake_upstream.heal()
        await server.stop()
    assert fake_upstream.count("/files/" + WHEEL, "GET") == 1
    assert value(found, "pypicache_coalesced_requests_total", kind="page") == 2
    assert value(found, "pypicache_coalesced_requests_total", kind="file") == 2


def busy_traffic() -> Any:
    """Traffic with every route, six statuses each, and every upstream error: a big realistic scrape."""
    from pypicache.services.traffic import ERROR_REASONS, ROUTES, Traffic

    traffic = Traffic()
    for route in ROUTES:
        for status in (200, 304, 401, 404, 500, 503):
            traffic.request(route, status, 0.004)
    for kind in ("page", "file"):
        traffic.upstream_call(kind, 0.2)
        traffic.joined(kind)
        for reason in ERROR_REASONS:
            traffic.upstream_errors[(kind, reason)] = 2
    traffic.in_flight = lambda: 3
    return traffic


def best_of(repeat: int, number: int, call: Any) -> float:
    """Seconds per call, the best of ``repeat`` rounds (the least disturbed by other load)."""
    import timeit

    return min(timeit.repeat(call, repeat=repeat, number=number)) / number


@pytest_twisted.ensureDeferred
async def test_a_big_scrape_costs_the_reactor_well_under_a_millisecond():
    """Formatting some 400 lines takes milliseconds, so it runs in a thread;
    what the reactor does (collect the few server numbers, copy the traffic
    dicts) stays far below 1 ms."""
    from twisted.internet import defer

    from pypicache.services import metrics as prometheus
    from pypicache.services.stats import Stats

    traffic = busy_traffic()
    registry = prometheus.make_registry(prometheus.ServerCollector(Stats()))
    on_reactor = best_of(5, 50, lambda: (list(registry.collect()), traffic.snapshot()))
    print(f"reactor share of a scrape: {on_reactor * 1e6:.0f} µs")
    assert on_reactor < 0.001
    body = await prometheus.scrape_in_thread(registry, traffic, lambda f: defer.succeed(f()))
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = families["pypicache_http_requests"]
    assert len(requests.samples) == 12 * 6
    assert len(families["pypicache_upstream_errors"].samples) == 2 * 12
    traffic.request("simple_page", 200, 0.1)  # after the snapshot: not in it
    assert sum(s.value for s in requests.samples) == 72


def test_counting_a_request_costs_less_than_prometheus_client_objects():
    """The hot path's count (a dict increment and a bisect) against the
    prometheus_client Counter and Histogram it replaces."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from pypicache.services.traffic import BUCKETS, Traffic

    traffic = Traffic()
    ours = best_of(5, 20000, lambda: traffic.request("simple_page", 200, 0.0004))
    registry = CollectorRegistry()
    counter = Counter("requests", "r", ["route", "status"], registry=registry)
    histogram = Histogram("duration_seconds", "d", ["route"], buckets=BUCKETS, registry=registry)
    theirs = best_of(5, 20000, lambda: (counter.labels("simple_page", "200").inc(),
                                        histogram.labels("simple_page").observe(0.0004)))
    print(f"per request: Traffic.request {ours * 1e6:.2f} µs, prometheus_client {theirs * 1e6:.2f} µs")
    assert ours < theirs


# ------------------------------------- refused before twisted.web handles a request

@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "site-only"])
@pytest_twisted.ensureDeferred
async def test_connections_refused_before_a_request_are_counted_by_reason(tmp_path, fake_upstream, fast_path):
    """Each refusal of pypicache.web.limits (the caps' 503, the deadlines'
    408) and twisted.web's 400 for an unparsable head, provoked over raw
    sockets, shows once under its reason; none is a request by route."""
    from twisted.internet.threads import deferToThread

    from tests.test_limits import SLOW_GET, held, raw_from, trickle

    server = await start_server(make_config(tmp_path, fake_upstream.url, header_timeout=1, min_body_rate=100,
                                            max_connections=3, max_connections_per_client=2, fast_path=fast_path))
    port = server.port.getHost().port
    conns: list[Any] = []

    async def refusals() -> dict[str, float]:
        response, body = await get(server.root + "/metrics", persistent=False)  # holds no connection after
        assert response.code == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["pypicache_http_refused"].type == "counter"
        return {s.labels["reason"]: s.value for s in families["pypicache_http_refused"].samples
                if s.name == "pypicache_http_refused_total"}

    try:
        assert await refusals() == dict.fromkeys(
            ["connection_cap", "client_cap", "header_timeout", "body_rate", "bad_request"], 0)
        answer = await deferToThread(raw_from, port, "127.0.0.1", b"NONSENSE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        # A head trickled on a fresh connection, and on one kept alive after a first request.
        for first in (b"", b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"):
            got, closed_after = await deferToThread(trickle, port, SLOW_GET, 0.1, 6, first)
            assert got.startswith(b"HTTP/1.1 408 ") and closed_after is not None, got[:200]
        head = b"POST /simple/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 500\r\n\r\n"
        got, closed_after = await deferToThread(trickle, port, b"x" * 500, 0.1, 8, head, False)
        assert got.startswith(b"HTTP/1.1 408 ") and closed_after is not None, got[:200]
        conns += [await held(server, b""), await held(server, b"")]  # 127.0.0.1's two
        over = await held(server, b"")
        conns.append(over)
        data, closed = await deferToThread(over.read, 5)
        assert data.startswith(b"HTTP/1.1 503 ") and closed, data[:200]
        conns.append(await held(server, b"", "127.0.0.2"))  # three in all: the total cap
        data = await deferToThread(raw_from, port, "127.0.0.3", b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 503 "), data[:200]
        for conn in conns:
            conn.close()
        conns = []
        await deferToThread(time.sleep, 0.3)  # the closes reach the server

        assert await refusals() == {"connection_cap": 1, "client_cap": 1, "header_timeout": 2, "body_rate": 1,
                                    "bad_request": 1}
        found = await labelled(server.root)
        statuses = {dict(labels).get("status") for name, labels in found if name == "pypicache_http_requests_total"}
        assert statuses.isdisjoint({"400", "408", "503"}), statuses  # not counted twice
    finally:
        for conn in conns:
            conn.close()
        await server.stop()


# ---------------------------------------------------- the monitoring listener

def listener_config(tmp_path: Path, url: str, main: int, monitoring: int, **more: Any) -> configuration.Config:
    return configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": False,
                   "listen": f"tcp:{main}:interface=127.0.0.1"},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": url},
        "auth": {"read": "authenticated"},
        "uploads": {"enabled": True},
        "monitoring": {"listen": [f"tcp:{monitoring}:interface=127.0.0.1"], **more},
    }, source="<test>")


async def run_daemon(config: configuration.Config) -> Any:
    """The whole ``twistd pypicache`` service tree, started in this process."""
    from pypicache.daemon import tap

    top = tap.Server(config)
    top.privilegedStartService()
    top.startService()
    return top


@pytest_twisted.ensureDeferred
async def test_the_monitoring_listener_serves_only_monitoring_without_credentials(tmp_path, fake_upstream):
    from tests.daemon import free_port

    main, monitoring = free_port(), free_port()
    top = await run_daemon(listener_config(tmp_path, fake_upstream.url, main, monitoring))
    try:
        there = f"http://127.0.0.1:{monitoring}"
        for path in ("/health", "/ready", "/metrics", "/metrics?x=1"):
            response, body = await get(there + path)
            assert response.code == 200, path
            assert response.headers.getRawHeaders("www-authenticate") is None
        for path in ("/", "/simple/", "/simple/tinyproj/", "/stats", "/legacy/", f"/files/tinyproj/{WHEEL}",
                     "/pypi/tinyproj/json", "/api/projects/x", "/local/simple/"):
            response, _ = await get(there + path)
            assert response.code == 404, path
        response, _ = await get(there + "/legacy/", method="POST")
        assert response.code in (404, 405)
        assert fake_upstream.count("/simple/") == 0  # nothing there reached the proxy
        # The main listener: the read gate is on, and /metrics still answers (on_main_listener).
        response, _ = await get(f"http://127.0.0.1:{main}/simple/tinyproj/")
        assert response.code == 401
        response, body = await get(f"http://127.0.0.1:{main}/metrics")
        assert response.code == 200
        # Both listeners count into one set of metrics.
        found = await labelled(there)
        assert value(found, "pypicache_http_requests_total", route="simple_page", status="401") == 1
        assert value(found, "pypicache_http_requests_total", route="other", status="404") == 9  # not simple_page
    finally:
        await top.stopService()


@pytest_twisted.ensureDeferred
async def test_monitoring_can_leave_the_main_listener(tmp_path, fake_upstream):
    from tests.daemon import free_port

    main, monitoring = free_port(), free_port()
    top = await run_daemon(listener_config(tmp_path, fake_upstream.url, main, monitoring, on_main_listener=False))
    try:
        for path in ("/health", "/ready", "/metrics"):
            response, _ = await get(f"http://127.0.0.1:{main}{path}")
            assert response.code in (401, 404), path  # the gate, then nothing there
            response, _ = await get(f"http://127.0.0.1:{monitoring}{path}")
            assert response.code == 200, path
    finally:
        await top.stopService()


# ------------------------------------------------------------ JSON access log

@pytest_twisted.ensureDeferred
async def test_json_access_log_lines(tmp_path, fake_upstream, logs):
    import base64
    import json

    from tests.uploads import PASSWORD, cheap_accounts

    config = configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": True},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": fake_upstream.url},
        "auth": {"read": "authenticated"},
        "monitoring": {"access_log_format": "json"},
    }, source="<test>")
    server = await start_server(config)
    try:
        assert server.app.factory is not None
        cheap_accounts(server).add_user("alice", PASSWORD)
        token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        response, body = await get(server.simple + "tinyproj/?x=\u00e9", authorization=f"Basic {token}",
                                   user_agent="pip/25.0 \"quoted\"")
        assert response.code == 200
        response, _ = await get(server.simple + "tinyproj/")
        assert response.code == 401
        response, _ = await get(server.root + "/metrics")
        assert response.code == 200
    finally:
        await server.stop()
    # twisted.web's access log goes through twisted.logger: the line is the event's text.
    lines = [event["log_io"] for event in logs.events if str(event.get("log_io", "")).startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert [(e["route"], e["status"]) for e in entries] == [("simple_page", 200), ("simple_page", 401),
                                                            ("monitoring", 200)]
    first, second, third = entries
    assert set(first) == {"time", "client", "method", "path", "protocol", "status", "bytes", "duration",
                          "user_agent", "referrer", "route", "user"}
    assert first["user"] == "alice" and "user" not in second
    assert first["client"] == "127.0.0.1" and first["method"] == "GET"
    assert first["path"].startswith("/simple/tinyproj/?x=")
    assert first["user_agent"] == 'pip/25.0 "quoted"' and first["protocol"] == "HTTP/1.1"
    assert 0 < first["bytes"] <= len(body) and 0 <= first["duration"] < 15
    assert first["time"].endswith("Z")


@pytest.mark.parametrize("path, route", [
    (b"/simple/", "simple_index"), (b"/simple", "simple_index"), (b"/local/simple/", "simple_index"),
    (b"/simple/tinyproj/", "simple_page"), (b"/simple/Tiny_Proj", "simple_page"),
    (b"/local/simple/tinyproj/", "local_page"), (b"/files/tinyproj/t-1.0-py3-none-any.whl", "file"),
    (b"/local/files/p/p-1.0.tar.gz", "file"), (b"/files/p/p-1.0-py3-none-any.whl.metadata", "metadata"),
    (b"/pypi/p/json", "json_api"), (b"/pypi/p/1.0/json", "json_api"), (b"/legacy/", "upload"),
    (b"/api/projects/p/yank", "manage"), (b"/requirements.txt", "prefetch"), (b"/requirements/jobs/1", "prefetch"),
    (b"/health", "monitoring"), (b"/ready", "monitoring"), (b"/metrics", "monitoring"), (b"/stats", "monitoring"),
    (b"/", "ui"), (b"", "ui"), (b"/project/p/", "ui"), (b"/statistics", "ui"),
    (b"/as-of/2024-05-01/simple/p/", "simple_page"), (b"/local/", "other"), (b"/local/x", "other"), (b"/etc/passwd", "other"),
    (b"//simple/x/", "other"), (b"/\xff\x00", "other"), (b"*", "other"),
])
def test_route_labels_come_from_a_fixed_set(path, route):
    from pypicache.services.traffic import ROUTES, route_of

    assert route_of(path) == route and route in ROUTES


@pytest.mark.parametrize("message, reason", [
    ("http://u/simple/x/: timed out after 3s", "timeout"),
    ("http://u/files/a.whl: stalled: no data for 2s after 10 bytes", "timeout"),
    ("http://u/simple/x/: ConnectionRefusedError: Connection was refused by other side", "connect"),
    ("http://u/simple/x/: DNSLookupError: no such host", "connect"),
    ("http://u/files/a.whl: truncated after 5 bytes: ConnectionLost", "reset"),
    ("http://u/simple/x/: ResponseNeverReceived", "reset"),
    ("a.whl: upstream sent 5 of 10 bytes", "size_mismatch"),
    ("timeout-1.0.whl: upstream sent more than 10 bytes", "size_mismatch"),  # the file's name is no reason
    ("http://u/simple/x/: malformed page: bad JSON", "malformed"),
    ("http://u/simple/x/: something new", "other"),
])
def test_upstream_error_reasons(message, reason):
    from pypicache.model import UpstreamError
    from pypicache.services.traffic import ERROR_REASONS, error_reason

    assert error_reason(UpstreamError(message)) == reason and reason in ERROR_REASONS


def test_upstream_error_reasons_by_type():
    from pypicache.errors import CircuitOpen
    from pypicache.model import HashMismatch
    from pypicache.providers.upstream.simple import UpstreamStatusError
    from pypicache.services.traffic import error_reason

    assert error_reason(UpstreamStatusError("http://u/timeout/", 502)) == "status_5xx"
    assert error_reason(UpstreamStatusError("http://u/", 429)) == "status_429"
    assert error_reason(UpstreamStatusError("http://u/", 403)) == "status_4xx"
    assert error_reason(HashMismatch("x")) == "hash_mismatch"
    assert error_reason(CircuitOpen("open", 30)) == "circuit_open"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_real_install_shows_in_the_json_log_and_the_metrics(tmp_path, fake_upstream, logs):
    """uv installs through the server: each of its requests is one JSON log
    line, and the counters by route agree with the lines."""
    import json

    from twisted.internet.threads import deferToThread

    from tests.clients import uv_pip_install

    config = configuration.parse({
        "server": {"data_dir": str(tmp_path / "data"), "access_log": True},
        "http": {"connect_timeout": 2, "read_timeout": 2, "page_timeout": 3},
        "upstream": {"provider": "simple", "url": fake_upstream.url},
        "monitoring": {"access_log_format": "json"},
    }, source="<test>")
    server = await start_server(config)
    try:
        result = await deferToThread(uv_pip_install, server.simple, "depproj", target=tmp_path / "env")
        assert result.returncode == 0, result.stderr
        assert {p.name.split("-")[0] for p in (tmp_path / "env").glob("*.dist-info")} == {"depproj", "tinyproj"}
        found = await labelled(server.root)
    finally:
        await server.stop()
    entries = [json.loads(e["log_io"]) for e in logs.events if str(e.get("log_io", "")).startswith("{")]
    ours = [e for e in entries if e["route"] != "monitoring"]
    assert ours and all(e["user_agent"].startswith("uv/") for e in ours)
    by_route: dict[tuple[str, str], int] = {}
    for e in ours:
        key = (e["route"], str(e["status"]))
        by_route[key] = by_route.get(key, 0) + 1
    assert by_route[("simple_page", "200")] >= 2  # depproj and tinyproj
    assert by_route.get(("file", "200"), 0) >= 2  # the two wheels, through this server
    counted = {(dict(labels)["route"], dict(labels)["status"]): n for (name, labels), n in found.items()
               if name == "pypicache_http_requests_total" and dict(labels)["route"] != "monitoring"}
    assert counted == by_route
