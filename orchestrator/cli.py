"""The `shardctl` command line.

Start-up stays light: every command imports what it needs when it runs, and
nothing here imports torch, accelerate, deepspeed or kubernetes. Nothing here asks which target
a job is for: targets/ and jobs.py answer that.
Exit codes: 0 success, 1 the job or an operation failed, 2 bad input (or an environment to fix
first: no kubeconfig, an unreachable cluster, a refused request); errors are lines, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from orchestrator import __version__
from orchestrator.errors import EXIT_BAD_INPUT, EXIT_FAILED, ShardctlError, located
from orchestrator.targets import NAMES as TARGET_NAMES
from orchestrator.views.textsafe import safe

if TYPE_CHECKING:
    from orchestrator.api.job import Checked
    from orchestrator.intake.snapshot import Progress


_PRINTED: set[str] = set()  # what this command printed to stderr: the API's log repeats none of it


def _err(message: str) -> None:
    """One line of ours on stderr; whatever a job put in it (a failure's evidence, a name) is shown inert."""
    _PRINTED.add(message)
    click.echo(safe(message), err=True)


class _EchoHandler(logging.Handler):
    """The API's log records as plain stderr lines (the stream looked up at each line, as click does)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in _PRINTED:
            _err(message)


def _fail(lines: list[str], code: int = EXIT_BAD_INPUT) -> NoReturn:
    for line in lines:
        _err(line)
    sys.exit(code)


def _load_checked(path: str, target: str | None = None, sets: tuple[str, ...] = (),
                  verbose: bool = False) -> Checked:
    """Parse, apply the --set overrides, validate and run every rule (orchestrator.api.check); exits 2 with
    `FILE:LINE: field: message` lines (or `--set key=value: field: message`) on any error. Warnings and notes
    are printed; advice (a note not about this job) only when verbose, and the spec returned keeps only what
    was printed (submit logs its warnings: advice left out stays out)."""
    from orchestrator.api.job import check

    try:
        checked = _quiet(check(path, list(sets), target), verbose)
    except ShardctlError as exc:
        _fail(exc.lines(), exc.exit_code)
    for line in checked.warnings:
        _err(line)
    return checked


def _advice(checked: Checked) -> list[tuple[tuple[str, str], str]]:
    """The rules' advice on a checked spec: ((field, message), its located line as in checked.warnings)."""
    from orchestrator.compile import rules

    return [((f.field, f.message), checked.locate(f.field, f"{f.level}: {f.message}"))
            for f in rules.check(checked.job) if f.advice]


def _quiet(checked: Checked, verbose: bool) -> Checked:
    """The spec with its advice left out of its warnings, unless verbose."""
    if verbose:
        return checked
    from dataclasses import replace

    hidden = {line for _, line in _advice(checked)}
    return replace(checked, warnings=tuple(w for w in checked.warnings if w not in hidden))


def _sweep_warnings(points: list[Checked], verbose: bool) -> list[Checked]:
    """A sweep's warnings, each printed once: advice only when verbose, and advice every point shares on a
    field no --sweep axis sets is located once for the file and its --set list, not once per point. The points
    come back with no warnings left to log."""
    from dataclasses import replace

    printed: list[str] = []
    shared: dict[tuple[str, str], int] = {}
    for point in points:
        for key, _ in _advice(point):
            shared[key] = shared.get(key, 0) + 1
    for point in points:
        advice = dict(_advice(point))
        by_line = {line: key for key, line in advice.items()}
        base = replace(point, overrides=tuple(o for o in point.overrides if o.flag != "--sweep"))
        for line in point.warnings:
            found = by_line.get(line)
            if found is not None:
                if not verbose:
                    continue
                if shared[found] == len(points) and not any(o.flag == "--sweep" and o.covers(found[0])
                                                            for o in point.overrides):
                    line = base.locate(found[0], f"note: {found[1]}")
            if line not in printed:
                printed.append(line)
    for line in printed:
        _err(line)
    return [replace(p, warnings=()) for p in points]


def summary(loaded: Checked) -> str:
    from orchestrator.compile import rules

    spec = loaded.job.spec
    r = spec.resources
    level = (f"ZeRO-{rules.zero_stage(spec)}" if spec.backend == "deepspeed" else rules.fsdp_strategy(spec))
    offload = "" if spec.offload.optimizer == spec.offload.params == "none" else \
        f", offload optimizer={spec.offload.optimizer} params={spec.offload.params}"
    return (f"{loaded.source}: ok: TrainingJob {loaded.job.metadata.name}: target {spec.target}, {spec.backend} "
            f"{level} ({spec.sharding}), {r.nodes}x{r.gpus_per_node} GPUs, micro {spec.batch.micro} x accum "
            f"{rules.grad_accum(spec)} = global {rules.global_batch(spec)}, mixed {spec.precision.mixed}, "
            f"load {spec.precision.params}{offload}"
            f"{', activation checkpointing' if spec.activation_checkpointing else ''}")


class _Cli(click.Group):
    """Every ShardctlError that reaches here is printed as its lines with its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ShardctlError as exc:
            for line in exc.lines():
                _err(line)
            ctx.exit(exc.exit_code)


def _cluster_options(fn):
    """--kubeconfig/--context: where a job's cluster is reached (ignored by targets without one)."""
    fn = click.option("--context", help="kubeconfig context (default: the current one).")(fn)
    return click.option("--kubeconfig", type=click.Path(dir_okay=False),
                        help="kubeconfig file (default: KUBECONFIG, else ~/.kube/config).")(fn)


def _finite(param: click.Parameter, value: float) -> float:
    """click's FloatRange lets nan through (every comparison with nan is false)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise click.BadParameter("must be a finite number", param=param)
    return value


def _overrides(kubeconfig: str | None, context: str | None) -> dict:
    return {k: v for k, v in (("kubeconfig", kubeconfig), ("context", context)) if v}


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)  # the version is written once: orchestrator/__init__.py
def main() -> None:
    """Declarative large-model training with Accelerate (FSDP or DeepSpeed ZeRO), with automatic OOM fallback."""
    # the API logs its warnings (the spec's, the code snapshot's) for notebook users: printed here as plain
    # lines, each once (a command that already printed a spec's located warnings is not repeated)
    logger = logging.getLogger("shardctl")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.WARNING))
    logger.propagate = False


_SET_HELP = "Override one field: key.path=value (a YAML value, typed and validated like the file); repeatable."


def _set_option(fn):
    """--set key.path=value (orchestrator/api/overrides.py)."""
    return click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help=_SET_HELP)(fn)


def _verbose_option(fn):
    """-v/--verbose: the rules' advice too (notes not about this job: what holds for any model of its kind)."""
    return click.option("-v", "--verbose", is_flag=True,
                        help="Also print advice: notes that hold for any model of this kind, not about this job.")(fn)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@_set_option
@_verbose_option
def validate(job_file: str, sets: tuple[str, ...], verbose: bool) -> None:
    """Check a job spec: exit 0 with a summary, or 2 with every error as FILE:LINE: field: message."""
    click.echo(summary(_load_checked(job_file, sets=sets, verbose=verbose)))


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGET_NAMES), help="Override spec.target.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@_set_option
@_verbose_option
def render(job_file: str, target: str | None, out_dir: str, sets: tuple[str, ...], verbose: bool) -> None:
    """Write exactly what submit would submit (the dry run). Invalid input writes nothing."""
    loaded = _load_checked(job_file, target, sets, verbose)
    out = Path(out_dir).resolve()
    if not str(out).isprintable():  # the path is written into the scripts, on #SBATCH lines among others
        _fail([f"--out {str(out)!r}: a directory name with control characters cannot be written into scripts"])
    dry = render_dryrun(loaded, str(out))
    for w in dry.warnings:
        _err(f"warning: {w}")
    from orchestrator.procfiles import write_files

    try:
        write_files(out, dry.files, executable=("launch.sh", "job.sbatch", "judge.sbatch"))
    except OSError as exc:
        _fail([f"--out {out}: cannot write the files: {exc.strerror or exc}; nothing was written"])
    for name in dry.files:
        click.echo(str(out / name))


def render_dryrun(loaded: Checked, run_dir: str, checks: bool = False, **options):
    """The dry run; with `checks`, after every check a submit runs (`submit --dry-run`), else asking nobody
    (`render`). `options`: dry_run_checked's (kubeconfig, context, progress)."""
    from orchestrator.api.job import dry_run_checked

    progress = options.get("progress")
    try:
        return dry_run_checked(loaded, run_dir, checks=checks, **options)
    except ShardctlError as exc:  # a rule the compiler enforces, or objects the target cannot make
        if progress is not None:
            progress.finish()
        _fail(exc.lines(), exc.exit_code)
    finally:
        if progress is not None:
            progress.finish()


def _store():
    from orchestrator.store.jobstore import open_store  # not the API's: `status` and `list` stay light

    try:
        return open_store()
    except ShardctlError as exc:
        _fail(exc.lines(), exc.exit_code)


def _job(store, ref: str):
    from orchestrator.store.jobstore import StoreError

    try:
        return store.resolve(ref)
    except StoreError as exc:
        _fail([str(exc)])


def _view(store, job, revive: bool = True, overrides: dict | None = None) -> dict:
    """The job as JSON-ready data (orchestrator.api.Job.status); an unfinished job is moved on (or its record
    read back) first, and a target that cannot be asked is a warning before the stored record. The API's
    Job.status without importing the API (and with it pydantic's models)."""
    from orchestrator.views.current import current_view

    return current_view(store, job.id, overrides or {}, _err, revive=revive)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _final_exit(state: str) -> NoReturn:
    sys.exit(0 if state == "succeeded" else EXIT_FAILED)


class _ProgressPrinter:
    """Long work's progress (the code snapshot's listing and copy: intake/snapshot.py Progress, which reports only
    once the work has run about 2 s) on stderr, never stdout (`--json` stays one document), at most once every
    `every_s`: on a terminal one line rewritten in place, else plain lines. `finish` ends a line left open (the
    work failed midway) before anything else is printed."""

    def __init__(self, every_s: float = 1.0, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.clock = clock
        self.last = float("-inf")
        self.open = 0  # the width of the line left open on a terminal (0: none)

    def __call__(self, progress: Progress) -> None:
        now = self.clock()
        if now - self.last < self.every_s and not (progress.done and self.open):
            return  # a terminal's open line is always closed with the final count
        self.last = now
        text = progress.text()
        if not self.terminal:
            click.echo(text, err=True)
            return
        click.echo("\r" + text.ljust(self.open), err=True, nl=progress.done)
        self.open = 0 if progress.done else len(text)

    def finish(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = 0


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGET_NAMES), help="Override spec.target.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends; exit 0 only if it succeeded.")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted (as `render`) and submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (docs/cli-json.md).")
@click.option("--all-lines", is_flag=True, help="With --wait: every log line as plain lines, not just progress "
                                                 "(control characters shown inert; `logs -f` passes them as written).")
@_set_option
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY.PATH=V1,V2,...",
              help="Submit one job per value (repeatable: every combination, a grid), named NAME-<point> and "
                   "labelled with a common group (`shardctl list --group`).")
@_cluster_options
@_verbose_option
def submit(job_file: str, target: str | None, wait: bool, dry_run: bool, as_json: bool, all_lines: bool,
           sets: tuple[str, ...], sweeps: tuple[str, ...], kubeconfig: str | None, context: str | None,
           verbose: bool) -> None:
    """Run a job: its driver watches it, classifies failures and falls back on OOM."""
    from orchestrator.api.job import submit_checked

    if sweeps:
        _submit_sweep(job_file, target, sets, sweeps, wait, dry_run, as_json, _overrides(kubeconfig, context),
                      verbose)
        return
    loaded = _load_checked(job_file, target, sets, verbose)
    overrides = _overrides(kubeconfig, context)
    progress = _ProgressPrinter()
    if dry_run:  # every check a submit runs, then the render: nothing recorded or copied
        dry = render_dryrun(loaded, str(Path("runs") / loaded.job.metadata.name / "attempt-1"), checks=True,
                            progress=progress, **overrides)
        for w in dry.warnings:
            _err(f"warning: {w}")
        click.echo(str(dry))
        return
    store = _store()
    try:
        record = submit_checked(loaded, store=store, progress=progress, **overrides).record()
    except ShardctlError as exc:
        progress.finish()
        _fail(exc.lines(), exc.exit_code)
    progress.finish()
    if record.state == "failed":
        _fail([f"job {record.id}: {record.reason}"], EXIT_FAILED)
    for attempt in store.attempts(record.id)[:1]:
        for w in attempt.warnings:
            _err(f"warning: {w}")
    if not wait:
        if as_json:
            _print_json(_view(store, store.get_job(record.id), revive=False))
        else:
            click.echo(record.id)
        return
    _err(f"submitted job {record.id} ({record.name}); Ctrl-C stops watching, not the job "
         f"(`shardctl cancel {record.id}` stops it)")
    state = _follow(store, record.id, all_lines, overrides)
    if as_json:
        _print_json(_view(store, store.get_job(record.id), revive=False))
    _final_exit(state)


def _submit_sweep(job_file: str, target: str | None, sets: tuple[str, ...], sweeps: tuple[str, ...], wait: bool,
                  dry_run: bool, as_json: bool, cluster: dict, verbose: bool = False) -> None:
    """Every point is checked before the first is submitted; then one job per point, a common group."""
    from orchestrator.api.job import Sweep, plan_sweep, submit_checked

    try:
        group, points, settings = plan_sweep(job_file, list(sweeps), list(sets), target)
    except ShardctlError as exc:
        _fail(exc.lines(), exc.exit_code)
    points = _sweep_warnings(points, verbose)
    progress = _ProgressPrinter()
    if dry_run:
        for i, (checked, values) in enumerate(zip(points, settings, strict=True)):
            render_dryrun(checked, str(Path("runs") / checked.job.metadata.name / "attempt-1"), checks=True,
                          progress=progress, **cluster)  # every check a submit of this point runs
            click.echo(f"point {i}: {checked.job.metadata.name}: "
                       + " ".join(f"{k}={json.dumps(v)}" for k, v in values.items()))
            click.echo(f"  {summary(checked)}")
        return
    store = _store()
    jobs = []
    for checked in points:
        try:
            jobs.append(submit_checked(checked, store=store, progress=progress, **cluster))
        except ShardctlError as exc:
            progress.finish()
            _fail([*exc.lines(), f"{len(jobs)} of {len(points)} points were submitted (group {group}); "
                   f"`shardctl list --group {group}` shows them"], exc.exit_code)
    done = Sweep(group, jobs, settings)
    _err(f"sweep {group}: {len(jobs)} jobs (`shardctl list --group {group}`)")
    if not wait:
        if as_json:
            _print_json([j.status(refresh=False) for j in jobs])
        else:
            for j in jobs:
                click.echo(j.id)
        return
    try:
        for j in jobs:
            state = j.wait()
            _err(f"[shardctl] job {j.id} ({j.name}) {state}")
    except KeyboardInterrupt:
        _err(f"stopped watching; the sweep goes on (`shardctl list --group {group}`)")
        sys.exit(130)
    if as_json:
        _print_json(done.summary())
    else:
        click.echo(_summary_table(done.summary()))
    sys.exit(0 if all(j.state == "succeeded" for j in jobs) else EXIT_FAILED)


def _summary_table(rows: list[dict]) -> str:
    """The sweep summary (POINT ... SET), every cell made safe for a terminal and kept on one line."""
    from orchestrator.api.sweep import summary_text

    def cell(value: object) -> str:
        return safe(str(value), one_line=True)

    return summary_text([{**r, "name": cell(r["name"]), "config": cell(r["config"]),
                          "set": {cell(k): cell(v) for k, v in r["set"].items()}} for r in rows])


def _follow(store, job_id: str, all_lines: bool = False, overrides: dict | None = None) -> str:
    from orchestrator.views.follow import follow_live, follow_plain

    try:
        if sys.stdout.isatty() and not all_lines:
            return follow_live(store, job_id, overrides)
        # --all-lines: every line of the script's, not just progress, but still shown inert (a view of shardctl's,
        # on a terminal too); `logs -f` alone passes them as written
        echo = _echo_inert if all_lines else click.echo
        return follow_plain(store, job_id, echo, everything=all_lines, overrides=overrides)
    except KeyboardInterrupt:
        _err(f"stopped watching; job {job_id} goes on (`shardctl status {job_id}`)")
        sys.exit(130)


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON array (docs/cli-json.md).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--group", help="Only the jobs of one sweep, with its summary: its group label (shardctl.dev/group), or "
                              "the sweep's name for its newest group.")
@_cluster_options
def list_jobs(as_json: bool, limit: int, group: str | None, kubeconfig: str | None, context: str | None) -> None:
    """Jobs in the store, newest first."""
    from orchestrator.views.report import describe_config

    store = _store()
    if group is not None:  # a group label, or a sweep's name: its newest group (said on stderr)
        from orchestrator.api.job import find_group, list_views

        group = find_group(group, store=store, warn=_err)
        views = list_views(limit, group, warn=_err, store=store, **_overrides(kubeconfig, context))
    else:  # the API's list_views without importing the API (and pydantic's models) for jobs at rest
        from orchestrator.views.listing import list_views as newest

        views = newest(store, limit, _err, _overrides(kubeconfig, context))
    if as_json:
        _print_json(views)
        return
    if group is not None:
        from orchestrator.api.job import get_sweep

        if not views:
            _err(f"no job in the group {group!r}")
            return
        click.echo(_summary_table(get_sweep(group, warn=_err, **_overrides(kubeconfig, context)).summary()))
        return
    rows = []
    for v in views:
        last = v["attempts"][-1] if v["attempts"] else None
        rows.append([safe(str(cell), one_line=True) for cell in (
            v["id"], v["name"], v["target"], v["state"], len(v["attempts"]), describe_config(last) if last else "-",
            v["created_at"] or "")])
    if not _is_terminal():
        for line in _plain_rows(_LIST_COLUMNS, rows):
            click.echo(line)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    for row in rows:
        row[-1] = _short_time(row[-1])
    widths = _list_widths(_LIST_COLUMNS, rows, console.width)
    table = Table(box=None, pad_edge=False)
    for col, width in zip(_LIST_COLUMNS, widths, strict=True):
        table.add_column(col, width=width, overflow="fold", no_wrap=col not in ("NAME", "CONFIG"))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


def _is_terminal() -> bool:
    return sys.stdout.isatty()


_LIST_COLUMNS = ("ID", "NAME", "TARGET", "STATE", "ATTEMPTS", "CONFIG", "CREATED")


def _plain_rows(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A table for a pipe: one line a row, whole values, columns two spaces apart (the last one unpadded)."""
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [list(header), *rows]]


def _list_widths(header: tuple[str, ...], rows: list[list[str]], width: int) -> list[int]:
    """Column widths for `list` on a terminal `width` columns wide: every column whole where it fits; else NAME
    and CONFIG share what the others leave: NAME wraps first, down to 8 columns, while CONFIG keeps 20; then
    CONFIG, down to 10 (only a terminal too narrow for those crops the rest)."""
    natural = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    name, config = header.index("NAME"), header.index("CONFIG")
    room = width - 2 * (len(header) - 1) - sum(w for i, w in enumerate(natural) if i not in (name, config))
    if natural[name] + natural[config] <= room:
        return natural
    out = list(natural)
    out[config] = max(min(natural[config], 20), room - natural[name])
    out[name] = max(min(natural[name], 8), room - out[config])
    if out[name] + out[config] > room:
        out[config] = max(min(natural[config], 10), room - out[name])
    return out


def _short_time(iso: str) -> str:
    """`2026-12-06T16:05:31+00:00` as `12-06 16:05` (UTC, as the ISO form); another year keeps its year."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return when.strftime("%m-%d %H:%M" if when.year == datetime.now(UTC).year else "%Y-%m-%d %H:%M")


def _show(job: str, as_json: bool, text: str, overrides: dict) -> None:
    from orchestrator.views import report
    from orchestrator.views.ended import at_rest, ended_view

    store = _store()
    record = _job(store, job)
    try:
        view = ended_view(store, record) if at_rest(record) else _view(store, record, overrides=overrides)
    except (ValueError, TypeError, KeyError) as exc:  # a damaged column (JSON, a spec) of its rows
        _fail([f"job {record.id}: its record in the job store cannot be read ({str(exc).splitlines()[0][:200]})"])
    click.echo(json.dumps(view, indent=2) if as_json else safe(getattr(report, text)(view)))


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (docs/cli-json.md).")
@_cluster_options
def status(job: str, as_json: bool, kubeconfig: str | None, context: str | None) -> None:
    """A job's state, its current attempt and progress (JOB: id, id prefix or name)."""
    _show(job, as_json, "status_text", _overrides(kubeconfig, context))


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the job with every attempt as JSON.")
@_cluster_options
def history(job: str, as_json: bool, kubeconfig: str | None, context: str | None) -> None:
    """Every attempt of a job: its config, why it was started, how it ended."""
    _show(job, as_json, "history_text", _overrides(kubeconfig, context))


@main.command()
@click.argument("job")
@click.option("--attempt", "number", type=int, help="Attempt number (default: the latest).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing, across attempts, until the job ends.")
@_cluster_options
def logs(job: str, number: int | None, follow: bool, kubeconfig: str | None, context: str | None) -> None:
    """An attempt's output (stdout and stderr of every process), as the script wrote it, escape sequences
    included, as `kubectl logs` shows a pod's: every other view of shardctl shows job output inert."""
    overrides = _overrides(kubeconfig, context)
    store = _store()
    record = _job(store, job)
    if follow:
        from orchestrator.views.follow import follow_plain

        _final_exit(follow_plain(store, record.id, _echo_as_written, everything=True, overrides=overrides))
    from orchestrator.views.ended import at_rest

    if not at_rest(record):
        _view(store, record, overrides=overrides)  # brings the record up to date first
    attempts = store.attempts(record.id)
    if not attempts:
        _fail([f"job {record.id} has no attempt yet"], EXIT_FAILED)
    chosen = attempts[-1] if number is None else next((a for a in attempts if a.number == number), None)
    if chosen is None:
        _fail([f"job {record.id} has no attempt {number} (it has {len(attempts)})"])
    if chosen.log_path:  # its output is that file, whatever the target and whether or not the job has ended (none
        from orchestrator.targets.filelog import FileLog  # reads it any other way): read without importing the targets

        lines = FileLog(chosen.log_path).rest()
    else:
        from orchestrator.jobs import ref_of, target_of

        lines = target_of(record, overrides).log_source(ref_of(record, chosen), chosen.external_id).rest()
    if not lines:
        _err(f"attempt {chosen.number} has no output yet" + (f" ({chosen.log_path})" if chosen.log_path else ""))
    for line in lines:
        _echo_as_written(line)


def _echo_inert(text: str) -> None:
    """A line that may hold a job's output (follow_plain's everything=True lines are as written) shown inert."""
    click.echo(safe(text))


def _echo_as_written(line: str) -> None:
    """A line of a job's output on stdout as the script wrote it. click.echo alone drops every CSI sequence
    (colours, cursor moves) where stdout is no terminal: `shardctl logs JOB > run.log` would lose them."""
    click.echo(line, color=True)


@main.command()
@click.argument("job")
@_cluster_options
def cancel(job: str, kubeconfig: str | None, context: str | None) -> None:
    """Stop a job: its running attempt and every process it started; no further attempt starts."""
    from orchestrator.jobs import cancel as do_cancel

    store = _store()
    record = do_cancel(store, _job(store, job), overrides=_overrides(kubeconfig, context))
    click.echo(safe(f"{record.id} {record.state}" + (f": {record.reason}" if record.reason else "")))
    if record.state != "cancelled" and not record.terminal:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--clear", "clear", metavar="NODE", help="Trust NODE again: later attempts may run on it.")
@click.option("--target", type=click.Choice(TARGET_NAMES), help="Only the nodes of this target.")
@click.option("--json", "as_json", is_flag=True, help="Print the suspect nodes as a JSON array.")
def nodes(clear: str | None, target: str | None, as_json: bool) -> None:
    """The site's suspect nodes: where a node fault happened, avoided by every attempt until it expires."""
    from orchestrator.errors import ShardctlError
    from orchestrator.store.nodes import SuspectNodes

    suspects = SuspectNodes(_store().root)
    try:
        if clear is not None:
            if not suspects.clear(clear, target):
                _fail([f"node {clear!r} is not suspect" + (f" on {target}" if target else "")])
            click.echo(safe(f"node {clear} cleared: later attempts may run on it"))
            return
        active = suspects.active(target)
    except ShardctlError as exc:
        _fail(exc.lines(), exc.exit_code)
    if as_json:
        _print_json([s.as_json() for s in active])
        return
    if not active:
        click.echo("no suspect nodes")
        return
    for s in active:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.until))
        by = f" (job {s.job_id}, attempt {s.attempt})" if s.job_id else ""
        click.echo(safe(f"{s.node}  {s.target}  until {until}{by}: {s.why}", one_line=True))


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--to", "to", required=True, type=click.Choice(["fsdp", "deepspeed"]))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
def convert(config_file: str, to: str, out_file: str | None) -> None:
    """Turn an accelerate config into the other backend, listing what has no equivalent."""
    from orchestrator.compile import dump_yaml
    from orchestrator.compile.convert import ConvertError
    from orchestrator.compile.convert import convert as do_convert

    path = Path(config_file)
    config = _read_config(path)
    ds_json = None
    inline = config.get("deepspeed_config") if isinstance(config, dict) else None
    ds_file = inline.get("deepspeed_config_file") if isinstance(inline, dict) else None
    if ds_file:
        if not isinstance(ds_file, str):
            _fail([f"{config_file}: deepspeed_config.deepspeed_config_file must be a file name, "
                   f"not {type(ds_file).__name__} {repr(ds_file)[:60]}"])
        ds_path = Path(ds_file) if Path(ds_file).is_absolute() else path.parent / ds_file
        ds_json = _read_config(ds_path, json_only=True)
    try:
        result = do_convert(config, to, ds_json)
    except ConvertError as exc:
        _fail([f"{config_file}: {exc}"])
    for line in result.lost:
        _err(f"no equivalent: {line}")
    for line in result.notes:
        _err(f"note: {line}")
    text_out = dump_yaml(result.config)
    if out_file:
        files = {Path(out_file).name: text_out}
        if result.ds_config is not None:
            files["ds_config.json"] = json.dumps(result.ds_config, indent=2) + "\n"
        from orchestrator.procfiles import write_files

        try:
            write_files(Path(out_file).resolve().parent, files)
        except (OSError, ValueError) as exc:
            _fail([f"--out {out_file}: cannot write: {getattr(exc, 'strerror', None) or exc}; nothing was written"])
        click.echo(out_file)
    else:
        click.echo(text_out, nl=False)
        if result.ds_config is not None:
            _err("ds_config.json (needed for hybrid; use --out to write it beside the config):")
            _err(json.dumps(result.ds_config, indent=2))


@main.command("import")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--ds-config", type=click.Path(dir_okay=False), help="The DeepSpeed JSON (default: the config's "
              "deepspeed_config_file; or give it alone, without CONFIG_FILE).")
@click.option("--name", default="imported", help="metadata.name of the TrainingJob.")
@click.option("--script", default="train.py", help="entrypoint.script (an accelerate config does not name it).")
@click.option("--model", default="MODEL", help="model.name_or_path.")
@click.option("--nodes", type=click.IntRange(1, 4096), help="Nodes, for a DeepSpeed JSON given alone.")
@click.option("--gpus-per-node", type=click.IntRange(1, 64), help="GPUs per node, for a DeepSpeed JSON given alone.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
def import_(config_file: str | None, ds_config: str | None, out_file: str | None, **options) -> None:
    """An accelerate config (and its DeepSpeed JSON) as a TrainingJob, with what differs after a render listed."""
    from orchestrator.compile.importer import ImportRefused, import_files

    if not config_file and not ds_config:
        _fail(["give an accelerate config, a DeepSpeed JSON (--ds-config), or both"])
    try:
        text = import_files(config_file, ds_config, **options).text()
    except ImportRefused as exc:
        _fail(exc.lines())
    if out_file:
        from orchestrator.procfiles import write_files

        try:
            write_files(Path(out_file).resolve().parent, {Path(out_file).name: text})
        except (OSError, ValueError) as exc:
            _fail([f"--out {out_file}: cannot write: {getattr(exc, 'strerror', None) or exc}; nothing was written"])
        click.echo(out_file)
    else:
        click.echo(text, nl=False)


def _read_config(path: Path, json_only: bool = False):
    """A config file someone gave us, read as untrusted input: a regular file, bounded, YAML through
    the spec's bounded composer (or JSON, bounded the same way); exits 2 with one line otherwise."""
    import yaml

    from orchestrator.spec import SpecError
    from orchestrator.spec.loader import decode_text, load_json, load_yaml, read_input_file, yaml_problem

    try:
        text = decode_text(read_input_file(path), str(path))
    except SpecError as exc:
        _fail([str(p) for p in exc.problems])
    try:
        if json_only or path.suffix == ".json":
            return load_json(text)
        documents = [d for d in load_yaml(text) if d is not None]
    except yaml.YAMLError as exc:
        line, message = yaml_problem(exc, text)
        _fail([located(str(path), line, None, f"not valid YAML: {message}")])
    except ValueError as exc:
        _fail([f"{path}: not valid JSON: {exc}"])
    if len(documents) > 1:
        _fail([f"{path}: expected one YAML document, found {len(documents)}"])
    return documents[0] if documents else None


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--gpu-memory", help="Memory of one GPU with its unit, e.g. 80GiB or 80GB "
                                   "(default: spec.resources.gpu_memory).")
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON (docs/plan-json.md).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False),
              help="Also write the plan as a self-contained HTML page (the chart and the table) to this file.")
@_set_option
@_verbose_option
def plan(job_file: str, gpu_memory: str | None, as_json: bool, html_file: str | None, sets: tuple[str, ...],
         verbose: bool) -> None:
    """What fits on the GPUs, and why: every candidate config with its memory estimate, term by term."""
    from orchestrator.plan.planner import check_gpu_memory_flag
    from orchestrator.plan.planner import plan as make_plan

    if gpu_memory is not None:
        try:
            check_gpu_memory_flag(gpu_memory)
        except ValueError as exc:
            _fail([str(exc)])
    loaded = _load_checked(job_file, sets=sets, verbose=verbose)
    try:
        result = make_plan(loaded.job, gpu_memory)
    except ValueError as exc:
        _fail([f"{loaded.source}: {exc}"])
    if html_file:
        from orchestrator.plan.html import plan_html
        from orchestrator.procfiles import write_files

        path = Path(html_file).resolve()
        page = plan_html(result, loaded.source, model=loaded.job.spec.model.name_or_path,
                         job=loaded.job.metadata.name)
        try:
            write_files(path.parent, {path.name: page})
            os.chmod(path, 0o644)  # a page to share (a pull request, a ticket): readable by all, unlike a job's files
        except (OSError, ValueError) as exc:
            _fail([f"--html {html_file}: cannot write: {getattr(exc, 'strerror', None) or exc}"])
        _err(f"wrote {html_file}")
    if as_json:
        _print_json(result.as_json())
        return
    from rich.console import Console

    from orchestrator.plan.report import render

    render(result, Console(highlight=False))
    if result.chosen is None:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--namespace", help="Watch one namespace (default: all, which needs cluster-wide RBAC).")
@click.option("--server", help="API server URL without authentication (tests, kubectl proxy).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Default: in-cluster, else ~/.kube/config.")
@click.option("--context", help="kubeconfig context.")
@click.option("--leader-election-namespace", help="Hold a Lease here before acting (replicas > 1).")
@click.option("--resync-seconds", type=click.FloatRange(1.0, 86400.0), default=60.0, show_default=True,
              callback=lambda ctx, param, v: _finite(param, v))
@click.option("--workers", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--watch-timeout-seconds", type=click.IntRange(1, 3600), default=60, show_default=True)
@click.option("--lease-seconds", type=click.IntRange(2), default=15, show_default=True,
              help="Leader Lease duration; the leader steps down after 2/3 of it without a renewal.")
@click.option("--health-port", type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="/healthz, /readyz and /metrics on this port; 0: none.")
@click.option("--cache/--no-cache", default=True, hidden=True, help="Read from the watch-fed cache (benchmarks).")
@click.option("--policy", type=click.Path(dir_okay=False),
              help="What TrainingJobs may ask of their pods (YAML: the chart's `policy` values). Default: nothing "
                   "beyond the defaults, and no image.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--dashboard/--no-dashboard", default=False, show_default=True,
              help="Serve the dashboard of the TrainingJobs from the watch-fed cache (sign-in: a Kubernetes token, "
                   "checked with a TokenReview and a SubjectAccessReview).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True,
              help="Address of the dashboard (the chart: 0.0.0.0, for its Service); plain HTTP: reach it through "
                   "kubectl port-forward.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of the dashboard (with --dashboard); 0: any free port.")
@click.option("--dashboard-actions/--no-dashboard-actions", default=False, show_default=True,
              help="Let users who may delete a TrainingJob cancel it from the dashboard; without, it is read-only.")
@click.option("--notifications/--no-notifications", default=False, show_default=True,
              help="Send spec.notify's webhooks, reading their URLs and signing secrets from Secrets in each "
                   "TrainingJob's namespace (the chart grants `get` on Secrets only with notifications.enabled).")
def controller(namespace: str | None, server: str | None, kubeconfig: str | None, context: str | None,
               leader_election_namespace: str | None, resync_seconds: float, workers: int,
               watch_timeout_seconds: int, lease_seconds: int, health_port: int, cache: bool, policy: str | None,
               log_level: str, dashboard: bool, dashboard_host: str, dashboard_port: int,
               dashboard_actions: bool, notifications: bool) -> None:
    """Run the Kubernetes controller: TrainingJobs in, one Indexed Job per attempt, OOM fallback."""
    from orchestrator.controller.main import run

    class ToRoot(logging.Handler):
        to_root = True

        def emit(self, record: logging.LogRecord) -> None:
            logging.getLogger().handle(record)

    # a daemon's log, in the format and level run() gives the root logger: not the commands' plain echo of the
    # "shardctl" logger's warnings (main), which would drop every INFO line (a start, a dashboard's cancel and by whom)
    ctl_log = logging.getLogger("shardctl.controller")
    ctl_log.propagate = False
    if not any(getattr(h, "to_root", False) for h in ctl_log.handlers):
        ctl_log.addHandler(ToRoot())
    serve = None
    if dashboard:
        if not cache:
            _fail(["--dashboard reads the watch-fed cache: it cannot run with --no-cache"])

        def serve(api, cache_of):  # controller.main.Dashboard
            from orchestrator.web.kube_serve import start  # the web stack, imported only with --dashboard

            try:
                return start(api, cache_of, namespace=namespace, lease_namespace=leader_election_namespace,
                             host=dashboard_host, port=dashboard_port, actions=dashboard_actions)[0]
            except OSError as exc:
                _fail([f"--dashboard: cannot listen on {dashboard_host}:{dashboard_port}: {exc.strerror or exc}"],
                      EXIT_FAILED)

    sys.exit(run(namespace=namespace, server=server, kubeconfig=kubeconfig, context=context,
                 leader_election_namespace=leader_election_namespace, resync_s=resync_seconds, workers=workers,
                 log_level=log_level, watch_timeout_s=watch_timeout_seconds, lease_s=lease_seconds,
                 health_port=health_port or None, cache=cache, policy=policy, dashboard=serve,
                 notifications=notifications))


@main.command()
@click.option("--older-than", "older_than", default="14d", show_default=True, metavar="AGE",
              help="Only jobs that ended at least this long ago (30d, 12h, 0) lose attempt files and checkpoints.")
@click.option("--keep-checkpoints", type=click.IntRange(0, 1000), default=1, show_default=True,
              help="Checkpoints kept of each such job: the newest complete one first.")
@click.option("--yes", "remove", is_flag=True, help="Remove it. Without --yes gc only shows what it would remove.")
@click.option("-v", "--verbose", is_flag=True, help="Name every file and directory, not just the totals.")
def gc(older_than: str, keep_checkpoints: int, remove: bool, verbose: bool) -> None:
    """Free space: code snapshots no job needs, and old finished jobs' attempt files and checkpoints. Records, logs
    and function results are kept; nothing a queued or running job uses (on any host) is touched. A dry run unless
    --yes."""
    from orchestrator import retention
    from orchestrator.intake.snapshot import size_text

    try:
        policy = retention.Policy(older_than_s=retention.parse_age(older_than), keep_checkpoints=keep_checkpoints)
    except ValueError:
        _fail([f"--older-than {older_than!r}: give an age such as 14d, 12h, 30m or 0"])
    store = _store()
    found = retention.plan(store, policy)
    for note in found.notes:
        _err(f"note: {note}")
    if verbose:
        for item in found.items:
            click.echo(safe(f"{item.kind.value:14} {size_text(item.bytes):>10}  {item.path}"
                            + (f"  (job {item.job_id})" if item.job_id else ""), one_line=True))
    if not found.items:
        click.echo(f"nothing to remove (jobs that ended over {older_than} ago, snapshots no job needs)")
        return
    click.echo(("removing" if remove else "would remove") + f" {len(found.items)} items, {size_text(found.bytes)}:")
    for kind, (count, size) in sorted(found.by_kind().items()):
        click.echo(f"  {kind.value:14} {count:>6}  {size_text(size):>10}")
    if not remove:
        click.echo("nothing removed (a dry run): `shardctl gc --yes` removes it")
        return
    swept = retention.sweep(store, found, policy)
    for item, why in swept.kept:
        _err(safe(f"kept {item.kind.value} {item.path}: {why}", one_line=True))
    click.echo(f"removed {len(swept.removed)} items, freed {size_text(swept.bytes)}")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the job spec (for editors: # yaml-language-server: $schema=...)."""
    from orchestrator.spec.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; another than loopback reaches other machines (plain HTTP: prefer a tunnel).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
def ui(host: str, port: int) -> None:
    """A dashboard of the job store in the browser: jobs, attempts, loss curves, logs, cancel. Prints its URL with
    an access token (SHARDCTL_UI_TOKEN gives a fixed one); every request needs it."""
    from orchestrator.web.auth import new_token, token_from_env  # the web stack is imported by this command only
    from orchestrator.web.serve import serve
    from orchestrator.web.source import StoreSource

    try:
        token = token_from_env() or new_token()
    except ValueError as exc:
        _fail([str(exc)])
    source = StoreSource(_store())
    try:
        serve(source, host, port, token, say=click.echo, warn=_err)
    except OSError as exc:
        _fail([f"cannot listen on {host}:{port}: {exc.strerror or exc}"], EXIT_FAILED)


if __name__ == "__main__":
    main()
