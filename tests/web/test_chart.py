"""The inline SVG usage chart."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape

from kswifi.web.chart import BOTTOM, LEFT, RIGHT, TOP, cumulative_points, usage_chart_svg

GIB = 1024**3
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def polyline(svg: str) -> list[tuple[float, float]]:
    match = re.search(r'<polyline class="line" points="([^"]+)"', svg)
    assert match
    return [tuple(map(float, pair.split(","))) for pair in match.group(1).split()]  # type: ignore[misc]


class TestCumulative:
    def test_running_total(self) -> None:
        rows = [(START, 10), (START + timedelta(minutes=1), 5), (START + timedelta(minutes=2), 0)]
        assert [p.used_bytes for p in cumulative_points(rows)] == [10, 15, 15]


class TestChart:
    def test_empty_chart_says_so(self) -> None:
        svg = str(usage_chart_svg([], 5 * GIB, start=START, now=START + timedelta(minutes=5)))
        assert "No data used yet" in svg
        assert 'role="img"' in svg
        assert "0 GB of 5 GB" in svg

    def test_line_goes_from_origin_to_the_used_share(self) -> None:
        points = cumulative_points(
            [(START + timedelta(minutes=5), GIB), (START + timedelta(minutes=10), GIB)]
        )
        svg = str(usage_chart_svg(points, 4 * GIB, start=START, now=START + timedelta(minutes=10)))
        line = polyline(svg)
        assert line[0] == (LEFT, BOTTOM)
        last_x, last_y = line[-1]
        assert last_x == RIGHT
        assert abs(last_y - (BOTTOM - (BOTTOM - TOP) * 0.5)) < 0.1  # 2 GB of 4 GB
        assert "2 GB of 4 GB" in svg

    def test_never_draws_above_the_limit(self) -> None:
        points = cumulative_points([(START, 10 * GIB)])
        svg = str(usage_chart_svg(points, GIB, start=START, now=START + timedelta(minutes=1)))
        assert min(y for _x, y in polyline(svg)) >= TOP

    def test_carries_its_data_for_the_live_script(self) -> None:
        points = cumulative_points([(START, 100)])
        svg = str(usage_chart_svg(points, GIB, start=START, now=START))
        raw = re.search(r"data-points='([^']+)'", svg)
        assert raw
        data = json.loads(unescape(raw.group(1)))
        assert data["limit"] == GIB
        assert data["points"] == [[int(START.timestamp() * 1000), 100]]
