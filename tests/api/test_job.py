"""The Python API (`import shardctl`): specs, errors, a Python function as the entrypoint.

The fast tests run the pieces (the runner as its own process, the pickling, the launch command); the
slow ones submit through real accelerate processes on this machine, the Slurm one to the dev cluster.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import shardctl
from orchestrator.compile.launch import MODULE_PREFIX
from orchestrator.entry import FUNCTION_FILE, MODULE_SCRIPT, RESULT_FILE, pickle_call, read_outcome
from tests.helpers import doc

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples/quickstart.yaml"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("SHARDCTL_FORCE_CPU", "1")
    return tmp_path / "state"


def add(a: int, b: int = 0) -> dict:
    """Importable from the workers (cwd is the repository root), so pickled by reference."""
    return {"sum": a + b, "rank": int(os.environ.get("RANK", "0")), "world": os.environ.get("WORLD_SIZE"),
            "micro": os.environ.get("SHARDCTL_MICRO_BATCH")}


def fails(message: str) -> None:
    raise TypeError(message)  # the classifier reads a TypeError as a user error: not retried


def returns_a_lock() -> threading.Lock:
    return threading.Lock()


def leaves_without_returning() -> None:
    os._exit(0)


def test_the_public_import_is_light() -> None:
    code = "import shardctl, sys; print(sorted(m for m in ('torch', 'submitit', 'accelerate') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_applies_overrides_and_a_target_and_checks_the_rules() -> None:
    job = shardctl.load(QUICKSTART, overrides={"spec.batch.micro": 4}, target="slurm")
    assert (job.spec.batch.micro, job.spec.target) == (4, "slurm")
    with pytest.raises(shardctl.InvalidSpec) as caught:
        shardctl.load(QUICKSTART, overrides=["spec.batch.micro=7"])
    assert caught.value.lines() == [f"{QUICKSTART}:23: spec.batch.global: 32 is not a multiple of micro (7) x world "
                                    "size (2) = 14 (with --set spec.batch.micro=7)"]
    assert caught.value.exit_code == 2


def test_build_reports_a_dict_like_a_file() -> None:
    assert shardctl.build(doc()).metadata.name == "t"
    with pytest.raises(shardctl.InvalidSpec) as caught:
        shardctl.build(doc(batch={"micro": "x"}))
    assert caught.value.lines() == ["<python>: spec.batch.micro: Input should be a valid integer (got str 'x')"]


def test_submit_refuses_mixed_up_arguments_before_anything_is_recorded(home: Path) -> None:
    with pytest.raises(shardctl.ShardctlError, match="job= is required"):
        shardctl.submit(add, 1)
    with pytest.raises(shardctl.ShardctlError, match="for a function entrypoint"):
        shardctl.submit(QUICKSTART, 1)
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


def test_submit_and_wait_refuse_arguments_of_the_wrong_type_as_bad_input(home: Path) -> None:
    for call in (lambda: shardctl.submit(123), lambda: shardctl.submit(None),  # type: ignore[arg-type]
                 lambda: shardctl.submit(add, 1, job=42)):  # type: ignore[arg-type]
        with pytest.raises(shardctl.ShardctlError) as caught:
            call()
        assert caught.value.exit_code == 2 and len(caught.value.lines()) == 1
        assert "not int 123" in str(caught.value) or "not NoneType" in str(caught.value) \
            or "not int 42" in str(caught.value)
    job = shardctl.Job("0123abcd")
    for bad in ("x", -1, float("nan"), True):
        with pytest.raises(shardctl.ShardctlError, match=r"wait\(timeout=...\): a number of seconds"):
            job.wait(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(shardctl.ShardctlError, match="a number of seconds"):
        job.exception(timeout="x")  # type: ignore[arg-type]  # a wrong call, not the function's exception
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


def test_a_function_that_left_without_returning_says_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.spec.states import JobState

    job = shardctl.Job("0123abcd")
    monkeypatch.setattr(shardctl.Job, "wait", lambda self, timeout=None: JobState.SUCCEEDED)
    monkeypatch.setattr(shardctl.Job, "_outcome", lambda self: None)  # no result.pkl: os._exit(0) on every rank
    with pytest.raises(shardctl.JobFailed, match=r"the function exited without returning a value \(os._exit or a "
                                                 r"signal\)"):
        job.result()
    assert "exited without returning" in str(job.exception())


def test_a_function_runs_as_a_module_under_accelerate_launch(tmp_path: Path) -> None:
    assert MODULE_SCRIPT.startswith(MODULE_PREFIX)
    from orchestrator.api.job import Checked, _function_job, check, dry_run_checked

    checked = check(QUICKSTART)
    job = _function_job(checked)
    dry = dry_run_checked(Checked(checked.loaded.__class__(job, checked.source, checked.loaded.lines)),
                          str(tmp_path / "a1"))
    argv = dry.compiled.launch.argv
    at = argv.index("--module")
    assert argv[at + 1:] == ("orchestrator.entry.run_pickled",)  # the script's own args are dropped
    assert "--module orchestrator.entry.run_pickled" in dry.files["launch.sh"]


def test_the_pickle_is_capped_and_an_unpicklable_call_is_one_line() -> None:
    with pytest.raises(shardctl.FunctionPickleError, match="over the 1 KiB cap: pass large data by path"):
        pickle_call(add, (b"x" * 4096,), {}, limit=1024)
    with pytest.raises(shardctl.FunctionPickleError, match="cannot be pickled"):
        pickle_call(add, (threading.Lock(),), {})


def _run_runner(run_dir: Path, rank: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHARDCTL_RUN_DIR": str(run_dir), "RANK": str(rank)}
    return subprocess.run([sys.executable, "-m", "orchestrator.entry.run_pickled"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_runner_keeps_rank_0s_value_privately(tmp_path: Path) -> None:
    run_dir = tmp_path / "job" / "attempt-1"
    run_dir.mkdir(parents=True)
    (tmp_path / "job" / FUNCTION_FILE).write_bytes(pickle_call(add, (2,), {"b": 5}))  # in the job's directory
    r = _run_runner(run_dir, rank=1)
    assert r.returncode == 0, r.stderr
    assert not (run_dir / RESULT_FILE).exists()  # only rank 0's value is kept
    r = _run_runner(run_dir, rank=0)
    assert r.returncode == 0, r.stderr
    assert read_outcome(str(run_dir)) == ("success", {"sum": 7, "rank": 0, "world": os.environ.get("WORLD_SIZE"),
                                                      "micro": os.environ.get("SHARDCTL_MICRO_BATCH")})
    assert stat.S_IMODE((run_dir / RESULT_FILE).stat().st_mode) == 0o600


def test_the_runner_keeps_a_failures_traceback_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / FUNCTION_FILE).write_bytes(pickle_call(fails, ("boom at step 3",), {}))  # in the run dir itself
    r = _run_runner(tmp_path, rank=1)
    assert r.returncode == 1
    assert "TypeError: boom at step 3" in r.stderr  # the log the classifier reads has it
    kind, text = read_outcome(str(tmp_path))
    assert kind == "error" and text.startswith("rank 1:") and "TypeError: boom at step 3" in text


def test_a_function_for_kubernetes_without_a_cluster_records_nothing(home: Path) -> None:
    """The call travels with the TrainingJob (tests/controller/test_function.py); with no cluster, nothing is kept."""
    spec = doc(target="kubernetes", kubernetes={"image": "trainer:1"})
    with pytest.raises(shardctl.TargetError, match="no usable Kubernetes configuration"):
        shardctl.submit(add, 1, job=spec, kubeconfig=str(home / "none"))
    assert shardctl.list_jobs() == []


@pytest.mark.slow
def test_a_function_on_the_local_target_returns_rank_0s_value(home: Path) -> None:
    job = shardctl.submit(add, 2, b=3, job=QUICKSTART, overrides={"spec.batch.micro": 4}, workdir=str(ROOT))
    assert job.result(timeout=240) == {"sum": 5, "rank": 0, "world": "2", "micro": "4"}
    record = job.record()
    assert stat.S_IMODE((Path(record.job_dir) / FUNCTION_FILE).stat().st_mode) == 0o600
    assert job.exception() is None
    view = job.status()
    assert view["state"] == "succeeded" and json.loads(json.dumps(view)) == view  # the CLI's JSON types
    # the README's loop over a finished job's output: every line a string, the events marked, no KeyError
    lines = list(job.logs(follow=True))
    assert lines and all(isinstance(line, str) for line in lines)
    assert lines[0].startswith("[shardctl] attempt 1 started") and lines[-1].startswith(f"[shardctl] job {job.id}")
    assert any(not line.startswith("[shardctl]") for line in lines)  # the run's own output is among them


@pytest.mark.slow
def test_a_failing_function_gives_its_traceback_and_is_not_retried(home: Path) -> None:
    job = shardctl.submit(fails, "no data", job=QUICKSTART, workdir=str(ROOT))
    error = job.exception(timeout=240)
    assert isinstance(error, shardctl.FunctionFailed)
    assert "TypeError: no data" in str(error)
    assert [a["failure"]["kind"] for a in job.history()] == ["user_error"]
    with pytest.raises(shardctl.FunctionFailed):
        job.result()


@pytest.mark.slow
def test_an_unpicklable_return_value_is_the_functions_exception_and_not_retried(home: Path) -> None:
    job = shardctl.submit(returns_a_lock, job=QUICKSTART, workdir=str(ROOT))
    error = job.exception(timeout=240)
    assert isinstance(error, shardctl.FunctionFailed), error
    assert "cannot pickle '_thread.lock'" in str(error)
    assert [a["failure"]["kind"] for a in job.history()] == ["user_error"]


@pytest.mark.slow
def test_a_function_that_calls_os_exit_0_has_no_result_and_says_why(home: Path) -> None:
    job = shardctl.submit(leaves_without_returning, job=QUICKSTART, workdir=str(ROOT))
    with pytest.raises(shardctl.JobFailed, match="the function exited without returning a value"):
        job.result(timeout=240)


@pytest.mark.slurm
def test_the_slurm_function_example_gets_its_return_value(slurm_cluster: str, home: Path) -> None:
    r = subprocess.run([sys.executable, "examples/function_slurm.py", "--steps", "30"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])  # the return value the example prints
    assert result["world_size"] == 2 and result["rank"] == 0 and abs(result["w"] - 3.0) < 0.1
