"""Reading Slurm's accounting: parsing captured sacct output, and one sacct call per poll."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.lifecycle.classify import classify
from orchestrator.targets.slurm.accounting import (
    JobInfo,
    Poller,
    parse_exit_code,
    parse_rss,
    parse_sacct,
    parse_squeue_live,
)
from tests.helpers import wait_for

DATA = Path(__file__).parents[1] / "data"


def states() -> dict[str, JobInfo]:
    # the job lines were captured from the development cluster (sacct -n -P -o JobID,State,ExitCode,MaxRSS,Reason)
    return parse_sacct((DATA / "sacct_states.txt").read_text())


def test_steps_are_folded_into_their_job() -> None:
    jobs = states()
    assert set(jobs) == {"3", "4", "5", "9", "15", "21", "22", "23"}
    assert jobs["3"].state == "FAILED" and jobs["3"].steps == (("batch", "FAILED"), ("0", "OUT_OF_MEMORY"))
    assert jobs["9"].max_rss_bytes == int(1.20 * (1 << 30))  # the largest step wins


def test_an_oom_in_one_step_is_an_oom_of_the_job() -> None:
    jobs = states()
    assert jobs["3"].out_of_memory and jobs["4"].out_of_memory  # step 0 OOM (job FAILED), batch OOM
    assert not jobs["9"].out_of_memory and not jobs["15"].out_of_memory


@pytest.mark.parametrize("job_id,phase", [("3", "ended"), ("5", "pending"), ("9", "ended"), ("15", "ended"),
                                          ("21", "ended"), ("22", "running"), ("23", "ended")])
def test_phases(job_id: str, phase: str) -> None:
    assert states()[job_id].phase == phase


def test_cancelled_by_uid_is_read_as_cancelled() -> None:
    job = states()["15"]
    assert job.state == "CANCELLED" and (job.exit_code, job.signal) == (0, 15)


def test_exit_codes_and_sizes() -> None:
    assert parse_exit_code("1:0") == (1, None) and parse_exit_code("0:125") == (0, 125)
    assert parse_exit_code("garbage") == (None, None)
    assert parse_rss("2411724K") == 2411724 * 1024 and parse_rss("310M") == 310 << 20 and parse_rss("") is None


def test_the_summary_names_the_step_that_ran_out() -> None:
    assert states()["3"].summary() == "FAILED 1:0, step 0 OUT_OF_MEMORY"
    assert states()["9"].summary() == "COMPLETED 0:0"


def test_what_the_target_hands_the_classifier() -> None:
    """The Slurm states become the classifier's outside evidence (targets/slurm/target.py describe)."""
    from orchestrator.lifecycle.classify import Outcome

    def outcome(info: JobInfo, log: str = "") -> Outcome:
        return Outcome(exit_code=info.exit_code, signal=info.signal, log_tail=log, oom_killed=info.out_of_memory,
                       timed_out=info.state == "TIMEOUT", cancelled=info.state == "CANCELLED",
                       preempted=info.state in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL"))

    jobs = states()
    assert classify(outcome(jobs["3"])).kind == "host_oom"
    assert classify(outcome(jobs["21"], "slurmstepd: error: *** JOB 21 ON node1 CANCELLED AT x DUE TO TIME LIMIT ***"
                            )).kind == "timeout"
    assert classify(outcome(jobs["23"])).kind == "preempted"
    assert classify(outcome(jobs["15"])).kind == "cancelled"
    cuda = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"
    assert classify(outcome(JobInfo("30", "FAILED", 1, None), cuda)).kind == "cuda_oom"


def _counting_shim(tmp_path: Path) -> tuple[Path, Path]:
    """A directory with `sacct` and `squeue` that log each call, then run the real command."""
    import shutil

    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        real = shutil.which(name)
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec "{real}" "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir, log


@pytest.mark.slurm
def test_polling_many_jobs_is_one_squeue_and_at_most_one_sacct_call(slurm_cluster: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """20 jobs, some ended by the poll and some held: one squeue for the live ones, one sacct for the rest, and
    what each says agrees with Slurm (the held ones pending with their reason, the ended ones COMPLETED)."""
    ids, held = [], []
    for n in range(20):
        hold = ["--hold"] if n % 2 else []
        out = subprocess.run(["sbatch", "--parsable", *hold, "--mem=16M", "-o", "/dev/null", "--wrap", "true"],
                             capture_output=True, text=True, check=True)
        ids.append(out.stdout.strip())
        if hold:
            held.append(ids[-1])
    ended = [i for i in ids if i not in held]
    sacct = ["sacct", "-n", "-X", "-P", "-j", ",".join(ended), "-o", "State"]
    wait_for(lambda: subprocess.run(sacct, capture_output=True, text=True).stdout.split() == ["COMPLETED"] * 10,
             120, "the unheld jobs to be done")
    bin_dir, log = _counting_shim(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    poller = Poller(interval_s=60)
    poller.watch(ids)
    poller.poll()
    seen = {job_id: poller.get(job_id) for job_id in ids}  # served from the one poll
    calls = log.read_text().split()
    subprocess.run(["scancel", *held], check=False)
    assert calls.count("sacct") == 1 and calls.count("squeue") == 1, calls
    assert all((info := seen[i]) is not None and (info.phase, info.source, info.reason) ==
               ("pending", "squeue", "JobHeldUser") for i in held), seen
    assert all((info := seen[i]) is not None and (info.state, info.source) == ("COMPLETED", "sacct")
               for i in ended), seen


def _answering(bin_dir: Path, name: str, words: str, code: int = 1) -> None:
    """A stand-in Slurm command that prints `words` on stderr and exits `code` (no cluster needed)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho '{words}' >&2\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_a_failing_read_is_unavailable_and_a_refused_sbatch_is_refused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """sacct or squeue failing refuses nothing (retry later); sbatch's refusal is for good. Slurm's words stand."""
    from orchestrator.errors import Refused, SlurmRefused, SlurmUnavailable, SubmitError, Unavailable
    from orchestrator.targets.slurm import accounting as slurm_accounting
    from orchestrator.targets.slurm.accounting import run_slurm
    from orchestrator.targets.slurm.target import sbatch

    bin_dir = tmp_path / "bin"
    _answering(bin_dir, "sacct", "sacct: error: Problem talking to the database: Connection refused")
    _answering(bin_dir, "sbatch", "sbatch: error: invalid partition specified: nope")
    monkeypatch.setenv("PATH", str(bin_dir))  # nothing else: sinfo is missing
    monkeypatch.setattr(slurm_accounting.time, "sleep", lambda _s: None)  # the retries' pauses

    poller = Poller()
    poller.watch(["7"])
    with pytest.raises(SlurmUnavailable) as read:
        poller.poll()  # after its retries
    assert isinstance(read.value, Unavailable) and not isinstance(read.value, Refused | SubmitError)
    assert str(read.value) == "sacct -n: sacct: error: Problem talking to the database: Connection refused"
    with pytest.raises(SlurmUnavailable, match=r"^sinfo not found: is this a Slurm login node"):
        run_slurm(["sinfo", "-h"], retries=0)

    with pytest.raises(SlurmRefused) as refused:
        sbatch([str(tmp_path / "job.sbatch")])
    assert isinstance(refused.value, SubmitError) and not isinstance(refused.value, Unavailable)
    assert str(refused.value) == "sbatch: error: invalid partition specified: nope"


@pytest.mark.parametrize(("text", "names"), [
    ("node[1-2]", ("node1", "node2")),
    ("node1", ("node1",)),
    ("node[1-3,7],gpu-a01", ("node1", "node2", "node3", "node7", "gpu-a01")),
    ("a[08-10]", ("a08", "a09", "a10")),  # zero padding kept
    ("rack[1-2]-n", ("rack1-n", "rack2-n")),
    ("None assigned", ()),  # pending
    ("node[1-99999]", ()),  # not a list a job of ours gets: nothing rather than 99999 names
    ("x[", ()),
])
def test_a_node_list_expands_as_slurm_writes_it(text: str, names: tuple[str, ...]) -> None:
    from orchestrator.targets.slurm.accounting import expand_hostlist

    assert expand_hostlist(text) == names


def test_the_nodes_of_an_allocation_come_with_its_state() -> None:
    text = ("41|NODE_FAIL|0:0||None|node[1-2]\n41.batch|CANCELLED||1200K||node1\n"
            "42|PENDING|0:0||Resources|None assigned\n")
    jobs = parse_sacct(text)
    assert jobs["41"].nodes == ("node1", "node2") and jobs["41"].state == "NODE_FAIL"
    assert jobs["42"].nodes == ()


def test_an_attempt_refused_for_too_few_nodes_says_which_were_avoided(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart away from a faulted node that leaves too few nodes ends refused in words that name the avoided
    node and the field, never waiting in silence (a stand-in sbatch says what Slurm says)."""
    from orchestrator.errors import SlurmRefused
    from orchestrator.targets.base import AttemptRef
    from orchestrator.targets.slurm.target import SlurmTarget
    from tests.helpers import job

    _answering(tmp_path / "bin", "sbatch",
               "sbatch: error: Batch job submission failed: Requested node configuration is not available")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    spec = job(target="slurm", backend="deepspeed", sharding="grad_op", batch={"micro": 1, "global": 2},
               resources={"nodes": 2, "gpus_per_node": 1, "cpus_per_node": 1, "avoid_nodes": ["node1"]},
               slurm={"partition": "debug"})
    ref = AttemptRef("ab12cd34", 2, str(tmp_path / "attempt-2"), str(tmp_path / "ckpt"), str(tmp_path),
                     str(tmp_path / "attempt-2" / "output.log"))
    target = SlurmTarget(cpu=True, state_dir=str(tmp_path / "state"))
    with pytest.raises(SlurmRefused) as refused:
        target.submit(target.render(spec, ref), ref)
    said = str(refused.value)
    assert said.startswith("spec.resources: ") and "once resources.avoid_nodes (node1: " in said, said
    assert said.endswith("(Slurm: sbatch: error: Batch job submission failed: Requested node configuration is not "
                         "available)"), said


def test_squeue_live_lines_give_state_reason_earlier_runs_and_nodes() -> None:
    """`squeue -h -O SQUEUE_LIVE` as Slurm 22.05 prints it (unlimited widths, `|` after each field)."""
    text = ("21434|PENDING|JobHeldUser|0||\n"
            "21500|RUNNING|None|1|node[1-2]|\n"
            "21501|PENDING|BeginTime|2||\n"
            "garbage\n|RUNNING|None|0|node1|\n")
    found = parse_squeue_live(text)
    assert sorted(found) == ["21434", "21500", "21501"]
    assert (found["21434"].phase, found["21434"].reason, found["21434"].nodes) == ("pending", "JobHeldUser", ())
    assert (found["21500"].phase, found["21500"].requeues, found["21500"].nodes) == ("running", 1, ("node1", "node2"))
    assert (found["21501"].requeues, found["21501"].source) == (2, "squeue")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("state", "reason", "stalled"), [
    ("PENDING", "ReqNodeNotAvail, UnavailableNodes:node1", True),  # as the dev cluster says it (node drained)
    ("PENDING", "PartitionDown", True),
    ("PENDING", "JobHeldUser", True),
    ("PENDING", "launch failed requeued held", True),
    ("PENDING", "Priority", False),
    ("PENDING", "Resources", False),
    ("PENDING", "QOSMaxJobsPerUserLimit", False),  # the queue working as it should
    ("RUNNING", "ReqNodeNotAvail", False),  # only a pending job stalls
    ("PENDING", "NotReqNodeNotAvailAtAll", False),
])
def test_only_pending_reasons_that_waiting_cannot_resolve_are_stalls(state: str, reason: str, stalled: bool) -> None:
    assert JobInfo("7", state, reason=reason).stalled is stalled
