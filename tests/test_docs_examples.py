"""Every code example in README.md, CONTRIBUTING.md and docs/*.md is checked by a test.

The examples are read from the Markdown itself: fenced blocks and indented code blocks (four spaces after a
blank line, outside a list). `TABLE` says how each one is checked; an example missing from it fails
`test_every_code_example_in_the_docs_has_an_entry_in_the_table`, so a new example cannot go in unchecked, and
an entry whose example is gone fails too. The checks run the real thing, with SHARDCTL_HOME in tmp_path:

- `cli`: each `shardctl ...` line runs as `python -m orchestrator ...` (`--out` into tmp_path). A
  `submit ... --wait`, which would train for minutes, runs with `--dry-run` added (every check submit runs,
  nothing recorded). A line that needs a cluster names the tests that run it there (`elsewhere`).
- `synopsis`: every subcommand and every flag README's synopsis names is in that subcommand's `--help`.
- `spec`: a TrainingJob is written to a file and `shardctl validate` must pass.
- `spec_fragment`: a part of a spec (`spec: ...`), merged into examples/quickstart.yaml, must validate; so must
  every alternative its comments list (`a | b | c`) in place of the value it comments.
- `tree`: every path a layout listing names exists.
- `ci`: commands CI runs itself (scripts/quickstart, scripts/test, the linters, the Slurm dev cluster): the
  script exists and is executable, the paths, markers, variables and subcommands it is given exist.
- `benchmark`: the script exists and takes every flag given; the cheap ones run for real.
- `python_exec`: the block runs as written (names a training loop would define bound to plain values).
- `python_api`: README's Python API tour: compiled, every call bound to the real signature, the cheap calls
  run; the runs that train are named in `tests`.
- `json_fragment`, `progress_line`: checked against the schema and the parser they describe.

Every test a table entry names (`tests`, `elsewhere`) must exist, so the table cannot point at a deleted test.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", "CONTRIBUTING.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
SUBPROCESS_TIMEOUT = 60

# --- the examples, as the Markdown has them --------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


@dataclass(frozen=True)
class Block:
    file: str
    line: int  # 1-based, of the block's first line
    fenced: bool
    lang: str
    text: str

    @property
    def first(self) -> str:
        """The first line up to its first gap of two spaces (where a comment or a description starts)."""
        first = next(line for line in self.text.splitlines() if line.strip())
        return re.split(r"\s{2,}", first.strip(), maxsplit=1)[0][:60].rstrip()

    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


def extract(file: str) -> list[Block]:
    """Fenced blocks, and indented ones: four spaces after a blank line, not the continuation of a list item."""
    lines = (ROOT / file).read_text().splitlines()
    found: list[Block] = []
    i, prev_blank, in_list = 0, True, False
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            body: list[str] = []
            start, i = i + 1, i + 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                body.append(lines[i])
                i += 1
            found.append(Block(file, start + 1, True, fence.group(2), "\n".join(body)))
            i, prev_blank = i + 1, False
            continue
        if line.startswith("    ") and prev_blank and not in_list:
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or (
                    not lines[i].strip() and i + 1 < len(lines) and lines[i + 1].startswith("    "))):
                body.append(lines[i][4:])
                i += 1
            found.append(Block(file, start + 1, False, "", "\n".join(body)))
            prev_blank = False
            continue
        if not line.strip():
            prev_blank = True
        else:
            if _LIST_ITEM.match(line):
                in_list = True
            elif not line.startswith(" "):
                in_list = False
            prev_blank = False
        i += 1
    return found


def all_blocks() -> dict[str, Block]:
    """Each example by its id: FILE: its first line (FILE: first line #N for a repeat within a file)."""
    blocks: dict[str, Block] = {}
    for file in DOC_FILES:
        for block in extract(file):
            key, n = f"{file}: {block.first}", 1
            while key in blocks:
                n += 1
                key = f"{file}: {block.first} #{n}"
            blocks[key] = block
    return blocks


BLOCKS = all_blocks()

# --- how each example is checked -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    kind: str
    how: str  # what is checked, in words
    tests: tuple[str, ...] = ()  # tests elsewhere that run the example (or the part not run here) for real
    elsewhere: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # a line (no comment) -> its tests


SLURM = "tests/targets/slurm/test_cluster.py"
KUBE_CLI = "tests/test_kube_cli.py"
ENVTEST = "tests/envtest/test_cli_scenario.py"

TABLE: dict[str, Check] = {
    "README.md: scripts/quickstart": Check(
        "ci", "the script exists and is executable (run by a person; CI runs scripts/test); its run, the OOM "
        "example with the fallback and resume, is run for real by the named test",
        tests=("tests/test_jobs.py::test_oom_fallback_survives_a_killed_supervisor",)),
    "README.md: scripts/test": Check("ci", "the script exists and is executable; CI runs it (.ci/run)"),
    "README.md: shardctl validate JOB.yaml": Check(
        "synopsis", "every subcommand it names exists and every flag it names is in that subcommand's --help"),
    "README.md: apiVersion: shardctl.dev/v1alpha1": Check(
        "spec", "a whole TrainingJob: `shardctl validate` exits 0; the alternatives its comments name (backend "
        "deepspeed, each sharding spelling) load too"),
    "README.md: spec:": Check(
        "spec_fragment", "merged into examples/quickstart.yaml it validates, and so does each `then` its comment "
        "lists; the rules' behaviour is tests/lifecycle/test_fallback.py's",
        tests=("tests/lifecycle/test_fallback.py::test_an_exit_code_rule_retries_the_same_config_until_max_restarts_"
               "are_spent",)),
    "README.md: # spec.notify: two webhooks, each with its events": Check(
        "spec_fragment", "merged into examples/quickstart.yaml it validates; delivery, signature and retries are "
        "the named tests'",
        tests=("tests/notify/test_end_to_end.py::test_the_receiver_gets_each_asked_event_once_signed_across_failures_"
               "and_restarts",
               "tests/notify/test_refs.py::test_a_file_reference_reads_its_key_from_a_private_file_only")),
    "README.md: kubectl create secret generic hooks -n ml --from-literal=URL": Check(
        "chart_lines", "every --set names a value of charts/shardctl/values.yaml with its type; the Secret's keys "
        "are the ones the spec fragment below names; sending from the controller is the named test's",
        tests=("tests/controller/test_notify.py::test_each_asked_event_is_told_once_signed_across_a_failing_"
               "receiver_and_a_restart",)),
    "README.md: # spec.notify on target kubernetes: values from the Secret `": Check(
        "kube_spec_fragment", "merged into examples/quickstart.yaml with target kubernetes and an image it validates "
        "(the rules included: only Secrets reach the controller), and each Secret it names is one the README's "
        "kubectl line creates, with that key"),
    "README.md: import shardctl": Check(
        "python_api", "compiled; every shardctl name and Job/Sweep method it uses exists and every call binds to the "
        "real signature; load() and list_jobs() run; the training runs are the named tests'",
        tests=("tests/api/test_job.py::test_a_function_on_the_local_target_returns_rank_0s_value",
               "tests/api/test_job.py::test_the_slurm_function_example_gets_its_return_value",
               "tests/api/test_job.py::test_load_applies_overrides_and_a_target_and_checks_the_rules",
               "tests/api/test_sweep.py::test_the_sweep_example_runs_three_points_and_prints_the_summary")),
    "README.md: shardctl submit examples/quickstart.yaml --set spec.sharding": Check(
        "cli", "each submit --wait runs with --dry-run added: every check submit runs, nothing recorded"),
    "README.md: shardctl render examples/slurm-2node.yaml --out /tmp/r": Check(
        "cli", "the render runs for real (into tmp_path) and writes the files its comment names; submitting and "
        "status need the dev Slurm cluster and are run there by the named tests",
        elsewhere={
            "shardctl submit examples/slurm-2node.yaml": (
                f"{SLURM}::test_sbatch_test_only_accepts_every_rendered_example",
                f"{SLURM}::test_two_nodes_fall_back_on_the_sites_default_memory_and_resume"),
            "shardctl status slurm-2node": (
                f"{SLURM}::test_two_nodes_fall_back_on_the_sites_default_memory_and_resume",)}),
    "README.md: shardctl render job.yaml --target kubernetes --out /tmp/k": Check(
        "cli", "job.yaml is the `llm` TrainingJob tests/test_kube_cli.py submits; the render runs for real and "
        "manifests.yaml holds a ConfigMap, a headless Service and an Indexed Job; `kubectl get trainingjobs` "
        "columns are the CRD's printer columns; the cluster lines are run by the named tests (fake API server, "
        "and the real control plane in tests/envtest)",
        elsewhere={
            "shardctl submit job.yaml --target kubernetes --wait": (
                f"{KUBE_CLI}::test_submit_wait_streams_both_attempts_and_exits_0_when_the_fallback_succeeds",
                f"{ENVTEST}::test_submit_wait_streams_both_attempts_and_exits_0_after_the_fallback"),
            "shardctl status llm | shardctl history llm | shardctl logs llm [--attempt N] [-f]": (
                f"{KUBE_CLI}::test_submit_status_history_logs_against_the_cluster",
                f"{KUBE_CLI}::test_logs_follow_crosses_the_attempt_change_and_cancel_ends_a_job",
                f"{ENVTEST}::test_status_and_history_json_have_the_shape_of_a_local_job"),
            "shardctl cancel llm": (
                f"{KUBE_CLI}::test_cancel_deletes_the_resource_and_garbage_collection_takes_the_rest",
                f"{ENVTEST}::test_cancel_ends_the_job_and_garbage_collection_takes_the_rest")}),
    "README.md: shardctl gc": Check(
        "cli", "both run on an empty store and exit 0; what gc removes and keeps is the named tests'",
        tests=("tests/test_retention.py::test_gc_never_removes_a_running_jobs_snapshot_or_checkpoints_and_keeps_every_"
               "record", "tests/test_retention.py::test_a_dry_run_removes_nothing_and_says_what_gc_would_free")),
    "README.md: helm upgrade shardctl charts/shardctl -n shardctl --reuse-va": Check(
        "chart_lines", "every --set names a value of charts/shardctl/values.yaml with its type, the port-forward names "
        "the chart's dashboard Service and its port; the chart installed with the dashboard, the sign-in with a "
        "service account's token and the pages are run for real by the named tests (the real control plane)",
        tests=("tests/envtest/test_dashboard.py::test_the_dashboard_needs_a_token_of_someone_who_may_list_"
               "trainingjobs",
               "tests/envtest/test_dashboard.py::test_the_pages_in_headless_chromium_show_the_trainingjob_and_its_"
               "attempts")),
    "README.md: orchestrator/errors.py": Check("tree", "every path in the listing, and every file it names, exists"),
    "CONTRIBUTING.md: scripts/quickstart": Check(
        "ci", "both scripts exist and are executable; CI runs scripts/test (.ci/run)",
        tests=("tests/test_jobs.py::test_oom_fallback_survives_a_killed_supervisor",)),
    "CONTRIBUTING.md: .venv/bin/python -m ruff check orchestrator tests benchmarks": Check(
        "ci", "the linters are installed, the paths exist, and scripts/test (CI) runs these exact lines"),
    "CONTRIBUTING.md: SHARDCTL_LINT=off scripts/test tests/compile": Check(
        "ci", "scripts/test is executable and reads SHARDCTL_LINT; the paths exist, the markers are declared, and "
        "`-k yaml` selects tests in tests/spec/test_loader.py (collected for real)"),
    "CONTRIBUTING.md: SHARDCTL_SQLITE_CONTROLS=1 SHARDCTL_LINT=off scripts/test te": Check(
        "ci", "the script and the test file exist and the variables are read (the run needs the two-host rig "
        "as root: CI runs scripts/test with the rig)"),
    "CONTRIBUTING.md: slurm/dev/cluster up": Check(
        "ci", "the script is executable and handles up, env, status and down (CI's scripts/test starts the "
        "cluster; tests never start or stop it)"),
    "CONTRIBUTING.md: from kubernetes import client": Check(
        "python_exec", "runs as written: a fake API server and a simulated cluster start and stop"),
    "CONTRIBUTING.md: SHARDCTL_LINT=off scripts/test -m envtest": Check(
        "ci", "scripts/test is executable and the envtest marker is declared (CI runs the envtest tests)"),
    "CONTRIBUTING.md: .venv/bin/python benchmarks/cold_start.py --runs 11": Check(
        "benchmark", "both scripts take the flags given; memory_report.py runs for real on the committed CPU data"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/cold_start.py --runs 11": Check(
        "benchmark", "the script takes --runs (the run itself times 22 cold starts of heavy CLIs: too slow here)"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/resilience.py --hangs 3 --node-f": Check(
        "benchmark", "the script takes --hangs and --node-faults (the runs are real hangs and node faults: minutes; "
        "the same scenarios run in CI)",
        tests=("tests/supervise/test_hang_local.py::test_a_hung_rank_is_found_its_stacks_kept_and_the_run_resumes",
               "tests/targets/slurm/test_cluster.py::test_a_node_fault_moves_the_next_attempt_and_later_jobs_off_the_"
               "node")),
    "docs/benchmarks.md: .venv/bin/python benchmarks/goodput.py --minutes 20": Check(
        "benchmark", "the script takes --minutes (its run is 20 minutes of training with faults on the dev Slurm "
        "cluster)"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/fallback_gap.py --jobs 3": Check(
        "benchmark", "the script takes --jobs (the run itself is real OOMs under a memory limit: minutes)"),
    "docs/benchmarks.md: slurm/dev/cluster up; eval \"$(slurm/dev/cluster env)\"; .venv": Check(
        "benchmark", "the cluster script handles up and env; slurm_poll.py takes --rounds (its run needs the "
        "dev Slurm cluster)"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/controller_scale.py --jobs 1000": Check(
        "benchmark", "the script takes every flag given (1000 TrainingJobs against the fake API server: minutes)"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/controller_scale.py --envtest-jo": Check(
        "benchmark", "the script takes every flag given (1,000 TrainingJobs on the real control plane, then 1,000 "
        "and 5,000 on the fake, each before and after: half an hour; what changed is tested in "
        "tests/controller/test_scale.py and test_cache.py)"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/store_scale.py --sizes 100,1000,": Check(
        "benchmark", "the script takes every flag given (filling 10,000 jobs and timing every command: minutes; the "
        "caches it exercises are tested in tests/store and tests/views, gc in tests/test_retention.py)"),
    "docs/benchmarks.md: .venv/bin/python benchmarks/store_scale.py --sizes 100,10000": Check(
        "benchmark", "the script takes every flag given (filling 10,000 jobs and timing a running job's commands: "
        "minutes; what a running job's status imports is tested in tests/views/test_current.py)",
        tests=("tests/views/test_current.py::test_status_of_a_supervised_local_job_imports_no_model_and_shows_the_"
               "same_view",)),
    "docs/benchmarks.md: .venv/bin/python benchmarks/store_scale.py --sizes 100,10000 #2": Check(
        "benchmark", "the script takes every flag given (filling 10,000 jobs, a sweep's 20 among them: minutes; "
        "that a group's listing reads only its jobs is tested in tests/store/test_index.py)",
        tests=("tests/store/test_index.py::test_a_groups_jobs_come_from_the_index_without_reading_the_others",)),
    "docs/benchmarks.md: .venv/bin/python benchmarks/ui_pages.py --jobs 1000 --runs 1": Check(
        "benchmark", "the script takes --jobs and --runs (filling 1,000 jobs takes a minute here; the pages it times "
        "are tested in tests/web)"),
    "docs/benchmarks.md: SHARDCTL_REQUIRE_ENVTEST=1 .venv/bin/python -m pytest -s tes": Check(
        "ci", "the variable is read, the test file exists and `-k no_api_request` selects its test (collected for "
        "real); CI runs it with the envtest tests",
        tests=("tests/envtest/test_dashboard.py::test_page_views_make_no_api_request_but_one_review_per_token",)),
    "docs/cli-json.md: {\"format\": 1, \"id\": \"33e5bf07\", \"name\": \"oom-fallback\", \"tar": Check(
        "json_fragment", "a fragment (abridged with ...): every field it names is in docs/cli-json.schema.json, "
        "and its failure kind and states are the enums'"),
    "docs/design.md: orchestrator/": Check("tree", "every unit in the listing, and every file it names, exists"),
    "docs/progress.md: shardctl: step=STEP [total=TOTAL] [loss=LOSS] [epoch=EPOCH]": Check(
        "progress_line", "the line filled in as described is read by orchestrator.views.progress as given"),
    "docs/progress.md: if accelerator.is_main_process:": Check(
        "python_exec", "runs with the loop's names bound to plain values; the line it prints is read by "
        "orchestrator.views.progress as step, total and loss"),
}


def blocks_of(kind: str) -> list[Any]:
    return [pytest.param(BLOCKS[key], TABLE[key], id=key) for key in BLOCKS if key in TABLE and TABLE[key].kind == kind]


# --- helpers ---------------------------------------------------------------------------------------------------


def without_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).strip()


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "KUBECONFIG"))}
    return {**env, "SHARDCTL_HOME": str(tmp_path / "state"), "DS_ACCELERATOR": "cpu", "SHARDCTL_FORCE_CPU": "1",
            "KUBECONFIG": str(tmp_path / "no-kubeconfig")}


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)


@cache
def help_flags(subcommand: str) -> frozenset[str]:
    """The flags `python -m orchestrator SUBCOMMAND --help` lists under Options."""
    r = subprocess.run([sys.executable, "-m", "orchestrator", subcommand, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == 0, f"`shardctl {subcommand} --help` failed: {r.stderr}"
    options = r.stdout.split("Options:", 1)[-1]
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", options))


def names_an_existing_test(ref: str) -> bool:
    """`path::function` (a parametrized test by its function) is defined in that file."""
    path, _, name = ref.partition("::")
    file = ROOT / path
    return file.is_file() and re.search(rf"^(?:async )?def {re.escape(name)}\(", file.read_text(), re.M) is not None



def kube_job_file(tmp_path: Path) -> Path:
    """The `llm` TrainingJob tests/test_kube_cli.py submits to the fake API server: README's job.yaml."""
    job_file = importlib.import_module("tests.test_kube_cli").job_file  # a test module: not for mypy to follow

    path: Path = job_file(tmp_path)
    return path


# --- the table itself ------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_every_code_example_in_the_docs_has_an_entry_in_the_table() -> None:
    unchecked = [f"{key} (line {BLOCKS[key].line})" for key in BLOCKS if key not in TABLE]
    assert not unchecked, "examples with no entry in TABLE (say how each is checked):\n" + "\n".join(unchecked)
    stale = [key for key in TABLE if key not in BLOCKS]
    assert not stale, f"TABLE entries for examples no longer in the docs: {stale}"


@pytest.mark.timeout(30)
def test_the_extractor_finds_fenced_and_indented_examples_but_not_list_continuations() -> None:
    assert len(BLOCKS) >= 25
    assert BLOCKS["README.md: scripts/quickstart"].fenced and BLOCKS["README.md: scripts/quickstart"].lang == "bash"
    tour = BLOCKS["README.md: import shardctl"]
    assert not tour.fenced and "job.result()" in tour.text  # the whole indented block, blank lines inside it
    # docs/design.md's indented lines continue list items (the memory model): none is an example
    assert [b.line for b in extract("docs/design.md")] == [BLOCKS["docs/design.md: orchestrator/"].line]


@pytest.mark.timeout(30)
def test_every_test_the_table_names_exists() -> None:
    refs = {ref for check in TABLE.values() for ref in (*check.tests, *(t for ts in check.elsewhere.values()
                                                                         for t in ts))}
    assert refs
    missing = sorted(ref for ref in refs if not names_an_existing_test(ref))
    assert not missing, f"TABLE names tests that do not exist: {missing}"


# --- shardctl command lines ------------------------------------------------------------------------------------

CHEAP = {"validate", "render", "plan", "import", "convert", "schema", "list", "gc"}


def shardctl_argv(line: str, tmp_path: Path) -> list[str]:
    words = shlex.split(without_comment(line))
    assert words[0] in ("shardctl", ".venv/bin/shardctl"), line
    args = words[1:]
    for i, word in enumerate(args):
        if i and args[i - 1] == "--out":
            args[i] = str(tmp_path / "out" / Path(word).name)
        elif word == "job.yaml":
            args[i] = str(kube_job_file(tmp_path))
    return [sys.executable, "-m", "orchestrator", *args]


def check_render_output(line: str, out: Path) -> None:
    """The files the line's comment names were written; a Kubernetes render holds what its comment says."""
    comment = line.partition("#")[2]
    for name in re.findall(r"[\w-]+\.(?:sbatch|yaml|json|sh)\b", comment):
        assert (out / name).is_file(), f"{line}: no {name} in {sorted(p.name for p in out.iterdir())}"
    if (out / "manifests.yaml").is_file():
        docs = [d for d in yaml.safe_load_all((out / "manifests.yaml").read_text()) if d]
        kinds = {d["kind"]: d for d in docs}
        assert {"ConfigMap", "Service", "Job"} <= set(kinds), sorted(kinds)
        assert kinds["Service"]["spec"]["clusterIP"] == "None"  # headless
        assert kinds["Job"]["spec"]["completionMode"] == "Indexed"


def check_kubectl_columns(line: str) -> None:
    """`kubectl get trainingjobs` shows the CRD's printer columns: those the comment lists."""
    crd = yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())
    columns = [c["name"].lower() for v in crd["spec"]["versions"] for c in v.get("additionalPrinterColumns", [])]
    said = [w.strip() for w in line.partition("#")[2].split(",")]
    assert said == columns, f"{line}: the CRD's columns are {columns}"
    assert crd["spec"]["names"]["plural"] == "trainingjobs"


@pytest.mark.timeout(180)  # up to two CLI runs of SUBPROCESS_TIMEOUT each
@pytest.mark.parametrize(("block", "check"), blocks_of("cli"))
def test_the_shardctl_lines_of_an_example_run_and_exit_0(block: Block, check: Check, tmp_path: Path) -> None:
    for line in block.lines():
        command = without_comment(line)
        if command in check.elsewhere:  # needs a cluster: run by the tests the table names; its flags exist here
            for part in command.split(" | "):
                words = part.split()
                assert words[0] == "shardctl", part
                flags = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", part))
                assert flags <= help_flags(words[1]), f"{part}: not in --help: {flags - help_flags(words[1])}"
            continue
        if command.startswith("kubectl get trainingjobs"):
            check_kubectl_columns(line)
            continue
        argv = shardctl_argv(line, tmp_path)
        sub = argv[3]
        if sub == "submit":
            assert "--wait" in argv, f"{command}: a submit that does not wait must be in the entry's elsewhere"
            argv.append("--dry-run")  # would train: every check submit runs, then nothing recorded
        else:
            assert sub in CHEAP or "--help" in argv, f"{command}: not cheap to run here: name its test in elsewhere"
        r = run(argv, tmp_path)
        assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
        if sub == "submit":
            jobs = tmp_path / "state" / "jobs"
            assert not jobs.exists() or not any(jobs.iterdir()), f"{command} --dry-run recorded a job"
        if "--out" in argv:
            check_render_output(line, Path(argv[argv.index("--out") + 1]))
    unused = [line for line in check.elsewhere if line not in {without_comment(x) for x in block.lines()}]
    assert not unused, f"elsewhere names lines not in the example: {unused}"


# --- helm and kubectl lines about the chart ---------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "check"), blocks_of("chart_lines"))
def test_the_helm_and_kubectl_lines_name_the_charts_values_and_objects(block: Block, check: Check) -> None:
    chart = ROOT / "charts" / "shardctl"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    release = None
    for line in block.lines():
        words = shlex.split(without_comment(line))
        if words[:2] in (["helm", "upgrade"], ["helm", "install"]):
            release = words[2]
            assert (ROOT / words[3]).resolve() == chart, line
            for i, word in enumerate(words):
                if word == "--set":
                    key, _, value = words[i + 1].partition("=")
                    node: Any = values
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, f"{line}: no value {key} in the chart"
                        node = node[part]
                    assert type(yaml.safe_load(value)) is type(node), f"{line}: {key} is a {type(node).__name__}"
        elif words[0] == "kubectl" and "port-forward" in words:
            target, port = words[words.index("port-forward") + 1:words.index("port-forward") + 3]
            assert release and "shardctl" in release  # the chart's fullname is then the release name
            assert target == f"svc/{release}-dashboard", line
            assert 'name: {{ include "shardctl.fullname" . }}-dashboard' in (chart / "templates" / "dashboard.yaml"
                                                                               ).read_text()
            assert int(port.split(":")[-1]) == values["dashboard"]["service"]["port"], line
        elif words[:4] == ["kubectl", "create", "secret", "generic"]:
            keys = [w.split("=", 2)[1] for w in words if w.startswith("--from-literal=")]
            assert keys and all(re.fullmatch(r"[A-Z_]+", k) for k in keys), line
        else:
            assert words[0] == "kubectl" and words[-3:-1] == ["create", "token"], f"{line}: not checked here"


# --- README's synopsis -----------------------------------------------------------------------------------------

REACH_A_CLUSTER = ("submit", "list", "status", "history", "logs", "cancel", "controller")


def synopsis_entries(block: Block) -> Iterator[tuple[list[str], str]]:
    """(subcommands, the entry's text) for each `shardctl ...` line and the description lines under it."""
    entry: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("shardctl "):
            if entry:
                yield synopsis_subcommands(entry[0]), "\n".join(entry)
            entry = [line]
        elif line.strip():
            entry.append(line)
    if entry:
        yield synopsis_subcommands(entry[0]), "\n".join(entry)


def synopsis_subcommands(line: str) -> list[str]:
    command = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
    return [part.split()[0] for part in command.removeprefix("shardctl ").split(" | ")]


@pytest.mark.timeout(180)  # thirteen `--help` runs
@pytest.mark.parametrize(("block", "check"), blocks_of("synopsis"))
def test_the_synopsis_names_only_subcommands_and_flags_that_exist(block: Block, check: Check) -> None:
    entries = list(synopsis_entries(block))
    assert len(entries) >= 10
    wrong: list[str] = []
    for subs, text in entries:
        flags = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
        for sub in subs:
            wrong += [f"shardctl {sub} {flag}" for flag in sorted(flags) if flag not in help_flags(sub)]
        for flag, others in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*) \(also on ([\w, ]+)\)", text):
            wrong += [f"shardctl {sub} {flag}" for sub in others.split(", ") if flag not in help_flags(sub)]
        if "every command that reaches a cluster" in text:
            wrong += [f"shardctl {sub} {flag}" for sub in REACH_A_CLUSTER for flag in ("--kubeconfig", "--context")
                      if flag not in help_flags(sub)]
    assert not wrong, f"the synopsis names flags that `--help` does not list: {wrong}"


# --- TrainingJob specs -----------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("block", "check"), blocks_of("spec"))
def test_a_spec_example_validates(block: Block, check: Check, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(block.text + "\n")
    r = run([sys.executable, "-m", "orchestrator", "validate", str(path)], tmp_path)
    assert r.returncode == 0 and ": ok: TrainingJob " in r.stdout, r.stdout + r.stderr
    import shardctl

    # the alternatives the comments name: "or deepspeed", and every spelling of sharding listed as accepted
    text = block.text
    if "backend: fsdp" in text and "or deepspeed" in text:
        assert shardctl.load(path, overrides={"spec.backend": "deepspeed"}).spec.backend == "deepspeed"
    spellings = re.search(r"sharding: \w+\s+# ([\w| ]+)\(([\w, ]+?)(?:\s*\.\.\.)? accepted\)", text)
    assert spellings or "accepted)" not in text, "the sharding comment no longer reads as a list of values"
    if spellings:
        values = [v.strip() for v in spellings.group(1).split("|")] + [v.strip() for v in spellings[2].split(",")]
        for value in values:  # ZeRO-1 (optimizer) has no FSDP equivalent: the listing is of the field's values
            shardctl.load(path, overrides={"spec.backend": "deepspeed", "spec.sharding": value})


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("block", "check"), blocks_of("spec_fragment"))
def test_a_spec_fragment_validates_inside_the_quickstart_with_each_listed_alternative(block: Block, check: Check,
                                                                                     tmp_path: Path) -> None:
    import yaml

    from orchestrator.spec import parse_spec_text

    base = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    fragment = yaml.safe_load(block.text)

    def merged(text_fragment: dict) -> str:
        doc = json.loads(json.dumps(base))
        doc["spec"].update(text_fragment["spec"])
        return yaml.safe_dump(doc)

    parse_spec_text(merged(fragment), "README.md")
    for line in block.text.splitlines():
        listed = re.search(r"then: (\w+)\}\s+#.*?((?:\w+ \| )+\w+)", line)
        if listed:
            for alternative in listed[2].split(" | "):
                text = block.text.replace(f"then: {listed[1]}}}", f"then: {alternative}}}")
                parse_spec_text(merged(yaml.safe_load(text)), "README.md")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "check"), blocks_of("kube_spec_fragment"))
def test_a_kubernetes_spec_fragment_validates_and_names_the_secrets_the_readme_creates(block: Block,
                                                                                     check: Check) -> None:
    import yaml

    from orchestrator.compile import rules
    from orchestrator.spec import parse_spec_text

    doc = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    doc["spec"].update(yaml.safe_load(block.text)["spec"], target="kubernetes",
                       kubernetes={"image": "registry.example.com/train:1"})
    job = parse_spec_text(yaml.safe_dump(doc), "README.md").job
    assert [f for f in rules.check(job) if f.level == "error"] == []
    created: dict[str, set[str]] = {}
    for other in BLOCKS.values():
        for line in other.lines() if other.file == "README.md" else []:
            words = shlex.split(without_comment(line)) if line.startswith("kubectl create secret generic") else []
            if words:
                created[words[4]] = {w.split("=", 2)[1] for w in words if w.startswith("--from-literal=")}
    refs = [r for hook in job.spec.notify for r in (hook.url, hook.signing_secret) if r is not None]
    assert refs and all(r.secret in created and r.key in created[r.secret] for r in refs), (refs, created)


# --- layout listings -------------------------------------------------------------------------------------------

_NAMED_FILE = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|md|yaml|json))\b")
_NAMED_DIR = re.compile(r"(?<![\w/.-])([a-z_]+)/(?=[,\s)]|$)")


def tree_entries(block: Block) -> Iterator[tuple[Path, str]]:
    """(the path an entry names, its description) for each entry of a listing."""
    lines = block.text.splitlines()
    if lines[0].startswith("orchestrator/  "):  # docs/design.md: the units of orchestrator/, indented
        base, lines = ROOT / "orchestrator", lines[1:]
    else:
        base = ROOT
    current: tuple[Path, list[str]] | None = None
    for line in lines:
        m = re.match(r"^\s{0,2}(\S+)\s{2,}(.*)$", line)
        if m:
            if current:
                yield current[0], " ".join(current[1])
            current = (base / m.group(1), [m.group(2)])
        elif current and line.strip():
            current[1].append(line.strip())
    if current:
        yield current[0], " ".join(current[1])


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "check"), blocks_of("tree"))
def test_a_layout_listing_names_only_paths_that_exist(block: Block, check: Check) -> None:
    entries = list(tree_entries(block))
    assert len(entries) >= 15
    missing: list[str] = []
    for path, description in entries:
        if not path.exists():
            missing.append(str(path.relative_to(ROOT)))
            continue
        near = [path, path.parent, ROOT / "orchestrator", ROOT] if path.is_dir() else [path.parent, ROOT]
        for name in _NAMED_FILE.findall(description) + [d + "/" for d in _NAMED_DIR.findall(description)]:
            if not any((where / name).exists() for where in near):
                missing.append(f"{name} (named by {path.relative_to(ROOT)})")
    assert not missing, f"the listing names paths that do not exist: {missing}"
    # each unit of orchestrator/ is in the listing, in the layer tests/test_layering.py puts it
    layers = {unit: layer for layer, units in importlib.import_module("tests.test_layering").LAYERS for unit in units}
    seen: set[str] = set()
    for path, description in entries:
        rel = path.relative_to(ROOT)
        if rel.parts[0] != "orchestrator":
            continue
        unit = rel.parts[1].removesuffix(".py")
        said = re.match(r"\[(\w+)\]|(\w+)(?: layer)?:", description)
        assert said, f"{rel}: no layer named at the start of {description!r}"
        assert (said[1] or said[2]) == layers[unit], f"{rel}: listed as {said[0]}, in layer {layers[unit]}"
        seen |= {unit, *(Path(name).stem for name in _NAMED_FILE.findall(description))}
    absent = sorted(unit for unit in layers if not unit.startswith("__") and unit not in seen)
    assert not absent, f"units of orchestrator/ the listing leaves out: {absent}"


# --- commands CI runs itself -----------------------------------------------------------------------------------


def declared_markers() -> set[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {m.split(":")[0] for m in config["tool"]["pytest"]["ini_options"]["markers"]}


def check_ci_command(command: str, tmp_path: Path) -> None:
    command = re.sub(r'^eval "\$\((.*)\)"$', r"\1", command)
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name = words.pop(0).split("=")[0]
        readers = [ROOT / "scripts/test", ROOT / "tests/conftest.py"]
        assert any(name in p.read_text() for p in readers), f"{command}: nothing reads {name}"
    program, args = words[0], words[1:]
    if program == ".venv/bin/python":
        assert args[0] == "-m" and importlib.util.find_spec(args[1]) is not None, f"{command}: not installed"
        module, args = args[1], args[2:]
        if module in ("ruff", "mypy"):
            assert command in (ROOT / "scripts/test").read_text(), f"scripts/test does not run `{command}`"
        if module == "ruff":
            assert args[0] == "check", command
            args = args[1:]
    else:
        script = ROOT / program
        assert script.is_file() and os.access(script, os.X_OK), f"{program}: missing or not executable"
        module = program
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m":
            words_ = set(re.findall(r"\w+", args[i + 1])) - {"not", "and", "or"}
            assert words_ <= declared_markers(), f"{command}: undeclared markers {words_ - declared_markers()}"
            i += 2
        elif arg == "-k":
            r = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                     *[a for a in args if a.startswith("tests/")], "-k", args[i + 1]], tmp_path)
            assert r.returncode == 0 and re.search(r"^\d+(/\d+)? tests? (collected|selected)", r.stdout, re.M), \
                f"{command}: selects no test\n{r.stdout}{r.stderr}"
            i += 2
        elif arg.startswith("-"):
            i += 1
        elif module == "slurm/dev/cluster":
            assert re.search(rf"^\s*{re.escape(arg)}\)", (ROOT / program).read_text(), re.M), \
                f"{program} has no `{arg}` command"
            i += 1
        else:
            assert (ROOT / arg).exists(), f"{command}: {arg} does not exist"
            i += 1


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("block", "check"), blocks_of("ci"))
def test_a_command_ci_runs_names_scripts_paths_and_markers_that_exist(block: Block, check: Check,
                                                                      tmp_path: Path) -> None:
    for line in block.lines():
        check_ci_command(without_comment(line), tmp_path)


# --- benchmarks ------------------------------------------------------------------------------------------------

RUN_FOR_REAL = {".venv/bin/python benchmarks/memory_report.py benchmarks/data/memory-cpu.jsonl"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("block", "check"), blocks_of("benchmark"))
def test_a_benchmark_command_names_a_script_and_flags_that_exist(block: Block, check: Check, tmp_path: Path) -> None:
    for line in block.lines():
        for command in (c.strip() for c in without_comment(line).split(";")):
            if not command.startswith(".venv/bin/python benchmarks/"):
                check_ci_command(command, tmp_path)  # slurm/dev/cluster up, eval "$(slurm/dev/cluster env)"
                continue
            words = shlex.split(command)
            script = ROOT / words[1]
            assert script.is_file(), command
            if command in RUN_FOR_REAL:
                r = run([sys.executable, *words[1:]], tmp_path)
                assert r.returncode == 0 and "held_out" in r.stdout, r.stdout + r.stderr
                continue
            r = run([sys.executable, str(script), "--help"], tmp_path)
            assert r.returncode == 0, r.stderr
            for flag in (w for w in words[2:] if w.startswith("--")):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", r.stdout), f"{command}: {script.name} has no {flag}"
            for path in (w for w in words[2:] if "/" in w):
                assert (ROOT / path).exists(), f"{command}: {path} does not exist"


# --- Python ----------------------------------------------------------------------------------------------------


def loop_names() -> dict[str, Any]:
    """What a training loop around docs/progress.md's snippet defines, as plain values."""
    return {"accelerator": types.SimpleNamespace(is_main_process=True), "step": 120, "total_steps": 1000,
            "loss": types.SimpleNamespace(item=lambda: 2.34567)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("block", "check"), blocks_of("python_exec"))
def test_a_python_example_runs_as_written(block: Block, check: Check, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    if "accelerator" in block.text:
        namespace.update(loop_names())
    exec(compile(block.text, f"{block.file}:{block.line}", "exec"), namespace)
    printed = capsys.readouterr().out
    if "shardctl: step=" in block.text:
        from orchestrator.views.progress import parse

        progress = parse(printed)
        assert progress is not None and progress.format == "shardctl", printed
        assert (progress.step, progress.total, progress.loss) == (120, 1000, 2.3457), printed


def bind_calls(tree: ast.AST) -> tuple[int, list[str]]:
    """Each `shardctl.f(...)`, `job.m(...)` and `sweep.m(...)` call bound to the real signature: how many, and
    those that fail."""
    import shardctl

    owners: dict[str, Any] = {"shardctl": shardctl, "job": shardctl.Job, "sweep": shardctl.Sweep}
    wrong: list[str] = []
    bound = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) and target.func.attr == "wait":
            owner = shardctl.Sweep  # sweep.wait() returns the Sweep
        elif isinstance(target, ast.Name) and target.id in owners:
            owner = owners[target.id]
        else:
            continue
        fn = getattr(owner, node.func.attr, None)
        if fn is None:
            wrong.append(f"{ast.unparse(node)}: no {node.func.attr}")
            continue
        bound += 1
        args: list[Any] = [None] if owner is not shardctl else []  # self
        try:
            inspect.signature(fn).bind(*args, *node.args, **{k.arg: k.value for k in node.keywords if k.arg})
        except TypeError as exc:
            wrong.append(f"{ast.unparse(node)}: {exc}")
    return bound, wrong


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("block", "check"), blocks_of("python_api"))
def test_the_python_api_tour_uses_only_names_and_signatures_that_exist(block: Block, check: Check, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import shardctl

    tree = ast.parse(block.text, f"{block.file}:{block.line}")
    bound, wrong = bind_calls(tree)
    assert bound >= 10 and not wrong, (bound, wrong)
    # the names the comments mention too: shardctl.load, WaitTimeout, job.history/cancel/exception
    missing = [n for n in re.findall(r"\bshardctl\.(\w+)", block.text) if not hasattr(shardctl, n)]
    missing += [f"Job.{n}" for n in re.findall(r"\bjob\.(\w+)\(", block.text) if not hasattr(shardctl.Job, n)]
    missing += [n for n in re.findall(r"raises (\w+)", block.text) if not hasattr(shardctl, n)]
    assert not missing, missing
    assert "JobState" in str(inspect.signature(shardctl.Job.wait).return_annotation)  # "the final state (JobState)"
    # the calls that train are the tests' (TABLE); these run here for real
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(ROOT)
    assert shardctl.list_jobs(group=None) == []
    assert shardctl.load("examples/quickstart.yaml", overrides={"spec.batch.micro": 4}).spec.batch.micro == 4


# --- the JSON example and the progress line --------------------------------------------------------------------


def schema_properties(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        yield from (node.get("properties") or {})
        for value in node.values():
            yield from schema_properties(value)
    elif isinstance(node, list):
        for value in node:
            yield from schema_properties(value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "check"), blocks_of("json_fragment"))
def test_a_json_example_names_only_fields_of_the_schema(block: Block, check: Check) -> None:
    from orchestrator.spec.states import AttemptState, FailureKind, JobState

    schema = json.loads((ROOT / "docs/cli-json.schema.json").read_text())
    known = set(schema_properties(schema))
    named = set(re.findall(r'"(\w+)":', block.text))
    assert named and named <= known, f"fields not in docs/cli-json.schema.json: {sorted(named - known)}"
    assert set(re.findall(r'"kind": "(\w+)"', block.text)) <= {k.value for k in FailureKind}
    states = {s.value for s in JobState} | {s.value for s in AttemptState}
    assert set(re.findall(r'"state": "(\w+)"', block.text)) <= states


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "check"), blocks_of("progress_line"))
def test_the_progress_line_as_documented_is_read_by_the_parser(block: Block, check: Check) -> None:
    from orchestrator.views.progress import parse

    values: Mapping[str, str] = {"STEP": "42", "TOTAL": "500", "LOSS": "1.25", "EPOCH": "0.5"}
    line = re.sub(r"\[([^\]]*?)(?: \.\.\.)?\]", r"\1", block.text.strip())  # every optional part given once
    filled = re.sub(r"\b(STEP|TOTAL|LOSS|EPOCH)\b", lambda m: values[m.group(1)], line)
    progress = parse(filled + "\n")
    assert progress is not None and progress.format == "shardctl", filled
    assert (progress.step, progress.total, progress.loss, progress.epoch) == (42, 500, 1.25, 0.5), filled

