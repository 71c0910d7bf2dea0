"""Which nodes an attempt avoids: what the user asked, the node its last attempt's fault was pinned on, and the
site's suspect nodes of now (store/nodes.py). Against a target that runs nothing (test_supervisor.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.lifecycle.classify import Outcome
from orchestrator.lifecycle.moves import Observation
from orchestrator.store.jobstore import Store
from orchestrator.store.nodes import SuspectNodes
from orchestrator.supervise.supervisor import Supervisor, job_to_json
from orchestrator.targets.base import AttemptRef
from tests.helpers import job
from tests.supervise.test_supervisor import FakeTarget, drive

pytestmark = pytest.mark.timeout(60)

ECC = "RuntimeError: CUDA error: uncorrectable ECC error encountered\n"


class NodeTarget(FakeTarget):
    """Each attempt ran on the node the test names; an ended one died of a dead GPU there."""

    def __init__(self) -> None:
        super().__init__()
        self.on: dict[int, str] = {}

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        seen = super().describe(external_id, ref)
        return Observation(seen.seen, outcome=seen.outcome, nodes=(self.on.get(ref.number, "node1"),))


def test_a_node_whose_suspicion_was_cleared_is_used_again_while_the_asked_and_the_new_ones_stay_avoided(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    spec = job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16},
               resources={"gpus_per_node": 2, "avoid_nodes": ["asked"]})
    record = store.create_job(name="t", target="fake", spec=job_to_json(spec), source=None, workdir=str(tmp_path),
                              checkpoint_dir=str(tmp_path / "ckpt"))
    target = NodeTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    target.on[1] = "node1"
    target.results[1] = Outcome(exit_code=1, log_tail=ECC)
    drive(sup)
    avoided = [a.spec["spec"]["resources"]["avoid_nodes"] for a in store.attempts(record.id)]
    assert avoided == [["asked"], ["asked", "node1"]]
    assert [s.node for s in SuspectNodes(store.root).active("fake")] == ["node1"]
    assert SuspectNodes(store.root).clear("node1")  # repaired: the site says so
    target.on[2] = "node2"
    target.results[2] = Outcome(exit_code=1, log_tail=ECC)
    drive(sup)
    avoided = [a.spec["spec"]["resources"]["avoid_nodes"] for a in store.attempts(record.id)]
    assert avoided[2] == ["asked", "node2"], avoided  # node1 is back in use; node2 is the new fault's


def test_how_long_a_node_stays_suspect_is_the_sites_to_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import BadInput
    from orchestrator.store.nodes import SUSPECT_FOR_S, suspect_for_s

    assert suspect_for_s() == SUSPECT_FOR_S == 86400
    monkeypatch.setenv("SHARDCTL_SUSPECT_FOR", "1h30m")
    assert suspect_for_s() == 5400
    suspect = SuspectNodes(tmp_path).add("node1", "slurm", "x", now=0.0)
    assert suspect.until == 5400
    for bad in ("soon", "10", "31d"):
        monkeypatch.setenv("SHARDCTL_SUSPECT_FOR", bad)
        with pytest.raises(BadInput, match="SHARDCTL_SUSPECT_FOR"):
            suspect_for_s()
