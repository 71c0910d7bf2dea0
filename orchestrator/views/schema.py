"""The JSON Schema of `--json` (docs/cli-json.schema.json), generated from these models.

views/report.py builds the views as plain dicts (fast, no validation on the hot path of `--wait`); the
tests validate the views of every target against this one schema, so a target can never grow a
shape of its own. Additional fields are allowed: within `format` 1 fields may be added.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.spec.states import AttemptState, FailureKind, JobState


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FailureJson(_Open):
    kind: FailureKind
    reason: str | None
    evidence: str | None
    node: str | None = None  # the node it points at (a node fault's)
    rule: int | None = None  # the index in spec.resilience.rules of the rule that matched it


class OffloadJson(_Open):
    optimizer: Literal["none", "cpu", "nvme"]
    params: Literal["none", "cpu", "nvme"]


class ProgressJson(_Open):
    """docs/progress.md: what the end of the attempt's log says."""

    step: int | None
    total: int | None
    loss: float | None
    epoch: float | None
    steps_per_s: float | None
    elapsed_s: float | None
    eta_s: float | None
    rate_from: Literal["log", "attempt", "watch"] | None
    format: Literal["shardctl", "tqdm", "step", "trainer"]


class AttemptJson(_Open):
    number: int
    state: AttemptState
    reason: str
    rung: str | None
    backend: Literal["fsdp", "deepspeed"]
    sharding: str
    zero_stage: int | None
    fsdp_strategy: str | None
    offload: OffloadJson
    micro_batch: int
    grad_accum: int
    global_batch: int
    activation_checkpointing: bool
    resume_from: str | None
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    exit_code: int | None
    signal: int | None
    failure: FailureJson | None
    peak_memory_bytes: int | None
    preemptions: int = Field(ge=0, description="Times the target restarted the attempt in place (Slurm requeued "
                             "it after a preemption or `scontrol requeue`); it resumed from its checkpoint each time.")
    warnings: list[str]
    supervisor_error: str | None = Field(
        default=None, description="Why the attempt's supervisor stopped without making its move (a Slurm judge job "
        "that could not submit the next attempt, say), in its own words; the next shardctl command that reads the "
        "job carries on from there.")
    target_state: str | None = Field(
        default=None, description="What the target last said of the attempt while it is open, when that says more "
        "than its state: why Slurm keeps it pending (a QOS or account limit, resources), that it was requeued, that "
        "no judge job follows it. Null once it ended.")
    stalled: str | None = Field(
        default=None, description="What the target said the first time it saw the attempt wait on something a "
        "person must fix (a Slurm pending reason such as ReqNodeNotAvail or PartitionDown, a held job): kept after "
        "the attempt moves on. Null when it never stalled.")
    stalled_at: str | None = Field(default=None, description="When the stall was first seen (ISO 8601).")
    run_dir: str | None
    log: str | None
    external_id: str | None
    job_name: str | None
    progress: ProgressJson | None


class CodeJson(_Open):
    """The snapshot of spec.workdir that every attempt of the job runs (orchestrator/intake/snapshot.py)."""

    digest: str
    path: str
    files: int
    bytes: int
    source: str


class JobJson(_Open):
    format: Literal[1]
    id: str
    name: str
    target: str
    state: JobState
    reason: str | None
    source: str | None
    created_at: str | None
    finished_at: str | None
    checkpoint_dir: str | None
    code: CodeJson | None
    max_attempts: int | None
    supervised: bool | None
    namespace: str | None
    attempts: list[AttemptJson]


def schema() -> dict:
    out = JobJson.model_json_schema()
    out["title"] = "shardctl job (status, history, submit --json; list --json is an array of these)"
    return out


if __name__ == "__main__":
    print(json.dumps(schema(), indent=2))
