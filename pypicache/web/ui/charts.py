"""Small SVG charts drawn on the server: no script, no outside asset.

Two shapes cover the statistics page: horizontal bars (one row per label,
for hits against misses and the top projects) and a single split bar (a
whole cut into parts, for disk used against the limit).  Labels are
escaped like any other text; sizes are fixed so the page lays out the same
in every browser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pypicache.web.ui.layout import esc

__all__ = ["bars", "split_bar", "PALETTE"]

PALETTE = ("#2f7d4f", "#c0533f", "#1f5c99", "#b7862c", "#6b4fa0")

_ROW = 24
_LABEL = 170
_VALUE = 90


def bars(title: str, rows: Sequence[tuple[str, float]], *, width: int = 520,
         fmt: Callable[[float], str] = lambda v: f"{v:g}", colors: Sequence[str] = PALETTE[2:3]) -> str:
    """Horizontal bars, one per ``(label, value)``, scaled to the largest;
    bar ``i`` takes ``colors[i % len(colors)]``."""
    if not rows:
        return _svg(title, width, _ROW, '<text x="4" y="16" class="muted">nothing yet</text>')
    top = max(value for _, value in rows) or 1
    span = width - _LABEL - _VALUE
    parts = []
    for i, (label, value) in enumerate(rows):
        y = i * _ROW
        length = max(1.0, span * value / top) if value else 0.0
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<text x="{_LABEL - 6}" y="{y + 16}" text-anchor="end">{esc(short)}</text>'
            f'<rect x="{_LABEL}" y="{y + 4}" width="{length:.1f}" height="{_ROW - 8}" '
            f'fill="{colors[i % len(colors)]}"><title>{esc(label)}: {esc(fmt(value))}</title></rect>'
            f'<text x="{_LABEL + length + 6:.1f}" y="{y + 16}">{esc(fmt(value))}</text>')
    return _svg(title, width, _ROW * len(rows), "".join(parts))


def split_bar(title: str, parts: Sequence[tuple[str, float]], total: float, *, width: int = 520,
              fmt: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """One bar of length ``total`` with ``parts`` laid end to end in it, and
    a legend line under it (the rest of the bar stays grey)."""
    span = width - 2
    x = 1.0
    drawn = [f'<rect x="1" y="1" width="{span}" height="26" fill="#e3e6ea" stroke="#c4c9d0"/>']
    legend = []
    for i, (label, value) in enumerate(parts):
        length = span * min(value, total) / total if total > 0 else 0.0
        color = PALETTE[i % len(PALETTE)]
        drawn.append(f'<rect x="{x:.1f}" y="1" width="{length:.1f}" height="26" fill="{color}">'
                     f"<title>{esc(label)}: {esc(fmt(value))}</title></rect>")
        x += length
        legend.append(f'<tspan fill="{color}">■</tspan> {esc(label)}: {esc(fmt(value))}  ')
    drawn.append(f'<text x="1" y="46">{"".join(legend)}</text>')
    return _svg(title, width, 52, "".join(drawn))


def _svg(title: str, width: int, height: int, inner: str) -> str:
    return (f'<figure><figcaption>{esc(title)}</figcaption>'
            f'<svg role="img" aria-label="{esc(title)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="DejaVu Sans, sans-serif" font-size="13">{inner}</svg></figure>')
