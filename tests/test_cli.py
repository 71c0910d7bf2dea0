"""The CLI as users run it: real subprocesses, exit codes, files written or not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def shardctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SHARDCTL_FORCE_CPU": "1"})


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(example: Path) -> None:
    r = shardctl("validate", str(example))
    assert r.returncode == 0, r.stderr
    assert ": ok: TrainingJob" in r.stdout


_HEAD = ("apiVersion: shardctl.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\n"
         "spec:\n  entrypoint: {script: t.py}\n  model: {name_or_path: m}\n")  # six lines
BAD = {
    "empty.yaml": "",
    "syntax.yaml": "apiVersion: [\n",
    "types.yaml": _HEAD + "  batch: {micro: many}\n",
    "rule.yaml": _HEAD + "  backend: fsdp\n  offload: {optimizer: nvme, nvme_path: /n}\n",
    "unknown.yaml": _HEAD + "  sharding_level: full\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_exit_2_no_traceback_nothing_written(name: str, tmp_path: Path) -> None:
    spec = tmp_path / name
    spec.write_text(BAD[name])
    out = tmp_path / "out"
    for args in (("validate", str(spec)), ("render", str(spec), "--out", str(out))):
        r = shardctl(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith(str(spec))
    assert not out.exists()


def test_rule_error_points_at_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "rule.yaml"
    spec.write_text(BAD["rule.yaml"])
    r = shardctl("validate", str(spec))
    assert r.stderr.splitlines()[0].startswith(
        f"{spec}:8: spec.offload.optimizer: NVMe offload exists only in DeepSpeed")


def test_ten_megabyte_file(tmp_path: Path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text("a: b\n" * (2 * 1024 * 1024))
    r = shardctl("validate", str(spec))
    assert r.returncode == 2 and "MiB" in r.stderr and "Traceback" not in r.stderr


def test_render_local_writes_the_dry_run(tmp_path: Path) -> None:
    r = shardctl("render", str(ROOT / "examples/quickstart.yaml"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate_config.yaml", "attempt.json", "ds_config.json",
                                                          "launch.sh"]
    request = json.loads((tmp_path / "attempt.json").read_text())  # what the attempt wrapper is asked to run
    assert request["command"] == ["bash", f"{tmp_path}/launch.sh"] and request["memory_limit_bytes"] is None
    script = (tmp_path / "launch.sh").read_text()
    assert f"--config_file {tmp_path}/accelerate_config.yaml" in script and "DS_ACCELERATOR=cpu" in script
    assert os.access(tmp_path / "launch.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], check=True)


def test_shell_injection_is_quoted(tmp_path: Path) -> None:
    spec = tmp_path / "inject.yaml"
    spec.write_text((ROOT / "examples/quickstart.yaml").read_text().replace(
        '"--steps", "20"', '"--steps", "20; touch PWNED", "$(touch PWNED2)"'))
    r = shardctl("render", str(spec), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "o/launch.sh").read_text()
    assert "'20; touch PWNED' '$(touch PWNED2)'" in script


def test_schema_has_every_field_name() -> None:
    r = shardctl("schema")
    schema = json.loads(r.stdout)
    text = r.stdout
    for name in ("target", "entrypoint", "script", "args", "env", "name_or_path", "parameters", "layer_class",
                 "backend", "sharding", "mixed", "params", "optimizer", "nvme_path", "activation_checkpointing",
                 "micro", "global", "seq_len", "nodes", "gpus_per_node", "gpu_memory", "cpus_per_node",
                 "memory_per_node", "dir", "every_steps", "enabled", "max_attempts", "ladder", "partition",
                 "account", "qos", "time", "extra", "image", "namespace", "queue", "node_selector", "tolerations",
                 "priority_class", "service_account", "volumes", "labels"):
        assert f'"{name}"' in text, name
    assert schema["properties"]["apiVersion"]["const"] == "shardctl.dev/v1alpha1"


def test_help_does_not_import_the_training_stack() -> None:
    code = ("import sys; from click.testing import CliRunner; from orchestrator.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "print(','.join(m for m in ('torch','deepspeed','accelerate','kubernetes','transformers') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_convert_cli(tmp_path: Path) -> None:
    from tests.compile.test_convert import SEED_FSDP

    src = tmp_path / "fsdp.yaml"
    src.write_text(SEED_FSDP)
    r = shardctl("convert", str(src), "--to", "deepspeed", "--out", str(tmp_path / "ds.yaml"))
    assert r.returncode == 0, r.stderr
    assert "no equivalent: fsdp_config.fsdp_use_orig_params" in r.stderr
    r2 = shardctl("convert", str(tmp_path / "ds.yaml"), "--to", "fsdp")
    assert r2.returncode == 0 and "fsdp_sharding_strategy: FULL_SHARD" in r2.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\n")
    assert shardctl("convert", str(bad), "--to", "fsdp").returncode == 2


def test_the_supervision_path_never_imports_the_training_stack() -> None:
    """The supervisor, the local target and the job commands run on login nodes and in controllers."""
    code = ("import sys, orchestrator.jobs, orchestrator.views.follow, orchestrator.views.report, "
            "orchestrator.supervise.daemon, "
            "orchestrator.targets.local.target, orchestrator.targets.local.wrapper; "
            "print([m for m in ('torch', 'accelerate', 'deepspeed', 'transformers') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# Hostile and careless input: the CLI's side of each kind, and a fuzz test of the whole path.

def _invoke(*args: str, home: Path | None = None):
    from click.testing import CliRunner

    from orchestrator.cli import main

    env = {"SHARDCTL_FORCE_CPU": "1", **({"SHARDCTL_HOME": str(home)} if home else {})}
    return CliRunner().invoke(main, list(args), env=env)


def _slurm_spec(**fields: str) -> str:
    text = (ROOT / "examples/slurm-2node.yaml").read_text()
    for key, value in fields.items():
        text = text.replace(f"    {key}: ", f"    {key}: {value}  # ", 1) if f"    {key}: " in text else \
            text.replace("  slurm:\n", f"  slurm:\n    {key}: {value}\n", 1)
    return text


def test_no_stray_line_reaches_job_sbatch(tmp_path: Path) -> None:
    """A value ending in a newline once put a line of its own into job.sbatch, after which sbatch ignored every
    later #SBATCH directive. Every such value is refused, naming its field; a valid render has exactly the
    directives shardctl writes, each on its own line."""
    spec = tmp_path / "job.yaml"
    for field, value in (("name", '"slurm-2node\\n"'), ("partition", '"debug\\n"'), ("account", '"acct\\r"'),
                         ("qos", '"high\\n#SBATCH --x"'), ("time", '"00:15:00\\n"'),
                         ("extra", '["--constraint=a100\\x0b#SBATCH --mem=1"]')):
        text = _slurm_spec(**{field: value})
        if field == "name":
            text = (ROOT / "examples/slurm-2node.yaml").read_text().replace("name: slurm-2node", f"name: {value}")
        spec.write_text(text)
        r = _invoke("render", str(spec), "--out", str(tmp_path / "out"))
        assert r.exit_code == 2, (field, r.output)
        path = {"name": "metadata.name", "extra": "spec.slurm.extra.0"}.get(field, f"spec.slurm.{field}")
        assert len(r.output.splitlines()) == 1 and r.output.startswith(f"{spec}:"), r.output
        assert f": {path}: " in r.output, (field, r.output)  # names its field
        assert not (tmp_path / "out").exists()
    spec.write_text(_slurm_spec(account="acct", qos="high", extra='["--constraint=a100"]'))
    r = _invoke("render", str(spec), "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    from orchestrator.targets.slurm.render import directives  # noqa: F401 (the module that writes them)

    for name in ("job.sbatch", "judge.sbatch"):
        lines = (tmp_path / "out" / name).read_text().splitlines()
        header = [line for line in lines if line.startswith("#SBATCH")]
        assert all(line.startswith("#SBATCH --") and line.isprintable() for line in header), header
        first = lines.index(header[0])
        assert lines[first:first + len(header)] == header  # one block: nothing between the directives
    assert "#SBATCH --constraint=a100" in (tmp_path / "out" / "job.sbatch").read_text()


def test_plan_needs_a_unit_for_the_gpu_memory() -> None:
    r = _invoke("plan", str(ROOT / "examples/zero3-offload.yaml"), "--gpu-memory", "24")
    assert r.exit_code == 2 and "unit" in r.output and len(r.output.splitlines()) == 1, r.output
    assert _invoke("plan", str(ROOT / "examples/zero3-offload.yaml"), "--gpu-memory", "24GiB").exit_code == 0


def test_the_local_target_refuses_cluster_sized_specs(tmp_path: Path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text((ROOT / "examples/quickstart.yaml").read_text()
                    .replace("nodes: 1", "nodes: 4096").replace("gpus_per_node: 2 ", "gpus_per_node: 64 ")
                    .replace("global: 32", "global: 2097152"))
    for args in (("render", str(spec), "--out", str(tmp_path / "out")), ("submit", str(spec), "--dry-run")):
        r = _invoke(*args, home=tmp_path / "home")
        assert r.exit_code == 2, r.output
        assert r.output.splitlines() == [
            f"{spec}:25: spec.resources: resources.nodes x resources.gpus_per_node = 4096 x 64 = 262144 processes, "
            "all on this machine: the local target starts at most 64; use target slurm or kubernetes for a cluster"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()
    r = _invoke("render", str(spec), "--target", "slurm", "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output  # a cluster target takes it


def test_list_is_bounded_and_survives_a_damaged_store(tmp_path: Path) -> None:
    from orchestrator.store.jobstore import Store

    r = _invoke("list", "--limit", "99999999999999999999", home=tmp_path)
    assert r.exit_code == 2 and "not in the range 1<=x<=100000" in r.output
    store = Store(tmp_path)
    jobs = [store.create_job(name=f"j{i}", target="local", spec={"spec": {}}, source=None, workdir="/w",
                             checkpoint_dir=None) for i in range(4)]
    for j in jobs:
        store.finish_job(j.id, "succeeded", "done")
    def damage(path: Path, **values) -> None:  # a record edited by hand, or a disk error
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))

    damage(store.jobs_dir() / jobs[1].id / "job.json", spec="{not json")
    damage(store.jobs_dir() / jobs[2].id / "finished.json", state="exploded")
    r = _invoke("list", "--json", home=tmp_path)
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert sorted(v["id"] for v in listed) == sorted([jobs[0].id, jobs[3].id])
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("damaged" in w and "skipped" in w for w in warnings), warnings
    r = _invoke("status", jobs[1].id, home=tmp_path)
    assert r.exit_code == 2 and "is damaged" in r.output and len(r.output.splitlines()) == 1, r.output
    store.add_attempt(jobs[3].id, 1, spec={}, rung=None, reason="r", run_dir="/r", log_path="/r/log", artifacts={},
                      warnings=[], resume_from=None)
    damage(store.jobs_dir() / jobs[3].id / "attempts" / "1.json", warnings="[")
    r = _invoke("history", jobs[3].id, home=tmp_path)
    assert r.exit_code == 2 and f"job {jobs[3].id}, attempt 1 in the job store is damaged" in r.output, r.output
    assert len(r.output.splitlines()) == 1


def test_a_store_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "shardctl.db").write_bytes(os.urandom(4096))
    (tmp_path / "dir" / "shardctl.db").mkdir(parents=True)  # the job store of an earlier shardctl
    for home, needle in (("garbage", "file is not a database"), ("dir", "unable to open database file")):
        for args in (("list",), ("status", "x")):
            r = _invoke(*args, home=tmp_path / home)
            # a StoreError's exit (SystemExit 1), not an exception that escaped the CLI
            assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
            assert len(r.output.splitlines()) == 1 and needle in r.output, r.output


# What root may not do: write through permission bits (CAP_DAC_OVERRIDE) or read through them
# (CAP_DAC_READ_SEARCH). setpriv drops both for one command, so root can see a read-only directory as a user does.
_NO_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                "--bounding-set=-dac_override,-dac_read_search"]


def _as_a_user_sees_permissions(read_only: Path) -> list[str]:
    """The argv prefix under which `read_only` (mode 0555) cannot be written: none for a user; setpriv for root."""
    if os.geteuid() != 0:
        return []
    probe = read_only / "probe"
    try:
        r = subprocess.run([*_NO_OVERRIDE, sys.executable, "-c", f"open({str(probe)!r}, 'x')"], capture_output=True,
                           text=True, timeout=60)
    except FileNotFoundError:
        r = None
    if r is None or probe.exists() or "PermissionError" not in r.stderr:
        probe.unlink(missing_ok=True)
        pytest.skip("root writes through read-only modes, and setpriv cannot drop CAP_DAC_OVERRIDE here: "
                    + (r.stderr.strip()[-300:] if r is not None else "no setpriv (util-linux)"))
    return _NO_OVERRIDE


def test_a_store_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    from orchestrator.store.jobstore import Store

    Store(tmp_path)
    home = tmp_path / "home"
    tmp_path.chmod(0o555)
    try:
        prefix = _as_a_user_sees_permissions(tmp_path)
        r = subprocess.run([*prefix, sys.executable, "-m", "orchestrator", "list"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env={**os.environ, "SHARDCTL_HOME": str(home)})
    finally:
        tmp_path.chmod(0o755)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert len(r.stderr.splitlines()) == 1, r.stderr  # one line, no traceback
    assert f"cannot open the job store in {home}: [Errno 13] Permission denied" in r.stderr, r.stderr
    assert not home.exists()


@pytest.mark.parametrize("name,text,needle", [
    ("deep.json", "[" * 50_000 + "]" * 50_000, "not valid JSON: nested more than 64 levels deep"),
    ("deep2.json", '{"a":' * 70 + "1" + "}" * 70, "nested more than 64 levels deep"),
    ("nan.json", '{"distributed_type": "FSDP", "x": NaN}', "NaN is not a JSON number"),
    ("dup.json", '{"distributed_type": "FSDP", "distributed_type": "DEEPSPEED"}', "duplicate key"),
    ("bomb.yaml", "a: &a [1,2]\nb: [*a, *a]\n", "the alias *a stands for a list"),
    ("deep.yaml", "a: " + "[" * 500 + "]" * 500, "nested more than 64 levels deep"),
    ("ds5.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: 5}\n",
     "deepspeed_config_file must be a file name, not int 5"),
    ("dsdev.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: /dev/zero}\n",
     "it is a device"),
    ("dslist.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: ds.json}\n",
     "the DeepSpeed config file must be a mapping"),
    ("fsdplist.yaml", "distributed_type: FSDP\nfsdp_config: [1, 2]\n", "fsdp_config must be a mapping"),
    ("stage.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: x}\n",
     "zero_stage must be a whole number from 0 to 3"),
    ("stage7.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 7}\n",
     "zero_stage must be a whole number from 0 to 3"),
    ("keys.yaml", "distributed_type: FSDP\nfsdp_config: {1: a, b: c}\n", "key 1 is not a string"),
    ("device.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config: {offload_param_device: [gpu]}\n",
     "offload_param_device must be one of none, cpu, nvme"),
    ("procs.yaml", "distributed_type: FSDP\nnum_processes: many\nfsdp_config: {fsdp_sharding_strategy: 4}\n",
     "num_processes must be a whole number"),
    ("mixed.yaml", "distributed_type: FSDP\nmixed_precision: [bf16]\n", "mixed_precision must be"),
    ("dup.yaml", "distributed_type: FSDP\ndistributed_type: DEEPSPEED\n", "duplicate key"),
])
def test_convert_reads_hostile_configs_as_one_line(tmp_path: Path, name: str, text: str,
                                                             needle: str) -> None:
    (tmp_path / "ds.json").write_text("[1, 2]")
    src = tmp_path / name
    src.write_text(text)
    r = _invoke("convert", str(src), "--to", "fsdp" if "FSDP" not in text else "deepspeed",
                "--out", str(tmp_path / "out" / "c.yaml"))
    assert r.exit_code == 2, r.output
    assert len(r.output.splitlines()) == 1 and needle in r.output, r.output
    assert not (tmp_path / "out").exists()


# The fuzz test: generated YAML through `validate` and `render`, in-process, as a user's file.

_BASE = {
    "apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "fuzz"},
    "spec": {"target": "local", "entrypoint": {"script": "t.py", "args": ["--bs", "{micro_batch}"],
                                                "env": {"A": "1"}},
             "model": {"name_or_path": "m", "parameters": "7B"}, "backend": "deepspeed", "sharding": "grad_op",
             "batch": {"micro": 2, "global": 8}, "resources": {"nodes": 1, "gpus_per_node": 2,
                                                               "memory_per_node": "4GiB"},
             "slurm": {"partition": "p", "time": "10"}, "kubernetes": {"image": "i:1", "namespace": "ns"}},
}
_PATHS = ["metadata.name", "metadata.namespace", "metadata.labels", "spec.target", "spec.entrypoint.script",
          "spec.entrypoint.args", "spec.entrypoint.env", "spec.entrypoint.env.B", "spec.model.parameters",
          "spec.backend", "spec.sharding", "spec.precision.mixed", "spec.offload.optimizer", "spec.offload.params",
          "spec.batch.micro", "spec.batch.global", "spec.batch.seq_len", "spec.resources.nodes",
          "spec.resources.gpus_per_node", "spec.resources.memory_per_node", "spec.resources.gpu_memory",
          "spec.checkpoint.every_steps", "spec.fallback.max_attempts", "spec.fallback.ladder",
          "spec.deepspeed.gradient_clipping", "spec.slurm.partition", "spec.slurm.time", "spec.slurm.extra",
          "spec.kubernetes.volumes", "spec.kubernetes.tolerations", "spec.kubernetes.image", "spec", "metadata"]
_WORDS = ["1e400", "1.0e+400", ".inf", "-.inf", ".nan", "99999999999999999999999PiB", "1", "-1", "0", "24",
          "quickstart\n", "a\nb", "80GiB", "7B", "FULL_SHARD", "zero3", "", "~", "yes", "no", "0x1F", "2001-13-01",
          "{micro_batch}", "{nope}", "--x\n#SBATCH --mem=1", "$(touch PWNED)", "kubernetes", "slurm", "fsdp",
          "\u2028", "\x85", "\x1b[31m", "a" * 300]


_TOKENS = ["{", "}", "[", "]", ": ", ", ", "&a ", "*a", "!!int ", "!!float ", "!!timestamp ", "!!bool ", "!!binary ",
           "!!set ", "!!python/object:os.system ", "<<: ", "--- ", "? ", "- ", "|\n", "'", '"', "#", "\t", "\n  ",
           "\x00", "\ufeff", "\u2028"]


def _hostile_values():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True, allow_infinity=True),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20), st.sampled_from(_WORDS),
        st.booleans(), st.none())
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.sampled_from(["a", "name", "x"]),
                                                                         inner, max_size=3)),
                        max_leaves=8)


def _mutate(data: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[last] = value


_TEXT_CHANGES = {  # what yaml.safe_dump never writes: aliases, duplicate keys, deep nesting, raw bytes
    "none": lambda text, extra: text,
    "duplicate": lambda text, extra: text + "spec:\n  backend: fsdp\n",
    "inner-duplicate": lambda text, extra: text.replace("  backend:", "  backend: fsdp\n  backend:", 1),
    "bomb": lambda text, extra: "x: &a [1, 2]\ny: [*a, *a]\n" + text,
    "self-alias": lambda text, extra: text + "z: &z [*z]\n",
    "scalar-alias": lambda text, extra: text.replace("name: fuzz", "name: &n fuzz", 1) + "w: *n\n",
    "deep": lambda text, extra: text + "d: " + "[" * (40 + len(extra) * 3) + "]" * (40 + len(extra) * 3) + "\n",
    "merge": lambda text, extra: text + "m:\n  <<: {a: 1}\n",
    "insert": lambda text, extra: text[: len(text) // 2] + extra + text[len(text) // 2:],
    "append": lambda text, extra: text + extra,
}


def test_fuzz_validate_and_render_never_crash_hang_or_write_on_error(tmp_path: Path) -> None:
    """Generated specs, most of them hostile: every run exits 0 or 2 within a second, with no traceback, and
    render writes nothing when it exits 2."""
    import copy
    import time

    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _invoke("validate", str(ROOT / "examples/quickstart.yaml"))  # imports done once, outside the timing
    counter = iter(range(10**9))
    slowest = [0.0]
    exits: dict[int, int] = {}

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutations=st.one_of(st.just([]), st.lists(st.tuples(st.sampled_from(_PATHS), _hostile_values()),
                                                     min_size=1, max_size=3)),
           target=st.sampled_from(["local", "slurm", "kubernetes"]),
           change=st.one_of(st.just("none"), st.sampled_from(sorted(_TEXT_CHANGES))),
           extra=st.lists(st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                    st.sampled_from(_TOKENS)), max_size=12).map("".join))
    def check(mutations, target, change, extra) -> None:
        data = copy.deepcopy(_BASE)
        data["spec"]["target"] = target
        for path, value in mutations:
            _mutate(data, path, value)
        text = _TEXT_CHANGES[change](yaml.safe_dump(data, sort_keys=False, allow_unicode=True), extra)
        case = tmp_path / f"case-{next(counter)}"
        case.mkdir()
        spec = case / "job.yaml"
        spec.write_text(text, encoding="utf-8", errors="surrogatepass")
        for args in (("validate", str(spec)), ("render", str(spec), "--out", str(case / "out"))):
            start = time.perf_counter()
            r = _invoke(*args)
            seconds = time.perf_counter() - start
            slowest[0] = max(slowest[0], seconds)
            assert r.exception is None or isinstance(r.exception, SystemExit), (args, text, r.exception)
            assert r.exit_code in (0, 2), (args, text, r.output)
            exits[r.exit_code] = exits.get(r.exit_code, 0) + 1
            assert "Traceback" not in r.output
            assert seconds < 1.0, (args, text, seconds)
            if args[0] == "render":
                assert (case / "out").exists() == (r.exit_code == 0), (text, r.output)
            if r.exit_code == 2:
                assert r.output and all(line.isprintable() for line in r.output.splitlines()), r.output
        assert sorted(p.name for p in case.iterdir()) in (["job.yaml"], ["job.yaml", "out"])

    check()
    assert slowest[0] < 1.0
    assert exits.get(0, 0) >= 40 and exits.get(2, 0) >= 100, exits  # both kinds of input were generated


# --set and --sweep (orchestrator/api/overrides.py, orchestrator/api/sweep.py) ---------------------------------


@pytest.mark.parametrize("command", [("validate",), ("render", "--out", "OUT"), ("plan",), ("submit",)])
def test_set_is_validated_like_the_file_and_a_bad_one_is_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    quick = str(ROOT / "examples/quickstart.yaml")
    r = _invoke(args[0], quick, *args[1:], "--set", "spec.batch.micro=many", home=tmp_path / "home")
    assert r.exit_code == 2, r.output
    assert r.output.splitlines() == [
        "--set spec.batch.micro=many: spec.batch.micro: Input should be a valid integer (got str 'many')"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "home" / "jobs").exists()


def test_set_changes_what_is_validated_and_rendered(tmp_path: Path) -> None:
    quick = str(ROOT / "examples/quickstart.yaml")
    r = _invoke("validate", quick, "--set", "spec.batch.micro=16", "--set", "spec.sharding=full")
    assert r.exit_code == 0, r.output
    assert "ZeRO-3 (full)" in r.stdout and "micro 16 x accum 1 = global 32" in r.stdout
    r = _invoke("render", quick, "--out", str(tmp_path / "out"), "--set", "spec.entrypoint.args.5=7")
    assert r.exit_code == 0, r.output
    assert "--steps 7 " in (tmp_path / "out" / "launch.sh").read_text()
    r = _invoke("validate", quick, "--set", "spec.batch.micro=7")  # valid alone, breaks a rule with the file
    assert r.exit_code == 2
    assert r.output.splitlines() == [f"{quick}:23: spec.batch.global: 32 is not a multiple of micro (7) x world "
                                     "size (2) = 14 (with --set spec.batch.micro=7)"]


def test_sweep_dry_run_shows_every_point_and_a_bad_point_submits_nothing(tmp_path: Path) -> None:
    quick = str(ROOT / "examples/quickstart.yaml")
    r = _invoke("submit", quick, "--dry-run", "--sweep", "spec.batch.micro=4,8", "--sweep",
                "spec.sharding=grad_op,full", home=tmp_path / "home")
    assert r.exit_code == 0, r.output
    heads = [line for line in r.stdout.splitlines() if line.startswith("point ")]
    assert heads == ['point 0: quickstart-0: spec.batch.micro=4 spec.sharding="grad_op"',
                     'point 1: quickstart-1: spec.batch.micro=4 spec.sharding="full"',
                     'point 2: quickstart-2: spec.batch.micro=8 spec.sharding="grad_op"',
                     'point 3: quickstart-3: spec.batch.micro=8 spec.sharding="full"']
    r = _invoke("submit", quick, "--sweep", "spec.batch.micro=4,7", home=tmp_path / "home")
    assert r.exit_code == 2 and "(with --sweep spec.batch.micro=7)" in r.output, r.output
    assert not (tmp_path / "home" / "jobs").exists() or not any((tmp_path / "home" / "jobs").iterdir())
    r = _invoke("list", "--group", "nothing-here", home=tmp_path / "home")
    assert r.exit_code == 0 and "no job in the group 'nothing-here'" in r.output, r.output


def test_set_takes_a_list_item_as_bracket_n_and_sweep_refuses_values_the_spec_reads_alike(tmp_path: Path) -> None:
    quick = str(ROOT / "examples/quickstart.yaml")
    r = _invoke("render", quick, "--out", str(tmp_path / "out"), "--set", "spec.entrypoint.args[5]=7")
    assert r.exit_code == 0, r.output
    assert "--steps 7 " in (tmp_path / "out" / "launch.sh").read_text()
    r = _invoke("submit", quick, "--dry-run", "--sweep", "spec.sharding=full,zero3,FULL_SHARD,3", home=tmp_path / "h")
    assert r.exit_code == 2 and r.output.splitlines() == [
        "--sweep spec.sharding=full,zero3,FULL_SHARD,3: 'full', 'zero3', 'FULL_SHARD' and 3 are the same "
        'spec.sharding ("full"); give each value once'], r.output


def test_list_group_finds_a_sweep_by_its_name_and_fills_the_set_column(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.api.job import plan_sweep
    from orchestrator.store.jobstore import Store
    from orchestrator.supervise.supervisor import job_to_json

    home = tmp_path / "home"
    monkeypatch.setenv("SHARDCTL_HOME", str(home))
    store = Store()
    groups = []
    for micro in ([4, 8], [8, 16]):  # two sweeps of one name: the newer is the one shown
        group, checked, _ = plan_sweep(ROOT / "examples/quickstart.yaml", {"spec.batch.micro": micro})
        for c in checked:
            record = store.create_job(name=c.job.metadata.name, target="local", spec=job_to_json(c.job),
                                      source=None, workdir=str(ROOT), checkpoint_dir=None, options={})
            store.finish_job(record.id, "succeeded", "done")
        groups.append(group)
    r = _invoke("list", "--group", "quickstart", home=home)
    assert r.exit_code == 0, r.output
    assert f"group 'quickstart': showing {groups[1]} (the newest of 2 sweeps of that name)" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[-1] == "SET" and len(lines) == 3
    assert lines[1].endswith("batch.micro=8") and lines[2].endswith("batch.micro=16"), r.stdout
    r = _invoke("list", "--group", groups[0], "--json", home=home)  # a group's label: no note
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2 and "showing" not in r.stderr, r.output
    r = _invoke("list", "--group", "quickstart", "--json", home=home)
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2 and groups[1] in r.stderr


IMPORT_DATA = ROOT / "tests/data/import"


def test_import_writes_a_trainingjob_that_validates_and_lists_what_it_could_not_carry(tmp_path: Path) -> None:
    """The whole on-ramp through the CLI: a real accelerate template with its DeepSpeed JSON in, a
    TrainingJob out that `validate` accepts as is."""
    config = IMPORT_DATA / "accelerate/examples/config_yaml_templates/deepspeed.yaml"
    out = tmp_path / "job.yaml"
    r = shardctl("import", str(config), "--name", "imported-ds", "--script", "train.py", "--out", str(out),
                 cwd=config.parent)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "backend: deepspeed" in text and "name: imported-ds" in text
    assert text.lstrip().startswith("#")  # the header says where it came from and what differs
    (tmp_path / "train.py").write_text("print('hi')\n")
    v = shardctl("validate", str(out), cwd=tmp_path)
    assert v.returncode == 0, v.stderr


def test_import_refuses_what_it_cannot_express_in_one_line(tmp_path: Path) -> None:
    r = shardctl("import", str(IMPORT_DATA / "accelerate/examples/config_yaml_templates/multi_gpu.yaml"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "MULTI_GPU" in r.stderr


# A day's use (issue 20): what the commands print around their answer.

_FSDP = ("--set", "spec.backend=fsdp", "--set", "spec.sharding=full")


def test_advice_not_about_this_job_is_printed_only_with_verbose(tmp_path: Path) -> None:
    quickstart = str(ROOT / "examples" / "quickstart.yaml")
    quiet = _invoke("validate", quickstart, *_FSDP)
    assert quiet.exit_code == 0 and ": ok: TrainingJob" in quiet.stdout
    assert "note:" not in quiet.stderr, quiet.stderr
    loud = _invoke("validate", "-v", quickstart, *_FSDP)
    assert loud.exit_code == 0
    assert [line for line in loud.stderr.splitlines() if "note:" in line] == [
        f"{quickstart}:13: spec.model.layer_class: note: unset: TRANSFORMER_BASED_WRAP wraps the model's "
        "_no_split_modules (accelerate's FSDP guide: recommended for recent transformers) "
        "(with --set spec.backend=fsdp, --set spec.sharding=full)"]
    # a warning (and a note about what this spec set) is printed whatever the verbosity
    warned = _invoke("validate", quickstart, "--set", "spec.precision.params=bf16",
                     "--set", "spec.activation_checkpointing=true")
    assert "spec.precision.params: warning: DeepSpeed keeps fp32" in warned.stderr, warned.stderr
    assert "spec.activation_checkpointing: note: DeepSpeed has no accelerate switch" in warned.stderr
    for command in (("render", "--out", str(tmp_path / "out")), ("plan", "--gpu-memory", "8GiB"),
                    ("submit", "--dry-run")):
        r = _invoke(command[0], quickstart, *_FSDP, *command[1:])
        assert r.exit_code in (0, 1) and "note:" not in r.stderr, (command, r.output)
        assert "note:" in _invoke(command[0], "--verbose", quickstart, *_FSDP, *command[1:]).stderr, command


def test_a_sweep_prints_its_advice_once_without_the_sweep_values_and_only_with_verbose() -> None:
    quickstart = str(ROOT / "examples" / "quickstart.yaml")
    args = ("submit", "--dry-run", quickstart, *_FSDP, "--sweep", "spec.batch.micro=2,4")
    quiet = _invoke(*args)
    assert quiet.exit_code == 0 and "point 1:" in quiet.stdout and "note:" not in quiet.stderr, quiet.stderr
    loud = _invoke(*args, "-v")
    notes = [line for line in loud.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1, loud.stderr
    assert notes[0].endswith("(with --set spec.backend=fsdp, --set spec.sharding=full)"), notes[0]


def _three_jobs(home: Path) -> list:
    from orchestrator.api.job import check
    from orchestrator.store.jobstore import Store

    store = Store(home)
    records = []
    for example in ("oom-fallback.yaml", "zero3-offload.yaml", "llama-7b-fsdp.yaml"):
        spec = check(str(ROOT / "examples" / example)).job.model_dump(mode="json", by_alias=True)
        record = store.create_job(name=spec["metadata"]["name"], target="local", spec=spec, source=example,
                                  workdir="/w", checkpoint_dir=None)
        store.add_attempt(record.id, 1, spec=spec, rung=None, reason="r", run_dir="/r", log_path="/r/log",
                          artifacts={}, warnings=[], resume_from=None)
        store.finish_job(record.id, "succeeded", "done")
        records.append(record)
    return records


def test_list_piped_is_one_plain_row_per_job_with_every_value_whole(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main

    records = _three_jobs(tmp_path)
    r = CliRunner().invoke(main, ["list"], env={"SHARDCTL_HOME": str(tmp_path), "COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 1 + len(records), lines
    assert lines[0].split() == ["ID", "NAME", "TARGET", "STATE", "ATTEMPTS", "CONFIG", "CREATED"]
    for record in records:
        row = next(line for line in lines if line.startswith(record.id[:8]))
        cells = re.split(r"\s{2,}", row)
        assert cells[1] == record.name and cells[3] == "succeeded", cells
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", cells[-1]), cells
    assert "gpt2-xl-zero3-offload" in r.stdout
    assert "deepspeed ZeRO-3, micro 16 x accum 1, offload optimizer=cpu params=cpu" in r.stdout
    assert "…" not in r.stdout and "\x1b" not in r.stdout


def test_list_on_an_80_column_terminal_fits_and_keeps_created_whole(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from orchestrator import cli

    records = _three_jobs(tmp_path)
    monkeypatch.setattr(cli, "_is_terminal", lambda: True)
    for columns in (80, 100, 200):
        r = CliRunner().invoke(cli.main, ["list"], env={"SHARDCTL_HOME": str(tmp_path), "COLUMNS": str(columns)})
        assert r.exit_code == 0, r.output
        lines = r.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns, r.stdout
        assert "…" not in r.stdout
        starts = [line for line in lines if line[:8] in {rec.id[:8] for rec in records}]
        assert len(starts) == len(records)
        for line in starts:  # CREATED whole, shortened: 12-06 16:05
            assert re.search(r"\d\d-\d\d \d\d:\d\d$", line.rstrip()), line
        if columns == 200:  # the room is used: one line a job
            assert len(lines) == 1 + len(records), r.stdout


def test_snapshot_progress_is_printed_on_stderr_at_most_once_a_second(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import _ProgressPrinter
    from orchestrator.intake.snapshot import Progress

    now = [0.0]
    plain = _ProgressPrinter(terminal=False, clock=lambda: now[0])
    for i in range(30):  # 30 reports over 3 s
        now[0] = i / 10
        plain(Progress("copying", i * 100, i * 2**20, 2 + now[0], 3000, 30 * 2**20))
    plain(Progress("copying", 3000, 30 * 2**20, 5.0, 3000, 30 * 2**20, done=True))
    out, err = capsys.readouterr()
    assert out == ""  # never on stdout: --json stays one document
    lines = err.splitlines()
    assert lines == ["spec.workdir: copying 0 of 3,000 files (0 B of 30.0 MiB), 2 s",
                     "spec.workdir: copying 1,000 of 3,000 files (10.0 MiB of 30.0 MiB), 3 s",
                     "spec.workdir: copying 2,000 of 3,000 files (20.0 MiB of 30.0 MiB), 4 s"], lines
    now[0] = 0.0
    terminal = _ProgressPrinter(terminal=True, clock=lambda: now[0])
    terminal(Progress("listing", 10, 100, 2.0))
    now[0] = 0.5
    terminal(Progress("listing", 20, 200, 2.5, done=True))  # the open line is closed with the final count
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("\rspec.workdir: listing 10 files (100 B), 2 s\r") and err.endswith("\n")
    assert "spec.workdir: listed 20 files (200 B) in 2 s" in err and err.count("\n") == 1


def test_submit_dry_run_shows_a_long_listings_progress_on_stderr_only(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.intake import snapshot

    monkeypatch.setattr(snapshot, "PROGRESS_AFTER_S", 0.0)  # every listing is "long"
    code = tmp_path / "code"
    code.mkdir()
    for i in range(50):
        (code / f"m{i}.py").write_text("x = 1\n")
    (code / "train_tiny.py").write_text("print('hi')\n")
    text = (ROOT / "examples/quickstart.yaml").read_text().replace("examples/train_tiny.py", "train_tiny.py")
    (tmp_path / "job.yaml").write_text(text.replace("\nspec:\n", f"\nspec:\n  workdir: {code}\n", 1))
    r = _invoke("submit", str(tmp_path / "job.yaml"), "--dry-run", "--json", home=tmp_path / "home")
    assert r.exit_code == 0, r.output
    assert re.search(r"^spec\.workdir: listing \d+ files \(", r.stderr, re.M), r.stderr
    assert "spec.workdir:" not in r.stdout and "--- launch.sh" in r.stdout
    assert not (tmp_path / "home").exists()



def _finished_job(tmp_path: Path, output: str) -> tuple[Path, str]:
    """A succeeded local job in a store under tmp_path whose one attempt printed `output`."""
    from orchestrator.store.jobstore import Store
    from tests.helpers import doc

    home = tmp_path / "state"
    store = Store(home)
    record = store.create_job(name="printed", target="local", spec=doc(), source=None, workdir=str(tmp_path),
                              checkpoint_dir=None)
    log = tmp_path / "output.log"
    log.write_text(output)
    store.add_attempt(record.id, 1, spec=doc(), rung=None, reason="first attempt", run_dir=str(tmp_path),
                      log_path=str(log), artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(record.id, 1, external_id="1:1", started_at=1.0)
    store.end_attempt(record.id, 1, "succeeded", None, ended_at=2.0, exit_code=0)
    store.finish_job(record.id, "succeeded", "done")
    return home, record.id


@pytest.mark.parametrize("follow", [[], ["-f"]])
def test_logs_piped_keeps_the_scripts_colour_and_cursor_sequences(tmp_path: Path, follow: list[str]) -> None:
    """`shardctl logs JOB > run.log` is the output as written: click.echo alone drops every CSI sequence where
    stdout is no terminal (it kept OSC and the rest, so only colours and cursor moves were lost)."""
    written = "\x1b[31mred\x1b[0m \x1b[2K\x1b[1A 3/10 [00:01<00:02, 2.00it/s] \x1b]0;title\x07\n"
    home, job_id = _finished_job(tmp_path, written)
    r = subprocess.run([sys.executable, "-m", "orchestrator", "logs", *follow, job_id], cwd=ROOT,
                       capture_output=True, timeout=60, env={**os.environ, "SHARDCTL_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert (b"[attempt 1] " if follow else b"") + written.encode() in r.stdout, r.stdout


@pytest.mark.parametrize("terminal", [False, True])
def test_submit_wait_all_lines_shows_every_line_of_the_script_inert(tmp_path: Path, terminal: bool,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--all-lines` is every line rather than progress alone, still a view of shardctl's (on a terminal too,
    where it is followed the same way): the script's OSC 52 reaches no terminal; only `logs -f` passes it."""
    from orchestrator import cli
    from orchestrator.store.jobstore import Store
    from orchestrator.views.textsafe import is_safe

    home, job_id = _finished_job(tmp_path, "plain line\n\x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J \x9b2J ok\rgone\n")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    assert cli._follow(Store(home), job_id, all_lines=True) == "succeeded"
    out = capsys.readouterr().out
    assert is_safe(out), out
    assert "[attempt 1] plain line\n" in out and "[attempt 1] ^[]52;c;cm0gLXJmIH4=^G ^[[2J <U+009B>2J ok^Mgone\n" in out
