"""`shardctl ui` as a user starts it (orchestrator/web/serve.py): the URL it prints, a fresh token per start, the
token in no log, a port in use as one line, and a `shardctl --help` that never imports the web stack."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.web.conftest import ROOT, URL, request

WEB_STACK = ("starlette", "uvicorn", "jinja2", "markupsafe", "anyio", "h11")


def start(home: Path, out: Path, *args: str, token: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if k != "SHARDCTL_UI_TOKEN"}
    env.update(SHARDCTL_HOME=str(home), **({"SHARDCTL_UI_TOKEN": token} if token else {}))
    err = out.with_suffix(".err")
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", *args], cwd=ROOT, env=env, stdout=o,
                                stderr=e)
    deadline = time.monotonic() + 60
    while not (found := URL.search(out.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, (out.read_text(), err.read_text())
        time.sleep(0.1)
    return proc, found[0]


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=20)


@pytest.mark.timeout(60)
def test_help_never_imports_the_web_stack() -> None:
    code = ("import sys; from click.testing import CliRunner; from orchestrator.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0 and ' ui ' in r.output, r.output; "
            f"print(','.join(m for m in {WEB_STACK!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


@pytest.mark.timeout(120)
def test_each_start_prints_a_url_with_a_fresh_token_that_no_log_repeats(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "state", tmp_path / "one.out", "--port", "0")
    try:
        token = URL.search(url)[3]
        base = URL.search(url)[1]
        assert len(token) >= 40 and request(base)[0] == 401
        assert request(url)[0] == 303 and request(base + "jobs/x?token=" + token)[0] == 303
        assert request(base + "?token=" + token[:-1])[0] == 401
        with socket.create_connection(("127.0.0.1", int(URL.search(url)[2]))) as raw:  # not HTTP at all
            raw.sendall(b"GARBAGE /?token=" + token.encode() + b" \x00\r\n\r\n")
            raw.recv(1024)
    finally:
        code = stop(proc)
    out, err = (tmp_path / "one.out").read_text(), (tmp_path / "one.err").read_text()
    assert code == 0 and "Traceback" not in err, err
    assert out.count(token) == 1 and token not in err  # the printed URL, and nowhere else
    assert re.search(r"http://127\.0\.0\.1:\d+/ ", out) and ":0/" not in out  # the port really bound
    again, second = start(tmp_path / "state", tmp_path / "two.out", "--port", "0")
    stop(again)
    assert URL.search(second)[3] != token


@pytest.mark.timeout(60)
def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "SHARDCTL_HOME": str(tmp_path / "state")}
        r = subprocess.run([sys.executable, "-m", "orchestrator", "ui", "--port", str(port)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.timeout(60)
def test_a_short_token_from_the_environment_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "SHARDCTL_HOME": str(tmp_path / "state"), "SHARDCTL_UI_TOKEN": "abc"}
    r = subprocess.run([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "SHARDCTL_UI_TOKEN must be at least 16" in r.stderr


@pytest.mark.timeout(30)
def test_only_loopback_counts_as_private_and_an_ipv6_url_is_bracketed() -> None:
    from orchestrator.web.serve import is_loopback, url_of

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "login1.example"))
    assert url_of("::1", 8765, "t") == "http://[::1]:8765/?token=t" and url_of("127.0.0.1", 1) == "http://127.0.0.1:1/"
