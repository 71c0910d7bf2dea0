"""Classification against real captured output (data/), and the outside-evidence rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.lifecycle.classify import SETTLED_LINES, Outcome, classify, fragmented_gib

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


def test_a_preemptions_notice_captured_on_the_dev_cluster_is_a_preemption_not_an_unknown_failure() -> None:
    """Slurm's SIGTERM to every task at a preemption: the ranks saved and stopped, and torchrun's agent, signalled
    too, died of it (its SignalException is the launcher's last word)."""
    f = classify(Outcome(exit_code=1, log_tail=read("preempted_slurm_notice.txt")))
    assert f is not None and f.kind == "preempted", f
    assert "got signal: 15" in f.evidence


@pytest.mark.parametrize("tail,kind", [
    ("torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 2\n", "unknown"),  # ^C
    ("[shardctl] SIGTERM (the pod is stopping: a preemption, a drain or a cancel): requesting a checkpoint\n"
     "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'x'\n", "user_error"),
    ("[shardctl] SIGTERM (the pod is stopping: a preemption, a drain or a cancel): requesting a checkpoint\n"
     "stopping after the checkpoint at step 40: the run is being terminated\n", "preempted"),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered\n"
     "torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 15\n", "node_fault"),
])
def test_a_stop_from_outside_is_a_preemption_only_when_nothing_else_went_wrong(tail: str, kind: str) -> None:
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f is not None and f.kind == kind, f


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


# Node faults and the network: the hardware or the fabric, each in its own words.

@pytest.mark.parametrize("line", [
    "[rank3]: RuntimeError: CUDA error: uncorrectable ECC error encountered",
    "[rank0]: torch.AcceleratorError: CUDA error: uncorrectable ECC error encountered",
    "gpu07:1234:5678 [3] include/alloc.h:48 NCCL WARN Cuda failure 'uncorrectable ECC error encountered'",
    "RuntimeError: CUDA driver error: CUDA_ERROR_ECC_UNCORRECTABLE",
    "RuntimeError: CUDA error: uncorrectable NVLink error detected during the execution",
    "RuntimeError: CUDA error: CUDA-capable device(s) is/are busy or unavailable",
    "Unable to determine the device handle for GPU0000:3B:00.0: GPU is lost.  Reboot the system to recover this GPU",
    "[Mon Nov 23 08:31:02 2026] NVRM: Xid (PCI:0000:3b:00): 79, pid=2517, name=python3, GPU has fallen off the bus.",
    "kernel: NVRM: Xid (PCI:0000:10:1c): 48, pid=1896, name=python, An uncorrectable double bit error (DBE) has been "
    "detected on GPU in the framebuffer at partition 0, subpartition 1.",
    "NVRM: Xid (PCI:0000:0f:00): 64, pid=57530, Row Remapper Error: (0x00000005d28c03a0) - All reserved rows for bank "
    "are remapped",
    "NVRM: Xid (PCI:0000:b3:00): 74, pid=4242, name=python, NVLink: fatal error detected on link 7(0x0, 0x0, 0x10000)",
    "NVRM: Xid (PCI:0000:61:00): 94, pid=9000, name=python, Contained: SM (0x1). RST: No, D-RST: No",
    "NVRM: Xid (PCI:0000:61:00): 95, pid=9000, name=python, Uncontained: FBHUB. RST: Yes, D-RST: No",
    "slurmstepd: error: *** JOB 41 ON gpu07 CANCELLED AT 2026-11-23T10:00:00 DUE TO NODE FAILURE, SEE SLURMCTLD LOG "
    "FOR DETAILS ***",
    "slurmstepd: error: *** STEP 41.0 ON gpu07 CANCELLED AT 2026-11-23T10:00:00 DUE TO NODE FAILURE, SEE SLURMCTLD "
    "LOG FOR DETAILS ***",
    "srun: error: Node failure on gpu07",
])
def test_a_failed_gpu_or_node_is_a_node_fault(line: str) -> None:
    f = classify(Outcome(exit_code=1, log_tail=f"step 7/100 loss 2.31\n{line}\n"))
    assert f is not None and f.kind == "node_fault" and line.endswith(f.evidence)  # less a [rankN]: prefix


@pytest.mark.parametrize("line", [
    "[rank0]: RuntimeError: CUDA error: an illegal memory access was encountered",
    "[rank0]: RuntimeError: CUDA error: unspecified launch failure",
    "[rank0]: RuntimeError: CUDA error: unknown error",
    "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate.",
    "NVRM: Xid (PCI:0000:10:1c): 13, pid=1896, Graphics SM Warp Exception on (GPC 0, TPC 1, SM 0): Out Of Range "
    "Address",
])
def test_a_cuda_error_that_is_usually_a_bug_is_not_a_node_fault(line: str) -> None:
    f = classify(Outcome(exit_code=1, log_tail=f"step 7/100 loss 2.31\n{line}\n"))
    assert f is not None and f.kind == "unknown"


WATCHDOG = ("[rank1]:[E1123 08:42:44.824031517 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation "
            "timeout: WorkNCCL(SeqNum=4711, OpType=ALLREDUCE, NumelIn=262144000, NumelOut=262144000, "
            "Timeout(ms)=600000) ran for 600012 milliseconds before timing out.")


@pytest.mark.parametrize("line", [
    WATCHDOG,
    "[rank3]:[E1123 08:52:44.100000000 ProcessGroupNCCL.cpp:1380] [PG ID 0 PG GUID 0(default_pg) Rank 3] Heartbeat "
    "monitor timed out! Process will be terminated after dumping debug info. workMetaList_.size()=2",
    "[rank1]: torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.hpp:"
    "317, remote process exited or there was a network error, NCCL version 2.21.5",
    "[rank1]: ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely.",
    "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1691, "
    "unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.19.3",
    "gpu08:77:90 [1] transport/net_ib.cc:1696 NCCL WARN NET/IB : Got completion from peer 10.0.0.7<52418> with "
    "status=12 opcode=0 len=0 vendor err 129 (Send) localGid ::ffff:10.0.0.8 remoteGids ::ffff:10.0.0.7",
    "gpu08:77:90 [1] transport/net_ib.cc:881 NCCL WARN NET/IB : Got completion from peer 10.0.0.7<52418> with error "
    "12, opcode 0, len 0, vendor err 129",
    "gpu08:77:90 [1] misc/socket.cc:58 NCCL WARN socketProgress: Connection closed by remote peer gpu07<45074>",
    "torch.distributed.DistNetworkError: The client socket has timed out after 600000ms while trying to connect to "
    "(10.0.0.7, 29500).",
    "[E1123 08:31:02.561275187 socket.cpp:1028] [c10d] The client socket has timed out after 600000ms while trying "
    "to connect to (127.0.0.1, 48315).",
    "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.7]:23456",
    "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:598] Read error [10.0.0.7]:40432: "
    "Connection reset by peer",
    "[rank1]: torch.distributed.DistBackendError: Connection reset by peer",
    "RuntimeError: Gloo connectFullMesh failed with [../third_party/gloo/gloo/transport/tcp/pair.cc:144] no error",
    "torch.distributed.DistStoreError: Timed out after 601 seconds waiting for clients. 1/2 clients joined.",
    "torch.distributed.DistStoreError: wait timeout after 600000ms, keys: /default_pg//0//cuda//0",
    "torch.distributed.DistStoreError: Socket Timeout",
    "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError",
    "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the C10d store has failed. "
    "See inner exception for details.",
])
def test_ranks_that_lost_each_other_are_a_network_failure(line: str) -> None:
    f = classify(Outcome(exit_code=1, log_tail=f"step 7/100 loss 2.31\n{line}\n"))
    assert f is not None and f.kind == "network"


@pytest.mark.parametrize("line", [
    "requests.exceptions.ConnectionError: ('Connection aborted.', ConnectionResetError(104, 'Connection reset by "
    "peer'))",
    "[rank0]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:"
    "1970, internal error - please report this issue to the NCCL developers, NCCL version 2.21.5",
    "[rank0]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, "
    "invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.21.5",
])
def test_errors_that_do_not_say_the_ranks_lost_each_other_are_not_network(line: str) -> None:
    f = classify(Outcome(exit_code=1, log_tail=f"step 7/100 loss 2.31\n{line}\n"))
    assert f is not None and f.kind == "unknown"


def _watchdog_abort(rank: int) -> str:
    """How a rank whose peer died ends (torch 2.x): the watchdog's lines, then std::terminate with its what()."""
    p = f"[rank{rank}]:"
    said = WATCHDOG.split("] [Rank 1] ", 1)[1].replace("Rank 1", f"Rank {rank}")
    return "".join(f"{p}{line}\n" for line in [
        f"[E1123 08:42:44.824031517 ProcessGroupNCCL.cpp:616] [Rank {rank}] {said}",
        f"[E1123 08:42:44.824513004 ProcessGroupNCCL.cpp:1785] [PG 0 (default_pg) Rank {rank}] Exception (either an "
        "error or timeout) detected by watchdog at work: 4711, last enqueued NCCL work: 4711, last completed NCCL "
        "work: 4710.",
        f"[E1123 08:42:44.824539286 ProcessGroupNCCL.cpp:630] [Rank {rank}] Some NCCL operations have failed or timed "
        "out. Due to the asynchronous nature of CUDA kernels, subsequent GPU operations might run on "
        "corrupted/incomplete data.",
        f"[E1123 08:42:44.824544637 ProcessGroupNCCL.cpp:636] [Rank {rank}] To avoid data inconsistency, we are taking "
        "the entire process down.",
        "terminate called after throwing an instance of 'c10::DistBackendError'",
        f"  what():  [PG 0 (default_pg) Rank {rank}] Process group watchdog thread terminated with exception: "
        f"[Rank {rank}] {said}",
        "Exception raised from checkTimeout at ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:618 (most recent "
        "call first):",
        *[f"frame #{i}: c10d::ProcessGroupNCCL::watchdogHandler() + 0x{i:x}0 (0x7f00 in /torch/lib/libtorch_cuda.so)"
          for i in range(12)],
    ])


def test_an_oom_on_one_rank_beats_the_watchdog_timeout_it_causes_on_another() -> None:
    """Rank 0 (one node) died of the H100 OOM; rank 1 (another node) waited in its all-reduce until NCCL's watchdog
    took it down 10 minutes later. The attempt died of the OOM, with its fragmentation."""
    oom = read("cuda_oom_h100.txt").split("E1123")[0]
    f = classify(Outcome(exit_code=1, log_tail=oom + _watchdog_abort(1)))
    assert f is not None and f.kind == "cuda_oom" and "Tried to allocate 25.10 GiB" in f.evidence
    assert "fragmentation: 16.97 GiB reserved but unallocated" in f.reason
    alone = classify(Outcome(exit_code=1, log_tail=_watchdog_abort(1)))
    assert alone is not None and alone.kind == "network" and "Watchdog caught" in alone.evidence


def test_a_bug_on_one_rank_beats_the_network_errors_of_its_peers() -> None:
    tail = ("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"/w/train.py\", line 7, in <module>\n"
            "[rank0]: KeyError: 'labels'\n"
            "[rank1]: Traceback (most recent call last):\n[rank1]:   File \"/w/train.py\", line 9, in <module>\n"
            "[rank1]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:"
            "317, remote process exited or there was a network error, NCCL version 2.21.5\n") + _watchdog_abort(2)
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f is not None and f.kind == "user_error" and f.evidence == "KeyError: 'labels'"


def test_a_node_fault_beats_the_network_errors_it_causes() -> None:
    """Rank 0's GPU hit an uncorrectable ECC error; its peer lost it (NCCL remote error, in the exception line,
    read before the death notices); then Slurm took the node down."""
    ecc = ("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"/w/train.py\", line 9, in <module>\n"
           "[rank0]: RuntimeError: CUDA error: uncorrectable ECC error encountered\n")
    peer = ("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"/w/train.py\", line 9, in <module>\n"
            "[rank1]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
            "ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error, NCCL version 2.21.5\n"
            "[rank1]: ncclRemoteError: A call failed possibly due to a network error or a remote process exiting "
            "prematurely.\n")
    assert classify(Outcome(exit_code=1, log_tail=peer + ecc)).kind == "node_fault"
    assert classify(Outcome(exit_code=1, log_tail=ecc + _watchdog_abort(1))).kind == "node_fault"
    # the node itself: only Slurm's line says so, after the peer's traceback; Slurm's NODE_FAIL arrives as preempted
    slurm = ("slurmstepd: error: *** STEP 41.0 ON gpu07 CANCELLED AT 2026-11-23T10:00:00 DUE TO NODE FAILURE, SEE "
             "SLURMCTLD LOG FOR DETAILS ***\n")
    f = classify(Outcome(exit_code=None, log_tail=peer + slurm, preempted=True))
    assert f is not None and f.kind == "node_fault" and "NODE FAILURE" in f.evidence
    assert classify(Outcome(exit_code=None, log_tail=peer, preempted=True)).kind == "preempted"


def test_nccls_last_error_after_a_network_symptom_names_the_hardware() -> None:
    """ncclUnhandledCudaError's "Last error:" line decides; so it does after a line that names only a symptom."""
    tail = ("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"t.py\", line 5, in <module>\n"
            "[rank1]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda "
            "error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5\n"
            "[rank1]: ncclUnhandledCudaError: Call to CUDA function failed.\n[rank1]: Last error:\n"
            "[rank1]: Cuda failure 'uncorrectable ECC error encountered'\n")
    assert classify(Outcome(exit_code=1, log_tail=tail)).kind == "node_fault"
    symptom = tail.replace("unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
                           "remote process exited or there was a network error")
    assert classify(Outcome(exit_code=1, log_tail=symptom)).kind == "node_fault"


def test_the_drivers_xid_after_a_vague_cuda_error_makes_it_a_node_fault() -> None:
    """"unspecified launch failure" alone is unknown (usually a bug); the Xid 79 the epilog appended says why."""
    tail = ("Traceback (most recent call last):\n  File \"/w/train.py\", line 9, in <module>\n"
            "RuntimeError: CUDA error: unspecified launch failure\n"
            "[Mon Nov 23 08:31:02 2026] NVRM: Xid (PCI:0000:3b:00): 79, pid=2517, name=python3, GPU has fallen off the "
            "bus.\n")
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f is not None and f.kind == "node_fault" and "Xid" in f.evidence


ORDINARY = "".join([
    "gpu07:77:77 [0] NCCL INFO Bootstrap : Using ib0:10.0.0.7<0>\n",
    "gpu07:77:77 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.\n",
    "gpu07:77:77 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.7<0>\n",
    "gpu07:77:77 [0] NCCL INFO Channel 00/32 :    0   1\n",
    "gpu07:77:77 [0] NCCL INFO Connected all rings\n",
    *[f"step {i}/400 loss {3 - i / 400:.4f} lr 1e-05 grad_norm 0.91 mem 61.2 GiB\n" for i in range(1, 400)],
    "gpu07:77:93 [0] NCCL INFO [Service thread] Connection closed by localRank 0\n",
    "gpu07:77:77 [0] NCCL INFO comm 0x55d0 rank 0 nranks 2 cudaDev 0 busId 3b000 - Destroy COMPLETE\n",
])


def test_ordinary_training_output_is_no_fault() -> None:
    assert classify(Outcome(exit_code=0, log_tail=ORDINARY)) is None
    f = classify(Outcome(exit_code=1, log_tail=ORDINARY))  # it failed, but nothing says of what
    assert f is not None and f.kind == "unknown"


def test_a_caught_nccl_error_the_run_survived_is_not_what_it_died_of() -> None:
    """A retry wrapper caught a store timeout and an NCCL remote error and went on for more than SETTLED_LINES."""
    caught = ("Traceback (most recent call last):\n  File \"/w/train.py\", line 30, in step\n"
              "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, "
              "remote process exited or there was a network error, NCCL version 2.21.5\n"
              "gpu07:77:90 [0] misc/socket.cc:58 NCCL WARN socketProgress: Connection closed by remote peer gpu08<1>\n"
              "retrying the step after a communication error\n")
    went_on = "".join(f"step {i}/500 loss 3.1\n" for i in range(SETTLED_LINES + 20))
    assert classify(Outcome(exit_code=0, log_tail=caught + went_on)) is None
    f = classify(Outcome(exit_code=1, log_tail=caught + went_on))
    assert f is not None and f.kind == "unknown"
    bug = "Traceback (most recent call last):\n  File \"t.py\", line 9\nNameError: name 'x'\n"
    assert classify(Outcome(exit_code=1, log_tail=caught + went_on + bug)).kind == "user_error"
    # ... but the same error as the run's last words is its cause
    assert classify(Outcome(exit_code=1, log_tail=went_on + caught)).kind == "network"


# Fragmentation: the OOM's own numbers say whether expandable segments can help.

def test_the_h100_oom_is_fragmented_and_the_reason_says_so() -> None:
    """25.10 GiB asked with 10.46 GiB free and 16.97 GiB reserved but unallocated: it would have fit."""
    tail = read("cuda_oom_h100.txt")
    assert fragmented_gib(tail) == pytest.approx(16.97)
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f.kind == "cuda_oom" and f.reason.endswith("; fragmentation: 16.97 GiB reserved but unallocated")
    assert fragmented_gib(f.reason) == pytest.approx(16.97)  # the policy may read it back from the reason


def test_a_small_request_failing_beside_gibibytes_it_cannot_use_is_fragmentation() -> None:
    """Measured, FSDP: 162 MiB asked, 36 MiB free, 3.41 GiB reserved but unallocated (4% of what was reserved)."""
    f = classify(Outcome(exit_code=1, log_tail=read("cuda_oom_fragmented_fsdp_h100.txt")))
    assert f.kind == "cuda_oom" and "fragmentation: 3.41 GiB reserved but unallocated" in f.reason


def test_a_request_too_big_for_free_plus_unallocated_is_not_fragmentation() -> None:
    """Measured, ZeRO-2: 25.10 GiB asked, 2.56 GiB free + 11.37 GiB unallocated: no allocator setting makes it fit."""
    tail = read("cuda_oom_zero2_h100.txt")
    assert fragmented_gib(tail) is None
    f = classify(Outcome(exit_code=1, log_tail=tail))
    assert f.kind == "cuda_oom" and "fragmentation" not in f.reason


@pytest.mark.parametrize("message,gib", [
    # allocator slack, not fragmentation
    ("CUDA out of memory. Tried to allocate 1.25 GiB. GPU 1 has a total capacity of 93.02 GiB of which 1.18 GiB is "
     "free. Process 2752205 has 91.82 GiB memory in use. Of the allocated memory 90.63 GiB is allocated by PyTorch, "
     "and 120.54 MiB is reserved by PyTorch but unallocated.", None),
    ("CUDA out of memory. Tried to allocate 5.96 GiB. GPU 0 has a total capacty of 23.69 GiB of which 5.25 GiB is "
     "free. Of the allocated memory 17.88 GiB is allocated by PyTorch, and 0 bytes is reserved by PyTorch but "
     "unallocated.", None),
    # torch with CUDA graphs' private pools in the message
    ("CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 120.00 MiB "
     "is free. Of the allocated memory 70.10 GiB is allocated by PyTorch, with 2.00 GiB allocated in private pools "
     "(e.g., CUDA Graphs), and 6.50 GiB is reserved by PyTorch but unallocated.", 6.5),
    # torch < 2.1: reserved in total minus allocated
    ("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 10.56 GiB already "
     "allocated; 3.44 MiB free; 14.74 GiB reserved in total by PyTorch)", 4.18),
    ("KeyError: 'labels'", None),
])
def test_fragmented_gib(message: str, gib: float | None) -> None:
    assert fragmented_gib(message) == (pytest.approx(gib) if gib is not None else None)
