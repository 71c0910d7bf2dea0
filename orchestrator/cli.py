"""The `shardctl` command line.

Start-up stays light: every command imports what it needs when it runs, and
nothing here imports torch, accelerate, deepspeed or kubernetes.
Exit codes: 0 success, 1 the job or an operation failed, 2 bad input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from orchestrator.spec import LoadedSpec

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


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
        _fail([str(p) for p in exc.problems])
    job = loaded.job
    if target is not None and target != job.spec.target:
        job = job.with_spec(target=target)
        loaded = type(loaded)(job=job, source=loaded.source, lines=loaded.lines)
    findings = rules.check(job)
    errors = rules.errors(findings)
    located = [f"{loaded.source}:{loaded.line_of(f.field) or '?'}: {f.field}: {f.message}" for f in errors]
    if errors:
        _fail(located)
    for f in findings:
        _err(f"{loaded.source}:{loaded.line_of(f.field) or '?'}: {f.level}: {f.field}: {f.message}")
    return loaded, findings


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shardctl")
def main() -> None:
    """Declarative large-model training with Accelerate (FSDP or DeepSpeed ZeRO), with automatic OOM fallback."""


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
def validate(job_file: str) -> None:
    """Check a job spec: exit 0 with a summary, or 2 with every error as FILE:LINE: field: message."""
    loaded, _ = _load_checked(job_file)
    click.echo(summary(loaded))


def _write_atomically(out: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        if name in executable:
            tmp.chmod(0o755)
        os.replace(tmp, out / name)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["local", "slurm", "kubernetes"]), help="Override spec.target.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
def render(job_file: str, target: str | None, out_dir: str) -> None:
    """Write exactly what submit would submit (the dry run). Invalid input writes nothing."""
    loaded, _ = _load_checked(job_file, target)
    out = Path(out_dir).resolve()
    dry = render_dryrun(loaded, str(out))
    for w in dry.warnings:
        _err(f"warning: {w}")
    _write_atomically(out, dry.files, executable=("launch.sh",))
    for name in dry.files:
        click.echo(str(out / name))


def render_dryrun(loaded: LoadedSpec, run_dir: str):
    from orchestrator.compile import CompileError

    job = loaded.job
    target = job.spec.target
    checkpoint_dir = job.spec.checkpoint.dir or f"{run_dir}/checkpoints"
    try:
        if target == "local":
            from orchestrator.targets import local

            return local.render(job, run_dir, checkpoint_dir=checkpoint_dir, workdir=os.getcwd())
    except CompileError as exc:
        _fail([f"{loaded.source}:{loaded.line_of(f.field) or '?'}: {f.field}: {f.message}" for f in exc.findings])
    _fail([f"{loaded.source}: spec.target: target {target!r} cannot render yet (local is available)"])


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--to", "to", required=True, type=click.Choice(["fsdp", "deepspeed"]))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
def convert(config_file: str, to: str, out_file: str | None) -> None:
    """Turn an accelerate config into the other backend, listing what has no equivalent."""
    import yaml

    from orchestrator.compile import dump_yaml
    from orchestrator.compile.convert import ConvertError, convert as do_convert

    path = Path(config_file)
    try:
        text = path.read_text()
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        ds_json = None
        ds_file = ((config or {}).get("deepspeed_config") or {}).get("deepspeed_config_file") if isinstance(config, dict) else None
        if ds_file:
            ds_path = Path(ds_file) if Path(ds_file).is_absolute() else path.parent / ds_file
            ds_json = json.loads(ds_path.read_text())
        result = do_convert(config, to, ds_json)
    except (OSError, UnicodeDecodeError) as exc:
        _fail([f"{config_file}: cannot read: {exc}"])
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        _fail([f"{config_file}: not valid YAML/JSON: {str(exc).splitlines()[0]}"])
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
        _write_atomically(Path(out_file).resolve().parent, files)
        click.echo(out_file)
    else:
        click.echo(text_out, nl=False)
        if result.ds_config is not None:
            _err("ds_config.json (needed for hybrid; use --out to write it beside the config):")
            _err(json.dumps(result.ds_config, indent=2))


@main.command()
def schema() -> None:
    """Print the JSON Schema of the job spec (for editors: # yaml-language-server: $schema=...)."""
    from orchestrator.spec.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":
    main()
