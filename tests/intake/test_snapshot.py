"""spec.workdir: the code snapshotted at submit (orchestrator/intake/snapshot.py), checked before anything is recorded,
and run unchanged by every attempt of the job (the acceptance of issue 11, part 3)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator import jobs
from orchestrator.compile import CompileError
from orchestrator.errors import SubmitError
from orchestrator.intake import snapshot
from orchestrator.intake.nodelocal import ALLOW_ENV, NodeLocalPath
from orchestrator.intake.snapshot import SnapshotError, plan, prepare, take
from orchestrator.store.jobstore import Store
from orchestrator.views.report import job_json, status_text
from tests.helpers import doc, job, wait_for

ROOT = Path(__file__).resolve().parents[2]


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def git_repo(root: Path, files: dict[str, str], tracked: list[str]) -> Path:
    tree(root, files)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-f", *tracked], check=True)
    return root


def paths(p: snapshot.Plan) -> list[str]:
    return [e.path for e in p.entries]


# --- what a snapshot holds ------------------------------------------------------------------------------


def test_a_git_work_tree_is_listed_as_git_sees_it(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo", {
        ".gitignore": "data/\n*.log\n", "src/train.py": "print('a')\n", "src/util.py": "", "notes.txt": "untracked",
        "data/big.bin": "x" * 100, "run.log": "ignored", "keep.log": "tracked although ignored",
    }, tracked=[".gitignore", "src/train.py", "keep.log"])
    assert paths(plan(repo)) == [".gitignore", "keep.log", "notes.txt", "src/train.py", "src/util.py"]
    assert paths(plan(repo / "src")) == ["train.py", "util.py"]  # a subdirectory: its paths, relative to it


def test_a_tree_outside_git_honours_its_gitignore_files(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {".gitignore": "*.ckpt\nout/\n", "train.py": "", "model.ckpt": "w",
                                  "out/x": "", "pkg/.gitignore": "secret.env\n", "pkg/m.py": "", "pkg/secret.env": "k"})
    assert paths(plan(src)) == [".gitignore", "pkg/.gitignore", "pkg/m.py", "train.py"]
    assert not (src / ".git").exists()  # the throw-away index lives elsewhere


def test_symlinks_out_of_the_tree_are_not_followed_and_special_files_skipped(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"secret.txt": "not code"})
    src = tree(tmp_path / "src", {"train.py": "print(1)\n"})
    (src / "leak.txt").symlink_to(outside / "secret.txt")
    (src / "alias.py").symlink_to("train.py")
    os.mkfifo(src / "pipe")  # reading it would block the copy forever
    found = plan(src)
    assert paths(found) == ["alias.py", "train.py"]
    assert found.warnings == (f"leak.txt is a symlink out of spec.workdir ({outside / 'secret.txt'}): not in the "
                              "snapshot",)
    snap = take(found, tmp_path / "snapshots")
    code = Path(snap.path)
    assert os.readlink(code / "alias.py") == "train.py" and (code / "alias.py").read_text() == "print(1)\n"
    assert sorted(os.listdir(code)) == ["alias.py", "train.py"]


def test_the_size_cap_names_the_biggest_files_and_the_way_out(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"train.py": "x", "weights.bin": "w" * 5000, "data/a.bin": "d" * 3000})
    with pytest.raises(SnapshotError) as caught:
        plan(src, max_bytes=4096)
    (line,) = caught.value.lines()
    assert "holds 7.8 KiB of code to snapshot, over the cap of 4.0 KiB" in line
    assert line.index("weights.bin (4.9 KiB)") < line.index("data/a.bin (2.9 KiB)")
    assert ".gitignore" in line and snapshot.MAX_BYTES_ENV in line and caught.value.field == "spec.workdir"
    with pytest.raises(SnapshotError, match=r"holds 3 files to snapshot, over the cap of 2: most in data/ \(1 "):
        plan(src, max_files=2)
    assert snapshot.limits({snapshot.MAX_BYTES_ENV: "1GiB", snapshot.MAX_FILES_ENV: "7"}) == (2**30, 7)
    with pytest.raises(SnapshotError, match=snapshot.MAX_FILES_ENV):
        snapshot.limits({snapshot.MAX_FILES_ENV: "lots"})


def test_the_copy_is_read_only_content_addressed_and_private(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"train.py": "print('a')\n", "pkg/m.py": ""})
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    root = tmp_path / "state" / "snapshots"
    first = take(plan(src), root)
    code = Path(first.path)
    mode = {p.relative_to(code).as_posix(): stat.S_IMODE(p.lstat().st_mode) for p in [code, *code.rglob("*")]}
    assert mode == {".": 0o500, "pkg": 0o500, "pkg/m.py": 0o400, "run.sh": 0o500, "train.py": 0o400}
    assert stat.S_IMODE(code.parent.stat().st_mode) == 0o700
    assert snapshot.of_workdir(first.path) == {**first.as_json(), "files": 3}
    assert first.digest.startswith("sha256:") and code.parent.name == first.digest.removeprefix("sha256:")
    assert take(plan(src), root) == first  # the same content: the same copy (a sweep's points share it)
    (src / "train.py").write_text("print('b')\n")
    second = take(plan(src), root)
    assert second.digest != first.digest and (code / "train.py").read_text() == "print('a')\n"
    assert sorted(p.name for p in root.iterdir()) == sorted(p.removeprefix("sha256:")
                                                            for p in (first.digest, second.digest))  # no leftovers
    assert snapshot.of_workdir(str(src)) is None


# --- the job's paths -------------------------------------------------------------------------------------


def test_prepare_keeps_data_and_secrets_outside_the_copy(tmp_path: Path) -> None:
    src = tree(tmp_path / "proj", {"train.py": ""})
    spec_file = str(tmp_path / "proj" / "job.yaml")
    j = job(workdir=".", entrypoint={"script": str(src / "train.py"), "env_from": [{"file": "s.env"}]},
            checkpoint={"dir": "ckpt"})
    frozen = prepare(j, spec_file, cwd=str(tmp_path / "here"))
    assert frozen is not None
    spec = frozen.job.spec
    assert spec.workdir == str(src) and spec.entrypoint.script == "train.py"
    assert spec.checkpoint.dir == str(tmp_path / "here" / "ckpt")  # against the submit directory, as before
    assert spec.entrypoint.env_from[0].file == str(tmp_path / "here" / "s.env")
    assert prepare(job(), spec_file, cwd=str(tmp_path)) is None


@pytest.mark.parametrize(("script", "why"), [
    ("missing.py", "missing.py is not among the files a snapshot of spec.workdir ({src}) holds: no such file"),
    ("ignored.py", "ignored.py is not among the files a snapshot of spec.workdir ({src}) holds: left out by "
                   ".gitignore"),
    ("{tmp}/elsewhere.py", "{tmp}/elsewhere.py is outside spec.workdir ({src}), so the snapshot would not hold it: "
                           "give it relative to spec.workdir"),
])
def test_the_script_must_be_in_the_snapshot(tmp_path: Path, script: str, why: str) -> None:
    src = tree(tmp_path / "src", {".gitignore": "ignored.py\n", "ignored.py": "", "train.py": ""})
    (tmp_path / "elsewhere.py").write_text("")
    j = job(workdir=str(src), entrypoint={"script": script.format(tmp=tmp_path)})
    with pytest.raises(SnapshotError) as caught:
        prepare(j, None, cwd=str(tmp_path))
    assert (caught.value.field, str(caught.value)) == ("spec.entrypoint.script", why.format(src=src, tmp=tmp_path))


# --- submit: checked before anything is recorded ---------------------------------------------------------


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def nothing_kept(store: Store) -> bool:
    snaps = store.root / "snapshots"
    return store.list_jobs() == [] and (not snaps.exists() or list(snaps.iterdir()) == [])


def test_submit_refuses_a_workdir_that_is_no_directory_or_lacks_the_script(store: Store, tmp_path: Path) -> None:
    with pytest.raises(CompileError) as caught:
        jobs.record_and_start(store, job(workdir="nope"), source=str(tmp_path / "job.yaml"), workdir=str(tmp_path))
    assert [(f.field, f.message) for f in caught.value.findings] == [
        ("spec.workdir", f"'nope' ({tmp_path / 'nope'}) is not a directory")]
    tree(tmp_path / "src", {"other.py": ""})
    with pytest.raises(CompileError, match="spec.entrypoint.script"):
        jobs.record_and_start(store, job(workdir="src"), source=str(tmp_path / "job.yaml"), workdir=str(tmp_path))
    assert nothing_kept(store)


def test_a_slurm_job_is_refused_a_node_local_store(store: Store, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    tree(tmp_path / "src", {"train.py": ""})
    j = job(target="slurm", workdir=str(tmp_path / "src"), slurm={"partition": "p", "time": "10"})
    with pytest.raises(NodeLocalPath) as caught:  # tmp_path is under /tmp: on this machine only
        jobs.record_and_start(store, j, source=None, workdir=str(tmp_path))
    assert caught.value.lines()[0].startswith(f"the job store (SHARDCTL_HOME, which holds the code snapshot): "
                                              f"{store.root} is under /tmp")
    assert nothing_kept(store)


def test_kubernetes_refuses_a_workdir(store: Store, tmp_path: Path) -> None:
    j = job(target="kubernetes", workdir=str(tmp_path), kubernetes={"image": "i:1", "namespace": "ns"})
    with pytest.raises(SubmitError, match=r"spec\.workdir cannot travel .*\(spec\.kubernetes\.image\)"):
        jobs.record_and_start(store, j, source=None, workdir=str(tmp_path))
    assert nothing_kept(store)


def test_status_says_which_snapshot_the_job_runs(store: Store, tmp_path: Path) -> None:
    snap = take(plan(tree(tmp_path / "src", {"train.py": "print(1)\n"})), store.root / "snapshots")
    record = store.create_job(name="t", target="local", spec=doc(workdir=snap.source), source=None,
                              workdir=snap.path, checkpoint_dir=None)
    view = job_json(record, [])
    assert view["code"] == {"digest": snap.digest, "path": snap.path, "files": 1, "bytes": 9, "source": snap.source}
    jsonschema.validate(view, json.loads((ROOT / "docs" / "cli-json.schema.json").read_text()))
    assert f"code: snapshot {snap.digest[:19]} of {snap.source} (1 files, 9 B)" in status_text(view)
    plain = store.create_job(name="u", target="local", spec=doc(), source=None, workdir=str(tmp_path),
                             checkpoint_dir=None)
    assert job_json(plain, [])["code"] is None and "code:" not in status_text(job_json(plain, []))


# --- the acceptance: editing the script after submit does not change what attempt 2 runs -------------------

SCRIPT = """\
import os
import sys

if os.environ["SHARDCTL_ATTEMPT"] == "1":  # an OOM: the fallback starts attempt 2
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(1)
print("code version A", flush=True)
"""


@pytest.mark.slow
def test_editing_the_script_after_submit_does_not_change_attempt_2(tmp_path: Path) -> None:
    project = tree(tmp_path / "project", {"train.py": SCRIPT, ".gitignore": "outputs/\n"})
    spec = doc(workdir=".", entrypoint={"script": "train.py"}, backend="fsdp", sharding="grad_op",
               precision={"mixed": "no", "params": "fp32"}, resources={"gpus_per_node": 1})
    (project / "job.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "state"
    env = {**os.environ, "SHARDCTL_HOME": str(home), "SHARDCTL_FORCE_CPU": "1"}
    r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(project / "job.yaml"), "--json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (project / "train.py").write_text(SCRIPT.replace("version A", "version B"))  # attempt 1 runs meanwhile
    job_id = json.loads(r.stdout)["id"]
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 180, "the job to end")
    attempts = store.attempts(job_id)
    assert [a.state for a in attempts] == ["failed", "succeeded"] and attempts[0].failure.kind == "cuda_oom"
    log = Path(attempts[1].log_path).read_text()
    assert "code version A" in log and "version B" not in log
    view = json.loads(subprocess.run([sys.executable, "-m", "orchestrator", "status", job_id, "--json"], cwd=tmp_path,
                                     env=env, capture_output=True, text=True, timeout=60).stdout)
    assert view["code"]["source"] == str(project) and view["code"]["files"] == 3  # train.py, .gitignore, job.yaml
    assert store.get_job(job_id).workdir == view["code"]["path"]
    assert (Path(view["code"]["path"]) / "train.py").read_text() == SCRIPT  # the copy kept the submitted code
    assert time.time() - store.get_job(job_id).created_at < 180


def test_the_dry_run_shows_the_snapshot_not_the_current_directory(tmp_path: Path) -> None:
    """A dry run copies nothing, so it names the snapshot submit would make, while a relative checkpoint
    directory still resolves against the directory submit runs from."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train_tiny.py").write_text("print('hi')\n")
    text = (root / "examples/quickstart.yaml").read_text().replace("examples/train_tiny.py", "train_tiny.py")
    text = text.replace("\nspec:\n", "\nspec:\n  workdir: code\n", 1)
    text = text.replace("  checkpoint:\n", "  checkpoint:\n    dir: ckpt\n")
    (tmp_path / "job.yaml").write_text(text)
    env = {**os.environ, "SHARDCTL_HOME": str(tmp_path / "h")}
    r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", "job.yaml", "--dry-run"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "cd '<state-dir>/snapshots/<digest>/code'" in r.stdout
    assert f"SHARDCTL_CHECKPOINT_DIR={tmp_path / 'ckpt'}" in r.stdout
    assert str(tmp_path / "code") not in r.stdout.split("--- attempt.json")[0].replace(str(tmp_path / "ckpt"), "")


def test_the_snapshot_never_runs_the_repositorys_own_fsmonitor_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hook = tmp_path / "fsmonitor.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    repo = git_repo(tmp_path / "repo", {"train.py": "print('a')\n"}, tracked=["train.py"])
    subprocess.run(["git", "-C", str(repo), "config", "core.fsmonitor", str(hook)], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "core.hooksPath", str(tmp_path)], check=True)
    assert paths(plan(repo)) == ["train.py"]
    assert not marker.exists()


# --- progress on long work (issue 20) ---------------------------------------------------------------------


def _many_files(root: Path, n: int) -> Path:
    for i in range(n):
        (root / f"pkg{i % 10}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 10}" / f"m{i}.py").write_text(f"X = {i}\n" * (1 + i % 7))
    (root / "train.py").write_text("print('train')\n")
    return root


def test_long_listing_and_copying_report_progress_and_the_snapshot_is_the_same(tmp_path: Path) -> None:
    src = _many_files(tmp_path / "src", 400)
    seen: list[snapshot.Progress] = []
    listed = plan(src, progress=seen.append, progress_after_s=0)  # a threshold of 0: this tree counts as long
    assert [p.phase for p in seen if p.done] == ["listing"]
    last = seen[-1]
    assert last.done and last.files == len(listed.entries) == 401 and last.bytes == listed.bytes
    assert all(p.files <= last.files and p.bytes <= last.bytes for p in seen)
    with_progress = take(listed, tmp_path / "a", progress=seen.append, progress_after_s=0)
    phases = [p.phase for p in seen if p.done]
    assert phases == ["listing", "reading", "copying"], phases
    copying = [p for p in seen if p.phase == "copying"]
    assert copying[-1].files == copying[-1].total_files == 401 and copying[-1].bytes == listed.bytes
    assert copying[0].text().startswith("spec.workdir: copying ") and " of 401 files (" in copying[0].text()
    assert copying[-1].text().startswith("spec.workdir: copied 401 files (")
    quiet = take(plan(src), tmp_path / "b")  # no callback: the same snapshot
    assert (with_progress.digest, with_progress.files, with_progress.bytes) == (quiet.digest, quiet.files, quiet.bytes)
    copied = {p.relative_to(with_progress.path): p.read_bytes() for p in Path(with_progress.path).rglob("*")
              if p.is_file()}
    assert copied == {p.relative_to(quiet.path): p.read_bytes() for p in Path(quiet.path).rglob("*") if p.is_file()}
    assert copied == {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}


def test_short_work_reports_no_progress(tmp_path: Path) -> None:
    src = _many_files(tmp_path / "src", 20)
    seen: list[snapshot.Progress] = []
    take(plan(src, progress=seen.append), tmp_path / "a", progress=seen.append)  # well under 2 s
    assert seen == []
