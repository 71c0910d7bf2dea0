"""shardctl's Python API: `import shardctl` (the distribution is shardctl; the code lives in the
`orchestrator` package, and this module re-exports its public API, `orchestrator.api`).

    import shardctl
    job = shardctl.submit("examples/quickstart.yaml", overrides={"spec.batch.micro": 4})
    job.wait()
    print(job.status()["state"])

See README.md ("From Python") and docs/design.md ("Python API").
"""

from orchestrator import __version__
from orchestrator.api import (
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
from orchestrator.entry import FunctionFailed, FunctionPickleError
from orchestrator.errors import ShardctlError, StoreError, SubmitError, TargetError
from orchestrator.overrides import OverrideError
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, JobState

__all__ = ["AttemptState", "Checked", "FunctionFailed", "FunctionPickleError", "InvalidSpec", "Job", "JobFailed",
           "JobState", "OverrideError", "ShardctlError", "StoreError", "SubmitError", "Sweep", "TargetError",
           "TrainingJob", "WaitTimeout", "__version__", "build", "check", "get_job", "get_sweep", "list_jobs", "load",
           "submit", "sweep"]
