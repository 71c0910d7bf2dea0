"""`shardctl plan --html FILE`: the plan as one self-contained page, for a pull request or a ticket.

Inline CSS and an inline SVG chart, nothing else: no script, no font, no image, no link to anything
outside the page, so it renders the same offline and attached anywhere. The chart is the terminal's
(plan/report.py `bars()`): one stacked bar per candidate, its memory terms as segments, a solid line at
the GPU's capacity and a dashed one where the margin starts.
"""

from __future__ import annotations

from html import escape

from orchestrator.compile import rules
from orchestrator.compile.rungs import config_line
from orchestrator.plan.memory import CUDA
from orchestrator.plan.planner import MARGIN, Plan
from orchestrator.plan.report import (
    DIFFERS,
    GIB,
    MAX_MICRO,
    TERMS,
    allocator_line,
    bars,
    count,
    gib,
    scale_of,
    term_style,
)
from orchestrator.spec.models import TrainingJob

ROW = 30  # px per bar
RIGHT, TOP = 200, 36  # room for the total and verdict, and for the axis labels
CHART = 620  # px of bar at the scale's end
CHAR = 7.2  # px a character of the labels takes, about

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px; max-width: 1040px; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.sub { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 12px 0 20px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }
td.num, th.num, td.verdict { text-align: right; white-space: nowrap; }
td.verdict { text-align: left; }
tr.chosen td { font-weight: 600; background: #f3f7fb; }
.fits { color: #2e7d32; } .nofit { color: #c62828; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px; }
.legend span.item { margin-right: 14px; white-space: nowrap; }
.note { color: #555; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #222; }
"""


def _chart(result: Plan) -> str:
    items = bars(result)
    scale = scale_of(result)
    labels = [f"#{bar.index} {short_label(c.job)}" for bar, c in zip(items, result.candidates, strict=True)]
    left = 24 + CHAR * max((len(t) for t in labels), default=0)
    height = TOP + ROW * len(items) + 12
    width = int(left + CHART + RIGHT)

    def x(n: int) -> float:
        return left + CHART * n / scale

    parts = [f'<svg id="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="memory per GPU by candidate">']
    for i, bar in enumerate(items):
        y = TOP + ROW * i
        bold = ' font-weight="bold"' if bar.chosen else ""
        parts.append(f'<text x="4" y="{y + 18}"{bold}>{escape(labels[i])}</text>')
        start = 0
        for name, value in bar.segments:
            colour, _, label = term_style(name)
            parts.append(f'<rect class="seg" data-term="{name}" x="{x(start):.2f}" y="{y + 4}" '
                         f'width="{max(0.5, CHART * value / scale):.2f}" height="{ROW - 8}" fill="{colour}">'
                         f'<title>#{bar.index} {escape(label)}: {gib(value)}</title></rect>')
            start += value
        verdict = "fits" if bar.fits else "does not fit"
        parts.append(f'<text x="{x(start) + 6:.2f}" y="{y + 18}">{gib(bar.total)} · {verdict}'
                     f'{" · chosen" if bar.chosen else ""}</text>')
    bottom = TOP + ROW * len(items)
    keep, cap = x(int(result.gpu_memory * (1 - MARGIN))), x(result.gpu_memory)
    parts.append(f'<line x1="{keep:.2f}" y1="{TOP - 6}" x2="{keep:.2f}" y2="{bottom}" stroke="#b8860b" '
                 f'stroke-width="2" stroke-dasharray="5 4"/>')
    parts.append(f'<line x1="{cap:.2f}" y1="{TOP - 6}" x2="{cap:.2f}" y2="{bottom}" stroke="#c62828" '
                 f'stroke-width="2"/>')
    parts.append(f'<text x="{keep - 4:.2f}" y="{TOP - 12}" text-anchor="end">{MARGIN:.0%} kept free</text>')
    parts.append(f'<text x="{cap + 4:.2f}" y="{TOP - 12}">GPU {gib(result.gpu_memory)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def short_label(job: TrainingJob) -> str:
    """A config in a few words, for the chart's rows (the table has the whole of it)."""
    s = job.spec
    parts = [f"ZeRO-{rules.zero_stage(s)}" if s.backend == "deepspeed" else rules.fsdp_strategy(s) or "FSDP",
             f"micro {s.batch.micro}"]
    if s.activation_checkpointing:
        parts.append("ckpt")
    parts += [f"{what} to {where}" for what, where in (("opt", s.offload.optimizer), ("params", s.offload.params))
              if where != "none"]
    return ", ".join(parts)


def _legend(result: Plan) -> str:
    present = {name for b in bars(result) for name, _ in b.segments}
    items = [f'<span class="item"><span class="swatch" style="background:{term_style(n)[0]}"></span>'
             f"{escape(term_style(n)[2])}</span>" for n in TERMS if n in present]
    items += [f'<span class="item"><span class="swatch" style="background:{term_style(n)[0]}"></span>'
              f"{escape(n)}</span>" for n in sorted(present - set(TERMS))]
    return f'<p class="legend">{"".join(items)}</p>'


def plan_html(result: Plan, source: str = "", *, model: str = "", job: str = "") -> str:
    """The whole page, titled by the model (and the job's name), the spec file under the title."""
    shape = result.shape
    subject = f"{model} ({job})" if model and job else model or job or source
    heading = f"Memory plan{': ' + escape(subject) if subject else ''}"
    origin = escape(source) + ": " if source and source != subject else ""
    rows = []
    for i, c in enumerate(result.candidates):
        verdict = '<span class="fits">fits</span>' if c.fits else '<span class="nofit">does not fit</span>'
        verdict += "*" if c.fits_without_expandable is not None else ""
        chosen, arrow = (' class="chosen"', "&#8594; ") if i == result.chosen else ("", "")
        rows.append(f'<tr{chosen}><td class="num">{arrow}{i + 1}</td><td>{escape(config_line(c.job))}</td>'
                    f'<td class="num">{gib(c.estimate.total)}</td><td class="verdict">{verdict}</td>'
                    f'<td class="num">{c.cost:.2f}x</td><td class="num">{c.max_micro_batch}</td>'
                    f"<td>{escape(c.origin)}</td></tr>")
    body = [f"<h1>{heading}</h1>",
            f'<p class="sub">{origin}{count(shape.params)} parameters ({escape(shape.method)}); GPU '
            f"{gib(result.gpu_memory)}, {MARGIN:.0%} kept free; sequence length {result.seq_len}; "
            f"{escape(allocator_line(result))}. "
            f"Each bar is one candidate's memory per GPU at its peak, term by term.</p>",
            _chart(result), _legend(result),
            '<table><thead><tr><th class="num">#</th><th>config</th><th class="num">per GPU</th><th>verdict</th>'
            f'<th class="num">cost</th><th class="num" title="{MAX_MICRO}">max micro</th><th>from</th></tr>'
            "</thead><tbody>", *rows, "</tbody></table>",
            f'<p class="note">max micro: {MAX_MICRO}, with the rest of that config unchanged. from: the fallback '
            "rung (or the spec as written) the config comes from. cost: its step time against the plain config.</p>"]
    if any(c.fits_without_expandable is not None for c in result.candidates):
        body.append(f'<p class="note">{escape(DIFFERS)}.</p>')
    if result.chosen is not None:
        c = result.candidates[result.chosen]
        body.append(f"<p>Chosen: #{result.chosen + 1}, the cheapest config predicted to fit; its peak is in the "
                    f"{escape(c.estimate.peak_phase.replace('_', ' '))} phase.</p>")
        body.append('<table><thead><tr><th>term</th><th class="num">per GPU</th><th class="num">share</th></tr>'
                    "</thead><tbody>")
        for name, value in c.estimate.terms.items():
            if not value:
                continue
            colour, _, label = term_style(name)
            body.append(f'<tr><td><span class="swatch" style="background:{colour}"></span>{escape(label)}</td>'
                        f'<td class="num">{gib(value)}</td>'
                        f'<td class="num">{value / max(1, c.estimate.total):.0%}</td></tr>')
        body.append("</tbody></table>")
        if c.estimate.cache_bytes:
            body.append(f'<p class="note">With room to spare the allocator also caches about '
                        f"{gib(c.estimate.cache_bytes)}; it gives whole blocks back before running out of memory, so "
                        "the verdict does not count it.</p>")
        if c.estimate.fragmentation_bytes:
            body.append(f'<p class="note">Fragmentation the allocator cannot give back: '
                        f"{gib(c.estimate.fragmentation_bytes)}, counted in the verdict.</p>")
    else:
        body.append('<p class="nofit">No candidate is predicted to fit.</p>')
    body += [f'<p class="note">note: {escape(n)}</p>' for n in result.notes]
    body.append(f'<p class="note">Device constants: {escape(CUDA.source)}. One cell of the chart: '
                f"{scale_of(result) / CHART / GIB:.3f} GiB a pixel.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{heading}</title><style>{STYLE}</style></head>"
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")
