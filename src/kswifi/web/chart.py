"""The usage chart: cumulative data used over time, as inline SVG (no chart library).

The server draws it from the session's per-minute rollups; the page's script redraws the
same line (same geometry, from the JSON in `data-points`) as live usage events arrive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

from kswifi.control.sessions.service import format_gb

WIDTH, HEIGHT = 600, 224
LEFT, RIGHT, TOP, BOTTOM = 66, 588, 14, 186


@dataclass(frozen=True)
class ChartPoint:
    at: datetime
    used_bytes: int  # cumulative


def cumulative_points(rows: Sequence[tuple[datetime, int]]) -> list[ChartPoint]:
    """(bucket start, bytes in the bucket) rows, oldest first → cumulative points."""
    total = 0
    points = []
    for at, bucket_bytes in rows:
        total += bucket_bytes
        points.append(ChartPoint(at, total))
    return points


def _x(at: datetime, start: datetime, span: float) -> float:
    return LEFT + (RIGHT - LEFT) * ((at - start).total_seconds() / span)


def _y(used: int, limit: int) -> float:
    ratio = min(1.0, used / limit) if limit > 0 else 0.0
    return BOTTOM - (BOTTOM - TOP) * ratio


def usage_chart_svg(
    points: Sequence[ChartPoint], limit_bytes: int, *, start: datetime | None, now: datetime
) -> Markup:
    """An accessible SVG line chart; with no data yet it says so instead of drawing a line."""
    start = start or (points[0].at if points else now)
    end = max([now, *(point.at for point in points)])
    span = max(60.0, (end - start).total_seconds())
    used = points[-1].used_bytes if points else 0
    used_text = format_gb(min(used, limit_bytes))
    summary = f"Data used over time: {used_text} of {format_gb(limit_bytes)}"
    data = {
        "start": int(start.timestamp() * 1000),
        "limit": limit_bytes,
        "points": [[int(p.at.timestamp() * 1000), p.used_bytes] for p in points],
    }
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" '
        f"data-points='{escape(json.dumps(data, separators=(',', ':')))}'>",
        f'<title id="chart-title">{escape(summary)}</title>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = BOTTOM - (BOTTOM - TOP) * fraction
        css = "limit" if fraction == 1.0 else "grid-line"
        parts.append(f'<line class="{css}" x1="{LEFT}" x2="{RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = format_gb(int(limit_bytes * fraction))
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{BOTTOM}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{RIGHT}" y1="{BOTTOM}" y2="{BOTTOM}"/>')
    first, last = start.astimezone(UTC), end.astimezone(UTC)
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 8}">{first:%d %b %H:%M}</text>'
        f'<text x="{RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{last:%H:%M} UTC</text>'
    )
    line = [(LEFT, BOTTOM)] + [
        (_x(p.at, start, span), _y(p.used_bytes, limit_bytes)) for p in points
    ]
    if points:
        line.append((_x(end, start, span), _y(used, limit_bytes)))
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
    area = f"{coords} {line[-1][0]:.1f},{BOTTOM} {LEFT},{BOTTOM}"
    parts.append(f'<polygon class="area" points="{area}"/>')
    parts.append(f'<polyline class="line" points="{coords}"/>')
    if not points:
        parts.append(
            f'<text class="empty" x="{(LEFT + RIGHT) / 2}" y="{(TOP + BOTTOM) / 2}" '
            'text-anchor="middle">No data used yet</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped or numeric
