"""The Simple API as plain files: ``pypicache export --static DIR``.

Any web server (nginx, ``python -m http.server``) then serves pip and uv
from DIR with no pypicache running: the same pages the routes render
(:mod:`pypicache.web.render`, so PEP 503 HTML with ``#sha256=`` fragments,
``data-requires-python``, ``data-yanked`` and PEP 658/714 core-metadata
attributes, and PEP 691 JSON), laid out as the server's URLs are::

    simple/index.html, simple/index.json
    simple/<name>/index.html, simple/<name>/index.json
    files/<name>/<filename>, files/<name>/<filename>.metadata

File links are relative (``../../files/<name>/<filename>``), so the tree
works under any URL prefix.  It is written to a temporary directory beside
DIR and renamed into place: a web server serving DIR never sees half a tree.
It lives in ``web/`` because it renders pages; the bytes come from storage,
each hashed as copied.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from pypicache.model import ProjectRecord
from pypicache.services.bundles import BundleError, Item, read_blob_in_thread, safe_filename
from pypicache.web.negotiation import HTML, JSON
from pypicache.web.render import render_index, render_project

__all__ = ["write_static", "MARKER"]

#: Left in every tree written, so a second export may replace the first
#: (and never a directory that is not one of ours).
MARKER = ".pypicache-static"
_CHUNK = 256 * 1024


def _copy(read: Callable[[int], bytes], target: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(target, "xb") as out:
        while chunk := read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def write_static(records: Sequence[ProjectRecord], storage: Any, dest: Path, *, reactor: Any,
                       threadpool: Any, on_item: Callable[[Item], None] = lambda item: None) -> list[Item]:
    """Write the tree of ``records`` to ``dest``; BundleError when ``dest``
    exists and is not a tree written before, or a blob is lost or corrupt."""
    from twisted.internet.threads import deferToThreadPool

    dest = Path(dest).absolute()
    if dest.exists() and not (dest / MARKER).is_file() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} exists and is not a tree `export --static` wrote: choose a new directory")
    temp = dest.with_name(f".{dest.name}.tmp-{secrets.token_hex(4)}")

    def run(work: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(reactor, threadpool, work, *args)

    await run(lambda: temp.mkdir(parents=True))
    items: list[Item] = []
    try:
        for record in records:
            name = record.name  # normalised: a path component
            folder = temp / "files" / name
            await run(lambda: folder.mkdir(parents=True, exist_ok=True))
            for f in record.files:
                if not safe_filename(f.filename):
                    raise BundleError(f"{name}: unsafe filename {f.filename!r}")
                parts = [(f.filename, f.sha256)]
                if f.metadata_stored and f.metadata_sha256 is not None:
                    parts.append((f.filename + ".metadata", f.metadata_sha256))
                if f.provenance_sha256 is not None:
                    parts.append((f.filename + ".provenance", f.provenance_sha256))
                for filename, sha in parts:
                    got = await read_blob_in_thread(storage, sha, reactor, threadpool,
                                                    lambda read, t=folder / filename: _copy(read, t))
                    if got != sha:
                        raise BundleError(f"{name}/{filename}: the stored blob does not hash to {sha}: "
                                          "run `pypicache verify --repair`")
                item = Item(name, f.filename, "exported", f.size)
                items.append(item)
                on_item(item)
            # Metadata only advertised where it is written beside the file:
            # pip and uv fail on an advertised .metadata that answers 404.
            # The same for a PEP 740 provenance: only one written here is linked.
            shown = [_without_unstored(f) for f in record.files]
            base = f"../../files/{name}/"
            for fmt, page in ((HTML, "index.html"), (JSON, "index.json")):
                await run(_write, temp / "simple" / name / page, render_project(fmt, name, shown, base))
        names = [r.name for r in records]
        await run(_write, temp / "simple" / "index.html", render_index(HTML, names))
        await run(_write, temp / "simple" / "index.json", render_index(JSON, names))
        await run(_write, temp / MARKER, b"written by pypicache export --static\n")
        await run(_swap, temp, dest)
    except BaseException:
        await run(shutil.rmtree, temp, True)
        raise
    return items


def _without_unstored(f: Any) -> Any:
    """``f`` without the METADATA and provenance links it has no blob for."""
    import attrs

    changes: dict[str, Any] = {}
    if not f.metadata_stored and f.core_metadata is not None:
        changes["core_metadata"] = None
    if f.provenance_sha256 is None and f.provenance is not None:
        changes["provenance"] = None
    return attrs.evolve(f, **changes) if changes else f


def _swap(temp: Path, dest: Path) -> None:
    """Put ``temp`` where ``dest`` is: two renames, the old tree removed after."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
        os.rename(dest, old)
    os.rename(temp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
