"""The background scrub: every stored blob is hashed again, slowly, forever.

Verify on read trusts a blob this process has seen good for as long as its
(device, inode, size, mtime, ctime) stay the same, which catches any rewrite
through the file system.  Decay below the file system (a sector gone bad, a
controller writing garbage) changes none of those, so without a scrub a
rotten blob would be served until the next restart.  The scrub walks every
blob (:class:`~pypicache.interfaces.IBlobInventory`) and hashes it, reading at
most ``[storage] scrub_rate`` bytes per second, a chunk per thread-pool call
so neither a pool thread nor the disk is held for long.  A blob that fails:

* is moved to quarantine by the storage (never served again);
* has every index entry naming it marked not stored (which updates the
  served page: :mod:`pypicache.services.catalogue`), so the next request fetches the file from the
  upstream again (its hash checked on the way in, as always);
* if it was an uploaded file, cannot be fetched again: that is logged as
  critical (upload it again: an identical re-upload restores it), and the
  file is answered 404 meanwhile, never with wrong bytes.

The first pass starts :data:`START_DELAY` seconds after the server (so
start-up and the first installs have the disk to themselves); each next pass
:data:`PASS_INTERVAL` seconds after the previous one ended.  Each blob also
costs :data:`BLOB_COST` bytes of the budget, so a store of many tiny METADATA
files is not walked at thousands of opens per second.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypicache.interfaces import IIndexRepair
from pypicache.services.verify import mark_unstored, part_name

__all__ = ["Scrubber", "ScrubReport", "START_DELAY", "PASS_INTERVAL"]

log = Logger()

#: Seconds after start before the first pass.
START_DELAY = 300.0
#: Seconds between the end of one pass and the start of the next.
PASS_INTERVAL = 3600.0
#: Bytes of the rate budget one blob costs besides its size (opening it).
BLOB_COST = 4096
#: Blobs listed per thread-pool call.
LIST_BATCH = 512


@attrs.define
class ScrubReport:
    """What one pass found and did."""

    blobs: int = 0
    bytes: int = 0
    #: sha256 of every blob found corrupt or unreadable and moved aside.
    corrupt: list[str] = attrs.Factory(list)
    #: (project, filename, part) marked not stored; part is "file" or "metadata".
    unstored: list[tuple[str, str, str]] = attrs.Factory(list)
    #: The uploaded ones among them: no upstream to fetch them from.
    lost: list[tuple[str, str, str]] = attrs.Factory(list)


class Scrubber:
    """Runs scrub passes over ``storage`` (an IBlobInventory) on ``clock``.

    ``index`` may be None (then a bad blob is only moved aside); given the
    server's index (a :class:`~pypicache.services.catalogue.CataloguedIndex`)
    its marks reach the served pages too.  ``reactor`` and ``threadpool`` run
    the blob listing off the reactor thread.
    """

    def __init__(self, storage: Any, index: Any, *, rate: int, reactor: Any, threadpool: Any,
                 clock: Any = None, start_delay: float = START_DELAY,
                 pass_interval: float = PASS_INTERVAL) -> None:
        if rate <= 0:
            raise ValueError(f"scrub rate must be positive, got {rate!r}")
        self.storage = storage
        self.index = index
        self.rate = rate
        self.start_delay = start_delay
        self.pass_interval = pass_interval
        self._reactor = reactor
        self._threadpool = threadpool
        self._clock = clock if clock is not None else reactor
        self.running = False
        self._stopping = False
        self._timer: Any = None
        self._pass: defer.Deferred[ScrubReport] | None = None
        self._sleep: defer.Deferred[None] | None = None

    # ------------------------------------------------------------ schedule

    def start(self) -> None:
        """Schedule the first pass; later ones follow on their own."""
        self.running = True
        self._stopping = False
        self._schedule(self.start_delay)

    def stop(self) -> defer.Deferred[None]:
        """Cancel what is scheduled and end a pass in progress after its
        current chunk; fires once nothing of the scrub runs any more."""
        self.running = False
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        done: defer.Deferred[None] = defer.Deferred()
        if self._pass is None:
            done.callback(None)
        else:
            self._pass.addBoth(lambda result: (done.called or done.callback(None), result)[1])
        return done

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.callLater(delay, self._scheduled_pass)

    def _scheduled_pass(self) -> None:
        self._timer = None
        if self._pass is not None:  # one started by hand is still running
            self._schedule(self.pass_interval)
            return
        self.run_pass().addBoth(self._pass_ended)

    def _pass_ended(self, result: Any) -> None:
        if isinstance(result, Failure):
            if not result.check(defer.CancelledError):
                log.failure("storage scrub pass failed; trying again in {interval}s", result,
                            interval=self.pass_interval)
        if self.running:
            self._schedule(self.pass_interval)

    # --------------------------------------------------------------- a pass

    def run_pass(self) -> defer.Deferred[ScrubReport]:
        """Hash every blob once at the configured rate; fires with a
        :class:`ScrubReport` (CancelledError if stopped meanwhile or before)."""
        if self._pass is not None:
            return defer.fail(RuntimeError("a scrub pass is already running"))
        d = self._pass = defer.ensureDeferred(self._run())

        def over(result: Any) -> Any:
            self._pass = None
            return result

        return d.addBoth(over)

    def _pace(self, nbytes: int) -> defer.Deferred[None]:
        if self._stopping:
            return defer.fail(defer.CancelledError("the scrub was stopped"))
        self._sleep = task.deferLater(self._clock, nbytes / self.rate, lambda: None)
        return self._sleep

    async def _run(self) -> ScrubReport:
        report = ScrubReport()
        log.info("storage scrub: starting a pass at {rate} bytes/s", rate=self.rate)
        blobs = iter(self.storage.iter_blobs())
        while True:
            batch = await deferToThreadPool(self._reactor, self._threadpool, list,
                                            itertools.islice(blobs, LIST_BATCH))
            if not batch:
                break
            for sha256, _size in batch:
                await self._pace(BLOB_COST)
                result = await self.storage.check_blob(sha256, remove_corrupt=True, pace=self._pace)
                if result.status == "missing":  # deleted since it was listed
                    continue
                report.blobs += 1
                report.bytes += result.size or 0
                if result.status == "ok":
                    continue
                if not result.removed:  # a good copy replaced it while it was hashed
                    log.info("storage scrub: blob {sha256} was {status} but has been replaced since",
                             sha256=sha256, status=result.status)
                    continue
                report.corrupt.append(sha256)
                await self._unstore(sha256, report)
        log.info("storage scrub: pass done, {blobs} blob(s), {bytes} bytes, {bad} corrupt",
                 blobs=report.blobs, bytes=report.bytes, bad=len(report.corrupt))
        return report

    async def _unstore(self, sha256: str, report: ScrubReport) -> None:
        """Mark every index entry whose bytes were ``sha256`` not stored.

        Needs an index with :class:`~pypicache.interfaces.IIndexRepair`
        (without it the blob is only moved aside, and the next request
        finds it gone and fetches the file again).  A good copy stored again
        meanwhile (a request found the blob gone and fetched it) is left alone.
        """
        if self.index is None or not IIndexRepair.providedBy(self.index) or await self.storage.exists(sha256):
            return
        uses: dict[str, list[tuple[str, str]]] = {}
        for name, filename, part in await self.index.stored_with_blob(sha256):
            uses.setdefault(name, []).append((filename, part))
        for name, entries in uses.items():
            record = await self.index.get_project(name)
            if record is None:
                continue
            for filename, part in entries:
                f = record.file(filename)
                if f is None or await mark_unstored(self.index, name, filename, part) is None:
                    continue
                entry = (name, filename, part)
                report.unstored.append(entry)
                what = part_name(filename, part)
                if f.url:
                    log.warn("storage scrub: {project}/{what} was corrupt; it is fetched again from "
                             "the upstream when next requested", project=name, what=what)
                else:
                    report.lost.append(entry)
                    log.critical("storage scrub: uploaded file {project}/{what} was corrupt and has no "
                                 "upstream copy: upload it again (an identical re-upload restores "
                                 "it); until then it is answered 404", project=name, what=what)
