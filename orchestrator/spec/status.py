"""The TrainingJob status as the Kubernetes controller writes it (the status subresource).

Kubernetes-style camelCase; the CRD's status schema is generated from these models, like the
spec's. On Kubernetes this is the job's record (there is no job store there).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.spec.failure import Failure, schema_names
from orchestrator.spec.states import AttemptState, Phase

schema_names()  # Failure's annotations name pydantic's Field: bound before a model below reads them


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AttemptStatus(_Status):
    number: int = Field(ge=1, description="1 for the first attempt; each fallback adds one.")
    state: AttemptState = Field(description="starting (recorded, its Job not yet known to exist), running, "
                                            "succeeded, failed or cancelled.")
    config: str = Field(description="The attempt's config in one line, e.g. 'deepspeed ZeRO-3, micro 4 x accum 2'.")
    rung: str | None = Field(default=None, description="The fallback rung that produced this attempt.")
    reason: str = Field(default="", description="Why this attempt was started.")
    job_name: str = Field(alias="jobName", description="The batch/v1 Job of this attempt.")
    started_at: str | None = Field(default=None, alias="startedAt", description="When its Job was created (RFC 3339).")
    ended_at: str | None = Field(default=None, alias="endedAt", description="When it was seen to end (RFC 3339).")
    failure: Failure | None = Field(default=None, description="How it ended, once it has.")
    spec: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="The attempt's full TrainingJob (the fallback policy reads every earlier attempt's).")

    @field_validator("failure", mode="before")
    @classmethod
    def _failure(cls, value: Any) -> Failure | None:
        """Failure's one JSON form; a success written by an earlier version (kind 'succeeded') is no failure."""
        return Failure.from_json(value)


class Condition(_Status):
    """metav1.Condition."""

    type: str = Field(description="What the condition is about, e.g. Running, Complete, Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                        description="One CamelCase word for machines, e.g. AttemptRunning, PodsRefused.")
    message: str = Field(default="", description="For people: what happened, in the API's own words where it "
                                                 "has some.")
    last_transition_time: str = Field(alias="lastTransitionTime",
                                      description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, alias="observedGeneration",
                                            description="The metadata.generation the condition was set from.")


class TrainingJobStatus(_Status):
    phase: Phase | None = None
    current_attempt: int | None = Field(default=None, alias="currentAttempt",
                                        description="The newest attempt's number.")
    attempts: list[AttemptStatus] = Field(default_factory=list, description="Every attempt, oldest first.")
    conditions: list[Condition] = Field(default_factory=list, description="The job's conditions (metav1.Condition).")
    observed_generation: int | None = Field(default=None, alias="observedGeneration",
                                            description="The metadata.generation this status was written for.")
    message: str | None = Field(default=None, description="Why the job is in its phase.")
    notified: list[str] = Field(
        default_factory=list,
        description="spec.notify: the notifications the controller is done with (delivered or given up on), "
                    "'<event>-<attempt>.h<webhook index>', so that none is sent twice across restarts.")
