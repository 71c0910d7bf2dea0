"""What `status`, `history`, `list` and `--json` show: one view of a job and its attempts.

The JSON shape is documented in docs/cli-json.md and is stable within `format` 1: fields may be
added, never renamed or removed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.intake import snapshot
from orchestrator.store.jobstore import AttemptRecord, JobRecord, Store
from orchestrator.store.summary import CONFIG_PREFIX

if TYPE_CHECKING:
    from orchestrator.spec.models import TrainingJobSpec

FORMAT = 1


def iso(ts: float | None) -> str | None:
    """A record's time as ISO 8601 UTC; None for none, or for one no calendar holds (a record edited by hand,
    `1e308`): a view never fails on a time."""
    if not ts:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


_CONFIGS: dict[str, dict[str, Any]] = {}  # an attempt's spec (as sorted JSON text) -> its knobs
_CONFIGS_MAX = 256
CONFIG_VERSION = 1  # bump when _config gives something else for the same spec
_CONFIG_KEYS = ("backend", "sharding", "zero_stage", "fsdp_strategy", "offload", "micro_batch", "grad_accum",
                "global_batch", "activation_checkpointing")  # _config's, in its order (a kept file's are sorted)
_OFFLOAD_KEYS = ("optimizer", "params")


def _config(spec: TrainingJobSpec) -> dict[str, Any]:
    from orchestrator.compile import rules  # with the spec's models: imported when a config is worked out

    return {
        "backend": spec.backend,
        "sharding": spec.sharding,
        "zero_stage": rules.zero_stage(spec) if spec.backend == "deepspeed" else None,
        "fsdp_strategy": rules.fsdp_strategy(spec) if spec.backend == "fsdp" else None,
        "offload": {"optimizer": spec.offload.optimizer, "params": spec.offload.params},
        "micro_batch": spec.batch.micro,
        "grad_accum": rules.grad_accum(spec),
        "global_batch": rules.global_batch(spec),
        "activation_checkpointing": spec.activation_checkpointing,
    }


def attempt_config(spec: dict[str, Any], store: Store | None = None, job_id: str | None = None) -> dict[str, Any]:
    """The knobs the fallback turns, from an attempt's spec (a TrainingJob's JSON form). An attempt's spec
    never changes, so it is validated once: `--wait` and `logs -f` rebuild the view several times a second.
    With a store and the attempt's job, what was worked out once is kept in the job's directory
    (`config-v<N>-<key>.json`, keyed by the spec, the shardctl version and CONFIG_VERSION), so that a later
    `status` of an unfinished job reads it instead of importing pydantic's models to work it out again."""
    key = json.dumps(spec, sort_keys=True)
    found = _CONFIGS.get(key)
    if found is None:
        name = _config_file(key) if store is not None and job_id else None
        found = _kept_config(store, job_id, name) if store is not None and job_id and name else None
        if found is None:
            from orchestrator.spec.models import TrainingJob

            # as a kept one reads back (all of it JSON's types already): the same whether it was kept or not
            found = json.loads(json.dumps(_config(TrainingJob.model_validate(spec).spec)))
            if store is not None and job_id and name:
                store.keep_cached(job_id, name, {"version": CONFIG_VERSION, "digest": _config_digest(name, found),
                                                 "config": found})
        if len(_CONFIGS) >= _CONFIGS_MAX:
            _CONFIGS.clear()
        _CONFIGS[key] = found
    return copy.deepcopy(found)


def _config_file(spec_key: str) -> str:
    digest = hashlib.sha256(json.dumps([spec_key, __version__, CONFIG_VERSION]).encode()).hexdigest()[:24]
    return f"{CONFIG_PREFIX}{CONFIG_VERSION}-{digest}.json"


def _config_digest(name: str, config: Any) -> str:
    return hashlib.sha256(json.dumps([name, config], sort_keys=True).encode()).hexdigest()


def _kept_config(store: Store, job_id: str, name: str) -> dict[str, Any] | None:
    """A config kept by attempt_config, None when there is none; one that is not what attempt_config keeps
    (another version's, damaged: its digest, of its name and content, does not match) is removed, to be worked
    out and kept again."""
    kept = store.cached(job_id, name)
    if kept is None:
        return None
    config, offload = kept.get("config"), None
    if isinstance(config, dict):
        offload = config.get("offload")
    if (kept.get("version") == CONFIG_VERSION and isinstance(config, dict) and set(config) == set(_CONFIG_KEYS)
            and kept.get("digest") == _config_digest(name, config)
            and isinstance(offload, dict) and set(offload) == set(_OFFLOAD_KEYS)):
        return {**{k: config[k] for k in _CONFIG_KEYS}, "offload": {k: offload[k] for k in _OFFLOAD_KEYS}}
    store.drop_cached(job_id, name)
    return None


def attempt_json(a: AttemptRecord, with_progress: bool = True, store: Store | None = None) -> dict[str, Any]:
    end = a.ended_at or (None if a.ended else time.time())
    duration = round(end - a.started_at, 1) if a.started_at and end else None
    return {
        "number": a.number,
        "state": a.state,
        "reason": a.reason,
        "rung": a.rung,
        **attempt_config(a.spec, store, a.job_id),
        "resume_from": a.resume_from,
        "started_at": iso(a.started_at),
        "ended_at": iso(a.ended_at),
        "duration_s": duration,
        "exit_code": a.exit_code,
        "signal": a.signal,
        "failure": a.failure.to_json() if a.failure else None,
        "peak_memory_bytes": a.peak_memory_bytes,
        "preemptions": a.preemptions or 0,  # restarted in place by the target (Slurm requeue); resumed
        "warnings": list(a.warnings),
        "supervisor_error": a.supervisor_error,
        "target_state": None if a.ended else a.target_state,
        "stalled": a.stalled,
        "stalled_at": iso(a.stalled_at),
        "run_dir": a.run_dir or None,  # None where the attempt runs in a cluster (no directory of ours)
        "log": a.log_path or None,  # None where the output is read from the cluster (`shardctl logs`)
        "external_id": a.external_id,  # the target's id: wrapper pid, Slurm job id, Kubernetes Job name
        "job_name": a.external_id,  # format 1 had it for Kubernetes attempts only; the same as external_id
        "progress": last_progress(a.log_path, duration, running=not a.ended) if with_progress and a.log_path else None,
    }


def job_json(job: JobRecord, attempts: list[AttemptRecord], supervised: bool | None = None,
             with_progress: bool = True, store: Store | None = None) -> dict[str, Any]:
    """The job view; `with_progress=False` skips reading the attempts' logs (the live view, which
    rebuilds this several times a second, reads progress itself). With `store` (the job's), each attempt's
    config is kept in the job's directory once worked out (attempt_config): the same view, made cheaper."""
    return {
        "format": FORMAT,
        "id": job.id,
        "name": job.name,
        "target": job.target,
        "state": job.state,
        "reason": job.reason,
        "source": job.source,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "checkpoint_dir": job.checkpoint_dir,
        "code": snapshot.of_workdir(job.workdir),  # the code every attempt ran (spec.workdir), None without one
        "max_attempts": max_attempts(job.spec["spec"]),
        "supervised": supervised,
        "namespace": job.options.get("namespace"),
        "attempts": [attempt_json(a, with_progress, store) for a in attempts],
    }


def max_attempts(spec: dict[str, Any]) -> int | None:
    """The most attempts the job may make: its configs (fallback.max_attempts) and the restarts of one
    (resilience.max_restarts; 3 in records made before it existed)."""
    configs = (spec.get("fallback") or {}).get("max_attempts")
    restarts = (spec.get("resilience") or {}).get("max_restarts", 3)
    if not isinstance(configs, int) or not isinstance(restarts, int):
        return None
    return configs + restarts


def describe_config(c: dict[str, Any]) -> str:
    level = f"ZeRO-{c['zero_stage']}" if c["backend"] == "deepspeed" else c["fsdp_strategy"]
    parts = [f"{c['backend']} {level}", f"micro {c['micro_batch']} x accum {c['grad_accum']}"]
    if c["activation_checkpointing"]:
        parts.append("activation checkpointing")
    if c["offload"] != {"optimizer": "none", "params": "none"}:
        parts.append(f"offload optimizer={c['offload']['optimizer']} params={c['offload']['params']}")
    return ", ".join(parts)


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def last_progress(log_path: str, duration_s: float | None, running: bool) -> dict[str, Any] | None:
    """The attempt's progress as its log shows it (orchestrator/views/progress.py, docs/progress.md)."""
    from orchestrator.views import progress as progress_of

    found = progress_of.read(log_path, elapsed_s=duration_s, running=running)
    return found.as_json() if found is not None else None


def code_text(code: dict[str, Any]) -> str:
    return (f"code: snapshot {code['digest'][:19]} of {code['source']} ({code['files']} files, "
            f"{snapshot.size_text(code['bytes'])}), run by every attempt from {code['path']}")


def history_text(view: dict[str, Any]) -> str:
    out = [f"job {view['id']} ({view['name']}, target {view['target']}): {view['state']}"
           + (f" - {view['reason']}" if view["reason"] else "")]
    if view.get("code"):
        out.append(f"  {code_text(view['code'])}")
    for a in view["attempts"]:
        took = f" after {a['duration_s']:.1f} s" if a["duration_s"] is not None else ""
        out.append(f"  attempt {a['number']}: {a['state']}{took}: {describe_config(a)}")
        out.append(f"    why: {a['reason']}")
        if a["run_dir"]:  # in a cluster the script finds its checkpoint on the volume itself
            out.append(f"    resumed from: {a['resume_from'] or 'nothing (no checkpoint yet)'}")
        if a["preemptions"]:
            out.append(f"    preempted: requeued {a['preemptions']}x by the scheduler, resuming from its checkpoint "
                       "each time (the same attempt, not a failure)")
        if a.get("stalled"):
            out.append(f"    stalled: {a['stalled']} (first seen {a['stalled_at']})")
        if a["failure"]:
            f = a["failure"]
            exit_txt = f"exit {a['exit_code']}" if a["signal"] is None else f"signal {a['signal']}"
            out.append(f"    ended: {f['kind']}: {f['reason']} ({exit_txt}"
                       + (f", peak memory {fmt_bytes(a['peak_memory_bytes'])}" if a["peak_memory_bytes"] else "")
                       + ")")
            if f["evidence"]:
                out.append(f"    evidence: {f['evidence']}")
            if f.get("rule") is not None:
                out.append(f"    matched: spec.resilience.rules[{f['rule']}], which decided what followed")
        elif a["state"] == "succeeded" and a["peak_memory_bytes"]:
            out.append(f"    peak memory {fmt_bytes(a['peak_memory_bytes'])}")
        if a.get("supervisor_error"):
            out.append(f"    supervision failed: {a['supervisor_error']}")
        if a["log"]:
            out.append(f"    log: {a['log']}")
    return "\n".join(out)


def status_text(view: dict[str, Any]) -> str:
    out = [f"{view['id']}  {view['name']}  target {view['target']}  {view['state']}"
           + (f": {view['reason']}" if view["reason"] else "")]
    if view["attempts"]:
        a = view["attempts"][-1]
        out.append(f"attempt {a['number']}/{view['max_attempts']}: {a['state']}: {describe_config(a)}")
        if a.get("progress"):
            from orchestrator.views import progress as progress_of

            out.append(f"progress: {progress_of.summary_line(a['progress'])}")
        if a.get("target_state"):
            out.append(f"{view['target']}: {a['target_state']}")
        if a["failure"]:
            out.append(f"failure: {a['failure']['kind']}: {a['failure']['reason']}")
        if a.get("supervisor_error") and view["state"] not in ("succeeded", "failed", "cancelled"):
            out.append(f"supervision failed: {a['supervisor_error']}")
        out.append(f"log: {a['log']}" if a["log"] else f"log: shardctl logs {view['id']}")
    if view.get("code"):
        out.append(code_text(view["code"]))
    if view["supervised"] is False and view["state"] not in ("succeeded", "failed", "cancelled"):
        out.append("supervisor: not running")
    return "\n".join(out)


