"""Small inline SVG charts (bars and a line) so the HTML report needs no plotting library or script.

Values that are not finite are drawn at the top of the axis with a marker and named in the tooltip;
every label goes through ``html.escape``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

W, H = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 40


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _axes(title: str, ylabel: str, lo: float, hi: float) -> list[str]:
    mid = (TOP + H - BOTTOM) / 2
    parts = [
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{W / 2:.0f}" y="16" text-anchor="middle" class="t">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" class="ax"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" class="ax"/>',
        f'<text x="14" y="{mid:.0f}" class="l" transform="rotate(-90 14 {mid:.0f})" text-anchor="middle">'
        f"{escape(ylabel)}</text>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = _y(lo + frac * (hi - lo), lo, hi)
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="l">'
            f"{lo + frac * (hi - lo):.3g}</text>"
        )
    return parts


def _y(v: float, lo: float, hi: float) -> float:
    span = hi - lo or 1.0
    return H - BOTTOM - (min(max(v, lo), hi) - lo) / span * (H - TOP - BOTTOM)


def _range(values: Sequence[float | None]) -> tuple[float, float]:
    vals = _finite(values)
    lo = min([0.0, *vals])
    hi = max([*vals, lo + 1.0])
    return lo, hi


def _label(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def bar_chart(title: str, ylabel: str, labels: Sequence[str], values: Sequence[float | None]) -> str:
    """One bar per value, in the given order; hover shows the label and the value."""
    lo, hi = _range(values)
    parts = _axes(title, ylabel, lo, hi)
    n = max(len(values), 1)
    step = (W - LEFT - RIGHT) / n
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + i * step + step * 0.1
        tip = f"<title>{escape(label)}: {_label(v)}</title>"
        if v is None:
            continue
        if not math.isfinite(v):
            y = TOP if v > 0 or math.isnan(v) else H - BOTTOM
            parts.append(f'<circle cx="{x + step * 0.4:.1f}" cy="{y:.1f}" r="3" class="nf">{tip}</circle>')
            continue
        y0, y1 = _y(0.0, lo, hi), _y(v, lo, hi)
        parts.append(
            f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{step * 0.8:.1f}" '
            f'height="{abs(y1 - y0):.1f}" class="b">{tip}</rect>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(title: str, ylabel: str, labels: Sequence[str], values: Sequence[float | None]) -> str:
    """A polyline through the finite values; +inf (identical) is pinned to the top edge."""
    lo, hi = _range(values)
    parts = _axes(title, ylabel, lo, hi)
    n = max(len(values) - 1, 1)
    points = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        if v is None or math.isnan(v):
            continue
        x = LEFT + i * (W - LEFT - RIGHT) / n
        y = _y(v, lo, hi) if math.isfinite(v) else (TOP if v > 0 else H - BOTTOM)
        points.append(f"{x:.1f},{y:.1f}")
        cls = "p" if math.isfinite(v) else "nf"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" class="{cls}"><title>{escape(label)}: '
            f"{_label(v)}</title></circle>"
        )
    if points:
        parts.insert(len(parts) - len(points), f'<polyline points="{" ".join(points)}" class="ln"/>')
    parts.append("</svg>")
    return "\n".join(parts)
