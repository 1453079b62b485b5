"""Inline SVG line charts, drawn on the server: no chart library, nothing fetched by the browser."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape

COLORS = {"SUCCESS": "#2e7d32", "FAILURE": "#c62828", "RETRY": "#ef6c00", "STARTED": "#1565c0",
          "RECEIVED": "#6a1b9a", "PENDING": "#757575", "REJECTED": "#4e342e", "REVOKED": "#37474f",
          "lag": "#1565c0", "threshold": "#c62828"}


def line_chart(xs: Sequence[float], series: Mapping[str, Sequence[float]], title: str, unit: str = "",
               width: int = 640, height: int = 200, dashed: Sequence[str] = ()) -> str:
    """An SVG with one polyline per series (empty series are left out of the legend)."""
    left, right, top, bottom = 48, 10, 40, 22
    w, h = width - left - right, height - top - bottom
    shown = {k: v for k, v in series.items() if any(v)}
    peak = max([max(v) for v in shown.values()] + [1.0])
    n = max(len(xs), 2)

    def px(i: int) -> float:
        return left + w * i / (n - 1)

    def py(v: float) -> float:
        return top + h - h * v / peak

    parts = [(f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
              f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'),
             f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" class="axis"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="tick">{_num(peak)}{escape(unit)}</text>',
             f'<text x="{left - 4}" y="{top + h}" text-anchor="end" class="tick">0</text>']
    if xs:
        parts.append(f'<text x="{left}" y="{height - 6}" class="tick">{_clock(xs[0])}</text>')
        parts.append(f'<text x="{left + w}" y="{height - 6}" text-anchor="end" class="tick">{_clock(xs[-1])}</text>')
    legend_x = left
    for name, values in shown.items():
        color = COLORS.get(name, "#455a64")
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(values))
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{points}" '
                     f'data-series="{escape(name)}"/>')
        parts.append(f'<rect x="{legend_x}" y="21" width="10" height="10" fill="{color}"/>'
                     f'<text x="{legend_x + 14}" y="30" class="legend">{escape(name)}</text>')
        legend_x += 24 + 8 * len(name)
    if not shown:
        parts.append(f'<text x="{left + w / 2}" y="{top + h / 2}" text-anchor="middle" class="tick">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:g}"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))
