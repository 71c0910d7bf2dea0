"""What a refusal by Slurm at submit means for the spec: Slurm's words, mapped to the field that asked for it.

`sbatch --test-only` (and sbatch itself) answers a request a site's settings forbid with one of Slurm's
error strings (src/common/slurm_errno.c): an account the user has no association with, a QOS they may
not use, a time longer than the partition's MaxTime, more of a node than it has. The user wrote a spec,
not an sbatch line, so the refusal names the spec's field, what it asked for and what the site allows
where Slurm can say, with Slurm's own words after it. Pure: the caller passes what it looked up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.spec.models import TrainingJob


@dataclass(frozen=True)
class SiteLimits:
    """What the partition allows, as far as Slurm said (empty when it did not)."""

    partition: str = ""  # the partition asked for, or the site's default one
    max_time: str = ""  # sinfo's %l: "30:00", "1-00:00:00", "infinite"


def _account(job: TrainingJob, limits: SiteLimits) -> str:
    asked = job.spec.slurm.account
    who = f"account {asked!r}" if asked else "your default account (spec.slurm.account is unset)"
    return (f"Slurm refuses {who} on partition {limits.partition or '(the default)'}: it is not one of your "
            "accounts there (`sacctmgr show assoc user=$USER` lists them)")


def _qos(job: TrainingJob, limits: SiteLimits) -> str:
    asked = job.spec.slurm.qos
    return (f"Slurm refuses QOS {asked!r}: your accounts may not use it (`sacctmgr show assoc user=$USER "
            "format=account,qos` lists those they may)" if asked else
            "Slurm refuses the default QOS of your account: set spec.slurm.qos")


def _policy(job: TrainingJob, limits: SiteLimits) -> str:
    return ("the request breaks a limit of your account or QOS (jobs, GPUs, nodes or time per user: "
            "`sacctmgr show qos`)")


def _time(job: TrainingJob, limits: SiteLimits) -> str:
    asked = job.spec.slurm.time or "(unset: the partition's default)"
    allowed = f"MaxTime {limits.max_time}" if limits.max_time else "its MaxTime"
    return (f"{asked} is longer than partition {limits.partition or '(the default)'} allows ({allowed}): "
            "shorten it (attempts resume from their checkpoints) or choose another partition")


def _partition(job: TrainingJob, limits: SiteLimits) -> str:
    return f"Slurm has no partition {job.spec.slurm.partition!r} you may use (`sinfo -s` lists them)"


def _shape(job: TrainingJob, limits: SiteLimits) -> str:
    res = job.spec.resources
    mem = f", {res.memory_per_node} memory" if res.memory_per_node else ""
    cpus = f", {res.cpus_per_node} CPUs" if res.cpus_per_node else ""
    avoided = (f" once resources.avoid_nodes ({', '.join(res.avoid_nodes)}: after a node fault, or the site's "
               "suspect nodes, `shardctl nodes`) are left out" if res.avoid_nodes else "")
    return (f"no node of partition {limits.partition or '(the default)'} has {res.gpus_per_node} GPUs{cpus}{mem} "
            f"free to give, or there are fewer than {res.nodes} such nodes{avoided} (`sinfo -N -o '%N %c %m %G'`)")


def _memory(job: TrainingJob, limits: SiteLimits) -> str:
    return (f"{job.spec.resources.memory_per_node or 'the default memory'} per node is more than the nodes of "
            f"partition {limits.partition or '(the default)'} have")


# (Slurm's words, the spec field they are about, what to say). The first match wins.
REFUSALS: tuple[tuple[re.Pattern[str], str, Callable[[TrainingJob, SiteLimits], str]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), field, say) for pattern, field, say in (
        (r"Invalid account or account/partition combination", "spec.slurm.account", _account),
        (r"Invalid qos specification", "spec.slurm.qos", _qos),
        (r"Job violates accounting/QOS policy|QOSMax\w+Limit|AssocMax\w+Limit", "spec.slurm.qos", _policy),
        (r"Requested time limit is invalid|time limit exceeds", "spec.slurm.time", _time),
        (r"invalid partition|Invalid partition name", "spec.slurm.partition", _partition),
        (r"Memory required by task is not available|memory specification", "spec.resources.memory_per_node",
         _memory),
        (r"Requested node configuration is not available|Invalid generic resource|Node count specification "
         r"invalid|More processors requested than permitted", "spec.resources", _shape),
    ))

MAX_WORDS = 300  # Slurm's own words, at most this long


def explain(job: TrainingJob, slurm_words: str, limits: SiteLimits) -> tuple[str, str] | None:
    """(field, one line) for a refusal whose cause is a field of the spec; None when Slurm's words are not
    known here (the caller shows them as they are)."""
    words = "; ".join(" ".join(line.split()) for line in slurm_words.splitlines() if line.strip())[:MAX_WORDS]
    for pattern, field, say in REFUSALS:
        if pattern.search(words):
            return field, f"{say(job, limits)}; nothing was submitted (Slurm: {words})"
    return None


__all__ = ["REFUSALS", "SiteLimits", "explain"]
