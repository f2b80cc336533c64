"""The three pages, as pure functions of what they show (no I/O, no request).

Kept apart from the routes (pypicache.web.ui.routes) so they can be rendered
and timed alone: the list of 10,000 names and a project of 601 files must
render in a few milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from urllib.parse import quote, urlencode

import attrs

from pypicache.model import FileRecord
from pypicache.services.releases import Release
from pypicache.services.stats import Stats
from pypicache.services.usage import Usage
from pypicache.services.visibility import LOCAL
from pypicache.web.ui.charts import bars, split_bar
from pypicache.web.ui.layout import esc, human_size, page
from pypicache.web.ui.policy import NO_MARKS, Marks

__all__ = ["ListView", "ProjectView", "project_list", "project_page", "statistics_page", "not_found"]


@attrs.frozen
class ListView:
    """One page of the project list: ``names`` already filtered and cut."""

    names: Sequence[str]
    query: str
    page: int
    pages: int
    total: int
    #: The names shown that the policy blocks by name (marked in the list).
    blocked: frozenset[str] = frozenset()


@attrs.frozen
class ProjectView:
    """What the project page shows: releases newest first."""

    name: str
    releases: Sequence[Release]
    other_files: Sequence[FileRecord]
    private: bool
    summary: str | None
    refreshed_at: str | None
    #: What the supply-chain policy refuses (pypicache.web.ui.policy).
    marks: Marks = NO_MARKS


_BLOCKED_TAG = " <span class='tag blocked' title='blocked by policy'>blocked</span>"


def project_list(view: ListView) -> bytes:
    q = esc(view.query)
    form = (f'<form method=get><input type=search name=q value="{q}" '
            'placeholder="name or part of one" aria-label="search projects"> <button>Search</button></form>')
    if view.query:
        heading = f"{view.total} project{'s' if view.total != 1 else ''} matching “{q}”"
    else:
        heading = f"{view.total} project{'s' if view.total != 1 else ''}"
    blocked = view.blocked
    items = "".join(f'<li><a href="project/{quote(name, safe="")}/">{esc(name)}</a>'
                    f'{_BLOCKED_TAG if name in blocked else ""}</li>' for name in view.names)
    body = [f"<h1>Projects</h1>{form}<p class=muted>{heading}</p>"]
    empty = "<p>No project matches.</p>" if view.query else "<p>No projects yet: install through /simple/.</p>"
    body.append(f"<ul class=names>{items}</ul>" if items else empty)
    if view.pages > 1:
        def link(number: int, label: str, rel: str) -> str:
            params = {"q": view.query} if view.query else {}
            params["page"] = str(number)
            return f'<a rel={rel} href="?{esc(urlencode(params))}">{label}</a>'

        prev = link(view.page - 1, "← previous", "prev") if view.page > 1 else ""
        nxt = link(view.page + 1, "next →", "next") if view.page < view.pages else ""
        body.append(f"<div class=pager>{prev}<span>page {view.page} of {view.pages}</span>{nxt}</div>")
    return page("Projects", "".join(body), root="./", active="projects")


def _origin(record: FileRecord) -> str:
    if record.origin == LOCAL:
        return "<span class='tag private'>private</span>"
    if record.stored:
        return "<span class='tag cached'>cached</span>"
    return "<span class='tag upstream' title='listed upstream, not downloaded yet'>upstream</span>"


def _yanked(record: FileRecord) -> str:
    if not record.yanked:
        return ""
    reason = f": {esc(record.yanked_reason)}" if record.yanked_reason else ""
    return f"<span class='tag yanked'>yanked{reason}</span>"


#: Characters a distribution's filename may hold that need no percent-encoding.
_URL_SAFE = re.compile(r"[A-Za-z0-9._+!~-]+").fullmatch


def _file_rows(files: Sequence[FileRecord], base: str, marks: Marks = NO_MARKS) -> str:
    """One row per file: the loop a 601-file page spends its time in.

    With ``marks`` (a policy refuses some files) a "policy" cell ends each
    row, and a refused file gets its reason there and no link."""
    refused = marks.files if marks is not NO_MARKS else None
    rows = []
    escaped: dict[str | None, str] = {None: ""}  # requires-python repeats across a release's files
    for f in files:
        name = f.filename
        href = name if _URL_SAFE(name) else quote(name, safe="")
        requires = escaped.get(f.requires_python)
        if requires is None:
            requires = escaped[f.requires_python] = escape(f.requires_python or "")
        if refused is None:
            rows.append(f'<tr><td><a href="{base}{href}">{escape(name)}</a></td>'
                        f"<td class=n>{human_size(f.size)}</td><td>{_origin(f)}</td>"
                        f"<td>{requires}</td><td>{_yanked(f) if f.yanked else ''}</td></tr>")
            continue
        why = refused.get(name)
        cells = (f"<td class=n>{human_size(f.size)}</td><td>{_origin(f)}</td>"
                 f"<td>{requires}</td><td>{_yanked(f) if f.yanked else ''}</td>")
        if why is None:
            rows.append(f'<tr><td><a href="{base}{href}">{escape(name)}</a></td>{cells}<td></td></tr>')
        else:  # refused: its reason, and no link to follow
            rows.append(f"<tr><td>{escape(name)}</td>{cells}"
                        f"<td><span class='tag {why[0]}'>{escape(why[1])}</span></td></tr>")
    return "".join(rows)


_FILE_HEAD = ("<table><tr><th>file</th><th class=n>size</th><th>origin</th><th>requires-python</th>"
              "<th>yanked</th></tr>")
_POLICY_HEAD = _FILE_HEAD[:-5] + "<th>policy</th></tr>"


def project_page(view: ProjectView) -> bytes:
    name = esc(view.name)
    files_base = f"../../files/{quote(view.name, safe='')}/"
    count = sum(len(r.files) for r in view.releases) + len(view.other_files)
    total = sum(f.size or 0 for r in view.releases for f, _, _ in r.files)
    head = [f"<h1>{name}</h1>"]
    if view.summary:
        head.append(f"<p class=summary>{esc(view.summary)}</p>")
    facts = [("origin", "private (uploaded here)" if view.private else "mirrored from the upstream"),
             ("releases", str(len(view.releases))), ("files", f"{count}, {human_size(total)}")]
    if view.refreshed_at:
        facts.append(("checked upstream", esc(view.refreshed_at)))
    marks = view.marks
    if marks.blocked or marks.held:
        facts.append(("policy", f"{marks.blocked} file{'s' if marks.blocked != 1 else ''} blocked, "
                                f"{marks.held} held back (cooldown)"))
    if marks.project:
        head.append(f"<p class=refusal><span class='tag blocked'>{esc(marks.project)}</span></p>")
    head.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>")
    head.append(f'<p><a href="../../simple/{quote(view.name, safe="")}/">simple page</a> · '
                f'<a href="../../pypi/{quote(view.name, safe="")}/json">JSON</a></p>')
    table_head = _FILE_HEAD if marks is NO_MARKS else _POLICY_HEAD
    sections = []
    for release in view.releases:
        state = ""
        if release.yanked:
            reason = f": {esc(release.yanked_reason)}" if release.yanked_reason else ""
            state = f" <span class='tag yanked'>yanked{reason}</span>"
        requires = next((f.requires_python for f, _, _ in release.files if f.requires_python), None)
        note = f" <span class=muted>requires-python {esc(requires)}</span>" if requires else ""
        rows = _file_rows([f for f, _, _ in release.files], files_base, marks)
        sections.append(f'<h2 id="v{esc(release.key)}">{esc(release.key)}{state}{note}</h2>'
                        f"{table_head}{rows}</table>" if rows else
                        f'<h2 id="v{esc(release.key)}">{esc(release.key)}{state}</h2><p class=muted>no files</p>')
    if view.other_files:
        sections.append(f"<h2>Other files</h2>{table_head}{_file_rows(view.other_files, files_base, marks)}</table>")
    if not sections:
        sections.append("<p>No files.</p>")
    return page(view.name, "".join(head) + "".join(sections), root="../../", active="projects")


def statistics_page(stats: Stats, usage: Usage, top: Sequence[tuple[str, int]],
                    policy: Sequence[tuple[str, str]] = ()) -> bytes:
    """``policy``: the supply-chain policy in force, as (label, value) lines."""
    requests = stats.file_hits + stats.file_misses
    ratio = f"{100 * stats.file_hits / requests:.1f} %" if requests else "no file requests yet"
    used = human_size(usage.used) if usage.used is not None else "unknown (the storage cannot say)"
    limit = f"of {human_size(usage.limit)}" if usage.limit is not None else "(no limit)"
    facts = [("file hit ratio", ratio),
             ("bytes saved (served from the cache)", human_size(stats.bytes_from_cache)),
             ("bytes fetched from the upstream", human_size(stats.bytes_from_upstream)),
             (f"disk used ({usage.counts})", f"{used} {limit}"),
             ("pages served", f"{stats.pages} ({stats.pages_not_modified} not modified, "
                              f"{stats.pages_stale} stale)")]
    charts = [
        bars("File requests", [("hits (cache)", stats.file_hits), ("misses (upstream)", stats.file_misses)],
             colors=("#2f7d4f", "#c0533f"), fmt=lambda v: f"{int(v)}"),
        bars("Bytes sent", [("from the cache", stats.bytes_from_cache),
                            ("from the upstream", stats.bytes_from_upstream)],
             colors=("#2f7d4f", "#c0533f"), fmt=lambda v: human_size(int(v))),
        bars("Top projects (file requests)", [(n, c) for n, c in top], fmt=lambda v: f"{int(v)}"),
    ]
    if usage.used is not None:
        total = usage.limit if usage.limit is not None else max(usage.used, 1)
        title = (f"Disk used by {usage.counts} against the limit" if usage.limit is not None
                 else "Disk used (no limit)")
        charts.append(split_bar(title, [("used", usage.used)], total, fmt=lambda v: human_size(int(v))))
    body = ("<h1>Statistics</h1><p class=muted>Since the server started; the JSON counters are at "
            '<a href="stats">stats</a>.</p>'
            "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"
            "<div class=charts>" + "".join(charts) + "</div>")
    if policy:
        body += ('<h2 id=policy>Policy</h2><p class=muted>The supply-chain policy in force '
                 "(docs/security.md, “Supply chain”).</p><dl>"
                 + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in policy) + "</dl>")
    return page("Statistics", body, root="./", active="statistics")


def not_found(title: str, message: str, root: str) -> bytes:
    return page(title, f"<h1>{esc(title)}</h1><p>{esc(message)}</p>", root=root, active="projects")
