"""The `shardctl` command line.

Start-up stays light: every command imports what it needs when it runs, and
nothing here imports torch, accelerate, deepspeed or kubernetes. Nothing here asks which target
a job is for: targets/ and jobs.py answer that.
Exit codes: 0 success, 1 the job or an operation failed, 2 bad input (or an environment to fix
first: no kubeconfig, an unreachable cluster, a refused request); errors are lines, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from orchestrator import __version__
from orchestrator.errors import EXIT_BAD_INPUT, EXIT_FAILED, ShardctlError, located
from orchestrator.targets import NAMES as TARGET_NAMES

if TYPE_CHECKING:
    from orchestrator.spec import LoadedSpec


def _err(message: str) -> None:
    click.echo(message, err=True)


def _fail(lines: list[str], code: int = EXIT_BAD_INPUT) -> NoReturn:
    for line in lines:
        _err(line)
    sys.exit(code)


def _load_checked(path: str, target: str | None = None) -> tuple[LoadedSpec, list]:
    """Parse, validate and run every rule; exits 2 with `FILE:LINE: field: message` lines on any error."""
    from orchestrator.compile import rules
    from orchestrator.spec import SpecError, load_spec

    try:
        loaded = load_spec(path)
    except SpecError as exc:
        _fail([str(p) for p in exc.problems] + _partial_rule_errors(exc.partial))
    job = loaded.job
    if target is not None and target != job.spec.target:
        job = job.with_spec(target=target)
        loaded = type(loaded)(job=job, source=loaded.source, lines=loaded.lines)
    findings = rules.check(job)
    errors = rules.errors(findings)
    if errors:
        _fail(_locate(loaded, errors))
    for f in findings:
        _err(located(loaded.source, loaded.line_of(f.field), f.field, f"{f.level}: {f.message}"))
    return loaded, findings


def _partial_rule_errors(partial: LoadedSpec | None) -> list[str]:
    """The cross-field rules' errors on a spec whose invalid fields were taken out, so that one round
    reports both kinds; none when a rule would have read an invalid field (its verdict means nothing)."""
    if partial is None:
        return []
    from orchestrator.compile import rules

    try:
        return _locate(partial, rules.errors(rules.check(partial.job)))
    except Exception:  # InvalidFieldRead, or anything else a half-valid spec provokes: report what we have
        return []


def _locate(loaded: LoadedSpec, findings) -> list[str]:
    """Rule findings (from validate or from the compiler) as `FILE:LINE: field: message` lines."""
    return [located(loaded.source, loaded.line_of(f.field), f.field, f.message) for f in findings]


def summary(loaded: LoadedSpec) -> str:
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
        except Exception as exc:
            sqlite3 = sys.modules.get("sqlite3")  # imported only by the commands that open the store
            if sqlite3 is None or not isinstance(exc, sqlite3.Error):
                raise
            from orchestrator.paths import state_dir

            _err(f"the job store in {state_dir()} cannot be read or written: {exc} (a read-only or damaged "
                 "shardctl.db; set SHARDCTL_HOME to a writable directory)")
            ctx.exit(EXIT_FAILED)


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


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
def validate(job_file: str) -> None:
    """Check a job spec: exit 0 with a summary, or 2 with every error as FILE:LINE: field: message."""
    loaded, _ = _load_checked(job_file)
    click.echo(summary(loaded))


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGET_NAMES), help="Override spec.target.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
def render(job_file: str, target: str | None, out_dir: str) -> None:
    """Write exactly what submit would submit (the dry run). Invalid input writes nothing."""
    loaded, _ = _load_checked(job_file, target)
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


def render_dryrun(loaded: LoadedSpec, run_dir: str):
    from orchestrator.compile import CompileError
    from orchestrator.jobs import dry_run

    job = loaded.job
    checkpoint = None if job.spec.checkpoint.dir else f"{run_dir}/checkpoints"
    try:
        return dry_run(job, os.getcwd(), run_dir=run_dir, checkpoint=checkpoint)
    except CompileError as exc:
        _fail(_locate(loaded, exc.findings))
    except ShardctlError as exc:  # the spec cannot become the target's objects (a name too long, say)
        _fail([f"{loaded.source}: {line}" for line in exc.lines()])


def _store():
    import sqlite3

    from orchestrator.store import Store, StoreError, state_dir

    try:
        return Store()
    except (StoreError, OSError, sqlite3.Error) as exc:
        _fail([f"cannot open the job store in {state_dir()}: {exc} (set SHARDCTL_HOME to a writable directory)"],
              EXIT_FAILED)


def _job(store, ref: str):
    from orchestrator.store import StoreError

    try:
        return store.resolve(ref)
    except StoreError as exc:
        _fail([str(exc)])


def _view(store, job, revive: bool = True, overrides: dict | None = None) -> dict:
    """The job as JSON-ready data; an unfinished job is moved on (or its record read back) first."""
    from orchestrator.jobs import refresh, supervised
    from orchestrator.report import job_json

    if revive:
        note = _guarded(refresh, store, job, overrides)
        if note:
            _err(note)
        job = store.get_job(job.id)
    return job_json(job, store.attempts(job.id), supervised=supervised(job))


def _guarded(fn, *args):
    """A target that cannot be asked (Slurm's controller down, the cluster unreachable) must not hide
    what the store knows: a warning, then the stored record."""
    from orchestrator.errors import TargetError

    try:
        return fn(*args)
    except TargetError as exc:
        _err(f"warning: could not ask the target: {exc}")
        return None


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _final_exit(state: str) -> NoReturn:
    sys.exit(0 if state == "succeeded" else EXIT_FAILED)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGET_NAMES), help="Override spec.target.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends; exit 0 only if it succeeded.")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted (as `render`) and submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (docs/cli-json.md).")
@click.option("--all-lines", is_flag=True, help="With --wait off a terminal: every log line, not just progress.")
@_cluster_options
def submit(job_file: str, target: str | None, wait: bool, dry_run: bool, as_json: bool, all_lines: bool,
           kubeconfig: str | None, context: str | None) -> None:
    """Run a job: its driver watches it, classifies failures and falls back on OOM."""
    from orchestrator.compile import CompileError
    from orchestrator.errors import TargetError
    from orchestrator.jobs import submit as do_submit

    loaded, _ = _load_checked(job_file, target)
    if dry_run:
        dry = render_dryrun(loaded, str(Path("runs") / loaded.job.metadata.name / "attempt-1"))
        for w in dry.warnings:
            _err(f"warning: {w}")
        click.echo(str(dry))
        return
    overrides = _overrides(kubeconfig, context)
    store = _store()
    try:
        record = do_submit(store, loaded.job, source=str(Path(job_file).resolve()), overrides=overrides)
    except CompileError as exc:
        _fail(_locate(loaded, exc.findings))
    except TargetError as exc:
        _fail([f"{loaded.source}: {loaded.job.spec.target} refused the job, nothing was submitted:"]
              + [f"  {line}" for line in exc.lines()])
    except ShardctlError as exc:
        _fail([f"{loaded.source}: {line}" for line in exc.lines()])
    if record.state == "failed":
        _fail([f"job {record.id}: {record.reason}"], EXIT_FAILED)
    for attempt in store.attempts(record.id)[:1]:
        for w in json.loads(attempt.warnings):
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


def _follow(store, job_id: str, all_lines: bool = False, overrides: dict | None = None) -> str:
    from orchestrator.follow import follow_live, follow_plain

    try:
        if sys.stdout.isatty() and not all_lines:
            return follow_live(store, job_id, overrides)
        return follow_plain(store, job_id, click.echo, everything=all_lines, overrides=overrides)
    except KeyboardInterrupt:
        _err(f"stopped watching; job {job_id} goes on (`shardctl status {job_id}`)")
        sys.exit(130)


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON array (docs/cli-json.md).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@_cluster_options
def list_jobs(as_json: bool, limit: int, kubeconfig: str | None, context: str | None) -> None:
    """Jobs in the store, newest first."""
    from orchestrator.jobs import refresh_all
    from orchestrator.report import describe_config, job_json
    from orchestrator.store import StoreError

    store = _store()
    damaged: list[str] = []
    records = []
    for record in store.list_jobs(limit, damaged=damaged):  # a damaged row is reported and skipped
        try:
            job_json(record, store.attempts(record.id))  # everything its rows say can be read
            records.append(record)
        except (StoreError, ValueError, TypeError, KeyError, AttributeError) as exc:
            damaged.append(f"job {record.id}: its record cannot be read ({exc})")
    for line in damaged:
        _err(f"warning: {line}; skipped")
    try:
        for note in refresh_all(store, records, _overrides(kubeconfig, context)):  # one batched query per target
            _err(note)
    except (StoreError, ValueError, TypeError, KeyError, AttributeError) as exc:
        _err(f"warning: could not bring every job up to date: {exc}")
    views = []
    for j in records:
        try:
            views.append(_view(store, store.get_job(j.id), revive=False))
        except (StoreError, ValueError, TypeError, KeyError, AttributeError) as exc:
            _err(f"warning: job {j.id}: its record cannot be read ({exc}); skipped")
    if as_json:
        _print_json(views)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for col in ("ID", "NAME", "TARGET", "STATE", "ATTEMPTS", "CONFIG", "CREATED"):
        table.add_column(col)
    for v in views:
        last = v["attempts"][-1] if v["attempts"] else None
        table.add_row(v["id"], v["name"], v["target"], v["state"], str(len(v["attempts"])),
                      describe_config(last) if last else "-", v["created_at"] or "")
    Console().print(table)


def _show(job: str, as_json: bool, text: str, overrides: dict) -> None:
    from orchestrator import report

    store = _store()
    record = _job(store, job)
    try:
        view = _view(store, record, overrides=overrides)
    except (ValueError, TypeError, KeyError) as exc:  # a damaged column (JSON, a spec) of its rows
        _fail([f"job {record.id}: its record in the job store cannot be read ({str(exc).splitlines()[0][:200]})"])
    click.echo(json.dumps(view, indent=2) if as_json else getattr(report, text)(view))


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
    """An attempt's output (stdout and stderr of every process)."""
    from orchestrator.jobs import ref_of, target_of

    overrides = _overrides(kubeconfig, context)
    store = _store()
    record = _job(store, job)
    if follow:
        from orchestrator.follow import follow_plain

        _final_exit(follow_plain(store, record.id, click.echo, everything=True, overrides=overrides))
    _view(store, record, overrides=overrides)  # brings the record up to date first
    attempts = store.attempts(record.id)
    if not attempts:
        _fail([f"job {record.id} has no attempt yet"], EXIT_FAILED)
    chosen = attempts[-1] if number is None else next((a for a in attempts if a.number == number), None)
    if chosen is None:
        _fail([f"job {record.id} has no attempt {number} (it has {len(attempts)})"])
    lines = target_of(record, overrides).log_source(ref_of(record, chosen), chosen.external_id).rest()
    if not lines:
        _err(f"attempt {chosen.number} has no output yet" + (f" ({chosen.log_path})" if chosen.log_path else ""))
    for line in lines:
        click.echo(line)


@main.command()
@click.argument("job")
@_cluster_options
def cancel(job: str, kubeconfig: str | None, context: str | None) -> None:
    """Stop a job: its running attempt and every process it started; no further attempt starts."""
    from orchestrator.jobs import cancel as do_cancel

    store = _store()
    record = do_cancel(store, _job(store, job), overrides=_overrides(kubeconfig, context))
    click.echo(f"{record.id} {record.state}" + (f": {record.reason}" if record.reason else ""))
    if record.state != "cancelled" and not record.terminal:
        sys.exit(EXIT_FAILED)


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
def plan(job_file: str, gpu_memory: str | None, as_json: bool, html_file: str | None) -> None:
    """What fits on the GPUs, and why: every candidate config with its memory estimate, term by term."""
    from orchestrator.plan.planner import check_gpu_memory_flag
    from orchestrator.plan.planner import plan as make_plan

    if gpu_memory is not None:
        try:
            check_gpu_memory_flag(gpu_memory)
        except ValueError as exc:
            _fail([str(exc)])
    loaded, _ = _load_checked(job_file)
    try:
        result = make_plan(loaded.job, gpu_memory)
    except ValueError as exc:
        _fail([f"{loaded.source}: {exc}"])
    if html_file:
        from orchestrator.plan.html import plan_html
        from orchestrator.procfiles import write_files

        path = Path(html_file).resolve()
        write_files(path.parent, {path.name: plan_html(result, loaded.source)})
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
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def controller(namespace: str | None, server: str | None, kubeconfig: str | None, context: str | None,
               leader_election_namespace: str | None, resync_seconds: float, workers: int,
               watch_timeout_seconds: int, lease_seconds: int, health_port: int, cache: bool, log_level: str) -> None:
    """Run the Kubernetes controller: TrainingJobs in, one Indexed Job per attempt, OOM fallback."""
    from orchestrator.controller.main import run

    sys.exit(run(namespace=namespace, server=server, kubeconfig=kubeconfig, context=context,
                 leader_election_namespace=leader_election_namespace, resync_s=resync_seconds, workers=workers,
                 log_level=log_level, watch_timeout_s=watch_timeout_seconds, lease_s=lease_seconds,
                 health_port=health_port or None, cache=cache))


@main.command()
def schema() -> None:
    """Print the JSON Schema of the job spec (for editors: # yaml-language-server: $schema=...)."""
    from orchestrator.spec.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":
    main()
