"""The newest complete checkpoint is the one resumed from, with real torch, safetensors and pickle files
cut short the way a run killed mid-save leaves them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from orchestrator.supervise.checkpoints import choose, incomplete

pytestmark = pytest.mark.timeout(120)


def save(root: Path, step: int, marker: bool = True) -> Path:
    """A checkpoint as accelerate's save_state leaves one: weights (safetensors), optimizer (torch.save), RNG
    states (pickle), and DeepSpeed's `latest` tag beside its states directory."""
    import torch
    from safetensors.torch import save_file

    d = root / f"step_{step}"
    (d / "pytorch_model").mkdir(parents=True)
    save_file({"w": torch.full((64, 64), float(step))}, str(d / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(256)}}}, d / "optimizer.bin")
    (d / "random_states_0.pkl").write_bytes(pickle.dumps({"step": step, "rng": list(range(50))}))
    torch.save({"module": torch.ones(8)}, d / "pytorch_model" / "mp_rank_00_model_states.pt")
    (d / "latest").write_text("pytorch_model")
    if marker:
        (root / "latest.json").write_text(json.dumps({"dir": d.name, "step": step}))
    return d


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_whole_checkpoint_is_taken_and_nothing_is_passed_over(tmp_path: Path) -> None:
    save(tmp_path, 2)
    newest = save(tmp_path, 4)
    assert incomplete(newest) is None
    choice = choose(tmp_path)
    assert choice.path == newest and choice.passed_over == [] and choice.summary() == "step_4"


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                    "pytorch_model/mp_rank_00_model_states.pt"])
def test_a_newest_checkpoint_cut_short_is_passed_over_for_the_one_before(tmp_path: Path, victim: str) -> None:
    older = save(tmp_path, 2)
    newest = save(tmp_path, 4)
    cut(newest / victim)
    choice = choose(tmp_path)
    assert choice.path == older
    assert [name for name, _ in choice.passed_over] == ["step_4"]
    assert victim in choice.passed_over[0][1] and "cut short" in choice.passed_over[0][1]
    assert choice.summary() is not None and choice.summary().startswith("step_2 (step_4 passed over: ")


def test_an_empty_file_a_missing_tag_and_no_marker_are_caught_too(tmp_path: Path) -> None:
    older = save(tmp_path, 10, marker=False)
    newest = save(tmp_path, 20, marker=False)  # no marker: the highest number is the newest
    (newest / "optimizer.bin").write_bytes(b"")
    assert "optimizer.bin is empty" in (incomplete(newest) or "")
    (newest / "optimizer.bin").unlink()
    (newest / "latest").write_text("global_step20")
    assert "names 'global_step20', which is not there" in (incomplete(newest) or "")
    assert choose(tmp_path).path == older


def test_nothing_complete_or_nothing_at_all(tmp_path: Path) -> None:
    assert choose(tmp_path / "none").path is None and choose(tmp_path / "none").summary() is None
    only = save(tmp_path, 3)
    cut(only / "model.safetensors", 0.9)
    choice = choose(tmp_path)
    assert choice.path is None and choice.summary() is not None and choice.summary().startswith("nothing complete")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_killed_mid_save_resumes_from_the_checkpoint_before(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Real accelerate processes: attempt 1 saves step_2 and step_4, then dies of a network fault (a restart)
    with step_4's weights cut short; attempt 2 resumes from step_2 and finishes, and the history says why."""
    import subprocess
    import sys

    from orchestrator.store.jobstore import Store
    from tests.helpers import wait_for

    root = Path(__file__).resolve().parents[2]
    text = (root / "examples/quickstart.yaml").read_text().replace(
        '"--steps", "20"', '"--steps", "6", "--fault-at-step", "5", "--fault-cuts-checkpoint", "--fault", '
                           '"torch.distributed.DistNetworkError: Connection reset by peer"')
    text = text.replace("every_steps: 5", "every_steps: 2")
    assert "--fault-cuts-checkpoint" in text and "every_steps: 2" in text
    (tmp_path / "cut.yaml").write_text(text)
    home = tmp_path / "state"
    monkeypatch.setenv("SHARDCTL_HOME", str(home))
    monkeypatch.setenv("SHARDCTL_FORCE_CPU", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(tmp_path / "cut.yaml"), "--json"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 240, "the job to end")
    attempts = store.attempts(job_id)
    assert store.get_job(job_id).state == "succeeded", [a.failure for a in attempts]
    assert [a.failure.kind if a.failure else None for a in attempts] == ["network", None]
    assert (attempts[1].resume_from or "").startswith("step_2 (step_4 passed over: model_weights.pt is cut short")
    log = Path(attempts[1].log_path).read_text()
    assert "step_2 at step 2" in log and "step 3/6" in log and "training complete" in log
    history = subprocess.run([sys.executable, "-m", "orchestrator", "history", job_id], cwd=root,
                             capture_output=True, text=True, timeout=60).stdout
    assert "resumed from: step_2" in history and "step_4 passed over" in history, history
