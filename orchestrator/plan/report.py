"""`shardctl plan` as text: one line per candidate, the chosen one's breakdown term by term."""

from __future__ import annotations

from orchestrator.compile.rungs import describe
from orchestrator.plan.memory import CUDA
from orchestrator.plan.planner import MARGIN, Plan


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def plan_text(result: Plan) -> str:
    out = [f"model: {result.shape.params / 1e9:.3g}B parameters ({result.shape.method}); "
           f"GPU: {gib(result.gpu_memory)}, keeping {MARGIN:.0%} free; sequence length {result.seq_len}"]
    out.append(f"{'':2}{'config':80} {'per GPU':>10} {'verdict':>13} {'cost':>6} {'max micro':>9}  from")
    for i, c in enumerate(result.candidates):
        mark = "->" if i == result.chosen else "  "
        config = describe(c.job)
        out.append(f"{mark}{config[:80]:80} {gib(c.estimate.total):>10} "
                   f"{'fits' if c.fits else 'does not fit':>13} {c.cost:>5.2f}x {c.max_micro_batch:>9}  {c.origin}")
    if result.chosen is not None:
        c = result.candidates[result.chosen]
        phase = "the backward pass" if c.estimate.peak_phase == "backward" else "the optimizer step"
        out.append(f"chosen: the cheapest config predicted to fit. Its peak is in {phase}; term by term:")
        for name, value in c.estimate.terms.items():
            out.append(f"  {name:24} {gib(value):>10}")
        if c.estimate.host_bytes_per_node:
            out.append(f"  host memory per node (offloaded state, pinned): {gib(c.estimate.host_bytes_per_node)}")
    out += [f"note: {n}" for n in result.notes]
    out.append(f"Device constants: {CUDA.source} (docs/design.md, Memory planner).")
    return "\n".join(out)
