"""`shardctl controller`: read the policy, load the cluster config, serve health and metrics, optionally win
the leader Lease, run the loop; on SIGTERM stop promptly and hand the Lease over.

The policy (`--policy FILE`, the chart's `policy` values mounted from a ConfigMap) is read once, before
anything else: a policy that cannot be read stops the controller with one line (exit 2), and without one
only the safe defaults hold (controller.policy). A changed policy takes effect at the next start (the chart
rolls the Deployment when its values change).

Exit status: 0 after SIGTERM/SIGINT; 1 when the leader could not renew its Lease (Kubernetes restarts
the container, which then waits for the Lease like any candidate) or a thread it needs died.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.controller.cache import Cache
    from orchestrator.controller.kube import KubeApi

# What serves the dashboard beside the controller (given by the CLI, which alone sees both the controller and the
# web stack): called once the API client exists, with a getter of the watch-fed cache (None until this replica
# leads and its watches have started); returns what stops it.
Dashboard = Callable[["KubeApi", Callable[[], "Cache | None"]], Callable[[], None]]


def api_client(server: str | None, kubeconfig: str | None, context: str | None, connections: int = 16):
    """In-cluster config inside a pod, else a kubeconfig; --server for a bare URL (no auth).
    The connection pool fits the workers plus the three open watches (urllib3's default is 10)."""
    from kubernetes import client, config

    if server:
        configuration = client.Configuration(host=server)
    elif os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
    else:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def run(*, namespace: str | None, server: str | None, kubeconfig: str | None, context: str | None,
        leader_election_namespace: str | None, resync_s: float, workers: int, log_level: str,
        watch_timeout_s: int = 60, health_port: int | None = 8081, cache: bool = True,
        lease_s: int = 15, shutdown_s: float = 1.5, policy: str | None = None,
        dashboard: Dashboard | None = None, notifications: bool = False) -> int:
    from orchestrator.controller.health import Contact, Health, HealthServer, probe_api
    from orchestrator.controller.kube import KubeApi
    from orchestrator.controller.leader import LeaderElector
    from orchestrator.controller.loop import Controller
    from orchestrator.controller.metrics import Metrics
    from orchestrator.controller.notify import ClusterNotifier
    from orchestrator.controller.policy import Policy, load_policy

    allowed = load_policy(policy) if policy else Policy()  # a PolicyError (exit 2) before anything starts
    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("shardctl.controller")
    log.info("policy: %s", f"{policy}: {allowed.model_dump_json(by_alias=True, exclude_defaults=True)}" if policy
             else "none given (--policy): TrainingJobs get the defaults only, and no image registry is allowed")
    client = api_client(server, kubeconfig, context, connections=workers + 6)
    api = KubeApi(client)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    contact, metrics = Contact(), Metrics()
    health = Health(contact, lambda: probe_api(client), metrics=metrics)
    server_ = HealthServer(health, metrics, health_port).start() if health_port is not None else None
    running: list[Controller] = []
    stop_dashboard = dashboard(api, lambda: running[0].cache if running else None) if dashboard else None

    elector, election_stop, election = None, threading.Event(), None
    if leader_election_namespace:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(api, leader_election_namespace, identity, lease_s=lease_s, on_contact=contact.touch,
                               release_on_stop=True)
        election = threading.Thread(target=elector.run, args=(election_stop,), name="leader-election", daemon=True)
        election.start()
        health.watch_threads(lambda: [] if election.is_alive() or election_stop.is_set() else ["leader-election"])
        log.info("waiting for the leader lease as %s", identity)
        while not stop.is_set() and not elector.leading.wait(0.2):
            pass
    metrics.set_leading(not stop.is_set())

    controller = None
    notifier: ClusterNotifier | None = None
    code = 0
    if not stop.is_set():
        controller = Controller(api, namespace=namespace, workers=workers, resync_s=resync_s,
                                watch_timeout_s=watch_timeout_s, metrics=metrics, contact=contact, cache=cache,
                                policy=allowed).start()
        running.append(controller)
        notifier = ClusterNotifier(api, lambda: controller.cache if controller is not None else None,
                                   enabled=notifications, namespace=namespace).start()
        health.watch_threads(controller.dead_threads)
        health.watch_threads(lambda: [] if notifier.alive() else ["notify"])
        log.info("controller running (namespace %s)", namespace or "all")
        while not stop.wait(0.2):
            if elector is not None and not elector.leading.is_set():
                log.error("lost the leader lease: exiting so that only the leader acts")
                code = 1
                break
    metrics.set_leading(False)
    started = time.monotonic()
    if notifier is not None:
        notifier.shutdown(0.5)
    workers_stopped = controller.shutdown(shutdown_s) if controller is not None else True
    if elector is not None and election is not None:
        if not workers_stopped:  # a reconcile still runs: let the Lease expire rather than hand it over now
            elector.release_on_stop = False
            log.warning("a reconcile outlived the shutdown: the lease is left to expire")
        election_stop.set()
        election.join(1.0)
    if stop_dashboard is not None:
        stop_dashboard()
    if server_ is not None:
        server_.stop()
    log.info("controller stopped in %.2f s", time.monotonic() - started)
    return code
