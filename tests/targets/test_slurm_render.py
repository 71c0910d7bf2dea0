"""The Slurm dry run: directives from the spec, quoting, and the script really run through bash."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.spec.models import TrainingJob
from orchestrator.targets.slurm_render import (
    JOB_SCRIPT,
    JUDGE_SCRIPT,
    SlurmRequest,
    directives,
    render,
)
from tests.helpers import doc, job

ROOT = Path(__file__).resolve().parents[2]


def request(tmp: Path, **changes) -> SlurmRequest:
    fields = dict(job_id="ab12cd34", attempt=2, run_dir=str(tmp / "attempt-2"), checkpoint_dir=str(tmp / "ckpt"),
                  workdir=str(tmp), log_path=str(tmp / "attempt-2/output.log"), state_dir=str(tmp / "state"),
                  python=sys.executable, package_root=str(ROOT), bin_dir=str(tmp / "bin"))
    fields.update(changes)
    return SlurmRequest(**fields)


def slurm_job(**spec) -> TrainingJob:
    base = {"target": "slurm", "backend": "deepspeed", "sharding": "full",
            "resources": {"nodes": 2, "gpus_per_node": 4, "cpus_per_node": 32, "memory_per_node": "500GiB"},
            "checkpoint": {"every_steps": 100},
            "slurm": {"partition": "gpu", "account": "ml-team", "qos": "high", "time": "1-00:00:00",
                      "extra": ["--constraint=h100", "--exclusive"]}}
    base.update(spec)
    return job(**base)


def test_directives_follow_the_spec(tmp_path: Path) -> None:
    d = directives(slurm_job(), request(tmp_path))
    assert d[:4] == ["--job-name=t.ab12cd34.2", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4"]
    for want in ("--cpus-per-task=32", "--mem=512000M", "--time=1-00:00:00", "--signal=B:USR1@120",
                 "--partition=gpu", "--account=ml-team", "--qos=high", "--requeue", "--open-mode=append",
                 f"--output={tmp_path}/attempt-2/output.log", f"--error={tmp_path}/attempt-2/output.log"):
        assert want in d, want
    assert d[-2:] == ["--constraint=h100", "--exclusive"]  # verbatim, last: the user's word wins


def test_no_checkpointing_means_no_requeue_and_no_time_means_no_signal(tmp_path: Path) -> None:
    d = directives(job(target="slurm"), request(tmp_path))
    assert "--no-requeue" in d and not any(x.startswith(("--time", "--signal", "--mem", "--partition")) for x in d)
    dry = render(job(target="slurm"), request(tmp_path))
    assert any("memory_per_node is unset" in w for w in dry.warnings)
    assert any("slurm.time is unset" in w for w in dry.warnings)


def test_the_judge_runs_once_the_attempt_ends(tmp_path: Path) -> None:
    dry = render(slurm_job(slurm={"partition": "gpu", "supervisor_partition": "cpu"}), request(tmp_path))
    judge = dry.files[JUDGE_SCRIPT]
    assert "#SBATCH --job-name=t.ab12cd34.2.judge" in judge and "#SBATCH --partition=cpu" in judge
    assert "#SBATCH --kill-on-invalid-dep=yes" in judge and "#SBATCH --no-requeue" in judge
    assert judge.rstrip().endswith("-m orchestrator.supervise.daemon ab12cd34 --once")
    assert f"export SHARDCTL_HOME={tmp_path}/state" in judge
    assert dry.command == ["sbatch", "--parsable", f"{tmp_path}/attempt-2/{JOB_SCRIPT}"]


@pytest.mark.parametrize("field,value", [
    ("partition", "gpu\n#SBATCH --uid=0"), ("partition", "gpu; rm -rf /"), ("account", "a b"), ("qos", "$(id)"),
])
def test_slurm_names_cannot_smuggle_directives_or_shell(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainingJob.model_validate(doc(target="slurm", slurm={field: value}))


def test_an_extra_directive_is_one_line() -> None:
    with pytest.raises(ValidationError, match="extra"):
        TrainingJob.model_validate(doc(target="slurm", slurm={"extra": ["--exclusive\nrm -rf /"]}))


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_script_hands_every_argument_over_verbatim(tmp_path: Path) -> None:
    """job.sbatch run by real bash, with stand-ins for srun, scontrol and accelerate that record what they
    get: hostile strings in the spec arrive as single arguments and run nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    # srun: one task per node, as Slurm would start them, each with its own SLURM_NODEID
    _fake(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\n'
                           'for n in 0 1; do SLURM_NODEID=$n "$@" || exit $?; done\n')
    _fake(bin_dir, "scontrol", 'printf "nodeA\\nnodeB\\n"\n')
    _fake(bin_dir, "accelerate", f'{sys.executable} -c "import json,sys; '
                                 f'open(\'{record}\',\'a\').write(json.dumps(sys.argv[1:])+chr(10))" "$@"\n')
    evil = ["$(touch PWNED)", "'; touch PWNED; '", "`touch PWNED`", "a b", '"quoted"', "x;y&z|w>v"]
    spec = slurm_job(entrypoint={"script": "train me.py", "args": evil})
    req = request(tmp_path, bin_dir=str(bin_dir), workdir=str(tmp_path))
    dry = render(spec, req)
    script = tmp_path / "job.sbatch"
    script.write_text(dry.files[JOB_SCRIPT])
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[A-B]", "SLURM_JOB_ID": "4242"}
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "PWNED").exists()
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 2
    for rank, argv in enumerate(calls):
        assert argv[argv.index("--machine_rank") + 1] == str(rank)
        assert argv[argv.index("--main_process_ip") + 1] == "nodeA"  # the allocation's first host
        assert argv[argv.index("--main_process_port") + 1] == str(20000 + 4242 % 20000)
        assert argv[argv.index("--num_machines") + 1] == "2" and argv[argv.index("--num_processes") + 1] == "8"
        assert argv[argv.index("train me.py") + 1:] == evil


def test_an_allocation_of_the_wrong_size_stops_before_launch(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "srun", "echo launched\n")
    _fake(bin_dir, "scontrol", "echo nodeA\n")
    script = tmp_path / "job.sbatch"
    script.write_text(render(slurm_job(), request(tmp_path, bin_dir=str(bin_dir), workdir=str(tmp_path)))
                      .files[JOB_SCRIPT])
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "nodeA", "SLURM_JOB_ID": "7"}
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "compiled for 8" in out.stderr and "launched" not in out.stdout


def test_usr1_before_the_time_limit_asks_for_a_checkpoint_and_the_step_status_survives(tmp_path: Path) -> None:
    """Slurm's --signal=B:USR1 reaches the batch shell while srun runs: the script must ask for a
    checkpoint and still exit with the step's own status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "srun", "sleep 2; exit 3\n")
    _fake(bin_dir, "scontrol", "echo nodeA\n")
    spec = slurm_job(resources={"nodes": 1, "gpus_per_node": 1})
    req = request(tmp_path, bin_dir=str(bin_dir), workdir=str(tmp_path), run_dir=str(tmp_path))
    script = tmp_path / "job.sbatch"
    script.write_text(render(spec, req).files[JOB_SCRIPT])
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "nodeA", "SLURM_JOB_ID": "7"}
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    import time

    time.sleep(0.7)
    proc.send_signal(10)  # SIGUSR1
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert (tmp_path / "checkpoint-requested").exists() and "requesting a checkpoint" in out
