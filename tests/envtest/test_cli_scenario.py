"""The user's scenario through the CLI only, against the real control plane: `shardctl` as a subprocess
with the user's own kubeconfig (a namespace context, RBAC for TrainingJobs and their pods' logs), the
controller running as the chart runs it. The fake kubelet OOM-kills attempt 1's pods (its rule matches
the Job `NAME-a1`) and lets attempt 2's succeed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.envtest.harness import ROOT, Kube, Tenant, explained, training_job
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest

DOCS = ROOT / "docs" / "cli-json.md"


def cli(t: Tenant, home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(t.user_kubeconfig), "SHARDCTL_HOME": str(home)}
    try:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise AssertionError(f"`shardctl {' '.join(args)}` did not end within {timeout} s\n"
                             f"stdout: {(out or '')[-2000:]}\nstderr: {(err or '')[-2000:]}") from None


def job_file(tmp_path: Path, name: str) -> Path:
    body = training_job(name)
    body["spec"]["target"] = "local"  # --target kubernetes on the command line picks the cluster
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def oom_then_succeed(name: str, run_s: float = 1.5) -> list[dict]:
    return [{"match": {"jobName": f"{name}-a1"}, "outcome": "oomkill", "runSeconds": run_s,
             "log": f"{name} attempt 1: step 1/20 loss 2.31\n{name} attempt 1: step 2/20 loss 2.29"},
            {"match": {"jobName": f"{name}-a2"}, "outcome": "succeed", "runSeconds": run_s,
             "log": f"{name} attempt 2: step 3/20 loss 2.20\n{name} attempt 2: training complete"}]


def test_submit_wait_streams_both_attempts_and_exits_0_after_the_fallback(tenant, controllers, control_plane,
                                                                          kube: Kube, tmp_path: Path) -> None:
    t = tenant()
    c = controllers(t)
    name = "llm"
    control_plane.set_rules(t.namespace, oom_then_succeed(name))
    home = tmp_path / "home"
    with explained(kube, t.namespace, name, c):
        r = cli(t, home, "submit", str(job_file(tmp_path, name)), "--target", "kubernetes", "--wait", timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-3000:]
        assert f"{name} attempt 1: step 2/20" in r.stdout and f"{name} attempt 2: step 3/20" in r.stdout, out[-3000:]
        assert r.stdout.index(f"{name} attempt 1: step") < r.stdout.index(f"{name} attempt 2: step")
        view = json.loads(cli(t, home, "status", name, "--json").stdout)
    assert view["state"] == "succeeded" and view["target"] == "kubernetes" and view["namespace"] == t.namespace
    assert [a["state"] for a in view["attempts"]] == ["failed", "succeeded"]
    assert view["attempts"][0]["failure"]["kind"] == "host_oom"
    assert view["attempts"][1]["rung"]


def test_logs_follow_crosses_the_attempt_change(tenant, controllers, control_plane, kube: Kube,
                                                tmp_path: Path) -> None:
    t = tenant()
    c = controllers(t)
    name = "follow"
    control_plane.set_rules(t.namespace, oom_then_succeed(name, run_s=3.0))
    home = tmp_path / "home"
    with explained(kube, t.namespace, name, c):
        r = cli(t, home, "submit", str(job_file(tmp_path, name)), "--target", "kubernetes")
        assert r.returncode == 0, r.stderr
        f = cli(t, home, "logs", name, "-f", timeout=90)  # started while attempt 1 runs (3 s)
        assert f.returncode == 0, (f.stdout + f.stderr)[-3000:]
        first, second = f"{name} attempt 1: step 1/20", f"{name} attempt 2: training complete"
        assert first in f.stdout and second in f.stdout, f.stdout[-3000:]
        assert f.stdout.index(first) < f.stdout.index(second)


def test_cancel_ends_the_job_and_garbage_collection_takes_the_rest(tenant, controllers, control_plane,
                                                                   kube: Kube, tmp_path: Path) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "stopme"
    control_plane.set_rules(ns, [{"match": {"jobName": f"{name}-a1"}, "outcome": "run"}])
    home = tmp_path / "home"
    with explained(kube, ns, name, c):
        assert cli(t, home, "submit", str(job_file(tmp_path, name)), "--target", "kubernetes").returncode == 0
        running = f"batch.kubernetes.io/job-name={name}-a1"
        wait_for(lambda: len([p for p in kube.core.list_namespaced_pod(ns, label_selector=running).items
                              if p.status.phase == "Running"]) == 2, 30, "attempt 1's 2 pods to run")
        r = cli(t, home, "cancel", name)
        assert r.returncode == 0 and "cancelled" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: kube.tj(ns, name) is None, 20, "the TrainingJob to be gone")
        wait_for(lambda: kube.job(ns, f"{name}-a1") is None, 30, "garbage collection of the attempt's Job")
        wait_for(lambda: not kube.core.list_namespaced_pod(ns, label_selector=running).items, 30,
                 "garbage collection of the pods")
        view = json.loads(cli(t, home, "status", name, "--json").stdout)
        assert view["state"] == "cancelled", view


def documented_fields() -> tuple[set[str], set[str]]:
    """The job and attempt fields that docs/cli-json.md's tables promise."""
    sections = re.split(r"^## ", DOCS.read_text(), flags=re.M)

    def fields(title: str) -> set[str]:
        body = next(s for s in sections if s.startswith(title))
        return {name for line in body.splitlines() if line.startswith("| `")
                for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
    return fields("Job object"), fields("Attempt object")


def shape(value):
    """Keys all the way down; JSON types of the leaves (None matches anything)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return None if value is None else type(value).__name__


def same_shape(kube_view: dict, local_view: dict, where: str = "job") -> list[str]:
    problems = []
    if set(kube_view) != set(local_view):
        problems.append(f"{where}: keys only on kubernetes {sorted(set(kube_view) - set(local_view))}, "
                        f"only local {sorted(set(local_view) - set(kube_view))}")
    for k in set(kube_view) & set(local_view):
        a, b = kube_view[k], local_view[k]
        if isinstance(a, dict) and isinstance(b, dict):
            problems += same_shape(a, b, f"{where}.{k}")
        elif a is not None and b is not None and type(a) is not type(b) and not {type(a), type(b)} <= {int, float}:
            problems.append(f"{where}.{k}: {type(a).__name__} on kubernetes, {type(b).__name__} local")
    return problems


def test_status_and_history_json_have_the_shape_of_a_local_job(tenant, controllers, control_plane, kube: Kube,
                                                               tmp_path: Path) -> None:
    t = tenant()
    c = controllers(t)
    name = "shape"
    control_plane.set_rules(t.namespace, oom_then_succeed(name, run_s=1.0))
    home = tmp_path / "home"
    # a real local job beside it (a script that prints one step), for the local shape
    (tmp_path / "step.py").write_text("print('step 1/1')\n")
    local = {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "local-shape"},
             "spec": {"entrypoint": {"script": str(tmp_path / "step.py")}, "model": {"name_or_path": "tiny"},
                      "backend": "deepspeed", "sharding": "grad_op", "batch": {"micro": 1, "global": 1},
                      "resources": {"nodes": 1, "gpus_per_node": 1}}}
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(local))
    local_env = {**os.environ, "SHARDCTL_HOME": str(tmp_path / "local-home")}
    local_run = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(tmp_path / "local.yaml"),
                                  "--wait"], cwd=tmp_path, env=local_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        with explained(kube, t.namespace, name, c):
            r = cli(t, home, "submit", str(job_file(tmp_path, name)), "--target", "kubernetes", "--json")
            assert r.returncode == 0, r.stderr
            submitted = json.loads(r.stdout)
            wait_for(lambda: json.loads(cli(t, home, "status", name, "--json").stdout)["state"] == "succeeded", 60,
                     "the job to succeed (status --json)")
        out, _ = local_run.communicate(timeout=120)
    finally:
        if local_run.poll() is None:  # the test failed early: stop the local job too, not just its follower
            local_run.kill()
            local_run.wait()
            subprocess.run([sys.executable, "-m", "orchestrator", "cancel", "local-shape"], cwd=tmp_path,
                           env=local_env, capture_output=True, timeout=60)
    assert local_run.returncode == 0, out[-2000:]
    local_view = json.loads(subprocess.run([sys.executable, "-m", "orchestrator", "status", "local-shape", "--json"],
                                           cwd=tmp_path, env=local_env, capture_output=True, text=True,
                                           timeout=60).stdout)
    status = json.loads(cli(t, home, "status", name, "--json").stdout)
    history = json.loads(cli(t, home, "history", name, "--json").stdout)
    job_fields, attempt_fields = documented_fields()
    problems = []
    for label, view in (("submit --json", submitted), ("status --json", status), ("history --json", history)):
        missing = job_fields - set(view)
        if missing:
            problems.append(f"{label}: documented job fields missing: {sorted(missing)}")
        for a in view["attempts"]:
            if attempt_fields - set(a):
                problems.append(f"{label}: attempt {a['number']}: documented fields missing: "
                                f"{sorted(attempt_fields - set(a))}")
    problems += same_shape({k: v for k, v in status.items() if k != "attempts"},
                           {k: v for k, v in local_view.items() if k != "attempts"}, "status")
    for a in status["attempts"]:
        problems += same_shape(a, local_view["attempts"][0], f"status.attempts[{a['number']}]")
    assert not problems, "\n".join(problems)
    assert status == history or set(status) == set(history)
    assert [a["state"] for a in status["attempts"]] == ["failed", "succeeded"]
