"""Real jobs that print hostile output, end to end (tests/views/test_hostile_output.py plants such text in the
store; here a script under `accelerate launch` writes it). Whatever a job prints or dies of: every view of
shardctl's own (`submit --wait` piped and on a terminal, status, history, list, the JSON forms) shows it inert
and never crashes, the exit codes follow the job's real state, `logs` shows the output as written, and the
Python API raises nothing but ShardctlError.

The five jobs (a failing and a succeeding variant, each followed piped and on a pseudo-terminal, and the failing
one piped with --all-lines) run once for the module, side by side; every check below reads them."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.views.progress import MAX_INT
from orchestrator.views.textsafe import is_safe

pytestmark = pytest.mark.slow  # real accelerate processes, a few seconds each

ROOT = Path(__file__).resolve().parents[2]
BIG = "9" * 400

# What the script writes, as bytes (sys.stdout.buffer: no encoding of Python's in between). Valid UTF-8
# apart from INVALID; the pieces a terminal obeys: OSC 0 and OSC 52 with both terminators, OSC 8 links, RIS,
# DCS, 8-bit C1 (U+009B CSI, U+009D OSC, as UTF-8), CSIs a terminal answers or that clear it, C0 controls,
# NUL, DEL, direction overrides, a carriage return over text.
ESCAPES = ("title \x1b]0;owned-bel\x07 \x1b]0;owned-st\x1b\\ clip \x1b]52;c;cm0gLXJmIH4=\x07 "
           "\x1b]52;c;cm0gLXJmIH4=\x1b\\ link \x1b]8;;http://x.example/\x1b\\click\x1b]8;;\x1b\\ reset \x1bc "
           "dcs \x1bP+q544e\x1b\\ c1 \x9b2J \x9d0;c1-title\x9c csi \x1b[6n\x1b[21t\x1b[2J\x1b[31mred\x1b[0m "
           "c0 \x07\x08\x0b\x0c\x0e\x0f\x7f nul a\x00b bidi \u202etxt.exe\u202c \u2066iso\u2069 "
           "succeeded\rfailed")
INVALID = b"raw \x9b2J \x9d0;t\x07 \xff\xfe \xc3\x28 \xed\xa0\x80 end"  # 8-bit C1 as bytes, invalid UTF-8
# every field the progress reader takes (orchestrator/views/progress.py), out of bounds or in other scripts
PROGRESS = [
    f"{BIG}/10 [00:01<00:01, 1.00it/s]", f"5/{BIG} [00:01<00:01, 1.00it/s]",
    f"5/10 [{BIG}:00<00:01, 1.00it/s]", f"5/10 [00:01<{BIG}:00, 1.00it/s]", f"5/10 [00:01<00:01, {BIG}it/s]",
    f"5/10 [00:01<00:01, 1.{BIG}it/s]", f"5/10 [00:01<00:01, {BIG}s/it]", "5/10 [00:01<00:01, 0.000s/it]",
    f"5/10 [00:01<00:01, 1.00it/s, loss={BIG}]", "5/10 [00:01<00:01, 1.00it/s, loss=1e999999]",
    "5/10 [00:01<00:01, 1.00it/s, loss=nan]", "5/10 [00:01<00:01, 1.00it/s, loss=-inf]",
    "\x1b[A 6/10 [00:02<00:01, 1.00it/s]\x1b[K",
    "shardctl: step=\u00b2 total=10", "shardctl: step=\u0663 total=\u0663\u0660",
    "shardctl: step=\uff13 total=\uff11\uff10", "shardctl: step=\u0969 total=\u0967\u0966",
    f"shardctl: step={10**400} total={10**400} loss={BIG} epoch=1e999", "shardctl: step=-1 total=-5 loss=nan",
    "shardctl: step=1e3 total=10", f"step {10**400}/10 loss 1e999", f"step 5/{10**400} loss {BIG}",
    "step \u00b3/10", f"{{'loss': 1e999, 'epoch': {BIG}}}", "{'loss': nan, 'epoch': inf}",
    f"{{'loss': '{BIG}', 'epoch': '-{BIG}'}}", f"Total optimization steps = {','.join([BIG[:3]] * 130)}",
    # last (so the reading): a bar at the edge of every bound, extreme but in range
    "999999999999999/999999999999999 [999999999:59:59<999999999:59:59, 999999999999999.999999999999999it/s, "
    "loss=1e308]",
]
EDGE_STEP = 999999999999999
ERROR = "TypeError: hostile \x1b]52;c;cm0gLXJmIH4=\x07 \x1bc \x9b2J \u202eexe \x07\x00 succeeded\rfailed"

SCRIPT = f"""\
import os, sys
out = sys.stdout.buffer
out.write({(ESCAPES + chr(10)).encode()!r})
out.write({INVALID!r} + b"\\n")
for line in {PROGRESS!r}:
    out.write(line.encode() + b"\\r" + line.encode() + b"\\n")  # redrawn, as tqdm does
out.flush()
if os.environ["HOSTILE_MODE"] == "fail":
    raise TypeError({ERROR.removeprefix("TypeError: ")!r})
for step in range(1, 21):  # enough readings that the hostile ones leave the reader's window
    print(f"shardctl: step={{step}} total=20 loss=0.5", flush=True)
"""

SPEC = """\
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  target: local
  entrypoint:
    script: {script}
    env: {{HOSTILE_MODE: {mode}}}
  model: {{name_or_path: tiny}}
  backend: fsdp
  sharding: none
  precision: {{mixed: "no"}}
  resources: {{gpus_per_node: 1}}
  fallback: {{max_attempts: 1}}
"""

SUBMITTED = re.compile(r"submitted job (\w+) ")
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # rich's own cursor moves and colours on a terminal


@dataclass(frozen=True)
class Submitted:
    id: str
    returncode: int
    stdout: bytes  # piped: what reached the pipe; on a terminal: everything written to the pty
    stderr: str


@dataclass(frozen=True)
class Jobs:
    home: Path
    env: dict[str, str]
    runs: dict[str, Submitted]  # "fail", "ok", "fail-all" (piped, --all-lines), "fail-tty", "ok-tty"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    return {**env, "SHARDCTL_HOME": str(home), "SHARDCTL_FORCE_CPU": "1", "DS_ACCELERATOR": "cpu",
            "TERM": "xterm-256color"}


def cli(jobs: Jobs, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, timeout=120,
                          env=jobs.env)


def _piped(args: list[str], env: dict[str, str]) -> Submitted:
    r = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=240, env=env)
    stderr = r.stderr.decode()
    found = SUBMITTED.search(stderr)
    assert found, stderr
    return Submitted(found[1], r.returncode, r.stdout, stderr)


def on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 240.0) -> tuple[int, bytes, str]:
    """Run with stdin and stdout on a pseudo-terminal (120x40), stderr piped; everything written to the pty."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    stream = proc.stderr
    assert stream is not None
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(stream.read()), daemon=True)
    reader.start()
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{args} on a terminal did not end in {timeout} s: {b''.join(chunks)[-2000:]!r}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
                quiet_since = None
            elif proc.poll() is not None:  # ended; whatever else holds the pty has had half a second to write
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.5:
                    break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        reader.join(timeout=30)
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks), b"".join(err).decode()


def _on_a_terminal(args: list[str], env: dict[str, str]) -> Submitted:
    code, out, stderr = on_a_terminal(args, env)
    found = SUBMITTED.search(stderr)
    assert found, stderr
    return Submitted(found[1], code, out, stderr)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """The five jobs, submitted side by side with `submit --wait`, each followed to its end."""
    tmp = tmp_path_factory.mktemp("hostile-jobs")
    script = tmp / "hostile.py"
    script.write_text(SCRIPT)
    env = _env(tmp / "state")
    calls = {}
    for name in ("fail", "ok", "fail-all", "fail-tty", "ok-tty"):
        spec = tmp / f"{name}.yaml"
        spec.write_text(SPEC.format(name=f"hostile-{name}", script=script, mode=name.split("-")[0]))
        calls[name] = (_on_a_terminal if name.endswith("-tty") else _piped,
                       [sys.executable, "-m", "orchestrator", "submit", str(spec), "--wait",
                        *(["--all-lines"] if name.endswith("-all") else [])])
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(how, args, env) for name, (how, args) in calls.items()}
        runs = {name: f.result() for name, f in futures.items()}
    return Jobs(tmp / "state", env, runs)


def shown_inert_on_a_terminal(out: bytes) -> str:
    """The pty's text less what the terminal view draws itself (CSI cursor moves and colours, the pty's
    `\\r\\n`), which must then be safe; the CSIs of the script's own (ESCAPES) must not be there at all."""
    text = out.decode()
    for raw in ("\x1b[6n", "\x1b[21t", "\x1b[2J"):  # the script's, which rich never draws
        assert raw not in text, raw
    rest = CSI.sub("", text).replace("\r", "")
    assert is_safe(rest), [c for c in rest if not is_safe(c)][:20]
    return rest


# --- submit --wait -------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, code", [("fail", 1), ("ok", 0), ("fail-all", 1)])
def test_submit_wait_piped_exits_as_the_job_ended_and_prints_nothing_a_terminal_obeys(jobs: Jobs, name: str,
                                                                                     code: int) -> None:
    run = jobs.runs[name]
    out = run.stdout.decode()  # shardctl's own lines: valid UTF-8 whatever the job wrote
    assert run.returncode == code, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and is_safe(run.stderr), run.stderr
    assert is_safe(out), [line for line in out.splitlines() if not is_safe(line)]
    state = "failed" if code else "succeeded"
    assert re.search(rf"\[shardctl\] attempt 1 {state}", out) and re.search(rf"\[shardctl\] job {run.id} {state}", out)
    if name == "fail-all":  # every line the script printed, inert
        assert f"[attempt 1] {ESCAPES}" not in out and "[attempt 1] title ^[]0;owned-bel^G" in out, out
        assert "csi ^[[6n^[[21t^[[2J^[[31mred^[[0m" in out and "nul a^@b" in out and "succeeded^Mfailed" in out
    if code:
        assert "attempt 1 failed: user_error" in out
        assert "evidence: TypeError: hostile ^[]52;c;cm0gLXJmIH4=^G ^[c <U+009B>2J <U+202E>exe ^G^@" in out, out
    else:
        assert "progress: step 20/20 (100%)" in out, out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, code", [("fail-tty", 1), ("ok-tty", 0)])
def test_submit_wait_on_a_terminal_exits_as_the_job_ended_and_draws_the_jobs_text_inert(jobs: Jobs, name: str,
                                                                                       code: int) -> None:
    run = jobs.runs[name]
    assert run.returncode == code, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and is_safe(run.stderr), run.stderr
    shown = shown_inert_on_a_terminal(run.stdout)
    state = "failed" if code else "succeeded"
    assert f"job {run.id} {state}" in shown, shown
    if code:
        assert "evidence: TypeError: hostile ^[]52;c;cm0gLXJmIH4=^G" in shown, shown


# --- shardctl's own views ------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["fail", "ok"])
def test_status_and_history_show_the_real_end_and_the_jobs_text_inert(jobs: Jobs, name: str) -> None:
    run = jobs.runs[name]
    for view in ("status", "history"):
        r = cli(jobs, view, run.id)
        out, err = r.stdout.decode(), r.stderr.decode()
        assert r.returncode == 0 and "Traceback" not in err, (view, err)
        assert is_safe(out) and is_safe(err), (view, out, err)
        if name == "fail":
            assert (f"{run.id}  hostile-fail  target local  failed: " if view == "status"
                    else f"job {run.id} (hostile-fail, target local): failed - ") in out, out
            assert "user_error: the script raised an error" in out, out
        else:
            assert (f"{run.id}  hostile-ok  target local  succeeded" if view == "status"
                    else f"job {run.id} (hostile-ok, target local): succeeded") in out, out
            assert "failed" not in out, out
    status = cli(jobs, "status", run.id).stdout.decode()
    expected = "progress: step 20/20 (100%)" if name == "ok" else f"progress: step {EDGE_STEP}/{EDGE_STEP} (100%)"
    assert expected in status, status
    if name == "fail":
        evidence = cli(jobs, "history", run.id).stdout.decode()
        assert "evidence: TypeError: hostile ^[]52;c;cm0gLXJmIH4=^G ^[c <U+009B>2J <U+202E>exe ^G^@" in evidence


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["fail", "ok"])
def test_the_json_views_hold_the_real_end_and_readings_in_bounds(jobs: Jobs, name: str) -> None:
    run = jobs.runs[name]
    for args in (["status", run.id, "--json"], ["history", run.id, "--json"]):
        r = cli(jobs, *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr.decode(), r.stderr
        out = r.stdout.decode()
        assert is_safe(out), out  # json.dumps escapes every control; the bidi override is \u202e
        view = json.loads(out)
        attempt = view["attempts"][-1]
        if name == "fail":
            assert (view["state"], attempt["state"], attempt["failure"]["kind"]) == ("failed", "failed", "user_error")
            assert attempt["exit_code"] == 1
            assert attempt["failure"]["evidence"].startswith(ERROR.split("\r")[0])  # the data itself, escaped
        else:
            assert (view["state"], attempt["state"], attempt["failure"]) == ("succeeded", "succeeded", None)
        progress = attempt["progress"]
        assert progress is not None and 0 <= progress["step"] <= MAX_INT and 0 <= progress["total"] <= MAX_INT
        assert progress["step"] == (20 if name == "ok" else EDGE_STEP)
        assert all(v is None or isinstance(v, str) or abs(v) < 1e309 for v in progress.values())


@pytest.mark.timeout(300)
def test_list_piped_on_a_terminal_and_as_json_shows_every_jobs_real_state(jobs: Jobs) -> None:
    states = {run.id: "failed" if name.startswith("fail") else "succeeded" for name, run in jobs.runs.items()}
    r = cli(jobs, "list")
    out = r.stdout.decode()
    assert r.returncode == 0 and "Traceback" not in r.stderr.decode() and is_safe(out), (out, r.stderr)
    for job_id, state in states.items():
        assert re.search(rf"^{job_id}\s.*\b{state}\b", out, re.MULTILINE), out
    code, shown, err = on_a_terminal([sys.executable, "-m", "orchestrator", "list"], jobs.env, timeout=120)
    assert code == 0 and "Traceback" not in err, err
    rest = shown_inert_on_a_terminal(shown)
    assert all(job_id in rest for job_id in states), rest
    r = cli(jobs, "list", "--json")
    assert r.returncode == 0 and is_safe(r.stdout.decode()), r.stdout
    assert {v["id"]: v["state"] for v in json.loads(r.stdout)} == states


# --- logs ----------------------------------------------------------------------------------------------------

def _as_written(out: bytes) -> None:
    """The script's output in `out` byte for byte; its invalid UTF-8 as written or as U+FFFD each."""
    assert ESCAPES.encode() + b"\n" in out, out[:3000]
    for line in PROGRESS:
        assert line.encode() + b"\r" + line.encode() + b"\n" in out, line
    start = out.index(b"raw ")
    got = out[start:out.index(b" end", start) + 4]
    replaced = b"raw \xef\xbf\xbd2J \xef\xbf\xbd0;t\x07 \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd( "
    assert got == INVALID or (got.startswith(replaced) and got.endswith(b" end")), got


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["fail", "ok"])
def test_logs_shows_the_output_as_the_script_wrote_it(jobs: Jobs, name: str) -> None:
    run = jobs.runs[name]
    r = cli(jobs, "logs", run.id)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    _as_written(r.stdout)
    if name == "fail":
        assert ERROR.encode() in r.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, code", [("fail", 1), ("ok", 0)])
def test_logs_follow_of_an_ended_job_shows_the_output_and_exits_as_the_job_ended(jobs: Jobs, name: str,
                                                                                 code: int) -> None:
    run = jobs.runs[name]
    r = cli(jobs, "logs", "-f", run.id)
    assert r.returncode == code and "Traceback" not in r.stderr.decode(), r.stderr
    assert f"[attempt 1] {ESCAPES}\n".encode() in r.stdout
    own = [line for line in r.stdout.decode(errors="replace").split("\n") if not line.startswith("[attempt ")]
    assert any(f"[shardctl] job {run.id}" in line for line in own), own
    assert all(is_safe(line) for line in own), own  # shardctl's own lines (notes, evidence) among them: inert
    if name == "fail":
        assert any(line.startswith("  evidence: TypeError: hostile ^[]52;c;cm0gLXJmIH4=^G") for line in own), own


# --- the Python API ------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["fail", "ok"])
def test_the_api_reads_hostile_jobs_and_raises_nothing_but_shardctl_errors(jobs: Jobs, name: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import shardctl

    monkeypatch.setenv("SHARDCTL_HOME", str(jobs.home))
    run = jobs.runs[name]
    state = "failed" if name == "fail" else "succeeded"
    job = shardctl.get_job(run.id)
    assert repr(job).endswith(f" {state}>")
    view = job.status()
    assert view["state"] == state and json.loads(json.dumps(view)) == view
    attempts = job.history()
    assert [a["state"] for a in attempts] == [state]
    assert [a["failure"]["kind"] if a["failure"] else None for a in attempts] == ["user_error" if state == "failed"
                                                                                  else None]
    assert job.wait(timeout=5) == state
    lines = list(job.logs(follow=True))
    assert lines[0].startswith("[shardctl] attempt 1 started") and lines[-1].startswith(f"[shardctl] job {run.id}")
    assert ESCAPES in lines and all(isinstance(line, str) for line in lines)
    assert ESCAPES in list(job.logs())
    assert [j.state for j in shardctl.list_jobs() if j.id == run.id] == [state]
    with pytest.raises(shardctl.ShardctlError):  # a script, not a function: no result, an error of ours
        job.result(timeout=5)
    assert isinstance(job.exception(timeout=5), shardctl.ShardctlError)
