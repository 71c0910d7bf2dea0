"""One job store and one `shardctl ui` over it for the dashboard's tests, made once for the session.

The store holds: a real local OOM-fallback run (examples/oom-fallback.yaml, the README's quickstart: attempt 1
killed by the memory cgroup, attempt 2 resumed with activation checkpointing; about a minute on 2 cores, started
only by the tests that need it), a hostile job planted as a script's output would leave it (a name and a log full
of markup and terminal escapes), a two-point sweep, and a job whose log is garbage. The server is the real
command, `python -m orchestrator ui --port 0`, read through HTTP like a browser reads it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path

import pytest

from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, FailureKind, JobState
from orchestrator.store.jobstore import Store
from tests.helpers import doc

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dashboard-test-token-0123456789"
URL = re.compile(r"(http://127\.0\.0\.1:(\d+)/)\?token=(\S+)")
HOSTILE_NAME = "<script>alert(1)</script>"
# what the hostile job printed: markup that would run or inject if unescaped, and what a terminal obeys
HOSTILE_LOG = ("step 1/4 loss 2.5\n<script>document.title='pwned'</script>\n<img src=x onerror=\"document.title="
               "'pwned'\">\n\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b]52;c;cm0gLXJmIH4=\x07 \x9b2J bell\x07 "
               f"{HOSTILE_NAME}\nstep 2/4 loss nan\nstep 3/4 loss 1e308\nstep 4/4 loss 1.5\n")
GROUP = "sweepdemo-a1b2c3"


@dataclass(frozen=True)
class Planted:
    hostile: str
    garbage: str
    points: tuple[str, str]


@dataclass(frozen=True)
class Dashboard:
    base: str  # http://127.0.0.1:PORT/
    url: str  # the printed URL, with its token
    token: str
    home: Path
    env: dict[str, str]
    planted: Planted


def env_for(home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the venv's ninja, for DeepSpeed's op (scripts/bootstrap)
    return {**os.environ, "SHARDCTL_HOME": str(home), "SHARDCTL_UI_TOKEN": TOKEN, "DS_ACCELERATOR": "cpu",
            "SHARDCTL_FORCE_CPU": "1", "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}


def _finished(store: Store, name: str, spec: dict, log: Path, text: bytes, failure: Failure | None = None) -> str:
    log.write_bytes(text)
    record = store.create_job(name=name, target="local", spec=spec, source=None, workdir=str(log.parent),
                              checkpoint_dir=None)
    store.add_attempt(record.id, 1, spec=spec, rung=None, reason="first attempt: the spec as submitted",
                      run_dir=str(log.parent), log_path=str(log), artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(record.id, 1, external_id="1:1", started_at=time.time() - 60)
    state = failure.end_state if failure else AttemptState.SUCCEEDED
    store.end_attempt(record.id, 1, state, failure, ended_at=time.time(), exit_code=1 if failure else 0)
    store.finish_job(record.id, JobState.FAILED if failure else JobState.SUCCEEDED, "planted")
    return record.id


def plant(home: Path, logs: Path) -> Planted:
    store = Store(home)
    hostile = _finished(store, HOSTILE_NAME, doc(), logs / "hostile.log", HOSTILE_LOG.encode(),
                        Failure(FailureKind.UNKNOWN, f"exited 1 {HOSTILE_NAME} \x1b]0;owned\x07",
                                f"RuntimeError: {HOSTILE_NAME} \x1b[2J\x1bc"))
    garbage = _finished(store, "garbage", doc(), logs / "garbage.log",
                        b"\xff\xfe\x00step 99999999999999999999/1 loss 1e999\r\x1b[" + b"9" * 5000 + b"\n"
                        + bytes(range(256)) * 64 + b"step 3/2 loss -inf\nstep 5/10 loss 3.0\nstep 6/10 loss 2.",
                        Failure(FailureKind.UNKNOWN, "planted"))
    points = []
    for i, losses in enumerate(((3.0, 2.5, 2.0), (3.0, 2.8, 2.7))):
        spec = doc()
        spec["metadata"] = {"name": f"sweepdemo-{i}",
                            "labels": {"shardctl.dev/group": GROUP, "shardctl.dev/point": str(i)}}
        spec["spec"]["batch"] = {"micro": 4 * (i + 1)}
        spec["spec"]["model"] = {"name_or_path": "tiny-lm", "parameters": 1.1e9}  # sized: the planner can plan it
        spec["spec"]["resources"] = {"gpus_per_node": 8, "gpu_memory": "80GiB"}
        text = "".join(f"step {s}/3 loss {v}\n" for s, v in enumerate(losses, 1))
        points.append(_finished(store, f"sweepdemo-{i}", spec, logs / f"point-{i}.log", text.encode()))
    return Planted(hostile, garbage, (points[0], points[1]))


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Dashboard:
    """`shardctl ui --port 0` over a store with the planted jobs, for the whole session."""
    tmp = tmp_path_factory.mktemp("dashboard")
    home, logs = tmp / "state", tmp / "logs"
    logs.mkdir()
    planted = plant(home, logs)
    env = env_for(home)
    out = tmp / "ui.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (found := URL.search(out.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.1)
        yield Dashboard(found[1], found[0], found[3], home, env, planted)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def oom_run(dashboard: Dashboard) -> str:
    """The README's quickstart run, for real, in the dashboard's store: its job id once it has ended."""
    from orchestrator.targets.local.memlimit import cgroup_available

    if not cgroup_available():
        pytest.skip("the example's OOM evidence is a memory cgroup's oom_kill count")
    r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", "examples/oom-fallback.yaml", "--wait"],
                       cwd=ROOT, env=dashboard.env, capture_output=True, text=True, timeout=540)
    found = re.search(r"submitted job (\w+) ", r.stderr)
    assert found and r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return found[1]


# --- a small HTTP client, as a browser behaves -------------------------------------------------------------------


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers in lower case, body) without following redirects; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        response: HTTPResponse = OPENER.open(req, timeout=60)
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode("utf-8", "replace")
    return response.status, {k.lower(): v for k, v in response.headers.items()}, \
        response.read().decode("utf-8", "replace")


def login(d: Dashboard) -> str:
    """The Cookie header a browser gets by opening the printed URL."""
    status, headers, _ = request(d.url)
    assert status == 303, status
    return headers["set-cookie"].split(";", 1)[0]


def chromium() -> str:
    """Debian's chromium (scripts/test installs it); skips without one unless SHARDCTL_REQUIRE_CHROMIUM=1."""
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome"):
        if found := shutil.which(name):
            return found
    if os.environ.get("SHARDCTL_REQUIRE_CHROMIUM") == "1":
        pytest.fail("SHARDCTL_REQUIRE_CHROMIUM=1 but no chromium on PATH (scripts/test installs Debian's)")
    pytest.skip("no chromium: apt-get install -y chromium (scripts/test does it as root)")


def browse(url: str, profile: Path, *, screenshot: Path | None = None, size: str = "1280,900") -> str:
    """Open `url` in headless Chromium (a fresh profile: no cookie yet) and return the DOM after its scripts ran;
    with `screenshot`, a PNG of the window too."""
    cmd = [chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", "--force-color-profile=srgb",
           "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--window-size={size}",
           "--virtual-time-budget=3000"]
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
    if screenshot is not None:
        done = subprocess.run([*cmd, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120)
        assert screenshot.exists(), done.stderr[-2000:]
    done = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout
