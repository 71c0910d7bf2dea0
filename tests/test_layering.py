"""The shape of the house: the package's layers, every import pointing down, and shared code never naming a target."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "orchestrator"

# The layers of orchestrator/, bottom first. A unit is a package of orchestrator/ or one of its top-level modules
# ("__init__" is the package's own module, which holds __version__). A unit imports units of its own layer and of
# the layers below it, never of a layer above; every import counts: at module level, inside a function (a lazy
# import still points somewhere) and under TYPE_CHECKING. README.md, CONTRIBUTING.md and docs/design.md state this
# order (test_the_docs_state_the_layers_in_this_order).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("__init__", "errors", "procfiles")),  # stdlib only: the error family, private files and processes
    ("spec", ("spec",)),  # the request: the one source of truth, its states and its Failure value
    ("compile", ("compile",)),  # pure: a TrainingJob in, configs and the launch command out
    ("plan", ("plan",)),  # the memory planner: sizes compiled candidates
    ("lifecycle", ("lifecycle",)),  # pure: classify, fallback, next_move
    ("targets", ("targets", "entry", "store", "intake", "notify")),  # what executors act on, the job store, what submit
    # takes, and the webhooks told after a state change is recorded
    ("executors", ("supervise", "controller")),
    ("jobs", ("jobs", "retention")),  # record, catch up and cancel a job by its driver; what gc removes
    ("views", ("views",)),  # the one view of a job, following it live, progress, text made terminal-safe
    ("api", ("api",)),  # the Python API: jobs, --set overrides, sweeps
    ("web", ("web",)),  # the dashboard: pages over a read-only job source, served with a token
    ("cli", ("cli", "__main__")),
]

# Imports that deliberately point up: (importer, imported) -> why. None today; one added here needs its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def units(package: Path) -> set[str]:
    return {p.name.removesuffix(".py") for p in package.iterdir()
            if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}


def imports(package: Path) -> list[tuple[str, str, str]]:
    """(unit, imported unit, "file:line") for every import of the package by itself, wherever it stands. Handles
    `import orchestrator.x`, `from orchestrator.x.y import z`, `from orchestrator import x` (x a unit, or else a
    name of orchestrator/__init__.py) and relative imports."""
    name = package.name
    known = units(package)
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        unit = rel.parts[0].removesuffix(".py")
        here = [name, *rel.parts[:-1]]  # the package this file is in
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[list[str]] = []
            if isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (node.module or "").split(".") if not node.level else \
                    here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
                # `from orchestrator import x` and `from . import x` name units (or attributes of the package)
                targets = [base + [a.name] for a in node.names] if base == [name] else [base]
            for parts in targets:
                if parts[0] != name:
                    continue
                other = parts[1] if len(parts) > 1 and parts[1] in known else "__init__"
                if other != unit:
                    found.append((unit, other, f"{rel}:{node.lineno}"))
    return found


def upward(package: Path, layers: list[tuple[str, tuple[str, ...]]],
           exceptions: dict[tuple[str, str], str]) -> list[str]:
    """Every import of a unit of a higher layer, as "file:line: unit (layer) imports other (layer)"."""
    level = {u: (i, layer) for i, (layer, members) in enumerate(layers) for u in members}
    return [f"{where}: {a} ({level[a][1]}) imports {b} ({level[b][1]})" for a, b, where in imports(package)
            if level[b][0] > level[a][0] and (a, b) not in exceptions]


def test_every_unit_is_in_exactly_one_layer() -> None:
    listed = [u for _, members in LAYERS for u in members]
    assert len(listed) == len(set(listed)), "a unit is listed twice"
    assert set(listed) == units(PACKAGE), (set(listed) ^ units(PACKAGE), "add a new unit to its layer in LAYERS")
    assert all(a in set(listed) and b in set(listed) for a, b in EXCEPTIONS), "an exception names no unit"


def test_every_import_points_down() -> None:
    assert not upward(PACKAGE, LAYERS, EXCEPTIONS)
    used = {(a, b) for a, b, _ in imports(PACKAGE)}
    assert set(EXCEPTIONS) <= used, ("an exception no longer needed", set(EXCEPTIONS) - used)


def test_no_import_cycle_between_units() -> None:
    """A layer's units may import each other, but never in a circle."""
    edges: dict[str, set[str]] = {}
    for a, b, _ in imports(PACKAGE):
        edges.setdefault(a, set()).add(b)

    def reaches(a: str, b: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    assert not sorted((a, b) for a in edges for b in edges[a] if reaches(b, a))
    assert edges.get("spec", set()) <= {"errors"}  # the source of truth depends on nothing else of the package


PLANTED = {
    "from orchestrator import high": "from orchestrator import high\n",
    "from orchestrator import high, x": "from orchestrator import errors, high\n",
    "import orchestrator.high": "import orchestrator.high.deep\n",
    "from orchestrator.high.deep import z": "from orchestrator.high.deep import z\n",
    "a relative import": "from ..high import deep\n",
    "a lazy import": "def f():\n    from orchestrator.high import deep\n    return deep\n",
    "under TYPE_CHECKING": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import orchestrator.high\n",
}


@pytest.mark.parametrize("form", PLANTED)
def test_an_import_that_points_up_is_found_in_every_form(tmp_path: Path, form: str) -> None:
    package = tmp_path / "orchestrator"
    for folder in ("low", "high"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text('__version__ = "0"\n')
    (package / "errors.py").write_text("")
    (package / "high" / "deep.py").write_text("from orchestrator.low import mod\nfrom orchestrator import errors\n")
    (package / "low" / "mod.py").write_text("from orchestrator import __version__\n")
    layers = [("base", ("__init__", "errors")), ("low", ("low",)), ("high", ("high",))]
    assert upward(package, layers, {}) == []  # downward imports, the package's own __init__ included
    (package / "low" / "mod.py").write_text(PLANTED[form])
    line = next(i for i, text in enumerate(PLANTED[form].splitlines(), 1) if "high" in text)
    assert upward(package, layers, {}) == [f"low/mod.py:{line}: low (low) imports high (high)"]
    assert upward(package, layers, {("low", "high"): "planted"}) == []  # unless it is a documented exception


def test_the_docs_state_the_layers_in_this_order() -> None:
    order = " -> ".join(layer for layer, _ in LAYERS)
    for doc in ("README.md", "CONTRIBUTING.md", "docs/design.md"):
        text = " ".join((ROOT / doc).read_text().replace("*", "").replace("`", "").split())
        assert order in text, (doc, order)


def test_mypy_checks_every_registered_target_against_the_protocol() -> None:
    """targets/__init__.py's `_conforms` (read by mypy only) has one parameter per registered target, its class."""
    from orchestrator.targets import REGISTRY

    tree = ast.parse((PACKAGE / "targets" / "__init__.py").read_text())
    [check] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_conforms"]
    params = {a.arg: ast.unparse(a.annotation) for a in check.args.args if a.annotation is not None}
    assert params == {name: where.partition(":")[2] for name, where in REGISTRY.items()}


def test_shared_code_never_asks_which_target_a_job_is_for() -> None:
    name = re.compile(r'"(kubernetes|slurm|local)"')
    allowed = ("targets", "controller", "spec")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             if p.relative_to(PACKAGE).parts[0] not in allowed
             for i, line in enumerate(p.read_text().splitlines(), 1) if name.search(line)]
    assert not found, found
