"""`shardctl plan` for a person: a table of the candidates (wrapped to the terminal, never cut), a
stacked bar per candidate (its memory terms as segments, the GPU's capacity and the margin kept free
as lines), the chosen config term by term. Rendered with rich, which only this command imports.
The HTML page (plan/html.py) draws the same chart from the same `bars()`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.compile.rungs import config_line
from orchestrator.plan.memory import CUDA
from orchestrator.plan.planner import MARGIN, Candidate, Plan

if TYPE_CHECKING:
    from rich.console import Console

GIB = 1 << 30
# Every term the estimate can name: its colour (Tableau 20), its letter where there is no colour, and a label.
TERMS: dict[str, tuple[str, str, str]] = {
    "parameters": ("#4e79a7", "P", "parameters"),
    "gathered_parameters": ("#a0cbe8", "p", "gathered parameters"),
    "optimizer_states": ("#f28e2b", "O", "optimizer states"),
    "optimizer_temporaries": ("#ffbe7d", "o", "optimizer temporaries"),
    "gradients": ("#59a14f", "G", "gradients"),
    "gradient_partitions": ("#8cd17d", "g", "gradient partitions"),
    "flattened_gradients": ("#b6992d", "f", "flattened gradients"),
    "fp32_gradients": ("#f1ce63", "F", "fp32 gradients"),
    "activations": ("#e15759", "A", "activations"),
    "logits": ("#ff9d9a", "L", "logits"),
    "communication_buckets": ("#79706e", "B", "communication buckets"),
    "communicators": ("#bab0ac", "c", "communicators"),
    "context": ("#9d7660", "C", "context"),
    "unattributed": ("#d37295", "u", "unattributed"),
}
OTHER = ("#b07aa1", "?", "other")


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def count(n: float) -> str:
    """A count as a person reads it at every scale: 950, 4.0K, 1.3M, 6.7B, 1.8T."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size * 0.9995:  # 999,999 is 1.0M, not 1000.0K
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


MAX_MICRO = "the largest micro-batch predicted to fit"


def allocator_line(result: Plan) -> str:
    """The allocator setting the verdicts assume, in words."""
    setting = "expandable segments" if result.expandable_segments else "no expandable segments"
    source = {"default": "shardctl's default for CUDA attempts",
              "argument": "as asked"}.get(result.allocator_source, result.allocator_source)
    return f"allocator: {setting} ({source})"


DIFFERS = "*: fits with expandable segments, predicted not to without them (PYTORCH_CUDA_ALLOC_CONF): fragmentation"


def verdict_text(c: Candidate) -> str:
    """fits / does not fit, starred where the verdict without expandable segments differs."""
    return ("fits" if c.fits else "does not fit") + ("*" if c.fits_without_expandable is not None else "")


def term_style(name: str) -> tuple[str, str, str]:
    return TERMS.get(name, OTHER)


@dataclass
class Bar:
    index: int  # 1-based, as in the table
    label: str  # the config in one line
    segments: list[tuple[str, int]]  # (term, bytes), in TERMS order
    total: int
    fits: bool
    chosen: bool


def bars(result: Plan) -> list[Bar]:
    """One bar per candidate: the terms of its peak phase."""
    order = list(TERMS)
    out = []
    for i, c in enumerate(result.candidates):
        terms = sorted(((k, v) for k, v in c.estimate.terms.items() if v > 0),
                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        out.append(Bar(i + 1, config_line(c.job), terms, c.estimate.total, c.fits, i == result.chosen))
    return out


def scale_of(result: Plan) -> int:
    """Bytes at the right end of the chart: the capacity or the largest estimate, with a little room."""
    return int(max([result.gpu_memory] + [c.estimate.total for c in result.candidates]) * 1.04)


def _bar_text(bar: Bar, width: int, scale: int, capacity: int, color: bool):
    from rich.text import Text

    cells: list[str] = []
    for name, value in bar.segments:  # each segment at least one cell, so every term present shows
        cells += [name] * max(1, round(value / scale * width))
    cells = cells[:width]
    cap = min(width - 1, round(capacity / scale * width))
    keep = min(width - 1, round(capacity * (1 - MARGIN) / scale * width))
    text = Text()
    for pos in range(width):
        term = cells[pos] if pos < len(cells) else None
        colour, letter, _ = term_style(term) if term else ("", " ", "")
        if pos in (cap, keep):
            text.append("│" if pos == cap else "┆", style=f"bold {'red' if pos == cap else 'yellow'}"
                        + (f" on {colour}" if color and term else ""))
        elif term:
            text.append("█" if color else letter, style=colour if color else "")
        else:
            text.append(" ")
    return text


def render(result: Plan, console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    color = console.color_system is not None
    console.print(Text(f"model: {count(result.shape.params)} parameters ({result.shape.method}); GPU: "
                       f"{gib(result.gpu_memory)}, keeping {MARGIN:.0%} free; sequence length {result.seq_len}; "
                       f"{allocator_line(result)}"))
    console.print(Text(f"shape from: {result.shape.source}"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False, show_edge=False, collapse_padding=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("config", overflow="fold", ratio=1, min_width=16)
    table.add_column("per GPU", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("max\nmicro", justify="right", no_wrap=True)
    table.add_column("from", overflow="fold", min_width=10)  # folded, never cut, on a narrow terminal
    for i, c in enumerate(result.candidates):
        mark = "->" if i == result.chosen else ""
        table.add_row(f"{mark}{i + 1}", config_line(c.job), gib(c.estimate.total), verdict_text(c),
                      f"{c.cost:.2f}x", str(c.max_micro_batch), c.origin,
                      style="bold" if i == result.chosen else None)
    console.print(table)
    console.print(Text(f"max micro: {MAX_MICRO}; from: the fallback rung (or the spec) the config comes from"))
    if any(c.fits_without_expandable is not None for c in result.candidates):
        console.print(Text(DIFFERS))
    _render_bars(result, console, color)
    if result.chosen is not None:
        c = result.candidates[result.chosen]
        phase = {"backward": "the backward pass", "gradient_reduction": "the gradient reduction",
                 "optimizer_step": "the optimizer step"}.get(c.estimate.peak_phase, c.estimate.peak_phase)
        console.print(Text(f"chosen: #{result.chosen + 1}, the cheapest config predicted to fit. Its peak is in "
                           f"{phase}; term by term:"))
        terms = Table(box=None, show_header=False, pad_edge=False)
        terms.add_column()
        terms.add_column(justify="right")
        terms.add_column(justify="right")
        for name, value in c.estimate.terms.items():
            if not value:
                continue
            colour, letter, label = term_style(name)
            swatch = Text("█ " if color else f"{letter} ", style=colour if color else "")
            terms.add_row(swatch + Text(label), gib(value), f"{value / max(1, c.estimate.total):.0%}")
        console.print(terms)
        if c.estimate.cache_bytes:
            console.print(Text(f"  with room to spare, the allocator also caches about {gib(c.estimate.cache_bytes)} "
                               "(it gives whole blocks back before running out; not part of the verdict)"))
        if c.estimate.fragmentation_bytes:
            console.print(Text(f"  fragmentation the allocator cannot give back (blocks split while partly in use): "
                               f"{gib(c.estimate.fragmentation_bytes)}, counted in the verdict"))
        elif c.estimate.fragmentation_bytes_without_expandable:
            console.print(Text(f"  without expandable segments, fragmentation would strand about "
                               f"{gib(c.estimate.fragmentation_bytes_without_expandable)} more"))
        if c.estimate.host_bytes_per_node:
            console.print(Text(f"  host memory per node (offloaded state, pinned): "
                               f"{gib(c.estimate.host_bytes_per_node)}"))
    for note in result.notes:
        console.print(Text(f"note: {note}"))
    console.print(Text(f"Device constants: {CUDA.source} (docs/design.md, Memory planner)."))


def _render_bars(result: Plan, console: Console, color: bool) -> None:
    from rich.text import Text

    items = bars(result)
    if not items:
        return
    label_width = len(str(len(items))) + 2
    tail = 26  # " 1234.5 GiB  does not fit"
    width = max(20, min(100, console.width - label_width - tail))
    scale = scale_of(result)
    console.print(Text(f"per GPU at the peak, {scale / width / GIB:.2f} GiB a cell: "
                       f"│ the GPU's {gib(result.gpu_memory)}, ┆ {MARGIN:.0%} kept free"))
    for bar in items:
        line = Text(f"{'->' if bar.chosen else '  '}{bar.index:<{label_width - 2}} ")
        line += _bar_text(bar, width, scale, result.gpu_memory, color)
        line += Text(f" {gib(bar.total):>10}  {'fits' if bar.fits else 'does not fit'}")
        console.print(line, no_wrap=True, overflow="crop")
    present = [name for name in TERMS if any(name == n for b in items for n, _ in b.segments)]
    legend = Text("  ")
    for name in present:
        colour, letter, label = term_style(name)
        legend += Text("█" if color else letter, style=colour if color else "") + Text(f" {label}  ")
    console.print(legend)


def plan_text(result: Plan, width: int = 100) -> str:
    """The plan as plain text (no colour), `width` columns wide."""
    from rich.console import Console

    buffer = io.StringIO()
    render(result, Console(file=buffer, width=width, color_system=None, force_terminal=False, soft_wrap=False))
    return buffer.getvalue()
