"""The controller's HTTP endpoints for the kubelet and Prometheus: /healthz, /readyz and /metrics.

- /healthz (liveness) fails (500) when a thread the controller needs has died: a watch, a worker,
  the resync or the leader election. A restart is the cure for that, and only for that.
- /readyz (readiness) fails (503) while the controller cannot reach the API server: it passes when
  the last exchange with the server (a list, a watch event or bookmark, a Lease read or write) is
  less than `stale_s` old; otherwise it asks the server for /version (at most once a second) and
  passes if the server answers. A quiet cluster costs one small request per probe, no more.
- /metrics: the Prometheus text format of the controller's own registry (controller/metrics.py).

One port for all three (default 8081); the chart points the probes and its metrics Service at it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from orchestrator.controller.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger("shardctl.controller")


class Contact:
    """When this process last heard from the API server (monotonic clock)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def touch(self) -> None:
        self._last = time.monotonic()

    def age(self) -> float | None:
        return None if self._last is None else time.monotonic() - self._last


def probe_api(api_client: object, timeout_s: float = 2.0) -> bool:
    """True if the API server answers GET /version: any reply but a 5xx, 401 or 403 (which would also
    stop the watches) proves it reachable; a refused or timed-out connection does not."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.VersionApi(api_client).get_code(_request_timeout=timeout_s)
        return True
    except ApiException as exc:
        return bool(exc.status) and exc.status < 500 and exc.status not in (401, 403)
    except Exception:  # noqa: BLE001 -- connection refused, timeout, DNS: not reachable
        return False


class Health:
    """The checks behind the endpoints, so they can be tested without HTTP."""

    def __init__(self, contact: Contact, probe: Callable[[], bool], *, stale_s: float = 5.0,
                 metrics: Metrics | None = None) -> None:
        self.contact = contact
        self.probe = probe
        self.stale_s = stale_s
        self.metrics = metrics
        self._checks: list[Callable[[], list[str]]] = []  # each returns the names of dead threads
        self._probe_lock = threading.Lock()
        self._probed_at = float("-inf")
        self._probe_ok = False

    def watch_threads(self, dead: Callable[[], list[str]]) -> None:
        self._checks.append(dead)

    def live(self) -> tuple[bool, str]:
        dead = [name for check in self._checks for name in check()]
        return (not dead, f"dead threads: {', '.join(dead)}" if dead else "ok")

    def ready(self) -> tuple[bool, str]:
        age = self.contact.age()
        if age is not None and age < self.stale_s:
            return True, f"ok: API server heard from {age:.1f} s ago"
        with self._probe_lock:  # kubelets and people may probe at once: one request a second at most
            if time.monotonic() - self._probed_at >= 1.0:
                self._probe_ok = self.probe()
                self._probed_at = time.monotonic()
                if self._probe_ok:
                    self.contact.touch()
            ok = self._probe_ok
        if ok:
            return True, "ok: API server answered the probe"
        heard = "never" if age is None else f"{age:.1f} s ago"
        return False, f"API server unreachable (last heard from {heard})"


class HealthServer:
    """Serves Health and Metrics on `port` (0: any free port, read back from `.port`) in a daemon thread."""

    def __init__(self, health: Health, metrics: Metrics | None, port: int, host: str = "0.0.0.0") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # the kubelet probes every few seconds: quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, message = outer.health.live()
                    self._text(ok, message, 500)
                elif path == "/readyz":
                    ok, message = outer.health.ready()
                    self._text(ok, message, 503)
                elif path == "/metrics" and outer.metrics is not None:
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _text(self, ok: bool, message: str, failure: int) -> None:
                self._send(200 if ok else failure, (message + "\n").encode(), "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.health, self.metrics = health, metrics
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="health-server", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("health and metrics on port %d (/healthz, /readyz, /metrics)", self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
