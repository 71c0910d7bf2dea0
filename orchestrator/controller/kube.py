"""The few Kubernetes calls the controller makes, on the official client, as plain dicts.

Nothing here knows whether the server is a real cluster or the test suite's fake: the
controller is handed an ApiClient (in-cluster config, a kubeconfig, or a URL).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from orchestrator.spec.crd import GROUP, PLURAL, VERSION

FIELD_MANAGER = "shardctl-controller"


class KubeApi:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    def plain(self, obj: Any) -> dict:
        return obj if isinstance(obj, dict) else self.client.sanitize_for_serialization(obj)

    # TrainingJobs
    def get_training_job(self, ns: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_training_jobs(self, ns: str | None) -> dict:
        if ns:
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)

    def write_status(self, tj: dict) -> dict:
        """Replace the status, conditional on the resourceVersion read (409 if someone wrote since)."""
        meta = tj["metadata"]
        return self.custom.replace_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL,
                                                                   meta["name"], tj)

    # children
    def create(self, obj: dict) -> bool:
        """Create; False when it already exists (deterministic names: a restarted controller adopts it)."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        try:
            if kind == "Job":
                self.batch.create_namespaced_job(ns, obj, field_manager=FIELD_MANAGER)
            elif kind == "Service":
                self.core.create_namespaced_service(ns, obj, field_manager=FIELD_MANAGER)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(ns, obj, field_manager=FIELD_MANAGER)
            else:
                raise ValueError(f"the controller does not create {kind}")
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def get_job(self, ns: str, name: str) -> dict | None:
        try:
            return self.plain(self.batch.read_namespaced_job(name, ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def job_pods(self, ns: str, job_name: str) -> list[dict]:
        pods = self.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job_name}")
        return [self.plain(p) for p in pods.items]

    def retire_attempt(self, ns: str, name: str) -> None:
        """An ended attempt's Service and ConfigMap. Its Job stays (it runs nothing once ended) so that its
        pods' logs stay readable (`shardctl logs --attempt N`); deleting the TrainingJob removes it."""
        calls = ((self.core.delete_namespaced_service, name), (self.core.delete_namespaced_config_map, f"{name}-config"))
        for call, obj_name in calls:
            try:
                call(obj_name, ns, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def event(self, tj: dict, reason: str, message: str, warning: bool = False) -> None:
        meta = tj["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": tj["apiVersion"], "kind": tj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException:
            pass  # an event is best effort: never the reason a reconcile fails
