"""One reconcile of one TrainingJob: level-triggered, idempotent, safe to kill at any point.

The TrainingJob's status is the record (there is no other store on Kubernetes). Every decision
is written to the status first, conditional on the resourceVersion that was read (a 409 means
someone else moved first: read again), and acted on after: an attempt is `starting` in the
status before its Job exists, and `running` only after. Children have deterministic names
(`NAME-aN`), so a controller that dies after creating them and before recording it finds them
again (AlreadyExists) instead of creating a second Job. The same classifier and fallback policy
as the local and Slurm targets decide what happens after a failure.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from orchestrator.compile import CompileError
from orchestrator.controller.kube import KubeApi
from orchestrator.controller.observe import observe
from orchestrator.plan.choose import fit_predicate, starting_point
from orchestrator.spec.models import API_VERSION, KIND, TrainingJob
from orchestrator.spec.status import AttemptStatus, Condition, FailureStatus, TrainingJobStatus
from orchestrator.supervise.classify import Failure, classify
from orchestrator.supervise.fallback import Next, describe, next_step
from orchestrator.targets.k8s_render import KubeRequest, RenderError, attempt_name, manifests

TERMINAL = ("Succeeded", "Failed", "Cancelled")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def training_job(obj: dict[str, Any]) -> TrainingJob:
    """The custom resource as the same pydantic model `shardctl validate` uses (its errors included)."""
    meta = obj.get("metadata") or {}
    return TrainingJob.model_validate({
        "apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", KIND),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                     **({"labels": meta["labels"]} if meta.get("labels") else {})},
        "spec": obj.get("spec") or {},
    })


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def set_condition(status: TrainingJobStatus, kind: str, value: str, reason: str, message: str,
                  generation: int | None) -> None:
    """metav1.Condition semantics: lastTransitionTime moves only when the status value changes."""
    for i, c in enumerate(status.conditions):
        if c.type == kind:
            moved = c.status != value
            status.conditions[i] = Condition(type=kind, status=value, reason=reason, message=message,
                                             lastTransitionTime=_now() if moved else c.last_transition_time,
                                             observedGeneration=generation)
            return
    status.conditions.append(Condition(type=kind, status=value, reason=reason, message=message,
                                       lastTransitionTime=_now(), observedGeneration=generation))


def _job_to_dict(job: TrainingJob) -> dict[str, Any]:
    return job.model_dump(mode="json", by_alias=True)


class Reconciler:
    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def reconcile(self, namespace: str, name: str) -> str:
        """Moves the job as far as it can go now; returns what it did (for logs and tests)."""
        obj = self.api.get_training_job(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return "gone"
        status = TrainingJobStatus.model_validate(obj.get("status") or {})
        if status.phase in TERMINAL:
            return "done"
        try:
            job = training_job(obj)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            return self._finish(obj, status, "Failed", "InvalidSpec", f"invalid spec: {errors}", warning=True)
        if not status.attempts:
            first, origin, why = starting_point(job, on_gpu=True)
            return self._start(obj, status, job, 1, first, origin, why)
        last = status.attempts[-1]
        if last.state == "starting":
            return self._create_children(obj, status, last)
        if last.state == "running":
            return self._watch(obj, status, job, last)
        return self._decide(obj, status, job)

    # -- steps, each ending in one status write ------------------------------------------
    def _write(self, obj: dict, status: TrainingJobStatus) -> dict:
        status.observed_generation = obj["metadata"].get("generation")
        status.current_attempt = status.attempts[-1].number if status.attempts else None
        body = {**obj, "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        return self.api.write_status(body)

    def _finish(self, obj: dict, status: TrainingJobStatus, phase: str, reason: str, message: str,
                warning: bool = False) -> str:
        status.phase, status.message = phase, message  # type: ignore[assignment]
        set_condition(status, "Running", "False", reason, message, obj["metadata"].get("generation"))
        set_condition(status, "Complete" if phase == "Succeeded" else "Failed", "True", reason, message,
                      obj["metadata"].get("generation"))
        self._write(obj, status)
        self.api.event(obj, reason, message, warning=warning)
        return f"finished {phase}"

    def _start(self, obj: dict, status: TrainingJobStatus, job: TrainingJob, number: int, spec: TrainingJob,
               rung: str | None, reason: str) -> str:
        try:  # a fallback config that cannot render ends the job here, with the reason
            manifests(spec, KubeRequest(attempt=number, namespace=obj["metadata"]["namespace"]))
        except (CompileError, RenderError) as exc:
            return self._finish(obj, status, "Failed", "CannotRender", f"attempt {number} cannot run: {exc}",
                                warning=True)
        status.attempts.append(AttemptStatus(
            number=number, state="starting", config=describe(spec), rung=rung, reason=reason,
            jobName=attempt_name(job.metadata.name, number), spec=_job_to_dict(spec)))
        status.phase = "Pending" if number == 1 else "Running"
        self._write(obj, status)
        return f"recorded attempt {number}"

    def _create_children(self, obj: dict, status: TrainingJobStatus, attempt: AttemptStatus) -> str:
        ns = obj["metadata"]["namespace"]
        spec = TrainingJob.model_validate(attempt.spec)
        if attempt.number > 1:  # the previous attempt's Service and ConfigMap (its Job stays, for its logs)
            self.api.retire_attempt(ns, attempt_name(spec.metadata.name, attempt.number - 1))
        objects, _ = manifests(spec, KubeRequest(attempt=attempt.number, namespace=ns, owner=owner_reference(obj)))
        created = [o["kind"] for o in objects if self.api.create(o)]
        attempt.state = "running"
        attempt.started_at = _now()
        status.phase = "Running"
        set_condition(status, "Running", "True", "AttemptRunning", f"attempt {attempt.number}: {attempt.config}",
                      obj["metadata"].get("generation"))
        self._write(obj, status)
        self.api.event(obj, "AttemptStarted", f"attempt {attempt.number} ({attempt.config}): Job {attempt.job_name}"
                       + ("" if "Job" in created else " (adopted: it already existed)"))
        return f"started attempt {attempt.number}"

    def _watch(self, obj: dict, status: TrainingJobStatus, job: TrainingJob, attempt: AttemptStatus) -> str:
        ns = obj["metadata"]["namespace"]
        k8s_job = self.api.get_job(ns, attempt.job_name)
        if k8s_job is None:
            failure = Failure("preempted", "the attempt's Job was deleted from outside; resuming")
        else:
            ended = observe(k8s_job, self.api.job_pods(ns, attempt.job_name))
            if ended is None:
                return "running"
            outcome, detail = ended
            failure = classify(outcome)
            if failure.kind != "succeeded":
                failure = Failure(failure.kind, f"{failure.reason} ({detail})", failure.evidence)
        attempt.state = failure.end_state
        attempt.ended_at = _now()
        attempt.failure = FailureStatus(kind=failure.kind, reason=failure.reason, evidence=failure.evidence)
        if failure.kind != "succeeded":
            self.api.event(obj, "AttemptFailed", f"attempt {attempt.number}: {failure.kind}: {failure.reason}",
                           warning=True)
        return self._decide(obj, status, job)

    def _decide(self, obj: dict, status: TrainingJobStatus, job: TrainingJob) -> str:
        last = status.attempts[-1]
        failure = Failure(last.failure.kind if last.failure else "unknown",  # type: ignore[arg-type]
                          last.failure.reason if last.failure else "", last.failure.evidence if last.failure else "")
        history = [TrainingJob.model_validate(a.spec) for a in status.attempts]
        decision = next_step(job, history, failure, fits=fit_predicate(job, on_gpu=True))
        if not isinstance(decision, Next):
            if failure.kind == "succeeded":
                return self._finish(obj, status, "Succeeded", "Succeeded", f"attempt {last.number} succeeded")
            return self._finish(obj, status, "Failed", "FallbackStopped", decision.reason, warning=True)
        self.api.event(obj, "FallingBack", decision.reason)
        result = self._start(obj, status, job, last.number + 1, decision.job, decision.rung, decision.reason)
        return result
