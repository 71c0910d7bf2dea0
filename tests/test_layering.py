"""The shape of the house: no import cycle between packages, and shared code never names a target."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"


def package_imports() -> dict[str, set[str]]:
    """Top-level unit (package or module of orchestrator) -> the other units it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orchestrator."):
                other = node.module.split(".")[1]
                if other != unit:
                    edges[unit].add(other)
    return edges


def test_no_package_imports_back_up_the_flow() -> None:
    edges = package_imports()

    def reaches(a: str, b: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    cycles = sorted((a, b) for a in edges for b in edges[a] if reaches(b, a))
    assert not cycles, cycles
    assert edges["spec"] <= {"errors"}  # the source of truth depends on nothing else of the package
    for pure in ("compile", "plan", "lifecycle"):
        assert not edges[pure] & {"targets", "store", "supervise", "controller", "jobs", "cli"}, pure


def test_shared_code_never_asks_which_target_a_job_is_for() -> None:
    name = re.compile(r'"(kubernetes|slurm|local)"')
    allowed = ("targets", "controller", "spec")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             if p.relative_to(PACKAGE).parts[0] not in allowed
             for i, line in enumerate(p.read_text().splitlines(), 1) if name.search(line)]
    assert not found, found
