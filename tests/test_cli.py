"""The CLI as users run it: real subprocesses, exit codes, files written or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def shardctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SHARDCTL_FORCE_CPU": "1"})


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(example: Path) -> None:
    r = shardctl("validate", str(example))
    assert r.returncode == 0, r.stderr
    assert ": ok: TrainingJob" in r.stdout


_HEAD = ("apiVersion: shardctl.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\n"
         "spec:\n  entrypoint: {script: t.py}\n  model: {name_or_path: m}\n")  # six lines
BAD = {
    "empty.yaml": "",
    "syntax.yaml": "apiVersion: [\n",
    "types.yaml": _HEAD + "  batch: {micro: many}\n",
    "rule.yaml": _HEAD + "  backend: fsdp\n  offload: {optimizer: nvme, nvme_path: /n}\n",
    "unknown.yaml": _HEAD + "  sharding_level: full\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_exit_2_no_traceback_nothing_written(name: str, tmp_path: Path) -> None:
    spec = tmp_path / name
    spec.write_text(BAD[name])
    out = tmp_path / "out"
    for args in (("validate", str(spec)), ("render", str(spec), "--out", str(out))):
        r = shardctl(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith(str(spec))
    assert not out.exists()


def test_rule_error_points_at_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "rule.yaml"
    spec.write_text(BAD["rule.yaml"])
    r = shardctl("validate", str(spec))
    assert r.stderr.splitlines()[0].startswith(
        f"{spec}:8: spec.offload.optimizer: NVMe offload exists only in DeepSpeed")


def test_ten_megabyte_file(tmp_path: Path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text("a: b\n" * (2 * 1024 * 1024))
    r = shardctl("validate", str(spec))
    assert r.returncode == 2 and "MiB" in r.stderr and "Traceback" not in r.stderr


def test_render_local_writes_the_dry_run(tmp_path: Path) -> None:
    r = shardctl("render", str(ROOT / "examples/quickstart.yaml"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate_config.yaml", "attempt.json", "ds_config.json",
                                                          "launch.sh"]
    request = json.loads((tmp_path / "attempt.json").read_text())  # what the attempt wrapper is asked to run
    assert request["command"] == ["bash", f"{tmp_path}/launch.sh"] and request["memory_limit_bytes"] is None
    script = (tmp_path / "launch.sh").read_text()
    assert f"--config_file {tmp_path}/accelerate_config.yaml" in script and "DS_ACCELERATOR=cpu" in script
    assert os.access(tmp_path / "launch.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], check=True)


def test_shell_injection_is_quoted(tmp_path: Path) -> None:
    spec = tmp_path / "inject.yaml"
    spec.write_text((ROOT / "examples/quickstart.yaml").read_text().replace(
        '"--steps", "20"', '"--steps", "20; touch PWNED", "$(touch PWNED2)"'))
    r = shardctl("render", str(spec), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "o/launch.sh").read_text()
    assert "'20; touch PWNED' '$(touch PWNED2)'" in script


def test_schema_has_every_field_name() -> None:
    r = shardctl("schema")
    schema = json.loads(r.stdout)
    text = r.stdout
    for name in ("target", "entrypoint", "script", "args", "env", "name_or_path", "parameters", "layer_class",
                 "backend", "sharding", "mixed", "params", "optimizer", "nvme_path", "activation_checkpointing",
                 "micro", "global", "seq_len", "nodes", "gpus_per_node", "gpu_memory", "cpus_per_node",
                 "memory_per_node", "dir", "every_steps", "enabled", "max_attempts", "ladder", "partition",
                 "account", "qos", "time", "extra", "image", "namespace", "queue", "node_selector", "tolerations",
                 "priority_class", "service_account", "volumes", "labels"):
        assert f'"{name}"' in text, name
    assert schema["properties"]["apiVersion"]["const"] == "shardctl.dev/v1alpha1"


def test_help_does_not_import_the_training_stack() -> None:
    code = ("import sys; from click.testing import CliRunner; from orchestrator.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "print(','.join(m for m in ('torch','deepspeed','accelerate','kubernetes','transformers') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_convert_cli(tmp_path: Path) -> None:
    from tests.compile.test_convert import SEED_FSDP

    src = tmp_path / "fsdp.yaml"
    src.write_text(SEED_FSDP)
    r = shardctl("convert", str(src), "--to", "deepspeed", "--out", str(tmp_path / "ds.yaml"))
    assert r.returncode == 0, r.stderr
    assert "no equivalent: fsdp_config.fsdp_use_orig_params" in r.stderr
    r2 = shardctl("convert", str(tmp_path / "ds.yaml"), "--to", "fsdp")
    assert r2.returncode == 0 and "fsdp_sharding_strategy: FULL_SHARD" in r2.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\n")
    assert shardctl("convert", str(bad), "--to", "fsdp").returncode == 2


def test_the_supervision_path_never_imports_the_training_stack() -> None:
    """The supervisor, the local target and the job commands run on login nodes and in controllers."""
    code = ("import sys, orchestrator.jobs, orchestrator.follow, orchestrator.report, orchestrator.supervise.daemon, "
            "orchestrator.targets.local, orchestrator.targets.local_wrapper; "
            "print([m for m in ('torch', 'accelerate', 'deepspeed', 'transformers') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
