"""The states of a job and of its attempts, and how an attempt failed: one vocabulary for every target.

The job store (local, Slurm), the TrainingJob status (Kubernetes) and the CLI's JSON all write
these values; the CRD's `phase` is the same job state spelled the Kubernetes way.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class AttemptState(StrEnum):
    STARTING = "starting"  # recorded, not (yet) known to be submitted
    RUNNING = "running"  # submitted: the target has it (it may still be queued there)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED)


class FailureKind(StrEnum):
    """How an attempt failed; a success is not a failure kind."""

    CUDA_OOM = "cuda_oom"
    HOST_OOM = "host_oom"
    PREEMPTED = "preempted"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    USER_ERROR = "user_error"
    REFUSED = "refused"  # the target refused the request (a bad partition, an invalid Job, admission)
    DISK_FULL = "disk_full"  # no space left on a filesystem the run writes (its log, checkpoints, the store)
    HANG = "hang"  # no progress and no output for spec.resilience.hang_after: stopped, its ranks' stacks kept
    NODE_FAULT = "node_fault"  # the hardware under it failed: a GPU Xid, an uncorrectable ECC error, NODE_FAIL
    NETWORK = "network"  # the ranks lost each other: NCCL errors and watchdog timeouts, rendezvous timeouts
    UNKNOWN = "unknown"

    @property
    def is_oom(self) -> bool:
        return self in (FailureKind.CUDA_OOM, FailureKind.HOST_OOM)


class Phase(StrEnum):
    """The job state as the TrainingJob's `status.phase` spells it."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def job_state(self) -> JobState:
        return JobState.QUEUED if self is Phase.PENDING else JobState(self.value.lower())

    @staticmethod
    def of(state: JobState) -> Phase:
        return Phase.PENDING if state is JobState.QUEUED else Phase(state.value.capitalize())
