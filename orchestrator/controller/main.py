"""`shardctl controller`: load the cluster config, optionally win the leader Lease, run the loop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading


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
        watch_timeout_s: int = 60) -> int:
    from orchestrator.controller.kube import KubeApi
    from orchestrator.controller.leader import LeaderElector
    from orchestrator.controller.loop import Controller

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("shardctl.controller")
    api = KubeApi(api_client(server, kubeconfig, context, connections=workers + 6))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    elector = None
    if leader_election_namespace:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(api, leader_election_namespace, identity)
        threading.Thread(target=elector.run, args=(stop,), name="leader-election", daemon=True).start()
        log.info("waiting for the leader lease as %s", identity)
        while not stop.is_set() and not elector.leading.wait(0.5):
            pass
    if stop.is_set():
        return 0
    controller = Controller(api, namespace=namespace, workers=workers, resync_s=resync_s,
                            watch_timeout_s=watch_timeout_s).start()
    log.info("controller running (namespace %s)", namespace or "all")
    while not stop.wait(0.5):
        if elector is not None and not elector.leading.is_set():
            log.error("lost the leader lease: exiting so that only the leader acts")
            controller.shutdown(5)
            return 1
    controller.shutdown()
    return 0
