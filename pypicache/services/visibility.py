"""Which files of a project clients may see: the one rule every view follows.

A private name must never hand out upstream bytes (dependency confusion), so
the pages (``/simple/``, ``/local/simple/``), the PyPI JSON API and the file
routes all ask this module rather than each filtering ``record.files`` its
own way: one view forgetting a case is how upstream files leaked under
private names before.

The rule: an upstream file of a private project is hidden unless the name
is listed in ``[uploads] merge`` (a claimed name keeps the upstream files it
had cached, so that opting in to merging later finds them, but shows none).
Of the files left, the proxy view lists those the upstream lists (and every
upload), the standalone view those whose bytes are stored.  The release
cooldown (:mod:`pypicache.services.cooldown`) then holds back upstream files
too young to show; the views apply it right after this rule.
"""

from __future__ import annotations

from typing import Any

from pypicache.model import FileRecord, ProjectRecord

#: ``origin`` of uploaded files and of private projects (as in index.rules).
LOCAL = "local"


def visible(record: ProjectRecord, file: FileRecord, *, merged: bool) -> bool:
    """Whether ``file`` belongs to ``record`` as clients see it, in any view.

    ``merged``: the project's name is listed in ``[uploads] merge``.  The
    file routes serve exactly the visible files (an unlisted but stored
    upstream file of a proxied project stays downloadable for lock files
    that name it); a hidden file answers 404 like an unknown one.
    """
    return file.origin == LOCAL or record.origin != LOCAL or merged


def visible_files(record: ProjectRecord, *, local: bool, merged: bool, rules: Any = None) -> tuple[FileRecord, ...]:
    """The files a page lists: :func:`visible` ones that the view shows.

    ``local``: the standalone view, which lists only what storage holds;
    the proxy view lists uploads and the files the upstream still lists.
    ``rules``: the block and allow lists (pypicache.services.blocklist),
    whose refused files are left out so resolvers pick another version.
    """
    if local:
        files = tuple(f for f in record.files if f.stored and visible(record, f, merged=merged))
    else:
        files = tuple(f for f in record.files
                      if (f.listed or f.origin == LOCAL) and visible(record, f, merged=merged))
    return rules.visible(record.name, files) if rules is not None and rules.active else files
