"""The acceptance of `shardctl ui` in a real browser (headless Chromium, as the plan's HTML test runs it): after a
real local OOM-fallback run, the jobs page lists it and its page shows both attempts on the timeline with the OOM
evidence and loss curves drawn for both; a hostile job's page runs nothing of the job's and injects nothing."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pytest

from orchestrator.web.charts import colour
from tests.plan.pngread import hex_rgb, read_png
from tests.web.conftest import HOSTILE_NAME, Dashboard, browse

pytestmark = pytest.mark.slow  # the session's real OOM-fallback run (about a minute on 2 cores)


def series_of(dom: str, chart: str) -> dict[str, list[tuple[float, float]]]:
    """A chart's polylines by their label, as pixel coordinates."""
    svg = re.search(rf'<svg class="chart" id="{chart}".*?</svg>', dom, re.S)
    assert svg, f"no {chart} in the page"
    out = {}
    for label, points in re.findall(r'<g class="series" data-label="([^"]+)">.*?points="([^"]*)"', svg[0], re.S):
        out[label] = [(float(x), float(y)) for x, y in (p.split(",") for p in points.split())]
    return out


def length(points: list[tuple[float, float]]) -> float:
    return sum(math.dist(a, b) for a, b in zip(points, points[1:], strict=False))


@pytest.mark.timeout(600)  # the first test here pays for the run (tests/web/conftest.py oom_run)
def test_the_jobs_page_and_the_job_page_show_the_oom_fallback_run(dashboard: Dashboard, oom_run: str,
                                                                   tmp_path: Path) -> None:
    jobs = browse(dashboard.url, tmp_path / "profile")
    row = re.search(rf'<tr class="job" data-id="{oom_run}">(.*?)</tr>', jobs, re.S)
    assert row and "oom-fallback" in row[1] and "succeeded" in row[1], jobs[-3000:]
    assert re.search(r'<td class="num">2</td>', row[1])  # two attempts
    assert re.search(r'step 10/10', row[1])  # the progress column: the last attempt's step

    page = browse(f"{dashboard.base}jobs/{oom_run}?token={dashboard.token}", tmp_path / "profile2")
    attempts = re.findall(r'<li class="attempt" id="attempt-(\d+)">(.*?)</li>', page, re.S)
    assert [n for n, _ in attempts] == ["1", "2"]
    first, second = (text for _, text in attempts)
    assert "failed" in first and "host_oom" in first and "oom_kill event" in first  # how it ended, its evidence
    assert "peak memory" in first
    assert "succeeded" in second and "activation checkpointing" in second and "host_oom" in second  # why it started
    loss = series_of(page, "loss-chart")
    assert set(loss) == {"attempt 1", "attempt 2"}, loss
    assert len(loss["attempt 1"]) >= 2 and len(loss["attempt 2"]) >= 1
    # spanning both: attempt 1 from the start of the axis, attempt 2 to its end (it resumed and finished)
    xs1, xs2 = [x for x, _ in loss["attempt 1"]], [x for x, _ in loss["attempt 2"]]
    assert min(xs1) < min(xs2) and max(xs2) > max(xs1)
    assert re.search(r'<pre class="log" id="log">.*training complete', page, re.S)  # the live log's tail


@pytest.mark.timeout(300)
def test_the_loss_curves_of_both_attempts_are_drawn_on_the_screen(dashboard: Dashboard, oom_run: str,
                                                                   tmp_path: Path) -> None:
    """Pixels of each attempt's colour where the loss chart is (the page's top left), as many as its polyline's
    length: an empty chart, or one drawn with nothing, fails."""
    shot = tmp_path / "job.png"
    dom = browse(f"{dashboard.base}jobs/{oom_run}?token={dashboard.token}", tmp_path / "profile", screenshot=shot,
                 size="1280,470")  # the heading and the two charts: the timeline's dots are below the fold
    width, height, channels, pixels = read_png(shot)
    loss = series_of(dom, "loss-chart")
    for number in (1, 2):
        rgb = hex_rgb(colour(number - 1))
        drawn = sum(1 for y in range(height) for x in range(min(width, 632))
                    if all(abs(pixels[(y * width + x) * channels + c] - rgb[c]) <= 3 for c in range(3)))
        points = loss[f"attempt {number}"]
        expected = length(points) + 5 * len(points)  # a pixel of the stroke's core per pixel of length, and dots
        assert expected > 40
        assert drawn >= expected, (number, drawn, expected)


@pytest.mark.timeout(120)
def test_a_hostile_jobs_page_runs_and_injects_nothing_in_the_browser(dashboard: Dashboard, tmp_path: Path) -> None:
    page = browse(f"{dashboard.base}jobs/{dashboard.planted.hostile}?token={dashboard.token}", tmp_path / "p")
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    assert title and html.unescape(title[1]) == f"{HOSTILE_NAME} · shardctl"  # not 'pwned': nothing ran
    assert "<script" not in page and "<img" not in page  # a finished job's page has no script of its own either
    assert "\x1b" not in page and "\x07" not in page
    name = re.search(r'<h1 id="job-name">(.*?)<span', page, re.S)
    assert name and html.unescape(name[1]).strip() == HOSTILE_NAME
    log = re.search(r'<pre class="log" id="log">(.*?)</pre>', page, re.S)
    assert log and "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in log[1] and "red " in log[1]
    jobs = browse(dashboard.url, tmp_path / "p2")
    assert jobs.count("<script") == 1 and "<img" not in jobs and "pwned" not in re.search(r"<title>.*?</title>",
                                                                                          jobs, re.S)[0]
