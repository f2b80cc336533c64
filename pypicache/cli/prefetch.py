"""``pypicache prefetch FILE...``: pre-fill the cache from requirements or
lock files, in process, against the configured providers (no daemon needed).

It opens the same index and storage as the server, as the other admin
commands do (SQLite in WAL mode: safe while the server runs), and fetches
through its own downloader, spooling in a private directory under the data
directory: the server's start-up clean-up of its spool must not meet ours,
nor ours its.  A running server sees the new files when it next reads the
project from the index (a project it never served: at once; one it holds
in memory: at its next page refresh, ``page_ttl``).

On a terminal a progress bar (files and bytes) is drawn on stderr; otherwise
one plain line per file goes to stdout.  Either way a summary follows, and
the exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from pypicache.services.lockfiles import FORMATS, Inputs, parse_any

__all__ = ["COMMANDS", "add_parser", "run", "read_inputs", "prepare", "prefetch_command", "Progress"]

COMMANDS = ("prefetch",)


def add_parser(commands: Any) -> None:
    p = commands.add_parser("prefetch", help="fetch everything requirements or lock files need",
                            description="Resolve requirements files (ranges, extras, markers, --hash, -r/-c) "
                                        "and fetch the chosen files; pylock.toml, uv.lock and poetry.lock "
                                        "name their files exactly.  Exit 1 when anything failed.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--python", action="append", default=[], metavar="X.Y",
                   help="a target Python version (repeatable; default: [prefetch] python, else the server's)")
    p.add_argument("--platform", action="append", default=[], metavar="TAG",
                   help="a target platform tag such as manylinux_2_28_x86_64 (repeatable)")
    p.add_argument("--format", choices=FORMATS, default=None, help="the files' format (default: detected)")


def run(cfg: Any, args: Any) -> int:
    """``pypicache prefetch``: the inputs and environments are checked before
    the reactor runs (a bad one is a usage error, exit 2)."""
    from pypicache.cli.common import CommandError, run_reactor
    from pypicache.services.environments import InvalidEnvironment

    try:
        prepare(cfg, args)
    except InvalidEnvironment as e:
        raise CommandError(str(e), code=2) from None
    return run_reactor(cfg, args, prefetch_command)


def read_inputs(paths: list[str], fmt: str | None = None) -> Inputs:
    """Parse every file; ``-r``/``-c`` are read relative to the including file."""

    def read(name: str, including: str) -> tuple[str, str]:
        path = os.path.normpath(Path(including).parent / name)
        return path, Path(path).read_text(encoding="utf-8")

    inputs = Inputs()
    for name in paths:
        path = Path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}") from None
        inputs = inputs + parse_any(text, label=os.path.normpath(name), fmt=fmt, read=read)
    return inputs


def prepare(cfg: Any, args: argparse.Namespace) -> None:
    """Read the files and check the environments before the reactor runs:
    ValueError (exit 1) for a file, InvalidEnvironment (a usage error)."""
    from pypicache.services.environments import environments

    args.environments = environments(args.python or cfg.prefetch.python, args.platform or cfg.prefetch.platforms)
    args.inputs = read_inputs(args.files, args.format)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class Progress:
    """A tqdm bar (bytes, with files done) on a terminal; plain lines otherwise."""

    def __init__(self, out: TextIO, err: TextIO, bar: bool) -> None:
        self.out, self.err, self.bar = out, err, None
        self.use_bar = bar
        self.files = 0
        self.done = 0

    def plan(self, planned: list[tuple[str, Any]]) -> None:
        self.files = len(planned)
        if self.use_bar:
            from tqdm import tqdm

            total = sum(record.size or 0 for _, record in planned)
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=self.err,
                            desc=f"0/{self.files} files", dynamic_ncols=True)

    def file(self, result: Any) -> None:
        name = f"{result.project or '-'} {result.filename or ''}".rstrip()
        line = f"{result.status:8} {name}"
        if result.status != "failed" and result.size is not None:
            line += f" ({_size(result.size)})"
        if result.reason:
            line += f": {result.reason}"
        if self.bar is None:
            self.out.write(line + "\n")
            self.out.flush()
            return
        if result.filename is not None:
            self.done += 1
            self.bar.set_description(f"{self.done}/{self.files} files")
            self.bar.update(result.size or 0)
        if result.status == "failed":
            self.bar.write(line, file=self.err)

    def close(self, report: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        s = report.summary()
        self.out.write(f"{s['fetched']} fetched ({_size(s['bytes_fetched'])}), {s['held']} already held, "
                       f"{s['failed']} failed, for {', '.join(s['environments'])} in {s['seconds']:.1f} s\n")


async def prefetch_command(cfg: Any, args: argparse.Namespace, index: Any, context: Any, *,
                           out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a pre-fill against ``index`` and the configured storage and upstream."""
    from pypicache import providers
    from pypicache.cli.common import open_storage as _open_storage
    from pypicache.providers.upstream.breaker import with_breaker
    from pypicache.services.downloads import Downloader
    from pypicache.services.mirror import Mirror
    from pypicache.services.prefetch import Prefetcher

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if getattr(args, "inputs", None) is None:
        prepare(cfg, args)
    inputs, envs = args.inputs, args.environments
    reactor = context.reactor
    storage = _open_storage(cfg, context)
    upstream = providers.create("upstream", cfg.upstream.name, cfg.upstream.options, context)
    upstream = with_breaker(upstream, reactor, cfg.http.breaker_threshold, cfg.http.breaker_cooldown)
    spool = Path(tempfile.mkdtemp(prefix=".prefetch-", dir=cfg.data_dir))
    try:
        mirror = Mirror(index=index, upstream=upstream, clock=reactor, page_ttl=cfg.page_ttl,
                        root_ttl=cfg.root_ttl, offline=cfg.offline, merge=cfg.uploads.merge,
                        not_found_ttl=cfg.not_found_ttl, memory_bytes=cfg.page_cache_bytes)
        from pypicache.services.blocklist import compile_rules, load_runtime

        mirror.blocklist.update(compile_rules(cfg.policy, load_runtime(cfg.data_dir)))  # as the server's
        # The mirror's catalogue is the one writer: pages follow what is stored.
        downloader = Downloader(storage=storage, index=mirror.index, upstream=upstream, spool_dir=spool)
        progress = Progress(out, err, bar=err.isatty())
        prefetcher = Prefetcher(mirror=mirror, downloader=downloader, storage=storage, reactor=reactor,
                                policy=lambda: cfg.policy)
        report = await prefetcher.run(inputs, envs, on_plan=progress.plan, on_file=progress.file)
        await downloader.settle(reactor, 30.0)
        progress.close(report)
    finally:
        from twisted.internet import defer

        from pypicache.interfaces import IClosable

        for provider in (upstream, storage):  # as the daemon's App.close does
            if IClosable.providedBy(provider):
                await defer.maybeDeferred(provider.close)
        shutil.rmtree(spool, ignore_errors=True)
    if not report.ok:
        err.write("pypicache: some files could not be pre-filled (see above)\n")
        return 1
    return 0
