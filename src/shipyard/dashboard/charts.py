"""Charts rendered on the server as inline SVG: they work offline and need no script."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def _scale(values: Sequence[float], height: float) -> tuple[float, float]:
    top = max(values) if values else 0.0
    return (top if top > 0 else 1.0), height


def line_chart(points: Sequence[tuple[str, float]], *, width: int = 640, height: int = 180, label: str = "") -> Markup:
    """A line chart of ``(x label, value)`` points with min/max labels and a title."""
    if not points:
        return Markup('<p class="empty">No data yet.</p>')
    values = [float(v) for _, v in points]
    top, _ = _scale(values, height)
    pad = 24
    step = (width - 2 * pad) / max(1, len(points) - 1)
    coords = [(pad + i * step, height - pad - (v / top) * (height - 2 * pad)) for i, v in enumerate(values)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>{escape(str(lbl))}: {v:g}</title></circle>'
        for (x, y), (lbl, v) in zip(coords, points, strict=True)
    )
    first, last = escape(str(points[0][0])), escape(str(points[-1][0]))
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{path}"/>{dots}'
        f'<text x="{pad}" y="{height - 4}" class="axis">{first}</text>'
        f'<text x="{width - pad}" y="{height - 4}" text-anchor="end" class="axis">{last}</text>'
        f'<text x="{pad}" y="14" class="axis">max {top:g}</text></svg>'
    )


def bar_chart(bars: Sequence[tuple[str, float]], *, width: int = 640, bar_height: int = 22, label: str = "") -> Markup:
    """Horizontal bars with their labels and values (top lists, funnels, breakdowns)."""
    if not bars:
        return Markup('<p class="empty">No data yet.</p>')
    top = max((float(v) for _, v in bars), default=0.0) or 1.0
    label_width = 180
    rows = []
    for i, (name, value) in enumerate(bars):
        y = i * (bar_height + 6)
        w = (width - label_width - 60) * float(value) / top
        rows.append(
            f'<text x="0" y="{y + bar_height * 0.7:.1f}" class="label">{escape(str(name))[:28]}</text>'
            f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" rx="3"/>'
            f'<text x="{label_width + w + 6:.1f}" y="{y + bar_height * 0.7:.1f}" class="value">{float(value):g}</text>'
        )
    height = len(bars) * (bar_height + 6)
    return Markup(
        f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">{"".join(rows)}</svg>'
    )
