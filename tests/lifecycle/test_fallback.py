"""The fallback policy is pure: same inputs, same decision; each rung tested for what it changes."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from orchestrator.compile import rules
from orchestrator.compile.rungs import config_key
from orchestrator.lifecycle.classify import Failure, Outcome
from orchestrator.lifecycle.fallback import Next, Stop, matching_rule, next_step, restarts
from orchestrator.spec.models import TrainingJob
from tests.helpers import job

CUDA_OOM = Failure("cuda_oom", "CUDA out of memory")
HOST_OOM = Failure("host_oom", "killed by the OOM killer")


def walk(start, failure=CUDA_OOM, limit=20):
    tried = [start]
    rungs = []
    while len(rungs) < limit:
        d = next_step(start, tried, failure)
        if isinstance(d, Stop):
            return rungs, tried, d
        rungs.append(d.rung)
        tried.append(d.job)
    raise AssertionError("ladder did not end")


def test_default_ladder_order_on_deepspeed() -> None:
    start = job(backend="deepspeed", sharding="none", batch={"micro": 4, "global": 8}, resources={"gpus_per_node": 2},
                fallback={"max_attempts": 20})
    rungs, tried, stop = walk(start)
    assert rungs[:5] == ["shard_more", "shard_more", "shard_more", "activation_checkpointing", "halve_micro_batch"]
    assert [j.spec.sharding for j in tried[:4]] == ["none", "optimizer", "grad_op", "full"]
    assert "switch_backend" in rungs and rungs.index("switch_backend") < rungs.index("offload_optimizer_cpu")
    for j in tried:
        assert rules.global_batch(j.spec) == 8  # global batch kept throughout
        assert not rules.errors(rules.check(j))  # every proposal is a valid spec
    assert len({config_key(j) for j in tried}) == len(tried)  # never the same config twice
    assert "no rung" in stop.reason


def test_fsdp_goes_to_deepspeed_only_for_nvme_with_the_precision_warning() -> None:
    start = job(backend="fsdp", sharding="full", activation_checkpointing=True, batch={"micro": 1},
                offload={"optimizer": "cpu", "params": "cpu"}, fallback={"max_attempts": 10})
    d = next_step(start, [start], CUDA_OOM)
    assert isinstance(d, Stop)  # nothing left without an NVMe path
    start2 = start.with_spec(offload=start.spec.offload.model_copy(update={"nvme_path": "/nvme"}))
    d2 = next_step(start2, [start2], CUDA_OOM)
    assert isinstance(d2, Next) and d2.rung == "offload_nvme"
    assert d2.job.spec.backend == "deepspeed" and d2.job.spec.offload.optimizer == "nvme"
    assert "fp32 master weights" in d2.reason


def test_host_oom_never_offloads_to_cpu() -> None:
    start = job(backend="deepspeed", sharding="full", activation_checkpointing=True, batch={"micro": 1})
    d = next_step(start, [start], HOST_OOM)
    assert isinstance(d, Stop)


def test_halve_needs_the_placeholder() -> None:
    start = job(backend="fsdp", sharding="full", activation_checkpointing=True, batch={"micro": 8},
                entrypoint={"script": "t.py", "args": []})
    d = next_step(start, [start], CUDA_OOM)
    assert isinstance(d, Next) and d.rung == "offload_optimizer_cpu"


def test_timeout_and_preemption_resume_the_same_config() -> None:
    start = job()
    for kind in ("timeout", "preempted"):
        d = next_step(start, [start], Failure(kind, kind))
        assert isinstance(d, Next) and d.rung is None and d.job == start and "resume" in d.reason


def test_a_full_disk_stops_with_what_to_do_and_is_not_retried() -> None:
    start = job()
    d = next_step(start, [start], Failure("disk_full", "no space left on device (/ckpt)"))
    assert isinstance(d, Stop) and "free some space" in d.reason and "/ckpt" in d.reason


def test_user_error_and_unknown_stop() -> None:
    start = job()
    assert "never retried" in next_step(start, [start], Failure("user_error", "ImportError")).reason
    assert isinstance(next_step(start, [start], Failure("unknown", "exit 3")), Stop)


def test_max_attempts_and_disabled() -> None:
    start = job(fallback={"max_attempts": 1})
    assert "max_attempts" in next_step(start, [start], CUDA_OOM).reason
    off = job(fallback={"enabled": False})
    assert "disabled" in next_step(off, [off], CUDA_OOM).reason


def test_explicit_ladder_replaces_auto() -> None:
    start = job(backend="deepspeed", sharding="grad_op", fallback={"ladder": ["offload_optimizer_cpu"]})
    d = next_step(start, [start], CUDA_OOM)
    assert isinstance(d, Next) and d.rung == "offload_optimizer_cpu" and d.job.spec.sharding == "grad_op"
    assert isinstance(next_step(start, [start, d.job], CUDA_OOM), Stop)


def test_pure() -> None:
    start = job(backend="deepspeed", sharding="grad_op")
    assert next_step(start, [start], CUDA_OOM) == next_step(start, [start], CUDA_OOM)


def test_rungs_predicted_not_to_fit_are_skipped_and_named() -> None:
    from orchestrator.lifecycle.classify import Failure
    from orchestrator.lifecycle.fallback import Next, Stop, next_step
    from tests.helpers import job as make

    j = make(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16},
             resources={"gpus_per_node": 2})
    oom = Failure("cuda_oom", "CUDA out of memory", "")
    decision = next_step(j, [j], oom, fits=lambda c: c.spec.sharding != "full")  # ZeRO-3 predicted too big
    assert isinstance(decision, Next) and decision.rung == "activation_checkpointing"
    assert "skipped, predicted not to fit: shard_more" in decision.reason
    stop = next_step(j, [j], oom, fits=lambda c: False)
    assert isinstance(stop, Stop) and "predicted not to fit" in stop.reason


# --- resilience rules and restarts --------------------------------------------------------------------------


def ruled(*rules: dict, max_restarts: int = 3) -> TrainingJob:
    return job(resilience={"rules": list(rules), "max_restarts": max_restarts})


def test_a_log_rule_makes_a_custom_error_fail_without_a_retry() -> None:
    start = ruled({"when": {"log": r"DataCorrupted: shard [0-9]+"}, "then": "fail"})
    failure = Failure("unknown", "exited 1 with no recognised cause")
    outcome = Outcome(exit_code=1, log_tail="step 3\nDataCorrupted: shard 17 has a bad header\n")
    index = matching_rule(start.spec.resilience.rules, failure, outcome)
    assert index == 0
    d = next_step(start, [start], replace(failure, rule=index))
    assert isinstance(d, Stop) and "resilience.rules[0]" in d.reason and "not retried" in d.reason


def test_an_exit_code_rule_retries_the_same_config_until_max_restarts_are_spent() -> None:
    """Exit 75 as the worker's code: the launcher says 1, torchrun's failure block or the simple launcher's
    CalledProcessError says 75."""
    start = ruled({"when": {"exit_code": 75}, "then": "retry"}, max_restarts=2)
    failure = Failure("unknown", "exited 1 with no recognised cause")
    for tail in ("subprocess.CalledProcessError: Command '['/usr/bin/python', 'train.py']' returned non-zero exit "
                 "status 75.\n",
                 "Root Cause (first observed failure):\n[0]:\n  time      : 2026-12-06_10:00:00\n  host      : n1\n"
                 "  rank      : 1 (local_rank: 1)\n  exitcode  : 75 (pid: 4242)\n"):
        assert matching_rule(start.spec.resilience.rules, failure, Outcome(exit_code=1, log_tail=tail)) == 0
    assert matching_rule(start.spec.resilience.rules, failure, Outcome(exit_code=1, log_tail="exit status 7\n")) is None
    decided = replace(failure, rule=0)
    tried = [start]
    for n in (1, 2):
        d = next_step(start, tried, decided)
        assert isinstance(d, Next) and d.rung is None and d.job == start, d
        assert f"restart {n} of 2" in d.reason and "resilience.rules[0]" in d.reason
        tried.append(d.job)
    d = next_step(start, tried, decided)
    assert isinstance(d, Stop) and "max_restarts: 2" in d.reason


def test_restarts_are_counted_apart_from_the_configs_of_the_ladder() -> None:
    """Three timeouts of one config spend max_restarts, not fallback.max_attempts: an OOM after them still
    gets its rung."""
    start = job(fallback={"max_attempts": 2}, resilience={"max_restarts": 3})
    tried = [start, start, start]
    assert restarts(tried) == 2
    d = next_step(start, tried, CUDA_OOM)
    assert isinstance(d, Next) and d.rung is not None


def test_transient_faults_restart_and_a_rule_can_send_one_down_the_ladder() -> None:
    start = job()
    for kind in ("hang", "node_fault", "network", "timeout", "preempted"):
        d = next_step(start, [start], Failure(kind, kind))
        assert isinstance(d, Next) and d.rung is None and "restart 1 of 3" in d.reason, (kind, d)
    sent = ruled({"when": {"kind": "network"}, "then": "fallback"})
    d = next_step(sent, [sent], Failure("network", "NCCL watchdog timeout", rule=0))
    assert isinstance(d, Next) and d.rung is not None and "resilience.rules[0]" in d.reason


def test_the_first_matching_rule_decides_and_a_cancel_is_never_matched() -> None:
    start = ruled({"when": {"kind": "user_error"}, "then": "retry"}, {"when": {"log": "Error"}, "then": "fail"})
    rules = start.spec.resilience.rules
    out = Outcome(exit_code=1, log_tail="KeyError: 'x'\n")
    assert matching_rule(rules, Failure("user_error", "KeyError"), out) == 0
    assert matching_rule(rules, Failure("unknown", "?"), out) == 1
    assert matching_rule(rules, Failure("cancelled", "cancelled by the user"), out) is None


@pytest.mark.timeout(30)
def test_a_catastrophic_pattern_is_matched_in_linear_time() -> None:
    """`(a+)+$` takes Python's re exponential time on a line of a's ending in b; RE2 answers at once."""
    start = ruled({"when": {"log": "(a+)+$"}, "then": "fail"})
    tail = "a" * (256 * 1024 - 2) + "b\n"
    t0 = time.monotonic()
    assert matching_rule(start.spec.resilience.rules, Failure("unknown", "?"),
                         Outcome(exit_code=1, log_tail=tail)) is None
    assert time.monotonic() - t0 < 2.0


def test_a_fragmentation_oom_first_tries_expandable_segments_where_the_user_turned_them_off() -> None:
    """The real H100 message (25.10 GiB asked, 16.97 GiB reserved but unallocated): with the user's own allocator
    settings the first remedy is expandable segments, kept with them; with shardctl's default (expandable segments
    on) there is nothing to gain there and the ladder goes on."""
    from pathlib import Path

    from orchestrator.lifecycle.classify import classify

    tail = (Path(__file__).parent / "data" / "cuda_oom_h100.txt").read_text()
    failure = classify(Outcome(exit_code=1, log_tail=tail))
    assert failure is not None and failure.kind == "cuda_oom" and "fragmentation" in failure.reason
    own = job(entrypoint={"script": "t.py", "args": ["--bs", "{micro_batch}"],
                          "env": {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}})
    d = next_step(own, [own], failure)
    assert isinstance(d, Next) and d.rung == "expandable_segments", d
    assert d.job.spec.entrypoint.env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128,expandable_segments:True"
    assert "reserved but unallocated" in d.reason and config_key(d.job) != config_key(own)
    again = next_step(own, [own, d.job], failure)  # it ran out again: a real rung now
    assert isinstance(again, Next) and again.rung not in (None, "expandable_segments")
    default = job(entrypoint={"script": "t.py", "args": ["--bs", "{micro_batch}"]})
    d = next_step(default, [default], failure)
    assert isinstance(d, Next) and d.rung != "expandable_segments"
