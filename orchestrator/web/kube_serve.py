"""The dashboard inside `shardctl controller` (`--dashboard`): the same pages, over the controller's cache, on a
thread of the controller's process, behind Kubernetes authentication (web/kube_auth.py).

Imported only when the dashboard is on (the CLI's `controller` command): a controller without it never loads the
web stack. The socket is bound before the controller starts acting, so a port in use stops it with one line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.web.app import make_app
from orchestrator.web.kube_auth import KubeGate, Reviewer, Sessions
from orchestrator.web.kube_source import KubeSource
from orchestrator.web.serve import bind

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from orchestrator.controller.cache import Cache
    from orchestrator.controller.kube import KubeApi

log = logging.getLogger("shardctl.controller")


def start(api: KubeApi, cache: Callable[[], Cache | None], *, namespace: str | None, lease_namespace: str | None,
          host: str, port: int, actions: bool) -> tuple[Callable[[], None], KubeSource, Reviewer, int]:
    """Serve the dashboard on a thread; returns (stop, the source, the reviewer, the port bound)."""
    import uvicorn

    sock = bind(host, port)
    bound = sock.getsockname()[1]
    source = KubeSource(cache, api, namespace, lease_namespace)
    reviewer, sessions = Reviewer(api.client, namespace), Sessions()

    def gate(app: ASGIApp) -> ASGIApp:
        return KubeGate(app, reviewer, sessions, cookie_name=f"shardctl_dashboard_{bound}", actions=actions)

    app = make_app(source, sessions, actions=actions, gate=gate)
    # log_config=None: uvicorn leaves the controller's logging alone (its default config replaces the root handlers)
    config = uvicorn.Config(app, access_log=False, log_level="warning", server_header=False, lifespan="off",
                            proxy_headers=False, log_config=None)
    server = uvicorn.Server(config)
    # on a thread that is not the main one uvicorn leaves the signals alone: the controller's SIGTERM handler stays
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True)
    thread.start()
    log.info("dashboard on http://%s:%d/ (%s; sign in with a Kubernetes token)", host, bound,
             "actions on: cancel" if actions else "read-only")

    def stop() -> None:
        server.should_exit = True
        thread.join(3.0)
        sock.close()

    return stop, source, reviewer, bound


__all__ = ["start"]
