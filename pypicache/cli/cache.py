"""``pypicache pin``, ``unpin``, ``pins`` and ``gc``: the size limit by hand.

* ``pin FILE...`` keeps the files a requirements or lock file names (the
  formats ``pypicache prefetch`` reads) from eviction, under a pin name (the
  file's path unless ``--name``).  Lock files name their files exactly; a
  requirement keeps every file of the versions it allows that the index
  knows (its dependencies are pinned by pinning a lock or a compiled
  requirements file, which lists them).
* ``unpin NAME`` drops a pin; ``pins`` lists them.
* ``gc [--dry-run] [--to SIZE]`` evicts least recently used cached files
  until they take at most ``SIZE`` (default: ``[cache] max_size`` times
  ``low_water``); private uploads neither count nor go.

All of them work while the server runs (the bookkeeping file and the index
are SQLite in WAL mode).  ``gc`` deletes a blob before writing anything, so
it frees space on a disk that is already full; without a bookkeeping file
(no server ran with a limit) it plans in memory from the index, the blobs'
last use (else ``first_seen``) giving the order; a running server that still
thinks a removed file is stored finds the blob missing on the next request
and fetches the file again.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

__all__ = ["COMMANDS", "add_parser", "run", "pin_command", "gc_command"]

COMMANDS = ("pin", "unpin", "pins", "gc")


def add_parser(commands: Any) -> None:
    from pypicache.services.lockfiles import FORMATS

    p = commands.add_parser("pin", help="keep the files a requirements or lock file names from eviction",
                            description="Record the files FILE names (requirements, pylock.toml, uv.lock, "
                                        "poetry.lock) so the size limit never evicts them.  Exit 1 when "
                                        "something could not be pinned.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--name", default=None, help="the pin's name (default: each file's path; one FILE only)")
    p.add_argument("--format", choices=FORMATS, default=None, help="the files' format (default: detected)")
    p = commands.add_parser("unpin", help="drop a pin (see: pypicache pins)")
    p.add_argument("name")
    commands.add_parser("pins", help="list pins and how many files each keeps")
    p = commands.add_parser("gc", help="evict least recently used cached files now",
                            description="Evict cached upstream files, least recently used first, until "
                                        "cached files take at most the target.  Private uploads neither count nor go; nor pinned "
                                        "files or METADATA another file needs.  Safe while the server runs.")
    p.add_argument("--dry-run", "-n", action="store_true", help="only list what would be removed")
    p.add_argument("--to", default=None, metavar="SIZE",
                   help="the target size (\"20 GiB\"; default: [cache] max_size times low_water)")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"pypicache: error: {message}\n")
    return code


def _book(cfg: Any) -> Any:
    from pypicache.services.cachebook import BOOK_FILE, Book

    return Book(cfg.data_dir / BOOK_FILE)


def run(cfg: Any, args: argparse.Namespace) -> int:
    from pypicache.cli.common import run_reactor

    if args.group == "unpin":
        if not (cfg.data_dir / "cache.sqlite3").exists():
            return _fail(f"no pin named {args.name!r}", 1)
        book = _book(cfg)
        try:
            removed = book.unpin(args.name)
        finally:
            book.close()
        if not removed:
            return _fail(f"no pin named {args.name!r} (see: pypicache pins)", 1)
        sys.stdout.write(f"unpinned {args.name} ({removed} file(s))\n")
        return 0
    if args.group == "pins":
        if not (cfg.data_dir / "cache.sqlite3").exists():
            return 0
        book = _book(cfg)
        try:
            for name, count in book.pins():
                sys.stdout.write(f"{name}\t{count} file(s)\n")
        finally:
            book.close()
        return 0
    if args.group == "pin":
        from pypicache.cli.prefetch import read_inputs

        if args.name is not None and len(args.files) > 1:
            return _fail("pin: --name needs exactly one FILE", 2)
        args.pin_inputs = [(args.name or os.path.normpath(path), read_inputs([path], args.format))
                           for path in args.files]  # ValueError: a one-line error, exit 1
        return run_reactor(cfg, args, pin_command)
    # gc
    from pypicache.daemon.config import parse_size

    if args.to is not None:
        args.target = parse_size("gc --to", args.to)  # ConfigError: exit 2
    elif cfg.cache.max_size is not None:
        args.target = int(cfg.cache.max_size * cfg.cache.low_water)
    else:
        return _fail("gc: [cache] max_size is not set; give the target with --to SIZE", 2)
    return run_reactor(cfg, args, gc_command)


async def _files_for(index: Any, inputs: Any) -> tuple[set[tuple[str, str, str | None]], list[str]]:
    """(project, filename, sha256) for everything ``inputs`` names; problems."""
    from pypicache.services.resolver import matches_hashes, version_of

    entries: set[tuple[str, str, str | None]] = set()
    problems = [f"{p.where}: {p.reason}" for p in inputs.problems]
    for wanted in inputs.wanted:
        record = await index.get_project(wanted.name)
        chosen = []
        for f in record.files if record is not None else ():
            version = version_of(f.filename)
            if (version is not None and wanted.requirement.specifier.contains(version, prereleases=True)
                    and matches_hashes(f, wanted.hashes)):
                chosen.append(f)
        if not chosen:
            problems.append(f"{wanted.where}: no file of {wanted.requirement} is known here "
                            f"(fetch it first: pypicache prefetch)")
        entries |= {(wanted.name, f.filename, f.sha256) for f in chosen}
    for locked in inputs.locked:
        record = await index.get_project(locked.project)
        known = record.file(locked.filename) if record is not None else None
        sha = known.sha256 if known is not None else dict(locked.hashes).get("sha256")
        entries.add((locked.project, locked.filename, sha))
    return entries, problems


async def pin_command(cfg: Any, args: argparse.Namespace, index: Any, context: Any, *,
                      out: TextIO | None = None) -> int:
    from twisted.internet.threads import deferToThreadPool

    out = out if out is not None else sys.stdout
    book = await deferToThreadPool(context.reactor, context.threadpool, _book, cfg)
    failed = False
    try:
        for name, inputs in args.pin_inputs:
            entries, problems = await _files_for(index, inputs)
            for problem in problems:
                sys.stderr.write(f"pypicache: not pinned: {problem}\n")
            failed = failed or bool(problems)
            if entries:
                count = await deferToThreadPool(context.reactor, context.threadpool, book.pin, name, entries)
                out.write(f"pinned {count} file(s) as {name}\n")
    finally:
        book.close()
    return 1 if failed else 0


async def gc_command(cfg: Any, args: argparse.Namespace, index: Any, context: Any, *,
                     out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Evict down to ``args.target`` bytes; blobs first, records after."""
    from twisted.internet.threads import deferToThreadPool

    from pypicache.cli.common import CommandError, open_storage as _open_storage
    from pypicache.cli.prefetch import _size
    from pypicache.interfaces import IBlobInventory, IIndexRepair
    from pypicache.services.cachebook import BOOK_FILE, Book
    from pypicache.services.eviction import Evictor, count_cached, seed_from_index

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    reactor, threadpool = context.reactor, context.threadpool

    def in_thread(f: Any, *a: Any) -> Any:
        return deferToThreadPool(reactor, threadpool, f, *a)

    storage = _open_storage(cfg, context)
    if not IBlobInventory.providedBy(storage):
        raise CommandError(f"gc: the storage provider {cfg.storage.name!r} cannot list its blobs")
    if not IIndexRepair.providedBy(index):
        raise CommandError(f"gc: the index provider {cfg.index.name!r} cannot mark files unstored")
    # No bookkeeping file yet (no server ran with a limit): plan in memory
    # from the index, so nothing is written before the first delete.
    on_disk = (cfg.data_dir / BOOK_FILE).exists()
    try:
        book = await in_thread(_book, cfg) if on_disk else Book.in_memory()
    except Exception as e:
        raise CommandError(f"gc: cannot open the bookkeeping file {cfg.data_dir / BOOK_FILE}: {e}") from None
    try:
        try:  # files stored by another process: writes only rows the book lacks
            await seed_from_index(index, book, in_thread, storage=storage)
        except Exception as e:
            err.write(f"pypicache: warning: files stored since the server last counted are not candidates "
                      f"(cannot record them: {e})\n")
        used = await in_thread(count_cached, storage, book)
        need = used - args.target
        if need <= 0:
            out.write(f"nothing to do: cached files take {_size(used)}, target {_size(args.target)}\n")
            return 0
        bar = None
        if err.isatty() and not args.dry_run:
            from tqdm import tqdm

            bar = tqdm(total=need, unit="B", unit_scale=True, unit_divisor=1024, file=err, desc="evicting")

        def one(evicted: Any) -> None:
            line = f"{'would remove' if args.dry_run else 'removed'} {evicted.project} {evicted.filename} " \
                   f"({_size(evicted.size)})"
            if bar is not None:
                bar.update(evicted.size)
            else:
                out.write(line + "\n")
                out.flush()

        evictor = Evictor(book=book, index=index, storage=storage, in_thread=in_thread, clock=reactor)
        report = await evictor.evict(need, dry_run=args.dry_run, delete_first=True, on_file=one)
        if bar is not None:
            bar.close()
        if not args.dry_run and report.freed and on_disk:
            try:  # tell a running server what it no longer holds
                await in_thread(book.add_freed, report.freed)
            except Exception as e:
                err.write(f"pypicache: warning: a running server will count the freed bytes only "
                          f"after a restart: {e}\n")
        after = used - report.freed
        out.write(f"{report.summary()} ({_size(report.freed)}); cached files "
                  f"{'would take' if args.dry_run else 'take'} {_size(after)}, target {_size(args.target)}\n")
        if report.unrecorded:
            err.write(f"pypicache: warning: {report.unrecorded} removed file(s) still marked stored in the "
                      f"index (no room to record it); they are fetched again when asked for\n")
        if after > args.target:
            err.write("pypicache: the target was not reached: the rest is pinned, private or METADATA\n")
        return 0
    finally:
        await in_thread(book.close)
        from twisted.internet import defer

        from pypicache.interfaces import IClosable

        if IClosable.providedBy(storage):
            await defer.maybeDeferred(storage.close)
