"""``pypicache export`` and ``pypicache import``: offline bundles and static trees.

``export OUT`` writes what is held (or what ``--requirements`` files need,
resolved over the server's own standalone view) to one archive
(:mod:`pypicache.services.bundles`); ``export --static DIR`` writes a tree
any web server serves to pip and uv (:mod:`pypicache.web.static`);
``import BUNDLE`` verifies a bundle whole, then loads it.  All work on the
data directory like the other admin commands (SQLite in WAL mode), so they
may run while the server does: see docs/operations.md, "Offline bundles".

On a terminal a progress bar (files and bytes) is drawn on stderr;
otherwise one plain line per file goes to stdout.  A summary follows; the
exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pypicache.services.lockfiles import FORMATS

__all__ = ["COMMANDS", "add_parser", "run", "export_command", "import_command", "Progress"]

COMMANDS = ("export", "import")


def add_parser(commands: Any) -> None:
    p = commands.add_parser("export", help="write held files to a bundle (or a static tree) for another server",
                            description="Write what this server holds -- everything, the --project ones, or "
                                        "what --requirements files need -- to one tar archive (gzipped "
                                        "when OUT ends in .gz or .tgz) for `pypicache import`, or with "
                                        "--static to a PEP 503/691 tree any web server can serve.")
    p.add_argument("out", nargs="?", metavar="OUT", help="the bundle to write")
    p.add_argument("--static", metavar="DIR", help="write a static Simple API tree to DIR instead")
    p.add_argument("--requirements", "-r", action="append", default=[], metavar="FILE",
                   help="a requirements or lock file whose set to export (repeatable)")
    p.add_argument("--project", "-p", action="append", default=[], metavar="NAME",
                   help="export only this project (repeatable; without --requirements)")
    p.add_argument("--python", action="append", default=[], metavar="X.Y",
                   help="a target Python version for --requirements (repeatable)")
    p.add_argument("--platform", action="append", default=[], metavar="TAG",
                   help="a target platform tag for --requirements (repeatable)")
    p.add_argument("--format", choices=FORMATS, default=None, help="the files' format (default: detected)")
    p = commands.add_parser("import", help="verify a bundle, then load it into this server",
                            description="Check every blob of a bundle against its manifest and the "
                                        "index's rules, then store them and write the index entries.  "
                                        "A bundle that fails any check changes nothing.")
    p.add_argument("bundle", metavar="BUNDLE")


def run(cfg: Any, args: argparse.Namespace) -> int:
    from pypicache.cli import common

    if args.group == "export":
        if (args.out is None) == (args.static is None):
            sys.stderr.write("pypicache: error: export needs OUT or --static DIR (one of them)\n")
            return 2
        if args.requirements and args.project:
            sys.stderr.write("pypicache: error: --project filters a full export; not with --requirements\n")
            return 2
        if args.requirements:
            from pypicache.cli.prefetch import read_inputs
            from pypicache.services.environments import InvalidEnvironment, environments

            try:
                args.environments = environments(args.python or cfg.prefetch.python,
                                                 args.platform or cfg.prefetch.platforms)
            except InvalidEnvironment as e:
                sys.stderr.write(f"pypicache: error: {e}\n")
                return 2
            args.inputs = read_inputs(args.requirements, args.format)  # ValueError: exit 1
        return common.run_reactor(cfg, args, export_command)
    if not Path(args.bundle).is_file():
        raise common.CommandError(f"no such file: {args.bundle}")
    return common.run_reactor(cfg, args, import_command)


def _size(n: int) -> str:
    from pypicache.cli.prefetch import _size as size

    return size(n)


class Progress:
    """A tqdm bar (bytes, with files done) on a terminal; plain lines otherwise."""

    def __init__(self, out: TextIO, err: TextIO, bar: bool) -> None:
        self.out, self.err, self.use_bar, self.bar = out, err, bar, None
        self.files = self.done = self.bytes = 0
        self.counts: dict[str, int] = {}

    def plan(self, files: int, total: int) -> None:
        self.files = files
        if self.use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=self.err,
                            desc=f"0/{files} files", dynamic_ncols=True)

    def verified(self, sha256: str, size: int) -> None:
        """A blob of the bundle read and checked (import: the bar's bytes)."""
        if self.bar is not None:
            self.bar.update(size)

    def item(self, item: Any, *, advance: bool = True) -> None:
        self.counts[item.status] = self.counts.get(item.status, 0) + 1
        self.bytes += item.size or 0
        line = f"{item.status:8} {item.project} {item.filename}"
        if item.size is not None:
            line += f" ({_size(item.size)})"
        if self.bar is None:
            self.out.write(line + "\n")
            self.out.flush()
            return
        self.done += 1
        self.bar.set_description(f"{self.done}/{self.files} files")
        if advance:
            self.bar.update(item.size or 0)

    def close(self, what: str, seconds: float) -> None:
        if self.bar is not None:
            self.bar.close()
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items())) or "0 files"
        self.out.write(f"{counts} ({_size(self.bytes)}) {what} in {seconds:.1f} s\n")


def _progress(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO, Progress]:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    return out, err, Progress(out, err, bar=err.isatty())


async def export_command(cfg: Any, args: argparse.Namespace, index: Any, context: Any, *,
                         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Select (everything, ``--project`` or ``--requirements``), then write
    the bundle or the static tree."""
    from pypicache.cli.common import CommandError, open_storage as _open_storage
    from pypicache.services import bundles

    out, err, progress = _progress(out, err)
    reactor, started = context.reactor, time.monotonic()
    storage = _open_storage(cfg, context)
    try:
        if getattr(args, "inputs", None) is not None:
            records = await bundles.select_for(index, storage, args.inputs, args.environments, reactor=reactor,
                                               merge=cfg.uploads.merge)
        else:
            records = await bundles.select_all(index, projects=args.project, merge=cfg.uploads.merge)
        if not records:
            raise CommandError("nothing to export: this server holds no such files")
        progress.plan(sum(len(r.files) for r in records), sum(f.size or 0 for r in records for f in r.files))
        if args.static is not None:
            from pypicache.web.static import write_static

            await write_static(records, storage, Path(args.static), reactor=reactor,
                               threadpool=context.threadpool, on_item=progress.item)
            target = args.static
        else:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reactor.seconds()))
            await bundles.export_bundle(records, storage, Path(args.out), reactor=reactor,
                                        threadpool=context.threadpool, created=created, on_item=progress.item)
            target = args.out
    except bundles.BundleError as e:
        raise CommandError(str(e)) from None
    finally:
        await _close(storage)
    progress.close(f"of {len(records)} project(s) to {target}", time.monotonic() - started)
    return 0


async def import_command(cfg: Any, args: argparse.Namespace, index: Any, context: Any, *,
                         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Verify the bundle whole, then load it; nothing changes when it is refused."""
    import secrets

    from pypicache.cli.common import CommandError, open_storage as _open_storage
    from pypicache.services import bundles

    out, err, progress = _progress(out, err)
    started = time.monotonic()
    storage = _open_storage(cfg, context)
    staging = Path(cfg.data_dir) / f".import-{secrets.token_hex(4)}"
    try:
        # The bar counts bytes verified while the bundle is read, then files written.
        items = await bundles.import_bundle(
            Path(args.bundle), storage, index, reactor=context.reactor, threadpool=context.threadpool,
            staging=staging, claim=cfg.uploads.claim, merge=cfg.uploads.merge,
            on_manifest=lambda m: progress.plan(sum(len(p.files) for p in m.projects), sum(m.blobs.values())),
            on_blob=progress.verified, on_item=lambda item: progress.item(item, advance=False))
    except bundles.BundleError as e:
        raise CommandError(f"{args.bundle} refused, nothing imported: {e}") from None
    finally:
        await _close(storage)
    progress.close(f"from {args.bundle}", time.monotonic() - started)
    return 0 if all(i.status != "failed" for i in items) else 1


async def _close(provider: Any) -> None:
    from twisted.internet import defer

    from pypicache.interfaces import IClosable

    if IClosable.providedBy(provider):
        await defer.maybeDeferred(provider.close)
