"""Offline bundles: what a set of projects needs, in one archive, and back.

``pypicache export`` writes a tar (optionally gzipped, always streamed, so
memory stays flat however big) holding:

* ``manifest.json`` first: the format and its version, when it was made,
  per project its origin and index entries (yanked state, requires-python,
  upload time, hashes, size, core-metadata hash) and the list of blobs with
  their sizes, closed by ``digest``: the sha256 of everything above it;
* ``blobs/<sha256>``: each file and METADATA blob once, named by its digest.

The manifest comes first so that an import knows, before it reads a single
byte of a blob, which members may follow and how big each is: anything
else (another name, a link, a device, a size that differs) is refused on
its header.  ``pypicache import`` treats the archive as hostile input:
members are looked up by the names the manifest gives and copied, while
hashed, into a staging directory of its own, never extracted by their own
paths.  Only when every blob matched and the index's rules allow the whole
set (no private name may shadow an upstream one here, no upstream files may
be mixed into a private name, no filename may come back with other bytes)
are the blobs moved into storage and the index entries written: a refused
bundle changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool

from pypicache.interfaces import IIndexProvenance
from pypicache.model import BlobInfo, FileRecord, InvalidName, ProjectPage, ProjectRecord, Validators, \
    is_sha256, normalize
from pypicache.services.visibility import LOCAL, visible_files

__all__ = ["BundleError", "Item", "Manifest", "FORMAT", "VERSION", "select_all", "select_for",
           "build_manifest", "parse_manifest", "export_bundle", "import_bundle", "safe_filename",
           "stored_blobs"]

FORMAT = "pypicache-bundle"
VERSION = 1
MANIFEST = "manifest.json"
BLOBS = "blobs/"
UPSTREAM = "upstream"
#: A manifest larger than this is no manifest (a million files is ~400 MB... of
#: JSON we would hold in memory: refuse long before).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: No distribution file is a terabyte: a header claiming that is hostile.
MAX_BLOB_BYTES = 1 << 40
_CHUNK = 256 * 1024
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!~-]*", re.ASCII)


class BundleError(Exception):
    """The export or import cannot be done: one line saying why."""


@attrs.frozen
class Item:
    """One file exported, imported, already held, or failed."""

    project: str
    filename: str
    status: str  # "exported" | "imported" | "held" | "failed"
    size: int | None = None
    reason: str | None = None


def safe_filename(filename: object) -> bool:
    """A distribution filename that is safe as one path component anywhere."""
    return (isinstance(filename, str) and len(filename) <= 255 and bool(_FILENAME.fullmatch(filename))
            and ".." not in filename)


# ------------------------------------------------------------------ selection


def _held(record: ProjectRecord, merge: frozenset[str]) -> ProjectRecord:
    """``record`` with only the files a client may see and whose bytes are held."""
    files = visible_files(record, local=True, merged=record.name in merge)
    # A private name's upstream files (shown when it merges) stay behind:
    # the other server's merge list decides about those.
    return attrs.evolve(record, files=tuple(f for f in files if f.sha256 is not None
                                            and (record.origin != LOCAL or f.origin == LOCAL)))


async def select_all(index: Any, *, projects: Iterable[str] = (), merge: frozenset[str] = frozenset()
                     ) -> list[ProjectRecord]:
    """Every project held (or those named), with their stored files: a full move."""
    wanted = {normalize(p) for p in projects}
    names = await index.list_projects()
    missing = sorted(wanted - set(names))
    if missing:
        raise BundleError(f"no such project here: {', '.join(missing)}")
    records = []
    for name in names:
        if wanted and name not in wanted:
            continue
        record = await index.get_project(name)
        if record is None:
            continue
        held = _held(record, merge)
        if held.files or held.origin == LOCAL:  # an empty private name still carries its claim
            records.append(held)
    return records


async def select_for(index: Any, storage: Any, inputs: Any, envs: Sequence[Any], *, reactor: Any,
                     merge: frozenset[str] = frozenset()) -> list[ProjectRecord]:
    """What ``inputs`` (requirements or lock files) need, from what is held.

    Resolution runs over the server's own standalone view (a mirror that is
    offline: it never asks the upstream), so the set is what this server can
    hand over.  Raises BundleError naming what is missing.
    """
    from pypicache.services.catalogue import CataloguedIndex
    from pypicache.services.mirror import Mirror
    from pypicache.services.prefetch import Prefetcher

    # A wrapper of its own: this mirror must not follow a running server's index.
    mirror = Mirror(index=CataloguedIndex(index), upstream=None, clock=reactor, offline=True, merge=merge)
    prefetcher = Prefetcher(mirror=mirror, downloader=None, storage=storage, reactor=reactor)
    report = await prefetcher.run(inputs, envs)
    failed = [f for f in report.files if f.status == "failed"]
    if failed:
        what = "; ".join(f"{f.project or '-'}{' ' + f.filename if f.filename else ''}: {f.reason}"
                         for f in failed)
        raise BundleError(f"this server does not hold everything the set needs ({what}); "
                          "run `pypicache prefetch` with the same files first")
    chosen: dict[str, set[str]] = {}
    for f in report.files:
        chosen.setdefault(f.project, set()).add(f.filename)
    records = []
    for name in sorted(chosen):
        record = await index.get_project(name)
        held = _held(record, merge)
        records.append(attrs.evolve(held, files=tuple(f for f in held.files if f.filename in chosen[name])))
    return records


def _parts(f: FileRecord) -> list[tuple[str, str]]:
    """``(name, sha256)`` of a held file's blobs: its bytes, and its METADATA
    (named filename + ``.metadata``) and PEP 740 provenance (``.provenance``)
    when stored."""
    parts = [(f.filename, f.sha256)]
    if f.metadata_stored and f.metadata_sha256 is not None:
        parts.append((f.filename + ".metadata", f.metadata_sha256))
    if f.provenance_sha256 is not None:
        parts.append((f.filename + ".provenance", f.provenance_sha256))
    return parts  # type: ignore[return-value]


def stored_blobs(records: Iterable[ProjectRecord]) -> list[tuple[str, str, str]]:
    """``(project, filename, sha256)`` of every blob the records need, METADATA
    blobs included (filename + ``.metadata``), each blob once."""
    seen: set[str] = set()
    out = []
    for record in records:
        for f in record.files:
            for name, sha in _parts(f):
                if sha not in seen:
                    seen.add(sha)
                    out.append((record.name, name, sha))
    return out


# ------------------------------------------------------------------- manifest


@attrs.frozen
class Manifest:
    created: str
    projects: tuple[ProjectRecord, ...]
    blobs: Mapping[str, int]


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _file_entry(f: FileRecord) -> dict[str, Any]:
    return {
        "filename": f.filename, "sha256": f.sha256, "size": f.size, "hashes": dict(f.hashes),
        "requires-python": f.requires_python, "yanked": f.yanked, "yanked-reason": f.yanked_reason,
        "upload-time": f.upload_time, "url": f.url,
        "core-metadata": None if f.core_metadata is None else dict(f.core_metadata),
        "metadata-sha256": f.metadata_sha256 if f.metadata_stored else None,
        "provenance": f.provenance, "provenance-sha256": f.provenance_sha256,
    }


def build_manifest(records: Sequence[ProjectRecord], sizes: Mapping[str, int], created: str) -> bytes:
    """The manifest's bytes; ``sizes`` maps every needed blob to its stored size."""
    projects = []
    for record in records:
        files = []
        for f in record.files:
            entry = _file_entry(f)
            entry["size"] = sizes[f.sha256]  # type: ignore[index]
            entry["origin"] = f.origin
            files.append(entry)
        projects.append({"name": record.name, "origin": record.origin, "files": files})
    body = {"format": FORMAT, "version": VERSION, "created": created, "projects": projects,
            "blobs": dict(sorted(sizes.items()))}
    return _canonical({**body, "digest": hashlib.sha256(_canonical(body)).hexdigest()})


def _need(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BundleError(f"bad manifest: {where}")
    return value


def _optional_str(value: Any, where: str) -> str | None:
    return None if value is None else _need(value, str, where)


def parse_manifest(data: bytes) -> Manifest:
    """The manifest, checked whole: its digest, every name, hash and size.

    Raises BundleError for anything unexpected: a manifest is input from
    another machine, and everything the import does follows from it.
    """
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise BundleError(f"bad manifest: not JSON ({e})") from None
    _need(doc, dict, "not an object")
    if doc.get("format") != FORMAT:
        raise BundleError("not a pypicache bundle (manifest format)")
    if doc.get("version") != VERSION:
        raise BundleError(f"bundle format version {doc.get('version')!r}; this pypicache reads {VERSION}")
    body = {k: v for k, v in doc.items() if k != "digest"}
    if doc.get("digest") != hashlib.sha256(_canonical(body)).hexdigest():
        raise BundleError("the manifest's digest does not match its contents: the bundle was changed")
    if set(doc) != {"format", "version", "created", "projects", "blobs", "digest"}:
        raise BundleError("bad manifest: unexpected keys")
    blobs = _need(doc["blobs"], dict, "blobs")
    for sha, size in blobs.items():
        if not is_sha256(sha) or not isinstance(size, int) or isinstance(size, bool) \
                or not 0 <= size <= MAX_BLOB_BYTES:
            raise BundleError(f"bad manifest: blob {sha!r} of size {size!r}")
    referenced: set[str] = set()
    projects = []
    names: set[str] = set()
    for i, p in enumerate(_need(doc["projects"], list, "projects")):
        _need(p, dict, f"projects[{i}]")
        try:
            name = normalize(p.get("name"))
        except InvalidName:
            raise BundleError(f"bad manifest: project name {p.get('name')!r}") from None
        if name != p.get("name") or name in names:
            raise BundleError(f"bad manifest: project {p.get('name')!r} (not normalised, or twice)")
        names.add(name)
        origin = p.get("origin")
        if origin not in (UPSTREAM, LOCAL):
            raise BundleError(f"bad manifest: {name}: origin {origin!r}")
        files = []
        seen: set[str] = set()
        for e in _need(p.get("files"), list, f"{name}: files"):
            _need(e, dict, f"{name}: a file")
            filename = e.get("filename")
            if not safe_filename(filename) or filename in seen:
                raise BundleError(f"bad manifest: {name}: filename {filename!r}")
            seen.add(filename)
            where = f"{name}/{filename}"
            sha, meta_sha = e.get("sha256"), e.get("metadata-sha256")
            if sha not in blobs or blobs[sha] != e.get("size"):
                raise BundleError(f"bad manifest: {where}: its blob is not listed with its size")
            if meta_sha is not None and meta_sha not in blobs:
                raise BundleError(f"bad manifest: {where}: its METADATA blob is not listed")
            prov_sha = e.get("provenance-sha256")
            if prov_sha is not None and prov_sha not in blobs:
                raise BundleError(f"bad manifest: {where}: its provenance blob is not listed")
            hashes = _need(e.get("hashes"), dict, f"{where}: hashes")
            if hashes.get("sha256") != sha or not all(isinstance(v, str) for v in hashes.values()):
                raise BundleError(f"bad manifest: {where}: hashes")
            core = e.get("core-metadata")
            if core is not None and (not isinstance(core, dict) or not all(isinstance(v, str) for v in core.values())
                                     or meta_sha is not None and core.get("sha256") != meta_sha):
                raise BundleError(f"bad manifest: {where}: core-metadata")
            file_origin = e.get("origin")
            if file_origin != origin:
                raise BundleError(f"bad manifest: {where}: origin {file_origin!r}")
            referenced.update(s for s in (sha, meta_sha, prov_sha) if s is not None)
            files.append(FileRecord(
                filename=filename, url=_optional_str(e.get("url"), f"{where}: url") or "",
                hashes=dict(hashes), requires_python=_optional_str(e.get("requires-python"), f"{where}: rp"),
                yanked=bool(e.get("yanked")), yanked_reason=_optional_str(e.get("yanked-reason"), f"{where}: yr"),
                core_metadata=None if core is None else dict(core), size=e["size"],
                upload_time=_optional_str(e.get("upload-time"), f"{where}: upload-time"),
                stored=True, metadata_stored=meta_sha is not None, origin=file_origin,
                provenance=_optional_str(e.get("provenance"), f"{where}: provenance"), provenance_sha256=prov_sha))
        projects.append(ProjectRecord(name=name, files=tuple(files), origin=origin))
    if referenced != set(blobs):
        raise BundleError("bad manifest: it lists blobs no file uses")
    return Manifest(created=_need(doc["created"], str, "created"), projects=tuple(projects), blobs=dict(blobs))


# --------------------------------------------------------------------- export


class _Hashing:
    """A file-like that hashes what tarfile reads through it."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._read(n if n is not None and n >= 0 else _CHUNK)
        self.sha.update(data)
        return data


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


async def read_blob_in_thread(storage: Any, sha256: str, reactor: Any, threadpool: Any,
                              consume: Callable[[Callable[[int], bytes]], Any]) -> Any:
    """Run ``consume(read)`` in the thread pool, ``read(n)`` giving the blob's
    bytes: from a duplicated descriptor when the storage has one (no reactor
    round trip per chunk), else through the reader's Deferreds."""
    reader = await storage.open_read(sha256)
    try:
        fd = reader.fileno()
        if fd is not None:
            def with_fd() -> Any:
                with os.fdopen(os.dup(fd), "rb", buffering=0) as fh:
                    fh.seek(0)
                    return consume(fh.read)
            return await deferToThreadPool(reactor, threadpool, with_fd)
        reader.seek(0)
        return await deferToThreadPool(reactor, threadpool, consume,
                                       lambda n: blockingCallFromThread(reactor, reader.read, n))
    finally:
        reader.close()


async def blob_sizes(storage: Any, records: Sequence[ProjectRecord]) -> dict[str, int]:
    """Every needed blob's stored size; BundleError naming a lost one."""
    from pypicache.model import BlobNotFound

    sizes = {}
    for project, filename, sha in stored_blobs(records):
        try:
            sizes[sha] = await storage.size(sha)
        except BlobNotFound:
            raise BundleError(f"{project}/{filename} is marked stored but its blob {sha} is missing: "
                              "run `pypicache verify --repair`") from None
    return sizes


async def export_bundle(records: Sequence[ProjectRecord], storage: Any, out: Path, *, reactor: Any,
                        threadpool: Any, created: str, on_item: Callable[[Item], None] = lambda item: None
                        ) -> list[Item]:
    """Write the bundle of ``records`` to ``out`` (gzipped when it ends in
    ``.gz`` or ``.tgz``), through a temporary name renamed at the end; each
    blob is hashed as it is written and must match its name."""
    sizes = await blob_sizes(storage, records)
    manifest = build_manifest(records, sizes, created)
    out = Path(out)
    temp = out.with_name(f".{out.name}.partial")
    mode = "w|gz" if out.name.endswith((".gz", ".tgz")) else "w|"
    mtime = int(reactor.seconds())

    def open_tar() -> tuple[Any, Any]:
        fh = open(temp, "wb")
        tar = tarfile.open(fileobj=fh, mode=mode, format=tarfile.PAX_FORMAT)
        tar.addfile(_tarinfo(MANIFEST, len(manifest), mtime), _Hashing(_bytes_reader(manifest)))
        return fh, tar

    items: list[Item] = []
    fh, tar = await deferToThreadPool(reactor, threadpool, open_tar)
    try:
        written: set[str] = set()
        for record in records:
            for f in record.files:
                for filename, sha in _parts(f):
                    if sha in written:
                        continue
                    written.add(sha)

                    def add(read: Callable[[int], bytes], sha: str = sha) -> bool:
                        source = _Hashing(read)
                        tar.addfile(_tarinfo(BLOBS + sha, sizes[sha], mtime), source)
                        return source.sha.hexdigest() == sha
                    try:
                        good = await read_blob_in_thread(storage, sha, reactor, threadpool, add)
                    except (OSError, tarfile.TarError) as e:
                        raise BundleError(f"{record.name}/{filename}: {e}") from None
                    if not good:
                        raise BundleError(f"{record.name}/{filename}: the stored blob does not hash to {sha}: "
                                          "run `pypicache verify --repair`")
                item = Item(record.name, f.filename, "exported", f.size)
                items.append(item)
                on_item(item)

        def finish() -> None:
            tar.close()
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(temp, out)

        await deferToThreadPool(reactor, threadpool, finish)
    except BaseException:
        def discard() -> None:
            fh.close()
            temp.unlink(missing_ok=True)

        await deferToThreadPool(reactor, threadpool, discard)
        raise
    return items


def _bytes_reader(data: bytes) -> Callable[[int], bytes]:
    position = [0]

    def read(n: int) -> bytes:
        chunk = data[position[0]:position[0] + n]
        position[0] += len(chunk)
        return chunk

    return read


# --------------------------------------------------------------------- import


def _stage(path: Path, staging: Path, on_manifest: Callable[[Manifest], None],
           on_blob: Callable[[str, int], None]) -> Manifest:
    """Read the bundle once (blocking: a thread): the manifest first, then
    every blob copied under its digest into ``staging`` while hashed.

    Every member is checked on its header before its data is read: its name
    must be one the manifest gives, its type a regular file, its size the
    manifest's.  Raises BundleError; ``staging`` is the caller's to remove.
    """
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isreg():
                raise BundleError(f"not a pypicache bundle: the first member is not {MANIFEST}")
            if first.size > MAX_MANIFEST_BYTES:
                raise BundleError(f"the manifest is {first.size} bytes: too large")
            data = tar.extractfile(first).read()  # type: ignore[union-attr]
            manifest = parse_manifest(data)
            on_manifest(manifest)
            need = sum(manifest.blobs.values())
            free = shutil.disk_usage(staging).free
            if need > free:
                raise BundleError(f"the bundle needs {need} bytes; {staging} has {free} free")
            seen: set[str] = set()
            while (member := tar.next()) is not None:  # not ``for``: it starts again at the manifest
                name = member.name
                sha = name[len(BLOBS):] if name.startswith(BLOBS) else None
                if sha is None or sha not in manifest.blobs:
                    raise BundleError(f"unexpected member {name!r} in the bundle")
                if sha in seen:
                    raise BundleError(f"member {name!r} appears twice in the bundle")
                if not member.isreg():
                    raise BundleError(f"member {name!r} is not a regular file")
                if member.size != manifest.blobs[sha]:
                    raise BundleError(f"member {name!r} is {member.size} bytes; the manifest says "
                                      f"{manifest.blobs[sha]}")
                seen.add(sha)
                source = tar.extractfile(member)
                digest = hashlib.sha256()
                with open(staging / sha, "xb") as target:  # the name is a checked digest
                    while chunk := source.read(_CHUNK):  # type: ignore[union-attr]
                        digest.update(chunk)
                        target.write(chunk)
                if digest.hexdigest() != sha:
                    raise BundleError(f"member {name!r} does not hash to its name: the bundle was changed")
                on_blob(sha, member.size)
            missing = set(manifest.blobs) - seen
            if missing:
                raise BundleError(f"the bundle lacks {len(missing)} blob(s) its manifest lists, e.g. "
                                  f"{BLOBS}{sorted(missing)[0]}")
            return manifest
    except BundleError:
        raise
    except FileNotFoundError:
        raise BundleError(f"no such file: {path}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:  # zlib.error is an Exception too
        raise BundleError(f"not a readable bundle: {e}") from None
    except Exception as e:
        raise BundleError(f"not a readable bundle: {type(e).__name__}: {e}") from None


async def _check_rules(index: Any, manifest: Manifest, claim: Any, merge: frozenset[str]
                       ) -> dict[str, ProjectRecord | None]:
    """The index's current records; BundleError when the bundle would break
    a dependency-confusion rule or bring other bytes under a known filename."""
    current: dict[str, ProjectRecord | None] = {}
    for p in manifest.projects:
        here = current[p.name] = await index.get_project(p.name)
        if p.origin == LOCAL:
            if here is not None and here.origin != LOCAL and here.files and p.name not in claim:
                raise BundleError(f"{p.name} is private in the bundle but an upstream project here: importing it "
                                  "would shadow the upstream's; claim it first ([uploads] claim)")
        elif here is not None and here.origin == LOCAL and p.name not in merge:
            raise BundleError(f"{p.name} comes from the upstream in the bundle but is private here: its files "
                              "would be mixed into the private name; list it in [uploads] merge to allow it")
        for f in p.files:
            held = here.file(f.filename) if here is not None else None
            if held is not None and held.sha256 is not None and held.sha256 != f.sha256:
                raise BundleError(f"{p.name}/{f.filename}: this server lists other bytes under that filename")
            if f.origin == LOCAL:
                used = await index.used_filename(f.filename)
                if used is not None and used != f.sha256:
                    raise BundleError(f"{p.name}/{f.filename}: the filename was used here for other bytes")
    return current


async def import_bundle(path: Path, storage: Any, index: Any, *, reactor: Any, threadpool: Any, staging: Path,
                        claim: Any = frozenset(), merge: frozenset[str] = frozenset(),
                        on_item: Callable[[Item], None] = lambda item: None,
                        on_manifest: Callable[[Manifest], None] = lambda manifest: None,
                        on_blob: Callable[[str, int], None] = lambda sha, size: None) -> list[Item]:
    """Verify the whole bundle, then store its blobs and write its index entries.

    ``staging`` must not exist; it is made (on the storage's file system,
    ideally, so ingesting is a rename) and removed.  Upstream projects become
    cached files of upstream origin (their page refreshed when the upstream
    is next asked); private ones stay private.  Raises BundleError, having
    changed nothing, for anything wrong with the bundle or against the rules.
    ``on_manifest(manifest)`` and ``on_blob(sha256, size)`` (each blob
    verified) are called on the reactor while the bundle is read; then
    ``on_item`` for each file written.
    """
    staging.mkdir(0o700)
    try:
        manifest = await deferToThreadPool(reactor, threadpool, _stage, Path(path), staging,
                                           lambda m: reactor.callFromThread(on_manifest, m),
                                           lambda sha, n: reactor.callFromThread(on_blob, sha, n))
        current = await _check_rules(index, manifest, claim, merge)
        for sha in manifest.blobs:
            if await storage.exists(sha):
                continue
            await storage.ingest(str(staging / sha), sha)
        items = []
        for p in manifest.projects:
            for item in await _write(index, p, current[p.name], merge):
                items.append(item)
                on_item(item)
        return items
    finally:
        await deferToThreadPool(reactor, threadpool, shutil.rmtree, staging, True)


async def _write(index: Any, p: ProjectRecord, here: ProjectRecord | None, merge: frozenset[str]) -> list[Item]:
    items = []
    held = {f.filename for f in here.files if f.stored} if here is not None else set()
    if p.origin == LOCAL:
        if not p.files:
            await index.create_project(p.name, LOCAL)
        for f in p.files:
            if f.filename in held:
                items.append(Item(p.name, f.filename, "held", f.size))
                continue
            await index.add_file(p.name, attrs.evolve(f, url="", listed=True))
            items.append(Item(p.name, f.filename, "imported", f.size))
        return items
    names = {f.filename for f in p.files}
    keep = [] if here is None else [f for f in here.files if f.origin == UPSTREAM and f.listed
                                    and f.filename not in names]
    fresh = [attrs.evolve(f, stored=False, metadata_stored=False) for f in p.files]
    # No validators: the next refresh is a full fetch that corrects the listing.
    page = ProjectPage(name=p.name, files=tuple(keep + fresh), validators=Validators())
    refreshed_at = (here.refreshed_at if here is not None else None) or 0.0
    await index.save_upstream_page(page, refreshed_at, p.name in merge)
    for f in p.files:
        if f.filename in held:
            items.append(Item(p.name, f.filename, "held", f.size))
            continue
        await index.mark_stored(p.name, f.filename, BlobInfo(f.sha256, f.size))  # type: ignore[arg-type]
        if f.metadata_stored and f.metadata_sha256 is not None:
            await index.mark_metadata_stored(p.name, f.filename, f.metadata_sha256)
        if f.provenance_sha256 is not None and IIndexProvenance.providedBy(index):
            await index.mark_provenance_stored(p.name, f.filename, f.provenance_sha256)
        items.append(Item(p.name, f.filename, "imported", f.size))
    return items
