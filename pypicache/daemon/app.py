"""Wiring: config -> providers -> mirror, downloader -> web resources.

Kept apart from pypicache.daemon.tap so tests (and embedders) can build a complete
server on any reactor and listen wherever they like.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from pypicache import _twisted, providers
from pypicache.daemon.config import Config
from pypicache.daemon.context import start_context, stop_context
from pypicache.services.downloads import Downloader
from pypicache.errors import ConfigError
from pypicache.interfaces import IBlobInventory, IClosable
from pypicache.services.mirror import Mirror
from pypicache.services.scrub import Scrubber
from pypicache.services.stats import Stats
from pypicache.services.traffic import Traffic
from pypicache.providers.upstream.breaker import with_breaker
from pypicache.services.accounts import Accounts, AccountStore
from pypicache.services.audit import FILENAME as AUDIT_FILE, AuditLog
from pypicache.daemon.reload import apply_policy
from pypicache.web.fastpath import FastPathFactory
from pypicache.web.limits import ConnectionLimits
from pypicache.web.request import UploadGate
from pypicache.web.site import QuietSite, build_root


@attrs.define
class App:
    """A built server: its providers, its logic and its Site."""

    config: Config
    reactor: Any
    threadpool: ThreadPool
    storage: Any
    index: Any
    upstream: Any
    mirror: Mirror
    downloader: Downloader
    site: QuietSite
    stats: Stats
    accounts: Any = None
    factory: Any = None  # what listeners serve: the fast path in front of the Site
    scrubber: Scrubber | None = None  # None: the storage cannot be scrubbed or scrub_rate is 0
    traffic: Traffic | None = None  # requests, upstream latency and errors (/metrics)
    monitoring: Any = None  # what [monitoring] listen serves (its Site in ConnectionLimits); None when not configured
    policy: Any = None  # the current PolicyConfig: replaced on reload (pypicache.daemon.reload)
    audit: Any = None  # the audit log (pypicache.services.audit)
    cache_keeper: Any = None  # pypicache.services.eviction.CacheKeeper when [cache] max_size is set

    #: How long close() waits for verified downloads to be stored and indexed.
    SETTLE_TIMEOUT = 10.0

    async def close(self) -> None:
        """Let verified downloads be stored, flush the index, close the
        providers that hold resources (IClosable), stop threads."""
        try:
            if self.scrubber is not None:
                await self.scrubber.stop()
            if self.downloader is not None:
                await self.downloader.settle(self.reactor, self.SETTLE_TIMEOUT)
            if self.cache_keeper is not None:
                await self.cache_keeper.stop()
            await self.index.close()
            if self.accounts is not None:
                await self.accounts.close()
        finally:
            for provider in (self.upstream, self.storage):
                if IClosable.providedBy(provider):
                    await defer.maybeDeferred(provider.close)
            self.threadpool.stop()

    def cache_usage(self) -> tuple[int | None, int | None]:
        """(bytes of cached files and their METADATA, ``[cache] max_size``):
        (None, None) without a limit; the bytes are None until the start-up
        count is done.  Private uploads do not count."""
        if self.cache_keeper is None:
            return None, None
        return self.cache_keeper.usage()


def build(config: Config, reactor: Any, *, upstream: Any = None) -> App:
    """Create every provider named by ``config``; ConfigError if one is wrong.

    ``upstream`` replaces the configured upstream provider (tests).
    """
    data_dir = config.data_dir
    try:
        data_dir.mkdir(0o700, parents=True, exist_ok=True)  # private packages: the server's user only
    except OSError as e:
        raise ConfigError(f"server.data_dir: cannot create {data_dir}: {e.strerror or e}") from e
    context = start_context(reactor, data_dir, threads=config.threads, name="pypicache", http=config.http)
    threadpool = context.threadpool
    try:
        storage = providers.create("storage", config.storage.name, config.storage.options, context)
        index = providers.create("index", config.index.name, config.index.options, context)
        if upstream is None:
            upstream = providers.create("upstream", config.upstream.name, config.upstream.options, context)
            upstream = with_breaker(upstream, reactor, config.http.breaker_threshold, config.http.breaker_cooldown)
    except BaseException:
        stop_context(context)
        raise
    # The mirror follows every write through its index (a CataloguedIndex,
    # pypicache.services.catalogue): all below get that index, so no write
    # can leave a served page behind.
    traffic = Traffic()
    mirror = Mirror(index=index, upstream=upstream, clock=reactor, page_ttl=config.page_ttl,
                    root_ttl=config.root_ttl, offline=config.offline, merge=config.uploads.merge,
                    not_found_ttl=config.not_found_ttl, memory_bytes=config.page_cache_bytes, traffic=traffic)
    index = mirror.index
    keeper = None
    if config.cache.max_size is not None:  # LRU eviction (services/eviction.py): imported only then
        from pypicache.services.eviction import keep_cache

        try:
            keeper, storage, index = keep_cache(config.cache, storage, index, data_dir=data_dir,
                                                reactor=reactor, threadpool=threadpool)
        except BaseException:
            stop_context(context)
            raise
    downloader = Downloader(storage=storage, index=index, upstream=upstream, spool_dir=data_dir / "spool",
                            traffic=traffic)
    accounts = Accounts(AccountStore(data_dir / "accounts.sqlite3"), reactor,
                        max_failures=config.auth.max_failed_logins, failure_window=config.auth.failed_login_window)
    stats = Stats()

    def in_thread(f: Any, *args: Any, **kwargs: Any) -> Any:
        return deferToThreadPool(reactor, threadpool, f, *args, **kwargs)

    audit = AuditLog(data_dir / AUDIT_FILE, in_thread)

    # Routes few servers use are built (and their modules imported) on their
    # first request: start-up time and memory count (docs/performance.md).
    def upload() -> Any:
        from pypicache.services.publishing import Publisher
        from pypicache.web.upload import Upload

        publisher = Publisher(storage=storage, index=index, accounts=accounts, mirror=mirror, upstream=upstream,
                              clock=reactor, claim=config.uploads.claim, in_thread=in_thread)
        publisher.audit = audit
        return Upload(publisher=publisher, accounts=accounts, config=config.uploads,
                      spool_dir=downloader.spool_dir, in_thread=in_thread)

    def manage() -> Any:
        from pypicache.services.management import Management
        from pypicache.web.manage import Manage

        return Manage(management=Management(index, accounts=accounts, claim=config.uploads.claim, audit=audit),
                      accounts=accounts)

    def jsonapi() -> Any:
        from pypicache.web.jsonapi import JsonAPI

        return JsonAPI(mirror, storage, downloader, public_url=config.public_url, policy=lambda: app.policy)

    prefetch_route: list[Any] = []  # one resource for /requirements.txt and /requirements/

    def prefetch() -> Any:
        from pypicache.web.prefetch import PrefetchRoute

        if not prefetch_route:
            prefetch_route.append(PrefetchRoute(app=app, accounts=accounts, config=config.prefetch))
        return prefetch_route[0]

    def ready() -> Any:
        from pypicache.services.health import Readiness
        from pypicache.web.monitoring import Ready

        return Ready(Readiness(index=index, storage=storage, clock=reactor))

    metrics_route: list[Any] = []  # one registry for the main and the monitoring listener

    def metrics() -> Any:
        # prometheus_client is imported here, on the first scrape.
        from pypicache.services import metrics as prometheus
        from pypicache.web.monitoring import Metrics

        if not metrics_route:
            collector = prometheus.ServerCollector(stats, upstream=upstream, pages=root.pages, cache=keeper)
            metrics_route.append(Metrics(prometheus.make_registry(collector),
                                         lambda registry: prometheus.scrape_in_thread(registry, traffic, in_thread),
                                         prometheus.CONTENT_TYPE_LATEST))
        return metrics_route[0]

    def ui() -> Any:
        from pypicache.services.usage import DiskUsage
        from pypicache.web.ui import build_ui

        if keeper is not None:  # the eviction's running total: no walk of the store
            from pypicache.services.usage import Usage

            async def usage() -> Usage:  # what max_size bounds: cached files, not private uploads
                return Usage(*keeper.usage(), counts="cached files")
        else:
            usage = DiskUsage(storage, in_thread, reactor, None)
        return build_ui(mirror, storage, downloader, stats, usage, in_thread, policy=lambda: app.policy)

    # Parsed records get page_cache_bytes, rendered pages half as much again.
    root = build_root(mirror, downloader, storage, stats, upload=upload, manage=manage, jsonapi=jsonapi,
                      page_bytes=config.page_cache_bytes // 2, in_thread=in_thread, prefetch=prefetch,
                      ready=ready, metrics=metrics, monitoring=config.monitoring.on_main_listener,
                      policy=lambda: app.policy, ui=ui)

    async def read_gate(request: Any) -> bool:
        from pypicache.web.auth import authenticate

        request.identity = await authenticate(accounts, request)  # the access log's user
        return request.identity is not None

    rate = storage.scrub_rate if IBlobInventory.providedBy(storage) else 0
    scrubber = Scrubber(storage, index, rate=rate, reactor=reactor, threadpool=threadpool) if rate > 0 else None

    site = QuietSite(root, access_log=config.access_log, upload_limit=config.uploads.max_size,
                     read_gate=read_gate if config.auth.read == "authenticated" else None,
                     upload_gate=UploadGate(accounts, config.uploads.max_concurrent, config.uploads.enabled),
                     header_timeout=config.header_timeout, min_body_rate=config.min_body_rate,
                     traffic=traffic, access_log_format=config.monitoring.access_log_format)
    site.body_limits = {b"/requirements.txt": config.prefetch.max_body}
    # The fast path answers fresh cached pages without twisted.web; it logs
    # nothing, so an access log means every request takes the ordinary route.
    # It needs Twisted's internals, as sendfile does: checked once, here.
    twisted_support = _twisted.self_check()
    factory: Any = site
    if config.fast_path and not config.access_log and twisted_support.fast_path:
        factory = FastPathFactory(site, root.views, lambda: site.read_gate is not None, clock=reactor,
                                  traffic=traffic)
    factory = ConnectionLimits(factory, reactor, max_connections=config.max_connections,
                               max_per_client=config.max_connections_per_client,
                               header_timeout=config.header_timeout, fast_path=factory is not site,
                               traffic=traffic)
    app = App(config=config, reactor=reactor, threadpool=threadpool, storage=storage, index=index,
              upstream=upstream, mirror=mirror, downloader=downloader, site=site, stats=stats,
              accounts=accounts, factory=factory, scrubber=scrubber, traffic=traffic,
              audit=audit, policy=config.policy, cache_keeper=keeper)
    if config.monitoring.listen:  # its own listener: no gates, the same counters
        from pypicache.web.site import build_monitoring_root, monitoring_route_of

        app.monitoring = QuietSite(build_monitoring_root(ready, metrics), access_log=config.access_log,
                                   traffic=traffic, access_log_format=config.monitoring.access_log_format,
                                   header_timeout=config.header_timeout, min_body_rate=config.min_body_rate)
        app.monitoring.route_of = monitoring_route_of
        # Capped and tracked as the main listeners are: the shutdown drains it too (pypicache.web.draining).
        app.monitoring = ConnectionLimits(app.monitoring, reactor, max_connections=config.max_connections,
                                          max_per_client=config.max_connections_per_client,
                                          header_timeout=config.header_timeout, fast_path=False, traffic=traffic)
    try:
        apply_policy(app, config.policy)  # the config's block and allow lists, and pypicache policy's
    except ValueError as e:
        stop_context(context)
        raise ConfigError(str(e)) from None
    if scrubber is not None:
        scrubber.start()
    if keeper is not None:
        keeper.start()
    return app
