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
