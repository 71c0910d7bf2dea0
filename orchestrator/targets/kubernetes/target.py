"""The Kubernetes target: a controller in the cluster drives the job; this adapter talks to the cluster.

Two sides of one adapter. The CLI side (the user's own kubeconfig, never the controller's
credentials) hands a TrainingJob over to the cluster, reads back the record the controller keeps in
its status, reads pod logs and deletes the job. The controller side (handed the controller's API
and the TrainingJob that owns the attempt) creates an attempt's children and observes how they run; it
adopts, reads as its own or deletes a child only when the child's controller ownerReference names that
TrainingJob's uid (anyone who may create ConfigMaps, Services or Jobs could take an attempt's name first).
Every failure to reach or use the cluster becomes one TargetError line that says how to fix it: Refused (RBAC,
no kubeconfig, no CRD, an invalid object), Unavailable (unreachable, a 5xx) or Conflict (a 409, a name taken).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from orchestrator.errors import Conflict, Refused, SubmitDeferred, TargetError, Unavailable
from orchestrator.lifecycle.classify import Outcome
from orchestrator.lifecycle.moves import Observation, Seen
from orchestrator.spec.crd import GROUP, PLURAL, VERSION
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import Phase
from orchestrator.spec.status import TrainingJobStatus
from orchestrator.targets.base import AttemptRef, ClusterAttempt, ClusterRecord, Driver, DryRun
from orchestrator.targets.kubernetes import stalls as k8s_stalls
from orchestrator.targets.kubernetes.observe import node_of, nodes_of, observe, root_cause
from orchestrator.targets.kubernetes.render import KubeRequest, manifests, render

T = TypeVar("T")
TIMEOUT_S = 15  # per API request from the CLI: an unreachable server is an error, not a hang
CONTAINER = "trainer"  # the attempt's container in each pod (a sidecar may run beside it)
CHART_HINT = "install the controller and its CRD first: helm install shardctl charts/shardctl"


RECHECK_S = 3.0  # a Job without pods is looked at again this soon: only an Event says why pods are refused
RECHECK_MAX_S = 60.0
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"  # the label a Job puts on its pods: its own uid
EVENTS_AFTER_S = 2.0  # a Job younger than this has no pods yet for no reason worth asking about


class Deleted(StrEnum):
    """What deleting a child by name did."""

    DELETED = "deleted"
    ABSENT = "absent"
    NOT_OWNED = "not_owned"  # the name is another object's: left alone


class ClusterApi(Protocol):
    """What the controller side needs of the controller's API client (orchestrator.controller.kube.KubeApi)."""

    def create(self, obj: dict) -> bool: ...
    def get_job(self, ns: str, name: str) -> dict | None: ...
    def job_pods(self, ns: str, job_name: str) -> list[dict]: ...
    def job_events(self, ns: str, job_name: str) -> list[dict]: ...
    def delete_owned(self, kind: str, ns: str, name: str, owner_uid: str) -> Deleted: ...
    def read(self, kind: str, ns: str, name: str) -> dict | None: ...
    def retire_attempt(self, ns: str, name: str, owner_uid: str) -> list[str]: ...
    def event(self, tj: dict, reason: str, message: str, warning: bool = False) -> None: ...


def controlled_by(obj: dict, uid: str | None) -> bool:
    """True when `obj`'s controller ownerReference names `uid` (what the API sets only for its creator's
    owner, unlike a name, which anyone may take first)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("controller") and r.get("uid") == uid for r in refs)


def resource(job: TrainingJob, namespace: str) -> dict[str, Any]:
    """The TrainingJob object the CLI creates."""
    data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta: dict[str, Any] = {"name": job.metadata.name, "namespace": namespace}
    if job.metadata.labels:
        meta["labels"] = dict(job.metadata.labels)
    return {"apiVersion": data["apiVersion"], "kind": data["kind"], "metadata": meta, "spec": data["spec"]}


def _status_message(exc: Any) -> str:
    return k8s_stalls.status_message(exc) or str(getattr(exc, "reason", "") or exc)


def timestamp(text: Any) -> float | None:
    """An API object's RFC 3339 time (what the controller writes, and metadata.creationTimestamp) in seconds since
    the epoch; None when it is absent or not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class PodLogs:
    """An attempt's output: the logs of its Job's pods (the `trainer` container), rank 0 first, each
    announced `==> pod NAME <==` (as `tail` announces files) when it has something new. A log that
    shrank was rotated by the kubelet: said so, and read again from its new start."""

    poll_s = 1.0  # each read lists the pods and fetches their logs: a follower reads at most this often

    def __init__(self, core: Any, namespace: str, job_name: str) -> None:
        self.core, self.namespace, self.job_name = core, namespace, job_name
        self.seen: dict[str, int] = {}  # pod -> characters already returned
        self.partial: dict[str, str] = {}
        self.current: str | None = None
        self.refused: str | None = None

    def _read(self, final: bool) -> list[str]:
        import urllib3
        from kubernetes.client.rest import ApiException

        try:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={self.job_name}",
                _request_timeout=TIMEOUT_S).items
        except ApiException as exc:
            return self._refused(exc)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"cannot reach the Kubernetes API server to read the logs of {self.job_name}: "
                              f"{type(exc).__name__}") from None
        index = lambda p: int((p.metadata.annotations or {}).get(  # noqa: E731
            "batch.kubernetes.io/job-completion-index", 0))
        out: list[str] = []
        for pod in sorted(pods, key=index):
            name = pod.metadata.name
            try:
                text = self.core.read_namespaced_pod_log(name, self.namespace, container=CONTAINER,
                                                         _request_timeout=TIMEOUT_S)
            except ApiException as exc:
                out += self._refused(exc)
                continue  # 400: not started yet; 404: gone
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Unavailable(f"cannot reach the Kubernetes API server to read the log of pod {name}: "
                                  f"{type(exc).__name__}") from None
            seen = self.seen.get(name, 0)
            if len(text) < seen:  # rotated: what came between the last read and the rotation is not served
                out.append(f"[shardctl] the log of pod {name} was rotated; lines may be missing")
                seen = 0
            new = text[seen:]
            self.seen[name] = len(text)
            if not new and not (final and self.partial.get(name)):
                continue
            data = self.partial.pop(name, "") + new
            *complete, rest = data.split("\n")
            if final and rest:
                complete.append(rest)
            elif rest:
                self.partial[name] = rest
            if complete:
                if self.current != name:
                    out.append(f"==> pod {name} <==")
                    self.current = name
                out.extend(complete)
        return out

    def _refused(self, exc: Any) -> list[str]:
        """A 403 (RBAC: no `get` on pods/log) is said once; anything else (not started, gone) is quiet."""
        if exc.status in (401, 403) and self.refused is None:
            self.refused = _status_message(exc)
            return [f"[shardctl] cannot read the pods' logs: {self.refused}"]
        return []

    def lines(self) -> list[str]:
        return self._read(final=False)

    def rest(self) -> list[str]:
        return self._read(final=True)


class KubernetesTarget:
    name = "kubernetes"
    driver = Driver.CONTROLLER
    on_gpu = True  # pods ask for GPUs (nvidia.com/gpu); the planner applies

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
                 uid: str | None = None, api: ClusterApi | None = None, owner: dict | None = None) -> None:
        self.kubeconfig, self.context, self.namespace, self.uid = kubeconfig, context, namespace, uid
        self.api, self.owner = api, owner
        self._client: Any = None

    @classmethod
    def from_options(cls, options: dict) -> KubernetesTarget:
        return cls(kubeconfig=options.get("kubeconfig"), context=options.get("context"),
                   namespace=options.get("namespace"), uid=options.get("uid"))

    def options(self) -> dict:
        return {"kubeconfig": self.kubeconfig, "context": self.context, "namespace": self.namespace,
                "uid": self.uid}

    # -- the user's connection (CLI side) ---------------------------------------------------
    def client(self) -> Any:
        """The user's ApiClient: --kubeconfig/--context, else KUBECONFIG or ~/.kube/config, else in-cluster."""
        if self._client is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            try:
                config.load_kube_config(config_file=self.kubeconfig, context=self.context,
                                        client_configuration=configuration)
            except (config.ConfigException, OSError, TypeError) as exc:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    where = self.kubeconfig or "KUBECONFIG or ~/.kube/config"
                    raise Refused(f"no usable Kubernetes configuration ({where}: {exc}); pass --kubeconfig "
                                  "FILE (and --context NAME), or set KUBECONFIG") from None
            configuration.retries = 1
            self._client = client.ApiClient(configuration)
        return self._client

    def default_namespace(self) -> str:
        from kubernetes import config

        try:
            contexts, active = config.list_kube_config_contexts(config_file=self.kubeconfig)
            if self.context:
                active = next(c for c in contexts if c["name"] == self.context)
        except (config.ConfigException, OSError, StopIteration, TypeError):
            return "default"
        return (active.get("context") or {}).get("namespace") or "default"

    def call(self, what: str, fn: Callable[[], T], *, missing_ok: bool = False) -> T | None:
        """One API request from the CLI, its failures turned into one line that says how to fix them: a 409 is a
        Conflict (someone else changed or holds the object), a 5xx, a 429 or an unreachable server Unavailable
        (ask again later), any other refusal (a 4xx: RBAC, no CRD, an invalid object) Refused. A 404 with
        `missing_ok` is None."""
        import urllib3
        from kubernetes.client.rest import ApiException

        try:
            return fn()
        except ApiException as exc:
            message = _status_message(exc)
            if exc.status == 404 and missing_ok:
                return None
            if exc.status == 404 and "the server could not find the requested resource" in message.lower():
                raise Refused(f"the cluster has no TrainingJob resource type ({GROUP}/{VERSION}): {CHART_HINT}") \
                    from None
            if exc.status in (401, 403):
                raise Refused(f"the cluster refused to {what}: {message} (ask for RBAC access to "
                              f"trainingjobs.{GROUP} in namespace {self.namespace}, or use --context)") from None
            said = f"the cluster refused to {what} ({exc.status} {exc.reason}): {message}"
            if exc.status == 409:
                raise Conflict(said) from None
            if exc.status == 429 or (exc.status or 0) >= 500:
                raise Unavailable(said) from None
            raise Refused(said) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            host = getattr(self.client().configuration, "host", "?")
            raise Unavailable(f"cannot reach the Kubernetes API server at {host} to {what}: "
                              f"{type(exc).__name__}; check the cluster is up and the kubeconfig's server "
                              f"(--kubeconfig/--context)") from None

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.client())

    # -- Target protocol ----------------------------------------------------------------------
    def preflight(self, job: TrainingJob, workdir: str) -> list[str]:
        """Reachable, the CRD installed, and this user allowed to list TrainingJobs in the namespace."""
        self.namespace = self.namespace or job.spec.kubernetes.namespace or job.metadata.namespace or \
            self.default_namespace()
        ns = self.namespace
        listed = self.call(f"list TrainingJobs in namespace {ns}", lambda: self._custom().list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, limit=1, _request_timeout=TIMEOUT_S), missing_ok=True)
        if listed is None:  # the collection itself is not found: the resource type does not exist there
            raise Refused(f"the cluster has no TrainingJob resource type ({GROUP}/{VERSION}): {CHART_HINT}")
        return []

    def prefetch(self, external_ids: list[str]) -> None:
        pass  # the controller watches the attempts; the CLI reads each job's record (fetch)

    def render(self, job: TrainingJob, ref: AttemptRef, text: bool = True) -> DryRun:
        """`text=False`: the controller's check that the attempt renders, without the manifests' YAML."""
        return render(job, KubeRequest(attempt=ref.number, namespace=self.namespace, owner=self.owner), text=text)

    def submit(self, dryrun: DryRun, ref: AttemptRef) -> str:
        """Controller side: the attempt's ConfigMap, headless Service and Indexed Job. Names are
        deterministic, so a create that finds its object already there adopts it (a restarted controller).
        Refused when the cluster refuses a child for good (invalid, forbidden by admission), SubmitDeferred when it
        cannot take it now (a quota), Conflict when a child's name is another object's; a transient API error
        (ApiException) is left to the controller's retry."""
        from kubernetes.client.rest import ApiException

        assert self.api is not None and self.namespace, "submit runs in the controller, with its API"
        job = dryrun.compiled.job
        if ref.number > 1:  # the previous attempt's Service and ConfigMap (its Job stays, for its logs)
            self._retire(f"{job.metadata.name}-a{ref.number - 1}")
        objects, _ = manifests(job, KubeRequest(attempt=ref.number, namespace=self.namespace, owner=self.owner))
        for obj in objects:
            try:
                if not self.api.create(obj):  # it exists: ours (a restarted controller) or a namesake's
                    self._check_owned(obj)
            except ApiException as exc:
                stall = k8s_stalls.refused(obj["kind"], obj["metadata"]["name"], exc)
                if stall is None:
                    raise  # transient (or AlreadyExists, which create adopts): the executor retries
                if stall.permanent:  # invalid, or forbidden by admission: resubmitting cannot help
                    self._retire(f"{job.metadata.name}-a{ref.number}")
                    raise Refused(f"{stall.reason}: {stall.message}") from None
                raise SubmitDeferred(f"{stall.reason}: {stall.message}") from None
        return next(o["metadata"]["name"] for o in objects if o["kind"] == "Job")

    def _owned(self, existing: dict | None) -> bool:
        """True when `existing` is controlled by this attempt's TrainingJob (same uid), or is gone."""
        if existing is None or not self.owner:
            return True
        return controlled_by(existing, self.owner.get("uid"))

    def _retire(self, name: str) -> None:
        """An attempt's Service and ConfigMap, if they are this TrainingJob's; a namesake is left alone, said once."""
        assert self.api is not None and self.namespace and self.owner
        foreign = self.api.retire_attempt(self.namespace, name, self.owner["uid"])
        if foreign:
            self._not_owned(foreign)

    def _not_owned(self, what: list[str]) -> None:
        assert self.api is not None and self.owner
        tj = {"apiVersion": self.owner["apiVersion"], "kind": self.owner["kind"],
              "metadata": {"name": self.owner["name"], "namespace": self.namespace, "uid": self.owner["uid"]}}
        self.api.event(tj, "NotOwned", f"{', '.join(what)}: not this TrainingJob's (no ownerReference to it), "
                                       "left as it is", warning=True)

    def _check_owned(self, obj: dict) -> None:
        """Adopt only what this TrainingJob owns: a Job left by an earlier TrainingJob of the same name (its
        deletion still under way) must neither run in this one's place nor have its ending taken for ours."""
        assert self.api is not None and self.namespace
        name = obj["metadata"]["name"]
        if not self._owned(self.api.read(obj["kind"], self.namespace, name)):
            raise Conflict(f"NameTaken: {obj['kind']} {name} is not this TrainingJob's (its ownerReferences "
                           "do not name it: someone else's object, or an earlier TrainingJob of this name still "
                           "being deleted); it is neither used nor changed: waiting until it is gone")

    def recover(self, ref: AttemptRef) -> str | None:
        return None  # submit is idempotent (deterministic names): submitting again adopts what exists

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        assert self.api is not None and self.namespace
        k8s_job = self.api.get_job(self.namespace, external_id)
        if k8s_job is None or not self._owned(k8s_job):
            return Observation(Seen.ENDED, outcome=Outcome(exit_code=None, preempted=True),
                               detail="the attempt's Job was deleted from outside; resuming")
        uid = (k8s_job.get("metadata") or {}).get("uid")
        pods = [p for p in self.api.job_pods(self.namespace, external_id)  # not a namesake Job's leftovers
                if (p.get("metadata", {}).get("labels") or {}).get(CONTROLLER_UID, uid) == uid]
        ended = observe(k8s_job, pods)
        if ended is not None:
            outcome, detail = ended
            return Observation(Seen.ENDED, outcome=outcome, detail=detail, nodes=_ended_on(outcome, pods))
        suspended = bool((k8s_job.get("spec") or {}).get("suspend"))
        now = datetime.now(UTC)
        created = k8s_stalls.parse_time((k8s_job.get("metadata") or {}).get("creationTimestamp"))
        young = created is not None and (now - created).total_seconds() < EVENTS_AFTER_S
        # Only an Event tells why the Job controller made fewer pods than it should (admission refused them):
        # listed only then, and not in the first moments of a Job, when its pods are simply not there yet
        missing = len(pods) < _wanted_pods(k8s_job)
        events = self.api.job_events(self.namespace, external_id) if missing and not suspended and not young \
            else []
        stall = k8s_stalls.diagnose(k8s_job, pods, events, now)
        # what no watch announces is looked at again soon, then less often the longer it lasts
        age = (now - created).total_seconds() if created is not None else 0.0
        recheck = min(RECHECK_MAX_S, max(RECHECK_S, age / 5))
        if stall is not None and stall.permanent:
            return Observation(Seen.PENDING, refusal=f"{stall.reason}: {stall.message}", nodes=nodes_of(pods))
        if stall is not None:
            return Observation(Seen.PENDING, detail=f"{stall.reason}: {stall.message}", stalled=True,
                               recheck_s=recheck, nodes=nodes_of(pods))
        running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
        if not missing or suspended:  # a pod or the Job changing is announced by the watches
            return Observation(Seen.RUNNING if running else Seen.PENDING, nodes=nodes_of(pods))
        return Observation(Seen.RUNNING if running else Seen.PENDING, recheck_s=recheck, nodes=nodes_of(pods))

    def stop_hung(self, external_id: str, ref: AttemptRef) -> None:
        """No stack capture here yet (no hang watchdog drives this target: docs/design.md, "Hangs"): stopped as
        `cancel` stops it."""
        self.cancel(external_id, ref)

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        """Controller side: delete the attempt's Job (its pods go with it). Cancelling a whole job deletes
        the TrainingJob instead (withdraw), and garbage collection removes its Jobs and pods."""
        if self.api is not None and self.namespace and self.owner:
            if self.api.delete_owned("Job", self.namespace, external_id, self.owner["uid"]) is Deleted.NOT_OWNED:
                self._not_owned([f"Job {external_id}"])

    def log_source(self, ref: AttemptRef, external_id: str | None) -> PodLogs:
        from kubernetes import client

        return PodLogs(client.CoreV1Api(self.client()), self.namespace or "default", external_id or "")

    # -- ControlledTarget ------------------------------------------------------------------------
    def hand_over(self, job: TrainingJob, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """Create the TrainingJob; with `files` (a pickled call) also its function Secret, owned by it. A Secret
        that cannot be created takes the TrainingJob with it: nothing half-submitted stays."""
        from orchestrator.entry import FUNCTION_FILE

        if files and (set(files) != {FUNCTION_FILE} or not job.spec.entrypoint.function):
            raise Refused(f"{self.name}: only a Python function's call ({FUNCTION_FILE}, with "
                          f"spec.entrypoint.function) travels to the cluster, not {', '.join(files)}")
        ns = self.namespace or job.spec.kubernetes.namespace or job.metadata.namespace or self.default_namespace()
        self.namespace = ns
        created = self.call(f"create TrainingJob {job.metadata.name} in namespace {ns}",
                            lambda: self._custom().create_namespaced_custom_object(
                                GROUP, VERSION, ns, PLURAL, resource(job, ns), _request_timeout=TIMEOUT_S))
        self.uid = (created or {}).get("metadata", {}).get("uid")
        if files:
            self._function_secret(job, files[FUNCTION_FILE])
        return self.options()

    def _function_secret(self, job: TrainingJob, data: bytes) -> None:
        from kubernetes import client

        from orchestrator.targets.kubernetes.function import secret_body

        ns, name = self.namespace or "default", job.metadata.name
        try:
            if not self.uid:
                raise Refused(f"the cluster created TrainingJob {name} without a uid: its function's Secret "
                              "cannot be owned by it")
            body: Any = secret_body(name, ns, self.uid, data, dict(job.metadata.labels))  # the client sends a dict
            self.call(f"create the function's Secret {body['metadata']['name']} in namespace {ns} (submitting a "
                      "Python function needs create on secrets there)",
                      lambda: client.CoreV1Api(self.client()).create_namespaced_secret(
                          ns, body, _request_timeout=TIMEOUT_S))
        except BaseException as exc:
            try:
                self.withdraw(self.options(), name)  # the TrainingJob, by uid; garbage collection takes the rest
            except TargetError as undo:
                raise TargetError(f"{' '.join(str(exc).split())}; and TrainingJob {name} could not be deleted again "
                                  f"({undo}): delete it (kubectl delete trainingjob {name} -n {ns})") from None
            raise

    def read_outcome(self, options: dict[str, Any], external_id: str | None) -> tuple[str, Any] | None:
        """A function's outcome from the marked lines of the attempt `external_id`'s rank-0 pod log (unpickled:
        as trusted as the function itself); None when it printed none."""
        from orchestrator.targets.kubernetes.function import outcome_from_log, rank0_log

        if not external_id:
            return None
        ns = options.get("namespace") or "default"
        log = rank0_log(self.client(), ns, external_id, options.get("uid"), CONTAINER)
        return outcome_from_log(log, f"the rank-0 pod of Job {external_id} ({ns})")

    def fetch(self, options: dict[str, Any], name: str) -> ClusterRecord | None:
        ns = options.get("namespace") or "default"
        obj = self.call(f"read TrainingJob {name} in namespace {ns}",
                        lambda: self._custom().get_namespaced_custom_object(
                            GROUP, VERSION, ns, PLURAL, name, _request_timeout=TIMEOUT_S), missing_ok=True)
        if obj is None or (options.get("uid") and obj["metadata"].get("uid") != options["uid"]):
            return None
        return read_record(obj)

    def withdraw(self, options: dict[str, Any], name: str) -> None:
        ns = options.get("namespace") or "default"
        uid = options.get("uid")
        body = {"propagationPolicy": "Background", **({"preconditions": {"uid": uid}} if uid else {})}
        try:
            self.call(f"delete TrainingJob {name} in namespace {ns}",
                      lambda: self._custom().delete_namespaced_custom_object(
                          GROUP, VERSION, ns, PLURAL, name, body=body, _request_timeout=TIMEOUT_S), missing_ok=True)
        except Conflict:
            pass  # a 409 on the uid precondition: a newer TrainingJob of that name, not ours to delete


def _ended_on(outcome: Outcome, pods: list[dict]) -> tuple[str, ...]:
    """The nodes an ended attempt reports (`Observation.nodes`, what a node fault is pinned on): for a failure,
    the node of the pod whose failure ended it (observe.root_cause: the pod lost with its node, or the first to
    fail, whose termination message is the log tail the classifier reads), as srun names the node that failed;
    otherwise every node its pods ran on. Pinning a failure on all of a multi-node attempt's nodes would be no pin
    at all (lifecycle.classify.failed_node: only one node, or one the log names)."""
    if outcome.exit_code != 0 or outcome.node_failed:
        culprit = root_cause(pods)
        if culprit is not None and (node := node_of(culprit)):
            return (node,)
    return nodes_of(pods)


def _wanted_pods(job: dict) -> int:
    """How many pods the Job should have now (an Indexed Job: parallelism = completions = nodes)."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    completions = spec.get("completions") or 1
    done = (status.get("succeeded") or 0) + (status.get("failed") or 0)
    return max(0, min(spec.get("parallelism") or completions, completions) - done)


def read_record(obj: dict[str, Any]) -> ClusterRecord:
    """The controller's record (the TrainingJob status, validated by the model the reconciler writes it with)
    in the target-neutral shape."""
    status = TrainingJobStatus.model_validate(obj.get("status") or {})
    attempts = [ClusterAttempt(number=a.number, state=a.state, spec=a.spec or {}, rung=a.rung, reason=a.reason,
                                external_id=a.job_name, started_at=timestamp(a.started_at),
                                ended_at=timestamp(a.ended_at), failure=a.failure)
                for a in status.attempts]
    waiting = [f"{c.reason}: {c.message}" for c in status.conditions if c.type == "Stalled" and c.status == "True"]
    return ClusterRecord(state=(status.phase or Phase.PENDING).job_state, reason=status.message, attempts=attempts,
                       conditions=waiting)
