"""How an attempt failed is one value with one JSON form, in the status as in the store and the views."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, FailureKind
from orchestrator.spec.status import AttemptStatus

OOM = Failure(FailureKind.HOST_OOM, "killed by the out-of-memory killer", "oom_kill event")


def test_its_json_form_round_trips() -> None:
    assert OOM.to_json() == {"kind": "host_oom", "reason": "killed by the out-of-memory killer",
                             "evidence": "oom_kill event"}
    assert Failure.from_json(OOM.to_json()) == OOM
    assert Failure.from_json({"kind": "cancelled"}) == Failure(FailureKind.CANCELLED, "", "")
    assert Failure.from_json(None) is None


def test_an_earlier_versions_success_is_no_failure() -> None:
    assert Failure.from_json({"kind": "succeeded", "reason": "", "evidence": ""}) is None


@pytest.mark.parametrize("damaged", [{"kind": "melted"}, {"kind": "host_oom", "reason": None}, {"reason": "x"},
                                     ["host_oom", "x", ""]])
def test_a_damaged_failure_is_a_value_error(damaged: object) -> None:
    with pytest.raises(ValueError):
        Failure.from_json(damaged)


def test_the_status_holds_the_same_value_and_writes_the_same_json() -> None:
    attempt = AttemptStatus.model_validate({"number": 1, "state": "failed", "config": "c", "jobName": "j-a1",
                                            "failure": OOM.to_json()})
    assert attempt.failure == OOM
    assert attempt.model_dump(mode="json", by_alias=True, exclude_none=True)["failure"] == OOM.to_json()
    old = AttemptStatus.model_validate({"number": 1, "state": "succeeded", "config": "c", "jobName": "j-a1",
                                        "failure": {"kind": "succeeded"}})
    assert old.failure is None
    with pytest.raises(ValidationError):
        AttemptStatus.model_validate({"number": 1, "state": "failed", "config": "c", "jobName": "j-a1",
                                      "failure": {"kind": "melted"}})


def test_what_the_fallback_policy_reads_of_an_attempt() -> None:
    assert Failure.of_attempt(AttemptState.RUNNING, None) is None
    assert Failure.of_attempt(AttemptState.SUCCEEDED, None) is None
    assert Failure.of_attempt(AttemptState.FAILED, OOM) == OOM
    assert Failure.of_attempt(AttemptState.FAILED, None) == Failure(FailureKind.UNKNOWN, "")
