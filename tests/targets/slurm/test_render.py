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
from orchestrator.targets.slurm.render import (
    JOB_SCRIPT,
    JUDGE_SCRIPT,
    SlurmRequest,
    directives,
    render,
)
from tests.helpers import doc, job

ROOT = Path(__file__).resolve().parents[3]


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


def test_env_from_reaches_the_job_by_name_and_the_file_on_the_node(tmp_path: Path) -> None:
    """A shell variable is named in --export (of the attempt and of its judge, which submits the next one);
    a file is read by the batch script on the node: job.sbatch holds names and a path, no value, and the
    accelerate stand-in sees both values."""
    from orchestrator.intake.secrets import parse_env_file

    env_file = tmp_path / "wandb.env"
    env_file.write_text("WANDB_API_KEY='w-from-a-file'\n")
    env_file.chmod(0o600)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen.txt"
    _fake(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 "$@"\n')
    _fake(bin_dir, "scontrol", 'printf "nodeA\\n"\n')
    _fake(bin_dir, "accelerate", f'printf "%s|%s" "$HF_TOKEN" "$WANDB_API_KEY" > {seen}\n')
    spec = slurm_job(resources={"nodes": 1, "gpus_per_node": 4}, slurm={},
                     entrypoint={"script": "t.py", "env_from": [{"env": "HF_TOKEN"}, {"file": "wandb.env"}]})
    dry = render(spec, request(tmp_path, bin_dir=str(bin_dir), workdir=str(tmp_path)))
    job_script, judge = dry.files[JOB_SCRIPT], dry.files[JUDGE_SCRIPT]
    assert "#SBATCH --export=ALL,HF_TOKEN" in job_script.splitlines()
    assert "#SBATCH --export=ALL,HF_TOKEN" in judge.splitlines()
    assert f"shardctl_env_file {env_file}" in job_script  # relative to the submit directory
    assert "w-from-a-file" not in job_script and parse_env_file(env_file.read_text(), "f")
    script = tmp_path / "job.sbatch"
    script.write_text(job_script)
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "nodeA", "SLURM_JOB_ID": "7",
           "HF_TOKEN": "hf-from-the-shell"}  # what sbatch --export=ALL,HF_TOKEN hands the batch shell
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert seen.read_text() == "hf-from-the-shell|w-from-a-file"


def test_an_export_of_ones_own_would_drop_env_from_and_is_refused(tmp_path: Path) -> None:
    from orchestrator.compile import CompileError

    spec = slurm_job(entrypoint={"script": "t.py", "env_from": [{"env": "HF_TOKEN"}]},
                     slurm={"extra": ["--exclusive", "--export=NONE"]})
    with pytest.raises(CompileError) as caught:
        render(spec, request(tmp_path))
    assert caught.value.findings[0].field == "spec.slurm.extra.1"
    plain = slurm_job(slurm={"extra": ["--export=NONE"]})  # without env_from it is the user's call
    assert "#SBATCH --export=NONE" in render(plain, request(tmp_path)).files[JOB_SCRIPT]


def test_a_judge_without_the_variable_refuses_to_submit_the_next_attempt(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import SubmitError
    from orchestrator.targets.base import AttemptRef
    from orchestrator.targets.slurm.target import SlurmTarget

    monkeypatch.delenv("HF_TOKEN", raising=False)
    spec = slurm_job(entrypoint={"script": "t.py", "env_from": [{"env": "HF_TOKEN"}]})
    target = SlurmTarget(state_dir=str(tmp_path / "state"))
    ref = AttemptRef("ab12", 2, str(tmp_path / "attempt-2"), str(tmp_path), str(tmp_path), str(tmp_path / "o.log"))
    with pytest.raises(SubmitError, match="HF_TOKEN not set"):
        target.submit(target.render(spec, ref), ref)
    assert not (tmp_path / "attempt-2").exists()  # sbatch was never called


# --- site defaults: CPUs per task, the judge's partition, requeued runs --------------------------------------

SINFO = """debug*|96|gpu:8
gpu|96|gpu:a100:4(S:0),gpu:h100:4(S:1)
gpu|64|gpu:h100:8(S:0-1)
cpu|128|(null)
"""


def test_node_shapes_reads_the_default_partition_and_every_gpu_spelling() -> None:
    from orchestrator.targets.slurm.accounting import node_shapes

    assert node_shapes(SINFO, None) == ("debug", [(96, 8)])  # no partition named: sinfo's `*`
    assert node_shapes(SINFO, "gpu") == ("gpu", [(96, 8), (64, 8)])
    assert node_shapes(SINFO, "cpu") == ("cpu", [(128, 0)])
    assert node_shapes(SINFO, "nope") == ("nope", [])
    assert node_shapes("gpu|96|gpu:8\n", None) == (None, [])  # no default partition at this site


def test_cpus_per_task_is_derived_per_gpu_and_the_spec_wins(tmp_path: Path) -> None:
    no_cpus = {"nodes": 2, "gpus_per_node": 4, "memory_per_node": "500GiB"}
    derived = request(tmp_path, cpus_per_gpu=12, cpus_basis="partition gpu's nodes: 96 CPUs, 8 GPUs each")
    dry = render(slurm_job(resources=no_cpus), derived)
    assert "#SBATCH --cpus-per-task=48" in dry.files[JOB_SCRIPT]  # 12 per GPU x the 4 GPUs of the node's one task
    assert any("--cpus-per-task=48 (12 CPUs per GPU x 4 GPUs per node, derived from partition gpu's nodes" in w
               for w in dry.warnings), dry.warnings
    spec_says = render(slurm_job(), derived)  # cpus_per_node: 32
    assert "#SBATCH --cpus-per-task=32" in spec_says.files[JOB_SCRIPT]
    assert not any("cpus_per_node" in w for w in spec_says.warnings)
    offline = render(slurm_job(resources=no_cpus), request(tmp_path))  # the dry run: nobody asked Slurm
    assert "--cpus-per-task" not in offline.files[JOB_SCRIPT]
    assert any("a dry run does not ask Slurm" in w for w in offline.warnings), offline.warnings
    unknown = render(slurm_job(resources=no_cpus), request(tmp_path, cpus_basis="sinfo reports no GPUs on partition "
                                                                                "cpu's nodes"))
    assert "--cpus-per-task" not in unknown.files[JOB_SCRIPT]
    assert any("cannot be derived (sinfo reports no GPUs" in w for w in unknown.warnings), unknown.warnings


def test_the_derived_figure_travels_with_the_job_to_every_judge(tmp_path: Path) -> None:
    """What submit learnt from sinfo is kept in the job's options: a judge rebuilding the target from them renders
    the next attempt with the same --cpus-per-task, without asking Slurm again."""
    from orchestrator.targets.base import AttemptRef
    from orchestrator.targets.slurm.target import SlurmTarget

    at_submit = SlurmTarget(cpu=True, state_dir=str(tmp_path), cpus_per_gpu=12, cpus_basis="partition debug's nodes")
    judge = SlurmTarget.from_options(json.loads(json.dumps(at_submit.options())))  # as the store keeps them
    ref = AttemptRef("ab12cd34", 2, str(tmp_path / "attempt-2"), str(tmp_path / "ckpt"), str(tmp_path),
                     str(tmp_path / "attempt-2/output.log"))
    job_ = slurm_job(resources={"nodes": 1, "gpus_per_node": 2, "memory_per_node": "4GiB"})
    assert "#SBATCH --cpus-per-task=24" in judge.render(job_, ref).files[JOB_SCRIPT]
    assert "cpus_per_gpu" not in SlurmTarget(cpu=True).options()  # nothing derived, nothing kept


def test_the_judge_goes_to_the_sites_default_partition_unless_one_is_named(tmp_path: Path) -> None:
    judge = render(slurm_job(slurm={"partition": "gpu"}), request(tmp_path)).files[JUDGE_SCRIPT]
    assert "--partition" not in judge.replace("No --partition", "")  # Slurm's default partition, not gpu
    assert "#SBATCH --partition=gpu" in render(slurm_job(slurm={"partition": "gpu"}), request(tmp_path)).files[
        JOB_SCRIPT]
    named = render(slurm_job(slurm={"partition": "gpu", "supervisor_partition": "cpu"}), request(tmp_path))
    assert "#SBATCH --partition=cpu" in named.files[JUDGE_SCRIPT]


def test_a_requeued_job_is_its_newest_run_with_the_earlier_ones_counted() -> None:
    """`sacct -D` after `scontrol requeue` (captured on the dev cluster): the earlier run's REQUEUED record and its
    cancelled batch step are history, not the job's state."""
    from orchestrator.targets.slurm.accounting import parse_sacct

    text = ("479|REQUEUED|0:0||None\n479.batch|CANCELLED|0:15|2048K|\n"
            "479|RUNNING|0:0||BeginTime\n479.batch|RUNNING|0:0|1024K|\n")
    info = parse_sacct(text)["479"]
    assert (info.state, info.phase, info.requeues, info.steps) == ("RUNNING", "running", 1, (("batch", "RUNNING"),))
    assert info.max_rss_bytes == 1024 << 10 and "requeued 1 time" in info.summary()
    once = parse_sacct("480|COMPLETED|0:0||None\n480.batch|COMPLETED|0:0|1024K|\n")["480"]
    assert once.requeues == 0 and "requeued" not in once.summary()


def test_nodes_to_avoid_are_excluded_and_none_means_no_exclude(tmp_path: Path) -> None:
    res = {"nodes": 2, "gpus_per_node": 4, "cpus_per_node": 32, "avoid_nodes": ["node1", "gpu-a07"]}
    assert "--exclude=node1,gpu-a07" in directives(slurm_job(resources=res), request(tmp_path))
    assert not any(d.startswith("--exclude") for d in directives(slurm_job(), request(tmp_path)))
    with pytest.raises(ValidationError):
        slurm_job(resources={**res, "avoid_nodes": ["node1,node2"]})  # one name each: no list smuggled in


def test_notify_variables_reach_the_judge_by_name_and_their_values_are_in_no_file(tmp_path: Path) -> None:
    """spec.notify's `env` references are named in --export (of the attempt and its judge, which sends the
    notifications and submits the next attempt): a site's SBATCH_EXPORT=NONE cannot lose them."""
    spec = slurm_job(resources={"nodes": 1, "gpus_per_node": 1}, notify=[
        {"url": {"env": "HOOK_URL"}, "format": "json", "signing_secret": {"env": "HOOK_SECRET"},
         "events": ["job_finished"]}])
    files = render(spec, request(tmp_path)).files
    for name in (JOB_SCRIPT, "judge.sbatch"):
        assert "#SBATCH --export=ALL,HOOK_URL,HOOK_SECRET" in files[name], files[name]
    # the judge sends the webhooks; the training step never sees the credentials
    assert "\nunset HOOK_URL HOOK_SECRET " in files[JOB_SCRIPT] and "unset" not in files["judge.sbatch"]
