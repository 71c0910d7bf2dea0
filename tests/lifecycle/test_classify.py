"""Classification against real captured output (data/), and the outside-evidence rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.lifecycle.classify import Outcome, classify

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_cuda_oom_through_torchrun() -> None:
    f = classify(Outcome(exit_code=1, log_tail=read("cuda_oom_h100.txt")))
    assert f.kind == "cuda_oom" and f.is_oom
    assert "Tried to allocate 25.10 GiB" in f.evidence


def test_host_oom_from_the_cpu_allocator_captured_here() -> None:
    f = classify(Outcome(exit_code=1, log_tail=read("host_oom_cpu_allocator.txt")))
    assert f.kind == "host_oom" and "DefaultCPUAllocator" in f.evidence


def test_user_error_captured_from_accelerate_launch() -> None:
    f = classify(Outcome(exit_code=1, log_tail=read("user_error_import.txt")))
    assert f.kind == "user_error" and "nonexistent_training_lib" in f.evidence


def test_sigkill_needs_outside_evidence_to_be_an_oom() -> None:
    tail = "exitcode  : -9 (pid: 4242)\nSignal 9 (SIGKILL) received by PID 4242\n"
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "unknown"
    assert classify(Outcome(exit_code=1, log_tail=tail, oom_killed=True)).kind == "host_oom"


@pytest.mark.parametrize("line,kind", [
    ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "cuda_oom"),
    ("NCCL WARN Cuda failure 2 'out of memory'", "cuda_oom"),
    ("RuntimeError: CUDA error: out of memory", "cuda_oom"),
    ("[rank1]: MemoryError", "host_oom"),
    ("terminate called after throwing an instance of 'std::bad_alloc'", "host_oom"),
    ("slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-11-23T10:00:00 DUE TO TIME LIMIT ***", "timeout"),
    ("[rank0]:   File \"t.py\", line 3\n[rank0]: SyntaxError: invalid syntax", "user_error"),
    ("train.py: error: unrecognized arguments: --bogus", "user_error"),
    ("OSError: [Errno 28] No space left on device", "disk_full"),
    ("[rank0]: OSError: [Errno 122] Disk quota exceeded: '/ckpt/step-10'", "disk_full"),
    ("RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0: No space left on device",
     "disk_full"),
])
def test_table(line: str, kind: str) -> None:
    assert classify(Outcome(exit_code=1, log_tail=f"noise\n{line}\nmore noise\n")).kind == kind


def test_oom_wins_over_the_errors_it_causes() -> None:
    tail = read("cuda_oom_h100.txt") + "\n[rank1]: ImportError: cannot import name 'x' during teardown\n"
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "cuda_oom"


def test_flags_and_success() -> None:
    assert classify(Outcome(exit_code=0)) is None
    assert classify(Outcome(exit_code=None, signal=15, cancelled=True)).kind == "cancelled"
    assert classify(Outcome(exit_code=1, timed_out=True)).kind == "timeout"
    assert classify(Outcome(exit_code=1, preempted=True)).kind == "preempted"
    assert classify(Outcome(exit_code=3, log_tail="ValueError: bad\n")).kind == "unknown"


def test_cgroup_oom_kill_of_a_deepspeed_worker_captured_here() -> None:
    """examples/oom-fallback.yaml under a 2 GiB cgroup: the kernel killed rank 0, torchrun then
    sent SIGTERM to rank 1. The cgroup's oom_kill counter is what makes it an OOM."""
    tail = read("host_oom_cgroup_kill.txt")
    assert "Signal 15 (SIGTERM) received" in tail  # the peer rank torn down by torchrun
    with_evidence = classify(Outcome(exit_code=1, log_tail=tail, oom_killed=True))
    assert with_evidence.kind == "host_oom"
    without = classify(Outcome(exit_code=1, log_tail=tail))
    assert without.kind == "unknown" and "killed by SIGKILL" in without.reason  # not a preemption
    assert "exitcode  : -9" in without.evidence


# Finding 6: classification reads what the run died of, not everything it printed.

def test_a_keyerror_after_an_enomem_notice_is_a_user_error_not_host_oom() -> None:
    """The finding's script, captured: it logged 'Cannot allocate memory (falling back...)' and then raised
    KeyError on both ranks. It was relaunched 8 times as host_oom; it died of the KeyError."""
    tail = read("keyerror_after_enomem_notice.txt")
    assert "Cannot allocate memory" in tail
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f.kind == "user_error" and not f.is_oom
    assert f.evidence == "KeyError: 'labels'"


def test_a_notice_printed_between_a_peer_traceback_and_the_end_is_not_the_cause() -> None:
    """Ranks interleave in one stream: rank 0 logs the notice after rank 1 died, then torchrun stops it."""
    tail = ("Traceback (most recent call last):\n  File \"/w/train.py\", line 7, in <module>\n"
            "    labels = batch[\"labels\"]\nKeyError: 'labels'\n"
            "[rank 0] pinned host buffer: Cannot allocate memory (falling back to a pageable buffer)\n"
            "step 3/10 loss 4.7000\n")
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "user_error"


def test_a_caught_oom_long_before_the_end_is_not_what_the_run_died_of() -> None:
    caught = read("cuda_oom_h100.txt").split("E1123")[0].replace("[rank0]: ", "")  # the worker's traceback only
    went_on = "".join(f"step {i}/500 loss 3.1\n" for i in range(200))
    tail = caught + went_on + "Traceback (most recent call last):\n  File \"t.py\", line 9\nNameError: name 'x'\n"
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "user_error"
    # ... but the same OOM as the run's last words is its cause
    assert classify(Outcome(exit_code=1, log_tail=went_on + caught)).kind == "cuda_oom"


def test_an_oom_chained_to_the_final_exception_counts() -> None:
    tail = ("Traceback (most recent call last):\n  File \"t.py\", line 3, in step\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n  File \"t.py\", line 9, in <module>\n"
            "RuntimeError: the step failed\n")
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "cuda_oom"


def test_nccl_out_of_memory_in_the_continuation_of_a_generic_exception() -> None:
    tail = ("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"t.py\", line 5, in <module>\n"
            "[rank1]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda "
            "error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5\n"
            "[rank1]: ncclUnhandledCudaError: Call to CUDA function failed.\n[rank1]: Last error:\n"
            "[rank1]: Cuda failure 2 'out of memory'\n")
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "cuda_oom"


def test_a_cpp_abort_of_one_rank_before_a_peer_traceback_is_the_oom() -> None:
    tail = ("terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n"
            "Traceback (most recent call last):\n  File \"t.py\", line 5, in <module>\n"
            "torch.distributed.DistBackendError: Connection reset by peer\n")
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "host_oom"


def test_the_simple_launchers_called_process_error_is_set_aside() -> None:
    tail = ("Traceback (most recent call last):\n  File \"t.py\", line 2, in <module>\nKeyError: 'labels'\n"
            "Traceback (most recent call last):\n  File \"/venv/bin/accelerate\", line 8, in <module>\n"
            "    sys.exit(main())\n"
            "subprocess.CalledProcessError: Command '['/venv/bin/python', 't.py']' returned non-zero exit status 1.\n")
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f.kind == "user_error" and "KeyError" in f.evidence


def test_shardctls_own_refusal_to_start_is_a_user_error() -> None:
    tail = "[shardctl] cannot start the run: entrypoint.env_from: HF_TOKEN is not set in the environment\n"
    f = classify(Outcome(exit_code=2, log_tail=tail))
    assert f.kind == "user_error" and "HF_TOKEN" in f.evidence


def test_srun_refusing_to_start_the_step_is_a_refusal_in_slurms_words() -> None:
    """Captured on the dev cluster (DefMemPerCPU): an attempt submitted from inside an allocation that
    leaked SLURM_MEM_PER_NODE into it. Slurm's words are the reason, and the policy never retries it."""
    f = classify(Outcome(exit_code=1, log_tail=read("srun_fatal_mem_conflict.txt")))
    assert f is not None and f.kind == "refused"
    assert f.reason.startswith("Slurm's srun refused to start the job step: srun: fatal: SLURM_MEM_PER_CPU")
    assert "mutually exclusive" in f.evidence


@pytest.mark.parametrize("line", [
    "srun: error: Unable to create step for job 41: Memory required by task is not available",
    "srun: error: Unable to allocate resources: Invalid account or account/partition combination specified",
    "srun: error: Invalid generic resource (gres) specification",
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size "
    "and/or time limits)",
])
def test_slurm_refusals_of_a_step_or_submission_are_refusals(line: str) -> None:
    f = classify(Outcome(exit_code=1, log_tail=f"[shardctl] Slurm job 41 on node1\n{line}\n"))
    assert f is not None and f.kind == "refused" and line in f.reason


def test_srun_reporting_a_failed_worker_is_not_a_refusal() -> None:
    """`srun: error: NODE: task N: Exited with exit code 1` is how srun reports the worker's own failure."""
    tail = ("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\nKeyError: 'lr'\n"
            "srun: error: node1: task 0: Exited with exit code 1\n")
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f is not None and f.kind == "user_error" and "KeyError" in f.evidence
    bare = classify(Outcome(exit_code=1, log_tail="step 3/10\nsrun: error: node1: task 0: Exited with exit code 1\n"))
    assert bare is not None and bare.kind == "unknown"


def test_an_oom_kill_wins_over_the_refusal_it_may_print() -> None:
    tail = "srun: error: Unable to create step for job 7: Job/step already completing or completed\n"
    f = classify(Outcome(exit_code=0, signal=9, log_tail=tail, oom_killed=True))
    assert f is not None and f.kind == "host_oom"


def test_a_full_filesystem_at_the_end_is_the_cause_when_the_log_could_not_say_it() -> None:
    """Nothing of the death reached the log (it is on the full disk): the target's outside evidence decides,
    over "exited 1 with no recognised cause" and over a wrapper that vanished (read as preempted)."""
    f = classify(Outcome(exit_code=1, log_tail="step 3/10\n", no_space="/scratch/run"))
    assert f.kind == "disk_full" and "/scratch/run" in f.reason
    assert classify(Outcome(exit_code=None, preempted=True, no_space="/scratch/run")).kind == "disk_full"
    oom = read("host_oom_cpu_allocator.txt")
    assert classify(Outcome(exit_code=1, log_tail=oom, no_space="/scratch/run")).kind == "host_oom"


def test_evidence_keeps_a_message_whole_across_a_carriage_return() -> None:
    """Lines are cut at \\n only, as the log reader cuts them: a \\r inside the message stays in the evidence."""
    f = classify(Outcome(exit_code=1, log_tail="step 1\nTypeError: bad value succeeded\rfailed\n"))
    assert f.kind == "user_error" and f.evidence == "TypeError: bad value succeeded\rfailed"
