"""The fallback policy is pure: same inputs, same decision; each rung tested for what it changes."""

from __future__ import annotations

from orchestrator.compile import rules
from orchestrator.compile.rungs import config_key
from orchestrator.lifecycle.classify import Failure
from orchestrator.lifecycle.fallback import Next, Stop, next_step
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
