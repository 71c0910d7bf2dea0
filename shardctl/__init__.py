"""shardctl's Python API: `import shardctl` (the distribution is shardctl; the code lives in the
`orchestrator` package, and this module re-exports its public API, `orchestrator.api.job`).

    import shardctl
    job = shardctl.submit("examples/quickstart.yaml", overrides={"spec.batch.micro": 4})
    job.wait()
    print(job.status()["state"])

See README.md ("From Python") and docs/design.md ("Python API").
"""

from orchestrator import __version__
from orchestrator.api.job import (
    Checked,
    InvalidSpec,
    Job,
    JobFailed,
    Sweep,
    WaitTimeout,
    build,
    check,
    get_job,
    get_sweep,
    list_jobs,
    load,
    submit,
    sweep,
)
from orchestrator.errors import (
    BadInput,
    Conflict,
    FunctionFailed,
    FunctionPickleError,
    OverrideError,
    Refused,
    ShardctlError,
    StoreError,
    SubmitError,
    TargetError,
    Unavailable,
)
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, JobState

__all__ = ["AttemptState", "BadInput", "Checked", "Conflict", "FunctionFailed", "FunctionPickleError", "InvalidSpec",
           "Job", "JobFailed", "JobState", "OverrideError", "Refused", "ShardctlError", "StoreError", "SubmitError",
           "Sweep", "TargetError", "TrainingJob", "Unavailable", "WaitTimeout", "__version__", "build", "check",
           "get_job", "get_sweep", "list_jobs", "load", "submit", "sweep"]
