"""Pre-filling: fetch everything a requirements or lock file needs, before
anyone installs it, so installs work later with the upstream gone.

Inputs come from :mod:`pypicache.services.lockfiles`; ranges are resolved
per target environment (:mod:`pypicache.services.environments`) by
:mod:`pypicache.services.resolver`, which reads project pages from the
mirror and core metadata through the downloader, in process: exactly what
the ``/simple/`` and ``.metadata`` routes would serve.  Each chosen file is
then fetched through the downloader, so it is verified and stored as a
client's download would be, and joins any client transfer in flight.

While a resolution waits on the reactor, the pages and metadata of the
dependencies it just learnt of are fetched ahead (:meth:`Catalog.warm`):
a cold resolution then costs about one round trip per level of the
dependency tree, not one per package.
"""

from __future__ import annotations

import io
import os
import queue
import tarfile
import zipfile
from email.message import Message
from email.parser import BytesParser
from typing import Any, Callable, Iterable, Sequence

import attrs
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypicache.model import FileRecord, ProjectRecord, UpstreamError, UpstreamNotFound
from pypicache.services.environments import Environment
from pypicache.services.lockfiles import Inputs, LockedFile
from pypicache.services.mirror import Coalescer, UpstreamUnavailable
from pypicache.services.resolver import best_files, matches_hashes, resolve, version_of
from pypicache.services import cooldown
from pypicache.services.visibility import visible

__all__ = ["FileResult", "Report", "Prefetcher", "Catalog", "PrefetchError"]

log = Logger()

#: Files fetched at once: enough to fill a link, few enough to be polite.
CONCURRENCY = 8
#: Bytes read at most to get core metadata out of a stored file.
MAX_METADATA_BYTES = 16 * 1024 * 1024


class PrefetchError(Exception):
    """Metadata or a page that the resolution needed could not be had."""


@attrs.frozen
class FileResult:
    """One line of the answer: a file fetched, already held, or failed (and
    why); ``filename`` is None when no file could be chosen at all."""

    project: str | None
    filename: str | None
    status: str  # "fetched" | "held" | "failed"
    reason: str | None = None
    version: str | None = None
    size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if v is not None or k in ("project", "filename")}


@attrs.define
class Report:
    files: list[FileResult] = attrs.Factory(list)
    environments: list[str] = attrs.Factory(list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(f.status != "failed" for f in self.files)

    def summary(self) -> dict[str, Any]:
        count = {s: sum(1 for f in self.files if f.status == s) for s in ("fetched", "held", "failed")}
        return {**count,
                "bytes_fetched": sum(f.size or 0 for f in self.files if f.status == "fetched"),
                "bytes_held": sum(f.size or 0 for f in self.files if f.status == "held"),
                "environments": self.environments, "seconds": round(self.seconds, 3)}

    def as_dict(self) -> dict[str, Any]:
        return {"files": [f.as_dict() for f in self.files], "summary": self.summary()}


def _parse_metadata(data: bytes) -> Message:
    return BytesParser().parsebytes(data, headersonly=True)


def _metadata_from_archive(fileobj: Any, filename: str) -> bytes:
    """METADATA from a wheel, PKG-INFO from an sdist (blocking: a thread)."""
    if filename.endswith(".whl") or filename.endswith(".zip"):
        with zipfile.ZipFile(fileobj) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if len(parts) == 2 and (parts[0].endswith(".dist-info") and parts[1] == "METADATA"
                                        or filename.endswith(".zip") and parts[1] == "PKG-INFO"):
                    info = zf.getinfo(name)
                    if info.file_size > MAX_METADATA_BYTES:
                        break
                    return zf.read(name)
    else:
        with tarfile.open(fileobj=fileobj) as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile() \
                        and member.size <= MAX_METADATA_BYTES:
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        return extracted.read()
    raise PrefetchError(f"{filename} holds no core metadata")


class Catalog:
    """The resolver's view of this server: pages, core metadata, files.

    The async methods run on the reactor; the plain ones (:class:`Source`
    for the resolver) block their calling thread on them.
    """

    def __init__(self, *, mirror: Any, downloader: Any, storage: Any, reactor: Any, threadpool: Any,
                 stopping: Callable[[], bool] = lambda: False, policy: Callable[[], Any] = lambda: None) -> None:
        self.stopping = stopping
        #: The current ``[policy]``: files its cooldown holds back are not chosen.
        self.policy = policy
        self.mirror = mirror
        self.downloader = downloader
        self.storage = storage
        self.reactor = reactor
        self.threadpool = threadpool
        self._files: dict[str, tuple[FileRecord, ...] | None] = {}
        self._metadata: dict[tuple[str, str], Message] = {}
        self._pages: Coalescer[tuple[FileRecord, ...] | None] = Coalescer()
        self._reads: Coalescer[Message] = Coalescer()
        #: Why a project could not be had (upstream down...), for the answer.
        self.errors: dict[str, str] = {}
        #: Files this run downloaded (to read their metadata, or to fill).
        self.fetched: set[tuple[str, str]] = set()

    # ---------------------------------------------------------- reactor side
    async def project_files(self, name: str) -> tuple[FileRecord, ...] | None:
        if name in self._files:
            return self._files[name]
        return await self._pages.run(name, lambda: self._load(name))

    async def _load(self, name: str) -> tuple[FileRecord, ...] | None:
        rules = self.mirror.blocklist.rules  # never pre-fill what the policy refuses
        if rules.active and rules.project_reason(name) is not None:
            self.errors[name] = rules.project_reason(name)
            self._files[name] = None
            return None
        try:
            page = await self.mirror.project(name, allow_upstream=rules.allows(name))
        except UpstreamUnavailable as e:
            self.errors[name] = f"upstream unavailable: {e.reason}"
            return None
        if page is None:
            self._files[name] = None
            return None
        files = self._visible(name, page.record)
        if rules.active:
            files = rules.visible(name, files)
        self._files[name] = files
        return files

    def _visible(self, name: str, record: ProjectRecord) -> tuple[FileRecord, ...]:
        merged = name in self.mirror.merge
        files = [f for f in record.files if visible(record, f, merged=merged)]
        if self.mirror.offline:
            files = [f for f in files if f.stored]
        # What clients cannot have yet is not pre-filled either (services/cooldown.py).
        return cooldown.hold_back(self.policy(), name, tuple(files), self.reactor.seconds()).files

    async def current(self, name: str, filename: str) -> FileRecord | None:
        """The index's latest record of a file (its ``stored`` flag may have changed)."""
        record = await self.mirror.load(name)
        found = record.file(filename) if record is not None else None
        if found is None or not visible(record, found, merged=name in self.mirror.merge):
            return None
        return found if cooldown.held_until(self.policy(), name, found, self.reactor.seconds()) is None else None

    async def release_metadata(self, name: str, version: Version, files: Sequence[FileRecord]) -> Message:
        key = (name, str(version))
        if key in self._metadata:
            return self._metadata[key]
        message = await self._reads.run(key, lambda: self._read_metadata(name, files))
        self._metadata[key] = message
        return message

    async def _read_metadata(self, name: str, files: Sequence[FileRecord]) -> Message:
        errors: list[str] = []
        for f in sorted((f for f in files if f.core_metadata is not None), key=lambda f: not f.metadata_stored):
            try:
                return _parse_metadata(await self._metadata_file(name, f))
            except Exception as e:  # try the next way
                errors.append(f"{f.filename}.metadata: {e}")
        # No PEP 658 file: read it out of a wheel (or the sdist's PKG-INFO),
        # preferring one already held, then the smallest.
        ordered = sorted(files, key=lambda f: (not f.filename.endswith(".whl"), not f.stored, f.size or 0))
        for f in ordered:
            if not f.filename.endswith((".whl", ".tar.gz", ".zip")):
                continue
            try:
                stored = f if f.stored else await self.fetch(name, f)
                return _parse_metadata(await self._from_blob(stored))
            except Exception as e:
                errors.append(f"{f.filename}: {e}")
            break  # one download to learn a release's dependencies, not every file
        raise PrefetchError("; ".join(errors) or "no file to read its metadata from")

    async def _metadata_file(self, name: str, f: FileRecord) -> bytes:
        sha = f.metadata_sha256 if f.metadata_stored else None
        if sha is None:
            if not f.url or self.mirror.offline:
                raise PrefetchError("not stored, and no upstream to fetch it from")
            sha = await self.downloader.fetch_metadata(name, f)
        return await self._read_blob(sha, MAX_METADATA_BYTES)

    async def _read_blob(self, sha256: str, limit: int) -> bytes:
        reader = await self.storage.open_read(sha256)
        try:
            if reader.size > limit:
                raise PrefetchError(f"{reader.size} bytes is too large")
            chunks = []
            while True:
                chunk = await reader.read(256 * 1024)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            reader.close()

    async def _from_blob(self, f: FileRecord) -> bytes:
        assert f.sha256 is not None
        reader = await self.storage.open_read(f.sha256)
        try:
            fd = reader.fileno()
            if fd is not None:  # random access without reading the whole wheel
                def read() -> bytes:
                    with os.fdopen(os.dup(fd), "rb") as fh:
                        fh.seek(0)
                        return _metadata_from_archive(fh, f.filename)

                return await deferToThreadPool(self.reactor, self.threadpool, read)
        finally:
            reader.close()
        data = await self._read_blob(f.sha256, 1 << 31)
        return await deferToThreadPool(self.reactor, self.threadpool, _metadata_from_archive,
                                       io.BytesIO(data), f.filename)

    async def fetch(self, name: str, f: FileRecord) -> FileRecord:
        """Download ``f`` through the downloader (verified, stored, indexed);
        its stored record.  Raises UpstreamError/PrefetchError."""
        if not f.url or self.mirror.offline:
            raise PrefetchError("not stored here, and there is no upstream to fetch it from")
        transfer = self.downloader.transfer_for(name, f.filename)
        if transfer is None:
            transfer = await self.downloader.start(name, f)
        waiter: defer.Deferred[Any] = defer.Deferred()

        def relay(result: Any) -> Any:  # observe: awaiting would take the result from others
            waiter.callback(None if isinstance(result, Failure) else result)
            return result

        transfer.stored.addBoth(relay)
        blob = await waiter
        if blob is None:
            raise PrefetchError(str(transfer.failure) if transfer.failure else "not stored (see the server log)")
        self.fetched.add((name, f.filename))
        return attrs.evolve(f, stored=True, size=blob.size)

    def warm_async(self, requirements: Iterable[Requirement], env: Environment) -> None:
        for req in requirements:
            defer.ensureDeferred(self._warm_one(req, env)).addErrback(lambda _: None)

    async def _warm_one(self, req: Requirement, env: Environment) -> None:
        name = canonicalize_name(req.name)
        files = await self.project_files(name)
        if not files:
            return
        by_version: dict[Version, list[FileRecord]] = {}
        for f in files:
            v = version_of(f.filename)
            if v is not None:
                by_version.setdefault(v, []).append(f)
        for v in req.specifier.filter(sorted(by_version, reverse=True)):
            release = by_version[v]
            if not all(f.yanked for f in release) and best_files(release, env):
                await self.release_metadata(name, v, release)
                return

    # ----------------------------------------------------------- thread side
    def _blocking(self, work: Callable[[], Any]) -> Any:
        """Run ``work()`` (a coroutine) on the reactor and wait for it.

        Not blockingCallFromThread: at shutdown the reactor joins its pool's
        threads, and a thread waiting for a call the reactor will no longer
        run would hang it; this one gives up once ``stopping`` is set.
        """
        answer: queue.Queue[Any] = queue.Queue()
        self.reactor.callFromThread(lambda: defer.ensureDeferred(work()).addBoth(answer.put))
        while True:
            try:
                result = answer.get(timeout=0.5)
            except queue.Empty:
                if self.stopping():
                    raise PrefetchError("the server is stopping") from None
                continue
            if isinstance(result, Failure):
                result.raiseException()
            return result

    def files(self, name: str) -> Sequence[FileRecord] | None:
        if name in self._files:
            return self._files[name]
        return self._blocking(lambda: self.project_files(name))

    def metadata(self, name: str, version: Version, files: Sequence[FileRecord]) -> Message:
        cached = self._metadata.get((name, str(version)))
        if cached is not None:
            return cached
        return self._blocking(lambda: self.release_metadata(name, version, files))

    def warm(self, requirements: Iterable[Requirement], env: Environment) -> None:
        self.reactor.callFromThread(self.warm_async, list(requirements), env)


@attrs.frozen
class _Planned:
    project: str
    record: FileRecord
    version: str | None


class Prefetcher:
    """Runs one pre-fill: resolve, choose files per environment, fetch them."""

    def __init__(self, *, mirror: Any, downloader: Any, storage: Any, reactor: Any,
                 threadpool: Any = None, concurrency: int = CONCURRENCY,
                 policy: Callable[[], Any] = lambda: None) -> None:
        self.policy = policy  # the current [policy] (app.policy): the cooldown applies
        self.mirror = mirror
        self.downloader = downloader
        self.storage = storage
        self.reactor = reactor
        #: Resolutions block a thread while they wait on the reactor: not the
        #: thread pool the index uses, which they would starve.
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self.concurrency = concurrency
        self._stopping = False
        if hasattr(reactor, "addSystemEventTrigger"):
            reactor.addSystemEventTrigger("before", "shutdown", self._stop)

    def _stop(self) -> None:
        self._stopping = True

    async def run(self, inputs: Inputs, envs: Sequence[Environment], *,
                  on_plan: Callable[[list[tuple[str, FileRecord]]], None] | None = None,
                  on_file: Callable[[FileResult], None] | None = None) -> Report:
        started = self.reactor.seconds()
        catalog = Catalog(mirror=self.mirror, downloader=self.downloader, storage=self.storage,
                          reactor=self.reactor, threadpool=self.threadpool, stopping=lambda: self._stopping,
                          policy=self.policy)
        report = Report(environments=[e.label for e in envs])
        failures: list[FileResult] = [FileResult(p.project, None, "failed", f"{p.where}: {p.reason}")
                                      for p in inputs.problems]
        plan: dict[tuple[str, str], _Planned] = {}
        if inputs.wanted:
            await self._resolve(catalog, inputs, envs, plan, failures)
        if inputs.locked:
            await self._locked(catalog, inputs.locked, envs, plan, failures)
        for failure in failures:
            if on_file is not None:
                on_file(failure)
        report.files.extend(failures)
        if on_plan is not None:
            on_plan([(p.project, p.record) for p in plan.values()])
        semaphore = defer.DeferredSemaphore(self.concurrency)

        async def one(item: _Planned) -> None:
            result = await self._fetch(catalog, item)
            report.files.append(result)
            if on_file is not None:
                on_file(result)

        await defer.gatherResults([semaphore.run(lambda i=item: defer.ensureDeferred(one(i)))
                                   for item in plan.values()], consumeErrors=True)
        report.seconds = self.reactor.seconds() - started
        return report

    async def _resolve(self, catalog: Catalog, inputs: Inputs, envs: Sequence[Environment],
                       plan: dict[tuple[str, str], _Planned], failures: list[FileResult]) -> None:
        hashes: dict[str, frozenset[tuple[str, str]]] = {}
        for w in inputs.wanted:
            hashes[w.name] = hashes.get(w.name, frozenset()) | w.hashes
        seen: set[tuple[str, str]] = set()
        for env in envs:
            try:
                resolution = await deferToThreadPool(self.reactor, self.threadpool, resolve, catalog,
                                                     inputs.wanted, inputs.constraints, env)
            except Exception as e:  # metadata that could not be had, a provider bug: one line
                log.warn("pre-fill resolution for {env} failed: {error}", env=env.label, error=repr(e))
                failures.extend(FileResult(w.name, None, "failed", f"resolution for {env.label} failed: {e}")
                                for w in inputs.wanted)
                continue
            for name, reason in resolution.failed:
                if (name, reason) not in seen:
                    seen.add((name, reason))
                    failures.append(FileResult(name, None, "failed", catalog.errors.get(name, reason)))
            for name, candidate in resolution.pins.items():
                chosen = best_files(candidate.files, env, hashes.get(name, frozenset()))
                for record in chosen:
                    plan.setdefault((name, record.filename), _Planned(name, record, str(candidate.version)))

    async def _locked(self, catalog: Catalog, locked: Sequence[LockedFile], envs: Sequence[Environment],
                      plan: dict[tuple[str, str], _Planned], failures: list[FileResult]) -> None:
        releases: dict[tuple[str, str], list[LockedFile]] = {}
        for f in locked:
            releases.setdefault((f.project, f.version), []).append(f)
        names = sorted({name for name, _ in releases})
        pages = dict(zip(names, await defer.gatherResults(  # concurrently: no resolution waits on them
            [defer.ensureDeferred(catalog.project_files(name)) for name in names])))
        for (name, version), listed in releases.items():
            files = pages[name]
            if files is None:
                reason = catalog.errors.get(name, "no such project on the index")
                failures.append(FileResult(name, None, "failed", reason))
                continue
            by_name = {f.filename: f for f in files}
            candidates: list[FileRecord] = []
            for lf in listed:
                record = by_name.get(lf.filename)
                if record is None:
                    failures.append(FileResult(name, lf.filename, "failed", f"{lf.where}: not on the index"))
                elif lf.hashes and not matches_hashes(record, lf.hashes):
                    failures.append(FileResult(name, lf.filename, "failed",
                                               f"{lf.where}: the lock's hash differs from the index's"))
                else:
                    candidates.append(record)
            targets = [env for env in envs if any(env.marker_true(lf.marker) for lf in listed)]
            chosen = {record.filename: record for env in targets for record in best_files(candidates, env)}
            for record in chosen.values():
                plan.setdefault((name, record.filename), _Planned(name, record, version or None))
            if targets and candidates and not chosen:
                failures.append(FileResult(name, None, "failed", f"no file of {name} {version} fits "
                                                                 f"{', '.join(e.label for e in targets)}"))

    async def _fetch(self, catalog: Catalog, item: _Planned) -> FileResult:
        name, record = item.project, item.record
        try:
            current = await catalog.current(name, record.filename) or record
            if current.stored:
                status = "fetched" if (name, record.filename) in catalog.fetched else "held"
                return FileResult(name, record.filename, status, None, item.version, current.size)
            stored = await catalog.fetch(name, current)
            return FileResult(name, record.filename, "fetched", None, item.version, stored.size)
        except UpstreamNotFound:
            reason = "the upstream does not have it"
        except (UpstreamError, PrefetchError) as e:
            reason = str(e)
        except Exception as e:
            log.failure("pre-filling {project}/{filename} failed", project=name, filename=record.filename)
            reason = f"{type(e).__name__}: {e}"
        return FileResult(name, record.filename, "failed", reason, item.version, record.size)
