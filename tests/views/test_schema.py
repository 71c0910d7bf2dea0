"""docs/cli-json.schema.json is generated from orchestrator/views/schema.py, and every job view validates."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import jsonschema
import pytest

from orchestrator.spec.failure import Failure
from orchestrator.store.jobstore import Store
from orchestrator.views.report import job_json, status_text
from orchestrator.views.schema import schema
from tests.helpers import doc

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "cli-json.schema.json"


def validate(view: dict) -> None:
    jsonschema.validate(view, json.loads(SCHEMA_FILE.read_text()))


def test_the_committed_schema_is_generated() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == schema(), "run python -m orchestrator.views.schema"


def test_a_stored_job_with_a_failed_and_a_running_attempt_validates(tmp_path: Path) -> None:
    store = Store(tmp_path)
    record = store.create_job(name="t", target="local", spec=doc(), source=None, workdir=str(tmp_path),
                              checkpoint_dir=None)
    store.add_attempt(record.id, 1, spec=doc(), rung=None, reason="first", run_dir="/r/1", log_path="/r/1/log",
                      artifacts={}, warnings=["cpu"], resume_from=None)
    store.end_attempt(record.id, 1, "failed", Failure("host_oom", "oom"), started_at=1.0, ended_at=2.0, exit_code=1)
    log = tmp_path / "output.log"  # attempt 2 runs a Trainer: its real output, up to the last loss dict
    trainer = (Path(__file__).parents[1] / "data" / "progress" / "trainer.log").read_bytes()
    log.write_bytes(trainer[:trainer.index(b"{'eval_loss'")])
    store.add_attempt(record.id, 2, spec=doc(), rung="shard_more", reason="oom", run_dir="/r/2",
                      log_path=str(log), artifacts={}, warnings=[], resume_from="step_8")
    view = job_json(store.get_job(record.id), store.attempts(record.id), supervised=True)
    validate(view)
    assert view["attempts"][0]["progress"] is None  # its log does not exist
    progress = view["attempts"][1]["progress"]
    assert progress["step"] == progress["total"] == 12 and progress["format"] == "tqdm"
    last_dict = [line for line in log.read_text().splitlines() if line.startswith("{'loss'")][-1]
    assert progress["loss"] == float(ast.literal_eval(last_dict)["loss"]) and progress["rate_from"] == "log"
    text = status_text(view)
    assert "\nprogress: step 12/12 (100%), epoch " in text
    assert f"steps/s, elapsed 0:00:00, ETA 0:00:00, loss {progress['loss']:.4g}\n" in text
    view["attempts"][1]["progress"]["format"] = "guess"
    with pytest.raises(jsonschema.ValidationError):
        validate(view)
    view["attempts"][1]["progress"] = None
    view["state"] = "exploded"
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail
        validate(view)
