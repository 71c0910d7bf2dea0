"""A real Slurm run where the judges and the CLI write the job store through different mounts.

On a site every node mounts the shared filesystem at the same path through its own NFS client. Here:
the two-host rig's sshfs mounts (scripts/twohosts) and the dev cluster started with
`SLURM_DEV_NODE_MOUNT=<host B's mount>:<host A's mount>` (scripts/test does so when the rig is up),
so every job slurmd starts, the judges included, sees host B's mount at host A's path, while the CLI
here uses host A's. The store's path is the same on both sides; its client, caches and lock table
are not. The OOM fallback and a cancel must end exactly as on one mount
(tests/targets/slurm/test_cluster.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.store.jobstore import Store
from tests.targets.slurm.test_cluster import (
    cancel_while_training,
    cli,
    default_memory_oom,
    site_profile,  # noqa: F401 - a fixture (the cluster runs the site profile)
    submit,
    submitting_shell,
)
from tests.twohosts.conftest import TwoHosts

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def node_view(hosts: TwoHosts, out: Path) -> dict[str, str]:
    """What a job on the cluster sees at host A's path: its device and inode, and the mount table's line."""
    a = str(hosts.a)
    script = (f'stat -c "dev %d:%i" {a}; awk -v m={a} \'$5 == m {{print "mount", $0}}\' /proc/self/mountinfo; '
              f'stat -f -c "fstype %T" {a}')
    r = subprocess.run(["sbatch", "--wait", "--parsable", "--mem=32M", "-o", str(out), "--wrap", script],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    found = {"dev": "", "mount": "", "fstype": ""}
    for line in lines:  # the last mount line at that path is the one on top
        key, _, value = line.partition(" ")
        if key in found:
            found[key] = value
    return found


def stat_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.fixture(scope="module")
def bound(two_hosts: TwoHosts, slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The cluster's nodes see host B's mount at host A's path; skips (fails where both are required) if not."""
    view = node_view(two_hosts, tmp_path_factory.mktemp("premise") / "view.out")
    if view["dev"] != stat_id(two_hosts.b):
        problem = (f"the cluster's nodes do not see {two_hosts.b} at {two_hosts.a} (start it with "
                   f"SLURM_DEV_NODE_MOUNT={two_hosts.b}:{two_hosts.a} slurm/dev/cluster up): {view}")
        if os.environ.get("SHARDCTL_REQUIRE_TWOHOSTS") == "1" and os.environ.get("SHARDCTL_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return view


@pytest.fixture()
def home(two_hosts: TwoHosts, bound: dict[str, str], request: pytest.FixtureRequest,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    """SHARDCTL_HOME on the shared filesystem, through host A's mount for this process and the CLI, which runs
    from the same submitting shell as tests/targets/slurm/test_cluster.py's."""
    request.getfixturevalue("site_profile")  # the cluster runs the site profile
    return submitting_shell(monkeypatch, Path(two_hosts.fresh_dir("slurm-home")) / "state")


def test_premise_jobs_on_the_cluster_see_host_b_at_host_a_path(two_hosts: TwoHosts, bound: dict[str, str]) -> None:
    assert stat_id(two_hosts.a) != stat_id(two_hosts.b)  # here, two different mounts
    assert bound["dev"] == stat_id(two_hosts.b)  # on the node, A's path is B's mount
    assert "twohosts-hostB" in bound["mount"] and "fuse" in bound["fstype"], bound  # sshfs's fsname for B


def attempt_files(hosts: TwoHosts, home: Path, job_id: str) -> list[str]:
    """The attempts' records as the file server has them (no client's cache in the way)."""
    directory = hosts.server_view(str(home / "jobs" / job_id / "attempts"))
    assert directory is not None
    return sorted(p.name for p in directory.iterdir())


def who_wrote(hosts: TwoHosts, home: Path, job_id: str, judge_logs: list[Path]) -> dict[str, str]:
    """Each attempt record -> "judge" when a judge process wrote it (its pid is in a judge.log), else "cli"."""
    pids = {int(m) for log in judge_logs if log.exists() for m in re.findall(r"supervisor pid (\d+)", log.read_text())}
    directory = hosts.server_view(str(home / "jobs" / job_id / "attempts"))
    assert directory is not None and pids, judge_logs
    out = {}
    for path in sorted(directory.iterdir()):
        by = json.loads(path.read_text()).get("by") or {}
        out[path.name] = "judge" if by.get("pid") in pids else "cli"
    return out


def test_oom_fallback_judged_through_b_while_the_cli_reads_through_a(two_hosts: TwoHosts, home: Path) -> None:
    """The README's OOM example on one node with the site's default memory (DefMemPerCPU x 2 CPUs: 2 GiB), with
    a CLI reading (and making moves inline) through host A every few seconds while the judges record attempt
    1's end and submit attempt 2 through host B, from inside their own allocations."""
    job_id = submit(default_memory_oom(home.parent, **{"resources.cpus_per_node": 2}))
    store = Store(home)
    deadline = time.monotonic() + 480
    reads = 0
    while not store.get_job(job_id).terminal:
        assert time.monotonic() < deadline, [(a.number, a.state, a.failure) for a in store.attempts(job_id)]
        r = cli("status", job_id, "--json")
        assert r.returncode == 0, r.stderr
        reads += 1
        time.sleep(3)
    job, attempts = store.get_job(job_id), store.attempts(job_id)
    assert job.state == "succeeded", [a.failure for a in attempts]
    assert [(a.number, a.state.value, a.failure and a.failure.kind) for a in attempts] == [(1, "failed", "host_oom"),
                                                                            (2, "succeeded", None)]
    assert attempts[0].failure is not None and "OUT_OF_MEMORY" in attempts[0].failure.reason
    assert attempts[1].rung == "activation_checkpointing" and (attempts[1].resume_from or "").startswith("step_8")
    log = Path(attempts[1].log_path).read_text()
    assert "resumed from" in log and "srun: fatal" not in log
    names = attempt_files(two_hosts, home, job_id)
    writers = who_wrote(two_hosts, home, job_id, [Path(a.run_dir) / "judge.log" for a in attempts])
    # the judges (on the nodes, through B) and the CLI (here, through A) race for the same moves; each claim has
    # one writer whoever wins. Which one wins is a race (the CLI reads every 3 s, a judge starts within a second
    # of the attempt's end), so what must hold is that every judge ran to its end through B beside the CLI
    print("writers:", writers)  # (shown with -s)
    def judged(run_dir: str) -> str:
        log = two_hosts.server_view(str(Path(run_dir) / "judge.log"))  # the file server's copy: no client cache
        return log.read_text() if log is not None and log.exists() else ""
    for a in attempts:  # the last judge may still be finishing when the CLI has seen the end
        wait_deadline = time.monotonic() + 120
        while f"job {job_id}: " not in judged(a.run_dir) and time.monotonic() < wait_deadline:
            time.sleep(1)
        assert f"job {job_id}: " in judged(a.run_dir) and "Traceback" not in judged(a.run_dir), judged(a.run_dir)
    for n in (1, 2):  # each attempt claimed, started and ended exactly once, nothing else written twice
        assert [x for x in names if x.split(".")[0] == str(n) and not x.split(".")[1].startswith("event")] == \
            sorted([f"{n}.ended.json", f"{n}.json", f"{n}.running.json"]), names
    assert {x.split(".")[0] for x in names} == {"1", "2"}, names
    assert reads >= 3  # the CLI really read while the judges worked
    history = cli("history", job_id)
    assert history.returncode == 0 and "attempt 2: succeeded" in history.stdout, history.stdout


def test_cancel_from_the_cli_through_a_while_the_attempt_runs(two_hosts: TwoHosts, home: Path) -> None:
    job_id, store = cancel_while_training(home, start_timeout_s=180)
    names = attempt_files(two_hosts, home, job_id)
    assert {x.split(".")[0] for x in names} == {"1"} and "1.ended.json" in names, names
    status = json.loads(cli("status", job_id, "--json").stdout)
    assert status["state"] == "cancelled", status
