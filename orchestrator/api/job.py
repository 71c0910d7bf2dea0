"""The Python API: what the CLI does, for notebooks and sweep scripts (`import shardctl`).

    job = shardctl.submit("examples/quickstart.yaml", overrides={"spec.batch.micro": 4})
    job.wait(); job.status(); job.history(); job.logs(follow=True); job.cancel()
    shardctl.submit(train_fn, 10, job="job.yaml").result()       # a Python function as the entrypoint
    shardctl.sweep("job.yaml", {"spec.batch.micro": [4, 8]}).wait().summary_text()

It reads and writes the same job store and returns the same JSON-ready records (`report.job_json`,
docs/cli-json.md) as `shardctl status --json`; the CLI is a thin layer of printing over it. Errors
are the ShardctlError family (a few lines; `exit_code` says what the CLI would exit with), never
sys.exit. Nothing here imports torch, accelerate or submitit until a function is submitted.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.api.overrides import Override, OverrideError, apply_loaded, as_overrides, locate
from orchestrator.errors import (
    BadInput,
    FunctionFailed,
    InvalidSpec,
    JobFailed,
    Located,
    ShardctlError,
    StoreError,
    TargetError,
    WaitTimeout,
    located,
)
from orchestrator.spec.loader import LoadedSpec, SpecError, friendly_message, loc_to_path
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import JobState

if TYPE_CHECKING:
    from orchestrator.api.sweep import Axis
    from orchestrator.intake.snapshot import ProgressFn
    from orchestrator.jobs import Ready
    from orchestrator.store.jobstore import JobRecord, Store
    from orchestrator.targets.base import DryRun

__all__ = ["Checked", "InvalidSpec", "Job", "JobFailed", "ShardctlError", "Sweep", "WaitTimeout", "build", "check",
           "get_job", "get_sweep", "list_jobs", "load", "submit", "sweep"]

log = logging.getLogger("shardctl")
SpecSource = str | Path | Mapping[str, Any] | TrainingJob
Overrides = Mapping[str, Any] | Iterable[str | Override] | None


# --- specs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A spec that passed the schema and every rule, with where it came from (for locating findings)."""

    loaded: LoadedSpec
    overrides: tuple[Override, ...] = ()
    warnings: tuple[str, ...] = ()  # located warning lines of the rules

    @property
    def job(self) -> TrainingJob:
        return self.loaded.job

    @property
    def source(self) -> str:
        return self.loaded.source

    def locate(self, finding_field: str | None, message: str) -> str:
        return locate(self.loaded, self.overrides, finding_field, message)


def _spec_source(source: Any, what: str) -> None:
    """BadInput unless `source` is a spec: a file (str or Path), a mapping or a TrainingJob."""
    if not isinstance(source, str | Path | Mapping | TrainingJob):
        raise BadInput(f"{what}: not {type(source).__name__} {_shown(source)}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(value: Any, what: str) -> float | None:
    """A number of seconds from the caller (None: no limit); BadInput for anything but a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise BadInput(f"{what}: a number of seconds (0 or more) or None, not {type(value).__name__} "
                       f"{_shown(value)}")
    return float(value)


def _loaded(source: SpecSource) -> LoadedSpec:
    _spec_source(source, "the spec is a file path, a dict or a TrainingJob")
    if isinstance(source, TrainingJob):
        return LoadedSpec(job=source, source="<python>", lines={})
    if isinstance(source, Mapping):
        from pydantic import ValidationError

        try:
            return LoadedSpec(job=TrainingJob.model_validate(dict(source)), source="<python>", lines={})
        except ValidationError as exc:
            raise InvalidSpec(list(dict.fromkeys(
                f"<python>: {loc_to_path(e['loc']) or 'spec'}: {friendly_message(e)}" for e in exc.errors()))) from None
    from orchestrator.spec import load_spec

    try:
        return load_spec(source)
    except SpecError as exc:
        raise InvalidSpec([str(p) for p in exc.problems] + _partial_rule_errors(exc.partial)) from None


def _partial_rule_errors(partial: LoadedSpec | None) -> list[str]:
    """The cross-field rules' errors on a spec whose invalid fields were taken out, so that one round
    reports both kinds; none when a rule would have read an invalid field (its verdict means nothing)."""
    if partial is None:
        return []
    from orchestrator.compile import rules

    try:
        return [located(partial.source, partial.line_of(f.field), f.field, f.message)
                for f in rules.errors(rules.check(partial.job))]
    except Exception:  # InvalidFieldRead, or anything else a half-valid spec provokes: report what we have
        return []


def check(source: SpecSource, overrides: Overrides = None, target: str | None = None) -> Checked:
    """Read (a file, a dict or a TrainingJob), apply overrides and a target, validate, run every rule.
    Raises InvalidSpec or OverrideError; warnings are returned, located."""
    from orchestrator.compile import rules

    given = tuple(as_overrides(overrides))
    loaded = apply_loaded(_loaded(source), given)
    if target is not None and target != loaded.job.spec.target:
        from orchestrator.targets import NAMES, UnknownTarget

        if target not in NAMES:
            raise UnknownTarget(f"target {target!r}: one of {', '.join(NAMES)}")
        loaded = LoadedSpec(job=loaded.job.with_spec(target=target), source=loaded.source, lines=loaded.lines)
    checked = Checked(loaded, given)
    findings = rules.check(loaded.job)
    errors = rules.errors(findings)
    if errors:
        raise InvalidSpec(located_findings(checked, errors))
    return Checked(loaded, given, tuple(checked.locate(f.field, f"{f.level}: {f.message}") for f in findings))


def located_findings(checked: Checked, findings: Iterable[Located]) -> list[str]:
    return [checked.locate(f.field, f.message) for f in findings]


def load(source: SpecSource, overrides: Overrides = None, target: str | None = None) -> TrainingJob:
    """A checked TrainingJob from a file, a dict or a TrainingJob, with overrides applied."""
    return check(source, overrides, target).job


def build(data: Mapping[str, Any]) -> TrainingJob:
    """A TrainingJob from Python data (the YAML's shape), checked like a file."""
    return load(data)


def dry_run_checked(checked: Checked, run_dir: str, *, checks: bool = True, workdir: str | None = None,
                    kubeconfig: str | None = None, context: str | None = None,
                    progress: ProgressFn | None = None) -> DryRun:
    """Exactly what attempt 1 would submit (the dry run), after every check a submit runs (submit_checks: with
    the same errors, nothing recorded or copied); raises InvalidSpec when it cannot compile. checks=False: the
    render alone, asking nobody (`shardctl render`)."""
    import os

    from orchestrator.compile import CompileError
    from orchestrator.jobs import checkpoint_dir, dry_run

    if checks:
        submit_checks(checked, workdir=workdir, kubeconfig=kubeconfig, context=context, progress=progress)
    job = checked.job
    # with spec.workdir the run's directory is the code snapshot submit makes (named by its digest); a
    # relative checkpoint.dir still resolves against the directory submit runs from, never inside the copy
    workdir = "<state-dir>/snapshots/<digest>/code" if job.spec.workdir else os.getcwd()
    ckpt = checkpoint_dir(job, os.getcwd()) if job.spec.checkpoint.dir else f"{run_dir}/checkpoints"
    try:
        return dry_run(job, workdir, run_dir=run_dir, checkpoint=ckpt)
    except CompileError as exc:
        raise InvalidSpec(located_findings(checked, exc.findings)) from None
    except ShardctlError as exc:  # the spec cannot become the target's objects (a name too long, say)
        raise InvalidSpec([f"{checked.source}: {line}" for line in exc.lines()]) from None


# --- the job store -------------------------------------------------------------------------------------


def open_store() -> Store:
    """The job store ($SHARDCTL_HOME, else the XDG state directory); StoreError when it cannot be opened."""
    from orchestrator.store.jobstore import open_store as opened

    return opened()


def _cluster(kubeconfig: str | None, context: str | None) -> dict[str, str]:
    return {k: v for k, v in (("kubeconfig", kubeconfig), ("context", context)) if v}


class Job:
    """A submitted job: its record in the store, read fresh on every call. Moving an unfinished job on
    (restarting a supervisor that died, making a judge's moves, mirroring a controller) happens on
    `status()`, `wait()` and `logs(follow=True)`, as with the CLI."""

    def __init__(self, job_id: str, *, store: Store | None = None, kubeconfig: str | None = None,
                 context: str | None = None, on_note: Callable[[str], None] | None = None) -> None:
        self.store = store or open_store()
        self.id = job_id
        self.cluster = _cluster(kubeconfig, context)
        self.on_note = on_note or log.info

    def __repr__(self) -> str:
        try:
            record = self.record()
            return f"<shardctl.Job {record.id} {record.name} {record.target} {record.state}>"
        except ShardctlError:
            return f"<shardctl.Job {self.id}>"

    def record(self) -> JobRecord:
        return self.store.get_job(self.id)

    @property
    def name(self) -> str:
        return self.record().name

    @property
    def state(self) -> JobState:
        """The state as recorded (no refresh: see status())."""
        return self.record().state

    def refresh(self) -> None:
        """Move an unfinished job on, or read its record back from its target; a target that cannot be
        asked is a note (the stored record stands), as with the CLI."""
        from orchestrator.views.current import refresh

        refresh(self.store, self.id, self.cluster, self.on_note)

    def status(self, refresh: bool = True) -> dict[str, Any]:
        """The job with every attempt: exactly `shardctl status --json` (docs/cli-json.md)."""
        from orchestrator.views.current import current_view

        return current_view(self.store, self.id, self.cluster, self.on_note, revive=refresh)

    def history(self) -> list[dict[str, Any]]:
        """Every attempt: its config, why it was started, how it ended (the `attempts` of status())."""
        return self.status()["attempts"]

    def wait(self, timeout: float | None = None, poll_s: float | None = None) -> JobState:
        """Block until the job ends; its final state. WaitTimeout after `timeout` seconds (the job goes on)."""
        from orchestrator.jobs import driver_of, target_of

        timeout = _seconds(timeout, "wait(timeout=...)")
        poll_s = _seconds(poll_s, "wait(poll_s=...)")
        record = self.record()
        driver = driver_of(target_of(record, self.cluster))
        every = poll_s if poll_s is not None else min(driver.catch_up_every_s, 2.0)
        deadline = None if timeout is None else time.monotonic() + timeout
        last_refresh = float("-inf")
        while not record.terminal:
            if time.monotonic() - last_refresh >= driver.catch_up_every_s:
                self.refresh()
                last_refresh = time.monotonic()
            record = self.record()
            if record.terminal:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {record.id} ({record.name}) is still {record.state} after {timeout} s")
            time.sleep(every)
        return record.state

    def logs(self, attempt: int | None = None, follow: bool = False) -> Iterator[str]:
        """An attempt's output lines (default: the latest); follow=True yields every attempt's lines as they
        come, `[shardctl] ...` event lines between them, until the job ends (as `shardctl logs -f`)."""
        if follow:
            from orchestrator.views.follow import Line, Note, events

            for event in events(self.store, self.id, overrides=self.cluster):
                if isinstance(event, Note):
                    yield f"[shardctl] {event.text}"
                elif isinstance(event, Line):
                    yield event.text  # a Tick is no line
            return
        from orchestrator.jobs import ref_of, target_of

        self.refresh()
        record = self.record()
        attempts = self.store.attempts(record.id)
        if not attempts:
            return
        chosen = attempts[-1] if attempt is None else next((a for a in attempts if a.number == attempt), None)
        if chosen is None:
            raise StoreError(f"job {record.id} has no attempt {attempt} (it has {len(attempts)})")
        yield from target_of(record, self.cluster).log_source(ref_of(record, chosen), chosen.external_id).rest()

    def cancel(self, wait_s: float = 60.0) -> JobState:
        """Stop the job and every process it started; no further attempt starts. The state it ended in."""
        from orchestrator.jobs import cancel

        return cancel(self.store, self.record(), wait_s=wait_s, overrides=self.cluster).state

    def _outcome(self) -> tuple[str, Any] | None:
        """The final attempt's outcome, as its job's driver reads it: from its run directory, or, for a job run by
        a cluster's controller, from the marked lines of its rank-0 pod's log (unpickled: as trusted as the
        function itself)."""
        from orchestrator.jobs import driver_of, target_of

        attempts = self.store.attempts(self.id)
        if not attempts:
            return None
        record = self.record()
        target = target_of(record, self.cluster)
        return driver_of(target).outcome(target, record, attempts[-1])

    def result(self, timeout: float | None = None) -> Any:
        """Rank 0's return value of the submitted function (waits for the end first). Raises FunctionFailed
        with the function's traceback, or JobFailed when the job ended without a result."""
        state = self.wait(timeout)
        outcome = self._outcome()
        if outcome is not None and outcome[0] == "error":
            raise FunctionFailed(f"job {self.id}: the function raised on {outcome[1]}")
        if state is JobState.SUCCEEDED and outcome is None:
            raise JobFailed(f"job {self.id} {state}, but the function exited without returning a value (os._exit or "
                            "a signal): no result was written")
        if state is not JobState.SUCCEEDED or outcome is None:
            reason = self.record().reason
            raise JobFailed(f"job {self.id} {state}" + (f": {reason}" if reason else "")
                            + ("" if outcome else " (no result was written)"))
        return outcome[1]

    def exception(self, timeout: float | None = None) -> ShardctlError | None:
        """None when the function returned; else the error result() would raise (its traceback included)."""
        try:
            self.result(timeout)
        except (WaitTimeout, BadInput):  # no verdict on the function: waiting ran out, or the call was wrong
            raise
        except ShardctlError as exc:
            return exc
        return None


def get_job(ref: str, **cluster: str | None) -> Job:
    """A recorded job by id, unique id prefix or name (its newest job)."""
    store = open_store()
    return Job(store.resolve(ref).id, store=store, **cluster)  # type: ignore[arg-type]


# --- submitting ----------------------------------------------------------------------------------------


def _function_job(checked: Checked) -> TrainingJob:
    """The job with the function's runner as its entrypoint (its environment kept)."""
    from orchestrator.entry import MODULE_SCRIPT

    job = checked.job
    entry = job.spec.entrypoint.model_copy(update={"script": MODULE_SCRIPT, "args": [], "function": True})
    return job.with_spec(entrypoint=entry)


def submit(what: SpecSource | Callable[..., Any], *args: Any, job: SpecSource | None = None,
           target: str | None = None, overrides: Overrides = None, kubeconfig: str | None = None,
           context: str | None = None, workdir: str | None = None, **kwargs: Any) -> Job:
    """Submit a job spec (a file, a dict, a TrainingJob), or a Python function with its arguments:
    `submit(train_fn, *args, job="job.yaml", **kwargs)` runs train_fn(*args, **kwargs) under accelerate
    launch on every rank of `job` (its entrypoint is replaced); `Job.result()` is rank 0's return value.
    The keywords job, target, overrides, kubeconfig, context and workdir are this function's, not train_fn's.
    Raises InvalidSpec, OverrideError, TargetError (the target refused: nothing was submitted)."""
    if callable(what) and not isinstance(what, str | Path | Mapping | TrainingJob):
        if job is None:
            raise BadInput("submit(fn, ...): job= is required: the TrainingJob (file, dict or TrainingJob) "
                                "whose resources and backend the function runs with")
        from orchestrator.entry import FUNCTION_FILE, pickle_call

        checked = check(job, overrides, target)
        call = pickle_call(what, args, kwargs)
        loaded = checked.loaded
        checked = Checked(LoadedSpec(job=_function_job(checked), source=loaded.source, lines=loaded.lines),
                          checked.overrides, checked.warnings)
        return submit_checked(checked, kubeconfig=kubeconfig, context=context, workdir=workdir,
                              job_files={FUNCTION_FILE: call})
    _spec_source(what, "submit(what, ...): what is a spec (a file path, a dict or a TrainingJob) or a function")
    if job is not None or args or kwargs:
        raise BadInput("submit(spec, ...): positional arguments, job= and other keywords are for a function "
                            "entrypoint (submit(fn, *args, job=spec))")
    return submit_checked(check(what, overrides, target), kubeconfig=kubeconfig, context=context, workdir=workdir)


@contextmanager
def _as_submit_refusal(checked: Checked) -> Iterator[None]:
    """The errors of a submit's checks as the lines a submit (and its dry run, the same) shows: located findings,
    or the target's refusal naming the file."""
    from orchestrator.compile import CompileError

    try:
        yield
    except CompileError as exc:
        raise InvalidSpec(located_findings(checked, exc.findings)) from None
    except TargetError as exc:
        raise type(exc)("\n".join([f"{checked.source}: {checked.job.spec.target} refused the job, nothing was "
                                   "submitted:"] + [f"  {line}" for line in exc.lines()])) from None
    except (OverrideError, InvalidSpec):
        raise
    except ShardctlError as exc:
        raise InvalidSpec([f"{checked.source}: {line}" for line in exc.lines()]) from None


def _source_path(checked: Checked) -> str:
    return checked.source if checked.source.startswith("<") else str(Path(checked.source).resolve())


def submit_checks(checked: Checked, *, workdir: str | None = None, kubeconfig: str | None = None,
                  context: str | None = None, progress: ProgressFn | None = None) -> Ready:
    """Every check submit_checked runs before it records anything (jobs.submit_checks: the code snapshot listed
    and checked but not copied, env_from sources, node-local paths, the target's preflight), with its errors;
    nothing is recorded or copied, and the job store is not even created."""
    from orchestrator.jobs import submit_checks as run_checks
    from orchestrator.store.paths import state_dir

    with _as_submit_refusal(checked):
        ready = run_checks(state_dir(), checked.job, source=_source_path(checked), workdir=workdir,
                           overrides=_cluster(kubeconfig, context), progress=progress)
    return ready


def submit_checked(checked: Checked, *, kubeconfig: str | None = None, context: str | None = None,
                   workdir: str | None = None, job_files: Mapping[str, bytes] | None = None,
                   store: Store | None = None, progress: ProgressFn | None = None) -> Job:
    """Submit a checked spec (what the CLI calls). A refusal by the target is a TargetError naming the
    file; nothing is recorded then. `progress` hears about a long listing or copy of spec.workdir (Progress in
    intake/snapshot.py)."""
    from orchestrator.jobs import record_and_start

    for line in checked.warnings:
        log.warning(line)
    store = store or open_store()
    with _as_submit_refusal(checked):
        record = record_and_start(store, checked.job, source=_source_path(checked), workdir=workdir,
                                  overrides=_cluster(kubeconfig, context), job_files=job_files, progress=progress)
    return Job(record.id, store=store, kubeconfig=kubeconfig, context=context)


# --- listing -------------------------------------------------------------------------------------------


def list_views(limit: int | None = 50, group: str | None = None, *, kubeconfig: str | None = None,
               context: str | None = None, warn: Callable[[str], None] | None = None,
               store: Store | None = None) -> list[dict[str, Any]]:
    """The jobs as `shardctl list --json` shows them, newest first, brought up to date (one batched query
    per target). A damaged row is reported through `warn` and skipped."""
    from orchestrator.views.listing import list_views as views_of

    return views_of(store or open_store(), limit, warn or log.warning, _cluster(kubeconfig, context), group=group)


def list_jobs(group: str | None = None, limit: int | None = 50, *, kubeconfig: str | None = None,
              context: str | None = None) -> list[Job]:
    """Recorded jobs, newest first; `group`: only the points of one sweep (its label, or the sweep's name:
    its newest group)."""
    store = open_store()
    if group is not None:
        group = find_group(group, store=store)
    return [Job(v["id"], store=store, kubeconfig=kubeconfig, context=context)
            for v in list_views(limit, group, kubeconfig=kubeconfig, context=context, store=store)]


# --- sweeps --------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """The jobs of one sweep, one per point of the grid, in point order."""

    group: str
    jobs: list[Job]
    settings: list[dict[str, Any]] = field(default_factory=list)  # each point's swept values

    def wait(self, timeout: float | None = None) -> Sweep:
        timeout = _seconds(timeout, "wait(timeout=...)")
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self.jobs:
            job.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self

    def states(self) -> list[JobState]:
        return [j.state for j in self.jobs]

    def summary(self) -> list[dict[str, Any]]:
        """One row per point: point, id, name, state, set (its values), attempts, config (the final one),
        steps_per_s."""
        from orchestrator.api.sweep import point_of, summary_rows

        return summary_rows([j.status() for j in self.jobs], self.settings,
                            [point_of(j.record().spec) for j in self.jobs])

    def summary_text(self) -> str:
        from orchestrator.api.sweep import summary_text

        return summary_text(self.summary())

    def cancel(self) -> list[JobState]:
        return [j.cancel() for j in self.jobs]


def find_group(group: str, *, store: Store | None = None, warn: Callable[[str], None] | None = None) -> str:
    """The group label that `group` names: itself where a job carries it, else the newest group that a sweep
    of the name `group` made (`quickstart` -> `quickstart-3fa2c1`), said through `warn`; else `group` as
    given (which then has no job)."""
    from orchestrator.api.sweep import is_group_of

    store = store or open_store()
    found: list[str] = []
    for label in store.groups():  # newest first, from the store's index
        if label == group:
            return group
        if is_group_of(label, group) and label not in found:
            found.append(label)
    if not found:
        return group
    others = f" (the newest of {len(found)} sweeps of that name)" if len(found) > 1 else ""
    (warn or log.warning)(f"group {group!r}: showing {found[0]}{others}; `--group {found[0]}` names it exactly")
    return found[0]


def get_sweep(group: str, *, kubeconfig: str | None = None, context: str | None = None,
              warn: Callable[[str], None] | None = None) -> Sweep:
    """The jobs of a sweep submitted earlier, by its group label or the sweep's name (its newest group), in
    point order, each with its values as the fields in which the points' specs differ."""
    from orchestrator.api.sweep import point_of, settings_of

    store = open_store()
    group = find_group(group, store=store, warn=warn)
    jobs = [Job(v["id"], store=store, kubeconfig=kubeconfig, context=context)
            for v in list_views(None, group, kubeconfig=kubeconfig, context=context, warn=warn, store=store)]
    if not jobs:
        raise StoreError(f"no job in the group {group!r} in {store.path}")
    jobs.sort(key=lambda j: (point_of(j.record().spec) or 0, j.record().created_at))
    return Sweep(group, jobs, settings_of([j.record().spec for j in jobs]))


def plan_sweep(source: SpecSource, axes: Mapping[str, Sequence[Any]] | Sequence[str | Axis],
               overrides: Overrides = None, target: str | None = None,
               group: str | None = None) -> tuple[str, list[Checked], list[dict[str, Any]]]:
    """Every point checked before anything is submitted: (group, checked specs, each point's values)."""
    from orchestrator.api.sweep import axes_of, new_group, point_overrides, points, refuse_duplicates

    given = as_overrides(overrides)
    swept = axes_of(axes)  # an empty grid is refused before the file is read
    base = check(source, given, target)
    refuse_duplicates(base.job, swept)
    grid = points(swept)
    name = base.job.metadata.name
    group = group or new_group(name)
    checked, settings = [], []
    shared_dir = base.job.spec.checkpoint.dir
    for i, point in enumerate(grid):  # the file is read again per point: an error names the file's line
        own = point_overrides(name, base.job.metadata.labels, group, i)
        if shared_dir and not any(o.key.startswith("spec.checkpoint") for o in point):
            # points must never resume from each other's checkpoints: each gets its own directory under it
            path = f"{shared_dir.rstrip('/')}/{own[0].value}"
            own.append(Override("spec.checkpoint.dir", path, f"spec.checkpoint.dir={path}", "--sweep", internal=True))
        checked.append(check(source, [*given, *point, *own], target))
        settings.append({o.key: o.value for o in point})
    return group, checked, settings


def sweep(source: SpecSource, axes: Mapping[str, Sequence[Any]] | Sequence[str | Axis], *,
          overrides: Overrides = None, target: str | None = None, group: str | None = None,
          kubeconfig: str | None = None, context: str | None = None) -> Sweep:
    """One job per point of the grid (`{"spec.batch.micro": [4, 8], "spec.sharding": ["grad_op", "full"]}`:
    4 jobs), named `<name>-<i>` and labelled with a common group. Every point is checked first; a bad point
    submits nothing. A point the target refuses stops the sweep there (the points before it run on)."""
    group, checked, settings = plan_sweep(source, axes, overrides, target, group)
    store = open_store()
    jobs = [submit_checked(c, kubeconfig=kubeconfig, context=context, store=store) for c in checked]
    return Sweep(group, jobs, settings)
