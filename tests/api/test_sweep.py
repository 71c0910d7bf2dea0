"""Sweeps: a grid of overrides, one job per point, a common group label, and the summary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.api.job import find_group, get_sweep, plan_sweep, sweep
from orchestrator.api.overrides import OverrideError
from orchestrator.api.sweep import (
    GROUP_LABEL,
    MAX_POINTS,
    POINT_LABEL,
    Axis,
    axes_of,
    is_group_of,
    new_group,
    parse_axis,
    point_name,
    points,
    settings_of,
    steps_per_second,
    summary_rows,
    summary_text,
)
from orchestrator.errors import BadInput, ShardctlError
from orchestrator.store.jobstore import Store
from orchestrator.supervise.supervisor import job_to_json

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples/quickstart.yaml"


def test_axis_values_are_one_yaml_flow_list() -> None:
    assert parse_axis("spec.batch.micro=4,8").values == (4, 8)
    assert parse_axis("spec.sharding=grad_op, full").values == ("grad_op", "full")
    assert parse_axis("spec.entrypoint.args=[[a, '1'], [b]]").values == (["a", "1"], ["b"])  # a list of lists
    assert parse_axis("spec.model.name_or_path='a,b',c").values == ("a,b", "c")  # quoted commas stay


@pytest.mark.parametrize(("text", "says"), [
    ("spec.batch.micro", "expected key.path=v1,v2"),
    ("spec.batch.micro=", "expected key.path=v1,v2"),
    ("spec.batch.micro=4,4", "4 is given twice"),
    ("spec.batch.micro=[4", "not valid YAML"),
    ("kind=a,b", "only fields under metadata. or spec."),
])
def test_a_bad_axis_is_one_line_naming_it(text: str, says: str) -> None:
    with pytest.raises(OverrideError) as caught:
        parse_axis(text)
    assert len(caught.value.lines()) == 1 and caught.value.lines()[0].startswith(f"--sweep {text}")
    assert says in caught.value.lines()[0]


def test_the_grid_is_every_combination_first_axis_slowest() -> None:
    grid = points(axes_of(["spec.batch.micro=4,8", "spec.sharding=grad_op,full,none"]))
    assert [[o.value for o in p] for p in grid] == [
        [4, "grad_op"], [4, "full"], [4, "none"], [8, "grad_op"], [8, "full"], [8, "none"]]
    with pytest.raises(OverrideError, match="swept twice"):
        axes_of(["spec.batch.micro=4,8", "spec.batch.micro=16"])
    with pytest.raises(OverrideError, match="names and labels its points itself"):
        axes_of(["metadata.name=a,b"])
    with pytest.raises(OverrideError, match=f"at most {MAX_POINTS}"):
        points(axes_of({"spec.batch.micro": list(range(1, 20)), "spec.batch.global": list(range(1, 20))}))


def test_point_names_stay_dns_labels() -> None:
    assert point_name("llama", 3) == "llama-3"
    long = "a" * 63
    assert point_name(long, 12) == "a" * 60 + "-12" and len(point_name(long, 12)) == 63


def test_every_point_is_checked_before_any_is_submitted() -> None:
    group, checked, settings = plan_sweep(QUICKSTART, {"spec.batch.micro": [4, 8, 16]})
    assert [c.job.metadata.name for c in checked] == ["quickstart-0", "quickstart-1", "quickstart-2"]
    assert [c.job.spec.batch.micro for c in checked] == [4, 8, 16]
    assert settings == [{"spec.batch.micro": 4}, {"spec.batch.micro": 8}, {"spec.batch.micro": 16}]
    assert {c.job.metadata.labels[GROUP_LABEL] for c in checked} == {group}
    assert [c.job.metadata.labels[POINT_LABEL] for c in checked] == ["0", "1", "2"]
    assert re.fullmatch(r"quickstart-[0-9a-f]{6}", group)
    with pytest.raises(ShardctlError) as caught:  # micro 7 does not divide the global batch: the rule says so
        plan_sweep(QUICKSTART, ["spec.batch.micro=4,7"])
    assert "spec.batch.global: 32 is not a multiple of micro (7)" in caught.value.lines()[0]
    assert "(with --sweep spec.batch.micro=7)" in caught.value.lines()[0]


def test_values_the_spec_reads_alike_are_refused_as_one_point_given_twice() -> None:
    with pytest.raises(OverrideError) as caught:
        plan_sweep(QUICKSTART, ["spec.sharding=full,zero3,FULL_SHARD,3"])
    assert caught.value.lines() == ["--sweep spec.sharding=full,zero3,FULL_SHARD,3: 'full', 'zero3', 'FULL_SHARD' "
                                    'and 3 are the same spec.sharding ("full"); give each value once']
    with pytest.raises(OverrideError, match=r"sweep\['spec.sharding'\]: 'grad_op' and 'zero2' are the same"):
        plan_sweep(QUICKSTART, {"spec.sharding": ["grad_op", "full", "zero2"]})
    with pytest.raises(OverrideError, match="4 and '4' are the same spec.entrypoint.args.5"):  # args are strings
        plan_sweep(QUICKSTART, ["spec.entrypoint.args.5=4,'4'"])
    _, checked, _ = plan_sweep(QUICKSTART, ["spec.sharding=grad_op,zero3"])  # distinct values: two points
    assert [c.job.spec.sharding for c in checked] == ["grad_op", "full"]


@pytest.mark.parametrize("grid", [{}, [], {"spec.batch.micro": []}, [Axis("spec.batch.micro", (), "--sweep x")]])
def test_an_empty_grid_is_refused_as_bad_input_and_submits_nothing(grid: object, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    with pytest.raises(BadInput) as caught:
        sweep(QUICKSTART, grid)  # type: ignore[arg-type]
    assert len(caught.value.lines()) == 1 and caught.value.exit_code == 2
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("job.json"))


def test_points_never_share_a_checkpoint_directory() -> None:
    _, checked, _ = plan_sweep(QUICKSTART, {"spec.batch.micro": [4, 8]}, overrides={"spec.checkpoint.dir": "/ck"})
    assert [c.job.spec.checkpoint.dir for c in checked] == ["/ck/quickstart-0", "/ck/quickstart-1"]


def _view(state: str, progress: dict | None) -> dict:
    config = {"backend": "deepspeed", "zero_stage": 2, "fsdp_strategy": None, "micro_batch": 4, "grad_accum": 4,
              "activation_checkpointing": False, "offload": {"optimizer": "none", "params": "none"}}
    return {"id": "abc", "name": "q-0", "state": state, "attempts": [{**config, "progress": progress}]}


def test_the_summary_has_each_points_state_attempts_config_and_rate() -> None:
    views = [_view("succeeded", {"steps_per_s": 1.25}), _view("failed", None)]
    assert steps_per_second(views[0]) == 1.25 and steps_per_second(views[1]) is None
    rows = summary_rows(views, [{"spec.batch.micro": 4}, {"spec.batch.micro": 8}])
    assert [(r["point"], r["state"], r["attempts"], r["steps_per_s"]) for r in rows] == [
        (0, "succeeded", 1, 1.25), (1, "failed", 1, None)]
    text = summary_text(rows).splitlines()
    assert text[0].split() == ["POINT", "NAME", "STATE", "ATTEMPTS", "STEPS/S", "FINAL", "CONFIG", "SET"]
    assert "1.25" in text[1] and "deepspeed ZeRO-2, micro 4 x accum 4" in text[1] and "batch.micro=8" in text[2]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the example's own limit is 900 s
def test_the_sweep_example_runs_three_points_and_prints_the_summary(tmp_path: Path) -> None:
    env = {**os.environ, "SHARDCTL_HOME": str(tmp_path / "state"), "DS_ACCELERATOR": "cpu", "SHARDCTL_FORCE_CPU": "1"}
    r = subprocess.run([sys.executable, "examples/sweep.py", "--steps", "4"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    group = re.search(r"^sweep (\S+):", r.stdout, re.MULTILINE).group(1)
    rows = [line.split() for line in r.stdout.splitlines() if re.match(r"^[0-2] +quickstart-[0-2] ", line)]
    assert [(row[0], row[1], row[2], row[3]) for row in rows] == [
        ("0", "quickstart-0", "succeeded", "1"), ("1", "quickstart-1", "succeeded", "1"),
        ("2", "quickstart-2", "succeeded", "1")]
    assert "micro 4 x accum 4" in r.stdout and "micro 16 x accum 1" in r.stdout
    listed = subprocess.run([sys.executable, "-m", "orchestrator", "list", "--group", group, "--json"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    views = json.loads(listed.stdout)
    assert sorted(v["name"] for v in views) == ["quickstart-0", "quickstart-1", "quickstart-2"]
    assert sorted(v["attempts"][-1]["micro_batch"] for v in views) == [4, 8, 16]


def _record_sweep(store: Store, axes: dict, group: str | None = None, **overrides: object) -> str:
    """A sweep's points recorded as ended jobs (nothing runs): what `list --group` reads later."""
    group, checked, _ = plan_sweep(QUICKSTART, axes, overrides=overrides or None, group=group)
    for c in checked:
        record = store.create_job(name=c.job.metadata.name, target="local", spec=job_to_json(c.job), source=None,
                                  workdir=str(ROOT), checkpoint_dir=None, options={})
        store.finish_job(record.id, "succeeded", "done")
    return group


def test_a_sweep_group_is_found_by_its_name_and_shows_each_points_values(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    store = Store()
    older = _record_sweep(store, {"spec.batch.micro": [4, 8]})
    newer = _record_sweep(store, {"spec.batch.micro": [4, 16], "spec.sharding": ["grad_op", "zero3"]},
                          **{"spec.checkpoint.dir": "/ck"})
    said: list[str] = []
    assert find_group("quickstart", store=store, warn=said.append) == newer
    assert said == [f"group 'quickstart': showing {newer} (the newest of 2 sweeps of that name); "
                    f"`--group {newer}` names it exactly"]
    assert find_group(older, store=store, warn=said.append) == older and len(said) == 1  # its label: no note
    assert find_group("quick", store=store, warn=said.append) == "quick" and len(said) == 1  # not a prefix match
    found = get_sweep("quickstart", warn=said.append)
    assert found.group == newer and [j.name for j in found.jobs] == [f"quickstart-{i}" for i in range(4)]
    assert found.settings == [  # the fields in which the points differ; not each point's own checkpoint dir
        {"spec.sharding": "grad_op", "spec.batch.micro": 4}, {"spec.sharding": "full", "spec.batch.micro": 4},
        {"spec.sharding": "grad_op", "spec.batch.micro": 16}, {"spec.sharding": "full", "spec.batch.micro": 16}]
    rows = found.summary()
    assert [r["set"] for r in rows] == found.settings and "batch.micro=16" in summary_text(rows).splitlines()[3]
    assert get_sweep(older).settings == [{"spec.batch.micro": 4}, {"spec.batch.micro": 8}]


def test_group_names_and_settings_read_back_from_specs() -> None:
    assert is_group_of(new_group("quickstart"), "quickstart")
    assert not is_group_of("quickstart-3fa2c1-x", "quickstart") and not is_group_of("quickstart-3fa2c", "quickstart")
    assert is_group_of(new_group("a" * 63), "a" * 63)  # the name was cut to 50 characters in the label
    specs = [{"metadata": {"name": "q-0"}, "spec": {"batch": {"micro": 4}, "entrypoint": {"args": ["a"]}}},
             {"metadata": {"name": "q-1"}, "spec": {"batch": {"micro": 4}, "entrypoint": {"args": ["a", "b"]}}}]
    assert settings_of(specs) == [{"spec.entrypoint.args": ["a"]}, {"spec.entrypoint.args": ["a", "b"]}]
    assert settings_of(specs[:1]) == [{}]  # one point: nothing to tell it from
