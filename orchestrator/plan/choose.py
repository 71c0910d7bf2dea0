"""How submit and the fallback use the planner (spec.fallback.plan: auto).

Only where it means something: on GPUs (not the CPU processes of a machine without one) and with
the GPU's memory known (spec.resources.gpu_memory). Anything the planner cannot do (an unknown
model family, no size) leaves the spec as written, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.compile.rungs import config_line
from orchestrator.plan.memory import estimate
from orchestrator.plan.planner import DEFAULT_SEQ_LEN, plan, predicts_fit
from orchestrator.plan.report import gib
from orchestrator.plan.size import ModelShape, model_shape
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.quantity import parse_bytes

AS_SUBMITTED = "first attempt: the spec as submitted"


def _applies(job: TrainingJob, on_gpu: bool) -> bool:
    return on_gpu and job.spec.fallback.plan == "auto" and bool(job.spec.resources.gpu_memory)


def starting_point(job: TrainingJob, on_gpu: bool) -> tuple[TrainingJob, str | None, str]:
    """(the first attempt's job, its rung-like origin, why)."""
    if not _applies(job, on_gpu):
        return job, None, AS_SUBMITTED
    try:
        result = plan(job, hub=False)  # the cache only: an executor never waits on the Hub
    except ValueError as exc:
        return job, None, f"{AS_SUBMITTED} (not planned: {exc})"
    if result.chosen is None:
        return job, None, f"{AS_SUBMITTED}: the planner predicts no candidate fits ({'; '.join(result.notes)})"
    chosen = result.candidates[result.chosen]
    predicted = f"predicted {gib(chosen.estimate.total)} of {gib(result.gpu_memory)} per GPU"
    if chosen.origin == "spec":
        return job, None, f"{AS_SUBMITTED} ({predicted})"
    spec_total = gib(result.candidates[0].estimate.total)
    summary = config_line(chosen.job)
    return (chosen.job, f"plan:{chosen.origin}",
            f"planned: the spec as written is predicted at {spec_total} per GPU, over the limit; starting from "
            f"{summary} ({predicted}); spec.fallback.plan: off starts from the spec instead")


def _shape(job: TrainingJob, on_gpu: bool) -> ModelShape | None:
    if not _applies(job, on_gpu):
        return None
    try:
        return model_shape(job.spec.model.name_or_path, job.spec.model.parameters)
    except ValueError:
        return None


def fit_predicate(job: TrainingJob, on_gpu: bool) -> Callable[[TrainingJob], bool] | None:
    """For next_step: False for a config the planner is sure will not fit; None when it does not apply."""
    shape = _shape(job, on_gpu)
    if shape is None:
        return None
    gpu_memory = job.spec.resources.gpu_memory
    assert gpu_memory, "_applies checked it"
    gpu = parse_bytes(gpu_memory)
    seq = job.spec.batch.seq_len or DEFAULT_SEQ_LEN
    return lambda candidate: predicts_fit(candidate, shape, gpu, seq, job.spec.batch.target_len)


def need_estimate(job: TrainingJob, on_gpu: bool) -> Callable[[TrainingJob], int] | None:
    """For next_step: the planner's estimate per GPU of a config (bytes); None when the planner does not apply."""
    shape = _shape(job, on_gpu)
    if shape is None:
        return None
    seq = job.spec.batch.seq_len or DEFAULT_SEQ_LEN
    return lambda candidate: estimate(shape, candidate, seq, target_len=job.spec.batch.target_len).total
