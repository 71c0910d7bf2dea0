"""Line charts as server-side SVG: the geometry here, the markup in templates/chart.html (autoescaped).

No chart library and no script: a chart is a few polylines and ticks, and computing them is a page of
arithmetic. Only numbers leave this module as coordinates, each formatted with a fixed number of decimals,
and every label (an attempt's name, a sweep point's) goes through the template's autoescape like any other
text. Points that are not finite, or too large to be a measurement, are dropped before anything is scaled
(views/history.py drops them already; a chart does not rely on that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# One colour per attempt (or sweep point), distinct on white and for the common colour blindnesses (Okabe-Ito).
PALETTE = ("#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")
WIDTH, HEIGHT = 600, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40  # room for the tick labels
DOTS_UP_TO = 40  # a series this short gets a dot on each point (one point draws no line)
LIMIT = 1e15


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    points: str  # "x,y x,y ..." in pixels, for a polyline
    dots: tuple[tuple[str, str], ...]  # (x, y) in pixels where a dot is drawn


@dataclass(frozen=True)
class Tick:
    at: str  # pixels along its axis
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM
    empty: str = ""  # what to say instead of a chart when there are no points

    @property
    def is_empty(self) -> bool:
        return not self.series


def _usable(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points
            if math.isfinite(x) and math.isfinite(y) and abs(x) <= LIMIT and abs(y) <= LIMIT]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) covering [lo, hi], about `count` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    out: list[float] = []
    value = first
    while value <= hi + step * 1e-9 and len(out) < 50:
        out.append(0.0 if abs(value) < step * 1e-9 else value)
        value = first + step * len(out)
    return out


def _bounds(values: list[float], integer: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < (1 if integer else max(abs(hi), 1.0) * 1e-9):
        pad = 1.0 if integer else max(abs(hi) * 0.1, 0.5)
        return lo - pad, hi + pad
    margin = 0.0 if integer else (hi - lo) * 0.05
    return lo - margin, hi + margin


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart(title: str, x_label: str, y_label: str,
               series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]], empty: str = "no data") -> Chart:
    """A chart of `series` ((label, colour, [(x, y), ...]) each) on shared axes; a series left with no usable
    point is left out, and a chart with none is empty (the template says `empty` instead)."""
    usable = [(label, col, pts) for label, col, raw in series if (pts := _usable(raw))]
    if not usable:
        return Chart(title, x_label, y_label, (), (), (), empty=empty)
    xs = [x for _, _, pts in usable for x, _ in pts]
    ys = [y for _, _, pts in usable for _, y in pts]
    x_lo, x_hi = _bounds(xs, integer=True)
    y_lo, y_hi = _bounds(ys, integer=False)
    chart = Chart(title, x_label, y_label, (), (), (), empty=empty)
    span_x, span_y = chart.right - chart.left, chart.bottom - chart.top

    def px(x: float) -> float:
        return chart.left + span_x * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return chart.bottom - span_y * (y - y_lo) / (y_hi - y_lo)

    drawn = []
    for label, col, pts in usable:
        coords = [(px(x), py(y)) for x, y in sorted(pts)]
        dots = tuple((f"{x:.1f}", f"{y:.1f}") for x, y in coords) if len(coords) <= DOTS_UP_TO else ()
        drawn.append(Series(label, col, " ".join(f"{x:.1f},{y:.1f}" for x, y in coords), dots))
    x_ticks = tuple(Tick(f"{px(v):.1f}", _label(v)) for v in nice_ticks(x_lo, x_hi) if x_lo <= v <= x_hi
                    and float(v).is_integer())
    y_ticks = tuple(Tick(f"{py(v):.1f}", _label(v)) for v in nice_ticks(y_lo, y_hi) if y_lo <= v <= y_hi)
    return Chart(title, x_label, y_label, tuple(drawn), x_ticks, y_ticks, empty=empty)


__all__ = ["PALETTE", "Chart", "Series", "Tick", "colour", "line_chart", "nice_ticks"]
