"""The dashboard's SVG line charts (orchestrator/web/charts.py): what cannot be drawn is left out, never drawn
as NaN or off the chart, and every label goes through autoescape."""

from __future__ import annotations

import math
import re

import pytest

from orchestrator.web.app import environment
from orchestrator.web.charts import line_chart, nice_ticks


def render(chart) -> str:  # type: ignore[no-untyped-def]
    template = environment().from_string('{% from "chart.html" import chart as draw %}{{ draw(c, "c") }}')
    return template.render(c=chart)


@pytest.mark.timeout(30)
def test_nan_inf_and_huge_values_are_dropped_and_the_rest_fits_inside_the_plot() -> None:
    chart = line_chart("loss", "step", "loss", [
        ("a", "#d55e00", [(1, 2.0), (2, math.nan), (3, math.inf), (4, -math.inf), (5, 1e308), (6, 1.0)]),
        ("b", "#0072b2", [(math.nan, 1.0), (7, 1.5)])])
    assert [s.label for s in chart.series] == ["a", "b"]
    for s in chart.series:
        for pair in s.points.split():
            x, y = map(float, pair.split(","))
            assert chart.left <= x <= chart.right and chart.top <= y <= chart.bottom, (s.label, x, y)
    assert len(chart.series[0].points.split()) == 2 and len(chart.series[1].points.split()) == 1
    assert "nan" not in render(chart).replace("dominant-baseline", "").lower()


@pytest.mark.timeout(30)
def test_a_chart_with_nothing_to_draw_says_so_instead() -> None:
    chart = line_chart("loss", "step", "loss", [("a", "#000000", [(1, math.nan)])], empty="no loss printed yet")
    assert chart.is_empty
    svg = render(chart)
    assert "<svg" not in svg and "no loss printed yet" in svg


@pytest.mark.timeout(30)
def test_labels_are_escaped_in_the_svg() -> None:
    chart = line_chart("<b>t</b>", "x", "y", [("<script>alert(1)</script>", "#000000", [(1, 1.0), (2, 2.0)])])
    svg = render(chart)
    assert "<script>" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg and "<b>" not in svg


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("lo", "hi"), [(0, 10), (0.3, 0.31), (-5, 1e6), (1, 1 + 1e-12), (2.5, 2.5)])
def test_ticks_are_round_numbers_inside_the_range(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    assert 1 <= len(ticks) <= 12 and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    assert all(re.fullmatch(r"-?[125]0*(\.0+)?|0|-?[0-9.]+e-?\d+|-?0?\.[0-9]*[125]", f"{t:.6g}") or
               len(ticks) == 1 for t in ticks[1:2])


@pytest.mark.timeout(30)
def test_a_single_point_gets_a_dot_and_a_flat_series_a_range() -> None:
    chart = line_chart("loss", "step", "loss", [("a", "#000000", [(3, 2.0)])])
    assert chart.series[0].dots and chart.y_ticks  # drawn, with an axis around it
