"""Delivery (orchestrator/notify/send.py, outbox.py): retries with backoff, once per key, across a restart,
never raising, nothing secret written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from orchestrator.notify.events import stamp_of
from orchestrator.notify.outbox import Outbox
from orchestrator.notify.send import Notifier, Schedule
from orchestrator.spec.failure import Failure
from orchestrator.store.jobstore import Store
from tests.helpers import doc
from tests.notify.receiver import Receiver

FAST = Schedule(tries=4, backoff_s=0.05, max_gap_s=0.2, timeout_s=2.0)


def finished_job(tmp_path: Path, events: list[str], fmt: str = "json"):
    spec = doc(notify=[{"url": {"env": "HOOK"}, "format": fmt, "events": events,
                        **({"signing_secret": {"env": "HOOK_KEY"}} if fmt == "json" else {})}])
    store = Store(tmp_path / "state")
    job = store.create_job(name="j", target="local", spec=spec, source=None, workdir=str(tmp_path),
                           checkpoint_dir=None)
    store.add_attempt(job.id, 1, spec=doc(), rung=None, reason="first", run_dir="/r", log_path="/l", artifacts={},
                      warnings=[], resume_from=None)
    store.end_attempt(job.id, 1, "failed", Failure("user_error", "KeyError: 'x'"), ended_at=1.0)
    store.finish_job(job.id, "failed", "user errors are never retried")
    return store, store.get_job(job.id)


def notifier(store: Store, job, url: str, lines: list[str] | None = None, **kw) -> Notifier:
    said = lines if lines is not None else []
    return Notifier(job, log=said.append, environ={"HOOK": url, "HOOK_KEY": "k"}, schedule=FAST, **kw)


@pytest.mark.timeout(30)
def test_pending_notifications_are_sent_by_the_next_notifier_and_delivered_ones_never_again(tmp_path: Path) -> None:
    store, job = finished_job(tmp_path, ["attempt_ended", "job_finished"])
    with Receiver() as receiver:
        receiver.down = True
        first = notifier(store, job, receiver.url)
        assert first.sync(job, store.attempts(job.id)) == 2
        assert first.sync(job, store.attempts(job.id)) == 0  # queued once per key
        first.deliver()
        assert [r.status for r in receiver.seen()] == [503, 503]
        assert first.pending()
        # a new process (a restarted supervisor) takes over the outbox as it finds it
        receiver.down = False
        second = notifier(store, store.get_job(job.id), receiver.url)
        assert second.drain(10)
        key = f"shardctl-{job.id}-{stamp_of(job.created_at)}"
        assert sorted(r.key for r in receiver.accepted()) == [f"{key}-attempt_ended-1", f"{key}-job_finished-1"]
        third = notifier(store, store.get_job(job.id), receiver.url)
        assert third.sync(job, store.attempts(job.id)) == 0 and third.drain(2)
        assert len(receiver.seen()) == 4  # nothing more was sent


@pytest.mark.timeout(30)
def test_two_senders_at_once_send_each_try_once(tmp_path: Path) -> None:
    store, job = finished_job(tmp_path, ["job_finished"])
    with Receiver() as receiver:
        senders = [notifier(store, job, receiver.url) for _ in range(2)]
        senders[0].sync(job, store.attempts(job.id))
        threads = [threading.Thread(target=s.deliver) for s in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(receiver.seen()) == 1 and receiver.seen()[0].accepted


@pytest.mark.timeout(30)
def test_a_receiver_down_for_good_is_given_up_on_after_the_bounded_tries_and_recorded(tmp_path: Path) -> None:
    store, job = finished_job(tmp_path, ["job_finished"], fmt="slack")
    with Receiver() as receiver:
        url = receiver.url + "/hook?token=abc"
    lines: list[str] = []
    sender = notifier(store, job, url, lines)  # the receiver is gone: the port refuses connections
    sender.sync(job, store.attempts(job.id))
    assert sender.drain(20)  # nothing pending any more: given up
    failures = Outbox(job.job_dir).failures()
    assert [f["try"] for f in failures] == [1, 2, 3, 4, None]  # every try, then the give-up
    assert all("cannot connect" in f["error"] for f in failures)
    assert len(lines) == 5 and not any("Traceback" in line for line in lines)
    written = "".join(p.read_text() for p in Path(job.job_dir).rglob("*.json"))
    assert "token=abc" not in written and "127.0.0.1" not in written and "token=abc" not in "".join(lines)


@pytest.mark.timeout(30)
def test_a_final_refusal_is_not_retried(tmp_path: Path) -> None:
    """A 404 (the webhook was deleted) cannot change by retrying: one try, then given up."""
    store, job = finished_job(tmp_path, ["job_finished"])
    with Receiver() as receiver:
        sender = notifier(store, job, receiver.url + "/gone")
        receiver.status_for["/gone"] = 404
        sender.sync(job, store.attempts(job.id))
        assert sender.drain(5)
        assert [r.status for r in receiver.seen()] == [404]
    failures = Outbox(job.job_dir).failures()
    assert [f["try"] for f in failures] == [1, None] and failures[0]["error"].startswith("HTTP 404")


@pytest.mark.timeout(30)
def test_a_missing_variable_is_a_recorded_failure_naming_it(tmp_path: Path) -> None:
    store, job = finished_job(tmp_path, ["job_finished"])
    lines: list[str] = []
    sender = Notifier(job, log=lines.append, environ={}, schedule=FAST)
    sender.sync(job, store.attempts(job.id))
    sender.deliver()
    assert "HOOK is not set in the environment" in Outbox(job.job_dir).failures()[0]["error"]
    assert os.stat(Outbox(job.job_dir).path).st_mode & 0o777 == 0o700


@pytest.mark.timeout(30)
def test_a_receiver_that_drips_its_answer_holds_a_try_no_longer_than_its_timeout() -> None:
    """urllib's timeout bounds each socket read: a receiver sending a byte every 0.3 s would hold the try (and the
    supervisor's drain, and a CLI read that delivers inline) for ever."""
    import socket
    import time

    from orchestrator.notify.send import DeliveryError, post

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"x")
            except OSError:
                return
            time.sleep(0.3)

    threading.Thread(target=drip, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DeliveryError, match="no whole answer within 1 s"):
            post(f"http://127.0.0.1:{server.getsockname()[1]}/", b"{}", {}, timeout_s=1.0)
        assert time.monotonic() - t0 < 3
    finally:
        stop.set()
        server.close()


@pytest.mark.timeout(30)
def test_a_try_whose_end_could_not_be_recorded_is_tried_again_by_the_same_process(tmp_path: Path) -> None:
    """A full disk when the failure is written leaves the try claimed with no end; this process's own claim is not
    in flight once it looks again, so the item is retried, not left pending for ever."""
    store, job = finished_job(tmp_path, ["job_finished"])
    with Receiver() as receiver:
        receiver.down = True
        n = notifier(store, job, receiver.url)
        n.sync(job, store.attempts(job.id))
        real_failed = Outbox.failed
        calls = []

        def full_disk(self, *args, **kwargs):  # noqa: ANN001, ANN202 - Outbox.failed's signature
            calls.append(args)
            if len(calls) == 1:
                raise OSError(28, "No space left on device")
            return real_failed(self, *args, **kwargs)

        Outbox.failed = full_disk  # type: ignore[method-assign]
        try:
            n.deliver()
            receiver.down = False
            assert n.drain(10)
        finally:
            Outbox.failed = real_failed  # type: ignore[method-assign]
        assert [r.status for r in receiver.seen()][-1] == 200 and len(receiver.accepted()) == 1
