"""The frame every UI page shares: the document, its inline style, the headers.

Templates are plain Python functions over :func:`html.escape`: three pages
do not justify a template engine, and a function makes it visible where each
value is escaped.  Everything a page needs is inline (one ``<style>``, SVG
in the markup), so the Content-Security-Policy can forbid every outside
source and the pages work without JavaScript and without the internet.
"""

from __future__ import annotations

from html import escape
from typing import Any

from pypicache import __version__
from pypicache.web.util import finish_bytes

__all__ = ["CSP", "esc", "human_size", "page", "send_html"]

#: Nothing from anywhere but the inline style and inline (data:) images.
CSP = (b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
       b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_STYLE = """
body{font:15px/1.45 "DejaVu Sans",system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#24364b;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#fff;text-decoration:none}header b{font-size:1.2em}
nav a{margin-right:1em;opacity:.85}nav a.on{opacity:1;border-bottom:2px solid #9fc3ea}
main{max-width:72em;margin:0 auto;padding:1em 1.5em}
a{color:#1f5c99}h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n,th.n{text-align:right;white-space:nowrap}
.tag{display:inline-block;padding:0 .45em;border-radius:.6em;font-size:.85em;background:#e3e6ea}
.private{background:#e8dcf7}.cached{background:#d7efdc}.upstream{background:#e3e6ea}
.yanked{background:#f9d9d4}.blocked{background:#c0533f;color:#fff}.held{background:#f5e3b8}.muted{color:#667085}.summary{font-size:1.05em;margin:.2em 0 1em}
form{margin:.5em 0 1em}input[type=search]{font:inherit;padding:.3em .5em;width:22em}
button{font:inherit;padding:.3em .9em}.pager{margin:1em 0;display:flex;gap:1.5em}
ul.names{columns:3 16em;padding-left:1.2em}.charts{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0;background:#fff;padding:.6em;border:1px solid #e3e6ea}figcaption{font-weight:600}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#667085}dd{margin:0}
"""


def esc(value: object) -> str:
    """Text or attribute value, escaped (quotes too)."""
    return escape(str(value), quote=True)


def human_size(size: int | None) -> str:
    """``12.3 MiB``: binary units, as the configuration's sizes are written."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def page(title: str, body: str, *, root: str, active: str) -> bytes:
    """A whole document.  ``root`` is the relative URL of ``/`` from the
    page (links stay right behind a proxy that mounts the server under a
    prefix); ``active`` names the navigation entry to underline."""
    nav = "".join(
        f'<a href="{root}{href}"{" class=on" if key == active else ""}>{label}</a>'
        for key, href, label in (("projects", "", "Projects"), ("statistics", "statistics", "Statistics"),
                                 ("simple", "simple/", "Simple index")))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · pypicache</title><style>{_STYLE}</style></head><body>"
        f'<header><a href="{root}"><b>pypicache</b></a><nav>{nav}</nav>'
        f'<span class=muted style="margin-left:auto;color:#c9d6e4">{esc(__version__)}</span></header>'
        f"<main>{body}</main></body></html>\n"
    ).encode("utf-8")


def send_html(request: Any, body: bytes, code: int = 200) -> None:
    """Headers every UI answer carries, then the body (HEAD: headers only)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"no-store")
    finish_bytes(request, body)
