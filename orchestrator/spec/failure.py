"""How an attempt failed: one value, with one JSON form, for every record and view that holds it.

The classifier (lifecycle/classify.py) makes it; the job store keeps it with the attempt's end, the
TrainingJob status holds it (the CRD's schema of `failure` is generated from this class), the targets
carry it in their snapshots and `--json` shows it. Each of them writes `to_json()` and reads
`from_json()`:

    {"kind": "host_oom", "reason": "killed by the out-of-memory killer ...", "evidence": "oom_kill event"}

plus `"node": NAME` when it points at a node, and `"rule": N` when the resilience rule
spec.resilience.rules[N] matched it (and so decided what followed).

A success has no failure (null). Earlier versions wrote a success as the kind "succeeded" (the
TrainingJob status, the SQLite store): it is read as no failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from orchestrator.spec.states import AttemptState, FailureKind

if TYPE_CHECKING:
    from pydantic import Field, WithJsonSchema

__all__ = ["Failure", "schema_names"]

_SUCCEEDED = "succeeded"  # how earlier versions wrote "no failure"


def schema_names() -> None:
    """Bind the names Failure's annotations use (pydantic's), for whoever builds a schema of it (spec/status.py):
    the store and the CLI read failures without paying for pydantic's import."""
    from pydantic import Field, WithJsonSchema

    globals().update(Field=Field, WithJsonSchema=WithJsonSchema, Annotated=Annotated)


@dataclass(frozen=True)
class Failure:
    """Why an attempt did not succeed (a success has no Failure)."""

    # a plain string in the CRD's schema, as it always was: the controller reads it with from_json
    kind: Annotated[FailureKind, WithJsonSchema({"type": "string"}), Field(
        description=f"How the attempt failed: {', '.join(k.value for k in FailureKind)}. An attempt that "
                    "succeeded has no failure.")]
    reason: Annotated[str, Field(description="One line: why the attempt ended so.")] = ""
    evidence: Annotated[str, Field(description="The log line or fact that decided it.")] = ""
    node: Annotated[str | None, Field(
        description="The node the failure points at (where a node fault happened, or the one a hang or network "
                    "fault is pinned on); null when it points at none.")] = None
    rule: Annotated[int | None, Field(
        description="The resilience rule (its index in spec.resilience.rules) that matched this failure and "
                    "decided what followed; null when the built-in policy did.")] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FailureKind(self.kind))  # ValueError for a kind no shardctl writes

    @property
    def is_oom(self) -> bool:
        return self.kind.is_oom

    @property
    def end_state(self) -> AttemptState:
        """The state an attempt ends in after this."""
        return AttemptState.CANCELLED if self.kind is FailureKind.CANCELLED else AttemptState.FAILED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "reason": self.reason, "evidence": self.evidence}
        if self.node is not None:  # written only when known: records without one read as before
            out["node"] = self.node
        if self.rule is not None:  # written only when a rule decided
            out["rule"] = self.rule
        return out

    @staticmethod
    def from_json(data: Any) -> Failure | None:
        """The failure `to_json` wrote; None for none (null, or an earlier version's kind "succeeded").
        ValueError when it is not one (a kind no shardctl writes, a field of another type): a damaged record."""
        if data is None or isinstance(data, Failure):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a failure is an object, not {type(data).__name__}")
        if data.get("kind") == _SUCCEEDED:
            return None
        kind, reason, evidence = (_text(data, name) for name in ("kind", "reason", "evidence"))
        rule = data.get("rule")
        if rule is not None and (not isinstance(rule, int) or isinstance(rule, bool) or not 0 <= rule < 1000):
            raise ValueError(f"failure.rule is {rule!r}, not a rule's index")
        node = data.get("node")
        if node is not None and (not isinstance(node, str) or not 0 < len(node) <= 253):
            raise ValueError(f"failure.node is {node!r}, not a node name")
        return Failure(FailureKind(kind), reason, evidence, node, rule)

    @staticmethod
    def of_attempt(state: AttemptState, failure: Failure | None) -> Failure | None:
        """How an attempt in `state` failed, as the fallback policy reads it: None while it is open or once it
        succeeded; an unsuccessful end recorded without its failure counts as unknown."""
        if not state.ended or state is AttemptState.SUCCEEDED:
            return None
        return failure or Failure(FailureKind.UNKNOWN, "")


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"failure.{name} is {type(value).__name__}, not str")
    return value
