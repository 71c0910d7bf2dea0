"""Leader election against the fake API server: nobody's clock is trusted, and an API server outage makes
the leader step down (and a second candidate take over once the server is back) instead of killing the
election thread while the process believes it leads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from orchestrator.controller.kube import KubeApi
from orchestrator.controller.leader import LeaderElector
from tests.controller.test_controller import NS, kube
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

LEASE = "shardctl-controller"


class Outage:
    """A TCP proxy in front of the fake API server that can stop answering: `refuse` closes its port
    (connection refused), `hang` accepts connections and never answers (timeouts); `restore` reopens."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "up"
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return s

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            with self.lock:  # a connection accepted just as the outage began must not outlive it
                if self.mode == "refuse":
                    conn.close()
                    continue
                self.conns.append(conn)
                if self.mode == "hang":
                    continue  # held open, never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                conn.close()
                continue
            with self.lock:
                if self.mode != "up":
                    upstream.close()
                    conn.close()
                    continue
                self.conns.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, mode: str) -> None:
        with self.lock:
            self.mode = mode
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()
        if mode == "refuse":
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            except OSError:
                pass
            self.listener.close()

    def restore(self) -> None:
        with self.lock:
            was, self.mode = self.mode, "up"
        if was == "refuse":
            self.listener = self._listen(self.port)


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def lease(server: FakeApiServer) -> dict:
    return server.store.objects[server.resource("leases", "coordination.k8s.io")][(NS, LEASE)]["spec"]


def start(elector: LeaderElector) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.parametrize("skew", [timedelta(hours=3), timedelta(hours=-3)], ids=["ahead", "behind"])
def test_a_holder_with_a_skewed_clock_is_neither_overthrown_early_nor_kept_forever(api: FakeApiServer,
                                                                                   skew: timedelta) -> None:
    """Comparing the holder's renewTime with our clock would take the Lease at once from a holder that is 3 h
    behind, and never from one 3 h ahead. Observed time takes it exactly when renewals stop."""
    holder = LeaderElector(kube(api), NS, "skewed", lease_s=2, renew_s=0.2,
                           wall_clock=lambda: datetime.now(UTC) + skew)
    candidate = LeaderElector(kube(api), NS, "candidate", lease_s=2, renew_s=0.2)
    stop_holder, _ = start(holder)
    wait_for(holder.leading.is_set, 5, "the skewed holder to lead")
    stop_candidate, _ = start(candidate)
    try:
        time.sleep(3.0)  # longer than the lease: the holder keeps renewing, so it must keep it
        assert holder.leading.is_set() and not candidate.leading.is_set()
        assert lease(api)["holderIdentity"] == "skewed"
        stop_holder.set()  # the holder stops renewing (no release: as if killed)
        stopped = time.monotonic()
        wait_for(candidate.leading.is_set, 6, "the candidate to take over")
        waited = time.monotonic() - stopped
        assert 1.5 <= waited <= 4.5, waited  # about one lease (2 s) after the last renewal it saw, no sooner
        assert lease(api)["holderIdentity"] == "candidate" and lease(api)["leaseTransitions"] == 1
    finally:
        stop_holder.set()
        stop_candidate.set()


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_an_api_outage_makes_the_leader_step_down_and_another_take_over_after_it(api: FakeApiServer,
                                                                                 mode: str) -> None:
    outage = Outage(int(api.url.rsplit(":", 1)[1]))

    def through_proxy() -> KubeApi:
        return KubeApi(client.ApiClient(client.Configuration(host=outage.url)))

    a = LeaderElector(through_proxy(), NS, "replica-a", lease_s=3, renew_s=0.3, renew_deadline_s=2)
    b = LeaderElector(through_proxy(), NS, "replica-b", lease_s=3, renew_s=0.3, renew_deadline_s=2)
    stop_a, thread_a = start(a)
    wait_for(a.leading.is_set, 5, "replica a to lead")
    stop_b, thread_b = start(b)
    try:
        time.sleep(0.5)
        outage.cut(mode)
        cut = time.monotonic()
        wait_for(lambda: not a.leading.is_set(), 5, "the leader to step down")
        assert time.monotonic() - cut <= 2.0 + 0.5  # within the renew deadline (plus one renew period)
        assert a.stepped_down.is_set()
        thread_a.join(2)
        assert not thread_a.is_alive()  # run() returned: the process exits and is restarted
        time.sleep(1.0)
        assert thread_b.is_alive() and not b.leading.is_set()  # the candidate's loop survived the errors
        outage.restore()
        wait_for(b.leading.is_set, 8, "replica b to take over once the server is back")
        assert lease(api)["holderIdentity"] == "replica-b"
        assert not a.leading.is_set()
    finally:
        stop_a.set()
        stop_b.set()
        outage.restore()


def test_a_stopped_leader_that_releases_lets_the_next_one_in_at_once(api: FakeApiServer) -> None:
    a = LeaderElector(kube(api), NS, "replica-a", lease_s=10, renew_s=0.2, release_on_stop=True)
    b = LeaderElector(kube(api), NS, "replica-b", lease_s=10, renew_s=0.2)
    stop_a, thread_a = start(a)
    wait_for(a.leading.is_set, 5, "replica a to lead")
    stop_b, _ = start(b)
    try:
        time.sleep(0.5)
        stop_a.set()
        thread_a.join(3)
        assert lease(api)["holderIdentity"] in ("", "replica-b")
        wait_for(b.leading.is_set, 2, "replica b to take over without waiting out the 10 s lease")
    finally:
        stop_b.set()
