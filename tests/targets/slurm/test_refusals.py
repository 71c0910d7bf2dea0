"""A refusal by Slurm at submit names the spec field that caused it, with Slurm's own words."""

from __future__ import annotations

import pytest

from orchestrator.targets.slurm.refusals import SiteLimits, explain
from tests.helpers import job as make_job

# Slurm 22.05's words, as `sbatch --test-only` printed them on the dev cluster's site profile
WORDS = {
    "account": "allocation failure: Invalid account or account/partition combination specified",
    "qos": "allocation failure: Invalid qos specification",
    "time": "allocation failure: Requested time limit is invalid (missing or exceeds some limit)",
    "partition": "sbatch: error: invalid partition specified: nope\n"
                 "allocation failure: Invalid partition name specified",
    "shape": "allocation failure: Requested node configuration is not available",
    "policy": "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
              "user's size and/or time limits)",
}


@pytest.mark.parametrize("words,field,says", [
    (WORDS["account"], "spec.slurm.account", "Slurm refuses account 'nope' on partition short"),
    (WORDS["qos"], "spec.slurm.qos", "Slurm refuses QOS 'bogus'"),
    (WORDS["time"], "spec.slurm.time", "02:00:00 is longer than partition short allows (MaxTime 30:00)"),
    (WORDS["partition"], "spec.slurm.partition", "Slurm has no partition 'short' you may use"),
    (WORDS["shape"], "spec.resources", "no node of partition short has 8 GPUs"),
    (WORDS["policy"], "spec.slurm.qos", "breaks a limit of your account or QOS"),
])
def test_each_refusal_names_its_field_what_was_asked_and_slurms_words(words: str, field: str, says: str) -> None:
    job = make_job(target="slurm", slurm={"partition": "short", "account": "nope", "qos": "bogus", "time": "02:00:00"},
                   resources={"nodes": 1, "gpus_per_node": 8})
    explained = explain(job, words, SiteLimits("short", "30:00"))
    assert explained is not None
    got_field, line = explained
    assert got_field == field and says in line and "nothing was submitted" in line
    assert "\n" not in line and line.endswith(f"{words.splitlines()[-1]})")


def test_words_that_name_no_field_of_ours_are_left_as_slurm_said_them() -> None:
    job = make_job(target="slurm")
    assert explain(job, "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
                   SiteLimits()) is None


def test_too_few_nodes_once_the_avoided_ones_are_left_out_says_which_were_avoided() -> None:
    """After a node fault (or with the site's suspect nodes) the nodes left may be too few: the refusal says so,
    naming them, rather than leaving the job to wait in silence."""
    job = make_job(target="slurm", resources={"nodes": 2, "gpus_per_node": 1, "avoid_nodes": ["node1"]})
    explained = explain(job, WORDS["shape"], SiteLimits("debug"))
    assert explained is not None
    field, line = explained
    assert field == "spec.resources" and "fewer than 2 such nodes once resources.avoid_nodes (node1: " in line
    assert "shardctl nodes" in line
