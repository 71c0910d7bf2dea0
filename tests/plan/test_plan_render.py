"""`shardctl plan` for a person: the table wraps instead of cutting, a stacked bar per candidate in the
terminal, `--html` writes a self-contained page whose chart really shows in a browser (headless
Chromium, Debian's package: scripts/test installs it), and `--gpu-memory` wants a unit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.compile.rungs import config_line
from orchestrator.plan.html import plan_html
from orchestrator.plan.planner import MARGIN, plan
from orchestrator.plan.report import TERMS, bars, plan_text
from tests.helpers import job
from tests.plan.pngread import colour_counts, hex_rgb, near

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def spec(**over) -> dict:
    base = {"model": {"name_or_path": str(DATA / "gpt2-xl")}, "backend": "deepspeed", "sharding": "none",
            "precision": {"mixed": "fp16", "params": "fp32"}, "batch": {"micro": 8, "seq_len": 1024},
            "activation_checkpointing": False,
            "resources": {"nodes": 1, "gpus_per_node": 2, "gpu_memory": "24GiB"}}
    base.update(over)
    return base


def run_plan(tmp_path: Path, *args: str, columns: int = 80, **over) -> subprocess.CompletedProcess:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job(**spec(**over)).model_dump(mode="json", by_alias=True)))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(path), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env)


def words(text: str) -> list[str]:
    return re.findall(r"[\w=.-]+", text)


@pytest.mark.parametrize("columns", [80, 160])
def test_the_table_wraps_to_the_terminal_and_loses_no_config(tmp_path: Path, columns: int) -> None:
    out = run_plan(tmp_path, columns=columns)
    assert out.returncode in (0, 1), out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    result = plan(job(**spec()))
    assert len(result.candidates) >= 4
    text_words = words(out.stdout)
    for c in result.candidates:  # every word of every config, in order, wrapped or not
        at = 0
        for word in words(config_line(c.job)):
            at = text_words.index(word, at) + 1
    assert "…" not in out.stdout and "..." not in out.stdout
    if columns == 160:  # the room is used: the short configs fit on one line
        shortest = min((config_line(c.job) for c in result.candidates), key=len)
        assert shortest in out.stdout


def test_a_stacked_bar_per_candidate_with_the_capacity_and_margin_lines() -> None:
    result = plan(job(**spec()))
    text = plan_text(result, width=100)
    rows = [line for line in text.splitlines() if "│" in line and re.search(r"(fits|does not fit)$", line)]
    assert len(rows) == len(result.candidates)
    capacity = {row.index("│") for row in rows}
    margin = {row.index("┆") for row in rows}
    assert len(capacity) == 1 and len(margin) == 1 and margin.pop() < capacity.pop()
    for row, bar in zip(rows, bars(result), strict=True):
        letters = {TERMS[name][1] for name, _ in bar.segments if name in TERMS}
        assert letters <= set(row), row  # every term of the estimate is a segment (a letter without colour)
    chosen = result.candidates[result.chosen]
    assert f"chosen: #{result.chosen + 1}" in text and "GiB" in text and chosen.fits


def test_gpu_memory_without_a_unit_is_an_error_not_bytes(tmp_path: Path) -> None:
    out = run_plan(tmp_path, "--gpu-memory", "80")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "--gpu-memory 80: give a unit, e.g. 80GiB (2^30 bytes) or 80GB (10^9 bytes)"]
    assert run_plan(tmp_path, "--gpu-memory", "80GiB", "--json").returncode == 0


def test_the_html_page_is_self_contained(tmp_path: Path) -> None:
    page = tmp_path / "plan.html"
    out = run_plan(tmp_path, "--html", str(page), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["format"] == 1
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<style>" in html
    for outside in ("http:", "https:", "//", "<script", "src=", "href=", "url(", "@import", "<link"):
        assert outside not in html.lower(), outside
    result = plan(job(**spec()))
    assert html.count('class="seg"') == sum(len(b.segments) for b in bars(result))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _expected_pixels(html: str) -> dict[str, float]:
    """Per term, the bars' area in pixels from the SVG (a column lost to antialiasing at each edge)."""
    area: dict[str, float] = {}
    for term, width, height in re.findall(r'data-term="(\w+)" x="[\d.]+" y="\d+" width="([\d.]+)" height="(\d+)"',
                                          html):
        area[term] = area.get(term, 0.0) + max(0.0, float(width) - 2) * int(height)
    return area


def test_the_html_chart_shows_its_bars_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("SHARDCTL_REQUIRE_CHROMIUM") == "1":
            pytest.fail("SHARDCTL_REQUIRE_CHROMIUM=1 but no chromium on PATH (scripts/test installs Debian's)")
        hint = "apt-get install -y chromium (scripts/test does it as root)" if shutil.which("apt-get") else \
            "no apt-get to install it with"
        pytest.skip(f"no chromium: {hint}")
    result = plan(job(**spec()))
    html = plan_html(result, "job.json")
    page, shot = tmp_path / "plan.html", tmp_path / "plan.png"
    page.write_text(html)
    rows = len(result.candidates)
    height = 260 + 30 * rows  # the heading, then the chart: the table below need not be in the picture
    cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--force-color-profile=srgb",
           "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size=1200,{height}",
           f"--screenshot={shot}", page.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    counts = colour_counts(shot)
    expected = _expected_pixels(html)
    assert sum(expected.values()) > 5000  # the chart is big enough that a legend swatch cannot pass for it
    for term, area in expected.items():
        if area < 300:
            continue  # a sliver of a segment: its antialiased edges are most of it
        colour = TERMS[term][0]
        assert near(counts, hex_rgb(colour)) >= 0.9 * area, (term, colour, near(counts, hex_rgb(colour)), area)
    # The capacity line (solid) and the margin line (dashed) cross every bar's row.
    assert near(counts, hex_rgb("#c62828")) >= 30 * rows
    assert near(counts, hex_rgb("#b8860b")) >= 15 * rows
    assert 0 < MARGIN < 0.2


# A day's use (issue 20).

@pytest.mark.parametrize(("n", "shown"), [(950, "950"), (4_000, "4.0K"), (999_999, "1.0M"), (1.3e6, "1.3M"),
                                         (6.7e9, "6.7B"), (1.8e12, "1.8T")])
def test_parameter_counts_read_humanly_at_every_scale(n: float, shown: str) -> None:
    from orchestrator.plan.report import count

    assert count(n) == shown


def test_a_4000_parameter_model_is_4_0k_parameters_not_a_fraction_of_a_billion() -> None:
    result = plan(job(**spec(model={"name_or_path": "tiny-lm", "parameters": 4000},
                             resources={"nodes": 1, "gpus_per_node": 2, "gpu_memory": "80GiB"})))
    text = plan_text(result, width=80)
    assert text.startswith("model: 4.0K parameters"), text[:80]
    assert "e-0" not in text
    page = plan_html(result, "job.json", model="tiny-lm", job="tiny")
    assert "4.0K parameters" in page and "e-0" not in page


def _from_column(text: str) -> list[str]:
    """The table's "from" cells, each folded piece joined back."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if "config" in line and line.rstrip().endswith("from"))
    at = lines[head].index("from")
    cells: list[str] = []
    for line in lines[head + 2:]:
        if not line.strip() or line.startswith("max micro:"):  # the table's end
            break
        if line[:lines[head].index("config")].strip():  # a row's first line: its number in the # column
            cells.append("")
        cells[-1] += line[at:].strip()
    return cells


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("model", [{"name_or_path": "tiny-lm", "parameters": 4000},
                                   {"name_or_path": str(DATA / "gpt2-xl")}], ids=["tiny", "gpt2-xl"])
def test_the_plan_fits_the_terminal_and_the_from_column_loses_no_character(columns: int, model: dict) -> None:
    result = plan(job(**spec(model=model, resources={"nodes": 1, "gpus_per_node": 2, "gpu_memory": "8GiB"})))
    text = plan_text(result, width=columns)
    assert max(len(line) for line in text.splitlines()) <= columns
    assert _from_column(text) == [c.origin for c in result.candidates]
    assert "max micro: the largest micro-batch predicted to fit" in text


def test_the_html_page_is_titled_by_the_model_explains_max_micro_and_is_readable_by_all(tmp_path: Path) -> None:
    page = tmp_path / "shared" / "plan.html"
    page.parent.mkdir()
    os.chmod(page.parent, 0o755)
    old = os.umask(0o077)
    try:
        out = run_plan(tmp_path, "--html", str(page), "--json")
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    assert page.stat().st_mode & 0o777 == 0o644
    html = page.read_text()
    model = str(DATA / "gpt2-xl")
    name = job(**spec()).metadata.name
    assert re.search(r"<title>Memory plan: ([^<]*)</title>", html).group(1) == f"{model} ({name})"
    assert f"<h1>Memory plan: {model} ({name})</h1>" in html
    assert "max micro: the largest micro-batch predicted to fit" in html
